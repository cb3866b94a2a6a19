//! The lifecycle plane (sandboxd): sandbox create/list/get/patch/renew, endpoints, diagnostics.
//!
//! Field names are the contract's camelCase; requests also accept the snake_case spellings the
//! upstream server takes. Null and absent optional fields are omitted from responses, as
//! upstream's `response_model_exclude_none` does. Timestamps are RFC 3339 UTC strings (see
//! [`time`](super::time)).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST /sandboxes`. Fields sandboxd does not implement on Docker are still parsed so that
/// validation can reject them by name instead of silently ignoring them.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateSandboxRequest {
    /// A display name (sandboxd's addition): up to 128 printable characters, not unique;
    /// `GET /sandboxes?name=` finds it.
    pub name: Option<String>,
    /// The container image.
    pub image: Option<ImageSpec>,
    /// Create from a snapshot (`GET /snapshots`): its image, and the source sandbox's
    /// entrypoint and environment unless given here. Exclusive with `image`.
    #[serde(alias = "snapshot_id")]
    pub snapshot_id: Option<String>,
    /// Create from a template (Kubernetes only upstream).
    #[serde(alias = "template_id")]
    pub template_id: Option<String>,
    /// With `templateId`: the version to use (default: the latest).
    #[serde(alias = "template_version")]
    pub template_version: Option<u32>,
    /// Scheduling constraint `{os, arch}`.
    pub platform: Option<PlatformSpec>,
    /// Seconds until expiry (≥ 60); null or absent means manual cleanup.
    #[schema(value_type = Option<u64>)]
    pub timeout: Option<serde_json::Value>,
    /// `{cpu, memory, pids, gpu}` as Kubernetes-style quantities.
    #[serde(alias = "resource_limits")]
    #[schema(value_type = Option<BTreeMap<String, String>>)]
    pub resource_limits: Option<BTreeMap<String, serde_json::Value>>,
    /// Environment of the sandbox; null values are dropped.
    pub env: Option<BTreeMap<String, Option<String>>>,
    /// User labels, stored as container labels.
    pub metadata: Option<BTreeMap<String, String>>,
    /// The sandbox's main process; required with `image`.
    pub entrypoint: Option<Vec<String>>,
    /// Egress policy (needs the egress sidecar, which sandboxd does not run).
    #[serde(alias = "network_policy")]
    #[schema(value_type = Option<Object>)]
    pub network_policy: Option<serde_json::Value>,
    /// Credential proxy (needs `networkPolicy`).
    #[serde(alias = "credential_proxy")]
    #[schema(value_type = Option<Object>)]
    pub credential_proxy: Option<serde_json::Value>,
    /// Gateway-signed access (Kubernetes only).
    #[serde(alias = "secure_access")]
    pub secure_access: Option<bool>,
    /// Volumes to mount.
    pub volumes: Option<Vec<Volume>>,
    /// Free-form switches; `bootstrap.execd.isolation=enable` asks for isolated sessions.
    pub extensions: Option<BTreeMap<String, String>>,
    /// Lifecycle hooks: `{preStart: {command: [argv], timeoutSeconds?}}`, run by execd before
    /// the entrypoint (the sandbox is `Pending` meanwhile). Kubernetes only upstream;
    /// `periodic` hooks are refused.
    #[schema(value_type = Option<Object>)]
    pub lifecycle: Option<serde_json::Value>,
    /// How `POST /sandboxes/{id}/pause` pauses it (OSEP-0008's field, with sandboxd's
    /// `Freeze`): default `{"snapshotType": "Freeze"}`.
    #[serde(alias = "pause_policy")]
    pub pause_policy: Option<PausePolicy>,
    /// `/workspace` in a volume of the sandbox's own (sandboxd's addition): `{persistent:
    /// true, size?: "10Gi"}`. It survives a Rootfs pause (on Kubernetes it is all that does)
    /// and is removed with the sandbox.
    pub workspace: Option<WorkspaceSpec>,
}

/// `workspace`: `{persistent, size?}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkspaceSpec {
    /// Keep `/workspace` in a volume of its own (Kubernetes: the PersistentVolumeClaim
    /// `sbx-<id>-ws`; Docker: the named volume `sandboxd-ws-<id>`). Default false: it lives in
    /// the sandbox's own filesystem.
    #[serde(default)]
    pub persistent: bool,
    /// Its size as a quantity (`10Gi`), only with `persistent`: what the Kubernetes claim
    /// requests (default `1Gi`); Docker's local volumes have no size and ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
}

