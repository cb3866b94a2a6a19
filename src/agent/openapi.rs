//! The OpenAPI document of the agent, generated from the handlers' annotations and the wire
//! types. `proto/execd.yaml` is this document; a test fails when the two drift apart
//! (`UPDATE_PROTO=1 cargo test` rewrites the file).

use utoipa::OpenApi;

use super::http::{
    __path_command_events, __path_command_logs, __path_command_status, __path_connect_pty,
    __path_create_command, __path_create_context, __path_create_isolated_session, __path_create_pty,
    __path_create_session, __path_delete_context, __path_delete_contexts_by_language,
    __path_delete_isolated_session, __path_delete_pty, __path_delete_session, __path_download_archive,
    __path_download_file, __path_extract_archive, __path_file_info, __path_get_context,
    __path_get_isolated_session, __path_get_metrics, __path_interrupt_code, __path_interrupt_command,
    __path_isolated_capabilities, __path_isolated_run_logs, __path_isolated_run_status, __path_list_contexts,
    __path_list_directory, __path_list_isolated_sessions, __path_list_languages, __path_make_dirs,
    __path_move_files, __path_ping, __path_proxy_port, __path_pty_status, __path_remove_dirs,
    __path_remove_files, __path_replace_content, __path_run_code, __path_run_in_session, __path_run_isolated,
    __path_search_files, __path_set_permissions, __path_upload_files, __path_watch_files,
    __path_watch_metrics, __path_write_stdin,
};
use super::http::{
    __path_commit_isolated_session, __path_diff_isolated_session, __path_download_isolated_file,
    __path_isolated_file_info, __path_list_isolated_directory, __path_make_isolated_dirs,
    __path_move_isolated_files, __path_remove_isolated_dirs, __path_remove_isolated_files,
    __path_replace_isolated_content, __path_search_isolated_files, __path_set_isolated_permissions,
    __path_upload_isolated_files,
};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "execd",
        description = "In-sandbox execution agent speaking the OpenSandbox execd contract. Streams are standard \
                       SSE (`id: N`, `data: <StreamEvent JSON>`), resumable with Last-Event-ID. Every /files* and \
                       /directories* route is also served under /v1/filesystem/{uid}/{gid}, done with that fsuid/fsgid.",
        license(name = "Apache-2.0")
    ),
    paths(
        ping, create_command, interrupt_command, command_status, command_logs, command_events, write_stdin,
        create_session, run_in_session, delete_session, create_context, list_contexts, delete_contexts_by_language,
        get_context, delete_context, run_code, interrupt_code, list_languages,
        create_pty, pty_status, delete_pty, connect_pty, proxy_port,
        file_info, remove_files, set_permissions, move_files, search_files, replace_content, upload_files,
        download_file, download_archive, extract_archive, watch_files, list_directory, make_dirs, remove_dirs,
        get_metrics, watch_metrics,
        isolated_capabilities, list_isolated_sessions, create_isolated_session, get_isolated_session,
        delete_isolated_session, run_isolated, isolated_run_status, isolated_run_logs,
        isolated_file_info, download_isolated_file, upload_isolated_files, remove_isolated_files, move_isolated_files,
        set_isolated_permissions, replace_isolated_content, search_isolated_files, make_isolated_dirs,
        remove_isolated_dirs, list_isolated_directory, diff_isolated_session, commit_isolated_session
    ),
    components(schemas(crate::wire::ErrorBody, crate::wire::UnauthorizedBody, crate::wire::StreamEvent, crate::wire::Usage,
        crate::wire::pty::PtyClientFrame, crate::wire::pty::PtyServerFrame,
        crate::wire::files::FileInfo, crate::wire::files::FileMetadata, crate::wire::files::Permission,
        crate::wire::files::WatchEvent, crate::wire::files::Metrics)),
    modifiers(&AUTH, &FilesystemIdentity, &ClientErrors, &SSE_EVENTS),
    security(("access_token" = []))
)]
struct ApiDoc;

const SSE_EVENTS: crate::wire::openapi::SseEvents = crate::wire::openapi::SseEvents;

const AUTH: crate::wire::openapi::HeaderKey = crate::wire::openapi::HeaderKey {
    scheme: "access_token",
    header: "X-EXECD-ACCESS-TOKEN",
};

/// The client errors every operation of a kind can answer, whatever its handler does, added
/// where its annotation does not say them already:
/// - 401 on every operation: the token check runs before any route (`http::router`);
/// - 400 where there is input (parameters or a body): extractors reject what does not parse;
/// - 404 where the path has a parameter: an empty segment matches no route;
/// - 408 and 413 where there is a body: the client stops sending it (`crate::serve`), or a
///   JSON body is over its limit;
/// - 403 on every file route, and 507 on those that write: errno maps to them
///   (`http::error::io_status`: EACCES, EPERM, EROFS; ENOSPC, EDQUOT), whoever execd runs as.
struct ClientErrors;

