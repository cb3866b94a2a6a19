//! A Jupyter kernel spoken to directly over ZeroMQ: no Jupyter Server in between.
//!
//! execd writes a connection file (IPC transport, random HMAC-SHA256 key), starts the kernel
//! from its kernelspec through the reaper, connects DEALER sockets to shell and control, a SUB
//! socket to iopub and a REQ socket to the heartbeat, and signs every message it sends and
//! verifies every message it receives. One task per socket reads and routes messages by their
//! parent `msg_id` to the execution waiting for them. Async throughout.
//!
//! No execution waits on the kernel without an end: the kernel's death (its exit, or a lost
//! heartbeat) ends it as [`Outcome::Died`], a send the kernel does not take within
//! [`SEND_TIMEOUT`] too, and a cell whose `idle` or `execute_reply` never comes ends after a
//! grace period.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use zeromq::{
    DealerSendHalf, DealerSocket, ReqSocket, Socket, SocketRecv, SocketSend, SubSocket, ZmqMessage,
};

use super::spec::{InterruptMode, KernelSpec};
use super::{error_event, interrupted_event, result_event, Interrupts, Outcome};
use crate::agent::env::EnvMap;
use crate::agent::process::{self, Output, Reaper, SpawnSpec};
use crate::agent::stream::{Journal, OutputKind};
use crate::agent::{now_ms, rfc3339};
use crate::wire::{EventType, StreamEvent};

const DELIMITER: &[u8] = b"<IDS|MSG>";
/// How long a kernel may take to start and answer `kernel_info_request`.
const START_TIMEOUT: Duration = Duration::from_secs(60);
const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a send to the kernel may wait for its socket before the kernel counts as dead.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for the `execute_reply` of a cell whose `idle` came: ipykernel sends the
/// reply first, on another socket, so it is late by microseconds unless it never comes.
const REPLY_GRACE: Duration = Duration::from_secs(1);
/// How long iopub may stay quiet after the `execute_reply` before the cell ends without its
/// `idle` (output is flushed before the reply, but travels on iopub, so it may trail it).
const IDLE_GRACE: Duration = Duration::from_secs(5);
/// How long a cell may go on after reporting the KeyboardInterrupt we caused before the
/// interrupt counts as swallowed by IPython and is sent again.
const SWALLOW_GRACE: Duration = Duration::from_secs(1);
/// How often a running cell checks that its kernel is still alive, besides the exit watcher.
const ALIVE_CHECK: Duration = Duration::from_secs(1);

/// Why a kernel could not be started.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// Writing the connection file or creating its directory failed.
    #[error("cannot prepare the connection file: {0}")]
    Prepare(#[source] std::io::Error),
    /// The kernel process could not be spawned.
    #[error(transparent)]
    Spawn(#[from] process::SpawnError),
    /// The kernel exited or never answered during start-up.
    #[error("kernel did not start: {0}")]
    NoAnswer(String),
}

/// A received, verified message.
#[derive(Debug)]
pub struct KernelMessage {
    /// `header.msg_type`.
    pub msg_type: String,
    /// `content`.
    pub content: Value,
    /// Whether it came from iopub (else shell or control).
    pub iopub: bool,
}

/// Executions waiting for messages, by the `msg_id` of their request.
#[derive(Default)]
struct Routes {
    /// Senders by parent msg_id; cleared when the kernel dies so every waiter sees the end.
    waiting: Mutex<HashMap<String, mpsc::UnboundedSender<KernelMessage>>>,
    /// Set once anything arrived on iopub: the subscription is live.
    iopub_live: AtomicBool,
    iopub_notify: Notify,
}

impl Routes {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, mpsc::UnboundedSender<KernelMessage>>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn register(&self, msg_id: &str) -> mpsc::UnboundedReceiver<KernelMessage> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.lock().insert(msg_id.to_owned(), tx);
        rx
    }

    fn dispatch(&self, parent_id: &str, msg: KernelMessage) {
        if msg.iopub && !self.iopub_live.swap(true, Ordering::SeqCst) {
            self.iopub_notify.notify_waiters();
        }
        if let Some(tx) = self.lock().get(parent_id) {
            let _ = tx.send(msg);
        }
    }
}

