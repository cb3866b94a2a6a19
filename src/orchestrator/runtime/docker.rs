//! The Docker runtime: containers through the Engine API (bollard, unix socket, version
//! negotiated so that old engines such as 20.10 / API 1.41 work), and the injection of the
//! static execd into any image. The only module that sees bollard.
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
//! Knows containers, not sandboxes: container states become [`Observed`] here, published
//! ports become [`Target`]s, and the service decides the rest. Async.
//!
//! - `containers`: the engine's event stream, the containers view (roles by label), stats
//!   and log streams.

mod containers;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::Context as _;
use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, ContainerUpdateBody, HostConfig, MountType, MountVolumeOptions, PortBinding,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, UploadToContainerOptionsBuilder,
};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::{FutureExt as _, StreamExt};
use sha2::Digest as _;

use super::{
    Capabilities, ContainerInfo, Dial, Fut, ImageRole, Instance, LayerStep, LogQuery, Mount, Observed,
    Platform, PullError, PullEvent, PullFailure, Purpose, RegistryAuth, Resources, RootfsPause, Runtime,
    RuntimeError, RuntimeEvent, RuntimeKind, SandboxSpec, SpecFile, Target, Usage, EXECD_PORT, WORKSPACE_DIR,
};
use crate::wire::time::format_ms;

/// Where the agent volume is mounted inside every sandbox (read-only).
pub const AGENT_DIR: &str = "/opt/sandboxd";
/// Where execd is run from inside every sandbox: upstream's path, a read-only bind of the
/// single file, so that the rest of the image's `/opt/opensandbox` stays visible.
pub const AGENT_PATH: &str = "/opt/opensandbox/execd";
/// execd's state directory, a tmpfs in sandboxes with isolated sessions.
pub const ISOLATION_STATE: &str = "/var/lib/execd";
/// The conventional application port that is published too.
pub const HTTP_PORT: u16 = 8080;
/// How long a commit's stop waits for the container's processes to end before killing them.
const STOP_GRACE_SECONDS: i32 = 10;

/// Above this many instances, [`Runtime::observe_many`] lists every sandbox instead (one
/// filter value per instance makes the engine's request long; a page is at most 200).
const OBSERVE_MANY_MAX: usize = 200;

/// Label: the sandbox id (upstream's name).
pub const LABEL_ID: &str = "opensandbox.io/id";
/// Label: expiry (RFC 3339), or absent.
pub const LABEL_EXPIRES: &str = "opensandbox.io/expires-at";
/// Label: set to `true` for manual-cleanup sandboxes.
pub const LABEL_MANUAL: &str = "opensandbox.io/manual-cleanup";
/// Label: which sandboxd state file owns the container.
pub const LABEL_INSTANCE: &str = "io.execd.sandboxd.instance";
/// The named volume that holds sandbox `id`'s persistent workspace (`workspace.persistent`):
/// mounted at `/workspace`, kept by a Rootfs pause as every volume is, removed with the
/// sandbox.
pub fn workspace_volume(id: &str) -> String {
    format!("sandboxd-ws-{id}")
}

/// Label of the agent volumes.
pub const LABEL_AGENT: &str = "io.execd.sandboxd.agent";
/// Label: what a container is for, [`ROLE_SANDBOX`] or [`ROLE_BUILD`] (and, on an image
/// sandboxd committed, [`ROLE_IMAGE`], [`ROLE_SNAPSHOT`] or [`ROLE_PAUSED`]). In the reserved
/// `sandboxd.io/` prefix, so no sandbox's metadata can set it.
pub const LABEL_ROLE: &str = "sandboxd.io/role";
/// [`LABEL_ROLE`] of sandboxes. Set on every sandbox explicitly, since a container inherits
/// the labels of its image and a built image carries [`ROLE_IMAGE`].
pub const ROLE_SANDBOX: &str = "sandbox";
/// [`LABEL_ROLE`] of the container a template version is built in.
pub const ROLE_BUILD: &str = "template-build";
/// [`LABEL_ROLE`] of a committed template image. `docker commit` keeps every label of the
/// container (it can change values, not drop keys), so the image says what it is instead of
/// "build": a container made from it by hand is never taken for an orphaned build.
pub const ROLE_IMAGE: &str = "template-image";
/// [`LABEL_ROLE`] of a snapshot's image (`opensandbox-snapshots:<id>`, also a fork's).
pub const ROLE_SNAPSHOT: &str = "snapshot-image";
/// [`LABEL_ROLE`] of a Rootfs-paused sandbox's image (`sandboxd-paused/<id>:latest`).
pub const ROLE_PAUSED: &str = "paused-image";
/// Environment variables a commit blanks: the sandbox's execd token (a container made from
/// the image sets its own) and its pre-start hook (it ran; its work is in the layer).
const BLANKED_ENV: [&str; 2] = ["EXECD_ACCESS_TOKEN", crate::wire::lifecycle::LIFECYCLE_ENV];
/// Label of a build container and its image: the template's name.
pub const LABEL_TEMPLATE: &str = "sandboxd.io/template";
/// Label of a build container and its image: the version built.
pub const LABEL_TEMPLATE_VERSION: &str = "sandboxd.io/template-version";

/// What the Docker runtime is configured with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The static execd to inject.
    pub agent: std::path::PathBuf,
    /// This sandboxd's state-file identity, labelled on every container it creates, so that
    /// several sandboxd instances can share one engine without touching each other's.
    pub instance: String,
    /// Host address sandbox ports are published on.
    pub publish_ip: IpAddr,
    /// Host that endpoints advertise.
    pub public_host: String,
    /// Docker network mode of sandboxes.
    pub network: String,
    /// The seccomp profile (JSON) for sandboxes that ask for isolation; `None` refuses them.
    pub isolation_profile: Option<String>,
}