impl utoipa::Modify for ClientErrors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, RefOr, Response, ResponseBuilder};

        let error = |description: &str, schema: &str| -> RefOr<Response> {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name(schema)))
                        .build(),
                )
                .build()
                .into()
        };
        for (path, item) in openapi.paths.paths.iter_mut() {
            // A file route writes when it takes a body or deletes.
            let delete_id = item.delete.as_ref().and_then(|d| d.operation_id.clone());
            for op in operations(item) {
                let writes =
                    op.request_body.is_some() || (delete_id.is_some() && op.operation_id == delete_id);
                let has_params = op.parameters.as_ref().is_some_and(|p| !p.is_empty());
                let json_body = op
                    .request_body
                    .as_ref()
                    .map(|b| matches!(b, RefOr::T(b) if b.content.contains_key("application/json")));
                let mut add = |status: &str, description: &str, schema: &str| {
                    op.responses
                        .responses
                        .entry(status.to_owned())
                        .or_insert_with(|| error(description, schema));
                };
                add(
                    "401",
                    "UNAUTHORIZED: the access token is missing or wrong",
                    "UnauthorizedBody",
                );
                if has_params || json_body.is_some() {
                    add(
                        "400",
                        "INVALID_REQUEST_BODY or MISSING_QUERY: input that does not parse",
                        "ErrorBody",
                    );
                }
                if path.contains('{') {
                    add("404", "no such resource (or an empty path segment)", "ErrorBody");
                }
                let file_route = ["/files", "/directories"].iter().any(|root| {
                    path.starts_with(root)
                        || path
                            .strip_prefix(FILESYSTEM_IDENTITY_PREFIX)
                            .is_some_and(|rest| rest.starts_with(root))
                });
                if file_route {
                    add(
                        "403",
                        "PERMISSION_DENIED: the filesystem refused (EACCES, EPERM, EROFS)",
                        "ErrorBody",
                    );
                    if writes {
                        add(
                            "507",
                            "INSUFFICIENT_STORAGE: the filesystem is full (ENOSPC, EDQUOT)",
                            "ErrorBody",
                        );
                    }
                }
                if let Some(json) = json_body {
                    add(
                        "408",
                        "REQUEST_TIMEOUT: the client stopped sending the body",
                        "ErrorBody",
                    );
                    if json {
                        add("413", "PAYLOAD_TOO_LARGE: a JSON body over 2 MiB", "ErrorBody");
                    }
                }
            }
        }
    }
}

/// Every `/files*` and `/directories*` route is served twice: as is, and under
/// `/v1/filesystem/{uid}/{gid}` with that fsuid/fsgid (`http::router`). This adds the second
/// set to the document, each operation with the two path parameters and its own id.
struct FilesystemIdentity;

/// The prefix of the identity-switched file routes.
pub(crate) const FILESYSTEM_IDENTITY_PREFIX: &str = "/v1/filesystem/{uid}/{gid}";

impl utoipa::Modify for FilesystemIdentity {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        use utoipa::openapi::Required;

        let id_param = |name: &str, what: &str| {
            ParameterBuilder::new()
                .name(name)
                .parameter_in(ParameterIn::Path)
                .required(Required::True)
                .description(Some(format!("the {what} the operation runs with")))
                .schema(Some(
                    ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(0)),
                ))
                .build()
        };
        let copies: Vec<_> = openapi
            .paths
            .paths
            .iter()
            .filter(|(path, _)| path.starts_with("/files") || path.starts_with("/directories"))
            .map(|(path, item)| {
                let mut item = item.clone();
                for op in operations(&mut item) {
                    op.operation_id = op.operation_id.take().map(|id| format!("{id}_as_identity"));
                    let params = op.parameters.get_or_insert_with(Vec::new);
                    params.insert(0, id_param("gid", "filesystem group id (fsgid)").into());
                    params.insert(0, id_param("uid", "filesystem user id (fsuid)").into());
                }
                (format!("{FILESYSTEM_IDENTITY_PREFIX}{path}"), item)
            })
            .collect();
        openapi.paths.paths.extend(copies);
    }
}

/// The document as YAML.
pub fn yaml() -> String {
    crate::wire::openapi::yaml(ApiDoc::openapi())
}

