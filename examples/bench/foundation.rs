//! Figures of the foundation issue: binary size, start → ready, idle RSS, the `true` round
//! trip of `POST /command` (directly and through `/proxy/<execd's port>`, the endpoint shape
//! sandboxd hands out), and stdout streaming throughput with the agent's peak RSS.
//!
//! Every figure is measured next to its anchor in the same loop (interleaved), so load from
//! other processes on the machine hits both alike.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use reqwest::header::CONTENT_TYPE;

use crate::harness::{
    check_completed, client, mb, median, percentile_ms, ping_raw, proc_cpu, proc_status_bytes, run_stream,
    rusage_cpu, spawn_wait, time, Agent, Ctx, Goal, Row,
};
use crate::Section;

/// Upper bound on the wall time of one measuring loop; loops stop early past it.
const LOOP_BUDGET: Duration = Duration::from_secs(45);
/// Bytes of the end of an SSE body kept to check its last event.
const TAIL: usize = 4096;

/// The sections of this area, in the order they run.
pub fn sections() -> Vec<Section> {
    vec![
        Section {
            name: "size",
            run: |ctx| Box::pin(async move { binary_size(ctx) }),
        },
        Section {
            name: "start",
            run: |ctx| Box::pin(async move { start_to_ready(ctx) }),
        },
        Section {
            name: "idle",
            run: |ctx| Box::pin(async move { idle_rss(ctx) }),
        },
        Section {
            name: "roundtrip",
            run: |ctx| Box::pin(round_trip(ctx)),
        },
        Section {
            name: "selfproxy",
            run: |ctx| Box::pin(self_proxy(ctx)),
        },
        Section {
            name: "stream",
            run: |ctx| Box::pin(streaming(ctx)),
        },
    ]
}

/// Size of the agent binary against the 5 MB budget.
fn binary_size(ctx: &Ctx) -> anyhow::Result<Vec<Row>> {
    let bytes = std::fs::metadata(&ctx.agent)
        .with_context(|| format!("cannot stat {}", ctx.agent.display()))?
        .len();
    Ok(vec![Row::new(
        format!("agent binary size ({bytes} bytes, static musl)"),
        mb(bytes),
        "MB",
    )
    .goal(Goal::AtMost(5.0))])
}

/// Spawn → `listening on` line → first 200 from `GET /ping` on a fresh connection.
fn start_to_ready(ctx: &Ctx) -> anyhow::Result<Vec<Row>> {
    let (warm, runs) = (2, ctx.count(20));
    let (mut ready, mut line, mut anchor) = (Vec::new(), Vec::new(), Vec::new());
    let deadline = Instant::now() + LOOP_BUDGET;
    for i in 0..warm + runs {
        let a = spawn_wait("/bin/true", &[])?;
        let agent = Agent::start(&ctx.agent)?;
        ping_raw(&agent.addr)?;
        let r = agent.spawned.elapsed();
        if i >= warm {
            anchor.push(a);
            ready.push(r);
            line.push(agent.line_after);
        }
        drop(agent);
        if Instant::now() > deadline {
            break;
        }
    }
    let anchor_name = format!("spawn+wait `/bin/true`, p50 (n={})", anchor.len());
    let anchor_p50 = percentile_ms(&anchor, 50.0);
    Ok(vec![
        Row::new(
            format!("start → `/ping` 200, p50 (n={})", ready.len()),
            percentile_ms(&ready, 50.0),
            "ms",
        )
        .anchor(&anchor_name, anchor_p50)
        .goal(Goal::AtMost(10.0)),
        Row::new(
            "start → `listening on` line, p50",
            percentile_ms(&line, 50.0),
            "ms",
        )
        .anchor(&anchor_name, anchor_p50),
    ])
}

/// VmRSS of freshly started agents (after one `/ping`) next to an idle `sleep`.
fn idle_rss(ctx: &Ctx) -> anyhow::Result<Vec<Row>> {
    let runs = if ctx.quick { 1 } else { 3 };
    let (mut agent_rss, mut sleep_rss) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let agent = Agent::start(&ctx.agent)?;
        ping_raw(&agent.addr)?;
        let mut sleep = Command::new("sleep")
            .arg("100")
            .stdin(Stdio::null())
            .spawn()
            .context("cannot start sleep")?;
        std::thread::sleep(Duration::from_millis(300));
        let a = proc_status_bytes(agent.pid(), "VmRSS");
        let s = proc_status_bytes(sleep.id(), "VmRSS");
        let _ = sleep.kill();
        let _ = sleep.wait();
        agent_rss.push(mb(a?));
        sleep_rss.push(mb(s?));
    }
    Ok(vec![Row::new(
        format!("agent idle RSS after start + one `/ping` (VmRSS, median of {runs})"),
        median(&agent_rss),
        "MB",
    )
    .anchor("idle `sleep 100` (VmRSS)", median(&sleep_rss))
    .goal(Goal::AtMost(5.0))])
}

