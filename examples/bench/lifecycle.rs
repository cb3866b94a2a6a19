//! Figures of the orchestrator: a cold sandbox create up to its first finished command beside
//! the bare Docker Engine sequence for the same image (create, start, first exec, all through
//! the Engine API so that no CLI start-up cost inflates the anchor), and a command round trip
//! through sandboxd's server proxy beside the same command on the direct endpoint.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::RemoveContainerOptionsBuilder;
use futures_util::StreamExt as _;
use serde_json::{json, Value};

use crate::harness::{percentile_ms, sandboxd_base, Ctx, Goal, Row};
use crate::Section;

/// The image both sides start: static busybox, nothing else.
pub(crate) const IMAGE: &str = "execd-test/busybox";

/// The sections of this area, in the order they run.
pub fn sections() -> Vec<Section> {
    vec![
        Section {
            name: "create",
            run: |ctx| Box::pin(cold_create(ctx)),
        },
        Section {
            name: "server-proxy",
            run: |ctx| Box::pin(server_proxy(ctx)),
        },
    ]
}

/// A sandboxd on a free port with its own state, stopped (and its sandboxes removed) on drop.
pub(crate) struct Sandboxd {
    child: Child,
    pub(crate) base: String,
    pub(crate) client: reqwest::Client,
    _data: tempfile::TempDir,
}

impl Sandboxd {
    pub(crate) fn start(ctx: &Ctx) -> anyhow::Result<Self> {
        Self::start_with(ctx, &[])
    }

    /// A sandboxd with extra `serve` flags (an API key, rate classes).
    pub(crate) fn start_with(ctx: &Ctx, args: &[&str]) -> anyhow::Result<Self> {
        Self::start_env(ctx, args, &[])
    }

    /// A sandboxd with extra `serve` flags and environment (`KUBECONFIG`).
    pub(crate) fn start_env(
        ctx: &Ctx,
        args: &[&str],
        env: &[(&str, &std::ffi::OsStr)],
    ) -> anyhow::Result<Self> {
        let data = tempfile::tempdir()?;
        let mut child = Command::new(&ctx.sandboxd)
            .args(["serve", "--host", "127.0.0.1", "--port", "0", "--agent"])
            .arg(&ctx.agent)
            .arg("--data-dir")
            .arg(data.path())
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start {}", ctx.sandboxd.display()))?;
        let base = sandboxd_base(&mut child)?;
        Ok(Self {
            child,
            base,
            client: reqwest::Client::builder().no_proxy().build()?,
            _data: data,
        })
    }

    pub(crate) async fn create(&self) -> anyhow::Result<String> {
        let resp = self
            .client
            .post(format!("{}/v1/sandboxes", self.base))
            .json(&json!({"image": {"uri": IMAGE}, "entrypoint": ["sleep", "100000"], "timeout": 600}))
            .send()
            .await?;
        if resp.status() != 202 {
            bail!("create: {} {}", resp.status(), resp.text().await?);
        }
        let body: Value = resp.json().await?;
        Ok(body["id"].as_str().context("no id")?.to_owned())
    }

