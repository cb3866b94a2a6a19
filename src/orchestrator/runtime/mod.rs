//! The runtime seam: what sandboxd asks of whatever runs sandboxes (the Docker Engine today, a
//! Kubernetes cluster later), in runtime-neutral terms. The service holds an
//! `Arc<dyn Runtime>` and never sees bollard, container status strings or published ports;
//! each runtime turns its own states into [`Observed`] and its own addressing into a
//! [`Target`].
//!
//! - `docker`: the Docker Engine (bollard), execd injected through a shared volume.
//! - `kubernetes` (feature `k8s`): pods through the API server (kube-rs), execd installed by
//!   an init container.
//! - `fake` (tests only): an in-memory runtime with scriptable failures and a real HTTP
//!   `/ping`, so the lifecycle service is unit-tested without an engine.

pub mod docker;
#[cfg(test)]
pub mod fake;
#[cfg(test)]
pub mod fake_execd;
#[cfg(feature = "k8s")]
pub mod kubernetes;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;

/// execd's port inside every sandbox.
pub const EXECD_PORT: u16 = 44772;

/// What a runtime call returns.
pub type Fut<'a, T> = BoxFuture<'a, Result<T, RuntimeError>>;

/// Which runtime serves the sandboxes (`/version` says it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    /// The Docker Engine API.
    Docker,
    /// A Kubernetes API server (pods). Named in every build, so that a state file written by
    /// a `k8s` build reads anywhere (its sandboxes are then another runtime's, left alone).
    Kubernetes,
    /// The in-memory test runtime.
    #[cfg(test)]
    Fake,
}

impl RuntimeKind {
    /// The name stored with each sandbox and shown by `/version`.
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeKind::Docker => "docker",
            RuntimeKind::Kubernetes => "kubernetes",
            #[cfg(test)]
            RuntimeKind::Fake => "fake",
        }
    }
}

/// What a runtime can do beyond create, observe and remove. The service checks these, so an
/// unsupported feature is refused in one place.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// Pause by freezing every process (memory kept).
    pub freeze: bool,
    /// Isolated sessions inside sandboxes (user namespaces allowed by the runtime's profile).
    pub isolation: bool,
    /// Template builds: [`Runtime::commit`] makes a local image sandboxes can run.
    pub builds: bool,
    /// Snapshots, forks and Rootfs pause: [`Runtime::commit`] of a running sandbox, and a
    /// create from the image it made.
    pub snapshots: bool,
    /// Sandboxes share the host's network (Docker `--network host`): nothing is published,
    /// so a Rootfs pause, which removes the container and restores it behind its published
    /// ports, is refused.
    pub host_network: bool,
    /// GPUs by count (`resourceLimits.gpu`): Kubernetes' `nvidia.com/gpu`.
    pub gpus: bool,
    /// Every GPU of the host (`resourceLimits.gpu: "all"`); a pod can only ask for a count.
    pub all_gpus: bool,
    /// A limit on a sandbox's writable disk (`resourceLimits.disk`): Kubernetes'
    /// `ephemeral-storage`.
    pub disk: bool,
    /// What a Rootfs pause keeps of a sandbox on this runtime.
    pub rootfs_pause: RootfsPause,
}

/// How a runtime keeps a Rootfs-paused sandbox's files while it has no instance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RootfsPause {
    /// [`Runtime::commit`] saves the whole filesystem (volumes, the persistent workspace
    /// among them, are kept as they are); needs `snapshots`. Docker.
    #[default]
    Commit,
    /// Only the sandbox's persistent workspace ([`SandboxSpec::workspace`]) survives: the
    /// instance is removed and made again with it; everything outside `/workspace` starts
    /// from the image. A sandbox without one cannot be Rootfs-paused. Kubernetes (its claim).
    Workspace,
}

/// Where a sandbox's persistent workspace is mounted.
pub const WORKSPACE_DIR: &str = "/workspace";

