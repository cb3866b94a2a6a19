//! Building a session's jail, in the process execd re-executed as `execd __jail` (fd 3 is the
//! control socket). One narrated function per stage:
//!
//! * [`stage_outer`] (host pid namespace): join the session's cgroups, unshare the namespaces,
//!   have a helper in the parent user namespace write the id maps, bring up loopback, fork
//!   the session init and wait for it.
//! * [`build_root`] (the session init, pid 1 of the new pid namespace): assemble the new
//!   root from mounts, then `pivot_root` into it.
//!
//! Single-threaded from start to end, so every step may allocate. Synchronous.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};

use super::proto::{self, FromJail, JailSpec, MountStep};

/// A failed step of the jail's construction.
#[derive(Debug, thiserror::Error)]
#[error("{step}: {source}")]
pub struct JailError {
    /// The step, as `docs/isolation.md` names it.
    pub step: String,
    /// The OS error.
    #[source]
    pub source: io::Error,
}

fn at(step: impl Into<String>) -> impl FnOnce(nix::Error) -> JailError {
    move |e| JailError {
        step: step.into(),
        source: e.into(),
    }
}

fn at_io(step: impl Into<String>) -> impl FnOnce(io::Error) -> JailError {
    move |source| JailError {
        step: step.into(),
        source,
    }
}

/// Entry point of `execd __jail`: returns the process exit code.
pub fn main() -> i32 {
    // SAFETY: execd passes the control socket as fd 3 and nothing else in this fresh process
    // owns that descriptor.
    let sock = unsafe { OwnedFd::from_raw_fd(3) };
    let mut buf = Vec::new();
    let spec: JailSpec = match proto::recv(sock.as_fd(), &mut buf) {
        Ok((spec, _)) => spec,
        Err(_) => return 2,
    };
    drop(buf);
    match stage_outer(&spec, sock) {
        Ok(code) => code,
        Err((sock, e)) => {
            let _ = proto::send(
                sock.as_fd(),
                &FromJail::Failed {
                    step: e.step,
                    error: e.source.to_string(),
                },
                &[],
            );
            1
        }
    }
}

/// The outer stage: everything that must happen before the session init exists.
fn stage_outer(spec: &JailSpec, sock: OwnedFd) -> Result<i32, (OwnedFd, JailError)> {
    let outer = (|| -> Result<(), JailError> {
        // 1. Join the session's cgroups first: the limits then cover everything forked below.
        let me = std::process::id().to_string();
        for procs in &spec.cgroup_procs {
            std::fs::write(procs, &me).map_err(at_io(format!("cgroup {}", procs.display())))?;
        }
        if !spec.namespaces {
            return Ok(());
        }
        // 2. New namespaces. The pid namespace applies to our children, hence the fork below.
        let mut flags = CloneFlags::CLONE_NEWUSER
            | CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWPID
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWUTS
            | CloneFlags::CLONE_NEWCGROUP;
        if !spec.share_net {
            flags |= CloneFlags::CLONE_NEWNET;
        }
        write_id_maps_after(spec, || unshare(flags).map_err(at("unshare")))?;
        // 3. Loopback only, and up (a fresh net namespace has `lo` down).
        if !spec.share_net {
            loopback_up().map_err(at_io("loopback"))?;
        }
        Ok(())
    })();
    if let Err(e) = outer {
        return Err((sock, e));
    }
    // 4. The session init. In full mode it is pid 1 of the new pid namespace: when it dies,
    //    the kernel kills every process of the session.
    // SAFETY: this process is single-threaded (a fresh exec that started no threads), so the
    // child may run arbitrary code.
    match unsafe { fork() } {
        Err(e) => Err((sock, at("fork session init")(e))),
        Ok(ForkResult::Child) => {
            let code = match super::init::run(spec, sock) {
                Ok(()) => 0,
                Err((sock, e)) => {
                    if let Some(sock) = sock {
                        let _ = proto::send(
                            sock.as_fd(),
                            &FromJail::Failed {
                                step: e.step,
                                error: e.source.to_string(),
                            },
                            &[],
                        );
                    }
                    1
                }
            };
            // SAFETY: _exit ends this forked process without running the parent's atexit
            // handlers or flushing its stdio twice.
            unsafe { libc::_exit(code) }
        }
        Ok(ForkResult::Parent { child }) => {
            // Only the init talks to execd from now on.
            drop(sock);
            Ok(wait_for(child))
        }
    }
}

