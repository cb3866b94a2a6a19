//! Load (issue 20, item 3): bounded loops on loopback that stop by themselves. The defaults are
//! small enough for CI; the figures come from `EXECD_LOAD=full` (1000 SSE followers,
//! 200 short commands, 50 sandbox creates, 500 API reads). Each test prints its figures on
//! stderr (`--no-capture` to see them); only errors, losses and duplicates are asserted.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;

use crate::sandboxd::{docker, image, sandbox_body, Sandboxd, RUN_LABEL};
use crate::util::{eventually, marker, parse_sse, Agent, Event};

/// `small` in CI, `full` with `EXECD_LOAD=full`.
fn scale(small: usize, full: usize) -> usize {
    match std::env::var("EXECD_LOAD").as_deref() {
        Ok("full") => full,
        _ => small,
    }
}

/// Resident set size of `pid` in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The `q`-quantile of sorted durations.
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// Reads a whole SSE response (bounded by `secs`).
async fn read_events(resp: reqwest::Response, secs: u64) -> Result<Vec<Event>, String> {
    let body = tokio::time::timeout(Duration::from_secs(secs), resp.text())
        .await
        .map_err(|_| "stream did not end in time".to_owned())?
        .map_err(|e| format!("read body: {e}"))?;
    Ok(parse_sse(&body))
}

