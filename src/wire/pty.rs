//! API types of interactive terminals: the `/pty` REST bodies and the JSON frames of the PTY
//! WebSocket. Binary frames (output, replay, raw stdin) are framed by one leading byte; their
//! constants live here too so both ends agree on them.
//!
//! Pure data, no I/O, no async.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Leading byte of a client binary frame carrying raw stdin bytes.
pub const FRAME_STDIN: u8 = 0x00;
/// Leading byte of a server binary frame carrying stdout bytes (all output in PTY mode).
pub const FRAME_STDOUT: u8 = 0x01;
/// Leading byte of a server binary frame carrying stderr bytes (pipe mode only).
pub const FRAME_STDERR: u8 = 0x02;
/// Leading byte of a server replay frame: then an 8-byte big-endian offset, then the bytes.
pub const FRAME_REPLAY: u8 = 0x03;

/// WebSocket close code sent to a holder whose session another client took over.
pub const CLOSE_TAKEN_OVER: u16 = 4001;
/// Reason text of [`CLOSE_TAKEN_OVER`].
pub const TAKEN_OVER_REASON: &str = "TAKEN_OVER";

/// `POST /pty`; the body may be empty.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct CreatePtyRequest {
    /// Working directory of the shell; `~`, `$VAR` and `${VAR}` are expanded, and it is created
    /// when missing. Defaults to execd's own working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Shell text run by `bash -c` instead of an interactive shell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Initial terminal width in columns, 1 to 65535 (default 80; beyond the contract).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cols: Option<u16>,
    /// Initial terminal height in rows, 1 to 65535 (default 24; beyond the contract).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u16>,
}

/// Answer of `POST /pty` (status 201).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreatePtyResponse {
    /// UUID of the new terminal session.
    pub session_id: String,
}

/// `GET /pty/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PtyStatusResponse {
    /// The session id.
    pub session_id: String,
    /// Whether the session's process is running (false before the first connection and after
    /// it exited).
    pub running: bool,
    /// Total bytes the process has written so far: pass it as `since` to resume exactly.
    pub output_offset: u64,
}

/// How the process of a terminal session sees its standard streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PtyMode {
    /// A pseudo-terminal: one output stream, job control, resize.
    Pty,
    /// Plain pipes: stdout and stderr kept apart, no terminal.
    Pipe,
}

/// Codes of `{"type":"error"}` frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PtyErrorCode {
    /// The process could not be started.
    StartFailed,
    /// Writing to the process's stdin failed (it closed it or exited).
    StdinWriteFailed,
    /// The client sent a frame that is not part of the protocol.
    InvalidFrame,
    /// Another client holds the session.
    AlreadyConnected,
    /// Anything else that went wrong on the server.
    RuntimeError,
    /// An observer (`observe=1`) sent a frame that would change the session (beyond the
    /// contract).
    ReadOnly,
}

/// A JSON text frame from the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PtyServerFrame {
    /// Sent once after the optional replay frame: live output follows.
    Connected {
        /// The session id.
        session_id: String,
        /// How the process was started.
        mode: PtyMode,
    },
    /// The process exited; the server closes with 1000 right after.
    Exit {
        /// The exit code, or -1 when a signal killed the process.
        exit_code: i32,
    },
    /// Something went wrong; the connection stays open unless the process could not start.
    Error {
        /// What went wrong, lowercase.
        error: String,
        /// Machine-readable code.
        code: PtyErrorCode,
    },
    /// Answer to a client `ping` frame.
    Pong,
}

/// A JSON text frame from the client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PtyClientFrame {
    /// Text for the process's stdin.
    Stdin {
        /// UTF-8 text, written as is.
        data: String,
    },
    /// New terminal size (PTY mode only).
    Resize {
        /// Width in columns, at least 1.
        cols: u16,
        /// Height in rows, at least 1.
        rows: u16,
    },
    /// A signal for the process: the terminal's foreground process group in PTY mode, the
    /// shell's process group in pipe mode.
    Signal {
        /// Signal name such as `SIGINT`, `SIGTERM`, `SIGKILL`, `SIGQUIT` or `SIGHUP` (the
        /// `SIG` prefix is optional).
        signal: String,
    },
    /// Application-level liveness; the server answers `pong`.
    Ping,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_use_the_contract_shapes() {
        let f: PtyClientFrame =
            serde_json::from_str(r#"{"type":"resize","cols":100,"rows":40}"#).expect("resize parses");
        assert_eq!(f, PtyClientFrame::Resize { cols: 100, rows: 40 });
        let f: PtyClientFrame = serde_json::from_str(r#"{"type":"ping"}"#).expect("ping parses");
        assert_eq!(f, PtyClientFrame::Ping);
        assert!(serde_json::from_str::<PtyClientFrame>(r#"{"type":"launch"}"#).is_err());
        assert!(serde_json::from_str::<PtyClientFrame>(r#"{"type":"resize","cols":-1,"rows":2}"#).is_err());

        let exit = serde_json::to_string(&PtyServerFrame::Exit { exit_code: 3 }).unwrap();
        assert_eq!(exit, r#"{"type":"exit","exit_code":3}"#);
        let connected = serde_json::to_value(PtyServerFrame::Connected {
            session_id: "s".into(),
            mode: PtyMode::Pipe,
        })
        .unwrap();
        assert_eq!(
            connected,
            serde_json::json!({"type": "connected", "session_id": "s", "mode": "pipe"})
        );
        let err = serde_json::to_value(PtyServerFrame::Error {
            error: "bad".into(),
            code: PtyErrorCode::AlreadyConnected,
        })
        .unwrap();
        assert_eq!(err["code"], "ALREADY_CONNECTED");
        assert_eq!(
            serde_json::to_string(&PtyServerFrame::Pong).unwrap(),
            r#"{"type":"pong"}"#
        );
    }
}
