//! Templates: named, versioned sandbox specs (`/v1/templates`), and what creating a sandbox
//! from one means.
//!
//! - Versions are integers from 1, immutable; "current" is the latest. A new version is made
//!   only when the spec differs from the latest (specs compare by value, which is their
//!   canonical JSON), so an update or an import that changes nothing is a no-op.
//! - Rollback copies the target's spec into a new version; history is never rewritten.
//! - Visibility: public templates are readable and usable by everyone, private ones by their
//!   owner or author and by admins; anyone else gets 404. Writing needs the admin role.
//! - A version without an `installCommand` is `Succeeded` at once, its image being the base
//!   image. One with an `installCommand` is stored `Pending` and queued for a build (`builds`:
//!   `Building` → `Succeeded` with the committed image as `manifestRef`, or `Failed` with a
//!   message); until it has succeeded, creating a sandbox from it is a 409
//!   `TEMPLATE::NOT_READY` (with the build's message when it failed).
//! - Deleting a template removes the images its versions built, except those a sandbox
//!   still runs (the runtime keeps an image in use).

use std::collections::BTreeMap;

use super::paginate;
use super::Service;
use crate::orchestrator::auth::{Principal, Role};
use crate::orchestrator::error::{Conflict, Error, Kind};
use crate::orchestrator::runtime::SpecFile;
use crate::orchestrator::spec::Plan;
use crate::orchestrator::store::{ApplyError, TemplateChange, TemplateRef, TemplateRow, VersionRow};
use crate::wire::lifecycle::{CreateSandboxRequest, ImageSpec};
use crate::wire::templates::{
    CreateTemplateRequest, ListTemplateVersionsResponse, ListTemplatesResponse, ReadinessProbe,
    RollbackRequest, RollbackResult, SpecResources, Template, TemplateSpec, TemplateStatus, TemplateVersion,
    UpdateTemplateRequest,
};
use crate::wire::time::{format_ms, now_ms};

/// Build phases (upstream's `FsbTemplateStatus.phase`).
pub(super) mod phase {
    /// Queued for a build.
    pub const PENDING: &str = "Pending";
    /// Being built.
    pub const BUILDING: &str = "Building";
    /// Usable.
    pub const SUCCEEDED: &str = "Succeeded";
    /// The build failed.
    pub const FAILED: &str = "Failed";
}

/// The entrypoint of a template that names none (upstream's default).
const DEFAULT_COMMAND: [&str; 3] = ["tail", "-f", "/dev/null"];
/// Longest name.
const MAX_NAME: usize = 63;
/// Most tags, and longest tag.
const MAX_TAGS: usize = 20;
/// Most files, and their total size.
const MAX_FILES: usize = 64;
const MAX_FILES_BYTES: usize = 512 * 1024;
/// Longest `installCommand`.
const MAX_INSTALL_COMMAND: usize = 64 * 1024;
/// `startupTimeout` bounds (upstream's `preStart` maximum) and default.
const MAX_STARTUP_TIMEOUT: u64 = 10_800;
const DEFAULT_STARTUP_TIMEOUT: u64 = 60;

/// The filter of `GET /v1/templates`.
#[derive(Debug, Clone, Default)]
pub struct TemplateFilter {
    /// Only templates with this tag.
    pub tag: Option<String>,
    /// Case-insensitive substring of name, display name or description.
    pub search: Option<String>,
    /// Labels that must all match.
    pub metadata: Vec<(String, String)>,
    /// 1-based page.
    pub page: u32,
    /// Items per page.
    pub page_size: u32,
}

/// What a template adds to a sandbox beyond its create request.
#[derive(Debug, Clone)]
pub struct FromTemplate {
    /// Recorded on the sandbox.
    pub reference: TemplateRef,
    files: Vec<SpecFile>,
    readiness: Option<ReadinessProbe>,
}

impl FromTemplate {
    /// Adds the template's files and readiness probe to `plan`.
    pub fn apply(&self, plan: &mut Plan) {
        plan.files = self.files.clone();
        plan.readiness = self.readiness.clone();
    }
}

impl Service {
    /// `POST /v1/templates`: either shape (§7.2). The first version is 1.
    pub async fn create_template(
        &self,
        req: CreateTemplateRequest,
        caller: &Principal,
    ) -> Result<Template, Error> {
        let (row, version) = self.new_template(req, caller)?;
        match self
            .store
            .apply_templates(vec![TemplateChange::Create(row.clone(), version.clone())])
            .await
        {
            Ok(()) => {}
            Err(ApplyError::NameTaken(name)) => return Err(Error::Conflict(Conflict::TemplateExists(name))),
            Err(ApplyError::Raced(name)) => return Err(Error::Conflict(Conflict::TemplateExists(name))),
            Err(ApplyError::Store(e)) => return Err(e.into()),
        }
        tracing::info!(template = %row.name, id = %row.id, "template created");
        self.after_version(&row, &version);
        Ok(view(&row, &version))
    }

