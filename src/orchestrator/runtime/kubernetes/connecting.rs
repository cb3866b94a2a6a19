//! The Kubernetes runtime while its API server cannot be reached (design §16.6 "Bad input"):
//! sandboxd starts anyway, every runtime call answers [`RuntimeError::Unavailable`] (503
//! `SANDBOX::RUNTIME_UNAVAILABLE`), and a background task connects with back-off; once the API
//! server answers, every call goes to the connected [`Kubernetes`]. Async.
//!
//! Only an unreachable server is waited out: a client configuration that cannot be read
//! (no kubeconfig, no in-cluster service account) still fails start-up.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::{FutureExt as _, StreamExt as _};
use tokio::sync::watch;

use super::{Kubernetes, Settings};
use crate::orchestrator::runtime::{
    Capabilities, ContainerInfo, Fut, ImageRole, Instance, LogQuery, ObjectEvent, Observed, Platform,
    PullError, PullEvent, PullFailure, RegistryAuth, Resources, Runtime, RuntimeError, RuntimeEvent,
    RuntimeKind, SandboxSpec, Target, Usage,
};

/// The first pause between two connection attempts; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// The longest pause between two attempts: a cheap `/version` call, so a returning API
/// server is found within seconds.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The Kubernetes runtime, connected or not yet.
pub struct Connecting {
    /// Set once, by the connect task, when the API server has answered.
    connected: Arc<OnceLock<Kubernetes>>,
    /// True once `connected` is set: what the event stream and [`Runtime::connected`] wait on.
    ready: watch::Receiver<bool>,
    /// Why the last attempt failed (the API server's or the network's words; no credential
    /// is ever in them). A std mutex: held for a clone, never across an await.
    last_error: Arc<Mutex<String>>,
    /// The namespace, for `version` before the API server answers.
    namespace: String,
    /// The connect task, owned here: aborted when the runtime is dropped.
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Connecting {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Connecting {
    /// Starts connecting `client` in the background, `first_error` being why the attempt at
    /// start-up failed; every call answers `Unavailable` until an attempt succeeds.
    pub fn start(client: kube::Client, settings: Settings, first_error: String) -> Self {
        let connected = Arc::new(OnceLock::new());
        let (tx, ready) = watch::channel(false);
        let last_error = Arc::new(Mutex::new(first_error));
        let namespace = settings.namespace.clone();
        let task = tokio::spawn({
            let (connected, last_error) = (connected.clone(), last_error.clone());
            async move {
                let mut pause = FIRST_BACKOFF;
                loop {
                    tokio::time::sleep(pause).await;
                    match Kubernetes::handshake(client.clone(), settings.clone()).await {
                        Ok(runtime) => {
                            tracing::info!(version = %runtime.version, "the Kubernetes API server answers; sandboxes are served");
                            let _ = connected.set(runtime);
                            let _ = tx.send(true);
                            return;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, retry_in = ?pause, "the Kubernetes API server cannot be reached yet");
                            *last_error.lock().unwrap_or_else(|p| p.into_inner()) = format!("{e:#}");
                        }
                    }
                    pause = (pause * 2).min(MAX_BACKOFF);
                }
            }
        });
        Self {
            connected,
            ready,
            last_error,
            namespace,
            task,
        }
    }

    /// The connected runtime, or why there is none.
    fn runtime(&self) -> Result<&Kubernetes, RuntimeError> {
        self.connected.get().ok_or_else(|| {
            RuntimeError::Unavailable(format!(
                "the Kubernetes API server cannot be reached yet: {}",
                self.last_error()
            ))
        })
    }

    fn last_error(&self) -> String {
        self.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A future that answers as `op` does once connected, and `Unavailable` before.
    fn or_unavailable<'a, T: Send + 'a>(
        &'a self,
        op: impl FnOnce(&'a Kubernetes) -> Fut<'a, T>,
    ) -> Fut<'a, T> {
        match self.runtime() {
            Ok(k) => op(k),
            Err(e) => async move { Err(e) }.boxed(),
        }
    }
}

impl Runtime for Connecting {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Kubernetes
    }

    fn capabilities(&self) -> Capabilities {
        super::CAPABILITIES
    }

    fn version(&self) -> String {
        match self.connected.get() {
            Some(k) => k.version(),
            None => format!("unreachable (namespace {})", self.namespace),
        }
    }

    /// Public (`/health`), so without the failure's words (addresses); the log has them.
    fn unavailable(&self) -> Option<String> {
        self.connected
            .get()
            .is_none()
            .then(|| "the Kubernetes API server cannot be reached yet".to_owned())
    }

    fn connected(&self) -> BoxFuture<'static, ()> {
        let mut ready = self.ready.clone();
        async move {
            // An error means the task ended without connecting (the runtime was dropped).
            let _ = ready.wait_for(|&r| r).await;
        }
        .boxed()
    }

