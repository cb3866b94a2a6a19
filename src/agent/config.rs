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
    /// Run as init (PID 1) in front of an entrypoint.
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
}

/// Server settings.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "EXECD_HOST", default_value = "0.0.0.0")]
    pub host: IpAddr,
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
    /// Accepted for compatibility with upstream; no stream ever waits on it.
    #[arg(
        long = "graceful-shutdown-timeout",
        env = "EXECD_API_GRACE_SHUTDOWN",
        hide = true
    )]
    pub grace_shutdown: Option<String>,
}

impl Config {
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
            None => panic!("init mode not parsed"),
        }
        let legacy = Cli::try_parse_from(["execd", "--init", "tail", "-f", "/dev/null"]).unwrap();
        assert_eq!(legacy.init_argv.unwrap(), ["tail", "-f", "/dev/null"]);
    }
}