    /// A validated new template (not yet stored) from either request shape.
    pub(super) fn new_template(
        &self,
        req: CreateTemplateRequest,
        caller: &Principal,
    ) -> Result<(TemplateRow, VersionRow), Error> {
        let upstream = req.image.is_some()
            || req.publish.is_some()
            || req.resource_limits.is_some()
            || req.entrypoint.is_some()
            || req.env.is_some()
            || req.readiness.is_some()
            || req.format.is_some();
        let ours = req.spec.is_some()
            || req.name.is_some()
            || req.display_name.is_some()
            || req.description.is_some()
            || req.tags.is_some()
            || req.author.is_some()
            || req.is_public.is_some()
            || req.changelog.is_some();
        if upstream && ours {
            return Err(Error::invalid(
                "mixed template shapes: send either upstream's {image, publish, resourceLimits, entrypoint, env, readiness, format} \
                 or {name, spec, displayName, description, tags, author, isPublic, changelog}",
            ));
        }
        let id = format!("tpl-{}", uuid::Uuid::new_v4());
        let (name, spec, publish) = if upstream {
            let spec = upstream_spec(&req)?;
            (
                id.clone(),
                spec,
                req.publish.clone().unwrap_or_else(|| "local".into()),
            )
        } else {
            let spec = req
                .spec
                .clone()
                .ok_or_else(|| Error::invalid("spec is required (or upstream's image)"))?;
            let name = req
                .name
                .clone()
                .ok_or_else(|| Error::invalid("name is required with spec"))?;
            check_name(&name)?;
            (name, spec, "local".into())
        };
        self.check_spec(&spec)?;
        let tags = req.tags.unwrap_or_default();
        check_tags(&tags)?;
        let metadata = req.metadata.unwrap_or_default();
        for (k, v) in &metadata {
            crate::orchestrator::spec::check_label(k, v)?;
        }
        let now = now_ms();
        let row = TemplateRow {
            id,
            name,
            display_name: req.display_name,
            description: req.description,
            tags,
            author: req.author.unwrap_or_else(|| caller.id.clone()),
            is_public: req.is_public.unwrap_or(true),
            metadata,
            publish,
            owner: caller.id.clone(),
            latest_version: 1,
            created_at: now,
            updated_at: now,
        };
        let version = new_version(1, spec, req.changelog, caller, None, now);
        Ok((row, version))
    }

    /// `GET /v1/templates/{idOrName}`.
    pub async fn template(&self, id_or_name: &str, caller: &Principal) -> Result<Template, Error> {
        let (row, latest) = self.readable_template(id_or_name, caller).await?;
        Ok(view(&row, &latest))
    }

    /// The template if `caller` may read it; otherwise not found.
    pub(super) async fn readable_template(
        &self,
        id_or_name: &str,
        caller: &Principal,
    ) -> Result<(TemplateRow, VersionRow), Error> {
        match self.store.template(id_or_name).await? {
            Some((row, latest)) if may_read(caller, &row) => Ok((row, latest)),
            _ => Err(Error::not_found(Kind::Template, id_or_name)),
        }
    }

    /// `GET /v1/templates`: filtered, by name, one page.
    pub async fn list_templates(
        &self,
        filter: TemplateFilter,
        caller: &Principal,
    ) -> Result<ListTemplatesResponse, Error> {
        let search = filter.search.as_ref().map(|s| s.to_lowercase());
        let matching: Vec<Template> = self
            .store
            .templates()
            .await?
            .into_iter()
            .filter(|(row, _)| may_read(caller, row))
            .filter(|(row, _)| filter.tag.as_ref().is_none_or(|t| row.tags.contains(t)))
            .filter(|(row, _)| {
                filter
                    .metadata
                    .iter()
                    .all(|(k, v)| row.metadata.get(k) == Some(v))
            })
            .filter(|(row, _)| {
                search.as_ref().is_none_or(|s| {
                    [
                        Some(&row.name),
                        row.display_name.as_ref(),
                        row.description.as_ref(),
                    ]
                    .into_iter()
                    .flatten()
                    .any(|text| text.to_lowercase().contains(s))
                })
            })
            .map(|(row, latest)| view(&row, &latest))
            .collect();
        let (items, pagination) = paginate(matching, filter.page, filter.page_size);
        Ok(ListTemplatesResponse { items, pagination })
    }