/// The engine's error, classified.
fn classify(op: &'static str, e: BollardError) -> RuntimeError {
    match e {
        BollardError::DockerResponseServerError { status_code, message } => match status_code {
            404 => RuntimeError::NotFound(message),
            400 => RuntimeError::Rejected(format!("docker rejected the request: {message}")),
            409 => RuntimeError::Conflict(message),
            _ => RuntimeError::Engine {
                op,
                message: format!("{status_code}: {message}"),
            },
        },
        BollardError::IOError { err } => RuntimeError::Unavailable(err.to_string()),
        other => RuntimeError::Engine {
            op,
            message: other.to_string(),
        },
    }
}

/// The host ports published for execd and for 8080: a Docker [`Instance`]'s data.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Ports {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    execd: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    http: Option<u16>,
}

impl Ports {
    fn of(instance: &Instance) -> Self {
        serde_json::from_str(&instance.data).unwrap_or_default()
    }

    fn instance(self, container: String) -> Instance {
        Instance {
            kind: RuntimeKind::Docker,
            reference: container,
            data: serde_json::to_string(&self).unwrap_or_default(),
        }
    }
}

/// The engine connection plus the agent, ready to upload.
pub struct Docker {
    api: bollard::Docker,
    settings: Settings,
    /// A tar holding `execd`, made once at start.
    agent_tar: Bytes,
    /// `sandboxd-execd-<hash>`: the volume every sandbox mounts at [`AGENT_DIR`].
    agent_volume: String,
    /// Set once this process has filled the volume: the host path of `execd` in it, the
    /// source of the file bind at [`AGENT_PATH`].
    agent_ready: tokio::sync::OnceCell<String>,
}

