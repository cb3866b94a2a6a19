//! An in-memory runtime for unit tests of the service: sandboxes are map entries, failures are
//! scripted per operation ("`pause` fails twice with `Transient`"), and execd's `/ping`,
//! `/command` and port proxy are served for real over loopback HTTP (answering as each
//! sandbox is scripted to), so readiness and its probes go through the real execd client. Images
//! are a set; pulls follow a script per image ([`PullStep`]), can be held until released, and
//! are counted while in flight. A `/command` of a scripted shell text (a template build's
//! install command) prints and exits as its [`CommandScript`] says, held until released if
//! asked; build containers are sandboxes with [`Purpose::Build`], which `observe_all` skips.
//! Runtime events are whatever a test [`FakeRuntime::emit`]s.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::{FutureExt as _, StreamExt as _};
use tokio::sync::Semaphore;

use super::{
    Capabilities, ContainerInfo, ContainerRole, Dial, Fut, ImageRole, Instance, LayerStep, LogQuery,
    ObjectEvent, Observed, Platform, PullError, PullEvent, Purpose, RegistryAuth, Resources, Runtime,
    RuntimeError, RuntimeEvent, RuntimeKind, SandboxSpec, Target, Usage, EXECD_PORT,
};
use crate::wire::{RunCommandRequest, StreamEvent};

/// The application port that is not execd's.
const HTTP_PORT: u16 = 8080;

/// An operation a failure can be scripted for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// [`Runtime::create`].
    Create,
    /// [`Runtime::observe`].
    Observe,
    /// [`Runtime::observe_all`].
    ObserveAll,
    /// [`Runtime::observe_many`].
    ObserveMany,
    /// [`Runtime::pause`].
    Pause,
    /// [`Runtime::unpause`].
    Unpause,
    /// [`Runtime::remove`].
    Remove,
    /// [`Runtime::image_present`].
    ImagePresent,
    /// [`Runtime::commit`].
    Commit,
    /// [`Runtime::builds`].
    Builds,
    /// [`Runtime::remove_image`].
    RemoveImage,
    /// [`Runtime::start`].
    Start,
    /// [`Runtime::resize`].
    Resize,
    /// [`Runtime::remove_workspace`].
    RemoveWorkspace,
    /// [`Runtime::object_events`].
    ObjectEvents,
    /// [`Runtime::claim`] (otherwise a no-op, as on Docker).
    Claim,
}

/// How a `/command` running one shell text answers (an install command of a template build).
#[derive(Debug, Clone, Default)]
pub struct CommandScript {
    /// Lines printed on stdout.
    pub stdout: Vec<String>,
    /// Exit code; 0 completes.
    pub exit: i64,
    /// Whether the exit waits, after the output, for [`FakeRuntime::release_command`].
    pub held: bool,
    /// Whether execd reports the exit as its timeout's kill.
    pub timed_out: bool,
}

/// One step of a scripted pull.
#[derive(Debug, Clone)]
pub enum PullStep {
    /// Yields this event.
    Event(PullEvent),
    /// Waits until [`FakeRuntime::release_pull`] lets one through.
    Wait,
    /// Ends the pull with this error.
    Fail(PullError),
}

/// A pull's script and the gate its [`PullStep::Wait`] steps wait at.
struct PullScript {
    steps: Vec<PullStep>,
    gate: Arc<Semaphore>,
}

/// The pulls the fake has seen.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PullStats {
    /// Images whose pull started, in order.
    pub started: Vec<String>,
    /// Pulls in flight now.
    pub in_flight: usize,
    /// The most that were ever in flight at once.
    pub max_in_flight: usize,
    /// Pulls dropped before they ended (cancelled).
    pub dropped: usize,
    /// The credentials each pull was given, by image.
    pub auth: Vec<(String, Option<RegistryAuth>)>,
}

/// How a created sandbox behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Behaviour {
    /// Runs, and execd answers `/ping`.
    #[default]
    Healthy,
    /// Runs, but execd never answers 200.
    Silent,
    /// Exits at once with this code (no published port).
    Exits(i64),
    /// Runs, and execd answers `/ping` with 503 `STARTING` (a pre-start hook runs) until
    /// [`FakeRuntime::finish_pre_start`].
    Starting,
}

/// One sandbox the fake holds.
#[derive(Debug, Clone)]
pub struct FakeSandbox {
    /// The spec it was created from.
    pub spec: SandboxSpec,
    /// What `observe` says.
    pub observed: Observed,
    /// Whether its execd answers `/ping` with 200.
    pub answers: bool,
    /// Whether its execd answers `/ping` with 503 `STARTING`.
    pub starting: bool,
    /// Whether its application is ready: probe commands exit 0 and ports answer 200
    /// (otherwise commands exit 1 and nothing accepts connections).
    pub app_ready: bool,
    /// What `logs` returns, when scripted.
    pub logs: Option<String>,
    /// The bodies of the `/files/upload` requests its execd received, in order.
    pub uploads: Vec<Vec<u8>>,
}

