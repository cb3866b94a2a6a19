//! Bulk transfer as tar streams (beyond the contract): [`extract`] unpacks a tar (gzip is
//! detected) under a directory, each file atomically, refusing entries that would land outside
//! it and never following a symlink below it; [`create`] writes a tar of a directory. Both run on a blocking thread and exchange the
//! body with the async side in bounded chunks ([`ChannelReader`], [`ChannelWriter`]).

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::fs::{File, FileTimes};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use nix::errno::Errno;
use nix::fcntl::{openat, renameat, AtFlags, OFlag};
use nix::sys::stat::{fchmod, fstatat, mkdirat, Mode};
use nix::unistd::{linkat, symlinkat, unlinkat, UnlinkatFlags};
use tokio::sync::mpsc;

use super::atomic::{CreatedDirs, TempFileAt};
use super::buffers::Pool;
use super::info::walk;
use super::upload::Chunk;
use super::FilesError;
use crate::wire::files::ArchiveExtractResult;

/// Chunk size of a tar sent to the client.
const OUT_CHUNK: usize = 256 << 10;

/// Unpacks the tar (optionally gzip-compressed) read from `body` under `dir`, creating `dir` if
/// needed. Regular files are written to a temp file and renamed into place. No step follows a
/// symlink below `dir` (see [`Beneath`]): an entry replaces a symlink of its own name (the
/// link, never its target), and an entry below a symlink, like one whose path is absolute or
/// climbs out with `..`, is refused and the extraction stops there (earlier entries stay).
/// Ownership in the archive is not applied: files belong to the writer.
pub fn extract(dir: &Path, body: impl Read) -> Result<ArchiveExtractResult, FilesError> {
    CreatedDirs::create(dir)?.keep();
    let root = Beneath::open(dir)?;
    let mut input = BufReader::with_capacity(256 << 10, body);
    let gzip = input.fill_buf().map_err(bad_archive)?.starts_with(&[0x1f, 0x8b]);
    let reader: Box<dyn Read> = if gzip {
        Box::new(flate2::bufread::MultiGzDecoder::new(input))
    } else {
        Box::new(input)
    };
    let mut archive = tar::Archive::new(reader);
    let mut result = ArchiveExtractResult::default();
    // Directory modes are applied last, so a read-only directory can still be filled.
    let mut dir_modes: Vec<(PathBuf, u32)> = Vec::new();
    for entry in archive.entries().map_err(bad_archive)? {
        let mut entry = entry.map_err(bad_archive)?;
        let raw = entry.path().map_err(bad_archive)?.into_owned();
        let Some(rel) = confined(&raw) else {
            return Err(FilesError::EntryEscapes(raw.to_string_lossy().into_owned()));
        };
        let kind = entry.header().entry_type();
        let Some(name) = rel.file_name() else {
            continue; // the target directory itself
        };
        if kind.is_pax_global_extensions() {
            continue;
        }
        let target = dir.join(&rel);
        let parent_path = target.parent().unwrap_or(dir);
        let parent = root.parent_of(&rel, &raw)?;
        let mode = entry.header().mode().unwrap_or(0o644) & 0o7777;
        if kind.is_dir() {
            make_dir(&parent, name, &target)?;
            dir_modes.push((rel, mode));
            result.directories += 1;
            continue;
        }
        if file_type_at(&parent, name) == Some(libc::S_IFDIR) {
            return Err(FilesError::IsDirectory(target));
        }
        if kind.is_file() || kind.is_contiguous() {
            // Mode and times go to the temp file's descriptor, so they land on the new file
            // whatever the name held before.
            let temp = TempFileAt::create(parent.as_fd(), parent_path, name, 0o600)?;
            let n = copy_entry(&mut entry, temp.file(), &target)?;
            temp.file()
                .set_permissions(std::fs::Permissions::from_mode(mode))
                .map_err(FilesError::io("chmod", &target))?;
            // A base-256 mtime can exceed what a `SystemTime` holds; such a file keeps the
            // time of its extraction.
            let mtime = entry.header().mtime().ok();
            if let Some(t) = mtime.and_then(|secs| UNIX_EPOCH.checked_add(Duration::from_secs(secs))) {
                let _ = temp
                    .file()
                    .set_times(FileTimes::new().set_modified(t).set_accessed(t));
            }
            temp.commit(name, &target)?;
            result.files += 1;
            result.bytes += n;
        } else if kind.is_symlink() || kind.is_hard_link() {
            let link = entry.link_name().map_err(bad_archive)?.ok_or_else(|| {
                FilesError::EntryEscapes(format!("{} (link without a target)", raw.display()))
            })?;
            let temp = format!(".execd-link-{}", uuid::Uuid::new_v4().simple());
            let made = if kind.is_symlink() {
                // A symlink may point anywhere: it is only data here, and nothing is ever
                // written through it (see Beneath).
                symlinkat(link.as_os_str(), parent.as_fd(), temp.as_str())
            } else {
                let Some(link_rel) = confined(&link) else {
                    return Err(FilesError::EntryEscapes(link.to_string_lossy().into_owned()));
                };
                let Some(link_name) = link_rel.file_name() else {
                    return Err(FilesError::EntryEscapes(format!(
                        "{} (link to the target directory)",
                        raw.display()
                    )));
                };
                let link_parent = root.existing_parent_of(&link_rel, &raw)?;
                // No AT_SYMLINK_FOLLOW: a hard link to a symlink is a second symlink, never a
                // second name for whatever the symlink points to.
                linkat(
                    link_parent.as_fd(),
                    link_name,
                    parent.as_fd(),
                    temp.as_str(),
                    AtFlags::empty(),
                )
            };
            let what = if kind.is_symlink() {
                "create symlink"
            } else {
                "create hard link"
            };
            made.map_err(|e| FilesError::io(what, &target)(e.into()))?;
            // rename replaces whatever has the name, a symlink included, without following it.
            if let Err(e) = renameat(parent.as_fd(), temp.as_str(), parent.as_fd(), name) {
                let _ = unlinkat(parent.as_fd(), temp.as_str(), UnlinkatFlags::NoRemoveDir);
                return Err(FilesError::io("rename into", &target)(e.into()));
            }
            result.links += 1;
        } else {
            result.skipped += 1;
        }
    }
    // Deepest first, so that a directory made read-only (or unsearchable) does not stop the
    // ones below it; the sort is stable, so of two entries for one directory the later wins.
    dir_modes.sort_by_key(|(rel, _)| std::cmp::Reverse(rel.components().count()));
    for (rel, mode) in dir_modes {
        let fd = root.dir(&rel, Missing::Fail, &rel)?;
        fchmod(&fd, Mode::from_bits_truncate(mode))
            .map_err(|e| FilesError::io("chmod", &dir.join(&rel))(e.into()))?;
    }
    Ok(result)
}

