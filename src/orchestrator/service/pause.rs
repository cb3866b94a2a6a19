//! `POST /sandboxes/{id}/pause` and `/resume` in the sandbox's mode (design §11.1), or the
//! one the pause names:
//!
//! - Freeze: freeze and thaw every process, retrying what the freezer gives up on while
//!   processes start. Memory, processes and kernels survive.
//! - Rootfs: commit the filesystem (volumes excluded) to `sandboxd-paused/<id>:<epoch ms>`,
//!   remove the container, keep named volumes (`Committing` → `Hibernated`); resume creates
//!   the container again from that image with the same id, token, labels, environment,
//!   entrypoint and volumes, on the same host ports when free (`Restoring` → `Ready`).
//!   Processes start afresh. On a runtime that keeps only the persistent workspace
//!   (Kubernetes: [`RootfsPause::Workspace`]) nothing is committed: the instance is removed,
//!   its `workspace.persistent` volume kept, and the resume makes it again from its image
//!   with that volume; a sandbox without one gets a 501 naming the fix.
//!   With `pausePolicy.suspendExpiry` the expiry clock stops while
//!   hibernated. Each step moves the phase only from the one it expects, so a second pause
//!   or a resume racing it gets a 409.

use std::future::Future;
use std::time::Duration;

use super::sandboxes::status;
use super::Service;
use crate::orchestrator::auth::Principal;
use crate::orchestrator::error::{Conflict, Error, Feature};
use crate::orchestrator::runtime::{
    ImageRole, Instance, Observed, Purpose, RootfsPause, RuntimeError, SandboxSpec,
};
use crate::orchestrator::store::{EventType, Hibernation, Phase, Record, SnapshotState};
use crate::wire::lifecycle::{PauseMode, LIFECYCLE_ENV};
use crate::wire::time::now_ms;

/// How long a workspace-only Rootfs pause waits for the removed instance to be gone.
const GONE_TIMEOUT: Duration = Duration::from_secs(60);
/// The reason of a Rootfs pause's and resume's events.
const ROOTFS: &str = "Rootfs";
/// The repository Rootfs pauses commit to (a tag per pause).
pub const PAUSED_REPOSITORY: &str = "sandboxd-paused";

/// Pauses between the tries of a freeze or thaw that the cgroup v1 freezer gave up on:
/// 5 tries in all, about 1.5 s of waiting (the design's "5 tries over about 2 s").
pub(super) const FREEZER_BACKOFF: [Duration; 4] = [
    Duration::from_millis(100),
    Duration::from_millis(200),
    Duration::from_millis(400),
    Duration::from_millis(800),
];

/// Which way the freezer goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Freeze {
    Pause,
    Resume,
}

impl Freeze {
    fn verb(self) -> &'static str {
        match self {
            Freeze::Pause => "pause",
            Freeze::Resume => "resume",
        }
    }

    /// The contract state the sandbox must be in.
    fn starting_state(self) -> &'static str {
        match self {
            Freeze::Pause => "Running",
            Freeze::Resume => "Paused",
        }
    }

    fn to_phase(self) -> Phase {
        match self {
            Freeze::Pause => Phase::Paused,
            Freeze::Resume => Phase::Ready,
        }
    }

    /// The 409 for a sandbox in `state`.
    fn refused(self, id: &str, state: String) -> Error {
        let id = id.to_owned();
        Error::Conflict(match self {
            Freeze::Pause => Conflict::NotRunning { id, state },
            Freeze::Resume => Conflict::NotPaused { id, state },
        })
    }

    fn event(self) -> EventType {
        match self {
            Freeze::Pause => EventType::Paused,
            Freeze::Resume => EventType::Resumed,
        }
    }

    fn done(self) -> &'static str {
        match self {
            Freeze::Pause => "paused",
            Freeze::Resume => "resumed",
        }
    }
}

impl Service {
    /// `POST /sandboxes/{id}/pause`: pauses a running sandbox in `mode`, or its pause
    /// policy's. 409 when it is not running, or a snapshot of it is being taken.
    pub async fn pause(&self, id: &str, mode: Option<PauseMode>, caller: &Principal) -> Result<(), Error> {
        let record = self.owned(id, caller).await?;
        let snapshotting = self
            .store
            .snapshots()
            .await?
            .iter()
            .any(|s| s.sandbox_id == id && s.state == SnapshotState::Creating);
        if snapshotting {
            return Err(Error::Conflict(Conflict::SnapshotInProgress(id.to_owned())));
        }
        match mode.unwrap_or(record.pause_policy.snapshot_type) {
            PauseMode::Freeze if !self.runtime.capabilities().freeze => {
                Err(Error::Unsupported(Feature::FreezePause))
            }
            PauseMode::Freeze => self.freeze(id, Freeze::Pause, caller).await,
            PauseMode::Rootfs if self.runtime.capabilities().host_network => {
                Err(Error::invalid(super::sandboxes::ROOTFS_HOST_NETWORK))
            }
            PauseMode::Rootfs => self.hibernate(id, caller).await,
        }
    }

