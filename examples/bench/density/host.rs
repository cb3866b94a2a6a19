//! What the density section reads off the host: CPU by who used it (`/proc/<pid>/stat`,
//! `/proc/stat`), memory in use (`/proc/meminfo`), the engine processes' PSS
//! (`smaps_rollup`), and a container's cgroup (v1 or v2). Synchronous.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, ensure, Context as _};

use crate::harness::Row;

/// CPU time used so far, by who used it: this run's sandboxd, the engine's processes
/// (dockerd, containerd, shims with the runc runs they reaped, fuse-overlayfs, docker-proxy),
/// the containers' cgroups, this harness, and the whole machine.
#[derive(Default, Clone)]
pub(super) struct Census {
    sandboxd: Duration,
    engine: Duration,
    /// Filled in by the caller from the containers' cgroups.
    pub(super) sandboxes: Duration,
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
    pub(super) fn take(sandboxd: u32) -> anyhow::Result<Self> {
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
    pub(super) fn since(&self, before: &Census) -> Census {
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

    pub(super) fn rows(&self, n: usize, wall: Duration) -> Vec<Row> {
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
                "create phase, CPU per sandbox: inside the sandbox (its cgroup: runc's init, execd starting, `sleep`)",
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
pub(super) fn grown_mb(before: u64, after: u64) -> f64 {
    (after as f64 - before as f64) / 1e6
}

/// Host memory in use: MemTotal − MemAvailable, in bytes.
pub(super) fn host_used() -> anyhow::Result<u64> {
    let text = std::fs::read_to_string("/proc/meminfo")?;
    let field = |name: &str| -> anyhow::Result<u64> {
        let line = text
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("no {name} in /proc/meminfo"))?;
        let kib: u64 = line[name.len()..].trim().trim_end_matches("kB").trim().parse()?;
        Ok(kib * 1024)
    };
    Ok(field("MemTotal:")?.saturating_sub(field("MemAvailable:")?))
}

/// Summed PSS of the engine's per-container processes (shims, fuse-overlayfs, docker-proxy),
/// in bytes; processes that cannot be read count nothing.
pub(super) fn engine_pss() -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| {
                matches!(
                    c.trim_end(),
                    "containerd-shim" | "fuse-overlayfs" | "docker-proxy"
                )
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
pub(super) struct Cgroup {
    memory: PathBuf,
    cpu: PathBuf,
    v2: bool,
}

impl Cgroup {
    pub(super) fn of(pid: u32) -> anyhow::Result<Self> {
        let path = format!("/proc/{pid}/cgroup");
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
        let (mut memory, mut cpu, mut unified) = (None, None, None);
        for line in text.lines() {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, p) = (
                parts.next(),
                parts.next().unwrap_or(""),
                parts.next().unwrap_or(""),
            );
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
            (Some(memory), Some(cpu), _) => Ok(Self {
                memory,
                cpu,
                v2: false,
            }),
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
    pub(super) fn memory(&self) -> anyhow::Result<u64> {
        let file = self.memory.join(if self.v2 {
            "memory.current"
        } else {
            "memory.usage_in_bytes"
        });
        let text =
            std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
        Ok(text.trim().parse()?)
    }

    /// The processes in the cgroup.
    pub(super) fn procs(&self) -> Vec<u32> {
        std::fs::read_to_string(self.memory.join("cgroup.procs"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    /// CPU used by the cgroup so far (`cpu.stat` usage_usec, v1 `cpuacct.usage`).
    pub(super) fn cpu(&self) -> anyhow::Result<Duration> {
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
