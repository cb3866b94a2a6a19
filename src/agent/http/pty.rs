//! `/pty` routes: create, inspect and delete terminal sessions, and the WebSocket that
//! attaches to one. The WebSocket side speaks the contract's framing: an optional replay frame
//! (`0x03` + 8-byte big-endian offset + bytes), a `connected` frame, then `0x01`/`0x02` output
//! frames and JSON control frames, ending with `exit` and close 1000.
//!
//! Refusals (unknown session, already held, bad query) are plain HTTP answers before the
//! upgrade. A connection is one task: an output half (session events, pings, replies) and an
//! input half (client frames) raced in a `select!`, so when either ends both are gone.

use std::borrow::Cow;
use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::sync::mpsc;

use super::error::ApiError;
use super::extract::{ApiQuery, OptionalJson};
use super::Routes;
use crate::agent::pty::ring::Stream;
use crate::agent::pty::{Attachment, Control, PtyError, PtyEvent, Role, Size};
use crate::agent::AppState;
use crate::wire::pty::{
    CreatePtyRequest, CreatePtyResponse, PtyClientFrame, PtyErrorCode, PtyMode, PtyServerFrame,
    PtyStatusResponse, CLOSE_TAKEN_OVER, FRAME_REPLAY, FRAME_STDERR, FRAME_STDIN, FRAME_STDOUT,
    TAKEN_OVER_REASON,
};
use crate::wire::ErrorBody;

/// How often the server pings an idle client.
const PING_EVERY: Duration = Duration::from_secs(30);
/// A client silent for this long (no frame, no pong) is gone.
const READ_DEADLINE: Duration = Duration::from_secs(60);
/// A client that cannot take a frame for this long is gone.
const WRITE_DEADLINE: Duration = Duration::from_secs(10);
/// Largest client message accepted (stdin pastes included).
const MAX_CLIENT_MESSAGE: usize = 4 << 20;

pub(super) fn routes() -> Routes {
    Routes::new()
        .route("/pty", post(create_pty))
        .route("/pty/{id}", get(pty_status).delete(delete_pty))
        .route("/pty/{id}/ws", get(connect_pty))
}

/// Creates a terminal session; its process starts with the first WebSocket connection.
#[utoipa::path(post, path = "/pty", request_body(content = Option<CreatePtyRequest>, description = "optional; an empty body is allowed"),
    responses((status = 201, body = CreatePtyResponse), (status = 400, body = ErrorBody)))]
pub(crate) async fn create_pty(
    State(state): State<AppState>,
    OptionalJson(req): OptionalJson<CreatePtyRequest>,
) -> Result<(StatusCode, Json<CreatePtyResponse>), ApiError> {
    let ptys = state.ptys.clone();
    let session_id = tokio::task::spawn_blocking(move || ptys.create(req))
        .await
        .map_err(|e| ApiError::runtime(e.to_string()))??;
    Ok((StatusCode::CREATED, Json(CreatePtyResponse { session_id })))
}

/// Whether a terminal session's process runs, and its output offset.
#[utoipa::path(get, path = "/pty/{id}", params(("id" = String, Path)),
    responses((status = 200, body = PtyStatusResponse), (status = 404, body = ErrorBody)))]
pub(crate) async fn pty_status(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<PtyStatusResponse>, ApiError> {
    Ok(Json(state.ptys.status(&id)?))
}

/// Deletes a terminal session: SIGKILL to all its processes; connections get the exit.
#[utoipa::path(delete, path = "/pty/{id}", params(("id" = String, Path)),
    responses((status = 200, description = "deleted"), (status = 404, body = ErrorBody)))]
pub(crate) async fn delete_pty(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let ptys = state.ptys.clone();
    tokio::task::spawn_blocking(move || ptys.delete(&id))
        .await
        .map_err(|e| ApiError::runtime(e.to_string()))??;
    Ok(StatusCode::OK)
}

/// Query of the WebSocket route, as received.
#[derive(Deserialize)]
pub(crate) struct ConnectQuery {
    pty: Option<String>,
    since: Option<String>,
    takeover: Option<String>,
    observe: Option<String>,
}

