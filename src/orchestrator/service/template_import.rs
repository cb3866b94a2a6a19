//! Template import: many templates at once from a parsed document, with a strategy
//! (`create-only`, `update-only`, `create-or-update`), `dryRun` and `atomic`.
//!
//! Every item is validated first; per-item failures are reported by index while the valid
//! items are applied, unless `atomic`, where any failure applies nothing. Existing templates
//! get a new version only when the spec changed, so importing the same document twice is a
//! no-op.

use std::collections::{BTreeMap, BTreeSet};

use super::templates::{check_name, check_tags, new_version};
use super::Service;
use crate::orchestrator::auth::Principal;
use crate::orchestrator::error::Error;
use crate::orchestrator::http::error::ApiError;
use crate::orchestrator::store::{ApplyError, TemplateChange, TemplateRow, VersionRow};
use crate::orchestrator::templates_yaml::{self, ExportTemplate, ExportVersion};
use crate::wire::templates::{FailedItem, ImportResult, ImportedItem, SkippedItem};
use crate::wire::time::format_ms;
use crate::wire::time::now_ms;

/// How an import treats names that exist and names that do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// Existing names are skipped (`ALREADY_EXISTS`).
    CreateOnly,
    /// Missing names are skipped (`NOT_FOUND`).
    UpdateOnly,
    /// Both: create the missing, update the changed.
    #[default]
    CreateOrUpdate,
}

impl Strategy {
    /// `create-only`, `update-only` or `create-or-update`.
    pub fn parse(text: &str) -> Result<Self, Error> {
        match text {
            "create-only" => Ok(Strategy::CreateOnly),
            "update-only" => Ok(Strategy::UpdateOnly),
            "create-or-update" => Ok(Strategy::CreateOrUpdate),
            other => Err(Error::invalid(format!(
                "strategy {other:?}: expected create-only, update-only or create-or-update"
            ))),
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Strategy::CreateOnly => "create-only",
            Strategy::UpdateOnly => "update-only",
            Strategy::CreateOrUpdate => "create-or-update",
        }
    }
}

/// The options of `POST /v1/templates/import`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ImportOptions {
    /// What to do with existing and missing names.
    pub strategy: Strategy,
    /// Compute the result without writing.
    pub dry_run: bool,
    /// Any failed item applies nothing (400).
    pub atomic: bool,
    /// Start a prepull of every created or updated template's image.
    pub auto_prepull: bool,
}

/// One template of an import document (as the YAML layer reads it).
pub use crate::orchestrator::templates_yaml::ImportItem as Incoming;

/// What an item will do, once validated (a handful per import: their size does not matter).
#[allow(clippy::large_enum_variant)]
enum Plan {
    Create(TemplateRow, VersionRow),
    Update {
        row: TemplateRow,
        latest: VersionRow,
        /// The new version, when the spec changed.
        version: Option<VersionRow>,
        /// Whether the mutable fields changed.
        touched: bool,
    },
}

/// What to export.
#[derive(Debug, Clone)]
pub enum ExportSelection {
    /// One template, at `version` (default: the latest).
    One {
        /// Its id or name.
        id_or_name: String,
        /// The version whose spec is exported.
        version: Option<u32>,
    },
    /// Every readable template, or those with `tag`, or exactly `names` (all must exist).
    Many {
        /// Only templates with this tag.
        tag: Option<String>,
        /// Exactly these names.
        names: Vec<String>,
    },
}

impl Service {
    /// `GET /v1/templates/{idOrName}/export` and `GET /v1/templates/export`: a YAML document
    /// that `import` reads back.
    pub async fn export_templates(
        &self,
        selection: ExportSelection,
        all_versions: bool,
        caller: &Principal,
    ) -> Result<String, Error> {
        let chosen: Vec<(TemplateRow, VersionRow)> = match selection {
            ExportSelection::One { id_or_name, version } => {
                let (row, latest) = self.readable_template(&id_or_name, caller).await?;
                let at = match version {
                    None => latest,
                    Some(v) => self.store.template_version(&row.id, v).await?.ok_or_else(|| {
                        Error::not_found(
                            crate::orchestrator::error::Kind::TemplateVersion,
                            format!("{}@{v}", row.name),
                        )
                    })?,
                };
                vec![(row, at)]
            }
            ExportSelection::Many { tag, names } => {
                let mut chosen = Vec::new();
                for name in &names {
                    chosen.push(self.readable_template(name, caller).await?);
                }
                if names.is_empty() {
                    chosen = self
                        .store
                        .templates()
                        .await?
                        .into_iter()
                        .filter(|(row, _)| super::templates::may_read(caller, row))
                        .collect();
                }
                chosen.retain(|(row, _)| tag.as_ref().is_none_or(|t| row.tags.contains(t)));
                chosen
            }
        };
        let mut out = Vec::with_capacity(chosen.len());
        for (row, at) in chosen {
            let versions = if all_versions {
                self.store
                    .template_versions(&row.id)
                    .await?
                    .into_iter()
                    .map(|v| ExportVersion {
                        version: v.version,
                        changelog: v.changelog,
                        created_at: format_ms(v.created_at),
                        spec: v.spec,
                    })
                    .collect()
            } else {
                Vec::new()
            };
            out.push(ExportTemplate {
                name: row.name,
                display_name: row.display_name,
                description: row.description,
                tags: row.tags,
                author: row.author,
                is_public: row.is_public,
                spec: at.spec,
                versions,
            });
        }
        templates_yaml::export(&out, all_versions).map_err(|e| Error::Internal(e.to_string()))
    }

