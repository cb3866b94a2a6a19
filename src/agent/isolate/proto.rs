//! The private protocol between execd and a session's jail over one `SOCK_SEQPACKET` pair:
//! execd sends the [`JailSpec`] first, then run requests (each with its output fd attached by
//! `SCM_RIGHTS`); the jail answers `Ready` once it is built and an `Exited` per run.
//!
//! These types never reach HTTP; they are serde only because JSON is the cheapest framing
//! both ends already link. Synchronous.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Largest message either side sends (a run's code travels in it).
pub const MAX_MESSAGE: usize = 4 << 20;

/// Everything the jail needs, computed by execd before anything is spawned.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JailSpec {
    /// Build namespaces and mounts (false: degraded mode, hardening of runs only).
    pub namespaces: bool,
    /// uid_map / gid_map lines written for the new user namespace.
    pub uid_map: String,
    /// See `uid_map`.
    pub gid_map: String,
    /// Write `deny` to setgroups first (required when execd is unprivileged).
    pub deny_setgroups: bool,
    /// Keep execd's network namespace.
    pub share_net: bool,
    /// An empty host directory on which the new root is assembled.
    pub root: PathBuf,
    /// The session's mounts, in the order they are applied.
    pub mounts: Vec<MountStep>,
    /// Host paths hidden behind an empty read-only tmpfs (execd's state directory).
    pub masks: Vec<PathBuf>,
    /// Mount a private tmpfs on `/tmp` (strict), else bind the host's `/tmp` read-write.
    pub private_tmp: bool,
    /// `cgroup.procs` files the jail joins before it forks (limits for the whole session).
    pub cgroup_procs: Vec<PathBuf>,
    /// What every run gets.
    pub run: RunPolicy,
    /// Apply the run policy once in a throwaway child and report landlock's verdict in
    /// `Ready` (the start-up probe; sessions skip it).
    pub probe_run: bool,
}

/// One mount of the session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MountStep {
    /// Overlay of `path` with a host upper directory.
    Overlay {
        /// Lower directory and mount point.
        path: PathBuf,
        /// Upper directory on the host (execd's state dir).
        upper: PathBuf,
        /// Overlay work directory, beside `upper`.
        work: PathBuf,
    },
    /// Overlay of `path` whose upper lives on a tmpfs mounted over `scratch` inside the jail.
    TmpOverlay {
        /// Lower directory and mount point.
        path: PathBuf,
        /// A host directory the tmpfs is mounted on (invisible to the host).
        scratch: PathBuf,
    },
    /// A bind mount.
    Bind {
        /// Host path.
        source: PathBuf,
        /// Path in the jail.
        dest: PathBuf,
        /// Read-only.
        readonly: bool,
    },
}

/// The hardening applied to every run, in the order of `docs/isolation.md`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunPolicy {
    /// Identity the run switches to.
    pub uid: u32,
    /// Primary group.
    pub gid: u32,
    /// Supplementary groups (empty: none).
    pub groups: Vec<u32>,
    /// Switch identity with setgroups/setgid/setuid (false: keep the jail's ids).
    pub switch_identity: bool,
    /// Trim the bounding set and clear every capability set.
    pub drop_caps: bool,
    /// Landlock rules, when the kernel has landlock.
    pub landlock: Option<LandlockPolicy>,
    /// Also refuse `socket(AF_INET*)` (degraded mode without `share_net`).
    pub deny_inet: bool,
    /// `(resource, soft = hard)` pairs for setrlimit.
    pub rlimits: Vec<(i32, u64)>,
}

/// Landlock rules: read (and execute) beneath `read`, write beneath `write`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LandlockPolicy {
    /// Trees that may be read and executed.
    pub read: Vec<PathBuf>,
    /// Trees that may be written.
    pub write: Vec<PathBuf>,
    /// Also refuse signals to processes outside the session (landlock ABI 6).
    pub scope_signals: bool,
}

