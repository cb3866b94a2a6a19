//! execd's configuration: command-line flags with environment fallbacks, read once at start.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Environment variables execd reads for itself and never passes on to children.
pub const SECRET_VARS: &[&str] = &["EXECD_ACCESS_TOKEN"];

/// Command line of `execd`.
#[derive(Debug, Parser)]
#[command(
    name = "execd",
    version,
    about = "In-sandbox execution agent (OpenSandbox wire contract)"
)]
pub struct Cli {
    /// Server settings.
    #[command(flatten)]
    pub config: Config,
    /// Run as init (PID 1) in front of an entrypoint, or install execd into a directory.
    #[command(subcommand)]
    pub mode: Option<Mode>,
    /// Upstream's spelling of init mode: `execd --init <entrypoint...>`.
    #[arg(long = "init", num_args = 1.., allow_hyphen_values = true, value_name = "ENTRYPOINT")]
    pub init_argv: Option<Vec<String>>,
}

/// Alternative modes.
#[derive(Debug, Subcommand)]
pub enum Mode {
    /// Serve the API, run ENTRYPOINT as a child, forward SIGTERM/SIGINT/SIGHUP to it, reap
    /// orphans, and exit with its exit code.
    Init {
        /// The entrypoint and its arguments (after `--`).
        #[arg(required = true, num_args = 1.., trailing_var_arg = true, allow_hyphen_values = true)]
        entrypoint: Vec<String>,
    },
    /// Copy this executable to DIR/execd atomically (temp file, fsync, mode 0755, rename),
    /// creating DIR when missing: a Kubernetes init container fills the pod's shared volume
    /// with it. A re-run over a running copy is safe.
    Install {
        /// The directory (e.g. /opt/opensandbox).
        dir: PathBuf,
    },
}

