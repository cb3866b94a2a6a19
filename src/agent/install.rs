//! `execd install DIR`: copies the running executable to `DIR/execd`, for the init container
//! of a Kubernetes pod (`execd-installer`), which fills the emptyDir the sandbox container then
//! runs execd from. No shell is needed, so the `FROM scratch` agent image serves as that init
//! container.
//!
//! The copy is atomic: a temp file beside the target, fsynced, made 0755, renamed over the
//! target, the directory fsynced. A re-run while `DIR/execd` is running (podman re-runs init
//! containers) replaces the name and never writes into the running file, so it never meets
//! `ETXTBSY`. Synchronous.

use std::fs::Permissions;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::files::atomic::{CreatedDirs, TempFile};
use super::files::FilesError;

/// The name the executable gets in the target directory.
pub const TARGET_NAME: &str = "execd";
/// The installed file's mode: everyone may run it (the sandbox's user may not be root).
const MODE: u32 = 0o755;

/// Why an install failed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// The running executable could not be opened.
    #[error("cannot read this executable ({}): {source}", path.display())]
    ReadSelf {
        /// What was opened (`/proc/self/exe`).
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The target directory, the temp file or the rename failed.
    #[error(transparent)]
    Files(#[from] FilesError),
    /// Copying the bytes or setting the mode failed.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The temp file being written.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Copies `source` (the running executable: `/proc/self/exe`) to `dir/execd` atomically,
/// creating `dir` and its parents when missing; returns the installed path.
pub fn install(source: &Path, dir: &Path) -> Result<PathBuf, InstallError> {
    let read_self = |source_err| InstallError::ReadSelf {
        path: source.to_owned(),
        source: source_err,
    };
    // Read whole: the agent is a few MB.
    let bytes = std::fs::read(source).map_err(read_self)?;
    CreatedDirs::create(dir)?.keep();
    let target = dir.join(TARGET_NAME);
    let temp = TempFile::create_beside(&target, 0o700)?;
    let write = |e| InstallError::Write {
        path: temp.path().to_owned(),
        source: e,
    };
    temp.file().write_all(&bytes).map_err(write)?;
    // fchmod rather than the create mode, which the umask would narrow.
    temp.file()
        .set_permissions(Permissions::from_mode(MODE))
        .map_err(write)?;
    temp.commit(&target)?;
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn installs_a_copy_with_mode_0755_creating_the_directory() {
        let d = tempfile::tempdir().unwrap();
        let source = d.path().join("src");
        std::fs::write(&source, b"binary bytes").unwrap();
        let dir = d.path().join("opt/opensandbox");
        let target = install(&source, &dir).unwrap();
        assert_eq!(target, dir.join("execd"));
        assert_eq!(std::fs::read(&target).unwrap(), b"binary bytes");
        let mode = std::fs::metadata(&target).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o755);
        // No temp file is left beside it.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
    }

    #[test]
    fn a_rerun_replaces_a_running_copy_without_etxtbsy() {
        // A real executable, installed and then run from its installed path; a copy written
        // in place over it would fail with ETXTBSY ("Text file busy").
        let d = tempfile::tempdir().unwrap();
        let sleep = PathBuf::from("/bin/sleep");
        let target = install(&sleep, d.path()).unwrap();
        let mut running = Command::new(&target).arg("60").spawn().unwrap();
        let again = install(&sleep, d.path());
        let _ = running.kill();
        let _ = running.wait();
        assert_eq!(again.unwrap(), target);
        assert_eq!(std::fs::read(&target).unwrap(), std::fs::read(&sleep).unwrap());
    }

    #[test]
    fn a_missing_source_or_a_file_in_the_way_is_an_error_naming_it() {
        let d = tempfile::tempdir().unwrap();
        let e = install(&d.path().join("nope"), d.path()).unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
        let file = d.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        let e = install(&file, &file.join("sub")).unwrap_err();
        assert!(e.to_string().contains("file"), "{e}");
    }
}