/// The connection's options, validated.
struct ConnectOptions {
    mode: PtyMode,
    since: Option<u64>,
    role: Role,
}

impl ConnectQuery {
    fn validate(self) -> Result<ConnectOptions, ApiError> {
        let mode = match flag("pty", self.pty.as_deref())? {
            Some(false) => PtyMode::Pipe,
            Some(true) | None => PtyMode::Pty,
        };
        let since = match self.since.as_deref().filter(|s| !s.is_empty()) {
            None => None,
            Some(s) => Some(
                s.parse::<u64>()
                    .map_err(|_| ApiError::bad_request(format!("since must be a byte offset, got {s:?}")))?,
            ),
        };
        let takeover = flag("takeover", self.takeover.as_deref())?.unwrap_or(false);
        let observe = flag("observe", self.observe.as_deref())?.unwrap_or(false);
        let role = match (observe, takeover) {
            (true, true) => return Err(ApiError::bad_request("observe and takeover exclude each other")),
            (true, false) => Role::Observer,
            (false, takeover) => Role::Holder { takeover },
        };
        Ok(ConnectOptions { mode, since, role })
    }
}

fn flag(name: &str, value: Option<&str>) -> Result<Option<bool>, ApiError> {
    match value {
        None | Some("") => Ok(None),
        Some("1" | "true") => Ok(Some(true)),
        Some("0" | "false") => Ok(Some(false)),
        Some(other) => Err(ApiError::bad_request(format!(
            "{name} must be 0 or 1, got {other:?}"
        ))),
    }
}

/// Attaches to a terminal session over WebSocket (`pty=0` for pipe mode when this connection
/// starts the process, `since` to resume at an output offset, `takeover=1` to evict the
/// current holder, `observe=1` to watch read-only).
#[utoipa::path(get, path = "/pty/{id}/ws", params(("id" = String, Path),
        ("pty" = Option<String>, Query, description = "0: pipe mode (stdout and stderr apart), when this connection starts the process"),
        ("since" = Option<u64>, Query, description = "replay retained output from this absolute offset (default: all retained)"),
        ("takeover" = Option<String>, Query, description = "1: close the current holder with 4001 TAKEN_OVER"),
        ("observe" = Option<String>, Query, description = "1: read-only observer beside the holder")),
    responses((status = 101, description = "WebSocket"), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, description = "ALREADY_CONNECTED", body = ErrorBody)))]
pub(crate) async fn connect_pty(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<ConnectQuery>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let options = query.validate()?;
    // Refusals come before the upgrade; a claim that is never attached frees itself.
    let claim = state.ptys.claim(&id, options.role)?;
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(rejection) => return Ok(rejection.into_response()),
    };
    let (since, mode) = (options.since, options.mode);
    Ok(upgrade
        .max_message_size(MAX_CLIENT_MESSAGE)
        .on_upgrade(move |socket| async move {
            // Attaching may fork the process: off the async workers.
            let attached = tokio::task::spawn_blocking(move || claim.attach(since, mode)).await;
            match attached {
                Ok(Ok(attachment)) => serve_connection(socket, attachment).await,
                Ok(Err(e)) => refuse(socket, &e).await,
                Err(e) => {
                    tracing::error!(error = %e, "pty attach panicked");
                    refuse_with(socket, PtyErrorCode::RuntimeError, "attach failed".into()).await
                }
            }
        }))
}

type Sink = SplitSink<WebSocket, Message>;

/// Tells the client why attaching failed, then closes with 1011.
async fn refuse(socket: WebSocket, error: &PtyError) {
    tracing::warn!(error = %error, "pty attach failed");
    let (code, text) = error_parts(error);
    refuse_with(socket, code, text).await
}

async fn refuse_with(mut socket: WebSocket, code: PtyErrorCode, error: String) {
    let frame = json(&PtyServerFrame::Error { error, code });
    let close = Message::Close(Some(CloseFrame {
        code: 1011,
        reason: Utf8Bytes::from_static("attach failed"),
    }));
    for msg in [frame, close] {
        if !matches!(
            tokio::time::timeout(WRITE_DEADLINE, socket.send(msg)).await,
            Ok(Ok(()))
        ) {
            return;
        }
    }
}

