//! The lifecycle orchestrator (`sandboxd`): the OpenSandbox lifecycle API over a runtime (the
//! Docker Engine, or Kubernetes with the `k8s` feature), execd injected into any image, SQLite state, expiry, and a streaming
//! proxy to each sandbox. Must never import `agent`: the two meet only on the wire.
//!
//! - `config`: flags and environment.
//! - `http`: the edge (the only part that sees axum): routes, auth, request ids, the proxy.
//! - `service`: what each route does, over the store and `dyn Runtime` (no axum, no bollard).
//! - `runtime`: the `Runtime` trait; `docker` (the only bollard user), `kubernetes` (the only
//!   kube user, feature `k8s`) and a test fake.
//! - `store`: the versioned SQLite state file, on its own thread.
//! - `spec`: create requests → runtime-neutral plans, or errors naming the field.
//! - `ratelimit`: the per-caller rate classes (keyed GCRA); `metrics`: request metrics.
//! - `error`: the domain's errors; `execd_client`: sandboxd's only execd HTTP client.
//! - `lifecycle_log`: sandboxd's own log lines per sandbox (a tracing layer and its rings).

pub mod auth;
pub mod config;
pub mod error;
pub mod execd_client;
pub mod http;
pub mod lifecycle_log;
pub mod metrics;
pub mod openapi;
pub mod ratelimit;
pub mod runtime;
pub mod service;
pub mod spec;
pub mod store;
pub mod templates_yaml;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

pub use config::{Cli, Command, Config};

use crate::relay::Relay;

/// The seccomp profile for sandboxes that ask for isolated sessions: Docker's defaults, plus
/// the user namespaces execd's jail needs (see docs/isolation.md).
const ISOLATION_SECCOMP: &str = include_str!("../../deploy/seccomp-userns.json");

/// How often idle rate-limit keys are dropped and the metrics recorder drains its histograms.
const HOUSEKEEPING: Duration = Duration::from_secs(5);
/// How often sandboxes without a record (a create finished by the runtime after sandboxd
/// died) are looked for and removed.
const ORPHAN_SWEEP: Duration = Duration::from_secs(5);

/// How often the event journals of sandboxes deleted longer ago than the retention are
/// dropped.
const EVENTS_SWEEP: Duration = Duration::from_secs(600);

