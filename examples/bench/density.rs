//! Density (issue 16, goal 5): N idle sandboxes on one host, half `execd-test/busybox` and half
//! `execd-test/python:bookworm`, created with bounded concurrency through a sandboxd of this
//! section's own (its own data directory, hence its own instance label: it never touches other
//! sandboxes on a shared engine). Each figure stands beside an anchor from the same run:
//!
//! - create rate, overall and over the last 10 %, beside bare `docker create` + `start` of the
//!   same images (`sleep`, Engine API, same concurrency) on a small sample taken with 0 and
//!   with N sandboxes present; where the create phase's CPU went (engine, sandboxd, inside the
//!   sandboxes, this harness, everything else on the machine);
//! - sandboxd's VmRSS / VmHWM at N beside the same at 0;
//! - execd's RSS in sampled sandboxes (`/proc/<container init pid>/status`), each sandbox's
//!   container memory (its cgroup) beside a bare `sleep` container of the same image, and what
//!   the engine's per-container processes outside the cgroup add (PSS);
//! - `GET /v1/sandboxes` (default page, and all N in pages of 200) beside `GET /health`;
//! - delete rate at N beside bare `docker rm -f` of the sample.
//!
//! `EXECD_BENCH_DENSITY_N` (default 500; 20 with `--quick`) and
//! `EXECD_BENCH_DENSITY_CONCURRENCY` (default 8) size the run. Clean-up always runs, on success,
//! on a failure and on Ctrl-C: every sandbox left is deleted through sandboxd, then (with
//! sandboxd stopped) every container carrying this run's label is removed with `docker rm -f`,
//! and the section fails unless none is left. Containers of an earlier run that was killed
//! outright (its process gone) are removed by label at the start.

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context as _};
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
};
use futures_util::{stream, StreamExt as _};
use serde_json::{json, Value};

use crate::harness::{mb, median, percentile_ms, proc_status_bytes, Ctx, Goal, Row};
use crate::lifecycle::{ensure_image, IMAGE as BUSYBOX};
use crate::Section;

/// The second image: debootstrap minbase with python3 and ipykernel.
const PYTHON: &str = "execd-test/python:bookworm";
/// The environment of the python sandboxes: execd's warm python kernel (on by default where
/// ipykernel is installed) off, so that they are idle. A warm kernel costs about 100 MB and
/// 0.7 CPU-s per sandbox (the last rows measure it on two), which 250 of would not fit here.
const PYTHON_ENV: (&str, &str) = ("EXECD_KERNEL_POOL", "0");
/// Python sandboxes made with execd's defaults (a warm kernel) at the end, for its cost.
const WARM_SAMPLE: usize = 2;
/// Label (and sandbox metadata key) on everything this section makes; the value is the
/// harness's pid, so a later run can tell a dead run's leftovers from a live one's.
const LABEL: &str = "execd-bench-density";
/// Bare containers per anchor sample (half of each image).
const ANCHOR_SAMPLE: usize = 20;
/// Sandboxes whose execd and cgroup memory are read (half of each image).
const MEMORY_SAMPLE: usize = 20;
/// How long the idle CPU is watched with N present.
const IDLE_WINDOW: Duration = Duration::from_secs(10);
/// Failed creates after which no more are sent.
const MAX_FAILED_CREATES: usize = 10;

/// The sections of this area, in the order they run.
pub fn sections() -> Vec<Section> {
    vec![Section {
        name: "density",
        run: |ctx| Box::pin(density(ctx)),
    }]
}

/// How big a run is.
struct Size {
    n: usize,
    concurrency: usize,
}

fn env_count(name: &str, default: usize) -> anyhow::Result<usize> {
    match std::env::var(name) {
        Ok(v) => {
            let n: usize = v.trim().parse().with_context(|| format!("{name}={v:?} is not a count"))?;
            ensure!(n >= 1, "{name} must be at least 1");
            Ok(n)
        }
        Err(_) => Ok(default),
    }
}

impl Size {
    fn of(ctx: &Ctx) -> anyhow::Result<Self> {
        Ok(Self {
            n: env_count("EXECD_BENCH_DENSITY_N", if ctx.quick { 20 } else { 500 })?,
            concurrency: env_count("EXECD_BENCH_DENSITY_CONCURRENCY", 8)?,
        })
    }
}

/// The image of the `i`th container of a run: busybox and python alternating.
fn image_of(i: usize) -> &'static str {
    if i % 2 == 0 {
        BUSYBOX
    } else {
        PYTHON
    }
}

/// The containers this run labelled, removed by label when dropped (the last resort).
struct Labelled {
    value: String,
}

impl Labelled {
    fn new() -> Self {
        Self {
            value: std::process::id().to_string(),
        }
    }

    /// Ids of the containers carrying this run's label.
    fn containers(&self) -> anyhow::Result<Vec<String>> {
        containers_labelled(&format!("{LABEL}={}", self.value))
    }