/// Checks one follower's events: ids 1..n dense, `lines` stdout lines in order, complete.
fn check_follower(events: &[Event], lines: usize) -> Result<(), String> {
    for (i, e) in events.iter().enumerate() {
        if e.id != Some(i as u64 + 1) {
            return Err(format!("event {i} has id {:?}", e.id));
        }
    }
    let out: Vec<&str> = crate::util::texts(events, "stdout");
    if out.len() != lines {
        return Err(format!("{} stdout lines, not {lines}", out.len()));
    }
    for (i, line) in out.iter().enumerate() {
        if *line != format!("line{}", i + 1) {
            return Err(format!("line {i} is {line:?}"));
        }
    }
    match events.last().map(Event::kind) {
        Some("execution_complete") => Ok(()),
        other => Err(format!("ends with {other:?}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execd_under_followers_and_short_commands_loses_nothing() {
    let followers = scale(50, 1000);
    let shorts = scale(20, 200);
    let lines = scale(2_000, 20_000);
    let agent = Arc::new(Agent::start());
    let pid = agent.pid();
    let rss_idle = rss_kib(pid);
    let go = agent.state_dir.path().join(format!("go-{}", marker()));

    // The busy command: waits for the followers, then writes `lines` lines one by one.
    let busy = agent
        .post("/command")
        .json(&json!({"command": format!(
            "while [ ! -e {go} ]; do sleep 0.02; done; i=0; while [ $i -lt {lines} ]; do i=$((i+1)); echo line$i; done",
            go = go.display()
        )}))
        .send()
        .await
        .unwrap();
    assert_eq!(busy.status(), 200);
    let mut busy = busy;
    let mut head = String::new();
    let id = loop {
        head.push_str(&String::from_utf8_lossy(&busy.chunk().await.unwrap().unwrap()));
        if let Some(init) = parse_sse(&head[..head.rfind("\n\n").map_or(0, |i| i + 2)]).first() {
            break init.text().to_owned();
        }
    };

    // Sample RSS and /ping latency until the load is over, on a thread of its own so that the
    // followers' parsing in this process does not count as execd's latency.
    let done = Arc::new(AtomicUsize::new(0));
    let sampler = {
        let (url, done) = (agent.url("/ping"), Arc::clone(&done));
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let client = reqwest::Client::new();
                let (mut pings, mut peak, mut errors) = (Vec::new(), 0u64, Vec::new());
                while done.load(Ordering::SeqCst) == 0 {
                    peak = peak.max(rss_kib(pid));
                    let start = Instant::now();
                    match client.get(&url).send().await {
                        Ok(r) if r.status() == 200 => pings.push(start.elapsed()),
                        Ok(r) => errors.push(format!("status {}", r.status())),
                        Err(e) => errors.push(format!("{e:?}")),
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                (pings, peak, errors)
            })
        })
    };

    // Followers connect, and the command starts once every one has its response headers.
    let connected = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..followers)
        .map(|_| {
            let (agent, id, connected) = (Arc::clone(&agent), id.clone(), Arc::clone(&connected));
            tokio::spawn(async move {
                let resp = agent
                    .get(&format!("/command/{id}/events"))
                    .send()
                    .await
                    .map_err(|e| format!("connect: {e}"))?;
                connected.fetch_add(1, Ordering::SeqCst);
                if resp.status() != 200 {
                    return Err(format!("status {}", resp.status()));
                }
                let events = read_events(resp, 600).await?;
                check_follower(&events, lines)
            })
        })
        .collect();
    eventually(120, "every follower to connect", async || {
        (connected.load(Ordering::SeqCst) == followers).then_some(())
    })
    .await;
    std::fs::write(&go, b"").unwrap();
    // Short commands meanwhile.
    let short_tasks: Vec<_> = (0..shorts)
        .map(|i| {
            let agent = Arc::clone(&agent);
            tokio::spawn(async move {
                let resp = agent
                    .post("/command")
                    .json(&json!({"command": format!("echo short{i}")}))
                    .send()
                    .await
                    .map_err(|e| format!("send: {e}"))?;
                if resp.status() != 200 {
                    return Err(format!("status {}", resp.status()));
                }
                let events = read_events(resp, 300).await?;
                let out = crate::util::texts(&events, "stdout");
                match (out.as_slice(), events.last().map(Event::kind)) {
                    ([line], Some("execution_complete")) if *line == format!("short{i}") => Ok(()),
                    _ => Err(format!("short{i}: {:?}", crate::util::kinds(&events))),
                }
            })
        })
        .collect();
    let mut errors = Vec::new();
    for t in short_tasks.into_iter().chain(tasks) {
        if let Err(e) = t.await.unwrap() {
            errors.push(e);
        }
    }
    // The original response streams the same journal.
    let rest = tokio::time::timeout(Duration::from_secs(600), busy.text())
        .await
        .expect("the busy command's own stream ends")
        .unwrap();
    if let Err(e) = check_follower(&parse_sse(&(head + &rest)), lines) {
        errors.push(format!("the command's own stream: {e}"));
    }
    let elapsed = started.elapsed();
    done.store(1, Ordering::SeqCst);
    let (mut pings, rss_peak, ping_errors) = sampler.join().unwrap();
    pings.sort();
    eprintln!(
        "execd load: {followers} followers x {lines} lines + {shorts} short commands in {:.1} s; \
         errors {} (ping errors {}); RSS idle {} MiB, peak {} MiB; \
         /ping under load: n={} p50={:.1} ms p99={:.1} ms max={:.1} ms",
        elapsed.as_secs_f64(),
        errors.len(),
        ping_errors.len(),
        rss_idle / 1024,
        rss_peak / 1024,
        pings.len(),
        quantile(&pings, 0.5).as_secs_f64() * 1e3,
        quantile(&pings, 0.99).as_secs_f64() * 1e3,
        pings.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
    assert!(
        errors.is_empty(),
        "{} errors, first: {:?}",
        errors.len(),
        errors.first()
    );
    assert!(ping_errors.is_empty(), "/ping failed: {ping_errors:?}");
    // A journal keeps at most ~1 MiB in memory; followers are cursors, not copies.
    assert!(
        rss_peak < 512 * 1024,
        "execd RSS peaked at {} MiB",
        rss_peak / 1024
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandboxd_under_concurrent_creates_and_reads_answers_every_one() {
    if !crate::docker::docker_available() {
        return;
    }
    let creates = scale(5, 50);
    let reads = scale(50, 500);
    let busybox = image("busybox");
    let data = tempfile::tempdir().unwrap();
    let d = Arc::new(Sandboxd::start_with(
        data.path(),
        &marker(),
        &["--rate-create", "0", "--rate-read", "0"],
    ));
    let started = Instant::now();
    let create_tasks: Vec<_> = (0..creates)
        .map(|_| {
            let d = Arc::clone(&d);
            let mut body = sandbox_body(busybox, &["sleep", "100000"]);
            body["metadata"][RUN_LABEL] = json!(d.run);
            tokio::spawn(async move {
                let start = Instant::now();
                let (status, created) = d.json(Method::POST, "/v1/sandboxes", Some(body)).await;
                match (status.as_u16(), created["id"].as_str()) {
                    (202, Some(id)) => Ok((id.to_owned(), start.elapsed())),
                    _ => Err(format!("create: {status} {created}")),
                }
            })
        })
        .collect();
    // Reads while the creates run: the list.
    let read_tasks: Vec<_> = (0..reads)
        .map(|i| {
            let d = Arc::clone(&d);
            tokio::spawn(async move {
                let start = Instant::now();
                let (status, body) = d.json(Method::GET, "/v1/sandboxes?pageSize=100", None).await;
                if status != 200 {
                    return Err(format!("read {i}: {status} {body}"));
                }
                Ok(start.elapsed())
            })
        })
        .collect();
    let (mut errors, mut ids, mut create_times, mut read_times) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for t in create_tasks {
        match t.await.unwrap() {
            Ok((id, took)) => {
                ids.push(id);
                create_times.push(took);
            }
            Err(e) => errors.push(e),
        }
    }
    for t in read_tasks {
        match t.await.unwrap() {
            Ok(took) => read_times.push(took),
            Err(e) => errors.push(e),
        }
    }
    // Then 500 reads of the sandboxes themselves.
    let get_tasks: Vec<_> = (0..reads)
        .filter(|_| !ids.is_empty())
        .map(|i| {
            let d = Arc::clone(&d);
            let id = ids[i % ids.len()].clone();
            tokio::spawn(async move {
                let start = Instant::now();
                let (status, body) = d.info(&id).await;
                match (status.as_u16(), body["status"]["state"].as_str()) {
                    (200, Some("Running")) => Ok(start.elapsed()),
                    _ => Err(format!("get {id}: {status} {body}")),
                }
            })
        })
        .collect();
    for t in get_tasks {
        match t.await.unwrap() {
            Ok(took) => read_times.push(took),
            Err(e) => errors.push(e),
        }
    }
    let elapsed = started.elapsed();
    create_times.sort();
    read_times.sort();
    let running = docker(&["ps", "-q", "--filter", &format!("label={RUN_LABEL}={}", d.run)])
        .lines()
        .count();
    eprintln!(
        "sandboxd load: {creates} creates + {} reads in {:.1} s; errors {}; \
         create p50={:.0} ms p99={:.0} ms; read p50={:.1} ms p99={:.1} ms; {running} containers running",
        read_times.len(),
        elapsed.as_secs_f64(),
        errors.len(),
        quantile(&create_times, 0.5).as_secs_f64() * 1e3,
        quantile(&create_times, 0.99).as_secs_f64() * 1e3,
        quantile(&read_times, 0.5).as_secs_f64() * 1e3,
        quantile(&read_times, 0.99).as_secs_f64() * 1e3,
    );
    assert!(
        errors.is_empty(),
        "{} errors, first: {:?}",
        errors.len(),
        errors.first()
    );
    assert_eq!(running, creates);
}
