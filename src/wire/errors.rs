//! sandboxd's error catalog: every code its lifecycle API can answer with, its HTTP status, the
//! seed-004 alias (`error_code`), a description, a solution and whether a retry can help. The
//! HTTP edge takes its codes from here only (an `ApiError` holds a `&'static ErrorCode`), so an
//! uncatalogued code cannot reach a client. The same table renders the detailed error body
//! (`X-Error-Format: detailed`), `docs/errors.md` and the OpenAPI document's list of codes.
//!
//! Not to be confused with [`crate::wire::ErrorCode`], execd's own snake-case codes.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// One catalogued error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorCode {
    /// What `{code, message}` carries, upstream's `DOMAIN::NAME` form (or its bare
    /// `MISSING_API_KEY` style).
    pub code: &'static str,
    /// HTTP status; 200 for the execution outcomes of [`OUTCOMES`].
    pub status: u16,
    /// Other statuses the code is sent with (upstream reuses a few codes across statuses).
    pub also: &'static [u16],
    /// The seed-004 `error_code` (`Sandbox.InvalidParameter`, …).
    pub error_code: &'static str,
    /// What went wrong, in general terms (the seed's `description`).
    pub description: &'static str,
    /// What the caller can do about it.
    pub solution: &'static str,
    /// Whether the same request may succeed later unchanged.
    pub retryable: bool,
}

const fn entry(
    code: &'static str,
    status: u16,
    error_code: &'static str,
    description: &'static str,
    solution: &'static str,
    retryable: bool,
) -> ErrorCode {
    ErrorCode {
        code,
        status,
        also: &[],
        error_code,
        description,
        solution,
        retryable,
    }
}

// The seed-004 aliases. The seed names seven control-plane codes; the ones marked new extend
// its `Sandbox.` family for statuses the seed lists without naming a code.
mod alias {
    pub const INVALID_PARAMETER: &str = "Sandbox.InvalidParameter";
    pub const UNAUTHORIZED: &str = "Sandbox.Unauthorized"; // new
    pub const FORBIDDEN: &str = "Sandbox.Forbidden"; // new
    pub const SESSION_NOT_FOUND: &str = "Sandbox.SessionNotFound";
    pub const EXECUTION_NOT_FOUND: &str = "Sandbox.ExecutionNotFound";
    pub const RESOURCE_NOT_FOUND: &str = "Sandbox.ResourceNotFound"; // new
    pub const STATE_CONFLICT: &str = "Sandbox.StateConflict"; // new
    pub const TOO_MANY_REQUESTS: &str = "Sandbox.TooManyRequestsExection"; // sic: the seed's spelling
    pub const INTERNAL_ERROR: &str = "Sandbox.InternalError";
    pub const NOT_IMPLEMENTED: &str = "Sandbox.NotImplemented"; // new
    pub const BAD_GATEWAY: &str = "Sandbox.BadGateway"; // new
    pub const SERVICE_UNAVAILABLE: &str = "Sandbox.ServiceUnavailable"; // new
    pub const GATEWAY_TIMEOUT: &str = "Sandbox.GatewayTimeout"; // new
}

const SEE_SPEC: &str = "Fix the field the message names; the request schemas are in proto/sandboxd.yaml";
const REPORT: &str =
    "Retry later; if it persists, report it with the response's X-Request-ID (sandboxd's log has the cause under it)";

// 400

/// A request field is missing, malformed or out of range.
pub const SANDBOX_INVALID_PARAMETER: ErrorCode = entry(
    "SANDBOX::INVALID_PARAMETER",
    400,
    alias::INVALID_PARAMETER,
    "Invalid parameter",
    SEE_SPEC,
    false,
);
/// An execution's `language` is not one sandboxd runs.
pub const EXECUTION_UNSUPPORTED_LANGUAGE: ErrorCode = entry(
    "EXECUTION::UNSUPPORTED_LANGUAGE",
    400,
    alias::INVALID_PARAMETER,
    "Unsupported language",
    "Use python or javascript (javascript needs node in the sandbox's image)",
    false,
);
/// The list's `metadata` filter is not `k=v` pairs.
pub const INVALID_METADATA_FORMAT: ErrorCode = entry(
    "INVALID_METADATA_FORMAT",
    400,
    alias::INVALID_PARAMETER,
    "Invalid metadata filter",
    "Pass `metadata` as URL-encoded `k=v` pairs joined by `&` (e.g. `metadata=team%3Dml%26env%3Ddev`)",
    false,
);
/// The image cannot be found or pulled.
pub const SANDBOX_IMAGE_NOT_FOUND: ErrorCode = entry(
    "SANDBOX::IMAGE_NOT_FOUND",
    400,
    alias::INVALID_PARAMETER,
    "Image not found",
    "Check the image name and tag, and that the engine can pull it (registry reachable, credentials given)",
    false,
);
/// A template's spec is invalid.
pub const TEMPLATE_INVALID_SPEC: ErrorCode = entry(
    "TEMPLATE::INVALID_SPEC",
    400,
    alias::INVALID_PARAMETER,
    "Invalid template spec",
    SEE_SPEC,
    false,
);
/// A template import (YAML) cannot be read.
pub const TEMPLATE_IMPORT_INVALID: ErrorCode = entry(
    "TEMPLATE::IMPORT_INVALID",
    400,
    alias::INVALID_PARAMETER,
    "Invalid template import",
    "Fix the YAML document at the place the message names; an export of an existing template shows the format",
    false,
);
/// A prepull names an image reference that cannot be parsed.
pub const PREPULL_INVALID_IMAGE: ErrorCode = entry(
    "PREPULL::INVALID_IMAGE",
    400,
    alias::INVALID_PARAMETER,
    "Invalid image reference",
    "Give the image as `[registry/]name[:tag|@digest]`",
    false,
);
/// A diagnostics `scope` this server does not know.
pub const DIAGNOSTICS_SCOPE_UNSUPPORTED: ErrorCode = entry(
    "DIAGNOSTICS_SCOPE_UNSUPPORTED",
    400,
    alias::INVALID_PARAMETER,
    "Unsupported diagnostics scope",
    "Use a scope the message lists (logs: container, lifecycle, process, all; events: lifecycle, runtime, all)",
    false,
);

