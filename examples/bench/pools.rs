//! Figures of sandboxd's warm pools: an acquire from a warm pool (`extensions.poolRef`) up to
//! its first finished command beside a cold create of the same image up to its first finished
//! command, alternating on one sandboxd. Between warm runs the harness waits, untimed, until
//! the pool has refilled, so that every acquire finds an idle member.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::{json, Value};

use crate::harness::{percentile_ms, Ctx, Goal, Row};
use crate::lifecycle::{command_true, ensure_image, Sandboxd, IMAGE};
use crate::Section;

const KEY: &str = "bench-key-0123456789";
/// The pool's name and its spare members.
const POOL: &str = "bench-warm";
const BUFFER: u64 = 2;

/// The sections of this area, in the order they run.
pub fn sections() -> Vec<Section> {
    vec![Section {
        name: "pool-acquire",
        run: |ctx| Box::pin(pool_acquire(ctx)),
    }]
}

/// A sandboxd with the API key and every rate class off, and a keep-alive client for it.
struct Api {
    sandboxd: Sandboxd,
    client: reqwest::Client,
}

impl Api {
    fn start(ctx: &Ctx) -> anyhow::Result<Self> {
        let args = ["--api-key", KEY, "--rate-create", "0", "--rate-read", "0"];
        Ok(Self {
            sandboxd: Sandboxd::start_with(ctx, &args)?,
            client: reqwest::Client::builder().no_proxy().build()?,
        })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        expected: u16,
    ) -> anyhow::Result<Value> {
        let mut req = self
            .client
            .request(method.clone(), format!("{}{path}", self.sandboxd.base))
            .header("OPEN-SANDBOX-API-KEY", KEY);
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let text = resp.text().await?;
        if status != expected {
            bail!("{method} {path}: {status} {text}");
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Create (or acquire) from `body`, then `true` through execd to the end of its stream;
    /// the time from the request to its answer and to that end, and the sandbox's id.
    async fn create_then_true(&self, body: &Value) -> anyhow::Result<(Duration, Duration, String)> {
        let started = Instant::now();
        let created = self
            .call(reqwest::Method::POST, "/v1/sandboxes", Some(body), 202)
            .await?;
        let answered = started.elapsed();
        let id = created["id"].as_str().context("no id")?.to_owned();
        let path = format!("/v1/sandboxes/{id}/endpoints/44772?use_server_proxy=false");
        let ep = self.call(reqwest::Method::GET, &path, None, 200).await?;
        let base = format!("http://{}", ep["endpoint"].as_str().context("no endpoint")?);
        let token = ep["headers"]["x-execd-access-token"].as_str().unwrap_or("");
        command_true(&self.client, &base, token).await?;
        Ok((answered, started.elapsed(), id))
    }

    async fn delete(&self, id: &str) -> anyhow::Result<()> {
        self.call(reqwest::Method::DELETE, &format!("/v1/sandboxes/{id}"), None, 204)
            .await
            .map(drop)
    }

    /// Waits (untimed, up to two minutes) until the pool has its spare members ready.
    async fn refilled(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let pool = self
                .call(reqwest::Method::GET, &format!("/v1/pools/{POOL}"), None, 200)
                .await?;
            if pool["status"]["available"] == BUFFER && pool["status"]["warming"] == 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the pool did not refill: {pool}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Warm acquire → first command beside cold create → first command, alternating.
async fn pool_acquire(ctx: &Ctx) -> anyhow::Result<Vec<Row>> {
    ensure_image()?;
    let api = Api::start(ctx)?;
    let pool = json!({
        "name": POOL,
        "template": {"spec": {"containers": [{
            "name": "sandbox", "image": IMAGE, "command": ["sleep", "100000"],
        }]}},
        "capacitySpec": {"bufferMin": 1, "bufferMax": BUFFER, "poolMin": 0, "poolMax": BUFFER + 2},
    });
    api.call(reqwest::Method::POST, "/v1/pools", Some(&pool), 201)
        .await?;
    let warm = json!({"extensions": {"poolRef": POOL}, "timeout": 600});
    let cold = json!({"image": {"uri": IMAGE}, "entrypoint": ["sleep", "100000"], "timeout": 600});

    // One of each first, untimed (the first create of a sandboxd process injects the agent).
    api.refilled().await?;
    for body in [&warm, &cold] {
        let (_, _, id) = api.create_then_true(body).await?;
        api.delete(&id).await?;
    }
    let runs = ctx.count(20);
    let (mut warm_times, mut cold_times, mut acquires) = (Vec::new(), Vec::new(), Vec::new());
    for n in 0..runs {
        let order = if n % 2 == 0 { [true, false] } else { [false, true] };
        for is_warm in order {
            if is_warm {
                api.refilled().await?;
            }
            let (answered, took, id) = api.create_then_true(if is_warm { &warm } else { &cold }).await?;
            api.delete(&id).await?;
            if is_warm {
                warm_times.push(took);
                acquires.push(answered);
            } else {
                cold_times.push(took);
            }
        }
    }
    api.call(reqwest::Method::DELETE, &format!("/v1/pools/{POOL}"), None, 204)
        .await?;
    let (w50, c50) = (percentile_ms(&warm_times, 50.0), percentile_ms(&cold_times, 50.0));
    let (w95, c95) = (percentile_ms(&warm_times, 95.0), percentile_ms(&cold_times, 95.0));
    Ok(vec![
        Row::new(
            format!("warm acquire (extensions.poolRef) → first command done (busybox), p50 of {runs}"),
            w50,
            "ms",
        )
        .anchor(
            format!("cold create → first command done, same image, p50 of {runs}"),
            c50,
        ),
        Row::new("warm acquire → first command done, p95", w95, "ms").anchor("cold create, p95", c95),
        Row::new(
            "warm acquire answered (one SQLite transaction, one execd env write), p50",
            percentile_ms(&acquires, 50.0),
            "ms",
        )
        .goal(Goal::AtMost(20.0)),
    ])
}
