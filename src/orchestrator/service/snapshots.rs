//! Snapshots and forks (design §11.3): a snapshot commits a running (or frozen) sandbox's
//! filesystem, volumes excluded, to `opensandbox-snapshots:<id>`, in a task of its own
//! (`Creating` → `Ready` | `Failed`); `POST /sandboxes` with `snapshotId` creates a sandbox
//! from that image with the source's entrypoint and environment unless the request gives
//! its own. A snapshot sandboxes were made from cannot be deleted (409 `SNAPSHOT::IN_USE`).
//! A fork takes one snapshot of a sandbox and creates 1–20 sandboxes from it at once.
//!
//! The commit freezes the sandbox for its duration, so the freezer's transient give-ups on
//! cgroup v1 are retried as a pause's are. Someone else's snapshot is not found, as someone
//! else's sandbox is. Async.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::task::JoinSet;

use super::pause::retry_transient;
use super::sandboxes::status;
use super::Service;
use crate::orchestrator::auth::{Principal, Role};
use crate::orchestrator::error::{Conflict, Denial, Error, Feature, Kind};
use crate::orchestrator::runtime::{ImageRole, Instance, Observed, RuntimeError};
use crate::orchestrator::spec;
use crate::orchestrator::store::{EventType, Phase, Record, SnapshotRow, SnapshotSource, SnapshotState};
use crate::wire::lifecycle::{CreateSandboxRequest, ImageSpec, Pagination};
use crate::wire::snapshots::{
    CreateSnapshotRequest, ForkRequest, ForkResponse, ListSnapshotsResponse, Snapshot, SnapshotStatus,
};
use crate::wire::time::{format_ms, now_ms};

/// The repository snapshot images are committed to (upstream's Docker name).
pub const SNAPSHOT_REPOSITORY: &str = "opensandbox-snapshots";
/// Most sandboxes one fork makes.
pub const MAX_FORK: u32 = 20;

/// `status.reason` of each state (upstream's examples).
const ACCEPTED: &str = "snapshot_accepted";
const READY: &str = "snapshot_ready";
const CAPTURE_FAILED: &str = "snapshot_capture_failed";
const DELETING: &str = "snapshot_deleting";

/// The list filter of `GET /snapshots`.
#[derive(Debug, Clone, Default)]
pub struct SnapshotFilter {
    /// Only snapshots of this sandbox.
    pub sandbox_id: Option<String>,
    /// Only snapshots with this name.
    pub name: Option<String>,
    /// States to keep (OR, case-insensitive); empty keeps all.
    pub states: Vec<String>,
    /// 1-based page.
    pub page: u32,
    /// Items per page.
    pub page_size: u32,
}

/// The running snapshot commits. A task holds the service; it ends when its commit does.
#[derive(Default)]
pub(super) struct Captures {
    /// Never held across `.await`.
    tasks: Mutex<JoinSet<()>>,
}

impl Captures {
    fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        while tasks.try_join_next().is_some() {}
        tasks.spawn(task);
    }
}

impl Service {
    /// `POST /sandboxes/{id}/snapshots`: records the snapshot `Creating` and commits the
    /// sandbox in a task; `GET /snapshots/{id}` follows it to `Ready` or `Failed`. The sandbox
    /// must be Running (or frozen by a Freeze pause).
    pub async fn create_snapshot(
        self: &Arc<Self>,
        sandbox_id: &str,
        req: CreateSnapshotRequest,
        caller: &Principal,
    ) -> Result<Snapshot, Error> {
        let (row, instance) = self.begin_snapshot(sandbox_id, req.name, caller).await?;
        let service = Arc::clone(self);
        let task_row = row.clone();
        self.captures.spawn(async move {
            if let Err(e) = service.capture(&task_row, &instance).await {
                tracing::warn!(snapshot = %task_row.id, error = %e, "snapshot failed");
            }
        });
        Ok(snapshot_view(&row))
    }

