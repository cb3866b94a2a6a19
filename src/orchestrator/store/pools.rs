//! The `pools` and `pool_members` tables. A pool is its members' create request and its
//! capacity; a member is one warm sandbox (`warming` until execd answers, then `idle`, then
//! `allocated` to a sandbox). Allocation is one statement, inside the transaction that also
//! records the new sandbox, so that a member is handed out at most once and never without a
//! record.

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::sandboxes::{insert_row, runtime_kind};
use super::{sql, PoolLink, Record, RowError, Store, StoreError};
use crate::orchestrator::runtime::Instance;
use crate::wire::pools::{PoolCapacitySpec, RecycleType};

const POOLS: &str = "pools";
const MEMBERS: &str = "pool_members";

/// One pool.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolRow {
    /// DNS-1123 name.
    pub name: String,
    /// Who made it.
    pub owner: String,
    /// The create request every member is made from (`CreateSandboxRequest` JSON, checked
    /// when the pool was made).
    pub request: serde_json::Value,
    /// The members' image.
    pub image: String,
    /// Capacity.
    pub capacity: PoolCapacitySpec,
    /// What release does to a member.
    pub recycle: RecycleType,
    /// Whether one owner uses it alone.
    pub dedicated_owner: bool,
    /// The template (id and version) the members are made from.
    pub template: Option<(String, u32)>,
    /// 1 at create, one more per capacity change.
    pub revision: u64,
    /// When it was made, epoch ms.
    pub created_at: i64,
}

/// Where a member is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberState {
    /// Being created; execd has not answered `/ping` yet.
    Warming,
    /// Ready to be handed out.
    Idle,
    /// Handed out to a sandbox.
    Allocated,
}

impl MemberState {
    fn as_str(self) -> &'static str {
        match self {
            MemberState::Warming => "warming",
            MemberState::Idle => "idle",
            MemberState::Allocated => "allocated",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "warming" => Some(MemberState::Warming),
            "idle" => Some(MemberState::Idle),
            "allocated" => Some(MemberState::Allocated),
            _ => None,
        }
    }
}

/// One member of a pool.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberRow {
    /// `pm-<uuid>`: the runtime's label on its container.
    pub id: String,
    /// Its pool.
    pub pool: String,
    /// Where it is.
    pub state: MemberState,
    /// The sandbox it is allocated to.
    pub sandbox_id: Option<String>,
    /// The runtime's handle, once created.
    pub instance: Option<Instance>,
    /// Its execd's access token (the sandbox's, once allocated).
    pub token: String,
    /// When it was made, epoch ms.
    pub created_at: i64,
    /// When execd first answered, epoch ms (allocation takes the oldest first).
    pub ready_at: Option<i64>,
}

const POOL_COLUMNS: &str = "name, owner, request, image, capacity, recycle, dedicated_owner, \
     template_id, template_version, revision, created_at";
const MEMBER_COLUMNS: &str =
    "id, pool, state, sandbox_id, runtime, runtime_ref, runtime_data, token, created_at, ready_at";

impl Store {
    /// Adds a pool; false when one of that name exists.
    pub async fn insert_pool(&self, p: &PoolRow) -> Result<bool, StoreError> {
        let p = p.clone();
        self.call(move |c| {
            c.execute(
                &format!(
                    "INSERT INTO pools ({POOL_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
                     ON CONFLICT (name) DO NOTHING"
                ),
                params![
                    p.name,
                    p.owner,
                    p.request.to_string(),
                    p.image,
                    serde_json::to_string(&p.capacity).unwrap_or_default(),
                    recycle_str(p.recycle),
                    p.dedicated_owner,
                    p.template.as_ref().map(|t| t.0.clone()),
                    p.template.as_ref().map(|t| t.1),
                    p.revision as i64,
                    p.created_at,
                ],
            )
            .map(|n| n == 1)
            .map_err(sql("insert a pool"))
        })
        .await
    }

