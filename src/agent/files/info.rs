//! Reading metadata: `FileInfo` from `lstat`, user and group names, directory listings and
//! basename glob search. Synchronous.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fs::Metadata;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::glob::Glob;
use super::{mode_to_digits, FilesError};
use crate::agent::rfc3339;
use crate::wire::files::{FileInfo, FileType};

/// Caches uid and gid lookups for one request (a listing repeats the same few owners).
#[derive(Default)]
pub struct Names {
    users: HashMap<u32, String>,
    groups: HashMap<u32, String>,
}

impl Names {
    /// The user name of `uid`, or the number when it has none.
    pub fn user(&mut self, uid: u32) -> String {
        self.users
            .entry(uid)
            .or_insert_with(|| match nix::unistd::User::from_uid(uid.into()) {
                Ok(Some(u)) => u.name,
                _ => uid.to_string(),
            })
            .clone()
    }

    /// The group name of `gid`, or the number when it has none.
    pub fn group(&mut self, gid: u32) -> String {
        self.groups
            .entry(gid)
            .or_insert_with(|| match nix::unistd::Group::from_gid(gid.into()) {
                Ok(Some(g)) => g.name,
                _ => gid.to_string(),
            })
            .clone()
    }
}

/// The uid a user name (or decimal uid) stands for.
pub fn uid_of(owner: &str) -> Result<u32, FilesError> {
    if let Ok(n) = owner.parse::<u32>() {
        return Ok(n);
    }
    match nix::unistd::User::from_name(owner) {
        Ok(Some(u)) => Ok(u.uid.as_raw()),
        _ => Err(FilesError::UnknownUser(owner.to_owned())),
    }
}

/// The gid a group name (or decimal gid) stands for.
pub fn gid_of(group: &str) -> Result<u32, FilesError> {
    if let Ok(n) = group.parse::<u32>() {
        return Ok(n);
    }
    match nix::unistd::Group::from_name(group) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        _ => Err(FilesError::UnknownGroup(group.to_owned())),
    }
}

fn time(secs: i64, nanos: i64) -> SystemTime {
    let d = Duration::new(secs.unsigned_abs(), nanos.clamp(0, 999_999_999) as u32);
    if secs >= 0 {
        UNIX_EPOCH + d
    } else {
        UNIX_EPOCH.checked_sub(d).unwrap_or(UNIX_EPOCH)
    }
}

/// The kind of an entry from its (lstat) metadata.
pub fn file_type(meta: &Metadata) -> FileType {
    let t = meta.file_type();
    if t.is_symlink() {
        FileType::Symlink
    } else if t.is_dir() {
        FileType::Directory
    } else if t.is_file() {
        FileType::File
    } else {
        debug_assert!(t.is_fifo() || t.is_socket() || t.is_block_device() || t.is_char_device());
        FileType::Other
    }
}

/// `FileInfo` of `path` from its lstat metadata.
pub fn file_info(path: &Path, meta: &Metadata, names: &mut Names) -> FileInfo {
    FileInfo {
        path: path.to_string_lossy().into_owned(),
        kind: file_type(meta),
        size: meta.len(),
        modified_at: rfc3339(time(meta.mtime(), meta.mtime_nsec())),
        created_at: rfc3339(time(meta.ctime(), meta.ctime_nsec())),
        owner: names.user(meta.uid()),
        group: names.group(meta.gid()),
        mode: mode_to_digits(meta.mode()),
    }
}

/// lstat that reports a missing entry as [`FilesError::NotFound`].
pub fn lstat(path: &Path) -> Result<Metadata, FilesError> {
    std::fs::symlink_metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => FilesError::NotFound(path.to_owned()),
        _ => FilesError::io("stat", path)(e),
    })
}

/// `GET /files/info`: the info of every path, keyed by the path as given. The first missing
/// path fails the whole request.
pub fn info(paths: Vec<(String, PathBuf)>) -> Result<BTreeMap<String, FileInfo>, FilesError> {
    let mut names = Names::default();
    let mut out = BTreeMap::new();
    for (given, path) in paths {
        let meta = lstat(&path)?;
        out.insert(given, file_info(&path, &meta, &mut names));
    }
    Ok(out)
}

/// `GET /directories/list`: entries under `root` down to `depth` levels, in lexical order by
/// name, each directory followed by its own entries. Symlinks are listed, never followed.
pub fn list(root: &Path, depth: u32) -> Result<Vec<FileInfo>, FilesError> {
    let meta = lstat(root)?;
    if meta.file_type().is_symlink() {
        return Err(FilesError::SymlinkRoot(root.to_owned()));
    }
    if !meta.is_dir() {
        return Err(FilesError::NotDirectory(root.to_owned()));
    }
    let mut out = Vec::new();
    let mut names = Names::default();
    if depth > 0 {
        walk(root, depth, &mut |path, meta| {
            out.push(file_info(path, meta, &mut names));
            Ok(())
        })?;
    }
    Ok(out)
}

