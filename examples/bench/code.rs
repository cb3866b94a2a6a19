//! Figures of the code-contexts issue: python `1+1` through execd's Jupyter backend beside two
//! direct clients of the same kind of kernel (jupyter_client in Python, and execd's own ZeroMQ
//! client without HTTP, run in a child process), context creation from the warm pool beside a
//! cold start, and the built-in python driver.
//!
//! The three `1+1` loops run one after another (each owns its kernel), not interleaved.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use reqwest::header::CONTENT_TYPE;
use serde_json::{json, Value};

use crate::harness::{client, percentile_ms, spawn_wait, Agent, Ctx, Goal, Row};
use crate::Section;

/// The sections of this area, in the order they run.
pub fn sections() -> Vec<Section> {
    vec![
        Section {
            name: "python",
            run: |ctx| Box::pin(python_round_trip(ctx)),
        },
        Section {
            name: "create",
            run: |ctx| Box::pin(context_creation(ctx)),
        },
        Section {
            name: "builtin",
            run: |ctx| Box::pin(builtin_round_trip(ctx)),
        },
    ]
}

fn venv_bin() -> anyhow::Result<PathBuf> {
    let bin = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin");
    ensure!(
        bin.join("python3").exists(),
        "{} missing: run scripts/setup.sh",
        bin.display()
    );
    Ok(bin)
}

/// PATH with the test venv (ipykernel, jupyter_client) first.
fn venv_path() -> anyhow::Result<String> {
    Ok(format!(
        "{}:{}",
        venv_bin()?.display(),
        std::env::var("PATH").unwrap_or_default()
    ))
}

async fn create_context(client: &reqwest::Client, agent: &Agent) -> anyhow::Result<String> {
    let resp = client
        .post(agent.url("/code/context"))
        .json(&json!({"language": "python"}))
        .send()
        .await?;
    ensure!(resp.status() == 200, "create context answered {}", resp.status());
    let ctx: Value = resp.json().await?;
    Ok(ctx["id"].as_str().context("no context id")?.to_owned())
}

/// One `1+1` through `POST /code`, read to the end of the stream; checks the result.
async fn run_cell(client: &reqwest::Client, url: &str, body: &str) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let mut resp = client
        .post(url)
        .header(CONTENT_TYPE, "application/json")
        .body(body.to_owned())
        .send()
        .await?;
    ensure!(resp.status() == 200, "POST /code answered {}", resp.status());
    let mut sse = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        sse.extend_from_slice(&chunk);
    }
    let d = t.elapsed();
    let text = String::from_utf8_lossy(&sse);
    ensure!(
        text.contains(r#""results":{"text":"2"}"#),
        "no result 2 in {text}"
    );
    ensure!(
        text.contains("execution_complete"),
        "stream did not complete: {text}"
    );
    Ok(d)
}

async fn cell_samples(agent: &Agent, id: &str, warm: usize, runs: usize) -> anyhow::Result<Vec<Duration>> {
    let client = client()?;
    let url = agent.url("/code");
    let body = json!({"context": {"id": id}, "code": "1+1"}).to_string();
    let mut samples = Vec::with_capacity(runs);
    for i in 0..warm + runs {
        let d = run_cell(&client, &url, &body).await?;
        if i >= warm {
            samples.push(d);
        }
    }
    Ok(samples)
}

/// Runs a child that prints `p50 p99` in ms.
fn p50_p99(cmd: &mut Command) -> anyhow::Result<(f64, f64)> {
    let out = cmd.output().with_context(|| format!("cannot run {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut it = text.split_whitespace().map(str::parse::<f64>);
    match (it.next(), it.next()) {
        (Some(Ok(a)), Some(Ok(b))) => Ok((a, b)),
        _ => bail!("{cmd:?} printed {text:?}"),
    }
}

async fn python_round_trip(ctx: &Ctx) -> anyhow::Result<Vec<Row>> {
    let path = venv_path()?;
    let runs = ctx.count(200);
    let agent = Agent::start_env(
        &ctx.agent,
        &[("PATH", path.clone()), ("EXECD_KERNEL_POOL", "0".into())],
    )?;
    let id = create_context(&client()?, &agent).await?;
    let samples = cell_samples(&agent, &id, 20, runs).await?;
    drop(agent);
    let (jc50, jc99) = p50_p99(
        Command::new(venv_bin()?.join("python3"))
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/scripts/bench/jupyter_client_roundtrip.py"
            ))
            .arg(runs.to_string()),
    )?;
    let (raw50, raw99) = p50_p99(
        Command::new(std::env::current_exe()?)
            .args(["--raw-zmq", &runs.to_string()])
            .env("PATH", &path),
    )?;
    let jc = format!("jupyter_client → kernel direct, p50 (n={runs})");
    Ok(vec![
        Row::new(
            format!("python `1+1` via execd (Jupyter/ZMQ), p50 (n={runs})"),
            percentile_ms(&samples, 50.0),
            "ms",
        )
        .anchor(&jc, jc50)
        .goal(Goal::RatioAtMost(1.2)),
        Row::new("python `1+1` via execd, p99", percentile_ms(&samples, 99.0), "ms")
            .anchor("jupyter_client direct, p99", jc99),
        Row::new(
            "context: execd's ZMQ kernel client alone (no HTTP), p50",
            raw50,
            "ms",
        )
        .anchor(&jc, jc50),
        Row::new("context: execd's ZMQ kernel client alone, p99", raw99, "ms")
            .anchor("jupyter_client direct, p99", jc99),
    ])
}

