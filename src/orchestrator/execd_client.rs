//! The one place sandboxd speaks execd's HTTP: the liveness probe (`GET /ping`), the
//! readiness probes it runs through execd (`POST /command`, `/proxy/{port}`), commands whose
//! output is followed as it comes (template builds), file writes and background starts (pool
//! warm-up), the tail of a file (execd's own log, for diagnostics), and what executions need:
//! commands and code as event streams (SSE parsed as it arrives, keep-alives included so a
//! reader can tell a quiet run from a dead connection), following a command's journal from an
//! event id, interrupts, code contexts, and file upload, download and removal. Each call dials
//! the target's TCP address, or opens a connection through the runtime's tunnel (one per call).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::runtime::{Dial, Target};
use crate::auth::TOKEN_HEADER;
use crate::relay::BoxError;
use crate::wire::{ErrorBody, ErrorCode, EventType, RunCommandRequest, StreamEvent};

/// The content type of JSON bodies.
const JSON: &str = "application/json";
/// The multipart boundary of uploads (never inside what sandboxd uploads: env files are
/// text, and the boundary is checked against the content).
const BOUNDARY: &str = "sandboxd-upload-7b1c0e2f9a";
/// How long a write or a background start through execd may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one probe may take.
const PING_TIMEOUT: Duration = Duration::from_secs(2);
/// The most of an answer sandboxd reads: error bodies, and a probe command's event stream.
const MAX_BODY: usize = 1 << 20;
/// The most of a file [`ExecdClient::read_tail`] reads.
pub const MAX_READ: usize = MAX_BODY;
/// How long reading a file may take.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How much of a probe command's output a failure keeps.
const OUTPUT_KEPT: usize = 4096;

/// What `/ping` said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ping {
    /// 200: execd serves.
    Ready,
    /// 503 `STARTING`: execd serves, but its pre-start hook runs and the entrypoint has not
    /// started.
    Starting,
    /// Any other answer, no answer, or no connection yet.
    NotYet,
}

/// Why one try of a readiness probe failed: what the status message says.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeFailure {
    /// No answer in time, or no connection.
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
    /// The connection to the sandbox failed.
    #[error("{0}")]
    Unreachable(String),
    /// An HTTP status that does not pass.
    #[error("answered {status}{}", body_suffix(.message))]
    Status {
        /// The status.
        status: u16,
        /// execd's message, when execd answered for the port.
        message: Option<String>,
    },
    /// Nothing accepts connections on the port.
    #[error("nothing accepts connections on port {0}")]
    Refused(u16),
    /// The command exited non-zero (or never reported an exit).
    #[error("exited with code {code}{}", output_suffix(.output))]
    Exit {
        /// Its exit code as execd reported it (`-1` for a signal, `?` when unknown).
        code: String,
        /// Its last output.
        output: String,
    },
}

fn body_suffix(message: &Option<String>) -> String {
    message.as_ref().map(|m| format!(": {m}")).unwrap_or_default()
}

fn output_suffix(output: &str) -> String {
    if output.is_empty() {
        String::new()
    } else {
        format!("; output:\n{output}")
    }
}

/// How a command run through `/command` ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandEnd {
    /// It exited 0.
    Completed,
    /// It exited non-zero, was killed, or could not start.
    Failed {
        /// Its exit code as execd reported it (`-1` for a signal).
        code: String,
        /// execd's account (how it ended; `timed out after …` when its timeout killed it).
        traceback: Vec<String>,
    },
}

/// A client for the execd of any sandbox.
pub struct ExecdClient {
    /// Probes: no pooled connections (they are one-off).
    http: Client<HttpConnector, Full<Bytes>>,
    /// Executions: pooled connections (a handler run is several calls in a row).
    pooled: Client<HttpConnector, Full<Bytes>>,
    /// The connections of exchanges over a runtime's tunnel (one each, never pooled), owned
    /// here so that none outlives the client; each ends once its answer is read.
    tunnelled: std::sync::Mutex<tokio::task::JoinSet<()>>,
}

impl Default for ExecdClient {
    fn default() -> Self {
        Self::new()
    }
}

