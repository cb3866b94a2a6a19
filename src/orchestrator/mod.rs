//! The lifecycle orchestrator (`sandboxd`): the OpenSandbox lifecycle API on the Docker
//! Engine, execd injected into any image, SQLite state, expiry, and a streaming proxy to each
//! sandbox. Must never import `agent`: the two meet only on the wire.
//!
//! - `config`: flags and environment.
//! - `http`: routes, API key, request ids, the server proxy.
//! - `sandboxes`: the service (state mapping, readiness, expiry, reconciliation).
//! - `validate`: create requests → plans, or 400s.
//! - `docker`: the engine (bollard) and injection.
//! - `store`: the SQLite state file.

pub mod config;
pub mod docker;
pub mod error;
pub mod http;
pub mod openapi;
pub mod sandboxes;
pub mod store;
pub mod validate;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use axum::serve::ListenerExt as _;

pub use config::{Cli, Command, Config};

use crate::relay::Relay;

/// The seccomp profile for sandboxes that ask for isolated sessions: Docker's defaults, plus
/// the user namespaces execd's jail needs (see docs/isolation.md).
const ISOLATION_SECCOMP: &str = include_str!("../../deploy/seccomp-userns.json");

/// Serves until SIGTERM or SIGINT.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    if config.api_key.as_deref().is_none_or(str::is_empty) {
        tracing::warn!(
            "no API key configured (--api-key / SANDBOXD_API_KEY): anyone who can reach {}:{} controls every sandbox",
            config.host,
            config.port
        );
    }
    let data_dir = config.data_dir();
    let store = store::Store::open(&data_dir)?;
    let agent = config.agent_path();
    let docker = docker::Docker::connect(&agent).await?;
    tracing::info!(
        data_dir = %data_dir.display(),
        agent = %agent.display(),
        docker_api = %docker.api_version(),
        "starting"
    );
    let settings = sandboxes::Settings {
        publish_ip: config.publish_ip,
        public_host: config.public_host(),
        limits: validate::Limits {
            max_timeout: config.max_timeout,
            allowed_host_paths: config.allowed_host_paths.clone(),
        },
        ready_timeout: config.ready_timeout(),
        pids_limit: config.pids_limit,
        network: config.network.clone(),
        isolation_profile: Some(ISOLATION_SECCOMP.to_owned()),
    };
    let service = Arc::new(sandboxes::Service::new(store, docker, settings));
    service
        .reconcile()
        .await
        .context("cannot reconcile with docker")?;

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
    let app = http::router(http::App {
        service,
        api_key: config.api_key.filter(|k| !k.is_empty()).map(Into::into),
        relay: Arc::new(Relay::new()),
    });
    // The one line scripts and tests wait for.
    println!("sandboxd listening on http://{local}");
    tracing::info!(%local, "listening");
    // As in execd: without TCP_NODELAY the last small frame of each proxied response waits
    // for the client's delayed ACK (~40 ms).
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(shutdown())
        .await?;
    expiry.abort();
    Ok(())
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
