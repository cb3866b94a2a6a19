//! Figures of sandboxd's executions (§12–§13): a handler's round trip (submit with `?wait`
//! → its result) beside the same code run directly through execd's `/code`, and beside the
//! same work done directly against execd (upload, the runner through `/command`, download:
//! what sandboxd adds is the difference); and a batch of 100 trivial jobs, total time, beside
//! 100 `/command` calls made one after another directly.
//!
//! One python sandbox (`execd-test/python:bookworm`) on a sandboxd with an API key and its
//! rate classes off; the sides alternate.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use serde_json::{json, Value};

use crate::harness::{percentile_ms, Ctx, Goal, Row};
use crate::lifecycle::Sandboxd;
use crate::Section;

const KEY: &str = "bench-key-0123456789";
const PYTHON: &str = "execd-test/python:bookworm";
const HANDLER: &str = "def handler(event):\n    return {\"status\": \"ok\", \"data\": event}\n";

/// The sections of this area, in the order they run.
pub fn sections() -> Vec<Section> {
    vec![
        Section {
            name: "handler",
            run: |ctx| Box::pin(handler(ctx)),
        },
        Section {
            name: "batch",
            run: |ctx| Box::pin(batch(ctx)),
        },
    ]
}

/// A sandboxd with one python sandbox, a keep-alive client, and the sandbox's direct execd.
struct Rig {
    sandboxd: Sandboxd,
    client: reqwest::Client,
    sandbox: String,
    execd: String,
    token: String,
}

