//! Changing the filesystem: remove, move, chmod/chown, mkdir -p and text replacement.
//! Every operation checks all its input before touching anything. Synchronous.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use memchr::memmem;

use super::atomic::{CreatedDirs, TempFile};
use super::info::{gid_of, lstat, uid_of};
use super::{mode_from_digits, FilesError};
use crate::wire::files::Permission;

/// A validated ownership and mode change.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Change {
    /// New permission bits, if any.
    pub mode: Option<u32>,
    /// New owner, if any.
    pub uid: Option<u32>,
    /// New group, if any.
    pub gid: Option<u32>,
}

impl Change {
    /// Validates a wire `Permission` (mode digits, user and group names).
    pub fn new(owner: Option<&str>, group: Option<&str>, mode_digits: u32) -> Result<Self, FilesError> {
        let mode = mode_from_digits(mode_digits)?;
        Ok(Self {
            mode: (mode != 0).then_some(mode),
            uid: owner.filter(|o| !o.is_empty()).map(uid_of).transpose()?,
            gid: group.filter(|g| !g.is_empty()).map(gid_of).transpose()?,
        })
    }

    /// From the wire type.
    pub fn from_permission(p: &Permission) -> Result<Self, FilesError> {
        Self::new(p.owner.as_deref(), p.group.as_deref(), p.mode)
    }

    /// Applies the change to `path` (following symlinks). Ownership goes first, because a
    /// chown clears set-id bits that the mode may ask for.
    pub fn apply(&self, path: &Path) -> Result<(), FilesError> {
        if self.uid.is_some() || self.gid.is_some() {
            std::os::unix::fs::chown(path, self.uid, self.gid).map_err(FilesError::io("chown", path))?;
        }
        if let Some(mode) = self.mode {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                .map_err(FilesError::io("chmod", path))?;
        }
        Ok(())
    }

    /// Applies the change to an open file.
    pub fn apply_to_file(&self, file: &File, path: &Path) -> Result<(), FilesError> {
        if self.uid.is_some() || self.gid.is_some() {
            std::os::unix::fs::fchown(file, self.uid, self.gid).map_err(FilesError::io("chown", path))?;
        }
        if let Some(mode) = self.mode {
            file.set_permissions(std::fs::Permissions::from_mode(mode))
                .map_err(FilesError::io("chmod", path))?;
        }
        Ok(())
    }
}

/// `POST /files/permissions`: every path must exist.
pub fn set_permissions(items: &[(PathBuf, Change)]) -> Result<(), FilesError> {
    for (path, _) in items {
        lstat(path)?;
    }
    items.iter().try_for_each(|(path, change)| change.apply(path))
}

/// `POST /directories`: `mkdir -p` each path, then apply its change to the leaf.
pub fn make_dirs(items: &[(PathBuf, Change)]) -> Result<(), FilesError> {
    for (path, change) in items {
        CreatedDirs::create(path)?.keep();
        change.apply(path)?;
    }
    Ok(())
}

/// `DELETE /files`: removes files and symlinks; missing paths are ignored, directories refused.
pub fn remove_files(paths: &[PathBuf]) -> Result<(), FilesError> {
    for path in paths {
        match lstat(path) {
            Err(FilesError::NotFound(_)) => continue,
            Err(e) => return Err(e),
            Ok(m) if m.is_dir() => return Err(FilesError::RemoveDirectory(path.clone())),
            Ok(_) => {}
        }
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(FilesError::io("remove", path)(e))
            }
            _ => {}
        }
    }
    Ok(())
}

/// `DELETE /directories`: `rm -rf` each path; missing paths are ignored.
pub fn remove_dirs(paths: &[PathBuf]) -> Result<(), FilesError> {
    if paths.iter().any(|p| p.parent().is_none()) {
        return Err(FilesError::RemoveRoot);
    }
    for path in paths {
        let result = match lstat(path) {
            Err(FilesError::NotFound(_)) => continue,
            Err(e) => return Err(e),
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
            Ok(_) => std::fs::remove_file(path),
        };
        match result {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(FilesError::io("remove", path)(e))
            }
            _ => {}
        }
    }
    Ok(())
}

