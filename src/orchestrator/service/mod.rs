//! The lifecycle service: what each route does, in sandboxd's own terms. No axum, no bollard:
//! it holds the [`Store`] (intent and history), an `Arc<dyn Runtime>` (what runs now) and the
//! [`ExecdClient`] (readiness), and answers with wire types or a domain [`Error`].
//!
//! - `sandboxes`: create, read, list, delete, metadata, renew, endpoints and the proxy's target,
//!   and the mapping of [`Observed`](super::runtime::Observed) onto the contract's states.
//! - `pause`: pause and resume: Freeze (freeze and thaw, with retries of what the freezer
//!   gives up on) and Rootfs (commit, remove, create again).
//! - `snapshots`: snapshots, create from one, and forks.
//! - `diagnostics`: logs and events of every scope, as upstream's diagnostics routes.
//! - `events`: the structured event journal, the runtime's event stream into it, and its
//!   retention.
//! - `containers`: the containers view (every container sandboxd manages, by role).
//! - `expiry`: deletes sandboxes when they expire.
//! - `reconcile`: start-up recovery against the runtime.
//! - `templates`: versioned templates, and a create request made from one.
//! - `builds`: template builds (`installCommand`): the queue, the builder task, the logs.
//! - `startup`: the tasks that follow a sandbox with a pre-start hook or a readiness probe
//!   from `Pending` to `Running` or `Failed`.
//! - `prepull`: image prepull tasks: admission, the scheduler and its pulls.
//! - `pools`: warm pools: the reconciler that keeps members warm, acquire and release.
//! - `executions`: handler, code and command executions and batches run through execd, with
//!   their runs' tasks, recovery after a restart and retention.

mod builds;
#[cfg(test)]
mod builds_tests;
mod containers;
mod diagnostics;
mod events;
#[cfg(test)]
mod events_tests;
mod executions;
mod expiry;
mod pause;
mod pools;
mod prepull;
mod reconcile;
mod sandboxes;
mod snapshots;
#[cfg(test)]
mod snapshots_tests;
mod startup;
mod template_import;
mod templates;
#[cfg(test)]
mod templates_tests;
#[cfg(test)]
mod tests;
mod tokens;
#[cfg(test)]
mod workspace_tests;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::Notify;

pub use builds::BuildSettings;
pub use containers::ContainerFilter;
pub use diagnostics::DiagnosticsQuery;
pub use events::MAX_PAGE as MAX_EVENTS_PAGE;
pub use executions::runner::PYTHON as HANDLER_RUNNER;
pub use executions::{wait_seconds, ExecutionQuery, ExecutionSettings, NumberedEvent};
pub use pools::PoolSettings;
pub use prepull::{PrepullQuery, PrepullSnapshot};
pub use sandboxes::{ListFilter, ProxyRoute};
pub use snapshots::SnapshotFilter;
pub use template_import::{ExportSelection, ImportOptions, Incoming, Strategy};
pub use templates::TemplateFilter;

use super::auth::{Authority, Principal};
use super::error::Error;
use super::execd_client::ExecdClient;
use super::lifecycle_log::LifecycleLogs;
use super::runtime::{Runtime, RuntimeKind};
use super::spec::Limits;
use super::store::{Record, Store};

tokio::task_local! {
    /// The `X-Request-ID` of the request being served (set by the HTTP layer), recorded with
    /// the events it causes.
    pub static REQUEST_ID: String;
}

/// Settings the service needs from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Validation limits.
    pub limits: Limits,
    /// How long create waits for execd.
    pub ready_timeout: Duration,
    /// Process limit of sandboxes whose request sets none.
    pub pids_limit: i64,
    /// Most sandboxes a non-admin user may own at once.
    pub max_sandboxes_per_user: u64,
    /// Template builds.
    pub builds: BuildSettings,
    /// Warm pools.
    pub pools: PoolSettings,
    /// Executions: retention, loss detection, the per-user cap.
    pub executions: ExecutionSettings,
}

/// What the diagnostics routes and the event journal are configured with.
#[derive(Debug, Clone)]
pub struct DiagnosticsSettings {
    /// Whether the diagnostics routes answer (else 403 `DIAGNOSTICS::DISABLED`).
    pub enabled: bool,
    /// How long a sandbox's journal is kept after the sandbox is deleted.
    pub retention: Duration,
}

impl Default for DiagnosticsSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            retention: Duration::from_secs(24 * 3600),
        }
    }
}

/// The service.
pub struct Service {
    store: Store,
    runtime: Arc<dyn Runtime>,
    authority: Arc<Authority>,
    execd: ExecdClient,
    settings: Settings,
    /// `host:port` of sandboxd itself, for server-proxy endpoints (known once bound).
    server_endpoint: OnceLock<String>,
    /// Wakes the expiry task when an expiry changes.
    expiry_changed: Notify,
    /// The tasks following sandboxes through their pre-start hooks and readiness probes.
    startups: startup::Startups,
    /// Queued and running image prepulls.
    prepulls: prepull::Prepulls,
    /// Queued and running template builds.
    builds: builds::Builds,
    /// The warm pools' wake-ups and the members being warmed.
    pools: pools::Pools,
    /// Diagnostics and journal settings.
    diagnostics: DiagnosticsSettings,
    /// sandboxd's own log lines per sandbox (the `lifecycle` logs scope), fed by a tracing
    /// layer.
    lifecycle: Arc<LifecycleLogs>,
    /// The newest `seq` of any journal: journal followers wait on it.
    journal: tokio::sync::watch::Sender<i64>,
    /// Executions this process runs.
    executions: executions::Executions,
    /// Snapshot commits in flight.
    captures: snapshots::Captures,
}

