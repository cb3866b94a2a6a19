//! Warm pools (§10): pools of sandboxes made ahead of time, handed out on acquire.
//!
//! - A pool is its members' create request (from an upstream `PodTemplateSpec`, or a
//!   template version pinned when the pool is made) and its capacity. Members are not
//!   sandboxes: they live in `pool_members`, labelled with their own `pm-` id, invisible to
//!   the sandbox list and to expiry, and never orphans to the sandbox sweeps.
//! - The reconciler (one task, `run_pools`) keeps each pool's spare members (idle and
//!   warming) at `bufferMax` and its total within `[poolMin, poolMax]`: it warms members
//!   (create, then `/ping` until 200, then `idle`), replaces idle ones whose container died,
//!   removes members nobody follows any more (a restart's warming ones, a deleted pool's), and
//!   scales down idle members first, never allocated ones. It runs on a timer and whenever
//!   something changes.
//! - Acquire is one SQLite transaction (the allocation statement and the new sandbox's
//!   record): a new sandbox id mapped to the member's instance, so every route that reaches a
//!   sandbox through its record (endpoints, proxy, logs, pause) reaches the member. Then the
//!   runtime claims it ([`Runtime::claim`](crate::orchestrator::runtime::Runtime::claim): a
//!   no-op on Docker, where sandboxd is the only writer; on Kubernetes a JSON Patch of the
//!   pod's labels that a second claimer fails): a member claimed elsewhere (or gone) is
//!   forgotten and the next idle one tried, so none is handed out twice. Then execd's env
//!   file is written (`OPENSANDBOX_ID` and the request's `env`). With nothing
//!   idle, it waits up to the acquire timeout while the pool can still deliver (members
//!   warming, or room below `poolMax`), else 429 `POOL::CAPACITY_EXHAUSTED`.
//! - Release recycles the member by the pool's strategy: `Delete` (and `Restart`, its alias
//!   on Docker) removes the container, `Noop` returns it to idle as it is.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::sandboxes::{status, view, EXECD_ENVS_FILE};
use super::Service;
use crate::orchestrator::auth::{Principal, Role};
use crate::orchestrator::error::{Conflict, Denial, Error, Kind};
use crate::orchestrator::runtime::{Instance, Observed, Resources, RuntimeError, EXECD_PORT};
use crate::orchestrator::spec;
use crate::orchestrator::store::{EventType, MemberRow, MemberState, Phase, PoolRow, Record};
use crate::wire::lifecycle::{CreateSandboxRequest, CreateSandboxResponse, Sandbox};
use crate::wire::pools::{
    AcquireRequest, CreatePoolRequest, ListPoolsResponse, PoolCapacitySpec, PoolResponse, PoolStatus,
    RecycleStrategy, RecycleType, UpdatePoolRequest,
};
use crate::wire::time::{format_ms, now_ms};

/// The extension that makes a create an acquire (upstream's `extensions.poolRef`).
pub(crate) const POOL_REF: &str = "poolRef";
/// `extensions.poolRef` that picks the first pool matching the request's image or template.
const ANY_POOL: &str = "*";
/// The prefix of member ids (and of the runtime's label on their containers).
const MEMBER_PREFIX: &str = "pm-";
/// How often the reconciler looks without being woken.
const TICK: Duration = Duration::from_secs(1);
/// How long a released sandbox stays readable (`Terminated`, reason `RELEASED`).
const RELEASED_KEPT_MS: i64 = 10 * 60 * 1000;
/// The first and the longest pause before a pool whose members keep failing warms again.
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Why an idle member whose container is gone or has exited is dropped.
const DIED: &str = "its container died while idle";
/// The default entrypoint of a pod template without `command`.
const DEFAULT_ENTRYPOINT: [&str; 3] = ["tail", "-f", "/dev/null"];
/// The longest pool name (DNS-1123 subdomain).
const NAME_MAX: usize = 253;

/// Settings of the pools.
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    /// The largest `poolMax` a pool may ask for.
    pub max_members: u32,
    /// How long an acquire waits for a member while the pool can still deliver one.
    pub acquire_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            max_members: 100,
            acquire_timeout: Duration::from_secs(30),
        }
    }
}

/// What the pools share between the reconciler, acquires and the routes.
#[derive(Default)]
pub(super) struct Pools {
    /// Woken (all waiters) when a member becomes idle or goes, or a pool changes: acquires
    /// waiting for a member look again.
    changed: Notify,
    /// Wakes the reconciler.
    poke: Notify,
    /// Members whose warm-up task runs. A std mutex: held only to read or change the set.
    warming: Mutex<HashSet<String>>,
    /// Failures by pool, since start. A std mutex: held only to read or change the map.
    health: Mutex<HashMap<String, Health>>,
}

/// Failures of one pool's members.
#[derive(Debug, Clone, Default)]
struct Health {
    /// Members that failed to warm or died while idle.
    failed: u32,
    /// Why the last one failed.
    message: Option<String>,
    /// Failures in a row (reset by a member that warms).
    streak: u32,
    /// No member is warmed before this.
    backoff_until: Option<Instant>,
}

impl Pools {
    fn lock_warming(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.warming.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_health(&self) -> std::sync::MutexGuard<'_, HashMap<String, Health>> {
        self.health.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn failed(&self, pool: &str, message: String) {
        let mut health = self.lock_health();
        let h = health.entry(pool.to_owned()).or_default();
        h.failed += 1;
        h.streak += 1;
        h.message = Some(message);
        let backoff = BACKOFF_MIN
            .saturating_mul(1 << h.streak.min(6).saturating_sub(1))
            .min(BACKOFF_MAX);
        h.backoff_until = Some(Instant::now() + backoff);
    }

    fn warmed(&self, pool: &str) {
        if let Some(h) = self.lock_health().get_mut(pool) {
            h.streak = 0;
            h.backoff_until = None;
        }
    }

    fn backing_off(&self, pool: &str) -> bool {
        self.lock_health()
            .get(pool)
            .and_then(|h| h.backoff_until)
            .is_some_and(|t| t > Instant::now())
    }

    fn wake(&self) {
        self.changed.notify_waiters();
        self.poke.notify_one();
    }
}

/// Counts of one pool's members.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    idle: u32,
    warming: u32,
    allocated: u32,
}

