//! The OpenAPI document of sandboxd, generated from the handlers' annotations and the wire
//! types. `proto/sandboxd.yaml` is this document; a test fails when the two drift apart
//! (`UPDATE_PROTO=1 cargo test proto_matches_code` rewrites it).

use utoipa::OpenApi;

use super::http::console::__path_mint_ticket;
use super::http::containers::{
    __path_container_logs, __path_container_status, __path_get_container, __path_list_containers,
};
use super::http::diagnostics::__path_diagnostics;
use super::http::events::__path_sandbox_events;
use super::http::executions::{
    __path_cancel_execution, __path_create_batch, __path_create_execution, __path_create_one_shot,
    __path_execution_events, __path_execution_result, __path_get_batch, __path_get_execution,
    __path_list_executions,
};
use super::http::metrics::{__path_metrics_event, __path_metrics_summary, __path_prometheus_metrics};
use super::http::pools::{
    __path_acquire, __path_create_pool, __path_delete_pool, __path_get_pool, __path_list_pools,
    __path_release, __path_update_pool,
};
use super::http::prepulls::{
    __path_create_prepull, __path_delete_prepull, __path_get_prepull, __path_list_prepulls,
    __path_prepull_events, __path_prepull_template,
};
use super::http::proxy::__path_proxy;
use super::http::sandboxes::{
    __path_create, __path_delete, __path_endpoint, __path_get_one, __path_list, __path_patch_metadata,
    __path_pause, __path_renew, __path_resume, __path_start,
};
use super::http::snapshots::{
    __path_create_snapshot, __path_delete_snapshot, __path_fork, __path_get_snapshot, __path_list_snapshots,
};
use super::http::system::{__path_health, __path_version};
use super::http::templates::{
    __path_build_log, __path_create as __path_create_template, __path_delete as __path_delete_template,
    __path_export_many, __path_export_one, __path_get_one as __path_get_template, __path_import,
    __path_list as __path_list_templates, __path_rollback, __path_update as __path_update_template,
    __path_version as __path_template_version, __path_versions as __path_template_versions,
};
use super::http::tokens::{__path_current, __path_mint, __path_revoke};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "sandboxd",
        description = "Sandbox lifecycle server on the Docker Engine, speaking the OpenSandbox lifecycle contract. \
                       Every route is served at / and under /v1 (except /version and /metrics, bare only, and /metrics/events, \
                       at /v1/metrics/events only). Every response carries X-Request-ID. \
                       /sandboxes/{id}/networkpolicy answers 501; /pools serves warm pools on Docker. Callers authenticate with the server's API key \
                       (OPEN-SANDBOX-API-KEY: the admin `root`) or a user token from POST /v1/tokens \
                       (Authorization: Bearer); a sandbox belongs to its creator, and someone else's is 404 to \
                       everyone but admins. Every API route takes from one of the caller's rate classes \
                       (create: POST /sandboxes, POST /templates, POST /prepulls, POST /templates/{idOrName}/prepull, POST /pools, POST /pools/{name}/acquire, \
                       POST /executions, POST /sandboxes/{id}/snapshots, POST /sandboxes/{id}/fork; exec: POST /sandboxes/{id}/executions[/batch]; read: the others); \
                       a spent class answers 429 RATE_LIMIT::EXCEEDED with \
                       Retry-After (whole seconds), RateLimit-Policy and RateLimit. /health, /version and the proxy are never limited.",
        license(name = "Apache-2.0")
    ),
    paths(
        health, version, prometheus_metrics, metrics_summary, metrics_event, create, list, get_one, delete, patch_metadata, pause, resume, start, renew,
        endpoint, diagnostics, proxy, mint_ticket, mint, current, revoke, create_template, list_templates, get_template, update_template,
        delete_template, template_versions, template_version, build_log, rollback, export_one, export_many, import,
        create_prepull, list_prepulls, get_prepull, delete_prepull, prepull_events, prepull_template,
        create_pool, list_pools, get_pool, update_pool, delete_pool, acquire, release,
        sandbox_events, list_containers, get_container, container_status, container_logs,
        create_execution, create_one_shot, create_batch, get_batch, get_execution, execution_result, cancel_execution,
        list_executions, execution_events,
        create_snapshot, list_snapshots, get_snapshot, delete_snapshot, fork
    ),
    components(schemas(crate::wire::lifecycle::LifecycleError, crate::wire::lifecycle::SandboxStatus,
        crate::wire::lifecycle::ImageSpec, crate::wire::lifecycle::PlatformSpec, crate::wire::lifecycle::Volume,
        crate::wire::lifecycle::Pagination, crate::wire::errors::DetailedError)),
    modifiers(&AUTH, &BEARER, &ErrorCatalog, &RateLimited, &SSE_EVENTS),
    security(("api_key" = []), ("bearer" = []))
)]
struct ApiDoc;