/// Waits until the agent reports a warm python kernel.
async fn wait_warm(client: &reqwest::Client, agent: &Agent) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let langs: Value = client
            .get(agent.url("/code/languages"))
            .send()
            .await?
            .json()
            .await?;
        let warm = langs
            .as_array()
            .and_then(|a| a.iter().find(|l| l["language"] == "python"))
            .and_then(|l| l["warm"].as_u64())
            .unwrap_or(0);
        if warm >= 1 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("no warm kernel within 60 s")
}

async fn timed_create(client: &reqwest::Client, agent: &Agent) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let id = create_context(client, agent).await?;
    let d = t.elapsed();
    client
        .delete(agent.url(&format!("/code/contexts/{id}")))
        .send()
        .await?;
    Ok(d)
}

async fn context_creation(ctx: &Ctx) -> anyhow::Result<Vec<Row>> {
    let path = venv_path()?;
    let client = client()?;
    let warm = Agent::start_env(
        &ctx.agent,
        &[("PATH", path.clone()), ("EXECD_KERNEL_POOL", "1".into())],
    )?;
    let mut pooled = Vec::new();
    for _ in 0..ctx.count(8) {
        wait_warm(&client, &warm).await?;
        pooled.push(timed_create(&client, &warm).await?);
    }
    drop(warm);
    let cold_agent = Agent::start_env(&ctx.agent, &[("PATH", path), ("EXECD_KERNEL_POOL", "0".into())])?;
    let mut cold = Vec::new();
    for _ in 0..ctx.count(5) {
        cold.push(timed_create(&client, &cold_agent).await?);
    }
    Ok(vec![Row::new(
        format!(
            "python context creation from the warm pool, p50 (n={})",
            pooled.len()
        ),
        percentile_ms(&pooled, 50.0),
        "ms",
    )
    .anchor(
        format!("cold kernel start (pool off), p50 (n={})", cold.len()),
        percentile_ms(&cold, 50.0),
    )
    .goal(Goal::AtMost(5.0))])
}

async fn builtin_round_trip(ctx: &Ctx) -> anyhow::Result<Vec<Row>> {
    let path = venv_path()?;
    let runs = ctx.count(200);
    let agent = Agent::start_env(&ctx.agent, &[("PATH", path), ("EXECD_NO_JUPYTER", "1".into())])?;
    let id = create_context(&client()?, &agent).await?;
    let samples = cell_samples(&agent, &id, 20, runs).await?;
    let python = venv_bin()?.join("python3");
    let python = python.to_str().context("venv path is not UTF-8")?;
    let mut spawn = Vec::new();
    for _ in 0..ctx.count(20) {
        spawn.push(spawn_wait(python, &["-c", "pass"])?);
    }
    let anchor = format!("a fresh `python3 -c pass`, p50 (n={})", spawn.len());
    Ok(vec![
        Row::new(
            format!("built-in python `1+1` via execd, p50 (n={runs})"),
            percentile_ms(&samples, 50.0),
            "ms",
        )
        .anchor(&anchor, percentile_ms(&spawn, 50.0)),
        Row::new(
            "built-in python `1+1` via execd, p99",
            percentile_ms(&samples, 99.0),
            "ms",
        )
        .anchor(&anchor, percentile_ms(&spawn, 50.0)),
    ])
}

/// `bench --raw-zmq N`: `1+1` N times through execd's own kernel client (no HTTP), in this
/// child process so that its reaper owns no other child. Prints `p50 p99` in ms.
pub fn raw_zmq_main(runs: usize) -> anyhow::Result<()> {
    use execd::agent::kernel::{jupyter::JupyterKernel, spec, Outcome};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let reaper = execd::agent::process::Reaper::start()?;
        let env: execd::agent::env::EnvMap = std::env::vars().collect();
        let python = spec::discover(&env)
            .into_iter()
            .find(|s| s.language == "python")
            .context("no python kernelspec on PATH: run scripts/setup.sh")?;
        let dir = tempfile::tempdir()?;
        let kernel = JupyterKernel::start(&python, &reaper, env, None, dir.path().join("kernel")).await?;
        let mut samples = Vec::with_capacity(runs);
        for i in 0..runs + 20 {
            let journal = execd::agent::stream::Journal::new(dir.path().join(format!("{i}.sse")));
            let t = Instant::now();
            let outcome = kernel.execute("1+1", &journal, &Default::default()).await;
            let d = t.elapsed();
            ensure!(
                outcome == Outcome::Finished { failed: false },
                "1+1 failed: {outcome:?}"
            );
            if i >= 20 {
                samples.push(d);
            }
        }
        println!(
            "{:.3} {:.3}",
            percentile_ms(&samples, 50.0),
            percentile_ms(&samples, 99.0)
        );
        Ok(())
    })
}
