//! The fake runtime's execd for executions (tests only): `/command` with a journal per
//! command that `/command/{id}/events?after=` follows, `/code`, contexts, interrupts, and
//! files in a map. Commands are scripted by their text:
//!
//! - `echo X`: prints X, exits 0; `exit N`: exits N; `lines N`: prints N lines;
//! - `sleep`: runs until interrupted (then exits -1);
//! - `drop`: prints `1`, `2`, `3` in the response, which then breaks off without its
//!   terminal event while the command goes on (`4`, `5`, exit 0) in its journal;
//! - argv `python3 -c RUNNER dir handler …`: a fake interpreter: handler `handler` returns
//!   `{"status":"ok","data":event}` (printing first), `boom` raises `KeyError`; exit 127 when
//!   the sandbox was marked without interpreters.
//!
//! Code: `2+2` gives the result `4`; `raise` fails with `ValueError`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt as _;
use tokio::sync::Notify;

use crate::wire::code::RunCodeRequest;
use crate::wire::{EventType, RunCommandRequest, StreamEvent};

/// What the fake execd holds.
#[derive(Default)]
pub struct FakeExecd {
    commands: HashMap<String, FakeCommand>,
    /// Uploaded files by path.
    pub files: HashMap<String, Vec<u8>>,
    /// Sandbox references whose image has no python3 or node.
    pub no_interpreter: HashSet<String>,
    /// Every command request, in order.
    pub requests: Vec<RunCommandRequest>,
    /// Ids interrupted.
    pub interrupted: Vec<String>,
    /// Paths removed with `DELETE /directories`.
    pub removed: Vec<String>,
    /// Contexts made.
    pub contexts: Vec<String>,
    /// Sandbox references whose execd was killed: every route answers 503.
    pub dead: HashSet<String>,
    next: u64,
}

struct FakeCommand {
    events: Vec<StreamEvent>,
    changed: Arc<Notify>,
    /// The response stream stops after this many events (the `drop` script).
    cut_at: Option<usize>,
    /// Its execd was killed: every stream of it stops.
    killed: bool,
}

type Shared = Arc<Mutex<FakeExecd>>;

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, FakeExecd> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

/// The routes, under `/{reference}` (`POST /command` and `POST /files/upload` are the fake
/// runtime's, which hand executions' commands to [`command`] and uploads to [`record_upload`]).
pub fn router(state: Shared) -> axum::Router {
    axum::Router::new()
        .route("/{reference}/command/{id}/events", axum::routing::get(follow))
        .route("/{reference}/code", axum::routing::post(code).delete(interrupt))
        .route("/{reference}/code/context", axum::routing::post(context))
        .route(
            "/{reference}/code/contexts/{id}",
            axum::routing::delete(delete_context),
        )
        .route("/{reference}/files/download", axum::routing::get(download))
        .route("/{reference}/directories", axum::routing::delete(remove))
        .with_state(state)
}

fn text(kind: EventType, text: &str) -> StreamEvent {
    StreamEvent {
        text: Some(text.to_owned()),
        ..StreamEvent::new(kind, 1)
    }
}

fn exit(code: &str) -> StreamEvent {
    StreamEvent::error(
        "CommandExecError",
        code.to_owned(),
        vec![format!("exit status {code}")],
        1,
    )
}

impl FakeExecd {
    fn begin(&mut self, id: &str, events: Vec<StreamEvent>, cut_at: Option<usize>) {
        let mut all = vec![StreamEvent::init(id, 1)];
        all.extend(events);
        self.commands.insert(
            id.to_owned(),
            FakeCommand {
                events: all,
                changed: Arc::new(Notify::new()),
                cut_at,
                killed: false,
            },
        );
    }

    fn push(&mut self, id: &str, event: StreamEvent) {
        if let Some(c) = self.commands.get_mut(id) {
            if c.events.last().is_some_and(StreamEvent::is_terminal) {
                return;
            }
            c.events.push(event);
            c.changed.notify_waiters();
        }
    }