/// `POST /files/mv`: renames each `src` to `dest`, creating `dest`'s parent, never replacing
/// an existing `dest`. A regular file moved to another filesystem is copied and then removed.
pub fn move_all(items: &[(PathBuf, PathBuf)]) -> Result<(), FilesError> {
    for (src, dest) in items {
        lstat(src)?;
        if let Some(parent) = dest.parent() {
            CreatedDirs::create(parent)?.keep();
        }
        match rename_noreplace(src, dest) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => return Err(FilesError::Exists(dest.clone())),
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => copy_across(src, dest)?,
            Err(e) => return Err(FilesError::io("rename", src)(e)),
        }
    }
    Ok(())
}

/// rename(2) that fails with EEXIST instead of replacing `dest`.
fn rename_noreplace(src: &Path, dest: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(std::io::Error::other);
    let (s, d) = (c(src)?, c(dest)?);
    // SAFETY: both pointers are valid NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            s.as_ptr(),
            libc::AT_FDCWD,
            d.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    // Filesystems without RENAME_NOREPLACE: check, then rename (racy, but only there).
    if err.raw_os_error() == Some(libc::EINVAL) {
        if std::fs::symlink_metadata(dest).is_ok() {
            return Err(std::io::Error::from_raw_os_error(libc::EEXIST));
        }
        return std::fs::rename(src, dest);
    }
    Err(err)
}

fn copy_across(src: &Path, dest: &Path) -> Result<(), FilesError> {
    let meta = lstat(src)?;
    if !meta.is_file() {
        return Err(FilesError::Io {
            op: "move across filesystems (only regular files can be)",
            path: src.to_owned(),
            source: std::io::Error::from_raw_os_error(libc::EXDEV),
        });
    }
    let temp = TempFile::create_beside(dest, 0o600)?;
    let mut from = File::open(src).map_err(FilesError::io("open", src))?;
    std::io::copy(&mut from, &mut temp.file()).map_err(FilesError::io("copy to", temp.path()))?;
    let keep = Change {
        mode: Some(meta.mode() & 0o7777),
        uid: Some(meta.uid()),
        gid: Some(meta.gid()),
    };
    keep.apply_to_file(temp.file(), dest)?;
    if std::fs::symlink_metadata(dest).is_ok() {
        return Err(FilesError::Exists(dest.to_owned()));
    }
    temp.commit(dest)?;
    std::fs::remove_file(src).map_err(FilesError::io("remove", src))
}

/// `POST /files/replace`: replaces every occurrence of `old` with `new` in each file and returns
/// how many there were. Files are streamed through a temp file and renamed into place, keeping
/// mode and (when allowed) owner; a file without occurrences is left untouched.
pub fn replace_all(items: &[(PathBuf, String, String)]) -> Result<Vec<u64>, FilesError> {
    if let Some((path, _, _)) = items.iter().find(|(_, old, _)| old.is_empty()) {
        return Err(FilesError::EmptyOld(path.clone()));
    }
    for (path, _, _) in items {
        lstat(path)?;
    }
    items
        .iter()
        .map(|(path, old, new)| replace_in(path, old.as_bytes(), new.as_bytes()))
        .collect()
}

fn replace_in(path: &Path, old: &[u8], new: &[u8]) -> Result<u64, FilesError> {
    // Write the file a symlink points to, not over the symlink.
    let real = std::fs::canonicalize(path).map_err(FilesError::io("resolve", path))?;
    let mut src = File::open(&real).map_err(FilesError::io("open", &real))?;
    let meta = src.metadata().map_err(FilesError::io("stat", &real))?;
    if meta.is_dir() {
        return Err(FilesError::IsDirectory(path.to_owned()));
    }
    let temp = TempFile::create_beside(&real, 0o600)?;
    let count =
        replace_stream(&mut src, &mut temp.file(), old, new).map_err(FilesError::io("rewrite", &real))?;
    if count == 0 {
        return Ok(0);
    }
    std::fs::File::set_permissions(temp.file(), std::fs::Permissions::from_mode(meta.mode() & 0o7777))
        .map_err(FilesError::io("chmod", &real))?;
    // Without CAP_CHOWN (an identity request) the file becomes the writer's; that is all the
    // kernel allows.
    let _ = std::os::unix::fs::fchown(temp.file(), Some(meta.uid()), Some(meta.gid()));
    temp.commit(&real)?;
    Ok(count)
}

