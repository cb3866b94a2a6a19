//! Figures of pause modes and forks: a Rootfs pause (commit + remove) and its resume (create
//! from the committed image, to the first finished command) beside `docker commit` alone of an
//! equal container, with a Freeze pause and resume for context; and a fork into 5 sandboxes
//! (one snapshot, 5 creates from it, all running) beside 5 creates from the plain image one
//! after another. Every sandbox holds the same 8 MiB file in its writable layer.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::{json, Value};

use crate::harness::{median, percentile_ms, Ctx, Row};
use crate::lifecycle::{command_true, ensure_image, Sandboxd, IMAGE};
use crate::Section;

/// Forked sandboxes per fork.
const FORK: u32 = 5;
/// What each sandbox writes into its layer before it is paused or forked.
const FILL: &str = "mkdir -p /workspace && dd if=/dev/urandom of=/workspace/blob bs=1M count=8 2>/dev/null";

/// The sections of this area, in the order they run.
pub fn sections() -> Vec<Section> {
    vec![
        Section {
            name: "rootfs-pause",
            run: |ctx| Box::pin(rootfs_pause(ctx)),
        },
        Section {
            name: "fork",
            run: |ctx| Box::pin(fork(ctx)),
        },
    ]
}

/// A sandboxd with every rate class off and a keep-alive client for it.
struct Api {
    sandboxd: Sandboxd,
    client: reqwest::Client,
}

impl Api {
    fn start(ctx: &Ctx) -> anyhow::Result<Self> {
        let args = ["--rate-create", "0", "--rate-exec", "0", "--rate-read", "0"];
        Ok(Self {
            sandboxd: Sandboxd::start_with(ctx, &args)?,
            client: reqwest::Client::builder().no_proxy().build()?,
        })
    }