// 401

/// No credential.
pub const MISSING_API_KEY: ErrorCode = entry(
    "MISSING_API_KEY",
    401,
    alias::UNAUTHORIZED,
    "Credential missing",
    "Send the API key in OPEN-SANDBOX-API-KEY, or a token in `Authorization: Bearer`",
    false,
);
/// The API key is wrong.
pub const INVALID_API_KEY: ErrorCode = entry(
    "INVALID_API_KEY",
    401,
    alias::UNAUTHORIZED,
    "Invalid API key",
    "Send the key sandboxd was started with (--api-key / SANDBOXD_API_KEY)",
    false,
);
/// A bearer token that is malformed, badly signed or of an unknown key.
pub const AUTH_INVALID_TOKEN: ErrorCode = entry(
    "AUTH::INVALID_TOKEN",
    401,
    alias::UNAUTHORIZED,
    "Invalid token",
    "Send a token minted by this sandboxd (POST /v1/tokens), unaltered",
    false,
);
/// A bearer token past its expiry.
pub const AUTH_TOKEN_EXPIRED: ErrorCode = entry(
    "AUTH::TOKEN_EXPIRED",
    401,
    alias::UNAUTHORIZED,
    "Token expired",
    "Mint a new token (POST /v1/tokens)",
    false,
);
/// A bearer token that was revoked.
pub const AUTH_TOKEN_REVOKED: ErrorCode = entry(
    "AUTH::TOKEN_REVOKED",
    401,
    alias::UNAUTHORIZED,
    "Token revoked",
    "Mint a new token (POST /v1/tokens)",
    false,
);

// 403

/// The caller's role does not allow the action.
pub const AUTH_FORBIDDEN: ErrorCode = entry(
    "AUTH::FORBIDDEN",
    403,
    alias::FORBIDDEN,
    "Forbidden",
    "Use a principal whose role allows the action (the message names the role needed)",
    false,
);
/// The caller is at a quota.
pub const QUOTA_EXCEEDED: ErrorCode = entry(
    "QUOTA::EXCEEDED",
    403,
    alias::FORBIDDEN,
    "Quota exceeded",
    "Delete resources you no longer need, or ask an admin for a higher quota",
    false,
);
/// The diagnostics routes are disabled on this server.
pub const DIAGNOSTICS_DISABLED: ErrorCode = entry(
    "DIAGNOSTICS::DISABLED",
    403,
    alias::FORBIDDEN,
    "Diagnostics disabled",
    "Ask the operator to enable diagnostics on this server",
    false,
);
/// A host volume outside the allowed prefixes.
pub const SANDBOX_HOST_PATH_NOT_ALLOWED: ErrorCode = entry(
    "SANDBOX::HOST_PATH_NOT_ALLOWED",
    403,
    alias::FORBIDDEN,
    "Host path not allowed",
    "Bind only paths under the server's --allow-host-path prefixes, or use a named (pvc) volume",
    false,
);

// 404