    /// Checks that a snapshot of the sandbox can be taken now and records it `Creating`.
    async fn begin_snapshot(
        &self,
        sandbox_id: &str,
        name: Option<String>,
        caller: &Principal,
    ) -> Result<(SnapshotRow, Instance), Error> {
        if !self.runtime.capabilities().snapshots {
            return Err(Error::Unsupported(Feature::Snapshots));
        }
        if let Some(name) = &name {
            spec::check_name(name).map_err(|e| Error::invalid(format!("snapshot {e}")))?;
        }
        let record = self.owned(sandbox_id, caller).await?;
        let not_running = |state: String| {
            Error::Conflict(Conflict::NotRunning {
                id: sandbox_id.to_owned(),
                state,
            })
        };
        let instance = match (&record.instance, record.phase) {
            (Some(i), Phase::Ready | Phase::Paused) if record.failure.is_none() => i.clone(),
            _ => return Err(not_running(status(&record, &Observed::Running).state)),
        };
        let observed = self.runtime.observe(&instance).await?;
        if !matches!(observed, Observed::Running | Observed::Paused) {
            self.note_observed(&record, &observed).await;
            return Err(not_running(status(&record, &observed).state));
        }
        let id = format!("snap-{}", uuid::Uuid::new_v4());
        let now = now_ms();
        let row = SnapshotRow {
            image: format!("{SNAPSHOT_REPOSITORY}:{id}"),
            id,
            sandbox_id: sandbox_id.to_owned(),
            name,
            owner: caller.id.clone(),
            source: SnapshotSource {
                entrypoint: record.entrypoint.clone(),
                env: record.env.clone(),
            },
            state: SnapshotState::Creating,
            reason: Some(ACCEPTED.into()),
            message: None,
            created_at: now,
            transition_at: now,
        };
        self.store.insert_snapshot(&row).await?;
        Ok((row, instance))
    }

    /// Commits the sandbox to the snapshot's image (retrying what the freezer gives up on)
    /// and records the outcome: `Ready`, or `Failed` with why.
    async fn capture(&self, row: &SnapshotRow, instance: &Instance) -> Result<(), Error> {
        let commit = || self.runtime.commit(instance, &row.image, ImageRole::Snapshot);
        let (result, tries) = retry_transient(commit, tokio::time::sleep).await;
        let now = now_ms();
        let (state, reason, message) = match &result {
            Ok(()) => (SnapshotState::Ready, READY, None),
            Err(e) => (
                SnapshotState::Failed,
                CAPTURE_FAILED,
                Some(capture_failure(e, tries)),
            ),
        };
        let moved = self
            .store
            .transition_snapshot(
                &row.id,
                SnapshotState::Creating,
                state,
                Some(reason),
                message.as_deref(),
                now,
            )
            .await?;
        if !moved && result.is_ok() {
            // Forgotten meanwhile (it cannot be deleted while Creating; a restart's recovery
            // may have failed it): the image has no owner left.
            let _ = self.runtime.remove_image(&row.image).await;
        }
        match &message {
            None => {
                let what = format!("snapshot {} ready ({})", row.id, row.image);
                self.log_event(&row.sandbox_id, EventType::SnapshotTaken, what)
                    .await
            }
            Some(m) => {
                let what = format!("snapshot {} failed: {m}", row.id);
                self.log_event_because(
                    &row.sandbox_id,
                    EventType::SnapshotFailed,
                    Some(reason.into()),
                    what,
                )
                .await
            }
        }
        result.map_err(Error::from)
    }

    /// `GET /snapshots/{id}`.
    pub async fn get_snapshot(&self, id: &str, caller: &Principal) -> Result<Snapshot, Error> {
        Ok(snapshot_view(&self.visible_snapshot(id, caller).await?))
    }

    /// `GET /snapshots`: the caller's (an admin's: everyone's), newest first, one page.
    pub async fn list_snapshots(
        &self,
        filter: SnapshotFilter,
        caller: &Principal,
    ) -> Result<ListSnapshotsResponse, Error> {
        let wanted: Vec<String> = filter.states.iter().map(|s| s.to_ascii_lowercase()).collect();
        let items: Vec<Snapshot> = self
            .store
            .snapshots()
            .await?
            .into_iter()
            .filter(|s| caller.may_see(&s.owner))
            .filter(|s| filter.sandbox_id.as_ref().is_none_or(|id| *id == s.sandbox_id))
            .filter(|s| filter.name.as_ref().is_none_or(|n| s.name.as_ref() == Some(n)))
            .filter(|s| wanted.is_empty() || wanted.contains(&s.state.as_str().to_ascii_lowercase()))
            .map(|s| snapshot_view(&s))
            .collect();
        let (items, pagination): (Vec<Snapshot>, Pagination) =
            super::paginate(items, filter.page, filter.page_size);
        Ok(ListSnapshotsResponse { items, pagination })
    }