/// How a sandbox pauses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum PauseMode {
    /// Freeze every process (`docker pause`): memory and processes are kept; the sandbox
    /// keeps its memory while paused.
    #[default]
    Freeze,
    /// Commit the filesystem to an image, keep named volumes, remove the container: no
    /// compute while paused; processes (and their memory) start afresh on resume.
    Rootfs,
}

/// `pausePolicy`: `{snapshotType, suspendExpiry?}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PausePolicy {
    /// `Freeze` (default) or `Rootfs`.
    #[serde(alias = "snapshot_type")]
    pub snapshot_type: PauseMode,
    /// Stop the expiry clock while the sandbox is Rootfs-paused (it holds no compute then);
    /// it runs on from where it stopped at resume. Default false: the clock runs, as upstream.
    #[serde(default, alias = "suspend_expiry", skip_serializing_if = "std::ops::Not::not")]
    pub suspend_expiry: bool,
}

/// The optional body of `POST /sandboxes/{id}/pause`: this pause's mode instead of the
/// sandbox's `pausePolicy.snapshotType`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PauseRequest {
    /// `Freeze` or `Rootfs`.
    #[serde(default, alias = "snapshot_type")]
    pub snapshot_type: Option<PauseMode>,
}

/// `{uri, auth?}`.
#[derive(Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct ImageSpec {
    /// Image reference, e.g. `python:3.12`.
    pub uri: String,
    /// Registry credentials `{username, password}`, used to pull the image (Docker: the
    /// engine's pull; Kubernetes: a per-sandbox pull Secret). Never echoed, stored or logged.
    #[serde(default, skip_serializing)]
    #[schema(value_type = Option<Object>)]
    pub auth: Option<serde_json::Value>,
}

/// Hides the credentials, so that a logged request cannot leak them.
impl std::fmt::Debug for ImageSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageSpec")
            .field("uri", &self.uri)
            .field("auth", &self.auth.as_ref().map(|_| "<hidden>"))
            .finish()
    }
}

/// `{os, arch}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PlatformSpec {
    /// `linux` or `windows`.
    pub os: String,
    /// `amd64` or `arm64`.
    pub arch: String,
}

/// One volume of `CreateSandboxRequest.volumes`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Volume {
    /// A DNS label naming the volume.
    pub name: String,
    /// A bind of a host directory (must be under an allowed prefix).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<HostVolume>,
    /// A named Docker volume (created when missing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc: Option<PvcVolume>,
    /// Object storage (not supported by sandboxd).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub ossfs: Option<serde_json::Value>,
    /// Absolute path inside the sandbox.
    #[serde(alias = "mount_path")]
    pub mount_path: String,
    /// Mount read-only.
    #[serde(default, alias = "read_only")]
    pub read_only: bool,
    /// A relative path inside the volume to mount instead of its root.
    #[serde(default, alias = "sub_path", skip_serializing_if = "Option::is_none")]
    pub sub_path: Option<String>,
}

/// `{path}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HostVolume {
    /// Absolute host path.
    pub path: String,
}

/// `{claimName, ...}`; on Docker a named volume.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PvcVolume {
    /// The volume name.
    #[serde(alias = "claim_name")]
    pub claim_name: String,
}

/// `{state, reason?, message?, lastTransitionAt?}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SandboxStatus {
    /// `Pending`, `Running`, `Paused`, `Stopping`, `Terminated`, `Failed`, ...
    pub state: String,
    /// Machine-readable cause, e.g. `CONTAINER_RUNNING`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Human-readable detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the state last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_at: Option<String>,
}

/// A sandbox as `GET /sandboxes/{id}` and the list return it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Sandbox {
    /// UUID.
    pub id: String,
    /// The image it was created from (absent for one made from a snapshot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageSpec>,
    /// The snapshot it was made from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
    /// Echo of the requested platform.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<PlatformSpec>,
    /// Current state.
    pub status: SandboxStatus,
    /// User labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
    /// The entrypoint as requested.
    pub entrypoint: Vec<String>,
    /// When it expires; absent for manual cleanup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// When it was created.
    pub created_at: String,
    /// The extensions it was created with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extensions: Option<BTreeMap<String, String>>,
    /// The `X-Business-Domain` it was created under (sandboxd's addition; absent when none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub business_domain: Option<String>,
    /// The template it was made from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_id: Option<String>,
    /// That template's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_name: Option<String>,
    /// That template's version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_version: Option<u32>,
    /// The display name it was given (sandboxd's addition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Who owns it: the user id of the credential that created it (`root` for the API key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The resource limits it runs with, as given (a template's merged with the request's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_limits: Option<BTreeMap<String, String>>,
    /// The lifetime it was created with, in seconds; absent for manual cleanup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
    /// Its environment as created (a template's merged with the request's). Only its owner
    /// and admins can read a sandbox at all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    /// For a sandbox acquired from a warm pool: `{mode: "pool", poolRef, state}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocation: Option<SandboxAllocation>,
    /// How it pauses (sandboxd's addition; absent for the default, Freeze).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_policy: Option<PausePolicy>,
    /// Its persistent workspace, as created (sandboxd's addition; absent when none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<WorkspaceSpec>,
}

