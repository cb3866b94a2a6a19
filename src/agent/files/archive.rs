//! Bulk transfer as tar streams (beyond the contract): [`extract`] unpacks a tar (gzip is
//! detected) under a directory, each file atomically, refusing entries that would land outside
//! it; [`create`] writes a tar of a directory. Both run on a blocking thread and exchange the
//! body with the async side in bounded chunks ([`ChannelReader`], [`ChannelWriter`]).

use std::collections::VecDeque;
use std::fs::{File, FileTimes};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::atomic::{CreatedDirs, TempFile};
use super::buffers::Pool;
use super::info::walk;
use super::upload::Chunk;
use super::FilesError;
use crate::wire::files::ArchiveExtractResult;

/// Chunk size of a tar sent to the client.
const OUT_CHUNK: usize = 256 << 10;

/// Unpacks the tar (optionally gzip-compressed) read from `body` under `dir`, creating `dir` if
/// needed. Regular files are written to a temp file and renamed into place; an entry whose path
/// is absolute, climbs out with `..`, or passes through a symlink is refused, and the
/// extraction stops there. Ownership in the archive is not applied: files belong to the writer.
pub fn extract(dir: &Path, body: impl Read) -> Result<ArchiveExtractResult, FilesError> {
    CreatedDirs::create(dir)?.keep();
    let mut input = BufReader::with_capacity(256 << 10, body);
    let gzip = input.fill_buf().map_err(bad_archive)?.starts_with(&[0x1f, 0x8b]);
    let reader: Box<dyn Read> = if gzip {
        Box::new(flate2::bufread::MultiGzDecoder::new(input))
    } else {
        Box::new(input)
    };
    let mut archive = tar::Archive::new(reader);
    let mut result = ArchiveExtractResult::default();
    // Directory modes are applied last, deepest first, so a read-only directory can still be
    // filled.
    let mut dir_modes: Vec<(PathBuf, u32)> = Vec::new();
    for entry in archive.entries().map_err(bad_archive)? {
        let mut entry = entry.map_err(bad_archive)?;
        let raw = entry.path().map_err(bad_archive)?.into_owned();
        let Some(rel) = confined(&raw) else {
            return Err(FilesError::EntryEscapes(raw.to_string_lossy().into_owned()));
        };
        let kind = entry.header().entry_type();
        if rel.as_os_str().is_empty() || kind.is_pax_global_extensions() {
            continue;
        }
        check_no_symlink_between(dir, &rel, &raw)?;
        let target = dir.join(&rel);
        let mode = entry.header().mode().unwrap_or(0o644) & 0o7777;
        if kind.is_dir() {
            match std::fs::symlink_metadata(&target) {
                Ok(m) if m.is_dir() => {}
                _ => std::fs::create_dir_all(&target).map_err(FilesError::io("create directory", &target))?,
            }
            dir_modes.push((target, mode));
            result.directories += 1;
            continue;
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(FilesError::io("create directory", parent))?;
        }
        if std::fs::symlink_metadata(&target).is_ok_and(|m| m.is_dir()) {
            return Err(FilesError::IsDirectory(target));
        }
        if kind.is_file() || kind.is_contiguous() {
            let temp = TempFile::create_beside(&target, 0o600)?;
            let n = copy_entry(&mut entry, temp.file(), &target)?;
            temp.file()
                .set_permissions(std::fs::Permissions::from_mode(mode))
                .map_err(FilesError::io("chmod", &target))?;
            if let Ok(secs) = entry.header().mtime() {
                let t = UNIX_EPOCH + Duration::from_secs(secs);
                let _ = temp
                    .file()
                    .set_times(FileTimes::new().set_modified(t).set_accessed(t));
            }
            temp.commit(&target)?;
            result.files += 1;
            result.bytes += n;
        } else if kind.is_symlink() || kind.is_hard_link() {
            let link = entry.link_name().map_err(bad_archive)?.ok_or_else(|| {
                FilesError::EntryEscapes(format!("{} (link without a target)", raw.display()))
            })?;
            let temp = dir.join(format!(".execd-link-{}", uuid::Uuid::new_v4().simple()));
            if kind.is_symlink() {
                // A symlink may point anywhere: it is only data here, and no later entry is
                // written through it (see check_no_symlink_between).
                std::os::unix::fs::symlink(&link, &temp)
                    .map_err(FilesError::io("create symlink", &target))?;
            } else {
                let Some(link_rel) = confined(&link) else {
                    return Err(FilesError::EntryEscapes(link.to_string_lossy().into_owned()));
                };
                check_no_symlink_between(dir, &link_rel, &link)?;
                std::fs::hard_link(dir.join(&link_rel), &temp)
                    .map_err(FilesError::io("create hard link", &target))?;
            }
            if let Err(e) = std::fs::rename(&temp, &target) {
                let _ = std::fs::remove_file(&temp);
                return Err(FilesError::io("rename into", &target)(e));
            }
            result.links += 1;
        } else {
            result.skipped += 1;
        }
    }
    for (path, mode) in dir_modes.into_iter().rev() {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .map_err(FilesError::io("chmod", &path))?;
    }
    Ok(result)
}