impl Counts {
    fn of<'a>(members: impl Iterator<Item = &'a MemberRow>) -> Self {
        let mut c = Counts::default();
        for m in members {
            match m.state {
                MemberState::Idle => c.idle += 1,
                MemberState::Warming => c.warming += 1,
                MemberState::Allocated => c.allocated += 1,
            }
        }
        c
    }

    fn total(self) -> u32 {
        self.idle + self.warming + self.allocated
    }
}

/// What an acquire asks for beyond the pool.
struct Acquire {
    name: Option<String>,
    timeout: Option<u64>,
    metadata: BTreeMap<String, String>,
    env: BTreeMap<String, String>,
    extensions: BTreeMap<String, String>,
    entrypoint: Option<Vec<String>>,
    business_domain: Option<String>,
    /// A `resourceLimits` override: the limits to apply live, and as given.
    resize: Option<spec::LiveLimits>,
}

impl Service {
    /// `POST /v1/pools`.
    pub async fn create_pool(
        &self,
        req: CreatePoolRequest,
        caller: &Principal,
    ) -> Result<PoolResponse, Error> {
        check_name(&req.name)?;
        self.check_capacity(&req.capacity_spec)?;
        let recycle = req.recycle_strategy.unwrap_or_default().kind;
        let dedicated_owner = req.dedicated_owner.unwrap_or(false);
        if recycle == RecycleType::Noop && !dedicated_owner {
            return Err(Error::invalid(
                "recycleStrategy.type Noop hands one user's leftovers to the next: it needs dedicatedOwner: true",
            ));
        }
        let mut request = match (&req.template, &req.template_id) {
            (Some(_), Some(_)) => return Err(Error::invalid("send either template or templateId, not both")),
            (None, None) => return Err(Error::invalid("template or templateId is required")),
            (Some(template), None) => {
                if req.template_version.is_some() {
                    return Err(Error::invalid("templateVersion needs templateId"));
                }
                pod_template(template)?
            }
            (None, Some(id)) => {
                let mut r = serde_json::json!({ "templateId": id });
                if let Some(v) = req.template_version {
                    r["templateVersion"] = v.into();
                }
                r
            }
        };
        // What a member will be, checked now: a pool that cannot make members is refused.
        let owner = pool_principal(&caller.id);
        let (plan, template) = self.member_plan(&request, &owner).await?;
        request["entrypoint"] = serde_json::json!(plan.entrypoint);
        if let Some(t) = &template {
            request["templateId"] = t.id.clone().into();
            request["templateVersion"] = t.version.into();
        }
        let row = PoolRow {
            name: req.name.clone(),
            owner: caller.id.clone(),
            request,
            image: plan.image,
            capacity: req.capacity_spec,
            recycle,
            dedicated_owner,
            template: template.map(|t| (t.id, t.version)),
            revision: 1,
            created_at: now_ms(),
        };
        if !self.store.insert_pool(&row).await? {
            return Err(Error::Conflict(Conflict::PoolExists(req.name)));
        }
        self.pools.lock_health().remove(&row.name);
        tracing::info!(pool = %row.name, image = %row.image, "pool created");
        self.pools.wake();
        Ok(self.pool_view(&row, Counts::default()))
    }

    /// `GET /v1/pools`.
    pub async fn list_pools(&self) -> Result<ListPoolsResponse, Error> {
        let members = self.readable_members().await?;
        let items = self
            .store
            .pools()
            .await?
            .iter()
            .map(|p| self.pool_view(p, Counts::of(members.iter().filter(|m| m.pool == p.name))))
            .collect();
        Ok(ListPoolsResponse { items })
    }

    /// `GET /v1/pools/{name}`: the pool and its counts (`get_sandbox_stats()`).
    pub async fn get_pool(&self, name: &str) -> Result<PoolResponse, Error> {
        let pool = self.pool_row(name).await?;
        let members = self.readable_members().await?;
        Ok(self.pool_view(&pool, Counts::of(members.iter().filter(|m| m.pool == name))))
    }

    /// `PUT /v1/pools/{name}`: a new capacity; the reconciler scales to it (down: idle members
    /// only).
    pub async fn update_pool(&self, name: &str, req: UpdatePoolRequest) -> Result<PoolResponse, Error> {
        self.check_capacity(&req.capacity_spec)?;
        let pool = self
            .store
            .set_capacity(name, req.capacity_spec)
            .await?
            .ok_or_else(|| Error::not_found(Kind::Pool, name))?;
        tracing::info!(pool = name, capacity = ?req.capacity_spec, "pool capacity changed");
        self.pools.wake();
        self.get_pool(&pool.name).await
    }

    /// `DELETE /v1/pools/{name}`: idle and warming members are removed; allocated sandboxes
    /// keep running, detached from the pool.
    pub async fn delete_pool(&self, name: &str) -> Result<(), Error> {
        let rest = self
            .store
            .delete_pool(name)
            .await?
            .ok_or_else(|| Error::not_found(Kind::Pool, name))?;
        for member in rest {
            self.remove_member(&member).await;
        }
        self.pools.lock_health().remove(name);
        tracing::info!(pool = name, "pool deleted");
        self.pools.wake();
        Ok(())
    }

