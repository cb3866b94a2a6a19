//! The seccomp denylist of isolated runs, kept as data with the reason for each entry, and
//! its compilation to BPF (seccompiler: pure Rust, so the static agent needs no libseccomp).
//!
//! Default allow: the jail's other layers confine the filesystem and processes; this list
//! removes the kernel surfaces that would let a run undo them or attack the kernel. Denied
//! calls fail with EPERM (never a kill: a tool probing for a feature should see an error).
//! Synchronous.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
};

/// Syscalls refused with EPERM, and why.
pub const DENYLIST: &[(&str, i64, &str)] = &[
    (
        "mount",
        libc::SYS_mount,
        "would remount the read-only root or uncover masked paths",
    ),
    (
        "umount2",
        libc::SYS_umount2,
        "would uncover what the jail's mounts hide",
    ),
    (
        "chroot",
        libc::SYS_chroot,
        "classic chroot escapes with a writable directory",
    ),
    (
        "pivot_root",
        libc::SYS_pivot_root,
        "would replace the jail's root",
    ),
    (
        "open_tree",
        libc::SYS_open_tree,
        "new mount API: clones mount trees",
    ),
    (
        "move_mount",
        libc::SYS_move_mount,
        "new mount API: attaches mounts",
    ),
    ("fsopen", libc::SYS_fsopen, "new mount API: creates filesystems"),
    ("fsmount", libc::SYS_fsmount, "new mount API"),
    ("fsconfig", libc::SYS_fsconfig, "new mount API"),
    (
        "fspick",
        libc::SYS_fspick,
        "new mount API: reconfigures existing mounts",
    ),
    (
        "mount_setattr",
        libc::SYS_mount_setattr,
        "would clear read-only flags",
    ),
    (
        "ptrace",
        libc::SYS_ptrace,
        "reads and rewrites other processes' memory",
    ),
    (
        "process_vm_readv",
        libc::SYS_process_vm_readv,
        "reads other processes' memory",
    ),
    (
        "process_vm_writev",
        libc::SYS_process_vm_writev,
        "writes other processes' memory",
    ),
    (
        "kcmp",
        libc::SYS_kcmp,
        "leaks kernel pointers ordering across processes",
    ),
    (
        "pidfd_getfd",
        libc::SYS_pidfd_getfd,
        "steals file descriptors of other processes",
    ),
    ("init_module", libc::SYS_init_module, "loads kernel code"),
    ("finit_module", libc::SYS_finit_module, "loads kernel code"),
    ("delete_module", libc::SYS_delete_module, "unloads kernel code"),
    (
        "bpf",
        libc::SYS_bpf,
        "large kernel attack surface; programs can read kernel memory",
    ),
    (
        "perf_event_open",
        libc::SYS_perf_event_open,
        "kernel attack surface and side channels",
    ),
    (
        "seccomp",
        libc::SYS_seccomp,
        "a run must not install filters that confuse its supervisor",
    ),
    (
        "personality",
        libc::SYS_personality,
        "can disable ASLR and enable legacy quirks",
    ),
    (
        "add_key",
        libc::SYS_add_key,
        "the kernel keyring is not namespaced",
    ),
    (
        "request_key",
        libc::SYS_request_key,
        "the kernel keyring is not namespaced",
    ),
    ("keyctl", libc::SYS_keyctl, "the kernel keyring is not namespaced"),
    ("iopl", libc::SYS_iopl, "raw port I/O"),
    ("ioperm", libc::SYS_ioperm, "raw port I/O"),
    ("reboot", libc::SYS_reboot, "host power state"),
    (
        "syslog",
        libc::SYS_syslog,
        "reads the kernel log (kernel pointers)",
    ),
    ("swapon", libc::SYS_swapon, "host memory configuration"),
    ("swapoff", libc::SYS_swapoff, "host memory configuration"),
    ("setns", libc::SYS_setns, "would join another namespace"),
    (
        "unshare",
        libc::SYS_unshare,
        "new namespaces reopen the kernel surface the jail closed",
    ),
    (
        "name_to_handle_at",
        libc::SYS_name_to_handle_at,
        "file handles bypass the mount view",
    ),
    (
        "open_by_handle_at",
        libc::SYS_open_by_handle_at,
        "file handles bypass the mount view (shocker)",
    ),
    (
        "userfaultfd",
        libc::SYS_userfaultfd,
        "widens kernel race windows for exploits",
    ),
    ("kexec_load", libc::SYS_kexec_load, "replaces the running kernel"),
    (
        "kexec_file_load",
        libc::SYS_kexec_file_load,
        "replaces the running kernel",
    ),
    ("acct", libc::SYS_acct, "host process accounting"),
    (
        "settimeofday",
        libc::SYS_settimeofday,
        "the clock is not namespaced",
    ),
    (
        "clock_settime",
        libc::SYS_clock_settime,
        "the clock is not namespaced",
    ),
    (
        "clock_adjtime",
        libc::SYS_clock_adjtime,
        "the clock is not namespaced",
    ),
    ("adjtimex", libc::SYS_adjtimex, "the clock is not namespaced"),
    ("quotactl", libc::SYS_quotactl, "host filesystem quotas"),
    (
        "lookup_dcookie",
        libc::SYS_lookup_dcookie,
        "kernel profiling interface",
    ),
    (
        "io_uring_setup",
        libc::SYS_io_uring_setup,
        "large kernel attack surface that bypasses seccomp",
    ),
    ("io_uring_enter", libc::SYS_io_uring_enter, "see io_uring_setup"),
    (
        "io_uring_register",
        libc::SYS_io_uring_register,
        "see io_uring_setup",
    ),
];