/// The directory an archive is extracted into, opened once. Every entry is reached from it
/// one path component at a time with `O_NOFOLLOW`, so no step of an extraction resolves a
/// symlink: not one the archive made, not one that was already there, and not one swapped in
/// meanwhile (each step holds the directory it found, not its path). Entry paths come from
/// [`confined`], so they have no `..` either. The directory's own path is the caller's
/// choice and may contain symlinks.
struct Beneath<'p> {
    root: OwnedFd,
    path: &'p Path,
}

/// What [`Beneath::dir`] does about a missing directory.
#[derive(Clone, Copy, PartialEq)]
enum Missing {
    /// Creates it (mode 0777, the umask applies), like `mkdir -p`.
    Create,
    /// Fails with ENOENT.
    Fail,
}

impl<'p> Beneath<'p> {
    fn open(path: &'p Path) -> Result<Self, FilesError> {
        let root = nix::fcntl::open(
            path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| FilesError::io("open", path)(e.into()))?;
        Ok(Self { root, path })
    }

    /// The directory holding `rel`, created if missing, open for reading.
    fn parent_of(&self, rel: &Path, entry: &Path) -> Result<OwnedFd, FilesError> {
        self.dir(rel.parent().unwrap_or(Path::new("")), Missing::Create, entry)
    }

    /// The directory holding `rel`, which must exist (a hard link's target).
    fn existing_parent_of(&self, rel: &Path, entry: &Path) -> Result<OwnedFd, FilesError> {
        self.dir(rel.parent().unwrap_or(Path::new("")), Missing::Fail, entry)
    }

    /// Opens the directory `rel` for reading, walking from the root one component at a time
    /// and never through a symlink. `entry` is the archive entry asking, for messages.
    fn dir(&self, rel: &Path, missing: Missing, entry: &Path) -> Result<OwnedFd, FilesError> {
        let names: Vec<&OsStr> = rel.iter().collect();
        let Some(last) = names.len().checked_sub(1) else {
            return self.root.try_clone().map_err(FilesError::io("open", self.path));
        };
        let mut cur: Option<OwnedFd> = None;
        for (i, name) in names.iter().enumerate() {
            let at = cur.as_ref().map_or(self.root.as_fd(), |fd| fd.as_fd());
            // Only the last directory is opened for reading (it is fsynced or chmodded);
            // O_PATH is enough to pass through the others and needs only search permission.
            let access = if i == last { OFlag::O_RDONLY } else { OFlag::O_PATH };
            let flags = access | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
            let here = || names[..=i].iter().collect::<PathBuf>();
            let mut opened = openat(at, *name, flags, Mode::empty());
            if matches!(opened, Err(Errno::ENOENT)) && missing == Missing::Create {
                match mkdirat(at, *name, Mode::from_bits_truncate(0o777)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => {
                        let path = self.path.join(here());
                        return Err(FilesError::io("create directory", &path)(e.into()));
                    }
                }
                opened = openat(at, *name, flags, Mode::empty());
            }
            cur = Some(match opened {
                Ok(fd) => fd,
                // O_NOFOLLOW refuses a symlink with ELOOP, O_DIRECTORY with ENOTDIR (O_PATH);
                // which it was decides the message.
                Err(Errno::ELOOP | Errno::ENOTDIR) if file_type_at(&at, name) == Some(libc::S_IFLNK) => {
                    return Err(FilesError::EntryThroughSymlink {
                        entry: entry.to_string_lossy().into_owned(),
                        link: here().to_string_lossy().into_owned(),
                    });
                }
                Err(Errno::ENOTDIR) => return Err(FilesError::NotDirectory(self.path.join(here()))),
                Err(e) => {
                    let path = self.path.join(here());
                    return Err(FilesError::io("open directory", &path)(e.into()));
                }
            });
        }
        cur.ok_or_else(|| FilesError::NotDirectory(self.path.to_owned()))
    }
}

