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
    about = "Sandbox lifecycle server on the Docker Engine or Kubernetes (OpenSandbox wire contract)"
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
    /// The client subcommands (`ls`, `create`, `exec`, `cp`, ...), talking to a running
    /// sandboxd.
    #[command(flatten)]
    Client(crate::cli::ClientCommand),
}

/// Which runtime serves the sandboxes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum RuntimeName {
    /// The local Docker Engine.
    #[default]
    Docker,
    /// A Kubernetes cluster (feature `k8s`).
    Kubernetes,
}

/// How a Kubernetes sandboxd reaches sandbox ports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum KubeEndpointMode {
    /// The pod IP (sandboxd runs in the cluster); clients get it too.
    #[default]
    PodIp,
    /// A `pods/portforward` tunnel through the API server per connection (feature
    /// `k8s-portforward`); clients always get the server proxy.
    PortForward,
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
    /// Secret that signs user tokens (at least 32 bytes) [default: generated once into
    /// `jwt.secret` in the data directory, mode 0600].
    #[arg(long, env = "SANDBOXD_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Earlier signing secrets whose tokens are still accepted (comma-separated; rotation).
    #[arg(
        long = "jwt-previous-secret",
        env = "SANDBOXD_JWT_PREVIOUS_SECRETS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub jwt_previous_secrets: Vec<String>,
    /// Most sandboxes one non-admin user may own at once (beyond: 403 `QUOTA::EXCEEDED`).
    #[arg(long, env = "SANDBOXD_MAX_SANDBOXES_PER_USER", default_value_t = 50)]
    pub max_sandboxes_per_user: u64,
    /// Where sandboxes run: `docker` (the local engine) or `kubernetes` (pods, through the API
    /// server of the kubeconfig or the in-cluster service account; needs a sandboxd built
    /// with `--features k8s`).
    #[arg(long, env = "SANDBOXD_RUNTIME", value_enum, default_value_t)]
    pub runtime: RuntimeName,
    /// Kubernetes: the namespace sandboxes are made in.
    #[arg(long, env = "SANDBOXD_KUBE_NAMESPACE", default_value = "default")]
    pub kube_namespace: String,
    /// Kubernetes: the agent image (`Dockerfile.agent`) whose `/execd install` each sandbox's
    /// init container runs.
    #[arg(long, env = "SANDBOXD_KUBE_AGENT_IMAGE", default_value = concat!("execd-agent:", env!("CARGO_PKG_VERSION")))]
    pub kube_agent_image: String,
    /// Kubernetes: how long a create waits for the pod to be Ready, in seconds (then the pod
    /// is deleted and the create fails).
    #[arg(long, env = "SANDBOXD_KUBE_CREATE_TIMEOUT", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub kube_create_timeout: u64,
    /// Kubernetes: the storage class of persistent workspace claims (`workspace.persistent`)
    /// [default: the cluster's default class].
    #[arg(long, env = "SANDBOXD_KUBE_STORAGE_CLASS")]
    pub kube_storage_class: Option<String>,
    /// Kubernetes: how sandboxd reaches sandbox ports: `pod-ip` (in the cluster) or
    /// `port-forward` (outside it, through the API server; needs a build with `--features
    /// k8s-portforward`, and every endpoint is then the server proxy).
    #[arg(long, env = "SANDBOXD_KUBE_ENDPOINT_MODE", value_enum, default_value_t)]
    pub kube_endpoint_mode: KubeEndpointMode,
    /// The static execd to inject (Docker) [default: `execd` next to sandboxd, then
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
    /// How long a client may take to send a request head (also the idle keep-alive time), ms.
    #[arg(long, env = "SANDBOXD_HEADER_READ_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_read_timeout_ms: u64,
    /// How long a handler waits for the next bytes of a request body before answering 408, ms.
    #[arg(long, env = "SANDBOXD_BODY_IDLE_TIMEOUT_MS", default_value_t = 30_000)]
    pub body_idle_timeout_ms: u64,
    /// Connections served at once (lowered to the file-descriptor limit minus a reserve).
    #[arg(long, env = "SANDBOXD_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,
    /// Base URL where docs/errors.md is served: the detailed error body's `error_link` is
    /// `<base>/errors#<code>` (none: no `error_link`).
    #[arg(long, env = "SANDBOXD_ERRORS_DOCS_BASE_URL", value_parser = docs_base_url)]
    pub errors_docs_base_url: Option<String>,
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
    /// Template builds (`installCommand`) that run at once; the rest wait `Pending`.
    #[arg(long, env = "SANDBOXD_MAX_CONCURRENT_BUILDS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub max_concurrent_builds: u16,
    /// How long a template's `installCommand` may run before its build fails, in seconds.
    #[arg(long, env = "SANDBOXD_BUILD_TIMEOUT_SECONDS", default_value_t = 1800, value_parser = clap::value_parser!(u64).range(1..))]
    pub build_timeout_seconds: u64,
    /// Largest `poolMax` a warm pool may ask for (`pools.maxMembers`).
    #[arg(long, env = "SANDBOXD_POOL_MAX_MEMBERS", default_value_t = 100)]
    pub pool_max_members: u32,
    /// Seconds an acquire waits for a member while its pool is still warming one
    /// (`pools.acquireTimeoutSeconds`); also the 429's `Retry-After`.
    #[arg(long, env = "SANDBOXD_POOL_ACQUIRE_TIMEOUT", default_value_t = 30)]
    pub pool_acquire_timeout: u64,
    /// Serve the diagnostics routes (`/sandboxes/{id}/diagnostics/...`); `false` answers them
    /// 403 DIAGNOSTICS::DISABLED.
    #[arg(long, env = "SANDBOXD_DIAGNOSTICS", default_value_t = true, action = clap::ArgAction::Set,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub diagnostics: bool,
    /// Hours a sandbox's event journal is kept after the sandbox is deleted.
    #[arg(long, env = "SANDBOXD_EVENTS_RETENTION_HOURS", default_value_t = 24)]
    pub events_retention_hours: u64,
    /// Hours finished executions are kept.
    #[arg(long, env = "SANDBOXD_EXECUTION_RETENTION_HOURS", default_value_t = 24, value_parser = clap::value_parser!(u64).range(1..))]
    pub execution_retention_hours: u64,
    /// Most executions kept; beyond, the oldest finished ones are deleted.
    #[arg(long, env = "SANDBOXD_EXECUTION_MAX_STORED", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub execution_max_stored: u64,
    /// Seconds execd's `/ping` and the runtime must both say a sandbox is gone before its
    /// running executions are `Lost`.
    #[arg(long, env = "SANDBOXD_EXECUTION_LOST_AFTER", default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub execution_lost_after: u64,
    /// Most executions one non-admin user may have running or waiting (beyond: 429).
    #[arg(long, env = "SANDBOXD_MAX_RUNNING_EXECUTIONS_PER_USER", default_value_t = 20)]
    pub max_running_executions_per_user: u64,
}

