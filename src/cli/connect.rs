//! Where the server is and who is calling: flags, then `SANDBOXD_*` variables, then the config
//! file, then the defaults. Resolved once per invocation into a [`Client`].
//!
//! The config file is YAML (`server`, `apiKey`, `token`), at `--config`, `SANDBOXD_CONFIG`, or
//! `$XDG_CONFIG_HOME/sandboxd/config.yaml` (`~/.config/sandboxd/config.yaml`); a missing
//! default file is fine, a missing named one is an error.

use std::path::PathBuf;

use serde::Deserialize;

use super::client::{Auth, Client};
use super::error::CliError;

/// The server when nothing says otherwise.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";

/// Connection flags, shared by every client subcommand.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Connection")]
pub struct Connection {
    /// sandboxd's URL [env: SANDBOXD_SERVER; config: server; default: http://127.0.0.1:8080].
    #[arg(
        long,
        env = "SANDBOXD_SERVER",
        hide_env = true,
        value_name = "URL",
        global = true
    )]
    pub server: Option<String>,
    /// The API key, sent as `OPEN-SANDBOX-API-KEY` (it acts as the admin `root`)
    /// [env: SANDBOXD_API_KEY; config: apiKey].
    #[arg(
        long,
        env = "SANDBOXD_API_KEY",
        hide_env = true,
        value_name = "KEY",
        global = true
    )]
    pub api_key: Option<String>,
    /// A user token from `sandboxd token create`, sent as `Authorization: Bearer`; it wins
    /// over an API key [env: SANDBOXD_TOKEN; config: token].
    #[arg(long, value_name = "TOKEN", global = true)]
    pub token: Option<String>,
    /// The config file [env: SANDBOXD_CONFIG; default: ~/.config/sandboxd/config.yaml].
    #[arg(
        long,
        env = "SANDBOXD_CONFIG",
        hide_env = true,
        value_name = "FILE",
        global = true
    )]
    pub config: Option<PathBuf>,
}

/// The config file's contents.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FileConfig {
    server: Option<String>,
    api_key: Option<String>,
    token: Option<String>,
}

impl Connection {
    /// A client for sandboxd with the resolved server and credentials.
    pub fn client(&self) -> Result<Client, CliError> {
        let file = self.file()?;
        let server = self
            .server
            .clone()
            .or(file.server)
            .unwrap_or_else(|| DEFAULT_SERVER.to_owned());
        let token = self
            .token
            .clone()
            .or_else(|| std::env::var("SANDBOXD_TOKEN").ok())
            .or(file.token)
            .filter(|t| !t.is_empty());
        let api_key = self.api_key.clone().or(file.api_key).filter(|k| !k.is_empty());
        // A user token is the narrower credential: when both are set, it is the one sent.
        let auth = match (token, api_key) {
            (Some(token), _) => Auth::Bearer(token),
            (None, Some(key)) => Auth::ApiKey(key),
            (None, None) => Auth::None,
        };
        Client::new(&server, auth)
    }

    /// The token given on the command line itself (not from the environment or the file):
    /// `exec --execd` sends only that one, as execd's access token.
    pub fn explicit_token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    fn file(&self) -> Result<FileConfig, CliError> {
        let (path, required) = match &self.config {
            Some(path) => (path.clone(), true),
            None => match default_config_path() {
                Some(path) => (path, false),
                None => return Ok(FileConfig::default()),
            },
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                return Ok(FileConfig::default())
            }
            Err(e) => {
                return Err(CliError::Config {
                    path,
                    source: Box::new(e),
                })
            }
        };
        if text.trim().is_empty() {
            return Ok(FileConfig::default());
        }
        yaml_serde::from_str(&text).map_err(|e| CliError::Config {
            path,
            source: Box::new(e),
        })
    }
}

/// `$XDG_CONFIG_HOME/sandboxd/config.yaml`, else `$HOME/.config/sandboxd/config.yaml`.
fn default_config_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".config")))?;
    Some(base.join("sandboxd").join("config.yaml"))
}
