//! Figures of the files issue: a 1 GiB upload (multipart, fsynced, renamed into place; sent by
//! `curl`, and by the bench's own client for context) and
//! download through execd beside copying the same file directly in the same run, execd's peak
//! RSS during them, and `/metrics` latency beside `/ping`.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use bytes::Bytes;
use futures_util::StreamExt as _;

use crate::harness::{client, mb, percentile_ms, proc_status_bytes, Agent, Ctx, Goal, Row};
use crate::Section;

/// The sections of this area, in the order they run.
pub fn sections() -> Vec<Section> {
    vec![
        Section {
            name: "transfer",
            run: |ctx| Box::pin(transfer(ctx)),
        },
        Section {
            name: "metrics",
            run: |ctx| Box::pin(metrics_latency(ctx)),
        },
    ]
}

const CHUNK: usize = 1 << 20;

/// Writes `size` bytes of incompressible data (a pseudo-random 1 MiB block, varied per MiB).
fn make_file(path: &std::path::Path, size: usize) -> anyhow::Result<()> {
    let mut block = vec![0u8; CHUNK];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for b in block.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    for i in 0..size / CHUNK {
        block[..8].copy_from_slice(&(i as u64).to_le_bytes());
        f.write_all(&block)?;
    }
    f.flush()?;
    // On disk before anything is timed: its writeback must not share the disk with the figures.
    f.get_ref().sync_all()?;
    Ok(())
}

/// Copy + fsync of the file with std: what an upload has to do at least.
fn copy_fsync(src: &std::path::Path, dst: &std::path::Path) -> anyhow::Result<Duration> {
    let t = Instant::now();
    std::fs::copy(src, dst)?;
    std::fs::File::open(dst)?.sync_all()?;
    Ok(t.elapsed())
}

/// Reads the whole file (from the page cache): what a download has to do at least.
fn read_all(src: &std::path::Path) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let mut f = std::fs::File::open(src)?;
    let mut buf = vec![0u8; CHUNK];
    while f.read(&mut buf)? > 0 {}
    Ok(t.elapsed())
}

/// `POST {url}` (execd's `/files/upload`) of `src` to `dst` as a streamed multipart body.
async fn upload(
    client: &reqwest::Client,
    url: &str,
    src: &std::path::Path,
    dst: &str,
) -> anyhow::Result<Duration> {
    let boundary = "execd-bench-boundary";
    let head = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"metadata\"; filename=\"metadata\"\r\n\
         Content-Type: application/json\r\n\r\n{{\"path\":\"{dst}\",\"mode\":644}}\r\n--{boundary}\r\n\
         Content-Disposition: form-data; name=\"file\"; filename=\"blob\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    );
    let tail = format!("\r\n--{boundary}--\r\n");
    let file = std::sync::Arc::new(std::fs::File::open(src)?);
    let len = file.metadata()?.len();
    let body = futures_util::stream::unfold(0u64, move |pos| {
        let file = std::sync::Arc::clone(&file);
        async move {
            if pos >= len {
                return None;
            }
            let read = tokio::task::spawn_blocking(move || {
                use std::os::unix::fs::FileExt;
                let mut buf = vec![0u8; CHUNK];
                let n = file.read_at(&mut buf, pos)?;
                buf.truncate(n);
                Ok::<_, std::io::Error>(buf)
            })
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
            match read {
                Ok(buf) if buf.is_empty() => None,
                Ok(buf) => {
                    let n = buf.len() as u64;
                    Some((Ok::<_, std::io::Error>(Bytes::from(buf)), pos + n))
                }
                Err(e) => Some((Err(e), len)),
            }
        }
    });
    let stream = futures_util::stream::iter([Ok(Bytes::from(head))])
        .chain(body)
        .chain(futures_util::stream::iter([Ok(Bytes::from(tail))]));
    let t = Instant::now();
    let resp = client
        .post(url)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    ensure!(status == 200, "upload answered {status}: {text}");
    Ok(t.elapsed())
}

/// The same upload sent by `curl -F` (which streams the file from disk in its own process), so
/// that the client is not what bounds the figure: the bench's own client shares this process's
/// one thread with everything else. Returns the time from starting curl to its end.
async fn upload_curl(url: &str, src: &std::path::Path, dst: &str) -> anyhow::Result<Duration> {
    let meta = format!("metadata={{\"path\":\"{dst}\",\"mode\":644}};type=application/json");
    let file = format!("file=@{};type=application/octet-stream", src.display());
    let url = url.to_owned();
    tokio::task::spawn_blocking(move || {
        let t = Instant::now();
        let out = std::process::Command::new("curl")
            .args([
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-F",
                &meta,
                "-F",
                &file,
                &url,
            ])
            .output()
            .context("cannot run curl (the upload figure's client)")?;
        let d = t.elapsed();
        let code = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.success() && code == "200",
            "curl upload answered {code}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(d)
    })
    .await?
}

/// A server on loopback whose one route reads a request body to its end and answers 200: the
/// rate at which the bench client alone can send an upload. Returns the route's URL.
async fn sink() -> anyhow::Result<String> {
    use axum::http::StatusCode;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let route = axum::routing::post(|body: axum::body::Body| async move {
        let mut chunks = body.into_data_stream();
        while let Some(chunk) = chunks.next().await {
            if chunk.is_err() {
                return StatusCode::BAD_REQUEST;
            }
        }
        StatusCode::OK
    });
    let app = axum::Router::new().route("/sink", route);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(format!("http://{addr}/sink"))
}