/// No such sandbox (or not the caller's).
pub const SANDBOX_NOT_FOUND: ErrorCode = entry(
    "SANDBOX::NOT_FOUND",
    404,
    alias::SESSION_NOT_FOUND,
    "Sandbox not found",
    "Check the sandbox id; a sandbox is gone once deleted or expired (GET /v1/sandboxes lists yours)",
    false,
);
/// No container sandboxd manages by that id or name (or not the caller's).
pub const CONTAINER_NOT_FOUND: ErrorCode = entry(
    "CONTAINER::NOT_FOUND",
    404,
    alias::RESOURCE_NOT_FOUND,
    "Container not found",
    "Check the id: a container id (at least 12 hex digits), a container name or a sandbox id; GET /v1/containers lists yours",
    false,
);
/// No such user token (or not the caller's).
pub const AUTH_TOKEN_NOT_FOUND: ErrorCode = entry(
    "AUTH::TOKEN_NOT_FOUND",
    404,
    alias::RESOURCE_NOT_FOUND,
    "Token not found",
    "Check the token id (GET /v1/tokens/current shows your own); a non-admin may revoke only its own tokens",
    false,
);
/// Upstream's Docker runtime's name for [`SANDBOX_NOT_FOUND`].
pub const DOCKER_SANDBOX_NOT_FOUND: ErrorCode = entry(
    "DOCKER::SANDBOX_NOT_FOUND",
    404,
    alias::SESSION_NOT_FOUND,
    "Sandbox not found",
    "Check the sandbox id; a sandbox is gone once deleted or expired (GET /v1/sandboxes lists yours)",
    false,
);
/// No such execution.
pub const EXECUTION_NOT_FOUND: ErrorCode = entry(
    "EXECUTION::NOT_FOUND",
    404,
    alias::EXECUTION_NOT_FOUND,
    "Execution not found",
    "Check the execution id; finished executions are kept for a limited time",
    false,
);
/// No such template.
pub const TEMPLATE_NOT_FOUND: ErrorCode = entry(
    "TEMPLATE::NOT_FOUND",
    404,
    alias::RESOURCE_NOT_FOUND,
    "Template not found",
    "Check the template id (GET /v1/templates lists them)",
    false,
);
/// No such version of a template.
pub const TEMPLATE_VERSION_NOT_FOUND: ErrorCode = entry(
    "TEMPLATE::VERSION_NOT_FOUND",
    404,
    alias::RESOURCE_NOT_FOUND,
    "Template version not found",
    "Check the version number (the template's versions route lists them)",
    false,
);
/// No such pool.
pub const POOL_NOT_FOUND: ErrorCode = entry(
    "POOL::NOT_FOUND",
    404,
    alias::RESOURCE_NOT_FOUND,
    "Pool not found",
    "Check the pool name (GET /v1/pools lists them)",
    false,
);
/// No such prepull task.
pub const PREPULL_NOT_FOUND: ErrorCode = entry(
    "PREPULL::NOT_FOUND",
    404,
    alias::RESOURCE_NOT_FOUND,
    "Prepull task not found",
    "Check the task id",
    false,
);
/// No such snapshot (or not the caller's).
pub const SNAPSHOT_NOT_FOUND: ErrorCode = entry(
    "SNAPSHOT::NOT_FOUND",
    404,
    alias::RESOURCE_NOT_FOUND,
    "Snapshot not found",
    "Check the snapshot id (GET /v1/snapshots lists yours); a snapshot is gone once deleted",
    false,
);
/// No route serves the path.
pub const GENERAL_NOT_FOUND: ErrorCode = entry(
    "GENERAL::NOT_FOUND",
    404,
    alias::RESOURCE_NOT_FOUND,
    "No such route",
    "Check the method and path against proto/sandboxd.yaml (routes are served at / and under /v1)",
    false,
);

// 405

/// The route exists, but not for this method.
pub const GENERAL_METHOD_NOT_ALLOWED: ErrorCode = entry(
    "GENERAL::METHOD_NOT_ALLOWED",
    405,
    alias::INVALID_PARAMETER,
    "Method not allowed",
    "Use one of the methods the Allow header lists",
    false,
);

// 409