/// `{"command":"true"}` and `{"argv":["/bin/true"]}` round trips over one keep-alive
/// connection, interleaved with fork+exec+wait of `/bin/true` (the anchor) and of
/// `bash -c true` (what the shell form costs by itself).
async fn round_trip(ctx: &Ctx) -> anyhow::Result<Vec<Row>> {
    const SHELL: &str = r#"{"command":"true"}"#;
    const ARGV: &str = r#"{"argv":["/bin/true"]}"#;
    let agent = Agent::start(&ctx.agent)?;
    let client = client()?;
    let url = agent.url("/command");
    run_stream(&client, &url, SHELL).await?;
    let rss_start = proc_status_bytes(agent.pid(), "VmRSS")?;

    let (warm, runs) = (ctx.count(50), ctx.count(300));
    let mut samples: [Vec<Duration>; 4] = Default::default();
    let deadline = Instant::now() + LOOP_BUDGET;
    for i in 0..warm + runs {
        // Rotate the order so no measurement always follows the same one.
        for k in 0..4 {
            let which = (i + k) % 4;
            let d = match which {
                0 => spawn_wait("/bin/true", &[])?,
                1 => run_stream(&client, &url, SHELL).await?,
                2 => run_stream(&client, &url, ARGV).await?,
                _ => spawn_wait("bash", &["-c", "true"])?,
            };
            if i >= warm {
                samples[which].push(d);
            }
        }
        if Instant::now() > deadline {
            break;
        }
    }
    let rss_end = proc_status_bytes(agent.pid(), "VmRSS")?;
    let [anchor, shell, argv, bash] = &samples;
    let n = anchor.len();
    let p = |s: &[Duration], q| percentile_ms(s, q);
    let a50 = format!("fork+exec+wait `/bin/true` from Rust, p50 (n={n})");
    let a99 = format!("fork+exec+wait `/bin/true` from Rust, p99 (n={n})");
    Ok(vec![
        Row::new(format!("`{SHELL}` round trip, p50 (n={n})"), p(shell, 50.0), "ms")
            .anchor(&a50, p(anchor, 50.0))
            .goal(Goal::AtMost(1.0))
            .goal(Goal::RatioAtMost(2.5)),
        Row::new(format!("`{SHELL}` round trip, p99"), p(shell, 99.0), "ms").anchor(&a99, p(anchor, 99.0)),
        Row::new(format!("`{ARGV}` round trip, p50"), p(argv, 50.0), "ms")
            .anchor(&a50, p(anchor, 50.0))
            .goal(Goal::AtMost(1.0))
            .goal(Goal::RatioAtMost(2.5)),
        Row::new(format!("`{ARGV}` round trip, p99"), p(argv, 99.0), "ms").anchor(&a99, p(anchor, 99.0)),
        Row::new(
            "context: spawn+wait `bash -c true` from Rust, p50",
            p(bash, 50.0),
            "ms",
        )
        .anchor(&a50, p(anchor, 50.0)),
        Row::new(
            format!("per-command overhead: `{SHELL}` round trip − spawn+wait `bash -c true`, p50"),
            p(shell, 50.0) - p(bash, 50.0),
            "ms",
        )
        .goal(Goal::AtMost(0.2)),
        Row::new(
            format!("per-command overhead: `{SHELL}` round trip − spawn+wait `bash -c true`, p99"),
            p(shell, 99.0) - p(bash, 99.0),
            "ms",
        )
        .goal(Goal::AtMost(0.6)),
        Row::new(
            format!("per-command overhead: `{ARGV}` round trip − spawn+wait `/bin/true`, p50"),
            p(argv, 50.0) - p(anchor, 50.0),
            "ms",
        )
        .goal(Goal::AtMost(0.2)),
        Row::new(
            format!("per-command overhead: `{ARGV}` round trip − spawn+wait `/bin/true`, p99"),
            p(argv, 99.0) - p(anchor, 99.0),
            "ms",
        )
        .goal(Goal::AtMost(0.6)),
        Row::new(
            format!("agent VmRSS after {} commands", 1 + 2 * (warm + n)),
            mb(rss_end),
            "MB",
        )
        .anchor("same agent after its first command", mb(rss_start)),
    ])
}

