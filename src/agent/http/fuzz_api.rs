//! The HTTP layer's parsers of user bytes, reachable from the coverage-guided fuzzers in
//! `fuzz/` (a separate package that can only see `pub` items). Thin wrappers over the very
//! functions the handlers call; nothing here is used by execd itself.

use axum::extract::ws::{Message, Utf8Bytes};
use axum::extract::{FromRequest, Multipart, Request};
use axum::http::{header, HeaderValue};

use super::pty::{client_input, ClientInput};
use super::transfer::{read_metadata, MetadataError};
use crate::wire::files::FileMetadata;

/// `Last-Event-ID` as the SSE routes read it: `None` when the bytes cannot be a header value
/// at all (hyper refuses them before any route), else the event id or `Some(None)` for a 400.
pub fn last_event_id(value: &[u8]) -> Option<Option<u64>> {
    let value = HeaderValue::from_bytes(value).ok()?;
    Some(super::extract::parse_last_event_id(&value))
}

/// A query string as the file routes read it (`Params`): the decoded pairs, or the 400.
pub fn query(query: &str) -> Result<Vec<(String, String)>, String> {
    super::extract::parse_query(query).map_err(|e| format!("{e:?}"))
}

/// What a PTY WebSocket client message decodes to (see `http/pty.rs`).
#[derive(Debug, PartialEq)]
pub enum PtyInput {
    /// Bytes for stdin.
    Stdin(Vec<u8>),
    /// A resize to columns × rows.
    Resize(u16, u16),
    /// A signal name as sent.
    Signal(String),
    /// An application ping.
    Ping,
    /// Refused with an error frame.
    Invalid(String),
    /// A WebSocket ping or pong.
    Nothing,
    /// A close.
    Close,
}

/// Decodes one PTY client message: a binary frame, or a text frame (`None` when the bytes are
/// not UTF-8, which the WebSocket layer refuses before us).
pub fn pty_frame(binary: bool, bytes: &[u8]) -> Option<PtyInput> {
    let msg = if binary {
        Message::Binary(bytes.to_vec().into())
    } else {
        Message::Text(Utf8Bytes::from(std::str::from_utf8(bytes).ok()?))
    };
    Some(match client_input(&msg) {
        ClientInput::Stdin(data) => PtyInput::Stdin(data.into_owned()),
        ClientInput::Resize(size) => PtyInput::Resize(size.cols, size.rows),
        ClientInput::Signal(name) => PtyInput::Signal(name),
        ClientInput::Ping => PtyInput::Ping,
        ClientInput::Invalid(why) => PtyInput::Invalid(why),
        ClientInput::Nothing => PtyInput::Nothing,
        ClientInput::Close => PtyInput::Close,
    })
}

/// The `metadata` parts of a `POST /files/upload` body, read as the handler reads them (the
/// multipart framing, the 64 KiB cap, `FileMetadata` JSON); `file` and unknown parts are
/// drained. Stops at the first refusal, with its message. Writes nothing.
pub async fn upload_metadata(content_type: &str, body: Vec<u8>) -> Result<Vec<FileMetadata>, String> {
    let mut req = Request::new(axum::body::Body::from(body));
    let value = HeaderValue::from_str(content_type).map_err(|e| e.to_string())?;
    req.headers_mut().insert(header::CONTENT_TYPE, value);
    let mut multipart = Multipart::from_request(req, &())
        .await
        .map_err(|e| e.to_string())?;
    let mut metas = Vec::new();
    while let Some(mut field) = multipart.next_field().await.map_err(|e| e.to_string())? {
        if field.name() == Some("metadata") {
            match read_metadata(&mut field, metas.len() + 1).await {
                Ok(meta) => metas.push(meta),
                Err(MetadataError::Form(e)) => return Err(e.to_string()),
                Err(MetadataError::Invalid(e)) => return Err(format!("{e:?}")),
            }
        } else {
            while field.chunk().await.map_err(|e| e.to_string())?.is_some() {}
        }
    }
    Ok(metas)
}