    /// Every pool, by name.
    pub async fn pools(&self) -> Result<Vec<PoolRow>, StoreError> {
        self.call(|c| {
            let mut stmt = c
                .prepare(&format!("SELECT {POOL_COLUMNS} FROM pools ORDER BY name"))
                .map_err(sql("list pools"))?;
            let rows = stmt
                .query_map([], raw_pool)
                .map_err(sql("list pools"))?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(sql("list pools"))?;
            rows.into_iter().map(pool_row).collect()
        })
        .await
    }

    /// One pool.
    pub async fn pool(&self, name: &str) -> Result<Option<PoolRow>, StoreError> {
        let name = name.to_owned();
        self.call(move |c| {
            let raw = c
                .query_row(
                    &format!("SELECT {POOL_COLUMNS} FROM pools WHERE name = ?1"),
                    [&name],
                    raw_pool,
                )
                .optional()
                .map_err(sql("read a pool"))?;
            raw.map(pool_row).transpose()
        })
        .await
    }

    /// Sets a pool's capacity (its revision goes up by one); `None` when there is no such pool.
    pub async fn set_capacity(
        &self,
        name: &str,
        capacity: PoolCapacitySpec,
    ) -> Result<Option<PoolRow>, StoreError> {
        let name = name.to_owned();
        self.call(move |c| {
            let changed = c
                .execute(
                    "UPDATE pools SET capacity = ?2, revision = revision + 1 WHERE name = ?1",
                    params![name, serde_json::to_string(&capacity).unwrap_or_default()],
                )
                .map_err(sql("update a pool"))?;
            if changed == 0 {
                return Ok(None);
            }
            let raw = c
                .query_row(
                    &format!("SELECT {POOL_COLUMNS} FROM pools WHERE name = ?1"),
                    [&name],
                    raw_pool,
                )
                .map_err(sql("read a pool"))?;
            pool_row(raw).map(Some)
        })
        .await
    }

    /// Deletes a pool, in one transaction: its allocated members are detached (their rows
    /// dropped; their sandboxes keep running), the others are returned for the caller to
    /// remove. `None` when there is no such pool.
    pub async fn delete_pool(&self, name: &str) -> Result<Option<Vec<MemberRow>>, StoreError> {
        let name = name.to_owned();
        self.call(move |c| {
            let tx = c.transaction().map_err(sql("delete a pool"))?;
            if tx
                .execute("DELETE FROM pools WHERE name = ?1", [&name])
                .map_err(sql("delete a pool"))?
                == 0
            {
                return Ok(None);
            }
            tx.execute(
                "DELETE FROM pool_members WHERE pool = ?1 AND state = 'allocated'",
                [&name],
            )
            .map_err(sql("detach allocated members"))?;
            let rest = select_members(&tx, Some(&name))?
                .into_iter()
                .filter_map(Result::ok)
                .collect();
            tx.commit().map_err(sql("delete a pool"))?;
            Ok(Some(rest))
        })
        .await
    }

    /// Names of the pools made from template `template_id`.
    pub async fn pools_of_template(&self, template_id: &str) -> Result<Vec<String>, StoreError> {
        let id = template_id.to_owned();
        self.call(move |c| {
            let mut stmt = c
                .prepare("SELECT name FROM pools WHERE template_id = ?1 ORDER BY name")
                .map_err(sql("read pools of a template"))?;
            let names = stmt
                .query_map([&id], |r| r.get(0))
                .map_err(sql("read pools of a template"))?
                .collect::<rusqlite::Result<Vec<String>>>()
                .map_err(sql("read pools of a template"))?;
            Ok(names)
        })
        .await
    }

    /// Adds a member (before its instance exists, so that no sweep takes its container for an
    /// orphan), in the same statement as the check that its pool still exists: false when the
    /// pool was deleted meanwhile (a reconciler pass that read it before), and nothing stored.
    pub async fn insert_member(&self, m: &MemberRow) -> Result<bool, StoreError> {
        self.put_member(m, true).await
    }

    /// [`Store::insert_member`] without the pool check: a member a crash left behind.
    #[cfg(test)]
    pub async fn insert_stray_member(&self, m: &MemberRow) -> Result<(), StoreError> {
        self.put_member(m, false).await.map(drop)
    }

