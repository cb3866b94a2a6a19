//! The files sub-API of isolated sessions, plus diff and commit: paths as seen inside the jail
//! resolved against the session's mounts on the host, with overlay semantics for persistent
//! overlays (upper over lower; a char device 0/0 in the upper is a whiteout, the
//! `user.overlay.opaque` xattr makes a directory hide its lower).
//!
//! Writes go to the upper (copying the parent chain up first) and are chowned to the
//! session's identity; deletes of lower entries leave whiteouts. `ro` mounts and overlays
//! without `persist` refuse writes (403). Synchronous: callers run it on blocking threads.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::plan::{clean_absolute, Mount};
use super::{IsolatedError, Session};
use crate::agent::files::info::{file_info, lstat, Names, Pattern};
use crate::agent::files::FilesError;
use crate::wire::files::FileInfo;
use crate::wire::isolated::MountMode;

/// xattr marking an opaque directory when overlay runs with `userxattr` (user namespaces).
const OPAQUE_XATTR: &str = "user.overlay.opaque";

/// Where an in-jail path lives on the host.
pub enum Resolved<'a> {
    /// A direct bind (`rw` or `ro`) or the lower of an overlay without `persist`.
    Direct {
        /// Host path.
        host: PathBuf,
        /// Writes allowed.
        writable: bool,
    },
    /// Inside a persistent overlay.
    Overlay {
        /// The mount.
        mount: &'a Mount,
        /// The path below the mount point.
        rel: PathBuf,
    },
}

/// Finds the mount holding `raw` (the deepest one wins, as in the jail).
pub fn resolve<'a>(session: &'a Session, raw: &str) -> Result<Resolved<'a>, IsolatedError> {
    let path = clean_absolute(raw, "path")?;
    let mount = session
        .mounts()
        .iter()
        .filter(|m| path.starts_with(&m.path))
        .max_by_key(|m| m.path.components().count())
        .ok_or_else(|| IsolatedError::Invalid(format!("{raw} is outside the session's mounts")))?;
    let rel = path
        .strip_prefix(&mount.path)
        .unwrap_or(Path::new(""))
        .to_path_buf();
    Ok(match (mount.mode, mount.persist) {
        (MountMode::Overlay, true) => Resolved::Overlay { mount, rel },
        (mode, _) => Resolved::Direct {
            host: path,
            writable: mode == MountMode::Rw,
        },
    })
}