    /// `PUT /v1/templates/{idOrName}`: metadata in place; a new version only if the spec
    /// changed. Returns the template and whether a version was made.
    pub async fn update_template(
        &self,
        id_or_name: &str,
        req: UpdateTemplateRequest,
        caller: &Principal,
    ) -> Result<(Template, bool), Error> {
        let (mut row, latest) = self.readable_template(id_or_name, caller).await?;
        if let Some(tags) = &req.tags {
            check_tags(tags)?;
        }
        if let Some(metadata) = &req.metadata {
            for (k, v) in metadata {
                crate::orchestrator::spec::check_label(k, v)?;
            }
        }
        if let Some(spec) = &req.spec {
            self.check_spec(spec)?;
        }
        row.display_name = req.display_name.or(row.display_name);
        row.description = req.description.or(row.description);
        row.tags = req.tags.unwrap_or(row.tags);
        row.is_public = req.is_public.unwrap_or(row.is_public);
        row.metadata = req.metadata.unwrap_or(row.metadata);
        row.updated_at = now_ms();
        let change = match req.spec {
            Some(spec) if spec != latest.spec => Some(new_version(
                latest.version + 1,
                spec,
                req.changelog,
                caller,
                None,
                row.updated_at,
            )),
            _ => None,
        };
        let (row, current) = self.commit_change(row, &latest, change).await?;
        let created = current.version != latest.version;
        Ok((view(&row, &current), created))
    }

    /// Stores `row` (and `version`, when one is made after `latest`) and starts its build.
    async fn commit_change(
        &self,
        mut row: TemplateRow,
        latest: &VersionRow,
        version: Option<VersionRow>,
    ) -> Result<(TemplateRow, VersionRow), Error> {
        let change = match &version {
            Some(v) => {
                row.latest_version = v.version;
                TemplateChange::AddVersion {
                    row: row.clone(),
                    after: latest.version,
                    version: v.clone(),
                }
            }
            None => TemplateChange::Update(row.clone()),
        };
        self.store
            .apply_templates(vec![change])
            .await
            .map_err(|e| match e {
                ApplyError::Raced(name) | ApplyError::NameTaken(name) => Error::Conflict(Conflict::Runtime(
                    format!("template {name} changed concurrently; read it again and retry"),
                )),
                ApplyError::Store(e) => e.into(),
            })?;
        let current = match version {
            Some(v) => {
                tracing::info!(template = %row.name, version = v.version, "template version created");
                self.after_version(&row, &v);
                v
            }
            None => latest.clone(),
        };
        Ok((row, current))
    }

    /// `DELETE /v1/templates/{idOrName}`: sandboxes made from it keep running. The images
    /// its versions built are removed, best effort: one a sandbox still runs stays (the
    /// runtime refuses), and a build still running removes its own image when it finds the
    /// template gone.
    pub async fn delete_template(&self, id_or_name: &str, caller: &Principal) -> Result<(), Error> {
        let (row, _) = self.readable_template(id_or_name, caller).await?;
        let versions = self.store.template_versions(&row.id).await?;
        let pools = self.store.pools_of_template(&row.id).await?;
        if !pools.is_empty() {
            return Err(Error::Conflict(Conflict::TemplateInUse(format!(
                "template {} is used by pool(s) {}; delete them first",
                row.name,
                pools.join(", ")
            ))));
        }
        if !self.store.delete_template(&row.id).await? {
            return Err(Error::not_found(Kind::Template, id_or_name));
        }
        tracing::info!(template = %row.name, id = %row.id, "template deleted");
        for image in versions.iter().filter_map(built_image) {
            self.remove_built_image(image).await;
        }
        Ok(())
    }

    /// `GET /v1/templates/{idOrName}/versions`, newest first.
    pub async fn template_versions(
        &self,
        id_or_name: &str,
        page: u32,
        page_size: u32,
        caller: &Principal,
    ) -> Result<ListTemplateVersionsResponse, Error> {
        let (row, _) = self.readable_template(id_or_name, caller).await?;
        let versions = self.store.template_versions(&row.id).await?;
        let (items, pagination) = paginate(versions.iter().map(version_view).collect(), page, page_size);
        Ok(ListTemplateVersionsResponse { items, pagination })
    }

    /// `GET /v1/templates/{idOrName}/versions/{version}`.
    pub async fn template_version(
        &self,
        id_or_name: &str,
        version: u32,
        caller: &Principal,
    ) -> Result<TemplateVersion, Error> {
        let (row, _) = self.readable_template(id_or_name, caller).await?;
        self.store
            .template_version(&row.id, version)
            .await?
            .map(|v| version_view(&v))
            .ok_or_else(|| Error::not_found(Kind::TemplateVersion, format!("{}@{version}", row.name)))
    }

    /// `GET /v1/templates/{idOrName}/versions/{version}/build-log`.
    pub async fn build_log(
        &self,
        id_or_name: &str,
        version: u32,
        caller: &Principal,
    ) -> Result<String, Error> {
        let (row, _) = self.readable_template(id_or_name, caller).await?;
        if let Some(live) = self.builds.live_log(&row.id, version) {
            return Ok(live);
        }
        self.store
            .build_log(&row.id, version)
            .await?
            .ok_or_else(|| Error::not_found(Kind::TemplateVersion, format!("{}@{version}", row.name)))
    }