    /// `docker rm -f` of every container with this run's label; how many there were.
    fn sweep(&self) -> anyhow::Result<usize> {
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
fn sweep_dead_runs() -> anyhow::Result<()> {
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
        eprintln!("density: removing {} containers of an earlier, killed run", dead.len());
        remove_containers(&dead)?;
    }
    Ok(())
}

/// The section's own sandboxd, in its own process group so that a Ctrl-C at the terminal
/// reaches only the harness, which then cleans up through it; killed on drop.
struct Server {
    child: Child,
    base: String,
    client: reqwest::Client,
    made: Mutex<BTreeSet<String>>,
    /// The metadata every sandbox of this run carries (it becomes its container's label).
    metadata: Value,
    _data: tempfile::TempDir,
}

impl Server {
    fn start(ctx: &Ctx, size: &Size, labelled: &Labelled) -> anyhow::Result<Self> {
        let data = tempfile::tempdir()?;
        // Raised for the bench only: the per-user quota (N plus room) and the request rates.
        let quota = (size.n + 100).to_string();
        let mut child = Command::new(&ctx.sandboxd)
            .args(["serve", "--host", "127.0.0.1", "--port", "0", "--agent"])
            .arg(&ctx.agent)
            .arg("--data-dir")
            .arg(data.path())
            .args(["--rate-create", "0", "--rate-read", "0", "--max-sandboxes-per-user"])
            .arg(quota)
            .env("RUST_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start {}", ctx.sandboxd.display()))?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("no stdout")?).read_line(&mut line)?;
        let base = line
            .trim()
            .strip_prefix("sandboxd listening on ")
            .with_context(|| format!("unexpected first line {line:?}"))?
            .to_owned();
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

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// An idle sandbox of `image`; its id once sandboxd answered (execd is up by then).
    async fn create(&self, image: &str) -> anyhow::Result<String> {
        let env = if image == PYTHON {
            json!({ PYTHON_ENV.0: PYTHON_ENV.1 })
        } else {
            json!({})
        };
        self.create_with(image, env).await
    }

