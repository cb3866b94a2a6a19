//! Image prepull tasks: pull an image ahead of the sandboxes that need it, with progress.
//!
//! - Admission (`create_prepull`, `start_prepull`, `prepull_template`): the reference is
//!   checked and normalised (`reference`); a task still `Pending` or `Pulling` for the same
//!   image that the caller may see is returned instead of a second one (the flag says so);
//!   an image already present completes at once (`ALREADY_PRESENT`); anything else is stored
//!   `Pending` and queued. Tasks of other users are never shared: dockerd itself joins two
//!   pulls of the same layers.
//! - Scheduling (`run_prepulls`, one task for the process): at most [`MAX_CONCURRENT`] pulls
//!   run at once, in the order queued; each runs inside that task, which owns them all.
//! - A pull consumes the runtime's stream, persisting progress at most every 500 ms; it ends
//!   `Completed`, `Failed` (the runtime's reason, or `TIMEOUT` once `timeout` seconds have
//!   passed since it started) or `Cancelled` (a DELETE). Ending drops the stream, which
//!   cancels the runtime's pull.
//! - Credentials live in memory for the pull only, so a task cannot survive a restart:
//!   `recover_prepulls` marks what the previous process left unfinished `Failed`
//!   (`INTERRUPTED`) rather than resuming it without the credentials it may have had.
//! - Finished tasks are kept for 7 days.
//!
//! Owner-scoped like sandboxes: someone else's task is not found; admins see all; a viewer
//! may only read. Async; the in-memory state is behind a std `Mutex`, never held across an
//! `.await`.

mod progress;
pub(crate) mod reference;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use futures_util::stream::{BoxStream, FuturesUnordered};
use futures_util::StreamExt as _;
use tokio::sync::{oneshot, watch, Notify};

use self::progress::Progress;
use super::Service;
use crate::orchestrator::auth::{Perm, Principal, Role};
use crate::orchestrator::error::{Error, Kind};
use crate::orchestrator::runtime::{Platform, PullError, PullFailure, RegistryAuth};
use crate::orchestrator::store::{PrepullFilter, PrepullRow, PREPULLS_KEPT_MS};
use crate::wire::prepull::{
    CreatePrepullRequest, ListPrepullsResponse, PrepullProgress, PrepullState, PrepullStatus, PrepullTask,
    DEFAULT_TIMEOUT, MAX_TIMEOUT, MIN_TIMEOUT,
};
use crate::wire::time::{format_ms, now_ms};

/// Pulls that run at once (`prepull.maxConcurrent`); the rest wait `Pending`.
pub const MAX_CONCURRENT: usize = 2;
/// Progress is persisted (and shown to watchers) at most this often.
const PERSIST_EVERY: Duration = Duration::from_millis(500);
/// How often finished tasks past their 7 days are deleted.
const PURGE_EVERY: Duration = Duration::from_secs(3600);
/// The longest a DELETE waits for a cancelled pull to stop.
const CANCEL_WAIT: Duration = Duration::from_secs(30);

/// `status.reason` of an image that was there already.
pub const ALREADY_PRESENT: &str = "ALREADY_PRESENT";
/// `status.reason` of a task the previous sandboxd process left unfinished.
pub const INTERRUPTED: &str = "INTERRUPTED";
/// `status.reason` of a pull that took longer than its `timeout`.
pub const TIMEOUT: &str = "TIMEOUT";

/// The list filter of `GET /prepulls`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrepullQuery {
    /// Only this image's (normalised like a create's).
    pub image: Option<String>,
    /// Only tasks in this state.
    pub state: Option<PrepullState>,
    /// Only this template's.
    pub template_id: Option<String>,
    /// 1-based page.
    pub page: u32,
    /// Items per page (1–200).
    pub page_size: u32,
}

