//! Running blocking file work off the async workers, optionally as another identity.
//!
//! `/v1/filesystem/{uid}/{gid}/…` asks for operations done with the permissions of that uid and
//! gid. Linux keeps a filesystem uid and gid per *thread* (setfsuid/setfsgid), so such work runs
//! on a fresh thread that takes the identity first and simply ends afterwards: no pooled thread
//! is ever left with borrowed credentials. While the fsuid is not 0 the kernel also drops the
//! file capabilities (CAP_DAC_OVERRIDE, CAP_CHOWN, CAP_FOWNER…), so ordinary permission checks
//! apply and new files belong to the identity.

use tokio::sync::oneshot;

use super::FilesError;

/// A uid and gid to act as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    /// Filesystem uid.
    pub uid: u32,
    /// Filesystem gid; also the only supplementary group while acting.
    pub gid: u32,
}

/// A job for a blocking thread: told whether the identity could be taken, it runs the work
/// (or not) and sends the result. Boxed, so the thread-spawning code exists once rather than
/// once per call site.
type Job = Box<dyn FnOnce(Result<(), FilesError>) + Send>;

/// The result of work started with [`start`].
pub struct Pending<T>(oneshot::Receiver<Result<T, FilesError>>);

impl<T> Pending<T> {
    /// Waits for the work to finish.
    pub async fn wait(self) -> Result<T, FilesError> {
        self.0.await.unwrap_or_else(|_| {
            tracing::error!("file worker died before answering");
            Err(FilesError::Worker)
        })
    }
}

/// Starts `work` at once on a blocking thread, as `identity` when given.
pub fn start<T: Send + 'static>(
    identity: Option<Identity>,
    work: impl FnOnce() -> Result<T, FilesError> + Send + 'static,
) -> Pending<T> {
    let (tx, rx) = oneshot::channel();
    let job: Job = Box::new(move |ready| {
        let _ = tx.send(ready.and_then(|()| work()));
    });
    dispatch(identity, job);
    Pending(rx)
}

/// Runs `work` on a blocking thread, as `identity` when given, and returns its result.
pub async fn run<T: Send + 'static>(
    identity: Option<Identity>,
    work: impl FnOnce() -> Result<T, FilesError> + Send + 'static,
) -> Result<T, FilesError> {
    start(identity, work).wait().await
}

fn dispatch(identity: Option<Identity>, job: Job) {
    match identity {
        // A panic drops the job's sender, which `Pending::wait` reports.
        None => drop(tokio::task::spawn_blocking(move || job(Ok(())))),
        Some(id) => {
            let spawned = std::thread::Builder::new()
                .name("execd-fsid".into())
                .spawn(move || job(become_identity(id)));
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "cannot start a thread for an identity request");
            }
        }
    }
}

/// Gives the calling thread (only) the identity's fsgid, supplementary groups and fsuid.
fn become_identity(id: Identity) -> Result<(), FilesError> {
    let refused = FilesError::Identity {
        uid: id.uid,
        gid: id.gid,
    };
    // Groups first: once the fsuid is not 0 the thread may lose the right to change them.
    // The raw syscall is per-thread; libc's setgroups() would change every thread (musl and
    // glibc both broadcast it).
    let groups = [id.gid as libc::gid_t];
    // SAFETY: setgroups reads `groups.len()` gids from a valid, live array.
    let rc = unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) };
    if rc != 0 && !is_current_gid_only(id.gid) {
        return Err(refused);
    }
    // setfsgid/setfsuid return the previous value and never fail loudly; calling them a second
    // time reports whether the first call took effect.
    nix::unistd::setfsgid(id.gid.into());
    if nix::unistd::setfsgid(id.gid.into()).as_raw() != id.gid {
        return Err(refused);
    }
    nix::unistd::setfsuid(id.uid.into());
    if nix::unistd::setfsuid(id.uid.into()).as_raw() != id.uid {
        return Err(refused);
    }
    Ok(())
}

/// Whether an unprivileged execd already has exactly the requested group, so that failing to
/// set the supplementary groups changes nothing.
fn is_current_gid_only(gid: u32) -> bool {
    nix::unistd::getegid().as_raw() == gid
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn identity_is_confined_to_its_thread() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let path = dir.path().join("owned");
        let p = path.clone();
        run(
            Some(Identity {
                uid: 65534,
                gid: 65534,
            }),
            move || std::fs::write(&p, b"x").map_err(FilesError::io("write", &p)),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (65534, 65534));
        // The pool threads are untouched: a root-only write still works without identity.
        let p = dir.path().join("root");
        run(None, move || {
            std::fs::write(&p, b"y").map_err(FilesError::io("write", &p))
        })
        .await
        .unwrap();
        assert_eq!(std::fs::metadata(dir.path().join("root")).unwrap().uid(), 0);
    }
}
