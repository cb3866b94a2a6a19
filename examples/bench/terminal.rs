//! Figures of the PTY and proxy issue: keystroke echo through a PTY over the WebSocket beside
//! a JSON ping/pong on the same socket, and the port proxy's added latency and throughput
//! beside talking to the same local server directly.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::harness::{percentile_ms, Agent, Ctx, Row};
use crate::Section;

/// The sections of this area, in the order they run.
pub fn sections() -> Vec<Section> {
    vec![
        Section {
            name: "pty",
            run: |ctx| Box::pin(keystroke_echo(ctx)),
        },
        Section {
            name: "proxy",
            run: |ctx| Box::pin(proxy(ctx)),
        },
    ]
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Reads frames until `want` accepts one; fails after 5 s.
async fn until(ws: &mut Ws, mut want: impl FnMut(&Message) -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = tokio::time::timeout(left, ws.next())
            .await
            .context("no frame within 5 s")?;
        let msg = msg.context("socket closed")??;
        if want(&msg) {
            return Ok(());
        }
    }
}

fn is_stdout_containing(msg: &Message, needle: &[u8]) -> bool {
    matches!(msg, Message::Binary(b) if b.first() == Some(&0x01) && b[1..].windows(needle.len()).any(|w| w == needle))
}

async fn keystroke_echo(ctx: &Ctx) -> anyhow::Result<Vec<Row>> {
    let agent = Agent::start(&ctx.agent)?;
    let client = reqwest::Client::builder().no_proxy().build()?;
    let created: Value = client
        .post(agent.url("/pty"))
        .json(&json!({}))
        .send()
        .await?
        .json()
        .await?;
    let id = created["session_id"]
        .as_str()
        .context("no session id")?
        .to_owned();
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/pty/{id}/ws", agent.addr)).await?;
    until(
        &mut ws,
        |m| matches!(m, Message::Text(t) if t.contains("connected")),
    )
    .await?;
    // Let the shell print its prompt, then type `a` and backspace in turn; each keystroke's
    // echo comes back as stdout frames.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let runs = ctx.count(400);
    let (mut keys, mut pings) = (Vec::new(), Vec::new());
    for i in 0..runs + 20 {
        let (key, echo): (&[u8], &[u8]) = if i % 2 == 0 {
            (b"a", b"a")
        } else {
            (b"\x7f", b"\x08")
        };
        let t = Instant::now();
        ws.send(Message::Binary([&[0x00u8][..], key].concat().into()))
            .await?;
        until(&mut ws, |m| is_stdout_containing(m, echo)).await?;
        let k = t.elapsed();
        let t = Instant::now();
        ws.send(Message::Text(r#"{"type":"ping"}"#.into())).await?;
        until(&mut ws, |m| matches!(m, Message::Text(t) if t.contains("pong"))).await?;
        let p = t.elapsed();
        if i >= 20 {
            keys.push(k);
            pings.push(p);
        }
    }
    let _ = ws.close(None).await;
    Ok(vec![Row::new(
        format!("PTY keystroke echo round trip, p50 (n={runs})"),
        percentile_ms(&keys, 50.0),
        "ms",
    )
    .anchor(
        "JSON ping → pong on the same WebSocket, p50",
        percentile_ms(&pings, 50.0),
    )])
}

/// A local HTTP server: `/small` answers "ok", `/big?mib=N` streams N MiB.
async fn local_server() -> anyhow::Result<(String, tokio::task::JoinHandle<()>)> {
    use axum::routing::get;
    let app = axum::Router::new().route("/small", get(|| async { "ok" })).route(
        "/big",
        get(
            |q: axum::extract::Query<std::collections::HashMap<String, usize>>| async move {
                let mib = q.get("mib").copied().unwrap_or(1);
                let chunk = bytes::Bytes::from(vec![7u8; 1 << 20]);
                let stream =
                    futures_util::stream::iter((0..mib).map(move |_| Ok::<_, std::io::Error>(chunk.clone())));
                axum::body::Body::from_stream(stream)
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((addr, task))
}

async fn fetch(client: &reqwest::Client, url: &str) -> anyhow::Result<(Duration, u64)> {
    let t = Instant::now();
    let mut resp = client.get(url).send().await?;
    ensure!(resp.status() == 200, "{url} answered {}", resp.status());
    let mut n = 0u64;
    while let Some(chunk) = resp.chunk().await? {
        n += chunk.len() as u64;
    }
    Ok((t.elapsed(), n))
}

async fn proxy(ctx: &Ctx) -> anyhow::Result<Vec<Row>> {
    let agent = Agent::start(&ctx.agent)?;
    let (addr, server) = local_server().await?;
    let port = addr.rsplit(':').next().context("server port")?;
    let client = reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .http1_only()
        .build()?;
    let direct = format!("http://{addr}");
    let proxied = agent.url(&format!("/proxy/{port}"));
    let runs = ctx.count(1000);
    let (mut d_small, mut p_small) = (Vec::new(), Vec::new());
    for i in 0..runs + 50 {
        let (d, _) = fetch(&client, &format!("{direct}/small")).await?;
        let (p, _) = fetch(&client, &format!("{proxied}/small")).await?;
        if i >= 50 {
            d_small.push(d);
            p_small.push(p);
        }
    }
    let mib = if ctx.quick { 64 } else { 1024 };
    let (mut d_big, mut p_big) = (Vec::new(), Vec::new());
    for _ in 0..if ctx.quick { 1 } else { 3 } {
        let (d, n) = fetch(&client, &format!("{direct}/big?mib={mib}")).await?;
        let (p, m) = fetch(&client, &format!("{proxied}/big?mib={mib}")).await?;
        if n != (mib as u64) << 20 || m != n {
            bail!("short transfer: direct {n}, proxied {m}");
        }
        d_big.push(d);
        p_big.push(p);
    }
    server.abort();
    let rate = |d: &[Duration]| (mib as f64 * 1048576.0) / 1e6 / (percentile_ms(d, 50.0) / 1e3);
    let added = percentile_ms(&p_small, 50.0) - percentile_ms(&d_small, 50.0);
    Ok(vec![
        Row::new(
            format!("small GET through `/proxy/{{port}}`, p50 (n={runs})"),
            percentile_ms(&p_small, 50.0),
            "ms",
        )
        .anchor("the same GET direct, p50", percentile_ms(&d_small, 50.0)),
        Row::new("context: latency the proxy adds, p50", added, "ms"),
        Row::new(
            format!("{mib} MiB download through the proxy, median"),
            rate(&p_big),
            "MB/s",
        )
        .anchor("the same download direct", rate(&d_big)),
    ])
}