impl Rig {
    async fn start(ctx: &Ctx) -> anyhow::Result<Self> {
        let ok = Command::new("scripts/build-test-image.sh")
            .arg("python")
            .stdout(Stdio::null())
            .status()?
            .success();
        ensure!(ok, "scripts/build-test-image.sh python failed");
        let args = [
            "--api-key",
            KEY,
            "--rate-create",
            "0",
            "--rate-exec",
            "0",
            "--rate-read",
            "0",
        ];
        let sandboxd = Sandboxd::start_with(ctx, &args)?;
        let client = reqwest::Client::builder().no_proxy().build()?;
        let mut rig = Self {
            sandboxd,
            client,
            sandbox: String::new(),
            execd: String::new(),
            token: String::new(),
        };
        let created = rig
            .post(
                "/v1/sandboxes",
                &json!({"image": {"uri": PYTHON}, "entrypoint": ["tail", "-f", "/dev/null"], "timeout": 3600}),
                202,
            )
            .await?;
        rig.sandbox = created["id"].as_str().context("no id")?.to_owned();
        let ep: Value = rig
            .request(
                reqwest::Method::GET,
                &format!(
                    "/v1/sandboxes/{}/endpoints/44772?use_server_proxy=false",
                    rig.sandbox
                ),
            )
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        rig.execd = format!("http://{}", ep["endpoint"].as_str().context("no endpoint")?);
        rig.token = ep["headers"]["x-execd-access-token"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        Ok(rig)
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.sandboxd.base))
            .header("OPEN-SANDBOX-API-KEY", KEY)
    }

    async fn post(&self, path: &str, body: &Value, expected: u16) -> anyhow::Result<Value> {
        let resp = self
            .request(reqwest::Method::POST, path)
            .json(body)
            .send()
            .await?;
        let status = resp.status();
        let text = resp.text().await?;
        if status != expected {
            bail!("POST {path}: {status} {text}");
        }
        serde_json::from_str(&text).with_context(|| format!("POST {path}: not JSON: {text}"))
    }

    fn execd(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.execd))
            .header("X-EXECD-ACCESS-TOKEN", &self.token)
    }

    /// Through sandboxd: submit with `?wait`, the result in the answer.
    async fn via_sandboxd(&self) -> anyhow::Result<Duration> {
        let t = Instant::now();
        let e = self
            .post(
                &format!("/v1/sandboxes/{}/executions?wait=30", self.sandbox),
                &json!({"code": HANDLER, "event": {"name": "Alice"}}),
                200,
            )
            .await?;
        let took = t.elapsed();
        ensure!(e["result"]["data"]["name"] == "Alice", "unexpected result: {e}");
        Ok(took)
    }

    /// `true` as a command execution through sandboxd: submit with `?wait`, the answer.
    async fn true_via_sandboxd(&self) -> anyhow::Result<Duration> {
        let t = Instant::now();
        let e = self
            .post(
                &format!("/v1/sandboxes/{}/executions?wait=30", self.sandbox),
                &json!({"argv": ["true"]}),
                200,
            )
            .await?;
        let took = t.elapsed();
        ensure!(e["status"]["state"] == "Succeeded", "unexpected answer: {e}");
        Ok(took)
    }

    /// `true` through execd's `/command` directly, to the end of its stream.
    async fn true_via_execd(&self) -> anyhow::Result<Duration> {
        let t = Instant::now();
        let body = self
            .execd(reqwest::Method::POST, "/command")
            .json(&json!({"argv": ["true"]}))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        let took = t.elapsed();
        ensure!(
            body.contains("execution_complete"),
            "unexpected /command answer: {body}"
        );
        Ok(took)
    }

    /// The same code through execd's `/code` (the default python context), to the end of
    /// its stream.
    async fn via_code(&self) -> anyhow::Result<Duration> {
        let code = format!("{HANDLER}handler({{\"name\": \"Alice\"}})");
        let t = Instant::now();
        let body = self
            .execd(reqwest::Method::POST, "/code")
            .json(&json!({"code": code, "context": {"language": "python"}}))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        let took = t.elapsed();
        ensure!(body.contains("Alice"), "unexpected /code answer: {body}");
        Ok(took)
    }

    /// What sandboxd does, done directly against execd: one upload, the runner through
    /// `/command`, the result downloaded, the directory removed.
    async fn via_execd(&self, n: usize) -> anyhow::Result<Duration> {
        let dir = format!("/tmp/.bench/{n}");
        let boundary = "bench-boundary";
        let mut body = Vec::new();
        for (path, content) in [
            (format!("{dir}/handler.py"), HANDLER.to_owned()),
            (format!("{dir}/event.json"), "{\"name\": \"Alice\"}".to_owned()),
        ] {
            body.extend_from_slice(
                format!(
                    "--{boundary}\r\nContent-Disposition: form-data; name=\"metadata\"\r\n\r\n{}\r\n\
                     --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f\"\r\n\r\n{content}\r\n",
                    json!({"path": path, "mode": 644})
                )
                .as_bytes(),
            );
        }
        body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        let argv = json!([
            "python3",
            "-c",
            execd::orchestrator::service::HANDLER_RUNNER,
            dir,
            "handler",
            "x",
            "y",
            "z"
        ]);
        let t = Instant::now();
        self.execd(reqwest::Method::POST, "/files/upload")
            .header(
                "content-type",
                format!("multipart/form-data; boundary={boundary}"),
            )
            .body(body)
            .send()
            .await?
            .error_for_status()?;
        let stream = self
            .execd(reqwest::Method::POST, "/command")
            .json(&json!({"argv": argv}))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        ensure!(
            stream.contains("execution_complete"),
            "the runner failed: {stream}"
        );
        let result = self
            .execd(
                reqwest::Method::GET,
                &format!("/files/download?path={dir}/result.json"),
            )
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        let took = t.elapsed();
        ensure!(result.contains("Alice"), "unexpected result: {result}");
        self.execd(reqwest::Method::DELETE, &format!("/directories?path={dir}"))
            .send()
            .await?;
        Ok(took)
    }
}