/// The sandbox is not running (pause, the server proxy).
pub const DOCKER_SANDBOX_NOT_RUNNING: ErrorCode = entry(
    "DOCKER::SANDBOX_NOT_RUNNING",
    409,
    alias::STATE_CONFLICT,
    "Sandbox not running",
    "Wait until the sandbox is Running (GET the sandbox), or resume it if it is Paused",
    false,
);
/// Resume on a sandbox that is not paused.
pub const DOCKER_SANDBOX_NOT_PAUSED: ErrorCode = entry(
    "DOCKER::SANDBOX_NOT_PAUSED",
    409,
    alias::STATE_CONFLICT,
    "Sandbox not paused",
    "Only a Paused sandbox can be resumed; GET the sandbox to see its state",
    false,
);
/// The sandbox's state forbids the operation (the message says which).
pub const SANDBOX_INVALID_STATE: ErrorCode = entry(
    "SANDBOX::INVALID_STATE",
    409,
    alias::STATE_CONFLICT,
    "Invalid sandbox state",
    "GET the sandbox to see its state; the message names the conflict",
    false,
);
/// A template change conflicts with its current version.
pub const TEMPLATE_CONFLICT: ErrorCode = entry(
    "TEMPLATE::CONFLICT",
    409,
    alias::STATE_CONFLICT,
    "Template conflict",
    "Re-read the template and apply the change to its current version",
    false,
);
/// A template that sandboxes or pools still use.
pub const TEMPLATE_IN_USE: ErrorCode = entry(
    "TEMPLATE::IN_USE",
    409,
    alias::STATE_CONFLICT,
    "Template in use",
    "Delete the sandboxes and pools that use the template first",
    false,
);
/// A template whose build has not finished.
pub const TEMPLATE_NOT_READY: ErrorCode = entry(
    "TEMPLATE::NOT_READY",
    409,
    alias::STATE_CONFLICT,
    "Template not ready",
    "Wait until the template's status is Ready",
    true,
);
/// A snapshot that sandboxes were made from.
pub const SNAPSHOT_IN_USE: ErrorCode = entry(
    "SNAPSHOT::IN_USE",
    409,
    alias::STATE_CONFLICT,
    "Snapshot in use",
    "Delete the sandboxes made from the snapshot first (GET /v1/sandboxes shows their snapshotId)",
    false,
);
/// A snapshot that is not Ready: still being taken, failed, or being deleted.
pub const SNAPSHOT_NOT_READY: ErrorCode = entry(
    "SNAPSHOT::NOT_READY",
    409,
    alias::STATE_CONFLICT,
    "Snapshot not ready",
    "Poll GET /v1/snapshots/{id} until its state is Ready; a Failed snapshot says why in its status and can only be deleted",
    true,
);
/// A pool of that name exists.
pub const POOL_ALREADY_EXISTS: ErrorCode = entry(
    "POOL::ALREADY_EXISTS",
    409,
    alias::STATE_CONFLICT,
    "Pool already exists",
    "Choose another name, or update the existing pool",
    false,
);
/// Release of a sandbox the pool has not handed out.
pub const POOL_NOT_ALLOCATED: ErrorCode = entry(
    "POOL::NOT_ALLOCATED",
    409,
    alias::STATE_CONFLICT,
    "Sandbox not allocated from the pool",
    "Release only sandboxes acquired from this pool",
    false,
);
/// The result of an execution that is still running.
pub const EXECUTION_NOT_FINISHED: ErrorCode = entry(
    "EXECUTION::NOT_FINISHED",
    409,
    alias::STATE_CONFLICT,
    "Execution not finished",
    "Poll the execution's status until it is finished, then fetch the result",
    true,
);
/// A cancel of an execution that has ended.
pub const EXECUTION_ALREADY_FINISHED: ErrorCode = entry(
    "EXECUTION::ALREADY_FINISHED",
    409,
    alias::STATE_CONFLICT,
    "Execution already finished",
    "Nothing to cancel: read its result",
    false,
);
/// An isolated execution where execd cannot isolate.
pub const EXECUTION_ISOLATION_UNAVAILABLE: ErrorCode = entry(
    "EXECUTION::ISOLATION_UNAVAILABLE",
    409,
    alias::STATE_CONFLICT,
    "Isolation unavailable",
    "Create the sandbox with extensions[\"bootstrap.execd.isolation\"]=\"enable\", or run without isolated: true",
    false,
);

// 413

/// A body over the limit.
pub const SANDBOX_PAYLOAD_TOO_LARGE: ErrorCode = entry(
    "SANDBOX::PAYLOAD_TOO_LARGE",
    413,
    alias::INVALID_PARAMETER,
    "Payload too large",
    "Send a smaller body (JSON at most 1 MiB, YAML at most 4 MiB); move large files through the file routes",
    false,
);
/// The client stopped sending its body.
pub const SANDBOX_REQUEST_TIMEOUT: ErrorCode = entry(
    "SANDBOX::REQUEST_TIMEOUT",
    408,
    alias::INVALID_PARAMETER,
    "Request body timed out",
    "Send the whole body without pausing longer than the server's body idle timeout (--body-idle-timeout-ms)",
    true,
);

// 429

/// The caller's rate limit is spent.
pub const RATE_LIMIT_EXCEEDED: ErrorCode = entry(
    "RATE_LIMIT::EXCEEDED",
    429,
    alias::TOO_MANY_REQUESTS,
    "Rate limit exceeded",
    "Wait the seconds Retry-After says, then retry",
    true,
);
/// The pool has no free sandbox.
pub const POOL_CAPACITY_EXHAUSTED: ErrorCode = entry(
    "POOL::CAPACITY_EXHAUSTED",
    429,
    alias::TOO_MANY_REQUESTS,
    "No free sandbox in the pool",
    "Wait the seconds Retry-After says, release sandboxes you no longer need, or grow the pool",
    true,
);

// 500

/// sandboxd failed (its store, its own logic, a freezer that kept giving up).
pub const SANDBOX_INTERNAL_ERROR: ErrorCode = entry(
    "SANDBOX::INTERNAL_ERROR",
    500,
    alias::INTERNAL_ERROR,
    "Internal error",
    REPORT,
    true,
);
/// A failure sandboxd cannot classify.
pub const SANDBOX_UNKNOWN_ERROR: ErrorCode = entry(
    "SANDBOX::UNKNOWN_ERROR",
    500,
    alias::INTERNAL_ERROR,
    "Unknown error",
    REPORT,
    true,
);
/// The container runtime failed, or the sandbox did not come up (the message then holds its
/// exit and last output).
pub const SANDBOX_RUNTIME_ERROR: ErrorCode = entry(
    "SANDBOX::RUNTIME_ERROR",
    500,
    alias::INTERNAL_ERROR,
    "Runtime error",
    "If the message holds the sandbox's own output, fix its image or entrypoint; otherwise retry, and report it with the X-Request-ID if it persists",
    false,
);