    async fn put_member(&self, m: &MemberRow, pool_must_exist: bool) -> Result<bool, StoreError> {
        let m = m.clone();
        self.call(move |c| {
            let (runtime, reference, data) = match &m.instance {
                Some(i) => (Some(i.kind.as_str()), Some(i.reference.clone()), Some(i.data.clone())),
                None => (None, None, None),
            };
            let guard = if pool_must_exist {
                " WHERE EXISTS (SELECT 1 FROM pools WHERE name = ?2)"
            } else {
                ""
            };
            c.execute(
                &format!(
                    "INSERT INTO pool_members ({MEMBER_COLUMNS}) SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10{guard}"
                ),
                params![
                    m.id,
                    m.pool,
                    m.state.as_str(),
                    m.sandbox_id,
                    runtime,
                    reference,
                    data,
                    m.token,
                    m.created_at,
                    m.ready_at
                ],
            )
            .map(|n| n == 1)
            .map_err(sql("insert a pool member"))
        })
        .await
    }

    /// Records a warming member's instance. False when the member is gone.
    pub async fn set_member_instance(&self, id: &str, instance: &Instance) -> Result<bool, StoreError> {
        let (id, instance) = (id.to_owned(), instance.clone());
        self.call(move |c| {
            c.execute(
                "UPDATE pool_members SET runtime = ?2, runtime_ref = ?3, runtime_data = ?4 WHERE id = ?1",
                params![id, instance.kind.as_str(), instance.reference, instance.data],
            )
            .map(|n| n == 1)
            .map_err(sql("record a member's instance"))
        })
        .await
    }

