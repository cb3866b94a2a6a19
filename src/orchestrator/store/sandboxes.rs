//! The `sandboxes` table.

use std::collections::BTreeMap;

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::{sql, Store, StoreError};
use crate::orchestrator::runtime::{Instance, Mount, Resources, RuntimeKind, Workspace};
use crate::wire::lifecycle::{PausePolicy, PlatformSpec};

const TABLE: &str = "sandboxes";

/// What sandboxd itself last did to a sandbox; the live state comes from the runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Being created: not yet answering.
    Pending,
    /// Created, and execd answers, but its pre-start hook runs: a startup task of the
    /// sandboxd that created it waits for the hook, then for the readiness probe, if any.
    PreStart,
    /// Created and execd is up; a startup task runs the readiness probe.
    Probing,
    /// Created and answered `/ping`; the runtime's state is the truth from here on.
    Ready,
    /// Paused by sandboxd (or seen paused on the last read). Kept so that the server proxy
    /// can refuse a frozen sandbox without asking the runtime on every request; a frozen
    /// container accepts connections and never answers them.
    Paused,
    /// A pool-backed sandbox given back to its pool (`POST /sandboxes/{id}/release`): no
    /// instance any more; the record stays, `Terminated`, until its short expiry.
    Released,
    /// A Rootfs pause is committing the sandbox's filesystem (its hibernation is recorded):
    /// `Pausing`, `COMMITTING`.
    Committing,
    /// Rootfs-paused: no instance, the filesystem in the hibernation's image: `Paused`,
    /// `HIBERNATED`.
    Hibernated,
    /// A Rootfs resume is creating the sandbox again from its hibernation's image:
    /// `Resuming`, `RESTORING`.
    Restoring,
    /// Created with `extensions["sandboxd.autoStart"]="false"`: the instance exists, not
    /// started, until `POST /sandboxes/{id}/start`: `Pending`, `AWAITING_START`.
    AwaitingStart,
}

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::PreStart => "pre_start",
            Phase::Probing => "probing",
            Phase::Ready => "ready",
            Phase::Paused => "paused",
            Phase::Released => "released",
            Phase::Committing => "committing",
            Phase::Hibernated => "hibernated",
            Phase::Restoring => "restoring",
            Phase::AwaitingStart => "awaiting_start",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(Phase::Pending),
            "pre_start" => Some(Phase::PreStart),
            "probing" => Some(Phase::Probing),
            "ready" => Some(Phase::Ready),
            "paused" => Some(Phase::Paused),
            "released" => Some(Phase::Released),
            "committing" => Some(Phase::Committing),
            "hibernated" => Some(Phase::Hibernated),
            "restoring" => Some(Phase::Restoring),
            "awaiting_start" => Some(Phase::AwaitingStart),
            _ => None,
        }
    }
}

/// One sandbox.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// UUID, also labelled on what the runtime made.
    pub id: String,
    /// The runtime's handle, once created.
    pub instance: Option<Instance>,
    /// Image reference.
    pub image: String,
    /// Entrypoint as requested.
    pub entrypoint: Vec<String>,
    /// User labels.
    pub metadata: BTreeMap<String, String>,
    /// Extensions as requested.
    pub extensions: BTreeMap<String, String>,
    /// Requested platform.
    pub platform: Option<PlatformSpec>,
    /// The sandbox's execd access token.
    pub token: String,
    /// Creation time, epoch ms.
    pub created_at: i64,
    /// Expiry, epoch ms; `None` for manual cleanup.
    pub expires_at: Option<i64>,
    /// What sandboxd last did.
    pub phase: Phase,
    /// When `phase` last changed, epoch ms.
    pub transition_at: i64,
    /// The principal that created it.
    pub owner: String,
    /// The caller's `X-Business-Domain`, if any.
    pub business_domain: Option<String>,
    /// The template version it was made from.
    pub template: Option<TemplateRef>,
    /// Why it failed, when sandboxd decided it did (a startup script or readiness probe that
    /// failed); the runtime's view decides otherwise.
    pub failure: Option<Failure>,
    /// Display name.
    pub name: Option<String>,
    /// Resource limits as given.
    pub resource_limits: BTreeMap<String, String>,
    /// Lifetime in seconds as created; `None` for manual cleanup.
    pub timeout: Option<u64>,
    /// Environment as created.
    pub env: BTreeMap<String, String>,
    /// For a sandbox acquired from a warm pool: the pool and the member whose instance it
    /// runs in.
    pub pool: Option<PoolLink>,
    /// The snapshot it was made from.
    pub snapshot_id: Option<String>,
    /// How it pauses.
    pub pause_policy: PausePolicy,
    /// What the runtime was asked to create (`None` for sandboxes made before it was kept,
    /// which cannot be Rootfs-paused).
    pub launch: Option<Launch>,
    /// Where its filesystem is kept while Rootfs-paused (set from `Committing` to `Restoring`).
    pub hibernation: Option<Hibernation>,
}