// 501

/// A contract route or field this runtime does not serve (400 for a request field, 501 for a
/// route).
pub const SANDBOX_API_NOT_SUPPORTED: ErrorCode = ErrorCode {
    also: &[400],
    ..entry(
        "SANDBOX::API_NOT_SUPPORTED",
        501,
        alias::NOT_IMPLEMENTED,
        "Not supported by this runtime",
        "Leave the field out, or use a server whose runtime offers it (the message names what)",
        false,
    )
};
/// Upstream's code for template management on a non-Kubernetes runtime.
pub const FSB_API_NOT_SUPPORTED: ErrorCode = entry(
    "FSB::API_NOT_SUPPORTED",
    501,
    alias::NOT_IMPLEMENTED,
    "Not supported by this runtime",
    "Use a server whose runtime offers it (the message names what)",
    false,
);

// 502

/// The server proxy cannot reach the sandbox port.
pub const SANDBOX_PROXY_ERROR: ErrorCode = entry(
    "SANDBOX::PROXY_ERROR",
    502,
    alias::BAD_GATEWAY,
    "Sandbox port unreachable",
    "Check that a program in the sandbox listens on the port (on 0.0.0.0), then retry",
    true,
);

// 503

/// The container runtime (Docker or the Kubernetes API) cannot be reached.
pub const SANDBOX_RUNTIME_UNAVAILABLE: ErrorCode = entry(
    "SANDBOX::RUNTIME_UNAVAILABLE",
    503,
    alias::SERVICE_UNAVAILABLE,
    "Runtime unavailable",
    "Retry later; the operator should check that the container engine is up",
    true,
);

// 504

/// A sandbox's pod was not Ready within the Kubernetes create timeout (upstream's code); the
/// pod was deleted.
pub const KUBERNETES_POD_READY_TIMEOUT: ErrorCode = entry(
    "KUBERNETES::POD_READY_TIMEOUT",
    504,
    alias::GATEWAY_TIMEOUT,
    "Pod not ready in time",
    "Retry; if it persists, the cluster could not schedule or start the pod in time (its events name why: resources, volumes, node capacity), or raise --kube-create-timeout",
    true,
);

// Execution outcomes: not HTTP errors, but `error.code` in a 200 result.

/// The handler raised.
pub const EXECUTION_HANDLER_ERROR: ErrorCode = entry(
    "EXECUTION::HANDLER_ERROR",
    200,
    "Sandbox.ExecException",
    "The handler raised an exception",
    "Read the traceback in the result's error and fix the handler",
    false,
);
/// The handler ran past its timeout.
pub const EXECUTION_TIMEOUT: ErrorCode = entry(
    "EXECUTION::TIMEOUT",
    200,
    "Sandbox.ExecTimeout",
    "The execution timed out",
    "Raise the execution's timeout, or make the handler faster",
    false,
);
/// The code defines no function of the handler's name.
pub const EXECUTION_HANDLER_NOT_FOUND: ErrorCode = entry(
    "EXECUTION::HANDLER_NOT_FOUND",
    200,
    "Sandbox.ExecException",
    "The handler function is not defined by the code",
    "Define the function named by `handler` (default `handler`) at the module's top level",
    false,
);
/// The handler returned something that is not JSON.
pub const EXECUTION_RESULT_NOT_SERIALIZABLE: ErrorCode = entry(
    "EXECUTION::RESULT_NOT_SERIALIZABLE",
    200,
    "Sandbox.ExecException",
    "The handler's return value is not JSON",
    "Return JSON values only: dicts, lists, strings, numbers, booleans and None",
    false,
);
/// The handler's result is over 10 MiB.
pub const EXECUTION_RESULT_TOO_LARGE: ErrorCode = entry(
    "EXECUTION::RESULT_TOO_LARGE",
    200,
    "Sandbox.ExecException",
    "The handler's result is larger than 10 MiB",
    "Return less, or write large data to a file and return its path",
    false,
);
/// No `python3` (or `node`) in the image.
pub const EXECUTION_RUNTIME_NOT_FOUND: ErrorCode = entry(
    "EXECUTION::RUNTIME_NOT_FOUND",
    200,
    "Sandbox.ExecException",
    "The language's interpreter is not in the sandbox's image",
    "Use an image with python3 (or node for javascript)",
    false,
);
/// A command exited non-zero (or was killed by a signal).
pub const EXECUTION_COMMAND_FAILED: ErrorCode = entry(
    "EXECUTION::COMMAND_FAILED",
    200,
    "Sandbox.ExecException",
    "The command exited with a non-zero code",
    "Read stderr and the exit code",
    false,
);
/// Code raised in its context.
pub const EXECUTION_CODE_ERROR: ErrorCode = entry(
    "EXECUTION::CODE_ERROR",
    200,
    "Sandbox.ExecException",
    "The code raised an error",
    "Read the error's name, value and traceback",
    false,
);
/// Cancelled by a delete, or by `stopOnError` of its batch.
pub const EXECUTION_CANCELLED: ErrorCode = entry(
    "EXECUTION::CANCELLED",
    200,
    "Sandbox.ExecException",
    "The execution was cancelled",
    "Submit it again if it is still wanted",
    false,
);
/// execd and the runtime both said the executor is gone.
pub const EXECUTION_EXECUTOR_LOST: ErrorCode = entry(
    "EXECUTION::EXECUTOR_LOST",
    200,
    "Sandbox.ExecException",
    "The sandbox's executor went away during the execution",
    "Check the sandbox (it may have exited or been deleted) and submit again",
    false,
);
/// execd refused the run or failed it (an unknown context, a bad cwd).
pub const EXECUTION_EXECUTOR_ERROR: ErrorCode = entry(
    "EXECUTION::EXECUTOR_ERROR",
    200,
    "Sandbox.ExecException",
    "The sandbox's executor refused or failed the run",
    "Read the message; check cwd, the code context and the sandbox",
    false,
);
/// One-shot: the sandbox could not be made.
pub const EXECUTION_SANDBOX_FAILED: ErrorCode = entry(
    "EXECUTION::SANDBOX_FAILED",
    200,
    "Sandbox.ExecException",
    "A one-shot execution's sandbox could not be made",
    "Read the message; check the template",
    false,
);

