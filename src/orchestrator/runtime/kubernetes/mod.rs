//! The Kubernetes runtime (feature `k8s`): sandboxes as pods in one namespace, through the API
//! server (kube-rs). The only module that sees kube or k8s-openapi. Async.
//!
//! A create makes a Secret with execd's token, a ConfigMap with the spec's files (if any) and
//! the Pod, hands the Secret and ConfigMap to the Pod (`ownerReferences`, so the cluster's
//! garbage collector removes them with it), and waits until the pod is Ready with an IP; an
//! image that cannot be pulled fails it at once, and a pod not Ready in time is deleted.
//! `autoStart` false creates the pod behind a scheduling gate that `start` removes. Endpoints
//! are the pod IP (sandboxd runs in the cluster), or with [`EndpointMode::PortForward`]
//! (feature `k8s-portforward`) tunnels through the API server. Pods are listed by this sandboxd's labels,
//! and one watcher over them feeds the event journal.
//!
//! Not offered (capabilities, so the service answers 501): freeze pause, commits (snapshots,
//! template builds; a Rootfs pause keeps only the persistent workspace), resize, image prepull (the kubelet pulls at pod start),
//! usage samples.
//!
//! - `objects`: the pure builders (Secret, ConfigMap, Pod, patches) and pod state →
//!   [`Observed`].
//! - `workspace`: the persistent workspace's claim (`sbx-<id>-ws`), which a Rootfs pause
//!   keeps when it deletes the pod ([`RootfsPause::Workspace`]).
//! - `cache`: the reflector store the pod watcher feeds, which reads answer from.
//! - `events`: the cluster's `Event`s of a pod, for the events diagnostic.
//! - `portforward` (feature `k8s-portforward`): targets as `pods/portforward` tunnels.
//! - `pull_secret`: the per-sandbox `kubernetes.io/dockerconfigjson` Secret of `image.auth`.
//! - `connecting`: the runtime while the API server cannot be reached (every call
//!   `Unavailable`), connecting in the background.
//! - `pools`: warm pool members' labels and the JSON Patch that claims one (native mode).

mod cache;
pub mod connecting;
#[cfg(test)]
mod contract_tests;
mod events;
pub mod objects;
mod pools;
#[cfg(feature = "k8s-portforward")]
pub mod portforward;
pub mod pull_secret;
#[cfg(test)]
mod schema_tests;
pub mod workspace;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::{FutureExt as _, StreamExt as _};
use k8s_openapi::api::core::v1::{ConfigMap, Event, Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt as _};

use super::{
    Capabilities, ContainerInfo, ContainerRole, Dial, Fut, ImageRole, Instance, LogQuery, ObjectEvent,
    Observed, Platform, PullError, PullEvent, PullFailure, RegistryAuth, Resources, RootfsPause, Runtime,
    RuntimeError, RuntimeEvent, RuntimeEventKind, RuntimeKind, SandboxSpec, Target, Usage, EXECD_PORT,
};
use crate::wire::time::now_ms;
use objects::Objects;

/// How long start-up waits for the API server to answer `/version`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// The longest pause between two looks at a pod that is not Ready yet.
const MAX_POLL: Duration = Duration::from_millis(500);

/// What the Kubernetes runtime is configured with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Namespace of every sandbox.
    pub namespace: String,
    /// The image whose `/execd install` the init container runs.
    pub agent_image: String,
    /// This sandboxd's state-file identity (label `sandboxd.io/instance`).
    pub instance: String,
    /// How long a create waits for the pod to be Ready.
    pub create_timeout: Duration,
    /// The storage class of workspace claims (`None`: the cluster's default).
    pub storage_class: Option<String>,
    /// How sandboxd reaches sandbox ports.
    pub endpoint_mode: EndpointMode,
}

/// How sandboxd reaches a sandbox's ports (design §16.2, "Endpoint").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum EndpointMode {
    /// `podIP:port`: sandboxd runs in the cluster (or routes to it); clients get the pod
    /// address too.
    #[default]
    PodIp,
    /// A `pods/portforward` tunnel through the API server per connection (feature
    /// `k8s-portforward`), for a sandboxd outside the cluster; clients get the server proxy.
    PortForward,
}

/// A Kubernetes [`Instance`]'s data: the pod's uid and IP.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct PodData {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    uid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ip: Option<IpAddr>,
}

impl PodData {
    fn of(instance: &Instance) -> Self {
        serde_json::from_str(&instance.data).unwrap_or_default()
    }

    fn instance(self, pod: String) -> Instance {
        Instance {
            kind: RuntimeKind::Kubernetes,
            reference: pod,
            data: serde_json::to_string(&self).unwrap_or_default(),
        }
    }

