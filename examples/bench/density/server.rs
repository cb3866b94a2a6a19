//! The density section's own sandboxd (its own data directory and process group) and the
//! label on everything the section makes, with the clean-up by label that is its last resort.

use std::collections::BTreeSet;
use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, ensure, Context as _};
use futures_util::{stream, StreamExt as _};
use serde_json::{json, Value};

use super::{Size, LABEL, PYTHON, PYTHON_ENV};
use crate::harness::{sandboxd_base, Ctx};

/// The containers this run labelled, removed by label when dropped (the last resort).
pub(super) struct Labelled {
    pub(super) value: String,
}

impl Labelled {
    pub(super) fn new() -> Self {
        Self {
            value: std::process::id().to_string(),
        }
    }

    /// Ids of the containers carrying this run's label.
    pub(super) fn containers(&self) -> anyhow::Result<Vec<String>> {
        containers_labelled(&format!("{LABEL}={}", self.value))
    }

    /// `docker rm -f` of every container with this run's label; how many there were.
    pub(super) fn sweep(&self) -> anyhow::Result<usize> {
        let ids = self.containers()?;
        remove_containers(&ids)?;
        Ok(ids.len())
    }
}

impl Drop for Labelled {
    fn drop(&mut self) {
        match self.sweep() {
            Ok(0) => {}
            Ok(n) => eprintln!("density: removed {n} labelled containers left behind"),
            Err(e) => eprintln!("density: the label sweep failed: {e:#}"),
        }
    }
}

fn containers_labelled(filter: &str) -> anyhow::Result<Vec<String>> {
    let out = Command::new("docker")
        .args(["ps", "-aq", "--no-trunc", "--filter"])
        .arg(format!("label={filter}"))
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run docker ps")?;
    ensure!(out.status.success(), "docker ps failed: {}", out.status);
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect())
}

fn remove_containers(ids: &[String]) -> anyhow::Result<()> {
    for chunk in ids.chunks(100) {
        let status = Command::new("docker")
            .args(["rm", "-f"])
            .args(chunk)
            .stdout(Stdio::null())
            .status()
            .context("cannot run docker rm")?;
        ensure!(status.success(), "docker rm -f failed: {status}");
    }
    Ok(())
}

/// Removes the containers of earlier runs that were killed outright (their harness is gone).
pub(super) fn sweep_dead_runs() -> anyhow::Result<()> {
    let out = Command::new("docker")
        .args(["ps", "-a", "--no-trunc", "--format"])
        .arg(format!("{{{{.ID}}}} {{{{.Label \"{LABEL}\"}}}}"))
        .args(["--filter", &format!("label={LABEL}")])
        .output()
        .context("cannot run docker ps")?;
    ensure!(out.status.success(), "docker ps failed: {}", out.status);
    let dead: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (id, pid) = l.split_once(' ')?;
            let alive = pid
                .parse::<u32>()
                .is_ok_and(|p| std::path::Path::new(&format!("/proc/{p}")).exists());
            (!alive).then(|| id.to_owned())
        })
        .collect();
    if !dead.is_empty() {
        eprintln!(
            "density: removing {} containers of an earlier, killed run",
            dead.len()
        );
        remove_containers(&dead)?;
    }
    Ok(())
}

/// The section's own sandboxd, in its own process group so that a Ctrl-C at the terminal
/// reaches only the harness, which then cleans up through it; killed on drop.
pub(super) struct Server {
    child: Child,
    base: String,
    client: reqwest::Client,
    /// Sandboxes created and not yet deleted: what the clean-up deletes.
    pub(super) made: Mutex<BTreeSet<String>>,
    /// The metadata every sandbox of this run carries (it becomes its container's label).
    metadata: Value,
    _data: tempfile::TempDir,
}

impl Server {
    pub(super) fn start(ctx: &Ctx, size: &Size, labelled: &Labelled) -> anyhow::Result<Self> {
        let data = tempfile::tempdir()?;
        // Raised for the bench only: the per-user quota (N plus room) and the request rates.
        let quota = (size.n + 100).to_string();
        let mut child = Command::new(&ctx.sandboxd)
            .args(["serve", "--host", "127.0.0.1", "--port", "0", "--agent"])
            .arg(&ctx.agent)
            .arg("--data-dir")
            .arg(data.path())
            .args([
                "--rate-create",
                "0",
                "--rate-read",
                "0",
                "--max-sandboxes-per-user",
            ])
            .arg(quota)
            .env("RUST_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start {}", ctx.sandboxd.display()))?;
        let base = sandboxd_base(&mut child)?;
        Ok(Self {
            child,
            base,
            client: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(120))
                .build()?,
            made: Mutex::default(),
            metadata: json!({ LABEL: labelled.value }),
            _data: data,
        })
    }

    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// An idle sandbox of `image`; its id once sandboxd answered (execd is up by then).
    pub(super) async fn create(&self, image: &str) -> anyhow::Result<String> {
        let env = if image == PYTHON {
            json!({ PYTHON_ENV.0: PYTHON_ENV.1 })
        } else {
            json!({})
        };
        self.create_with(image, env).await
    }

    /// A sandbox of `image` with `env`.
    pub(super) async fn create_with(&self, image: &str, env: Value) -> anyhow::Result<String> {
        let body = json!({
            "image": {"uri": image}, "entrypoint": ["sleep", "1000000"], "timeout": 7200,
            "metadata": self.metadata, "env": env,
        });
        let resp = self
            .client
            .post(format!("{}/v1/sandboxes", self.base))
            .json(&body)
            .send()
            .await?;
        if resp.status() != 202 {
            bail!("create {image}: {} {}", resp.status(), resp.text().await?);
        }
        let answer: Value = resp.json().await?;
        let id = answer["id"].as_str().context("no id")?.to_owned();
        self.made.lock().unwrap().insert(id.clone());
        Ok(id)
    }

    pub(super) async fn delete(&self, id: &str) -> anyhow::Result<()> {
        let resp = self
            .client
            .delete(format!("{}/v1/sandboxes/{id}", self.base))
            .send()
            .await?;
        ensure!(
            resp.status().is_success() || resp.status() == 404,
            "delete {id}: {}",
            resp.status()
        );
        self.made.lock().unwrap().remove(id);
        Ok(())
    }

    /// Deletes every sandbox still recorded as made, `concurrency` at a time; how many failed.
    pub(super) async fn delete_all(&self, concurrency: usize) -> usize {
        let ids: Vec<String> = self.made.lock().unwrap().iter().cloned().collect();
        stream::iter(ids)
            .map(|id| async move { self.delete(&id).await })
            .buffer_unordered(concurrency)
            .filter(|r| std::future::ready(r.is_err()))
            .count()
            .await
    }

    /// `GET path` to its end; fails unless 200.
    pub(super) async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let resp = self.client.get(format!("{}{path}", self.base)).send().await?;
        ensure!(resp.status() == 200, "GET {path}: {}", resp.status());
        Ok(resp.json().await?)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
