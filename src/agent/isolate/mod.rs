//! The namespace jail of isolated sessions. execd re-executes itself as `execd __jail` with a
//! control socket on fd 3; that process builds the jail ([`jail`]), becomes the session init
//! ([`init`]) and starts every run hardened ([`harden`], [`seccomp`]). [`cgroup`] creates the
//! per-session limits from execd's side. [`probe`] runs the same machinery once at start so
//! that `/v1/isolated/capabilities` reports what this host really allows.
//!
//! Knows nothing of HTTP or of the session registry (`agent::isolated`). Synchronous; the
//! code that runs in the jail is single-threaded. The sequence is narrated in
//! `docs/isolation.md`.

pub mod cgroup;
pub mod harden;
pub mod init;
pub mod jail;
pub mod proto;
pub mod seccomp;

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};

use proto::{FromJail, JailSpec, LandlockPolicy, MountStep, RunPolicy};

/// argv[1] that makes `execd` the jail instead of the agent.
pub const JAIL_ARG: &str = "__jail";

/// What the start-up probe found.
#[derive(Debug, Clone)]
pub struct Probe {
    /// Namespaces, mounts and an overlay could be built.
    pub namespaces: Result<(), String>,
    /// Landlock ABI (0: none).
    pub landlock_abi: i32,
    /// What a probe run reported for landlock.
    pub landlock_status: String,
    /// execd runs as root (identity switches and full id maps possible).
    pub root: bool,
}

/// A connected pair: execd's end and the jail's end (which becomes fd 3).
pub fn control_pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(std::io::Error::from)
}

/// The id maps of a session's user namespace. A root execd maps every id to itself (ids
/// inside mean the same as outside; capabilities are still namespaced); an unprivileged one
/// can only map its own ids, to `inside_uid`/`inside_gid`.
pub fn id_maps(root: bool, inside_uid: u32, inside_gid: u32) -> (String, String, bool) {
    if root {
        ("0 0 4294967295\n".into(), "0 0 4294967295\n".into(), false)
    } else {
        let uid = nix::unistd::geteuid().as_raw();
        let gid = nix::unistd::getegid().as_raw();
        (
            format!("{inside_uid} {uid} 1\n"),
            format!("{inside_gid} {gid} 1\n"),
            true,
        )
    }
}

/// Probes the host once, before execd's reaper starts (this is the only place execd waits
/// for a child itself): builds a throwaway jail with every namespace, an overlay with its
/// upper in `state_dir`, and a landlock probe run.
pub fn probe(exe: &Path, state_dir: &Path) -> Probe {
    let root = nix::unistd::geteuid().is_root();
    let landlock_abi = harden::landlock_abi();
    let dir = state_dir.join("isolated").join(".probe");
    let _ = std::fs::remove_dir_all(&dir);
    let result = (|| -> Result<String, String> {
        for sub in ["root", "lower", "upper", "work"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(|e| format!("cannot prepare probe: {e}"))?;
        }
        let (uid_map, gid_map, deny_setgroups) = id_maps(root, 0, 0);
        let spec = JailSpec {
            namespaces: true,
            uid_map,
            gid_map,
            deny_setgroups,
            share_net: false,
            root: dir.join("root"),
            mounts: vec![MountStep::Overlay {
                path: dir.join("lower"),
                upper: dir.join("upper"),
                work: dir.join("work"),
            }],
            masks: Vec::new(),
            private_tmp: true,
            cgroup_procs: Vec::new(),
            run: probe_policy(landlock_abi),
            probe_run: true,
        };
        run_probe(exe, &spec)
    })();
    let _ = std::fs::remove_dir_all(&dir);
    match result {
        Ok(landlock_status) => Probe {
            namespaces: Ok(()),
            landlock_abi,
            landlock_status,
            root,
        },
        Err(e) => {
            // Degraded: probe the hardening that needs no namespaces.
            let spec = JailSpec {
                namespaces: false,
                uid_map: String::new(),
                gid_map: String::new(),
                deny_setgroups: false,
                share_net: true,
                root: PathBuf::new(),
                mounts: Vec::new(),
                masks: Vec::new(),
                private_tmp: false,
                cgroup_procs: Vec::new(),
                run: RunPolicy {
                    drop_caps: root,
                    ..probe_policy(landlock_abi)
                },
                probe_run: true,
            };
            let landlock_status = run_probe(exe, &spec).unwrap_or_else(|e| format!("error: {e}"));
            Probe {
                namespaces: Err(e),
                landlock_abi,
                landlock_status,
                root,
            }
        }
    }
}

fn probe_policy(landlock_abi: i32) -> RunPolicy {
    RunPolicy {
        uid: 0,
        gid: 0,
        groups: Vec::new(),
        switch_identity: false,
        drop_caps: true,
        landlock: (landlock_abi > 0).then(|| LandlockPolicy {
            read: vec!["/".into()],
            write: vec!["/tmp".into()],
            scope_signals: landlock_abi >= 6,
        }),
        deny_inet: false,
        rlimits: Vec::new(),
    }
}

fn run_probe(exe: &Path, spec: &JailSpec) -> Result<String, String> {
    let (ours, theirs) = control_pair().map_err(|e| format!("socketpair: {e}"))?;
    let theirs_raw = theirs.as_raw_fd();
    let mut cmd = Command::new(exe);
    cmd.arg(JAIL_ARG)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: between fork and exec the closure only calls dup2/fcntl, which are
    // async-signal-safe, on a descriptor that is open in the parent.
    unsafe {
        cmd.pre_exec(move || {
            if theirs_raw == 3 {
                let flags = libc::fcntl(3, libc::F_GETFD);
                libc::fcntl(3, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
            } else if libc::dup2(theirs_raw, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
    drop(theirs);
    let _ = nix::sys::socket::setsockopt(
        &ours,
        nix::sys::socket::sockopt::ReceiveTimeout,
        &nix::sys::time::TimeVal::new(5, 0),
    );
    let result = (|| {
        proto::send(ours.as_fd(), spec, &[]).map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        match proto::recv::<FromJail>(ours.as_fd(), &mut buf) {
            Ok((FromJail::Ready { landlock }, _)) => Ok(landlock),
            Ok((FromJail::Failed { step, error }, _)) => Err(format!("{step}: {error}")),
            Ok(_) => Err("unexpected answer from the jail".into()),
            Err(e) => Err(e.to_string()),
        }
    })();
    drop(ours);
    // The jail exits when its socket closes; give it a moment, then make sure.
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => break,
            Ok(None) if std::time::Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
        }
    }
    result
}
