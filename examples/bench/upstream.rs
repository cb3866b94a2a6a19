//! sandboxd beside the server it replaces: `opensandbox-server` 1.1.1 from PyPI (a bench-only
//! venv, `target/bench-osb`, that `scripts/bench.sh` makes), on the same Docker engine and
//! configured with **our** agent image (`Dockerfile.agent`, a drop-in for upstream's execd
//! image), so both servers start the same image with the same agent. Every figure alternates
//! between the two servers request by request, so load on the shared machine falls on both.
//!
//! - cold create → execd answering `/ping` → first `true` done through the returned execd
//!   endpoint (what an SDK does), p50;
//! - `GET /v1/sandboxes` (no query: each server's default page) with 100 sandboxes present;
//! - 20 creates at once, until all answered, and how many failed on each side.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use futures_util::future::join_all;
use serde_json::{json, Value};

use crate::harness::{percentile_ms, Ctx, Goal, Row};
use crate::lifecycle::{command_true, ensure_image, Sandboxd, IMAGE};
use crate::Section;

const KEY: &str = "bench-key-0123456789";
/// The upstream server's entry point in its venv.
const UPSTREAM: &str = "target/bench-osb/bin/opensandbox-server";
/// Our agent as an execd image (`docker build -f Dockerfile.agent`), made by scripts/bench.sh.
pub(crate) const AGENT_IMAGE: &str = "execd-agent:bench";
/// How many sandboxes are present while lists are timed.
const PRESENT: usize = 100;
/// How many creates are sent at once.
const BURST: usize = 20;

/// The sections of this area, in the order they run.
pub fn sections() -> Vec<Section> {
    vec![Section {
        name: "vs-opensandbox-server",
        run: |ctx| Box::pin(versus(ctx)),
    }]
}

/// One of the two servers, through the API they share.
struct Api {
    name: &'static str,
    base: String,
    client: reqwest::Client,
    /// Sandboxes made and not yet deleted, removed at the end whatever happens.
    made: std::sync::Mutex<BTreeSet<String>>,
    /// Requests that failed (a non-2xx answer or no answer).
    errors: std::sync::atomic::AtomicUsize,
}

