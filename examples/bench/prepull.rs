//! Figures of image prepull: a prepull task of the 31 MB test image from the local registry
//! (`scripts/registry.sh`), from the POST to `Completed`, beside the Engine API's own pull of
//! the same image from the same registry (what `docker pull` asks the engine for, without
//! the CLI's start-up). The image is removed before every pull on both sides, so each one
//! downloads and extracts its 30 MB layer; the base layer stays (the same for both).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bollard::query_parameters::{CreateImageOptionsBuilder, RemoveImageOptionsBuilder};
use futures_util::StreamExt as _;
use serde_json::{json, Value};

use crate::harness::{mb, percentile_ms, Ctx, Goal, Row};
use crate::lifecycle::Sandboxd;
use crate::Section;

/// The image both sides pull (scripts/registry.sh pushes it).
const IMAGE: &str = "127.0.0.1:5000/prepull-test:1";

/// The sections of this area, in the order they run.
pub fn sections() -> Vec<Section> {
    vec![Section {
        name: "pull",
        run: |ctx| Box::pin(pull(ctx)),
    }]
}

fn start_registries() -> anyhow::Result<()> {
    let ok = Command::new("scripts/registry.sh")
        .arg("start")
        .stdout(Stdio::null())
        .status()
        .context("cannot run scripts/registry.sh")?
        .success();
    if !ok {
        bail!("scripts/registry.sh start failed (scripts/setup.sh installs docker-registry)");
    }
    Ok(())
}

async fn remove_image(docker: &bollard::Docker) -> anyhow::Result<()> {
    let options = RemoveImageOptionsBuilder::default().force(true).build();
    match docker.remove_image(IMAGE, Some(options), None).await {
        Ok(_) => Ok(()),
        Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Ok(()),
        Err(e) => Err(e).context("cannot remove the test image"),
    }
}

/// The Engine API's pull, to the end of its stream.
async fn engine_pull(docker: &bollard::Docker) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let options = CreateImageOptionsBuilder::default().from_image(IMAGE).build();
    let mut pull = docker.create_image(Some(options), None, None);
    while let Some(step) = pull.next().await {
        step.context("the engine's pull failed")?;
    }
    Ok(started.elapsed())
}

/// A prepull task from its POST until it is final; returns its duration and the task.
async fn prepull(client: &reqwest::Client, base: &str) -> anyhow::Result<(Duration, Value)> {
    let started = Instant::now();
    let resp = client
        .post(format!("{base}/v1/prepulls"))
        .json(&json!({"image": IMAGE}))
        .send()
        .await?;
    if resp.status() != 202 {
        bail!("create: {} {}", resp.status(), resp.text().await?);
    }
    let id = resp.json::<Value>().await?["id"]
        .as_str()
        .context("no id")?
        .to_owned();
    loop {
        let task: Value = client
            .get(format!("{base}/v1/prepulls/{id}"))
            .send()
            .await?
            .json()
            .await?;
        match task["status"]["state"].as_str() {
            Some("Pending" | "Pulling") => tokio::time::sleep(Duration::from_millis(5)).await,
            Some("Completed") if task["status"]["reason"].is_null() => return Ok((started.elapsed(), task)),
            _ => bail!("the prepull did not complete by pulling: {task}"),
        }
    }
}

async fn pull(ctx: &Ctx) -> anyhow::Result<Vec<Row>> {
    start_registries()?;
    let docker = bollard::Docker::connect_with_local_defaults()?
        .negotiate_version()
        .await?;
    let sandboxd = Sandboxd::start_with(ctx, &[])?;
    let client = reqwest::Client::builder().no_proxy().build()?;
    let runs = ctx.count(10);
    let (mut ours, mut bare, mut bytes) = (Vec::new(), Vec::new(), 0);
    for _ in 0..runs {
        // Alternate, so that any drift of the machine affects both sides alike.
        remove_image(&docker).await?;
        bare.push(engine_pull(&docker).await?);
        remove_image(&docker).await?;
        let (took, task) = prepull(&client, &sandboxd.base).await?;
        ours.push(took);
        bytes = task["progress"]["bytesTotal"].as_u64().unwrap_or(0);
    }
    remove_image(&docker).await?;
    let (ours, bare) = (percentile_ms(&ours, 50.0), percentile_ms(&bare, 50.0));
    let rate = |ms: f64| mb(bytes) / (ms / 1000.0);
    Ok(vec![
        Row::new(
            format!(
                "prepull of a {:.0} MB image from a local registry, POST → Completed, p50 of {runs}",
                mb(bytes)
            ),
            ours,
            "ms",
        )
        .anchor("the Engine API's pull of the same image (docker pull)", bare)
        .goal(Goal::RatioAtMost(1.2)),
        Row::new("prepull throughput (compressed bytes / p50)", rate(ours), "MB/s")
            .anchor("docker pull throughput", rate(bare)),
    ])
}