impl Record {
    /// The id the runtime knows the sandbox's instance by (its label): the pool member's for
    /// a pool-backed sandbox, whose container was made before the sandbox id existed.
    pub fn runtime_key(&self) -> &str {
        self.pool.as_ref().map_or(&self.id, |p| &p.member)
    }
}

/// What a sandbox was launched with, beyond its record: what a Rootfs resume creates it with
/// again (from its hibernation's image, without files: they are in the image).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Launch {
    /// The environment the runtime was given (sandboxd's variables included).
    pub env: BTreeMap<String, String>,
    /// Limits.
    pub resources: Resources,
    /// Volumes (named volumes survive a Rootfs pause and are mounted again).
    pub mounts: Vec<Mount>,
    /// Isolated sessions.
    pub isolation: bool,
    /// The image the instance runs from when a Rootfs resume made it from its hibernation's
    /// (`None`: the record's): removed with the instance, since nothing else uses it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Its persistent workspace (made again at a Rootfs resume, removed with the sandbox).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<Workspace>,
}

/// A Rootfs-paused sandbox's filesystem and what it had.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Hibernation {
    /// The committed image, `sandboxd-paused/<id>:<epoch ms>` (a tag per pause, so that the
    /// image a resumed instance runs from is never re-tagged by the next pause and can be
    /// removed by name after it).
    pub image: String,
    /// The instance it had (a resume tries its host ports first).
    pub previous: Instance,
    /// With `suspendExpiry`: the milliseconds it had left when paused (its `expires_at` is
    /// cleared meanwhile, and set again on resume).
    pub suspended_ms: Option<i64>,
    /// Nothing was committed: `image` is the one the sandbox ran from, and its persistent
    /// workspace is all that was kept (a runtime whose Rootfs pause is
    /// [`RootfsPause::Workspace`](crate::orchestrator::runtime::RootfsPause::Workspace)).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub workspace_only: bool,
}

/// The pool member a pool-backed sandbox runs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolLink {
    /// The pool's name.
    pub pool: String,
    /// The member's id (the runtime's label on its container).
    pub member: String,
}

/// The template version a sandbox was made from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TemplateRef {
    /// `tpl-<uuid>`.
    pub id: String,
    /// Its name then.
    pub name: String,
    /// The version.
    pub version: u32,
}

/// A failure sandboxd recorded: the contract's `status.reason` and `status.message`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Failure {
    /// `PRE_START_FAILED`, `READINESS_PROBE_FAILED`, …
    pub reason: String,
    /// What happened, with the sandbox's own last output.
    pub message: String,
}

/// A row that could not be read: its id (when even that was readable) and why.
#[derive(Debug)]
pub struct RowError {
    /// The row's id.
    pub id: String,
    /// What is wrong with it.
    pub error: StoreError,
}