/// execd → jail.
#[derive(Debug, Serialize, Deserialize)]
pub enum ToJail {
    /// Start a run; its stdout and stderr are the attached fd.
    Run {
        /// execd's handle of the run.
        run: u64,
        /// Program and arguments.
        argv: Vec<String>,
        /// The complete environment.
        env: Vec<(String, String)>,
        /// Working directory inside the jail.
        cwd: PathBuf,
    },
    /// SIGINT to every process of the session.
    Interrupt,
    /// SIGKILL to one run's process group.
    Kill {
        /// Which run.
        run: u64,
    },
}

/// jail → execd.
#[derive(Debug, Serialize, Deserialize)]
pub enum FromJail {
    /// The jail is built and accepts runs.
    Ready {
        /// Landlock status of a probe run (`fully enforced`, `partially enforced`, …).
        landlock: String,
    },
    /// Building the jail failed at `step`.
    Failed {
        /// The step, as named in `docs/isolation.md`.
        step: String,
        /// The OS error.
        error: String,
    },
    /// A run's process exists (pid as seen from execd in degraded mode, else inside).
    Started {
        /// Which run.
        run: u64,
        /// Its pid.
        pid: i32,
    },
    /// A run ended.
    Exited {
        /// Which run.
        run: u64,
        /// Exit code, when it exited.
        code: Option<i32>,
        /// Signal, when it was killed.
        signal: Option<i32>,
    },
    /// A run could not start.
    RunFailed {
        /// Which run.
        run: u64,
        /// Why.
        error: String,
    },
}

/// Why a message could not be moved.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    /// The socket failed.
    #[error("control socket: {0}")]
    Socket(#[source] nix::Error),
    /// The peer closed the socket.
    #[error("control socket closed")]
    Closed,
    /// The peer sent something that is not a message.
    #[error("malformed control message: {0}")]
    Malformed(#[source] serde_json::Error),
}

/// Sends `msg` with `fds` attached.
pub fn send<T: Serialize>(sock: BorrowedFd<'_>, msg: &T, fds: &[RawFd]) -> Result<(), ProtoError> {
    let bytes = serde_json::to_vec(msg).map_err(ProtoError::Malformed)?;
    let iov = [IoSlice::new(&bytes)];
    let cmsgs = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &cmsgs };
    loop {
        match sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Ok(_) => return Ok(()),
            Err(nix::Error::EINTR) => continue,
            Err(nix::Error::EPIPE | nix::Error::ECONNRESET) => return Err(ProtoError::Closed),
            Err(e) => return Err(ProtoError::Socket(e)),
        }
    }
}

/// Receives one message and the fds attached to it (close-on-exec).
pub fn recv<T: DeserializeOwned>(
    sock: BorrowedFd<'_>,
    buf: &mut Vec<u8>,
) -> Result<(T, Vec<OwnedFd>), ProtoError> {
    buf.resize(MAX_MESSAGE, 0);
    let mut space = nix::cmsg_space!([RawFd; 4]);
    loop {
        let mut iov = [IoSliceMut::new(buf)];
        let msg = match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(m) => m,
            Err(nix::Error::EINTR) => continue,
            Err(nix::Error::ECONNRESET) => return Err(ProtoError::Closed),
            Err(e) => return Err(ProtoError::Socket(e)),
        };
        let mut fds = Vec::new();
        if let Ok(cmsgs) = msg.cmsgs() {
            for c in cmsgs {
                if let ControlMessageOwned::ScmRights(raw) = c {
                    for fd in raw {
                        // SAFETY: SCM_RIGHTS just installed `fd` in this process; nothing else
                        // owns it yet.
                        fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                    }
                }
            }
        }
        let n = msg.bytes;
        if n == 0 {
            return Err(ProtoError::Closed);
        }
        let value = serde_json::from_slice(&buf[..n]).map_err(ProtoError::Malformed)?;
        return Ok((value, fds));
    }
}