#[derive(Default)]
struct Inner {
    /// The execd routes executions use, for `POST /command`.
    execd: Option<Arc<Mutex<super::fake_execd::FakeExecd>>>,
    /// By reference.
    sandboxes: BTreeMap<String, FakeSandbox>,
    failures: HashMap<Op, VecDeque<RuntimeError>>,
    behaviour: Behaviour,
    /// What `logs` returns for sandboxes without their own.
    logs: Option<String>,
    calls: Vec<Op>,
    /// The references each [`Runtime::observe_many`] asked about, in order.
    observed_many: Vec<Vec<String>>,
    next: u64,
    /// Images present.
    images: BTreeSet<String>,
    /// Pull scripts by image; an image without one pulls at once.
    pulls: HashMap<String, PullScript>,
    pull_stats: PullStats,
    /// `/command` scripts by shell text, with the gate held ones wait at.
    scripts: HashMap<String, (CommandScript, Arc<Semaphore>)>,
    /// Every `/command` request, in order.
    commands: Vec<RunCommandRequest>,
    /// (instance reference, image) of every commit, in order.
    commits: Vec<(String, String)>,
    /// The role of every committed image.
    roles: HashMap<String, ImageRole>,
    /// Images a sandbox uses, which `remove_image` refuses.
    images_in_use: BTreeSet<String>,
    /// What [`Capabilities::host_network`] says.
    host_network: bool,
    /// What [`Capabilities::gpus`] and [`Capabilities::disk`] say (as on Kubernetes: GPUs by
    /// count only).
    gpus: bool,
    /// [`Capabilities::freeze`] false (as on Kubernetes).
    no_freeze: bool,
    /// What [`Capabilities::rootfs_pause`] says.
    rootfs_pause: super::RootfsPause,
    /// The sandbox ids whose persistent workspace exists.
    workspaces: BTreeSet<String>,
    /// What [`Runtime::object_events`] says, by sandbox id.
    object_events: HashMap<String, Vec<ObjectEvent>>,
}

/// The fake.
#[derive(Clone)]
pub struct FakeRuntime {
    inner: Arc<Mutex<Inner>>,
    ping: SocketAddr,
    /// What [`Runtime::events`] streams: what tests emit.
    events: tokio::sync::broadcast::Sender<RuntimeEvent>,
    /// The execd routes executions use (`fake_execd`).
    execd: Arc<Mutex<super::fake_execd::FakeExecd>>,
}