impl Docker {
    /// The engine's list of this instance's sandboxes (build containers left out), by sandbox
    /// id; with `ids`, only the containers with those ids (the engine ORs `id` filters and
    /// looks each up rather than walking every container).
    fn list_sandboxes(&self, ids: Option<Vec<String>>) -> Fut<'_, BTreeMap<String, (Instance, Observed)>> {
        async move {
            let mut filters = HashMap::from([(
                "label".to_owned(),
                vec![format!("{LABEL_INSTANCE}={}", self.settings.instance)],
            )]);
            if let Some(ids) = ids {
                filters.insert("id".to_owned(), ids);
            }
            let containers = containers::list(&self.api, &filters).await?;
            Ok(containers
                .into_iter()
                .filter_map(|c| {
                    let labels = c.labels.as_ref()?;
                    if labels.get(LABEL_ROLE).map(String::as_str) == Some(ROLE_BUILD) {
                        return None;
                    }
                    let id = labels.get(LABEL_ID)?.clone();
                    let status = c.state.map(|s| s.to_string()).unwrap_or_default();
                    let exit_code = c.status.as_deref().and_then(exit_code_of_status);
                    let published = |port: u16| {
                        c.ports
                            .as_ref()?
                            .iter()
                            .find_map(|p| (p.private_port == port).then_some(p.public_port).flatten())
                    };
                    let ports = Ports {
                        execd: published(EXECD_PORT),
                        http: published(HTTP_PORT),
                    };
                    Some((
                        id,
                        (ports.instance(c.id?), observed(&status, exit_code, false, None)),
                    ))
                })
                .collect())
        }
        .boxed()
    }

    /// Connects to the local engine (DOCKER_HOST or the default socket), negotiates the API
    /// version, and packs the agent for injection.
    pub async fn connect(settings: Settings) -> anyhow::Result<Self> {
        let agent = &settings.agent;
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
            settings,
        })
    }

    /// Makes sure the agent volume holds this process's execd and returns the host path of
    /// the binary in it: the first call creates the volume and copies the binary in through a
    /// container of `image` that is never started (any image will do, so that injection never
    /// depends on what is in it); later calls return at once.
    async fn ensure_agent(&self, image: &str) -> Result<String, RuntimeError> {
        self.agent_ready
            .get_or_try_init(|| async {
                let create = bollard::models::VolumeCreateRequest {
                    name: Some(self.agent_volume.clone()),
                    labels: Some(HashMap::from([(LABEL_AGENT.to_owned(), "true".to_owned())])),
                    ..Default::default()
                };
                // Creating an existing volume (another sandboxd with the same build) returns it.
                let volume = self
                    .api
                    .create_volume(create)
                    .await
                    .map_err(|e| classify("create the agent volume", e))?;
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
                let filler = self
                    .api
                    .create_container(None, body)
                    .await
                    .map_err(|e| classify("create the agent filler", e))?
                    .id;
                let options = UploadToContainerOptionsBuilder::default().path(AGENT_DIR).build();
                let copied = self
                    .api
                    .upload_to_container(&filler, Some(options), bollard::body_full(self.agent_tar.clone()))
                    .await
                    .map_err(|e| classify("copy the agent", e));
                let removed = self.remove_container(&filler).await;
                copied?;
                removed?;
                tracing::info!(volume = %self.agent_volume, "agent volume filled");
                Ok::<String, RuntimeError>(format!("{}/execd", volume.mountpoint.trim_end_matches('/')))
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
    fn agent_mount(&self, read_only: bool) -> bollard::models::Mount {
        bollard::models::Mount {
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

    /// Makes sure the image is present, pulling it (with the request's registry credentials,
    /// when it had some) when it is not. The error says why the image cannot be had.
    async fn ensure_image(&self, image: &str, auth: Option<RegistryAuth>) -> Result<(), RuntimeError> {
        match self.api.inspect_image(image).await {
            Ok(_) => return Ok(()),
            Err(e) => match classify("inspect the image", e) {
                RuntimeError::NotFound(_) => {}
                other => return Err(other),
            },
        }
        let options = CreateImageOptionsBuilder::default().from_image(image).build();
        let mut pull = self.api.create_image(Some(options), None, auth.map(credentials));
        let cannot = |m: &str| {
            RuntimeError::ImageNotFound(format!(
                "image {image:?} is not present and cannot be pulled: {m}"
            ))
        };
        while let Some(progress) = pull.next().await {
            let progress = progress.map_err(|e| match classify("pull the image", e) {
                RuntimeError::Unavailable(m) => RuntimeError::Unavailable(m),
                RuntimeError::NotFound(m)
                | RuntimeError::Rejected(m)
                | RuntimeError::Conflict(m)
                | RuntimeError::Transient(m)
                | RuntimeError::ReadyTimeout(m)
                | RuntimeError::ImageNotFound(m)
                | RuntimeError::Engine { message: m, .. } => cannot(&m),
            })?;
            if let Some(detail) = progress.error_detail.and_then(|d| d.message) {
                return Err(cannot(&detail));
            }
        }
        Ok(())
    }

    /// Creates a named volume when it does not exist; returns its mount point on the host.
    async fn ensure_volume(&self, name: &str) -> Result<String, RuntimeError> {
        match self.api.inspect_volume(name).await {
            Ok(v) => Ok(v.mountpoint),
            Err(e) => match classify("inspect a volume", e) {
                RuntimeError::NotFound(_) => {
                    let create = bollard::models::VolumeCreateRequest {
                        name: Some(name.to_owned()),
                        ..Default::default()
                    };
                    Ok(self
                        .api
                        .create_volume(create)
                        .await
                        .map_err(|e| classify("create a volume", e))?
                        .mountpoint)
                }
                other => Err(other),
            },
        }
    }

    /// `src:dst[:ro]` binds for the spec's mounts (named volumes created when missing).
    async fn binds(&self, mounts: &[Mount]) -> Result<Vec<String>, RuntimeError> {
        let mut binds = Vec::with_capacity(mounts.len());
        for mount in mounts {
            let (source, mount_path, read_only) = match mount {
                Mount::HostPath {
                    path,
                    mount_path,
                    read_only,
                } => (path.clone(), mount_path, *read_only),
                Mount::Volume {
                    name,
                    sub_path,
                    mount_path,
                    read_only,
                } => {
                    let mountpoint = self.ensure_volume(name).await?;
                    let source = match sub_path {
                        Some(sub) => format!("{mountpoint}/{sub}"),
                        None => name.clone(),
                    };
                    (source, mount_path, *read_only)
                }
            };
            binds.push(format!(
                "{source}:{mount_path}{}",
                if read_only { ":ro" } else { "" }
            ));
        }
        Ok(binds)
    }

    /// Creates (does not start) the container with execd as its init and returns its id. Its
    /// ports are published on `ports` where given, else on any free host port.
    async fn create_container(
        &self,
        spec: SandboxSpec,
        agent: &str,
        ports: Ports,
    ) -> Result<String, RuntimeError> {
        if spec.isolation && self.settings.isolation_profile.is_none() {
            return Err(RuntimeError::Rejected(
                "isolation: sandboxd has no seccomp profile for isolated sessions".into(),
            ));
        }
        let mut mounts = spec.mounts.clone();
        if spec.workspace.is_some() {
            mounts.push(Mount::Volume {
                name: workspace_volume(&spec.id),
                sub_path: None,
                mount_path: WORKSPACE_DIR.into(),
                read_only: false,
            });
        }
        let binds = self.binds(&mounts).await?;
        let mut labels: HashMap<String, String> = spec.labels.into_iter().collect();
        labels.insert(LABEL_INSTANCE.into(), self.settings.instance.clone());
        let name = match &spec.purpose {
            Purpose::Sandbox => {
                labels.insert(LABEL_ID.into(), spec.id.clone());
                labels.insert(LABEL_ROLE.into(), ROLE_SANDBOX.into());
                match spec.expires_at {
                    Some(at) => labels.insert(LABEL_EXPIRES.into(), format_ms(at)),
                    None => labels.insert(LABEL_MANUAL.into(), "true".into()),
                };
                format!("sandbox-{}", spec.id)
            }
            // No sandbox id and no expiry: a build is no sandbox, and its labels end up on
            // the image it commits (and on every container made from that image).
            Purpose::Build { template, version } => {
                labels.insert(LABEL_ROLE.into(), ROLE_BUILD.into());
                labels.insert(LABEL_TEMPLATE.into(), template.clone());
                labels.insert(LABEL_TEMPLATE_VERSION.into(), version.to_string());
                format!("sandboxd-build-{}", spec.id)
            }
        };
        let mut entrypoint = vec![AGENT_PATH.to_owned(), "init".to_owned(), "--".to_owned()];
        entrypoint.extend(spec.entrypoint);
        let publish_ip = Some(self.settings.publish_ip.to_string());
        let binding = |port: Option<u16>| {
            Some(vec![PortBinding {
                host_ip: publish_ip.clone(),
                // Empty: any free port.
                host_port: Some(port.map(|p| p.to_string()).unwrap_or_default()),
            }])
        };
        let port_bindings = HashMap::from([
            (format!("{EXECD_PORT}/tcp"), binding(ports.execd)),
            (format!("{HTTP_PORT}/tcp"), binding(ports.http)),
        ]);
        let mut security_opt = vec!["no-new-privileges:true".to_owned()];
        let (mut masked_paths, mut readonly_paths, mut tmpfs) = (None, None, None);
        if let (true, Some(profile)) = (spec.isolation, &self.settings.isolation_profile) {
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
            memory: spec.resources.memory,
            nano_cpus: spec.resources.nano_cpus,
            pids_limit: Some(spec.resources.pids),
            security_opt: Some(security_opt),
            masked_paths,
            readonly_paths,
            tmpfs,
            binds: (!binds.is_empty()).then_some(binds),
            mounts: Some(vec![
                self.agent_mount(true),
                bollard::models::Mount {
                    target: Some(AGENT_PATH.to_owned()),
                    source: Some(agent.to_owned()),
                    typ: Some(MountType::BIND),
                    read_only: Some(true),
                    ..Default::default()
                },
            ]),
            network_mode: Some(self.settings.network.clone()),
            ..Default::default()
        };
        let body = ContainerCreateBody {
            image: Some(spec.image),
            entrypoint: Some(entrypoint),
            cmd: Some(Vec::new()),
            env: Some(spec.env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()),
            labels: Some(labels),
            exposed_ports: Some(vec![format!("{EXECD_PORT}/tcp"), format!("{HTTP_PORT}/tcp")]),
            host_config: Some(host_config),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::default().name(&name).build();
        Ok(self
            .api
            .create_container(Some(options), body)
            .await
            .map_err(|e| classify("create the container", e))?
            .id)
    }

    /// Writes `files` into the created (not yet started) container: one tar of regular files
    /// owned by root, unpacked at `/`.
    async fn write_files(&self, container: &str, files: &[SpecFile]) -> Result<(), RuntimeError> {
        if files.is_empty() {
            return Ok(());
        }
        let tar = files_tar(files, crate::wire::time::now_ms() / 1000).map_err(|e| RuntimeError::Engine {
            op: "pack the sandbox's files",
            message: e.to_string(),
        })?;
        let options = UploadToContainerOptionsBuilder::default().path("/").build();
        self.api
            .upload_to_container(container, Some(options), bollard::body_full(tar))
            .await
            .map_err(|e| classify("write the sandbox's files", e))
    }

    /// Starts the container and reads its published ports (none when it has already exited).
    async fn start_container(&self, container: &str) -> Result<Ports, RuntimeError> {
        self.api
            .start_container(container, None)
            .await
            .map_err(|e| classify("start the container", e))?;
        let info = self
            .api
            .inspect_container(container, None)
            .await
            .map_err(|e| classify("inspect the container", e))?;
        let ports = info.network_settings.and_then(|n| n.ports).unwrap_or_default();
        let host_port = |port: u16| {
            ports
                .get(&format!("{port}/tcp"))
                .and_then(|b| b.as_ref())
                .and_then(|b| b.iter().find_map(|b| b.host_port.as_deref()?.parse().ok()))
        };
        Ok(Ports {
            execd: host_port(EXECD_PORT),
            http: host_port(HTTP_PORT),
        })
    }

    /// Kills and removes the container (with its anonymous volumes). Already gone is fine.
    async fn remove_container(&self, container: &str) -> Result<(), RuntimeError> {
        let options = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        match self.api.remove_container(container, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) => match classify("remove the container", e) {
                RuntimeError::NotFound(_) => Ok(()),
                // "removal already in progress"
                RuntimeError::Conflict(_) => Ok(()),
                other => Err(other),
            },
        }
    }

    /// Creates the container, writes its files and starts it; on failure removes it.
    async fn create_started(
        &self,
        spec: SandboxSpec,
        agent: &str,
        files: &[SpecFile],
        ports: Ports,
    ) -> Result<Instance, RuntimeError> {
        let start = spec.start;
        let container = self.create_container(spec, agent, ports).await?;
        let started = async {
            self.write_files(&container, files).await?;
            if !start {
                // Created only: no ports are published until `start`.
                return Ok(Ports::default());
            }
            self.start_container(&container).await
        };
        match started.await {
            Ok(ports) => Ok(ports.instance(container)),
            Err(e) => {
                if let Err(removal) = self.remove_container(&container).await {
                    tracing::error!(%container, error = %removal, "cannot remove a container that failed to start; reconciliation will retry");
                }
                Err(e)
            }
        }
    }

    fn connect_ip(&self) -> IpAddr {
        if self.settings.publish_ip.is_unspecified() {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            self.settings.publish_ip
        }
    }
}

impl Runtime for Docker {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Docker
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            freeze: true,
            isolation: self.settings.isolation_profile.is_some(),
            builds: true,
            snapshots: true,
            host_network: self.settings.network == "host",
            // No GPU device requests, and no storage-opt size (it needs overlay2 on xfs
            // with project quotas).
            gpus: false,
            all_gpus: false,
            disk: false,
            rootfs_pause: RootfsPause::Commit,
        }
    }

    fn version(&self) -> String {
        self.api.client_version().to_string()
    }

    /// A replacement (a Rootfs resume) is published on its predecessor's host ports first;
    /// when the engine cannot bind them (taken meanwhile), on any free ones.
    fn create(&self, mut spec: SandboxSpec) -> Fut<'_, Instance> {
        async move {
            self.ensure_image(&spec.image, spec.image_auth.take()).await?;
            let agent = self.ensure_agent(&spec.image).await?;
            let files = std::mem::take(&mut spec.files);
            let wanted = spec.previous.as_ref().map(Ports::of).unwrap_or_default();
            if wanted != Ports::default() {
                match self.create_started(spec.clone(), &agent, &files, wanted).await {
                    Err(RuntimeError::Engine { message, .. }) if port_taken(&message) => {
                        tracing::info!(sandbox = %spec.id, %message, "the previous host ports are taken; publishing on free ones");
                    }
                    other => return other,
                }
            }
            self.create_started(spec, &agent, &files, Ports::default()).await
        }
        .boxed()
    }

    fn start<'a>(&'a self, instance: &'a Instance) -> Fut<'a, Instance> {
        async move {
            let ports = self.start_container(&instance.reference).await?;
            Ok(ports.instance(instance.reference.clone()))
        }
        .boxed()
    }

    /// A pids limit of 0 is left as it is. The memory swap limit follows the memory limit as at create (the engine's default
    /// there: twice the memory), so that a larger memory limit is not refused as above it.
    fn resize<'a>(&'a self, instance: &'a Instance, resources: Resources) -> Fut<'a, ()> {
        async move {
            let body = ContainerUpdateBody {
                memory: resources.memory,
                memory_swap: resources.memory.map(|m| m.saturating_mul(2)),
                nano_cpus: resources.nano_cpus,
                pids_limit: (resources.pids > 0).then_some(resources.pids),
                ..Default::default()
            };
            self.api
                .update_container(&instance.reference, body)
                .await
                .map_err(|e| classify("update the container's limits", e))
        }
        .boxed()
    }

    fn observe<'a>(&'a self, instance: &'a Instance) -> Fut<'a, Observed> {
        async move {
            match self.api.inspect_container(&instance.reference, None).await {
                Ok(info) => {
                    let state = info.state.unwrap_or_default();
                    let status = state.status.map(|s| s.to_string()).unwrap_or_default();
                    Ok(observed(
                        &status,
                        state.exit_code,
                        state.oom_killed.unwrap_or(false),
                        state.error.filter(|e| !e.is_empty()),
                    ))
                }
                Err(e) => match classify("inspect the container", e) {
                    RuntimeError::NotFound(_) => Ok(Observed::Gone),
                    other => Err(other),
                },
            }
        }
        .boxed()
    }

    fn observe_all(&self) -> Fut<'_, BTreeMap<String, (Instance, Observed)>> {
        self.list_sandboxes(None)
    }

    fn observe_many<'a>(
        &'a self,
        instances: &'a [Instance],
    ) -> Fut<'a, BTreeMap<String, (Instance, Observed)>> {
        if instances.is_empty() {
            return async { Ok(BTreeMap::new()) }.boxed();
        }
        if instances.len() > OBSERVE_MANY_MAX {
            return self.observe_all();
        }
        self.list_sandboxes(Some(instances.iter().map(|i| i.reference.clone()).collect()))
    }

    fn pause<'a>(&'a self, instance: &'a Instance) -> Fut<'a, ()> {
        async move {
            self.api
                .pause_container(&instance.reference)
                .await
                .map_err(|e| freezer_error(classify("pause", e)))
        }
        .boxed()
    }

    fn unpause<'a>(&'a self, instance: &'a Instance) -> Fut<'a, ()> {
        async move {
            self.api
                .unpause_container(&instance.reference)
                .await
                .map_err(|e| freezer_error(classify("resume", e)))
        }
        .boxed()
    }

    fn remove<'a>(&'a self, instance: &'a Instance) -> Fut<'a, ()> {
        self.remove_container(&instance.reference).boxed()
    }

    /// A template build's container is stopped first (execd forwards the SIGTERM; the rest is
    /// killed after [`STOP_GRACE_SECONDS`]), so nothing writes while its layer is saved; a
    /// sandbox's is frozen by the engine for the commit only (`pause=true`, which leaves a
    /// frozen one frozen), and a freezer that gives up is [`RuntimeError::Transient`]. The
    /// image gets the base image's configuration: `docker commit` merges the container's
    /// configuration into the one given wherever that is empty or lacks a key, so every field
    /// that differs is given explicitly: the base's entrypoint (an empty list, never none, or
    /// the merge puts execd's init back) and command, its labels with [`LABEL_ROLE`] set to the
    /// role's, and its environment with [`BLANKED_ENV`] blanked (the container's token must
    /// not be kept; a container made from the image sets its own). The container's exposed
    /// ports (execd's and 8080) stay.
    fn commit<'a>(&'a self, instance: &'a Instance, image: &'a str, role: ImageRole) -> Fut<'a, ()> {
        async move {
            let container = &instance.reference;
            let live = match role {
                ImageRole::Template => {
                    let options = bollard::query_parameters::StopContainerOptionsBuilder::default()
                        .t(STOP_GRACE_SECONDS)
                        .build();
                    match self.api.stop_container(container, Some(options)).await {
                        Ok(()) => {}
                        // 304: already stopped.
                        Err(BollardError::DockerResponseServerError { status_code: 304, .. }) => {}
                        Err(e) => return Err(classify("stop the container", e)),
                    }
                    false
                }
                ImageRole::Snapshot | ImageRole::Paused => true,
            };
            let info = self
                .api
                .inspect_container(container, None)
                .await
                .map_err(|e| classify("inspect the container", e))?;
            let base_id = info.image.ok_or_else(|| RuntimeError::Engine {
                op: "inspect the container",
                message: "the engine did not say which image it runs".into(),
            })?;
            let base = self
                .api
                .inspect_image(&base_id)
                .await
                .map_err(|e| classify("inspect the base image", e))?
                .config
                .unwrap_or_default();
            let (repo, tag) = split_reference(image);
            let mut labels = base.labels.unwrap_or_default();
            labels.insert(
                LABEL_ROLE.into(),
                match role {
                    ImageRole::Template => ROLE_IMAGE,
                    ImageRole::Snapshot => ROLE_SNAPSHOT,
                    ImageRole::Paused => ROLE_PAUSED,
                }
                .into(),
            );
            let mut env = base.env.unwrap_or_default();
            for name in BLANKED_ENV {
                env.retain(|e| !e.starts_with(&format!("{name}=")));
                env.push(format!("{name}="));
            }
            let config = bollard::models::ContainerConfig {
                entrypoint: Some(base.entrypoint.unwrap_or_default()),
                cmd: Some(base.cmd.unwrap_or_default()),
                env: Some(env),
                labels: Some(labels),
                working_dir: base.working_dir,
                user: base.user,
                ..Default::default()
            };
            let mut options = bollard::query_parameters::CommitContainerOptionsBuilder::default()
                .container(container)
                .repo(repo)
                .pause(live);
            if let Some(tag) = tag {
                options = options.tag(tag);
            }
            self.api
                .commit_container(options.build(), config)
                .await
                .map_err(|e| freezer_error(classify("commit the container", e)))?;
            Ok(())
        }
        .boxed()
    }

    fn builds(&self) -> Fut<'_, Vec<Instance>> {
        async move {
            let filters = HashMap::from([(
                "label".to_owned(),
                vec![
                    format!("{LABEL_INSTANCE}={}", self.settings.instance),
                    format!("{LABEL_ROLE}={ROLE_BUILD}"),
                ],
            )]);
            let containers = containers::list(&self.api, &filters).await?;
            Ok(containers
                .into_iter()
                // A sandbox always has its id; a build never does.
                .filter(|c| c.labels.as_ref().is_some_and(|l| !l.contains_key(LABEL_ID)))
                .filter_map(|c| Some(Ports::default().instance(c.id?)))
                .collect())
        }
        .boxed()
    }

    /// The named volume [`workspace_volume`]; already gone is fine.
    fn remove_workspace<'a>(&'a self, id: &'a str) -> Fut<'a, ()> {
        async move {
            let name = workspace_volume(id);
            match self
                .api
                .remove_volume(&name, None::<bollard::query_parameters::RemoveVolumeOptions>)
                .await
            {
                Ok(()) => Ok(()),
                Err(e) => match classify("remove the workspace volume", e) {
                    RuntimeError::NotFound(_) => Ok(()),
                    other => Err(other),
                },
            }
        }
        .boxed()
    }

    fn remove_image<'a>(&'a self, image: &'a str) -> Fut<'a, ()> {
        async move {
            let options = bollard::query_parameters::RemoveImageOptionsBuilder::default()
                .force(false)
                .build();
            match self.api.remove_image(image, Some(options), None).await {
                Ok(_) => Ok(()),
                Err(e) => match classify("remove the image", e) {
                    RuntimeError::NotFound(_) => Ok(()),
                    other => Err(other),
                },
            }
        }
        .boxed()
    }

    fn logs<'a>(&'a self, instance: &'a Instance, tail: usize, since: Option<i64>) -> Fut<'a, String> {
        async move {
            let mut options = LogsOptionsBuilder::default()
                .stdout(true)
                .stderr(true)
                .tail(&tail.to_string());
            if let Some(since) = since {
                // The engine's parameter is 32-bit seconds; clamp rather than wrap.
                options = options.since(since.clamp(0, i64::from(i32::MAX)) as i32);
            }
            let options = options.build();
            let mut stream = self.api.logs(&instance.reference, Some(options));
            let mut text = Vec::new();
            while let Some(chunk) = stream.next().await {
                text.extend_from_slice(&chunk.map_err(|e| classify("read logs", e))?.into_bytes());
            }
            Ok(String::from_utf8_lossy(&text).into_owned())
        }
        .boxed()
    }

    fn tidy(&self) -> BoxFuture<'_, ()> {
        self.prune_agent_volumes().boxed()
    }

    fn image_present<'a>(&'a self, image: &'a str, platform: Option<&'a Platform>) -> Fut<'a, bool> {
        async move {
            match self.api.inspect_image(image).await {
                Ok(info) => Ok(platform.is_none_or(|p| {
                    info.os.as_deref() == Some(p.os.as_str())
                        && info.architecture.as_deref() == Some(p.arch.as_str())
                })),
                Err(e) => match classify("inspect the image", e) {
                    RuntimeError::NotFound(_) => Ok(false),
                    other => Err(other),
                },
            }
        }
        .boxed()
    }

    /// The engine's `/images/create` stream; dropping it closes the connection, which makes
    /// dockerd abort the pull (unless another client waits for the same pull).
    fn pull<'a>(
        &'a self,
        image: &'a str,
        auth: Option<RegistryAuth>,
        platform: Option<Platform>,
    ) -> BoxStream<'a, Result<PullEvent, PullError>> {
        let mut options = CreateImageOptionsBuilder::default().from_image(image);
        if let Some(p) = &platform {
            options = options.platform(&format!("{}/{}", p.os, p.arch));
        }
        self.api
            .create_image(Some(options.build()), None, auth.map(credentials))
            .filter_map(|item| {
                std::future::ready(match item {
                    Ok(info) => layer_event(&info).map(Ok),
                    Err(e) => Some(Err(pull_error(e))),
                })
            })
            .boxed()
    }

    fn events(&self, since: Option<i64>) -> BoxStream<'static, Result<RuntimeEvent, RuntimeError>> {
        containers::events(self.api.clone(), &self.settings.instance, since)
    }

    fn containers(&self) -> Fut<'_, Vec<ContainerInfo>> {
        containers::containers(&self.api, &self.settings.instance).boxed()
    }

    fn container<'a>(&'a self, reference: &'a str) -> Fut<'a, Option<ContainerInfo>> {
        containers::container(&self.api, &self.settings.instance, reference).boxed()
    }

    fn usage<'a>(&'a self, reference: &'a str) -> Fut<'a, Option<Usage>> {
        containers::usage(&self.api, reference).boxed()
    }

    fn log_stream(
        &self,
        reference: &str,
        query: LogQuery,
    ) -> BoxStream<'static, Result<Bytes, RuntimeError>> {
        containers::log_stream(&self.api, reference, query)
    }

    /// 8080 is published itself; 44772 is execd; any other port goes through execd's `/proxy`.
    fn target(&self, instance: &Instance, port: u16) -> Option<Target> {
        let ports = Ports::of(instance);
        let (host_port, prefix, execd) = match port {
            HTTP_PORT => (ports.http?, String::new(), false),
            EXECD_PORT => (ports.execd?, String::new(), true),
            other => (ports.execd?, format!("/proxy/{other}"), true),
        };
        Some(Target {
            dial: Dial::Tcp(SocketAddr::new(self.connect_ip(), host_port)),
            public: Some(format!("{}:{host_port}", self.settings.public_host)),
            prefix,
            execd,
        })
    }
}