    /// `POST /sandboxes/{id}/resume`: thaws a frozen sandbox, or creates a Rootfs-paused one
    /// again. 409 when it is not paused.
    pub async fn resume(&self, id: &str, caller: &Principal) -> Result<(), Error> {
        let record = self.owned(id, caller).await?;
        if record.phase == Phase::Hibernated {
            self.restore(record).await
        } else {
            self.freeze(id, Freeze::Resume, caller).await
        }
    }

    /// A Rootfs pause: commit (the sandbox frozen meanwhile, retried as a Freeze pause is),
    /// then remove the container. A failed commit leaves the sandbox Running as it was. On a
    /// runtime that keeps only the persistent workspace ([`RootfsPause::Workspace`]) nothing
    /// is committed: the instance is removed (and waited for until gone, since the resume
    /// makes one of the same name) and its workspace stays.
    async fn hibernate(&self, id: &str, caller: &Principal) -> Result<(), Error> {
        let capabilities = self.runtime.capabilities();
        let workspace_only = capabilities.rootfs_pause == RootfsPause::Workspace;
        if !workspace_only && !capabilities.snapshots {
            return Err(Error::Unsupported(Feature::Snapshots));
        }
        let (mut record, instance) = self.freezer_target(id, Freeze::Pause, caller).await?;
        let Some(launch) = &record.launch else {
            let why = if record.pool.is_some() {
                "it runs in a warm pool's member; pause it with Freeze, or release it"
            } else {
                "it was created before sandboxd kept what a Rootfs resume needs; pause it with Freeze"
            };
            return Err(Error::Conflict(Conflict::NotRestorable(format!(
                "sandbox {id} cannot be paused with Rootfs: {why}"
            ))));
        };
        if workspace_only && launch.workspace.is_none() {
            return Err(Error::Unsupported(Feature::RootfsWithoutWorkspace));
        }
        let from = record.phase;
        let image = if workspace_only {
            // Nothing committed, ever: the instance runs from the sandbox's own image.
            record.image.clone()
        } else {
            format!("{PAUSED_REPOSITORY}/{id}:{}", now_ms())
        };
        record.phase = Phase::Committing;
        record.transition_at = now_ms();
        record.hibernation = Some(Hibernation {
            image: image.clone(),
            previous: instance.clone(),
            suspended_ms: None,
            workspace_only,
        });
        if !self.store.update_from(&record, from).await? {
            return Err(Freeze::Pause.refused(id, "Pausing".into()));
        }
        let (committed, tries) = if workspace_only {
            (Ok(()), 1)
        } else {
            let commit = || self.runtime.commit(&instance, &image, ImageRole::Paused);
            retry_transient(commit, tokio::time::sleep).await
        };
        let removed = match committed {
            Ok(()) => self.runtime.remove(&instance).await,
            Err(e) => Err(e),
        };
        let removed = match removed {
            Ok(()) if workspace_only => self.wait_gone(&instance).await,
            other => other,
        };
        if let Err(e) = removed {
            // Still running as it was: back to Ready, without the image.
            if !workspace_only {
                let _ = self.runtime.remove_image(&image).await;
            }
            record.phase = from;
            record.hibernation = None;
            record.transition_at = now_ms();
            self.store.update_from(&record, Phase::Committing).await?;
            let e = match e {
                RuntimeError::Transient(m) => {
                    let e = Error::FreezerGaveUp { verb: "pause", tries };
                    tracing::warn!(sandbox = id, error = %m, "{e}");
                    e
                }
                other => other.into(),
            };
            self.log_event_because(
                id,
                EventType::PauseFailed,
                Some(ROOTFS.into()),
                format!("Rootfs pause failed: {e}"),
            )
            .await;
            return Err(e);
        }
        // The instance ran from an earlier pause's image, which nothing uses now.
        let earlier = record.launch.as_mut().and_then(|l| l.image.take());
        let now = now_ms();
        record.instance = None;
        record.phase = Phase::Hibernated;
        record.transition_at = now;
        if record.pause_policy.suspend_expiry {
            if let (Some(h), Some(at)) = (record.hibernation.as_mut(), record.expires_at.take()) {
                h.suspended_ms = Some((at - now).max(0));
            }
        }
        if !self.store.update_from(&record, Phase::Committing).await? {
            // Deleted (or expired) during the commit: the images have no sandbox left.
            if let Some(l) = record.launch.as_mut() {
                l.image = earlier;
            }
            self.remove_leftovers(&record).await;
            return Err(Error::no_sandbox(id));
        }
        if let Some(image) = earlier {
            if let Err(e) = self.runtime.remove_image(&image).await {
                tracing::warn!(sandbox = id, %image, error = %e, "cannot remove an earlier pause's image");
            }
        }
        self.expiry_changed.notify_one();
        let what = if workspace_only {
            "paused (Rootfs): the instance removed, its persistent workspace kept".to_owned()
        } else {
            format!("paused (Rootfs): committed to {image}, the container removed")
        };
        self.log_event_because(
            id,
            EventType::Paused,
            Some(ROOTFS.into()),
            with_tries(&what, tries),
        )
        .await;
        tracing::info!(sandbox = id, %image, "sandbox hibernated");
        Ok(())
    }