    /// `POST /v1/pools/{name}/acquire`: a sandbox from the pool.
    pub async fn acquire_from_pool(
        &self,
        name: &str,
        req: AcquireRequest,
        caller: &Principal,
    ) -> Result<Sandbox, Error> {
        let metadata = req.metadata.unwrap_or_default();
        for (k, v) in &metadata {
            spec::check_label(k, v)?;
        }
        let acquire = Acquire {
            name: req.name.map(|n| spec::check_name(&n).map(|()| n)).transpose()?,
            timeout: spec::timeout(req.timeout.as_ref(), self.settings.limits.max_timeout)?,
            metadata,
            env: env(req.env.unwrap_or_default())?,
            extensions: BTreeMap::from([(POOL_REF.to_owned(), name.to_owned())]),
            entrypoint: None,
            business_domain: None,
            resize: resize(req.resource_limits)?,
        };
        let record = self.acquire(name, acquire, caller).await?;
        Ok(view(&record, &Observed::Running))
    }

    /// `POST /sandboxes` with `extensions.poolRef`: the canonical acquire. `image`,
    /// `entrypoint` and `resourceLimits` are optional (the pool's apply); a different
    /// `entrypoint` is started through execd as a background command.
    pub(super) async fn acquire_for_create(
        &self,
        pool_ref: &str,
        req: CreateSandboxRequest,
        caller: &Principal,
        business_domain: Option<String>,
    ) -> Result<CreateSandboxResponse, Error> {
        if req.snapshot_id.is_some() {
            return Err(Error::invalid(
                "extensions.poolRef cannot be combined with snapshotId",
            ));
        }
        if req.template_id.is_some() && pool_ref != ANY_POOL {
            return Err(Error::invalid(
                "extensions.poolRef cannot be combined with templateId (the pool's template applies)",
            ));
        }
        for (set, field) in [
            (req.volumes.as_ref().is_some_and(|v| !v.is_empty()), "volumes"),
            (req.lifecycle.as_ref().is_some_and(|v| !v.is_null()), "lifecycle"),
            (
                req.network_policy.as_ref().is_some_and(|v| !v.is_null()),
                "networkPolicy",
            ),
        ] {
            if set {
                return Err(Error::invalid(format!(
                    "{field} cannot be set on a pooled sandbox: its pool's members are made already"
                )));
            }
        }
        let name = if pool_ref == ANY_POOL {
            self.matching_pool(&req).await?
        } else {
            pool_ref.to_owned()
        };
        let metadata = req.metadata.unwrap_or_default();
        for (k, v) in &metadata {
            spec::check_label(k, v)?;
        }
        let mut extensions = req.extensions.unwrap_or_default();
        extensions.insert(POOL_REF.into(), name.clone());
        let entrypoint = match req.entrypoint {
            Some(e) if e.first().is_none_or(|p| p.is_empty()) => {
                return Err(Error::invalid("entrypoint must name a program"))
            }
            other => other,
        };
        let acquire = Acquire {
            name: req.name.map(|n| spec::check_name(&n).map(|()| n)).transpose()?,
            timeout: spec::timeout(req.timeout.as_ref(), self.settings.limits.max_timeout)?,
            metadata,
            env: env(req.env.unwrap_or_default())?,
            extensions,
            entrypoint,
            business_domain,
            resize: resize(req.resource_limits)?,
        };
        let record = self.acquire(&name, acquire, caller).await?;
        Ok(CreateSandboxResponse {
            id: record.id.clone(),
            status: status(&record, &Observed::Running),
            metadata: Some(record.metadata.clone()).filter(|m| !m.is_empty()),
            platform: None,
            expires_at: record.expires_at.map(format_ms),
            created_at: format_ms(record.created_at),
            entrypoint: record.entrypoint.clone(),
            template_id: None,
            template_name: None,
            template_version: None,
            name: record.name.clone(),
            allocation: super::sandboxes::allocation(&record),
        })
    }

    /// `POST /sandboxes/{id}/release`: gives a pool-backed sandbox back to its pool; the
    /// sandbox stays readable as `Terminated` (`RELEASED`) for a while.
    pub async fn release(&self, id: &str, caller: &Principal) -> Result<(), Error> {
        let record = self.owned(id, caller).await?;
        if record.pool.is_none() || record.phase == Phase::Released {
            return Err(Error::Conflict(Conflict::NotAllocated(id.to_owned())));
        }
        self.end_allocation(&record, true).await
    }

    /// Ends a pool-backed sandbox's allocation: recycles its member by the pool's strategy
    /// (a deleted pool's by removal), then keeps the record as `Released` (`keep`) or
    /// forgets it. A member the runtime cannot remove fails the call and stays as it is.
    pub(super) async fn end_allocation(&self, record: &Record, keep: bool) -> Result<(), Error> {
        let Some(link) = &record.pool else {
            return Err(Error::Conflict(Conflict::NotAllocated(record.id.clone())));
        };
        let recycle = match self.store.pool(&link.pool).await? {
            Some(pool) => pool.recycle,
            None => RecycleType::Delete,
        };
        match (recycle, &record.instance) {
            (RecycleType::Noop, Some(instance)) if self.return_member(instance, &link.member).await? => {}
            (_, instance) => {
                if let Some(instance) = instance {
                    self.runtime.remove(instance).await?;
                }
                self.store.remove_member(&link.member, false).await?;
            }
        }
        if keep {
            let mut released = record.clone();
            let now = now_ms();
            released.phase = Phase::Released;
            released.instance = None;
            released.transition_at = now;
            released.expires_at = Some(now + RELEASED_KEPT_MS);
            self.store.update(&released).await?;
            self.log_event(
                &record.id,
                EventType::Released,
                format!("released to pool {}", link.pool),
            )
            .await;
        } else {
            self.store.remove(&record.id).await?;
        }
        tracing::info!(sandbox = %record.id, pool = %link.pool, ?recycle, "pooled sandbox released");
        self.expiry_changed.notify_one();
        self.pools.wake();
        Ok(())
    }

