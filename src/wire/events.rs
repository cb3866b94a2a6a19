//! sandboxd's event journal (`GET /v1/sandboxes/{id}/events`) and containers view
//! (`/v1/containers`): what happened to a sandbox, and every container sandboxd manages.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::lifecycle::Pagination;

/// One event of a sandbox's journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SandboxEvent {
    /// Its place in the journal; grows, never reused (the SSE `id:`).
    pub seq: i64,
    /// When (RFC 3339).
    pub at: String,
    /// What happened: `Created`, `Starting`, `Started`, `PreStartSucceeded`, `PreStartFailed`,
    /// `Ready`, `ProbeFailed`, `StartupFailed`, `Paused`, `PauseFailed`, `Resumed`, `Renewed`,
    /// `MetadataUpdated`, `Allocated` (from a warm pool), `Released` (to it), `SnapshotTaken`,
    /// `SnapshotFailed`, `Forked`, `Expired`,
    /// `Exited` (with `exitCode`), `OOMKilled`, `Killed`, `Deleted`, or `Note` (a line of an
    /// older sandboxd's log).
    #[serde(rename = "type")]
    pub kind: String,
    /// A short machine-readable why (`PRE_START_FAILED`; `Completed`/`Error` on `Exited`; the
    /// signal on `Killed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// For people.
    pub message: String,
    /// Who reported it: `sandboxd`, `docker` or `kubernetes`.
    pub source: String,
    /// The exit code, on `Exited`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    /// The `X-Request-ID` of the request that caused it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// A page of a sandbox's journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SandboxEventList {
    /// Events after `since`, oldest first.
    pub items: Vec<SandboxEvent>,
    /// The `since` of the next page: the last item's `seq` (or the request's `since`).
    pub next_since: i64,
}

/// A container sandboxd manages (seed 004's container view).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContainerInfo {
    /// The runtime's id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// `docker`.
    pub runtime: String,
    /// The sandbox it serves, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox_id: Option<String>,
    /// The warm pool it came from (idle or allocated), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_ref: Option<String>,
    /// What it is for: `sandbox`, `pool-member` (idle in a warm pool), `template-build` (also
    /// `prepull` once prepulls run containers).
    pub role: String,
    /// Image reference.
    pub image: String,
    /// `Created`, `Running`, `Paused`, `Removing`, `Exited` or `Unknown`.
    pub state: String,
    /// Exit code, once exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    /// Whether the kernel's OOM killer ended it, once exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oom_killed: Option<bool>,
    /// Its address on the runtime's network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// Creation time (RFC 3339).
    pub created_at: String,
    /// Last start (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// Its limits.
    pub resources: ContainerResources,
    /// What it uses now (one sample; single-container reads of a running container only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<ContainerUsage>,
}

/// A container's limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContainerResources {
    /// CPUs (`"0.5"`), when limited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    /// Memory in bytes, when limited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<i64>,
}

/// A sample of what a running container uses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContainerUsage {
    /// CPU in percent of one CPU over the sample (200: two CPUs busy).
    pub cpu_percent: f64,
    /// Memory in use, bytes (reclaimable page cache excluded).
    pub memory_bytes: u64,
    /// The memory limit, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit_bytes: Option<u64>,
    /// Processes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
    /// When sampled (RFC 3339).
    pub sampled_at: String,
}

/// `GET /v1/containers` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ListContainersResponse {
    /// One page, newest first.
    pub items: Vec<ContainerInfo>,
    /// Where the page sits.
    pub pagination: Pagination,
}