/// Server settings.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Address to listen on [default: 0.0.0.0 with an access token or in init mode, else
    /// 127.0.0.1: without a token, anyone who reaches execd can run commands].
    #[arg(long, env = "EXECD_HOST")]
    pub host: Option<IpAddr>,
    /// Port to listen on; 0 picks any free port.
    #[arg(long, env = "EXECD_PORT", default_value_t = 44772)]
    pub port: u16,
    /// Token required in `X-EXECD-ACCESS-TOKEN` on every request (none: no auth).
    #[arg(long, env = "EXECD_ACCESS_TOKEN", hide_env_values = true)]
    pub access_token: Option<String>,
    /// File of KEY=VALUE lines added to every command's environment, re-read each time.
    #[arg(long = "envs-file", env = "EXECD_ENVS")]
    pub envs_file: Option<PathBuf>,
    /// Write logs to this file instead of stderr.
    #[arg(long, env = "EXECD_LOG_FILE")]
    pub log_file: Option<PathBuf>,
    /// Log filter (`info`, `execd=debug`, …); RUST_LOG wins when set.
    #[arg(long, env = "EXECD_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// Log line format: `pretty` (coloured only on a terminal) or `json` (one object a line).
    #[arg(long, env = "EXECD_LOG_FORMAT", value_enum, default_value_t)]
    pub log_format: crate::logging::LogFormat,
    /// Directory for journals and logs [default: /var/lib/execd, else a temp dir].
    #[arg(long, env = "EXECD_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Never use Jupyter kernels; python and bash run on the built-in drivers.
    #[arg(long, env = "EXECD_NO_JUPYTER", value_parser = clap::builder::FalseyValueParser::new(), default_value = "false")]
    pub no_jupyter: bool,
    /// Python kernels kept started so new contexts are instant (0 disables the pool).
    #[arg(long, env = "EXECD_KERNEL_POOL", default_value_t = 1)]
    pub kernel_pool: usize,
    /// Isolated sessions: when this host denies namespaces, still serve sessions with the
    /// hardening that remains (landlock, seccomp, no_new_privs, rlimits, uid drop) instead of
    /// answering 503. Capabilities report the degradation either way.
    #[arg(long, env = "EXECD_ISOLATED_ALLOW_DEGRADED", value_parser = clap::builder::FalseyValueParser::new(), default_value = "false")]
    pub isolated_allow_degraded: bool,
    /// Isolated sessions: roots (comma-separated) under which `extra_writable` paths and bind
    /// sources may lie; empty rejects them all.
    #[arg(long, env = "EXECD_ISOLATED_ALLOWED_WRITABLE", value_delimiter = ',')]
    pub isolated_allowed_writable: Vec<PathBuf>,
    /// Isolated sessions: memory limit per session in MiB (cgroup; 0: none).
    #[arg(long, env = "EXECD_ISOLATED_MEMORY_MB", default_value_t = 1024)]
    pub isolated_memory_mb: u64,
    /// Isolated sessions: task limit per session (cgroup; 0: none).
    #[arg(long, env = "EXECD_ISOLATED_PIDS", default_value_t = 512)]
    pub isolated_pids: u64,
    /// Isolated sessions: CPU limit per session in thousandths of a CPU (cgroup; 0: none).
    #[arg(long, env = "EXECD_ISOLATED_CPU_MILLIS", default_value_t = 0)]
    pub isolated_cpu_millis: u64,
    /// Isolated sessions: how often idle sessions are collected, in milliseconds.
    #[arg(
        long,
        env = "EXECD_ISOLATED_GC_INTERVAL_MS",
        default_value_t = 60_000,
        hide = true
    )]
    pub isolated_gc_interval_ms: u64,
    /// Milliseconds a client may take to send a request's headers (also how long an idle
    /// keep-alive connection stays open).
    #[arg(long, env = "EXECD_HEADER_READ_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_read_timeout_ms: u64,
    /// Milliseconds execd waits for the next bytes of a request body before answering 408.
    #[arg(long, env = "EXECD_BODY_IDLE_TIMEOUT_MS", default_value_t = 30_000)]
    pub body_idle_timeout_ms: u64,
    /// Connections served at once; more wait to be accepted (lowered to fit RLIMIT_NOFILE).
    #[arg(long, env = "EXECD_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,
    /// Bash sessions (`/session`) that may exist at once; more are refused with 429.
    #[arg(long, env = "EXECD_MAX_SESSIONS", default_value_t = 256)]
    pub max_sessions: usize,
    /// Code contexts that may exist at once; more are refused with 429.
    #[arg(long, env = "EXECD_MAX_CONTEXTS", default_value_t = 64)]
    pub max_contexts: usize,
    /// Milliseconds after which a bash session or code context without runs is deleted
    /// (0: never).
    #[arg(long, env = "EXECD_SESSION_IDLE_TIMEOUT_MS", default_value_t = 3_600_000)]
    pub session_idle_timeout_ms: u64,
    /// Accepted for compatibility with upstream; no stream ever waits on it.
    #[arg(
        long = "graceful-shutdown-timeout",
        env = "EXECD_API_GRACE_SHUTDOWN",
        hide = true
    )]
    pub grace_shutdown: Option<String>,
    /// Init mode: a JSON manifest (`[{"key","path","mode"}, …]`) of files lying beside it,
    /// each copied to its absolute `path` with its `mode` before the entrypoint starts (a
    /// ConfigMap mounted by sandboxd's Kubernetes runtime).
    #[arg(long = "seed-files", env = crate::agent::seed::SEED_FILES_ENV, hide = true)]
    pub seed_files: Option<PathBuf>,
    /// Lifecycle hooks as JSON (`{"preStart":{"command":[...],"timeoutSeconds":60}}`), as the
    /// orchestrator sets them. Init mode runs `preStart` before the entrypoint, answering
    /// `/ping` with 503 `STARTING` meanwhile; `periodic` hooks are not run.
    #[arg(long, env = crate::wire::lifecycle::LIFECYCLE_ENV, hide = true)]
    pub lifecycle: Option<String>,
}

