//! Writing files so that readers see either the old content or the complete new content,
//! never a partial file: write a temp file beside the target, fsync it, set its owner and
//! mode, rename it over the target, fsync the directory. A [`TempFile`] that is dropped
//! without [`TempFile::commit`] removes itself, so no failure leaves a temp file behind.
//! Synchronous.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

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
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default();
        // Keep the name short enough for NAME_MAX whatever the target's length.
        let stem: String = name.chars().take(64).collect();
        let path = dir.join(format!(".{stem}.execd-{}", uuid::Uuid::new_v4().simple()));
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
