//! Files and directories: path resolution, metadata, listing and search, modifications,
//! streamed upload and download, and tar archives.
//!
//! Everything here is synchronous and blocking; the HTTP layer runs it through
//! [`identity::run`], which puts it on a blocking thread (with the caller's fsuid/fsgid when
//! the request came through `/v1/filesystem/{uid}/{gid}`). No axum here.

pub mod archive;
pub mod atomic;
pub mod buffers;
pub mod download;
pub mod glob;
pub mod identity;
pub mod info;
pub mod ops;
pub mod upload;

use std::io;
use std::path::{Path, PathBuf};

use super::env::{self, EnvMap, ExpandError};

/// Resolves request paths the way the contract says: `~`, `$VAR` and `${VAR}` expand against
/// execd's own environment, and relative paths are taken from execd's working directory.
pub struct Files {
    /// execd's environment (secrets removed), read once at start.
    env: EnvMap,
    /// execd's working directory.
    cwd: PathBuf,
}

impl Files {
    /// A resolver over this environment and working directory.
    pub fn new(env: EnvMap, cwd: PathBuf) -> Self {
        Self { env, cwd }
    }

    /// The absolute path a request's `raw` path names. `..` is kept as written: this is a
    /// resolver, not a confinement (the caller may name any path execd can reach).
    pub fn resolve(&self, raw: &str) -> Result<PathBuf, FilesError> {
        if raw.is_empty() {
            return Err(FilesError::EmptyPath);
        }
        if raw.contains('\0') {
            return Err(FilesError::NulInPath);
        }
        let expanded =
            env::expand_path(raw, |k| self.env.get(k).cloned()).map_err(|source| FilesError::Expand {
                path: raw.to_owned(),
                source,
            })?;
        Ok(self.cwd.join(expanded))
    }
}

/// Why a file operation failed. I/O failures keep the operation, the path and the kernel's
/// error; the HTTP layer maps the error number to a status (ENOENT 404, EACCES/EPERM 403,
/// ENOSPC/EDQUOT 507).
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    /// A path parameter is empty.
    #[error("path is empty")]
    EmptyPath,
    /// A path contains a NUL byte.
    #[error("path contains a NUL byte")]
    NulInPath,
    /// `$VAR` or `~` could not be expanded.
    #[error("cannot expand {path:?}: {source}")]
    Expand {
        /// The path as given.
        path: String,
        /// What was missing.
        source: ExpandError,
    },
    /// The entry does not exist.
    #[error("no such file or directory: {}", .0.display())]
    NotFound(PathBuf),
    /// A file operation was asked of a directory.
    #[error("{} is a directory", .0.display())]
    IsDirectory(PathBuf),
    /// `DELETE /files` named a directory (that is `DELETE /directories`).
    #[error("{} is a directory", .0.display())]
    RemoveDirectory(PathBuf),
    /// A directory operation was asked of something else.
    #[error("{} is not a directory", .0.display())]
    NotDirectory(PathBuf),
    /// `GET /directories/list` on a symlink.
    #[error("{} is a symbolic link; list the directory it points to", .0.display())]
    SymlinkRoot(PathBuf),
    /// The destination of a move exists.
    #[error("{} already exists", .0.display())]
    Exists(PathBuf),
    /// `mode` is not one to four octal digits.
    #[error("mode {0} is not octal digits (e.g. 644, 755, 4755)")]
    BadMode(u32),
    /// `owner` names no user.
    #[error("unknown user {0:?}")]
    UnknownUser(String),
    /// `group` names no group.
    #[error("unknown group {0:?}")]
    UnknownGroup(String),
    /// A search pattern is not a valid glob.
    #[error("invalid pattern {pattern:?}: {source}")]
    Pattern {
        /// The pattern as given.
        pattern: String,
        /// What the glob parser said.
        source: glob::GlobError,
    },
    /// `old` of a replacement is empty.
    #[error("old text to replace in {} is empty", .0.display())]
    EmptyOld(PathBuf),
    /// `DELETE /directories?path=/`.
    #[error("refusing to remove /")]
    RemoveRoot,
    /// The fsuid/fsgid of the identity could not be taken.
    #[error("cannot act as uid {uid} gid {gid}: execd lacks the privilege")]
    Identity {
        /// Requested uid.
        uid: u32,
        /// Requested gid.
        gid: u32,
    },
    /// The blocking worker died (a panic); the details are in the log.
    #[error("file worker failed")]
    Worker,
    /// An upload or archive request broke off or was malformed mid-stream.
    #[error("{0}")]
    Body(String),
    /// An archive entry names a path outside the target directory (absolute, `..`, or through
    /// a symlink).
    #[error("archive entry {0:?} escapes the target directory")]
    EntryEscapes(String),
    /// An archive entry (or a hard link's target) lies below a symlink in the target
    /// directory; extraction never writes through one, and stops at that entry.
    #[error(
        "archive entry {entry:?} lies below the symlink {link:?}; extraction never follows symlinks and stopped there"
    )]
    EntryThroughSymlink {
        /// The entry's name in the archive.
        entry: String,
        /// The symlink, relative to the target directory.
        link: String,
    },
    /// The archive is not a readable tar (or gzip) stream.
    #[error("invalid archive: {0}")]
    Archive(#[source] io::Error),
    /// The kernel refused an operation.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What was being done (`open`, `rename`, …).
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// The kernel's answer.
        source: io::Error,
    },
}

