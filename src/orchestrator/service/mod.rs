//! The lifecycle service: what each route does, in sandboxd's own terms. No axum, no bollard:
//! it holds the [`Store`] (intent and history), an `Arc<dyn Runtime>` (what runs now) and the
//! [`ExecdClient`] (readiness), and answers with wire types or a domain [`Error`].
//!
//! - `sandboxes`: create, read, list, delete, metadata, renew, endpoints and the proxy's target,
//!   and the mapping of [`Observed`](super::runtime::Observed) onto the contract's states.
//! - `pause`: freeze and thaw, with retries of what the freezer gives up on.
//! - `diagnostics`: logs and events.
//! - `expiry`: deletes sandboxes when they expire.
//! - `reconcile`: start-up recovery against the runtime.

mod diagnostics;
mod expiry;
mod pause;
mod reconcile;
mod sandboxes;
#[cfg(test)]
mod tests;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::Notify;

pub use sandboxes::ListFilter;

use super::error::Error;
use super::execd_client::ExecdClient;
use super::runtime::{Runtime, RuntimeKind};
use super::spec::Limits;
use super::store::{Record, Store};
use crate::wire::time::now_ms;

/// Settings the service needs from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Validation limits.
    pub limits: Limits,
    /// How long create waits for execd.
    pub ready_timeout: Duration,
    /// Process limit of sandboxes whose request sets none.
    pub pids_limit: i64,
}

/// The service.
pub struct Service {
    store: Store,
    runtime: Arc<dyn Runtime>,
    execd: ExecdClient,
    settings: Settings,
    /// `host:port` of sandboxd itself, for server-proxy endpoints (known once bound).
    server_endpoint: OnceLock<String>,
    /// Wakes the expiry task when an expiry changes.
    expiry_changed: Notify,
}

impl Service {
    /// A service over `store` and `runtime`.
    pub fn new(store: Store, runtime: Arc<dyn Runtime>, settings: Settings) -> Self {
        Self {
            store,
            runtime,
            execd: ExecdClient::new(),
            settings,
            server_endpoint: OnceLock::new(),
            expiry_changed: Notify::new(),
        }
    }

    /// Records the address sandboxd serves on (`host:port`, as clients should reach it).
    pub fn set_server_endpoint(&self, endpoint: String) {
        let _ = self.server_endpoint.set(endpoint);
    }

    /// Which runtime serves the sandboxes, and its version line.
    pub fn runtime_version(&self) -> (RuntimeKind, String) {
        (self.runtime.kind(), self.runtime.version())
    }

    async fn record(&self, id: &str) -> Result<Record, Error> {
        self.store.get(id).await?.ok_or_else(|| Error::no_sandbox(id))
    }

    /// Appends to the sandbox's event log; a failure is logged, never the request's.
    async fn event(&self, id: &str, message: &str) {
        if let Err(e) = self.store.event(id, now_ms(), message).await {
            tracing::warn!(sandbox = id, error = %e, "cannot record event");
        }
    }
}