/// Runs `unshare` and, when it created a user namespace, has a helper forked *before* it (so
/// still in the parent user namespace, with execd's privileges there) write our id maps:
/// a process inside the new namespace may only map its own id, and the full identity map of
/// a root execd needs CAP_SETUID in the parent.
fn write_id_maps_after(
    spec: &JailSpec,
    unshare_now: impl FnOnce() -> Result<(), JailError>,
) -> Result<(), JailError> {
    let (go_r, go_w) = nix::unistd::pipe().map_err(at("pipe"))?;
    let target = std::process::id();
    // SAFETY: single-threaded process (see `stage_outer`).
    match unsafe { fork() }.map_err(at("fork id-map helper"))? {
        ForkResult::Child => {
            drop(go_w);
            let mut byte = [0u8; 1];
            let ok = matches!(nix::unistd::read(&go_r, &mut byte), Ok(1)) && write_maps(target, spec).is_ok();
            // SAFETY: see `stage_outer`.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) }
        }
        ForkResult::Parent { child } => {
            drop(go_r);
            let unshared = unshare_now();
            // Tell the helper to go (or, on failure, to give up: it sees no byte).
            if unshared.is_ok() {
                let _ = nix::unistd::write(&go_w, b"g");
            }
            drop(go_w);
            let helper = wait_for(child);
            unshared?;
            if helper != 0 {
                return Err(JailError {
                    step: "uid_map".into(),
                    source: io::Error::from_raw_os_error(libc::EPERM),
                });
            }
            Ok(())
        }
    }
}

fn write_maps(pid: u32, spec: &JailSpec) -> io::Result<()> {
    let proc = PathBuf::from(format!("/proc/{pid}"));
    if spec.deny_setgroups {
        std::fs::write(proc.join("setgroups"), "deny")?;
    }
    std::fs::write(proc.join("uid_map"), &spec.uid_map)?;
    std::fs::write(proc.join("gid_map"), &spec.gid_map)
}

/// Waits for our own child `pid` (this process is not execd: it has no reaper) and returns
/// a shell-style code.
fn wait_for(pid: Pid) -> i32 {
    loop {
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, code)) => return code,
            Ok(WaitStatus::Signaled(_, sig, _)) => return 128 + sig as i32,
            Ok(_) => continue,
            Err(nix::Error::EINTR) => continue,
            Err(_) => return 1,
        }
    }
}

/// `ip link set lo up` with one ioctl.
fn loopback_up() -> io::Result<()> {
    // SAFETY: socket() returns a new descriptor or -1.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nothing else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: an all-zero ifreq is a valid value of this plain C struct.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    use std::os::fd::AsRawFd;
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the ifreq we own.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut req) < 0 {
            return Err(io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as _, &req) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The inner stage, in the session init: assemble the new root and enter it.
pub fn build_root(spec: &JailSpec) -> Result<(), JailError> {
    let root = &spec.root;
    let none: Option<&str> = None;
    // 1. Nothing we mount may propagate back to the host.
    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none).map_err(at("make / private"))?;
    // 2. The host's tree, recursively and read-only, as the base of the new root.
    mount(Some("/"), root, none, MsFlags::MS_BIND | MsFlags::MS_REC, none).map_err(at("bind /"))?;
    set_readonly(root).map_err(at_io("read-only /"))?;
    // 3. A root overlay ("/") comes first: every other mount stacks on top of it.
    let (root_mounts, other): (Vec<&MountStep>, Vec<&MountStep>) =
        spec.mounts.iter().partition(|m| step_dest(m) == Path::new("/"));
    for m in root_mounts {
        apply_mount(root, m)?;
    }
    // 4. Fresh /proc of the new pid namespace; minimal /dev; /run; /tmp.
    let proc = inside(root, "/proc");
    mount(
        Some("proc"),
        &proc,
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        none,
    )
    .map_err(at("mount /proc"))?;
    minimal_dev(root)?;
    // An image without /run (or /tmp) gets none: the read-only root cannot grow one.
    let run = inside(root, "/run");
    if run.is_dir() {
        tmpfs(&run, "mode=755").map_err(at("tmpfs /run"))?;
    }
    let tmp = inside(root, "/tmp");
    if !tmp.is_dir() {
        // Nothing to mount on.
    } else if spec.private_tmp {
        tmpfs(&tmp, "mode=1777").map_err(at("tmpfs /tmp"))?;
    } else {
        mount(Some("/tmp"), &tmp, none, MsFlags::MS_BIND | MsFlags::MS_REC, none).map_err(at("bind /tmp"))?;
    }
    // 5. Hide execd's state (other sessions' upper directories, journals, logs).
    for mask in &spec.masks {
        let target = inside(root, mask);
        if target.is_dir() {
            tmpfs(&target, "mode=755,size=4k").map_err(at(format!("mask {}", mask.display())))?;
            set_readonly(&target).map_err(at_io(format!("mask {}", mask.display())))?;
        }
    }
    // 6. The session's mounts, shallow first (execd sorted them).
    for m in other {
        apply_mount(root, m)?;
    }
    // 7. Enter the new root; the old one is detached so nothing of it stays reachable.
    std::env::set_current_dir(root).map_err(at_io("chdir new root"))?;
    pivot_root_here().map_err(at_io("pivot_root"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(at("detach old root"))?;
    std::env::set_current_dir("/").map_err(at_io("chdir /"))?;
    let _ = nix::unistd::sethostname("sandbox");
    Ok(())
}

fn step_dest(m: &MountStep) -> &Path {
    match m {
        MountStep::Overlay { path, .. } | MountStep::TmpOverlay { path, .. } => path,
        MountStep::Bind { dest, .. } => dest,
    }
}

/// `root` joined with an absolute in-jail path.
fn inside(root: &Path, path: impl AsRef<Path>) -> PathBuf {
    let rel = path.as_ref().strip_prefix("/").unwrap_or(path.as_ref());
    if rel.as_os_str().is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    }
}

/// Creates a missing mount point, which is possible where its parent is one of the jail's own
/// tmpfs (e.g. a workspace under a private `/tmp`); elsewhere execd made it on the host.
fn ensure_mount_point(target: &Path, file: bool) {
    if target.exists() {
        return;
    }
    if file {
        if let Some(parent) = target.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        let _ = std::fs::File::create(target);
    } else {
        let _ = std::fs::create_dir_all(target);
    }
}

fn apply_mount(root: &Path, m: &MountStep) -> Result<(), JailError> {
    let none: Option<&str> = None;
    let file = matches!(m, MountStep::Bind { source, .. } if !source.is_dir());
    ensure_mount_point(&inside(root, step_dest(m)), file);
    match m {
        MountStep::Overlay { path, upper, work } => {
            overlay(&inside(root, path), path, upper, work).map_err(at(format!("overlay {}", path.display())))
        }
        MountStep::TmpOverlay { path, scratch } => {
            let name = format!("overlay {}", path.display());
            tmpfs(scratch, "mode=755").map_err(at(name.clone()))?;
            let (upper, work) = (scratch.join("upper"), scratch.join("work"));
            std::fs::create_dir_all(&upper).map_err(at_io(name.clone()))?;
            std::fs::create_dir_all(&work).map_err(at_io(name.clone()))?;
            overlay(&inside(root, path), path, &upper, &work).map_err(at(name))
        }
        MountStep::Bind {
            source,
            dest,
            readonly,
        } => {
            let name = format!("bind {}", dest.display());
            let target = inside(root, dest);
            mount(
                Some(source.as_path()),
                &target,
                none,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                none,
            )
            .map_err(at(name.clone()))?;
            // A fresh bind does not inherit the read-only flag of the root it lands on.
            if *readonly {
                set_readonly(&target).map_err(at_io(name))?;
            }
            Ok(())
        }
    }
}

fn overlay(target: &Path, lower: &Path, upper: &Path, work: &Path) -> nix::Result<()> {
    let opts = format!(
        "lowerdir={},upperdir={},workdir={},userxattr",
        escape_opt(lower),
        escape_opt(upper),
        escape_opt(work)
    );
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::empty(),
        Some(opts.as_str()),
    )
}