    /// Runs the fake interpreter for a handler's argv.
    fn handler(&mut self, reference: &str, argv: &[String]) -> Vec<StreamEvent> {
        if self.no_interpreter.contains(reference) {
            return vec![StreamEvent::error(
                "CommandExecError",
                "127".into(),
                vec!["No such file or directory".into()],
                1,
            )];
        }
        let (dir, handler) = (&argv[3], &argv[4]);
        let event: serde_json::Value = self
            .files
            .get(&format!("{dir}/event.json"))
            .and_then(|b| serde_json::from_slice(b).ok())
            .unwrap_or_default();
        let result = match handler.as_str() {
            "handler" => serde_json::json!({"ok": true, "result": {"status": "ok", "data": event}}),
            _ => serde_json::json!({"ok": false, "error": {"kind": "handler_error", "name": "KeyError",
                "value": "'x'", "traceback": ["Traceback (most recent call last):", "KeyError: 'x'"]}}),
        };
        self.files
            .insert(format!("{dir}/result.json"), result.to_string().into_bytes());
        vec![
            text(EventType::Stdout, "{\"ok\": false}"),
            StreamEvent::complete(1, 1),
        ]
    }
}

/// SSE of command `id`'s events after `after`, until its terminal event (or its cut).
fn sse(state: Shared, id: String, after: usize, respect_cut: bool) -> Response {
    let stream = futures_util::stream::unfold(
        (state, id, after, false),
        move |(state, id, shown, over)| async move {
            if over {
                return None;
            }
            loop {
                let (next, changed) = {
                    let execd = lock(&state);
                    let c = execd.commands.get(&id)?;
                    if c.killed || (respect_cut && c.cut_at.is_some_and(|cut| shown >= cut)) {
                        return None;
                    }
                    (c.events.get(shown).cloned(), c.changed.clone())
                };
                match next {
                    Some(event) => {
                        let terminal = event.is_terminal();
                        let block = format!(
                            "id: {}\ndata: {}\n\n",
                            shown + 1,
                            serde_json::to_string(&event).unwrap_or_default()
                        );
                        return Some((
                            Ok::<_, std::convert::Infallible>(block),
                            (state, id, shown + 1, terminal),
                        ));
                    }
                    None => {
                        let notified = changed.notified();
                        // Re-check after registering, so that a push in between is not missed.
                        let again = lock(&state)
                            .commands
                            .get(&id)
                            .is_some_and(|c| c.events.len() > shown);
                        if !again {
                            notified.await;
                        }
                    }
                }
            }
        },
    );
    (
        [(axum::http::header::CONTENT_TYPE, "text/event-stream")],
        Body::from_stream(stream.boxed()),
    )
        .into_response()
}

/// Whether `req` is an execution's command (shell text, or a handler's interpreter), not a
/// readiness probe's argv.
pub fn is_execution(req: &RunCommandRequest) -> bool {
    req.command.is_some()
        || req
            .argv
            .as_ref()
            .and_then(|a| a.first())
            .is_some_and(|p| p == "python3" || p == "node")
}

/// `POST /command` of an execution.
pub fn command(state: Shared, reference: String, req: RunCommandRequest) -> Response {
    let (id, cut) = {
        let mut execd = lock(&state);
        execd.requests.push(req.clone());
        execd.next += 1;
        let id = format!("cmd-{}", execd.next);
        let mut cut = None;
        let events = match (&req.command, &req.argv) {
            (_, Some(argv)) if argv.first().is_some_and(|p| p == "python3" || p == "node") => {
                execd.handler(&reference, argv)
            }
            (Some(c), _) if c.starts_with("echo ") => {
                vec![text(EventType::Stdout, &c[5..]), StreamEvent::complete(1, 1)]
            }
            (Some(c), _) if c.starts_with("exit ") => vec![exit(c[5..].trim())],
            (Some(c), _) if c.starts_with("lines ") => {
                let n: usize = c[6..].trim().parse().unwrap_or(0);
                let mut events: Vec<_> = (0..n)
                    .map(|i| text(EventType::Stdout, &format!("line {i}")))
                    .collect();
                events.push(StreamEvent::complete(1, 1));
                events
            }
            (Some(c), _) if c == "sleep" => Vec::new(),
            (Some(c), _) if c == "drop" => {
                cut = Some(4);
                ["1", "2", "3", "4", "5"]
                    .iter()
                    .map(|t| text(EventType::Stdout, t))
                    .chain([StreamEvent::complete(1, 1)])
                    .collect()
            }
            _ => vec![exit("2")],
        };
        execd.begin(&id, events, cut);
        (id, cut)
    };
    sse(state, id, 0, cut.is_some())
}

#[derive(serde::Deserialize)]
struct After {
    after: Option<usize>,
}

async fn follow(
    State(state): State<Shared>,
    Path((reference, id)): Path<(String, String)>,
    Query(q): Query<After>,
) -> Response {
    if lock(&state).dead.contains(&reference) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    if !lock(&state).commands.contains_key(&id) {
        return StatusCode::NOT_FOUND.into_response();
    }
    sse(state, id, q.after.unwrap_or(0), false)
}