/// `allocation` of a pool-backed sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SandboxAllocation {
    /// `pool`.
    pub mode: String,
    /// The pool it came from.
    pub pool_ref: String,
    /// `allocated`, or `released` once given back.
    pub state: String,
}

/// The 202 body of `POST /sandboxes`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateSandboxResponse {
    /// UUID.
    pub id: String,
    /// State after create (normally `Running`: create returns once execd answers).
    pub status: SandboxStatus,
    /// User labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
    /// Echo of the requested platform.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<PlatformSpec>,
    /// When it expires; absent for manual cleanup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// When it was created.
    pub created_at: String,
    /// The entrypoint as requested.
    pub entrypoint: Vec<String>,
    /// The template it was made from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_id: Option<String>,
    /// That template's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_name: Option<String>,
    /// That template's version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_version: Option<u32>,
    /// The display name it was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// For a sandbox acquired from a warm pool: `{mode: "pool", poolRef, state}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocation: Option<SandboxAllocation>,
}

/// `GET /sandboxes` answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ListSandboxesResponse {
    /// This page, newest first.
    pub items: Vec<Sandbox>,
    /// Where this page sits.
    pub pagination: Pagination,
}

/// Pagination of list answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Pagination {
    /// 1-based page number.
    pub page: u32,
    /// Items per page.
    pub page_size: u32,
    /// Items matching the filter.
    pub total_items: u64,
    /// Pages at this page size.
    pub total_pages: u64,
    /// Whether a later page exists.
    pub has_next_page: bool,
}

/// `POST /sandboxes/{id}/renew-expiration` body and answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RenewExpiration {
    /// The new expiry (RFC 3339), in the future.
    #[serde(alias = "expires_at")]
    pub expires_at: String,
}

/// `GET /sandboxes/{id}/endpoints/{port}` answer: `host:port[/path]` without a scheme, plus
/// headers every request to it must carry.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Endpoint {
    /// `host:port[/path]`.
    pub endpoint: String,
    /// Headers to send with every request (the sandbox's execd access token).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

/// The diagnostics answer (`diagnostic-api.yml`), always delivered inline.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DiagnosticContent {
    /// The sandbox.
    pub sandbox_id: String,
    /// `logs` or `events`.
    pub kind: String,
    /// The scope asked for.
    pub scope: String,
    /// Always `inline`.
    pub delivery: String,
    /// `text/plain; charset=utf-8`.
    pub content_type: String,
    /// The text.
    pub content: String,
    /// Whether older content was cut off (by `tail`, or beyond 4 MiB).
    pub truncated: bool,
    /// Bytes of `content`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_length: Option<u64>,
    /// What could not be included, and why (a section that is unavailable).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// The lifecycle error body `{code, message}`. Codes are upstream's strings
/// (`SANDBOX::NOT_FOUND`, `INVALID_API_KEY`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LifecycleError {
    /// Machine-readable code.
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
}

/// The environment variable that carries a sandbox's lifecycle hooks into it, as upstream's
/// Kubernetes provider sets it: [`Lifecycle`] as JSON. execd runs the `preStart` hook.
pub const LIFECYCLE_ENV: &str = "OPENSANDBOX_LIFECYCLE";

/// The value of [`LIFECYCLE_ENV`]: upstream's `lifecycle` with its camelCase names
/// (`{"preStart":{"command":[...],"timeoutSeconds":60}}`). Other fields, such as upstream's
/// `periodic` hooks (which sandboxd refuses), are ignored, so that execd starts whatever a
/// newer orchestrator adds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Lifecycle {
    /// Run before the entrypoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_start: Option<PreStartHook>,
}

/// `lifecycle.preStart`: a program run without a shell before the entrypoint; the sandbox is
/// not ready until it exits 0.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PreStartHook {
    /// argv.
    pub command: Vec<String>,
    /// Seconds it may take before it is killed (upstream's default: 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
}

impl PreStartHook {
    /// Seconds when the hook names none.
    pub const DEFAULT_TIMEOUT_SECONDS: u64 = 60;
}
