//! The session init: pid 1 of the session's pid namespace (in degraded mode, a plain
//! supervisor). It builds the root, then serves execd's run requests: each run is a child in
//! its own process group that hardens itself ([`super::harden`]) and execs. It reaps every
//! process of the session and reports each run's exit. When the control socket closes it
//! exits, and the kernel takes the whole namespace down with it.
//!
//! Single-threaded; SIGCHLD arrives through a signalfd next to the socket. Synchronous.

use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, killpg, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};
use seccompiler::BpfProgram;

use super::jail::{build_root, JailError};
use super::proto::{self, FromJail, JailSpec, ToJail};
use super::{harden, seccomp};

type InitError = (Option<OwnedFd>, JailError);

fn fail(sock: &OwnedFd, e: JailError) -> InitError {
    (sock.try_clone().ok(), e)
}

/// Runs the session init until execd closes the socket.
pub fn run(spec: &JailSpec, sock: OwnedFd) -> Result<(), InitError> {
    // Die with the outer stage (and so with execd's kill of it).
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    if spec.namespaces {
        build_root(spec).map_err(|e| fail(&sock, e))?;
    }
    let filters = seccomp::filters(spec.run.deny_inet).map_err(|e| {
        fail(
            &sock,
            JailError {
                step: "seccomp".into(),
                source: std::io::Error::other(e),
            },
        )
    })?;
    // SIGCHLD (and SIGINT/SIGTERM, which the init itself ignores) through a signalfd.
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    mask.add(Signal::SIGINT);
    mask.add(Signal::SIGTERM);
    mask.thread_block().map_err(|e| {
        fail(
            &sock,
            JailError {
                step: "signal mask".into(),
                source: e.into(),
            },
        )
    })?;
    let sfd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC).map_err(|e| {
        fail(
            &sock,
            JailError {
                step: "signalfd".into(),
                source: e.into(),
            },
        )
    })?;
    let landlock = if spec.probe_run {
        probe_landlock(spec, &filters)
    } else {
        String::new()
    };
    if proto::send(sock.as_fd(), &FromJail::Ready { landlock }, &[]).is_err() {
        return Ok(());
    }
    serve(spec, &sock, &sfd, &filters, mask);
    Ok(())
}

/// Applies the run policy in a throwaway child and reports what landlock said.
fn probe_landlock(spec: &JailSpec, filters: &[BpfProgram]) -> String {
    if spec.run.landlock.is_none() {
        return "disabled".into();
    }
    let (r, w) = match nix::unistd::pipe() {
        Ok(p) => p,
        Err(_) => return "unknown".into(),
    };
    // SAFETY: the init is single-threaded.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            drop(r);
            let msg = match harden::apply(&spec.run, filters) {
                Ok(status) => status,
                Err(e) => format!("error: {e}"),
            };
            let _ = nix::unistd::write(&w, msg.as_bytes());
            // SAFETY: ends the forked child without unwinding into the parent's state.
            unsafe { libc::_exit(0) }
        }
        Ok(ForkResult::Parent { child }) => {
            drop(w);
            let mut out = Vec::new();
            let mut buf = [0u8; 256];
            while let Ok(n) = nix::unistd::read(&r, &mut buf) {
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&buf[..n]);
            }
            let _ = waitpid(child, None);
            String::from_utf8_lossy(&out).into_owned()
        }
        Err(_) => "unknown".into(),
    }
}

