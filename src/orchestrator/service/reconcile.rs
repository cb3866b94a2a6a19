//! Start-up recovery: the store holds what sandboxd meant, the runtime what exists. Adopts
//! sandboxes that still run, forgets records whose sandbox is gone, removes expired and
//! half-created ones and sandboxes of this instance that have no record at all. A sandbox
//! that was past create but still in its pre-start hook or readiness probe has lost the task
//! that followed it: it is adopted and marked failed (`STARTUP_INTERRUPTED`), kept for its
//! owner to inspect and delete, since its creator already holds its id. A row this
//! build cannot read, or a sandbox in a state it does not know, is logged and left alone:
//! nothing is deleted that was not positively classified as sandboxd's own and dead. Pool
//! members are the pool reconciler's (`pools`): their containers are never orphans here, and
//! a pool-backed sandbox is found by its member's label.

use std::collections::BTreeSet;

use super::startup::STARTUP_INTERRUPTED;
use super::Service;
use crate::orchestrator::error::Error;
use crate::orchestrator::runtime::{Instance, Observed};
use crate::orchestrator::store::{Failure, Phase, Record};
use crate::wire::time::now_ms;

/// What became of a sandbox in a Rootfs pause at start-up.
enum Rootfs {
    /// Kept (adopted).
    Kept,
    /// Expired or lost, and forgotten.
    Removed,
}

/// What one reconciliation did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reconciled {
    /// Records whose sandbox still runs.
    pub adopted: usize,
    /// Records whose sandbox no longer exists.
    pub forgotten: usize,
    /// Sandboxes removed: expired, half-created, or without a record.
    pub removed: usize,
    /// Rows or sandboxes left alone because they could not be classified.
    pub left_alone: usize,
    /// Removals the runtime refused (tried again at the next start, or by expiry).
    pub failed: usize,
}