    /// Applies `items` with `options`; `warnings` are the parser's, passed through.
    pub async fn import_templates(
        &self,
        items: Vec<Incoming>,
        warnings: Vec<String>,
        options: ImportOptions,
        caller: &Principal,
    ) -> Result<ImportResult, Error> {
        let mut result = ImportResult {
            strategy: options.strategy.as_str().into(),
            dry_run: options.dry_run,
            warnings,
            ..ImportResult::default()
        };
        let mut seen = BTreeSet::new();
        if let Some(twice) = items.iter().find(|i| !seen.insert(i.name.clone())) {
            return Err(Error::ImportInvalid(format!(
                "item {}: template {} appears twice in the document",
                twice.index, twice.name
            )));
        }
        let existing: BTreeMap<String, (TemplateRow, VersionRow)> = self
            .store
            .templates()
            .await?
            .into_iter()
            .map(|(row, latest)| (row.name.clone(), (row, latest)))
            .collect();
        let now = now_ms();
        let mut plans = Vec::new();
        for item in items {
            let (index, name) = (item.index, item.name.clone());
            let fail = |e: Error| FailedItem {
                name: name.clone(),
                index,
                code: ApiError::from(&e).entry.code.to_owned(),
                message: e.to_string(),
            };
            if let Err(e) = self.check_item(&item) {
                result.failed.push(fail(e));
                continue;
            }
            match (existing.get(&item.name), options.strategy) {
                (Some(_), Strategy::CreateOnly) => result.skipped.push(SkippedItem {
                    name,
                    reason: "ALREADY_EXISTS".into(),
                }),
                (None, Strategy::UpdateOnly) => result.skipped.push(SkippedItem {
                    name,
                    reason: "NOT_FOUND".into(),
                }),
                (Some((row, latest)), _) => plans.push((index, update_plan(row, latest, item, caller, now))),
                (None, _) => plans.push((index, create_plan(item, caller, now))),
            }
        }
        if options.atomic && !result.failed.is_empty() {
            let list: Vec<String> = result
                .failed
                .iter()
                .map(|f| format!("item {} ({}): {}", f.index, f.name, f.message))
                .collect();
            return Err(Error::ImportInvalid(format!(
                "atomic import refused; nothing was applied: {}",
                list.join("; ")
            )));
        }
        let changes: Vec<(usize, TemplateChange)> = plans
            .iter()
            .filter_map(|(index, plan)| change(plan).map(|c| (*index, c)))
            .collect();
        if !options.dry_run {
            if options.atomic {
                let batch = changes.iter().map(|(_, c)| c.clone()).collect();
                self.store.apply_templates(batch).await.map_err(applied)?;
            } else {
                for (index, change) in &changes {
                    if let Err(e) = self.store.apply_templates(vec![change.clone()]).await {
                        let e = applied(e);
                        let (name, _) = names(change);
                        result.failed.push(FailedItem {
                            name,
                            index: *index,
                            code: ApiError::from(&e).entry.code.to_owned(),
                            message: e.to_string(),
                        });
                    }
                }
            }
        }
        let failed: BTreeSet<usize> = result.failed.iter().map(|f| f.index).collect();
        for (index, plan) in plans {
            if failed.contains(&index) {
                continue;
            }
            match plan {
                Plan::Create(row, version) => {
                    result.created.push(ImportedItem {
                        name: row.name.clone(),
                        from_version: None,
                        version: version.version,
                    });
                    if !options.dry_run {
                        self.after_version(&row, &version);
                    }
                }
                Plan::Update {
                    row,
                    latest,
                    version: Some(version),
                    ..
                } => {
                    result.updated.push(ImportedItem {
                        name: row.name.clone(),
                        from_version: Some(latest.version),
                        version: version.version,
                    });
                    if !options.dry_run {
                        self.after_version(&row, &version);
                    }
                }
                Plan::Update { row, latest, .. } => result.unchanged.push(ImportedItem {
                    name: row.name,
                    from_version: None,
                    version: latest.version,
                }),
            }
        }
        result.failed.sort_by_key(|f| f.index);
        if options.auto_prepull && !options.dry_run {
            self.prepull_imported(&mut result, caller).await;
        }
        tracing::info!(
            strategy = options.strategy.as_str(),
            dry_run = options.dry_run,
            created = result.created.len(),
            updated = result.updated.len(),
            unchanged = result.unchanged.len(),
            skipped = result.skipped.len(),
            failed = result.failed.len(),
            "templates imported"
        );
        Ok(result)
    }