/// Docker's container state → [`Observed`].
fn observed(status: &str, exit_code: Option<i64>, oom: bool, error: Option<String>) -> Observed {
    match status {
        "running" | "restarting" => Observed::Running,
        "paused" => Observed::Paused,
        "created" => Observed::Starting,
        "removing" => Observed::Stopping,
        "exited" => Observed::Exited {
            code: exit_code,
            oom,
            message: error,
        },
        // A container the engine could not stop or remove cleanly has failed, whatever code
        // it recorded.
        "dead" => Observed::Exited {
            code: Some(exit_code.filter(|&c| c != 0).unwrap_or(-1)),
            oom,
            message: error,
        },
        other => Observed::Unknown(format!("docker reports {other:?}")),
    }
}

/// The engine's 500 for a freeze that the cgroup v1 freezer gave up on while processes were
/// starting (runc: "unable to freeze"; the thaw side says "unable to thaw") is transient;
/// every other error stays what it was.
fn freezer_error(e: RuntimeError) -> RuntimeError {
    match e {
        RuntimeError::Engine { message, .. }
            if message.contains("unable to freeze") || message.contains("unable to thaw") =>
        {
            RuntimeError::Transient(message)
        }
        other => other,
    }
}

/// The engine's words when a host port a container asks for is not free (dockerd: "Bind for
/// 127.0.0.1:40001 failed: port is already allocated"; or the kernel's "address already in
/// use").
fn port_taken(message: &str) -> bool {
    message.contains("port is already allocated") || message.contains("address already in use")
}