/// Every operation of a path item, whatever its method.
fn operations(
    item: &mut utoipa::openapi::PathItem,
) -> impl Iterator<Item = &mut utoipa::openapi::path::Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.options,
        &mut item.head,
        &mut item.patch,
        &mut item.trace,
    ]
    .into_iter()
    .flatten()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use utoipa::OpenApi;

    #[test]
    fn proto_matches_code() {
        crate::wire::openapi::assert_proto_matches("execd.yaml", &super::yaml());
    }

    /// Issue 20: 401 was documented on no operation, though the token check guards them all;
    /// the proxy's port had no bounds; gzip archives and the empty answer of a plain
    /// `/files/replace` had no documented content type.
    #[test]
    fn issue20_the_document_says_what_the_server_answers() {
        let doc = super::ApiDoc::openapi();
        let mut operations = 0;
        for (path, item) in &doc.paths.paths {
            for op in [&item.get, &item.put, &item.post, &item.delete, &item.patch]
                .into_iter()
                .flatten()
            {
                operations += 1;
                let statuses: Vec<&String> = op.responses.responses.keys().collect();
                assert!(statuses.iter().any(|s| *s == "401"), "{path}: {statuses:?}");
                if path.contains('{') {
                    assert!(statuses.iter().any(|s| *s == "404"), "{path}: {statuses:?}");
                }
                if op.request_body.is_some() {
                    assert!(statuses.iter().any(|s| *s == "400"), "{path}: {statuses:?}");
                }
            }
        }
        assert!(operations > 70, "walked only {operations} operations");

        let yaml = super::yaml();
        let doc: serde_json::Value = serde_json::to_value(super::ApiDoc::openapi()).unwrap();
        let port = &doc["paths"]["/proxy/{port}/{path}"]["get"]["parameters"][0]["schema"];
        assert_eq!(
            (port["minimum"].as_f64(), port["maximum"].as_f64()),
            (Some(1.0), Some(65535.0)),
            "{port}"
        );
        let archive = &doc["paths"]["/files/archive"]["get"]["responses"]["200"]["content"];
        assert!(archive.get("application/gzip").is_some(), "{archive}");
        let replace = &doc["paths"]["/files/replace"]["post"]["responses"]["200"]["content"];
        assert!(
            replace.get("text/plain").is_some() && replace.get("application/json").is_some(),
            "{replace}"
        );
        assert!(yaml.contains("TOO_MANY_SESSIONS"));
    }

    /// Issue 20, found by schemathesis (scripts/api-fuzz.sh): an SSE response's schema was the
    /// JSON of one `data:` line, where OpenAPI tools read it as the event (`id`, `event`,
    /// `data`); and the file routes answered 403 (EACCES, EROFS) undocumented, which
    /// `/v1/filesystem/{uid}/{gid}` gets for any uid that cannot read the path.
    #[test]
    fn issue20_fuzz_findings_are_documented() {
        let doc: serde_json::Value = serde_json::to_value(super::ApiDoc::openapi()).unwrap();
        let mut streams = 0;
        let mut file_ops = 0;
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                for response in op["responses"].as_object().unwrap().values() {
                    let Some(sse) = response["content"].get("text/event-stream") else {
                        continue;
                    };
                    streams += 1;
                    let data = &sse["schema"]["properties"]["data"];
                    assert_eq!(data["type"], "string", "{method} {path}: {sse}");
                    assert_eq!(data["contentMediaType"], "application/json", "{path}");
                    assert!(data["contentSchema"]["$ref"].is_string(), "{path}: {data}");
                }
                let rest = path
                    .strip_prefix(super::FILESYSTEM_IDENTITY_PREFIX)
                    .unwrap_or(path);
                if rest.starts_with("/files") || rest.starts_with("/directories") {
                    file_ops += 1;
                    let statuses = op["responses"].as_object().unwrap();
                    assert!(statuses.contains_key("403"), "{method} {path}");
                    if method != "get" {
                        assert!(statuses.contains_key("507"), "{method} {path}");
                    }
                }
            }
        }
        assert!(streams >= 7, "saw {streams} streams");
        assert!(file_ops >= 28, "saw {file_ops} file operations");
    }

    /// The port proxy is routed three ways (axum needs the bare and trailing-slash forms
    /// beside the wildcard) and documented once, as `/proxy/{port}/{path}`.
    fn documented_as(served: &str) -> &str {
        match served {
            "/proxy" | "/proxy/" | "/proxy/{*rest}" => "/proxy/{port}/{path}",
            other => other,
        }
    }

    /// Issue 19: `/v1/filesystem/{uid}/{gid}/…` was served but missing from the document.
    /// Every route the router serves is in the document, and the document names no route
    /// that is not served.
    #[test]
    fn every_served_route_is_documented() {
        let served: BTreeSet<String> = crate::agent::http::served_paths()
            .iter()
            .map(|p| documented_as(p).to_owned())
            .collect();
        let documented: BTreeSet<String> = super::ApiDoc::openapi().paths.paths.into_keys().collect();
        let undocumented: Vec<_> = served.difference(&documented).collect();
        assert!(
            undocumented.is_empty(),
            "served but not in proto/execd.yaml: {undocumented:?}"
        );
        let unserved: Vec<_> = documented.difference(&served).collect();
        assert!(unserved.is_empty(), "documented but not served: {unserved:?}");
        assert!(served.len() > 60, "the walk saw only {} routes", served.len());
    }
}
