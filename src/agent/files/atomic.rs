//! Writing files so that readers see either the old content or the complete new content,
//! never a partial file: write a temp file beside the target, fsync it, set its owner and
//! mode, rename it over the target, fsync the directory. A [`TempFile`] that is dropped
//! without [`TempFile::commit`] removes itself, so no failure leaves a temp file behind.
//! [`TempFileAt`] does the same relative to an open directory, for writers that must never
//! resolve a path (archive extraction). Synchronous.

use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::os::fd::BorrowedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{openat, renameat, OFlag};
use nix::sys::stat::Mode;
use nix::unistd::{unlinkat, UnlinkatFlags};

use super::FilesError;

/// A temp file in the target's directory, removed on drop unless committed.
pub struct TempFile {
    path: PathBuf,
    file: File,
    committed: bool,
}

impl TempFile {
    /// Creates `.<name>.execd-<random>` beside `target` with `mode` (the umask applies).
    pub fn create_beside(target: &Path, mode: u32) -> Result<Self, FilesError> {
        let dir = target.parent().unwrap_or(Path::new("/"));
        let path = dir.join(temp_name(target.file_name().unwrap_or_default()));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
            .map_err(FilesError::io("create a temp file in", dir))?;
        Ok(Self {
            path,
            file,
            committed: false,
        })
    }

    /// The open temp file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Where the temp file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Flushes the content, renames the temp file over `target` and flushes the directory.
    pub fn commit(mut self, target: &Path) -> Result<(), FilesError> {
        self.file
            .sync_all()
            .map_err(FilesError::io("fsync", &self.path))?;
        std::fs::rename(&self.path, target).map_err(FilesError::io("rename into", target))?;
        self.committed = true;
        sync_dir(target.parent().unwrap_or(Path::new("/")))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.committed {
            if let Err(e) = std::fs::remove_file(&self.path) {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot remove temp file");
            }
        }
    }
}

/// A hidden, recognisable, unique name for a temp file of `target_name`.
fn temp_name(target_name: &OsStr) -> OsString {
    // Keep the name short enough for NAME_MAX whatever the target's length.
    let stem: String = target_name.to_string_lossy().chars().take(64).collect();
    format!(".{stem}.execd-{}", uuid::Uuid::new_v4().simple()).into()
}

/// A [`TempFile`] named relative to an open directory: creating, renaming and removing it
/// resolve no path, so a symlink swapped into the target's path cannot redirect them, and
/// the rename replaces whatever has the target's name (a symlink itself, never its target).
pub struct TempFileAt<'d> {
    /// The directory, open for reading (not `O_PATH`: the commit fsyncs it).
    dir: BorrowedFd<'d>,
    name: OsString,
    /// Where the temp file is, for messages only.
    path: PathBuf,
    file: File,
    committed: bool,
}

impl<'d> TempFileAt<'d> {
    /// Creates a temp file for `target_name` in `dir` (whose path is `dir_path`, used only in
    /// messages) with `mode` (the umask applies).
    pub fn create(
        dir: BorrowedFd<'d>,
        dir_path: &Path,
        target_name: &OsStr,
        mode: u32,
    ) -> Result<Self, FilesError> {
        let name = temp_name(target_name);
        let path = dir_path.join(&name);
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = openat(dir, name.as_os_str(), flags, Mode::from_bits_truncate(mode))
            .map_err(|e| FilesError::io("create a temp file in", dir_path)(e.into()))?;
        Ok(Self {
            dir,
            name,
            path,
            file: File::from(fd),
            committed: false,
        })
    }

    /// The open temp file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Flushes the content, renames the temp file over `target_name` in the same directory
    /// and flushes the directory. `target` is the target's path, for messages.
    pub fn commit(mut self, target_name: &OsStr, target: &Path) -> Result<(), FilesError> {
        self.file
            .sync_all()
            .map_err(FilesError::io("fsync", &self.path))?;
        renameat(self.dir, self.name.as_os_str(), self.dir, target_name)
            .map_err(|e| FilesError::io("rename into", target)(e.into()))?;
        self.committed = true;
        nix::unistd::fsync(self.dir)
            .map_err(|e| FilesError::io("fsync directory", target.parent().unwrap_or(target))(e.into()))
    }
}

impl Drop for TempFileAt<'_> {
    fn drop(&mut self) {
        if !self.committed {
            if let Err(e) = unlinkat(self.dir, self.name.as_os_str(), UnlinkatFlags::NoRemoveDir) {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot remove temp file");
            }
        }
    }
}

/// fsyncs a directory so that a rename or creation in it survives a crash.
pub fn sync_dir(dir: &Path) -> Result<(), FilesError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(FilesError::io("fsync directory", dir))
}

/// `mkdir -p` that remembers which directories it created, so a failed write can remove
/// exactly those again.
pub struct CreatedDirs(Vec<PathBuf>);

impl CreatedDirs {
    /// Creates `dir` and its missing ancestors with mode 0777 (the umask applies).
    pub fn create(dir: &Path) -> Result<Self, FilesError> {
        let mut missing = Vec::new();
        let mut cur = dir;
        loop {
            match std::fs::symlink_metadata(cur) {
                Ok(m) if m.is_dir() => break,
                // A symlink to a directory is a fine parent.
                Ok(m) if m.file_type().is_symlink() && cur.is_dir() => break,
                Ok(_) => return Err(FilesError::NotDirectory(cur.to_owned())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => missing.push(cur.to_owned()),
                Err(e) => return Err(FilesError::io("stat", cur)(e)),
            }
            match cur.parent() {
                Some(p) => cur = p,
                None => break,
            }
        }
        let mut created = CreatedDirs(Vec::new());
        for d in missing.into_iter().rev() {
            match std::fs::create_dir(&d) {
                Ok(()) => created.0.push(d),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && d.is_dir() => {}
                Err(e) => {
                    created.undo();
                    return Err(FilesError::io("create directory", &d)(e));
                }
            }
        }
        Ok(created)
    }

    /// Removes the directories created, deepest first, as long as they are still empty.
    pub fn undo(&mut self) {
        for d in self.0.drain(..).rev() {
            let _ = std::fs::remove_dir(&d);
        }
    }

    /// Keeps the directories.
    pub fn keep(mut self) {
        self.0.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn uncommitted_temp_files_vanish() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("t");
        {
            let t = TempFile::create_beside(&target, 0o600).unwrap();
            t.file().write_all(b"partial").unwrap();
        }
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
        let t = TempFile::create_beside(&target, 0o600).unwrap();
        t.file().write_all(b"whole").unwrap();
        t.commit(&target).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"whole");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn created_dirs_undo_only_their_own() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("a")).unwrap();
        let mut c = CreatedDirs::create(&d.path().join("a/b/c")).unwrap();
        assert!(d.path().join("a/b/c").is_dir());
        c.undo();
        assert!(!d.path().join("a/b").exists());
        assert!(d.path().join("a").is_dir());
    }
}