    /// A Rootfs resume: the container again, from the hibernation's image, waited for until
    /// execd answers. On failure the sandbox stays Rootfs-paused, for another try.
    async fn restore(&self, mut record: Record) -> Result<(), Error> {
        let id = record.id.clone();
        let (Some(hibernation), Some(launch)) = (record.hibernation.clone(), record.launch.clone()) else {
            return Err(Error::Conflict(Conflict::NotRestorable(format!(
                "sandbox {id} is Rootfs-paused but its record lacks what a resume needs"
            ))));
        };
        record.phase = Phase::Restoring;
        record.transition_at = now_ms();
        if !self.store.update_from(&record, Phase::Hibernated).await? {
            return Err(Freeze::Resume.refused(&id, "Resuming".into()));
        }
        let expires_at = match hibernation.suspended_ms {
            Some(left) => Some(now_ms() + left),
            None => record.expires_at,
        };
        let mut env = launch.env.clone();
        // The hook ran at create; its work is in the committed filesystem.
        env.remove(LIFECYCLE_ENV);
        let spec = SandboxSpec {
            id: id.clone(),
            image: hibernation.image.clone(),
            entrypoint: record.entrypoint.clone(),
            env,
            labels: record.metadata.clone(),
            expires_at,
            resources: launch.resources,
            mounts: launch.mounts.clone(),
            isolation: launch.isolation,
            files: Vec::new(),
            purpose: Purpose::Sandbox,
            previous: Some(hibernation.previous.clone()),
            start: true,
            // Resumed from the image it was paused in, which needs no registry.
            image_auth: None,
            workspace: launch.workspace,
            pool: None,
        };
        let started = async {
            let instance = self.runtime.create(spec).await?;
            let ready = self
                .execd_answers(&instance, &record.token, false)
                .await
                .map(drop);
            match ready {
                Ok(()) => Ok(instance),
                Err(e) => {
                    if let Err(removal) = self.runtime.remove(&instance).await {
                        tracing::error!(sandbox = %id, error = %removal, "cannot remove a sandbox that failed to resume");
                    }
                    Err(e)
                }
            }
        };
        let instance = match started.await {
            Ok(instance) => instance,
            Err(e) => {
                record.phase = Phase::Hibernated;
                record.transition_at = now_ms();
                self.store.update_from(&record, Phase::Restoring).await?;
                self.log_event_because(
                    &id,
                    EventType::PauseFailed,
                    Some(ROOTFS.into()),
                    format!("Rootfs resume failed: {e}"),
                )
                .await;
                return Err(e);
            }
        };
        record.instance = Some(instance.clone());
        record.phase = Phase::Ready;
        record.transition_at = now_ms();
        record.expires_at = expires_at;
        record.hibernation = None;
        if let Some(l) = record.launch.as_mut() {
            // Nothing was committed for a workspace-only pause: it runs from its own image.
            l.image = (!hibernation.workspace_only).then(|| hibernation.image.clone());
        }
        if !self.store.update_from(&record, Phase::Restoring).await? {
            // Deleted during the resume.
            let _ = self.runtime.remove(&instance).await;
            self.remove_leftovers(&record).await;
            return Err(Error::no_sandbox(&id));
        }
        self.expiry_changed.notify_one();
        self.log_event_because(
            &id,
            EventType::Resumed,
            Some(ROOTFS.into()),
            if hibernation.workspace_only {
                format!(
                    "resumed (Rootfs): running again from {} with its persistent workspace",
                    hibernation.image
                )
            } else {
                format!("resumed (Rootfs): running again from {}", hibernation.image)
            },
        )
        .await;
        tracing::info!(sandbox = %id, "sandbox restored");
        Ok(())
    }

