//! The hardening every isolated run goes through between its fork and its `execve`, one step
//! per function, in the order `docs/isolation.md` narrates: rlimits, bounding-set trim,
//! identity switch, capability drop, `no_new_privs`, landlock, seccomp.
//!
//! Runs in a child forked from the single-threaded jail init, so allocating here is safe.
//! Synchronous.

use std::io;
use std::path::{Path, PathBuf};

use landlock::{
    Access, AccessFs, PathBeneath, PathFd, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope,
    ABI,
};
use seccompiler::BpfProgram;

use super::proto::{LandlockPolicy, RunPolicy};

/// A failed step and its error.
#[derive(Debug, thiserror::Error)]
#[error("{step}: {source}")]
pub struct StepError {
    /// Which step.
    pub step: &'static str,
    /// The OS error.
    #[source]
    pub source: io::Error,
}

fn step(step: &'static str) -> impl FnOnce(io::Error) -> StepError {
    move |source| StepError { step, source }
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Applies `policy` to the calling process; `seccomp` are the compiled filters.
pub fn apply(policy: &RunPolicy, seccomp: &[BpfProgram]) -> Result<String, StepError> {
    set_rlimits(&policy.rlimits).map_err(step("rlimits"))?;
    if policy.drop_caps {
        trim_bounding_set().map_err(step("bounding set"))?;
    }
    if policy.switch_identity {
        switch_identity(policy.uid, policy.gid, &policy.groups).map_err(step("identity"))?;
    }
    if policy.drop_caps {
        clear_capabilities().map_err(step("capabilities"))?;
    }
    nix::sys::prctl::set_no_new_privs().map_err(|e| StepError {
        step: "no_new_privs",
        source: e.into(),
    })?;
    let landlock = match &policy.landlock {
        Some(rules) => restrict_filesystem(rules).map_err(step("landlock"))?,
        None => "disabled".to_owned(),
    };
    for filter in seccomp {
        seccompiler::apply_filter(filter).map_err(|e| StepError {
            step: "seccomp",
            source: io::Error::other(e),
        })?;
    }
    Ok(landlock)
}

/// Resource limits: soft = hard, so the run cannot raise them again.
fn set_rlimits(limits: &[(i32, u64)]) -> io::Result<()> {
    for &(resource, value) in limits {
        let lim = libc::rlimit {
            rlim_cur: value,
            rlim_max: value,
        };
        // SAFETY: setrlimit reads the struct we pass; `resource` comes from our own table.
        check(unsafe { libc::setrlimit(resource as _, &lim) })?;
    }
    Ok(())
}

/// Drops every capability from the bounding set, so no exec (setuid binary, file caps) can
/// bring one back. Needs CAP_SETPCAP, hence before the identity switch.
fn trim_bounding_set() -> io::Result<()> {
    let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<libc::c_ulong>().ok())
        .unwrap_or(40);
    for cap in 0..=last {
        // SAFETY: prctl with integer arguments only.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINVAL) {
                return Err(e);
            }
        }
    }
    Ok(())
}

/// setgroups, setgid, setuid: real, effective and saved ids all change.
fn switch_identity(uid: u32, gid: u32, groups: &[u32]) -> io::Result<()> {
    // SAFETY: the pointer and length describe `groups`, which outlives the call.
    check(unsafe { libc::setgroups(groups.len(), groups.as_ptr()) })?;
    // SAFETY: integer arguments only.
    check(unsafe { libc::setresgid(gid, gid, gid) })?;
    // SAFETY: integer arguments only.
    check(unsafe { libc::setresuid(uid, uid, uid) })
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Empties the effective, permitted, inheritable and ambient sets (a uid-0 run keeps none).
fn clear_capabilities() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) };
    if rc < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
        return Err(io::Error::last_os_error());
    }
    let mut header = CapHeader {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: capset reads a v3 header and two data structs, exactly what we pass.
    check(unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) as libc::c_int })
}