/// A sandbox's persistent workspace (`workspace.persistent`): a volume of its own at
/// [`WORKSPACE_DIR`], kept across Rootfs pauses and removed with the sandbox
/// ([`Runtime::remove_workspace`]). Stored with the sandbox's launch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Workspace {
    /// The size asked for, bytes (`None`: the runtime's default). Kubernetes requests it for
    /// the claim; Docker's local volumes have no size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<i64>,
}

/// Everything a runtime needs to start one sandbox. No runtime's syntax in it: mounts are
/// [`Mount`]s, limits are numbers.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxSpec {
    /// The sandbox id (labelled on what the runtime creates).
    pub id: String,
    /// Image reference.
    pub image: String,
    /// The user's entrypoint; execd's init goes in front of it.
    pub entrypoint: Vec<String>,
    /// Environment of the entrypoint (and of execd).
    pub env: BTreeMap<String, String>,
    /// User labels.
    pub labels: BTreeMap<String, String>,
    /// Expiry, epoch ms (a label, so that the runtime's own tools show it); `None` for manual
    /// cleanup.
    pub expires_at: Option<i64>,
    /// Resource limits.
    pub resources: Resources,
    /// Volumes.
    pub mounts: Vec<Mount>,
    /// Whether isolated sessions were asked for.
    pub isolation: bool,
    /// Files written into the sandbox before it starts (a template's `files`).
    pub files: Vec<SpecFile>,
    /// What the instance is for.
    pub purpose: Purpose,
    /// The instance this one replaces (a Rootfs resume): the runtime reuses what it can of
    /// it (Docker: the same host ports, when they are still free).
    pub previous: Option<Instance>,
    /// Whether [`Runtime::create`] starts it (`false`: created, execd injected and files
    /// written, not started until [`Runtime::start`]; `extensions["sandboxd.autoStart"]`).
    pub start: bool,
    /// Credentials for the image's registry (`image.auth`): held for this create only, never
    /// stored or logged (Docker pulls with them; Kubernetes puts them in a per-sandbox
    /// `kubernetes.io/dockerconfigjson` Secret the pod pulls with).
    pub image_auth: Option<RegistryAuth>,
    /// A persistent workspace at [`WORKSPACE_DIR`]: created by [`Runtime::create`] when
    /// missing, found again when it exists (a Rootfs resume), never removed by
    /// [`Runtime::remove`].
    pub workspace: Option<Workspace>,
    /// The warm pool this instance is a member of, if any (Kubernetes labels the pod with it
    /// and its member state; Docker keeps the membership in the store only).
    pub pool: Option<String>,
}

#[cfg(test)]
impl SandboxSpec {
    /// A started sandbox of `image` running `entrypoint` with nothing else set: tests change
    /// the fields they are about.
    pub fn for_test(id: &str, image: &str, entrypoint: &[&str]) -> Self {
        SandboxSpec {
            id: id.into(),
            image: image.into(),
            entrypoint: entrypoint.iter().map(|a| (*a).to_owned()).collect(),
            env: BTreeMap::new(),
            labels: BTreeMap::new(),
            expires_at: None,
            resources: Resources::default(),
            mounts: Vec::new(),
            isolation: false,
            files: Vec::new(),
            purpose: Purpose::Sandbox,
            previous: None,
            start: true,
            image_auth: None,
            workspace: None,
            pool: None,
        }
    }
}

/// What a committed image is, which also says how [`Runtime::commit`] takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageRole {
    /// A template version's built image: the build container is stopped first, so nothing
    /// writes while its layer is saved, and removed afterwards.
    Template,
    /// A snapshot (also the one a fork takes): the sandbox is frozen only while its layer is
    /// saved and goes on running.
    Snapshot,
    /// A Rootfs pause: taken as a snapshot is, then the sandbox is removed.
    Paused,
}

/// What an instance is for. Only sandboxes are listed by [`Runtime::observe_all`] (and so
/// reconciled, swept and expired as sandboxes); build containers are listed by
/// [`Runtime::builds`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Purpose {
    /// A sandbox.
    #[default]
    Sandbox,
    /// The container a template version is built in, committed and then removed.
    Build {
        /// The template's name.
        template: String,
        /// The version being built.
        version: u32,
    },
}

