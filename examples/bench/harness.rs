//! What every benchmark area shares: the result [`Row`] and its goals, the markdown table,
//! starting the real agent binary, percentiles, and reading `/proc/<pid>/status`.
//!
//! Synchronous except for the HTTP helpers; areas run one at a time on a current-thread runtime
//! so the client competes as little as possible with the agent for the machine's cores.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use reqwest::header::CONTENT_TYPE;

/// One line of the results table: a figure, the anchor it is compared with (measured in the
/// same run), their ratio, and the goals it must meet.
pub struct Row {
    /// What was measured, e.g. `command round trip, p50`.
    pub figure: String,
    /// The measured value, in `unit`.
    pub value: f64,
    /// Unit of `value` and `anchor_value` (`ms`, `MB`, `MB/s`).
    pub unit: &'static str,
    /// What the figure is compared with; empty when there is no anchor.
    pub anchor_name: String,
    /// The anchor measured in the same run, in `unit`.
    pub anchor_value: Option<f64>,
    /// `value / anchor_value`.
    pub ratio: Option<f64>,
    /// Every goal the figure must meet; empty for rows that only give context.
    pub goal: Vec<Goal>,
}

/// A target for a figure.
#[derive(Clone, Copy)]
pub enum Goal {
    /// `value <= x` (in the row's unit).
    AtMost(f64),
    /// `value >= x` (in the row's unit).
    AtLeast(f64),
    /// `ratio <= x`.
    RatioAtMost(f64),
    /// `ratio >= x`.
    RatioAtLeast(f64),
}

impl Row {
    /// A row without an anchor.
    pub fn new(figure: impl Into<String>, value: f64, unit: &'static str) -> Self {
        Self {
            figure: figure.into(),
            value,
            unit,
            anchor_name: String::new(),
            anchor_value: None,
            ratio: None,
            goal: Vec::new(),
        }
    }

    /// Sets the anchor and the ratio `value / anchor`.
    pub fn anchor(mut self, name: impl Into<String>, value: f64) -> Self {
        self.anchor_name = name.into();
        self.anchor_value = Some(value);
        self.ratio = (value > 0.0).then(|| self.value / value);
        self
    }

    /// Adds a goal.
    pub fn goal(mut self, goal: Goal) -> Self {
        self.goal.push(goal);
        self
    }

    /// `None` when the row has no goal, else whether all goals are met.
    pub fn met(&self) -> Option<bool> {
        if self.goal.is_empty() {
            return None;
        }
        Some(self.goal.iter().all(|g| match *g {
            Goal::AtMost(x) => self.value <= x,
            Goal::AtLeast(x) => self.value >= x,
            Goal::RatioAtMost(x) => self.ratio.is_some_and(|r| r <= x),
            Goal::RatioAtLeast(x) => self.ratio.is_some_and(|r| r >= x),
        }))
    }

    fn goal_text(&self) -> String {
        let parts: Vec<String> = self
            .goal
            .iter()
            .map(|g| match *g {
                Goal::AtMost(x) => format!("≤ {x} {}", self.unit),
                Goal::AtLeast(x) => format!("≥ {x} {}", self.unit),
                Goal::RatioAtMost(x) => format!("≤ {x}× anchor"),
                Goal::RatioAtLeast(x) => format!("≥ {x}× anchor"),
            })
            .collect();
        if parts.is_empty() {
            "—".into()
        } else {
            parts.join(", ")
        }
    }
}

/// A number with about three significant digits.
pub fn num(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// The results as a markdown table.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    out.push_str("| figure | value | anchor | anchor value | ratio | goal | met? |\n");
    out.push_str("|---|---:|---|---:|---:|---|:---:|\n");
    for r in rows {
        let anchor_value = r
            .anchor_value
            .map_or("—".into(), |v| format!("{} {}", num(v), r.unit));
        let ratio = r.ratio.map_or("—".into(), |x| format!("{}×", num(x)));
        let met = match r.met() {
            None => "—",
            Some(true) => "yes",
            Some(false) => "**no**",
        };
        let anchor = if r.anchor_name.is_empty() {
            "—"
        } else {
            &r.anchor_name
        };
        let _ = writeln!(
            out,
            "| {} | {} {} | {} | {} | {} | {} | {} |",
            r.figure,
            num(r.value),
            r.unit,
            anchor,
            anchor_value,
            ratio,
            r.goal_text(),
            met
        );
    }
    out
}

