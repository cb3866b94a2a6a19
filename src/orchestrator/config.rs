//! sandboxd's configuration: command-line flags with `SANDBOXD_*` environment fallbacks.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// Command line of `sandboxd`.
#[derive(Debug, Parser)]
#[command(
    name = "sandboxd",
    version,
    about = "Sandbox lifecycle server on the Docker Engine (OpenSandbox wire contract)"
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the lifecycle API and the sandbox proxy.
    Serve(Config),
}

/// Server settings.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "SANDBOXD_HOST", default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Port to listen on; 0 picks any free port (printed at start).
    #[arg(long, env = "SANDBOXD_PORT", default_value_t = 8080)]
    pub port: u16,
    /// Key required in `OPEN-SANDBOX-API-KEY` (none: no authentication, with a warning).
    #[arg(long, env = "SANDBOXD_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// The static execd to inject [default: `execd` next to sandboxd, then
    /// target/x86_64-unknown-linux-musl/release/execd].
    #[arg(long, env = "SANDBOXD_AGENT")]
    pub agent: Option<PathBuf>,
    /// Directory of the state database [default: /var/lib/sandboxd, else a temp dir].
    #[arg(long, env = "SANDBOXD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Host name or address that endpoints advertise [default: the publish address, or
    /// 127.0.0.1 when that is unspecified].
    #[arg(long, env = "SANDBOXD_PUBLIC_HOST")]
    pub public_host: Option<String>,
    /// Host address sandbox ports are published on. 127.0.0.1 keeps sandboxes reachable only
    /// from this host (and through the server proxy); use 0.0.0.0 to expose them.
    #[arg(long, env = "SANDBOXD_PUBLISH_IP", default_value = "127.0.0.1")]
    pub publish_ip: IpAddr,
    /// Host directories that `volumes[].host.path` may bind (repeatable; none: host volumes
    /// are refused).
    #[arg(
        long = "allow-host-path",
        env = "SANDBOXD_ALLOWED_HOST_PATHS",
        value_delimiter = ','
    )]
    pub allowed_host_paths: Vec<PathBuf>,
    /// Longest `timeout` a create may ask for, in seconds.
    #[arg(long, env = "SANDBOXD_MAX_TIMEOUT", default_value_t = 86_400)]
    pub max_timeout: u64,
    /// How long create waits for execd to answer `/ping`, in seconds.
    #[arg(long, env = "SANDBOXD_READY_TIMEOUT", default_value_t = 30)]
    pub ready_timeout: u64,
    /// Process limit of every sandbox unless `resourceLimits.pids` says otherwise.
    #[arg(long, env = "SANDBOXD_PIDS_LIMIT", default_value_t = 4096)]
    pub pids_limit: i64,
    /// Docker network mode of sandboxes.
    #[arg(long, env = "SANDBOXD_NETWORK", default_value = "bridge")]
    pub network: String,
    /// Log filter (`info`, `execd::orchestrator=debug`, ...); RUST_LOG wins when set.
    #[arg(long, env = "SANDBOXD_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// Log line format: `pretty` (coloured only on a terminal) or `json` (one object a line).
    #[arg(long, env = "SANDBOXD_LOG_FORMAT", value_enum, default_value_t)]
    pub log_format: crate::logging::LogFormat,
    /// Sandbox creates (`POST /sandboxes`) a caller may make per second, sustained; 0 switches
    /// the class off.
    #[arg(long, env = "SANDBOXD_RATE_CREATE", default_value_t = 10.0, value_parser = rate)]
    pub rate_create: f64,
    /// Creates a caller may make at once before the sustained rate applies.
    #[arg(long, env = "SANDBOXD_BURST_CREATE", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub burst_create: u32,
    /// Execution and batch submits a caller may make per second; 0 switches the class off.
    #[arg(long, env = "SANDBOXD_RATE_EXEC", default_value_t = 20.0, value_parser = rate)]
    pub rate_exec: f64,
    /// Execution submits a caller may make at once.
    #[arg(long, env = "SANDBOXD_BURST_EXEC", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    pub burst_exec: u32,
    /// Every other API request a caller may make per second; 0 switches the class off.
    #[arg(long, env = "SANDBOXD_RATE_READ", default_value_t = 100.0, value_parser = rate)]
    pub rate_read: f64,
    /// Other API requests a caller may make at once.
    #[arg(long, env = "SANDBOXD_BURST_READ", default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
    pub burst_read: u32,
    /// Serve the Prometheus `/metrics` without a credential (default: admin or API key).
    #[arg(long, env = "SANDBOXD_METRICS_PUBLIC")]
    pub metrics_public: bool,
}

impl Config {
    /// The data directory: the configured one, else `/var/lib/sandboxd` when writable, else
    /// `sandboxd-<uid>` under the temp dir.
    pub fn data_dir(&self) -> PathBuf {
        if let Some(dir) = &self.data_dir {
            return dir.clone();
        }
        let preferred = PathBuf::from("/var/lib/sandboxd");
        if std::fs::create_dir_all(&preferred).is_ok()
            && nix::unistd::access(&preferred, nix::unistd::AccessFlags::W_OK).is_ok()
        {
            return preferred;
        }
        std::env::temp_dir().join(format!("sandboxd-{}", nix::unistd::getuid()))
    }

    /// The agent binary: the configured path, else `execd` beside this binary, else the
    /// static build in the source tree.
    pub fn agent_path(&self) -> PathBuf {
        if let Some(path) = &self.agent {
            return path.clone();
        }
        let beside = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|dir| dir.join("execd")))
            .filter(|p| is_static_execd(p));
        beside.unwrap_or_else(|| PathBuf::from("target/x86_64-unknown-linux-musl/release/execd"))
    }

    /// The host endpoints advertise.
    pub fn public_host(&self) -> String {
        match &self.public_host {
            Some(host) => host.clone(),
            None if self.publish_ip.is_unspecified() => "127.0.0.1".to_owned(),
            None => self.publish_ip.to_string(),
        }
    }

    /// The rate-limit classes as configured.
    pub fn rate_limits(&self) -> super::ratelimit::Settings {
        use super::ratelimit::Rate;
        super::ratelimit::Settings {
            create: Rate::new(self.rate_create, self.burst_create),
            exec: Rate::new(self.rate_exec, self.burst_exec),
            read: Rate::new(self.rate_read, self.burst_read),
        }
    }

    /// How long create waits for execd.
    pub fn ready_timeout(&self) -> Duration {
        Duration::from_secs(self.ready_timeout.max(1))
    }
}

/// A sustained rate per second: a finite number from 0 (off) to a million; fractions allowed
/// (`0.5` is one every two seconds).
fn rate(text: &str) -> Result<f64, String> {
    let r: f64 = text.parse().map_err(|_| format!("{text:?} is not a number"))?;
    if r.is_finite() && (0.0..=1e6).contains(&r) {
        Ok(r)
    } else {
        Err(format!(
            "a rate must be from 0 (off) to 1000000 per second, got {text}"
        ))
    }
}

/// Whether `path` looks like a static execd: a dev build of execd beside sandboxd is dynamic and
/// would not run in an image without libc, so it does not count.
fn is_static_execd(path: &std::path::Path) -> bool {
    let Ok(bytes) = std::fs::read(path) else {
        return false;
    };
    // A dynamically linked ELF names its interpreter (PT_INTERP, `/lib64/ld-linux...`).
    bytes.starts_with(b"\x7fELF") && memchr::memmem::find(&bytes, b"/ld-linux").is_none()
}
