//! The Docker runtime: containers through the Engine API (bollard, unix socket, version
//! negotiated so that old engines such as 20.10 / API 1.41 work), and the injection of the
//! static execd into any image.
//!
//! Injection: the agent is copied (put_archive) once per sandboxd process into a named volume
//! whose name carries the binary's hash. Every sandbox mounts that volume read-only at
//! `/opt/sandboxd`, and the one file `execd` from it, read-only, at `/opt/opensandbox/execd`
//! (a bind of the file inside the volume's directory on the engine's host). So whatever the
//! image keeps in `/opt/opensandbox` (upstream's code-interpreter images keep their
//! entrypoint there) stays visible beside the agent. The image needs nothing (no shell, no
//! libc), a sandbox cannot alter its own agent, and a create costs no 4 MB copy (about 55 ms
//! on fuse-overlayfs). The directory mount is what tells Docker the volume is in use (a bind
//! of a file in it does not), so neither `docker volume prune` nor
//! [`Docker::prune_agent_volumes`] removes the agent from under a live sandbox. Volume
//! `subpath` mounts (API 1.45) would spare the host path, but sandboxd also serves engines as
//! old as 20.10 (API 1.41), and a bind works on every version.
//!
//! Knows containers, not sandboxes: the service (`sandboxes.rs`) decides what to create and how
//! Docker's states map onto the contract's. Async.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::Path;

use anyhow::Context as _;
use bollard::errors::Error as BollardError;
use bollard::models::{ContainerCreateBody, HostConfig, Mount, MountType, MountVolumeOptions, PortBinding};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, ListContainersOptionsBuilder,
    LogsOptionsBuilder, RemoveContainerOptionsBuilder, UploadToContainerOptionsBuilder,
};
use bytes::Bytes;
use futures_util::StreamExt;
use sha2::Digest as _;

/// Where the agent volume is mounted inside every sandbox (read-only).
pub const AGENT_DIR: &str = "/opt/sandboxd";
/// Where execd is run from inside every sandbox: upstream's path, a read-only bind of the
/// single file, so that the rest of the image's `/opt/opensandbox` stays visible.
pub const AGENT_PATH: &str = "/opt/opensandbox/execd";
/// execd's port inside the sandbox.
pub const EXECD_PORT: u16 = 44772;
/// execd's state directory, a tmpfs in sandboxes with isolated sessions.
pub const ISOLATION_STATE: &str = "/var/lib/execd";
/// The conventional application port that is published too.
pub const HTTP_PORT: u16 = 8080;

/// Label: the sandbox id (upstream's name).
pub const LABEL_ID: &str = "opensandbox.io/id";
/// Label: expiry (RFC 3339), or absent.
pub const LABEL_EXPIRES: &str = "opensandbox.io/expires-at";
/// Label: set to `true` for manual-cleanup sandboxes.
pub const LABEL_MANUAL: &str = "opensandbox.io/manual-cleanup";
/// Label: which sandboxd state file owns the container.
pub const LABEL_INSTANCE: &str = "io.execd.sandboxd.instance";
/// Label of the agent volumes.
pub const LABEL_AGENT: &str = "io.execd.sandboxd.agent";

/// A failure talking to the engine.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// The engine answered 404 (no such container, image or volume).
    #[error("{0}")]
    NotFound(String),
    /// The engine refused the request as invalid (400), e.g. a bad bind or limit.
    #[error("{0}")]
    Rejected(String),
    /// The engine answered 409, e.g. pausing a paused container.
    #[error("{0}")]
    Conflict(String),
    /// A failure that goes away when retried: on cgroup v1 the freezer cannot freeze (or
    /// thaw) a container while processes in it are starting, and runc gives up with
    /// "unable to freeze".
    #[error("{0}")]
    Transient(String),
    /// Anything else: the engine is down, or failed.
    #[error("docker: {0}")]
    Engine(String),
}

impl From<BollardError> for DockerError {
    fn from(e: BollardError) -> Self {
        match e {
            BollardError::DockerResponseServerError { status_code, message } => match status_code {
                404 => DockerError::NotFound(message),
                400 => DockerError::Rejected(message),
                409 => DockerError::Conflict(message),
                _ => DockerError::Engine(format!("{status_code}: {message}")),
            },
            other => DockerError::Engine(other.to_string()),
        }
    }
}

