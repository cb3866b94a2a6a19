//! System metrics, container-aware: CPU and memory limits and usage come from execd's own
//! cgroup (v2, or v1 as on hosts with the legacy hierarchy) when a limit is set there, and from
//! the host (`/proc/stat`, `/proc/meminfo`) otherwise; disk, network, process count and load
//! come along as extras.
//!
//! A [`Monitor`] keeps a background thread that samples once a second, so `GET /metrics` answers
//! from memory at once; CPU percent is always over the last interval, never a blocking wait.
//! All paths hang off a root directory so that tests can use a fake `/proc` and `/sys`.
//! Synchronous; no axum.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::agent::now_ms;
use crate::wire::files::Metrics;

/// How often the background sampler refreshes the snapshot.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// Cgroup limits at or above this are "no limit" (v1 writes 2^63 rounded to pages).
const UNLIMITED: u64 = 1 << 60;

/// Cumulative counters at one instant; two of them give CPU percent.
#[derive(Debug, Clone, Copy)]
pub struct Counters {
    at: Instant,
    /// Host jiffies busy and total, from `/proc/stat`.
    host_busy: u64,
    host_total: u64,
    /// Cgroup CPU time in nanoseconds, when a CPU limit applies.
    cgroup_ns: Option<u64>,
}

/// Where execd's cgroup files are.
#[derive(Debug, Clone, Default)]
struct Layout {
    /// Directory with `cpu.cfs_quota_us` (v1) or `cpu.max` (v2).
    cpu: Option<(Version, PathBuf)>,
    /// Directory with `cpuacct.usage` (v1); v2 uses `cpu.stat` in the cpu directory.
    cpuacct: Option<PathBuf>,
    /// Directory with `memory.limit_in_bytes` (v1) or `memory.max` (v2).
    memory: Option<(Version, PathBuf)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

impl Version {
    fn name(self) -> &'static str {
        match self {
            Version::V1 => "v1",
            Version::V2 => "v2",
        }
    }
}

/// Reads metrics from a root directory (`/` in production).
#[derive(Debug)]
pub struct Sampler {
    root: PathBuf,
    /// Directory whose filesystem the disk figures describe.
    disk: PathBuf,
    /// Where execd's cgroup files are. Looked up again at every sample, because a container
    /// runtime (or a test) may move execd into a cgroup after it started.
    layout: Mutex<Layout>,
}

impl Sampler {
    /// A sampler over `root` (normally `/`), reporting the disk that holds `disk`.
    pub fn new(root: PathBuf, disk: PathBuf) -> Self {
        let layout = Mutex::new(discover(&root));
        Self { root, disk, layout }
    }

    fn layout(&self) -> Layout {
        self.layout.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn read(&self, rel: &str) -> Option<String> {
        std::fs::read_to_string(self.root.join(rel)).ok()
    }

    /// CPU limit in CPUs, when the cgroup sets one.
    fn cpu_quota(&self, layout: &Layout) -> Option<(Version, f64)> {
        let (v, dir) = layout.cpu.as_ref()?;
        let (quota, period) = match v {
            Version::V1 => (
                read_number(&dir.join("cpu.cfs_quota_us"))?,
                read_number(&dir.join("cpu.cfs_period_us"))?,
            ),
            Version::V2 => {
                let text = std::fs::read_to_string(dir.join("cpu.max")).ok()?;
                let mut f = text.split_whitespace();
                (f.next()?.parse().ok()?, f.next()?.parse().ok()?)
            }
        };
        (quota > 0 && period > 0).then(|| (*v, quota as f64 / period as f64))
    }

    /// Cgroup CPU time in nanoseconds.
    fn cgroup_cpu_ns(&self, layout: &Layout) -> Option<u64> {
        match layout.cpu.as_ref()? {
            (Version::V1, _) => {
                read_number(&layout.cpuacct.as_ref()?.join("cpuacct.usage")).map(|n| n as u64)
            }
            (Version::V2, dir) => {
                let stat = std::fs::read_to_string(dir.join("cpu.stat")).ok()?;
                field(&stat, "usage_usec").map(|us| us * 1000)
            }
        }
    }

    /// CPUs execd may run on (its affinity), at least 1.
    fn cpus_allowed(&self) -> f64 {
        let status = self.read("proc/self/status").unwrap_or_default();
        let list = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .map(str::trim)
            .unwrap_or("");
        let n = count_cpu_list(list);
        if n > 0 {
            n as f64
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get()) as f64
        }
    }