    /// `POST /v1/templates/{idOrName}/rollback`: the target's spec as a new version, unless it
    /// already is the latest's.
    pub async fn rollback_template(
        &self,
        id_or_name: &str,
        req: RollbackRequest,
        caller: &Principal,
    ) -> Result<RollbackResult, Error> {
        let (mut row, latest) = self.readable_template(id_or_name, caller).await?;
        let target = self
            .store
            .template_version(&row.id, req.target_version)
            .await?
            .ok_or_else(|| {
                Error::not_found(
                    Kind::TemplateVersion,
                    format!("{}@{}", row.name, req.target_version),
                )
            })?;
        let from = latest.version;
        let version = (target.spec != latest.spec).then(|| {
            let changelog = req
                .changelog
                .or_else(|| Some(format!("rollback to version {}", target.version)));
            new_version(
                from + 1,
                target.spec.clone(),
                changelog,
                caller,
                Some(target.version),
                now_ms(),
            )
        });
        row.updated_at = if version.is_some() {
            now_ms()
        } else {
            row.updated_at
        };
        let (row, current) = self.commit_change(row, &latest, version).await?;
        Ok(RollbackResult {
            template_id: row.id.clone(),
            name: row.name.clone(),
            from_version: from,
            target_version: target.version,
            new_version: current.version,
            version_created: current.version != from,
            template: view(&row, &current),
        })
    }

    /// Turns a create request with `templateId` into a plain one (image, entrypoint, env,
    /// limits, timeout and metadata from the template, the request's fields as overrides), and
    /// what the template adds beyond it. A request without `templateId` passes through.
    pub(super) async fn resolve_template(
        &self,
        mut req: CreateSandboxRequest,
        caller: &Principal,
    ) -> Result<(CreateSandboxRequest, Option<FromTemplate>), Error> {
        let Some(id) = req.template_id.take() else {
            if req.template_version.is_some() {
                return Err(Error::invalid("templateVersion needs templateId"));
            }
            return Ok((req, None));
        };
        if req.image.is_some() || req.snapshot_id.is_some() {
            return Err(Error::invalid(
                "image and snapshotId cannot be combined with templateId; publish a new template version instead",
            ));
        }
        let (row, latest) = self.readable_template(&id, caller).await?;
        let version = match req.template_version.take() {
            None => latest,
            Some(0) => return Err(Error::invalid("templateVersion must be ≥ 1")),
            Some(v) => self
                .store
                .template_version(&row.id, v)
                .await?
                .ok_or_else(|| Error::not_found(Kind::TemplateVersion, format!("{}@{v}", row.name)))?,
        };
        let image = match (version.phase.as_str(), &version.manifest_ref) {
            (phase::SUCCEEDED, Some(image)) => image.clone(),
            (phase::FAILED, _) => {
                return Err(Error::Conflict(Conflict::TemplateNotReady(format!(
                    "template {} version {} failed to build: {}",
                    row.name,
                    version.version,
                    version.message.as_deref().unwrap_or("no message")
                ))))
            }
            (phase, _) => {
                return Err(Error::Conflict(Conflict::TemplateNotReady(format!(
                    "template {} version {} is {phase}; wait until it is Succeeded",
                    row.name, version.version
                ))))
            }
        };
        let spec = &version.spec;
        req.image = Some(ImageSpec {
            uri: image,
            auth: None,
        });
        if req.entrypoint.is_none() {
            req.entrypoint = Some(entrypoint(spec));
        }
        let mut limits: BTreeMap<String, serde_json::Value> = BTreeMap::new();
        if let Some(r) = &spec.resources {
            // Whether the runtime can apply GPUs and disk is the create's check (capabilities).
            for (key, value) in [
                ("cpu", &r.cpu),
                ("memory", &r.memory),
                ("gpu", &r.gpu),
                ("disk", &r.disk),
            ] {
                if let Some(value) = value {
                    limits.insert(key.into(), value.clone().into());
                }
            }
        }
        limits.extend(req.resource_limits.take().unwrap_or_default());
        req.resource_limits = Some(limits).filter(|l| !l.is_empty());
        if req.timeout.is_none() {
            req.timeout = spec.ttl.map(Into::into);
        }
        let mut env: BTreeMap<String, Option<String>> = spec
            .env
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, Some(v)))
            .collect();
        for (k, v) in req.env.take().unwrap_or_default() {
            match v {
                Some(v) => env.insert(k, Some(v)),
                None => env.remove(&k),
            };
        }
        req.env = Some(env);
        let mut metadata = row.metadata.clone();
        metadata.extend(req.metadata.take().unwrap_or_default());
        req.metadata = Some(metadata).filter(|m| !m.is_empty());
        if req.network_policy.is_none() {
            req.network_policy = spec.network.clone();
        }
        if req.lifecycle.is_none() {
            if let Some(script) = &spec.startup_script {
                req.lifecycle = Some(serde_json::json!({"preStart": {
                    "command": ["/bin/sh", "-c", script],
                    "timeoutSeconds": spec.startup_timeout.unwrap_or(DEFAULT_STARTUP_TIMEOUT),
                }}));
            }
        }
        let files = spec
            .files
            .iter()
            .flatten()
            .map(spec_file)
            .collect::<Result<Vec<_>, Error>>()?;
        let from = FromTemplate {
            reference: TemplateRef {
                id: row.id.clone(),
                name: row.name.clone(),
                version: version.version,
            },
            files,
            readiness: spec.readiness_probe.clone(),
        };
        Ok((req, Some(from)))
    }

    /// Checks a spec against §7.1's rules and this server's limits; an `installCommand` needs
    /// a runtime that builds.
    pub(super) fn check_spec(&self, spec: &TemplateSpec) -> Result<(), Error> {
        check_spec(spec, self.settings.limits.max_timeout)?;
        if spec.install_command.is_some() && !self.runtime.capabilities().builds {
            return Err(Error::UnsupportedField(
                "spec.installCommand: this runtime cannot build templates; install into the image, \
                 or use startupScript"
                    .into(),
            ));
        }
        Ok(())
    }

    /// What happens once a version is stored: nothing for a ready one; a build for one with
    /// an install command.
    pub(super) fn after_version(&self, row: &TemplateRow, version: &VersionRow) {
        if version.phase == phase::PENDING {
            tracing::info!(template = %row.name, version = version.version, "template build queued");
            self.builds.enqueue(&row.id, version.version);
        }
    }
}