impl ExecdClient {
    /// A client with short connect timeouts and no pooled connections (probes are one-off).
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(PING_TIMEOUT));
        Self {
            http: Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(0)
                .build(connector.clone()),
            pooled: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(5))
                .build(connector),
            tunnelled: std::sync::Mutex::new(tokio::task::JoinSet::new()),
        }
    }

    /// Sends `req` to `target`: on `client` to a TCP address, or over a new connection
    /// through the runtime's tunnel.
    async fn request(
        &self,
        client: &Client<HttpConnector, Full<Bytes>>,
        target: &Target,
        req: hyper::Request<Full<Bytes>>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, BoxError> {
        match &target.dial {
            Dial::Tcp(_) => Ok(client.request(req).await?),
            Dial::Tunnel(tunnel) => {
                let io = tunnel.open().await?;
                Ok(crate::relay::send_over(io, req, &self.tunnelled).await?)
            }
        }
    }

    /// `method path` at `target`, with the sandbox's token when the target is execd; the
    /// status and at most [`MAX_BODY`] bytes of the body, or why there is none.
    async fn call(
        &self,
        target: &Target,
        token: &str,
        method: hyper::Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> Result<(u16, Bytes), String> {
        self.call_with(target, token, method, path, body, &[]).await
    }

    /// [`ExecdClient::call`] with extra request headers.
    async fn call_with(
        &self,
        target: &Target,
        token: &str,
        method: hyper::Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
        headers: &[(hyper::header::HeaderName, String)],
    ) -> Result<(u16, Bytes), String> {
        let uri = format!("http://{}{}{path}", target.authority(), target.prefix);
        let mut req = hyper::Request::builder().method(method).uri(uri);
        if target.execd {
            req = req.header(TOKEN_HEADER, token);
        }
        for (name, value) in headers {
            req = req.header(name, value);
        }
        if let Some((content_type, _)) = &body {
            req = req.header(hyper::header::CONTENT_TYPE, *content_type);
        }
        let req = req
            .body(Full::new(body.map(|(_, b)| Bytes::from(b)).unwrap_or_default()))
            .map_err(|e| format!("invalid request: {e}"))?;
        let resp = self
            .request(&self.http, target, req)
            .await
            .map_err(|e| format!("cannot reach the sandbox: {e}"))?;
        let status = resp.status().as_u16();
        let body = Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| format!("the answer broke off: {e}"))?
            .to_bytes();
        Ok((status, body))
    }

    /// `GET /ping` on the execd behind `target`, with the sandbox's token.
    pub async fn ping(&self, target: &Target, token: &str) -> Ping {
        let call = self.call(target, token, hyper::Method::GET, "/ping", None);
        match tokio::time::timeout(PING_TIMEOUT, call).await {
            Ok(Ok((200..=299, _))) => Ping::Ready,
            Ok(Ok((503, body)))
                if serde_json::from_slice::<ErrorBody>(&body)
                    .is_ok_and(|b| b.code == ErrorCode::Starting) =>
            {
                Ping::Starting
            }
            _ => Ping::NotYet,
        }
    }

    /// The last [`MAX_BODY`] bytes (at most) of the file at `path` in the sandbox, through
    /// execd's `/files/download` with a suffix range; `None` when there is no such file.
    pub async fn read_tail(&self, execd: &Target, token: &str, path: &str) -> Result<Option<Bytes>, String> {
        let query: String = form_urlencoded::byte_serialize(path.as_bytes()).collect();
        let range = [(hyper::header::RANGE, format!("bytes=-{MAX_BODY}"))];
        let path = format!("/files/download?path={query}");
        let call = self.call_with(execd, token, hyper::Method::GET, &path, None, &range);
        match tokio::time::timeout(READ_TIMEOUT, call).await {
            Err(_) => Err(format!("no answer within {READ_TIMEOUT:?}")),
            Ok(Err(e)) => Err(e),
            Ok(Ok((200 | 206, body))) => Ok(Some(body)),
            // An empty file has no last bytes to give.
            Ok(Ok((416, _))) => Ok(Some(Bytes::new())),
            Ok(Ok((404, _))) => Ok(None),
            Ok(Ok((status, body))) => Err(format!(
                "execd answered {status}: {}",
                last_bytes(&String::from_utf8_lossy(&body), 200)
            )),
        }
    }

    /// A readiness `exec` probe: runs `argv` through execd's `POST /command` (killed after
    /// `timeout`); passes when it exits 0.
    pub async fn probe_exec(
        &self,
        execd: &Target,
        token: &str,
        argv: &[String],
        timeout: Duration,
    ) -> Result<(), ProbeFailure> {
        let request = RunCommandRequest {
            argv: Some(argv.to_vec()),
            timeout: Some(timeout.as_millis() as i64),
            ..Default::default()
        };
        let body = serde_json::to_vec(&request).map_err(|e| ProbeFailure::Unreachable(e.to_string()))?;
        // execd kills the command at `timeout`; the margin lets its last events arrive.
        let call = self.call(execd, token, hyper::Method::POST, "/command", Some((JSON, body)));
        let (status, body) = tokio::time::timeout(timeout + PING_TIMEOUT, call)
            .await
            .map_err(|_| ProbeFailure::TimedOut(timeout))?
            .map_err(ProbeFailure::Unreachable)?;
        if status != 200 {
            return Err(status_failure(status, &body));
        }
        command_outcome(&body)
    }

    /// Runs `request` through execd's `POST /command` and follows its event stream: every line
    /// of output goes to `output` as it arrives. Returns how the command ended, or why execd
    /// could not say (no connection, a refusal, a stream that broke off). No deadline of its
    /// own: the request's `timeout` is execd's to enforce, and the caller bounds the wait.
    pub async fn run_command(
        &self,
        execd: &Target,
        token: &str,
        request: &RunCommandRequest,
        mut output: impl FnMut(&str),
    ) -> Result<CommandEnd, String> {
        let body = serde_json::to_vec(request).map_err(|e| format!("cannot encode the command: {e}"))?;
        let uri = format!("http://{}{}/command", execd.authority(), execd.prefix);
        let mut req = hyper::Request::builder()
            .method(hyper::Method::POST)
            .uri(uri)
            .header(hyper::header::CONTENT_TYPE, "application/json");
        if execd.execd {
            req = req.header(TOKEN_HEADER, token);
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("invalid request: {e}"))?;
        let resp = self
            .request(&self.http, execd, req)
            .await
            .map_err(|e| format!("cannot reach execd: {e}"))?;
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        if status != 200 {
            let text = Limited::new(body, MAX_BODY)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            return Err(status_failure(status, &text).to_string());
        }
        let mut pending: Vec<u8> = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| format!("the command's event stream broke off: {e}"))?;
            let Ok(data) = frame.into_data() else { continue };
            pending.extend_from_slice(&data);
            while let Some(end) = memchr::memchr(b'\n', &pending) {
                let line: Vec<u8> = pending.drain(..=end).collect();
                if let Some(ended) = command_event(&line, &mut output) {
                    return Ok(ended);
                }
            }
            if pending.len() > MAX_BODY {
                return Err(format!(
                    "an event of the command's stream is over {MAX_BODY} bytes"
                ));
            }
        }
        Err("the command's event stream ended before the command did".into())
    }

    /// A readiness `httpGet` probe: `GET path` on the sandbox port behind `target`; passes on
    /// 2xx and 3xx, as Kubernetes' does.
    pub async fn probe_http(
        &self,
        target: &Target,
        token: &str,
        path: &str,
        timeout: Duration,
    ) -> Result<(), ProbeFailure> {
        let call = self.call(target, token, hyper::Method::GET, path, None);
        match tokio::time::timeout(timeout, call).await {
            Err(_) => Err(ProbeFailure::TimedOut(timeout)),
            Ok(Err(e)) => Err(ProbeFailure::Unreachable(e)),
            Ok(Ok((200..=399, _))) => Ok(()),
            Ok(Ok((status, body))) => Err(status_failure(status, &body)),
        }
    }

    /// A readiness `tcpSocket` probe: passes when something accepts a connection on `port`.
    /// A port sandboxd reaches directly is dialled; through execd's port proxy, a request is
    /// sent and only execd's "cannot connect" answer fails it: any answer from the port, or
    /// none before `timeout` (a server that accepted and waits for its own protocol), passes.
    pub async fn probe_tcp(
        &self,
        target: &Target,
        token: &str,
        port: u16,
        timeout: Duration,
    ) -> Result<(), ProbeFailure> {
        match &target.dial {
            Dial::Tcp(addr) if !target.execd => {
                return match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(_)) => Err(ProbeFailure::Refused(port)),
                    Err(_) => Err(ProbeFailure::TimedOut(timeout)),
                };
            }
            Dial::Tunnel(tunnel) if !target.execd => return probe_tunnel(tunnel, port, timeout).await,
            _ => {}
        }
        let call = self.call(target, token, hyper::Method::GET, "/", None);
        match tokio::time::timeout(timeout, call).await {
            Err(_) => Ok(()),
            Ok(Err(e)) => Err(ProbeFailure::Unreachable(e)),
            Ok(Ok((502, body))) if refused(&body) => Err(ProbeFailure::Refused(port)),
            Ok(Ok(_)) => Ok(()),
        }
    }
}

