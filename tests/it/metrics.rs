//! `/metrics` and `/metrics/watch` against the real binary, outside and inside a cgroup limit.

use std::path::PathBuf;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;

use crate::util::{eventually, Agent};

fn assert_sane(m: &Value) {
    for field in [
        "cpu_count",
        "cpu_used_pct",
        "mem_total_mib",
        "mem_used_mib",
        "disk_total_mib",
        "disk_used_mib",
        "load_1",
    ] {
        assert!(m[field].is_f64(), "{field} is a number: {m}");
    }
    assert!(m["cpu_count"].as_f64().unwrap() > 0.0);
    let pct = m["cpu_used_pct"].as_f64().unwrap();
    assert!((0.0..=100.0).contains(&pct), "{m}");
    let (total, used) = (
        m["mem_total_mib"].as_f64().unwrap(),
        m["mem_used_mib"].as_f64().unwrap(),
    );
    assert!(total > 0.0 && used > 0.0 && used <= total, "{m}");
    let now = now_ms();
    let ts = m["timestamp"].as_i64().unwrap();
    assert!((now - ts).abs() < 5_000, "fresh timestamp: {ts} vs {now}");
    assert!(m["process_count"].as_u64().unwrap() > 0);
    assert!(m["disk_used_mib"].as_f64().unwrap() <= m["disk_total_mib"].as_f64().unwrap());
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn host_mem_total_mib() -> f64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kib: f64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    kib / 1024.0
}

#[tokio::test]
async fn metrics_answer_at_once_with_sane_fields() {
    let agent = Agent::start();
    let m: Value = agent.get("/metrics").send().await.unwrap().json().await.unwrap();
    assert_sane(&m);
    if m["cgroup"] == "none" {
        assert!(
            (m["mem_total_mib"].as_f64().unwrap() - host_mem_total_mib()).abs() < 1.0,
            "host memory: {m}"
        );
    }
    // Back-to-back requests are all answered from the last sample (how fast is measured by
    // `scripts/bench.sh metrics`).
    for _ in 0..20 {
        let r = agent.get("/metrics").send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_sane(&r.json().await.unwrap());
    }
}

#[tokio::test]
async fn metrics_watch_streams_at_the_asked_interval() {
    let agent = Agent::start();
    let r = agent.get("/metrics/watch?interval_ms=200").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let mut body = r.bytes_stream();
    let mut buf = String::new();
    let mut events = Vec::new();
    while events.len() < 3 {
        let chunk = tokio::time::timeout(Duration::from_secs(5), body.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        buf.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(i) = buf.find("\n\n") {
            let frame: String = buf.drain(..i + 2).collect();
            let data = frame.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
            events.push(serde_json::from_str::<Value>(data).unwrap());
        }
    }
    for m in &events {
        assert_sane(m);
    }
    // Samples are spaced as asked, not at the default second (the sampler's own clock).
    let stamps: Vec<i64> = events.iter().map(|m| m["timestamp"].as_i64().unwrap()).collect();
    for gap in stamps.windows(2).map(|w| w[1] - w[0]) {
        assert!((100..1000).contains(&gap), "samples {gap} ms apart: {stamps:?}");
    }
    let bad = agent.get("/metrics/watch?interval_ms=5").send().await.unwrap();
    crate::files::expect_error(bad, 400, "INVALID_REQUEST_BODY").await;
}

/// A cgroup v1 directory per controller, removed on drop (after moving its members out).
struct Cgroup {
    dirs: Vec<PathBuf>,
}

impl Cgroup {
    fn create(name: &str) -> Option<Self> {
        let mut dirs = Vec::new();
        for c in ["memory", "cpu", "cpuacct"] {
            let base = PathBuf::from("/sys/fs/cgroup").join(c);
            if !base.join("cgroup.procs").exists() {
                return None;
            }
            let dir = base.join(name);
            if std::fs::create_dir(&dir).is_err() {
                return None;
            }
            dirs.push(dir);
        }
        Some(Cgroup { dirs })
    }

    fn write(&self, controller: usize, file: &str, value: &str) {
        std::fs::write(self.dirs[controller].join(file), value).unwrap();
    }

    fn add(&self, pid: u32) {
        for d in &self.dirs {
            std::fs::write(d.join("cgroup.procs"), pid.to_string()).unwrap();
        }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        for d in &self.dirs {
            let parent = d.parent().unwrap().join("cgroup.procs");
            let members = std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
            for pid in members.lines() {
                let _ = std::fs::write(&parent, pid);
            }
            let _ = std::fs::remove_dir(d);
        }
    }
}

#[tokio::test]
async fn metrics_follow_a_cgroup_v1_limit() {
    let name = format!("execd-test-{}", std::process::id());
    let Some(cg) = Cgroup::create(&name) else {
        eprintln!("skipping: no writable cgroup v1 hierarchy");
        return;
    };
    cg.write(0, "memory.limit_in_bytes", &(256u64 << 20).to_string());
    cg.write(1, "cpu.cfs_period_us", "100000");
    cg.write(1, "cpu.cfs_quota_us", "50000");
    let agent = Agent::start();
    cg.add(agent.pid());
    let m = eventually(10, "metrics to reflect the cgroup", async || {
        let m: Value = agent.get("/metrics").send().await.ok()?.json().await.ok()?;
        (m["cgroup"] == "v1").then_some(m)
    })
    .await;
    assert_sane(&m);
    assert_eq!(m["mem_total_mib"].as_f64(), Some(256.0));
    assert_eq!(m["cpu_count"].as_f64(), Some(0.5));
    assert!(m["mem_used_mib"].as_f64().unwrap() < 256.0);
    drop(agent);
}