/// A new version made by `caller` now.
pub(super) fn new_version(
    version: u32,
    spec: TemplateSpec,
    changelog: Option<String>,
    caller: &Principal,
    rolled_back_from: Option<u32>,
    now: i64,
) -> VersionRow {
    let (phase, manifest_ref) = match spec.install_command {
        Some(_) => (phase::PENDING, None),
        None => (phase::SUCCEEDED, Some(spec.image.clone())),
    };
    VersionRow {
        version,
        spec,
        changelog,
        created_at: now,
        created_by: caller.id.clone(),
        rolled_back_from,
        phase: phase.into(),
        manifest_ref,
        message: None,
    }
}

/// The image a version built, if it built one (a version without an install command runs its
/// base image, which is not sandboxd's to remove).
pub(super) fn built_image(v: &VersionRow) -> Option<&str> {
    match (&v.spec.install_command, v.phase.as_str()) {
        (Some(_), phase::SUCCEEDED) => v.manifest_ref.as_deref(),
        _ => None,
    }
}

/// Whether `caller` may read (and use) a template.
pub(super) fn may_read(caller: &Principal, row: &TemplateRow) -> bool {
    row.is_public || caller.role == Role::Admin || caller.id == row.owner || caller.id == row.author
}

/// `command` + `args`, or upstream's default.
fn entrypoint(spec: &TemplateSpec) -> Vec<String> {
    let mut argv = spec
        .command
        .clone()
        .unwrap_or_else(|| DEFAULT_COMMAND.map(String::from).to_vec());
    argv.extend(spec.args.iter().flatten().cloned());
    argv
}

/// The API view of a template at `latest`.
pub(super) fn view(row: &TemplateRow, latest: &VersionRow) -> Template {
    let spec = latest.spec.clone();
    let mut resource_limits = BTreeMap::new();
    if let Some(r) = &spec.resources {
        for (key, value) in [("cpu", &r.cpu), ("memory", &r.memory), ("disk", &r.disk)] {
            if let Some(value) = value {
                resource_limits.insert(key.to_owned(), value.clone());
            }
        }
    }
    Template {
        template_id: row.id.clone(),
        name: row.name.clone(),
        display_name: row.display_name.clone(),
        description: row.description.clone(),
        tags: row.tags.clone(),
        author: row.author.clone(),
        is_public: row.is_public,
        latest_version: row.latest_version,
        created_at: format_ms(row.created_at),
        updated_at: format_ms(row.updated_at),
        image: spec.image.clone(),
        entrypoint: entrypoint(&spec),
        resource_limits,
        env: spec.env.clone().unwrap_or_default(),
        metadata: row.metadata.clone(),
        publish: row.publish.clone(),
        format: "native".into(),
        status: status(latest),
        spec,
    }
}

fn status(v: &VersionRow) -> TemplateStatus {
    TemplateStatus {
        phase: v.phase.clone(),
        manifest_ref: v.manifest_ref.clone(),
        message: v.message.clone(),
    }
}