/// A `tcpSocket` probe through a tunnel, which opens whether or not anything listens at its
/// end: the far side closes it (Kubernetes: after an error on the port's error channel) when
/// nothing accepted the connection. So a close (or an error) before `timeout` fails it; bytes
/// from the port, or silence until `timeout` (a server waiting for its client to speak),
/// pass, as through execd's port proxy.
async fn probe_tunnel(
    tunnel: &super::runtime::Tunnel,
    port: u16,
    timeout: Duration,
) -> Result<(), ProbeFailure> {
    use tokio::io::AsyncReadExt as _;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut io = match tokio::time::timeout_at(deadline, tunnel.open()).await {
        Err(_) => return Err(ProbeFailure::TimedOut(timeout)),
        Ok(Err(e)) => {
            return Err(ProbeFailure::Unreachable(format!(
                "cannot open {}: {e}",
                tunnel.name
            )))
        }
        Ok(Ok(io)) => io,
    };
    let mut byte = [0u8; 1];
    match tokio::time::timeout_at(deadline, io.read(&mut byte)).await {
        Err(_) | Ok(Ok(1..)) => Ok(()),
        Ok(Ok(0) | Err(_)) => Err(ProbeFailure::Refused(port)),
    }
}

/// One line of a `/command` event stream: output goes to `output`; a terminal event is the
/// command's end. Ids, comments and other events pass.
fn command_event(line: &[u8], output: &mut impl FnMut(&str)) -> Option<CommandEnd> {
    let data = line.strip_prefix(b"data: ")?;
    let event: StreamEvent = serde_json::from_slice(data.trim_ascii_end()).ok()?;
    match event.kind {
        EventType::Stdout | EventType::Stderr => {
            output(event.text.as_deref().unwrap_or_default());
            None
        }
        EventType::ExecutionComplete => Some(CommandEnd::Completed),
        EventType::Error => {
            let error = event.error.unwrap_or_else(|| crate::wire::ErrorDetail {
                ename: String::new(),
                evalue: "?".into(),
                traceback: Vec::new(),
            });
            Some(CommandEnd::Failed {
                code: error.evalue,
                traceback: error.traceback,
            })
        }
        _ => None,
    }
}