/// Every code the lifecycle API answers with, by status.
pub static ALL: &[&ErrorCode] = &[
    &SANDBOX_INVALID_PARAMETER,
    &INVALID_METADATA_FORMAT,
    &SANDBOX_IMAGE_NOT_FOUND,
    &TEMPLATE_INVALID_SPEC,
    &TEMPLATE_IMPORT_INVALID,
    &PREPULL_INVALID_IMAGE,
    &EXECUTION_UNSUPPORTED_LANGUAGE,
    &DIAGNOSTICS_SCOPE_UNSUPPORTED,
    &MISSING_API_KEY,
    &INVALID_API_KEY,
    &AUTH_INVALID_TOKEN,
    &AUTH_TOKEN_EXPIRED,
    &AUTH_TOKEN_REVOKED,
    &AUTH_FORBIDDEN,
    &QUOTA_EXCEEDED,
    &DIAGNOSTICS_DISABLED,
    &SANDBOX_HOST_PATH_NOT_ALLOWED,
    &SANDBOX_NOT_FOUND,
    &DOCKER_SANDBOX_NOT_FOUND,
    &EXECUTION_NOT_FOUND,
    &TEMPLATE_NOT_FOUND,
    &TEMPLATE_VERSION_NOT_FOUND,
    &POOL_NOT_FOUND,
    &PREPULL_NOT_FOUND,
    &CONTAINER_NOT_FOUND,
    &SNAPSHOT_NOT_FOUND,
    &GENERAL_NOT_FOUND,
    &GENERAL_METHOD_NOT_ALLOWED,
    &DOCKER_SANDBOX_NOT_RUNNING,
    &DOCKER_SANDBOX_NOT_PAUSED,
    &SANDBOX_INVALID_STATE,
    &TEMPLATE_CONFLICT,
    &TEMPLATE_IN_USE,
    &TEMPLATE_NOT_READY,
    &SNAPSHOT_IN_USE,
    &SNAPSHOT_NOT_READY,
    &POOL_ALREADY_EXISTS,
    &POOL_NOT_ALLOCATED,
    &EXECUTION_NOT_FINISHED,
    &EXECUTION_ALREADY_FINISHED,
    &EXECUTION_ISOLATION_UNAVAILABLE,
    &SANDBOX_PAYLOAD_TOO_LARGE,
    &SANDBOX_REQUEST_TIMEOUT,
    &AUTH_TOKEN_NOT_FOUND,
    &RATE_LIMIT_EXCEEDED,
    &POOL_CAPACITY_EXHAUSTED,
    &SANDBOX_INTERNAL_ERROR,
    &SANDBOX_UNKNOWN_ERROR,
    &SANDBOX_RUNTIME_ERROR,
    &SANDBOX_API_NOT_SUPPORTED,
    &FSB_API_NOT_SUPPORTED,
    &SANDBOX_PROXY_ERROR,
    &SANDBOX_RUNTIME_UNAVAILABLE,
    &KUBERNETES_POD_READY_TIMEOUT,
];