/// The file type bits (`S_IFDIR`, `S_IFLNK`, …) of `name` in `dir`, not following a symlink;
/// `None` if it cannot be stat'ed (usually: it does not exist).
fn file_type_at(dir: &impl AsFd, name: &OsStr) -> Option<libc::mode_t> {
    fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)
        .ok()
        .map(|st| st.st_mode & libc::S_IFMT)
}

/// Makes `name` in `parent` a directory. A symlink of that name is removed first, as tar's
/// rule that a later entry replaces what has its name asks; its target is never touched.
/// Anything else of that name is left alone and the creation fails.
fn make_dir(parent: &OwnedFd, name: &OsStr, target: &Path) -> Result<(), FilesError> {
    match file_type_at(parent, name) {
        Some(libc::S_IFDIR) => return Ok(()),
        Some(libc::S_IFLNK) => unlinkat(parent.as_fd(), name, UnlinkatFlags::NoRemoveDir)
            .map_err(|e| FilesError::io("replace the symlink", target)(e.into()))?,
        _ => {}
    }
    mkdirat(parent.as_fd(), name, Mode::from_bits_truncate(0o777))
        .map_err(|e| FilesError::io("create directory", target)(e.into()))
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

    /// Issue 20 (found by `fuzz/` target `archive`): a base-256 mtime beyond what a
    /// `SystemTime` holds panicked the extraction thread; the file is now extracted with the
    /// time of its extraction.
    #[test]
    fn issue20_mtime_beyond_system_time_is_ignored() {
        let mut header = tar::Header::new_gnu();
        header.set_path("f").unwrap();
        header.set_size(2);
        header.set_mode(0o644);
        header.set_mtime(u64::MAX);
        header.set_cksum();
        let mut builder = tar::Builder::new(Vec::new());
        builder.append(&header, &b"hi"[..]).unwrap();
        let tar = builder.into_inner().unwrap();
        let dst = tempfile::tempdir().unwrap();
        let r = extract(dst.path(), &tar[..]).unwrap();
        assert_eq!(r.files, 1);
        assert_eq!(std::fs::read(dst.path().join("f")).unwrap(), b"hi");
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

    /// A tar of `(name, kind, content or link target, mode)` entries.
    fn tar_of(entries: &[(&str, tar::EntryType, &str, u32)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, kind, data, mode) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(*mode);
            if kind.is_symlink() || kind.is_hard_link() {
                h.set_size(0);
                b.append_link(&mut h, name, data).unwrap();
            } else {
                h.set_size(data.len() as u64);
                b.append_data(&mut h, name, data.as_bytes()).unwrap();
            }
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn issue19_symlinks_are_replaced_never_followed() {
        use std::os::unix::fs::MetadataExt;
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(outside.join("f"), "keep").unwrap();
        let out = outside.to_str().unwrap();
        let out_f = format!("{out}/f");
        let (sym, dir, file) = (
            tar::EntryType::Symlink,
            tar::EntryType::Directory,
            tar::EntryType::Regular,
        );
        let target = tmp.path().join("t");
        let tar = tar_of(&[
            ("d", sym, out, 0o777),
            ("d", dir, "", 0o777),
            ("f", sym, &out_f, 0o777),
            ("f", file, "new", 0o600),
        ]);
        let r = extract(&target, &tar[..]).unwrap();
        assert_eq!((r.files, r.directories, r.links), (1, 1, 2));
        assert_eq!(std::fs::metadata(&outside).unwrap().mode() & 0o7777, 0o755);
        assert_eq!(std::fs::read_to_string(outside.join("f")).unwrap(), "keep");
        let d = std::fs::symlink_metadata(target.join("d")).unwrap();
        assert!(d.is_dir());
        assert_eq!(d.mode() & 0o7777, 0o777);
        assert_eq!(std::fs::read_to_string(target.join("f")).unwrap(), "new");

        let tar = tar_of(&[("l", sym, out, 0o777), ("l/x", file, "evil", 0o644)]);
        match extract(&target, &tar[..]) {
            Err(FilesError::EntryThroughSymlink { entry, link }) => {
                assert_eq!((entry.as_str(), link.as_str()), ("l/x", "l"));
            }
            other => panic!("{other:?}"),
        }
        assert!(!outside.join("x").exists());
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
