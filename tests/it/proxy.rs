//! The port proxy against servers the test starts on 127.0.0.1: headers, 100 MB bodies both
//! ways without buffering, SSE timing, a WebSocket echo, 400/502, the token, and execd itself
//! (served in-process, once: nested self-proxies are refused, and no proxied connection
//! outlives its use).

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::ws::{Message as AxMessage, WebSocketUpgrade};
use axum::extract::{Query, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Map, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::pty::ws_connect;
use crate::util::{eventually, Agent, Opts};

const MB: u64 = 1 << 20;
const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

fn fnv(mut h: u64, data: &[u8]) -> u64 {
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Deterministic bytes: the byte at absolute offset `i` depends only on `i`.
fn pattern(offset: u64, buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = ((offset + i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8;
    }
}

/// A stream of `total` pattern bytes in 64 KiB chunks, and the hash they will have.
fn pattern_stream(
    total: u64,
) -> impl futures_util::Stream<Item = Result<Bytes, Infallible>> + Send + 'static {
    futures_util::stream::unfold(0u64, move |offset| async move {
        if offset >= total {
            return None;
        }
        let n = (64 * 1024).min(total - offset) as usize;
        let mut buf = vec![0u8; n];
        pattern(offset, &mut buf);
        Some((Ok(Bytes::from(buf)), offset + n as u64))
    })
}

fn pattern_hash(total: u64) -> u64 {
    let mut buf = vec![0u8; 64 * 1024];
    let (mut h, mut offset) = (FNV_START, 0);
    while offset < total {
        let n = (buf.len() as u64).min(total - offset) as usize;
        pattern(offset, &mut buf[..n]);
        h = fnv(h, &buf[..n]);
        offset += n as u64;
    }
    h
}

/// A local HTTP server for the proxy to reach; stopped on drop.
struct Upstream {
    port: u16,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn upstream() -> Upstream {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let app = Router::new()
        .route("/echo/{*rest}", any(echo))
        .route("/big", get(big))
        .route("/sink", post(sink))
        .route("/sse", get(sse))
        .route("/ws", get(ws_echo))
        .route("/forever", get(forever))
        .route("/stall", get(stall))
        .route("/hold", get(ws_hold))
        .route("/bye", get(ws_bye))
        .with_state(Arc::clone(&hits));
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Upstream { port, hits, task }
}

/// Describes the request it got, and sets a response header of its own.
async fn echo(State(hits): State<Arc<AtomicUsize>>, req: Request) -> Response {
    hits.fetch_add(1, Ordering::SeqCst);
    let mut headers = Map::new();
    for (k, v) in req.headers() {
        headers.insert(k.to_string(), json!(v.to_str().unwrap_or("?")));
    }
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().map(str::to_owned);
    let body = axum::body::to_bytes(req.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    let mut resp = Json(json!({
        "method": method,
        "path": path,
        "query": query,
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    }))
    .into_response();
    resp.headers_mut().insert("x-upstream", "yes".parse().unwrap());
    resp
}

#[derive(serde::Deserialize)]
struct Size {
    bytes: u64,
}

async fn big(Query(size): Query<Size>) -> Response {
    let mut resp = Body::from_stream(pattern_stream(size.bytes)).into_response();
    resp.headers_mut()
        .insert("content-type", "application/octet-stream".parse().unwrap());
    resp
}

/// Hashes the body as it streams in.
async fn sink(State(hits): State<Arc<AtomicUsize>>, body: Body) -> Json<Value> {
    hits.fetch_add(1, Ordering::SeqCst);
    let mut stream = body.into_data_stream();
    let (mut len, mut h) = (0u64, FNV_START);
    // An abandoned upload ends in an error: then the hash is of what came, and goes nowhere.
    while let Some(Ok(chunk)) = stream.next().await {
        len += chunk.len() as u64;
        h = fnv(h, &chunk);
    }
    Json(json!({"len": len, "hash": h.to_string()}))
}

/// Five events, 300 ms apart.
async fn sse() -> Response {
    let events = futures_util::stream::unfold(0u32, |i| async move {
        if i == 5 {
            return None;
        }
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        Some((
            Ok::<_, Infallible>(Bytes::from(format!("data: event-{i}\n\n"))),
            i + 1,
        ))
    });
    let mut resp = Body::from_stream(events).into_response();
    resp.headers_mut()
        .insert("content-type", "text/event-stream".parse().unwrap());
    resp
}

async fn ws_echo(ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(|mut socket| async move {
        while let Some(Ok(msg)) = socket.recv().await {
            let reply = match msg {
                AxMessage::Text(t) => AxMessage::Text(format!("echo:{}", t.as_str()).into()),
                AxMessage::Binary(b) => AxMessage::Binary(b),
                AxMessage::Close(_) => break,
                AxMessage::Ping(_) | AxMessage::Pong(_) => continue,
            };
            if socket.send(reply).await.is_err() {
                break;
            }
        }
    })
}

/// An SSE stream that never ends: an event every 20 ms.
async fn forever() -> Response {
    let events = futures_util::stream::unfold(0u64, |i| async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        Some((Ok::<_, Infallible>(Bytes::from(format!("data: {i}\n\n"))), i + 1))
    });
    let mut resp = Body::from_stream(events).into_response();
    resp.headers_mut()
        .insert("content-type", "text/event-stream".parse().unwrap());
    resp
}

/// Headers, then a body that never sends a byte and never ends.
async fn stall() -> Response {
    let silent = futures_util::stream::pending::<Result<Bytes, Infallible>>();
    Body::from_stream(silent).into_response()
}

/// A WebSocket that neither reads nor closes: only the test's end drops it.
async fn ws_hold(ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(|socket| async move {
        let _socket = socket;
        std::future::pending::<()>().await;
    })
}

/// A WebSocket that the server closes (drops) at once.
async fn ws_bye(ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(|socket| async move { drop(socket) })
}

/// Open file descriptors of a process.
fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

/// Resident memory of a process now, in KiB.
fn vm_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Peak resident memory of a process, in KiB.
fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

#[tokio::test]
async fn forwards_method_path_query_and_headers() {
    let agent = Agent::start_with(Opts {
        token: Some("proxy-secret".into()),
        ..Opts::default()
    });
    let up = upstream().await;
    let resp = agent
        .post(&format!("/proxy/{}/echo/a%20b/c?x=1&y=%2F", up.port))
        .header("x-custom", "kept")
        .header("x-forwarded-host", "dropped.example")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "dropped")
        .body("small body")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-upstream"], "yes");
    let got: Value = resp.json().await.unwrap();
    assert_eq!(got["method"], "POST");
    assert_eq!(got["path"], "/echo/a%20b/c", "path kept as sent");
    assert_eq!(got["query"], "x=1&y=%2F");
    assert_eq!(got["body"], "small body");
    let h = &got["headers"];
    assert_eq!(h["x-custom"], "kept");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert!(h.get("x-forwarded-host").is_none(), "{h}");
    assert!(
        h.get("x-hop").is_none(),
        "headers named by Connection are hop-by-hop: {h}"
    );
    assert!(
        h.get("x-execd-access-token").is_none(),
        "execd's token never reaches the sandbox's services: {h}"
    );
    for method in [
        reqwest::Method::PUT,
        reqwest::Method::DELETE,
        reqwest::Method::PATCH,
    ] {
        let got: Value = agent
            .req(method.clone(), &format!("/proxy/{}/echo/m", up.port))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(got["method"], method.as_str());
    }
}

#[tokio::test]
async fn streams_100_mb_both_ways_without_buffering() {
    let agent = Agent::start();
    let up = upstream().await;
    let total = 100 * MB;
    let expected = pattern_hash(total);

    // Download.
    let resp = agent
        .get(&format!("/proxy/{}/big?bytes={total}", up.port))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    let (mut len, mut h) = (0u64, FNV_START);
    while let Some(chunk) = body.next().await {
        let chunk = chunk.expect("download chunk");
        len += chunk.len() as u64;
        h = fnv(h, &chunk);
    }
    assert_eq!(len, total);
    assert_eq!(h, expected, "downloaded bytes intact");

    // Upload.
    let resp = agent
        .post(&format!("/proxy/{}/sink", up.port))
        .body(reqwest::Body::wrap_stream(pattern_stream(total)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let got: Value = resp.json().await.unwrap();
    assert_eq!(got["len"], total);
    assert_eq!(got["hash"], expected.to_string(), "uploaded bytes intact");

    let peak_mib = vm_hwm_kib(agent.pid()) / 1024;
    eprintln!("execd peak RSS after relaying 2 x 100 MiB: {peak_mib} MiB");
    assert!(
        peak_mib < 40,
        "execd peaked at {peak_mib} MiB while relaying 2 × 100 MiB: it buffers"
    );
}

#[tokio::test]
async fn sse_events_arrive_one_by_one() {
    let agent = Agent::start();
    let up = upstream().await;
    let started = Instant::now();
    let resp = agent
        .get(&format!("/proxy/{}/sse", up.port))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.bytes_stream();
    let mut text = String::new();
    let mut arrivals = Vec::new();
    while let Some(chunk) = body.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        while arrivals.len() < 5 && text.contains(&format!("event-{}\n\n", arrivals.len())) {
            arrivals.push(started.elapsed());
        }
    }
    assert_eq!(arrivals.len(), 5, "{text:?}");
    // The stream lasts 1.2 s; the first event must not wait for the rest.
    assert!(
        arrivals[0] < Duration::from_millis(900),
        "first event after {:?}: buffered",
        arrivals[0]
    );
    for pair in arrivals.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap > Duration::from_millis(150),
            "events arrived together ({arrivals:?})"
        );
    }
}

#[tokio::test]
async fn relays_a_websocket() {
    let agent = Agent::start();
    let up = upstream().await;
    let mut ws = ws_connect(&agent, &format!("/proxy/{}/ws", up.port))
        .await
        .expect("websocket through the proxy");
    ws.send(Message::Text("hello".into())).await.unwrap();
    let big: Vec<u8> = (0..(1 << 20)).map(|i: u32| (i % 251) as u8).collect();
    ws.send(Message::Binary(big.clone().into())).await.unwrap();
    let mut replies = Vec::new();
    while replies.len() < 2 {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("reply in time")
            .expect("open")
            .expect("ok")
        {
            Message::Text(t) => replies.push(t.as_str().as_bytes().to_vec()),
            Message::Binary(b) => replies.push(b.to_vec()),
            _ => {}
        }
    }
    assert_eq!(replies[0], b"echo:hello");
    assert_eq!(replies[1], big);
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn bad_ports_are_400_and_closed_ports_502() {
    let agent = Agent::start();
    for path in [
        "/proxy",
        "/proxy/",
        "/proxy/abc/x",
        "/proxy/0/x",
        "/proxy/70000/",
        "/proxy/-5/",
    ] {
        let resp = agent.get(path).send().await.unwrap();
        assert_eq!(resp.status(), 400, "{path}");
        let body: Value = resp.json().await.unwrap();
        assert!(body["message"].as_str().unwrap().contains("port"), "{body}");
    }
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let resp = agent
        .get(&format!("/proxy/{closed}/anything"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "BAD_GATEWAY");
}

#[tokio::test]
async fn the_token_guards_the_proxy() {
    let agent = Agent::start_with(Opts {
        token: Some("proxy-secret".into()),
        ..Opts::default()
    });
    let up = upstream().await;
    let url = agent.url(&format!("/proxy/{}/echo/x", up.port));
    let resp = reqwest::get(&url).await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(up.hits.load(Ordering::SeqCst), 0, "nothing reached the service");
    let resp = agent
        .get(&format!("/proxy/{}/echo/x", up.port))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(up.hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn reaches_execd_itself() {
    let agent = Agent::start_with(Opts {
        token: Some("loop-secret".into()),
        ..Opts::default()
    });
    let me = agent.port;
    let resp = agent.get(&format!("/proxy/{me}/ping")).send().await.unwrap();
    assert_eq!(resp.status(), 200, "the token travels on to execd itself");
    let events = agent
        .stream(&format!("/proxy/{me}/command"), json!({"command": "echo looped"}))
        .await;
    assert_eq!(crate::util::texts(&events, "stdout"), ["looped"]);

    // The PTY WebSocket through the proxy, back into execd.
    let resp = agent.post(&format!("/proxy/{me}/pty")).send().await.unwrap();
    assert_eq!(resp.status(), 201);
    let id = resp.json::<Value>().await.unwrap()["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut ws = ws_connect(&agent, &format!("/proxy/{me}/pty/{id}/ws"))
        .await
        .expect("pty websocket through the proxy");
    let first = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let connected: Value = serde_json::from_str(first.to_text().unwrap()).unwrap();
    assert_eq!(connected["type"], "connected");
}

/// `/proxy/{port}` repeated `depth` times.
fn chain(port: u16, depth: usize) -> String {
    format!("/proxy/{port}").repeat(depth)
}

/// A client that keeps no idle connections, so that every connection to execd it opened is
/// closed once its request is done, and only execd's own descriptors stay.
fn unpooled() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

fn with_token(agent: &Agent, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    match &agent.token {
        Some(t) => req.header("X-EXECD-ACCESS-TOKEN", t),
        None => req,
    }
}

#[tokio::test]
async fn issue19_a_deep_self_proxy_chain_is_refused_cheaply() {
    let agent = Agent::start_with(Opts {
        token: Some("loop-secret".into()),
        env: vec![("EXECD_KERNEL_POOL".into(), "0".into())],
        ..Opts::default()
    });
    let (me, pid) = (agent.port, agent.pid());
    let fds = fd_count(pid);
    let client = unpooled();
    for depth in [2, 3, 5_000] {
        let path = format!("{}/ping", chain(me, depth));
        let resp = tokio::time::timeout(
            Duration::from_secs(30),
            with_token(&agent, client.get(agent.url(&path))).send(),
        )
        .await
        .unwrap_or_else(|_| panic!("a {depth}-deep chain is answered at once"))
        .unwrap();
        assert_eq!(resp.status(), 400, "depth {depth}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["code"], "INVALID_REQUEST_BODY", "{body}");
        let message = body["message"].as_str().unwrap();
        assert!(
            message.contains("proxy loop") && message.contains(&format!("/proxy/{me}")),
            "{message}"
        );
    }
    // The refusals held on to nothing (one level is served in-process, the second refused);
    // execd closes its side of each finished connection as soon as it sees the client's.
    eventually(10, "execd's descriptors back to where they started", async || {
        (fd_count(pid) <= fds).then_some(())
    })
    .await;

    // One level to execd itself, then on to another port, is fine; the token stays behind.
    let up = upstream().await;
    let path = format!("/proxy/{me}/proxy/{}/echo/x%2Fy?z=%20", up.port);
    let resp = with_token(&agent, client.get(agent.url(&path)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let got: Value = resp.json().await.unwrap();
    assert_eq!(
        (got["path"].as_str(), got["query"].as_str()),
        (Some("/echo/x%2Fy"), Some("z=%20"))
    );
    assert!(got["headers"].get("x-execd-access-token").is_none(), "{got}");
}

#[tokio::test]
async fn issue19_proxied_connections_are_released() {
    let agent = Agent::start_with(Opts {
        token: Some("leak-secret".into()),
        env: vec![("EXECD_KERNEL_POOL".into(), "0".into())],
        ..Opts::default()
    });
    let pid = agent.pid();
    let up = upstream().await;
    let client = unpooled();
    let (fds, rss_start) = (fd_count(pid), vm_rss_kib(pid));
    // Client ends of tunnels whose server side closed: held open, never read, until the end.
    let mut idle_clients = Vec::new();

    // The first round is a warm-up: the figures after it are the ones later rounds must keep
    // (allocators keep some freed memory, so not the figure at start); then four rounds more.
    let mut rss_after_first = 0;
    for (rounds, what) in [(0..1, "after the first round"), (1..5, "after five rounds")] {
        for round in rounds {
            idle_clients.push(abandon_proxied_requests(&agent, &up, &client, round).await);
        }
        // Tunnels linger 5 s once one side ends, idle pooled connections 10 s.
        let back = eventually(
            60,
            &format!("execd's descriptors back to where they started {what}"),
            async || {
                let now = fd_count(pid);
                (now <= fds).then_some(now)
            },
        )
        .await;
        let rss = vm_rss_kib(pid);
        eprintln!("{what}: {back} fds (started with {fds}), {rss} KiB RSS (started with {rss_start})");
        if rss_after_first == 0 {
            rss_after_first = rss;
        }
    }
    // Rounds must not add up (one deep chain used to cost hundreds of MB).
    let rss = vm_rss_kib(pid);
    assert!(
        rss <= rss_after_first + 8 * 1024,
        "RSS grew from {rss_after_first} KiB after the first round to {rss} KiB"
    );
    drop(idle_clients);
}

/// One of each way a proxied request can be left behind, through execd itself and through the
/// relay to `up`: a deep self-proxy chain, ten completed requests at once (pooled connections),
/// abandoned SSE streams (proxied and in-process), an answer that never sends a byte, an
/// upload abandoned mid-body, tunnels whose client or server side went away, and the PTY
/// WebSocket in-process dropped without a close frame. Returns the client end of the tunnel
/// whose server side closed, for the caller to hold (never read) until the end of the test.
async fn abandon_proxied_requests(
    agent: &Agent,
    up: &Upstream,
    client: &reqwest::Client,
    round: usize,
) -> impl Sized {
    let me = agent.port;
    // A deep chain through execd itself.
    let path = format!("{}/ping", chain(me, 5_000));
    let resp = with_token(agent, client.get(agent.url(&path)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);

    // Requests that complete through the relay's pool (ten at once: ten connections).
    let echoes = (0..10).map(|i| {
        with_token(
            agent,
            client.post(agent.url(&format!("/proxy/{}/echo/{i}", up.port))),
        )
        .body("x")
        .send()
    });
    for resp in futures_util::future::join_all(echoes).await {
        assert_eq!(resp.unwrap().status(), 200);
    }

    // A proxied SSE stream (another port), abandoned after its first event.
    let resp = with_token(
        agent,
        client.get(agent.url(&format!("/proxy/{}/forever", up.port))),
    )
    .send()
    .await
    .unwrap();
    let mut body = resp.bytes_stream();
    body.next().await.unwrap().unwrap();
    drop(body);

    // A proxied answer that never sends a body byte, abandoned.
    let resp = with_token(agent, client.get(agent.url(&format!("/proxy/{}/stall", up.port))))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    drop(resp);

    // An upload to another port, abandoned in the middle of its body.
    let hits = up.hits.load(Ordering::SeqCst);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(1);
    tx.send(Ok(Bytes::from(vec![b'u'; 64 << 10]))).await.unwrap();
    let upload = tokio::spawn(
        with_token(agent, client.post(agent.url(&format!("/proxy/{}/sink", up.port))))
            .body(reqwest::Body::wrap_stream(tokio_stream_of(rx)))
            .send(),
    );
    eventually(10, "the abandoned upload reaches the upstream", async || {
        (up.hits.load(Ordering::SeqCst) > hits).then_some(())
    })
    .await;
    upload.abort();
    drop(tx);

    // An in-process command stream, abandoned after its first line.
    let script = format!("echo first; sleep 0.{round}1");
    let resp = with_token(agent, client.post(agent.url(&format!("/proxy/{me}/command"))))
        .json(&json!({"command": script}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    let mut seen = String::new();
    while !seen.contains("first") {
        seen.push_str(&String::from_utf8_lossy(&body.next().await.unwrap().unwrap()));
    }
    drop(body);

    // A tunnel whose client goes away while the server side never closes.
    let ws = ws_connect(agent, &format!("/proxy/{}/hold", up.port))
        .await
        .unwrap();
    drop(ws);
    // A tunnel whose server side closes while the client never reads nor closes.
    let idle_client = ws_connect(agent, &format!("/proxy/{}/bye", up.port))
        .await
        .unwrap();
    // The PTY WebSocket in-process, dropped without a close frame.
    let resp = with_token(agent, client.post(agent.url(&format!("/proxy/{me}/pty"))))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let id = resp.json::<Value>().await.unwrap()["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let ws = ws_connect(agent, &format!("/proxy/{me}/pty/{id}/ws"))
        .await
        .unwrap();
    drop(ws);
    let resp = with_token(agent, client.delete(agent.url(&format!("/proxy/{me}/pty/{id}"))))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    idle_client
}

/// A body stream from a channel.
fn tokio_stream_of(
    mut rx: tokio::sync::mpsc::Receiver<Result<Bytes, Infallible>>,
) -> impl futures_util::Stream<Item = Result<Bytes, Infallible>> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test]
async fn issue19_execd_serves_its_own_port_in_process() {
    let agent = Agent::start_with(Opts {
        token: Some("self-secret".into()),
        env: vec![("EXECD_KERNEL_POOL".into(), "0".into())],
        ..Opts::default()
    });
    let me = agent.port;
    let dir = tempfile::tempdir().unwrap();

    // Without the token: refused by the one check, before anything is served.
    let target = dir.path().join("not-created");
    let resp = reqwest::Client::new()
        .post(agent.url(&format!("/proxy/{me}/command")))
        .json(&json!({"command": format!("touch '{}'", target.display())}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let resp = reqwest::get(agent.url(&format!("/proxy/{me}/proxy/{me}/ping")))
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    // SSE streams event by event: the first line arrives while the command still waits for
    // the test to create a file.
    let go = dir.path().join("go");
    let script = format!(
        "echo first; while [ ! -e '{}' ]; do sleep 0.02; done; echo second",
        go.display()
    );
    let resp = agent
        .post(&format!("/proxy/{me}/command"))
        .json(&json!({"command": script}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.bytes_stream();
    let mut text = String::new();
    while !text.contains("\"first\"") {
        let chunk = tokio::time::timeout(Duration::from_secs(30), body.next())
            .await
            .expect("the first event arrives before the command ends")
            .expect("stream open")
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(!text.contains("second"), "{text}");
    std::fs::write(&go, "").unwrap();
    while let Some(chunk) = body.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    let events = crate::util::parse_sse(&text);
    assert_eq!(crate::util::texts(&events, "stdout"), ["first", "second"]);
    assert_eq!(events.last().unwrap().kind(), "execution_complete");
    assert!(!target.exists());

    // An upload through it, then a download whose query is percent-encoded.
    let content: Vec<u8> = (0..(3 << 20)).map(|i: u32| (i % 253) as u8).collect();
    let path = dir.path().join("a b%c.bin");
    let meta = crate::files::meta(&path, Value::Null, Value::Null, 0o644);
    let resp = crate::files::upload(
        &agent,
        &format!("/proxy/{me}"),
        &[
            crate::files::Part::Metadata {
                json: meta,
                filename: true,
            },
            crate::files::Part::File {
                name: "a b%c.bin",
                content: &content,
            },
        ],
    )
    .await;
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap_or_default());
    assert_eq!(std::fs::read(&path).unwrap(), content);
    let resp = agent
        .get(&format!(
            "/proxy/{me}/files/download?path={}",
            crate::files::q(&path)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap().as_ref(), content.as_slice());

    // The PTY WebSocket through it: input goes in, output comes back.
    let resp = agent.post(&format!("/proxy/{me}/pty")).send().await.unwrap();
    assert_eq!(resp.status(), 201);
    let id = resp.json::<Value>().await.unwrap()["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut ws = ws_connect(&agent, &format!("/proxy/{me}/pty/{id}/ws"))
        .await
        .expect("pty websocket in-process");
    ws.send(Message::Text(
        r#"{"type":"stdin","data":"echo in-pro$((1+1))cess\n"}"#.into(),
    ))
    .await
    .unwrap();
    let mut seen = String::new();
    while !seen.contains("in-pro2cess") {
        let msg = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .expect("pty output in time")
            .expect("open")
            .expect("ok");
        match msg {
            Message::Text(t) => seen.push_str(t.as_str()),
            Message::Binary(b) => seen.push_str(&String::from_utf8_lossy(&b)),
            _ => {}
        }
    }
    ws.close(None).await.unwrap();
}