/// A running kernel and its sockets.
pub struct JupyterKernel {
    pid: i32,
    session: String,
    key: Vec<u8>,
    interrupt_mode: InterruptMode,
    shell: tokio::sync::Mutex<DealerSendHalf>,
    control: tokio::sync::Mutex<DealerSendHalf>,
    routes: Arc<Routes>,
    alive: Arc<AtomicBool>,
    /// Connection file and IPC sockets; removed with the kernel.
    dir: PathBuf,
    /// Socket readers, exit watcher and heartbeat; aborted with the kernel.
    tasks: Vec<JoinHandle<()>>,
}

impl JupyterKernel {
    /// Starts `spec` with environment `env` in `cwd`, using `dir` for its connection file and
    /// sockets, and waits until it answers on shell and publishes on iopub.
    pub async fn start(
        spec: &KernelSpec,
        reaper: &Reaper,
        env: EnvMap,
        cwd: Option<PathBuf>,
        dir: PathBuf,
    ) -> Result<Self, KernelError> {
        std::fs::create_dir_all(&dir).map_err(KernelError::Prepare)?;
        let key = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let base = dir.join("k");
        let connection = json!({
            "transport": "ipc", "ip": base.to_string_lossy(),
            "shell_port": 1, "iopub_port": 2, "stdin_port": 3, "control_port": 4, "hb_port": 5,
            "key": key, "signature_scheme": "hmac-sha256", "kernel_name": spec.name,
        });
        let conn_file = dir.join("connection.json");
        write_private(&conn_file, connection.to_string().as_bytes()).map_err(KernelError::Prepare)?;
        let log = std::fs::File::create(dir.join("kernel.log")).map_err(KernelError::Prepare)?;

        let argv: Vec<String> = spec
            .argv
            .iter()
            .map(|a| a.replace("{connection_file}", &conn_file.to_string_lossy()))
            .collect();
        let mut env = env;
        env.extend(spec.env.clone());
        let child = reaper.spawn(SpawnSpec {
            env: env.into_iter().map(|(k, v)| (k.into(), v.into())).collect(),
            cwd,
            stdout: Output::File(log),
            stderr: None,
            ..SpawnSpec::new(PathBuf::from(&argv[0]), argv.iter().map(Into::into).collect())
        })?;
        let pid = child.pid;
        let alive = Arc::new(AtomicBool::new(true));
        let routes = Arc::new(Routes::default());
        let mut tasks = Vec::new();
        {
            // Death of the process ends every waiting execution.
            let (alive, routes, mut exit) = (Arc::clone(&alive), Arc::clone(&routes), child.exit);
            tasks.push(tokio::spawn(async move {
                let _ = (&mut exit).await;
                alive.store(false, Ordering::SeqCst);
                routes.lock().clear();
            }));
        }
        let kernel = async {
            let endpoint = |port: u8| format!("ipc://{}-{port}", base.to_string_lossy());
            let (shell, shell_rx) = connect_dealer(&endpoint(1), &alive).await?.split();
            let (control, control_rx) = connect_dealer(&endpoint(4), &alive).await?.split();
            let mut iopub = SubSocket::new();
            retry_connect(&mut iopub, &endpoint(2), &alive).await?;
            iopub
                .subscribe("")
                .await
                .map_err(|e| KernelError::NoAnswer(e.to_string()))?;
            let mut hb = ReqSocket::new();
            retry_connect(&mut hb, &endpoint(5), &alive).await?;
            let key_bytes = key.clone().into_bytes();
            tasks.push(tokio::spawn(read_loop(
                shell_rx,
                false,
                key_bytes.clone(),
                Arc::clone(&routes),
            )));
            tasks.push(tokio::spawn(read_loop(
                control_rx,
                false,
                key_bytes.clone(),
                Arc::clone(&routes),
            )));
            tasks.push(tokio::spawn(read_loop(
                iopub,
                true,
                key_bytes.clone(),
                Arc::clone(&routes),
            )));
            tasks.push(tokio::spawn(heartbeat(hb, pid, Arc::clone(&alive))));
            let kernel = JupyterKernel {
                pid,
                session: uuid::Uuid::new_v4().to_string(),
                key: key_bytes,
                interrupt_mode: spec.interrupt_mode,
                shell: tokio::sync::Mutex::new(shell),
                control: tokio::sync::Mutex::new(control),
                routes: Arc::clone(&routes),
                alive: Arc::clone(&alive),
                dir: dir.clone(),
                tasks: std::mem::take(&mut tasks),
            };
            kernel.handshake().await?;
            Ok::<_, KernelError>(kernel)
        };
        match tokio::time::timeout(START_TIMEOUT, kernel).await {
            Ok(Ok(kernel)) => Ok(kernel),
            Ok(Err(e)) => {
                cleanup(pid, &dir, &tasks);
                Err(annotate(e, &dir))
            }
            Err(_) => {
                cleanup(pid, &dir, &tasks);
                Err(annotate(KernelError::NoAnswer("timed out".into()), &dir))
            }
        }
    }