/// Copies an entry's content, telling a broken archive (read) from a refused write.
fn copy_entry(entry: &mut impl Read, mut file: &File, target: &Path) -> Result<u64, FilesError> {
    let mut buf = vec![0u8; 256 << 10];
    let mut total = 0u64;
    loop {
        let n = match entry.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(bad_archive(e)),
        };
        file.write_all(&buf[..n])
            .map_err(FilesError::io("write", target))?;
        total += n as u64;
    }
}

fn bad_archive(e: io::Error) -> FilesError {
    FilesError::Archive(e)
}

/// The relative path an entry names, or `None` if it is absolute or climbs with `..`.
pub fn confined(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Refuses `rel` if any directory between `dir` and it is a symlink: writing through one
/// could land anywhere.
fn check_no_symlink_between(dir: &Path, rel: &Path, raw: &Path) -> Result<(), FilesError> {
    let mut cur = dir.to_path_buf();
    let mut parts = rel.components().peekable();
    while let Some(c) = parts.next() {
        if parts.peek().is_none() {
            break;
        }
        cur.push(c);
        match std::fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(FilesError::EntryEscapes(format!(
                    "{} (through a symlink)",
                    raw.display()
                )));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Writes a tar of everything below `dir` (names relative to it, symlinks kept as links,
/// sockets and devices left out), gzip-compressed when asked.
pub fn create(dir: &Path, out: impl Write, gzip: bool) -> Result<(), FilesError> {
    let meta = std::fs::metadata(dir).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => FilesError::NotFound(dir.to_owned()),
        _ => FilesError::io("stat", dir)(e),
    })?;
    if !meta.is_dir() {
        return Err(FilesError::NotDirectory(dir.to_owned()));
    }
    let out: Box<dyn Write> = if gzip {
        Box::new(flate2::write::GzEncoder::new(out, flate2::Compression::fast()))
    } else {
        Box::new(out)
    };
    let mut builder = tar::Builder::new(out);
    builder.follow_symlinks(false);
    walk(dir, u32::MAX, &mut |path, meta| {
        let t = meta.file_type();
        if !(t.is_file() || t.is_dir() || t.is_symlink()) {
            return Ok(());
        }
        let rel = path.strip_prefix(dir).unwrap_or(path);
        builder
            .append_path_with_name(path, rel)
            .map_err(FilesError::io("archive", path))
    })?;
    builder
        .into_inner()
        .and_then(|mut w| w.flush())
        .map_err(FilesError::io("finish the archive of", dir))?;
    Ok(())
}

/// A blocking `Read` over body chunks sent from the async side. The stream must end with
/// [`Chunk::End`]; a channel that closes before that reads as an error, never as a clean end.
pub struct ChannelReader {
    rx: mpsc::Receiver<Chunk>,
    /// Received buffers not read yet, in order.
    pending: VecDeque<Bytes>,
    ended: bool,
}

impl ChannelReader {
    /// Reads what arrives on `rx`.
    pub fn new(rx: mpsc::Receiver<Chunk>) -> Self {
        Self {
            rx,
            pending: VecDeque::new(),
            ended: false,
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.pending.front_mut() {
                Some(b) if b.is_empty() => {
                    self.pending.pop_front();
                }
                Some(b) => {
                    let n = buf.len().min(b.len());
                    buf[..n].copy_from_slice(&b[..n]);
                    let _ = b.split_to(n);
                    return Ok(n);
                }
                None if self.ended => return Ok(0),
                None => match self.rx.blocking_recv() {
                    Some(Chunk::Data(bufs)) => self.pending.extend(bufs),
                    Some(Chunk::End) => self.ended = true,
                    None => {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "request body broke off",
                        ))
                    }
                },
            }
        }
    }
}