/// What the service asks for.
#[derive(Debug, Default)]
pub struct ContainerSpec {
    /// Container name.
    pub name: String,
    /// Image reference.
    pub image: String,
    /// The user's entrypoint (execd init goes in front).
    pub entrypoint: Vec<String>,
    /// `KEY=VALUE` entries.
    pub env: Vec<String>,
    /// Labels.
    pub labels: HashMap<String, String>,
    /// Host address ports are published on.
    pub publish_ip: Option<IpAddr>,
    /// Memory limit, bytes.
    pub memory: Option<i64>,
    /// CPU limit, billionths of a CPU.
    pub nano_cpus: Option<i64>,
    /// Process limit.
    pub pids_limit: i64,
    /// `src:dst[:ro]` binds (host paths and named volumes).
    pub binds: Vec<String>,
    /// Docker network mode.
    pub network: String,
    /// A seccomp profile (JSON text) that allows user namespaces, with masked and read-only
    /// system paths lifted: what isolated sessions need. `None`: Docker's defaults.
    pub isolation_seccomp: Option<String>,
}

/// A container as the engine sees it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Live {
    /// `created`, `running`, `paused`, `restarting`, `removing`, `exited`, `dead`.
    pub status: String,
    /// Exit code once exited.
    pub exit_code: Option<i64>,
    /// Whether the kernel's OOM killer ended it.
    pub oom_killed: bool,
    /// The engine's error text, if any.
    pub error: Option<String>,
}

/// The engine connection plus the agent, ready to upload.
pub struct Docker {
    api: bollard::Docker,
    /// A tar holding `execd`, made once at start.
    agent_tar: Bytes,
    /// `sandboxd-execd-<hash>`: the volume every sandbox mounts at [`AGENT_DIR`].
    agent_volume: String,
    /// Set once this process has filled the volume: the host path of `execd` in it, the
    /// source of the file bind at [`AGENT_PATH`].
    agent_ready: tokio::sync::OnceCell<String>,
}

impl Docker {
    /// Connects to the local engine (DOCKER_HOST or the default socket), negotiates the API
    /// version, and packs `agent` for injection.
    pub async fn connect(agent: &Path) -> anyhow::Result<Self> {
        let binary = std::fs::read(agent).with_context(|| {
            format!(
                "cannot read the agent {} (build it with scripts/build-agent.sh or pass --agent)",
                agent.display()
            )
        })?;
        anyhow::ensure!(
            binary.starts_with(b"\x7fELF"),
            "{} is not an ELF binary",
            agent.display()
        );
        let api = bollard::Docker::connect_with_local_defaults()
            .context("cannot reach the Docker engine")?
            .negotiate_version()
            .await
            .context("cannot reach the Docker engine")?;
        let hash = hex::encode(&sha2::Sha256::digest(&binary)[..8]);
        Ok(Self {
            api,
            agent_tar: agent_tar(&binary)?,
            agent_volume: format!("sandboxd-execd-{hash}"),
            agent_ready: tokio::sync::OnceCell::new(),
        })
    }