const COLUMNS: &str = "id, runtime, runtime_ref, runtime_data, image, entrypoint, metadata, \
     extensions, platform, token, created_at, expires_at, phase, transition_at, owner, business_domain, \
     template_id, template_name, template_version, failure, name, resource_limits, timeout, env, pool, pool_member, \
     snapshot_id, pause_policy, launch, hibernation";

impl Store {
    /// Adds a new sandbox.
    pub async fn insert(&self, r: &Record) -> Result<(), StoreError> {
        let r = r.clone();
        self.call(move |c| insert_row(c, &r).map_err(sql("insert a sandbox")))
            .await
    }

    /// Writes back every mutable column of `r` (its launch is set once, after create). Returns
    /// false when the sandbox is gone.
    pub async fn update(&self, r: &Record) -> Result<bool, StoreError> {
        let r = r.clone();
        self.call(move |c| {
            let (runtime, reference, data) = instance_columns(&r);
            c.execute(
                "UPDATE sandboxes SET runtime = ?2, runtime_ref = ?3, runtime_data = ?4,
                 metadata = ?5, expires_at = ?6, phase = ?7, transition_at = ?8, failure = ?9,
                 hibernation = ?10, launch = ?11 WHERE id = ?1",
                params![
                    r.id,
                    runtime,
                    reference,
                    data,
                    json(&r.metadata),
                    r.expires_at,
                    r.phase.as_str(),
                    r.transition_at,
                    r.failure.as_ref().map(json),
                    r.hibernation.as_ref().map(json),
                    r.launch.as_ref().map(json),
                ],
            )
            .map(|n| n == 1)
            .map_err(sql("update a sandbox"))
        })
        .await
    }

    /// Writes back `r` (as [`Store::update`]) only if the stored phase is still `from`: the
    /// one writer that wins a transition (two pauses at once, a resume racing a pause).
    /// Returns false when the phase had moved on (or the sandbox is gone).
    pub async fn update_from(&self, r: &Record, from: Phase) -> Result<bool, StoreError> {
        let r = r.clone();
        self.call(move |c| {
            let (runtime, reference, data) = instance_columns(&r);
            c.execute(
                "UPDATE sandboxes SET runtime = ?2, runtime_ref = ?3, runtime_data = ?4,
                 metadata = ?5, expires_at = ?6, phase = ?7, transition_at = ?8, failure = ?9,
                 hibernation = ?10, launch = ?11 WHERE id = ?1 AND phase = ?12",
                params![
                    r.id,
                    runtime,
                    reference,
                    data,
                    json(&r.metadata),
                    r.expires_at,
                    r.phase.as_str(),
                    r.transition_at,
                    r.failure.as_ref().map(json),
                    r.hibernation.as_ref().map(json),
                    r.launch.as_ref().map(json),
                    from.as_str(),
                ],
            )
            .map(|n| n == 1)
            .map_err(sql("update a sandbox"))
        })
        .await
    }

    /// How many sandboxes were made from snapshot `id`.
    pub async fn count_from_snapshot(&self, id: &str) -> Result<u64, StoreError> {
        let id = id.to_owned();
        self.call(move |c| {
            c.query_row(
                "SELECT COUNT(*) FROM sandboxes WHERE snapshot_id = ?1",
                [&id],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n.max(0) as u64)
            .map_err(sql("count a snapshot's sandboxes"))
        })
        .await
    }

    /// One sandbox; a row that cannot be read is an error.
    pub async fn get(&self, id: &str) -> Result<Option<Record>, StoreError> {
        let id = id.to_owned();
        self.call(move |c| {
            let row = c
                .query_row(
                    &format!("SELECT {COLUMNS} FROM sandboxes WHERE id = ?1"),
                    [&id],
                    raw,
                )
                .optional()
                .map_err(sql("read a sandbox"))?;
            row.map(|raw| record(raw).map_err(|e| e.error)).transpose()
        })
        .await
    }