    /// The counters now.
    pub fn counters(&self) -> Counters {
        self.counters_with(&self.layout())
    }

    fn counters_with(&self, layout: &Layout) -> Counters {
        let stat = self.read("proc/stat").unwrap_or_default();
        let (busy, total) = host_cpu(&stat);
        Counters {
            at: Instant::now(),
            host_busy: busy,
            host_total: total,
            cgroup_ns: self.cpu_quota(layout).and_then(|_| self.cgroup_cpu_ns(layout)),
        }
    }

    /// Metrics now, with CPU percent over the interval since `prev`; also returns the counters
    /// to pass as `prev` next time.
    pub fn sample(&self, prev: &Counters) -> (Metrics, Counters) {
        let layout = discover(&self.root);
        *self.layout.lock().unwrap_or_else(|e| e.into_inner()) = layout.clone();
        let cur = self.counters_with(&layout);
        let quota = self.cpu_quota(&layout);
        let allowed = self.cpus_allowed();
        let cpu_count = quota.map_or(allowed, |(_, q)| q.min(allowed));
        let cpu_used_pct = match (quota, prev.cgroup_ns, cur.cgroup_ns) {
            (Some(_), Some(a), Some(b)) => {
                let elapsed = cur.at.duration_since(prev.at).as_nanos() as f64;
                if elapsed > 0.0 {
                    b.saturating_sub(a) as f64 / (elapsed * cpu_count) * 100.0
                } else {
                    0.0
                }
            }
            _ => {
                let total = cur.host_total.saturating_sub(prev.host_total);
                if total > 0 {
                    cur.host_busy.saturating_sub(prev.host_busy) as f64 / total as f64 * 100.0
                } else {
                    0.0
                }
            }
        };
        let meminfo = self.read("proc/meminfo").unwrap_or_default();
        let host_total = field(&meminfo, "MemTotal:").unwrap_or(0) * 1024;
        let host_avail = field(&meminfo, "MemAvailable:").unwrap_or(0) * 1024;
        let (mem_version, mem_total, mem_used) = match memory_cgroup(&layout, host_total) {
            Some((v, limit, used)) => (Some(v), limit, used),
            None => (None, host_total, host_total.saturating_sub(host_avail)),
        };
        let cgroup = quota
            .map(|(v, _)| v)
            .or(mem_version)
            .map_or("none", Version::name);
        let (disk_total, disk_used) = disk_usage(&self.disk);
        let (rx, tx) = net_bytes(&self.read("proc/net/dev").unwrap_or_default());
        let load = self.read("proc/loadavg").unwrap_or_default();
        let mut load = load.split_whitespace().map(|s| s.parse::<f64>().unwrap_or(0.0));
        let metrics = Metrics {
            cpu_count: round2(cpu_count),
            cpu_used_pct: round2(cpu_used_pct.clamp(0.0, 100.0)),
            mem_total_mib: round2(mib(mem_total)),
            mem_used_mib: round2(mib(mem_used)),
            timestamp: now_ms(),
            cgroup: cgroup.to_owned(),
            disk_total_mib: round2(mib(disk_total)),
            disk_used_mib: round2(mib(disk_used)),
            net_rx_bytes: rx,
            net_tx_bytes: tx,
            process_count: self.process_count(),
            load_1: load.next().unwrap_or(0.0),
            load_5: load.next().unwrap_or(0.0),
            load_15: load.next().unwrap_or(0.0),
        };
        (metrics, cur)
    }

    fn process_count(&self) -> u64 {
        std::fs::read_dir(self.root.join("proc")).map_or(0, |rd| {
            rd.filter_map(Result::ok)
                .filter(|e| {
                    e.file_name()
                        .to_str()
                        .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
                })
                .count() as u64
        })
    }
}

/// The background sampler and its latest snapshot.
pub struct Monitor {
    sampler: Arc<Sampler>,
    /// The newest snapshot; written once a second by the sampler thread, read by requests.
    latest: Mutex<Metrics>,
}

