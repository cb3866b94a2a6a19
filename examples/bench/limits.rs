//! Figures of sandboxd's per-caller rate limits: what the limiter adds to an API request
//! (`GET /v1/sandboxes/{id}` p50 with the `read` class on, beside a sandboxd whose `read` class
//! is off, requests alternating between the two), and the limiter's memory at 10 000 keys
//! (measured in a fresh child process: the resident-set growth).

use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use execd::orchestrator::ratelimit::{Class, Limiter, Settings};

use crate::harness::{percentile_ms, Ctx, Goal, Row};
use crate::lifecycle::Sandboxd;
use crate::Section;

const KEY: &str = "bench-key-0123456789";

/// The sections of this area, in the order they run.
pub fn sections() -> Vec<Section> {
    vec![
        Section {
            name: "layer-cost",
            run: |ctx| Box::pin(layer_cost(ctx)),
        },
        Section {
            name: "memory",
            run: |ctx| Box::pin(memory(ctx)),
        },
    ]
}

/// A sandboxd with the API key and `args` (the lifecycle area's launcher).
fn sandboxd(ctx: &Ctx, args: &[&str]) -> anyhow::Result<Sandboxd> {
    let mut all = vec!["--api-key", KEY];
    all.extend_from_slice(args);
    Sandboxd::start_with(ctx, &all)
}

/// How a benchmark request authenticates.
#[derive(Clone, Copy)]
enum Auth<'a> {
    /// The API key (`root`): a constant-time compare.
    ApiKey,
    /// A user token: an HS256 verification and a deny-list lookup.
    Bearer(&'a str),
}

async fn get_unknown(client: &reqwest::Client, d: &Sandboxd) -> anyhow::Result<Duration> {
    get_unknown_as(client, d, Auth::ApiKey).await
}

async fn get_unknown_as(client: &reqwest::Client, d: &Sandboxd, auth: Auth<'_>) -> anyhow::Result<Duration> {
    let request = client.get(format!(
        "{}/v1/sandboxes/0f3c9a1e-aaaa-4bbb-8ccc-000000000001",
        d.base
    ));
    let request = match auth {
        Auth::ApiKey => request.header("OPEN-SANDBOX-API-KEY", KEY),
        Auth::Bearer(token) => request.bearer_auth(token),
    };
    let started = Instant::now();
    let resp = request.send().await?;
    let status = resp.status();
    resp.bytes().await?;
    if status != 404 {
        bail!("GET /v1/sandboxes/{{unknown}}: {status}");
    }
    Ok(started.elapsed())
}

/// The `read` class on (with a quota no run reaches, so every request is checked and none is
/// refused) beside it off; auth, the metrics layer and the store lookup behind the 404 are the
/// same on both sides.
async fn layer_cost(ctx: &Ctx) -> anyhow::Result<Vec<Row>> {
    let on = sandboxd(ctx, &["--rate-read", "1000000", "--burst-read", "1000000"])?;
    let off = sandboxd(ctx, &["--rate-read", "0"])?;
    let client = reqwest::Client::builder().no_proxy().build()?;
    for _ in 0..50 {
        get_unknown(&client, &on).await?;
        get_unknown(&client, &off).await?;
    }
    let runs = ctx.count(3000);
    let (mut with, mut without) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
    for _ in 0..runs {
        // Alternate, so that any drift of the machine affects both sides alike.
        with.push(get_unknown(&client, &on).await?);
        without.push(get_unknown(&client, &off).await?);
    }
    let (p50_on, p50_off) = (percentile_ms(&with, 50.0), percentile_ms(&without, 50.0));
    // The same limited server, as a user with a Bearer token beside the API key.
    let minted: serde_json::Value = client
        .post(format!("{}/v1/tokens", on.base))
        .header("OPEN-SANDBOX-API-KEY", KEY)
        .json(&serde_json::json!({"userId": "bench", "role": "user"}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let token = minted["accessToken"]
        .as_str()
        .context("no accessToken")?
        .to_owned();
    let (mut bearer, mut key) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
    for _ in 0..runs {
        bearer.push(get_unknown_as(&client, &on, Auth::Bearer(&token)).await?);
        key.push(get_unknown_as(&client, &on, Auth::ApiKey).await?);
    }
    let (p50_bearer, p50_key) = (percentile_ms(&bearer, 50.0), percentile_ms(&key, 50.0));
    Ok(vec![
        Row::new(
            "GET /v1/sandboxes/{unknown} p50, Bearer token + `read` limiter",
            p50_bearer,
            "ms",
        )
        .anchor("the same with the API key", p50_key),
        Row::new(
            "Bearer verification cost (p50 difference)",
            p50_bearer - p50_key,
            "ms",
        )
        .goal(Goal::AtMost(0.05)),
        Row::new(
            "GET /v1/sandboxes/{unknown} p50, API key + `read` limiter",
            p50_on,
            "ms",
        )
        .anchor("the same, `read` class off", p50_off),
        Row::new("rate-limit layer cost (p50 difference)", p50_on - p50_off, "ms").goal(Goal::AtMost(0.05)),
    ])
}

/// Runs the memory measurement in a fresh child (`bench --limiter-memory`), so nothing else
/// this process allocated is in the figure.
async fn memory(_: &Ctx) -> anyhow::Result<Vec<Row>> {
    let out = Command::new(std::env::current_exe()?)
        .arg("--limiter-memory")
        .output()?;
    if !out.status.success() {
        bail!("--limiter-memory: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8(out.stdout)?;
    let kib: f64 = text
        .trim()
        .parse()
        .with_context(|| format!("unexpected output {text:?}"))?;
    Ok(vec![
        Row::new("rate limiter memory at 10 000 keys (RSS growth)", kib, "KiB"),
        Row::new("rate limiter memory per key", kib * 1024.0 / 10_000.0, "bytes"),
    ])
}

/// Child mode: 10 000 principals (`id:` + 32 hex digits, a uuid's length) each take one
/// `read` token; prints the resident-set growth in KiB.
pub fn memory_main() -> ExitCode {
    fn rss_kib() -> u64 {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
        let pages: u64 = statm
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        pages * 4
    }
    let limiter = Limiter::new(Settings::default());
    let before = rss_kib();
    for i in 0..10_000u128 {
        if limiter.check(Class::Read, &format!("id:{i:032x}")).is_err() {
            eprintln!("a fresh key was refused");
            return ExitCode::FAILURE;
        }
    }
    let after = rss_kib();
    if limiter.keys() != 10_000 {
        eprintln!("{} keys held, not 10 000", limiter.keys());
        return ExitCode::FAILURE;
    }
    println!("{}", after.saturating_sub(before));
    ExitCode::SUCCESS
}