impl ExecdClient {
    /// Writes `content` to `path` in the sandbox (mode `mode`, octal digits in decimal as the
    /// upload's metadata takes them), through execd's `/files/upload`.
    pub async fn write_file(
        &self,
        execd: &Target,
        token: &str,
        path: &str,
        content: &[u8],
        mode: u32,
    ) -> Result<(), String> {
        if memchr::memmem::find(content, BOUNDARY.as_bytes()).is_some() {
            return Err("the content holds the multipart boundary".into());
        }
        let meta = serde_json::json!({"path": path, "mode": mode}).to_string();
        let mut body = Vec::with_capacity(content.len() + meta.len() + 400);
        body.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"metadata\"\r\n\
                 Content-Type: application/json\r\n\r\n{meta}\r\n--{BOUNDARY}\r\n\
                 Content-Disposition: form-data; name=\"file\"; filename=\"file\"\r\n\
                 Content-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(content);
        body.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
        let content_type = format!("multipart/form-data; boundary={BOUNDARY}");
        let call = self.call(
            execd,
            token,
            hyper::Method::POST,
            "/files/upload",
            Some((&content_type, body)),
        );
        match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Err(_) => Err(format!("execd did not answer within {CALL_TIMEOUT:?}")),
            Ok(Err(e)) => Err(e),
            Ok(Ok((200..=299, _))) => Ok(()),
            Ok(Ok((status, body))) => Err(status_failure(status, &body).to_string()),
        }
    }

    /// Starts `argv` as a background command through execd's `POST /command` (its output goes
    /// to the command's log); returns once execd has started it.
    pub async fn start_background(&self, execd: &Target, token: &str, argv: &[String]) -> Result<(), String> {
        let request = RunCommandRequest {
            argv: Some(argv.to_vec()),
            background: Some(true),
            ..Default::default()
        };
        let body = serde_json::to_vec(&request).map_err(|e| e.to_string())?;
        let call = self.call(execd, token, hyper::Method::POST, "/command", Some((JSON, body)));
        match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Err(_) => Err(format!("execd did not answer within {CALL_TIMEOUT:?}")),
            Ok(Err(e)) => Err(e),
            Ok(Ok((200, _))) => Ok(()),
            Ok(Ok((status, body))) => Err(status_failure(status, &body).to_string()),
        }
    }
}

/// Why an execution call to execd failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExecdError {
    /// No connection, or the request could not be sent.
    #[error("cannot reach execd: {0}")]
    Unreachable(String),
    /// execd answered with an error status.
    #[error("execd answered {status}: {message}")]
    Refused {
        /// The status.
        status: u16,
        /// execd's message (its `{code, message}`), or the body's start.
        message: String,
    },
    /// The answer broke off or could not be read.
    #[error("the answer from execd broke off: {0}")]
    Broken(String),
    /// A download was larger than allowed.
    #[error("the file is larger than {0} bytes")]
    TooLarge(usize),
}

/// One item of an execd event stream.
#[derive(Debug, Clone, PartialEq)]
pub enum SseItem {
    /// An event, with its `id:` (execd numbers every journal event from 1).
    Event(Option<u64>, StreamEvent),
    /// A comment (execd's keep-alive): the connection lives.
    KeepAlive,
}

/// An execd event stream; ends when the server closes it (after the terminal event, or not).
pub type EventStream = futures_util::stream::BoxStream<'static, Result<SseItem, ExecdError>>;

/// The most bytes of one SSE block read before the stream is called broken.
const MAX_SSE_BLOCK: usize = 8 << 20;
/// How long one execution call (upload, interrupt, context, download, a stream's start) may
/// take.
const EXEC_TIMEOUT: Duration = Duration::from_secs(30);

impl ExecdClient {
    /// `method path` on the pooled client, with the token; the response, unread.
    async fn send(
        &self,
        target: &Target,
        token: &str,
        method: hyper::Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
        headers: &[(&str, String)],
    ) -> Result<hyper::Response<hyper::body::Incoming>, ExecdError> {
        let uri = format!("http://{}{}{path}", target.authority(), target.prefix);
        let mut req = hyper::Request::builder().method(method).uri(uri);
        if target.execd {
            req = req.header(TOKEN_HEADER, token);
        }
        for (name, value) in headers {
            req = req.header(*name, value);
        }
        let bytes = match body {
            Some((content_type, bytes)) => {
                req = req.header(hyper::header::CONTENT_TYPE, content_type);
                Bytes::from(bytes)
            }
            None => Bytes::new(),
        };
        let req = req
            .body(Full::new(bytes))
            .map_err(|e| ExecdError::Unreachable(format!("invalid request: {e}")))?;
        self.request(&self.pooled, target, req)
            .await
            .map_err(|e| ExecdError::Unreachable(e.to_string()))
    }