/// Copies `src` to `dst` replacing non-overlapping occurrences of `old` (left to right, as
/// `strings.ReplaceAll`), in bounded memory. Returns the number of occurrences.
pub fn replace_stream(
    src: &mut impl Read,
    dst: &mut impl Write,
    old: &[u8],
    new: &[u8],
) -> std::io::Result<u64> {
    const CHUNK: usize = 256 << 10;
    let finder = memmem::Finder::new(old);
    let mut buf: Vec<u8> = Vec::with_capacity(CHUNK + old.len());
    let mut count = 0u64;
    let mut eof = false;
    while !eof {
        let start = buf.len();
        buf.resize(start + CHUNK, 0);
        let n = src.read(&mut buf[start..])?;
        buf.truncate(start + n);
        eof = n == 0;
        // Everything before `safe` can be decided now: a match cannot start there and run past
        // the end of what is buffered. At EOF everything is decided.
        let safe = if eof {
            buf.len()
        } else {
            buf.len().saturating_sub(old.len() - 1)
        };
        let mut pos = 0;
        while let Some(i) = finder.find(&buf[pos..]) {
            let at = pos + i;
            if at >= safe {
                break;
            }
            dst.write_all(&buf[pos..at])?;
            dst.write_all(new)?;
            count += 1;
            pos = at + old.len();
        }
        let keep_from = pos.max(safe);
        dst.write_all(&buf[pos..keep_from])?;
        buf.drain(..keep_from);
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn replace(input: &[u8], old: &[u8], new: &[u8]) -> (Vec<u8>, u64) {
        let mut out = Vec::new();
        let n = replace_stream(&mut &input[..], &mut out, old, new).unwrap();
        (out, n)
    }

    #[test]
    fn replace_counts_non_overlapping() {
        assert_eq!(replace(b"aaaa", b"aa", b"b"), (b"bb".to_vec(), 2));
        assert_eq!(replace(b"xyz", b"q", b"r"), (b"xyz".to_vec(), 0));
        assert_eq!(replace(b"", b"q", b"r"), (b"".to_vec(), 0));
    }

    #[test]
    fn replace_across_chunk_boundaries() {
        let mut input = vec![b'.'; (256 << 10) - 2];
        input.extend_from_slice(b"NEEDLE");
        input.extend_from_slice(&vec![b'.'; 300 << 10]);
        input.extend_from_slice(b"NEEDLE");
        let (out, n) = replace(&input, b"NEEDLE", b"x");
        assert_eq!(n, 2);
        assert_eq!(out.len(), input.len() - 10);
    }

    proptest! {
        #[test]
        fn replace_stream_matches_std(s in "[ab]{0,64}", old in "[ab]{1,3}", new in "[abc]{0,3}") {
            let (out, n) = replace(s.as_bytes(), old.as_bytes(), new.as_bytes());
            prop_assert_eq!(String::from_utf8(out).unwrap(), s.replace(&old, &new));
            prop_assert_eq!(n as usize, s.matches(&old).count());
        }
    }

    #[test]
    fn move_refuses_to_replace() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("sub/dir/b"));
        std::fs::write(&a, "1").unwrap();
        move_all(&[(a.clone(), b.clone())]).unwrap();
        assert_eq!(std::fs::read(&b).unwrap(), b"1");
        std::fs::write(&a, "2").unwrap();
        assert!(matches!(
            move_all(&[(a.clone(), b.clone())]),
            Err(FilesError::Exists(_))
        ));
        assert!(matches!(
            move_all(&[(d.path().join("zz"), b)]),
            Err(FilesError::NotFound(_))
        ));
    }
}