/// A blocking `Write` that hands full chunks to the async side; fails once the receiver is
/// gone (the client disconnected), which stops the producer.
pub struct ChannelWriter {
    tx: mpsc::Sender<io::Result<Bytes>>,
    pool: Arc<Pool>,
    buf: Vec<u8>,
    filled: usize,
}

impl ChannelWriter {
    /// Writes into `tx`.
    pub fn new(tx: mpsc::Sender<io::Result<Bytes>>) -> Self {
        let pool = Pool::new(OUT_CHUNK, 6);
        let buf = pool.take();
        Self {
            tx,
            pool,
            buf,
            filled: 0,
        }
    }

    fn send_buffered(&mut self) -> io::Result<()> {
        if self.filled == 0 {
            return Ok(());
        }
        let full = std::mem::replace(&mut self.buf, self.pool.take());
        let chunk = self.pool.lend(full, std::mem::take(&mut self.filled));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "client went away"))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(OUT_CHUNK - self.filled);
        self.buf[self.filled..self.filled + n].copy_from_slice(&data[..n]);
        self.filled += n;
        if self.filled == OUT_CHUNK {
            self.send_buffered()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_buffered()
    }
}

/// Opens `dir` to check that it exists and is readable before a response starts.
pub fn check_readable(dir: &Path) -> Result<(), FilesError> {
    File::open(dir).map(drop).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => FilesError::NotFound(dir.to_owned()),
        _ => FilesError::io("open", dir)(e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confinement() {
        assert_eq!(confined(Path::new("a/./b")), Some(PathBuf::from("a/b")));
        assert_eq!(confined(Path::new("./")), Some(PathBuf::new()));
        assert_eq!(confined(Path::new("../x")), None);
        assert_eq!(confined(Path::new("a/../../x")), None);
        assert_eq!(confined(Path::new("/etc/passwd")), None);
    }

    #[test]
    fn round_trip_through_memory() {
        let src = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(src.path().join("d/e")).unwrap();
        std::fs::write(src.path().join("d/e/f.txt"), "deep").unwrap();
        std::fs::write(src.path().join("top"), "top").unwrap();
        std::os::unix::fs::symlink("d/e/f.txt", src.path().join("ln")).unwrap();
        for gzip in [false, true] {
            let mut tar = Vec::new();
            create(src.path(), &mut tar, gzip).unwrap();
            let dst = tempfile::tempdir().unwrap();
            let r = extract(&dst.path().join("new"), &tar[..]).unwrap();
            assert_eq!((r.files, r.directories, r.links), (2, 2, 1));
            assert_eq!(
                std::fs::read_to_string(dst.path().join("new/ln")).unwrap(),
                "deep"
            );
            assert_eq!(
                std::fs::read_to_string(dst.path().join("new/top")).unwrap(),
                "top"
            );
        }
    }

    #[test]
    fn channel_without_end_is_an_error() {
        let (tx, rx) = mpsc::channel(2);
        tx.blocking_send(Chunk::Data(vec![
            Bytes::from_static(b"a"),
            Bytes::from_static(b"b"),
        ]))
        .unwrap();
        drop(tx);
        let mut r = ChannelReader::new(rx);
        let mut out = Vec::new();
        assert!(r.read_to_end(&mut out).is_err());
        assert_eq!(out, b"ab");
    }
}