fn is_whiteout(meta: &std::fs::Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

fn is_opaque(dir: &Path) -> bool {
    xattr_get(dir, OPAQUE_XATTR).is_some_and(|v| v == b"y")
}

fn xattr_get(path: &Path, name: &str) -> Option<Vec<u8>> {
    let p = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    let n = std::ffi::CString::new(name).ok()?;
    let mut buf = [0u8; 8];
    // SAFETY: lgetxattr writes at most `buf.len()` bytes into `buf` and reads two C strings.
    let len = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (len >= 0).then(|| buf[..len as usize].to_vec())
}

fn xattr_set(path: &Path, name: &str, value: &[u8]) -> std::io::Result<()> {
    let p = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(std::io::Error::other)?;
    let n = std::ffi::CString::new(name).map_err(std::io::Error::other)?;
    // SAFETY: lsetxattr reads two C strings and `value.len()` bytes of `value`.
    let rc = unsafe { libc::lsetxattr(p.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The host path an overlay entry is read from: the upper when it has the entry, else the
/// lower unless a whiteout or an opaque directory on the way hides it. `None`: no such entry.
fn overlay_lookup(mount: &Mount, rel: &Path) -> Option<PathBuf> {
    let upper = mount.upper.as_ref()?;
    let mut up = upper.clone();
    let mut lower_visible = true;
    let comps: Vec<_> = rel.components().collect();
    for (i, c) in comps.iter().enumerate() {
        up.push(c);
        match std::fs::symlink_metadata(&up) {
            Ok(m) if is_whiteout(&m) => return None,
            Ok(m) if m.is_dir() && i + 1 < comps.len() && is_opaque(&up) => lower_visible = false,
            Ok(m) if !m.is_dir() && i + 1 < comps.len() => return None,
            _ => {}
        }
    }
    if std::fs::symlink_metadata(&up).is_ok() {
        return Some(up);
    }
    let low = mount.path.join(rel);
    (lower_visible && std::fs::symlink_metadata(&low).is_ok()).then_some(low)
}

/// The host path to read `raw` from.
pub fn read_path(session: &Session, raw: &str) -> Result<PathBuf, IsolatedError> {
    let not_found = || IsolatedError::Files(FilesError::NotFound(PathBuf::from(raw)));
    match resolve(session, raw)? {
        Resolved::Direct { host, .. } => Ok(host),
        Resolved::Overlay { mount, rel } => overlay_lookup(mount, &rel).ok_or_else(not_found),
    }
}

/// The host path to write `raw` at: the direct path, or its place in the upper with the parent
/// chain copied up (and any whiteout there removed). With `copy_file`, an existing lower file
/// is copied up too (for in-place changes).
pub fn write_path(session: &Session, raw: &str, copy_file: bool) -> Result<PathBuf, IsolatedError> {
    match resolve(session, raw)? {
        Resolved::Direct { host, writable } => {
            if writable {
                Ok(host)
            } else {
                Err(IsolatedError::ReadOnly(raw.to_owned()))
            }
        }
        Resolved::Overlay { mount, rel } => {
            let Some(upper) = mount.upper.as_ref() else {
                return Err(IsolatedError::ReadOnly(raw.to_owned()));
            };
            let (uid, gid) = session.identity();
            let io = |what: &'static str, p: &Path| {
                let p = p.to_path_buf();
                move |e| IsolatedError::Files(FilesError::io(what, &p)(e))
            };
            // Copy the parent chain up, mirroring the lower's modes.
            let mut up = upper.clone();
            let mut low = mount.path.clone();
            let parents: Vec<_> = rel.parent().map(|p| p.components().collect()).unwrap_or_default();
            for c in parents {
                up.push(c);
                low.push(c);
                match std::fs::symlink_metadata(&up) {
                    Ok(m) if m.is_dir() => continue,
                    Ok(m) if is_whiteout(&m) => {
                        std::fs::remove_file(&up).map_err(io("remove whiteout", &up))?;
                        std::fs::create_dir(&up).map_err(io("mkdir", &up))?;
                        // The lower directory was deleted: its old entries stay hidden.
                        xattr_set(&up, OPAQUE_XATTR, b"y").map_err(io("mark opaque", &up))?;
                    }
                    Ok(_) => return Err(IsolatedError::Files(FilesError::NotDirectory(up.clone()))),
                    Err(_) => {
                        std::fs::create_dir(&up).map_err(io("mkdir", &up))?;
                        let mode = std::fs::metadata(&low)
                            .map(|m| m.mode() & 0o7777)
                            .unwrap_or(0o755);
                        let _ = std::fs::set_permissions(&up, std::fs::Permissions::from_mode(mode));
                        let _ = std::os::unix::fs::lchown(&up, Some(uid), Some(gid));
                    }
                }
            }
            let target = upper.join(&rel);
            if let Ok(m) = std::fs::symlink_metadata(&target) {
                if is_whiteout(&m) {
                    std::fs::remove_file(&target).map_err(io("remove whiteout", &target))?;
                }
            } else if copy_file {
                let low = mount.path.join(&rel);
                if let Some(src) = overlay_lookup(mount, &rel).filter(|p| *p == low) {
                    let meta = lstat(&src)?;
                    if meta.is_file() {
                        std::fs::copy(&src, &target).map_err(io("copy up", &target))?;
                        let _ = std::os::unix::fs::lchown(&target, Some(meta.uid()), Some(meta.gid()));
                    } else if meta.is_dir() {
                        std::fs::create_dir(&target).map_err(io("copy up", &target))?;
                        let _ = std::fs::set_permissions(&target, meta.permissions());
                    }
                }
            }
            Ok(target)
        }
    }
}

/// Removes `raw`: directly, or by deleting the upper's copy and leaving a whiteout where the
/// lower still has the entry. `dir` allows directories (recursively). Missing is not an error.
pub fn remove(session: &Session, raw: &str, dir: bool) -> Result<(), IsolatedError> {
    let meta = match read_path(session, raw) {
        Ok(p) => lstat(&p)?,
        Err(IsolatedError::Files(FilesError::NotFound(_))) => return Ok(()),
        Err(e) => return Err(e),
    };
    if meta.is_dir() && !dir {
        return Err(IsolatedError::Files(FilesError::RemoveDirectory(raw.into())));
    }
    let target = write_path(session, raw, false)?;
    let io = |what: &'static str| {
        let p = target.clone();
        move |e| IsolatedError::Files(FilesError::io(what, &p)(e))
    };
    match std::fs::symlink_metadata(&target) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(&target).map_err(io("remove"))?,
        Ok(_) => std::fs::remove_file(&target).map_err(io("remove"))?,
        Err(_) => {}
    }
    if let Resolved::Overlay { mount, rel } = resolve(session, raw)? {
        if std::fs::symlink_metadata(mount.path.join(&rel)).is_ok() {
            whiteout(&target).map_err(io("whiteout"))?;
        }
    }
    Ok(())
}

/// A whiteout: a character device 0/0 (what overlayfs itself creates).
fn whiteout(path: &Path) -> std::io::Result<()> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: mknod reads the C string; mode and dev are plain integers.
    let rc = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR, 0) };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Names of a merged directory: upper entries (minus whiteouts) and, unless the upper