const AUTH: crate::wire::openapi::HeaderKey = crate::wire::openapi::HeaderKey {
    scheme: "api_key",
    header: "OPEN-SANDBOX-API-KEY",
};

/// Every `text/event-stream` answer (`/prepulls/{id}/events`) as the events a client parses.
const SSE_EVENTS: crate::wire::openapi::SseEvents = crate::wire::openapi::SseEvents;

/// `Authorization: Bearer <JWT>` (user tokens from `POST /v1/tokens`).
struct Bearer;

const BEARER: Bearer = Bearer;

impl utoipa::Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some("a sandboxd user token (HS256), from POST /v1/tokens"))
                    .build(),
            ),
        );
    }
}

/// 429 on every rate-limited operation: everything but `/health`, `/version` and the proxy
/// (found by API fuzzing fast enough to spend the `read` class).
struct RateLimited;

impl utoipa::Modify for RateLimited {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::header::HeaderBuilder;
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder, Type};

        let limited = || {
            ResponseBuilder::new()
                .description(
                    "`RATE_LIMIT::EXCEEDED`: the caller's rate class for this route is spent; retry after `Retry-After` seconds",
                )
                .header(
                    "Retry-After",
                    HeaderBuilder::new()
                        .schema(Some(utoipa::openapi::ObjectBuilder::new().schema_type(Type::Integer)))
                        .description(Some("whole seconds, at least 1"))
                        .build(),
                )
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("LifecycleError")))
                        .build(),
                )
                .build()
        };
        for (path, item) in openapi.paths.paths.iter_mut() {
            if path == "/health" || path == "/version" || path.contains("/proxy/") {
                continue;
            }
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.options,
                &mut item.head,
                &mut item.patch,
                &mut item.trace,
            ];
            for op in operations.into_iter().flatten() {
                op.responses
                    .responses
                    .entry("429".to_owned())
                    .or_insert_with(|| limited().into());
            }
        }
    }
}

/// Appends the error catalog to the description: the detailed body and the codes by status.
struct ErrorCatalog;

impl utoipa::Modify for ErrorCatalog {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let description = openapi.info.description.get_or_insert_with(String::new);
        description.push_str(
            "\n\nErrors are `{code, message}` (`LifecycleError`). A request with the header `X-Error-Format: detailed` \
             gets `DetailedError` instead, the same two fields plus seed 004's (any other value: the default body). \
             The catalogued codes by status (docs/errors.md has each one's meaning, seed-004 alias and solution):\n\n",
        );
        description.push_str(&crate::wire::errors::by_status());
    }
}

/// The document as YAML.
pub fn yaml() -> String {
    crate::wire::openapi::yaml(ApiDoc::openapi())
}

#[cfg(test)]
mod tests {
    #[test]
    fn issue20_every_rate_limited_operation_documents_its_429() {
        let doc = <super::ApiDoc as utoipa::OpenApi>::openapi();
        let mut seen = 0;
        for (path, item) in &doc.paths.paths {
            let limited = !(path == "/health" || path == "/version" || path.contains("/proxy/"));
            for op in [&item.get, &item.post, &item.put, &item.patch, &item.delete]
                .into_iter()
                .flatten()
            {
                assert_eq!(op.responses.responses.contains_key("429"), limited, "{path}");
                seen += usize::from(limited);
            }
        }
        assert!(seen > 10, "only {seen} limited operations");
    }

    #[test]
    fn proto_matches_code() {
        crate::wire::openapi::assert_proto_matches("sandboxd.yaml", &super::yaml());
    }

    /// Issue 20, found by schemathesis (scripts/api-fuzz.sh): the server proxy answered port 0
    /// with an undocumented 400, its port had no bounds in the document.
    #[test]
    fn issue20_the_proxy_port_is_bounded_and_its_400_documented() {
        use utoipa::OpenApi;
        let doc = serde_json::to_value(super::ApiDoc::openapi()).unwrap();
        let proxy = &doc["paths"]["/sandboxes/{id}/proxy/{port}/{path}"];
        for method in ["get", "post", "put", "patch", "delete", "head", "options"] {
            let op = &proxy[method];
            let port = op["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == "port")
                .unwrap();
            assert_eq!(port["schema"]["minimum"], 1, "{method}: {port}");
            assert_eq!(port["schema"]["maximum"], 65535, "{method}: {port}");
            assert!(op["responses"].get("400").is_some(), "{method}");
        }
    }
}