    /// Sends `kernel_info_request` until it is answered and iopub has delivered something,
    /// so that no output of the first execution is published before we listen.
    async fn handshake(&self) -> Result<(), KernelError> {
        loop {
            if !self.alive.load(Ordering::SeqCst) {
                return Err(KernelError::NoAnswer("kernel exited".into()));
            }
            let (msg_id, msg) = self.build("kernel_info_request", json!({}));
            let mut rx = self.routes.register(&msg_id);
            self.shell
                .lock()
                .await
                .send(msg)
                .await
                .map_err(|e| KernelError::NoAnswer(e.to_string()))?;
            let wait = async {
                let mut replied = false;
                while let Some(m) = rx.recv().await {
                    replied |= m.msg_type == "kernel_info_reply";
                    if replied && self.routes.iopub_live.load(Ordering::SeqCst) {
                        return true;
                    }
                }
                false
            };
            let ok = tokio::time::timeout(Duration::from_millis(500), wait)
                .await
                .unwrap_or(false);
            self.routes.lock().remove(&msg_id);
            if ok {
                return Ok(());
            }
        }
    }

    /// Whether the kernel process is alive and answering its heartbeat.
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }

    /// Runs `code`, writing its events to `journal`, and interrupts it once for every request
    /// in `interrupts`.
    pub async fn execute(&self, code: &str, journal: &Journal, interrupts: &Interrupts) -> Outcome {
        let content = json!({
            "code": code, "silent": false, "store_history": true, "user_expressions": {},
            // Every `/code` call is its own request: with stop_on_error, ipykernel aborts the
            // requests that reach it soon after an error (or an interrupt), with no output.
            "allow_stdin": false, "stop_on_error": false,
        });
        let (msg_id, msg) = self.build("execute_request", content);
        let mut rx = self.routes.register(&msg_id);
        let outcome = if self.is_alive() && self.send(&self.shell, msg).await {
            self.follow(&mut rx, journal, interrupts).await
        } else {
            Outcome::Died
        };
        self.routes.lock().remove(&msg_id);
        outcome
    }

    /// Forwards the messages of one `execute_request` to `journal` until the cell is over.
    ///
    /// Issue 19, why interrupts wait for `execute_input`: ipykernel ignores SIGINT (SIG_IGN)
    /// except while it handles a shell message, between `pre_handler_hook` and
    /// `post_handler_hook`; `interrupt_request` on the control channel just makes it SIGINT
    /// itself, so both interrupt modes behave alike. An interrupt sent the moment it was asked
    /// for, before the kernel had picked up the request, was therefore ignored and the cell
    /// ran to its end. `execute_input` is published inside the handler, after the hook, so an
    /// interrupt sent once it arrived always lands while the kernel listens for it.
    ///
    /// Issue 19, why the cell may end without its reply: a KeyboardInterrupt that lands in the
    /// handler outside the user's code (publishing `execute_input`, transforming the cell,
    /// sending the reply) is caught by ipykernel's `dispatch_shell`, which logs it, publishes
    /// `idle` and never sends the `execute_reply`. Waiting for both kept such a stream open for
    /// ever, with only keep-alive comments. Now `idle` ends the cell after [`REPLY_GRACE`], and
    /// a reply without `idle` after [`IDLE_GRACE`] of quiet.
    ///
    /// Issue 19, why an interrupt may be sent twice: IPython runs its `pre_execute` and
    /// `pre_run_cell` callbacks under `except (Exception, KeyboardInterrupt)`, shows the
    /// traceback (an `error` message) and then runs the cell anyway. A KeyboardInterrupt we
    /// caused that is followed by [`SWALLOW_GRACE`] without the cell ending was swallowed
    /// there, so the interrupt is sent again. (User code that catches KeyboardInterrupt itself
    /// publishes no `error`, so its cleanup is not interrupted twice.)
    async fn follow(
        &self,
        rx: &mut mpsc::UnboundedReceiver<KernelMessage>,
        journal: &Journal,
        interrupts: &Interrupts,
    ) -> Outcome {
        let (mut started, mut idle, mut replied, mut failed) = (false, false, false, false);
        // An error the reply reports; forwarded at the end unless iopub reported it.
        let mut reply_error: Option<StreamEvent> = None;
        let mut delivered = 0;
        let mut give_up: Option<tokio::time::Instant> = None;
        let mut swallowed_unless_done_by: Option<tokio::time::Instant> = None;
        let mut alive_check = tokio::time::interval(ALIVE_CHECK);
        while !(idle && replied) {
            let wanted = interrupts.requested();
            if started && wanted > delivered {
                delivered = wanted;
                self.interrupt().await;
            }
            let m = tokio::select! {
                m = rx.recv() => m,
                _ = interrupts.more_than(wanted) => continue,
                _ = sleep_until(give_up) => break,
                _ = sleep_until(swallowed_unless_done_by) => {
                    swallowed_unless_done_by = None;
                    self.interrupt().await;
                    continue;
                }
                _ = alive_check.tick() => {
                    if self.is_alive() {
                        continue;
                    }
                    None
                }
            };
            let Some(m) = m else {
                return Outcome::Died;
            };
            let ts = now_ms();
            match (m.iopub, m.msg_type.as_str()) {
                (true, "execute_input") => started = true,
                (true, "stream") => {
                    started = true;
                    let kind = if m.content["name"] == "stderr" {
                        OutputKind::Stderr
                    } else {
                        OutputKind::Stdout
                    };
                    write_stream(journal, kind, m.content["text"].as_str().unwrap_or_default(), ts);
                }
                (true, "execute_result") => {
                    started = true;
                    journal.push(&StreamEvent {
                        execution_count: m.content["execution_count"].as_i64(),
                        ..StreamEvent::new(EventType::ExecutionCount, ts)
                    });
                    journal.push(&result_event(&m.content["data"], ts));
                }
                (true, "display_data" | "update_display_data") => {
                    started = true;
                    journal.push(&result_event(&m.content["data"], ts));
                }
                (true, "error") => {
                    (started, failed) = (true, true);
                    if delivered > 0 && m.content["ename"] == "KeyboardInterrupt" {
                        swallowed_unless_done_by = Some(tokio::time::Instant::now() + SWALLOW_GRACE);
                    }
                    journal.push(&error_event(&m.content, ts));
                }
                (true, "status") => idle |= m.content["execution_state"] == "idle",
                (false, "execute_reply") => {
                    replied = true;
                    match m.content["status"].as_str() {
                        Some("aborted") if !failed => {
                            failed = true;
                            let aborted = json!({
                                "ename": "ExecutionAborted",
                                "evalue": "the kernel aborted this request without running it",
                                "traceback": [],
                            });
                            journal.push(&error_event(&aborted, ts));
                        }
                        // IPython publishes no `error` when formatting the traceback fails
                        // (it prints a fallback on stdout/stderr instead); a KeyboardInterrupt
                        // landing in user code now and then goes that way. The reply still
                        // names the exception. Its traceback may be a stale one, so it is left
                        // out: the text went to stderr.
                        Some("error") => {
                            let text = |k: &str| m.content[k].as_str().unwrap_or_default().to_owned();
                            reply_error =
                                Some(StreamEvent::error(&text("ename"), text("evalue"), vec![], ts));
                        }
                        _ => {}
                    }
                }
                _ => {}
            }
            let now = tokio::time::Instant::now();
            if idle || replied {
                swallowed_unless_done_by = None;
            }
            give_up = match (idle, replied) {
                (true, false) => Some(give_up.unwrap_or(now + REPLY_GRACE)),
                (false, true) => Some(now + IDLE_GRACE),
                _ => None,
            };
        }
        // iopub delivers the cell's `error` before its `idle`, so by now it has come or never will.
        if let Some(error) = reply_error.filter(|_| !failed) {
            failed = true;
            journal.push(&error);
        }
        if !replied && !failed {
            // The kernel went idle without answering: an interrupt hit its own request
            // handling (see above), or it failed outside the cell.
            failed = true;
            journal.push(&if delivered > 0 {
                interrupted_event("the kernel was interrupted outside the cell's code", now_ms())
            } else {
                StreamEvent::error(
                    "KernelNoReply",
                    "the kernel went idle without answering the execution".into(),
                    vec![],
                    now_ms(),
                )
            });
        }
        Outcome::Finished { failed }
    }

    /// Interrupts the running execution, as the kernelspec asks.
    async fn interrupt(&self) {
        match self.interrupt_mode {
            InterruptMode::Signal => {
                let _ = kill(Pid::from_raw(self.pid), Signal::SIGINT);
            }
            InterruptMode::Message => {
                let (_, msg) = self.build("interrupt_request", json!({}));
                self.send(&self.control, msg).await;
            }
        }
    }

    /// Sends `msg` on `socket`; false if the kernel did not take it within [`SEND_TIMEOUT`].
    async fn send(&self, socket: &tokio::sync::Mutex<DealerSendHalf>, msg: ZmqMessage) -> bool {
        let send = async { socket.lock().await.send(msg).await.is_ok() };
        tokio::time::timeout(SEND_TIMEOUT, send).await.unwrap_or(false)
    }

    /// Builds a signed message; returns its msg_id.
    fn build(&self, msg_type: &str, content: Value) -> (String, ZmqMessage) {
        let msg_id = uuid::Uuid::new_v4().to_string();
        let header = json!({
            "msg_id": msg_id, "session": self.session, "username": "execd",
            "date": rfc3339(std::time::SystemTime::now()), "msg_type": msg_type, "version": "5.3",
        });
        let parts: [Bytes; 4] = [
            Bytes::from(header.to_string()),
            Bytes::from_static(b"{}"),
            Bytes::from_static(b"{}"),
            Bytes::from(content.to_string()),
        ];
        let signature = sign(&self.key, &parts);
        let mut frames = vec![Bytes::from_static(DELIMITER), Bytes::from(signature)];
        frames.extend(parts);
        let msg = ZmqMessage::try_from(frames).expect("non-empty frame list");
        (msg_id, msg)
    }
}