    /// Makes sure the agent volume holds this process's execd and returns the host path of
    /// the binary in it: the first call creates the volume and copies the binary in through a
    /// container of `image` that is never started (any image will do, so that injection never
    /// depends on what is in it); later calls return at once.
    pub async fn ensure_agent(&self, image: &str) -> Result<String, DockerError> {
        self.agent_ready
            .get_or_try_init(|| async {
                let create = bollard::models::VolumeCreateRequest {
                    name: Some(self.agent_volume.clone()),
                    labels: Some(HashMap::from([(LABEL_AGENT.to_owned(), "true".to_owned())])),
                    ..Default::default()
                };
                // Creating an existing volume (another sandboxd with the same build) returns it.
                let volume = self.api.create_volume(create).await?;
                let body = ContainerCreateBody {
                    image: Some(image.to_owned()),
                    entrypoint: Some(vec![format!("{AGENT_DIR}/execd")]),
                    labels: Some(HashMap::from([(LABEL_AGENT.to_owned(), "filler".to_owned())])),
                    host_config: Some(HostConfig {
                        mounts: Some(vec![self.agent_mount(false)]),
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                let filler = self.api.create_container(None, body).await?.id;
                let options = UploadToContainerOptionsBuilder::default().path(AGENT_DIR).build();
                let copied = self
                    .api
                    .upload_to_container(&filler, Some(options), bollard::body_full(self.agent_tar.clone()))
                    .await;
                let removed = self.remove(&filler).await;
                copied?;
                removed?;
                tracing::info!(volume = %self.agent_volume, "agent volume filled");
                Ok::<String, DockerError>(format!("{}/execd", volume.mountpoint.trim_end_matches('/')))
            })
            .await
            .cloned()
    }

    /// Removes agent volumes of other execd builds that no container uses any more.
    pub async fn prune_agent_volumes(&self) {
        let filters = HashMap::from([("label".to_owned(), vec![LABEL_AGENT.to_owned()])]);
        let options = bollard::query_parameters::ListVolumesOptionsBuilder::default()
            .filters(&filters)
            .build();
        let Ok(list) = self.api.list_volumes(Some(options)).await else {
            return;
        };
        for volume in list.volumes.unwrap_or_default() {
            if volume.name != self.agent_volume {
                // Fails (and stays) while a sandbox still mounts it.
                let none: Option<bollard::query_parameters::RemoveVolumeOptions> = None;
                if self.api.remove_volume(&volume.name, none).await.is_ok() {
                    tracing::info!(volume = %volume.name, "removed an old agent volume");
                }
            }
        }
    }

    /// The agent volume mounted at [`AGENT_DIR`] (nothing from the image is copied into it).
    fn agent_mount(&self, read_only: bool) -> Mount {
        Mount {
            target: Some(AGENT_DIR.to_owned()),
            source: Some(self.agent_volume.clone()),
            typ: Some(MountType::VOLUME),
            read_only: Some(read_only),
            volume_options: Some(MountVolumeOptions {
                no_copy: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// The negotiated API version, e.g. `1.41`.
    pub fn api_version(&self) -> String {
        self.api.client_version().to_string()
    }

    /// Makes sure the image is present, pulling it when it is not. The error says why the
    /// image cannot be had.
    pub async fn ensure_image(&self, image: &str) -> Result<(), DockerError> {
        match self.api.inspect_image(image).await {
            Ok(_) => return Ok(()),
            Err(e) => match DockerError::from(e) {
                DockerError::NotFound(_) => {}
                other => return Err(other),
            },
        }
        let options = CreateImageOptionsBuilder::default().from_image(image).build();
        let mut pull = self.api.create_image(Some(options), None, None);
        while let Some(progress) = pull.next().await {
            let progress = progress.map_err(|e| match DockerError::from(e) {
                DockerError::Engine(m) | DockerError::Rejected(m) | DockerError::Conflict(m) => {
                    DockerError::NotFound(format!(
                        "image {image:?} is not present and cannot be pulled: {m}"
                    ))
                }
                not_found => not_found,
            })?;
            if let Some(detail) = progress.error_detail.and_then(|d| d.message) {
                return Err(DockerError::NotFound(format!(
                    "image {image:?} is not present and cannot be pulled: {detail}"
                )));
            }
        }
        Ok(())
    }

    /// Creates (does not start) the container with execd as its init and returns its id.
    /// `agent` is the host path [`ensure_agent`](Self::ensure_agent) returned.
    pub async fn create(&self, spec: ContainerSpec, agent: &str) -> Result<String, DockerError> {
        let mut entrypoint = vec![AGENT_PATH.to_owned(), "init".to_owned(), "--".to_owned()];
        entrypoint.extend(spec.entrypoint);
        let publish_ip = spec.publish_ip.map(|ip| ip.to_string());
        let binding = || {
            Some(vec![PortBinding {
                host_ip: publish_ip.clone(),
                host_port: Some(String::new()), // any free port
            }])
        };
        let port_bindings = HashMap::from([
            (format!("{EXECD_PORT}/tcp"), binding()),
            (format!("{HTTP_PORT}/tcp"), binding()),
        ]);
        let mut security_opt = vec!["no-new-privileges:true".to_owned()];
        let (mut masked_paths, mut readonly_paths, mut tmpfs) = (None, None, None);
        if let Some(profile) = spec.isolation_seccomp {
            security_opt.push(format!("seccomp={profile}"));
            // What `--security-opt systempaths=unconfined` does: a fresh procfs can be mounted.
            masked_paths = Some(Vec::new());
            readonly_paths = Some(Vec::new());
            // Overlay upper directories cannot live on the container's own overlay root.
            tmpfs = Some(HashMap::from([(
                ISOLATION_STATE.to_owned(),
                "rw,nosuid,nodev,mode=0755".to_owned(),
            )]));
        }
        let host_config = HostConfig {
            port_bindings: Some(port_bindings),
            memory: spec.memory,
            nano_cpus: spec.nano_cpus,
            pids_limit: Some(spec.pids_limit),
            security_opt: Some(security_opt),
            masked_paths,
            readonly_paths,
            tmpfs,
            binds: (!spec.binds.is_empty()).then_some(spec.binds),
            mounts: Some(vec![
                self.agent_mount(true),
                Mount {
                    target: Some(AGENT_PATH.to_owned()),
                    source: Some(agent.to_owned()),
                    typ: Some(MountType::BIND),
                    read_only: Some(true),
                    ..Default::default()
                },
            ]),
            network_mode: Some(spec.network),
            ..Default::default()
        };
        let body = ContainerCreateBody {
            image: Some(spec.image),
            entrypoint: Some(entrypoint),
            cmd: Some(Vec::new()),
            env: Some(spec.env),
            labels: Some(spec.labels),
            exposed_ports: Some(vec![format!("{EXECD_PORT}/tcp"), format!("{HTTP_PORT}/tcp")]),
            host_config: Some(host_config),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::default().name(&spec.name).build();
        Ok(self.api.create_container(Some(options), body).await?.id)
    }

    /// Starts a created container.
    pub async fn start(&self, container: &str) -> Result<(), DockerError> {
        Ok(self.api.start_container(container, None).await?)
    }

    /// The host ports published for execd and for 8080.
    pub async fn host_ports(&self, container: &str) -> Result<(Option<u16>, Option<u16>), DockerError> {
        let info = self.api.inspect_container(container, None).await?;
        let ports = info.network_settings.and_then(|n| n.ports).unwrap_or_default();
        let host_port = |port: u16| {
            ports
                .get(&format!("{port}/tcp"))
                .and_then(|b| b.as_ref())
                .and_then(|b| b.iter().find_map(|b| b.host_port.as_deref()?.parse().ok()))
        };
        Ok((host_port(EXECD_PORT), host_port(HTTP_PORT)))
    }

    /// The container's state now; `None` when it no longer exists.
    pub async fn inspect(&self, container: &str) -> Result<Option<Live>, DockerError> {
        match self.api.inspect_container(container, None).await {
            Ok(info) => {
                let state = info.state.unwrap_or_default();
                Ok(Some(Live {
                    status: state.status.map(|s| s.to_string()).unwrap_or_default(),
                    exit_code: state.exit_code,
                    oom_killed: state.oom_killed.unwrap_or(false),
                    error: state.error.filter(|e| !e.is_empty()),
                }))
            }
            Err(e) => match DockerError::from(e) {
                DockerError::NotFound(_) => Ok(None),
                other => Err(other),
            },
        }
    }

    /// Every container of this sandboxd instance, by sandbox id.
    pub async fn list(&self, instance: &str) -> Result<BTreeMap<String, (String, Live)>, DockerError> {
        let filters = HashMap::from([("label".to_owned(), vec![format!("{LABEL_INSTANCE}={instance}")])]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let containers = self.api.list_containers(Some(options)).await?;
        Ok(containers
            .into_iter()
            .filter_map(|c| {
                let id = c.labels.as_ref()?.get(LABEL_ID)?.clone();
                let status = c.state.map(|s| s.to_string()).unwrap_or_default();
                let exit_code = c.status.as_deref().and_then(exit_code_of_status);
                let live = Live {
                    status,
                    exit_code,
                    oom_killed: false,
                    error: None,
                };
                Some((id, (c.id?, live)))
            })
            .collect())
    }

    /// Freezes every process of the container. A freezer that could not freeze yet is
    /// [`DockerError::Transient`].
    pub async fn pause(&self, container: &str) -> Result<(), DockerError> {
        self.api
            .pause_container(container)
            .await
            .map_err(|e| freezer_error(e.into()))
    }

    /// Thaws a paused container. A freezer that could not thaw yet is
    /// [`DockerError::Transient`].
    pub async fn unpause(&self, container: &str) -> Result<(), DockerError> {
        self.api
            .unpause_container(container)
            .await
            .map_err(|e| freezer_error(e.into()))
    }

    /// Kills and removes the container (with its anonymous volumes). Already gone is fine.
    pub async fn remove(&self, container: &str) -> Result<(), DockerError> {
        let options = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        match self.api.remove_container(container, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) => match DockerError::from(e) {
                DockerError::NotFound(_) => Ok(()),
                // "removal already in progress"
                DockerError::Conflict(_) => Ok(()),
                other => Err(other),
            },
        }
    }

    /// The last `tail` lines of the container's output (stdout and stderr, interleaved),
    /// written at or after `since` (epoch seconds) when given.
    pub async fn logs(
        &self,
        container: &str,
        tail: usize,
        since: Option<i64>,
    ) -> Result<String, DockerError> {
        let mut options = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .tail(&tail.to_string());
        if let Some(since) = since {
            // The engine's parameter is 32-bit seconds; clamp rather than wrap.
            options = options.since(since.clamp(0, i64::from(i32::MAX)) as i32);
        }
        let options = options.build();
        let mut stream = self.api.logs(container, Some(options));
        let mut text = Vec::new();
        while let Some(chunk) = stream.next().await {
            text.extend_from_slice(&chunk?.into_bytes());
        }
        Ok(String::from_utf8_lossy(&text).into_owned())
    }

    /// Creates a named volume when it does not exist; returns its mount point on the host.
    pub async fn ensure_volume(&self, name: &str) -> Result<String, DockerError> {
        match self.api.inspect_volume(name).await {
            Ok(v) => Ok(v.mountpoint),
            Err(e) => match DockerError::from(e) {
                DockerError::NotFound(_) => {
                    let create = bollard::models::VolumeCreateRequest {
                        name: Some(name.to_owned()),
                        ..Default::default()
                    };
                    Ok(self.api.create_volume(create).await?.mountpoint)
                }
                other => Err(other),
            },
        }
    }
}

/// The engine's 500 for a freeze that the cgroup v1 freezer gave up on while processes were
/// starting (runc: "unable to freeze"; the thaw side says "unable to thaw") is transient;
/// every other error stays what it was.
fn freezer_error(e: DockerError) -> DockerError {
    match e {
        DockerError::Engine(m) if m.contains("unable to freeze") || m.contains("unable to thaw") => {
            DockerError::Transient(m)
        }
        other => other,
    }
}

/// `Exited (137) 5 seconds ago` → 137.
fn exit_code_of_status(status: &str) -> Option<i64> {
    let rest = status.strip_prefix("Exited (")?;
    rest[..rest.find(')')?].parse().ok()
}

/// A tar holding `execd` (mode 0755).
fn agent_tar(binary: &[u8]) -> anyhow::Result<Bytes> {
    let mut tar = tar::Builder::new(Vec::with_capacity(binary.len() + 4096));
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o755);
    h.set_size(binary.len() as u64);
    h.set_path("execd")?;
    h.set_cksum();
    tar.append(&h, binary)?;
    Ok(Bytes::from(tar.into_inner()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_from_list_status() {
        assert_eq!(exit_code_of_status("Exited (137) 5 seconds ago"), Some(137));
        assert_eq!(exit_code_of_status("Exited (0) About a minute ago"), Some(0));
        assert_eq!(exit_code_of_status("Up 3 seconds"), None);
    }

    #[test]
    fn only_freezer_give_ups_are_transient() {
        let engine = |m: &str| DockerError::Engine(m.to_owned());
        let frozen = "500: Cannot pause container 1f2e: OCI runtime pause failed: unable to freeze: unknown";
        assert!(matches!(freezer_error(engine(frozen)), DockerError::Transient(_)));
        assert!(matches!(
            freezer_error(engine("500: OCI runtime resume failed: unable to thaw: unknown")),
            DockerError::Transient(_)
        ));
        assert!(matches!(
            freezer_error(engine("500: container 1f2e is not running")),
            DockerError::Engine(_)
        ));
        assert!(matches!(
            freezer_error(DockerError::Conflict("is already paused".into())),
            DockerError::Conflict(_)
        ));
    }

    #[test]
    fn the_agent_tar_holds_an_executable() {
        let tar = agent_tar(b"\x7fELF fake").unwrap();
        let mut archive = tar::Archive::new(&tar[..]);
        let entries: Vec<(String, u32)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().display().to_string(),
                    e.header().mode().unwrap(),
                )
            })
            .collect();
        assert_eq!(entries, [("execd".to_owned(), 0o755)]);
    }
}