    /// `send`, then the whole (small) answer; an error status is [`ExecdError::Refused`].
    async fn exchange(
        &self,
        target: &Target,
        token: &str,
        method: hyper::Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> Result<Bytes, ExecdError> {
        let call = async {
            let resp = self.send(target, token, method, path, body, &[]).await?;
            let status = resp.status().as_u16();
            let bytes = read_limited(resp.into_body(), MAX_BODY).await?;
            if (200..300).contains(&status) {
                Ok(bytes)
            } else {
                Err(refusal(status, &bytes))
            }
        };
        tokio::time::timeout(EXEC_TIMEOUT, call)
            .await
            .map_err(|_| ExecdError::Unreachable(format!("no answer within {EXEC_TIMEOUT:?}")))?
    }

    /// `POST path` with `request` as JSON; the answer read as `A` (`what` names it in the
    /// error when it is not one).
    async fn post_json<R: serde::Serialize, A: serde::de::DeserializeOwned>(
        &self,
        target: &Target,
        token: &str,
        path: &str,
        request: &R,
        what: &str,
    ) -> Result<A, ExecdError> {
        let body = serde_json::to_vec(request).map_err(|e| ExecdError::Unreachable(e.to_string()))?;
        let bytes = self
            .exchange(
                target,
                token,
                hyper::Method::POST,
                path,
                Some(("application/json", body)),
            )
            .await?;
        serde_json::from_slice(&bytes).map_err(|e| ExecdError::Broken(format!("not {what}: {e}")))
    }

    /// `send` a request whose answer is an event stream.
    async fn stream(
        &self,
        target: &Target,
        token: &str,
        method: hyper::Method,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, String)],
    ) -> Result<EventStream, ExecdError> {
        let body = body.map(|b| ("application/json", b));
        let resp = tokio::time::timeout(
            EXEC_TIMEOUT,
            self.send(target, token, method, path, body, headers),
        )
        .await
        .map_err(|_| ExecdError::Unreachable(format!("no answer within {EXEC_TIMEOUT:?}")))??;
        let status = resp.status().as_u16();
        if status != 200 {
            let bytes = read_limited(resp.into_body(), MAX_BODY).await?;
            return Err(refusal(status, &bytes));
        }
        Ok(sse_stream(resp.into_body()))
    }

    /// `POST /command` in the foreground: its events as they come.
    pub async fn start_command(
        &self,
        target: &Target,
        token: &str,
        request: &RunCommandRequest,
    ) -> Result<EventStream, ExecdError> {
        let body = serde_json::to_vec(request).map_err(|e| ExecdError::Unreachable(e.to_string()))?;
        self.stream(target, token, hyper::Method::POST, "/command", Some(body), &[])
            .await
    }

    /// `GET /command/{id}/events?after=N`: the command's journal after event `after`, then
    /// live (execd keeps it after the command ended).
    pub async fn follow_command(
        &self,
        target: &Target,
        token: &str,
        id: &str,
        after: u64,
    ) -> Result<EventStream, ExecdError> {
        let path = format!("/command/{}/events?after={after}", encode(id));
        self.stream(target, token, hyper::Method::GET, &path, None, &[])
            .await
    }

    /// `POST /code`: code in a context (or the language's default one), its events as they
    /// come.
    pub async fn run_code(
        &self,
        target: &Target,
        token: &str,
        request: &crate::wire::code::RunCodeRequest,
    ) -> Result<EventStream, ExecdError> {
        let body = serde_json::to_vec(request).map_err(|e| ExecdError::Unreachable(e.to_string()))?;
        self.stream(target, token, hyper::Method::POST, "/code", Some(body), &[])
            .await
    }

    /// `DELETE /code?id=`: interrupts a command (its group gets SIGTERM, SIGKILL 3 s later) or
    /// a context's running cell.
    pub async fn interrupt(&self, target: &Target, token: &str, id: &str) -> Result<(), ExecdError> {
        let path = format!("/code?id={}", encode(id));
        self.exchange(target, token, hyper::Method::DELETE, &path, None)
            .await
            .map(drop)
    }

    /// `POST /code/context`: a fresh context of `language`; its id.
    pub async fn create_context(
        &self,
        target: &Target,
        token: &str,
        language: &str,
    ) -> Result<String, ExecdError> {
        let request = crate::wire::code::CreateContextRequest {
            language: language.to_owned(),
            cwd: None,
        };
        self.post_json::<_, crate::wire::code::CodeContext>(
            target,
            token,
            "/code/context",
            &request,
            "a code context",
        )
        .await
        .map(|c| c.id)
    }

    /// `DELETE /code/contexts/{id}`.
    pub async fn delete_context(&self, target: &Target, token: &str, id: &str) -> Result<(), ExecdError> {
        let path = format!("/code/contexts/{}", encode(id));
        self.exchange(target, token, hyper::Method::DELETE, &path, None)
            .await
            .map(drop)
    }

    /// `POST /files/upload`: each (path, content) written (parents made), in one request.
    pub async fn upload(
        &self,
        target: &Target,
        token: &str,
        files: &[(String, Vec<u8>)],
    ) -> Result<(), ExecdError> {
        let boundary = format!("sandboxd-{}", uuid::Uuid::new_v4().simple());
        let mut body = Vec::new();
        for (path, content) in files {
            let meta = serde_json::json!({ "path": path, "mode": 644 }).to_string();
            body.extend_from_slice(
                format!(
                    "--{boundary}\r\nContent-Disposition: form-data; name=\"metadata\"\r\nContent-Type: application/json\r\n\r\n{meta}\r\n"
                )
                .as_bytes(),
            );
            body.extend_from_slice(
                format!(
                    "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"file\"\r\nContent-Type: application/octet-stream\r\n\r\n"
                )
                .as_bytes(),
            );
            body.extend_from_slice(content);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        let content_type = format!("multipart/form-data; boundary={boundary}");
        self.exchange(
            target,
            token,
            hyper::Method::POST,
            "/files/upload",
            Some((&content_type, body)),
        )
        .await
        .map(drop)
    }

    /// `GET /files/download?path=`: the file, `None` when it does not exist, or
    /// [`ExecdError::TooLarge`] past `max` bytes.
    pub async fn download(
        &self,
        target: &Target,
        token: &str,
        path: &str,
        max: usize,
    ) -> Result<Option<Bytes>, ExecdError> {
        let call = async {
            let uri = format!("/files/download?path={}", encode(path));
            let resp = self
                .send(target, token, hyper::Method::GET, &uri, None, &[])
                .await?;
            let status = resp.status().as_u16();
            if status == 404 {
                return Ok(None);
            }
            if status != 200 {
                let bytes = read_limited(resp.into_body(), MAX_BODY).await?;
                return Err(refusal(status, &bytes));
            }
            match read_limited(resp.into_body(), max).await {
                Err(ExecdError::TooLarge(_)) => Err(ExecdError::TooLarge(max)),
                other => other.map(Some),
            }
        };
        tokio::time::timeout(EXEC_TIMEOUT, call)
            .await
            .map_err(|_| ExecdError::Unreachable(format!("no answer within {EXEC_TIMEOUT:?}")))?
    }

    /// `POST /v1/isolated/session`: a new isolated session; its id.
    pub async fn create_isolated_session(
        &self,
        target: &Target,
        token: &str,
        request: &crate::wire::isolated::CreateIsolatedSessionRequest,
    ) -> Result<String, ExecdError> {
        self.post_json::<_, crate::wire::isolated::IsolatedCreateSessionResponse>(
            target,
            token,
            "/v1/isolated/session",
            request,
            "an isolated session",
        )
        .await
        .map(|s| s.session_id)
    }

    /// `POST /v1/isolated/session/{sid}/run` in the foreground: its events as they come (execd
    /// interrupts the run if this stream is dropped before its end).
    pub async fn run_isolated(
        &self,
        target: &Target,
        token: &str,
        session: &str,
        request: &crate::wire::isolated::IsolatedRunRequest,
    ) -> Result<EventStream, ExecdError> {
        let body = serde_json::to_vec(request).map_err(|e| ExecdError::Unreachable(e.to_string()))?;
        let path = format!("/v1/isolated/session/{}/run", encode(session));
        self.stream(target, token, hyper::Method::POST, &path, Some(body), &[])
            .await
    }

    /// `DELETE /v1/isolated/session/{sid}`: kills its processes and removes it.
    pub async fn delete_isolated_session(
        &self,
        target: &Target,
        token: &str,
        session: &str,
    ) -> Result<(), ExecdError> {
        let path = format!("/v1/isolated/session/{}", encode(session));
        self.exchange(target, token, hyper::Method::DELETE, &path, None)
            .await
            .map(drop)
    }

    /// `DELETE /directories?path=`: `rm -rf`.
    pub async fn remove_dir(&self, target: &Target, token: &str, path: &str) -> Result<(), ExecdError> {
        let path = format!("/directories?path={}", encode(path));
        self.exchange(target, token, hyper::Method::DELETE, &path, None)
            .await
            .map(drop)
    }
}