/// Serves until SIGTERM or SIGINT. `lifecycle` holds the rings of sandboxd's own log lines
/// per sandbox that the process's tracing layer feeds.
pub async fn serve(config: Config, lifecycle: Arc<lifecycle_log::LifecycleLogs>) -> anyhow::Result<()> {
    if config.api_key.as_deref().is_none_or(str::is_empty) {
        tracing::warn!(
            "no API key configured (--api-key / SANDBOXD_API_KEY): anyone who can reach {}:{} controls every sandbox",
            config.host,
            config.port
        );
    }
    let data_dir = config.data_dir();
    let store = store::Store::open(&data_dir)?;
    let runtime = connect_runtime(&config, &store.instance).await?;
    tracing::info!(
        data_dir = %data_dir.display(),
        runtime = runtime.kind().as_str(),
        version = %runtime.version(),
        "starting"
    );
    let keys = auth::jwt::Keys::new(
        &config.jwt_secret(&data_dir)?,
        &config
            .jwt_previous_secrets
            .iter()
            .map(|s| s.clone().into_bytes())
            .collect::<Vec<_>>(),
    )
    .map_err(|e| anyhow::anyhow!("--jwt-secret: {e}"))?;
    let revoked = store.revoked_tokens(crate::wire::time::now_ms()).await?;
    let authority = Arc::new(auth::Authority::new(config.api_key.clone(), keys, revoked));
    let settings = service::Settings {
        limits: spec::Limits {
            max_timeout: config.max_timeout,
            allowed_host_paths: config.allowed_host_paths.clone(),
        },
        ready_timeout: config.ready_timeout(),
        pids_limit: config.pids_limit,
        max_sandboxes_per_user: config.max_sandboxes_per_user,
        builds: config.builds(),
        pools: config.pools(),
        executions: config.executions(),
    };
    let diagnostics = service::DiagnosticsSettings {
        enabled: config.diagnostics,
        retention: Duration::from_secs(config.events_retention_hours.saturating_mul(3600)),
    };
    let service = Arc::new(
        service::Service::new(store, runtime, authority, settings).with_diagnostics(diagnostics, lifecycle),
    );
    // Opened before reconciliation, so that what happens to containers from here on is
    // journalled.
    let runtime_events = tokio::spawn({
        let service = service.clone();
        async move { service.run_runtime_events().await }
    });
    // A runtime that cannot be reached yet (Kubernetes: the API server) is waited for in the
    // background, every runtime-backed route answering 503 meanwhile; otherwise sandboxd
    // adopts what the runtime holds before it listens, and a failure stops start-up.
    let recovery = match service.runtime_unavailable() {
        None => {
            recover(&service).await?;
            None
        }
        Some(why) => {
            tracing::warn!(%why, "starting without the runtime; it is connected in the background");
            Some(tokio::spawn(recover_once_connected(service.clone())))
        }
    };

    let listener = tokio::net::TcpListener::bind(SocketAddr::new(config.host, config.port))
        .await
        .with_context(|| format!("cannot listen on {}:{}", config.host, config.port))?;
    let local = listener.local_addr()?;
    let advertised = match &config.public_host {
        Some(host) => format!("{host}:{}", local.port()),
        None if local.ip().is_unspecified() => format!("127.0.0.1:{}", local.port()),
        None => local.to_string(),
    };
    service.set_server_endpoint(advertised);

    let expiry = tokio::spawn({
        let service = service.clone();
        async move { service.run_expiry().await }
    });
    let prepulls = tokio::spawn({
        let service = service.clone();
        async move { service.run_prepulls().await }
    });
    let builds = tokio::spawn({
        let service = service.clone();
        async move { service.run_builds().await }
    });
    let pools = tokio::spawn(service.clone().run_pools());
    let executions = tokio::spawn({
        let service = service.clone();
        async move { service.run_execution_housekeeping().await }
    });
    let sweeper = tokio::spawn({
        let service = service.clone();
        async move {
            let mut tick = tokio::time::interval(ORPHAN_SWEEP);
            loop {
                tick.tick().await;
                if let Err(e) = service.sweep_orphans().await {
                    tracing::warn!(error = %e, "cannot look for orphaned sandboxes");
                }
            }
        }
    });
    let journal_sweeper = tokio::spawn({
        let service = service.clone();
        async move {
            let mut tick = tokio::time::interval(EVENTS_SWEEP);
            loop {
                tick.tick().await;
                if let Err(e) = service.sweep_events().await {
                    tracing::warn!(error = %e, "cannot drop old event journals");
                }
            }
        }
    });
    let limiter = Arc::new(ratelimit::Limiter::new(config.rate_limits()));
    let metrics = Arc::new(metrics::Metrics::new());
    let housekeeping = tokio::spawn({
        let (limiter, metrics) = (limiter.clone(), metrics.clone());
        async move {
            let mut tick = tokio::time::interval(HOUSEKEEPING);
            loop {
                tick.tick().await;
                let keys = limiter.evict_idle();
                metrics.upkeep();
                tracing::trace!(keys, "rate-limit keys after eviction");
            }
        }
    });
    let app = http::router(http::App {
        service,
        relay: Arc::new(Relay::new()),
        limiter,
        metrics,
        metrics_public: config.metrics_public,
        errors_docs_base_url: config.errors_docs_base_url.clone().map(Into::into),
        tickets: Default::default(),
    });
    // The one line scripts and tests wait for.
    println!("sandboxd listening on http://{local}");
    tracing::info!(%local, "listening");
    // Header and body timeouts and a connection cap apply before any route or credential.
    crate::serve::serve(listener, app, config.client_limits(), shutdown()).await?;
    expiry.abort();
    housekeeping.abort();
    sweeper.abort();
    prepulls.abort();
    builds.abort();
    pools.abort();
    runtime_events.abort();
    journal_sweeper.abort();
    executions.abort();
    if let Some(recovery) = recovery {
        recovery.abort();
    }
    Ok(())
}