impl FakeRuntime {
    /// A fake with its `/ping` server on a loopback port.
    pub async fn start() -> Self {
        let execd = Arc::new(Mutex::new(super::fake_execd::FakeExecd::default()));
        let inner = Arc::new(Mutex::new(Inner {
            execd: Some(execd.clone()),
            ..Inner::default()
        }));
        let app = axum::Router::new()
            .route("/{reference}/ping", axum::routing::get(ping))
            .route("/{reference}/command", axum::routing::post(command))
            .route("/{reference}/files/upload", axum::routing::post(upload))
            .route("/{reference}/proxy/{port}", axum::routing::get(proxied))
            .route("/{reference}/proxy/{port}/", axum::routing::get(proxied))
            .route("/{reference}/proxy/{port}/{*rest}", axum::routing::get(proxied))
            .with_state(inner.clone());
        let app = app.merge(super::fake_execd::router(execd.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake ping server");
        let ping = listener.local_addr().expect("local address");
        tokio::spawn(async move { axum::serve(listener, app).await });
        let (events, _) = tokio::sync::broadcast::channel(64);
        Self {
            inner,
            ping,
            events,
            execd,
        }
    }

    /// Sends `event` to every open [`Runtime::events`] stream.
    pub fn emit(&self, event: RuntimeEvent) {
        let _ = self.events.send(event);
    }

    /// How many [`Runtime::events`] streams are open.
    pub fn event_watchers(&self) -> usize {
        self.events.receiver_count()
    }

    /// The runtime's reference of sandbox `id`.
    pub fn reference_of(&self, id: &str) -> Option<String> {
        let inner = self.lock();
        inner
            .sandboxes
            .iter()
            .find(|(_, s)| s.spec.id == id)
            .map(|(reference, _)| reference.clone())
    }

    /// The fake execd's state (commands, files, interrupts).
    pub fn execd(&self) -> std::sync::MutexGuard<'_, super::fake_execd::FakeExecd> {
        self.execd.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Kills sandbox `id`'s execd (as `kill -9` would): its streams break off, its routes and
    /// `/ping` fail, and the runtime sees the container exited.
    pub fn kill_execd(&self, id: &str) {
        let references: Vec<String> = self
            .lock()
            .sandboxes
            .iter()
            .filter(|(_, s)| s.spec.id == id)
            .map(|(r, _)| r.clone())
            .collect();
        for reference in references {
            super::fake_execd::kill(&self.execd, &reference);
        }
        self.set_observed(
            id,
            Observed::Exited {
                code: Some(137),
                oom: false,
                message: None,
            },
        );
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What [`Runtime::object_events`] answers for sandbox `id`.
    pub fn set_object_events(&self, id: &str, events: Vec<ObjectEvent>) {
        self.lock().object_events.insert(id.to_owned(), events);
    }

    /// The next `times` calls of `op` fail with what `error` makes.
    pub fn fail(&self, op: Op, times: usize, error: fn() -> RuntimeError) {
        let mut inner = self.lock();
        let queue = inner.failures.entry(op).or_default();
        queue.extend((0..times).map(|_| error()));
    }

    /// Whether sandboxes share the host's network ([`Capabilities::host_network`]).
    pub fn set_host_network(&self, host: bool) {
        self.lock().host_network = host;
    }

    /// Offer GPUs by count and disk limits, as Kubernetes does ([`Capabilities::gpus`]).
    pub fn offer_gpus_and_disk(&self) {
        self.lock().gpus = true;
    }

    /// Whether the runtime can freeze sandboxes ([`Capabilities::freeze`]; Kubernetes cannot).
    pub fn set_freeze(&self, freeze: bool) {
        self.lock().no_freeze = !freeze;
    }

    /// How a Rootfs pause keeps a sandbox ([`Capabilities::rootfs_pause`]).
    pub fn set_rootfs_pause(&self, how: super::RootfsPause) {
        self.lock().rootfs_pause = how;
    }

    /// The sandbox ids whose persistent workspace exists now.
    pub fn workspaces(&self) -> BTreeSet<String> {
        self.lock().workspaces.clone()
    }

    /// How sandboxes created from now on behave.
    pub fn behave(&self, behaviour: Behaviour) {
        self.lock().behaviour = behaviour;
    }

    /// Every sandbox the fake holds, by reference.
    pub fn sandboxes(&self) -> BTreeMap<String, FakeSandbox> {
        self.lock().sandboxes.clone()
    }

    /// Sets what `observe` says of the sandbox with id `id` (as if changed behind sandboxd's
    /// back).
    pub fn set_observed(&self, id: &str, observed: Observed) {
        let mut inner = self.lock();
        for s in inner.sandboxes.values_mut() {
            if s.spec.id == id {
                s.observed = observed.clone();
            }
        }
    }

    /// Changes the sandbox with id `id` in place (as its processes would).
    fn with_sandbox(&self, id: &str, change: impl Fn(&mut FakeSandbox)) {
        let mut inner = self.lock();
        for s in inner.sandboxes.values_mut() {
            if s.spec.id == id {
                change(s);
            }
        }
    }

    /// The pre-start hook of sandbox `id` succeeded: `/ping` answers 200 from now on.
    pub fn finish_pre_start(&self, id: &str) {
        self.with_sandbox(id, |s| {
            s.starting = false;
            s.answers = true;
        });
    }

    /// Whether the application of sandbox `id` passes readiness probes.
    pub fn set_app_ready(&self, id: &str, ready: bool) {
        self.with_sandbox(id, |s| s.app_ready = ready);
    }

    /// What `logs` returns for every sandbox without logs of its own (`set_logs`).
    pub fn set_default_logs(&self, logs: &str) {
        self.lock().logs = Some(logs.to_owned());
    }

    /// What `logs` returns for sandbox `id`.
    pub fn set_logs(&self, id: &str, logs: &str) {
        self.with_sandbox(id, |s| s.logs = Some(logs.to_owned()));
    }

    /// Adds a sandbox labelled `id` that sandboxd did not create through this fake (as found
    /// in the runtime at start-up); returns its instance.
    pub fn plant(&self, id: &str, observed: Observed) -> Instance {
        let mut inner = self.lock();
        inner.next += 1;
        let reference = format!("planted-{}", inner.next);
        inner.sandboxes.insert(
            reference.clone(),
            FakeSandbox {
                spec: SandboxSpec::for_test(id, "planted", &["sleep"]),
                observed,
                answers: true,
                starting: false,
                app_ready: false,
                logs: None,
                uploads: Vec::new(),
            },
        );
        instance(reference)
    }

    /// Adds a build container that no build of this process made (as a crash leaves one);
    /// returns its instance.
    pub fn plant_build(&self, template: &str, version: u32) -> Instance {
        let instance = self.plant(&format!("build-of-{template}"), Observed::Running);
        self.lock()
            .sandboxes
            .get_mut(&instance.reference)
            .expect("just planted")
            .spec
            .purpose = Purpose::Build {
            template: template.to_owned(),
            version,
        };
        instance
    }

    /// `/command` with the shell text `command` answers as `script` says.
    pub fn script_command(&self, command: &str, script: CommandScript) {
        self.lock()
            .scripts
            .insert(command.to_owned(), (script, Arc::new(Semaphore::new(0))));
    }

    /// Lets one held run of `command` exit.
    pub fn release_command(&self, command: &str) {
        if let Some((_, gate)) = self.lock().scripts.get(command) {
            gate.add_permits(1);
        }
    }

    /// Every `/command` request so far.
    pub fn commands(&self) -> Vec<RunCommandRequest> {
        self.lock().commands.clone()
    }

    /// (instance reference, image) of every commit so far.
    pub fn commits(&self) -> Vec<(String, String)> {
        self.lock().commits.clone()
    }

    /// The role `image` was committed with.
    pub fn image_role(&self, image: &str) -> Option<ImageRole> {
        self.lock().roles.get(image).copied()
    }

    /// Makes `remove_image` of `image` refuse with a conflict while `in_use`, as an engine
    /// does for an image a container was made from.
    pub fn set_image_in_use(&self, image: &str, in_use: bool) {
        let mut inner = self.lock();
        if in_use {
            inner.images_in_use.insert(image.to_owned());
        } else {
            inner.images_in_use.remove(image);
        }
    }

    /// How many times `op` was called.
    pub fn calls(&self, op: Op) -> usize {
        self.lock().calls.iter().filter(|&&c| c == op).count()
    }

    /// The references each [`Runtime::observe_many`] asked about, in order.
    pub fn observed_many(&self) -> Vec<Vec<String>> {
        self.lock().observed_many.clone()
    }

    /// Marks `image` as present.
    pub fn add_image(&self, image: &str) {
        self.lock().images.insert(image.to_owned());
    }

    /// Whether `image` is present (a pull that finished adds it).
    pub fn has_image(&self, image: &str) -> bool {
        self.lock().images.contains(image)
    }

    /// Pulls of `image` follow `steps`; at the end the image is present.
    pub fn script_pull(&self, image: &str, steps: Vec<PullStep>) {
        self.lock().pulls.insert(
            image.to_owned(),
            PullScript {
                steps,
                gate: Arc::new(Semaphore::new(0)),
            },
        );
    }

    /// Lets `n` [`PullStep::Wait`] steps of `image`'s pulls through.
    pub fn release_pull(&self, image: &str, n: usize) {
        if let Some(script) = self.lock().pulls.get(image) {
            script.gate.add_permits(n);
        }
    }

    /// What the pulls did so far.
    pub fn pull_stats(&self) -> PullStats {
        self.lock().pull_stats.clone()
    }

    /// Records the call; returns the scripted failure, if one is due.
    fn enter(&self, op: Op) -> Result<(), RuntimeError> {
        let mut inner = self.lock();
        inner.calls.push(op);
        match inner.failures.get_mut(&op).and_then(VecDeque::pop_front) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// What the fake says of one of its sandboxes' containers.
fn container_info(reference: &str, s: &FakeSandbox) -> ContainerInfo {
    let (role, sandbox_id, name) = match s.spec.purpose {
        Purpose::Sandbox => (
            ContainerRole::Sandbox,
            Some(s.spec.id.clone()),
            format!("sandbox-{}", s.spec.id),
        ),
        Purpose::Build { .. } => (
            ContainerRole::TemplateBuild,
            None,
            format!("sandboxd-build-{}", s.spec.id),
        ),
    };
    ContainerInfo {
        reference: reference.to_owned(),
        name,
        role,
        sandbox_id,
        image: s.spec.image.clone(),
        observed: s.observed.clone(),
        ip: None,
        created_at: 1,
        started_at: Some(2),
        resources: s.spec.resources,
    }
}

fn instance(reference: String) -> Instance {
    Instance {
        kind: RuntimeKind::Fake,
        reference,
        data: String::new(),
    }
}

/// A pull in flight: counted until dropped.
struct Pulling {
    fake: FakeRuntime,
    image: String,
    steps: VecDeque<PullStep>,
    gate: Arc<Semaphore>,
    ended: bool,
}

impl Drop for Pulling {
    fn drop(&mut self) {
        let mut inner = self.fake.lock();
        inner.pull_stats.in_flight -= 1;
        if !self.ended {
            inner.pull_stats.dropped += 1;
        }
    }
}

/// What an unscripted pull does: one layer, two progress steps, done.
fn default_pull() -> Vec<PullStep> {
    let event = |step| {
        PullStep::Event(PullEvent {
            layer: "l1".into(),
            step,
        })
    };
    vec![
        event(LayerStep::Known),
        event(LayerStep::Downloading {
            current: 50,
            total: Some(100),
        }),
        event(LayerStep::Downloading {
            current: 100,
            total: Some(100),
        }),
        event(LayerStep::Done),
    ]
}

/// The sandbox behind `reference`, if it runs.
fn running(inner: &Mutex<Inner>, reference: &str) -> Option<FakeSandbox> {
    let inner = inner.lock().unwrap_or_else(|e| e.into_inner());
    inner
        .sandboxes
        .get(reference)
        .filter(|s| s.observed == Observed::Running)
        .cloned()
}

async fn ping(State(inner): State<Arc<Mutex<Inner>>>, Path(reference): Path<String>) -> Response {
    match running(&inner, &reference) {
        Some(s) if s.starting => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({"code": "STARTING", "message": "pre-start hook running"})),
        )
            .into_response(),
        Some(s) if s.answers => StatusCode::OK.into_response(),
        _ => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

/// `POST /command`: a scripted shell text answers as scripted; an execution's goes to the fake
/// execd; anything else (a probe) completes when the application is ready, else prints and
/// exits 1.
async fn command(
    State(inner): State<Arc<Mutex<Inner>>>,
    Path(reference): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let Some(s) = running(&inner, &reference) else {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    let Ok(request) = serde_json::from_slice::<RunCommandRequest>(&body) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let script = {
        let mut inner = inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.commands.push(request.clone());
        request
            .command
            .as_ref()
            .and_then(|c| inner.scripts.get(c).cloned())
    };
    if let Some((script, gate)) = script {
        return scripted(script, gate);
    }
    if super::fake_execd::is_execution(&request) {
        let execd = inner.lock().unwrap_or_else(|e| e.into_inner()).execd.clone();
        if let Some(execd) = execd {
            if execd
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .dead
                .contains(&reference)
            {
                return StatusCode::SERVICE_UNAVAILABLE.into_response();
            }
            return super::fake_execd::command(execd, reference, request);
        }
    }
    let body = if s.app_ready {
        "data: {\"type\":\"execution_complete\",\"timestamp\":1}\n\n".to_owned()
    } else {
        "data: {\"type\":\"stderr\",\"text\":\"not ready\",\"timestamp\":1}\n\n\
         data: {\"type\":\"error\",\"timestamp\":2,\"error\":{\"ename\":\"CommandExecError\",\"evalue\":\"1\",\"traceback\":[]}}\n\n"
            .to_owned()
    };
    ([(axum::http::header::CONTENT_TYPE, "text/event-stream")], body).into_response()
}

/// A scripted command's event stream: its output at once, its exit when released (if held).
fn scripted(script: CommandScript, gate: Arc<Semaphore>) -> Response {
    let sse = |event: StreamEvent| {
        let json = serde_json::to_string(&event).expect("events serialize");
        Ok::<_, std::convert::Infallible>(bytes::Bytes::from(format!("data: {json}\n\n")))
    };
    let mut first = vec![sse(StreamEvent::init("fake-command", 1))];
    first.extend(script.stdout.iter().map(|line| {
        let mut event = StreamEvent::new(crate::wire::EventType::Stdout, 2);
        event.text = Some(line.clone());
        sse(event)
    }));
    let exit = async move {
        if script.held {
            if let Ok(permit) = gate.acquire().await {
                permit.forget();
            }
        }
        let end = match (script.exit, script.timed_out) {
            (_, true) => StreamEvent::error(
                "CommandExecError",
                "-1".into(),
                vec!["killed by signal 9".into(), "timed out after 1000 ms".into()],
                3,
            ),
            (0, false) => StreamEvent::complete(1, 3),
            (code, false) => StreamEvent::error(
                "CommandExecError",
                code.to_string(),
                vec![format!("exit status {code}")],
                3,
            ),
        };
        sse(end)
    };
    let stream = futures_util::stream::iter(first).chain(futures_util::stream::once(exit));
    (
        [(axum::http::header::CONTENT_TYPE, "text/event-stream")],
        axum::body::Body::from_stream(stream),
    )
        .into_response()
}

/// `POST /files/upload`: keeps the body (a running sandbox's), and the files in it for the
/// fake execd.
async fn upload(
    State(inner): State<Arc<Mutex<Inner>>>,
    Path(reference): Path<String>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let execd = inner.lock().unwrap_or_else(|e| e.into_inner()).execd.clone();
    if let Some(execd) = execd {
        let content_type = headers
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        super::fake_execd::record_upload(&execd, content_type, &body);
    }
    let mut inner = inner.lock().unwrap_or_else(|e| e.into_inner());
    match inner
        .sandboxes
        .get_mut(&reference)
        .filter(|s| s.observed == Observed::Running)
    {
        Some(s) => {
            s.uploads.push(body.to_vec());
            StatusCode::OK.into_response()
        }
        None => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

/// `/proxy/{port}/...`: 200 when the application is ready, else execd's answer for a port
/// nothing listens on.
async fn proxied(State(inner): State<Arc<Mutex<Inner>>>, Path(params): Path<Vec<String>>) -> Response {
    let (Some(reference), Some(port)) = (params.first(), params.get(1)) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    match running(&inner, reference) {
        Some(s) if s.app_ready => StatusCode::OK.into_response(),
        Some(_) => (
            StatusCode::BAD_GATEWAY,
            axum::Json(
                serde_json::json!({"code": "BAD_GATEWAY", "message": format!("cannot connect to port {port}")}),
            ),
        )
            .into_response(),
        None => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

impl Runtime for FakeRuntime {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Fake
    }

    fn capabilities(&self) -> Capabilities {
        let state = self.lock();
        Capabilities {
            freeze: !state.no_freeze,
            isolation: false,
            builds: true,
            snapshots: true,
            host_network: state.host_network,
            gpus: state.gpus,
            all_gpus: false,
            disk: state.gpus,
            rootfs_pause: state.rootfs_pause,
        }
    }

    fn version(&self) -> String {
        "fake".into()
    }

    fn create(&self, spec: SandboxSpec) -> Fut<'_, Instance> {
        async move {
            self.enter(Op::Create)?;
            let mut inner = self.lock();
            if spec.workspace.is_some() {
                inner.workspaces.insert(spec.id.clone());
            }
            inner.next += 1;
            let reference = format!("fake-{}", inner.next);
            let (observed, answers) = match inner.behaviour {
                Behaviour::Healthy => (Observed::Running, true),
                Behaviour::Silent | Behaviour::Starting => (Observed::Running, false),
                Behaviour::Exits(code) => (
                    Observed::Exited {
                        code: Some(code),
                        oom: false,
                        message: None,
                    },
                    false,
                ),
            };
            let mut starting = inner.behaviour == Behaviour::Starting;
            let (observed, answers) = if spec.start {
                (observed, answers)
            } else {
                // Created only: `start` makes it behave as scripted then.
                starting = false;
                (Observed::Starting, false)
            };
            inner.sandboxes.insert(
                reference.clone(),
                FakeSandbox {
                    spec,
                    observed,
                    answers,
                    starting,
                    app_ready: false,
                    logs: None,
                    uploads: Vec::new(),
                },
            );
            Ok(instance(reference))
        }
        .boxed()
    }

    /// The sandbox then behaves as sandboxes created now do ([`FakeRuntime::behave`]).
    fn start<'a>(&'a self, instance: &'a Instance) -> Fut<'a, Instance> {
        async move {
            self.enter(Op::Start)?;
            let mut inner = self.lock();
            let behaviour = inner.behaviour;
            let s = inner
                .sandboxes
                .get_mut(&instance.reference)
                .ok_or_else(|| RuntimeError::NotFound(instance.reference.clone()))?;
            if s.observed != Observed::Starting {
                return Err(RuntimeError::Conflict("already started".into()));
            }
            (s.observed, s.answers, s.starting) = match behaviour {
                Behaviour::Healthy => (Observed::Running, true, false),
                Behaviour::Silent => (Observed::Running, false, false),
                Behaviour::Starting => (Observed::Running, false, true),
                Behaviour::Exits(code) => (
                    Observed::Exited {
                        code: Some(code),
                        oom: false,
                        message: None,
                    },
                    false,
                    false,
                ),
            };
            s.spec.start = true;
            Ok(instance.clone())
        }
        .boxed()
    }

    fn resize<'a>(&'a self, instance: &'a Instance, resources: Resources) -> Fut<'a, ()> {
        async move {
            self.enter(Op::Resize)?;
            let mut inner = self.lock();
            let s = inner
                .sandboxes
                .get_mut(&instance.reference)
                .ok_or_else(|| RuntimeError::NotFound(instance.reference.clone()))?;
            if let Some(memory) = resources.memory {
                s.spec.resources.memory = Some(memory);
            }
            if let Some(cpus) = resources.nano_cpus {
                s.spec.resources.nano_cpus = Some(cpus);
            }
            if resources.pids > 0 {
                s.spec.resources.pids = resources.pids;
            }
            Ok(())
        }
        .boxed()
    }

    fn observe<'a>(&'a self, instance: &'a Instance) -> Fut<'a, Observed> {
        async move {
            self.enter(Op::Observe)?;
            Ok(self
                .lock()
                .sandboxes
                .get(&instance.reference)
                .map_or(Observed::Gone, |s| s.observed.clone()))
        }
        .boxed()
    }

    fn object_events<'a>(
        &'a self,
        id: &'a str,
        _instance: Option<&'a Instance>,
    ) -> Fut<'a, Vec<ObjectEvent>> {
        async move {
            self.enter(Op::ObjectEvents)?;
            Ok(self.lock().object_events.get(id).cloned().unwrap_or_default())
        }
        .boxed()
    }

    fn observe_all(&self) -> Fut<'_, BTreeMap<String, (Instance, Observed)>> {
        async move {
            self.enter(Op::ObserveAll)?;
            Ok(self
                .lock()
                .sandboxes
                .iter()
                .filter(|(_, s)| s.spec.purpose == Purpose::Sandbox)
                .map(|(reference, s)| {
                    (
                        s.spec.id.clone(),
                        (instance(reference.clone()), s.observed.clone()),
                    )
                })
                .collect())
        }
        .boxed()
    }

    fn observe_many<'a>(
        &'a self,
        instances: &'a [Instance],
    ) -> Fut<'a, BTreeMap<String, (Instance, Observed)>> {
        async move {
            self.enter(Op::ObserveMany)?;
            let mut inner = self.lock();
            let asked: Vec<String> = instances.iter().map(|i| i.reference.clone()).collect();
            inner.observed_many.push(asked);
            Ok(instances
                .iter()
                .filter_map(|i| {
                    let s = inner.sandboxes.get(&i.reference)?;
                    (s.spec.purpose == Purpose::Sandbox).then(|| {
                        (
                            s.spec.id.clone(),
                            (instance(i.reference.clone()), s.observed.clone()),
                        )
                    })
                })
                .collect())
        }
        .boxed()
    }

    fn pause<'a>(&'a self, instance: &'a Instance) -> Fut<'a, ()> {
        async move {
            self.enter(Op::Pause)?;
            let mut inner = self.lock();
            let s = inner
                .sandboxes
                .get_mut(&instance.reference)
                .ok_or_else(|| RuntimeError::NotFound(instance.reference.clone()))?;
            if s.observed != Observed::Running {
                return Err(RuntimeError::Conflict("not running".into()));
            }
            s.observed = Observed::Paused;
            Ok(())
        }
        .boxed()
    }

    fn unpause<'a>(&'a self, instance: &'a Instance) -> Fut<'a, ()> {
        async move {
            self.enter(Op::Unpause)?;
            let mut inner = self.lock();
            let s = inner
                .sandboxes
                .get_mut(&instance.reference)
                .ok_or_else(|| RuntimeError::NotFound(instance.reference.clone()))?;
            if s.observed != Observed::Paused {
                return Err(RuntimeError::Conflict("not paused".into()));
            }
            s.observed = Observed::Running;
            Ok(())
        }
        .boxed()
    }

    fn remove<'a>(&'a self, instance: &'a Instance) -> Fut<'a, ()> {
        async move {
            self.enter(Op::Remove)?;
            self.lock().sandboxes.remove(&instance.reference);
            Ok(())
        }
        .boxed()
    }

    fn remove_workspace<'a>(&'a self, id: &'a str) -> Fut<'a, ()> {
        async move {
            self.enter(Op::RemoveWorkspace)?;
            self.lock().workspaces.remove(id);
            Ok(())
        }
        .boxed()
    }

    /// A template build's container is left exited (143, as after `docker stop`); a
    /// sandbox's goes on as it was.
    fn commit<'a>(&'a self, instance: &'a Instance, image: &'a str, role: ImageRole) -> Fut<'a, ()> {
        async move {
            self.enter(Op::Commit)?;
            let mut inner = self.lock();
            let s = inner
                .sandboxes
                .get_mut(&instance.reference)
                .ok_or_else(|| RuntimeError::NotFound(instance.reference.clone()))?;
            if role == ImageRole::Template {
                s.observed = Observed::Exited {
                    code: Some(143),
                    oom: false,
                    message: None,
                };
            }
            inner.images.insert(image.to_owned());
            inner.roles.insert(image.to_owned(), role);
            inner.commits.push((instance.reference.clone(), image.to_owned()));
            Ok(())
        }
        .boxed()
    }

    fn builds(&self) -> Fut<'_, Vec<Instance>> {
        async move {
            self.enter(Op::Builds)?;
            Ok(self
                .lock()
                .sandboxes
                .iter()
                .filter(|(_, s)| matches!(s.spec.purpose, Purpose::Build { .. }))
                .map(|(reference, _)| instance(reference.clone()))
                .collect())
        }
        .boxed()
    }

