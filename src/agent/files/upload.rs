//! Writing one uploaded file from a stream of chunks, atomically: the content goes to a temp
//! file beside the target, which is fsynced, given its owner and mode, and renamed into place,
//! and then the directory is fsynced. Any failure (the stream breaking off, a full disk, a
//! refused permission) removes the temp file and the directories this upload created.
//!
//! [`write`] runs on a blocking thread and receives chunks from the async side over a bounded
//! channel, so a file of any size passes through a few megabytes of memory.

use std::fs::File;
use std::io::{IoSlice, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::atomic::{CreatedDirs, TempFile};
use super::ops::Change;
use super::{Files, FilesError};
use crate::wire::files::FileMetadata;

/// Bytes written between hints to the kernel to start writing back, so that the final fsync
/// has little left to do and the disk works while the network does.
const WRITEBACK_EVERY: u64 = 32 << 20;

/// What the async side sends to the writer.
pub enum Chunk {
    /// More content: the body's own buffers, in order (written with one `writev`, not copied).
    Data(Vec<Bytes>),
    /// The content is complete: commit the file.
    End,
}

/// A validated upload destination.
#[derive(Debug, Clone)]
pub struct Target {
    /// Where the file goes.
    pub path: PathBuf,
    /// Requested owner, group and mode.
    pub change: Change,
}

impl Target {
    /// Checks an upload's metadata: a path, a mode of octal digits, known user and group.
    pub fn new(files: &Files, meta: &FileMetadata) -> Result<Self, FilesError> {
        let path = files.resolve(&meta.path)?;
        let change = Change::new(meta.owner.as_deref(), meta.group.as_deref(), meta.mode)?;
        Ok(Self { path, change })
    }
}

/// Receives the content of one file and commits it to `target`. Returns the bytes written.
/// If the channel closes before [`Chunk::End`], nothing is left behind.
pub fn write(target: &Target, chunks: &mut mpsc::Receiver<Chunk>) -> Result<u64, FilesError> {
    let path = destination(&target.path)?;
    let parent = path.parent().unwrap_or(Path::new("/"));
    let mut created = CreatedDirs::create(parent)?;
    let result = write_in(&path, target.change, chunks);
    if result.is_err() {
        created.undo();
    } else {
        created.keep();
    }
    result
}

/// The file to write: the target, or what it points to when it is a symlink that resolves.
fn destination(target: &Path) -> Result<PathBuf, FilesError> {
    match std::fs::symlink_metadata(target) {
        Ok(m) if m.is_dir() => Err(FilesError::IsDirectory(target.to_owned())),
        Ok(m) if m.file_type().is_symlink() => match std::fs::canonicalize(target) {
            Ok(real) if real.is_dir() => Err(FilesError::IsDirectory(target.to_owned())),
            Ok(real) => Ok(real),
            Err(_) => Ok(target.to_owned()),
        },
        _ => Ok(target.to_owned()),
    }
}

fn write_in(path: &Path, requested: Change, chunks: &mut mpsc::Receiver<Chunk>) -> Result<u64, FilesError> {
    // Like open(O_TRUNC), an existing file keeps its mode and owner unless told otherwise.
    let existing = std::fs::metadata(path).ok().filter(|m| m.is_file());
    let keep_owner = existing.as_ref().map(|m| (m.uid(), m.gid()));
    let mode = requested.mode.or(existing.as_ref().map(|m| m.mode() & 0o7777));
    // A new file without a mode gets 0666 minus the umask, which the kernel applies at
    // creation; otherwise the temp file stays private until its final mode is set.
    let temp = TempFile::create_beside(path, if mode.is_some() { 0o600 } else { 0o666 })?;
    let file = temp.file();
    let mut written = 0u64;
    let mut hinted = 0u64;
    loop {
        match chunks.blocking_recv() {
            Some(Chunk::Data(bufs)) => {
                written += write_all_vectored(file, &bufs).map_err(FilesError::io("write", path))?;
                if written - hinted >= WRITEBACK_EVERY {
                    start_writeback(file, hinted, written - hinted);
                    hinted = written;
                }
            }
            Some(Chunk::End) => break,
            None => {
                return Err(FilesError::Body(
                    "upload broke off before the file was complete".into(),
                ))
            }
        }
    }
    // Ownership first (a chown clears set-id bits), then the mode.
    let owner = Change {
        mode: None,
        uid: requested.uid.or(keep_owner.map(|o| o.0)),
        gid: requested.gid.or(keep_owner.map(|o| o.1)),
    };
    if requested.uid.is_some() || requested.gid.is_some() {
        owner.apply_to_file(file, path)?;
    } else if owner.uid.is_some() {
        // Keeping an existing owner is best effort: without CAP_CHOWN the file becomes the
        // writer's, exactly as a write by that user would.
        let _ = owner.apply_to_file(file, path);
    }
    Change {
        mode,
        uid: None,
        gid: None,
    }
    .apply_to_file(file, path)?;
    temp.commit(path)?;
    Ok(written)
}

/// Writes every buffer, in as few `writev` calls as the kernel allows. Returns the bytes written.
pub fn write_all_vectored(mut file: &File, bufs: &[Bytes]) -> std::io::Result<u64> {
    let mut slices: Vec<IoSlice<'_>> = bufs
        .iter()
        .filter(|b| !b.is_empty())
        .map(|b| IoSlice::new(b))
        .collect();
    let mut rest = &mut slices[..];
    let mut total = 0u64;
    while !rest.is_empty() {
        let n = file.write_vectored(rest)?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        total += n as u64;
        IoSlice::advance_slices(&mut rest, n);
    }
    Ok(total)
}

/// Asks the kernel to start writing back a range; purely an optimisation, errors are ignored.
fn start_writeback(file: &File, offset: u64, len: u64) {
    // SAFETY: sync_file_range only reads its integer arguments; the fd is open for the call.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as _,
            len as _,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(path: PathBuf, mode: u32) -> Target {
        Target {
            path,
            change: Change::new(None, None, mode).unwrap(),
        }
    }

    #[test]
    fn broken_off_upload_leaves_nothing() {
        let d = tempfile::tempdir().unwrap();
        let (tx, mut rx) = mpsc::channel(4);
        tx.blocking_send(Chunk::Data(vec![
            Bytes::from_static(b"par"),
            Bytes::from_static(b"tial"),
        ]))
        .unwrap();
        drop(tx);
        let err = write(&target(d.path().join("new/dir/f"), 0), &mut rx).unwrap_err();
        assert!(matches!(err, FilesError::Body(_)));
        assert_eq!(
            std::fs::read_dir(d.path()).unwrap().count(),
            0,
            "no temp file, no created dir"
        );
    }

    #[test]
    fn vectored_writes_skip_empty_buffers() {
        let d = tempfile::tempdir().unwrap();
        let f = File::create(d.path().join("v")).unwrap();
        let bufs = [
            Bytes::new(),
            Bytes::from_static(b"ab"),
            Bytes::new(),
            Bytes::from_static(b"c"),
            Bytes::new(),
        ];
        assert_eq!(write_all_vectored(&f, &bufs).unwrap(), 3);
        assert_eq!(std::fs::read(d.path().join("v")).unwrap(), b"abc");
    }

    #[test]
    fn complete_upload_has_its_mode() {
        let d = tempfile::tempdir().unwrap();
        let (tx, mut rx) = mpsc::channel(4);
        tx.blocking_send(Chunk::Data(vec![
            Bytes::from_static(b"hel"),
            Bytes::from_static(b"lo"),
        ]))
        .unwrap();
        tx.blocking_send(Chunk::End).unwrap();
        let t = target(d.path().join("f"), 640);
        assert_eq!(write(&t, &mut rx).unwrap(), 5);
        let meta = std::fs::metadata(d.path().join("f")).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o640);
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }
}