/// A file the runtime writes into a sandbox before starting it. Parent directories are
/// created; the owner is root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecFile {
    /// Absolute path, already checked (no `..`).
    pub path: String,
    /// The bytes.
    pub content: Vec<u8>,
    /// Permission bits.
    pub mode: u32,
}

/// Resource limits of one sandbox. Serialisable because a sandbox's launch is stored for a
/// Rootfs resume (never part of the API).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Resources {
    /// CPU, in billionths of a CPU.
    pub nano_cpus: Option<i64>,
    /// Memory, bytes.
    pub memory: Option<i64>,
    /// Process limit.
    pub pids: i64,
    /// GPUs (`resourceLimits.gpu`); only runtimes whose [`Capabilities::gpus`] say so take it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<Gpus>,
    /// Writable disk, bytes (`resourceLimits.disk`); only runtimes whose
    /// [`Capabilities::disk`] say so take it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<i64>,
}

/// How many GPUs a sandbox asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Gpus {
    /// This many (at least 1).
    Count(u32),
    /// Every GPU of the host (`"all"`, Docker's `--gpus all`).
    All,
}

/// A volume in a sandbox. Stored with the sandbox's launch for a Rootfs resume.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Mount {
    /// A directory of the host (already checked against the allowed prefixes).
    HostPath {
        /// Host path, `subPath` included.
        path: String,
        /// Where it appears in the sandbox.
        mount_path: String,
        /// Mounted read-only.
        read_only: bool,
    },
    /// A named volume of the runtime, created when missing.
    Volume {
        /// Volume name.
        name: String,
        /// Directory inside the volume, if not its root.
        sub_path: Option<String>,
        /// Where it appears in the sandbox.
        mount_path: String,
        /// Mounted read-only.
        read_only: bool,
    },
}

/// A runtime's handle on one sandbox: opaque to the service, stored in the neutral columns
/// `runtime`, `runtime_ref`, `runtime_data` (and, for a Rootfs-paused sandbox, the one it
/// had, with its hibernation).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Instance {
    /// Which runtime made it.
    pub kind: RuntimeKind,
    /// The runtime's name for it (a container id).
    pub reference: String,
    /// What else the runtime needs to reach it (published ports), in its own format.
    pub data: String,
}

/// What the runtime says a sandbox is doing now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    /// Created, not yet running.
    Starting,
    /// Running (or restarting).
    Running,
    /// Frozen.
    Paused,
    /// Being removed.
    Stopping,
    /// Ended.
    Exited {
        /// Exit code, when known.
        code: Option<i64>,
        /// Ended by the kernel's OOM killer.
        oom: bool,
        /// The runtime's own account, if any.
        message: Option<String>,
    },
    /// No longer exists.
    Gone,
    /// A state this build does not know; shown as such, never acted on destructively.
    Unknown(String),
}

/// Where to dial one port of a sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// How sandboxd reaches the port.
    pub dial: Dial,
    /// `host:port` as clients reach it directly (endpoints without the server proxy); `None`
    /// when they cannot, so that every endpoint is the server proxy's.
    pub public: Option<String>,
    /// Path prefix at the target: `/proxy/<port>` when execd relays the port.
    pub prefix: String,
    /// Whether the target is execd, which takes the sandbox's token (and nothing else may).
    pub execd: bool,
}

impl Target {
    /// `host:port` for the request line's URI and `Host` (a tunnel's port is on `localhost`,
    /// as `kubectl port-forward` shows it).
    pub fn authority(&self) -> String {
        match &self.dial {
            Dial::Tcp(addr) => addr.to_string(),
            Dial::Tunnel(tunnel) => format!("localhost:{}", tunnel.port),
        }
    }
}

/// How sandboxd reaches one port of a sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dial {
    /// A TCP address sandboxd connects to (Docker's published port, a pod IP).
    Tcp(SocketAddr),
    /// A byte stream the runtime opens for each connection (Kubernetes port-forward through
    /// the API server), for a sandboxd that cannot route to the sandbox.
    Tunnel(Tunnel),
}

