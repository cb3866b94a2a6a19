//! API types of the isolated-session routes (`/v1/isolated/*`), field for field as the
//! OpenSandbox 1.1.1 clients send and read them (flat request bodies, snake_case).
//!
//! Pure data, no I/O.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Preset defaults of a session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum IsolationProfile {
    /// Overlay by default, private `/tmp`, secrets filtered from the environment.
    #[default]
    Strict,
    /// Read-write by default, the host `/tmp`, the whole environment passed through.
    Balanced,
}

/// How a path is mounted into the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MountMode {
    /// Copy-on-write view; writes land in a per-session upper directory.
    Overlay,
    /// Read-only bind.
    Ro,
    /// Read-write bind.
    Rw,
}

/// The legacy one-mount form of a session's filesystem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct IsolatedWorkspaceSpec {
    /// Absolute path, created when missing.
    pub path: String,
    /// Mount mode; the profile's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<MountMode>,
}

/// One mount of a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct IsolatedOverlaySpec {
    /// Absolute, clean path (the same inside and outside).
    pub path: String,
    /// Mount mode (default `overlay`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<MountMode>,
    /// Overlay only: keep writes in a host upper directory (default true) or on a tmpfs that
    /// dies with the session (false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persist: Option<bool>,
}

/// An explicit host-to-session bind mount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BindMount {
    /// Host path; must be inside the writable allowlist.
    pub source: String,
    /// Path inside the session (default: `source`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dest: Option<String>,
    /// Mount read-only.
    #[serde(default)]
    pub readonly: bool,
}

/// Whether `keys` lists the variables to pass or the ones to strip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EnvPassthroughMode {
    /// Only the listed variables reach the session.
    Allow,
    /// Everything but the listed variables (or, with no keys, the built-in secret patterns).
    Deny,
}

/// Environment filtering of a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EnvPassthrough {
    /// Allow or deny list (default `deny`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<EnvPassthroughMode>,
    /// Variable names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<Vec<String>>,
}

/// How the session's identity is established.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum UidMode {
    /// A real setuid/setgid (with supplementary groups) inside the jail.
    #[default]
    Setpriv,
    /// Only `uid`/`gid` exist: a user namespace maps them to execd's own ids.
    Userns,
}

/// `POST /v1/isolated/session`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CreateIsolatedSessionRequest {
    /// Preset (default `strict`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<IsolationProfile>,
    /// Legacy single mount, prepended to `overlays`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<IsolatedWorkspaceSpec>,
    /// Mounts (at most 16 counting `workspace`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlays: Option<Vec<IsolatedOverlaySpec>>,
    /// Paths bound read-write at the same place; each inside execd's allowlist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra_writable: Option<Vec<String>>,
    /// Explicit binds; every source inside execd's allowlist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binds: Option<Vec<BindMount>>,
    /// Share execd's network (default true); false leaves only loopback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share_net: Option<bool>,
    /// Environment filtering.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_passthrough: Option<EnvPassthrough>,
    /// User id inside the session (default execd's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// Group id inside the session (default execd's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    /// Identity mechanism (default `setpriv`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid_mode: Option<UidMode>,
    /// Destroy after this many idle seconds; 0 never (default 1800).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_seconds: Option<i64>,
}

/// Answer of `POST /v1/isolated/session` (201).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct IsolatedCreateSessionResponse {
    /// Canonical UUID.
    pub session_id: String,
    /// RFC 3339.
    pub created_at: String,
}

/// Lifecycle of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum IsolatedSessionStatus {
    /// Accepting runs.
    Active,
    /// Its jail died on its own.
    Dead,
    /// Deleted or collected.
    Destroyed,
}

/// `GET /v1/isolated/session/{sid}`: the state plus an echo of the creation parameters.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SessionState {
    /// Lifecycle state.
    pub status: IsolatedSessionStatus,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339 end of the last run (`created_at` before any).
    pub last_run_at: String,
    /// Seconds until idle collection; null without a timeout.
    pub idle_remaining_seconds: Option<i64>,
    /// Echo.
    pub profile: IsolationProfile,
    /// Echo, only for sessions created through `workspace` alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<IsolatedWorkspaceSpec>,
    /// The effective mounts.
    pub overlays: Vec<IsolatedOverlaySpec>,
    /// Echo.
    pub extra_writable: Vec<String>,
    /// Echo.
    pub binds: Vec<BindMount>,
    /// Echo.
    pub share_net: bool,
    /// Echo.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_passthrough: Option<EnvPassthrough>,
    /// Effective uid.
    pub uid: u32,
    /// Effective gid.
    pub gid: u32,
    /// Echo.
    pub uid_mode: UidMode,
    /// Echo (0 = never).
    pub idle_timeout_seconds: i64,
}