    /// Every sandbox, newest first: each readable row, or why it is not.
    pub async fn all(&self) -> Result<Vec<Result<Record, RowError>>, StoreError> {
        self.call(|c| {
            let mut stmt = c
                .prepare(&format!(
                    "SELECT {COLUMNS} FROM sandboxes ORDER BY created_at DESC, id"
                ))
                .map_err(sql("list sandboxes"))?;
            let rows = stmt
                .query_map([], raw)
                .map_err(sql("list sandboxes"))?
                .collect::<rusqlite::Result<Vec<Raw>>>()
                .map_err(sql("list sandboxes"))?;
            Ok(rows.into_iter().map(record).collect())
        })
        .await
    }

    /// How many sandboxes `owner` has.
    pub async fn count_owned(&self, owner: &str) -> Result<u64, StoreError> {
        let owner = owner.to_owned();
        self.call(move |c| {
            c.query_row(
                "SELECT COUNT(*) FROM sandboxes WHERE owner = ?1 AND phase != 'released'",
                [&owner],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n.max(0) as u64)
            .map_err(sql("count sandboxes"))
        })
        .await
    }

    /// Forgets a sandbox (its event journal stays, for the retention sweep to drop). Returns
    /// false when it was not there.
    pub async fn remove(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.call(move |c| {
            c.execute("DELETE FROM sandboxes WHERE id = ?1", [&id])
                .map(|removed| removed == 1)
                .map_err(sql("remove a sandbox"))
        })
        .await
    }

    /// The earliest expiry after `after` among all sandboxes, epoch ms.
    pub async fn next_expiry(&self, after: i64) -> Result<Option<i64>, StoreError> {
        self.call(move |c| {
            c.query_row(
                "SELECT MIN(expires_at) FROM sandboxes WHERE expires_at > ?1",
                [after],
                |r| r.get(0),
            )
            .map_err(sql("read the next expiry"))
        })
        .await
    }

    /// Ids of sandboxes whose expiry is at or before `now`.
    pub async fn expired(&self, now: i64) -> Result<Vec<String>, StoreError> {
        self.call(move |c| {
            let mut stmt = c
                .prepare("SELECT id FROM sandboxes WHERE expires_at <= ?1")
                .map_err(sql("read expiries"))?;
            let rows = stmt
                .query_map([now], |r| r.get(0))
                .map_err(sql("read expiries"))?;
            rows.collect::<rusqlite::Result<_>>()
                .map_err(sql("read expiries"))
        })
        .await
    }
}

/// Inserts `r` (on the store thread; also inside a pool allocation's transaction).
pub(super) fn insert_row(c: &Connection, r: &Record) -> rusqlite::Result<()> {
    let (runtime, reference, data) = instance_columns(r);
    c.execute(
                &format!("INSERT INTO sandboxes ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29, ?30)"),
                params![
                    r.id,
                    runtime,
                    reference,
                    data,
                    r.image,
                    json(&r.entrypoint),
                    json(&r.metadata),
                    json(&r.extensions),
                    r.platform.as_ref().map(json),
                    r.token,
                    r.created_at,
                    r.expires_at,
                    r.phase.as_str(),
                    r.transition_at,
                    r.owner,
                    r.business_domain,
                    r.template.as_ref().map(|t| t.id.clone()),
                    r.template.as_ref().map(|t| t.name.clone()),
                    r.template.as_ref().map(|t| t.version),
                    r.failure.as_ref().map(json),
                    r.name,
                    json(&r.resource_limits),
                    r.timeout.map(|t| t as i64),
                    json(&r.env),
                    r.pool.as_ref().map(|p| p.pool.clone()),
                    r.pool.as_ref().map(|p| p.member.clone()),
                    r.snapshot_id,
                    json(&r.pause_policy),
                    r.launch.as_ref().map(json),
                    r.hibernation.as_ref().map(json),
                ],
            )
    .map(drop)
}