    fn from_pod(pod: &Pod) -> Self {
        Self {
            uid: pod.metadata.uid.clone(),
            ip: objects::pod_ip(pod),
        }
    }
}

/// The API server's error, classified: 404 → `NotFound`, 409 → `Conflict`, 400/422 →
/// `Rejected` (the spec is the user's to fix), 429/500/504 → `Transient`, 503 and a server
/// that cannot be reached → `Unavailable`, anything else (401, 403: the operator's RBAC) →
/// `Engine`.
pub fn classify(op: &'static str, e: kube::Error) -> RuntimeError {
    match e {
        kube::Error::Api(s) => match s.code {
            404 => RuntimeError::NotFound(s.message),
            409 => RuntimeError::Conflict(s.message),
            400 | 422 => RuntimeError::Rejected(format!("kubernetes rejected the request: {}", s.message)),
            429 | 500 | 504 => {
                RuntimeError::Transient(format!("{op}: {} {}: {}", s.code, s.reason, s.message))
            }
            503 => RuntimeError::Unavailable(format!("{op}: {}", s.message)),
            code => RuntimeError::Engine {
                op,
                message: format!("{code} {}: {}", s.reason, s.message),
            },
        },
        kube::Error::HyperError(e) => RuntimeError::Unavailable(format!("{op}: {e}")),
        kube::Error::Service(e) => RuntimeError::Unavailable(format!("{op}: {e}")),
        other => RuntimeError::Engine {
            op,
            message: other.to_string(),
        },
    }
}

/// How long a remove waits for its pod to be gone.
const REMOVE_WAIT: Duration = Duration::from_secs(30);

/// 404 is what a removal wants.
fn gone_is_fine(r: Result<(), RuntimeError>) -> Result<(), RuntimeError> {
    match r {
        Err(RuntimeError::NotFound(_)) => Ok(()),
        other => other,
    }
}

/// The API server connection and what sandboxes are made of.
#[derive(Clone)]
pub struct Kubernetes {
    client: kube::Client,
    objects: Objects,
    create_timeout: Duration,
    /// The storage class of workspace claims (`None`: the cluster's default).
    storage_class: Option<String>,
    endpoint_mode: EndpointMode,
    /// `/version`'s line, read once at connect.
    version: String,
    /// The pods as the watcher last reported them; shared with the event stream that feeds it.
    cache: Arc<cache::PodCache>,
}

impl Kubernetes {
    /// Connects as kube-rs does by default (`KUBECONFIG`, `~/.kube/config`, else the
    /// in-cluster service account) and asks the API server its version. A configuration that
    /// cannot be read fails start-up; an API server that does not answer (within
    /// [`CONNECT_TIMEOUT`]) does not: the runtime is then [`connecting::Connecting`], which
    /// answers `Unavailable` (503) until a background attempt gets through.
    pub async fn connect(settings: Settings) -> anyhow::Result<std::sync::Arc<dyn Runtime>> {
        if settings.endpoint_mode == EndpointMode::PortForward && !cfg!(feature = "k8s-portforward") {
            anyhow::bail!(
                "--kube-endpoint-mode port-forward: this sandboxd was built without it (cargo build --features k8s-portforward)"
            );
        }
        let client = tokio::time::timeout(CONNECT_TIMEOUT, kube::Client::try_default())
            .await
            .map_err(|_| anyhow::anyhow!("no Kubernetes client configuration within {CONNECT_TIMEOUT:?}"))?
            .context("cannot configure the Kubernetes client (KUBECONFIG, ~/.kube/config or in-cluster)")?;
        match Self::handshake(client.clone(), settings.clone()).await {
            Ok(runtime) => Ok(std::sync::Arc::new(runtime)),
            Err(e) => {
                let error = format!("{e:#}");
                tracing::warn!(%error, "the Kubernetes API server cannot be reached; serving 503 SANDBOX::RUNTIME_UNAVAILABLE until it answers");
                Ok(std::sync::Arc::new(connecting::Connecting::start(
                    client, settings, error,
                )))
            }
        }
    }

    /// The runtime over `client` once the API server has told its version (within
    /// [`CONNECT_TIMEOUT`]).
    async fn handshake(client: kube::Client, settings: Settings) -> anyhow::Result<Self> {
        let info = tokio::time::timeout(CONNECT_TIMEOUT, client.apiserver_version())
            .await
            .map_err(|_| {
                anyhow::anyhow!("the Kubernetes API server did not answer within {CONNECT_TIMEOUT:?}")
            })?
            .context("cannot reach the Kubernetes API server")?;
        let mut runtime = Self::new(client, settings);
        runtime.version = format!("{} (namespace {})", info.git_version, runtime.objects.namespace);
        Ok(runtime)
    }