impl Api {
    fn new(name: &'static str, base: String) -> anyhow::Result<Self> {
        Ok(Self {
            name,
            base,
            client: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(120))
                .build()?,
            made: Default::default(),
            errors: Default::default(),
        })
    }

    fn failed(&self) -> usize {
        self.errors.load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        let mut req = self
            .client
            .request(method.clone(), format!("{}{path}", self.base))
            .header("OPEN-SANDBOX-API-KEY", KEY);
        if let Some(body) = body {
            req = req.json(body);
        }
        let answer = async {
            let resp = req.send().await?;
            let status = resp.status();
            let text = resp.text().await?;
            ensure!(
                status.is_success(),
                "{}: {method} {path}: {status} {text}",
                self.name
            );
            Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
        }
        .await;
        if answer.is_err() {
            self.errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        answer
    }

    /// A busybox sandbox, answered (both servers answer once the sandbox is running).
    async fn create(&self) -> anyhow::Result<String> {
        let body = json!({
            "image": {"uri": IMAGE}, "entrypoint": ["sleep", "100000"], "timeout": 3600,
            "resourceLimits": {"cpu": "500m", "memory": "256Mi"},
        });
        let created = self
            .call(reqwest::Method::POST, "/v1/sandboxes", Some(&body))
            .await?;
        let id = created["id"].as_str().context("no id")?.to_owned();
        self.made.lock().unwrap().insert(id.clone());
        Ok(id)
    }

    /// Create, then `/ping` until execd answers, then `true` through the execd endpoint the server
    /// gives, to its end.
    async fn create_then_true(&self) -> anyhow::Result<(Duration, String)> {
        let started = Instant::now();
        let id = self.create().await?;
        let path = format!("/v1/sandboxes/{id}/endpoints/44772?use_server_proxy=false");
        let ep = self.call(reqwest::Method::GET, &path, None).await?;
        let base = format!("http://{}", ep["endpoint"].as_str().context("no endpoint")?);
        let token = ep["headers"]["x-execd-access-token"].as_str().unwrap_or("");
        // What the SDKs do after a create: `/ping` until execd answers (upstream answers the
        // create before its execd listens; sandboxd's is answering by then, so one ping).
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ping = self
                .client
                .get(format!("{base}/ping"))
                .header("X-EXECD-ACCESS-TOKEN", token)
                .send()
                .await;
            if ping.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            if Instant::now() > deadline {
                self.errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                bail!("{}: execd of {id} never answered /ping", self.name);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if let Err(e) = command_true(&self.client, &base, token).await {
            self.errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Err(e.context(format!("{}: first command", self.name)));
        }
        Ok((started.elapsed(), id))
    }

    async fn delete(&self, id: &str) -> anyhow::Result<()> {
        self.call(reqwest::Method::DELETE, &format!("/v1/sandboxes/{id}"), None)
            .await?;
        self.made.lock().unwrap().remove(id);
        Ok(())
    }

    /// Deletes every sandbox this run made here, eight at a time.
    async fn delete_all(&self) {
        let ids: Vec<String> = self.made.lock().unwrap().iter().cloned().collect();
        for chunk in ids.chunks(8) {
            join_all(chunk.iter().map(|id| self.delete(id))).await;
        }
    }
}

/// The upstream server on a free port with its own store, stopped on drop; its containers are
/// removed by the caller's `delete_all`, and by name here for any that are left.
struct Upstream {
    child: Child,
    _dir: tempfile::TempDir,
    left: Vec<String>,
}

impl Upstream {
    async fn start() -> anyhow::Result<(Self, String)> {
        let bin = PathBuf::from(UPSTREAM);
        ensure!(
            bin.exists(),
            "{UPSTREAM} is missing: scripts/bench.sh makes it (python3 -m venv target/bench-osb && pip install opensandbox-server==1.1.1)"
        );
        let dir = tempfile::tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let config = dir.path().join("sandbox.toml");
        std::fs::write(
            &config,
            format!(
                "[server]\nhost = \"127.0.0.1\"\nport = {port}\napi_key = \"{KEY}\"\n\
                 max_sandbox_timeout_seconds = 86400\n\
                 [log]\nlevel = \"WARNING\"\n\
                 [runtime]\ntype = \"docker\"\nexecd_image = \"{AGENT_IMAGE}\"\n\
                 [storage]\nallowed_host_paths = [\"/nonexistent\"]\n\
                 [store]\ntype = \"sqlite\"\npath = \"{}\"\n\
                 [docker]\nnetwork_mode = \"bridge\"\nport_range_min = 41000\nport_range_max = 41999\n\
                 publish_host = \"127.0.0.1\"\n\
                 [ingress]\nmode = \"direct\"\n",
                dir.path().join("store.db").display()
            ),
        )?;
        let child = Command::new(&bin)
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {UPSTREAM}"))?;
        let me = Self {
            child,
            _dir: dir,
            left: Vec::new(),
        };
        let base = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::builder().no_proxy().build()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(resp) = client.get(format!("{base}/health")).send().await {
                if resp.status().is_success() {
                    break;
                }
            }
            if Instant::now() > deadline {
                bail!("{UPSTREAM} did not answer /health within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok((me, base))
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for id in &self.left {
            let _ = Command::new("docker")
                .args(["rm", "-f", &format!("sandbox-{id}")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Builds our agent's execd image for the upstream server (cached by Docker's layers).
pub(crate) fn ensure_agent_image() -> anyhow::Result<()> {
    let ok = Command::new("docker")
        .args([
            "build",
            "-q",
            "-f",
            "Dockerfile.agent",
            "--target",
            "agent",
            "-t",
            AGENT_IMAGE,
            ".",
        ])
        .stdout(Stdio::null())
        .status()?
        .success();
    ensure!(ok, "docker build -f Dockerfile.agent failed");
    Ok(())
}

async fn versus(ctx: &Ctx) -> anyhow::Result<Vec<Row>> {
    ensure_image()?;
    ensure_agent_image()?;
    let args = [
        "--api-key",
        KEY,
        "--rate-create",
        "0",
        "--rate-read",
        "0",
        "--max-sandboxes-per-user",
        "1000",
    ];
    let sandboxd = Sandboxd::start_with(ctx, &args)?;
    let (mut upstream, upstream_base) = Upstream::start().await?;
    let ours = Api::new("sandboxd", sandboxd.base.clone())?;
    let theirs = Api::new("opensandbox-server", upstream_base)?;
    let rows = measure(ctx, &ours, &theirs).await;
    ours.delete_all().await;
    theirs.delete_all().await;
    upstream.left = theirs.made.lock().unwrap().iter().cloned().collect();
    drop(upstream);
    drop(sandboxd);
    rows
}

async fn measure(ctx: &Ctx, ours: &Api, theirs: &Api) -> anyhow::Result<Vec<Row>> {
    let sides = [ours, theirs];
    // Untimed warm-up: each server's first create pulls its caches (upstream copies the agent
    // out of its image once).
    for api in sides {
        let (_, id) = api.create_then_true().await?;
        api.delete(&id).await?;
    }
    let n = ctx.count(10);
    let mut cold: [Vec<Duration>; 2] = Default::default();
    for _ in 0..n {
        for (side, api) in sides.iter().enumerate() {
            let (took, id) = api.create_then_true().await?;
            cold[side].push(took);
            api.delete(&id).await?;
        }
    }
    // PRESENT sandboxes on each, made eight at a time, then lists alternating.
    for api in sides {
        for _ in 0..PRESENT / 8 + 1 {
            let have = api.made.lock().unwrap().len();
            let more = (PRESENT - have).min(8);
            join_all((0..more).map(|_| api.create())).await;
        }
        ensure!(
            api.made.lock().unwrap().len() >= PRESENT,
            "{}: could not make {PRESENT} sandboxes",
            api.name
        );
    }
    let lists = ctx.count(50);
    let mut list: [Vec<Duration>; 2] = Default::default();
    for _ in 0..lists {
        for (side, api) in sides.iter().enumerate() {
            let started = Instant::now();
            api.call(reqwest::Method::GET, "/v1/sandboxes", None).await?;
            list[side].push(started.elapsed());
        }
    }
    for api in sides {
        api.delete_all().await;
    }
    // BURST creates at once on each, one server after the other.
    let mut burst = [Duration::ZERO; 2];
    let mut burst_failed = [0usize; 2];
    for (side, api) in sides.iter().enumerate() {
        let started = Instant::now();
        let answers = join_all((0..BURST).map(|_| api.create())).await;
        burst[side] = started.elapsed();
        burst_failed[side] = answers.iter().filter(|a| a.is_err()).count();
        api.delete_all().await;
    }
    let (c_ours, c_theirs) = (percentile_ms(&cold[0], 50.0), percentile_ms(&cold[1], 50.0));
    let (l_ours, l_theirs) = (percentile_ms(&list[0], 50.0), percentile_ms(&list[1], 50.0));
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    Ok(vec![
        Row::new(
            format!("sandboxd: cold create → first command done (busybox), p50 of {n}"),
            c_ours,
            "ms",
        )
        .anchor("opensandbox-server 1.1.1, same image and agent, p50", c_theirs)
        .goal(Goal::RatioAtMost(0.5)),
        Row::new(
            format!("sandboxd: GET /v1/sandboxes with {PRESENT} present, p50 of {lists}"),
            l_ours,
            "ms",
        )
        .anchor("opensandbox-server 1.1.1, the same request, p50", l_theirs)
        .goal(Goal::RatioAtMost(0.1)),
        Row::new(
            format!("sandboxd: {BURST} creates at once, until all answered"),
            ms(burst[0]),
            "ms",
        )
        .anchor("opensandbox-server 1.1.1, the same burst", ms(burst[1])),
        Row::new(
            format!(
                "sandboxd: failed requests in this section (burst failures: {})",
                burst_failed[0]
            ),
            ours.failed() as f64,
            "",
        )
        .goal(Goal::AtMost(0.0)),
        Row::new(
            format!(
                "opensandbox-server: failed requests in this section (burst failures: {})",
                burst_failed[1]
            ),
            theirs.failed() as f64,
            "",
        ),
    ])
}