    /// Waits until the runtime no longer holds `instance` (a pod being deleted still exists
    /// for a while, and a resume makes one of the same name), for up to [`GONE_TIMEOUT`].
    async fn wait_gone(&self, instance: &Instance) -> Result<(), RuntimeError> {
        let deadline = tokio::time::Instant::now() + GONE_TIMEOUT;
        let mut pause = Duration::from_millis(50);
        loop {
            if self.runtime.observe(instance).await? == Observed::Gone {
                return Ok(());
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(RuntimeError::Engine {
                    op: "wait for the instance to go",
                    message: format!(
                        "{} was still there {} s after its removal",
                        instance.reference,
                        GONE_TIMEOUT.as_secs()
                    ),
                });
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }

    async fn freeze(&self, id: &str, way: Freeze, caller: &Principal) -> Result<(), Error> {
        let (mut record, instance) = self.freezer_target(id, way, caller).await?;
        let call = || async {
            match way {
                Freeze::Pause => self.runtime.pause(&instance).await,
                Freeze::Resume => self.runtime.unpause(&instance).await,
            }
        };
        let (result, tries) = retry_transient(call, tokio::time::sleep).await;
        match result {
            Ok(()) => {}
            Err(RuntimeError::Transient(m)) => {
                let e = Error::FreezerGaveUp {
                    verb: way.verb(),
                    tries,
                };
                self.log_event(id, EventType::PauseFailed, format!("{e}: {m}"))
                    .await;
                tracing::warn!(sandbox = id, error = %m, "{e}");
                return Err(e);
            }
            // The state changed between the check and the call.
            Err(RuntimeError::Conflict(m)) => {
                return Err(way.refused(id, format!("no longer {} ({m})", way.starting_state())))
            }
            Err(other) => return Err(other.into()),
        }
        record.phase = way.to_phase();
        record.transition_at = now_ms();
        self.store.update(&record).await?;
        self.log_event(id, way.event(), with_tries(way.done(), tries))
            .await;
        Ok(())
    }

    /// The record and instance of a sandbox that is in `way`'s starting state now (asked of
    /// the runtime), or `way`'s 409.
    async fn freezer_target(
        &self,
        id: &str,
        way: Freeze,
        caller: &Principal,
    ) -> Result<(Record, Instance), Error> {
        let record = self.owned(id, caller).await?;
        let instance = match (&record.instance, record.phase) {
            (Some(i), Phase::Ready | Phase::Paused) if record.failure.is_none() => i.clone(),
            // Starting, or failed to start: the record alone says so.
            _ => return Err(way.refused(id, status(&record, &Observed::Running).state)),
        };
        let observed = self.runtime.observe(&instance).await?;
        let state = status(&record, &observed).state;
        if state != way.starting_state() {
            self.note_observed(&record, &observed).await;
            return Err(way.refused(id, state));
        }
        Ok((record, instance))
    }
}

/// Runs `op` until it succeeds, fails for good, or has failed transiently
/// ([`RuntimeError::Transient`]) on each of its 5 tries, sleeping [`FREEZER_BACKOFF`] between
/// them (through `sleep`, so that tests need not wait). Returns the last outcome and the
/// number of tries.
pub(super) async fn retry_transient<Op, Tried, Sleep, Slept>(
    mut op: Op,
    mut sleep: Sleep,
) -> (Result<(), RuntimeError>, usize)
where
    Op: FnMut() -> Tried,
    Tried: Future<Output = Result<(), RuntimeError>>,
    Sleep: FnMut(Duration) -> Slept,
    Slept: Future<Output = ()>,
{
    let mut tries = 0;
    loop {
        tries += 1;
        let result = op().await;
        match (&result, FREEZER_BACKOFF.get(tries - 1)) {
            (Err(RuntimeError::Transient(m)), Some(&pause)) => {
                tracing::debug!(tries, error = %m, "transient freezer failure; retrying");
                sleep(pause).await;
            }
            _ => return (result, tries),
        }
    }
}

/// `paused`, or `paused (after 3 tries)`.
fn with_tries(what: &str, tries: usize) -> String {
    if tries == 1 {
        what.to_owned()
    } else {
        format!("{what} (after {tries} tries)")
    }
}