/// `GET /files/download` of `path`, counting the bytes.
async fn download(
    client: &reqwest::Client,
    agent: &Agent,
    path: &str,
    expect: u64,
) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let mut resp = client
        .get(agent.url("/files/download"))
        .query(&[("path", path)])
        .send()
        .await?;
    ensure!(resp.status() == 200, "download answered {}", resp.status());
    let mut n = 0u64;
    while let Some(chunk) = resp.chunk().await? {
        n += chunk.len() as u64;
    }
    ensure!(n == expect, "downloaded {n} of {expect} bytes");
    Ok(t.elapsed())
}

async fn transfer(ctx: &Ctx) -> anyhow::Result<Vec<Row>> {
    let size = if ctx.quick { 64 << 20 } else { 1 << 30 };
    // On the disk (not /tmp, which may be memory), like the files users move.
    let dir = tempfile::tempdir_in("/var/tmp").context("temp dir in /var/tmp")?;
    let src = dir.path().join("src.bin");
    make_file(&src, size)?;
    let agent = Agent::start(&ctx.agent)?;
    let client = client()?;
    let sink = sink().await?;
    let rounds = if ctx.quick { 1 } else { 3 };
    let (mut up, mut copy, mut down, mut read) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut alone, mut own) = (Vec::new(), Vec::new());
    let url = agent.url("/files/upload");
    for i in 0..rounds {
        let dst = dir.path().join(format!("up{i}.bin"));
        let dst_str = dst.to_str().context("path")?;
        up.push(upload_curl(&url, &src, dst_str).await?);
        ensure!(std::fs::metadata(&dst)?.len() == size as u64, "uploaded size");
        std::fs::remove_file(&dst)?;
        own.push(upload(&client, &url, &src, dst_str).await?);
        ensure!(std::fs::metadata(&dst)?.len() == size as u64, "uploaded size");
        std::fs::remove_file(&dst)?;
        let c = dir.path().join(format!("cp{i}.bin"));
        copy.push(copy_fsync(&src, &c)?);
        std::fs::remove_file(&c)?;
        down.push(download(&client, &agent, src.to_str().context("path")?, size as u64).await?);
        read.push(read_all(&src)?);
        // Each upload per round, for whoever looks into the spread between them.
        eprintln!(
            "bench: transfer round {i}: curl {:?}, own client {:?}",
            up[i], own[i]
        );
    }
    for _ in 0..rounds {
        alone.push(upload_curl(&sink, &src, "unused").await?);
    }
    let hwm = proc_status_bytes(agent.pid(), "VmHWM")?;
    let rate = |d: &[Duration]| size as f64 / 1e9 / (percentile_ms(d, 50.0) / 1e3);
    let amount = if size >= 1 << 30 {
        format!("{} GiB", size >> 30)
    } else {
        format!("{} MiB", size >> 20)
    };
    Ok(vec![
        Row::new(
            format!("upload of {amount} (multipart, fsync, rename; `curl -F` as the client), median of {rounds}"),
            rate(&up),
            "GB/s",
        )
        .anchor("copy + fsync of the same file with std", rate(&copy))
        .goal(Goal::AtLeast(1.0))
        .goal(Goal::RatioAtLeast(0.5)),
        Row::new(
            format!("context: `curl` alone: the same upload to a server that discards it, median of {rounds}"),
            rate(&alone),
            "GB/s",
        )
        .anchor("the upload through execd", rate(&up)),
        Row::new(
            format!("context: the same upload from the bench's own client (reqwest, on this process's one thread), median of {rounds}"),
            rate(&own),
            "GB/s",
        )
        .anchor("with `curl` as the client", rate(&up)),
        Row::new(
            format!("download of {amount}, median of {rounds}"),
            rate(&down),
            "GB/s",
        )
        .anchor("reading the same file directly", rate(&read))
        .goal(Goal::AtLeast(1.0)),
        Row::new("agent peak RSS (VmHWM) after the transfers", mb(hwm), "MB").goal(Goal::AtMost(30.0)),
    ])
}

async fn metrics_latency(ctx: &Ctx) -> anyhow::Result<Vec<Row>> {
    let agent = Agent::start(&ctx.agent)?;
    let client = client()?;
    let runs = ctx.count(500);
    let (mut metrics, mut ping) = (Vec::new(), Vec::new());
    for i in 0..runs + 20 {
        let t = Instant::now();
        let resp = client.get(agent.url("/metrics")).send().await?;
        ensure!(resp.status() == 200, "/metrics answered {}", resp.status());
        resp.bytes().await?;
        let m = t.elapsed();
        let t = Instant::now();
        client.get(agent.url("/ping")).send().await?.bytes().await?;
        let p = t.elapsed();
        if i >= 20 {
            metrics.push(m);
            ping.push(p);
        }
    }
    Ok(vec![Row::new(
        format!("`GET /metrics` latency, p50 (n={runs})"),
        percentile_ms(&metrics, 50.0),
        "ms",
    )
    .anchor("`GET /ping`, p50", percentile_ms(&ping, 50.0))
    .goal(Goal::AtMost(1.0))])
}