    /// A warming member answered: it is idle from `at` on. False when it is gone (its pool was
    /// deleted or scaled down meanwhile).
    pub async fn member_ready(&self, id: &str, at: i64) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.call(move |c| {
            c.execute(
                "UPDATE pool_members SET state = 'idle', ready_at = ?2 WHERE id = ?1 AND state = 'warming'",
                params![id, at],
            )
            .map(|n| n == 1)
            .map_err(sql("mark a member idle"))
        })
        .await
    }

    /// An allocated member goes back to idle as it is (`Noop` recycling).
    pub async fn member_back_to_idle(&self, id: &str, at: i64) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.call(move |c| {
            c.execute(
                "UPDATE pool_members SET state = 'idle', sandbox_id = NULL, ready_at = ?2
                 WHERE id = ?1 AND state = 'allocated'",
                params![id, at],
            )
            .map(|n| n == 1)
            .map_err(sql("return a member"))
        })
        .await
    }

    /// Forgets a member; with `unless_allocated`, only one not handed out meanwhile. True when
    /// a row went.
    pub async fn remove_member(&self, id: &str, unless_allocated: bool) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.call(move |c| {
            let query = if unless_allocated {
                "DELETE FROM pool_members WHERE id = ?1 AND state != 'allocated'"
            } else {
                "DELETE FROM pool_members WHERE id = ?1"
            };
            c.execute(query, [&id])
                .map(|n| n == 1)
                .map_err(sql("remove a pool member"))
        })
        .await
    }

    /// Forgets a member only while it is still allocated to `sandbox_id` (the reconciler's
    /// look may be stale: an acquire that undid its claim has made the member idle again
    /// meanwhile). True when the row went.
    pub async fn remove_member_allocated_to(&self, id: &str, sandbox_id: &str) -> Result<bool, StoreError> {
        let (id, sandbox_id) = (id.to_owned(), sandbox_id.to_owned());
        self.call(move |c| {
            c.execute(
                "DELETE FROM pool_members WHERE id = ?1 AND state = 'allocated' AND sandbox_id = ?2",
                params![id, sandbox_id],
            )
            .map(|n| n == 1)
            .map_err(sql("remove an allocated pool member"))
        })
        .await
    }

    /// Every member of every pool (and of pools deleted with members left behind): each
    /// readable row, or why it is not.
    pub async fn members(&self) -> Result<Vec<Result<MemberRow, RowError>>, StoreError> {
        self.call(|c| select_members(c, None)).await
    }

    /// Hands the oldest idle member of `pool` to the sandbox `record` (its id, owner, expiry
    /// and labels set) and records the sandbox, in one transaction: the member's instance and
    /// token become the sandbox's. `None` when no member is idle.
    pub async fn claim_member(&self, pool: &str, mut record: Record) -> Result<Option<Record>, StoreError> {
        let pool = pool.to_owned();
        self.call(move |c| {
            let tx = c.transaction().map_err(sql("allocate a member"))?;
            let claimed = tx
                .query_row(
                    "UPDATE pool_members SET state = 'allocated', sandbox_id = ?1
                     WHERE id = (SELECT id FROM pool_members WHERE pool = ?2 AND state = 'idle'
                                 ORDER BY ready_at, id LIMIT 1)
                     RETURNING id, runtime, runtime_ref, runtime_data, token",
                    params![record.id, pool],
                    |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, Option<String>>(1)?,
                            r.get::<_, Option<String>>(2)?,
                            r.get::<_, Option<String>>(3)?,
                            r.get::<_, String>(4)?,
                        ))
                    },
                )
                .optional()
                .map_err(sql("allocate a member"))?;
            let Some((member, kind, reference, data, token)) = claimed else {
                return Ok(None);
            };
            let corrupt = |field| StoreError::Corrupt {
                table: MEMBERS,
                id: member.clone(),
                field,
            };
            let (Some(kind), Some(reference)) = (kind, reference) else {
                return Err(corrupt("runtime_ref"));
            };
            record.instance = Some(Instance {
                kind: runtime_kind(&kind).ok_or_else(|| corrupt("runtime"))?,
                reference,
                data: data.unwrap_or_default(),
            });
            record.token = token;
            record.pool = Some(PoolLink {
                pool: pool.clone(),
                member,
            });
            insert_row(&tx, &record).map_err(sql("record an allocated sandbox"))?;
            tx.commit().map_err(sql("allocate a member"))?;
            Ok(Some(record))
        })
        .await
    }
    /// Undoes [`Store::claim_member`] when the runtime could not claim the member for a
    /// passing reason: the sandbox's record goes and the member is idle again, in one
    /// transaction.
    pub async fn unclaim_member(&self, sandbox_id: &str, member: &str, at: i64) -> Result<(), StoreError> {
        self.end_claim(
            sandbox_id,
            member,
            "UPDATE pool_members SET state = 'idle', sandbox_id = NULL, ready_at = ?2
             WHERE id = ?1 AND state = 'allocated'",
            Some(at),
        )
        .await
    }

    /// Undoes [`Store::claim_member`] for a member the runtime says is not this sandboxd's any
    /// more (another claimer took it, or it is gone): the sandbox's record and the member's
    /// row go, in one transaction.
    pub async fn forget_claimed_member(&self, sandbox_id: &str, member: &str) -> Result<(), StoreError> {
        self.end_claim(sandbox_id, member, "DELETE FROM pool_members WHERE id = ?1", None)
            .await
    }

    async fn end_claim(
        &self,
        sandbox_id: &str,
        member: &str,
        member_sql: &'static str,
        at: Option<i64>,
    ) -> Result<(), StoreError> {
        let (sandbox_id, member) = (sandbox_id.to_owned(), member.to_owned());
        self.call(move |c| {
            let tx = c.transaction().map_err(sql("undo a claim"))?;
            tx.execute("DELETE FROM sandboxes WHERE id = ?1", [&sandbox_id])
                .map_err(sql("undo a claim"))?;
            match at {
                Some(at) => tx.execute(member_sql, params![member, at]),
                None => tx.execute(member_sql, params![member]),
            }
            .map_err(sql("undo a claim"))?;
            tx.commit().map_err(sql("undo a claim"))
        })
        .await
    }
}

fn recycle_str(r: RecycleType) -> &'static str {
    match r {
        RecycleType::Delete => "Delete",
        RecycleType::Restart => "Restart",
        RecycleType::Noop => "Noop",
    }
}

/// A pool row as stored.
struct RawPool {
    name: String,
    owner: String,
    request: String,
    image: String,
    capacity: String,
    recycle: String,
    dedicated_owner: bool,
    template_id: Option<String>,
    template_version: Option<u32>,
    revision: i64,
    created_at: i64,
}