    /// Runs the pool reconciler until the process ends. Its warm-up tasks are owned by it.
    pub async fn run_pools(self: Arc<Self>) {
        let mut tasks = JoinSet::new();
        loop {
            self.reconcile_pools(&mut tasks).await;
            while tasks.try_join_next().is_some() {}
            tokio::select! {
                () = tokio::time::sleep(TICK) => {}
                () = self.pools.poke.notified() => {}
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        }
    }

    /// One pass of the reconciler over every pool. Failures are logged; the next pass tries
    /// again.
    pub(super) async fn reconcile_pools(self: &Arc<Self>, tasks: &mut JoinSet<()>) {
        if let Err(e) = self.reconcile_pools_once(tasks).await {
            tracing::warn!(error = %e, "pool reconciliation failed");
        }
    }

    async fn reconcile_pools_once(self: &Arc<Self>, tasks: &mut JoinSet<()>) -> Result<(), Error> {
        let pools: HashMap<String, PoolRow> = self
            .store
            .pools()
            .await?
            .into_iter()
            .map(|p| (p.name.clone(), p))
            .collect();
        // The warm-ups followed, then the members, then the runtime. A member warming in the
        // store and not followed before it was read is stale (only this task starts
        // warm-ups); a member seen idle existed before the runtime was read, so its absence
        // there means it is gone, not that it is new.
        let following = self.pools.lock_warming().clone();
        let members = self.readable_members().await?;
        let live = self.runtime.observe_all().await?;
        let sandboxes: HashSet<String> = self
            .store
            .all()
            .await?
            .into_iter()
            .map(|row| match row {
                Ok(r) => r.id,
                Err(e) => e.id,
            })
            .collect();
        let mut kept: Vec<MemberRow> = Vec::new();
        for m in members {
            let pool_exists = pools.contains_key(&m.pool);
            let verdict = match m.state {
                MemberState::Allocated if !pool_exists => Some("its pool was deleted"),
                MemberState::Allocated => match &m.sandbox_id {
                    Some(s) if sandboxes.contains(s) => None,
                    _ => Some("its sandbox is gone"),
                },
                _ if !pool_exists => Some("its pool was deleted"),
                MemberState::Warming if !following.contains(&m.id) => {
                    Some("nothing follows its warm-up (sandboxd restarted)")
                }
                MemberState::Warming => None,
                MemberState::Idle => match live.get(&m.id).map(|(_, o)| o) {
                    Some(Observed::Running | Observed::Starting) => None,
                    Some(Observed::Unknown(what)) => {
                        tracing::warn!(member = %m.id, state = %what, "pool member in an unknown state left alone");
                        None
                    }
                    Some(Observed::Paused) => Some("its container is paused"),
                    Some(Observed::Exited { .. } | Observed::Stopping | Observed::Gone) | None => Some(DIED),
                },
            };
            match verdict {
                None => kept.push(m),
                Some(why) if m.state == MemberState::Allocated && !pool_exists => {
                    // Detached: the sandbox keeps its instance; only the row goes.
                    tracing::info!(member = %m.id, why, "pool member detached");
                    self.store.remove_member(&m.id, false).await?;
                }
                Some(why) if m.state == MemberState::Allocated => {
                    // Only while it is still allocated to the sandbox that is gone: an acquire
                    // that undid its claim since this look has made it idle again.
                    let Some(sandbox) = &m.sandbox_id else {
                        continue;
                    };
                    if self.store.remove_member_allocated_to(&m.id, sandbox).await? {
                        if let Some(instance) = &m.instance {
                            if let Err(e) = self.runtime.remove(instance).await {
                                tracing::warn!(member = %m.id, error = %e, "cannot remove a pool member whose sandbox is gone; the sweep retries");
                            }
                        }
                        tracing::info!(member = %m.id, pool = %m.pool, why, "pool member removed");
                        self.pools.changed.notify_waiters();
                    }
                }
                Some(why) => {
                    if self.drop_member(&m).await? {
                        if why == DIED {
                            self.pools
                                .failed(&m.pool, format!("member {} died while idle", m.id));
                        }
                        tracing::info!(member = %m.id, pool = %m.pool, why, "pool member removed");
                        self.pools.changed.notify_waiters();
                    }
                }
            }
        }
        for pool in pools.values() {
            let mine: Vec<&MemberRow> = kept.iter().filter(|m| m.pool == pool.name).collect();
            self.scale(pool, &mine, tasks).await?;
        }
        Ok(())
    }

    /// Moves one pool toward its capacity: spare members (idle and warming) at `bufferMax`,
    /// the total within `[poolMin, poolMax]`; down by idle (then warming) members only.
    async fn scale(
        self: &Arc<Self>,
        pool: &PoolRow,
        members: &[&MemberRow],
        tasks: &mut JoinSet<()>,
    ) -> Result<(), Error> {
        let cap = pool.capacity;
        let counts = Counts::of(members.iter().copied());
        let total = counts.total();
        let spare = counts.idle + counts.warming;
        let over_buffer = spare
            .saturating_sub(cap.buffer_max)
            .min(total.saturating_sub(cap.pool_min));
        let excess = over_buffer.max(total.saturating_sub(cap.pool_max));
        if excess > 0 {
            // Idle ones first, the most recently ready first; then warming, newest first.
            let mut victims: Vec<&MemberRow> = members
                .iter()
                .copied()
                .filter(|m| m.state != MemberState::Allocated)
                .collect();
            victims.sort_by_key(|m| {
                (
                    m.state == MemberState::Warming,
                    std::cmp::Reverse(m.ready_at.unwrap_or(m.created_at)),
                )
            });
            for m in victims.into_iter().take(excess as usize) {
                if self.drop_member(m).await? {
                    tracing::info!(pool = %pool.name, member = %m.id, "pool scaled down");
                }
            }
            return Ok(());
        }
        let want = cap
            .buffer_max
            .saturating_sub(spare)
            .max(cap.pool_min.saturating_sub(total))
            .min(cap.pool_max.saturating_sub(total));
        if want == 0 || self.pools.backing_off(&pool.name) {
            return Ok(());
        }
        for _ in 0..want {
            let member = MemberRow {
                id: format!("{MEMBER_PREFIX}{}", uuid::Uuid::new_v4()),
                pool: pool.name.clone(),
                state: MemberState::Warming,
                sandbox_id: None,
                instance: None,
                token: new_token()?,
                created_at: now_ms(),
                ready_at: None,
            };
            if !self.store.insert_member(&member).await? {
                tracing::debug!(pool = %pool.name, "pool deleted while scaling up");
                return Ok(());
            }
            self.pools.lock_warming().insert(member.id.clone());
            let (service, pool) = (self.clone(), pool.clone());
            tasks.spawn(async move { service.follow_warm_up(pool, member).await });
        }
        Ok(())
    }

    /// One member's warm-up, start to idle; on failure nothing of it is left.
    async fn follow_warm_up(self: Arc<Self>, pool: PoolRow, member: MemberRow) {
        let result = self.warm_up(&pool, &member).await;
        match result {
            Ok(true) => {
                self.pools.warmed(&pool.name);
                tracing::debug!(pool = %pool.name, member = %member.id, "pool member idle");
            }
            Ok(false) => {
                tracing::debug!(pool = %pool.name, member = %member.id, "pool member dropped while warming")
            }
            Err((instance, e)) => {
                tracing::warn!(pool = %pool.name, member = %member.id, error = %e, "pool member failed to warm");
                self.pools
                    .failed(&pool.name, format!("a member failed to warm: {e}"));
                let failed = MemberRow {
                    instance,
                    ..member.clone()
                };
                self.remove_member(&failed).await;
            }
        }
        self.pools.lock_warming().remove(&member.id);
        self.pools.wake();
    }

    /// Creates the member's sandbox and waits for its execd. `Ok(false)` when the member was
    /// dropped meanwhile (its pool deleted or scaled down): its instance is removed. On error,
    /// the instance made so far, if any.
    async fn warm_up(&self, pool: &PoolRow, member: &MemberRow) -> Result<bool, (Option<Instance>, Error)> {
        let owner = pool_principal(&pool.owner);
        let (plan, _) = self
            .member_plan(&pool.request, &owner)
            .await
            .map_err(|e| (None, e))?;
        let mut spec = self
            .sandbox_spec(&member.id, &member.token, None, plan)
            .map_err(|e| (None, e))?;
        spec.pool = Some(pool.name.clone());
        let instance = self.runtime.create(spec).await.map_err(|e| (None, e.into()))?;
        let failed = |e: Error| (Some(instance.clone()), e);
        if !self
            .store
            .set_member_instance(&member.id, &instance)
            .await
            .map_err(|e| failed(e.into()))?
        {
            let _ = self.runtime.remove(&instance).await;
            return Ok(false);
        }
        let Some(target) = self.runtime.target(&instance, EXECD_PORT) else {
            return Err(failed(Error::StartFailed(
                "the runtime published no port for the member's execd".into(),
            )));
        };
        self.wait_ready(&instance, &target, &member.token, false)
            .await
            .map_err(failed)?;
        // Claimable on the runtime before the store offers it.
        self.runtime
            .member_idle(&instance)
            .await
            .map_err(|e| failed(e.into()))?;
        if !self
            .store
            .member_ready(&member.id, now_ms())
            .await
            .map_err(|e| failed(e.into()))?
        {
            let _ = self.runtime.remove(&instance).await;
            return Ok(false);
        }
        Ok(true)
    }

    /// Drops a member unless it was allocated since it was read: its row, then its instance
    /// (a container the runtime refuses to remove now is an orphan the sweep removes later).
    /// True when the member was dropped.
    async fn drop_member(&self, m: &MemberRow) -> Result<bool, Error> {
        if !self.store.remove_member(&m.id, true).await? {
            return Ok(false);
        }
        if let Some(instance) = &m.instance {
            if let Err(e) = self.runtime.remove(instance).await {
                tracing::warn!(member = %m.id, error = %e, "cannot remove a dropped pool member; the sweep retries");
            }
        }
        Ok(true)
    }

    /// Removes a member that is not allocated: its instance, then its row (kept when the
    /// runtime refuses, so that the next pass tries again).
    async fn remove_member(&self, member: &MemberRow) {
        if let Some(instance) = &member.instance {
            if let Err(e) = self.runtime.remove(instance).await {
                tracing::warn!(member = %member.id, error = %e, "cannot remove a pool member; retrying later");
                return;
            }
        }
        if let Err(e) = self.store.remove_member(&member.id, false).await {
            tracing::warn!(member = %member.id, error = %e, "cannot forget a pool member");
        }
    }

    /// Hands an idle member of pool `name` to a new sandbox of `caller`'s.
    async fn acquire(&self, name: &str, req: Acquire, caller: &Principal) -> Result<Record, Error> {
        let pool = self.pool_row(name).await?;
        if pool.dedicated_owner && caller.role != Role::Admin && caller.id != pool.owner {
            return Err(Error::not_found(Kind::Pool, name));
        }
        if caller.role != Role::Admin {
            let limit = self.settings.max_sandboxes_per_user;
            if self.store.count_owned(&caller.id).await? >= limit {
                return Err(Error::Forbidden(Denial::Quota { limit }));
            }
        }
        let now = now_ms();
        let pool_entrypoint: Vec<String> = pool
            .request
            .get("entrypoint")
            .and_then(|e| serde_json::from_value(e.clone()).ok())
            .unwrap_or_default();
        // What the sandbox was made with, for its view: the pool's limits and env, the
        // request's env over them.
        let strings = |field: &str| -> BTreeMap<String, String> {
            pool.request
                .get(field)
                .and_then(|v| serde_json::from_value(v.clone()).ok())
                .unwrap_or_default()
        };
        let mut shown_env = strings("env");
        shown_env.extend(req.env.clone());
        let mut shown_limits = strings("resourceLimits");
        if let Some((_, given)) = &req.resize {
            shown_limits.extend(given.clone());
        }
        let record = Record {
            id: uuid::Uuid::new_v4().to_string(),
            instance: None,
            image: pool.image.clone(),
            entrypoint: req.entrypoint.clone().unwrap_or_else(|| pool_entrypoint.clone()),
            metadata: req.metadata,
            extensions: req.extensions,
            platform: None,
            token: String::new(),
            created_at: now,
            expires_at: req.timeout.map(|t| now + t as i64 * 1000),
            phase: Phase::Ready,
            transition_at: now,
            owner: caller.id.clone(),
            business_domain: req.business_domain,
            template: None,
            failure: None,
            name: req.name.clone(),
            resource_limits: shown_limits,
            timeout: req.timeout,
            env: shown_env,
            pool: None,
            snapshot_id: None,
            pause_policy: Default::default(),
            // Its container is the pool member's: it cannot be Rootfs-paused.
            launch: None,
            hibernation: None,
        };
        let timeout = self.settings.pools.acquire_timeout;
        let deadline = Instant::now() + timeout;
        let exhausted = || Error::CapacityExhausted {
            pool: name.to_owned(),
            retry_after: timeout.as_secs_f64().ceil().max(1.0) as u64,
        };
        let record = loop {
            let changed = self.pools.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(claimed) = self.store.claim_member(name, record.clone()).await? {
                if self.claim_on_runtime(&claimed).await? {
                    break claimed;
                }
                // Not this sandboxd's any more: the next idle member.
                continue;
            }
            let pool = self.pool_row(name).await?;
            let members = self.readable_members().await?;
            let counts = Counts::of(members.iter().filter(|m| m.pool == name));
            if counts.idle > 0 {
                // One became idle since the claim: claim again.
                continue;
            }
            let may_deliver = counts.warming > 0 || counts.total() < pool.capacity.pool_max;
            if !may_deliver || Instant::now() >= deadline {
                return Err(exhausted());
            }
            self.pools.poke.notify_one();
            // Woken by a member that became idle (or went); at the deadline, one last look.
            let _ = tokio::time::timeout_at(deadline, changed).await;
        };
        self.pools.poke.notify_one();
        let prepared = async {
            if let Some((resources, given)) = &req.resize {
                self.resize_acquired(&record, *resources, given).await?;
            }
            self.prepare_acquired(&record, &pool_entrypoint, &req.env).await
        };
        if let Err(e) = prepared.await {
            tracing::warn!(sandbox = %record.id, error = %e, "cannot prepare an acquired member; releasing it");
            if let Err(e) = self.end_allocation(&record, false).await {
                tracing::error!(sandbox = %record.id, error = %e, "cannot release a member that failed to prepare");
            }
            return Err(e);
        }
        if record.expires_at.is_some() {
            self.expiry_changed.notify_one();
        }
        self.log_event(
            &record.id,
            EventType::Allocated,
            format!("acquired from pool {name}"),
        )
        .await;
        tracing::info!(sandbox = %record.id, pool = name, "sandbox acquired from pool");
        Ok(record)
    }

    /// Has the runtime claim the member the store just allocated to `record` (Kubernetes:
    /// the pod's labels, under a `test` of its idle state). False when the member is not this
    /// sandboxd's any more (another claimer took it, or it is gone): the record and the
    /// member's row are forgotten, and whatever holds the instance keeps it. Any other failure
    /// gives the member back to the pool, idle, and fails the acquire.
    async fn claim_on_runtime(&self, record: &Record) -> Result<bool, Error> {
        let (Some(instance), Some(link)) = (&record.instance, &record.pool) else {
            return Err(Error::Internal("an allocated member has no instance".into()));
        };
        match self.runtime.claim(instance, &record.id).await {
            Ok(()) => Ok(true),
            Err(e @ (RuntimeError::Conflict(_) | RuntimeError::NotFound(_))) => {
                tracing::warn!(pool = %link.pool, member = %link.member, error = %e, "pool member claimed elsewhere or gone; forgotten, trying the next");
                self.store.forget_claimed_member(&record.id, &link.member).await?;
                self.pools.wake();
                Ok(false)
            }
            Err(e) => {
                tracing::warn!(pool = %link.pool, member = %link.member, error = %e, "cannot claim a pool member; it stays idle");
                self.store
                    .unclaim_member(&record.id, &link.member, now_ms())
                    .await?;
                Err(e.into())
            }
        }
    }

    /// Returns an allocated member to idle as it is (`Noop`): the runtime first, so that it
    /// is claimable there before the store hands it out. False when either refuses (the
    /// caller removes it instead).
    async fn return_member(&self, instance: &Instance, member: &str) -> Result<bool, Error> {
        if let Err(e) = self.runtime.member_idle(instance).await {
            tracing::warn!(member, error = %e, "cannot mark a returned member idle; removing it");
            return Ok(false);
        }
        Ok(self.store.member_back_to_idle(member, now_ms()).await?)
    }

    /// Applies a `resourceLimits` override to the acquired member, live. The engine's refusal
    /// of a value (a memory limit below what the container uses) is the caller's 400.
    async fn resize_acquired(
        &self,
        record: &Record,
        resources: Resources,
        given: &BTreeMap<String, String>,
    ) -> Result<(), Error> {
        let instance = record
            .instance
            .as_ref()
            .ok_or_else(|| Error::Internal("an allocated member has no instance".into()))?;
        let t = Instant::now();
        self.runtime
            .resize(instance, resources)
            .await
            .map_err(|e| match e {
                RuntimeError::Rejected(message) => {
                    Error::invalid(format!("resourceLimits: the runtime refused them: {message}"))
                }
                other => other.into(),
            })?;
        let limits: Vec<String> = given.iter().map(|(k, v)| format!("{k}={v}")).collect();
        tracing::info!(sandbox = %record.id, limits = %limits.join(","), ms = t.elapsed().as_millis(), "acquired member resized");
        Ok(())
    }

    /// Makes the member the new sandbox's: its id and the request's env in execd's env file
    /// (what every command sees), and a requested entrypoint other than the pool's started in
    /// the background.
    async fn prepare_acquired(
        &self,
        record: &Record,
        pool_entrypoint: &[String],
        env: &BTreeMap<String, String>,
    ) -> Result<(), Error> {
        let instance = record
            .instance
            .as_ref()
            .ok_or_else(|| Error::Internal("an allocated member has no instance".into()))?;
        let target = self
            .runtime
            .target(instance, EXECD_PORT)
            .ok_or_else(|| Error::StartFailed("the pool member is not running".into()))?;
        let mut file = env_line("OPENSANDBOX_ID", &record.id);
        for (k, v) in env {
            file.push_str(&env_line(k, v));
        }
        self.execd
            .write_file(&target, &record.token, EXECD_ENVS_FILE, file.as_bytes(), 600)
            .await
            .map_err(|e| Error::StartFailed(format!("cannot write the sandbox's env through execd: {e}")))?;
        if record.entrypoint != pool_entrypoint {
            self.execd
                .start_background(&target, &record.token, &record.entrypoint)
                .await
                .map_err(|e| Error::StartFailed(format!("cannot start the entrypoint through execd: {e}")))?;
        }
        Ok(())
    }

    /// The pool `poolRef: "*"` picks: the first (by name) whose template or image is the
    /// request's.
    async fn matching_pool(&self, req: &CreateSandboxRequest) -> Result<String, Error> {
        let image = req.image.as_ref().map(|i| i.uri.trim());
        let template = req.template_id.as_deref();
        if image.is_none() && template.is_none() {
            return Err(Error::invalid(
                "extensions.poolRef \"*\" picks a pool by image or templateId; send one",
            ));
        }
        let template = match template {
            Some(t) => Some(self.readable_template(t, &pool_principal("root")).await?.0.id),
            None => None,
        };
        self.store
            .pools()
            .await?
            .into_iter()
            .find(|p| match (&template, image) {
                (Some(t), _) => p.template.as_ref().is_some_and(|(id, _)| id == t),
                (None, Some(image)) => p.image == image,
                (None, None) => false,
            })
            .map(|p| p.name)
            .ok_or_else(|| Error::not_found(Kind::Pool, ANY_POOL))
    }

    /// A member's plan from a pool's request, and the template version it pins.
    async fn member_plan(
        &self,
        request: &serde_json::Value,
        owner: &Principal,
    ) -> Result<(spec::Plan, Option<crate::orchestrator::store::TemplateRef>), Error> {
        let req: CreateSandboxRequest = serde_json::from_value(request.clone())
            .map_err(|e| Error::invalid(format!("the pool's template is not a sandbox spec: {e}")))?;
        let (req, template) = self.resolve_template(req, owner).await?;
        let mut plan = spec::plan(req, &self.settings.limits)?;
        if plan.workspace.is_some() {
            // A member outlives any one sandbox, and a pooled sandbox cannot be Rootfs-paused.
            return Err(Error::invalid(
                "workspace.persistent: a pool's members cannot have a persistent workspace",
            ));
        }
        if let Some(t) = &template {
            t.apply(&mut plan);
            // A member is ready when execd answers; its readiness probe is not run.
            plan.readiness = None;
        }
        Ok((plan, template.map(|t| t.reference)))
    }

    async fn pool_row(&self, name: &str) -> Result<PoolRow, Error> {
        self.store
            .pool(name)
            .await?
            .ok_or_else(|| Error::not_found(Kind::Pool, name))
    }

    /// Every readable member row (unreadable ones are logged and left alone).
    async fn readable_members(&self) -> Result<Vec<MemberRow>, Error> {
        Ok(self
            .store
            .members()
            .await?
            .into_iter()
            .filter_map(|row| match row {
                Ok(m) => Some(m),
                Err(e) => {
                    tracing::warn!(member = %e.id, error = %e.error, "unreadable pool member row left alone");
                    None
                }
            })
            .collect())
    }

    fn check_capacity(&self, c: &PoolCapacitySpec) -> Result<(), Error> {
        let max = self.settings.pools.max_members;
        if c.buffer_min > c.buffer_max {
            return Err(Error::invalid(format!(
                "capacitySpec.bufferMin ({}) must not exceed bufferMax ({})",
                c.buffer_min, c.buffer_max
            )));
        }
        if c.buffer_max > c.pool_max {
            return Err(Error::invalid(format!(
                "capacitySpec.bufferMax ({}) must not exceed poolMax ({})",
                c.buffer_max, c.pool_max
            )));
        }
        if c.pool_min > c.pool_max {
            return Err(Error::invalid(format!(
                "capacitySpec.poolMin ({}) must not exceed poolMax ({})",
                c.pool_min, c.pool_max
            )));
        }
        if c.pool_max > max {
            return Err(Error::invalid(format!(
                "capacitySpec.poolMax ({}) exceeds this server's limit of {max} members per pool",
                c.pool_max
            )));
        }
        Ok(())
    }

    fn pool_view(&self, pool: &PoolRow, counts: Counts) -> PoolResponse {
        let health = self
            .pools
            .lock_health()
            .get(&pool.name)
            .cloned()
            .unwrap_or_default();
        PoolResponse {
            name: pool.name.clone(),
            capacity_spec: pool.capacity,
            status: PoolStatus {
                total: counts.total(),
                allocated: counts.allocated,
                available: counts.idle,
                revision: pool.revision.to_string(),
                warming: counts.warming,
                failed: health.failed,
                message: health.message,
            },
            created_at: format_ms(pool.created_at),
            recycle_strategy: RecycleStrategy { kind: pool.recycle },
            dedicated_owner: pool.dedicated_owner,
            image: pool.image.clone(),
            template_id: pool.template.as_ref().map(|t| t.0.clone()),
            template_version: pool.template.as_ref().map(|t| t.1),
        }
    }
}

/// The principal a pool's members are made as: its owner, with the admin role pools are
/// made with (so that the template stays readable to it).
fn pool_principal(owner: &str) -> Principal {
    Principal {
        id: owner.to_owned(),
        ..Principal::root()
    }
}

/// A DNS-1123 name (upstream's pattern), at most 253 characters.
fn check_name(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= NAME_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "name {name:?} must be 1–{NAME_MAX} of a-z, 0-9 and '-', starting and ending with a letter or digit"
        )))
    }
}

