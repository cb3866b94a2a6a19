//! The public routes (`/health`, `/version`), the 501s of contract routes this runtime does
//! not serve, and the 404 of everything else.

use axum::extract::State;
use axum::routing::{any, get};
use axum::{Json, Router};

use super::App;
use crate::orchestrator::error::{Error, Feature};
use crate::orchestrator::runtime::RuntimeKind;

/// `/health`: no credential (mounted at `/` and `/v1`).
pub(super) fn public_routes() -> Router<App> {
    Router::new().route("/health", get(health))
}

/// `/version`: no credential, bare path only.
pub(super) fn version_routes() -> Router<App> {
    Router::new().route("/version", get(version))
}

/// Contract routes this runtime answers with 501 (behind auth).
pub(super) fn unsupported_routes() -> Router<App> {
    Router::new().route("/sandboxes/{id}/networkpolicy", any(no_network_policy))
}

/// 200 either way: sandboxd itself is up (a liveness probe must not restart it for the
/// runtime's sake); while the runtime cannot be reached, `status` is `degraded` and
/// `runtime` says why (every runtime-backed route answers 503 meanwhile).
#[utoipa::path(get, path = "/health", responses((status = 200, description = "`{\"status\": \"healthy\"}`; `{\"status\": \"degraded\", \"runtime\": \"<why>\"}` while the runtime (Kubernetes: the API server) cannot be reached")))]
pub(crate) async fn health(State(app): State<App>) -> Json<serde_json::Value> {
    Json(match app.service.runtime_unavailable() {
        None => serde_json::json!({"status": "healthy"}),
        Some(why) => serde_json::json!({"status": "degraded", "runtime": why}),
    })
}

#[utoipa::path(get, path = "/version", responses((status = 200, description = "`{version, runtime, dockerApiVersion}` on Docker, `{version, runtime, kubernetesVersion}` on Kubernetes (bare path only)")))]
pub(crate) async fn version(State(app): State<App>) -> Json<serde_json::Value> {
    let (kind, version) = app.service.runtime_version();
    let key = match kind {
        RuntimeKind::Kubernetes => "kubernetesVersion",
        _ => "dockerApiVersion",
    };
    Json(serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "runtime": kind.as_str(),
        key: version,
    }))
}

async fn no_network_policy() -> Error {
    Error::Unsupported(Feature::NetworkPolicy)
}

/// 404 for a path no router serves.
pub(super) async fn no_route() -> Error {
    Error::NoRoute
}