impl Config {
    /// The address to listen on: the one given; else every interface when a token guards
    /// them or execd is a container's init (the orchestrator decides what to publish, and
    /// must reach it); else loopback only.
    pub fn listen_host(&self, init_mode: bool) -> IpAddr {
        match self.host {
            Some(host) => host,
            None if self.token().is_some() || init_mode => IpAddr::from([0, 0, 0, 0]),
            None => IpAddr::from([127, 0, 0, 1]),
        }
    }

    /// The access token, when one is set and not empty.
    pub fn token(&self) -> Option<&str> {
        self.access_token.as_deref().filter(|t| !t.is_empty())
    }

    /// How long an unused bash session or code context lives (`None`: for ever).
    pub fn session_idle_timeout(&self) -> Option<std::time::Duration> {
        (self.session_idle_timeout_ms > 0)
            .then(|| std::time::Duration::from_millis(self.session_idle_timeout_ms))
    }

    /// What the HTTP server tolerates from its clients.
    pub fn serve_limits(&self) -> crate::serve::Limits {
        crate::serve::Limits {
            header_read_timeout: std::time::Duration::from_millis(self.header_read_timeout_ms.max(1)),
            body_idle_timeout: std::time::Duration::from_millis(self.body_idle_timeout_ms.max(1)),
            max_connections: self.max_connections.max(1),
        }
    }

    /// The state directory: the configured one, else `/var/lib/execd` when it can be created,
    /// else `execd` under the temp dir.
    pub fn state_dir(&self) -> anyhow::Result<PathBuf> {
        if let Some(dir) = &self.state_dir {
            return Ok(dir.clone());
        }
        let preferred = PathBuf::from("/var/lib/execd");
        if std::fs::create_dir_all(&preferred).is_ok() && is_writable(&preferred) {
            return Ok(preferred);
        }
        Ok(std::env::temp_dir().join(format!("execd-{}", nix::unistd::getuid())))
    }
}

fn is_writable(dir: &std::path::Path) -> bool {
    nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_subcommand_takes_everything_after_double_dash() {
        let cli = Cli::try_parse_from(["execd", "--port", "0", "init", "--", "sh", "-c", "exit 3"]).unwrap();
        assert_eq!(cli.config.port, 0);
        match cli.mode {
            Some(Mode::Init { entrypoint }) => assert_eq!(entrypoint, ["sh", "-c", "exit 3"]),
            other => panic!("init mode not parsed: {other:?}"),
        }
        let legacy = Cli::try_parse_from(["execd", "--init", "tail", "-f", "/dev/null"]).unwrap();
        assert_eq!(legacy.init_argv.unwrap(), ["tail", "-f", "/dev/null"]);
    }

    fn config(args: &[&str]) -> Config {
        let mut argv = vec!["execd"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).unwrap().config
    }

    #[test]
    fn without_a_token_execd_listens_on_loopback_unless_told_otherwise() {
        let loopback: IpAddr = [127, 0, 0, 1].into();
        let any: IpAddr = [0, 0, 0, 0].into();
        // Flags only: EXECD_HOST / EXECD_ACCESS_TOKEN in the test's environment would win.
        let open = Config {
            host: None,
            access_token: None,
            ..config(&[])
        };
        assert_eq!(open.listen_host(false), loopback);
        assert_eq!(
            Config {
                access_token: Some(String::new()),
                ..open.clone()
            }
            .listen_host(false),
            loopback
        );
        // A container's init: the orchestrator publishes the port and must reach it.
        assert_eq!(open.listen_host(true), any);
        assert_eq!(
            Config {
                access_token: Some("t".into()),
                ..open.clone()
            }
            .listen_host(false),
            any
        );
        assert_eq!(
            Config {
                host: Some(any),
                ..open.clone()
            }
            .listen_host(false),
            any
        );
        assert_eq!(
            Config {
                host: Some(loopback),
                ..open
            }
            .listen_host(true),
            loopback
        );
    }
}