/// `{"command":"true"}` through `/proxy/<execd's own port>/command` (served in-process)
/// against the same command on `/command`, alternating over one keep-alive connection: what
/// the self-proxy adds.
async fn self_proxy(ctx: &Ctx) -> anyhow::Result<Vec<Row>> {
    const SHELL: &str = r#"{"command":"true"}"#;
    let agent = Agent::start(&ctx.agent)?;
    let client = client()?;
    let port = agent
        .addr
        .rsplit(':')
        .next()
        .context("agent address without a port")?;
    let direct = agent.url("/command");
    let proxied = agent.url(&format!("/proxy/{port}/command"));
    run_stream(&client, &proxied, SHELL).await?;

    let (warm, runs) = (ctx.count(50), ctx.count(300));
    let mut samples: [Vec<Duration>; 2] = Default::default();
    let deadline = Instant::now() + LOOP_BUDGET;
    for i in 0..warm + runs {
        for k in 0..2 {
            let which = (i + k) % 2;
            let url = if which == 0 { &direct } else { &proxied };
            let d = run_stream(&client, url, SHELL).await?;
            if i >= warm {
                samples[which].push(d);
            }
        }
        if Instant::now() > deadline {
            break;
        }
    }
    let [direct, proxied] = &samples;
    let n = direct.len();
    let p = |s: &[Duration], q| percentile_ms(s, q);
    Ok(vec![
        Row::new(
            format!("`{SHELL}` round trip through `/proxy/<port>/command`, p50 (n={n})"),
            p(proxied, 50.0),
            "ms",
        )
        .anchor(format!("`{SHELL}` on `/command`, p50 (n={n})"), p(direct, 50.0)),
        Row::new(
            "context: latency the self-proxy adds, p50",
            p(proxied, 50.0) - p(direct, 50.0),
            "ms",
        )
        .goal(Goal::AtMost(0.05)),
        Row::new(
            format!("`{SHELL}` round trip through `/proxy/<port>/command`, p99"),
            p(proxied, 99.0),
            "ms",
        )
        .anchor(format!("`{SHELL}` on `/command`, p99"), p(direct, 99.0)),
    ])
}

/// Reads a whole SSE body, counting bytes and keeping only its tail, then checks that it ended
/// with `execution_complete`. Returns the wall time and the body's size. Nothing is parsed
/// on the way: that would measure the client.
async fn stream_command(
    client: &reqwest::Client,
    url: &str,
    body: String,
) -> anyhow::Result<(Duration, u64)> {
    let t = Instant::now();
    let mut resp = client
        .post(url)
        .header(CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await?;
    ensure!(resp.status() == 200, "POST /command answered {}", resp.status());
    let mut total = 0u64;
    let mut tail: Vec<u8> = Vec::with_capacity(3 * TAIL);
    while let Some(chunk) = resp.chunk().await? {
        total += chunk.len() as u64;
        if chunk.len() >= TAIL {
            tail.clear();
            tail.extend_from_slice(&chunk[chunk.len() - TAIL..]);
        } else {
            tail.extend_from_slice(&chunk);
            if tail.len() > 2 * TAIL {
                tail.drain(..tail.len() - TAIL);
            }
        }
    }
    let d = t.elapsed();
    check_completed(&tail)?;
    Ok((d, total))
}

/// The anchor: `cat file` into a pipe, read to the end from Rust. Returns the wall time and the
/// CPU time of `cat` plus the reading thread.
fn cat_to_pipe(file: &Path, size: u64) -> anyhow::Result<(Duration, Duration)> {
    let cpu_before = rusage_cpu(libc::RUSAGE_CHILDREN) + rusage_cpu(libc::RUSAGE_THREAD);
    let (d, read) = time(|| -> anyhow::Result<u64> {
        let mut child = Command::new("cat").arg(file).stdout(Stdio::piped()).spawn()?;
        let mut out = child.stdout.take().context("cat stdout not piped")?;
        let mut buf = vec![0u8; 256 << 10];
        let mut n = 0u64;
        loop {
            match out.read(&mut buf)? {
                0 => break,
                k => n += k as u64,
            }
        }
        ensure!(child.wait()?.success(), "cat failed");
        Ok(n)
    });
    let cpu = rusage_cpu(libc::RUSAGE_CHILDREN) + rusage_cpu(libc::RUSAGE_THREAD) - cpu_before;
    let read = read?;
    ensure!(read == size, "cat gave {read} bytes of {size}");
    Ok((d, cpu))
}

/// Buffered writes of `bytes` bytes, 512 KiB at a time, to a new file in `dir`, then removes
/// it: what a journal spilling all of a stream costs on that filesystem. Returns the wall time.
fn write_file(dir: &Path, bytes: u64) -> anyhow::Result<Duration> {
    let path = dir.join("spill-anchor");
    let chunk = vec![b'x'; 512 << 10];
    let (d, written) = time(|| -> anyhow::Result<()> {
        let mut f = std::fs::File::create(&path)?;
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            f.write_all(&chunk[..n])?;
            left -= n as u64;
        }
        Ok(())
    });
    let _ = std::fs::remove_file(&path);
    written.with_context(|| format!("cannot write {}", path.display()))?;
    Ok(d)
}