    /// The runtime over an existing client (tests use a mock service).
    pub fn new(client: kube::Client, settings: Settings) -> Self {
        Self {
            client,
            version: format!("unknown (namespace {})", settings.namespace),
            objects: Objects {
                namespace: settings.namespace,
                agent_image: settings.agent_image,
                instance: settings.instance,
            },
            create_timeout: settings.create_timeout,
            storage_class: settings.storage_class,
            cache: Arc::default(),
            endpoint_mode: settings.endpoint_mode,
        }
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.objects.namespace)
    }

    fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.objects.namespace)
    }

    fn config_maps(&self) -> Api<ConfigMap> {
        Api::namespaced(self.client.clone(), &self.objects.namespace)
    }

    fn list_params(&self) -> ListParams {
        ListParams::default().labels(&objects::selector(&self.objects.instance))
    }

    /// This instance's pods: from the watcher's store once it is trusted (plus any pod this
    /// process created that the watcher has not reported yet), else a list.
    async fn listed_pods(&self) -> Result<Vec<Pod>, RuntimeError> {
        let Some(snapshot) = self.cache.snapshot() else {
            let pods = self
                .pods()
                .list(&self.list_params())
                .await
                .map_err(|e| classify("list pods", e))?;
            return Ok(pods.items);
        };
        let mut pods: Vec<Pod> = snapshot.pods.iter().map(|p| Pod::clone(p)).collect();
        for name in snapshot.unseen {
            match self.pods().get_opt(&name).await {
                Ok(Some(pod)) => pods.push(pod),
                Ok(None) => self.cache.forget(&name),
                Err(e) => return Err(classify("read the pod", e)),
            }
        }
        Ok(pods)
    }

    /// Deletes what sandbox `id` is made of: the pod (at once, as `docker rm -f`), its Secret,
    /// its ConfigMap and its image pull Secret. Each already gone is fine; the first other
    /// failure is returned after all were tried.
    async fn delete_all(&self, id: &str) -> Result<(), RuntimeError> {
        let name = objects::pod_name(id);
        let now = DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        };
        let pod = gone_is_fine(
            self.pods()
                .delete(&name, &now)
                .await
                .map(drop)
                .map_err(|e| classify("delete the pod", e)),
        );
        let secret = gone_is_fine(
            self.secrets()
                .delete(&name, &DeleteParams::default())
                .await
                .map(drop)
                .map_err(|e| classify("delete the secret", e)),
        );
        let files = gone_is_fine(
            self.config_maps()
                .delete(&objects::files_name(id), &DeleteParams::default())
                .await
                .map(drop)
                .map_err(|e| classify("delete the files config map", e)),
        );
        let pull = gone_is_fine(
            self.secrets()
                .delete(&pull_secret::pull_secret_name(id), &DeleteParams::default())
                .await
                .map(drop)
                .map_err(|e| classify("delete the image pull secret", e)),
        );
        pod.and(secret).and(files).and(pull)
    }

    /// Waits until the pod `instance` names is gone (or is another pod of that name), as
    /// `docker rm -f` returns only once the container is dead: after a remove, the sandbox's
    /// execd no longer answers. A pod still terminating after [`REMOVE_WAIT`] (a lost node)
    /// is left to the cluster, with a warning.
    async fn wait_removed(&self, instance: &Instance) {
        let uid = PodData::of(instance).uid;
        let deadline = tokio::time::Instant::now() + REMOVE_WAIT;
        let mut pause = Duration::from_millis(50);
        loop {
            match self.pods().get_opt(&instance.reference).await {
                Ok(None) => return,
                Ok(Some(pod)) if uid.is_some() && pod.metadata.uid != uid => return,
                Ok(Some(_)) => {}
                Err(e) => {
                    tracing::warn!(pod = %instance.reference, error = %e, "cannot tell whether a removed pod is gone");
                    return;
                }
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                tracing::warn!(pod = %instance.reference, "a removed pod is still terminating; the cluster finishes it");
                return;
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }

    /// Creates the objects in order; on failure deletes what was made.
    async fn create_objects(&self, spec: &SandboxSpec) -> Result<Pod, RuntimeError> {
        // Built first: a spec the builders refuse makes nothing.
        let secret = self.objects.secret(spec);
        let files = self.objects.files(spec)?;
        let pull = self.objects.pull_secret(spec)?;
        let mut pod = self.objects.pod(spec)?;
        if let Some(pool) = &spec.pool {
            pools::label_member(&mut pod, pool);
        }
        let post = PostParams::default();
        // Kept on failure: the sandbox's delete removes it (a resume must not lose it).
        self.ensure_workspace(spec).await?;
        self.secrets()
            .create(&post, &secret)
            .await
            .map_err(|e| classify("create the secret", e))?;
        let made = async {
            if let Some(pull) = &pull {
                self.secrets()
                    .create(&post, pull)
                    .await
                    .map_err(|e| classify("create the image pull secret", e))?;
            }
            if let Some(files) = &files {
                self.config_maps()
                    .create(&post, files)
                    .await
                    .map_err(|e| classify("create the files config map", e))?;
            }
            let pod = self
                .pods()
                .create(&post, &pod)
                .await
                .map_err(|e| classify("create the pod", e))?;
            if let Some(name) = &pod.metadata.name {
                self.cache.created(name);
            }
            let (name, uid) = (
                pod.metadata.name.clone().unwrap_or_default(),
                pod.metadata.uid.clone().unwrap_or_default(),
            );
            let owned = Patch::Merge(objects::owner_patch(&name, &uid));
            let params = PatchParams::default();
            self.secrets()
                .patch(&name, &params, &owned)
                .await
                .map_err(|e| classify("hand the secret to the pod", e))?;
            if files.is_some() {
                self.config_maps()
                    .patch(&objects::files_name(&spec.id), &params, &owned)
                    .await
                    .map_err(|e| classify("hand the files config map to the pod", e))?;
            }
            if pull.is_some() {
                self.secrets()
                    .patch(&pull_secret::pull_secret_name(&spec.id), &params, &owned)
                    .await
                    .map_err(|e| classify("hand the image pull secret to the pod", e))?;
            }
            Ok(pod)
        }
        .await;
        if made.is_err() {
            self.clean_up(&spec.id).await;
        }
        made
    }

    async fn clean_up(&self, id: &str) {
        if let Err(e) = self.delete_all(id).await {
            tracing::error!(sandbox = id, error = %e, "cannot delete a sandbox that failed to start; reconciliation will retry");
        }
    }

    /// Waits until pod `name` is Ready with an IP, or has ended (returned as is: the service
    /// reads why). An image that cannot be pulled is `ImageNotFound` at once; not Ready within
    /// the create timeout is `ReadyTimeout` (504 `KUBERNETES::POD_READY_TIMEOUT`). Either way
    /// the caller deletes the sandbox.
    async fn wait_ready(&self, name: &str) -> Result<Instance, RuntimeError> {
        let deadline = tokio::time::Instant::now() + self.create_timeout;
        let mut pause = Duration::from_millis(50);
        loop {
            let pod = self
                .pods()
                .get(name)
                .await
                .map_err(|e| classify("read the pod", e))?;
            let data = PodData::from_pod(&pod);
            if objects::ready_ip(&pod).is_some() {
                return Ok(data.instance(name.to_owned()));
            }
            match objects::observed(&pod) {
                Observed::Exited { message: Some(m), .. } if m.starts_with(objects::IMAGE_PULL_FAILED) => {
                    return Err(RuntimeError::ImageNotFound(m));
                }
                // The service asks why (exit code, output), as for a container that died.
                Observed::Exited { .. } | Observed::Gone => return Ok(data.instance(name.to_owned())),
                _ => {}
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(RuntimeError::ReadyTimeout(format!(
                    "pod {name} was not Ready within {} s ({:?}); it was deleted",
                    self.create_timeout.as_secs(),
                    objects::observed(&pod)
                )));
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(MAX_POLL);
        }
    }

    /// A pod as the containers view shows it.
    fn container_info(pod: &Pod) -> ContainerInfo {
        let spec = pod.spec.as_ref();
        let sandbox = spec.and_then(|s| s.containers.iter().find(|c| c.name == objects::SANDBOX_CONTAINER));
        let limits = sandbox
            .and_then(|c| c.resources.as_ref())
            .and_then(|r| r.limits.clone())
            .unwrap_or_default();
        let started_at = pod
            .status
            .as_ref()
            .and_then(|s| s.start_time.as_ref())
            .map(|t| t.0.as_millisecond());
        ContainerInfo {
            reference: pod.metadata.name.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            role: ContainerRole::Sandbox,
            sandbox_id: pools::key(pod),
            image: sandbox.and_then(|c| c.image.clone()).unwrap_or_default(),
            observed: objects::observed(pod),
            ip: objects::pod_ip(pod).map(|ip| ip.to_string()),
            created_at: pod
                .metadata
                .creation_timestamp
                .as_ref()
                .map_or(0, |t| t.0.as_millisecond()),
            started_at,
            resources: Resources {
                nano_cpus: limits.get("cpu").and_then(|q| cpu_nanos(&q.0)),
                memory: limits.get("memory").and_then(|q| q.0.parse().ok()),
                pids: 0,
                ..Resources::default()
            },
        }
    }

    fn log_params(query: LogQuery) -> LogParams {
        LogParams {
            container: Some(objects::SANDBOX_CONTAINER.into()),
            follow: query.follow,
            tail_lines: query.tail.map(|t| i64::try_from(t).unwrap_or(i64::MAX)),
            since_seconds: query.since.map(|s| (now_ms() / 1000 - s).max(1)),
            timestamps: query.timestamps,
            ..Default::default()
        }
    }
}

/// `500m` (as the builders write it) → billionths of a CPU; whole CPUs too.
fn cpu_nanos(q: &str) -> Option<i64> {
    match q.strip_suffix('m') {
        Some(milli) => milli.parse::<i64>().ok()?.checked_mul(1_000_000),
        None => q.parse::<i64>().ok()?.checked_mul(1_000_000_000),
    }
}

/// What pods offer: isolation, GPUs by count (`nvidia.com/gpu`) and a disk limit
/// (`ephemeral-storage`); no freezer, no commits (so no builds or snapshots).
const CAPABILITIES: Capabilities = Capabilities {
    freeze: false,
    isolation: true,
    builds: false,
    snapshots: false,
    host_network: false,
    rootfs_pause: RootfsPause::Workspace,
    gpus: true,
    all_gpus: false,
    disk: true,
};

/// What this runtime does not offer; the service's capability checks keep most callers away.
fn unsupported(what: &str) -> RuntimeError {
    RuntimeError::Rejected(format!("{what} is not supported on Kubernetes"))
}

impl Runtime for Kubernetes {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Kubernetes
    }

    fn capabilities(&self) -> Capabilities {
        CAPABILITIES
    }

    fn version(&self) -> String {
        self.version.clone()
    }

    fn create(&self, spec: SandboxSpec) -> Fut<'_, Instance> {
        async move {
            let pod = self.create_objects(&spec).await?;
            let name = objects::pod_name(&spec.id);
            if !spec.start {
                return Ok(PodData::from_pod(&pod).instance(name));
            }
            let ready = self.wait_ready(&name).await;
            if let Err(e) = &ready {
                tracing::warn!(sandbox = %spec.id, error = %e, "the pod did not come up; deleting it");
                self.clean_up(&spec.id).await;
            }
            ready
        }
        .boxed()
    }

    /// Removes the pod's scheduling gate and waits as a create does.
    fn start<'a>(&'a self, instance: &'a Instance) -> Fut<'a, Instance> {
        async move {
            let patch: json_patch::Patch =
                serde_json::from_value(objects::start_patch()).map_err(|e| RuntimeError::Engine {
                    op: "build the start patch",
                    message: e.to_string(),
                })?;
            self.pods()
                .patch(
                    &instance.reference,
                    &PatchParams::default(),
                    &Patch::<()>::Json(patch),
                )
                .await
                .map_err(|e| classify("ungate the pod", e))?;
            self.wait_ready(&instance.reference).await
        }
        .boxed()
    }

    fn resize<'a>(&'a self, _instance: &'a Instance, _resources: Resources) -> Fut<'a, ()> {
        async move { Err(unsupported("changing a running sandbox's limits")) }.boxed()
    }

    fn observe<'a>(&'a self, instance: &'a Instance) -> Fut<'a, Observed> {
        async move {
            if let Some(pod) = self.cache.get(&self.objects.namespace, &instance.reference) {
                return Ok(objects::observed(&pod));
            }
            match self.pods().get(&instance.reference).await {
                Ok(pod) => Ok(objects::observed(&pod)),
                Err(e) => match classify("read the pod", e) {
                    RuntimeError::NotFound(_) => Ok(Observed::Gone),
                    other => Err(other),
                },
            }
        }
        .boxed()
    }

    fn observe_all(&self) -> Fut<'_, BTreeMap<String, (Instance, Observed)>> {
        async move {
            let pods = self.listed_pods().await?;
            Ok(pods
                .iter()
                .filter_map(|pod| {
                    let id = pools::key(pod)?;
                    let name = pod.metadata.name.clone()?;
                    Some((
                        id,
                        (PodData::from_pod(pod).instance(name), objects::observed(pod)),
                    ))
                })
                .collect())
        }
        .boxed()
    }

    fn pause<'a>(&'a self, _instance: &'a Instance) -> Fut<'a, ()> {
        async move { Err(unsupported("freezing a pod")) }.boxed()
    }

    fn unpause<'a>(&'a self, _instance: &'a Instance) -> Fut<'a, ()> {
        async move { Err(unsupported("thawing a pod")) }.boxed()
    }

    fn remove<'a>(&'a self, instance: &'a Instance) -> Fut<'a, ()> {
        async move {
            let id = instance
                .reference
                .strip_prefix("sbx-")
                .unwrap_or(&instance.reference);
            self.delete_all(id).await?;
            self.wait_removed(instance).await;
            Ok(())
        }
        .boxed()
    }

    fn remove_workspace<'a>(&'a self, id: &'a str) -> Fut<'a, ()> {
        self.delete_workspace(id).boxed()
    }

    fn commit<'a>(&'a self, _instance: &'a Instance, _image: &'a str, _role: ImageRole) -> Fut<'a, ()> {
        async move { Err(unsupported("committing a pod's filesystem")) }.boxed()
    }

    /// No builds run here (`capabilities().builds` is false).
    fn builds(&self) -> Fut<'_, Vec<Instance>> {
        async move { Ok(Vec::new()) }.boxed()
    }

    /// sandboxd commits no images here, so it has none to remove.
    fn remove_image<'a>(&'a self, _image: &'a str) -> Fut<'a, ()> {
        async move { Ok(()) }.boxed()
    }

    /// The sandbox container's output; when it never ran (the installer failed), the
    /// installer's.
    fn logs<'a>(&'a self, instance: &'a Instance, tail: usize, since: Option<i64>) -> Fut<'a, String> {
        async move {
            let params = Self::log_params(LogQuery {
                tail: Some(tail),
                since,
                timestamps: false,
                follow: false,
            });
            match self.pods().logs(&instance.reference, &params).await {
                Ok(text) => Ok(text),
                // 400: "container sandbox is waiting to start: PodInitializing".
                Err(kube::Error::Api(s)) if s.code == 400 => {
                    let installer = LogParams {
                        container: Some(objects::INSTALLER.into()),
                        ..params
                    };
                    self.pods()
                        .logs(&instance.reference, &installer)
                        .await
                        .map_err(|e| classify("read the installer's logs", e))
                }
                Err(e) => Err(classify("read logs", e)),
            }
        }
        .boxed()
    }

    fn tidy(&self) -> BoxFuture<'_, ()> {
        async {}.boxed()
    }

    /// The pod IP: execd on 44772, any other port directly (a pod's ports need no
    /// publishing). `public` is the same address: clients in the cluster reach it. In
    /// port-forward mode, a tunnel through the API server to the same port, and no address
    /// for clients. Either way only a pod that has had an IP (has run) has a route.
    fn target(&self, instance: &Instance, port: u16) -> Option<Target> {
        let ip = PodData::of(instance).ip?;
        match self.endpoint_mode {
            EndpointMode::PodIp => Some(Target {
                dial: Dial::Tcp(SocketAddr::new(ip, port)),
                public: Some(SocketAddr::new(ip, port).to_string()),
                prefix: String::new(),
                execd: port == EXECD_PORT,
            }),
            #[cfg(feature = "k8s-portforward")]
            EndpointMode::PortForward => Some(portforward::target(self.pods(), &instance.reference, port)),
            // `connect` refuses the mode in a build without it.
            #[cfg(not(feature = "k8s-portforward"))]
            EndpointMode::PortForward => None,
        }
    }

    /// Never present here: there is no node-local image store sandboxd can see, so a prepull
    /// is attempted (and refused by [`Runtime::pull`]) rather than reported as done.
    fn image_present<'a>(&'a self, _image: &'a str, _platform: Option<&'a Platform>) -> Fut<'a, bool> {
        async move { Ok(false) }.boxed()
    }

    /// The kubelet pulls each image when a pod starts; a prepull (a DaemonSet, design §9) is
    /// not built, so every prepull fails with that reason.
    fn pull<'a>(
        &'a self,
        _image: &'a str,
        _auth: Option<RegistryAuth>,
        _platform: Option<Platform>,
    ) -> BoxStream<'a, Result<PullEvent, PullError>> {
        futures_util::stream::once(async {
            Err(PullError {
                failure: PullFailure::Failed,
                message: "image prepull is not supported on Kubernetes: the kubelet pulls each image when a pod starts"
                    .into(),
            })
        })
        .boxed()
    }

    /// One watcher over this instance's pods (re-listing after a 410 with back-off), each pod's
    /// state compared with the last one seen: `Started` when it starts running, `Died` (and
    /// `Oom`) when its sandbox container ends, `Killed` when the pod is deleted before that.
    /// The first listing only sets the baseline. `since` is not replayable here (the API
    /// server keeps no event history of pods), so events start from now. The same watcher
    /// feeds the reflector store that reads answer from (`cache`), each change stored before
    /// it is reported.
    fn events(&self, _since: Option<i64>) -> BoxStream<'static, Result<RuntimeEvent, RuntimeError>> {
        let config = watcher::Config::default().labels(&objects::selector(&self.objects.instance));
        let (writer, feeder) = self.cache.feed();
        let stream = watcher(self.pods(), config).default_backoff().reflect(writer);
        let mut tracker = Tracker::default();
        stream
            .filter_map(move |item| {
                feeder.note(&item);
                let events = match item {
                    Ok(event) => tracker.note(event),
                    Err(e) => {
                        // The watcher recovers by itself (re-list on 410); its state is kept.
                        tracing::warn!(error = %e, "the pod watcher failed; it retries");
                        Vec::new()
                    }
                };
                std::future::ready(Some(futures_util::stream::iter(events.into_iter().map(Ok))))
            })
            .flatten()
            .boxed()
    }

    fn containers(&self) -> Fut<'_, Vec<ContainerInfo>> {
        async move {
            let pods = self.listed_pods().await?;
            Ok(pods.iter().map(Self::container_info).collect())
        }
        .boxed()
    }

    /// The cluster's events of the sandbox's pod (`kubectl describe pod`'s), listed now.
    fn object_events<'a>(&'a self, id: &'a str, instance: Option<&'a Instance>) -> Fut<'a, Vec<ObjectEvent>> {
        async move {
            let pod = events::pod_of(id, instance.map(|i| i.reference.as_str()));
            let api: Api<Event> = Api::namespaced(self.client.clone(), &self.objects.namespace);
            events::of_pod(api, &pod).await
        }
        .boxed()
    }

    fn container<'a>(&'a self, reference: &'a str) -> Fut<'a, Option<ContainerInfo>> {
        async move {
            let pod = match self.pods().get(reference).await {
                Ok(pod) => pod,
                Err(e) => match classify("read the pod", e) {
                    RuntimeError::NotFound(_) => return Ok(None),
                    other => return Err(other),
                },
            };
            let labels = pod.metadata.labels.clone().unwrap_or_default();
            let ours = labels.get(objects::LABEL_INSTANCE) == Some(&self.objects.instance)
                && labels.get(objects::LABEL_MANAGED).map(String::as_str) == Some("true");
            Ok(ours.then(|| Self::container_info(&pod)))
        }
        .boxed()
    }

    /// No sample: reading `metrics.k8s.io` (metrics-server) is not built. execd's own
    /// `/metrics` inside the sandbox still answers.
    fn usage<'a>(&'a self, _reference: &'a str) -> Fut<'a, Option<Usage>> {
        async move { Ok(None) }.boxed()
    }

    fn member_idle<'a>(&'a self, instance: &'a Instance) -> Fut<'a, ()> {
        self.mark_member_idle(instance).boxed()
    }

    fn claim<'a>(&'a self, instance: &'a Instance, sandbox_id: &'a str) -> Fut<'a, ()> {
        self.claim_member(instance, sandbox_id).boxed()
    }

    fn log_stream(
        &self,
        reference: &str,
        query: LogQuery,
    ) -> BoxStream<'static, Result<Bytes, RuntimeError>> {
        let pods = self.pods();
        let name = reference.to_owned();
        let params = Self::log_params(query);
        async move {
            let reader = pods
                .log_stream(&name, &params)
                .await
                .map_err(|e| classify("follow logs", e))?;
            Ok(futures_util::stream::unfold(
                Box::pin(reader),
                |mut reader| async move {
                    use futures_util::AsyncReadExt as _;
                    let mut buf = vec![0u8; 16 * 1024];
                    match reader.read(&mut buf).await {
                        Ok(0) => None,
                        Ok(n) => {
                            buf.truncate(n);
                            Some((Ok(Bytes::from(buf)), reader))
                        }
                        Err(e) => Some((
                            Err(RuntimeError::Unavailable(format!("follow logs: {e}"))),
                            reader,
                        )),
                    }
                },
            ))
        }
        .into_stream()
        .map(|opened| match opened {
            Ok(stream) => stream.boxed(),
            Err(e) => futures_util::stream::once(async move { Err(e) }).boxed(),
        })
        .flatten()
        .boxed()
    }
}