    pub(crate) async fn endpoint(&self, id: &str, server_proxy: bool) -> anyhow::Result<(String, String)> {
        let ep: Value = self
            .client
            .get(format!(
                "{}/v1/sandboxes/{id}/endpoints/44772?use_server_proxy={server_proxy}",
                self.base
            ))
            .send()
            .await?
            .json()
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

    pub(crate) async fn delete(&self, id: &str) -> anyhow::Result<()> {
        self.client
            .delete(format!("{}/v1/sandboxes/{id}", self.base))
            .send()
            .await?;
        Ok(())
    }
}

impl Drop for Sandboxd {
    /// Stops sandboxd, then removes every container it labelled as its own (sandboxes, pool
    /// members, builds): a section that fails half-way, or a pool that refills while it is
    /// deleted, must not leave containers behind on the engine.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let Some(instance) = instance_of(self._data.path()) else {
            return;
        };
        let listed = Command::new("docker")
            .args(["ps", "-aq", "--filter"])
            .arg(format!("label=io.execd.sandboxd.instance={instance}"))
            .output();
        let ids: Vec<String> = match listed {
            Ok(out) => String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(str::to_owned)
                .collect(),
            Err(_) => return,
        };
        if !ids.is_empty() {
            let _ = Command::new("docker")
                .args(["rm", "-f", "-v"])
                .args(&ids)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// The instance id a sandboxd with data dir `dir` labels its containers with (its store's
/// `meta` row), if it got as far as writing it.
fn instance_of(dir: &std::path::Path) -> Option<String> {
    let conn = rusqlite::Connection::open_with_flags(
        dir.join("sandboxd.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .ok()?;
    conn.query_row("SELECT value FROM meta WHERE key = 'instance'", [], |r| r.get(0))
        .ok()
}

/// `POST /command` `true` on an execd base URL, to the end of its stream.
pub(crate) async fn command_true(client: &reqwest::Client, base: &str, token: &str) -> anyhow::Result<()> {
    let resp = client
        .post(format!("{base}/command"))
        .header("X-EXECD-ACCESS-TOKEN", token)
        .json(&json!({"command": "true"}))
        .send()
        .await?;
    if resp.status() != 200 {
        bail!("command: {}", resp.status());
    }
    let body = resp.text().await?;
    if !body.contains("execution_complete") {
        bail!("command did not complete: {body}");
    }
    Ok(())
}

/// Builds (or finds cached) the busybox test image both sides start.
pub(crate) fn ensure_image() -> anyhow::Result<()> {
    let ok = Command::new("scripts/build-test-image.sh")
        .arg("busybox")
        .stdout(Stdio::null())
        .status()?
        .success();
    if !ok {
        bail!("scripts/build-test-image.sh busybox failed");
    }
    Ok(())
}

/// The bare Engine sequence: create, start, exec `true` to its end; returns its duration.
pub(crate) async fn docker_sequence(docker: &bollard::Docker, n: usize) -> anyhow::Result<Duration> {
    let name = format!("execd-bench-anchor-{}-{n}", std::process::id());
    let started = Instant::now();
    let body = ContainerCreateBody {
        image: Some(IMAGE.into()),
        cmd: Some(vec!["sleep".into(), "100000".into()]),
        labels: Some(HashMap::from([("execd-bench".into(), "anchor".into())])),
        ..Default::default()
    };
    let opts = bollard::query_parameters::CreateContainerOptionsBuilder::default()
        .name(&name)
        .build();
    let id = docker.create_container(Some(opts), body).await?.id;
    docker.start_container(&id, None).await?;
    let exec = docker
        .create_exec(
            &id,
            CreateExecOptions::<String> {
                cmd: Some(vec!["true".into()]),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..Default::default()
            },
        )
        .await?;
    if let StartExecResults::Attached { mut output, .. } = docker.start_exec(&exec.id, None).await? {
        while output.next().await.transpose()?.is_some() {}
    }
    let took = started.elapsed();
    let rm = RemoveContainerOptionsBuilder::default().force(true).build();
    docker.remove_container(&id, Some(rm)).await?;
    Ok(took)
}

async fn cold_create(ctx: &Ctx) -> anyhow::Result<Vec<Row>> {
    ensure_image()?;
    let docker = bollard::Docker::connect_with_local_defaults()?
        .negotiate_version()
        .await?;
    let sandboxd = Sandboxd::start(ctx)?;
    let runs = ctx.count(10);
    let (mut ours, mut bare) = (Vec::new(), Vec::new());
    for n in 0..runs {
        // Alternate, so that any drift of the machine affects both sides alike.
        bare.push(docker_sequence(&docker, n).await?);
        let started = Instant::now();
        let id = sandboxd.create().await?;
        let (base, token) = sandboxd.endpoint(&id, false).await?;
        command_true(&sandboxd.client, &base, &token).await?;
        ours.push(started.elapsed());
        sandboxd.delete(&id).await?;
    }
    let (ours, bare) = (percentile_ms(&ours, 50.0), percentile_ms(&bare, 50.0));
    Ok(vec![Row::new(
        format!("cold create → first command done (busybox image), p50 of {runs}"),
        ours,
        "ms",
    )
    .anchor("docker create + start + first exec (Engine API)", bare)
    .goal(Goal::RatioAtMost(1.2))])
}

async fn server_proxy(ctx: &Ctx) -> anyhow::Result<Vec<Row>> {
    ensure_image()?;
    let sandboxd = Sandboxd::start(ctx)?;
    let id = sandboxd.create().await?;
    let direct = sandboxd.endpoint(&id, false).await?;
    let proxied = sandboxd.endpoint(&id, true).await?;
    let runs = ctx.count(300);
    let client = reqwest::Client::builder().no_proxy().build()?;
    for (base, token) in [&direct, &proxied] {
        for _ in 0..20 {
            command_true(&client, base, token).await?; // warm both paths
        }
    }
    let (mut via_direct, mut via_proxy) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let t = Instant::now();
        command_true(&client, &direct.0, &direct.1).await?;
        via_direct.push(t.elapsed());
        let t = Instant::now();
        command_true(&client, &proxied.0, &proxied.1).await?;
        via_proxy.push(t.elapsed());
    }
    sandboxd.delete(&id).await?;
    let (d, p) = (percentile_ms(&via_direct, 50.0), percentile_ms(&via_proxy, 50.0));
    Ok(vec![
        Row::new(format!("`true` through the server proxy, p50 of {runs}"), p, "ms")
            .anchor("same on the direct endpoint", d),
        Row::new("server proxy overhead (p50 difference)", p - d, "ms").goal(Goal::AtMost(0.5)),
    ])
}