async fn code(
    State(state): State<Shared>,
    Path(_reference): Path<String>,
    axum::Json(req): axum::Json<RunCodeRequest>,
) -> Response {
    let id = {
        let mut execd = lock(&state);
        execd.next += 1;
        let context = req
            .context
            .and_then(|c| c.id)
            .unwrap_or_else(|| "default-python".into());
        let events = match req.code.as_str() {
            "raise" => vec![StreamEvent::error(
                "ValueError",
                "bad".into(),
                vec!["Traceback".into(), "ValueError: bad".into()],
                1,
            )],
            "sleep" => Vec::new(),
            other => {
                let mut results = serde_json::Map::new();
                let value = if other == "2+2" { "4" } else { "None" };
                results.insert("text".into(), serde_json::Value::String(value.into()));
                vec![
                    StreamEvent {
                        results: Some(results),
                        ..StreamEvent::new(EventType::Result, 1)
                    },
                    StreamEvent::complete(1, 1),
                ]
            }
        };
        // Code runs are keyed by their context here; the id only names the journal.
        let run = format!("{context}#{}", execd.next);
        execd.begin(&run, events, None);
        if let Some(c) = execd.commands.get_mut(&run) {
            c.events[0] = StreamEvent::init(&context, 1);
        }
        run
    };
    sse(state, id, 0, false)
}

#[derive(serde::Deserialize)]
struct IdQuery {
    id: String,
}

async fn interrupt(State(state): State<Shared>, Query(q): Query<IdQuery>) -> StatusCode {
    let mut execd = lock(&state);
    execd.interrupted.push(q.id.clone());
    let ids: Vec<String> = execd
        .commands
        .keys()
        .filter(|k| **k == q.id || k.starts_with(&format!("{}#", q.id)))
        .cloned()
        .collect();
    for id in ids {
        execd.push(&id, exit("-1"));
    }
    StatusCode::OK
}

async fn context(State(state): State<Shared>) -> Response {
    let mut execd = lock(&state);
    execd.next += 1;
    let id = format!("ctx-{}", execd.next);
    execd.contexts.push(id.clone());
    axum::Json(serde_json::json!({"id": id, "language": "python"})).into_response()
}

async fn delete_context() -> StatusCode {
    StatusCode::NO_CONTENT
}

/// Keeps the files of a multipart `/files/upload` body by the paths its metadata parts name.
pub fn record_upload(state: &Shared, content_type: &str, body: &[u8]) {
    let Some(boundary) = content_type.split("boundary=").nth(1) else {
        return;
    };
    let delimiter = format!("--{}", boundary.trim_matches('"'));
    let text = body;
    let mut parts = Vec::new();
    let mut rest = text;
    while let Some(at) = memchr::memmem::find(rest, delimiter.as_bytes()) {
        parts.push(&rest[..at]);
        rest = &rest[at + delimiter.len()..];
    }
    let mut path = None;
    for part in parts.into_iter().skip(1) {
        let Some(split) = memchr::memmem::find(part, b"\r\n\r\n") else {
            continue;
        };
        let (head, content) = (&part[..split], &part[split + 4..]);
        let content = content.strip_suffix(b"\r\n").unwrap_or(content);
        let head = String::from_utf8_lossy(head);
        if head.contains("name=\"metadata\"") {
            path = serde_json::from_slice::<serde_json::Value>(content)
                .ok()
                .and_then(|v| v["path"].as_str().map(str::to_owned));
        } else if head.contains("name=\"file\"") {
            if let Some(p) = path.take() {
                lock(state).files.insert(p, content.to_vec());
            }
        }
    }
}

#[derive(serde::Deserialize)]
struct PathQuery {
    path: String,
}

async fn download(State(state): State<Shared>, Query(q): Query<PathQuery>) -> Response {
    match lock(&state).files.get(&q.path) {
        Some(bytes) => bytes.clone().into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn remove(State(state): State<Shared>, Query(q): Query<PathQuery>) -> StatusCode {
    let mut execd = lock(&state);
    execd.removed.push(q.path.clone());
    let prefix = format!("{}/", q.path);
    execd.files.retain(|p, _| !p.starts_with(&prefix));
    StatusCode::OK
}

/// Kills the execd of sandbox `reference`: its streams break off without a terminal event
/// and its routes answer 503 from now on.
pub fn kill(state: &Shared, reference: &str) {
    let mut execd = lock(state);
    execd.dead.insert(reference.to_owned());
    for c in execd.commands.values_mut() {
        c.killed = true;
        c.changed.notify_waiters();
    }
}