/// A query or path component, percent-encoded.
fn encode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// At most `max` bytes of `body`; more is [`ExecdError::TooLarge`].
async fn read_limited(body: hyper::body::Incoming, max: usize) -> Result<Bytes, ExecdError> {
    match Limited::new(body, max).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ExecdError::TooLarge(max)),
        Err(e) => Err(ExecdError::Broken(e.to_string())),
    }
}

fn refusal(status: u16, body: &[u8]) -> ExecdError {
    let message = serde_json::from_slice::<ErrorBody>(body)
        .map(|b| b.message)
        .unwrap_or_else(|_| last_bytes(&String::from_utf8_lossy(body), 512).to_owned());
    ExecdError::Refused { status, message }
}

/// The events of an SSE body, parsed block by block as the bytes arrive.
fn sse_stream(body: hyper::body::Incoming) -> EventStream {
    use futures_util::StreamExt as _;
    use http_body_util::BodyStream;
    struct State {
        body: BodyStream<hyper::body::Incoming>,
        buf: Vec<u8>,
        ready: std::collections::VecDeque<SseItem>,
        done: bool,
    }
    let state = State {
        body: BodyStream::new(body),
        buf: Vec::new(),
        ready: std::collections::VecDeque::new(),
        done: false,
    };
    futures_util::stream::unfold(state, |mut s| async move {
        loop {
            if let Some(item) = s.ready.pop_front() {
                return Some((Ok(item), s));
            }
            if s.done {
                return None;
            }
            match s.body.next().await {
                None => {
                    s.done = true;
                    s.ready.extend(parse_blocks(&mut s.buf, true));
                }
                Some(Err(e)) => {
                    s.done = true;
                    return Some((Err(ExecdError::Broken(e.to_string())), s));
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        s.buf.extend_from_slice(&data);
                        s.ready.extend(parse_blocks(&mut s.buf, false));
                        if s.buf.len() > MAX_SSE_BLOCK {
                            s.done = true;
                            return Some((Err(ExecdError::Broken("an event over 8 MiB".into())), s));
                        }
                    }
                }
            }
        }
    })
    .boxed()
}

