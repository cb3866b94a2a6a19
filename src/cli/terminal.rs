//! `exec -it`: an interactive terminal over execd's PTY WebSocket (`POST /pty`, then
//! `GET /pty/{id}/ws`; framing in `crate::wire::pty`). The local terminal goes into raw mode
//! (so Ctrl-C, Ctrl-D and every key reach the remote shell, whose own terminal turns them
//! into signals), its size follows SIGWINCH, and it is restored on every way out, unwinding
//! included. The exit code is the remote process's.
//!
//! Async, except stdin: a plain thread reads it (a blocking read that the runtime does not
//! wait for at exit).

use std::io::{IsTerminal, Read};

use futures_util::{SinkExt, StreamExt};
use nix::sys::termios::{self, SetArg, Termios};
use reqwest::Method;
use tokio::io::AsyncWriteExt;
use tokio::signal::unix::{signal, SignalKind};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use super::client::{json, send, Execd};
use super::error::CliError;
use crate::wire::pty::{
    CreatePtyRequest, CreatePtyResponse, PtyClientFrame, PtyServerFrame, FRAME_REPLAY, FRAME_STDERR,
    FRAME_STDIN, FRAME_STDOUT,
};

/// Opens a terminal running `command` (shell text; empty: execd's interactive shell) and
/// relays it until the process exits.
pub async fn run(execd: &Execd, command: &[String], cwd: Option<&str>) -> Result<u8, CliError> {
    let tty = std::io::stdin().is_terminal();
    let size = if tty { window_size() } else { None };
    let request = CreatePtyRequest {
        cwd: cwd.map(str::to_owned),
        command: (!command.is_empty()).then(|| command.join(" ")),
        cols: size.map(|(cols, _)| cols),
        rows: size.map(|(_, rows)| rows),
    };
    let created: CreatePtyResponse =
        json(send(execd.request(Method::POST, "/pty").json(&request)).await?).await?;
    let session = created.session_id;
    let url = format!("{}/pty/{session}/ws", execd.base).replacen("http://", "ws://", 1);
    let mut ws_request = url
        .as_str()
        .into_client_request()
        .map_err(|e| websocket_error(&url, e))?;
    ws_request.headers_mut().extend(execd.headers.clone());
    let (socket, _) = tokio_tungstenite::connect_async(ws_request)
        .await
        .map_err(|e| websocket_error(&url, e))?;

    let raw = if tty { Some(RawMode::enable()?) } else { None };
    let outcome = relay(socket, &url).await;
    drop(raw);
    // The process has exited (or the connection is gone): the session is of no more use.
    let _ = send(execd.request(Method::DELETE, &format!("/pty/{session}"))).await;
    match outcome? {
        Some(code) => Ok(code),
        None => Err(CliError::Usage(
            "the terminal connection closed before the process exited".into(),
        )),
    }
}