/// A progress message of `/images/create` → a layer's step; `None` for messages about the
/// whole pull (`Pulling from …`, `Digest: …`, `Status: …`) and steps that change nothing
/// (`Verifying Checksum`, `Retrying in …`).
fn layer_event(info: &bollard::models::CreateImageInfo) -> Option<PullEvent> {
    let layer = info.id.as_deref().filter(|id| !id.is_empty())?;
    let step = match info.status.as_deref()? {
        "Pulling fs layer" | "Waiting" => LayerStep::Known,
        "Downloading" => {
            let detail = info.progress_detail.as_ref();
            let bytes = |n: Option<i64>| n.and_then(|n| u64::try_from(n).ok());
            LayerStep::Downloading {
                current: bytes(detail.and_then(|d| d.current)).unwrap_or(0),
                total: bytes(detail.and_then(|d| d.total)).filter(|&t| t > 0),
            }
        }
        "Download complete" | "Extracting" | "Pull complete" => LayerStep::Done,
        "Already exists" => LayerStep::Present,
        _ => return None,
    };
    Some(PullEvent {
        layer: layer.to_owned(),
        step,
    })
}

/// Registry credentials as the engine takes them (`X-Registry-Auth`).
fn credentials(auth: RegistryAuth) -> bollard::auth::DockerCredentials {
    bollard::auth::DockerCredentials {
        username: Some(auth.username),
        password: Some(auth.password),
        ..Default::default()
    }
}