impl Service {
    /// A service over `store` and `runtime`, checking credentials with `authority`.
    pub fn new(
        store: Store,
        runtime: Arc<dyn Runtime>,
        authority: Arc<Authority>,
        settings: Settings,
    ) -> Self {
        Self {
            store,
            runtime,
            authority,
            execd: ExecdClient::new(),
            builds: builds::Builds::new(settings.builds),
            settings,
            server_endpoint: OnceLock::new(),
            expiry_changed: Notify::new(),
            startups: startup::Startups::default(),
            prepulls: prepull::Prepulls::new(prepull::MAX_CONCURRENT),
            pools: pools::Pools::default(),
            diagnostics: DiagnosticsSettings::default(),
            lifecycle: Arc::new(LifecycleLogs::default()),
            journal: tokio::sync::watch::channel(0).0,
            executions: executions::Executions::default(),
            captures: snapshots::Captures::default(),
        }
    }

    /// The service with these diagnostics settings, reading the lifecycle log lines from
    /// `lifecycle` (the rings the process's tracing layer feeds).
    pub fn with_diagnostics(mut self, settings: DiagnosticsSettings, lifecycle: Arc<LifecycleLogs>) -> Self {
        self.diagnostics = settings;
        self.lifecycle = lifecycle;
        self
    }

    /// Records the address sandboxd serves on (`host:port`, as clients should reach it).
    pub fn set_server_endpoint(&self, endpoint: String) {
        let _ = self.server_endpoint.set(endpoint);
    }

    /// Which runtime serves the sandboxes, and its version line.
    pub fn runtime_version(&self) -> (RuntimeKind, String) {
        (self.runtime.kind(), self.runtime.version())
    }

    /// Why the runtime cannot be used now, when it cannot (not yet connected).
    pub fn runtime_unavailable(&self) -> Option<String> {
        self.runtime.unavailable()
    }

    /// Resolves once the runtime can be used.
    pub fn runtime_connected(&self) -> futures_util::future::BoxFuture<'static, ()> {
        self.runtime.connected()
    }

    /// Who checks credentials.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    async fn record(&self, id: &str) -> Result<Record, Error> {
        self.store.get(id).await?.ok_or_else(|| Error::no_sandbox(id))
    }

    /// The sandbox `id` if `caller` may see it; someone else's is not found, like a missing one.
    async fn owned(&self, id: &str, caller: &Principal) -> Result<Record, Error> {
        let record = self.record(id).await?;
        if caller.may_see(&record.owner) {
            Ok(record)
        } else {
            Err(Error::no_sandbox(id))
        }
    }
}

/// One page of `items` and where it sits.
fn paginate<T>(items: Vec<T>, page: u32, page_size: u32) -> (Vec<T>, crate::wire::lifecycle::Pagination) {
    let total = items.len() as u64;
    let size = u64::from(page_size.max(1));
    let skip = u64::from(page.max(1) - 1) * size;
    let page_items = items
        .into_iter()
        .skip(skip as usize)
        .take(size as usize)
        .collect();
    (page_items, page_of(page, page_size, total))
}

/// Where page `page` of `page_size` items sits among `total`.
fn page_of(page: u32, page_size: u32, total: u64) -> crate::wire::lifecycle::Pagination {
    let size = u64::from(page_size.max(1));
    let skip = u64::from(page.max(1) - 1) * size;
    crate::wire::lifecycle::Pagination {
        page,
        page_size,
        total_items: total,
        total_pages: total.div_ceil(size),
        has_next_page: skip + size < total,
    }
}

#[cfg(test)]
impl Service {
    /// A service for tests: a store in `dir`, the fake runtime, API key `api_key`, creates
    /// allowed up to `max_timeout` seconds, 2 sandboxes per user.
    pub(crate) fn for_tests(
        dir: &std::path::Path,
        fake: &super::runtime::fake::FakeRuntime,
        api_key: &str,
        max_timeout: u64,
        ready_timeout: Duration,
    ) -> Arc<Self> {
        let keys =
            super::auth::jwt::Keys::new(b"0123456789abcdef0123456789abcdef", &[]).expect("a 32-byte secret");
        let authority = Arc::new(Authority::new(Some(api_key.into()), keys, Vec::new()));
        let settings = Settings {
            limits: Limits {
                max_timeout,
                allowed_host_paths: Vec::new(),
            },
            ready_timeout,
            pids_limit: 99,
            max_sandboxes_per_user: 2,
            builds: BuildSettings::default(),
            pools: PoolSettings::default(),
            executions: ExecutionSettings {
                lost_after: Duration::from_secs(1),
                ..ExecutionSettings::default()
            },
        };
        let store = Store::open(dir).expect("open a test store");
        Arc::new(Self::new(store, Arc::new(fake.clone()), authority, settings))
    }

    /// [`Service::for_tests`] (key `key`, 1 day, 10 s) with these diagnostics settings and
    /// lifecycle rings.
    pub(crate) fn for_diagnostics_tests(
        dir: &std::path::Path,
        fake: &super::runtime::fake::FakeRuntime,
        diagnostics: DiagnosticsSettings,
        lifecycle: Arc<LifecycleLogs>,
    ) -> Arc<Self> {
        let service = Self::for_tests(dir, fake, "key", 86_400, Duration::from_secs(10));
        let service = Arc::into_inner(service).expect("a new service has one owner");
        Arc::new(service.with_diagnostics(diagnostics, lifecycle))
    }
}
