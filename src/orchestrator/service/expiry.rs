//! Deletes sandboxes when they expire: one task, woken by the nearest expiry or by a change.

use std::time::Duration;

use super::Service;
use crate::orchestrator::store::EventType;
use crate::wire::time::now_ms;

/// The longest the expiry task sleeps without looking again.
const MAX_NAP: Duration = Duration::from_secs(60);
/// How long to wait before trying again to remove an expired sandbox the runtime refused.
const RETRY_AFTER: Duration = Duration::from_secs(1);

impl Service {
    /// Deletes sandboxes when they expire. Runs until the process ends.
    pub async fn run_expiry(&self) {
        loop {
            let now = now_ms();
            let mut retry = false;
            match self.store.expired(now).await {
                Ok(ids) => {
                    for id in ids {
                        retry |= !self.expire(&id).await;
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot read expiries");
                    retry = true;
                }
            }
            // Whatever expired at or before `now` was just removed, or left alone (an
            // unreadable row) or failed (retried after a pause): wait for the next one after.
            let wait = match self.store.next_expiry(now).await {
                Ok(Some(at)) => {
                    Duration::from_millis((at - now_ms()).clamp(0, MAX_NAP.as_millis() as i64) as u64)
                }
                _ => MAX_NAP,
            };
            let wait = if retry { wait.min(RETRY_AFTER) } else { wait };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.expiry_changed.notified() => {}
            }
        }
    }

    /// Removes one expired sandbox. False when it should be tried again soon.
    pub(super) async fn expire(&self, id: &str) -> bool {
        // Re-read: a renew may have moved it since the query.
        let record = match self.store.get(id).await {
            Ok(Some(record)) => record,
            Ok(None) => return true,
            Err(e) => {
                tracing::warn!(sandbox = id, error = %e, "expired sandbox row is unreadable; left alone");
                return true;
            }
        };
        if record.expires_at.is_none_or(|t| t > now_ms()) {
            return true;
        }
        if record.pool.is_some() && record.phase != crate::orchestrator::store::Phase::Released {
            // The allocation's expiry: the sandbox is released to its pool.
            if let Err(e) = self.end_allocation(&record, false).await {
                tracing::error!(sandbox = id, error = %e, "cannot release expired pooled sandbox; retrying");
                return false;
            }
            tracing::info!(sandbox = id, "pooled sandbox expired and was released");
            return true;
        }
        self.startups.cancel(id);
        if record.phase == crate::orchestrator::store::Phase::Released {
            // Its instance is the pool's (or gone): only the record is left to forget.
            if let Err(e) = self.store.remove(id).await {
                tracing::error!(sandbox = id, error = %e, "cannot forget released sandbox");
                return false;
            }
            return true;
        }
        if let Some(instance) = &record.instance {
            if let Err(e) = self.runtime.remove(instance).await {
                tracing::error!(sandbox = id, error = %e, "cannot remove expired sandbox; retrying");
                return false;
            }
        }
        self.log_event(id, EventType::Expired, "expired and removed")
            .await;
        if let Err(e) = self.store.remove(id).await {
            tracing::error!(sandbox = id, error = %e, "cannot forget expired sandbox");
            return false;
        }
        self.lifecycle.forget(id);
        // A Rootfs-paused sandbox that expires leaves no image behind.
        self.remove_leftovers(&record).await;
        tracing::info!(sandbox = id, "sandbox expired and was removed");
        true
    }
}