/// A failed pull, classified: by the engine's status where it gives one before the stream
/// starts (404), else by the registry's words, which dockerd passes on.
fn pull_error(e: BollardError) -> PullError {
    let (status, message) = match e {
        BollardError::DockerResponseServerError { status_code, message } => (Some(status_code), message),
        BollardError::DockerStreamError { error } => (None, error),
        BollardError::IOError { err } => {
            return PullError {
                failure: PullFailure::RuntimeUnavailable,
                message: err.to_string(),
            }
        }
        other => (None, other.to_string()),
    };
    PullError {
        failure: pull_failure(status, &message),
        message,
    }
}

fn pull_failure(status: Option<u16>, message: &str) -> PullFailure {
    let m = message.to_ascii_lowercase();
    let says = |needles: &[&str]| needles.iter().any(|n| m.contains(n));
    if status == Some(404) || says(&["manifest unknown", "name unknown"]) {
        PullFailure::ImageNotFound
    } else if says(&[
        "unauthorized",
        "authentication required",
        "no basic auth credentials",
        "incorrect username or password",
        "denied",
    ]) {
        PullFailure::Unauthorized
    } else if says(&[
        "dial tcp",
        "connection refused",
        "no such host",
        "i/o timeout",
        "network is unreachable",
        "no route to host",
        "connection reset",
        "tls handshake",
        "server gave http response to https client",
        "client.timeout exceeded",
    ]) {
        PullFailure::RegistryUnreachable
    } else {
        PullFailure::Failed
    }
}

