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
    modifiers(&AUTH, &FilesystemIdentity),
    security(("access_token" = []))
)]
struct ApiDoc;

const AUTH: crate::wire::openapi::HeaderKey = crate::wire::openapi::HeaderKey {
    scheme: "access_token",
    header: "X-EXECD-ACCESS-TOKEN",
};

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
                .schema(Some(ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(0))))
                .build()
        };
        let copies: Vec<_> = openapi
            .paths
            .paths
            .iter()
            .filter(|(path, _)| path.starts_with("/files") || path.starts_with("/directories"))
            .map(|(path, item)| {
                let mut item = item.clone();
                for op in [
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
                {
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

#[cfg(test)]
mod tests {
    #[test]
    fn proto_matches_code() {
        crate::wire::openapi::assert_proto_matches("execd.yaml", &super::yaml());
    }
}