    /// Starts a prepull of every created or updated template's image (one per image: the
    /// prepull service dedups); a prepull that cannot start is a warning, never the import's
    /// failure.
    async fn prepull_imported(&self, result: &mut ImportResult, caller: &Principal) {
        let applied: Vec<(String, u32)> = result
            .created
            .iter()
            .chain(&result.updated)
            .map(|i| (i.name.clone(), i.version))
            .collect();
        for (name, version) in applied {
            let template = match self.store.template(&name).await {
                Ok(Some((row, latest))) if latest.version == version => (row.id, latest.spec.image),
                Ok(_) => continue,
                Err(e) => {
                    result.warnings.push(format!("{name}: no prepull: {e}"));
                    continue;
                }
            };
            let (id, image) = template;
            match self.start_prepull(image, caller, Some((id, version))).await {
                Ok((task, _)) if !result.prepull_tasks.contains(&task.id) => {
                    result.prepull_tasks.push(task.id)
                }
                Ok(_) => {}
                Err(e) => result.warnings.push(format!("{name}: no prepull: {e}")),
            }
        }
    }

    fn check_item(&self, item: &Incoming) -> Result<(), Error> {
        check_name(&item.name)?;
        if let Some(tags) = &item.tags {
            check_tags(tags)?;
        }
        self.check_spec(&item.spec)
    }
}

fn create_plan(item: Incoming, caller: &Principal, now: i64) -> Plan {
    let row = TemplateRow {
        id: format!("tpl-{}", uuid::Uuid::new_v4()),
        name: item.name,
        display_name: item.display_name,
        description: item.description,
        tags: item.tags.unwrap_or_default(),
        author: item.author.unwrap_or_else(|| caller.id.clone()),
        is_public: item.is_public.unwrap_or(true),
        metadata: BTreeMap::new(),
        publish: "local".into(),
        owner: caller.id.clone(),
        latest_version: 1,
        created_at: now,
        updated_at: now,
    };
    let version = new_version(1, item.spec, Some("imported".into()), caller, None, now);
    Plan::Create(row, version)
}

fn update_plan(row: &TemplateRow, latest: &VersionRow, item: Incoming, caller: &Principal, now: i64) -> Plan {
    let mut updated = row.clone();
    updated.display_name = item.display_name.or(updated.display_name);
    updated.description = item.description.or(updated.description);
    updated.tags = item.tags.unwrap_or(updated.tags);
    updated.is_public = item.is_public.unwrap_or(updated.is_public);
    let version = (item.spec != latest.spec).then(|| {
        new_version(
            latest.version + 1,
            item.spec,
            Some("imported".into()),
            caller,
            None,
            now,
        )
    });
    let touched = updated != *row;
    updated.updated_at = now;
    Plan::Update {
        row: updated,
        latest: latest.clone(),
        version,
        touched,
    }
}

/// The store change of a plan; none when nothing changes.
fn change(plan: &Plan) -> Option<TemplateChange> {
    match plan {
        Plan::Create(row, version) => Some(TemplateChange::Create(row.clone(), version.clone())),
        Plan::Update {
            row,
            latest,
            version: Some(version),
            ..
        } => Some(TemplateChange::AddVersion {
            row: TemplateRow {
                latest_version: version.version,
                ..row.clone()
            },
            after: latest.version,
            version: version.clone(),
        }),
        Plan::Update {
            row, touched: true, ..
        } => Some(TemplateChange::Update(row.clone())),
        Plan::Update { .. } => None,
    }
}

fn names(change: &TemplateChange) -> (String, u32) {
    match change {
        TemplateChange::Create(row, v) => (row.name.clone(), v.version),
        TemplateChange::AddVersion { row, version, .. } => (row.name.clone(), version.version),
        TemplateChange::Update(row) => (row.name.clone(), row.latest_version),
    }
}

fn applied(e: ApplyError) -> Error {
    match e {
        ApplyError::NameTaken(name) => {
            Error::Conflict(crate::orchestrator::error::Conflict::TemplateExists(name))
        }
        ApplyError::Raced(name) => Error::Conflict(crate::orchestrator::error::Conflict::Runtime(format!(
            "template {name} changed during the import; import again"
        ))),
        ApplyError::Store(e) => e.into(),
    }
}