/// Takes the complete SSE blocks off the front of `buf` (all of it at `end`): events with
/// their ids, and comment-only blocks as keep-alives. Data that is not a StreamEvent is
/// skipped.
fn parse_blocks(buf: &mut Vec<u8>, end: bool) -> Vec<SseItem> {
    let mut items = Vec::new();
    loop {
        let cut = memchr::memmem::find(buf, b"\n\n");
        let block: Vec<u8> = match cut {
            Some(at) => {
                let block = buf[..at].to_vec();
                buf.drain(..at + 2);
                block
            }
            None if end && !buf.is_empty() => std::mem::take(buf),
            None => break,
        };
        let text = String::from_utf8_lossy(&block);
        let (mut id, mut data, mut comment) = (None, String::new(), false);
        for line in text.lines() {
            if let Some(v) = line.strip_prefix("id:") {
                id = v.trim().parse().ok();
            } else if let Some(v) = line.strip_prefix("data:") {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(v.strip_prefix(' ').unwrap_or(v));
            } else if line.starts_with(':') {
                comment = true;
            }
        }
        if data.is_empty() {
            if comment {
                items.push(SseItem::KeepAlive);
            }
        } else if let Ok(event) = serde_json::from_str::<StreamEvent>(&data) {
            items.push(SseItem::Event(id, event));
        }
    }
    items
}

/// Whether execd's 502 says that nothing accepted the connection.
fn refused(body: &[u8]) -> bool {
    serde_json::from_slice::<ErrorBody>(body).is_ok_and(|b| b.message.starts_with("cannot connect"))
}

fn status_failure(status: u16, body: &[u8]) -> ProbeFailure {
    ProbeFailure::Status {
        status,
        message: serde_json::from_slice::<ErrorBody>(body).ok().map(|b| b.message),
    }
}

/// Reads a `/command` event stream: passes on `execution_complete`; otherwise the exit code
/// and the last of the output.
fn command_outcome(stream: &[u8]) -> Result<(), ProbeFailure> {
    let mut output = String::new();
    let mut code = "?".to_owned();
    for line in String::from_utf8_lossy(stream).lines() {
        let Some(event) = line
            .strip_prefix("data: ")
            .and_then(|data| serde_json::from_str::<StreamEvent>(data).ok())
        else {
            continue;
        };
        match event.kind {
            EventType::ExecutionComplete => return Ok(()),
            EventType::Stdout | EventType::Stderr => {
                output.push_str(event.text.as_deref().unwrap_or_default());
                output.push('\n');
            }
            EventType::Error => {
                if let Some(e) = event.error {
                    code = e.evalue;
                }
            }
            _ => {}
        }
    }
    Err(ProbeFailure::Exit {
        code,
        output: last_bytes(output.trim_end(), OUTPUT_KEPT).to_owned(),
    })
}