/// Relays stdin, window sizes and output until the server closes; the process's exit code
/// when it said one.
async fn relay(
    socket: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    url: &str,
) -> Result<Option<u8>, CliError> {
    let (mut sink, mut stream) = socket.split();
    let mut input = spawn_stdin_reader();
    let mut winch =
        signal(SignalKind::window_change()).map_err(|e| CliError::io("cannot watch SIGWINCH", e))?;
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    let mut exit = None;
    let mut stdin_open = true;
    loop {
        tokio::select! {
            bytes = input.recv(), if stdin_open => match bytes {
                Some(bytes) => {
                    let mut frame = Vec::with_capacity(bytes.len() + 1);
                    frame.push(FRAME_STDIN);
                    frame.extend_from_slice(&bytes);
                    sink.send(Message::Binary(frame.into())).await.map_err(|e| websocket_error(url, e))?;
                }
                // Not a terminal and at its end: nothing more to send; the output goes on.
                None => stdin_open = false,
            },
            _ = winch.recv() => {
                if let Some((cols, rows)) = window_size() {
                    let frame = serde_json::to_string(&PtyClientFrame::Resize { cols, rows })
                        .unwrap_or_default();
                    sink.send(Message::Text(frame.into())).await.map_err(|e| websocket_error(url, e))?;
                }
            }
            message = stream.next() => {
                let Some(message) = message else { return Ok(exit) };
                match message.map_err(|e| websocket_error(url, e))? {
                    Message::Binary(bytes) => {
                        let (out, payload) = match bytes.split_first() {
                            Some((&FRAME_STDOUT, rest)) => (true, rest),
                            Some((&FRAME_STDERR, rest)) => (false, rest),
                            // Replay: an 8-byte offset, then output from before this connection.
                            Some((&FRAME_REPLAY, rest)) if rest.len() >= 8 => (true, &rest[8..]),
                            _ => continue,
                        };
                        let written = if out {
                            stdout.write_all(payload).await.and(stdout.flush().await)
                        } else {
                            stderr.write_all(payload).await.and(stderr.flush().await)
                        };
                        written.map_err(|e| CliError::io("writing the terminal's output", e))?;
                    }
                    Message::Text(text) => match serde_json::from_str::<PtyServerFrame>(text.as_str()) {
                        Ok(PtyServerFrame::Exit { exit_code }) => {
                            exit = Some(u8::try_from(exit_code).unwrap_or(255));
                        }
                        Ok(PtyServerFrame::Error { error, code }) => {
                            let line = format!("\r\nsandboxd: terminal: {error} ({code:?})\r\n");
                            let _ = stderr.write_all(line.as_bytes()).await;
                        }
                        _ => {}
                    },
                    Message::Close(_) => return Ok(exit),
                    _ => {}
                }
            }
        }
    }
}

/// Reads stdin on a thread of its own into a channel; the channel closes at end of input.
fn spawn_stdin_reader() -> tokio::sync::mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let spawned = std::thread::Builder::new().name("stdin".into()).spawn(move || {
        let mut buf = [0u8; 4096];
        let mut stdin = std::io::stdin();
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx.blocking_send(buf[..n].to_vec()).is_err() {
                        return;
                    }
                }
            }
        }
    });
    // Without the thread, input is simply closed: output still flows.
    drop(spawned);
    rx
}

/// The local terminal in raw mode until dropped, then as it was.
struct RawMode {
    saved: Termios,
}

impl RawMode {
    fn enable() -> Result<Self, CliError> {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(&stdin)
            .map_err(|e| CliError::io("cannot read the terminal's mode", e.into()))?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(&stdin, SetArg::TCSANOW, &raw)
            .map_err(|e| CliError::io("cannot put the terminal in raw mode", e.into()))?;
        Ok(Self { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin(), SetArg::TCSADRAIN, &self.saved);
    }
}

/// The size of the terminal on stdin, `(cols, rows)`.
fn window_size() -> Option<(u16, u16)> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` into `ws`, which outlives the call; fd 0 is only
    // read from.
    let rc = unsafe { libc::ioctl(0, libc::TIOCGWINSZ, &mut ws) };
    (rc == 0 && ws.ws_col > 0 && ws.ws_row > 0).then_some((ws.ws_col, ws.ws_row))
}

/// A WebSocket failure; a refusal before the upgrade carries the server's `{code, message}`.
fn websocket_error(url: &str, e: tokio_tungstenite::tungstenite::Error) -> CliError {
    use tokio_tungstenite::tungstenite::Error;
    if let Error::Http(response) = &e {
        #[derive(serde::Deserialize)]
        struct Body {
            code: String,
            message: String,
        }
        if let Some(Ok(Body { code, message })) =
            response.body().as_deref().map(serde_json::from_slice::<Body>)
        {
            return CliError::Api {
                status: response.status().as_u16(),
                code,
                message,
            };
        }
    }
    CliError::WebSocket {
        url: url.to_owned(),
        source: Box::new(e),
    }
}