    /// `method path` with an optional JSON body; fails unless it answers `expected`.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        expected: u16,
    ) -> anyhow::Result<Value> {
        let mut req = self
            .client
            .request(method.clone(), format!("{}{path}", self.sandboxd.base));
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let text = resp.text().await?;
        if status != expected {
            bail!("{method} {path}: {status} {text}");
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// A busybox sandbox with [`FILL`] done; its id.
    async fn filled_sandbox(&self) -> anyhow::Result<String> {
        let body = json!({"image": {"uri": IMAGE}, "entrypoint": ["sleep", "100000"], "timeout": 600});
        let created = self
            .call(reqwest::Method::POST, "/v1/sandboxes", Some(body), 202)
            .await?;
        let id = created["id"].as_str().context("no id")?.to_owned();
        let (base, token) = self.endpoint(&id).await?;
        let resp = self
            .client
            .post(format!("{base}/command"))
            .header("X-EXECD-ACCESS-TOKEN", &token)
            .json(&json!({ "command": FILL }))
            .send()
            .await?
            .text()
            .await?;
        if !resp.contains("execution_complete") {
            bail!("filling the sandbox failed: {resp}");
        }
        Ok(id)
    }

    async fn endpoint(&self, id: &str) -> anyhow::Result<(String, String)> {
        let ep = self
            .call(
                reqwest::Method::GET,
                &format!("/v1/sandboxes/{id}/endpoints/44772?use_server_proxy=false"),
                None,
                200,
            )
            .await?;
        let token = ep["headers"]["x-execd-access-token"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        Ok((
            format!("http://{}", ep["endpoint"].as_str().context("no endpoint")?),
            token,
        ))
    }

    /// The time until the sandbox's first command is done, from now.
    async fn first_command(&self, id: &str) -> anyhow::Result<()> {
        let (base, token) = self.endpoint(id).await?;
        command_true(&self.client, &base, &token).await
    }

    async fn delete(&self, id: &str) -> anyhow::Result<()> {
        self.call(reqwest::Method::DELETE, &format!("/v1/sandboxes/{id}"), None, 204)
            .await
            .map(drop)
    }

    async fn pause(&self, id: &str, mode: &str) -> anyhow::Result<Duration> {
        let t = Instant::now();
        self.call(
            reqwest::Method::POST,
            &format!("/v1/sandboxes/{id}/pause"),
            Some(json!({"snapshotType": mode})),
            202,
        )
        .await?;
        Ok(t.elapsed())
    }

    /// Resume to the first finished command.
    async fn resume(&self, id: &str) -> anyhow::Result<Duration> {
        let t = Instant::now();
        self.call(
            reqwest::Method::POST,
            &format!("/v1/sandboxes/{id}/resume"),
            None,
            202,
        )
        .await?;
        self.first_command(id).await?;
        Ok(t.elapsed())
    }
}

/// `docker <args>`, which must succeed; its stdout.
fn docker(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .context("cannot run docker")?;
    if !out.status.success() {
        bail!(
            "docker {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Rootfs pause and resume beside `docker commit` alone, and Freeze pause and resume.
async fn rootfs_pause(ctx: &Ctx) -> anyhow::Result<Vec<Row>> {
    ensure_image()?;
    let api = Api::start(ctx)?;
    let runs = ctx.count(5);
    let (mut pauses, mut resumes, mut commits, mut freezes, mut thaws) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for n in 0..runs {
        // The anchor: `docker commit` (paused meanwhile, as sandboxd's) of an equal container.
        let other = api.filled_sandbox().await?;
        let container = docker(&[
            "ps",
            "-q",
            "--filter",
            &format!("label=opensandbox.io/id={other}"),
        ])?;
        let tag = format!("sandboxd-bench-commit:{n}");
        let t = Instant::now();
        docker(&["commit", "--pause=true", &container, &tag])?;
        commits.push(t.elapsed());
        docker(&["rmi", &tag])?;
        api.delete(&other).await?;

        let id = api.filled_sandbox().await?;
        pauses.push(api.pause(&id, "Rootfs").await?);
        resumes.push(api.resume(&id).await?);
        freezes.push(api.pause(&id, "Freeze").await?);
        thaws.push(api.resume(&id).await?);
        api.delete(&id).await?;
    }
    let commit = percentile_ms(&commits, 50.0);
    Ok(vec![
        Row::new(
            format!("Rootfs pause (commit 8 MiB layer + remove the container), p50 of {runs}"),
            percentile_ms(&pauses, 50.0),
            "ms",
        )
        .anchor("`docker commit --pause` alone of an equal container, p50", commit),
        Row::new(
            format!("Rootfs resume (create from the committed image) → first command done, p50 of {runs}"),
            percentile_ms(&resumes, 50.0),
            "ms",
        )
        .anchor("`docker commit --pause` alone, p50", commit),
        Row::new(
            format!("context: Freeze pause, p50 of {runs}"),
            percentile_ms(&freezes, 50.0),
            "ms",
        ),
        Row::new(
            format!("context: Freeze resume → first command done, p50 of {runs}"),
            percentile_ms(&thaws, 50.0),
            "ms",
        ),
    ])
}

/// A fork into [`FORK`] sandboxes beside as many plain creates one after another.
async fn fork(ctx: &Ctx) -> anyhow::Result<Vec<Row>> {
    ensure_image()?;
    let api = Api::start(ctx)?;
    let repeats = ctx.count(3);
    let (mut forks, mut creates) = (Vec::new(), Vec::new());
    let plain = json!({"image": {"uri": IMAGE}, "entrypoint": ["sleep", "100000"], "timeout": 600});
    for _ in 0..repeats {
        let source = api.filled_sandbox().await?;
        let t = Instant::now();
        let forked = api
            .call(
                reqwest::Method::POST,
                &format!("/v1/sandboxes/{source}/fork"),
                Some(json!({ "count": FORK })),
                201,
            )
            .await?;
        forks.push(t.elapsed().as_secs_f64() * 1e3);
        let children: Vec<String> = forked["items"]
            .as_array()
            .context("no items")?
            .iter()
            .filter_map(|c| c["id"].as_str().map(str::to_owned))
            .collect();
        if children.len() != FORK as usize {
            bail!("the fork made {} sandboxes: {forked}", children.len());
        }
        for child in &children {
            api.delete(child).await?;
        }
        let snapshot = forked["snapshotId"].as_str().context("no snapshotId")?;
        api.call(
            reqwest::Method::DELETE,
            &format!("/v1/snapshots/{snapshot}"),
            None,
            204,
        )
        .await?;
        api.delete(&source).await?;

        let t = Instant::now();
        let mut made = Vec::new();
        for _ in 0..FORK {
            let created = api
                .call(reqwest::Method::POST, "/v1/sandboxes", Some(plain.clone()), 202)
                .await?;
            made.push(created["id"].as_str().context("no id")?.to_owned());
        }
        creates.push(t.elapsed().as_secs_f64() * 1e3);
        for id in &made {
            api.delete(id).await?;
        }
    }
    Ok(vec![Row::new(
        format!("fork into {FORK} (one snapshot of an 8 MiB layer, {FORK} creates from it, all running), median of {repeats}"),
        median(&forks),
        "ms",
    )
    .anchor(format!("{FORK} creates from the plain image, one after another"), median(&creates))])
}