/// `env` of an acquire: valid names, null values dropped.
fn env(env: BTreeMap<String, Option<String>>) -> Result<BTreeMap<String, String>, Error> {
    let mut out = BTreeMap::new();
    for (k, v) in env {
        let valid = !k.is_empty()
            && !k.starts_with(|c: char| c.is_ascii_digit())
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(Error::invalid(format!("env: invalid variable name {k:?}")));
        }
        if let Some(v) = v {
            if v.contains('\0') {
                return Err(Error::invalid(format!("env: {k} contains a NUL byte")));
            }
            out.insert(k, v);
        }
    }
    Ok(out)
}

/// One `EXECD_ENVS` line holding `value` literally: single-quoted (no expansion) unless it
/// holds a single quote, then double-quoted with escapes and `$` left as is only where execd's
/// expansion cannot change it.
fn env_line(key: &str, value: &str) -> String {
    if !value.contains('\'') {
        return format!("{key}='{value}'\n");
    }
    let mut quoted = String::with_capacity(value.len() + 2);
    for c in value.chars() {
        match c {
            '\\' => quoted.push_str("\\\\"),
            '"' => quoted.push_str("\\\""),
            '\n' => quoted.push_str("\\n"),
            '\r' => quoted.push_str("\\r"),
            '\t' => quoted.push_str("\\t"),
            c => quoted.push(c),
        }
    }
    format!("{key}=\"{quoted}\"\n")
}

