//! Shared test helpers: start the real `execd` binary, talk HTTP to it, parse SSE.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

/// A running execd on a free loopback port, killed on drop.
pub struct Agent {
    pub child: Child,
    pub base: String,
    pub port: u16,
    pub token: Option<String>,
    pub state_dir: tempfile::TempDir,
    pub client: reqwest::Client,
}

/// Options for [`Agent::start_with`].
#[derive(Default)]
pub struct Opts {
    pub token: Option<String>,
    pub envs_file: Option<std::path::PathBuf>,
    pub env: Vec<(String, String)>,
    /// Extra arguments after the flags (e.g. `["init", "--", "sh", "-c", "..."]`).
    pub tail: Vec<String>,
    /// A command to run execd under (e.g. `unshare --pid --fork`).
    pub wrapper: Vec<String>,
}

impl Agent {
    pub fn start() -> Self {
        Self::start_with(Opts::default())
    }

    pub fn start_with(opts: Opts) -> Self {
        let state_dir = tempfile::tempdir().expect("tempdir");
        let mut cmd = match opts.wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(env!("CARGO_BIN_EXE_execd"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_execd")),
        };
        cmd.args(["--host", "127.0.0.1", "--port", "0", "--state-dir"])
            .arg(state_dir.path())
            .env_remove("EXECD_ACCESS_TOKEN")
            .env_remove("EXECD_ENVS")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(t) = &opts.token {
            cmd.args(["--access-token", t]);
        }
        if let Some(f) = &opts.envs_file {
            cmd.env("EXECD_ENVS", f);
        }
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        cmd.args(&opts.tail);
        let mut child = cmd.spawn().expect("spawn execd");
        let stdout = child.stdout.take().unwrap();
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        reader.read_line(&mut line).expect("read listening line");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        // Keep draining stdout (init mode forwards the entrypoint's output there).
        std::thread::spawn(move || {
            let mut sink = String::new();
            while reader.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
                sink.clear();
            }
        });
        let port = addr.rsplit(':').next().unwrap().parse().unwrap();
        Agent {
            child,
            base: format!("http://{addr}"),
            port,
            token: opts.token,
            state_dir,
            client: reqwest::Client::builder().build().unwrap(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// A request builder with the agent's token attached (if it has one).
    pub fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut r = self.client.request(method, self.url(path));
        if let Some(t) = &self.token {
            r = r.header("X-EXECD-ACCESS-TOKEN", t);
        }
        r
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.req(reqwest::Method::GET, path)
    }

    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.req(reqwest::Method::POST, path)
    }

    pub fn delete(&self, path: &str) -> reqwest::RequestBuilder {
        self.req(reqwest::Method::DELETE, path)
    }

    /// POSTs JSON to a streaming route and collects every SSE event until the stream ends.
    pub async fn stream(&self, path: &str, body: Value) -> Vec<Event> {
        let resp = self.post(path).json(&body).send().await.expect("send");
        assert_eq!(
            resp.status(),
            200,
            "POST {path} {body}: {}",
            resp.text().await.unwrap_or_default()
        );
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        collect_sse(resp).await
    }

    /// Runs a foreground command and returns its events.
    pub async fn run(&self, body: Value) -> Vec<Event> {
        self.stream("/command", body).await
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // SIGTERM first, so execd kills what it started (kernels live in their own process
        // groups and would otherwise outlive a SIGKILLed agent); SIGKILL if it lingers.
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One SSE event: its id and parsed JSON data.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: Option<u64>,
    pub data: Value,
}

impl Event {
    pub fn kind(&self) -> &str {
        self.data["type"].as_str().unwrap_or("")
    }
    pub fn text(&self) -> &str {
        self.data["text"].as_str().unwrap_or("")
    }
}

/// Parses a complete SSE body (ignores comments).
pub fn parse_sse(body: &str) -> Vec<Event> {
    let mut events = Vec::new();
    for block in body.split("\n\n") {
        let mut id = None;
        let mut data = String::new();
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("id: ") {
                id = Some(v.parse().expect("numeric id"));
            } else if let Some(v) = line.strip_prefix("data: ") {
                data.push_str(v);
            }
        }
        if !data.is_empty() {
            let data: Value =
                serde_json::from_str(&data).unwrap_or_else(|e| panic!("bad event json {data:?}: {e}"));
            assert!(data["timestamp"].is_i64(), "every event has a timestamp: {data}");
            events.push(Event { id, data });
        }
    }
    events
}

pub async fn collect_sse(resp: reqwest::Response) -> Vec<Event> {
    let body = tokio::time::timeout(Duration::from_secs(60), resp.text())
        .await
        .expect("stream ended in time")
        .expect("read body");
    parse_sse(&body)
}

/// Kinds of the events, in order.
pub fn kinds(events: &[Event]) -> Vec<&str> {
    events.iter().map(Event::kind).collect()
}

/// Texts of events of the given kind, in order.
pub fn texts<'a>(events: &'a [Event], kind: &str) -> Vec<&'a str> {
    events
        .iter()
        .filter(|e| e.kind() == kind)
        .map(Event::text)
        .collect()
}

/// Polls `f` every 20 ms until it returns Some, or panics after `secs`.
pub async fn eventually<T>(secs: u64, what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Digits unique to this test run, to tag the processes a test counts (e.g. `sleep 5551.<marker>`)
/// so that other runs of the suite on the same machine cannot disturb the count.
pub fn marker() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    format!("{}{:06}", std::process::id(), nanos % 1_000_000)
}

/// Pids of processes whose command line contains `needle`.
pub fn pids_matching(needle: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(needle) && pid != std::process::id() {
                out.push(pid);
            }
        }
    }
    out
}

/// (pid, state) of the children of `parent` according to /proc.
pub fn children_of(parent: u32) -> Vec<(u32, char)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...; comm may contain spaces, so split after the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r.trim_start()) else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().and_then(|s| s.chars().next()).unwrap_or('?');
        let ppid: u32 = fields.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        if ppid == parent {
            out.push((pid, state));
        }
    }
    out
}

/// The parent of `pid`, from `/proc/<pid>/stat`.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ppid ...; comm may contain spaces, so split after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// [`pids_matching`], restricted to descendants of `root` (so that other runs of the suite on
/// the same machine cannot disturb a test).
pub fn descendants_matching(root: u32, needle: &str) -> Vec<u32> {
    pids_matching(needle)
        .into_iter()
        .filter(|&pid| {
            let mut p = pid;
            while let Some(parent) = parent_of(p).filter(|&q| q > 1) {
                if parent == root {
                    return true;
                }
                p = parent;
            }
            false
        })
        .collect()
}