fn raw_pool(r: &Row<'_>) -> rusqlite::Result<RawPool> {
    Ok(RawPool {
        name: r.get(0)?,
        owner: r.get(1)?,
        request: r.get(2)?,
        image: r.get(3)?,
        capacity: r.get(4)?,
        recycle: r.get(5)?,
        dedicated_owner: r.get(6)?,
        template_id: r.get(7)?,
        template_version: r.get(8)?,
        revision: r.get(9)?,
        created_at: r.get(10)?,
    })
}

fn pool_row(raw: RawPool) -> Result<PoolRow, StoreError> {
    let corrupt = |field| StoreError::Corrupt {
        table: POOLS,
        id: raw.name.clone(),
        field,
    };
    let recycle = match raw.recycle.as_str() {
        "Delete" => RecycleType::Delete,
        "Restart" => RecycleType::Restart,
        "Noop" => RecycleType::Noop,
        _ => return Err(corrupt("recycle")),
    };
    let template = match (raw.template_id.clone(), raw.template_version) {
        (None, None) => None,
        (Some(id), Some(v)) => Some((id, v)),
        _ => return Err(corrupt("template_id")),
    };
    Ok(PoolRow {
        request: serde_json::from_str(&raw.request).map_err(|_| corrupt("request"))?,
        capacity: serde_json::from_str(&raw.capacity).map_err(|_| corrupt("capacity"))?,
        recycle,
        template,
        name: raw.name,
        owner: raw.owner,
        image: raw.image,
        dedicated_owner: raw.dedicated_owner,
        revision: raw.revision.max(0) as u64,
        created_at: raw.created_at,
    })
}

/// Members (of `pool`, or all), oldest first.
fn select_members(
    c: &Connection,
    pool: Option<&str>,
) -> Result<Vec<Result<MemberRow, RowError>>, StoreError> {
    let query = match pool {
        Some(_) => {
            format!("SELECT {MEMBER_COLUMNS} FROM pool_members WHERE pool = ?1 ORDER BY created_at, id")
        }
        None => format!("SELECT {MEMBER_COLUMNS} FROM pool_members ORDER BY created_at, id"),
    };
    let mut stmt = c.prepare(&query).map_err(sql("list pool members"))?;
    let read = |r: &Row<'_>| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, Option<String>>(3)?,
            r.get::<_, Option<String>>(4)?,
            r.get::<_, Option<String>>(5)?,
            r.get::<_, Option<String>>(6)?,
            r.get::<_, String>(7)?,
            r.get::<_, i64>(8)?,
            r.get::<_, Option<i64>>(9)?,
        ))
    };
    let rows = match pool {
        Some(p) => stmt.query_map([p], read),
        None => stmt.query_map([], read),
    }
    .map_err(sql("list pool members"))?
    .collect::<rusqlite::Result<Vec<_>>>()
    .map_err(sql("list pool members"))?;
    Ok(rows
        .into_iter()
        .map(
            |(id, pool, state, sandbox_id, kind, reference, data, token, created_at, ready_at)| {
                let error = |error| RowError {
                    id: id.clone(),
                    error,
                };
                let corrupt = |field| {
                    error(StoreError::Corrupt {
                        table: MEMBERS,
                        id: id.clone(),
                        field,
                    })
                };
                let Some(state) = MemberState::parse(&state) else {
                    return Err(error(StoreError::UnknownPhase {
                        table: MEMBERS,
                        id: id.clone(),
                        value: state,
                    }));
                };
                let instance = match (kind, reference) {
                    (None, None) => None,
                    (Some(kind), Some(reference)) => Some(Instance {
                        kind: runtime_kind(&kind).ok_or_else(|| corrupt("runtime"))?,
                        reference,
                        data: data.unwrap_or_default(),
                    }),
                    _ => return Err(corrupt("runtime_ref")),
                };
                Ok(MemberRow {
                    id: id.clone(),
                    pool,
                    state,
                    sandbox_id,
                    instance,
                    token,
                    created_at,
                    ready_at,
                })
            },
        )
        .collect())
}