impl FilesError {
    /// A closure turning an `io::Error` into [`FilesError::Io`], for `map_err`.
    pub fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> FilesError + 'a {
        move |source| FilesError::Io {
            op,
            path: path.to_owned(),
            source,
        }
    }
}

/// Octal digits written in decimal (`644`) to permission bits (`0o644`).
pub fn mode_from_digits(digits: u32) -> Result<u32, FilesError> {
    let mut bits = 0u32;
    let mut rest = digits;
    let mut place = 0;
    while rest > 0 {
        let d = rest % 10;
        if d > 7 || place >= 4 {
            return Err(FilesError::BadMode(digits));
        }
        bits |= d << (3 * place);
        rest /= 10;
        place += 1;
    }
    Ok(bits)
}

/// Permission bits (`0o644`) to octal digits written in decimal (`644`).
pub fn mode_to_digits(bits: u32) -> u32 {
    let mut out = 0u32;
    let mut place = 1u32;
    let mut rest = bits & 0o7777;
    while rest > 0 {
        out += (rest & 7) * place;
        rest >>= 3;
        place *= 10;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn mode_digits() {
        assert_eq!(mode_from_digits(644).unwrap(), 0o644);
        assert_eq!(mode_from_digits(4755).unwrap(), 0o4755);
        assert_eq!(mode_from_digits(0).unwrap(), 0);
        assert!(matches!(mode_from_digits(789), Err(FilesError::BadMode(789))));
        assert!(matches!(mode_from_digits(17777), Err(FilesError::BadMode(_))));
        assert_eq!(mode_to_digits(0o755), 755);
        assert_eq!(mode_to_digits(0o100644), 644, "file type bits are dropped");
    }

    #[test]
    fn resolves_like_the_contract() {
        let env: EnvMap = [("HOME", "/root"), ("D", "data")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let files = Files::new(env, PathBuf::from("/work"));
        assert_eq!(files.resolve("~/x").unwrap(), PathBuf::from("/root/x"));
        assert_eq!(files.resolve("$D/y").unwrap(), PathBuf::from("/work/data/y"));
        assert_eq!(files.resolve("/abs/${D}").unwrap(), PathBuf::from("/abs/data"));
        assert!(matches!(files.resolve(""), Err(FilesError::EmptyPath)));
        assert!(matches!(files.resolve("$NOPE/x"), Err(FilesError::Expand { .. })));
        assert!(matches!(files.resolve("a\0b"), Err(FilesError::NulInPath)));
    }

    proptest! {
        #[test]
        fn mode_digits_round_trip(bits in 0u32..=0o7777) {
            prop_assert_eq!(mode_from_digits(mode_to_digits(bits)).unwrap(), bits);
        }

        #[test]
        fn resolved_paths_are_absolute(raw in "[a-z~/$.{}_]{1,16}") {
            let env: EnvMap = [("HOME".to_string(), "/h".to_string())].into();
            let files = Files::new(env, PathBuf::from("/cwd"));
            if let Ok(p) = files.resolve(&raw) {
                prop_assert!(p.is_absolute());
            }
        }
    }
}