/// directory is opaque, lower entries not hidden by them; each with its host path.
fn merged_entries(mount: &Mount, rel: &Path) -> BTreeMap<OsString, PathBuf> {
    let mut out = BTreeMap::new();
    let mut hidden = Vec::new();
    let mut lower_visible = overlay_lookup(mount, rel).is_some();
    if let Some(upper) = &mount.upper {
        let up = upper.join(rel);
        if up.is_dir() {
            if is_opaque(&up) {
                lower_visible = false;
            }
            for e in std::fs::read_dir(&up).into_iter().flatten().flatten() {
                match e.metadata() {
                    Ok(m) if is_whiteout(&m) => hidden.push(e.file_name()),
                    Ok(_) => {
                        out.insert(e.file_name(), e.path());
                    }
                    Err(_) => {}
                }
            }
        } else if std::fs::symlink_metadata(&up).is_ok() {
            lower_visible = false; // a file in the upper replaces a lower directory
        }
    }
    if lower_visible {
        for e in std::fs::read_dir(mount.path.join(rel))
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e.file_name();
            if !hidden.contains(&name) {
                out.entry(name).or_insert_with(|| e.path());
            }
        }
    }
    out
}

/// `GET …/directories/list` and `…/files/search` over any mount: entries below `raw` down to
/// `depth` levels, reported with in-jail paths; `pattern` keeps only matching files.
pub fn walk(
    session: &Session,
    raw: &str,
    depth: u32,
    pattern: Option<&Pattern>,
) -> Result<Vec<FileInfo>, IsolatedError> {
    let root = read_path(session, raw)?;
    let meta = lstat(&root)?;
    if meta.file_type().is_symlink() {
        return Err(IsolatedError::Files(FilesError::SymlinkRoot(raw.into())));
    }
    if !meta.is_dir() {
        return Err(IsolatedError::Files(FilesError::NotDirectory(raw.into())));
    }
    let mut out = Vec::new();
    let mut names = Names::default();
    let resolved = resolve(session, raw)?;
    walk_in(
        &resolved,
        Path::new(raw),
        &root,
        depth,
        pattern,
        &mut names,
        &mut out,
    );
    Ok(out)
}