/// The API view of a version.
pub(super) fn version_view(v: &VersionRow) -> TemplateVersion {
    TemplateVersion {
        version: v.version,
        spec: v.spec.clone(),
        changelog: v.changelog.clone(),
        created_at: format_ms(v.created_at),
        created_by: v.created_by.clone(),
        rolled_back_from: v.rolled_back_from,
        status: status(v),
    }
}

/// Upstream's `CreateFsbTemplateRequest` as a spec.
fn upstream_spec(req: &CreateTemplateRequest) -> Result<TemplateSpec, Error> {
    let image = req
        .image
        .clone()
        .filter(|i| !i.trim().is_empty())
        .ok_or_else(|| Error::invalid("image is required"))?;
    if let Some(format) = &req.format {
        if format != "native" && format != "overlaybd" {
            return Err(Error::invalid(format!(
                "format must be native or overlaybd, got {format:?}"
            )));
        }
    }
    let mut resources = SpecResources::default();
    for (key, value) in req.resource_limits.iter().flatten() {
        let slot = match key.as_str() {
            "cpu" => &mut resources.cpu,
            "memory" => &mut resources.memory,
            "disk" => &mut resources.disk,
            other => {
                return Err(Error::invalid(format!(
                    "resourceLimits.{other}: only cpu, memory and disk are allowed"
                )))
            }
        };
        *slot = Some(value.clone());
    }
    let readiness_probe = match req.readiness.as_ref().and_then(|r| r.probe.as_deref()) {
        None => None,
        Some(probe) => Some(upstream_probe(probe)?),
    };
    let (command, args) = match &req.entrypoint {
        Some(argv) if argv.is_empty() => return Err(Error::invalid("entrypoint must name a program")),
        Some(argv) => (Some(argv.clone()), None),
        None => (None, None),
    };
    Ok(TemplateSpec {
        image,
        command,
        args,
        resources: Some(resources).filter(|r| *r != SpecResources::default()),
        env: req.env.clone(),
        readiness_probe,
        ..TemplateSpec::default()
    })
}

/// `tcp://host:port` or `cmd://<command>`.
fn upstream_probe(probe: &str) -> Result<ReadinessProbe, Error> {
    use crate::wire::templates::{ExecProbe, TcpProbe};
    if let Some(address) = probe.strip_prefix("tcp://") {
        let port = address
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .filter(|&p| p > 0)
            .ok_or_else(|| Error::invalid(format!("readiness.probe {probe:?}: expected tcp://host:port")))?;
        return Ok(ReadinessProbe {
            tcp_socket: Some(TcpProbe { port }),
            ..ReadinessProbe::default()
        });
    }
    if let Some(command) = probe.strip_prefix("cmd://").filter(|c| !c.trim().is_empty()) {
        return Ok(ReadinessProbe {
            exec: Some(ExecProbe {
                command: vec!["/bin/sh".into(), "-c".into(), command.into()],
            }),
            ..ReadinessProbe::default()
        });
    }
    Err(Error::invalid(format!(
        "readiness.probe {probe:?}: expected tcp://host:port or cmd://<command>"
    )))
}

/// A template name: a lowercase DNS label of at most 63, not `tpl-…` (ids are).
pub(super) fn check_name(name: &str) -> Result<(), Error> {
    let label = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if !label {
        return Err(Error::invalid(format!(
            "name {name:?}: expected 1–{MAX_NAME} of a-z, 0-9 and '-', starting and ending with a letter or digit"
        )));
    }
    if name.starts_with("tpl-") {
        return Err(Error::invalid(format!(
            "name {name:?}: the tpl- prefix is reserved for template ids"
        )));
    }
    Ok(())
}

pub(super) fn check_tags(tags: &[String]) -> Result<(), Error> {
    if tags.len() > MAX_TAGS {
        return Err(Error::invalid(format!(
            "tags: at most {MAX_TAGS}, got {}",
            tags.len()
        )));
    }
    match tags.iter().find(|t| t.is_empty() || t.chars().count() > MAX_NAME) {
        Some(t) => Err(Error::invalid(format!(
            "tags: {t:?} must be 1–{MAX_NAME} characters"
        ))),
        None => Ok(()),
    }
}