/// A fresh execd access token.
fn new_token() -> Result<String, Error> {
    let mut token = [0u8; 24];
    getrandom::fill(&mut token).map_err(|e| Error::Internal(format!("no randomness: {e}")))?;
    Ok(hex::encode(token))
}

/// Upstream's `PodTemplateSpec` → the members' create request: the first container's
/// `image`, `command` + `args`, `env` and `resources.limits`, and the pod's labels.
fn pod_template(template: &serde_json::Value) -> Result<serde_json::Value, Error> {
    let container = template
        .pointer("/spec/containers/0")
        .ok_or_else(|| Error::invalid("template.spec.containers must hold at least one container"))?;
    let image = container
        .get("image")
        .and_then(|i| i.as_str())
        .filter(|i| !i.trim().is_empty())
        .ok_or_else(|| Error::invalid("template.spec.containers[0].image is required"))?;
    let strings = |field: &str| -> Result<Vec<String>, Error> {
        match container.get(field) {
            None | Some(serde_json::Value::Null) => Ok(Vec::new()),
            Some(v) => serde_json::from_value(v.clone()).map_err(|_| {
                Error::invalid(format!(
                    "template.spec.containers[0].{field} must be a list of strings"
                ))
            }),
        }
    };
    let mut entrypoint = strings("command")?;
    entrypoint.extend(strings("args")?);
    if entrypoint.is_empty() {
        entrypoint = DEFAULT_ENTRYPOINT.iter().map(|s| (*s).to_owned()).collect();
    }
    let mut env = serde_json::Map::new();
    for (i, e) in container
        .get("env")
        .and_then(|e| e.as_array())
        .into_iter()
        .flatten()
        .enumerate()
    {
        let name = e.get("name").and_then(|n| n.as_str()).ok_or_else(|| {
            Error::invalid(format!("template.spec.containers[0].env[{i}].name is required"))
        })?;
        if e.get("valueFrom").is_some_and(|v| !v.is_null()) {
            return Err(Error::UnsupportedField(format!(
                "template.spec.containers[0].env[{i}].valueFrom: only literal values are supported"
            )));
        }
        let value = e.get("value").and_then(|v| v.as_str()).unwrap_or_default();
        env.insert(name.to_owned(), value.into());
    }
    let mut limits = serde_json::Map::new();
    if let Some(l) = container.pointer("/resources/limits").and_then(|l| l.as_object()) {
        for key in ["cpu", "memory"] {
            match l.get(key) {
                Some(serde_json::Value::String(s)) => {
                    limits.insert(key.into(), s.clone().into());
                }
                Some(serde_json::Value::Number(n)) => {
                    limits.insert(key.into(), n.to_string().into());
                }
                _ => {}
            }
        }
    }
    let labels = template
        .pointer("/metadata/labels")
        .cloned()
        .unwrap_or_else(|| serde_json::json!({}));
    let mut request = serde_json::json!({
        "image": {"uri": image.trim()},
        "entrypoint": entrypoint,
        "env": env,
        "metadata": labels,
    });
    if !limits.is_empty() {
        request["resourceLimits"] = limits.into();
    }
    Ok(request)
}

/// A `resourceLimits` override of an acquire, checked; `None` when none is given.
fn resize(limits: Option<BTreeMap<String, serde_json::Value>>) -> Result<Option<spec::LiveLimits>, Error> {
    match limits {
        Some(l) if l.values().any(|v| !v.is_null()) => spec::live_limits(l).map(Some),
        _ => Ok(None),
    }
}

#[cfg(test)]
#[path = "pools_tests.rs"]
mod tests;