fn serve(spec: &JailSpec, sock: &OwnedFd, sfd: &SignalFd, filters: &[BpfProgram], mask: SigSet) {
    // Run handle by pid (= process group) of its leader.
    let mut runs: HashMap<i32, u64> = HashMap::new();
    let mut buf = Vec::new();
    loop {
        let mut fds = [
            PollFd::new(sock.as_fd(), PollFlags::POLLIN),
            PollFd::new(sfd.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::Error::EINTR) => continue,
            Err(_) => break,
        }
        let sock_ready = fds[0].revents().is_some_and(|r| !r.is_empty());
        let sig_ready = fds[1].revents().is_some_and(|r| !r.is_empty());
        if sig_ready {
            while let Ok(Some(_)) = sfd.read_signal() {}
            reap(sock, &mut runs);
        }
        if !sock_ready {
            continue;
        }
        match proto::recv::<ToJail>(sock.as_fd(), &mut buf) {
            Ok((ToJail::Run { run, argv, env, cwd }, fds)) => {
                let Some(out) = fds.into_iter().next() else {
                    let _ = proto::send(
                        sock.as_fd(),
                        &FromJail::RunFailed {
                            run,
                            error: "no output descriptor".into(),
                        },
                        &[],
                    );
                    continue;
                };
                match start_run(spec, &argv, &env, &cwd, out, filters, mask) {
                    Ok(pid) => {
                        runs.insert(pid.as_raw(), run);
                        let _ = proto::send(
                            sock.as_fd(),
                            &FromJail::Started {
                                run,
                                pid: pid.as_raw(),
                            },
                            &[],
                        );
                    }
                    Err(error) => {
                        let _ = proto::send(sock.as_fd(), &FromJail::RunFailed { run, error }, &[]);
                    }
                }
            }
            Ok((ToJail::Interrupt, _)) => interrupt_all(spec, &runs),
            Ok((ToJail::Kill { run }, _)) => {
                for (&pid, _) in runs.iter().filter(|(_, &r)| r == run) {
                    let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
            Err(proto::ProtoError::Malformed(_)) => continue,
            Err(_) => break,
        }
    }
    // execd is gone or deleted the session. In full mode returning ends the namespace; in
    // degraded mode the runs' groups must be killed by hand.
    for &pid in runs.keys() {
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// SIGINT to the session: every process of the namespace, or every run's group.
fn interrupt_all(spec: &JailSpec, runs: &HashMap<i32, u64>) {
    if spec.namespaces {
        // From pid 1, kill(-1) reaches every other process of the namespace.
        let _ = kill(Pid::from_raw(-1), Signal::SIGINT);
    } else {
        for &pid in runs.keys() {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGINT);
        }
    }
}

fn reap(sock: &OwnedFd, runs: &mut HashMap<i32, u64>) {
    loop {
        let (pid, code, signal) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => (pid, Some(code), None),
            Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, None, Some(sig as i32)),
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(_) => continue,
        };
        if let Some(run) = runs.remove(&pid.as_raw()) {
            let _ = proto::send(sock.as_fd(), &FromJail::Exited { run, code, signal }, &[]);
        }
    }
}

/// Forks one run: own process group, output on fd 1 and 2, stdin from /dev/null, hardened,
/// then exec. Errors before exec are written to the output and end the child with 126/127.
fn start_run(
    spec: &JailSpec,
    argv: &[String],
    env: &[(String, String)],
    cwd: &std::path::Path,
    out: OwnedFd,
    filters: &[BpfProgram],
    mask: SigSet,
) -> Result<Pid, String> {
    let to_c = |s: &str| CString::new(s).map_err(|_| "NUL byte in argument".to_owned());
    let c_argv: Vec<CString> = argv.iter().map(|a| to_c(a)).collect::<Result<_, _>>()?;
    let c_env: Vec<CString> = env
        .iter()
        .map(|(k, v)| to_c(&format!("{k}={v}")))
        .collect::<Result<_, _>>()?;
    let program = c_argv.first().cloned().ok_or("empty argv")?;
    // SAFETY: the init is single-threaded, so the child may allocate and run any code.
    match unsafe { fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Parent { child } => Ok(child),
        ForkResult::Child => {
            let code = child_main(spec, &program, &c_argv, &c_env, cwd, out, filters, mask);
            // SAFETY: ends the forked child without running the init's destructors.
            unsafe { libc::_exit(code) }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn child_main(
    spec: &JailSpec,
    program: &CString,
    argv: &[CString],
    env: &[CString],
    cwd: &std::path::Path,
    out: OwnedFd,
    filters: &[BpfProgram],
    mask: SigSet,
) -> i32 {
    let say = |msg: String| {
        let _ = nix::unistd::write(&out, format!("execd: {msg}\n").as_bytes());
    };
    let _ = nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0));
    let _ = mask.thread_unblock();
    // SAFETY: integer arguments; resets the dispositions the init changed to default.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_DFL);
        libc::signal(libc::SIGTERM, libc::SIG_DFL);
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    if let Err(e) = std::env::set_current_dir(cwd) {
        say(format!("cannot enter {}: {e}", cwd.display()));
        return 126;
    }
    // stdin /dev/null; stdout and stderr the run's output; nothing else survives exec.
    let null = match std::fs::File::open("/dev/null") {
        Ok(f) => f,
        Err(e) => {
            say(format!("cannot open /dev/null: {e}"));
            return 126;
        }
    };
    // SAFETY: dup2 onto the standard descriptors of this child; the sources are open.
    unsafe {
        if libc::dup2(null.as_raw_fd(), 0) < 0
            || libc::dup2(out.as_raw_fd(), 1) < 0
            || libc::dup2(out.as_raw_fd(), 2) < 0
        {
            return 126;
        }
    }
    drop(null);
    drop(out);
    // SAFETY: closes every descriptor from 3 up in this child (the control socket included).
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if let Err(e) = harden::apply(&spec.run, filters) {
        eprintln!("execd: isolation step failed: {e}");
        return 126;
    }
    let _ = nix::unistd::execve(program, argv, env);
    // execve only returns on failure; try PATH-less names relative to nothing.
    eprintln!(
        "execd: cannot run {}: {}",
        program.to_string_lossy(),
        std::io::Error::last_os_error()
    );
    127
}
