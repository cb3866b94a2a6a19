//! sandboxd's templates (`/v1/templates`): named, versioned sandbox specs. One resource serves
//! upstream 1.1.1's `FsbTemplate` (its flat `image`, `entrypoint`, `resourceLimits`, `env`,
//! `publish`, `format`, `status` are derived from the current version's spec) and the
//! versioned shape (`name`, `latestVersion`, `spec`, tags, rollback, YAML).
//!
//! Spec types reject unknown fields, so a typo such as `startup_scirpt` is a 400 naming it,
//! not a silently ignored line. Maps are `BTreeMap` and absent options are omitted, so that a
//! spec serializes to one canonical form (version comparison and YAML export rely on it).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::lifecycle::Pagination;

/// What a sandbox made from a template is.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TemplateSpec {
    /// Image reference.
    pub image: String,
    /// The main program (argv); with `args`, the sandbox's entrypoint. Default
    /// `["tail","-f","/dev/null"]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Arguments appended to `command`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    /// Resource limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<SpecResources>,
    /// Seconds a sandbox lives (60 up to the server's maximum); absent: manual cleanup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u64>,
    /// Environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    /// A shell script execd runs (`/bin/sh -c`) before the entrypoint; the sandbox is
    /// `Pending` until it succeeds and `Failed` if it does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_script: Option<String>,
    /// Seconds the startup script may take (1–10800, default 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_timeout: Option<u64>,
    /// Files written into the sandbox before it starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<Vec<TemplateFile>>,
    /// A check that must pass before the sandbox is `Running`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness_probe: Option<ReadinessProbe>,
    /// Egress policy (upstream's `networkPolicy` shape).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub network: Option<serde_json::Value>,
    /// A shell command run once at build time; its result is committed to a local image that
    /// sandboxes of this version run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install_command: Option<String>,
    /// Informational: the template's language.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    /// Informational: the language's version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language_version: Option<String>,
}

/// `spec.resources`: Kubernetes-style quantities.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SpecResources {
    /// CPUs (`"1"`, `"500m"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    /// Memory (`"1Gi"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    /// GPUs (not on Docker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<String>,
    /// Disk (refused where the runtime cannot enforce it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<String>,
}

/// One file of `spec.files`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TemplateFile {
    /// Absolute path in the sandbox, without `..`.
    pub path: String,
    /// The content, as `encoding` says.
    pub content: String,
    /// `utf-8` (default) or `base64`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<String>,
    /// Octal mode (`"0644"`, the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

/// `spec.readinessProbe`: exactly one of `exec`, `httpGet`, `tcpSocket`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReadinessProbe {
    /// Run a command in the sandbox; exit 0 passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecProbe>,
    /// An HTTP GET on a sandbox port; 2xx/3xx passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_get: Option<HttpGetProbe>,
    /// A TCP connect to a sandbox port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_socket: Option<TcpProbe>,
    /// Seconds before the first try (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_delay_seconds: Option<u64>,
    /// Seconds between tries (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_seconds: Option<u64>,
    /// Seconds one try may take (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
    /// Failed tries before the sandbox is `Failed` (default 30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<u64>,
}

/// `readinessProbe.exec`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecProbe {
    /// argv.
    pub command: Vec<String>,
}

/// `readinessProbe.httpGet`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpGetProbe {
    /// Sandbox port.
    pub port: u16,
    /// Path (default `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// `readinessProbe.tcpSocket`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpProbe {
    /// Sandbox port.
    pub port: u16,
}

/// `POST /v1/templates`: upstream 1.1.1's `CreateFsbTemplateRequest` (`image`, `publish`,
/// `resourceLimits`, `entrypoint`, `env`, `metadata`, `readiness`, `format`) **or** the
/// versioned shape (`name`, `displayName`, `description`, `tags`, `author`, `isPublic`,
/// `spec`, `changelog`, `metadata`). Mixing the two is a 400.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateTemplateRequest {
    /// Unique name: lowercase DNS label, ≤ 63, not starting `tpl-`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// Description (searchable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Tags (≤ 20, each ≤ 63 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
    /// Author (default: the caller).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// Whether every user may read and use it (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_public: Option<bool>,
    /// The first version's spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<TemplateSpec>,
    /// The first version's changelog.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changelog: Option<String>,
    /// Labels (both shapes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
    /// Upstream shape: image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Upstream shape: publish target (echoed; sandboxd publishes locally).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish: Option<String>,
    /// Upstream shape: `{cpu, memory, disk}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_limits: Option<BTreeMap<String, String>>,
    /// Upstream shape: entrypoint argv.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// Upstream shape: environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    /// Upstream shape: `{probe, warmupSeconds}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness: Option<UpstreamReadiness>,
    /// Upstream shape: `native` or `overlaybd` (sandboxd stores `native`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
}

