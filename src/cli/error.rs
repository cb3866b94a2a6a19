//! What can go wrong in a client subcommand, and how it is told to a person: the server's own
//! `{code, message}` when it answered with one, else what failed and why.

use std::error::Error as _;
use std::path::PathBuf;

/// A client subcommand's failure.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The server answered with its error body.
    #[error("{code}: {message} (HTTP {status})")]
    Api {
        /// HTTP status.
        status: u16,
        /// The server's machine-readable code (`SANDBOX::NOT_FOUND`, `INVALID_API_KEY`, ...).
        code: String,
        /// The server's explanation.
        message: String,
    },
    /// The server answered with an error status but no `{code, message}` body.
    #[error("HTTP {status} from {url}: {body}")]
    Status {
        /// HTTP status.
        status: u16,
        /// What was asked for.
        url: String,
        /// The start of the body.
        body: String,
    },
    /// No connection to the server.
    #[error("cannot reach {server} (is sandboxd running there? see --server / SANDBOXD_SERVER)")]
    Unreachable {
        /// The server (`scheme://host:port`).
        server: String,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
    /// The exchange broke off or the answer was not what the API promises.
    #[error("{what}")]
    Transport {
        /// What was being done.
        what: String,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
    /// An answer that does not parse as the API's type.
    #[error("unexpected answer from {url}")]
    Decode {
        /// What was asked for.
        url: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// The terminal's WebSocket failed.
    #[error("terminal connection to {url}")]
    WebSocket {
        /// The WebSocket URL.
        url: String,
        /// Why.
        #[source]
        source: Box<tokio_tungstenite::tungstenite::Error>,
    },
    /// A local file or terminal operation failed.
    #[error("{what}")]
    Io {
        /// What was being done, naming the file.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The config file is unreadable or malformed.
    #[error("config file {}", path.display())]
    Config {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The command line asks for something that cannot be done.
    #[error("{0}")]
    Usage(String),
    /// Some of several operations failed (each was reported as it happened).
    #[error("{failed} of {total} failed")]
    Partial {
        /// How many failed.
        failed: usize,
        /// How many were tried.
        total: usize,
    },
}

impl CliError {
    /// The error and its causes on one line, repeated text left out.
    pub fn report(&self) -> String {
        let mut text = self.to_string();
        if let CliError::Unreachable { .. } = self {
            // The HTTP client's layers each restate the URL; the innermost cause says why.
            let mut cause: &dyn std::error::Error = self;
            while let Some(next) = cause.source() {
                cause = next;
            }
            return format!("{text}: {cause}");
        }
        let mut source = self.source();
        while let Some(cause) = source {
            let next = cause.to_string();
            if !text.contains(&next) {
                text.push_str(": ");
                text.push_str(&next);
            }
            source = cause.source();
        }
        text
    }

    /// The process exit code for this error: 2 for bad usage, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => 2,
            _ => 1,
        }
    }

    /// An `Io` error naming what was being done.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        CliError::Io {
            what: what.into(),
            source,
        }
    }
}