/// A byte stream to one port of a sandbox, as a runtime opens it.
pub trait TunnelIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> TunnelIo for T {}

/// What opens one connection of a [`Tunnel`].
type Opener = dyn Fn() -> BoxFuture<'static, std::io::Result<Box<dyn TunnelIo>>> + Send + Sync;

/// Opens a fresh connection to one port of a sandbox each time it is asked: what sandboxd
/// dials when it has no route to the sandbox's address. Runtime-neutral: the runtime supplies
/// the opener, and the execd client and the server proxy speak HTTP over what it returns.
#[derive(Clone)]
pub struct Tunnel {
    /// What the tunnel reaches, for logs and errors (`pod sbx-… port 44772`).
    pub name: String,
    /// The sandbox port at its end.
    pub port: u16,
    open: std::sync::Arc<Opener>,
}

impl Tunnel {
    /// A tunnel named `name` to `port` whose connections `open` makes.
    pub fn new(
        name: String,
        port: u16,
        open: impl Fn() -> BoxFuture<'static, std::io::Result<Box<dyn TunnelIo>>> + Send + Sync + 'static,
    ) -> Self {
        Self {
            name,
            port,
            open: std::sync::Arc::new(open),
        }
    }

    /// One new connection through the tunnel.
    pub async fn open(&self) -> std::io::Result<Box<dyn TunnelIo>> {
        (self.open)().await
    }
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel")
            .field("name", &self.name)
            .field("port", &self.port)
            .finish()
    }
}

/// Two tunnels are the same when they reach the same port of the same thing (the opener is
/// code, not data).
impl PartialEq for Tunnel {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.port == other.port
    }
}

impl Eq for Tunnel {}

/// A failed runtime call.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// No such sandbox, volume or image.
    #[error("not found: {0}")]
    NotFound(String),
    /// The image is not present and cannot be pulled.
    #[error("{0}")]
    ImageNotFound(String),
    /// The runtime refused the request as invalid (a bad limit or mount): the user's to fix.
    #[error("{0}")]
    Rejected(String),
    /// The state changed under the call (pausing a paused container).
    #[error("{0}")]
    Conflict(String),
    /// A failure that goes away when retried: on cgroup v1 the freezer cannot freeze (or thaw)
    /// a container while processes in it are starting.
    #[error("{0}")]
    Transient(String),
    /// The runtime cannot be reached.
    #[error("runtime unavailable: {0}")]
    Unavailable(String),
    /// The sandbox was not ready within the runtime's create timeout (Kubernetes: the pod not
    /// Ready); what was made is deleted.
    #[error("{0}")]
    ReadyTimeout(String),
    /// Anything else the runtime failed at.
    #[error("{op}: {message}")]
    Engine {
        /// What sandboxd asked for.
        op: &'static str,
        /// The runtime's account.
        message: String,
    },
}

/// Credentials for one pull from a registry. Held in memory for the pull only: never stored,
/// logged or echoed (`Debug` hides the password).
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryAuth {
    /// User name.
    pub username: String,
    /// Password or token.
    pub password: String,
}

impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryAuth")
            .field("username", &self.username)
            .field("password", &"<hidden>")
            .finish()
    }
}

/// The platform to pull an image for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// `linux`.
    pub os: String,
    /// `amd64`, `arm64`, …
    pub arch: String,
}

/// One step of a pull: what one layer of the image is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullEvent {
    /// The layer's (short) id.
    pub layer: String,
    /// What it is doing.
    pub step: LayerStep,
}

/// What one layer of a pull is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerStep {
    /// The layer is part of the image and waits for its download.
    Known,
    /// Being downloaded: `current` of `total` bytes (`total` when the registry said).
    Downloading {
        /// Bytes so far.
        current: u64,
        /// The layer's size.
        total: Option<u64>,
    },
    /// Downloaded (being extracted, or extracted).
    Done,
    /// Already present locally: nothing to download.
    Present,
}