/// The execution outcomes: codes of a 200 result's `error`, never of an HTTP error.
pub static OUTCOMES: &[&ErrorCode] = &[
    &EXECUTION_HANDLER_ERROR,
    &EXECUTION_TIMEOUT,
    &EXECUTION_HANDLER_NOT_FOUND,
    &EXECUTION_RESULT_NOT_SERIALIZABLE,
    &EXECUTION_RESULT_TOO_LARGE,
    &EXECUTION_RUNTIME_NOT_FOUND,
    &EXECUTION_COMMAND_FAILED,
    &EXECUTION_CODE_ERROR,
    &EXECUTION_CANCELLED,
    &EXECUTION_EXECUTOR_LOST,
    &EXECUTION_EXECUTOR_ERROR,
    &EXECUTION_SANDBOX_FAILED,
];

/// The HTTP error with this code.
pub fn lookup(code: &str) -> Option<&'static ErrorCode> {
    ALL.iter().copied().find(|e| e.code == code)
}

/// The code that stands for an error response no handler described (axum's 405, a rejection
/// outside sandboxd's extractors): the most general one of its status.
pub fn for_status(status: u16) -> &'static ErrorCode {
    match status {
        401 => &MISSING_API_KEY,
        403 => &AUTH_FORBIDDEN,
        404 => &GENERAL_NOT_FOUND,
        405 => &GENERAL_METHOD_NOT_ALLOWED,
        409 => &SANDBOX_INVALID_STATE,
        408 => &SANDBOX_REQUEST_TIMEOUT,
        413 => &SANDBOX_PAYLOAD_TOO_LARGE,
        429 => &RATE_LIMIT_EXCEEDED,
        501 => &SANDBOX_API_NOT_SUPPORTED,
        502 => &SANDBOX_PROXY_ERROR,
        503 => &SANDBOX_RUNTIME_UNAVAILABLE,
        s if s >= 500 => &SANDBOX_UNKNOWN_ERROR,
        _ => &SANDBOX_INVALID_PARAMETER,
    }
}

/// The error body a request with `X-Error-Format: detailed` gets: `{code, message}` plus seed
/// 004's fields, so a parser of either shape reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DetailedError {
    /// The catalogued code, as in the default body.
    pub code: String,
    /// For people, as in the default body.
    pub message: String,
    /// The seed-004 alias (`Sandbox.InvalidParameter`, …).
    pub error_code: String,
    /// The code's general description.
    pub description: String,
    /// This occurrence: the same text as `message`.
    pub error_detail: String,
    /// The code's entry in the error docs; only when the server has a docs base URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_link: Option<String>,
    /// What the caller can do.
    pub solution: String,
    /// The request's `X-Request-ID`.
    pub request_id: String,
}

impl ErrorCode {
    /// Whether the code is sent with `status`.
    pub fn has_status(&self, status: u16) -> bool {
        self.status == status || self.also.contains(&status)
    }

    /// Where the code is documented under the docs base URL: `<base>/errors#<code>`.
    pub fn link(&self, docs_base: &str) -> String {
        format!("{}/errors#{}", docs_base.trim_end_matches('/'), self.code)
    }

    /// The detailed body of one occurrence.
    pub fn detailed(&self, message: &str, request_id: &str, docs_base: Option<&str>) -> DetailedError {
        DetailedError {
            code: self.code.to_owned(),
            message: message.to_owned(),
            error_code: self.error_code.to_owned(),
            description: self.description.to_owned(),
            error_detail: message.to_owned(),
            error_link: docs_base.map(|base| self.link(base)),
            solution: self.solution.to_owned(),
            request_id: request_id.to_owned(),
        }
    }
}

/// `docs/errors.md`: the catalog as a page (one anchor per code, for `error_link`).
pub fn markdown() -> String {
    let mut out = String::from(
        "# sandboxd error codes\n\n\
         <!-- Generated from src/wire/errors.rs; `UPDATE_DOCS=1 cargo nextest run -j2 docs_match_catalog` rewrites it. -->\n\n\
         Every error response of sandboxd's lifecycle API is `{code, message}`. A request with the header\n\
         `X-Error-Format: detailed` gets the superset below instead (seed 004's fields added; `error_link`\n\
         only when sandboxd runs with `--errors-docs-base-url`, pointing at `<base>/errors#<code>`):\n\n\
         ```json\n\
         {\"code\": \"SANDBOX::INVALID_PARAMETER\", \"message\": \"timeout must be at least 60 seconds, got 5\",\n \
         \"error_code\": \"Sandbox.InvalidParameter\", \"description\": \"Invalid parameter\",\n \
         \"error_detail\": \"timeout must be at least 60 seconds, got 5\",\n \
         \"error_link\": \"https://docs.example.com/sandboxd/errors#SANDBOX::INVALID_PARAMETER\",\n \
         \"solution\": \"…\", \"request_id\": \"…\"}\n\
         ```\n\n\
         Any other `X-Error-Format` value gets the default body. \"Retry\" says whether the same request\n\
         may succeed later unchanged (429s carry `Retry-After`). Some codes belong to parts of sandboxd\n\
         still being built (pools); they are listed so that their\n\
         statuses and aliases are fixed in advance.\n\n\
         | code | status | seed-004 `error_code` | description | solution | retry |\n\
         |---|---|---|---|---|---|\n",
    );
    for e in ALL {
        row(&mut out, e);
    }
    out.push_str(
        "\nExecution outcomes are not HTTP errors: they are the `error.code` of a 200 execution result.\n\n\
         | code | status | seed-004 `error_code` | description | solution | retry |\n\
         |---|---|---|---|---|---|\n",
    );
    for e in OUTCOMES {
        row(&mut out, e);
    }
    out
}