/// One element of `GET /v1/isolated/sessions`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct IsolatedSessionSummary {
    /// Canonical UUID.
    pub session_id: String,
    /// Lifecycle state.
    pub status: IsolatedSessionStatus,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub last_run_at: String,
    /// Seconds until idle collection; null without a timeout.
    pub idle_remaining_seconds: Option<i64>,
}

/// `GET /v1/isolated/sessions`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct IsolatedSessionList {
    /// Every live session.
    pub sessions: Vec<IsolatedSessionSummary>,
}

/// `POST /v1/isolated/session/{sid}/run`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct IsolatedRunRequest {
    /// Shell code (required, not blank).
    pub code: String,
    /// Variables exported before the code; they win over the session's environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envs: Option<BTreeMap<String, String>>,
    /// Foreground only: SIGINT to the session's processes after this many seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<i64>,
    /// Start detached and answer 202.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub background: Option<bool>,
}

/// Answer of a background run (202).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct IsolatedBackgroundRunResponse {
    /// The session.
    pub session_id: String,
    /// Canonical UUID of the run.
    pub run_id: String,
    /// RFC 3339.
    pub started_at: String,
}

/// `GET /v1/isolated/session/{sid}/runs/{rid}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct IsolatedRunStatus {
    /// The session.
    pub session_id: String,
    /// The run.
    pub run_id: String,
    /// Whether it is still running.
    pub running: bool,
    /// RFC 3339.
    pub started_at: String,
    /// Exit code once finished (-1 for a signal).
    pub exit_code: Option<i32>,
    /// Why it failed, e.g. `session terminated`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// RFC 3339, null while running.
    pub finished_at: Option<String>,
}

/// State of one hardening layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LayerState {
    /// Enforced on every run.
    Active,
    /// Not configured.
    Disabled,
    /// Configured but a prerequisite is missing.
    Degraded,
    /// The kernel or build cannot provide it.
    Unsupported,
}

/// A layer's state and, unless active, why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HardeningLayerState {
    /// State.
    pub state: LayerState,
    /// The concrete reason (or what is enforced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// How execd runs as init.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum InitMode {
    /// The container's PID 1.
    Pid1,
    /// A child subreaper in front of an entrypoint.
    Subreaper,
    /// Init mode off.
    None,
}

/// Enforcement report (OSEP-0018 shape) plus execd's extra layers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Hardening {
    /// Init mode of execd.
    pub init_mode: InitMode,
    /// Whether the PID 1 signal shield protects execd.
    pub signal_shield: bool,
    /// Capability bounding-set trim and drop.
    pub cap_drop: HardeningLayerState,
    /// The seccomp denylist.
    pub seccomp: HardeningLayerState,
    /// Landlock filesystem rules.
    pub landlock: HardeningLayerState,
    /// eBPF enforcement (not built).
    pub ebpf: HardeningLayerState,
    /// Namespaces (user, mount, pid, ipc, uts, cgroup, net) — beyond OSEP-0018.
    pub namespaces: HardeningLayerState,
    /// cgroup memory/pids/cpu limits — beyond OSEP-0018.
    pub cgroups: HardeningLayerState,
    /// `no_new_privs` and rlimits — beyond OSEP-0018.
    pub no_new_privs: HardeningLayerState,
}

/// `GET /v1/isolated/capabilities` (always 200).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CapabilitiesResponse {
    /// Sessions can be created.
    pub available: bool,
    /// Isolator name.
    pub isolator: String,
    /// Isolator version.
    pub version: String,
    /// Diagnostic (always set when not fully isolated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// `uid_mode: setpriv` sessions can be created.
    pub setpriv_available: bool,
    /// `uid_mode: userns` sessions can be created.
    pub userns_available: bool,
    /// Commit works.
    pub commit_supported: bool,
    /// Diff works.
    pub diff_supported: bool,
    /// Per-layer enforcement.
    pub hardening: Hardening,
}
