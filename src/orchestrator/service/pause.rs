//! `POST /sandboxes/{id}/pause` and `/resume`: freeze and thaw, retrying what the freezer
//! gives up on while processes start.

use std::future::Future;
use std::time::Duration;

use super::sandboxes::status;
use super::Service;
use crate::orchestrator::auth::Principal;
use crate::orchestrator::error::{Conflict, Error};
use crate::orchestrator::runtime::{Instance, Observed, RuntimeError};
use crate::orchestrator::store::{EventType, Phase, Record};
use crate::wire::time::now_ms;

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
    /// `POST /sandboxes/{id}/pause`: freezes a running sandbox. 409 when it is not running.
    pub async fn pause(&self, id: &str, caller: &Principal) -> Result<(), Error> {
        self.freeze(id, Freeze::Pause, caller).await
    }

    /// `POST /sandboxes/{id}/resume`: thaws a paused sandbox. 409 when it is not paused.
    pub async fn resume(&self, id: &str, caller: &Principal) -> Result<(), Error> {
        self.freeze(id, Freeze::Resume, caller).await
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