    /// A sandbox of `image` with `env`.
    async fn create_with(&self, image: &str, env: Value) -> anyhow::Result<String> {
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

    async fn delete(&self, id: &str) -> anyhow::Result<()> {
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
    async fn delete_all(&self, concurrency: usize) -> usize {
        let ids: Vec<String> = self.made.lock().unwrap().iter().cloned().collect();
        stream::iter(ids)
            .map(|id| async move { self.delete(&id).await })
            .buffer_unordered(concurrency)
            .filter(|r| std::future::ready(r.is_err()))
            .count()
            .await
    }

    /// `GET path` to its end; fails unless 200.
    async fn get(&self, path: &str) -> anyhow::Result<Value> {
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

async fn density(ctx: &Ctx) -> anyhow::Result<Vec<Row>> {
    let size = Size::of(ctx)?;
    ensure_image()?;
    let ok = Command::new("scripts/build-test-image.sh")
        .arg("python")
        .stdout(Stdio::null())
        .status()?
        .success();
    ensure!(ok, "scripts/build-test-image.sh python failed");
    sweep_dead_runs()?;
    let docker = bollard::Docker::connect_with_local_defaults()?
        .negotiate_version()
        .await?;
    // Declared first, dropped last: the label sweep runs after sandboxd is stopped.
    let labelled = Labelled::new();
    let server = Server::start(ctx, &size, &labelled)?;
    eprintln!(
        "density: {} sandboxes, {} creates at a time (EXECD_BENCH_DENSITY_N, _CONCURRENCY)",
        size.n, size.concurrency
    );
    let measured = tokio::select! {
        rows = measure(&server, &labelled, &docker, &size) => rows,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted (Ctrl-C)")),
    };
    // Whatever happened: delete what is left through sandboxd, stop it, then sweep the label.
    let left = server.made.lock().unwrap().len();
    if left > 0 {
        eprintln!("density: cleaning up {left} sandboxes through sandboxd …");
        let failed = server.delete_all(size.concurrency).await;
        if failed > 0 {
            eprintln!("density: {failed} deletes failed; the label sweep removes them");
        }
    }
    drop(server);
    let swept = labelled.sweep()?;
    if swept > 0 {
        eprintln!("density: removed {swept} labelled containers left behind");
    }
    let after = labelled.containers()?.len();
    let mut rows = measured?;
    rows.push(
        Row::new(
            "containers of this run left after clean-up (deleted through sandboxd, then `docker rm -f` by label)",
            after as f64,
            "",
        )
        .goal(Goal::AtMost(0.0)),
    );
    ensure!(after == 0, "{after} containers of this run are still there");
    Ok(rows)
}

async fn measure(
    server: &Server,
    labelled: &Labelled,
    docker: &bollard::Docker,
    size: &Size,
) -> anyhow::Result<Vec<Row>> {
    let n = size.n;
    let pid = server.pid();
    let rss0 = proc_status_bytes(pid, "VmRSS")?;
    let hwm0 = proc_status_bytes(pid, "VmHWM")?;
    let host0 = host_used()?;
    let engine0 = engine_pss();

    eprintln!("density: anchor sample of {ANCHOR_SAMPLE} bare containers, none present …");
    let bare0 = bare_sample(docker, labelled, size.concurrency, "empty").await?;

    eprintln!("density: creating {n} sandboxes …");
    let census0 = Census::take(pid)?;
    let created = create_all(server, size).await;
    let ids = server.made.lock().unwrap().iter().cloned().collect::<Vec<_>>();
    let containers = inspect_all(docker, labelled, size.concurrency).await?;
    let mut census1 = Census::take(pid)?;
    census1.sandboxes = containers
        .iter()
        .filter_map(|c| Cgroup::of(c.pid).ok()?.cpu().ok())
        .sum();
    let created = created?;
    ensure!(
        created.done.len() == n,
        "only {} of {n} creates succeeded ({} failed: {})",
        created.done.len(),
        created.failed.len(),
        created.failed.first().map(String::as_str).unwrap_or("")
    );
    ensure!(ids.len() == n, "{} sandboxes recorded, {n} expected", ids.len());

    let rss = proc_status_bytes(pid, "VmRSS")?;
    let hwm = proc_status_bytes(pid, "VmHWM")?;
    let host = host_used()?;
    let engine = engine_pss();

    eprintln!("density: reading the memory of {MEMORY_SAMPLE} sandboxes …");
    let sample = memory_sample(&containers);

    eprintln!("density: list latency with {n} present …");
    let lists = list_latency(server, docker, labelled, n).await?;

    eprintln!("density: idle for {} s …", IDLE_WINDOW.as_secs());
    let idle = idle_cpu(pid, &containers).await?;

    eprintln!("density: anchor sample of {ANCHOR_SAMPLE} bare containers, {n} present …");
    let bare_n = bare_sample(docker, labelled, size.concurrency, "full").await?;

    eprintln!("density: deleting {n} sandboxes …");
    let started = Instant::now();
    let failed = server.delete_all(size.concurrency).await;
    let delete_took = started.elapsed();
    ensure!(failed == 0, "{failed} of {n} deletes failed");
    let rss_after = proc_status_bytes(pid, "VmRSS")?;

    eprintln!("density: {WARM_SAMPLE} python sandboxes with execd's warm kernel (its default) …");
    let warm = warm_kernel(server, docker).await?;

    let mut rows = Vec::new();
    let c = size.concurrency;
    rows.push(
        Row::new(
            format!("create rate, {n} idle sandboxes (half busybox, half python), {c} at a time, overall"),
            created.rate_overall(),
            "/s",
        )
        .anchor(
            format!("bare `docker create` + `start` (`sleep`, Engine API) of the same images, {c} at a time, {ANCHOR_SAMPLE} with none present"),
            bare0.create_rate,
        )
        .goal(Goal::AtLeast(10.0)),
    );
    rows.push(
        Row::new(
            format!("create rate over the last 10 % ({} → {n} present)", n - n / 10),
            created.rate_last_tenth(),
            "/s",
        )
        .anchor(
            format!("the same bare sample with {n} present"),
            bare_n.create_rate,
        ),
    );
    rows.push(
        Row::new(
            "create latency (POST → answered, execd up), p50",
            percentile_ms(&created.latencies, 50.0),
            "ms",
        )
        .anchor(
            "bare create + start, p50 (none present)",
            percentile_ms(&bare0.latencies, 50.0),
        ),
    );
    rows.push(
        Row::new(
            "create latency, p99",
            percentile_ms(&created.latencies, 99.0),
            "ms",
        )
        .anchor(
            format!("bare create + start, p99 ({n} present)"),
            percentile_ms(&bare_n.latencies, 99.0),
        ),
    );
    rows.extend(census1.since(&census0).rows(n, created.took));
    rows.push(
        Row::new(format!("sandboxd RSS (VmRSS) with {n} sandboxes"), mb(rss), "MB")
            .anchor("sandboxd VmRSS with none", mb(rss0)),
    );
    rows.push(
        Row::new(format!("sandboxd peak RSS (VmHWM) with {n} sandboxes"), mb(hwm), "MB")
            .anchor("sandboxd VmHWM with none", mb(hwm0)),
    );
    rows.push(
        Row::new("sandboxd VmRSS after deleting them all", mb(rss_after), "MB")
            .anchor("sandboxd VmRSS with none, before", mb(rss0)),
    );
    let python_idle = median(&sample.cgroup[1]);
    rows.extend(sample.rows(&bare0));
    rows.extend(warm.rows(python_idle));
    rows.push(
        Row::new(
            "engine processes outside the cgroup per sandbox (shim, fuse-overlayfs, 2 docker-proxy), PSS growth / N",
            mb(engine.saturating_sub(engine0)) / n as f64,
            "MB",
        )
        .anchor(
            "the same per bare container (shim, fuse-overlayfs; no published port)",
            bare0.engine_pss_each,
        ),
    );
    rows.push(
        Row::new(
            "host memory in use per sandbox ((MemTotal − MemAvailable) growth / N; other work on the machine moves it)",
            grown_mb(host0, host) / n as f64,
            "MB",
        )
        .anchor("the same per bare container", bare0.host_each),
    );
    rows.extend(lists.rows(n));
    rows.extend(idle.rows(n));
    rows.push(
        Row::new(
            format!("delete rate at {n} (DELETE /v1/sandboxes/{{id}}, {c} at a time)"),
            n as f64 / delete_took.as_secs_f64(),
            "/s",
        )
        .anchor(
            format!("bare `docker rm -f` (Engine API) of the sample, {c} at a time, {n} present"),
            bare_n.delete_rate,
        ),
    );
    Ok(rows)
}

/// The create phase's outcome.
struct Created {
    /// When each successful create was answered, since the phase started.
    done: Vec<Duration>,
    latencies: Vec<Duration>,
    failed: Vec<String>,
    took: Duration,
}

impl Created {
    fn rate_overall(&self) -> f64 {
        self.done.len() as f64 / self.took.as_secs_f64()
    }

    /// Creates answered per second between the 90 % mark and the last.
    fn rate_last_tenth(&self) -> f64 {
        let mut done = self.done.clone();
        done.sort_unstable();
        let n = done.len();
        let from = n - n / 10;
        if from == 0 || from >= n {
            return f64::NAN;
        }
        (n - from) as f64 / (done[n - 1] - done[from - 1]).as_secs_f64()
    }
}

async fn create_all(server: &Server, size: &Size) -> anyhow::Result<Created> {
    let started = Instant::now();
    let failed = Mutex::new(Vec::new());
    let progress = std::sync::atomic::AtomicUsize::new(0);
    let step = (size.n / 10).max(1);
    let results: Vec<(Duration, Duration)> = stream::iter(0..size.n)
        .map(|i| {
            let (failed, progress) = (&failed, &progress);
            async move {
                if failed.lock().unwrap().len() >= MAX_FAILED_CREATES {
                    return None;
                }
                let t = Instant::now();
                match server.create(image_of(i)).await {
                    Ok(_) => {
                        let done = progress.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                        if done % step == 0 {
                            eprintln!(
                                "density: {done} created, {:.1} s",
                                started.elapsed().as_secs_f64()
                            );
                        }
                        Some((started.elapsed(), t.elapsed()))
                    }
                    Err(e) => {
                        eprintln!("density: {e:#}");
                        failed.lock().unwrap().push(format!("{e:#}"));
                        None
                    }
                }
            }
        })
        .buffer_unordered(size.concurrency)
        .filter_map(std::future::ready)
        .collect()
        .await;
    let took = started.elapsed();
    let (done, latencies) = results.into_iter().unzip();
    Ok(Created {
        done,
        latencies,
        failed: failed.into_inner().unwrap(),
        took,
    })
}

/// A container of this run: its id, image and init pid (execd, in a sandbox).
struct Container {
    image: String,
    pid: u32,
}

async fn inspect_all(
    docker: &bollard::Docker,
    labelled: &Labelled,
    concurrency: usize,
) -> anyhow::Result<Vec<Container>> {
    let ids = labelled.containers()?;
    let found: Vec<anyhow::Result<Container>> = stream::iter(ids)
        .map(|id| async move {
            let info = docker.inspect_container(&id, None).await?;
            let pid = info.state.and_then(|s| s.pid).unwrap_or(0);
            ensure!(pid > 0, "container {id} is not running");
            Ok(Container {
                image: info.config.and_then(|c| c.image).unwrap_or_default(),
                pid: pid as u32,
            })
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    found.into_iter().collect()
}

/// A bare sample: `ANCHOR_SAMPLE` containers of the same images running `sleep`, created and
/// started through the Engine API `concurrency` at a time, read, then removed the same way.
struct Bare {
    create_rate: f64,
    latencies: Vec<Duration>,
    delete_rate: f64,
    /// Median cgroup memory of a bare container, per image (busybox, python), in MB.
    memory: [f64; 2],
    /// Engine processes' PSS growth per bare container, MB.
    engine_pss_each: f64,
    /// Host memory in use, growth per bare container, MB.
    host_each: f64,
}

async fn bare_sample(
    docker: &bollard::Docker,
    labelled: &Labelled,
    concurrency: usize,
    tag: &str,
) -> anyhow::Result<Bare> {
    let (engine0, host0) = (engine_pss(), host_used()?);
    let started = Instant::now();
    let made: Vec<anyhow::Result<(String, &str, Duration)>> = stream::iter(0..ANCHOR_SAMPLE)
        .map(|i| async move {
            let t = Instant::now();
            let image = image_of(i);
            let name = format!("{LABEL}-{}-{tag}-{i}", labelled.value);
            let body = ContainerCreateBody {
                image: Some(image.into()),
                cmd: Some(vec!["sleep".into(), "1000000".into()]),
                labels: Some(HashMap::from([(LABEL.into(), labelled.value.clone())])),
                ..Default::default()
            };
            let opts = CreateContainerOptionsBuilder::default().name(&name).build();
            let id = docker.create_container(Some(opts), body).await?.id;
            docker.start_container(&id, None).await?;
            Ok((id, image, t.elapsed()))
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let create_took = started.elapsed();
    let made: Vec<(String, &str, Duration)> = made.into_iter().collect::<anyhow::Result<_>>()?;
    let (engine, host) = (engine_pss(), host_used()?);
    let mut memory: [Vec<f64>; 2] = Default::default();
    for (id, image, _) in &made {
        let info = docker.inspect_container(id, None).await?;
        let pid = info.state.and_then(|s| s.pid).unwrap_or(0);
        if let Ok(bytes) = Cgroup::of(pid as u32).and_then(|c| c.memory()) {
            memory[usize::from(*image == PYTHON)].push(mb(bytes));
        }
    }
    let started = Instant::now();
    let removed: Vec<anyhow::Result<()>> = stream::iter(&made)
        .map(|(id, _, _)| async move {
            let rm = RemoveContainerOptionsBuilder::default().force(true).build();
            docker.remove_container(id, Some(rm)).await?;
            Ok(())
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let delete_took = started.elapsed();
    removed.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    let each = |grown: u64| mb(grown) / ANCHOR_SAMPLE as f64;
    Ok(Bare {
        create_rate: ANCHOR_SAMPLE as f64 / create_took.as_secs_f64(),
        latencies: made.iter().map(|m| m.2).collect(),
        delete_rate: ANCHOR_SAMPLE as f64 / delete_took.as_secs_f64(),
        memory: [median(&memory[0]), median(&memory[1])],
        engine_pss_each: each(engine.saturating_sub(engine0)),
        host_each: grown_mb(host0, host) / ANCHOR_SAMPLE as f64,
    })
}

/// execd's RSS and the container's cgroup memory in a few sandboxes of each image.
struct MemorySample {
    /// Per image (busybox, python): execd VmRSS and cgroup memory, MB.
    execd: [Vec<f64>; 2],
    cgroup: [Vec<f64>; 2],
}

fn memory_sample(containers: &[Container]) -> MemorySample {
    let mut s = MemorySample {
        execd: Default::default(),
        cgroup: Default::default(),
    };
    for (k, image) in [BUSYBOX, PYTHON].into_iter().enumerate() {
        for c in containers.iter().filter(|c| c.image == image).take(MEMORY_SAMPLE / 2) {
            if let Ok(rss) = proc_status_bytes(c.pid, "VmRSS") {
                s.execd[k].push(mb(rss));
            }
            if let Ok(bytes) = Cgroup::of(c.pid).and_then(|g| g.memory()) {
                s.cgroup[k].push(mb(bytes));
            }
        }
    }
    s
}

impl MemorySample {
    fn rows(&self, bare: &Bare) -> Vec<Row> {
        let max = |v: &[f64]| v.iter().copied().fold(f64::NAN, f64::max);
        let mut rows = Vec::new();
        for (k, name) in ["busybox", "python"].into_iter().enumerate() {
            let (execd, cgroup) = (&self.execd[k], &self.cgroup[k]);
            rows.push(
                Row::new(
                    format!(
                        "execd RSS in an idle {name} sandbox, median of {} (max {} MB)",
                        execd.len(),
                        crate::harness::num(max(execd))
                    ),
                    median(execd),
                    "MB",
                )
                .goal(Goal::AtMost(5.0)),
            );
            let what = if k == 1 {
                " (execd and `sleep`; no warm kernel)"
            } else {
                " (execd and `sleep`)"
            };
            rows.push(
                Row::new(
                    format!("container memory (cgroup) of an idle {name} sandbox{what}, median of {}", cgroup.len()),
                    median(cgroup),
                    "MB",
                )
                .anchor(format!("a bare {name} `sleep` container, median"), bare.memory[k]),
            );
        }
        rows
    }
}

/// Python sandboxes with execd's default warm kernel: memory and CPU of each, once settled.
struct Warm {
    memory: Vec<f64>,
    cpu: Vec<Duration>,
}

async fn warm_kernel(server: &Server, docker: &bollard::Docker) -> anyhow::Result<Warm> {
    let mut warm = Warm {
        memory: Vec::new(),
        cpu: Vec::new(),
    };
    for _ in 0..WARM_SAMPLE {
        let id = server.create_with(PYTHON, json!({})).await?;
        let info = docker.inspect_container(&format!("sandbox-{id}"), None).await?;
        let pid = info.state.and_then(|s| s.pid).unwrap_or(0) as u32;
        let cgroup = Cgroup::of(pid)?;
        // Settled: the kernel process is there and the cgroup used no CPU for half a second
        // (a bench, not a test: a bounded poll of what the engine reports).
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = cgroup.cpu()?;
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let now = cgroup.cpu()?;
            let kernel = cgroup.procs().iter().any(|p| {
                std::fs::read_to_string(format!("/proc/{p}/cmdline")).is_ok_and(|c| c.contains("ipykernel"))
            });
            let settled = kernel && now.saturating_sub(last) < Duration::from_millis(20);
            last = now;
            if settled {
                break;
            }
            ensure!(Instant::now() < deadline, "the warm kernel of {id} did not settle in 60 s");
        }
        warm.memory.push(mb(cgroup.memory()?));
        warm.cpu.push(last);
        server.delete(&id).await?;
    }
    Ok(warm)
}

impl Warm {
    fn rows(&self, idle_python: f64) -> Vec<Row> {
        vec![
            Row::new(
                format!(
                    "context: container memory of a python sandbox with execd's default warm kernel (`EXECD_KERNEL_POOL=1`), median of {}",
                    self.memory.len()
                ),
                median(&self.memory),
                "MB",
            )
            .anchor("the idle python sandbox above (`EXECD_KERNEL_POOL=0`)", idle_python),
            Row::new(
                "context: CPU of such a sandbox once settled (its cgroup: execd start and the warm kernel), p50",
                percentile_ms(&self.cpu, 50.0),
                "ms",
            ),
        ]
    }
}

/// List latency with N present.
struct Lists {
    page: Vec<Duration>,
    all: Vec<Duration>,
    health: Vec<Duration>,
    /// The engine's list of the same containers, which sandboxd asks for on every list.
    engine: Vec<Duration>,
}

async fn list_latency(
    server: &Server,
    docker: &bollard::Docker,
    labelled: &Labelled,
    n: usize,
) -> anyhow::Result<Lists> {
    let mut l = Lists {
        page: Vec::new(),
        all: Vec::new(),
        health: Vec::new(),
        engine: Vec::new(),
    };
    let filters = HashMap::from([("label".to_owned(), vec![format!("{LABEL}={}", labelled.value)])]);
    for _ in 0..3 {
        server.get("/v1/sandboxes").await?; // warm
    }
    for round in 0..50 {
        let t = Instant::now();
        server.get("/health").await?;
        l.health.push(t.elapsed());
        let t = Instant::now();
        let page = server.get("/v1/sandboxes").await?;
        l.page.push(t.elapsed());
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let t = Instant::now();
        let listed = docker.list_containers(Some(options)).await?;
        l.engine.push(t.elapsed());
        ensure!(listed.len() == n, "the engine listed {} containers, {n} expected", listed.len());
        if round == 0 {
            let total = page["pagination"]["totalItems"].as_u64().unwrap_or(0);
            ensure!(total == n as u64, "the list says {total} sandboxes, {n} expected");
        }
        if round % 5 == 0 {
            let t = Instant::now();
            let mut seen = 0;
            for p in 1.. {
                let page = server.get(&format!("/v1/sandboxes?pageSize=200&page={p}")).await?;
                seen += page["items"].as_array().map_or(0, Vec::len);
                if !page["pagination"]["hasNextPage"].as_bool().unwrap_or(false) {
                    break;
                }
            }
            l.all.push(t.elapsed());
            ensure!(seen == n, "the pages held {seen} sandboxes, {n} expected");
        }
    }
    Ok(l)
}

impl Lists {
    fn rows(&self, n: usize) -> Vec<Row> {
        let health = percentile_ms(&self.health, 50.0);
        let (page, engine) = (percentile_ms(&self.page, 50.0), percentile_ms(&self.engine, 50.0));
        vec![
            Row::new(
                format!("`GET /v1/sandboxes` (default page of 20) with {n} present, p50 of {}", self.page.len()),
                percentile_ms(&self.page, 50.0),
                "ms",
            )
            .anchor("`GET /health`, p50, interleaved", health)
            .goal(Goal::AtMost(20.0)),
            Row::new(
                format!(
                    "all {n} listed (pages of 200, {} requests), p50 of {}",
                    n.div_ceil(200),
                    self.all.len()
                ),
                percentile_ms(&self.all, 50.0),
                "ms",
            )
            .anchor("`GET /health`, p50", health),
            Row::new(
                format!(
                    "context: the engine's list of the same {n} containers (`GET /containers/json?all=1`, label filter: what sandboxd asks on every list), p50, interleaved"
                ),
                engine,
                "ms",
            )
            .anchor("sandboxd's default page, p50", page),
            Row::new("context: sandboxd's own share of a list (p50 difference)", page - engine, "ms"),
        ]
    }
}

/// CPU while N sandboxes sit idle.
struct Idle {
    sandboxd: Duration,
    sandboxes: Duration,
    window: Duration,
}

async fn idle_cpu(pid: u32, containers: &[Container]) -> anyhow::Result<Idle> {
    let inside = || -> Duration {
        containers
            .iter()
            .filter_map(|c| Cgroup::of(c.pid).ok()?.cpu().ok())
            .sum()
    };
    let (s0, c0, t) = (crate::harness::proc_cpu(pid)?, inside(), Instant::now());
    tokio::time::sleep(IDLE_WINDOW).await;
    let (s1, c1) = (crate::harness::proc_cpu(pid)?, inside());
    Ok(Idle {
        sandboxd: s1.saturating_sub(s0),
        sandboxes: c1.saturating_sub(c0),
        window: t.elapsed(),
    })
}

impl Idle {
    fn rows(&self, n: usize) -> Vec<Row> {
        let share = |d: Duration| d.as_secs_f64() / self.window.as_secs_f64() * 100.0;
        vec![
            Row::new(
                format!("sandboxd CPU with {n} idle sandboxes (share of one core over {} s)", self.window.as_secs()),
                share(self.sandboxd),
                "%",
            ),
            Row::new(
                "CPU inside one idle sandbox (all its cgroup's processes), mean",
                share(self.sandboxes) / n as f64,
                "%",
            ),
        ]
    }
}

/// CPU time used so far, by who used it: this run's sandboxd, the engine's processes
/// (dockerd, containerd, shims with the runc runs they reaped, fuse-overlayfs, docker-proxy),
/// the containers' cgroups, this harness, and the whole machine.
#[derive(Default, Clone)]
struct Census {
    sandboxd: Duration,
    engine: Duration,
    sandboxes: Duration,
    harness: Duration,
    machine: Duration,
    /// Per (pid, start time): the engine processes' CPU, so a process that only exists in the
    /// later census counts in full.
    engine_procs: HashMap<(u32, u64), Duration>,
}

/// Process names (`comm`, 15 bytes at most) of the container engine.
const ENGINE: &[&str] = &[
    "dockerd",
    "containerd",
    "containerd-shim",
    "runc",
    "fuse-overlayfs",
    "docker-proxy",
];

impl Census {
    fn take(sandboxd: u32) -> anyhow::Result<Self> {
        let mut c = Census::default();
        for entry in std::fs::read_dir("/proc")? {
            let Some(pid) = entry?.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Some(stat) = ProcStat::read(pid) else { continue };
            if pid == sandboxd {
                c.sandboxd = stat.cpu;
            } else if ENGINE.contains(&stat.comm.as_str()) {
                c.engine_procs.insert((pid, stat.start), stat.cpu);
            }
        }
        c.engine = c.engine_procs.values().sum();
        c.harness = crate::harness::rusage_cpu(libc::RUSAGE_SELF);
        c.machine = machine_busy()?;
        Ok(c)
    }

    /// What was used between `before` and `self`.
    fn since(&self, before: &Census) -> Census {
        let engine = self
            .engine_procs
            .iter()
            .map(|(k, now)| now.saturating_sub(before.engine_procs.get(k).copied().unwrap_or_default()))
            .sum();
        Census {
            sandboxd: self.sandboxd.saturating_sub(before.sandboxd),
            engine,
            sandboxes: self.sandboxes.saturating_sub(before.sandboxes),
            harness: self.harness.saturating_sub(before.harness),
            machine: self.machine.saturating_sub(before.machine),
            engine_procs: HashMap::new(),
        }
    }

    fn rows(&self, n: usize, wall: Duration) -> Vec<Row> {
        let per = |d: Duration| d.as_secs_f64() * 1e3 / n as f64;
        let ours = self.sandboxd + self.engine + self.sandboxes + self.harness;
        let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
        vec![
            Row::new(
                "create phase, CPU per sandbox: the engine (dockerd, containerd, shims and their runc runs, fuse-overlayfs, docker-proxy)",
                per(self.engine),
                "ms",
            ),
            Row::new("create phase, CPU per sandbox: sandboxd", per(self.sandboxd), "ms"),
            Row::new(
                "create phase, CPU per sandbox: inside the sandbox (its cgroup: execd, `sleep`, python's warm kernel)",
                per(self.sandboxes),
                "ms",
            ),
            Row::new("create phase, CPU per sandbox: this harness", per(self.harness), "ms"),
            Row::new(
                "create phase, CPU per sandbox: everything else on the machine (other work)",
                per(self.machine.saturating_sub(ours)),
                "ms",
            ),
            Row::new(
                format!("create phase: machine busy (all {cores} cores)"),
                self.machine.as_secs_f64() / (wall.as_secs_f64() * cores as f64) * 100.0,
                "%",
            ),
        ]
    }
}

/// The fields of `/proc/<pid>/stat` the census needs.
struct ProcStat {
    comm: String,
    /// Start time in clock ticks after boot (tells a reused pid apart).
    start: u64,
    /// utime + stime + cutime + cstime: its own CPU and that of the children it reaped.
    cpu: Duration,
}

impl ProcStat {
    fn read(pid: u32) -> Option<Self> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let open = text.find('(')?;
        let close = text.rfind(')')?;
        let comm = text[open + 1..close].to_owned();
        let fields: Vec<&str> = text[close + 1..].split_whitespace().collect();
        // Field numbers as in proc(5); `fields[0]` is field 3 (state).
        let field = |i: usize| fields.get(i - 3)?.parse::<u64>().ok();
        let ticks = field(14)? + field(15)? + field(16)? + field(17)?;
        Some(Self {
            comm,
            start: field(22)?,
            cpu: ticks_to_duration(ticks),
        })
    }
}

fn ticks_to_duration(ticks: u64) -> Duration {
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_micros(ticks * 1_000_000 / hz)
}

/// Busy CPU time of the whole machine so far (`/proc/stat`, everything but idle and iowait).
fn machine_busy() -> anyhow::Result<Duration> {
    let text = std::fs::read_to_string("/proc/stat")?;
    let line = text.lines().next().context("empty /proc/stat")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    ensure!(v.len() >= 8, "short cpu line in /proc/stat");
    // user nice system idle iowait irq softirq steal
    Ok(ticks_to_duration(v[0] + v[1] + v[2] + v[5] + v[6] + v[7]))
}

/// `after − before` in MB, negative when it shrank (other work on the machine).
fn grown_mb(before: u64, after: u64) -> f64 {
    (after as f64 - before as f64) / 1e6
}

/// Host memory in use: MemTotal − MemAvailable, in bytes.
fn host_used() -> anyhow::Result<u64> {
    let text = std::fs::read_to_string("/proc/meminfo")?;
    let field = |name: &str| -> anyhow::Result<u64> {
        let line = text
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("no {name} in /proc/meminfo"))?;
        let kib: u64 = line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()?;
        Ok(kib * 1024)
    };
    Ok(field("MemTotal:")?.saturating_sub(field("MemAvailable:")?))
}

/// Summed PSS of the engine's per-container processes (shims, fuse-overlayfs, docker-proxy),
/// in bytes; processes that cannot be read count nothing.
fn engine_pss() -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else { return 0 };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| {
                matches!(c.trim_end(), "containerd-shim" | "fuse-overlayfs" | "docker-proxy")
            })
        })
        .filter_map(|pid| {
            let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
            let line = text.lines().find(|l| l.starts_with("Pss:"))?;
            let kib: u64 = line[4..].trim().trim_end_matches("kB").trim().parse().ok()?;
            Some(kib * 1024)
        })
        .sum()
}

/// A process's memory and CPU cgroup (v1 or v2), found from `/proc/<pid>/cgroup`.
struct Cgroup {
    memory: PathBuf,
    cpu: PathBuf,
    v2: bool,
}

impl Cgroup {
    fn of(pid: u32) -> anyhow::Result<Self> {
        let path = format!("/proc/{pid}/cgroup");
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
        let (mut memory, mut cpu, mut unified) = (None, None, None);
        for line in text.lines() {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, p) = (parts.next(), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let p = p.trim_start_matches('/');
            if controllers.is_empty() {
                unified = Some(p.to_owned());
            }
            for ctl in controllers.split(',') {
                match ctl {
                    "memory" => memory = Some(PathBuf::from("/sys/fs/cgroup/memory").join(p)),
                    "cpuacct" => cpu = Some(PathBuf::from(format!("/sys/fs/cgroup/{controllers}")).join(p)),
                    _ => {}
                }
            }
        }
        match (memory, cpu, unified) {
            (Some(memory), Some(cpu), _) => Ok(Self { memory, cpu, v2: false }),
            (_, _, Some(p)) => {
                let dir = PathBuf::from("/sys/fs/cgroup").join(p);
                Ok(Self {
                    memory: dir.clone(),
                    cpu: dir,
                    v2: true,
                })
            }
            _ => bail!("no memory or cpu cgroup in {path}"),
        }
    }

    /// Memory charged to the cgroup (`memory.current`, v1 `memory.usage_in_bytes`).
    fn memory(&self) -> anyhow::Result<u64> {
        let file = self
            .memory
            .join(if self.v2 { "memory.current" } else { "memory.usage_in_bytes" });
        let text = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
        Ok(text.trim().parse()?)
    }

    /// The processes in the cgroup.
    fn procs(&self) -> Vec<u32> {
        std::fs::read_to_string(self.memory.join("cgroup.procs"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    /// CPU used by the cgroup so far (`cpu.stat` usage_usec, v1 `cpuacct.usage`).
    fn cpu(&self) -> anyhow::Result<Duration> {
        if self.v2 {
            let text = std::fs::read_to_string(self.cpu.join("cpu.stat"))?;
            let usec: u64 = text
                .lines()
                .find_map(|l| l.strip_prefix("usage_usec "))
                .context("no usage_usec")?
                .trim()
                .parse()?;
            Ok(Duration::from_micros(usec))
        } else {
            let text = std::fs::read_to_string(self.cpu.join("cpuacct.usage"))?;
            Ok(Duration::from_nanos(text.trim().parse()?))
        }
    }
}