fn walk_in(
    resolved: &Resolved<'_>,
    jail: &Path,
    host: &Path,
    depth: u32,
    pattern: Option<&Pattern>,
    names: &mut Names,
    out: &mut Vec<FileInfo>,
) {
    if depth == 0 {
        return;
    }
    let entries: BTreeMap<OsString, PathBuf> = match resolved {
        Resolved::Direct { .. } => std::fs::read_dir(host)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| (e.file_name(), e.path()))
            .collect(),
        Resolved::Overlay { mount, .. } => {
            let rel = jail.strip_prefix(&mount.path).unwrap_or(Path::new(""));
            merged_entries(mount, rel)
        }
    };
    for (name, host_path) in entries {
        let Ok(meta) = std::fs::symlink_metadata(&host_path) else {
            continue;
        };
        let jail_path = jail.join(&name);
        let keep = match pattern {
            None => true,
            Some(p) => !meta.is_dir() && p.matches(&name),
        };
        if keep {
            let mut info = file_info(&host_path, &meta, names);
            info.path = jail_path.to_string_lossy().into_owned();
            out.push(info);
        }
        if meta.is_dir() {
            walk_in(
                resolved,
                &jail_path,
                &host_path,
                depth.saturating_sub(1),
                pattern,
                names,
                out,
            );
        }
    }
}

/// `GET …/files/info`: each path's info, with its in-jail path.
pub fn info(session: &Session, paths: &[String]) -> Result<BTreeMap<String, FileInfo>, IsolatedError> {
    let mut names = Names::default();
    let mut out = BTreeMap::new();
    for raw in paths {
        let host = read_path(session, raw)?;
        let meta = lstat(&host)?;
        let mut info = file_info(&host, &meta, &mut names);
        info.path = raw.clone();
        out.insert(raw.clone(), info);
    }
    Ok(out)
}

/// Hands a file written through the API to the session's identity.
pub fn chown_to_session(session: &Session, host: &Path) {
    let (uid, gid) = session.identity();
    let _ = std::os::unix::fs::lchown(host, Some(uid), Some(gid));
}