impl Monitor {
    /// Starts sampling `sampler` in a background thread that lives as long as the monitor.
    pub fn start(sampler: Sampler) -> Arc<Self> {
        let sampler = Arc::new(sampler);
        let first = sampler.counters();
        let (initial, _) = sampler.sample(&first);
        let monitor = Arc::new(Self {
            sampler: Arc::clone(&sampler),
            latest: Mutex::new(initial),
        });
        let weak: Weak<Self> = Arc::downgrade(&monitor);
        let spawned = std::thread::Builder::new()
            .name("execd-metrics".into())
            .spawn(move || {
                let mut prev = first;
                // The first interval is short so that a real CPU figure is there almost at once.
                let mut pause = Duration::from_millis(200);
                loop {
                    std::thread::sleep(pause);
                    pause = SAMPLE_EVERY;
                    let Some(monitor) = weak.upgrade() else { return };
                    let (m, cur) = monitor.sampler.sample(&prev);
                    prev = cur;
                    *monitor.latest.lock().unwrap_or_else(|e| e.into_inner()) = m;
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the metrics sampler; /metrics will not refresh");
        }
        monitor
    }

    /// The newest snapshot.
    pub fn latest(&self) -> Metrics {
        self.latest.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The sampler, for streams that sample at their own pace.
    pub fn sampler(&self) -> Arc<Sampler> {
        Arc::clone(&self.sampler)
    }
}

/// `(version, limit, used)` of the memory cgroup when it sets a limit below the host's memory.
/// Used excludes inactive page cache, as `docker stats` does.
fn memory_cgroup(layout: &Layout, host_total: u64) -> Option<(Version, u64, u64)> {
    let (v, dir) = layout.memory.as_ref()?;
    let (limit_file, usage_file, inactive_key) = match v {
        Version::V1 => (
            "memory.limit_in_bytes",
            "memory.usage_in_bytes",
            "total_inactive_file",
        ),
        Version::V2 => ("memory.max", "memory.current", "inactive_file"),
    };
    let limit = read_number(&dir.join(limit_file))? as u64;
    if limit >= UNLIMITED || (host_total > 0 && limit >= host_total) {
        return None;
    }
    let usage = read_number(&dir.join(usage_file)).unwrap_or(0) as u64;
    let stat = std::fs::read_to_string(dir.join("memory.stat")).unwrap_or_default();
    let inactive = field(&stat, inactive_key).unwrap_or(0);
    Some((*v, limit, usage.saturating_sub(inactive)))
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn read_number(path: &Path) -> Option<i64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The number after `key` on the line that starts with it (`MemTotal: 123 kB`, `usage_usec 5`).
fn field(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(key)
                .filter(|rest| rest.starts_with([' ', '\t', ':']) || key.ends_with(':'))
        })
        .and_then(|rest| {
            rest.trim_start_matches(':')
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
}

/// `(busy, total)` jiffies from the `cpu` line of `/proc/stat`.
fn host_cpu(stat: &str) -> (u64, u64) {
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return (0, 0);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|n| n.parse().unwrap_or(0))
        .collect();
    let total: u64 = v.iter().sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

/// Number of CPUs in a list like `0-3,8,10-11`.
fn count_cpu_list(list: &str) -> usize {
    list.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|part| match part.trim().split_once('-') {
            Some((a, b)) => match (a.parse::<usize>(), b.parse::<usize>()) {
                (Ok(a), Ok(b)) if b >= a => b - a + 1,
                _ => 0,
            },
            None => usize::from(part.trim().parse::<usize>().is_ok()),
        })
        .sum()
}

/// Received and sent bytes over all interfaces but loopback, from `/proc/net/dev`.
fn net_bytes(dev: &str) -> (u64, u64) {
    let mut rx = 0u64;
    let mut tx = 0u64;
    for line in dev.lines().skip(2) {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        if name.trim() == "lo" {
            continue;
        }
        let f: Vec<u64> = rest.split_whitespace().map(|n| n.parse().unwrap_or(0)).collect();
        rx += f.first().copied().unwrap_or(0);
        tx += f.get(8).copied().unwrap_or(0);
    }
    (rx, tx)
}

/// `(total, used)` bytes of the filesystem holding `path`.
fn disk_usage(path: &Path) -> (u64, u64) {
    match nix::sys::statvfs::statvfs(path) {
        Ok(s) => {
            let frag = s.fragment_size();
            let total = s.blocks() * frag;
            let free = s.blocks_free() * frag;
            (total, total.saturating_sub(free))
        }
        Err(_) => (0, 0),
    }
}

/// Finds execd's cgroup directories from `/proc/self/mountinfo` and `/proc/self/cgroup`.
fn discover(root: &Path) -> Layout {
    let mountinfo = std::fs::read_to_string(root.join("proc/self/mountinfo")).unwrap_or_default();
    let cgroups = std::fs::read_to_string(root.join("proc/self/cgroup")).unwrap_or_default();
    let mounts = parse_mounts(&mountinfo);
    let memberships: Vec<(Vec<&str>, &str)> = cgroups
        .lines()
        .filter_map(|l| {
            let mut f = l.splitn(3, ':');
            let _id = f.next()?;
            let controllers = f.next()?.split(',').filter(|c| !c.is_empty()).collect();
            Some((controllers, f.next()?))
        })
        .collect();
    let dir_of = |mount: &Mount, path: &str| -> PathBuf {
        let rel = path.strip_prefix(mount.root.as_str()).unwrap_or(path);
        let mut dir = root.join(mount.point.trim_start_matches('/'));
        dir.push(rel.trim_start_matches('/'));
        dir
    };
    let v1 = |controller: &str| -> Option<PathBuf> {
        let mount = mounts
            .iter()
            .find(|m| !m.v2 && m.options.iter().any(|o| o == controller))?;
        let (_, path) = memberships.iter().find(|(cs, _)| cs.contains(&controller))?;
        Some(dir_of(mount, path)).filter(|d| d.is_dir())
    };
    let v2 = |file: &str| -> Option<PathBuf> {
        let mount = mounts.iter().find(|m| m.v2)?;
        let (_, path) = memberships.iter().find(|(cs, _)| cs.is_empty())?;
        Some(dir_of(mount, path)).filter(|d| d.join(file).exists())
    };
    Layout {
        cpu: v1("cpu")
            .map(|d| (Version::V1, d))
            .or_else(|| v2("cpu.max").map(|d| (Version::V2, d))),
        cpuacct: v1("cpuacct"),
        memory: v1("memory")
            .map(|d| (Version::V1, d))
            .or_else(|| v2("memory.max").map(|d| (Version::V2, d))),
    }
}

struct Mount {
    root: String,
    point: String,
    v2: bool,
    options: Vec<String>,
}

fn parse_mounts(mountinfo: &str) -> Vec<Mount> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let left: Vec<&str> = left.split_whitespace().collect();
            let mut right = right.split_whitespace();
            let fstype = right.next()?;
            let _source = right.next();
            let options = right.next().unwrap_or("").split(',').map(str::to_owned).collect();
            let v2 = match fstype {
                "cgroup2" => true,
                "cgroup" => false,
                _ => return None,
            };
            Some(Mount {
                root: (*left.get(3)?).to_owned(),
                point: (*left.get(4)?).to_owned(),
                v2,
                options,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, content: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    fn fake_proc(root: &Path) {
        write(
            root,
            "proc/stat",
            "cpu  100 0 100 800 0 0 0 0 0 0\ncpu0 1 2 3 4\n",
        );
        write(
            root,
            "proc/meminfo",
            "MemTotal:       8388608 kB\nMemFree: 1 kB\nMemAvailable:   4194304 kB\n",
        );
        write(root, "proc/loadavg", "0.50 0.25 0.10 1/100 42\n");
        write(
            root,
            "proc/net/dev",
            "Inter-|   Receive\n face |bytes\n    lo: 999 1 0 0 0 0 0 0 999 1 0 0 0 0 0 0\n  eth0: 1000 5 0 0 0 0 0 0 2000 5 0 0 0 0 0 0\n",
        );
        write(
            root,
            "proc/self/status",
            "Name:\texecd\nCpus_allowed_list:\t0-3\n",
        );
        std::fs::create_dir_all(root.join("proc/1")).unwrap();
        std::fs::create_dir_all(root.join("proc/22")).unwrap();
    }

    #[test]
    fn host_values_without_cgroup_limits() {
        let d = tempfile::tempdir().unwrap();
        fake_proc(d.path());
        let s = Sampler::new(d.path().to_owned(), d.path().to_owned());
        let prev = s.counters();
        write(d.path(), "proc/stat", "cpu  200 0 200 1400 0 0 0 0 0 0\n");
        let (m, _) = s.sample(&prev);
        assert_eq!(m.cgroup, "none");
        assert_eq!(m.cpu_count, 4.0);
        assert_eq!(m.cpu_used_pct, 25.0, "200 busy of 800 jiffies");
        assert_eq!(m.mem_total_mib, 8192.0);
        assert_eq!(m.mem_used_mib, 4096.0);
        assert_eq!((m.net_rx_bytes, m.net_tx_bytes), (1000, 2000));
        assert_eq!(m.process_count, 2);
        assert_eq!(m.load_1, 0.5);
    }

    #[test]
    fn cgroup_v1_limits_apply() {
        let d = tempfile::tempdir().unwrap();
        fake_proc(d.path());
        write(
            d.path(),
            "proc/self/mountinfo",
            "32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n\
             33 31 0:30 / /sys/fs/cgroup/cpuacct rw - cgroup cgroup rw,cpuacct\n\
             36 31 0:33 /outer /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n\
             41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n",
        );
        write(
            d.path(),
            "proc/self/cgroup",
            "4:memory:/outer/box\n2:cpuacct:/box\n1:cpu:/box\n0::/\n",
        );
        write(d.path(), "sys/fs/cgroup/cpu/box/cpu.cfs_quota_us", "50000\n");
        write(d.path(), "sys/fs/cgroup/cpu/box/cpu.cfs_period_us", "100000\n");
        write(
            d.path(),
            "sys/fs/cgroup/cpuacct/box/cpuacct.usage",
            "1000000000\n",
        );
        write(
            d.path(),
            "sys/fs/cgroup/memory/box/memory.limit_in_bytes",
            "268435456\n",
        );
        write(
            d.path(),
            "sys/fs/cgroup/memory/box/memory.usage_in_bytes",
            "104857600\n",
        );
        write(
            d.path(),
            "sys/fs/cgroup/memory/box/memory.stat",
            "inactive_file 1\ntotal_inactive_file 52428800\n",
        );
        let s = Sampler::new(d.path().to_owned(), d.path().to_owned());
        let prev = s.counters();
        std::thread::sleep(Duration::from_millis(100));
        // Half a CPU for 100 ms is 50 ms of CPU time: 100 % of the quota at most.
        write(
            d.path(),
            "sys/fs/cgroup/cpuacct/box/cpuacct.usage",
            "1025000000\n",
        );
        let (m, _) = s.sample(&prev);
        assert_eq!(m.cgroup, "v1");
        assert_eq!(m.cpu_count, 0.5);
        assert!(
            m.cpu_used_pct > 20.0 && m.cpu_used_pct <= 50.0,
            "{}",
            m.cpu_used_pct
        );
        assert_eq!(m.mem_total_mib, 256.0);
        assert_eq!(m.mem_used_mib, 50.0);
    }

    #[test]
    fn cgroup_v2_limits_apply() {
        let d = tempfile::tempdir().unwrap();
        fake_proc(d.path());
        write(
            d.path(),
            "proc/self/mountinfo",
            "30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
        );
        write(d.path(), "proc/self/cgroup", "0::/\n");
        write(d.path(), "sys/fs/cgroup/cpu.max", "200000 100000\n");
        write(d.path(), "sys/fs/cgroup/cpu.stat", "usage_usec 10\nuser_usec 5\n");
        write(d.path(), "sys/fs/cgroup/memory.max", "max\n");
        let s = Sampler::new(d.path().to_owned(), d.path().to_owned());
        let (m, _) = s.sample(&s.counters());
        assert_eq!(m.cgroup, "v2");
        assert_eq!(m.cpu_count, 2.0);
        assert_eq!(m.mem_total_mib, 8192.0, "memory.max = max is no limit");
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(count_cpu_list("0-3,8,10-11"), 7);
        assert_eq!(count_cpu_list("0"), 1);
        assert_eq!(count_cpu_list(""), 0);
    }
}