fn instance_columns(r: &Record) -> (Option<&'static str>, Option<String>, Option<String>) {
    match &r.instance {
        Some(i) => (
            Some(i.kind.as_str()),
            Some(i.reference.clone()),
            Some(i.data.clone()),
        ),
        None => (None, None, None),
    }
}

fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// A row as stored, before its values are interpreted.
struct Raw {
    id: String,
    runtime: Option<String>,
    runtime_ref: Option<String>,
    runtime_data: Option<String>,
    image: String,
    entrypoint: String,
    metadata: String,
    extensions: String,
    platform: Option<String>,
    token: String,
    created_at: i64,
    expires_at: Option<i64>,
    phase: String,
    transition_at: i64,
    owner: String,
    business_domain: Option<String>,
    template_id: Option<String>,
    template_name: Option<String>,
    template_version: Option<u32>,
    failure: Option<String>,
    name: Option<String>,
    resource_limits: String,
    timeout: Option<i64>,
    env: String,
    pool: Option<String>,
    pool_member: Option<String>,
    snapshot_id: Option<String>,
    pause_policy: Option<String>,
    launch: Option<String>,
    hibernation: Option<String>,
}

fn raw(r: &Row<'_>) -> rusqlite::Result<Raw> {
    Ok(Raw {
        id: r.get(0)?,
        runtime: r.get(1)?,
        runtime_ref: r.get(2)?,
        runtime_data: r.get(3)?,
        image: r.get(4)?,
        entrypoint: r.get(5)?,
        metadata: r.get(6)?,
        extensions: r.get(7)?,
        platform: r.get(8)?,
        token: r.get(9)?,
        created_at: r.get(10)?,
        expires_at: r.get(11)?,
        phase: r.get(12)?,
        transition_at: r.get(13)?,
        owner: r.get(14)?,
        business_domain: r.get(15)?,
        template_id: r.get(16)?,
        template_name: r.get(17)?,
        template_version: r.get(18)?,
        failure: r.get(19)?,
        name: r.get(20)?,
        resource_limits: r.get(21)?,
        timeout: r.get(22)?,
        env: r.get(23)?,
        pool: r.get(24)?,
        pool_member: r.get(25)?,
        snapshot_id: r.get(26)?,
        pause_policy: r.get(27)?,
        launch: r.get(28)?,
        hibernation: r.get(29)?,
    })
}