/// Overlay options are comma-separated and `:` separates lower layers: escape both.
fn escape_opt(p: &Path) -> String {
    let s = p.to_string_lossy();
    s.replace('\\', "\\\\").replace(',', "\\,").replace(':', "\\:")
}

fn tmpfs(target: &Path, opts: &str) -> nix::Result<()> {
    mount(
        Some("tmpfs"),
        target,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(opts),
    )
}

/// A tmpfs `/dev` with the usual harmless nodes bound from the host (mknod is not allowed in
/// a user namespace), `/dev/pts`-less, plus `/dev/shm` and the fd symlinks.
fn minimal_dev(root: &Path) -> Result<(), JailError> {
    let dev = inside(root, "/dev");
    tmpfs(&dev, "mode=755").map_err(at("tmpfs /dev"))?;
    let none: Option<&str> = None;
    for node in ["null", "zero", "full", "random", "urandom", "tty"] {
        let host = Path::new("/dev").join(node);
        if !host.exists() {
            continue;
        }
        let target = dev.join(node);
        std::fs::File::create(&target).map_err(at_io(format!("/dev/{node}")))?;
        mount(Some(host.as_path()), &target, none, MsFlags::MS_BIND, none)
            .map_err(at(format!("/dev/{node}")))?;
    }
    let shm = dev.join("shm");
    std::fs::create_dir_all(&shm).map_err(at_io("/dev/shm"))?;
    tmpfs(&shm, "mode=1777").map_err(at("/dev/shm"))?;
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(target, dev.join(name)).map_err(at_io(format!("/dev/{name}")))?;
    }
    Ok(())
}

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Makes the mount at `path` and every mount below it read-only (`mount_setattr` with
/// AT_RECURSIVE: one call instead of a remount per submount).
fn set_readonly(path: &Path) -> io::Result<()> {
    const MOUNT_ATTR_RDONLY: u64 = 0x1;
    const AT_RECURSIVE: libc::c_uint = 0x8000;
    let c = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: mount_setattr reads the path string and `attr` (of the size we pass) only.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            c.as_ptr(),
            AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `pivot_root(".", ".")`: the new root is the current directory and the old root ends up
/// stacked on it, ready to be detached.
fn pivot_root_here() -> io::Result<()> {
    let dot = c".";
    // SAFETY: pivot_root reads two NUL-terminated strings we own.
    let rc = unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