/// What a [`walk`] visitor is handed for each entry.
pub type Visitor<'a> = dyn FnMut(&Path, &Metadata) -> Result<(), FilesError> + 'a;

/// Visits the entries below `dir`, depth-first in lexical order, down to `depth` levels,
/// without following symlinks. Entries that vanish mid-walk are skipped; an unreadable
/// subdirectory is skipped too, but an unreadable `dir` itself is an error, and so is an error
/// from the visitor.
pub fn walk(dir: &Path, depth: u32, visit: &mut Visitor<'_>) -> Result<(), FilesError> {
    let entries = sorted_entries(dir)?;
    walk_entries(dir, entries, depth, visit)
}

fn walk_entries(
    dir: &Path,
    entries: Vec<OsString>,
    depth: u32,
    visit: &mut Visitor<'_>,
) -> Result<(), FilesError> {
    for name in entries {
        let path = dir.join(&name);
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        visit(&path, &meta)?;
        if meta.is_dir() && depth > 1 {
            match sorted_entries(&path) {
                Ok(sub) => walk_entries(&path, sub, depth - 1, visit)?,
                Err(e) => tracing::debug!(error = %e, "skipping unreadable directory"),
            }
        }
    }
    Ok(())
}

fn sorted_entries(dir: &Path) -> Result<Vec<OsString>, FilesError> {
    let read = std::fs::read_dir(dir).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => FilesError::NotFound(dir.to_owned()),
        _ => FilesError::io("read directory", dir)(e),
    })?;
    let mut names: Vec<_> = read.filter_map(|e| e.ok().map(|e| e.file_name())).collect();
    names.sort();
    Ok(names)
}

/// A compiled search pattern, matched against base names (see [`super::glob`]).
pub struct Pattern(Glob);

impl Pattern {
    /// Compiles `pattern`; an empty pattern means `**`.
    pub fn new(pattern: &str) -> Result<Self, FilesError> {
        let pattern = if pattern.is_empty() { "**" } else { pattern };
        Glob::new(pattern)
            .map(Pattern)
            .map_err(|source| FilesError::Pattern {
                pattern: pattern.to_owned(),
                source,
            })
    }

    /// Whether `name` (a base name) matches; a name that is not UTF-8 is compared with
    /// replacement characters in place of its bad bytes.
    pub fn matches(&self, name: &std::ffi::OsStr) -> bool {
        self.0.matches(&name.to_string_lossy())
    }
}

/// `GET /files/search`: every non-directory below `root` whose base name matches.
pub fn search(root: &Path, pattern: &Pattern) -> Result<Vec<FileInfo>, FilesError> {
    let meta = lstat(root)?;
    if !meta.is_dir() {
        return Err(FilesError::NotDirectory(root.to_owned()));
    }
    let mut out = Vec::new();
    let mut names = Names::default();
    walk(root, u32::MAX, &mut |path, meta| {
        if !meta.is_dir() && path.file_name().is_some_and(|n| pattern.matches(n)) {
            out.push(file_info(path, meta, &mut names));
        }
        Ok(())
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(infos: &[FileInfo], root: &Path) -> Vec<String> {
        infos
            .iter()
            .map(|i| {
                Path::new(&i.path)
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect()
    }

    fn tree() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for f in ["b/x", "b/c/deep.py", "a.py", "a.txt", "x", "z/x"] {
            let p = d.path().join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, f).unwrap();
        }
        std::os::unix::fs::symlink(d.path().join("b"), d.path().join("link")).unwrap();
        d
    }

    #[test]
    fn list_depth_and_order() {
        let d = tree();
        assert!(list(d.path(), 0).unwrap().is_empty());
        assert_eq!(
            names(&list(d.path(), 1).unwrap(), d.path()),
            ["a.py", "a.txt", "b", "link", "x", "z"]
        );
        assert_eq!(
            names(&list(d.path(), 2).unwrap(), d.path()),
            ["a.py", "a.txt", "b", "b/c", "b/x", "link", "x", "z", "z/x"]
        );
        assert!(matches!(
            list(&d.path().join("link"), 1),
            Err(FilesError::SymlinkRoot(_))
        ));
        assert!(matches!(
            list(&d.path().join("x"), 1),
            Err(FilesError::NotDirectory(_))
        ));
        assert!(matches!(
            list(&d.path().join("nope"), 1),
            Err(FilesError::NotFound(_))
        ));
    }

    #[test]
    fn search_matches_base_names() {
        let d = tree();
        let s = |p: &str| names(&search(d.path(), &Pattern::new(p).unwrap()).unwrap(), d.path());
        assert_eq!(s("*.py"), ["a.py", "b/c/deep.py"]);
        assert_eq!(s("**/x"), ["b/x", "x", "z/x"]);
        assert_eq!(s("{a.txt,deep.py}"), ["a.txt", "b/c/deep.py"]);
        assert_eq!(s("**").len(), 7, "every non-directory, the symlink included");
        assert!(Pattern::new("[").is_err());
    }
}