/// §7.1's rules for a spec; the message names the field.
pub(super) fn check_spec(spec: &TemplateSpec, max_ttl: u64) -> Result<(), Error> {
    let bad = |m: String| Err(Error::InvalidSpec(m));
    if spec.image.trim().is_empty() || spec.image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad("spec.image: must be a non-empty image reference".into());
    }
    if let Some(command) = &spec.command {
        if command.first().is_none_or(|c| c.is_empty()) {
            return bad("spec.command: must name a program".into());
        }
    }
    for argv in [&spec.command, &spec.args].into_iter().flatten() {
        if argv.iter().any(|a| a.contains('\0')) {
            return bad("spec.command/args: must not contain NUL bytes".into());
        }
    }
    if let Some(ttl) = spec.ttl {
        if !(60..=max_ttl).contains(&ttl) {
            return bad(format!("spec.ttl: must be 60–{max_ttl} seconds, got {ttl}"));
        }
    }
    if let Some(t) = spec.startup_timeout {
        if !(1..=MAX_STARTUP_TIMEOUT).contains(&t) {
            return bad(format!(
                "spec.startupTimeout: must be 1–{MAX_STARTUP_TIMEOUT} seconds, got {t}"
            ));
        }
    }
    if spec.startup_script.as_ref().is_some_and(|s| s.trim().is_empty()) {
        return bad("spec.startupScript: must not be empty".into());
    }
    if let Some(command) = &spec.install_command {
        if command.trim().is_empty() || command.contains('\0') {
            return bad("spec.installCommand: must be a non-empty shell command without NUL bytes".into());
        }
        if command.len() > MAX_INSTALL_COMMAND {
            return bad(format!(
                "spec.installCommand: at most {MAX_INSTALL_COMMAND} bytes, got {}",
                command.len()
            ));
        }
    }
    for key in spec.env.iter().flatten().map(|(k, _)| k) {
        let mut chars = key.chars();
        let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return bad(format!(
                "spec.env: {key:?} is not a valid variable name ([A-Za-z_][A-Za-z0-9_]*)"
            ));
        }
    }
    if let Some(r) = &spec.resources {
        let mut limits = BTreeMap::new();
        for (key, value) in [
            ("cpu", &r.cpu),
            ("memory", &r.memory),
            ("gpu", &r.gpu),
            ("disk", &r.disk),
        ] {
            if let Some(value) = value {
                limits.insert(key.to_owned(), serde_json::Value::from(value.clone()));
            }
        }
        crate::orchestrator::spec::check_resource_limits(limits)
            .map_err(|e| Error::InvalidSpec(format!("spec.resources: {e}")))?;
    }
    let files = spec.files.as_deref().unwrap_or_default();
    if files.len() > MAX_FILES {
        return bad(format!(
            "spec.files: at most {MAX_FILES} files, got {}",
            files.len()
        ));
    }
    let mut total = 0usize;
    for (i, f) in files.iter().enumerate() {
        let file = spec_file(f).map_err(|e| Error::InvalidSpec(format!("spec.files[{i}]: {e}")))?;
        total += file.content.len();
    }
    if total > MAX_FILES_BYTES {
        return bad(format!(
            "spec.files: {total} bytes in all, at most {MAX_FILES_BYTES}"
        ));
    }
    if let Some(p) = &spec.readiness_probe {
        let kinds = [p.exec.is_some(), p.http_get.is_some(), p.tcp_socket.is_some()];
        if kinds.iter().filter(|&&k| k).count() != 1 {
            return bad("spec.readinessProbe: exactly one of exec, httpGet and tcpSocket".into());
        }
        if p.exec
            .as_ref()
            .is_some_and(|e| e.command.first().is_none_or(|c| c.is_empty()))
        {
            return bad("spec.readinessProbe.exec.command: must name a program".into());
        }
        let port = p
            .http_get
            .as_ref()
            .map(|h| h.port)
            .or(p.tcp_socket.as_ref().map(|t| t.port));
        if port == Some(0) {
            return bad("spec.readinessProbe: port must be 1–65535".into());
        }
        if p.period_seconds == Some(0) || p.timeout_seconds == Some(0) || p.failure_threshold == Some(0) {
            return bad(
                "spec.readinessProbe: periodSeconds, timeoutSeconds and failureThreshold must be ≥ 1".into(),
            );
        }
    }
    if spec.network.as_ref().is_some_and(|n| !n.is_object()) {
        return bad("spec.network: must be an object (upstream's networkPolicy)".into());
    }
    Ok(())
}