/// `cat` of a file of base64 lines through `POST /command` vs through a plain pipe, and what
/// it costs the agent: CPU time, peak RSS, and the journal spill (every SSE byte of a stream
/// larger than the journal's memory ring is written to the state dir).
async fn streaming(ctx: &Ctx) -> anyhow::Result<Vec<Row>> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("lines.b64");
    // 3 random bytes become 4 base64 characters; lines of 76 plus a newline.
    let raw_mib = if ctx.quick { 24 } else { 192 };
    let gen = format!("head -c {raw_mib}M /dev/urandom | base64 > '{}'", file.display());
    let status = Command::new("sh").args(["-c", &gen]).status()?;
    ensure!(status.success(), "cannot generate {}", file.display());
    let size = std::fs::metadata(&file)?.len();
    let small = size / 8;

    let agent = Agent::start(&ctx.agent)?;
    let client = client()?;
    let url = agent.url("/command");
    let cat = |limit: Option<u64>| {
        let command = match limit {
            Some(n) => format!("head -c {n} '{}'", file.display()),
            None => format!("cat '{}'", file.display()),
        };
        serde_json::json!({ "command": command }).to_string()
    };
    // A small stream first: the peak RSS after it is the anchor for the peak after the big ones.
    stream_command(&client, &url, cat(Some(small))).await?;
    let hwm_small = proc_status_bytes(agent.pid(), "VmHWM")?;

    let runs = if ctx.quick { 1 } else { 5 };
    let mut rate = Vec::new();
    let mut wire = Vec::new();
    let mut anchor_rate = Vec::new();
    let mut agent_cpu = Vec::new();
    let mut anchor_cpu = Vec::new();
    let mut sse_bytes = 0;
    let mut hwm_first = 0;
    let mut streams = 0;
    let deadline = Instant::now() + LOOP_BUDGET;
    for i in 0..=runs {
        let (a, a_cpu) = cat_to_pipe(&file, size)?;
        let cpu_before = proc_cpu(agent.pid())?;
        let (d, total) = stream_command(&client, &url, cat(None)).await?;
        let cpu = proc_cpu(agent.pid())? - cpu_before;
        ensure!(
            total > size,
            "SSE body ({total} bytes) is smaller than the payload ({size} bytes)"
        );
        streams += 1;
        if i == 0 {
            hwm_first = proc_status_bytes(agent.pid(), "VmHWM")?;
        }
        // The first round warms the page cache and the agent up.
        if i > 0 {
            anchor_rate.push(mb(size) / a.as_secs_f64());
            rate.push(mb(size) / d.as_secs_f64());
            wire.push(mb(total) / d.as_secs_f64());
            anchor_cpu.push(a_cpu.as_secs_f64() * 1e3);
            agent_cpu.push(cpu.as_secs_f64() * 1e3);
            sse_bytes = total;
        }
        if Instant::now() > deadline && i > 0 {
            break;
        }
    }
    let hwm = proc_status_bytes(agent.pid(), "VmHWM")?;
    drop(agent); // its journals (and their spill files) go with its state dir
    let spill = write_file(dir.path(), sse_bytes)?;

    let n = rate.len();
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let pipe = "`cat` into a pipe read by Rust";
    Ok(vec![
        Row::new(
            format!(
                "stdout streaming: `cat` of {:.0} MiB of base64 lines, payload rate (median of {n})",
                mib(size)
            ),
            median(&rate),
            "MB/s",
        )
        .anchor(pipe, median(&anchor_rate))
        .goal(Goal::AtLeast(600.0))
        .goal(Goal::RatioAtLeast(0.4)),
        Row::new(
            "context: agent CPU time (user+sys) per stream",
            median(&agent_cpu),
            "ms",
        )
        .anchor(format!("{pipe}: CPU of `cat` + reader"), median(&anchor_cpu)),
        Row::new(
            format!(
                "context: SSE rate on the wire ({:.2}× the payload)",
                sse_bytes as f64 / size as f64
            ),
            median(&wire),
            "MB/s",
        )
        .anchor(
            "buffered write of as many bytes to a file in the state dir's filesystem (journal spill)",
            mb(sse_bytes) / spill.as_secs_f64(),
        ),
        Row::new(
            format!(
                "agent peak RSS (VmHWM) after {streams} streams of {:.0} MiB",
                mib(size)
            ),
            mb(hwm),
            "MB",
        )
        .anchor(
            format!("same agent after streaming {:.0} MiB", mib(small)),
            mb(hwm_small),
        )
        .goal(Goal::AtMost(16.0))
        .goal(Goal::RatioAtMost(1.25)),
        Row::new(
            format!("context: agent VmHWM after its first {:.0} MiB stream", mib(size)),
            mb(hwm_first),
            "MB",
        )
        .anchor(
            format!("same agent after streaming {:.0} MiB", mib(small)),
            mb(hwm_small),
        ),
    ])
}
