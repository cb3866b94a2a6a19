//! Snapshots (upstream's `Snapshot` resource) and forks (sandboxd's addition): a snapshot is
//! a sandbox's filesystem saved as an image that sandboxes can be created from; a fork takes
//! one snapshot of a sandbox and creates several sandboxes from it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::lifecycle::{CreateSandboxResponse, Pagination};

/// `POST /sandboxes/{id}/snapshots` (the body is optional).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateSnapshotRequest {
    /// A name for people: 1–128 printable characters, not unique.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    /// `snap-<uuid>`.
    pub id: String,
    /// The sandbox it was taken of (which may be gone since).
    pub sandbox_id: String,
    /// Its name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Where it is.
    pub status: SnapshotStatus,
    /// When it was asked for.
    pub created_at: String,
}

/// `{state, reason?, message?, lastTransitionAt?}`: `state` is `Creating`, `Ready`, `Failed`
/// or `Deleting`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotStatus {
    /// `Creating`, `Ready`, `Failed` or `Deleting`.
    pub state: String,
    /// Machine-readable cause: `snapshot_accepted`, `snapshot_ready`,
    /// `snapshot_capture_failed`, `snapshot_deleting` (upstream's examples).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// For people (why it failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the state last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_at: Option<String>,
}

/// `GET /snapshots`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ListSnapshotsResponse {
    /// This page, newest first.
    pub items: Vec<Snapshot>,
    /// Where this page sits.
    pub pagination: Pagination,
}

/// `POST /sandboxes/{id}/fork`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ForkRequest {
    /// How many sandboxes to make: 1–20 (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    /// Metadata of the new sandboxes, over the source's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
}

/// The answer of a fork: the snapshot it took and the sandboxes made from it, all running.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ForkResponse {
    /// The snapshot every new sandbox was made from (listed under `/snapshots`; it can be
    /// deleted once they are gone).
    pub snapshot_id: String,
    /// The new sandboxes, as `POST /sandboxes` answers each.
    pub items: Vec<CreateSandboxResponse>,
}