/// The last `max` bytes of `text`, cut at a character boundary.
pub fn last_bytes(text: &str, max: usize) -> &str {
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orchestrator::runtime::{Tunnel, TunnelIo, EXECD_PORT};
    use futures_util::FutureExt as _;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// A tunnel to `port` whose every connection is one end of an in-memory pipe, the other
    /// handed to `far` (what listens at the tunnel's end).
    fn tunnel<F, Fut>(port: u16, far: F) -> Tunnel
    where
        F: Fn(tokio::io::DuplexStream) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let far = std::sync::Arc::new(far);
        Tunnel::new(format!("test port {port}"), port, move || {
            let far = far.clone();
            async move {
                let (near, end) = tokio::io::duplex(64 * 1024);
                tokio::spawn(far(end));
                Ok(Box::new(near) as Box<dyn TunnelIo>)
            }
            .boxed()
        })
    }

    fn tunnelled(tunnel: Tunnel, execd: bool) -> Target {
        Target {
            dial: Dial::Tunnel(tunnel),
            public: None,
            prefix: String::new(),
            execd,
        }
    }

    #[tokio::test]
    async fn execd_calls_through_a_tunnel_are_http_over_the_runtimes_stream() {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let heads = seen.clone();
        let execd = tunnelled(
            tunnel(EXECD_PORT, move |mut end| {
                let heads = heads.clone();
                async move {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") && end.read(&mut byte).await.unwrap_or(0) == 1 {
                        head.push(byte[0]);
                    }
                    heads
                        .lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&head).to_lowercase());
                    let _ = end
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await;
                }
            }),
            true,
        );
        let client = ExecdClient::new();
        assert_eq!(client.ping(&execd, "tok-1").await, Ping::Ready);
        assert_eq!(client.ping(&execd, "tok-1").await, Ping::Ready);
        let heads = seen.lock().unwrap().clone();
        assert_eq!(heads.len(), 2, "a connection per call: {heads:?}");
        for head in &heads {
            assert!(head.starts_with("get /ping http/1.1\r\n"), "origin form: {head}");
            assert!(head.contains("host: localhost:44772\r\n"), "{head}");
            assert!(head.contains("x-execd-access-token: tok-1\r\n"), "{head}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_tcp_probe_through_a_tunnel_fails_on_a_close_and_passes_on_bytes_or_silence() {
        let client = ExecdClient::new();
        let timeout = Duration::from_secs(3);
        let refused = tunnelled(tunnel(8000, |end| async move { drop(end) }), false);
        assert_eq!(
            client.probe_tcp(&refused, "t", 8000, timeout).await,
            Err(ProbeFailure::Refused(8000))
        );
        let talks = tunnelled(
            tunnel(8000, |mut end| async move {
                let _ = end.write_all(b"SSH-2.0\r\n").await;
                std::future::pending::<()>().await;
            }),
            false,
        );
        assert_eq!(client.probe_tcp(&talks, "t", 8000, timeout).await, Ok(()));
        let silent = tunnelled(
            tunnel(8000, |end| async move {
                std::future::pending::<()>().await;
                drop(end);
            }),
            false,
        );
        let started = tokio::time::Instant::now();
        assert_eq!(client.probe_tcp(&silent, "t", 8000, timeout).await, Ok(()));
        assert!(started.elapsed() >= timeout, "silence passes only at the timeout");
    }

    #[test]
    fn command_streams_pass_on_completion_and_fail_with_code_and_output() {
        let ok = b"id: 1\ndata: {\"type\":\"init\",\"text\":\"x\",\"timestamp\":1}\n\nid: 2\ndata: {\"type\":\"execution_complete\",\"timestamp\":2}\n\n";
        assert_eq!(command_outcome(ok), Ok(()));
        let failed = b"data: {\"type\":\"stdout\",\"text\":\"not yet\",\"timestamp\":1}\n\ndata: {\"type\":\"error\",\"timestamp\":2,\"error\":{\"ename\":\"CommandExecError\",\"evalue\":\"3\",\"traceback\":[]}}\n\n";
        assert_eq!(
            command_outcome(failed),
            Err(ProbeFailure::Exit {
                code: "3".into(),
                output: "not yet".into()
            })
        );
        assert!(matches!(command_outcome(b""), Err(ProbeFailure::Exit { code, .. }) if code == "?"));
    }

    #[test]
    fn followed_streams_pass_output_on_and_end_at_the_terminal_event() {
        let mut seen = Vec::new();
        let mut out = |t: &str| seen.push(t.to_owned());
        assert_eq!(command_event(b"id: 1\n", &mut out), None);
        assert_eq!(command_event(b": keep-alive\n", &mut out), None);
        assert_eq!(
            command_event(
                b"data: {\"type\":\"stdout\",\"text\":\"hello\",\"timestamp\":1}\n",
                &mut out
            ),
            None
        );
        assert_eq!(
            command_event(
                b"data: {\"type\":\"error\",\"timestamp\":2,\"error\":{\"ename\":\"CommandExecError\",\"evalue\":\"7\",\"traceback\":[\"exit status 7\"]}}\n",
                &mut out
            ),
            Some(CommandEnd::Failed {
                code: "7".into(),
                traceback: vec!["exit status 7".into()]
            })
        );
        assert_eq!(
            command_event(
                b"data: {\"type\":\"execution_complete\",\"timestamp\":3}\r\n",
                &mut out
            ),
            Some(CommandEnd::Completed)
        );
        assert_eq!(seen, ["hello"]);
    }

    #[test]
    fn sse_blocks_parse_as_they_complete() {
        let mut buf = b"id: 1\ndata: {\"type\":\"init\",\"text\":\"c1\",\"timestamp\":1}\n\n: keep-alive\n\nid: 2\ndata: {\"type\":\"stdout\",\"te".to_vec();
        let items = parse_blocks(&mut buf, false);
        assert_eq!(items.len(), 2);
        assert!(
            matches!(&items[0], SseItem::Event(Some(1), e) if e.kind == EventType::Init && e.text.as_deref() == Some("c1"))
        );
        assert_eq!(items[1], SseItem::KeepAlive);
        buf.extend_from_slice(
            b"xt\":\"hi\",\"timestamp\":2}\n\nid: 3\ndata: {\"type\":\"execution_complete\",\"timestamp\":3}",
        );
        let items = parse_blocks(&mut buf, false);
        assert!(matches!(&items[..], [SseItem::Event(Some(2), e)] if e.text.as_deref() == Some("hi")));
        // The last block without its blank line counts once the body ended.
        let items = parse_blocks(&mut buf, true);
        assert!(matches!(&items[..], [SseItem::Event(Some(3), e)] if e.kind == EventType::ExecutionComplete));
        assert!(buf.is_empty());
    }

    #[test]
    fn last_bytes_cut_at_a_character_boundary() {
        assert_eq!(last_bytes("abcdef", 3), "def");
        assert_eq!(last_bytes("ab", 3), "ab");
        assert_eq!(last_bytes("aéb", 2), "b");
    }

    #[test]
    fn only_execds_cannot_connect_is_a_refusal() {
        assert!(refused(
            br#"{"code":"BAD_GATEWAY","message":"cannot connect to port 6379"}"#
        ));
        assert!(!refused(
            br#"{"code":"BAD_GATEWAY","message":"port 6379 did not answer"}"#
        ));
        assert!(!refused(b"<html>bad gateway</html>"));
    }
}