/// Settings shared by every area.
pub struct Ctx {
    /// The agent binary under test.
    pub agent: PathBuf,
    /// The orchestrator binary under test.
    pub sandboxd: PathBuf,
    /// Fewer iterations and smaller payloads, for checking the harness itself.
    pub quick: bool,
}

impl Ctx {
    /// `full` iterations, or a fifth of them (at least 3) in quick mode.
    pub fn count(&self, full: usize) -> usize {
        if self.quick {
            (full / 5).max(3)
        } else {
            full
        }
    }
}

/// A running agent on a free loopback port; killed and reaped on drop.
pub struct Agent {
    child: Child,
    /// `127.0.0.1:<port>`.
    pub addr: String,
    /// Spawn until the `listening on` line was read.
    pub line_after: Duration,
    /// When the agent process was spawned.
    pub spawned: Instant,
    /// Journals and logs; removed on drop.
    _state_dir: tempfile::TempDir,
}

impl Agent {
    /// Starts `binary --host 127.0.0.1 --port 0 --state-dir <tmp>` and waits for its
    /// `listening on 127.0.0.1:<port>` line. The agent's logs are discarded.
    pub fn start(binary: &Path) -> anyhow::Result<Self> {
        Self::start_env(binary, &[])
    }

    /// [`Agent::start`] with extra environment variables.
    pub fn start_env(binary: &Path, env: &[(&str, String)]) -> anyhow::Result<Self> {
        let state_dir = tempfile::tempdir().context("cannot create a state dir")?;
        let spawned = Instant::now();
        let mut child = Command::new(binary)
            .args(["--host", "127.0.0.1", "--port", "0", "--state-dir"])
            .arg(state_dir.path())
            .env_remove("EXECD_ACCESS_TOKEN")
            .env_remove("EXECD_ENVS")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let stdout = child.stdout.take().context("agent stdout not piped")?;
        let mut line = String::new();
        let read = BufReader::new(stdout).read_line(&mut line);
        let line_after = spawned.elapsed();
        let mut agent = Agent {
            child,
            addr: String::new(),
            line_after,
            spawned,
            _state_dir: state_dir,
        };
        read.context("cannot read the agent's stdout")?;
        match line.trim_end().strip_prefix("listening on ") {
            Some(addr) if addr.starts_with("127.0.0.1:") => agent.addr = addr.to_owned(),
            _ => bail!("agent printed {line:?} instead of `listening on 127.0.0.1:<port>`"),
        }
        Ok(agent)
    }

    /// The agent's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // SIGTERM first, so the agent kills what it started (kernels run in their own process
        // groups and would outlive a SIGKILLed agent); SIGKILL if it lingers.
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The base URL from a spawned `sandboxd serve`'s first line (`sandboxd listening on
/// http://…`); its stdout must be piped.
pub fn sandboxd_base(child: &mut Child) -> anyhow::Result<String> {
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("no stdout")?).read_line(&mut line)?;
    Ok(line
        .trim()
        .strip_prefix("sandboxd listening on ")
        .with_context(|| format!("unexpected first line {line:?}"))?
        .to_owned())
}

/// `GET /ping` on a fresh connection with a hand-written request (no client library in the way).
pub fn ping_raw(addr: &str) -> anyhow::Result<()> {
    let mut s = TcpStream::connect(addr).with_context(|| format!("cannot connect to {addr}"))?;
    s.set_nodelay(true)?;
    s.write_all(b"GET /ping HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).context("no answer to /ping")?;
    if &head != b"HTTP/1.1 200" {
        bail!("/ping answered {:?}", String::from_utf8_lossy(&head));
    }
    Ok(())
}

/// Times `f` once.
pub fn time<T>(f: impl FnOnce() -> T) -> (Duration, T) {
    let t = Instant::now();
    let out = f();
    (t.elapsed(), out)
}

/// fork+exec+wait of `program args` from Rust; fails unless it exits 0.
pub fn spawn_wait(program: &str, args: &[&str]) -> anyhow::Result<Duration> {
    let (d, status) = time(|| Command::new(program).args(args).status());
    let status = status.with_context(|| format!("cannot run {program}"))?;
    if !status.success() {
        bail!("{program} {args:?} failed: {status}");
    }
    Ok(d)
}

/// Nearest-rank percentile `p` (0..=100) of `samples`, in milliseconds.
pub fn percentile_ms(samples: &[Duration], p: f64) -> f64 {
    let mut v: Vec<Duration> = samples.to_vec();
    v.sort_unstable();
    if v.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1].as_secs_f64() * 1e3
}