    /// `DELETE /snapshots/{id}`: removes its image and forgets it. 409 while it is being
    /// taken, or while sandboxes made from it exist (or the runtime still uses its image).
    pub async fn delete_snapshot(&self, id: &str, caller: &Principal) -> Result<(), Error> {
        let row = self.visible_snapshot(id, caller).await?;
        let before = match row.state {
            SnapshotState::Creating => {
                return Err(Error::Conflict(Conflict::SnapshotNotReady(format!(
                    "snapshot {id} is still being taken; delete it once it is Ready or Failed"
                ))))
            }
            state => state,
        };
        let now = now_ms();
        if before != SnapshotState::Deleting
            && !self
                .store
                .transition_snapshot(id, before, SnapshotState::Deleting, Some(DELETING), None, now)
                .await?
        {
            return Err(Error::Conflict(Conflict::SnapshotNotReady(format!(
                "snapshot {id} changed state meanwhile; try again"
            ))));
        }
        // Back to where it was, with why the delete was refused.
        let restore = |state: SnapshotState, reason: Option<String>, message: Option<String>| async move {
            let state = if state == SnapshotState::Deleting {
                SnapshotState::Ready
            } else {
                state
            };
            let reason = reason.unwrap_or_else(|| READY.into());
            if let Err(e) = self
                .store
                .transition_snapshot(
                    id,
                    SnapshotState::Deleting,
                    state,
                    Some(&reason),
                    message.as_deref(),
                    now_ms(),
                )
                .await
            {
                tracing::warn!(snapshot = id, error = %e, "cannot put a snapshot back after a refused delete");
            }
        };
        let users = self.store.count_from_snapshot(id).await?;
        if users > 0 {
            restore(before, row.reason.clone(), row.message.clone()).await;
            return Err(Error::Conflict(Conflict::SnapshotInUse(format!(
                "snapshot {id} is in use by {users} sandbox(es) made from it; delete them first"
            ))));
        }
        match self.runtime.remove_image(&row.image).await {
            Ok(()) => {}
            Err(RuntimeError::Conflict(m)) => {
                restore(before, row.reason.clone(), row.message.clone()).await;
                return Err(Error::Conflict(Conflict::SnapshotInUse(format!(
                    "snapshot {id}: the runtime still uses its image ({m})"
                ))));
            }
            // Stays Deleting: a retry of the delete finishes it.
            Err(e) => return Err(e.into()),
        }
        self.store.remove_snapshot(id).await?;
        tracing::info!(snapshot = id, "snapshot deleted");
        Ok(())
    }

    /// `POST /sandboxes/{id}/fork`: one snapshot of the sandbox, then `count` sandboxes made
    /// from it at once, each with the source's entrypoint, environment, limits, lifetime,
    /// extensions and pause policy, and its metadata with the request's over it (volumes are
    /// not part of a snapshot, so the new sandboxes have none). All or nothing: when one
    /// cannot be made, those made are deleted, and the snapshot with them.
    pub async fn fork(
        self: &Arc<Self>,
        id: &str,
        req: ForkRequest,
        caller: &Principal,
    ) -> Result<ForkResponse, Error> {
        let count = req.count.unwrap_or(1);
        if !(1..=MAX_FORK).contains(&count) {
            return Err(Error::invalid(format!(
                "count must be from 1 to {MAX_FORK}, got {count}"
            )));
        }
        let mut metadata = self.owned(id, caller).await?.metadata;
        for (k, v) in req.metadata.unwrap_or_default() {
            spec::check_label(&k, &v)?;
            metadata.insert(k, v);
        }
        if caller.role != Role::Admin {
            let limit = self.settings.max_sandboxes_per_user;
            if self.store.count_owned(&caller.id).await? + u64::from(count) > limit {
                return Err(Error::Forbidden(Denial::Quota { limit }));
            }
        }
        let (row, instance) = self
            .begin_snapshot(id, Some(format!("fork of {id}")), caller)
            .await?;
        self.capture(&row, &instance).await?;
        let source = self.owned(id, caller).await?;
        let children = (0..count).map(|_| {
            let req = child_request(&source, &row.id, metadata.clone());
            self.create(req, caller, source.business_domain.clone())
        });
        let results = futures_util::future::join_all(children).await;
        let mut made = Vec::new();
        let mut failure = None;
        for result in results {
            match result {
                Ok(created) => made.push(created),
                Err(e) => failure = failure.or(Some(e)),
            }
        }
        if let Some(e) = failure {
            for child in &made {
                if let Err(removal) = self.delete(&child.id, caller).await {
                    tracing::error!(sandbox = %child.id, error = %removal, "cannot delete a sandbox of a failed fork");
                }
            }
            if let Err(removal) = self.delete_snapshot(&row.id, caller).await {
                tracing::error!(snapshot = %row.id, error = %removal, "cannot delete the snapshot of a failed fork");
            }
            return Err(e);
        }
        let ids: Vec<&str> = made.iter().map(|c| c.id.as_str()).collect();
        let what = format!(
            "forked {count} sandbox(es) from snapshot {}: {}",
            row.id,
            ids.join(", ")
        );
        self.log_event(id, EventType::Forked, what).await;
        Ok(ForkResponse {
            snapshot_id: row.id,
            items: made,
        })
    }