/// One attached connection, until the process exits, the client leaves or is taken over.
async fn serve_connection(socket: WebSocket, mut attachment: Attachment) {
    let (mut sink, stream) = socket.split();
    if let Some((offset, bytes)) = attachment.replay.take() {
        let mut frame = Vec::with_capacity(9 + bytes.len());
        frame.push(FRAME_REPLAY);
        frame.extend_from_slice(&offset.to_be_bytes());
        frame.extend_from_slice(&bytes);
        if send(&mut sink, Message::Binary(frame.into())).await.is_err() {
            return;
        }
    }
    let connected = PtyServerFrame::Connected {
        session_id: attachment.session_id().to_owned(),
        mode: attachment.mode,
    };
    if send(&mut sink, json(&connected)).await.is_err() {
        return;
    }
    let control = attachment.control();
    // Replies of the input half (pong, error frames) go out through the output half.
    let (replies_tx, replies_rx) = mpsc::channel(16);
    tokio::select! {
        () = forward_output(&mut sink, &mut attachment, replies_rx) => {}
        () = handle_input(stream, &control, replies_tx) => {}
    }
}

/// Session events, pings and replies to the client.
async fn forward_output(sink: &mut Sink, attachment: &mut Attachment, mut replies: mpsc::Receiver<Message>) {
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
    loop {
        let msg = tokio::select! {
            event = attachment.next() => match event {
                PtyEvent::Output(chunk) => {
                    let tag = match chunk.stream {
                        Stream::Stdout => FRAME_STDOUT,
                        Stream::Stderr => FRAME_STDERR,
                    };
                    let mut frame = Vec::with_capacity(1 + chunk.bytes.len());
                    frame.push(tag);
                    frame.extend_from_slice(&chunk.bytes);
                    Message::Binary(frame.into())
                }
                PtyEvent::Resumed(chunk) => {
                    // Fell behind by more than the ring: say where the output resumes.
                    let mut frame = Vec::with_capacity(9 + chunk.bytes.len());
                    frame.push(FRAME_REPLAY);
                    frame.extend_from_slice(&chunk.start.to_be_bytes());
                    frame.extend_from_slice(&chunk.bytes);
                    Message::Binary(frame.into())
                }
                PtyEvent::Exited(exit_code) => {
                    if send(sink, json(&PtyServerFrame::Exit { exit_code })).await.is_ok() {
                        let _ = send(sink, close(1000, "process exited")).await;
                    }
                    return;
                }
                PtyEvent::TakenOver => {
                    let _ = send(sink, close(CLOSE_TAKEN_OVER, TAKEN_OVER_REASON)).await;
                    return;
                }
                PtyEvent::Deleted => {
                    let _ = send(sink, close(1000, "session deleted")).await;
                    return;
                }
            },
            _ = ping.tick() => Message::Ping(Default::default()),
            Some(reply) = replies.recv() => reply,
        };
        if send(sink, msg).await.is_err() {
            return;
        }
    }
}

/// Client frames: stdin, resize, signal, ping. Bad frames get an error frame and are
/// otherwise ignored.
async fn handle_input(mut stream: SplitStream<WebSocket>, control: &Control, replies: mpsc::Sender<Message>) {
    loop {
        let msg = match tokio::time::timeout(READ_DEADLINE, stream.next()).await {
            Ok(Some(Ok(msg))) => msg,
            Err(_) => {
                tracing::debug!("pty client missed the read deadline");
                return;
            }
            Ok(None | Some(Err(_))) => return,
        };
        let outcome = match client_input(&msg) {
            ClientInput::Stdin(data) if data.is_empty() => Ok(()),
            ClientInput::Stdin(data) => control.write(&data).await.map_err(|e| stdin_error(&e)),
            ClientInput::Resize(size) => control.resize(size).map_err(|e| error_frame(&e)),
            ClientInput::Signal(signal) => control.signal(&signal).map_err(|e| error_frame(&e)),
            ClientInput::Ping => Err(json(&PtyServerFrame::Pong)),
            ClientInput::Invalid(error) => Err(invalid_frame(error)),
            ClientInput::Nothing => Ok(()),
            ClientInput::Close => return,
        };
        if let Err(reply) = outcome {
            if replies.send(reply).await.is_err() {
                return;
            }
        }
    }
}