/// `clone` flags that create namespaces; a `clone` carrying any of them is refused for the
/// same reason as `unshare`.
const NAMESPACE_FLAGS: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWCGROUP) as u64;

/// Why compiling the filter failed (a bug in the list, never user input).
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// seccompiler refused the filter.
    #[error("cannot build seccomp filter: {0}")]
    Build(#[source] seccompiler::BackendError),
    /// A condition was invalid.
    #[error("cannot build seccomp rule: {0}")]
    Rule(#[source] seccompiler::BackendError),
}

/// The filters of a run, to install in order: `clone3` (separately because its action differs) answered with ENOSYS so that libcs fall back to `clone`,
/// whose flags a filter can inspect (clone3's live in memory it cannot read), then the
/// denylist (EPERM).
pub fn filters(deny_inet: bool) -> Result<Vec<BpfProgram>, SeccompError> {
    let arch = target_arch();
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        DENYLIST.iter().map(|&(_, nr, _)| (nr, Vec::new())).collect();
    let masked = |arg: u8, mask: u64| {
        SeccompCondition::new(arg, SeccompCmpArgLen::Qword, SeccompCmpOp::MaskedEq(mask), mask)
            .map_err(SeccompError::Rule)
    };
    // Any namespace flag set: (flags & NS) != 0, expressed as one rule per flag.
    let mut clone_rules = Vec::new();
    for bit in 0..64 {
        let flag = 1u64 << bit;
        if NAMESPACE_FLAGS & flag != 0 {
            clone_rules.push(SeccompRule::new(vec![masked(0, flag)?]).map_err(SeccompError::Rule)?);
        }
    }
    rules.insert(libc::SYS_clone, clone_rules);
    if deny_inet {
        // Degraded mode has no network namespace: refuse IP sockets instead.
        let family = |f: i32| {
            SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, f as u64)
                .and_then(|c| SeccompRule::new(vec![c]))
                .map_err(SeccompError::Rule)
        };
        rules.insert(
            libc::SYS_socket,
            vec![family(libc::AF_INET)?, family(libc::AF_INET6)?],
        );
    }
    let deny = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(SeccompError::Build)?;
    let clone3 = SeccompFilter::new(
        BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )
    .map_err(SeccompError::Build)?;
    // The denylist refuses `seccomp` itself, so it goes last.
    Ok(vec![
        clone3.try_into().map_err(SeccompError::Build)?,
        deny.try_into().map_err(SeccompError::Build)?,
    ])
}

#[cfg(target_arch = "x86_64")]
fn target_arch() -> seccompiler::TargetArch {
    seccompiler::TargetArch::x86_64
}

#[cfg(target_arch = "aarch64")]
fn target_arch() -> seccompiler::TargetArch {
    seccompiler::TargetArch::aarch64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entry_has_a_reason_and_a_unique_number() {
        let mut seen = std::collections::HashSet::new();
        for (name, nr, why) in DENYLIST {
            assert!(!why.is_empty(), "{name} has no reason");
            assert!(seen.insert(nr), "{name} listed twice");
        }
    }

    #[test]
    fn filters_compile_and_deny_unshare_in_a_thread() {
        let progs = filters(true).unwrap();
        assert_eq!(progs.len(), 2);
        // Filters are per thread unless TSYNC: install on a throwaway thread.
        let result = std::thread::spawn(move || {
            nix::sys::prctl::set_no_new_privs().unwrap();
            for p in &progs {
                seccompiler::apply_filter(p).unwrap();
            }
            // SAFETY: unshare with no flags is a no-op call that only returns a status.
            let unshare = unsafe { libc::unshare(0) };
            let err = std::io::Error::last_os_error().raw_os_error();
            // SAFETY: socket() only returns a new fd or an error.
            let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
            let sock_err = std::io::Error::last_os_error().raw_os_error();
            // SAFETY: as above; AF_UNIX must still work.
            let unix = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) };
            (unshare, err, sock, sock_err, unix)
        })
        .join()
        .unwrap();
        assert_eq!((result.0, result.1), (-1, Some(libc::EPERM)));
        assert_eq!((result.2, result.3), (-1, Some(libc::EPERM)));
        assert!(result.4 >= 0);
    }
}