/// The median of `values`.
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[(v.len() - 1) / 2]
}

/// A `kB` field (`VmRSS`, `VmHWM`…) of `/proc/<pid>/status`, in bytes.
pub fn proc_status_bytes(pid: u32, field: &str) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix(field).and_then(|r| r.strip_prefix(':')) {
            let kib: u64 = rest
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .with_context(|| format!("bad {field} line {line:?}"))?;
            return Ok(kib * 1024);
        }
    }
    bail!("{path} has no {field}")
}

/// CPU time (user + system) `pid` has used so far, from `/proc/<pid>/stat`.
pub fn proc_cpu(pid: u32) -> anyhow::Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    // Fields after the command name, which ends at the last ')': state is field 3, utime 14.
    let rest = text.rsplit_once(')').map(|(_, r)| r).context("malformed stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i - 3)
            .context("short stat")?
            .parse()
            .context("bad stat field")
    };
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(Duration::from_micros((ticks(14)? + ticks(15)?) * 1_000_000 / hz))
}

/// CPU time (user + system) of `who` (`RUSAGE_THREAD`, `RUSAGE_CHILDREN`…) so far.
pub fn rusage_cpu(who: libc::c_int) -> Duration {
    // SAFETY: an all-zero `rusage` is a valid value of this plain C struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage only writes to the out-pointer, which points to a live local.
    unsafe { libc::getrusage(who, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Bytes to MB (10^6 bytes, the unit of the agent's size budget).
pub fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

/// One line describing the machine: cores, CPU model and load average.
pub fn machine_note() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|r| r.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{cores} cores ({model}), {}", load_note())
}

/// Load average and CPU pressure: how much other work competed for the cores.
pub fn load_note() -> String {
    let mut note = format!("load average {}", load_average());
    // PSI: share of time some runnable task waited for a CPU, over the last 60 s.
    let psi = std::fs::read_to_string("/proc/pressure/cpu").ok().and_then(|s| {
        let line = s.lines().find(|l| l.starts_with("some "))?.to_owned();
        let v = line
            .split_whitespace()
            .find_map(|f| f.strip_prefix("avg60="))?
            .to_owned();
        Some(v)
    });
    if let Some(v) = psi {
        note.push_str(&format!(", CPU pressure {v}% (PSI some avg60)"));
    }
    note
}

/// The first three fields of `/proc/loadavg`.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// A keep-alive HTTP/1.1 client for one agent.
pub fn client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .http1_only()
        .build()?)
}

/// POSTs `body` to a streaming route (`/command`, an isolated run) and reads the SSE body to
/// the end, which must be `execution_complete`. Returns the wall time from sending the request
/// to the end of the body.
pub async fn run_stream(client: &reqwest::Client, url: &str, body: &'static str) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let mut resp = client
        .post(url)
        .header(CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await?;
    ensure!(
        resp.status() == 200,
        "POST {url} {body} answered {}",
        resp.status()
    );
    let mut sse = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        sse.extend_from_slice(&chunk);
    }
    let d = t.elapsed();
    check_completed(&sse).with_context(|| format!("POST {url} {body}"))?;
    Ok(d)
}

/// Fails unless the last SSE event in `tail` is `execution_complete`.
pub fn check_completed(tail: &[u8]) -> anyhow::Result<()> {
    let text = String::from_utf8_lossy(tail);
    let data = text
        .rfind("\ndata: ")
        .map(|i| &text[i + 7..])
        .or_else(|| text.strip_prefix("data: "))
        .context("no SSE event in the response")?;
    let data = data.split('\n').next().unwrap_or_default();
    let event: serde_json::Value =
        serde_json::from_str(data).with_context(|| format!("last event is not JSON: {data:?}"))?;
    match event["type"].as_str() {
        Some("execution_complete") => Ok(()),
        _ => bail!("stream ended with {data}"),
    }
}