/// What the event stream remembers of each pod: whether it was seen running and whether its
/// end was reported.
#[derive(Debug, Default)]
struct Tracker {
    pods: HashMap<String, Seen>,
    /// Set once the first listing is complete; until then pods only set the baseline.
    primed: bool,
    /// A re-list under way (after a 410 or a broken watch): what it listed so far and the
    /// events that makes, reported at its end, when the reflector's store shows the same.
    relist: Option<Relist>,
}

#[derive(Debug, Default)]
struct Relist {
    listed: HashSet<String>,
    events: Vec<RuntimeEvent>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Seen {
    running: bool,
    ended: bool,
    /// Its sandbox (label), for the `Killed` of a pod that vanished while the watch was down.
    sandbox_id: Option<String>,
}

impl Tracker {
    fn note(&mut self, event: watcher::Event<Pod>) -> Vec<RuntimeEvent> {
        match event {
            watcher::Event::Init => {
                if self.primed {
                    self.relist = Some(Relist::default());
                }
                Vec::new()
            }
            watcher::Event::InitDone => {
                self.primed = true;
                let Some(relist) = self.relist.take() else {
                    return Vec::new();
                };
                let mut events = relist.events;
                // Deleted while the watch was down: no Delete comes for them.
                let vanished: Vec<String> = self
                    .pods
                    .keys()
                    .filter(|name| !relist.listed.contains(*name))
                    .cloned()
                    .collect();
                for name in vanished {
                    let seen = self.pods.remove(&name).unwrap_or_default();
                    if !seen.ended {
                        events.push(RuntimeEvent {
                            sandbox_id: seen.sandbox_id,
                            reference: name,
                            at: now_ms(),
                            kind: RuntimeEventKind::Killed { signal: None },
                        });
                    }
                }
                events
            }
            watcher::Event::InitApply(pod) => {
                let events = self.applied(&pod);
                match &mut self.relist {
                    Some(relist) => {
                        relist.listed.extend(pod.metadata.name.clone());
                        relist.events.extend(events);
                        Vec::new()
                    }
                    None => events,
                }
            }
            watcher::Event::Apply(pod) => self.applied(&pod),
            watcher::Event::Delete(pod) => {
                let Some(name) = pod.metadata.name.clone() else {
                    return Vec::new();
                };
                let seen = self.pods.remove(&name).unwrap_or_default();
                if seen.ended || !self.primed {
                    return Vec::new();
                }
                vec![event_of(&pod, RuntimeEventKind::Killed { signal: None })]
            }
        }
    }

