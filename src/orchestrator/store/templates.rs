//! The `templates` and `template_versions` tables. A template row holds what changes in place
//! (display name, tags, visibility, labels); each version row is immutable apart from its
//! build state. Every change goes through [`Store::apply_templates`], one transaction for a
//! whole list of changes, so that an atomic import and a single create share one code path.

use std::collections::BTreeMap;

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::{sql, Store, StoreError};
use crate::wire::templates::TemplateSpec;

const TEMPLATES: &str = "templates";
const VERSIONS: &str = "template_versions";

/// A template's mutable part.
#[derive(Debug, Clone, PartialEq)]
pub struct TemplateRow {
    /// `tpl-<uuid>`.
    pub id: String,
    /// Unique name.
    pub name: String,
    /// Display name.
    pub display_name: Option<String>,
    /// Description.
    pub description: Option<String>,
    /// Tags.
    pub tags: Vec<String>,
    /// Author.
    pub author: String,
    /// Readable by all.
    pub is_public: bool,
    /// Labels.
    pub metadata: BTreeMap<String, String>,
    /// Upstream's publish target, echoed.
    pub publish: String,
    /// The principal that created it.
    pub owner: String,
    /// The current version.
    pub latest_version: u32,
    /// Epoch ms.
    pub created_at: i64,
    /// Epoch ms.
    pub updated_at: i64,
}

/// One version.
#[derive(Debug, Clone, PartialEq)]
pub struct VersionRow {
    /// 1, 2, …
    pub version: u32,
    /// The spec.
    pub spec: TemplateSpec,
    /// Why it was made.
    pub changelog: Option<String>,
    /// Epoch ms.
    pub created_at: i64,
    /// Principal.
    pub created_by: String,
    /// The version a rollback copied.
    pub rolled_back_from: Option<u32>,
    /// `Pending`, `Building`, `Succeeded` or `Failed`.
    pub phase: String,
    /// The image sandboxes of this version run.
    pub manifest_ref: Option<String>,
    /// Why the build failed.
    pub message: Option<String>,
}

/// One change to the templates, applied with others in one transaction.
#[derive(Debug, Clone)]
pub enum TemplateChange {
    /// A new template with its first version. Fails (the whole batch) if the name is taken.
    Create(TemplateRow, VersionRow),
    /// A new version of `template_id`, expected to follow `after` (else the batch fails:
    /// another writer got there first). The row's mutable fields are replaced with `row`.
    AddVersion {
        /// The template as it should read afterwards (`latest_version` = the new version).
        row: TemplateRow,
        /// The version it follows.
        after: u32,
        /// The new version.
        version: VersionRow,
    },
    /// Mutable fields only.
    Update(TemplateRow),
}