/// One snapshot of a task for `/prepulls/{id}/events`: a number that grows with every
/// snapshot of the task in this process, and the task.
#[derive(Debug, Clone, PartialEq)]
pub struct PrepullSnapshot {
    /// Sequence number.
    pub seq: u64,
    /// The task then.
    pub task: PrepullTask,
}

/// What the process knows of its prepulls beyond the store.
pub(super) struct Prepulls {
    max_concurrent: usize,
    /// Tasks not yet finished, in queue order; a std `Mutex`, never held across an `.await`.
    live: Mutex<Live>,
    /// Wakes the scheduler when a task is queued.
    queued: Notify,
    /// Serialises admission's look for an active task with its insert, so that two creates
    /// of one image make one task.
    admit: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Live {
    /// Ids of queued tasks, oldest first.
    queue: VecDeque<String>,
    tasks: HashMap<String, LiveTask>,
}

struct LiveTask {
    /// What starting the pull needs; taken by the scheduler when it starts it.
    job: Option<Job>,
    /// Stops the pull; taken by the first DELETE.
    cancel: Option<oneshot::Sender<()>>,
    /// The latest snapshot, for watchers.
    snapshots: watch::Sender<PrepullSnapshot>,
}

struct Job {
    row: PrepullRow,
    auth: Option<RegistryAuth>,
    platform: Option<Platform>,
    cancel: oneshot::Receiver<()>,
}

/// What a create asks for, checked.
struct Admission {
    image: String,
    timeout: u64,
    auth: Option<RegistryAuth>,
    platform: Option<Platform>,
    template: Option<(String, u32)>,
}

/// How a pull ended.
enum Ending {
    Pulled,
    Cancelled,
    TimedOut,
    Failed(PullError),
}

impl Prepulls {
    /// Room for `max_concurrent` pulls at once.
    pub(super) fn new(max_concurrent: usize) -> Self {
        Self {
            max_concurrent: max_concurrent.max(1),
            live: Mutex::new(Live::default()),
            queued: Notify::new(),
            admit: tokio::sync::Mutex::new(()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn enqueue(&self, row: PrepullRow, auth: Option<RegistryAuth>, platform: Option<Platform>) {
        let (cancel, cancelled) = oneshot::channel();
        let snapshots = watch::Sender::new(PrepullSnapshot {
            seq: 1,
            task: task(&row),
        });
        let id = row.id.clone();
        let job = Job {
            row,
            auth,
            platform,
            cancel: cancelled,
        };
        let mut live = self.lock();
        live.queue.push_back(id.clone());
        live.tasks.insert(
            id,
            LiveTask {
                job: Some(job),
                cancel: Some(cancel),
                snapshots,
            },
        );
        drop(live);
        self.queued.notify_one();
    }

    /// The oldest queued task's job, taken out of the queue.
    fn next_job(&self) -> Option<Job> {
        let mut live = self.lock();
        while let Some(id) = live.queue.pop_front() {
            if let Some(job) = live.tasks.get_mut(&id).and_then(|t| t.job.take()) {
                return Some(job);
            }
        }
        None
    }

    /// Shows watchers the task as `row` has it.
    fn publish(&self, row: &PrepullRow) {
        if let Some(t) = self.lock().tasks.get(&row.id) {
            t.snapshots.send_modify(|s| {
                s.seq += 1;
                s.task = task(row);
            });
        }
    }

    /// Forgets a finished task; its watchers see the last snapshot, then the end.
    fn finish(&self, id: &str) {
        self.lock().tasks.remove(id);
    }
}

impl Service {
    /// `POST /prepulls`: a task for `req.image`, or the active one already pulling it (the
    /// flag is then true).
    pub async fn create_prepull(
        &self,
        req: CreatePrepullRequest,
        caller: &Principal,
    ) -> Result<(PrepullTask, bool), Error> {
        let timeout = req.timeout.unwrap_or(DEFAULT_TIMEOUT);
        if !(MIN_TIMEOUT..=MAX_TIMEOUT).contains(&timeout) {
            return Err(Error::invalid(format!(
                "timeout must be between {MIN_TIMEOUT} and {MAX_TIMEOUT} seconds, got {timeout}"
            )));
        }
        let platform = match req.platform {
            Some(p) => {
                let name = |what: &str, v: &str| {
                    let ok = !v.is_empty()
                        && v.len() <= 32
                        && v.bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
                    if ok {
                        Ok(())
                    } else {
                        Err(Error::invalid(format!(
                            "platform.{what} must be 1–32 of [a-z0-9_], got {v:?}"
                        )))
                    }
                };
                name("os", &p.os)?;
                name("arch", &p.arch)?;
                Some(Platform {
                    os: p.os,
                    arch: p.arch,
                })
            }
            None => None,
        };
        let auth = req.auth.map(|a| RegistryAuth {
            username: a.username,
            password: a.password,
        });
        self.admit_prepull(
            Admission {
                image: req.image,
                timeout,
                auth,
                platform,
                template: None,
            },
            caller,
        )
        .await
    }

    /// A prepull of `image` with the defaults (no credentials, the host's platform, 600 s),
    /// recorded as `template`'s (id, version) when given: for template imports with
    /// `autoPrepull`. The flag is true when an active task was returned instead.
    pub(crate) async fn start_prepull(
        &self,
        image: String,
        caller: &Principal,
        template: Option<(String, u32)>,
    ) -> Result<(PrepullTask, bool), Error> {
        self.admit_prepull(
            Admission {
                image,
                timeout: DEFAULT_TIMEOUT,
                auth: None,
                platform: None,
                template,
            },
            caller,
        )
        .await
    }

    /// `POST /templates/{idOrName}/prepull`: a prepull of the template's current-version
    /// image. A template the caller may not read (someone else's private one) is not found.
    pub async fn prepull_template(
        &self,
        id_or_name: &str,
        caller: &Principal,
    ) -> Result<(PrepullTask, bool), Error> {
        caller.require(Perm::Write)?;
        let (template, version) = self.readable_template(id_or_name, caller).await?;
        self.start_prepull(
            version.spec.image.clone(),
            caller,
            Some((template.id, version.version)),
        )
        .await
    }

    async fn admit_prepull(&self, a: Admission, caller: &Principal) -> Result<(PrepullTask, bool), Error> {
        caller.require(Perm::Write)?;
        let image = reference::normalize(&a.image)?;
        let _admitting = self.prepulls.admit.lock().await;
        let scope = (caller.role != Role::Admin).then_some(caller.id.as_str());
        if let Some(active) = self.store.active_prepull(&image, scope).await? {
            return Ok((task(&active), true));
        }
        let now = now_ms();
        let mut row = PrepullRow {
            id: format!("pp-{}", uuid::Uuid::new_v4()),
            image,
            owner: caller.id.clone(),
            template: a.template,
            state: PrepullState::Pending,
            reason: None,
            message: None,
            progress: PrepullProgress::default(),
            timeout: a.timeout,
            created_at: now,
            started_at: None,
            completed_at: None,
            transition_at: now,
        };
        if self
            .runtime
            .image_present(&row.image, a.platform.as_ref())
            .await?
        {
            row.state = PrepullState::Completed;
            row.reason = Some(ALREADY_PRESENT.into());
            row.message = Some("the image is already present".into());
            row.progress.percent = 100.0;
            row.completed_at = Some(now);
            self.store.insert_prepull(&row).await?;
            return Ok((task(&row), false));
        }
        self.store.insert_prepull(&row).await?;
        tracing::info!(prepull = %row.id, image = %row.image, owner = %row.owner, "prepull queued");
        let created = task(&row);
        self.prepulls.enqueue(row, a.auth, a.platform);
        Ok((created, false))
    }

    /// `GET /prepulls/{id}`.
    pub async fn prepull_task(&self, id: &str, caller: &Principal) -> Result<PrepullTask, Error> {
        caller.require(Perm::Read)?;
        Ok(task(&self.owned_prepull(id, caller).await?))
    }

    /// `GET /prepulls`: the caller's tasks (an admin's: everyone's), newest first.
    pub async fn list_prepulls(
        &self,
        query: PrepullQuery,
        caller: &Principal,
    ) -> Result<ListPrepullsResponse, Error> {
        caller.require(Perm::Read)?;
        let filter = PrepullFilter {
            image: query.image.as_deref().map(reference::normalize).transpose()?,
            state: query.state,
            template_id: query.template_id,
            owner: (caller.role != Role::Admin).then(|| caller.id.clone()),
            page: query.page.max(1),
            page_size: query.page_size.clamp(1, 200),
        };
        let (rows, total) = self.store.prepulls(&filter).await?;
        Ok(ListPrepullsResponse {
            items: rows.iter().map(task).collect(),
            pagination: super::page_of(filter.page, filter.page_size, total),
        })
    }

    /// `DELETE /prepulls/{id}`: a task still pending or pulling is cancelled first (it ends
    /// `Cancelled`, which watchers see); then the task is removed. Images are never deleted.
    pub async fn delete_prepull(&self, id: &str, caller: &Principal) -> Result<(), Error> {
        caller.require(Perm::Write)?;
        let row = self.owned_prepull(id, caller).await?;
        if !row.state.is_final() {
            self.cancel_prepull(id).await;
        }
        self.store.delete_prepull(id).await?;
        tracing::info!(prepull = id, "prepull deleted");
        Ok(())
    }

    /// `GET /prepulls/{id}/events`: the task's snapshots, from the current one until it is
    /// final.
    pub async fn watch_prepull(
        &self,
        id: &str,
        caller: &Principal,
    ) -> Result<BoxStream<'static, PrepullSnapshot>, Error> {
        caller.require(Perm::Read)?;
        self.owned_prepull(id, caller).await?;
        let watching = self
            .prepulls
            .lock()
            .tasks
            .get(id)
            .map(|t| t.snapshots.subscribe());
        let Some(rx) = watching else {
            // Finished (its last state was stored before it left the live set).
            let row = self.owned_prepull(id, caller).await?;
            let last = PrepullSnapshot {
                seq: 1,
                task: task(&row),
            };
            return Ok(futures_util::stream::iter([last]).boxed());
        };
        Ok(
            futures_util::stream::unfold((rx, 0u64, false), |(mut rx, shown, over)| async move {
                if over {
                    return None;
                }
                loop {
                    let next = rx.borrow_and_update().clone();
                    if next.seq > shown {
                        let last = next.task.status.state.is_final();
                        return Some((next.clone(), (rx, next.seq, last)));
                    }
                    if rx.changed().await.is_err() {
                        // The task left the live set; anything it published was shown above.
                        let last = rx.borrow().clone();
                        return (last.seq > shown).then(|| (last.clone(), (rx, last.seq, true)));
                    }
                }
            })
            .boxed(),
        )
    }

    /// Start-up: tasks the previous process left `Pending` or `Pulling` are `Failed`
    /// (`INTERRUPTED`); their pulls died with it, and their credentials were never stored.
    pub async fn recover_prepulls(&self) -> Result<(), Error> {
        let failed = self
            .store
            .fail_active_prepulls(
                now_ms(),
                INTERRUPTED,
                "sandboxd restarted before the pull finished; create the task again",
            )
            .await?;
        if !failed.is_empty() {
            tracing::warn!(tasks = ?failed, "prepull tasks interrupted by a restart");
        }
        Ok(())
    }

    /// Runs queued pulls, at most [`MAX_CONCURRENT`] at once, and deletes finished tasks
    /// after 7 days. Runs until the process ends; every pull runs inside it.
    pub async fn run_prepulls(&self) {
        let mut running = FuturesUnordered::new();
        let mut purge = tokio::time::interval(PURGE_EVERY);
        loop {
            while running.len() < self.prepulls.max_concurrent {
                match self.prepulls.next_job() {
                    Some(job) => running.push(self.pull(job)),
                    None => break,
                }
            }
            tokio::select! {
                Some(()) = running.next(), if !running.is_empty() => {}
                () = self.prepulls.queued.notified() => {}
                _ = purge.tick() => {
                    match self.store.purge_prepulls(now_ms() - PREPULLS_KEPT_MS).await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(tasks = n, "old prepull tasks deleted"),
                        Err(e) => tracing::warn!(error = %e, "cannot delete old prepull tasks"),
                    }
                }
            }
        }
    }

    /// One pull, from `Pulling` to its end.
    async fn pull(&self, job: Job) {
        let Job {
            mut row,
            auth,
            platform,
            cancel,
        } = job;
        let started = now_ms();
        row.state = PrepullState::Pulling;
        row.started_at = Some(started);
        row.transition_at = started;
        self.save_prepull(&row).await;
        tracing::info!(prepull = %row.id, image = %row.image, "pull started");
        let mut progress = Progress::default();
        let ending = {
            let image = row.image.clone();
            let mut stream = self.runtime.pull(&image, auth, platform);
            let deadline = tokio::time::sleep(Duration::from_secs(row.timeout));
            tokio::pin!(deadline);
            let mut persist = tokio::time::interval(PERSIST_EVERY);
            persist.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            persist.tick().await;
            // A dropped sender (never, while the task is live) is no cancel.
            let cancelled = async move {
                if cancel.await.is_err() {
                    std::future::pending::<()>().await;
                }
            };
            tokio::pin!(cancelled);
            let mut changed = false;
            loop {
                tokio::select! {
                    biased;
                    () = &mut cancelled => break Ending::Cancelled,
                    () = &mut deadline => break Ending::TimedOut,
                    _ = persist.tick(), if changed => {
                        row.progress = progress.snapshot();
                        self.save_prepull(&row).await;
                        changed = false;
                    }
                    item = stream.next() => match item {
                        Some(Ok(event)) => {
                            progress.apply(&event);
                            changed = true;
                        }
                        Some(Err(e)) => break Ending::Failed(e),
                        None => break Ending::Pulled,
                    },
                }
            }
            // Leaving the block drops the stream: the runtime's pull stops with it.
        };
        let (state, reason, message) = match ending {
            Ending::Pulled => {
                progress.complete();
                (PrepullState::Completed, None, None)
            }
            Ending::Cancelled => (
                PrepullState::Cancelled,
                None,
                Some("cancelled by a delete".to_owned()),
            ),
            Ending::TimedOut => (
                PrepullState::Failed,
                Some(TIMEOUT),
                Some(format!("the pull did not finish within {} s", row.timeout)),
            ),
            Ending::Failed(e) => {
                tracing::warn!(prepull = %row.id, image = %row.image, failure = ?e.failure, error = %e.message, "pull failed");
                let (reason, message) = failure(&e);
                (PrepullState::Failed, Some(reason), Some(message))
            }
        };
        let now = now_ms();
        row.state = state;
        row.reason = reason.map(str::to_owned);
        row.message = message;
        row.progress = progress.snapshot();
        row.completed_at = Some(now);
        row.transition_at = now;
        self.save_prepull(&row).await;
        self.prepulls.finish(&row.id);
        tracing::info!(prepull = %row.id, state = state.as_str(), ms = now - started, "pull ended");
    }

    /// Persists a live task's row and shows it to watchers; a store failure is logged (the
    /// pull goes on).
    async fn save_prepull(&self, row: &PrepullRow) {
        if let Err(e) = self.store.update_prepull(row).await {
            tracing::error!(prepull = %row.id, error = %e, "cannot record prepull progress");
        }
        self.prepulls.publish(row);
    }

    /// Stops a live task: a queued one is cancelled here; a running one is told to stop, and
    /// this waits (at most [`CANCEL_WAIT`]) until it has recorded its end.
    async fn cancel_prepull(&self, id: &str) {
        enum Found {
            Queued(Box<LiveTask>),
            Running(watch::Receiver<PrepullSnapshot>),
            Gone,
        }
        let found = {
            let mut live = self.prepulls.lock();
            let queued = live.tasks.get(id).is_some_and(|t| t.job.is_some());
            if queued {
                live.queue.retain(|q| q != id);
                live.tasks
                    .remove(id)
                    .map_or(Found::Gone, |t| Found::Queued(Box::new(t)))
            } else if let Some(t) = live.tasks.get_mut(id) {
                let rx = t.snapshots.subscribe();
                if let Some(cancel) = t.cancel.take() {
                    let _ = cancel.send(());
                }
                Found::Running(rx)
            } else {
                Found::Gone
            }
        };
        match found {
            Found::Queued(t) => {
                let Some(Job { mut row, .. }) = t.job else { return };
                let now = now_ms();
                row.state = PrepullState::Cancelled;
                row.message = Some("cancelled by a delete".into());
                row.completed_at = Some(now);
                row.transition_at = now;
                if let Err(e) = self.store.update_prepull(&row).await {
                    tracing::error!(prepull = id, error = %e, "cannot record a cancelled prepull");
                }
                t.snapshots.send_modify(|s| {
                    s.seq += 1;
                    s.task = task(&row);
                });
            }
            Found::Running(mut rx) => {
                let stopped = rx.wait_for(|s| s.task.status.state.is_final());
                if tokio::time::timeout(CANCEL_WAIT, stopped).await.is_err() {
                    tracing::warn!(
                        prepull = id,
                        "a cancelled pull did not stop in time; deleting its task anyway"
                    );
                }
            }
            Found::Gone => {}
        }
    }

    /// The task `id` if `caller` may see it; someone else's is not found, like a missing one.
    async fn owned_prepull(&self, id: &str, caller: &Principal) -> Result<PrepullRow, Error> {
        self.store
            .prepull(id)
            .await?
            .filter(|r| caller.may_see(&r.owner))
            .ok_or_else(|| Error::not_found(Kind::Prepull, id))
    }
}

/// `status.reason` and `status.message` of a failed pull. The registry's words are the
/// user's business; the runtime's own failures are logged, not shown.
fn failure(e: &PullError) -> (&'static str, String) {
    match e.failure {
        PullFailure::ImageNotFound => ("IMAGE_NOT_FOUND", e.message.clone()),
        PullFailure::Unauthorized => ("UNAUTHORIZED", e.message.clone()),
        PullFailure::RegistryUnreachable => ("REGISTRY_UNREACHABLE", e.message.clone()),
        PullFailure::RuntimeUnavailable => (
            "RUNTIME_UNAVAILABLE",
            "the container runtime cannot be reached; sandboxd's log has the details".into(),
        ),
        PullFailure::Failed => (
            "PULL_FAILED",
            "the container runtime failed the pull; sandboxd's log has the details".into(),
        ),
    }
}

/// The wire view of a stored task.
fn task(row: &PrepullRow) -> PrepullTask {
    PrepullTask {
        id: row.id.clone(),
        image: row.image.clone(),
        template_id: row.template.as_ref().map(|(id, _)| id.clone()),
        template_version: row.template.as_ref().map(|(_, v)| *v),
        status: PrepullStatus {
            state: row.state,
            reason: row.reason.clone(),
            message: row.message.clone(),
            last_transition_at: format_ms(row.transition_at),
        },
        progress: row.progress.clone(),
        created_at: format_ms(row.created_at),
        started_at: row.started_at.map(format_ms),
        completed_at: row.completed_at.map(format_ms),
        timeout: row.timeout,
    }
}