impl Drop for JupyterKernel {
    fn drop(&mut self) {
        cleanup(self.pid, &self.dir, &self.tasks);
    }
}

fn cleanup(pid: i32, dir: &Path, tasks: &[JoinHandle<()>]) {
    process::signal_group(pid, Signal::SIGKILL);
    for t in tasks {
        t.abort();
    }
    let _ = std::fs::remove_dir_all(dir);
}

fn annotate(e: KernelError, dir: &Path) -> KernelError {
    let log = std::fs::read_to_string(dir.join("kernel.log")).unwrap_or_default();
    let tail: String = log
        .lines()
        .rev()
        .take(5)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join(" | ");
    match e {
        KernelError::NoAnswer(m) if !tail.is_empty() => KernelError::NoAnswer(format!("{m}: {tail}")),
        other => other,
    }
}

/// Sleeps until `at`, or for ever if there is no `at`.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Appends kernel output as events of at most 256 KiB each, in separate journal batches, so
/// that a kernel flushing tens of megabytes in one message still spills to disk gradually.
fn write_stream(journal: &Journal, kind: OutputKind, text: &str, ts: i64) {
    const PIECE: usize = 256 << 10;
    let mut rest = text;
    while !rest.is_empty() {
        let mut cut = rest.len().min(PIECE);
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        journal.write(|w| w.output_chunk(kind, &rest.as_bytes()[..cut], ts));
        rest = &rest[cut..];
    }
}