/// Why a batch of changes was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A `Create` named an existing template.
    #[error("template {0} already exists")]
    NameTaken(String),
    /// An `AddVersion` lost a race with another writer.
    #[error("template {0} changed concurrently")]
    Raced(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Store {
    /// Applies `changes` in one transaction: all or nothing.
    pub async fn apply_templates(&self, changes: Vec<TemplateChange>) -> Result<(), ApplyError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.call(move |c| {
            let _ = reply.send(apply(c, &changes));
            Ok(())
        })
        .await?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// The template with this id or name, with its latest version.
    pub async fn template(&self, id_or_name: &str) -> Result<Option<(TemplateRow, VersionRow)>, StoreError> {
        let key = id_or_name.to_owned();
        self.call(move |c| {
            let row = c
                .query_row(
                    &format!("SELECT {COLUMNS} FROM templates WHERE id = ?1 OR name = ?1"),
                    [&key],
                    |r| Ok(read_template(r)),
                )
                .optional()
                .map_err(sql("read a template"))?
                .transpose()?;
            let Some(row) = row else { return Ok(None) };
            let latest = version(c, &row.id, row.latest_version)?.ok_or_else(|| StoreError::Corrupt {
                table: TEMPLATES,
                id: row.id.clone(),
                field: "latest_version",
            })?;
            Ok(Some((row, latest)))
        })
        .await
    }

    /// Every template with its latest version, by name.
    pub async fn templates(&self) -> Result<Vec<(TemplateRow, VersionRow)>, StoreError> {
        self.call(|c| {
            let rows: Vec<TemplateRow> = {
                let mut stmt = c
                    .prepare(&format!("SELECT {COLUMNS} FROM templates ORDER BY name"))
                    .map_err(sql("list templates"))?;
                let rows = stmt
                    .query_map([], |r| Ok(read_template(r)))
                    .map_err(sql("list templates"))?
                    .collect::<rusqlite::Result<Vec<_>>>()
                    .map_err(sql("list templates"))?;
                rows.into_iter().collect::<Result<_, _>>()?
            };
            rows.into_iter()
                .map(|row| {
                    let latest =
                        version(c, &row.id, row.latest_version)?.ok_or_else(|| StoreError::Corrupt {
                            table: TEMPLATES,
                            id: row.id.clone(),
                            field: "latest_version",
                        })?;
                    Ok((row, latest))
                })
                .collect()
        })
        .await
    }

    /// Every version of a template, newest first.
    pub async fn template_versions(&self, template_id: &str) -> Result<Vec<VersionRow>, StoreError> {
        let id = template_id.to_owned();
        self.call(move |c| {
            let mut stmt = c
                .prepare(&format!(
                    "SELECT {VERSION_COLUMNS} FROM template_versions WHERE template_id = ?1 ORDER BY version DESC"
                ))
                .map_err(sql("list template versions"))?;
            let rows = stmt
                .query_map([&id], |r| Ok(read_version(&id, r)))
                .map_err(sql("list template versions"))?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(sql("list template versions"))?;
            rows.into_iter().collect()
        })
        .await
    }

    /// One version.
    pub async fn template_version(
        &self,
        template_id: &str,
        v: u32,
    ) -> Result<Option<VersionRow>, StoreError> {
        let id = template_id.to_owned();
        self.call(move |c| version(c, &id, v)).await
    }

    /// Records a version's build state.
    pub async fn set_build_state(
        &self,
        template_id: &str,
        v: u32,
        phase: &str,
        manifest_ref: Option<String>,
        message: Option<String>,
    ) -> Result<(), StoreError> {
        let (id, phase) = (template_id.to_owned(), phase.to_owned());
        self.call(move |c| {
            c.execute(
                "UPDATE template_versions SET phase = ?3, manifest_ref = ?4, message = ?5
                 WHERE template_id = ?1 AND version = ?2",
                params![id, v, phase, manifest_ref, message],
            )
            .map(drop)
            .map_err(sql("record a build state"))
        })
        .await
    }

    /// Stores a version's build log (the install command's output).
    pub async fn set_build_log(&self, template_id: &str, v: u32, log: String) -> Result<(), StoreError> {
        let id = template_id.to_owned();
        self.call(move |c| {
            c.execute(
                "UPDATE template_versions SET build_log = ?3 WHERE template_id = ?1 AND version = ?2",
                params![id, v, log],
            )
            .map(drop)
            .map_err(sql("record a build log"))
        })
        .await
    }

    /// A version's build log; `None` when there is no such version, `Some("")` when it has
    /// none.
    pub async fn build_log(&self, template_id: &str, v: u32) -> Result<Option<String>, StoreError> {
        let id = template_id.to_owned();
        self.call(move |c| {
            c.query_row(
                "SELECT COALESCE(build_log, '') FROM template_versions WHERE template_id = ?1 AND version = ?2",
                params![id, v],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql("read a build log"))
        })
        .await
    }

    /// Versions whose build had not finished when sandboxd last stopped.
    pub async fn unfinished_builds(&self) -> Result<Vec<(String, u32)>, StoreError> {
        self.call(|c| {
            let mut stmt = c
                .prepare("SELECT template_id, version FROM template_versions WHERE phase IN ('Pending', 'Building')")
                .map_err(sql("read unfinished builds"))?;
            let rows = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(sql("read unfinished builds"))?;
            rows.collect::<rusqlite::Result<_>>()
                .map_err(sql("read unfinished builds"))
        })
        .await
    }

    /// Deletes a template and its versions; false when it did not exist.
    pub async fn delete_template(&self, template_id: &str) -> Result<bool, StoreError> {
        let id = template_id.to_owned();
        self.call(move |c| {
            let tx = c.transaction().map_err(sql("begin a delete"))?;
            tx.execute("DELETE FROM template_versions WHERE template_id = ?1", [&id])
                .map_err(sql("delete template versions"))?;
            let n = tx
                .execute("DELETE FROM templates WHERE id = ?1", [&id])
                .map_err(sql("delete a template"))?;
            tx.commit().map_err(sql("commit a delete"))?;
            Ok(n > 0)
        })
        .await
    }
}

const COLUMNS: &str =
    "id, name, display_name, description, tags, author, is_public, metadata, publish, owner, \
                       latest_version, created_at, updated_at";
const VERSION_COLUMNS: &str =
    "version, spec, changelog, created_at, created_by, rolled_back_from, phase, manifest_ref, message";

fn apply(c: &mut Connection, changes: &[TemplateChange]) -> Result<(), ApplyError> {
    let tx = c.transaction().map_err(sql("begin a template change"))?;
    for change in changes {
        match change {
            TemplateChange::Create(row, v) => {
                let taken = tx
                    .query_row("SELECT 1 FROM templates WHERE name = ?1", [&row.name], |_| Ok(()))
                    .optional()
                    .map_err(sql("check a template name"))?
                    .is_some();
                if taken {
                    return Err(ApplyError::NameTaken(row.name.clone()));
                }
                insert_row(&tx, row)?;
                insert_version(&tx, &row.id, v)?;
            }
            TemplateChange::AddVersion { row, after, version } => {
                let n = tx
                    .execute(
                        "UPDATE templates SET latest_version = ?2 WHERE id = ?1 AND latest_version = ?3",
                        params![row.id, version.version, after],
                    )
                    .map_err(sql("advance a template"))?;
                if n == 0 {
                    return Err(ApplyError::Raced(row.name.clone()));
                }
                update_row(&tx, row)?;
                insert_version(&tx, &row.id, version)?;
            }
            TemplateChange::Update(row) => update_row(&tx, row)?,
        }
    }
    tx.commit().map_err(sql("commit a template change"))?;
    Ok(())
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("strings and maps serialize")
}

fn insert_row(c: &Connection, row: &TemplateRow) -> Result<(), StoreError> {
    c.execute(
        &format!("INSERT INTO templates ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"),
        params![
            row.id,
            row.name,
            row.display_name,
            row.description,
            to_json(&row.tags),
            row.author,
            row.is_public,
            to_json(&row.metadata),
            row.publish,
            row.owner,
            row.latest_version,
            row.created_at,
            row.updated_at
        ],
    )
    .map(drop)
    .map_err(sql("insert a template"))
}

fn update_row(c: &Connection, row: &TemplateRow) -> Result<(), StoreError> {
    c.execute(
        "UPDATE templates SET display_name = ?2, description = ?3, tags = ?4, is_public = ?5, metadata = ?6,
            updated_at = ?7 WHERE id = ?1",
        params![
            row.id,
            row.display_name,
            row.description,
            to_json(&row.tags),
            row.is_public,
            to_json(&row.metadata),
            row.updated_at
        ],
    )
    .map(drop)
    .map_err(sql("update a template"))
}

fn insert_version(c: &Connection, template_id: &str, v: &VersionRow) -> Result<(), StoreError> {
    c.execute(
        &format!(
            "INSERT INTO template_versions (template_id, {VERSION_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
        ),
        params![
            template_id,
            v.version,
            to_json(&v.spec),
            v.changelog,
            v.created_at,
            v.created_by,
            v.rolled_back_from,
            v.phase,
            v.manifest_ref,
            v.message
        ],
    )
    .map(drop)
    .map_err(sql("insert a template version"))
}

fn version(c: &Connection, template_id: &str, v: u32) -> Result<Option<VersionRow>, StoreError> {
    c.query_row(
        &format!("SELECT {VERSION_COLUMNS} FROM template_versions WHERE template_id = ?1 AND version = ?2"),
        params![template_id, v],
        |r| Ok(read_version(template_id, r)),
    )
    .optional()
    .map_err(sql("read a template version"))?
    .transpose()
}

fn corrupt<'a>(id: &'a str, field: &'static str) -> impl Fn(serde_json::Error) -> StoreError + 'a {
    move |_| StoreError::Corrupt {
        table: TEMPLATES,
        id: id.to_owned(),
        field,
    }
}

fn read_template(r: &Row<'_>) -> Result<TemplateRow, StoreError> {
    let get = |i: usize| -> Result<String, StoreError> { r.get(i).map_err(sql("read a template")) };
    let id: String = get(0)?;
    let tags = serde_json::from_str(&get(4)?).map_err(corrupt(&id, "tags"))?;
    let metadata = serde_json::from_str(&get(7)?).map_err(corrupt(&id, "metadata"))?;
    Ok(TemplateRow {
        name: get(1)?,
        display_name: r.get(2).map_err(sql("read a template"))?,
        description: r.get(3).map_err(sql("read a template"))?,
        tags,
        author: get(5)?,
        is_public: r.get(6).map_err(sql("read a template"))?,
        metadata,
        publish: get(8)?,
        owner: get(9)?,
        latest_version: r.get(10).map_err(sql("read a template"))?,
        created_at: r.get(11).map_err(sql("read a template"))?,
        updated_at: r.get(12).map_err(sql("read a template"))?,
        id,
    })
}

fn read_version(template_id: &str, r: &Row<'_>) -> Result<VersionRow, StoreError> {
    let s = |e| sql("read a template version")(e);
    let spec: String = r.get(1).map_err(&s)?;
    let spec = serde_json::from_str(&spec).map_err(|_| StoreError::Corrupt {
        table: VERSIONS,
        id: template_id.to_owned(),
        field: "spec",
    })?;
    Ok(VersionRow {
        version: r.get(0).map_err(&s)?,
        spec,
        changelog: r.get(2).map_err(&s)?,
        created_at: r.get(3).map_err(&s)?,
        created_by: r.get(4).map_err(&s)?,
        rolled_back_from: r.get(5).map_err(&s)?,
        phase: r.get(6).map_err(&s)?,
        manifest_ref: r.get(7).map_err(&s)?,
        message: r.get(8).map_err(&s)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str) -> TemplateRow {
        TemplateRow {
            id: format!("tpl-{name}"),
            name: name.into(),
            display_name: None,
            description: Some("d".into()),
            tags: vec!["a".into()],
            author: "alice".into(),
            is_public: true,
            metadata: BTreeMap::new(),
            publish: "local".into(),
            owner: "alice".into(),
            latest_version: 1,
            created_at: 1,
            updated_at: 1,
        }
    }

    fn v(n: u32, image: &str) -> VersionRow {
        VersionRow {
            version: n,
            spec: TemplateSpec {
                image: image.into(),
                ..TemplateSpec::default()
            },
            changelog: None,
            created_at: 1,
            created_by: "alice".into(),
            rolled_back_from: None,
            phase: "Succeeded".into(),
            manifest_ref: Some(image.into()),
            message: None,
        }
    }

    #[tokio::test]
    async fn a_failed_batch_applies_nothing_and_versions_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .apply_templates(vec![TemplateChange::Create(row("a"), v(1, "img:1"))])
            .await
            .unwrap();
        let mut a2 = row("a");
        a2.latest_version = 2;
        let err = store
            .apply_templates(vec![
                TemplateChange::AddVersion {
                    row: a2.clone(),
                    after: 1,
                    version: v(2, "img:2"),
                },
                TemplateChange::Create(row("b"), v(1, "b:1")),
                TemplateChange::Create(row("a"), v(1, "again")),
            ])
            .await
            .unwrap_err();
        assert!(matches!(err, ApplyError::NameTaken(n) if n == "a"));
        assert!(store.template("b").await.unwrap().is_none(), "b was rolled back");
        assert_eq!(store.template("a").await.unwrap().unwrap().1.version, 1);
        // A stale `after` loses.
        store
            .apply_templates(vec![TemplateChange::AddVersion {
                row: a2.clone(),
                after: 1,
                version: v(2, "img:2"),
            }])
            .await
            .unwrap();
        let err = store
            .apply_templates(vec![TemplateChange::AddVersion {
                row: a2,
                after: 1,
                version: v(2, "img:other"),
            }])
            .await
            .unwrap_err();
        assert!(matches!(err, ApplyError::Raced(_)));
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        let (t, latest) = store.template("tpl-a").await.unwrap().unwrap();
        assert_eq!((t.latest_version, latest.spec.image.as_str()), (2, "img:2"));
        let versions: Vec<u32> = store
            .template_versions(&t.id)
            .await
            .unwrap()
            .iter()
            .map(|v| v.version)
            .collect();
        assert_eq!(versions, [2, 1]);
        assert!(store.delete_template(&t.id).await.unwrap());
        assert!(store.template_versions(&t.id).await.unwrap().is_empty());
    }
}