/// A spec file as the runtime writes it: path checked, content decoded, mode parsed.
pub(super) fn spec_file(f: &crate::wire::templates::TemplateFile) -> Result<SpecFile, Error> {
    use std::path::{Component, Path};
    let path = Path::new(&f.path);
    let clean = path.is_absolute()
        && path
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
        && path.file_name().is_some()
        && !f.path.contains('\0');
    if !clean {
        return Err(Error::InvalidSpec(format!(
            "path {:?}: must be absolute, name a file, and have no '..'",
            f.path
        )));
    }
    let content = match f.encoding.as_deref() {
        None | Some("utf-8" | "utf8") => f.content.clone().into_bytes(),
        Some("base64") => {
            use base64::Engine as _;
            let text: String = f.content.split_ascii_whitespace().collect();
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .ok()
                .ok_or_else(|| {
                    Error::InvalidSpec(format!("path {:?}: content is not valid base64", f.path))
                })?
        }
        Some(other) => {
            return Err(Error::InvalidSpec(format!(
                "path {:?}: encoding {other:?} (expected utf-8 or base64)",
                f.path
            )))
        }
    };
    let mode = match &f.mode {
        None => 0o644,
        Some(m) => u32::from_str_radix(m, 8)
            .ok()
            .filter(|&m| m <= 0o7777)
            .ok_or_else(|| {
                Error::InvalidSpec(format!(
                    "path {:?}: mode {m:?} is not octal (like \"0644\")",
                    f.path
                ))
            })?,
    };
    Ok(SpecFile {
        path: f.path.clone(),
        content,
        mode,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_dns_label_rule_and_avoid_the_id_prefix() {
        for good in ["a", "python-ds", "x1", &"a".repeat(63)] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "Python", "-a", "a-", "a_b", "tpl-x", &"a".repeat(64), "a b"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn spec_rules_name_the_field() {
        let spec = |f: fn(&mut TemplateSpec)| {
            let mut s = TemplateSpec {
                image: "busybox".into(),
                ..TemplateSpec::default()
            };
            f(&mut s);
            check_spec(&s, 86_400).map_err(|e| e.to_string())
        };
        assert!(spec(|_| {}).is_ok());
        assert!(spec(|s| s.ttl = Some(59)).unwrap_err().contains("spec.ttl"));
        assert!(spec(|s| s.ttl = Some(86_401)).unwrap_err().contains("spec.ttl"));
        assert!(spec(|s| s.startup_timeout = Some(10_801))
            .unwrap_err()
            .contains("startupTimeout"));
        assert!(spec(|s| s.env = Some([("1A".into(), "x".into())].into()))
            .unwrap_err()
            .contains("spec.env"));
        let file = |path: &str, mode: Option<&str>| crate::wire::templates::TemplateFile {
            path: path.into(),
            content: "x".into(),
            encoding: None,
            mode: mode.map(Into::into),
        };
        let with_files = |files: Vec<crate::wire::templates::TemplateFile>| {
            let s = TemplateSpec {
                image: "busybox".into(),
                files: Some(files),
                ..TemplateSpec::default()
            };
            check_spec(&s, 86_400).map_err(|e| e.to_string())
        };
        assert!(with_files(vec![file("/w/a.txt", Some("0600"))]).is_ok());
        assert!(with_files(vec![file("w/a.txt", None)])
            .unwrap_err()
            .contains("absolute"));
        assert!(with_files(vec![file("/w/../etc/passwd", None)])
            .unwrap_err()
            .contains(".."));
        assert!(with_files(vec![file("/w/a", Some("0999"))])
            .unwrap_err()
            .contains("octal"));
        assert!(
            with_files((0..65).map(|i| file(&format!("/f{i}"), None)).collect())
                .unwrap_err()
                .contains("at most 64")
        );
        let big = crate::wire::templates::TemplateFile {
            content: "x".repeat(MAX_FILES_BYTES + 1),
            ..file("/big", None)
        };
        assert!(with_files(vec![big]).unwrap_err().contains("bytes in all"));
        assert!(spec(|s| s.readiness_probe = Some(ReadinessProbe::default()))
            .unwrap_err()
            .contains("exactly one"));
        assert!(spec(|s| s.resources = Some(SpecResources {
            memory: Some("lots".into()),
            ..SpecResources::default()
        }))
        .unwrap_err()
        .contains("spec.resources"));
    }

    #[test]
    fn upstream_requests_become_specs() {
        let req = CreateTemplateRequest {
            image: Some("python:3.11".into()),
            publish: Some("s3://b/p".into()),
            resource_limits: Some([("cpu".into(), "1".into()), ("disk".into(), "2Gi".into())].into()),
            readiness: Some(crate::wire::templates::UpstreamReadiness {
                probe: Some("tcp://127.0.0.1:8000".into()),
                warmup_seconds: None,
            }),
            ..CreateTemplateRequest::default()
        };
        let spec = upstream_spec(&req).unwrap();
        assert_eq!(spec.resources.as_ref().unwrap().disk.as_deref(), Some("2Gi"));
        assert_eq!(spec.readiness_probe.unwrap().tcp_socket.unwrap().port, 8000);
        assert_eq!(entrypoint(&TemplateSpec::default()), ["tail", "-f", "/dev/null"]);
        let bad = CreateTemplateRequest {
            resource_limits: Some([("gpu".into(), "1".into())].into()),
            ..req
        };
        assert!(upstream_spec(&bad)
            .unwrap_err()
            .to_string()
            .contains("only cpu, memory and disk"));
    }
}