    /// A create request with `snapshotId` made plain: the snapshot's image, and its source's
    /// entrypoint and environment under the request's own. Returns the snapshot's id with it;
    /// a request without `snapshotId` passes through.
    pub(super) async fn resolve_snapshot(
        &self,
        mut req: CreateSandboxRequest,
        caller: &Principal,
    ) -> Result<(CreateSandboxRequest, Option<String>), Error> {
        let Some(id) = req.snapshot_id.take() else {
            return Ok((req, None));
        };
        if req.image.is_some() {
            return Err(Error::invalid("image and snapshotId are mutually exclusive"));
        }
        let row = self.usable_snapshot(&id, caller).await?;
        req.image = Some(ImageSpec {
            uri: row.image,
            auth: None,
        });
        if req.entrypoint.is_none() {
            req.entrypoint = Some(row.source.entrypoint);
        }
        let mut env: BTreeMap<String, Option<String>> =
            row.source.env.into_iter().map(|(k, v)| (k, Some(v))).collect();
        // A null in the request drops the source's variable.
        env.extend(req.env.take().unwrap_or_default());
        req.env = Some(env);
        Ok((req, Some(row.id)))
    }

    /// Snapshot `id` if `caller` may create from it now: 404 when it is not theirs, 409 when
    /// it is not Ready.
    pub(super) async fn usable_snapshot(&self, id: &str, caller: &Principal) -> Result<SnapshotRow, Error> {
        let row = self.visible_snapshot(id, caller).await?;
        if row.state != SnapshotState::Ready {
            return Err(Error::Conflict(Conflict::SnapshotNotReady(format!(
                "snapshot {id} is {}, not Ready",
                row.state.as_str()
            ))));
        }
        Ok(row)
    }

    async fn visible_snapshot(&self, id: &str, caller: &Principal) -> Result<SnapshotRow, Error> {
        match self.store.snapshot(id).await? {
            Some(row) if caller.may_see(&row.owner) => Ok(row),
            _ => Err(Error::not_found(Kind::Snapshot, id)),
        }
    }

    /// Start-up: a snapshot left `Creating` lost its task. Its image decides: present, the
    /// commit finished and it is `Ready`; missing, it is `Failed`.
    pub async fn recover_snapshots(&self) -> Result<(), Error> {
        for row in self.store.snapshots().await? {
            if row.state != SnapshotState::Creating {
                continue;
            }
            let present = self.runtime.image_present(&row.image, None).await?;
            let (state, reason, message) = if present {
                (SnapshotState::Ready, READY, None)
            } else {
                (
                    SnapshotState::Failed,
                    CAPTURE_FAILED,
                    Some("sandboxd restarted before the snapshot was taken"),
                )
            };
            self.store
                .transition_snapshot(
                    &row.id,
                    SnapshotState::Creating,
                    state,
                    Some(reason),
                    message,
                    now_ms(),
                )
                .await?;
            tracing::info!(snapshot = %row.id, state = state.as_str(), "recovered a snapshot left Creating");
        }
        Ok(())
    }
}

/// The create request of one of a fork's sandboxes.
fn child_request(
    source: &Record,
    snapshot: &str,
    metadata: BTreeMap<String, String>,
) -> CreateSandboxRequest {
    CreateSandboxRequest {
        snapshot_id: Some(snapshot.to_owned()),
        timeout: source.timeout.map(serde_json::Value::from),
        resource_limits: Some(
            source
                .resource_limits
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::from(v.clone())))
                .collect(),
        ),
        metadata: Some(metadata),
        extensions: Some(source.extensions.clone()).filter(|e| !e.is_empty()),
        platform: source.platform.clone(),
        pause_policy: Some(source.pause_policy),
        ..Default::default()
    }
}

/// Why a commit failed, for the snapshot's status: the runtime's words only where they are
/// the user's business; the rest is in sandboxd's log.
fn capture_failure(e: &RuntimeError, tries: usize) -> String {
    match e {
        RuntimeError::NotFound(_) => "the sandbox was gone before its filesystem was saved".into(),
        RuntimeError::Transient(_) => {
            format!("the sandbox could not be frozen for the commit after {tries} tries")
        }
        other => {
            tracing::error!(error = %other, "snapshot commit failed");
            "the container runtime failed to commit the sandbox; sandboxd's log has the details".into()
        }
    }
}

/// The API view of a snapshot.
fn snapshot_view(row: &SnapshotRow) -> Snapshot {
    Snapshot {
        id: row.id.clone(),
        sandbox_id: row.sandbox_id.clone(),
        name: row.name.clone(),
        status: SnapshotStatus {
            state: row.state.as_str().to_owned(),
            reason: row.reason.clone(),
            message: row.message.clone(),
            last_transition_at: Some(format_ms(row.transition_at)),
        },
        created_at: format_ms(row.created_at),
    }
}