    fn remove_image<'a>(&'a self, image: &'a str) -> Fut<'a, ()> {
        async move {
            self.enter(Op::RemoveImage)?;
            let mut inner = self.lock();
            if inner.images_in_use.contains(image) {
                return Err(RuntimeError::Conflict(format!(
                    "image {image} is being used by a container"
                )));
            }
            inner.images.remove(image);
            Ok(())
        }
        .boxed()
    }

    fn logs<'a>(&'a self, instance: &'a Instance, _tail: usize, _since: Option<i64>) -> Fut<'a, String> {
        async move {
            let inner = self.lock();
            let scripted = inner
                .sandboxes
                .get(&instance.reference)
                .and_then(|s| s.logs.clone())
                .or_else(|| inner.logs.clone());
            Ok(scripted.unwrap_or_else(|| format!("output of {}\n", instance.reference)))
        }
        .boxed()
    }

    fn tidy(&self) -> BoxFuture<'_, ()> {
        async {}.boxed()
    }

    fn image_present<'a>(&'a self, image: &'a str, _platform: Option<&'a Platform>) -> Fut<'a, bool> {
        async move {
            self.enter(Op::ImagePresent)?;
            Ok(self.has_image(image))
        }
        .boxed()
    }

    fn pull<'a>(
        &'a self,
        image: &'a str,
        auth: Option<RegistryAuth>,
        _platform: Option<Platform>,
    ) -> BoxStream<'a, Result<PullEvent, PullError>> {
        let (steps, gate) = {
            let mut inner = self.lock();
            let stats = &mut inner.pull_stats;
            stats.started.push(image.to_owned());
            stats.auth.push((image.to_owned(), auth));
            stats.in_flight += 1;
            stats.max_in_flight = stats.max_in_flight.max(stats.in_flight);
            match inner.pulls.get(image) {
                Some(script) => (script.steps.clone(), script.gate.clone()),
                None => (default_pull(), Arc::new(Semaphore::new(0))),
            }
        };
        let pulling = Pulling {
            fake: self.clone(),
            image: image.to_owned(),
            steps: steps.into(),
            gate,
            ended: false,
        };
        futures_util::stream::unfold(pulling, |mut p| async move {
            if p.ended {
                return None;
            }
            loop {
                match p.steps.pop_front() {
                    Some(PullStep::Event(e)) => return Some((Ok(e), p)),
                    Some(PullStep::Wait) => {
                        if let Ok(permit) = p.gate.acquire().await {
                            permit.forget();
                        }
                    }
                    Some(PullStep::Fail(e)) => {
                        p.ended = true;
                        return Some((Err(e), p));
                    }
                    None => {
                        p.ended = true;
                        p.fake.add_image(&p.image);
                        return None;
                    }
                }
            }
        })
        .boxed()
    }

    fn events(&self, _since: Option<i64>) -> BoxStream<'static, Result<RuntimeEvent, RuntimeError>> {
        futures_util::stream::unfold(self.events.subscribe(), |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(event) => return Some((Ok(event), rx)),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
        .boxed()
    }

    fn containers(&self) -> Fut<'_, Vec<ContainerInfo>> {
        async move {
            let inner = self.lock();
            Ok(inner
                .sandboxes
                .iter()
                .map(|(reference, s)| container_info(reference, s))
                .collect())
        }
        .boxed()
    }

    fn container<'a>(&'a self, reference: &'a str) -> Fut<'a, Option<ContainerInfo>> {
        async move {
            let inner = self.lock();
            Ok(inner
                .sandboxes
                .get(reference)
                .map(|s| container_info(reference, s)))
        }
        .boxed()
    }

    fn usage<'a>(&'a self, reference: &'a str) -> Fut<'a, Option<Usage>> {
        async move {
            let inner = self.lock();
            Ok(inner
                .sandboxes
                .get(reference)
                .filter(|s| s.observed == Observed::Running)
                .map(|s| Usage {
                    cpu_percent: 1.5,
                    memory_bytes: 1 << 20,
                    memory_limit_bytes: s.spec.resources.memory.map(|m| m as u64),
                    pids: Some(2),
                    sampled_at: 1,
                }))
        }
        .boxed()
    }

    fn log_stream(
        &self,
        reference: &str,
        query: LogQuery,
    ) -> BoxStream<'static, Result<bytes::Bytes, RuntimeError>> {
        let text = {
            let inner = self.lock();
            inner
                .sandboxes
                .get(reference)
                .and_then(|s| s.logs.clone())
                .or_else(|| inner.logs.clone())
                .unwrap_or_else(|| format!("output of {reference}\n"))
        };
        let lines: Vec<&str> = text.split_inclusive('\n').collect();
        let skip = query.tail.map_or(0, |t| lines.len().saturating_sub(t));
        let text: String = lines[skip..].concat();
        futures_util::stream::iter([Ok(bytes::Bytes::from(text))]).boxed()
    }

    /// A no-op, as on Docker, unless a failure is scripted (another claimer took the member).
    fn claim<'a>(&'a self, _instance: &'a Instance, _sandbox_id: &'a str) -> Fut<'a, ()> {
        async move { self.enter(Op::Claim) }.boxed()
    }

    fn target(&self, instance: &Instance, port: u16) -> Option<Target> {
        let inner = self.lock();
        let s = inner.sandboxes.get(&instance.reference)?;
        // As Docker's: a container created and not started has no published ports.
        if matches!(s.observed, Observed::Exited { .. } | Observed::Gone) || !s.spec.start {
            return None;
        }
        // As Docker's: execd's port itself, other ports through its proxy.
        let prefix = match port {
            EXECD_PORT | HTTP_PORT => format!("/{}", instance.reference),
            other => format!("/{}/proxy/{other}", instance.reference),
        };
        Some(Target {
            dial: Dial::Tcp(self.ping),
            public: Some(self.ping.to_string()),
            prefix,
            execd: port != HTTP_PORT,
        })
    }
}