/// What one client message asks of the session: the WebSocket framing decoded, nothing done.
#[derive(Debug, PartialEq)]
pub enum ClientInput<'a> {
    /// Bytes for the process's stdin (a `0x00` binary frame or a `stdin` text frame).
    Stdin(Cow<'a, [u8]>),
    /// A `resize` frame.
    Resize(Size),
    /// A `signal` frame, the name as sent.
    Signal(String),
    /// A `ping` frame: answered with `pong`.
    Ping,
    /// A frame outside the protocol; the reason goes back in an error frame.
    Invalid(String),
    /// A WebSocket ping or pong: nothing to do.
    Nothing,
    /// The client closes.
    Close,
}

/// Decodes a client message: binary frames lead with [`FRAME_STDIN`], text frames are
/// [`PtyClientFrame`] JSON.
pub fn client_input(msg: &Message) -> ClientInput<'_> {
    match msg {
        Message::Binary(bytes) => match bytes.split_first() {
            Some((&FRAME_STDIN, data)) => ClientInput::Stdin(Cow::Borrowed(data)),
            _ => ClientInput::Invalid("binary frames must start with 0x00 (stdin)".into()),
        },
        Message::Text(text) => match serde_json::from_str::<PtyClientFrame>(text.as_str()) {
            Err(e) => ClientInput::Invalid(format!("invalid frame: {e}")),
            Ok(PtyClientFrame::Stdin { data }) => ClientInput::Stdin(Cow::Owned(data.into_bytes())),
            Ok(PtyClientFrame::Resize { cols, rows }) => ClientInput::Resize(Size { cols, rows }),
            Ok(PtyClientFrame::Signal { signal }) => ClientInput::Signal(signal),
            Ok(PtyClientFrame::Ping) => ClientInput::Ping,
        },
        Message::Close(_) => ClientInput::Close,
        Message::Ping(_) | Message::Pong(_) => ClientInput::Nothing,
    }
}

async fn send(sink: &mut Sink, msg: Message) -> Result<(), ()> {
    match tokio::time::timeout(WRITE_DEADLINE, sink.send(msg)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) | Err(_) => Err(()),
    }
}

fn json(frame: &PtyServerFrame) -> Message {
    // Serializing these plain enums cannot fail; fall back to an empty object regardless.
    let text = serde_json::to_string(frame).unwrap_or_else(|_| "{}".to_owned());
    Message::Text(text.into())
}

fn close(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    }))
}

fn invalid_frame(error: String) -> Message {
    json(&PtyServerFrame::Error {
        error,
        code: PtyErrorCode::InvalidFrame,
    })
}

/// A failed stdin write: its own code, unless an observer tried it.
fn stdin_error(e: &PtyError) -> Message {
    match e {
        PtyError::ReadOnly => error_frame(e),
        _ => json(&PtyServerFrame::Error {
            error: e.to_string(),
            code: PtyErrorCode::StdinWriteFailed,
        }),
    }
}

fn error_frame(e: &PtyError) -> Message {
    let (code, error) = error_parts(e);
    json(&PtyServerFrame::Error { error, code })
}

fn error_parts(e: &PtyError) -> (PtyErrorCode, String) {
    let code = match e {
        PtyError::Start(_) => PtyErrorCode::StartFailed,
        PtyError::StdinWrite(_) => PtyErrorCode::StdinWriteFailed,
        PtyError::AlreadyConnected(_) => PtyErrorCode::AlreadyConnected,
        PtyError::ReadOnly => PtyErrorCode::ReadOnly,
        PtyError::Size | PtyError::NotATerminal | PtyError::UnknownSignal(_) => PtyErrorCode::InvalidFrame,
        PtyError::NotFound(_)
        | PtyError::Cwd { .. }
        | PtyError::CreateCwd { .. }
        | PtyError::NotRunning
        | PtyError::Resize(_) => PtyErrorCode::RuntimeError,
    };
    (code, e.to_string())
}
