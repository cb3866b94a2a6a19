//! Per-session cgroups for memory, pids and CPU limits, on cgroup v1 (one directory per
//! controller) or v2 (one directory), created beneath execd's own cgroup when that tree is
//! writable. Paths are parameters so tests can use a temp dir as the cgroup root.
//!
//! Synchronous file I/O only.

use std::path::{Path, PathBuf};

/// Limits of one session; `None` leaves a resource unlimited.
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    /// Memory (and, on v1 with swap accounting, memory + swap) in bytes.
    pub memory_bytes: Option<u64>,
    /// Number of tasks.
    pub pids: Option<u64>,
    /// CPU in thousandths of a CPU (1000 = one full CPU).
    pub cpu_millis: Option<u64>,
}

/// Why a session cgroup could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// No controller we need is mounted.
    #[error("no memory, pids or cpu controller is mounted")]
    NoController,
    /// A directory or limit file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// A session's cgroup directories (one per v1 controller, or the one v2 directory).
#[derive(Debug)]
pub struct SessionCgroup {
    dirs: Vec<PathBuf>,
}

/// Where the cgroup of `controller` for this process lives: `root` joined with the mount
/// directory and the path from `/proc/self/cgroup` (`self_cgroup` is that file's text).
fn controller_dirs(root: &Path, self_cgroup: &str) -> Vec<(&'static str, PathBuf)> {
    let mut out = Vec::new();
    let v1: Vec<(&str, &str)> = self_cgroup
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let _id = parts.next()?;
            Some((parts.next()?, parts.next()?))
        })
        .collect();
    for ctrl in ["memory", "pids", "cpu"] {
        let own = v1
            .iter()
            .find(|(list, _)| list.split(',').any(|c| c == ctrl))
            .map(|(_, p)| *p);
        if let Some(own) = own {
            // v1: /sys/fs/cgroup/<ctrl> (cpu may be mounted as cpu,cpuacct with a symlink).
            let base = root.join(ctrl);
            if base.join("tasks").exists() || base.join("cgroup.procs").exists() {
                out.push((ctrl, base.join(own.trim_start_matches('/'))));
            }
        }
    }
    if out.is_empty() {
        // v2: the `0::/path` line, all controllers in one directory.
        if let Some((_, path)) = v1.iter().find(|(list, _)| list.is_empty()) {
            if root.join("cgroup.controllers").exists() {
                out.push(("unified", root.join(path.trim_start_matches('/'))));
            }
        }
    }
    out
}

impl SessionCgroup {
    /// Creates `name` beneath execd's own cgroups and writes `limits`. Fails (and removes what
    /// it made) when the tree is read-only.
    pub fn create(root: &Path, self_cgroup: &str, name: &str, limits: Limits) -> Result<Self, CgroupError> {
        let dirs = controller_dirs(root, self_cgroup);
        if dirs.is_empty() {
            return Err(CgroupError::NoController);
        }
        let mut made = SessionCgroup { dirs: Vec::new() };
        for (ctrl, parent) in dirs {
            let dir = parent.join(name);
            std::fs::create_dir_all(&dir).map_err(|source| CgroupError::Write {
                path: dir.clone(),
                source,
            })?;
            made.dirs.push(dir.clone());
            let mut files: Vec<(&str, String)> = Vec::new();
            match ctrl {
                "memory" => {
                    if let Some(m) = limits.memory_bytes {
                        files.push(("memory.limit_in_bytes", m.to_string()));
                        files.push(("memory.memsw.limit_in_bytes", m.to_string()));
                    }
                }
                "pids" => {
                    if let Some(p) = limits.pids {
                        files.push(("pids.max", p.to_string()));
                    }
                }
                "cpu" => {
                    if let Some(c) = limits.cpu_millis {
                        files.push(("cpu.cfs_period_us", "100000".into()));
                        files.push(("cpu.cfs_quota_us", (c * 100).to_string()));
                    }
                }
                _ => {
                    if let Some(m) = limits.memory_bytes {
                        files.push(("memory.max", m.to_string()));
                        files.push(("memory.swap.max", "0".into()));
                    }
                    if let Some(p) = limits.pids {
                        files.push(("pids.max", p.to_string()));
                    }
                    if let Some(c) = limits.cpu_millis {
                        files.push(("cpu.max", format!("{} 100000", c * 100)));
                    }
                }
            }
            for (file, value) in files {
                let path = dir.join(file);
                // memsw/swap files are absent without swap accounting: not an error.
                if file.contains("memsw") || file.contains("swap") {
                    let _ = std::fs::write(&path, &value);
                    continue;
                }
                if let Err(source) = std::fs::write(&path, &value) {
                    made.remove();
                    return Err(CgroupError::Write { path, source });
                }
            }
        }
        Ok(made)
    }

    /// The `cgroup.procs` files the jail writes its pid to.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// SIGKILL to every process in the session's cgroups (degraded mode has no pid namespace
    /// that would do it).
    pub fn kill_all(&self) {
        for dir in &self.dirs {
            if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
                for pid in text.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                    if pid > 1 {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                }
            }
        }
    }

    /// Removes the directories (each must be empty of processes by then).
    pub fn remove(&self) {
        for dir in &self.dirs {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_limits_land_in_each_controller_beneath_our_own_cgroup() {
        let root = tempfile::tempdir().unwrap();
        for ctrl in ["memory/harness/x", "pids", "cpu"] {
            std::fs::create_dir_all(root.path().join(ctrl)).unwrap();
        }
        for ctrl in ["memory", "pids", "cpu"] {
            std::fs::write(root.path().join(ctrl).join("tasks"), "").unwrap();
        }
        let self_cg = "4:memory:/harness/x\n8:pids:/\n1:cpu,cpuacct:/\n0::/\n";
        let limits = Limits {
            memory_bytes: Some(64 << 20),
            pids: Some(20),
            cpu_millis: Some(500),
        };
        let cg = SessionCgroup::create(root.path(), self_cg, "s1", limits).unwrap();
        let read = |p: &str| std::fs::read_to_string(root.path().join(p)).unwrap();
        assert_eq!(
            read("memory/harness/x/s1/memory.limit_in_bytes"),
            (64u64 << 20).to_string()
        );
        assert_eq!(read("pids/s1/pids.max"), "20");
        assert_eq!(read("cpu/s1/cpu.cfs_quota_us"), "50000");
        assert_eq!(cg.procs_files().len(), 3);
    }

    #[test]
    fn v2_uses_one_directory() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("svc")).unwrap();
        std::fs::write(root.path().join("cgroup.controllers"), "memory pids cpu").unwrap();
        let limits = Limits {
            pids: Some(7),
            ..Limits::default()
        };
        let cg = SessionCgroup::create(root.path(), "0::/svc\n", "s2", limits).unwrap();
        assert_eq!(
            std::fs::read_to_string(root.path().join("svc/s2/pids.max")).unwrap(),
            "7"
        );
        assert_eq!(cg.procs_files(), vec![root.path().join("svc/s2/cgroup.procs")]);
    }
}