/// Why a pull failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullFailure {
    /// The registry has no such repository or tag.
    ImageNotFound,
    /// The registry refused the credentials, or wants some.
    Unauthorized,
    /// The registry cannot be reached (refused, no such host, timed out).
    RegistryUnreachable,
    /// The runtime itself cannot be reached.
    RuntimeUnavailable,
    /// Anything else.
    Failed,
}

/// A failed pull: the kind, and the runtime's (or registry's) account.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct PullError {
    /// What kind of failure.
    pub failure: PullFailure,
    /// The runtime's words.
    pub message: String,
}

/// What a runtime reports about one of this sandboxd's containers, as it happens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeEvent {
    /// The sandbox it belongs to (its label), if any.
    pub sandbox_id: Option<String>,
    /// The runtime's name for the container.
    pub reference: String,
    /// When, epoch ms (the runtime's clock).
    pub at: i64,
    /// What happened.
    pub kind: RuntimeEventKind,
}

/// What happened to a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimeEventKind {
    /// It started.
    Started,
    /// Its main process ended.
    Died {
        /// Exit code, when the runtime said.
        code: Option<i64>,
    },
    /// The kernel's OOM killer killed a process in it.
    Oom,
    /// Something sent it a signal.
    Killed {
        /// The signal, as the runtime names it (`9`, `SIGTERM`).
        signal: Option<String>,
    },
    /// Frozen.
    Paused,
    /// Thawed.
    Unpaused,
}

/// What a container sandboxd manages is for. The runtime tells them apart by labels (Docker:
/// `docker::ROLES`, one line per role).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerRole {
    /// A sandbox.
    Sandbox,
    /// An idle member of a warm pool.
    PoolMember,
    /// The container a template build runs in.
    TemplateBuild,
    /// A helper of an image prepull.
    Prepull,
}

impl ContainerRole {
    /// The wire's name.
    pub fn as_str(self) -> &'static str {
        match self {
            ContainerRole::Sandbox => "sandbox",
            ContainerRole::PoolMember => "pool-member",
            ContainerRole::TemplateBuild => "template-build",
            ContainerRole::Prepull => "prepull",
        }
    }
}

/// One container this sandboxd manages, as the runtime sees it now.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerInfo {
    /// The runtime's id for it.
    pub reference: String,
    /// Its name.
    pub name: String,
    /// What it is for.
    pub role: ContainerRole,
    /// The sandbox it belongs to (its label), if any.
    pub sandbox_id: Option<String>,
    /// Image reference.
    pub image: String,
    /// What it is doing.
    pub observed: Observed,
    /// Its address on the runtime's network, if any.
    pub ip: Option<String>,
    /// Creation time, epoch ms.
    pub created_at: i64,
    /// Last start, epoch ms.
    pub started_at: Option<i64>,
    /// Its limits.
    pub resources: Resources,
}

/// Something the runtime's control plane recorded about a sandbox's container, read when
/// asked rather than journaled (Kubernetes `Event`s: the scheduler's and the kubelet's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectEvent {
    /// When it last happened, epoch ms.
    pub at: i64,
    /// `Normal` or `Warning`.
    pub severity: String,
    /// The reporter's short why (`Scheduled`, `Pulled`, `Failed`, `Unhealthy`).
    pub reason: String,
    /// For people.
    pub message: String,
    /// How many times it happened (repeats are folded into one).
    pub count: i32,
}

/// A sample of what a running container uses.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    /// CPU over the sample, in percent of one CPU (200 = two CPUs busy).
    pub cpu_percent: f64,
    /// Memory in use, bytes (page cache excluded where the runtime says).
    pub memory_bytes: u64,
    /// The memory limit, bytes.
    pub memory_limit_bytes: Option<u64>,
    /// Processes (tasks) in it.
    pub pids: Option<u64>,
    /// When sampled, epoch ms.
    pub sampled_at: i64,
}