impl Config {
    /// The executions' settings.
    pub fn executions(&self) -> crate::orchestrator::service::ExecutionSettings {
        crate::orchestrator::service::ExecutionSettings {
            retention: Duration::from_secs(self.execution_retention_hours * 3600),
            max_stored: self.execution_max_stored,
            lost_after: Duration::from_secs(self.execution_lost_after),
            max_running_per_user: self.max_running_executions_per_user,
        }
    }

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

    /// The secret that signs tokens: the configured one, else the one generated into
    /// `jwt.secret` in `data_dir` on the first start (32 random bytes, hex, mode 0600).
    pub fn jwt_secret(&self, data_dir: &std::path::Path) -> anyhow::Result<Vec<u8>> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        if let Some(secret) = &self.jwt_secret {
            return Ok(secret.clone().into_bytes());
        }
        let path = data_dir.join("jwt.secret");
        match std::fs::read(&path) {
            Ok(secret) => return Ok(secret.trim_ascii().to_vec()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => anyhow::bail!("cannot read {}: {e}", path.display()),
        }
        let mut raw = [0u8; 32];
        getrandom::fill(&mut raw).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        let secret = hex::encode(raw);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", path.display()))?;
        file.write_all(secret.as_bytes())?;
        file.sync_all()?;
        Ok(secret.into_bytes())
    }

    /// What the server tolerates from slow or many clients.
    pub fn client_limits(&self) -> crate::serve::Limits {
        crate::serve::Limits {
            header_read_timeout: Duration::from_millis(self.header_read_timeout_ms.max(1)),
            body_idle_timeout: Duration::from_millis(self.body_idle_timeout_ms.max(1)),
            max_connections: self.max_connections.max(1),
        }
    }

    /// How long create waits for execd.
    pub fn ready_timeout(&self) -> Duration {
        Duration::from_secs(self.ready_timeout.max(1))
    }

    /// What template builds are allowed.
    pub fn builds(&self) -> super::service::BuildSettings {
        super::service::BuildSettings {
            max_concurrent: usize::from(self.max_concurrent_builds),
            timeout: Duration::from_secs(self.build_timeout_seconds),
        }
    }

    /// The warm pools' settings.
    pub fn pools(&self) -> super::service::PoolSettings {
        super::service::PoolSettings {
            max_members: self.pool_max_members,
            acquire_timeout: Duration::from_secs(self.pool_acquire_timeout),
        }
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

/// An `http(s)://` URL without a fragment (the code is appended as one).
fn docs_base_url(text: &str) -> Result<String, String> {
    let scheme_ok = text.starts_with("https://") || text.starts_with("http://");
    if !scheme_ok || text.contains(['#', ' ']) || text.split("://").nth(1).is_none_or(str::is_empty) {
        return Err(format!(
            "{text:?} is not an http(s) URL without a fragment (e.g. https://docs.example.com/sandboxd)"
        ));
    }
    Ok(text.trim_end_matches('/').to_owned())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_docs_base_url_is_an_http_url_without_a_fragment() {
        assert_eq!(
            docs_base_url("https://docs.example.com/sandboxd/").as_deref(),
            Ok("https://docs.example.com/sandboxd")
        );
        assert!(docs_base_url("http://localhost:8000").is_ok());
        for bad in [
            "docs.example.com",
            "ftp://x",
            "https://",
            "https://x/errors#top",
            "https://x y",
        ] {
            assert!(docs_base_url(bad).is_err(), "{bad}");
        }
    }
}
