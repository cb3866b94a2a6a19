//! The Kubernetes runtime beside the Docker one (issue 18): a cold create up to its first
//! finished command through `sandboxd --runtime kubernetes` on OUR MODEL OF KUBERNETES
//! (`examples/fake_kube`, test-only: an apiserver stand-in whose docklet runs each pod on the
//! local Docker through the `docker` CLI), beside the same through `sandboxd --runtime docker`
//! and the bare Engine API sequence, the three alternating, same image, same run. The fake
//! reports its own time per pod (`GET /fake-kube/timings`), so sandboxd's share can be told
//! from the fake's on the Kubernetes side, as from the engine's on the Docker side.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::Value;

use crate::harness::{median, percentile_ms, Ctx, Row};
use crate::lifecycle::{command_true, docker_sequence, ensure_image, Sandboxd};
use crate::upstream::{ensure_agent_image, AGENT_IMAGE};
use crate::Section;

/// The sections of this area, in the order they run.
pub fn sections() -> Vec<Section> {
    vec![Section {
        name: "create-vs-docker",
        run: |ctx| Box::pin(create_vs_docker(ctx)),
    }]
}

/// A running `fake_kube` (built beside this harness); SIGTERM on drop, which removes every
/// Docker object it made.
struct FakeKube {
    child: Child,
    addr: String,
    kubeconfig: PathBuf,
    _dir: tempfile::TempDir,
}

impl FakeKube {
    fn start() -> anyhow::Result<Self> {
        let bin = std::env::current_exe()?
            .parent()
            .context("harness directory")?
            .join("fake_kube");
        if !bin.exists() {
            bail!(
                "{} is missing (scripts/bench.sh builds it with --features k8s-portforward)",
                bin.display()
            );
        }
        let dir = tempfile::tempdir()?;
        let kubeconfig = dir.path().join("kubeconfig");
        let mut child = Command::new(&bin)
            .args(["--listen", "127.0.0.1:0", "--docker-label"])
            .arg(format!("execd-bench-k8s-{}", std::process::id()))
            .arg("--kubeconfig-out")
            .arg(&kubeconfig)
            .env("RUST_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("no stdout")?).read_line(&mut line)?;
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .with_context(|| format!("unexpected first line {line:?}"))?
            .to_owned();
        Ok(Self {
            child,
            addr,
            kubeconfig,
            _dir: dir,
        })
    }

    /// The docklet's own time for pod `sbx-<id>`: (containers running, Ready), ms.
    async fn timing(&self, client: &reqwest::Client, id: &str) -> anyhow::Result<(f64, f64)> {
        let all: Value = client
            .get(format!("http://{}/fake-kube/timings", self.addr))
            .send()
            .await?
            .json()
            .await?;
        let t = &all[format!("default/sbx-{id}")];
        match (t["running"].as_f64(), t["ready"].as_f64()) {
            (Some(running), Some(ready)) => Ok((running, ready)),
            _ => bail!("no docklet timing for sbx-{id}: {t}"),
        }
    }
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// Create → Running → direct endpoint → `true` done; its duration.
async fn create_to_first_command(d: &Sandboxd) -> anyhow::Result<(String, Duration)> {
    let started = Instant::now();
    let id = d.create().await?;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let s: Value = d
            .client
            .get(format!("{}/v1/sandboxes/{id}", d.base))
            .send()
            .await?
            .json()
            .await?;
        match s["status"]["state"].as_str() {
            Some("Running") => break,
            Some("Failed" | "Terminated") => bail!("sandbox {id}: {s}"),
            _ if Instant::now() > deadline => bail!("sandbox {id} not Running after 90 s: {s}"),
            _ => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
    let (base, token) = d.endpoint(&id, false).await?;
    command_true(&d.client, &base, &token).await?;
    Ok((id, started.elapsed()))
}

fn ms(values: &[f64]) -> Vec<Duration> {
    values
        .iter()
        .map(|v| Duration::from_secs_f64(v.max(0.0) / 1e3))
        .collect()
}

async fn create_vs_docker(ctx: &Ctx) -> anyhow::Result<Vec<Row>> {
    ensure_image()?;
    ensure_agent_image()?;
    let engine = bollard::Docker::connect_with_local_defaults()?
        .negotiate_version()
        .await?;
    let fake = FakeKube::start()?;
    let on_kube = Sandboxd::start_env(
        ctx,
        &[
            "--runtime",
            "kubernetes",
            "--kube-namespace",
            "default",
            "--kube-agent-image",
            AGENT_IMAGE,
            "--kube-create-timeout",
            "90",
        ],
        &[("KUBECONFIG", fake.kubeconfig.as_os_str())],
    )?;
    let on_docker = Sandboxd::start(ctx)?;
    let runs = ctx.count(10);
    let (mut kube, mut docker, mut bare) = (Vec::new(), Vec::new(), Vec::new());
    let (mut fake_running, mut fake_ready, mut kube_own, mut docker_own) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    // One untimed create on each side first (image layers and the fake's first pod).
    for d in [&on_kube, &on_docker] {
        let (id, _) = create_to_first_command(d).await?;
        d.delete(&id).await?;
    }
    for n in 0..runs {
        // Alternate, so that any drift of the machine affects all three alike.
        let b = docker_sequence(&engine, n).await?;
        let (id, d) = create_to_first_command(&on_docker).await?;
        on_docker.delete(&id).await?;
        let (id, k) = create_to_first_command(&on_kube).await?;
        let (running, ready) = fake.timing(&on_kube.client, &id).await?;
        on_kube.delete(&id).await?;
        bare.push(b);
        docker.push(d);
        kube.push(k);
        fake_running.push(running);
        fake_ready.push(ready);
        kube_own.push(k.as_secs_f64() * 1e3 - ready);
        docker_own.push((d.as_secs_f64() - b.as_secs_f64()) * 1e3);
    }
    let (k50, d50) = (percentile_ms(&kube, 50.0), percentile_ms(&docker, 50.0));
    let (k95, d95) = (percentile_ms(&kube, 95.0), percentile_ms(&docker, 95.0));
    Ok(vec![
        Row::new(
            format!(
                "k8s runtime on OUR MODEL OF KUBERNETES (fake_kube): create → first command done (busybox), p50 of {runs}"
            ),
            k50,
            "ms",
        )
        .anchor("the same through `--runtime docker`, p50", d50),
        Row::new("k8s runtime on the fake: create → first command done, p95", k95, "ms")
            .anchor("`--runtime docker`, p95", d95),
        Row::new(
            "context: the fake's docklet, pod create → containers started (`docker` CLI: volume, init container run to its end, main container) and IP read, p50",
            percentile_ms(&ms(&fake_running), 50.0),
            "ms",
        )
        .anchor("bare Engine API create + start + first exec, p50", percentile_ms(&bare, 50.0)),
        Row::new(
            "context: the fake's docklet, pod create → Ready (its readiness probe loop included), p50",
            percentile_ms(&ms(&fake_ready), 50.0),
            "ms",
        ),
        Row::new(
            "sandboxd's own share on the fake: create → first command minus the docklet's time to Ready, median",
            median(&kube_own),
            "ms",
        )
        .anchor(
            "on Docker: create → first command minus the bare Engine sequence (whose first command is a `docker exec`, not execd's HTTP), median",
            median(&docker_own),
        ),
    ])
}