impl Service {
    /// Merges the store with what the runtime holds. Only reading the runtime can fail it;
    /// a failure on one sandbox is logged and counted.
    pub async fn reconcile(&self) -> Result<Reconciled, Error> {
        let live = self.runtime.observe_all().await?;
        let now = now_ms();
        let mut done = Reconciled::default();
        let mut recorded = self.member_ids().await?;
        for row in self.store.all().await? {
            let record = match row {
                Ok(record) => record,
                Err(e) => {
                    tracing::warn!(sandbox = %e.id, error = %e.error, "unreadable sandbox row left alone");
                    recorded.insert(e.id);
                    done.left_alone += 1;
                    continue;
                }
            };
            recorded.insert(record.id.clone());
            recorded.insert(record.runtime_key().to_owned());
            if record.phase == Phase::Released {
                // Its instance went back to the pool, or is gone: only the record is its own.
                if record.expires_at.is_some_and(|t| t <= now) {
                    if let Err(e) = self.store.remove(&record.id).await {
                        tracing::error!(sandbox = %record.id, error = %e, "cannot forget a released sandbox");
                        done.failed += 1;
                        continue;
                    }
                    done.forgotten += 1;
                } else {
                    done.adopted += 1;
                }
                continue;
            }
            if record
                .instance
                .as_ref()
                .is_some_and(|i| i.kind != self.runtime.kind())
            {
                // Another runtime's sandbox: this one cannot see it, let alone judge it.
                done.left_alone += 1;
                continue;
            }
            if matches!(
                record.phase,
                Phase::Committing | Phase::Hibernated | Phase::Restoring
            ) {
                let instance = live.get(record.runtime_key()).map(|(i, _)| i);
                match self.reconcile_rootfs(record, instance, now).await {
                    Ok(Rootfs::Kept) => done.adopted += 1,
                    Ok(Rootfs::Removed) => done.removed += 1,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot reconcile a Rootfs-paused sandbox");
                        done.failed += 1;
                    }
                }
                continue;
            }
            let Some((instance, observed)) = live.get(record.runtime_key()) else {
                self.remove_leftovers(&record).await;
                match self.store.remove(&record.id).await {
                    Ok(_) => done.forgotten += 1,
                    Err(e) => {
                        tracing::error!(sandbox = %record.id, error = %e, "cannot forget a sandbox that is gone");
                        done.failed += 1;
                    }
                }
                continue;
            };
            if let Observed::Unknown(what) = observed {
                tracing::warn!(sandbox = %record.id, state = %what, "sandbox in an unknown state left alone");
                done.left_alone += 1;
                continue;
            }
            let half_created = record.phase == Phase::Pending;
            let expired = record.expires_at.is_some_and(|t| t <= now);
            if record.pool.is_some() && expired {
                match self.end_allocation(&record, false).await {
                    Ok(()) => done.removed += 1,
                    Err(e) => {
                        tracing::error!(sandbox = %record.id, error = %e, "cannot release an expired pooled sandbox");
                        done.failed += 1;
                    }
                }
            } else if half_created || expired {
                let removal = match self.runtime.remove(instance).await {
                    Ok(()) => self.store.remove(&record.id).await.map(drop).map_err(Error::from),
                    Err(e) => Err(e.into()),
                };
                if removal.is_ok() {
                    self.remove_leftovers(&record).await;
                }
                match removal {
                    Ok(()) => done.removed += 1,
                    Err(e) => {
                        tracing::error!(sandbox = %record.id, error = %e, half_created, expired, "cannot remove sandbox");
                        done.failed += 1;
                    }
                }
            } else {
                let interrupted =
                    matches!(record.phase, Phase::PreStart | Phase::Probing) && record.failure.is_none();
                if interrupted {
                    let failure = Failure {
                        reason: STARTUP_INTERRUPTED.into(),
                        message: "sandboxd restarted before the sandbox's preStart hook or readiness probe \
                                  finished, so whether it is ready is unknown; delete it and create it again"
                            .into(),
                    };
                    self.fail_startup(&record.id, failure).await;
                } else {
                    self.note_observed(&record, observed).await;
                }
                done.adopted += 1;
            }
        }
        for (id, (instance, _)) in &live {
            if recorded.contains(id) {
                continue;
            }
            match self.runtime.remove(instance).await {
                Ok(()) => done.removed += 1,
                Err(e) => {
                    tracing::error!(sandbox = %id, error = %e, "cannot remove an orphaned sandbox");
                    done.failed += 1;
                }
            }
        }
        self.runtime.tidy().await;
        tracing::info!(
            adopted = done.adopted,
            forgotten = done.forgotten,
            removed = done.removed,
            left_alone = done.left_alone,
            failed = done.failed,
            "reconciled with the runtime"
        );
        self.expiry_changed.notify_one();
        Ok(done)
    }

    /// A sandbox in a Rootfs pause or resume: kept `Hibernated` (its image holds it; no
    /// instance is expected), unless it has expired. A pause or resume that a restart cut
    /// short is settled by what exists: a commit whose container still exists is undone (the
    /// sandbox runs on, `Ready`); one whose container is gone had finished (the container is
    /// removed only after the commit), so the sandbox is `Hibernated` if its image exists. A
    /// resume's half-made container is removed and the sandbox is `Hibernated` again. A
    /// workspace-only pause (nothing committed) whose instance still exists is finished: the
    /// instance removed, `Hibernated` (its removal may have been under way).
    async fn reconcile_rootfs(
        &self,
        mut record: Record,
        live: Option<&Instance>,
        now: i64,
    ) -> Result<Rootfs, Error> {
        match record.phase {
            Phase::Committing => match live {
                // Nothing to commit, and the instance may be on its way out (a pod being
                // deleted): the pause is finished, not undone.
                Some(instance) if record.hibernation.as_ref().is_some_and(|h| h.workspace_only) => {
                    self.runtime.remove(instance).await?;
                    record.instance = None;
                    record.phase = Phase::Hibernated;
                    if record.pause_policy.suspend_expiry {
                        if let (Some(h), Some(at)) = (record.hibernation.as_mut(), record.expires_at.take()) {
                            h.suspended_ms = Some((at - now).max(0));
                        }
                    }
                }
                Some(_) => {
                    if let Some(h) = record.hibernation.take() {
                        let _ = self.runtime.remove_image(&h.image).await;
                    }
                    record.phase = Phase::Ready;
                }
                None => {
                    let present = match &record.hibernation {
                        // The instance was all there was to remove: its workspace holds it.
                        Some(h) if h.workspace_only => true,
                        Some(h) => self.runtime.image_present(&h.image, None).await?,
                        None => false,
                    };
                    if !present {
                        tracing::warn!(sandbox = %record.id, "a Rootfs pause cut short left neither container nor image; forgotten");
                        self.store.remove(&record.id).await?;
                        return Ok(Rootfs::Removed);
                    }
                    record.instance = None;
                    record.phase = Phase::Hibernated;
                    if record.pause_policy.suspend_expiry {
                        if let (Some(h), Some(at)) = (record.hibernation.as_mut(), record.expires_at.take()) {
                            h.suspended_ms = Some((at - now).max(0));
                        }
                    }
                }
            },
            Phase::Restoring => {
                if let Some(instance) = live {
                    self.runtime.remove(instance).await?;
                }
                record.instance = None;
                record.phase = Phase::Hibernated;
            }
            _ => {}
        }
        if record.phase == Phase::Hibernated && record.expires_at.is_some_and(|t| t <= now) {
            self.store.remove(&record.id).await?;
            self.remove_leftovers(&record).await;
            return Ok(Rootfs::Removed);
        }
        record.transition_at = now;
        self.store.update(&record).await?;
        Ok(Rootfs::Kept)
    }

    /// Removes the sandboxes of this instance that have no record: a create the runtime
    /// finished after the sandboxd that asked for it died, and after start-up reconciliation
    /// had forgotten the half-made record. Run periodically. Safe beside creates and deletes:
    /// a record is stored before its sandbox exists and removed only after it is gone, and
    /// the runtime is read before the store. Returns how many were removed.
    pub async fn sweep_orphans(&self) -> Result<usize, Error> {
        let live = self.runtime.observe_all().await?;
        if live.is_empty() {
            return Ok(0);
        }
        let mut recorded = self.member_ids().await?;
        for row in self.store.all().await? {
            match row {
                Ok(record) => {
                    recorded.insert(record.runtime_key().to_owned());
                    recorded.insert(record.id);
                }
                Err(e) => {
                    recorded.insert(e.id);
                }
            }
        }
        let mut removed = 0;
        for (id, (instance, _)) in &live {
            if recorded.contains(id) {
                continue;
            }
            match self.runtime.remove(instance).await {
                Ok(()) => {
                    tracing::warn!(sandbox = %id, "removed a sandbox that has no record");
                    removed += 1;
                }
                Err(e) => tracing::error!(sandbox = %id, error = %e, "cannot remove an orphaned sandbox"),
            }
        }
        Ok(removed)
    }

    /// The ids of every pool member row, readable or not: their containers are the pool
    /// reconciler's, never orphans.
    async fn member_ids(&self) -> Result<BTreeSet<String>, Error> {
        Ok(self
            .store
            .members()
            .await?
            .into_iter()
            .map(|row| match row {
                Ok(m) => m.id,
                Err(e) => e.id,
            })
            .collect())
    }
}