/// The landlock ABI this kernel offers (0 when it has none).
pub fn landlock_abi() -> i32 {
    // SAFETY: with a null attr, size 0 and the VERSION flag the call only returns a number.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            1u32, // LANDLOCK_CREATE_RULESET_VERSION
        )
    };
    rc.max(0) as i32
}

/// Read and execute beneath `read`, everything beneath `write`, nothing elsewhere; with
/// `scope_signals`, no signals to (and no abstract sockets of) processes outside the run.
fn restrict_filesystem(rules: &LandlockPolicy) -> io::Result<String> {
    let abi = ABI::V5;
    let err = |e: landlock::RulesetError| io::Error::other(e.to_string());
    let mut ruleset = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))
        .map_err(err)?;
    if rules.scope_signals {
        ruleset = ruleset.scope(Scope::from_all(ABI::V6)).map_err(err)?;
    }
    let mut created = ruleset.create().map_err(err)?;
    let add =
        |created: landlock::RulesetCreated, path: &PathBuf, access| -> io::Result<landlock::RulesetCreated> {
            match PathFd::new(path) {
                Ok(fd) => created.add_rule(PathBeneath::new(fd, access)).map_err(err),
                // A path that does not exist grants nothing.
                Err(_) => Ok(created),
            }
        };
    for path in &rules.read {
        created = add(created, path, AccessFs::from_read(abi))?;
    }
    for path in &rules.write {
        created = add(created, path, AccessFs::from_all(abi))?;
    }
    let status = created.restrict_self().map_err(err)?;
    Ok(match status.ruleset {
        RulesetStatus::FullyEnforced => "fully enforced",
        RulesetStatus::PartiallyEnforced => "partially enforced",
        RulesetStatus::NotEnforced => "not enforced",
    }
    .to_owned())
}

/// Every path beneath `/` except the subtrees in `hidden`: the readable roots landlock needs to
/// express "all but these" with rules that can only allow.
pub fn roots_except(hidden: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    collect_except(Path::new("/"), hidden, &mut out);
    out
}

fn collect_except(dir: &Path, hidden: &[PathBuf], out: &mut Vec<PathBuf>) {
    if hidden.iter().any(|h| h == dir) {
        return;
    }
    if !hidden.iter().any(|h| h.starts_with(dir)) {
        out.push(dir.to_path_buf());
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        collect_except(&entry.path(), hidden, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_except_leaves_out_exactly_the_hidden_subtree() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path();
        for p in ["a/x", "a/y/z", "b"] {
            std::fs::create_dir_all(base.join(p)).unwrap();
        }
        let mut out = Vec::new();
        collect_except(base, &[base.join("a/y")], &mut out);
        out.sort();
        assert_eq!(out, vec![base.join("a/x"), base.join("b")]);
    }

    #[test]
    fn landlock_denies_writes_outside_the_rules_in_a_thread() {
        if landlock_abi() == 0 {
            return; // the kernel has no landlock; capabilities report it
        }
        let dir = tempfile::tempdir().unwrap();
        let allowed = dir.path().join("ok");
        let denied = dir.path().join("no");
        std::fs::create_dir_all(&allowed).unwrap();
        std::fs::create_dir_all(&denied).unwrap();
        let (a, d) = (allowed.clone(), denied.clone());
        let (status, ok, no) = std::thread::spawn(move || {
            let policy = LandlockPolicy {
                read: vec!["/".into()],
                write: vec![a.clone()],
                scope_signals: true,
            };
            let status = restrict_filesystem(&policy).unwrap();
            (
                status,
                std::fs::write(a.join("f"), "x").is_ok(),
                std::fs::write(d.join("f"), "x").is_ok(),
            )
        })
        .join()
        .unwrap();
        assert_eq!(status, "fully enforced");
        assert!(ok);
        assert!(!no);
    }
}