/// Interprets a stored row; anything unreadable is an error naming the field.
fn record(raw: Raw) -> Result<Record, RowError> {
    let id = raw.id;
    let corrupt = |field: &'static str| RowError {
        id: id.clone(),
        error: StoreError::Corrupt {
            table: TABLE,
            id: id.clone(),
            field,
        },
    };
    let Some(phase) = Phase::parse(&raw.phase) else {
        return Err(RowError {
            id: id.clone(),
            error: StoreError::UnknownPhase {
                table: TABLE,
                id: id.clone(),
                value: raw.phase,
            },
        });
    };
    let instance = match (raw.runtime.as_deref(), raw.runtime_ref, raw.runtime_data) {
        (None, None, _) => None,
        (Some(kind), Some(reference), data) => Some(Instance {
            kind: runtime_kind(kind).ok_or_else(|| corrupt("runtime"))?,
            reference,
            data: data.unwrap_or_default(),
        }),
        _ => return Err(corrupt("runtime_ref")),
    };
    let entrypoint = serde_json::from_str(&raw.entrypoint).map_err(|_| corrupt("entrypoint"))?;
    let metadata = serde_json::from_str(&raw.metadata).map_err(|_| corrupt("metadata"))?;
    let extensions = serde_json::from_str(&raw.extensions).map_err(|_| corrupt("extensions"))?;
    let platform = raw
        .platform
        .map(|p| serde_json::from_str(&p))
        .transpose()
        .map_err(|_| corrupt("platform"))?;
    let template = match (raw.template_id, raw.template_name, raw.template_version) {
        (None, _, _) => None,
        (Some(id), Some(name), Some(version)) => Some(TemplateRef { id, name, version }),
        _ => return Err(corrupt("template_id")),
    };
    let failure = raw
        .failure
        .map(|f| serde_json::from_str(&f))
        .transpose()
        .map_err(|_| corrupt("failure"))?;
    let resource_limits =
        serde_json::from_str(&raw.resource_limits).map_err(|_| corrupt("resource_limits"))?;
    let env = serde_json::from_str(&raw.env).map_err(|_| corrupt("env"))?;
    let pool = match (raw.pool, raw.pool_member) {
        (None, None) => None,
        (Some(pool), Some(member)) => Some(PoolLink { pool, member }),
        _ => return Err(corrupt("pool_member")),
    };
    let pause_policy = raw
        .pause_policy
        .map(|p| serde_json::from_str(&p))
        .transpose()
        .map_err(|_| corrupt("pause_policy"))?
        .unwrap_or_default();
    let launch = raw
        .launch
        .map(|l| serde_json::from_str(&l))
        .transpose()
        .map_err(|_| corrupt("launch"))?;
    let hibernation = raw
        .hibernation
        .map(|h| serde_json::from_str(&h))
        .transpose()
        .map_err(|_| corrupt("hibernation"))?;
    Ok(Record {
        id: id.clone(),
        instance,
        image: raw.image,
        entrypoint,
        metadata,
        extensions,
        platform,
        token: raw.token,
        created_at: raw.created_at,
        expires_at: raw.expires_at,
        phase,
        transition_at: raw.transition_at,
        owner: raw.owner,
        business_domain: raw.business_domain,
        template,
        failure,
        name: raw.name,
        resource_limits,
        timeout: raw
            .timeout
            .map(u64::try_from)
            .transpose()
            .map_err(|_| corrupt("timeout"))?,
        env,
        pool,
        snapshot_id: raw.snapshot_id,
        pause_policy,
        launch,
        hibernation,
    })
}

