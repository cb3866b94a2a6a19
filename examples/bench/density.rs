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

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context as _};
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
};
use futures_util::{stream, StreamExt as _};
use serde_json::json;

use crate::harness::{mb, median, percentile_ms, proc_status_bytes, Ctx, Goal, Row};
use crate::lifecycle::{ensure_image, IMAGE as BUSYBOX};
use crate::Section;
use host::{engine_pss, grown_mb, host_used, Census, Cgroup};
use server::{sweep_dead_runs, Labelled, Server};

mod host;
mod server;

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
            let n: usize = v
                .trim()
                .parse()
                .with_context(|| format!("{name}={v:?} is not a count"))?;
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
    if i.is_multiple_of(2) {
        BUSYBOX
    } else {
        PYTHON
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
    let created = create_all(server, size).await?;
    let mut census1 = Census::take(pid)?;
    ensure!(
        created.done.len() == n,
        "only {} of {n} creates succeeded ({} failed: {})",
        created.done.len(),
        created.failed.len(),
        created.failed.first().map(String::as_str).unwrap_or("")
    );
    let ids = server.made.lock().unwrap().iter().cloned().collect::<Vec<_>>();
    let containers = inspect_all(docker, labelled, size.concurrency).await?;
    // The containers' cgroups hold their CPU since they were made (all after `census0`).
    census1.sandboxes = containers
        .iter()
        .filter_map(|c| Cgroup::of(c.pid).ok()?.cpu().ok())
        .sum();
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
        Row::new(
            format!("sandboxd peak RSS (VmHWM) with {n} sandboxes"),
            mb(hwm),
            "MB",
        )
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
        for c in containers
            .iter()
            .filter(|c| c.image == image)
            .take(MEMORY_SAMPLE / 2)
        {
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
                    format!(
                        "container memory (cgroup) of an idle {name} sandbox{what}, median of {}",
                        cgroup.len()
                    ),
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
            ensure!(
                Instant::now() < deadline,
                "the warm kernel of {id} did not settle in 60 s"
            );
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
        ensure!(
            listed.len() == n,
            "the engine listed {} containers, {n} expected",
            listed.len()
        );
        if round == 0 {
            let total = page["pagination"]["totalItems"].as_u64().unwrap_or(0);
            ensure!(total == n as u64, "the list says {total} sandboxes, {n} expected");
        }
        if round % 5 == 0 {
            let t = Instant::now();
            let mut seen = 0;
            for p in 1.. {
                let page = server
                    .get(&format!("/v1/sandboxes?pageSize=200&page={p}"))
                    .await?;
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
                format!(
                    "sandboxd CPU with {n} idle sandboxes (share of one core over {} s)",
                    self.window.as_secs()
                ),
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
