//! API types of the file, directory, watch and metrics routes. Field names follow the
//! OpenSandbox contract (`FileInfo`, `Permission`, `FileMetadata`, `Metrics`); the watch event
//! and the archive result are ours.
//!
//! Pure data, no I/O.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Kind of a filesystem entry, from `lstat` (symlinks are not followed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FileType {
    /// A regular file.
    File,
    /// A directory.
    Directory,
    /// A symbolic link (never followed).
    Symlink,
    /// A socket, FIFO or device.
    Other,
}

/// Metadata of one filesystem entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FileInfo {
    /// Absolute path.
    pub path: String,
    /// Entry kind.
    #[serde(rename = "type")]
    pub kind: FileType,
    /// Size in bytes (of the link itself for symlinks).
    pub size: u64,
    /// RFC 3339 modification time.
    pub modified_at: String,
    /// RFC 3339 inode change time (ctime), as upstream reports it under this name.
    pub created_at: String,
    /// Owner's user name, or the numeric uid when it has no name.
    pub owner: String,
    /// Group name, or the numeric gid when it has no name.
    pub group: String,
    /// Permission bits as octal digits written in decimal: 0o755 is `755`, 0o4755 is `4755`.
    pub mode: u32,
}

/// Ownership and mode to apply (`POST /files/permissions`, `POST /directories`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Permission {
    /// User name or numeric uid; absent or null leaves the owner alone.
    #[serde(default)]
    pub owner: Option<String>,
    /// Group name or numeric gid; absent or null leaves the group alone.
    #[serde(default)]
    pub group: Option<String>,
    /// Octal digits written in decimal (644 is 0o644); 0 or absent leaves the mode alone.
    #[serde(default)]
    pub mode: u32,
}

/// The `metadata` part of an upload, paired by position with the `file` part after it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FileMetadata {
    /// Target path; `~`, `$VAR` and `${VAR}` are expanded. Required.
    #[serde(default)]
    pub path: String,
    /// User name or numeric uid; null keeps the existing owner (or the writer's, for a new file).
    #[serde(default)]
    pub owner: Option<String>,
    /// Group name or numeric gid; null keeps the existing group (or the writer's).
    #[serde(default)]
    pub group: Option<String>,
    /// Octal digits written in decimal; 0 keeps the existing file's mode, or 0666 minus the
    /// umask for a new file.
    #[serde(default)]
    pub mode: u32,
}

/// One move of `POST /files/mv`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RenameFileItem {
    /// Existing path.
    pub src: String,
    /// New path; must not exist. Its parent directory is created.
    pub dest: String,
}

/// One file's replacement of `POST /files/replace`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReplaceFileContentItem {
    /// Text to replace; must not be empty.
    pub old: String,
    /// Replacement text.
    pub new: String,
}

/// Result of one file's replacement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReplaceFileContentResult {
    /// Occurrences of `old` in the original content, all of which were replaced.
    #[serde(rename = "replacedCount")]
    pub replaced_count: u64,
}

/// Answer of `POST /files/archive` (beyond the contract).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ArchiveExtractResult {
    /// Regular files written.
    pub files: u64,
    /// Directories created or updated.
    pub directories: u64,
    /// Symbolic and hard links created.
    pub links: u64,
    /// Entries skipped because their kind is not supported (devices, FIFOs).
    pub skipped: u64,
    /// Bytes of file content written.
    pub bytes: u64,
}

/// Kind of a file watch event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WatchEventType {
    /// The entry appeared (created, or moved in from outside the watched tree).
    Created,
    /// The content or metadata changed.
    Modified,
    /// The entry disappeared (deleted, or moved out of the watched tree).
    Deleted,
    /// The entry was renamed within the watched tree; `old_path` is where it was.
    Renamed,
    /// Events were lost (kernel queue overflow, or a resume from before the kept history);
    /// the client should rescan.
    Overflow,
}

/// One event of `GET /files/watch` (beyond the contract), sent as the `data:` of an SSE event
/// whose `id:` can be passed back as `Last-Event-ID`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WatchEvent {
    /// What happened.
    #[serde(rename = "type")]
    pub kind: WatchEventType,
    /// Absolute path of the entry (the watched path for `overflow`).
    pub path: String,
    /// Previous path of a renamed entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_path: Option<String>,
    /// Whether the entry is a directory.
    pub is_dir: bool,
    /// Unix milliseconds.
    pub timestamp: i64,
}

/// System resource usage (`GET /metrics`). The first five fields are the contract's; where a
/// cgroup limit applies, they describe the cgroup rather than the host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Metrics {
    /// CPUs available: the cgroup CPU quota when one is set, else the CPUs execd may run on.
    pub cpu_count: f64,
    /// CPU in use over the last sampling interval, 0–100 percent of `cpu_count`.
    pub cpu_used_pct: f64,
    /// Memory available in MiB: the cgroup memory limit when one is set, else the host's.
    pub mem_total_mib: f64,
    /// Memory in use in MiB, page cache that can be dropped excluded.
    pub mem_used_mib: f64,
    /// Unix milliseconds when the figures were read.
    pub timestamp: i64,
    /// Which cgroup figures apply: `v1`, `v2`, or `none` (host values).
    pub cgroup: String,
    /// Size of the filesystem holding execd's working directory, in MiB.
    pub disk_total_mib: f64,
    /// Used space of that filesystem, in MiB.
    pub disk_used_mib: f64,
    /// Bytes received on all interfaces but loopback, since they came up.
    pub net_rx_bytes: u64,
    /// Bytes sent on all interfaces but loopback.
    pub net_tx_bytes: u64,
    /// Processes visible to execd.
    pub process_count: u64,
    /// Load average over 1 minute.
    pub load_1: f64,
    /// Load average over 5 minutes.
    pub load_5: f64,
    /// Load average over 15 minutes.
    pub load_15: f64,
}