    fn applied(&mut self, pod: &Pod) -> Vec<RuntimeEvent> {
        let Some(name) = pod.metadata.name.clone() else {
            return Vec::new();
        };
        let (running, ended) = match objects::observed(pod) {
            Observed::Running => (true, false),
            Observed::Exited { .. } => (false, true),
            _ => (false, false),
        };
        let sandbox_id = pools::key(pod);
        let before = self.pods.insert(
            name,
            Seen {
                running,
                ended,
                sandbox_id,
            },
        );
        if !self.primed {
            return Vec::new();
        }
        let before = before.unwrap_or_default();
        let mut events = Vec::new();
        if running && !before.running {
            events.push(event_of(pod, RuntimeEventKind::Started));
        }
        if ended && !before.ended {
            if let Observed::Exited { code, oom, .. } = objects::observed(pod) {
                if oom {
                    events.push(event_of(pod, RuntimeEventKind::Oom));
                }
                events.push(event_of(pod, RuntimeEventKind::Died { code }));
            }
        }
        events
    }
}

fn event_of(pod: &Pod, kind: RuntimeEventKind) -> RuntimeEvent {
    RuntimeEvent {
        sandbox_id: pools::key(pod),
        reference: pod.metadata.name.clone().unwrap_or_default(),
        // When sandboxd learnt of it: pod statuses carry times, but the journal wants them
        // in the order they arrive.
        at: now_ms(),
        kind,
    }
}

/// A host path and a named volume with a sub-path: the two kinds of mount, for the builder
/// and schema tests.
#[cfg(test)]
fn sample_mounts() -> Vec<super::Mount> {
    use super::Mount;
    vec![
        Mount::HostPath {
            path: "/srv/data".into(),
            mount_path: "/data".into(),
            read_only: true,
        },
        Mount::Volume {
            name: "cache".into(),
            sub_path: Some("pip".into()),
            mount_path: "/root/.cache".into(),
            read_only: false,
        },
    ]
}
