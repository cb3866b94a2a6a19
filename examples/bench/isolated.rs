//! Figures of the isolated-sessions issue: the `true` round trip of a run inside a session's
//! jail beside the same `true` through plain `POST /command` and through Debian's
//! `bwrap --unshare-all` (a fresh sandbox per run, as bubblewrap-based isolators do), all
//! interleaved in one loop, and the cost of creating a session.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};

use crate::harness::{client, percentile_ms, run_stream, spawn_wait, Agent, Ctx, Goal, Row};
use crate::Section;

const LOOP_BUDGET: Duration = Duration::from_secs(45);
const BWRAP: &[&str] = &[
    "--ro-bind",
    "/",
    "/",
    "--dev",
    "/dev",
    "--proc",
    "/proc",
    "--tmpfs",
    "/tmp",
    "--unshare-all",
    "--die-with-parent",
    "--",
    "/bin/true",
];

/// The sections of this area.
pub fn sections() -> Vec<Section> {
    vec![Section {
        name: "roundtrip",
        run: |ctx| Box::pin(round_trip(ctx)),
    }]
}

async fn create_session(
    client: &reqwest::Client,
    agent: &Agent,
    ws: &str,
) -> anyhow::Result<(Duration, String)> {
    let t = Instant::now();
    let resp = client
        .post(agent.url("/v1/isolated/session"))
        .json(&serde_json::json!({ "workspace": { "path": ws }, "share_net": false }))
        .send()
        .await?;
    let d = t.elapsed();
    ensure!(resp.status() == 201, "create session answered {}", resp.status());
    let v: serde_json::Value = resp.json().await?;
    let id = v["session_id"].as_str().context("no session_id")?.to_owned();
    Ok((d, id))
}

async fn round_trip(ctx: &Ctx) -> anyhow::Result<Vec<Row>> {
    let agent = Agent::start(&ctx.agent)?;
    let client = client()?;
    let caps: serde_json::Value = client
        .get(agent.url("/v1/isolated/capabilities"))
        .send()
        .await?
        .json()
        .await?;
    ensure!(caps["available"] == true, "isolation unavailable here: {caps}");
    spawn_wait("bwrap", BWRAP).context("bwrap (Debian's bubblewrap, installed by scripts/setup.sh)")?;
    let ws = tempfile::Builder::new()
        .prefix("bench-iso-")
        .tempdir_in("/var/tmp")?;
    let ws_path = ws.path().to_str().context("workspace path")?.to_owned();
    let (_, sid) = create_session(&client, &agent, &ws_path).await?;
    let run_url = agent.url(&format!("/v1/isolated/session/{sid}/run"));
    let cmd_url = agent.url("/command");
    const ISO: &str = r#"{"code":"true"}"#;
    const CMD: &str = r#"{"command":"true"}"#;

    let (warm, runs) = (ctx.count(30), ctx.count(200));
    let mut samples: [Vec<Duration>; 4] = Default::default();
    let deadline = Instant::now() + LOOP_BUDGET;
    for i in 0..warm + runs {
        for k in 0..4 {
            let which = (i + k) % 4;
            let d = match which {
                0 => run_stream(&client, &run_url, ISO).await?,
                1 => run_stream(&client, &cmd_url, CMD).await?,
                2 => spawn_wait("bwrap", BWRAP)?,
                _ => spawn_wait("/bin/true", &[])?,
            };
            if i >= warm {
                samples[which].push(d);
            }
        }
        if Instant::now() > deadline {
            break;
        }
    }
    let mut creates = Vec::new();
    for _ in 0..ctx.count(20) {
        let (d, id) = create_session(&client, &agent, &ws_path).await?;
        creates.push(d);
        client
            .delete(agent.url(&format!("/v1/isolated/session/{id}")))
            .send()
            .await?;
    }
    let [iso, cmd, bwrap, bare] = &samples;
    let n = iso.len();
    let p50 = |s: &[Duration]| percentile_ms(s, 50.0);
    let jail = p50(iso) - p50(cmd);
    let bwrap_over = p50(bwrap) - p50(bare);
    Ok(vec![
        Row::new(
            format!("isolated `{ISO}` round trip, p50 (n={n})"),
            p50(iso),
            "ms",
        )
        .anchor(format!("`{CMD}` via /command, p50"), p50(cmd)),
        Row::new(
            format!("isolated `{ISO}` round trip, p99"),
            percentile_ms(iso, 99.0),
            "ms",
        )
        .anchor("`/command` p99", percentile_ms(cmd, 99.0)),
        Row::new(
            "`bwrap --unshare-all … /bin/true` spawn+wait, p50",
            p50(bwrap),
            "ms",
        )
        .anchor("spawn+wait `/bin/true`, p50", p50(bare)),
        Row::new("jail overhead: isolated − /command, p50", jail, "ms")
            .anchor("bwrap overhead: bwrap − bare spawn, p50", bwrap_over)
            .goal(Goal::AtMost(2.0))
            .goal(Goal::RatioAtMost(1.0)),
        Row::new(
            format!("create isolated session (full jail), p50 (n={})", creates.len()),
            p50(&creates),
            "ms",
        )
        .anchor("`bwrap --unshare-all` spawn+wait, p50", p50(bwrap)),
    ])
}