/// Hex HMAC-SHA256 of the four signed parts.
fn sign(key: &[u8], parts: &[Bytes]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    for p in parts {
        mac.update(p);
    }
    hex::encode(mac.finalize().into_bytes())
}

/// Parses a received multipart message, verifying its signature. Returns the parent msg_id
/// and the message, or None for anything malformed or badly signed.
fn parse(frames: &[Bytes], key: &[u8], iopub: bool) -> Option<(String, KernelMessage)> {
    let at = frames.iter().position(|f| f.as_ref() == DELIMITER)?;
    let signature = frames.get(at + 1)?;
    let parts = frames.get(at + 2..at + 6)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(key).ok()?;
    for p in parts {
        mac.update(p);
    }
    // Constant-time comparison of the decoded signature.
    mac.verify_slice(&hex::decode(signature).ok()?).ok()?;
    let header: Value = serde_json::from_slice(&parts[0]).ok()?;
    let parent: Value = serde_json::from_slice(&parts[1]).ok()?;
    let content: Value = serde_json::from_slice(&parts[3]).ok()?;
    let msg = KernelMessage {
        msg_type: header["msg_type"].as_str()?.to_owned(),
        content,
        iopub,
    };
    Some((parent["msg_id"].as_str().unwrap_or_default().to_owned(), msg))
}