/// Upstream's build-side readiness gate: `tcp://host:port` or `cmd://<command>`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpstreamReadiness {
    /// `tcp://127.0.0.1:<port>` or `cmd://<command>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<String>,
    /// Seconds to wait when no probe is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup_seconds: Option<u64>,
}

/// `PUT /v1/templates/{idOrName}`: metadata changes in place; a changed `spec` makes a new
/// version.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateTemplateRequest {
    /// The new spec (a new version only if it differs from the latest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<TemplateSpec>,
    /// The new version's changelog.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changelog: Option<String>,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// Description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Tags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
    /// Public or private.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_public: Option<bool>,
    /// Labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
}

/// A template's build state (upstream's `FsbTemplateStatus`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplateStatus {
    /// `Pending`, `Building`, `Succeeded` or `Failed`.
    pub phase: String,
    /// The local image sandboxes of this version run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_ref: Option<String>,
    /// Why the build failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A template, at its latest version.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Template {
    /// `tpl-<uuid>`.
    pub template_id: String,
    /// Unique name.
    pub name: String,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// Description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Tags.
    pub tags: Vec<String>,
    /// Author.
    pub author: String,
    /// Readable and usable by every user.
    pub is_public: bool,
    /// The current version.
    pub latest_version: u32,
    /// Created (RFC 3339).
    pub created_at: String,
    /// Last changed (RFC 3339).
    pub updated_at: String,
    /// The current version's spec.
    pub spec: TemplateSpec,
    /// Upstream: the image.
    pub image: String,
    /// Upstream: `command` + `args`.
    pub entrypoint: Vec<String>,
    /// Upstream: `{cpu, memory, disk}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub resource_limits: BTreeMap<String, String>,
    /// Upstream: the environment.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// Upstream: the publish target as given, or `local`.
    pub publish: String,
    /// Upstream: always `native`.
    pub format: String,
    /// The current version's build state.
    pub status: TemplateStatus,
}

/// One immutable version of a template.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplateVersion {
    /// 1, 2, …
    pub version: u32,
    /// The spec.
    pub spec: TemplateSpec,
    /// Why it was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changelog: Option<String>,
    /// Made at (RFC 3339).
    pub created_at: String,
    /// Made by.
    pub created_by: String,
    /// The version a rollback copied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_back_from: Option<u32>,
    /// Its build state.
    pub status: TemplateStatus,
}

/// `GET /v1/templates` answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ListTemplatesResponse {
    /// This page.
    pub items: Vec<Template>,
    /// Paging.
    pub pagination: Pagination,
}

/// `GET /v1/templates/{idOrName}/versions` answer, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ListTemplateVersionsResponse {
    /// This page.
    pub items: Vec<TemplateVersion>,
    /// Paging.
    pub pagination: Pagination,
}

/// `POST /v1/templates/{idOrName}/rollback` body.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RollbackRequest {
    /// The version whose spec becomes current again.
    pub target_version: u32,
    /// The new version's changelog.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changelog: Option<String>,
}

/// `POST /v1/templates/{idOrName}/rollback` answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RollbackResult {
    /// The template.
    pub template_id: String,
    /// Its name.
    pub name: String,
    /// The latest version before the rollback.
    pub from_version: u32,
    /// The version copied.
    pub target_version: u32,
    /// The latest version after it.
    pub new_version: u32,
    /// Whether a version was made (not when the target's spec already was the latest's).
    pub version_created: bool,
    /// The template after the rollback.
    pub template: Template,
}

/// `POST /v1/templates/import` answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImportResult {
    /// `create-only`, `update-only` or `create-or-update`.
    pub strategy: String,
    /// Computed without writing.
    pub dry_run: bool,
    /// New templates.
    pub created: Vec<ImportedItem>,
    /// New versions of existing ones.
    pub updated: Vec<ImportedItem>,
    /// Existing ones whose spec was already the same.
    pub unchanged: Vec<ImportedItem>,
    /// Left alone by the strategy.
    pub skipped: Vec<SkippedItem>,
    /// Items with errors.
    pub failed: Vec<FailedItem>,
    /// Prepulls started (`autoPrepull=true`).
    pub prepull_tasks: Vec<String>,
    /// Things the import ignored.
    pub warnings: Vec<String>,
}

/// One applied item of an import.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImportedItem {
    /// Template name.
    pub name: String,
    /// The version before (updates only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_version: Option<u32>,
    /// The version now.
    pub version: u32,
}

/// One skipped item of an import.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SkippedItem {
    /// Template name.
    pub name: String,
    /// `ALREADY_EXISTS` or `NOT_FOUND`.
    pub reason: String,
}

/// One failed item of an import.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailedItem {
    /// Template name, as far as it could be read.
    pub name: String,
    /// Position in the document (0-based).
    pub index: usize,
    /// Catalogued code.
    pub code: String,
    /// What is wrong, naming the field.
    pub message: String,
}