/// `GET …/diff`: every persistent overlay's upper as one tar.gz, entries named by in-jail path
/// (without the leading `/`). Whiteouts are char devices 0/0; opaque directories carry a
/// `SCHILY.xattr.trusted.overlay.opaque=y` PAX record (the standard overlay tooling's marker).
pub fn diff(session: &Session, out: impl Write) -> Result<(), IsolatedError> {
    let uppers: Vec<(&Mount, &PathBuf)> = session
        .mounts()
        .iter()
        .filter_map(|m| m.upper.as_ref().map(|u| (m, u)))
        .collect();
    if uppers.is_empty() {
        return Err(IsolatedError::NothingPersisted);
    }
    let gz = flate2::write::GzEncoder::new(out, flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    tar.follow_symlinks(false);
    let io = |e: std::io::Error| IsolatedError::Jail(format!("cannot write diff: {e}"));
    for (mount, upper) in uppers {
        let mut stack = vec![upper.clone()];
        while let Some(dir) = stack.pop() {
            let mut entries: Vec<_> = std::fs::read_dir(&dir).into_iter().flatten().flatten().collect();
            entries.sort_by_key(|e| e.file_name());
            for e in entries {
                let host = e.path();
                let rel = host.strip_prefix(upper).unwrap_or(&host);
                let name = mount.path.join(rel);
                let name = name.strip_prefix("/").unwrap_or(&name).to_path_buf();
                let Ok(meta) = std::fs::symlink_metadata(&host) else {
                    continue;
                };
                if meta.is_dir() && is_opaque(&host) {
                    tar.append_pax_extensions([("SCHILY.xattr.trusted.overlay.opaque", &b"y"[..])])
                        .map_err(io)?;
                }
                if is_whiteout(&meta) {
                    let mut h = tar::Header::new_gnu();
                    h.set_entry_type(tar::EntryType::Char);
                    h.set_device_major(0).map_err(io)?;
                    h.set_device_minor(0).map_err(io)?;
                    h.set_size(0);
                    h.set_mode(0);
                    h.set_mtime(meta.mtime().max(0) as u64);
                    tar.append_data(&mut h, &name, std::io::empty()).map_err(io)?;
                } else {
                    tar.append_path_with_name(&host, &name).map_err(io)?;
                }
                if meta.is_dir() {
                    stack.push(host);
                }
            }
        }
    }
    let gz = tar.into_inner().map_err(io)?;
    let mut out = gz.finish().map_err(io)?;
    out.flush().map_err(io)?;
    Ok(())
}

/// `POST …/commit`: applies every persistent overlay's upper to its lower with overlay
/// semantics: files replace (each atomically: copied beside the target, then renamed),
/// whiteouts delete, opaque directories replace the whole lower directory. The upper is then
/// emptied, so the merged view stays the same. Returns how many entries were applied.
///
/// The running jail's overlay caches entries it has already looked up; runs after a commit
/// see the committed lower, and a commit while a run writes is not atomic as a whole.
pub fn commit(session: &Session) -> Result<u64, IsolatedError> {
    let mut applied = 0;
    let mut any = false;
    for mount in session.mounts() {
        let Some(upper) = &mount.upper else {
            continue;
        };
        any = true;
        applied += apply_dir(upper, &mount.path)?;
        // Empty the upper; the lower now holds everything.
        for e in std::fs::read_dir(upper).into_iter().flatten().flatten() {
            let p = e.path();
            let _ = if p.is_dir() && !p.is_symlink() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
        }
    }
    if !any {
        return Err(IsolatedError::NothingPersisted);
    }
    Ok(applied)
}

fn apply_dir(upper: &Path, lower: &Path) -> Result<u64, IsolatedError> {
    let io = |what: &'static str, p: &Path| {
        let p = p.to_path_buf();
        move |e| IsolatedError::Files(FilesError::io(what, &p)(e))
    };
    let mut n = 0;
    let mut entries: Vec<_> = std::fs::read_dir(upper)
        .map_err(io("read", upper))?
        .flatten()
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let src = e.path();
        let dst = lower.join(e.file_name());
        let meta = std::fs::symlink_metadata(&src).map_err(io("stat", &src))?;
        let existing = std::fs::symlink_metadata(&dst).ok();
        n += 1;
        if is_whiteout(&meta) {
            match existing {
                Some(m) if m.is_dir() => std::fs::remove_dir_all(&dst).map_err(io("remove", &dst))?,
                Some(_) => std::fs::remove_file(&dst).map_err(io("remove", &dst))?,
                None => {}
            }
            continue;
        }
        if meta.is_dir() {
            let opaque = is_opaque(&src);
            match existing {
                Some(m) if m.is_dir() && opaque => {
                    std::fs::remove_dir_all(&dst).map_err(io("remove", &dst))?;
                    std::fs::create_dir(&dst).map_err(io("mkdir", &dst))?;
                }
                Some(m) if m.is_dir() => {}
                Some(_) => {
                    std::fs::remove_file(&dst).map_err(io("remove", &dst))?;
                    std::fs::create_dir(&dst).map_err(io("mkdir", &dst))?;
                }
                None => std::fs::create_dir(&dst).map_err(io("mkdir", &dst))?,
            }
            let _ = std::fs::set_permissions(&dst, meta.permissions());
            let _ = std::os::unix::fs::lchown(&dst, Some(meta.uid()), Some(meta.gid()));
            n += apply_dir(&src, &dst)?;
            continue;
        }
        if let Some(m) = &existing {
            if m.is_dir() {
                std::fs::remove_dir_all(&dst).map_err(io("remove", &dst))?;
            }
        }
        // Atomic per file: a temp beside the target, renamed over it.
        let tmp = lower.join(format!(".execd-commit-{}", uuid::Uuid::new_v4().simple()));
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&src).map_err(io("readlink", &src))?;
            std::os::unix::fs::symlink(target, &tmp).map_err(io("symlink", &tmp))?;
        } else {
            std::fs::copy(&src, &tmp).map_err(io("copy", &tmp))?;
            let _ = std::fs::File::open(&tmp).and_then(|f| f.sync_all());
        }
        let _ = std::os::unix::fs::lchown(&tmp, Some(meta.uid()), Some(meta.gid()));
        if let Err(e) = std::fs::rename(&tmp, &dst) {
            let _ = std::fs::remove_file(&tmp);
            return Err(io("rename", &dst)(e));
        }
    }
    Ok(n)
}