/// What part of a container's output to read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogQuery {
    /// The last this many lines (all when `None`).
    pub tail: Option<usize>,
    /// Lines at or after this time, epoch seconds.
    pub since: Option<i64>,
    /// Each line prefixed with its RFC 3339 time.
    pub timestamps: bool,
    /// Keep streaming new lines until the container stops.
    pub follow: bool,
}

/// Whatever runs sandboxes.
pub trait Runtime: Send + Sync + 'static {
    /// Which runtime this is.
    fn kind(&self) -> RuntimeKind;
    /// What it can do.
    fn capabilities(&self) -> Capabilities;
    /// A version line for `/version` (Docker: the negotiated API version).
    fn version(&self) -> String;
    /// Creates and starts a sandbox (only creates it when `spec.start` is false). On failure
    /// it leaves nothing behind.
    fn create(&self, spec: SandboxSpec) -> Fut<'_, Instance>;
    /// Starts a sandbox created without starting it; returns the instance as it now is (with
    /// the ports the runtime published).
    fn start<'a>(&'a self, instance: &'a Instance) -> Fut<'a, Instance>;
    /// Changes a running sandbox's CPU, memory and process limits in place (Docker: `docker
    /// update`). Limits left `None` (pids: 0) are kept.
    fn resize<'a>(&'a self, instance: &'a Instance, resources: Resources) -> Fut<'a, ()>;
    /// What the sandbox is doing now.
    fn observe<'a>(&'a self, instance: &'a Instance) -> Fut<'a, Observed>;
    /// Every sandbox of this sandboxd instance the runtime holds, by sandbox id.
    fn observe_all(&self) -> Fut<'_, BTreeMap<String, (Instance, Observed)>>;
    /// Those of `instances` the runtime holds, by sandbox id, as [`Runtime::observe_all`]
    /// reports them; one missing is gone. It may report more than asked: the default is
    /// `observe_all` (Docker asks the engine for only these when that is cheaper).
    fn observe_many<'a>(
        &'a self,
        instances: &'a [Instance],
    ) -> Fut<'a, BTreeMap<String, (Instance, Observed)>> {
        let _ = instances;
        self.observe_all()
    }
    /// Freezes every process ([`RuntimeError::Transient`] when worth a retry).
    fn pause<'a>(&'a self, instance: &'a Instance) -> Fut<'a, ()>;
    /// Thaws a frozen sandbox.
    fn unpause<'a>(&'a self, instance: &'a Instance) -> Fut<'a, ()>;
    /// Kills and removes the sandbox. Already gone is fine. Its persistent workspace stays.
    fn remove<'a>(&'a self, instance: &'a Instance) -> Fut<'a, ()>;
    /// Removes sandbox `id`'s persistent workspace (after its instance). Already gone, or
    /// never made, is fine.
    fn remove_workspace<'a>(&'a self, id: &'a str) -> Fut<'a, ()>;
    /// Saves the instance's filesystem (not its volumes) as the local image `image`
    /// (`repo:tag`), whose entrypoint and command are those of the image the instance was
    /// created from, not execd's init, labelled with `role`. A [`ImageRole::Template`]
    /// instance is stopped first and left stopped, to be removed; any other is frozen while
    /// its layer is saved ([`RuntimeError::Transient`] when the freezer gives up) and goes on
    /// running (a frozen one stays frozen).
    fn commit<'a>(&'a self, instance: &'a Instance, image: &'a str, role: ImageRole) -> Fut<'a, ()>;
    /// Every template-build instance of this sandboxd instance that the runtime holds,
    /// whatever process created it.
    fn builds(&self) -> Fut<'_, Vec<Instance>>;
    /// Removes the local image `image`. Already gone is fine; an image a sandbox still uses is
    /// kept ([`RuntimeError::Conflict`]).
    fn remove_image<'a>(&'a self, image: &'a str) -> Fut<'a, ()>;
    /// The last `tail` lines of the sandbox's output, at or after `since` (epoch seconds).
    fn logs<'a>(&'a self, instance: &'a Instance, tail: usize, since: Option<i64>) -> Fut<'a, String>;
    /// Housekeeping after start-up reconciliation (Docker: agent volumes of older builds).
    fn tidy(&self) -> BoxFuture<'_, ()>;
    /// Where to dial `port`; `None` when the sandbox has no route to it now (not running).
    fn target(&self, instance: &Instance, port: u16) -> Option<Target>;
    /// Whether `image` is present locally (for `platform`, when given).
    fn image_present<'a>(&'a self, image: &'a str, platform: Option<&'a Platform>) -> Fut<'a, bool>;
    /// Pulls `image` (a full reference, tag or digest included), yielding per-layer progress.
    /// The stream ends after the last layer, or with one error. Dropping it cancels the pull.
    fn pull<'a>(
        &'a self,
        image: &'a str,
        auth: Option<RegistryAuth>,
        platform: Option<Platform>,
    ) -> BoxStream<'a, Result<PullEvent, PullError>>;
    /// Events of this sandboxd's containers from `since` (epoch ms; `None`: from now on),
    /// as they happen. The stream ends when the runtime's connection does (the caller
    /// reconnects).
    fn events(&self, since: Option<i64>) -> BoxStream<'static, Result<RuntimeEvent, RuntimeError>>;
    /// What the runtime's control plane recorded about sandbox `id`'s container (`instance`,
    /// when the sandbox has one), oldest first. None by default: the Docker engine's events
    /// come through [`Runtime::events`] and are journaled.
    fn object_events<'a>(&'a self, id: &'a str, instance: Option<&'a Instance>) -> Fut<'a, Vec<ObjectEvent>> {
        let _ = (id, instance);
        Box::pin(async { Ok(Vec::new()) })
    }
    /// Every container this sandboxd manages (sandboxes and any other role).
    fn containers(&self) -> Fut<'_, Vec<ContainerInfo>>;
    /// One container by the runtime's id or name, when this sandboxd manages it.
    fn container<'a>(&'a self, reference: &'a str) -> Fut<'a, Option<ContainerInfo>>;
    /// A one-shot sample of what a running container uses (`None` when not running).
    fn usage<'a>(&'a self, reference: &'a str) -> Fut<'a, Option<Usage>>;
    /// Why the runtime cannot be used now, when it cannot (Kubernetes before its API server
    /// first answers: every call is then [`RuntimeError::Unavailable`]). `/health` says it.
    fn unavailable(&self) -> Option<String> {
        None
    }
    /// Resolves once the runtime can be used (at once for a runtime connected at start-up):
    /// start-up's reconciliation waits on it.
    fn connected(&self) -> BoxFuture<'static, ()> {
        Box::pin(std::future::ready(()))
    }
    /// A container's output (stdout and stderr, interleaved) as it comes.
    fn log_stream(
        &self,
        reference: &str,
        query: LogQuery,
    ) -> BoxStream<'static, Result<bytes::Bytes, RuntimeError>>;
    /// A warm pool member whose execd answers (or an allocated one returned as it is) may be
    /// claimed now: the runtime shows it as idle (Kubernetes: the pod's `pool-state` label).
    /// The default does nothing: on Docker the store alone holds a member's state.
    fn member_idle<'a>(&'a self, instance: &'a Instance) -> Fut<'a, ()> {
        let _ = instance;
        Box::pin(async { Ok(()) })
    }
    /// Claims the idle member `instance` for sandbox `sandbox_id`, after the store picked it:
    /// on a runtime other writers share, atomically on the runtime's side too (Kubernetes: a
    /// JSON Patch whose `test` op requires the pod to be idle). [`RuntimeError::Conflict`]
    /// when another claimer took it first, [`RuntimeError::NotFound`] when it is gone: either
    /// way it is not this sandboxd's to hand out. The default does nothing: on Docker
    /// sandboxd is the only writer and the store's allocation statement is atomic.
    fn claim<'a>(&'a self, instance: &'a Instance, sandbox_id: &'a str) -> Fut<'a, ()> {
        let _ = (instance, sandbox_id);
        Box::pin(async { Ok(()) })
    }
}