async fn read_loop(mut socket: impl SocketRecv, iopub: bool, key: Vec<u8>, routes: Arc<Routes>) {
    while let Ok(msg) = socket.recv().await {
        let frames = msg.into_vec();
        match parse(&frames, &key, iopub) {
            Some((parent, m)) => routes.dispatch(&parent, m),
            None => tracing::warn!(
                frames = frames.len(),
                "dropped an unsigned or malformed kernel message"
            ),
        }
    }
}

/// Pings the heartbeat socket; a kernel that stops echoing is killed (the exit watcher then
/// ends every waiting execution).
async fn heartbeat(mut hb: ReqSocket, pid: i32, alive: Arc<AtomicBool>) {
    loop {
        tokio::time::sleep(HEARTBEAT_EVERY).await;
        let ping = async {
            hb.send(ZmqMessage::from("ping")).await.ok()?;
            hb.recv().await.ok()
        };
        if tokio::time::timeout(HEARTBEAT_TIMEOUT, ping)
            .await
            .ok()
            .flatten()
            .is_none()
        {
            tracing::warn!(pid, "kernel heartbeat lost; killing it");
            alive.store(false, Ordering::SeqCst);
            process::signal_group(pid, Signal::SIGKILL);
            return;
        }
    }
}

async fn connect_dealer(endpoint: &str, alive: &AtomicBool) -> Result<DealerSocket, KernelError> {
    let mut socket = DealerSocket::new();
    retry_connect(&mut socket, endpoint, alive).await?;
    Ok(socket)
}

/// Connects once the kernel has bound the endpoint (zmq.rs fails fast before that).
async fn retry_connect(
    socket: &mut impl Socket,
    endpoint: &str,
    alive: &AtomicBool,
) -> Result<(), KernelError> {
    let path = endpoint.trim_start_matches("ipc://");
    loop {
        if !alive.load(Ordering::SeqCst) {
            return Err(KernelError::NoAnswer("kernel exited during start-up".into()));
        }
        if Path::new(path).exists() && socket.connect(endpoint).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_and_verifies() {
        let key = b"k3y";
        let parts: Vec<Bytes> = [
            r#"{"msg_type":"status","msg_id":"a"}"#,
            r#"{"msg_id":"p1"}"#,
            "{}",
            r#"{"x":1}"#,
        ]
        .into_iter()
        .map(|s: &'static str| Bytes::from_static(s.as_bytes()))
        .collect();
        let sig = sign(key, &parts);
        let mut frames = vec![
            Bytes::from_static(b"topic"),
            Bytes::from_static(DELIMITER),
            Bytes::from(sig),
        ];
        frames.extend(parts.iter().cloned());
        let (parent, msg) = parse(&frames, key, true).expect("valid message");
        assert_eq!(parent, "p1");
        assert_eq!(msg.msg_type, "status");
        assert!(
            parse(&frames, b"other key", true).is_none(),
            "wrong key is rejected"
        );
        frames[5] = Bytes::from_static(br#"{"x":2}"#);
        assert!(
            parse(&frames, key, true).is_none(),
            "tampered content is rejected"
        );
    }

    #[test]
    fn text_plain_is_renamed() {
        let ev = result_event(&json!({"text/plain": "4", "text/html": "<b>4</b>"}), 1);
        let results = ev.results.unwrap();
        assert_eq!(results["text"], "4");
        assert_eq!(results["text/html"], "<b>4</b>");
        assert!(!results.contains_key("text/plain"));
    }
}