/// `repo:tag` → (`repo`, `tag`); a reference without a tag (a colon in a registry's port
/// does not count) has none.
fn split_reference(image: &str) -> (&str, Option<&str>) {
    match image.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo, Some(tag)),
        _ => (image, None),
    }
}

/// `Exited (137) 5 seconds ago` → 137.
fn exit_code_of_status(status: &str) -> Option<i64> {
    let rest = status.strip_prefix("Exited (")?;
    rest[..rest.find(')')?].parse().ok()
}

/// A tar of `files` (paths made relative to `/`), each owned by root with its mode. It has
/// no directory entries: the engine creates missing parents (0755, root) and leaves existing
/// ones alone, where an entry for, say, `tmp/` would reset `/tmp`'s mode and owner.
fn files_tar(files: &[SpecFile], mtime: i64) -> std::io::Result<Bytes> {
    let mut tar = tar::Builder::new(Vec::new());
    for file in files {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(file.mode & 0o7777);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(mtime.max(0) as u64);
        h.set_size(file.content.len() as u64);
        tar.append_data(&mut h, file.path.trim_start_matches('/'), &file.content[..])?;
    }
    Ok(Bytes::from(tar.into_inner()?))
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
    fn references_split_at_the_tag_not_at_a_registry_port() {
        assert_eq!(
            split_reference("sandboxd/tpl-a:v1"),
            ("sandboxd/tpl-a", Some("v1"))
        );
        assert_eq!(
            split_reference("127.0.0.1:5000/x:v2"),
            ("127.0.0.1:5000/x", Some("v2"))
        );
        assert_eq!(split_reference("127.0.0.1:5000/x"), ("127.0.0.1:5000/x", None));
        assert_eq!(split_reference("busybox"), ("busybox", None));
    }

    #[test]
    fn exit_codes_from_list_status() {
        assert_eq!(exit_code_of_status("Exited (137) 5 seconds ago"), Some(137));
        assert_eq!(exit_code_of_status("Exited (0) About a minute ago"), Some(0));
        assert_eq!(exit_code_of_status("Up 3 seconds"), None);
    }

    #[test]
    fn only_freezer_give_ups_are_transient() {
        let engine = |m: &str| RuntimeError::Engine {
            op: "pause",
            message: m.to_owned(),
        };
        let frozen = "500: Cannot pause container 1f2e: OCI runtime pause failed: unable to freeze: unknown";
        assert!(matches!(
            freezer_error(engine(frozen)),
            RuntimeError::Transient(_)
        ));
        assert!(matches!(
            freezer_error(engine("500: OCI runtime resume failed: unable to thaw: unknown")),
            RuntimeError::Transient(_)
        ));
        assert!(matches!(
            freezer_error(engine("500: container 1f2e is not running")),
            RuntimeError::Engine { .. }
        ));
        assert!(matches!(
            freezer_error(RuntimeError::Conflict("is already paused".into())),
            RuntimeError::Conflict(_)
        ));
    }

    #[test]
    fn container_states_become_observed_states() {
        assert_eq!(observed("running", None, false, None), Observed::Running);
        assert_eq!(observed("restarting", None, false, None), Observed::Running);
        assert_eq!(observed("paused", None, false, None), Observed::Paused);
        assert_eq!(observed("created", None, false, None), Observed::Starting);
        assert_eq!(observed("removing", None, false, None), Observed::Stopping);
        assert_eq!(
            observed("exited", Some(0), false, None),
            Observed::Exited {
                code: Some(0),
                oom: false,
                message: None
            }
        );
        assert_eq!(
            observed("dead", Some(0), false, None),
            Observed::Exited {
                code: Some(-1),
                oom: false,
                message: None
            }
        );
        assert!(matches!(
            observed("hibernating", None, false, None),
            Observed::Unknown(_)
        ));
    }

    #[test]
    fn pull_messages_become_layer_steps() {
        let info = |id: &str, status: &str, current: Option<i64>, total: Option<i64>| {
            bollard::models::CreateImageInfo {
                id: Some(id.into()),
                status: Some(status.into()),
                progress_detail: Some(bollard::models::ProgressDetail { current, total }),
                error_detail: None,
            }
        };
        let step = |i| layer_event(&i).map(|e| e.step);
        assert_eq!(step(info("1", "Pulling from prepull-test", None, None)), None);
        assert_eq!(
            step(info("a", "Pulling fs layer", None, None)),
            Some(LayerStep::Known)
        );
        assert_eq!(step(info("a", "Waiting", None, None)), Some(LayerStep::Known));
        assert_eq!(
            step(info("a", "Downloading", Some(334_848), Some(31_467_061))),
            Some(LayerStep::Downloading {
                current: 334_848,
                total: Some(31_467_061)
            })
        );
        assert_eq!(
            step(info("a", "Downloading", Some(5), Some(-1))),
            Some(LayerStep::Downloading {
                current: 5,
                total: None
            })
        );
        assert_eq!(step(info("a", "Verifying Checksum", None, None)), None);
        for done in ["Download complete", "Extracting", "Pull complete"] {
            assert_eq!(step(info("a", done, Some(1), Some(2))), Some(LayerStep::Done));
        }
        assert_eq!(
            step(info("b", "Already exists", None, None)),
            Some(LayerStep::Present)
        );
        assert_eq!(step(info("", "Downloading", None, None)), None);
        let digest = bollard::models::CreateImageInfo {
            status: Some("Digest: sha256:a94c".into()),
            ..Default::default()
        };
        assert_eq!(layer_event(&digest), None);
    }

    /// The engine's words for each failure, as dockerd 20.10 gives them against a local
    /// registry (scripts/registry.sh).
    #[test]
    fn pull_failures_are_classified() {
        let cases = [
            (
                Some(404),
                "manifest for 127.0.0.1:5000/missing:1 not found: manifest unknown: manifest unknown",
                PullFailure::ImageNotFound,
            ),
            (
                Some(404),
                "repository 127.0.0.1:5000/nonexist not found: name unknown: repository name not known to registry",
                PullFailure::ImageNotFound,
            ),
            (
                Some(500),
                "Get \"http://127.0.0.1:5999/v2/\": dial tcp 127.0.0.1:5999: connect: connection refused",
                PullFailure::RegistryUnreachable,
            ),
            (
                Some(500),
                "Get \"https://nosuchhost.invalid/v2/\": dial tcp: lookup nosuchhost.invalid: no such host",
                PullFailure::RegistryUnreachable,
            ),
            (
                Some(500),
                "Head \"http://127.0.0.1:5001/v2/prepull-auth/manifests/1\": no basic auth credentials",
                PullFailure::Unauthorized,
            ),
            (Some(500), "unauthorized: authentication required", PullFailure::Unauthorized),
            (None, "unauthorized: authentication required", PullFailure::Unauthorized),
            (Some(500), "write /var/lib/docker/tmp: no space left on device", PullFailure::Failed),
        ];
        for (status, message, want) in cases {
            assert_eq!(pull_failure(status, message), want, "{message}");
        }
        let e = pull_error(BollardError::DockerStreamError {
            error: "unauthorized: authentication required".into(),
        });
        assert_eq!(e.failure, PullFailure::Unauthorized);
    }

    #[test]
    fn instance_data_round_trips_and_targets_follow_the_ports() {
        let ports = Ports {
            execd: Some(40001),
            http: None,
        };
        let instance = ports.instance("c1".into());
        assert_eq!(Ports::of(&instance), ports);
        assert_eq!(
            Ports::of(&Instance {
                data: "garbage".into(),
                ..instance.clone()
            }),
            Ports::default()
        );
    }

    #[test]
    fn files_are_packed_relative_to_root_with_mode_and_root_owner_and_no_directories() {
        let files = [
            SpecFile {
                path: "/etc/app/config.toml".into(),
                content: b"a = 1\n".to_vec(),
                mode: 0o600,
            },
            SpecFile {
                path: format!("/opt/{}/run.sh", "d".repeat(120)),
                content: b"#!/bin/sh\n".to_vec(),
                mode: 0o100755,
            },
        ];
        let tar = files_tar(&files, 1_700_000_000).unwrap();
        let mut archive = tar::Archive::new(&tar[..]);
        let entries: Vec<(String, u32, u64, Vec<u8>)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                assert_eq!(e.header().entry_type(), tar::EntryType::Regular);
                let mut content = Vec::new();
                std::io::Read::read_to_end(&mut e, &mut content).unwrap();
                (
                    e.path().unwrap().display().to_string(),
                    e.header().mode().unwrap(),
                    e.header().uid().unwrap(),
                    content,
                )
            })
            .collect();
        assert_eq!(
            entries,
            [
                ("etc/app/config.toml".to_owned(), 0o600, 0, b"a = 1\n".to_vec()),
                (
                    format!("opt/{}/run.sh", "d".repeat(120)),
                    0o755,
                    0,
                    b"#!/bin/sh\n".to_vec()
                ),
            ]
        );
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