/// Adopts what the runtime holds (reconciliation) and picks up the work a previous run left:
/// prepulls, builds, executions, snapshots.
async fn recover(service: &Arc<service::Service>) -> anyhow::Result<()> {
    service
        .reconcile()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reconcile with the runtime: {e}"))?;
    service
        .recover_prepulls()
        .await
        .map_err(|e| anyhow::anyhow!("cannot recover prepull tasks: {e}"))?;
    service
        .recover_builds()
        .await
        .map_err(|e| anyhow::anyhow!("cannot recover template builds: {e}"))?;
    service
        .recover_executions()
        .await
        .map_err(|e| anyhow::anyhow!("cannot recover executions: {e}"))?;
    service
        .recover_snapshots()
        .await
        .map_err(|e| anyhow::anyhow!("cannot recover snapshots: {e}"))?;
    Ok(())
}

/// [`recover`] once the runtime is connected, retried with back-off until it succeeds.
async fn recover_once_connected(service: Arc<service::Service>) {
    service.runtime_connected().await;
    let mut pause = Duration::from_millis(200);
    while let Err(e) = recover(&service).await {
        tracing::warn!(error = %e, retry_in = ?pause, "cannot adopt the runtime's sandboxes yet");
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(30));
    }
    tracing::info!("the runtime is connected and its sandboxes adopted");
}

/// The runtime `--runtime` names, connected: Docker (the agent packed for injection) or
/// Kubernetes (the API server asked its version; an unreachable one is connected in the
/// background, every call `Unavailable` until then).
async fn connect_runtime(config: &Config, instance: &str) -> anyhow::Result<Arc<dyn runtime::Runtime>> {
    match config.runtime {
        config::RuntimeName::Docker => {
            let agent = config.agent_path();
            tracing::info!(agent = %agent.display(), "the Docker runtime");
            let docker = runtime::docker::Docker::connect(runtime::docker::Settings {
                agent,
                instance: instance.to_owned(),
                publish_ip: config.publish_ip,
                public_host: config.public_host(),
                network: config.network.clone(),
                isolation_profile: Some(ISOLATION_SECCOMP.to_owned()),
            })
            .await?;
            Ok(Arc::new(docker))
        }
        config::RuntimeName::Kubernetes => connect_kubernetes(config, instance).await,
    }
}

#[cfg(feature = "k8s")]
async fn connect_kubernetes(config: &Config, instance: &str) -> anyhow::Result<Arc<dyn runtime::Runtime>> {
    runtime::kubernetes::Kubernetes::connect(runtime::kubernetes::Settings {
        namespace: config.kube_namespace.clone(),
        agent_image: config.kube_agent_image.clone(),
        instance: instance.to_owned(),
        create_timeout: Duration::from_secs(config.kube_create_timeout),
        storage_class: config.kube_storage_class.clone(),
        endpoint_mode: match config.kube_endpoint_mode {
            config::KubeEndpointMode::PodIp => runtime::kubernetes::EndpointMode::PodIp,
            config::KubeEndpointMode::PortForward => runtime::kubernetes::EndpointMode::PortForward,
        },
    })
    .await
}

#[cfg(not(feature = "k8s"))]
async fn connect_kubernetes(_config: &Config, _instance: &str) -> anyhow::Result<Arc<dyn runtime::Runtime>> {
    anyhow::bail!("--runtime kubernetes: this sandboxd was built without the Kubernetes runtime (cargo build --features k8s)")
}

async fn shutdown() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("shutting down; sandboxes keep running and are adopted at the next start");
}