/// The handler round trip through sandboxd beside `/code` and beside the same work done
/// directly against execd.
async fn handler(ctx: &Ctx) -> anyhow::Result<Vec<Row>> {
    let rig = Rig::start(ctx).await?;
    // Warm: the default context's kernel, the connections, python's page cache.
    for n in 0..3 {
        rig.via_sandboxd().await?;
        rig.via_code().await?;
        rig.via_execd(1000 + n).await?;
    }
    let runs = ctx.count(40);
    let (mut sandboxd, mut code, mut direct) = (Vec::new(), Vec::new(), Vec::new());
    for n in 0..runs {
        // Rotate the order, so that drift hits all three alike.
        for side in 0..3 {
            match (side + n) % 3 {
                0 => sandboxd.push(rig.via_sandboxd().await?),
                1 => code.push(rig.via_code().await?),
                _ => direct.push(rig.via_execd(n).await?),
            }
        }
    }
    // sandboxd's own share, without a python start in either side's time: `true` as a command
    // execution beside the same command straight to execd, alternating.
    let trues = ctx.count(100);
    let (mut via, mut straight) = (Vec::new(), Vec::new());
    for n in 0..trues + 5 {
        let (a, b) = if n % 2 == 0 {
            let a = rig.true_via_sandboxd().await?;
            (a, rig.true_via_execd().await?)
        } else {
            let b = rig.true_via_execd().await?;
            (rig.true_via_sandboxd().await?, b)
        };
        if n >= 5 {
            via.push(a);
            straight.push(b);
        }
    }
    let (v50, t50) = (percentile_ms(&via, 50.0), percentile_ms(&straight, 50.0));
    let (s50, c50, d50) = (
        percentile_ms(&sandboxd, 50.0),
        percentile_ms(&code, 50.0),
        percentile_ms(&direct, 50.0),
    );
    Ok(vec![
        Row::new(
            format!("handler round trip through sandboxd (submit ?wait → result), p50 of {runs}"),
            s50,
            "ms",
        )
        .anchor(
            "the same code through execd `/code` (warm default context), p50",
            c50,
        ),
        Row::new(
            "the same handler done directly against execd (upload, runner via `/command`, download), p50",
            d50,
            "ms",
        )
        .anchor("through sandboxd, p50", s50),
        Row::new(
            "handler: through sandboxd minus directly (p50 difference; python's start dominates both)",
            s50 - d50,
            "ms",
        ),
        Row::new(
            format!("`{{\"argv\":[\"true\"]}}` execution through sandboxd (submit ?wait → answer), p50 of {trues}"),
            v50,
            "ms",
        )
        .anchor("the same command straight to execd `/command`, p50", t50),
        Row::new("what sandboxd adds to an execution (p50 difference of the two above)", v50 - t50, "ms")
            .goal(Goal::AtMost(3.0)),
    ])
}

/// A batch of 100 `true` jobs (concurrency 8, and 1) beside 100 direct `/command` calls.
async fn batch(ctx: &Ctx) -> anyhow::Result<Vec<Row>> {
    let rig = Rig::start(ctx).await?;
    let jobs = ctx.count(100);
    let body = |concurrency: u32| {
        json!({
            "concurrency": concurrency,
            "jobs": (0..jobs).map(|i| json!({"id": format!("j{i}"), "command": "true"})).collect::<Vec<_>>(),
        })
    };
    let path = format!("/v1/sandboxes/{}/executions/batch?wait=300", rig.sandbox);
    // Warm.
    rig.post(&path, &json!({"jobs": [{"id": "w", "command": "true"}]}), 200)
        .await?;
    let repeats = ctx.count(5);
    let (mut eight, mut one, mut direct) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..repeats {
        for (concurrency, into) in [(8, &mut eight), (1, &mut one)] {
            let t = Instant::now();
            let summary = rig.post(&path, &body(concurrency), 200).await?;
            into.push(t.elapsed());
            ensure!(summary["succeeded"] == jobs, "not all succeeded: {summary}");
        }
        let t = Instant::now();
        for _ in 0..jobs {
            let stream = rig
                .execd(reqwest::Method::POST, "/command")
                .json(&json!({"command": "true"}))
                .send()
                .await?
                .error_for_status()?
                .text()
                .await?;
            ensure!(stream.contains("execution_complete"), "true failed: {stream}");
        }
        direct.push(t.elapsed());
    }
    let (e50, o50, d50) = (
        percentile_ms(&eight, 50.0),
        percentile_ms(&one, 50.0),
        percentile_ms(&direct, 50.0),
    );
    Ok(vec![
        Row::new(
            format!("batch of {jobs} `true` jobs, concurrency 8, submit → all done, median of {repeats}"),
            e50,
            "ms",
        )
        .anchor(
            format!("{jobs} × execd `/command` `true`, one after another, direct"),
            d50,
        ),
        Row::new(
            format!("the same batch, concurrency 1, median of {repeats}"),
            o50,
            "ms",
        )
        .anchor("concurrency 8", e50),
    ])
}