pub(super) fn runtime_kind(name: &str) -> Option<RuntimeKind> {
    match name {
        "docker" => Some(RuntimeKind::Docker),
        "kubernetes" => Some(RuntimeKind::Kubernetes),
        #[cfg(test)]
        "fake" => Some(RuntimeKind::Fake),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample(id: &str, created_at: i64, expires_at: Option<i64>) -> Record {
        Record {
            id: id.to_owned(),
            instance: None,
            image: "img".into(),
            entrypoint: vec!["sleep".into(), "infinity".into()],
            metadata: BTreeMap::from([("team".into(), "a".into())]),
            extensions: BTreeMap::new(),
            platform: None,
            token: "t".into(),
            created_at,
            expires_at,
            phase: Phase::Pending,
            transition_at: created_at,
            owner: "root".into(),
            business_domain: None,
            template: None,
            failure: None,
            name: Some("n".into()),
            resource_limits: BTreeMap::from([("cpu".into(), "1".into())]),
            timeout: expires_at.map(|_| 60),
            env: BTreeMap::from([("K".into(), "v".into())]),
            pool: None,
            snapshot_id: None,
            pause_policy: PausePolicy::default(),
            launch: None,
            hibernation: None,
        }
    }

    async fn exec(store: &Store, sql_text: &'static str) {
        store
            .call(move |c| c.execute_batch(sql_text).map_err(sql("test")))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn survives_reopen_and_keeps_its_instance() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let instance = store.instance.clone();
        store.insert(&sample("a", 1, Some(100))).await.unwrap();
        store.insert(&sample("b", 2, None)).await.unwrap();
        let mut a = store.get("a").await.unwrap().unwrap();
        a.phase = Phase::Ready;
        a.instance = Some(Instance {
            kind: RuntimeKind::Docker,
            reference: "c1".into(),
            data: r#"{"execd":40000}"#.into(),
        });
        a.metadata.insert("k".into(), "v".into());
        assert!(store.update(&a).await.unwrap());
        drop(store);

        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.instance, instance);
        let ids: Vec<_> = store
            .all()
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.unwrap().id)
            .collect();
        assert_eq!(ids, ["b", "a"], "newest first");
        let mut got = store.get("a").await.unwrap().unwrap();
        assert_eq!(got, a);
        got.phase = Phase::Paused;
        assert!(store.update(&got).await.unwrap());
        let got = store.get("a").await.unwrap().unwrap();
        assert_eq!(got.phase, Phase::Paused);
        assert_eq!(got.metadata.get("k").map(String::as_str), Some("v"));
        assert_eq!(got.entrypoint, ["sleep", "infinity"]);
        assert_eq!(store.next_expiry(0).await.unwrap(), Some(100));
        assert_eq!(store.next_expiry(100).await.unwrap(), None);
        assert_eq!(store.expired(99).await.unwrap(), Vec::<String>::new());
        assert_eq!(store.expired(100).await.unwrap(), ["a"]);
        assert!(store.remove("a").await.unwrap());
        assert!(!store.remove("a").await.unwrap());
        assert_eq!(store.next_expiry(0).await.unwrap(), None);
    }

    #[tokio::test]
    async fn every_phase_and_a_recorded_failure_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut r = sample("s", 1, None);
        r.snapshot_id = Some("snap-1".into());
        r.pause_policy = PausePolicy {
            snapshot_type: crate::wire::lifecycle::PauseMode::Rootfs,
            suspend_expiry: true,
        };
        r.launch = Some(Launch {
            env: BTreeMap::from([("EXECD_ACCESS_TOKEN".into(), "t".into())]),
            resources: Resources {
                nano_cpus: Some(1),
                memory: None,
                pids: 9,
                ..Resources::default()
            },
            mounts: vec![Mount::Volume {
                name: "v".into(),
                sub_path: Some("a".into()),
                mount_path: "/v".into(),
                read_only: true,
            }],
            isolation: false,
            image: None,
            workspace: Some(Workspace {
                size_bytes: Some(1 << 30),
            }),
        });
        store.insert(&r).await.unwrap();
        assert_eq!(store.get("s").await.unwrap().unwrap(), r);
        let instance = Instance {
            kind: RuntimeKind::Docker,
            reference: "c1".into(),
            data: "{}".into(),
        };
        for phase in [
            Phase::PreStart,
            Phase::Probing,
            Phase::Ready,
            Phase::Paused,
            Phase::Committing,
            Phase::Hibernated,
            Phase::Restoring,
            Phase::Released,
            Phase::Pending,
        ] {
            r.hibernation = (phase == Phase::Hibernated).then(|| Hibernation {
                image: "sandboxd-paused/s:1".into(),
                previous: instance.clone(),
                suspended_ms: Some(5),
                workspace_only: true,
            });
            if phase == Phase::Restoring {
                r.launch.as_mut().unwrap().image = Some("sandboxd-paused/s:1".into());
            }
            r.phase = phase;
            r.failure = (phase == Phase::PreStart).then(|| Failure {
                reason: "PRE_START_FAILED".into(),
                message: "preStart failed (exit 3): boom".into(),
            });
            assert!(store.update(&r).await.unwrap());
            assert_eq!(store.get("s").await.unwrap().unwrap(), r, "{phase:?}");
        }
        // A transition from a phase the row is no longer in does nothing.
        r.phase = Phase::Ready;
        assert!(!store.update_from(&r, Phase::Hibernated).await.unwrap());
        assert!(store.update_from(&r, Phase::Pending).await.unwrap());
        assert_eq!(store.get("s").await.unwrap().unwrap().phase, Phase::Ready);
    }

    /// A state file exactly as sandboxd wrote it before schema versions (version 0 on disk,
    /// the Docker columns), with one running sandbox in it.
    fn write_unversioned_file(dir: &std::path::Path) {
        let conn = Connection::open(dir.join("sandboxd.db")).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.execute_batch(super::super::MIGRATIONS[0]).unwrap();
        conn.execute("INSERT INTO meta (key, value) VALUES ('instance', 'inst-1')", [])
            .unwrap();
        conn.execute(
            "INSERT INTO sandboxes (id, container, image, entrypoint, metadata, extensions, platform,
             token, created_at, expires_at, execd_port, http_port, phase, transition_at)
             VALUES ('s1', 'c0ffee', 'busybox', '[\"sleep\",\"infinity\"]', '{\"team\":\"ml\"}', '{}',
             NULL, 'tok', 10, 20, 40001, 40002, 'ready', 11)",
            [],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO sandboxes (id, container, image, entrypoint, metadata, extensions, platform,
             token, created_at, expires_at, execd_port, http_port, phase, transition_at)
             VALUES ('s2', NULL, 'busybox', '[\"sh\"]', '{}', '{}', NULL, 'tok2', 12, NULL, NULL, NULL,
             'pending', 12)",
            [],
        )
        .unwrap();
        conn.execute("INSERT INTO events VALUES ('s1', 11, 'running')", [])
            .unwrap();
    }

    #[tokio::test]
    async fn a_file_from_before_versions_migrates_without_losing_anything() {
        let dir = tempfile::tempdir().unwrap();
        write_unversioned_file(dir.path());
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.instance, "inst-1");
        let s1 = store.get("s1").await.unwrap().unwrap();
        assert_eq!(s1.phase, Phase::Ready);
        assert_eq!(
            (s1.created_at, s1.expires_at, s1.transition_at),
            (10, Some(20), 11)
        );
        assert_eq!(s1.metadata.get("team").map(String::as_str), Some("ml"));
        let instance = s1.instance.expect("the container became the instance");
        assert_eq!(
            (instance.kind, instance.reference.as_str()),
            (RuntimeKind::Docker, "c0ffee")
        );
        let ports: serde_json::Value = serde_json::from_str(&instance.data).unwrap();
        assert_eq!(ports, serde_json::json!({"execd": 40001, "http": 40002}));
        let s2 = store.get("s2").await.unwrap().unwrap();
        assert_eq!((s2.phase, s2.instance), (Phase::Pending, None));
        let events = store.events("s1").await.unwrap();
        assert_eq!(
            (events[0].at, events[0].kind.as_str(), events[0].message.as_str()),
            (11, "Ready", "running")
        );
        assert_eq!(events[0].source, "sandboxd");
        assert_eq!((s1.owner.as_str(), s1.business_domain), ("root", None));
        drop(store);
        // Opening again is a no-op.
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.all().await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn an_unknown_phase_or_a_corrupt_field_is_an_error_not_a_default() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for (id, at) in [("good", 1), ("future", 2), ("broken", 3)] {
            store.insert(&sample(id, at, None)).await.unwrap();
        }
        exec(
            &store,
            "UPDATE sandboxes SET phase = 'hibernating' WHERE id = 'future'",
        )
        .await;
        exec(
            &store,
            "UPDATE sandboxes SET metadata = '{not json' WHERE id = 'broken'",
        )
        .await;

        let e = store.get("future").await.unwrap_err();
        assert!(
            matches!(&e, StoreError::UnknownPhase { id, value, .. } if id == "future" && value == "hibernating"),
            "{e}"
        );
        let e = store.get("broken").await.unwrap_err();
        assert!(
            matches!(&e, StoreError::Corrupt { id, field: "metadata", .. } if id == "broken"),
            "{e}"
        );
        let rows = store.all().await.unwrap();
        let summary: Vec<(String, bool)> = rows
            .iter()
            .map(|r| match r {
                Ok(r) => (r.id.clone(), true),
                Err(e) => (e.id.clone(), false),
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("broken".to_owned(), false),
                ("future".to_owned(), false),
                ("good".to_owned(), true)
            ]
        );
    }
}
