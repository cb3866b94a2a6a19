//! Pseudo-terminal plumbing: opening a master/slave pair with close-on-exec set atomically,
//! resizing, asking which process group is in the foreground, and killing every process of a
//! terminal session.
//!
//! Synchronous system calls only; callers decide which thread they run on.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;

use nix::fcntl::OFlag;
use nix::sys::signal::{kill, Signal};
use nix::sys::stat::Mode;
use nix::unistd::Pid;

/// Width and height of a terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size {
    /// Columns.
    pub cols: u16,
    /// Rows.
    pub rows: u16,
}

impl Default for Size {
    /// 80×24, what upstream starts with.
    fn default() -> Self {
        Self { cols: 80, rows: 24 }
    }
}

/// Both ends of a new pseudo-terminal.
pub struct Pair {
    /// The master: execd reads output from it and writes input to it.
    pub master: OwnedFd,
    /// The slave: the child's stdin, stdout, stderr and controlling terminal.
    pub slave: OwnedFd,
}

/// Opens a pseudo-terminal of `size`. Both ends are close-on-exec from the start, so a child
/// forked at the same moment by another thread never inherits them.
pub fn open(size: Size) -> io::Result<Pair> {
    let flags = OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
    let master = nix::pty::posix_openpt(flags)?;
    nix::pty::grantpt(&master)?;
    nix::pty::unlockpt(&master)?;
    let name = nix::pty::ptsname_r(&master)?;
    let slave = nix::fcntl::open(Path::new(&name), flags, Mode::empty())?;
    let master = OwnedFd::from(master);
    set_size(&master, size)?;
    Ok(Pair { master, slave })
}

/// Sets the terminal size; the kernel sends SIGWINCH to the foreground process group.
pub fn set_size(master: &impl AsFd, size: Size) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `winsize` through the pointer, which points to a live
    // local of that type; the fd is borrowed and stays open for the call.
    let rc = unsafe { libc::ioctl(master.as_fd().as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The process group in the terminal's foreground (the job a keyboard ^C would hit), if any.
pub fn foreground_group(master: &impl AsFd) -> Option<i32> {
    nix::unistd::tcgetpgrp(master.as_fd())
        .ok()
        .map(Pid::as_raw)
        .filter(|&pgid| pgid > 1)
}

/// Sends SIGKILL to every process whose session is `sid` (a terminal session leader's pid):
/// the shell, its foreground job and background jobs in their own process groups. Reads
/// `proc` (normally `/proc`); blocking.
pub fn kill_session(proc: &Path, sid: i32) {
    if sid <= 1 {
        return;
    }
    let _ = nix::sys::signal::killpg(Pid::from_raw(sid), Signal::SIGKILL);
    let Ok(entries) = std::fs::read_dir(proc) else {
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if session_of(&stat) == Some(sid) && pid > 1 {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// The session id (field 6) of a `/proc/<pid>/stat` line. The command name (field 2) may hold
/// spaces and parentheses, so fields are counted after the last `)`.
fn session_of(stat: &str) -> Option<i32> {
    let (_, rest) = stat.rsplit_once(')')?;
    // state ppid pgrp session
    rest.split_whitespace().nth(3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_field_after_tricky_comm() {
        let stat = "4242 (a) b (c)) S 1 4242 4240 34816 4242 4194560 0 0";
        assert_eq!(session_of(stat), Some(4240));
        assert_eq!(session_of("garbage"), None);
    }

    #[test]
    fn open_sets_size_and_cloexec() {
        let pair = open(Size { cols: 123, rows: 45 }).expect("openpty");
        let mut ws: libc::winsize = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes one `winsize` into the live local.
        let rc = unsafe { libc::ioctl(pair.slave.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
        assert_eq!(rc, 0);
        assert_eq!((ws.ws_col, ws.ws_row), (123, 45));
        for fd in [&pair.master, &pair.slave] {
            let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).unwrap();
            assert_ne!(flags & libc::FD_CLOEXEC, 0);
        }
        set_size(&pair.master, Size { cols: 10, rows: 5 }).unwrap();
        // SAFETY: as above.
        let rc = unsafe { libc::ioctl(pair.slave.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
        assert_eq!(rc, 0);
        assert_eq!((ws.ws_col, ws.ws_row), (10, 5));
        assert_eq!(foreground_group(&pair.master), None, "no session owns it yet");
    }
}
