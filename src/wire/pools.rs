//! sandboxd's warm pools (`/v1/pools`): upstream 1.1.1's `CreatePoolRequest`, `PoolResponse`
//! and `ListPoolsResponse` (Kubernetes-only upstream, served on Docker here), plus sandboxd's
//! additions: a pool made from a template (`templateId`), `recycleStrategy`, the `warming` and
//! `failed` counts, and the acquire request of `POST /v1/pools/{name}/acquire`.
//!
//! Upstream's request types tolerate unknown fields, as upstream does; the pod template is
//! read only as far as sandboxd uses it (the first container's image, command, args, env and
//! resource limits, and the pod's labels).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `capacitySpec`: how many members the pool keeps (upstream's CRD meanings).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolCapacitySpec {
    /// Most idle (ready, unallocated) members kept warm; the reconciler aims at this many.
    #[serde(alias = "buffer_max")]
    pub buffer_max: u32,
    /// Fewest idle members (≤ `bufferMax`).
    #[serde(alias = "buffer_min")]
    pub buffer_min: u32,
    /// Most members in all (idle, warming and allocated; ≤ the server's `--pool-max-members`).
    #[serde(alias = "pool_max")]
    pub pool_max: u32,
    /// Fewest members in all (≤ `poolMax`).
    #[serde(alias = "pool_min")]
    pub pool_min: u32,
}

/// What happens to a member when its sandbox is released.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum RecycleType {
    /// The container is removed; the reconciler warms a fresh one (the default).
    #[default]
    Delete,
    /// On Docker the same as `Delete`: a restarted container would keep the previous
    /// user's writable layer.
    Restart,
    /// The member goes back to idle as it is. Only for pools marked `dedicatedOwner`, made by
    /// an admin: unsafe across owners.
    Noop,
}

/// `recycleStrategy` (the `Pool` CRD's field).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RecycleStrategy {
    /// `Delete` (default), `Restart` or `Noop`.
    #[serde(rename = "type", default)]
    pub kind: RecycleType,
}

/// `POST /v1/pools`: upstream's request, or `templateId` in place of `template`.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreatePoolRequest {
    /// DNS-1123 name (`a-z 0-9 -`, at most 253), unique.
    pub name: String,
    /// A Kubernetes `PodTemplateSpec`; sandboxd reads the first container's `image`,
    /// `command` + `args`, `env` (`name`/`value`) and `resources.limits` (`cpu`, `memory`),
    /// and `metadata.labels` (container labels of the members). Exactly one of `template` and
    /// `templateId`.
    #[schema(value_type = Option<Object>)]
    pub template: Option<serde_json::Value>,
    /// A sandboxd template (id or name) the members are made from.
    #[serde(alias = "template_id")]
    pub template_id: Option<String>,
    /// With `templateId`: the version (default: the latest when the pool is made).
    #[serde(alias = "template_version")]
    pub template_version: Option<u32>,
    /// Capacity.
    #[serde(alias = "capacity_spec")]
    pub capacity_spec: PoolCapacitySpec,
    /// What release does to a member (default `Delete`).
    #[serde(alias = "recycle_strategy")]
    pub recycle_strategy: Option<RecycleStrategy>,
    /// Whether one owner uses the pool alone (required for `Noop` recycling).
    #[serde(alias = "dedicated_owner")]
    pub dedicated_owner: Option<bool>,
}

/// `PUT /v1/pools/{name}`: only the capacity changes (as upstream).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpdatePoolRequest {
    /// The new capacity.
    #[serde(alias = "capacity_spec")]
    pub capacity_spec: PoolCapacitySpec,
}

/// `status` of a pool: counts from sandboxd's store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolStatus {
    /// Members in all: available, warming and allocated.
    pub total: u32,
    /// Members handed out to sandboxes.
    pub allocated: u32,
    /// Members ready to be handed out (execd answered `/ping`).
    pub available: u32,
    /// The capacity's revision: 1 at create, one more per `PUT`.
    pub revision: String,
    /// Members being created and not yet answering (sandboxd's addition).
    pub warming: u32,
    /// Members that failed to warm, or died while idle, since sandboxd started (sandboxd's
    /// addition); each was replaced.
    pub failed: u32,
    /// Why the last member failed, when one did (sandboxd's addition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A pool as the routes return it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolResponse {
    /// The pool's name.
    pub name: String,
    /// Capacity.
    pub capacity_spec: PoolCapacitySpec,
    /// Counts.
    pub status: PoolStatus,
    /// When it was made.
    pub created_at: String,
    /// What release does to a member.
    pub recycle_strategy: RecycleStrategy,
    /// Whether one owner uses it alone.
    pub dedicated_owner: bool,
    /// The members' image.
    pub image: String,
    /// The template the members are made from, when made from one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_id: Option<String>,
    /// That template's version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_version: Option<u32>,
}

/// `GET /v1/pools` (upstream: no pagination).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ListPoolsResponse {
    /// Every pool, by name.
    pub items: Vec<PoolResponse>,
}

/// `POST /v1/pools/{name}/acquire`.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AcquireRequest {
    /// Seconds until the allocation expires (and the sandbox is released); absent: until
    /// released.
    #[schema(value_type = Option<u64>)]
    pub timeout: Option<serde_json::Value>,
    /// User labels of the sandbox (kept by sandboxd: the container's labels are the pool's).
    pub metadata: Option<BTreeMap<String, String>>,
    /// Environment added to every command in the sandbox (through execd's env file).
    pub env: Option<BTreeMap<String, Option<String>>>,
    /// A display name (1–128 printable characters), as `POST /sandboxes` takes it.
    pub name: Option<String>,
    /// `cpu`, `memory`, `pids` over the pool's, applied to the member live (`docker update`)
    /// before it is handed out; as `POST /sandboxes` takes them.
    #[serde(alias = "resource_limits")]
    pub resource_limits: Option<BTreeMap<String, serde_json::Value>>,
}