fn row(out: &mut String, e: &ErrorCode) {
    let mut status = e.status.to_string();
    for other in e.also {
        status.push_str(&format!(", {other}"));
    }
    out.push_str(&format!(
        "| <a id=\"{code}\"></a>`{code}` | {status} | `{alias}` | {desc} | {solution} | {retry} |\n",
        code = e.code,
        alias = e.error_code,
        desc = e.description,
        solution = e.solution.replace('|', "\\|"),
        retry = if e.retryable { "yes" } else { "no" },
    ));
}

/// The codes by status, one line each, for the OpenAPI document's description.
pub fn by_status() -> String {
    let mut statuses: Vec<u16> = ALL
        .iter()
        .flat_map(|e| std::iter::once(e.status).chain(e.also.iter().copied()))
        .collect();
    statuses.sort_unstable();
    statuses.dedup();
    statuses
        .into_iter()
        .map(|s| {
            let codes: Vec<String> = ALL
                .iter()
                .filter(|e| e.has_status(s))
                .map(|e| format!("`{}`", e.code))
                .collect();
            format!("- {s}: {}", codes.join(", "))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn codes_are_unique_and_statuses_are_errors() {
        let mut seen = BTreeSet::new();
        for e in ALL.iter().chain(OUTCOMES) {
            assert!(seen.insert(e.code), "{} is catalogued twice", e.code);
            assert!(!e.description.is_empty() && !e.solution.is_empty(), "{}", e.code);
            assert!(e.error_code.starts_with("Sandbox."), "{}", e.code);
        }
        for e in ALL {
            for s in std::iter::once(e.status).chain(e.also.iter().copied()) {
                assert!((400..600).contains(&s), "{} has status {s}", e.code);
            }
        }
        for e in OUTCOMES {
            assert_eq!(e.status, 200, "{} is an outcome", e.code);
        }
    }

    #[test]
    fn every_declared_code_is_listed() {
        // A constant left out of ALL would be emittable but undocumented.
        let source = include_str!("errors.rs");
        let declared = source
            .lines()
            .filter(|l| l.starts_with("pub const ") && l.contains(": ErrorCode ="))
            .count();
        assert_eq!(declared, ALL.len() + OUTCOMES.len());
        for e in ALL {
            assert_eq!(lookup(e.code), Some(*e));
        }
        assert_eq!(lookup("EXECUTION::TIMEOUT"), None, "outcomes are not HTTP errors");
    }

    #[test]
    fn every_status_has_a_general_code_of_that_status() {
        for s in [
            400, 401, 403, 404, 405, 409, 413, 418, 429, 500, 501, 502, 503, 504,
        ] {
            let e = for_status(s);
            assert!(
                e.has_status(s) || (s == 418 && e.status == 400) || (s == 504 && e.status == 500),
                "{s} → {}",
                e.code
            );
        }
    }

    #[test]
    fn the_detailed_body_is_a_superset_of_the_default_and_of_the_seed() {
        let body = SANDBOX_INVALID_PARAMETER.detailed(
            "timeout must be at least 60 seconds, got 5",
            "req-1",
            Some("https://docs.example.com/sandboxd/"),
        );
        let json = serde_json::to_value(&body).unwrap();
        for field in [
            "code",
            "message",
            "error_code",
            "description",
            "error_detail",
            "error_link",
            "solution",
            "request_id",
        ] {
            assert!(
                json.get(field).is_some_and(|v| v.is_string()),
                "{field} in {json}"
            );
        }
        assert_eq!(json["error_code"], "Sandbox.InvalidParameter");
        assert_eq!(
            json["error_link"],
            "https://docs.example.com/sandboxd/errors#SANDBOX::INVALID_PARAMETER"
        );
        let without = SANDBOX_INVALID_PARAMETER.detailed("m", "r", None);
        let json = serde_json::to_value(&without).unwrap();
        assert!(json.get("error_link").is_none(), "no base, no link: {json}");
    }

    #[test]
    fn docs_match_catalog() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/errors.md");
        let generated = markdown();
        if std::env::var_os("UPDATE_DOCS").is_some() {
            std::fs::write(&path, &generated).unwrap();
        }
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            on_disk == generated,
            "docs/errors.md is out of date; run `UPDATE_DOCS=1 cargo nextest run -j2 docs_match_catalog`"
        );
    }
}