    fn create(&self, spec: SandboxSpec) -> Fut<'_, Instance> {
        self.or_unavailable(|k| k.create(spec))
    }

    fn start<'a>(&'a self, instance: &'a Instance) -> Fut<'a, Instance> {
        self.or_unavailable(|k| k.start(instance))
    }

    fn resize<'a>(&'a self, instance: &'a Instance, resources: Resources) -> Fut<'a, ()> {
        self.or_unavailable(|k| k.resize(instance, resources))
    }

    fn observe<'a>(&'a self, instance: &'a Instance) -> Fut<'a, Observed> {
        self.or_unavailable(|k| k.observe(instance))
    }

    fn observe_all(&self) -> Fut<'_, BTreeMap<String, (Instance, Observed)>> {
        self.or_unavailable(|k| k.observe_all())
    }

    fn pause<'a>(&'a self, instance: &'a Instance) -> Fut<'a, ()> {
        self.or_unavailable(|k| k.pause(instance))
    }

    fn unpause<'a>(&'a self, instance: &'a Instance) -> Fut<'a, ()> {
        self.or_unavailable(|k| k.unpause(instance))
    }

    fn remove<'a>(&'a self, instance: &'a Instance) -> Fut<'a, ()> {
        self.or_unavailable(|k| k.remove(instance))
    }

    fn remove_workspace<'a>(&'a self, id: &'a str) -> Fut<'a, ()> {
        self.or_unavailable(|k| k.remove_workspace(id))
    }

    fn object_events<'a>(&'a self, id: &'a str, instance: Option<&'a Instance>) -> Fut<'a, Vec<ObjectEvent>> {
        self.or_unavailable(|k| k.object_events(id, instance))
    }

    fn commit<'a>(&'a self, instance: &'a Instance, image: &'a str, role: ImageRole) -> Fut<'a, ()> {
        self.or_unavailable(|k| k.commit(instance, image, role))
    }

    fn builds(&self) -> Fut<'_, Vec<Instance>> {
        self.or_unavailable(|k| k.builds())
    }

    fn remove_image<'a>(&'a self, image: &'a str) -> Fut<'a, ()> {
        self.or_unavailable(|k| k.remove_image(image))
    }

    fn logs<'a>(&'a self, instance: &'a Instance, tail: usize, since: Option<i64>) -> Fut<'a, String> {
        self.or_unavailable(|k| k.logs(instance, tail, since))
    }

    fn tidy(&self) -> BoxFuture<'_, ()> {
        match self.connected.get() {
            Some(k) => k.tidy(),
            None => async {}.boxed(),
        }
    }

    /// The pod IP needs no API server: a sandbox known from before answers on it.
    /// No route until the API server has answered (a port-forward tunnel needs it, and
    /// nothing else can be done with a sandbox meanwhile).
    fn target(&self, instance: &Instance, port: u16) -> Option<Target> {
        self.connected.get()?.target(instance, port)
    }

    fn image_present<'a>(&'a self, image: &'a str, platform: Option<&'a Platform>) -> Fut<'a, bool> {
        self.or_unavailable(|k| k.image_present(image, platform))
    }

    fn pull<'a>(
        &'a self,
        image: &'a str,
        auth: Option<RegistryAuth>,
        platform: Option<Platform>,
    ) -> BoxStream<'a, Result<PullEvent, PullError>> {
        match self.runtime() {
            Ok(k) => k.pull(image, auth, platform),
            Err(e) => futures_util::stream::once(async move {
                Err(PullError {
                    failure: PullFailure::RuntimeUnavailable,
                    message: e.to_string(),
                })
            })
            .boxed(),
        }
    }

    /// Waits for the connection, then the connected runtime's stream (the caller's
    /// reconnects, which a stream that failed at once would make, are not needed).
    fn events(&self, since: Option<i64>) -> BoxStream<'static, Result<RuntimeEvent, RuntimeError>> {
        if let Some(k) = self.connected.get() {
            return k.events(since);
        }
        let connected = self.connected.clone();
        self.connected()
            .into_stream()
            .flat_map(move |()| match connected.get() {
                Some(k) => k.events(since),
                None => futures_util::stream::once(async {
                    Err(RuntimeError::Unavailable(
                        "the Kubernetes runtime stopped connecting".into(),
                    ))
                })
                .boxed(),
            })
            .boxed()
    }

    fn containers(&self) -> Fut<'_, Vec<ContainerInfo>> {
        self.or_unavailable(|k| k.containers())
    }

    fn container<'a>(&'a self, reference: &'a str) -> Fut<'a, Option<ContainerInfo>> {
        self.or_unavailable(|k| k.container(reference))
    }

    fn usage<'a>(&'a self, reference: &'a str) -> Fut<'a, Option<Usage>> {
        self.or_unavailable(|k| k.usage(reference))
    }

    fn log_stream(
        &self,
        reference: &str,
        query: LogQuery,
    ) -> BoxStream<'static, Result<Bytes, RuntimeError>> {
        match self.runtime() {
            Ok(k) => k.log_stream(reference, query),
            Err(e) => futures_util::stream::once(async move { Err(e) }).boxed(),
        }
    }
}
