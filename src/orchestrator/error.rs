//! The domain's errors: what went wrong, in sandboxd's terms, with no HTTP in them.
//! `http/error.rs` maps each variant to exactly one status and catalogued code; background
//! work logs them or records them in a resource's status.

use std::fmt;

use super::runtime::RuntimeError;
use super::store::StoreError;

/// A failed request or step.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No such resource (someone else's is not found either).
    #[error("{kind} {id} not found")]
    NotFound {
        /// What was looked for.
        kind: Kind,
        /// Its id as given.
        id: String,
    },
    /// The request is malformed or asks for something invalid; the message names the field.
    #[error("{0}")]
    Invalid(String),
    /// A template spec is invalid; the message names the field.
    #[error("{0}")]
    InvalidSpec(String),
    /// A YAML import cannot be read; the message has the line and column.
    #[error("{0}")]
    ImportInvalid(String),
    /// A prepull's image reference does not parse.
    #[error("{0}")]
    InvalidImage(String),
    /// An execution's language is not one sandboxd runs.
    #[error("{0}")]
    UnsupportedLanguage(String),
    /// The list's `metadata` filter is not `k=v` pairs.
    #[error("{0}")]
    InvalidMetadataFilter(String),
    /// A diagnostics `scope` this server does not serve for that kind.
    #[error("unsupported {kind} scope {scope:?}; supported scopes: {}", .supported.join(", "))]
    ScopeUnsupported {
        /// `logs` or `events`.
        kind: &'static str,
        /// What was asked for.
        scope: String,
        /// What is served.
        supported: &'static [&'static str],
    },
    /// A request field that is valid but not something this runtime does.
    #[error("{0}")]
    UnsupportedField(String),
    /// A route of the contract that this runtime does not offer.
    #[error("{}", .0.message())]
    Unsupported(Feature),
    /// A host path outside the configured prefixes.
    #[error("{0}")]
    HostPathNotAllowed(String),
    /// The client stopped sending its body.
    #[error("the request body stalled (no bytes for the body idle timeout)")]
    BodyTimeout,
    /// A body over the limit.
    #[error("the body is larger than {limit} bytes")]
    TooLarge {
        /// The limit, bytes.
        limit: usize,
    },
    /// The resource's state forbids the operation.
    #[error("{0}")]
    Conflict(Conflict),
    /// No credential, or a wrong one.
    #[error("{}", .0.message())]
    Unauthenticated(AuthFailure),
    /// Authenticated, but not allowed.
    #[error("{0}")]
    Forbidden(Denial),
    /// The sandbox did not come up; the message holds its exit and last output (the user's
    /// own program's words, never sandboxd's internals).
    #[error("{0}")]
    StartFailed(String),
    /// A freeze or thaw the runtime kept giving up on.
    #[error("{verb} failed after {tries} tries")]
    FreezerGaveUp {
        /// `pause` or `resume`.
        verb: &'static str,
        /// How many tries.
        tries: usize,
    },
    /// The server proxy could not reach the sandbox port.
    #[error("cannot reach port {port} of sandbox {id}: {reason}")]
    Unreachable {
        /// Sandbox id.
        id: String,
        /// Sandbox port.
        port: u16,
        /// The connection's failure.
        reason: String,
    },
    /// The caller's bucket of a rate class is empty (the HTTP layer adds `Retry-After` and the
    /// `RateLimit` headers).
    #[error("rate limit for class '{class}' exceeded; retry after {retry_after} s")]
    RateLimited {
        /// The class.
        class: super::ratelimit::Class,
        /// Whole seconds until a request conforms again (at least 1).
        retry_after: u64,
    },
    /// A pool has no idle member, and none became idle within the acquire timeout (the HTTP
    /// layer adds `Retry-After`).
    #[error("pool {pool} has no free sandbox; retry after {retry_after} s")]
    CapacityExhausted {
        /// The pool.
        pool: String,
        /// Whole seconds (the acquire timeout, at least 1).
        retry_after: u64,
    },
    /// No route matches the request.
    #[error("no such route")]
    NoRoute,
    /// The runtime failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The state store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Something sandboxd itself could not do (no randomness, a bad internal URI).
    #[error("{0}")]
    Internal(String),
}

/// What kind of resource was not found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A sandbox.
    Sandbox,
    /// A user token.
    Token,
    /// A template.
    Template,
    /// A version of a template.
    TemplateVersion,
    /// An image prepull task.
    Prepull,
    /// A warm pool.
    Pool,
    /// A container sandboxd manages.
    Container,
    /// An execution.
    Execution,
    /// A batch of executions.
    Batch,
    /// A snapshot.
    Snapshot,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Sandbox => "sandbox",
            Kind::Token => "token",
            Kind::Template => "template",
            Kind::TemplateVersion => "template version",
            Kind::Prepull => "prepull task",
            Kind::Pool => "pool",
            Kind::Container => "container",
            Kind::Execution => "execution",
            Kind::Batch => "batch",
            Kind::Snapshot => "snapshot",
        })
    }
}

/// A state conflict, named exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conflict {
    /// Pause, or the server proxy, on a sandbox that is not running (`state` is the
    /// contract's state name, or what the runtime said).
    NotRunning {
        /// Sandbox id.
        id: String,
        /// Its state.
        state: String,
    },
    /// Start of a sandbox that is not awaiting start (`autoStart: false`).
    NotAwaitingStart {
        /// Sandbox id.
        id: String,
        /// Its state.
        state: String,
    },
    /// Resume on a sandbox that is not paused.
    NotPaused {
        /// Sandbox id.
        id: String,
        /// Its state.
        state: String,
    },
    /// Deleted while create was waiting for it.
    DeletedWhileStarting(String),
    /// Renew on a sandbox made for manual cleanup.
    NoExpiry(String),
    /// The runtime has no route to the sandbox's ports (not running).
    NoRoute(String),
    /// The runtime says the state changed under the call.
    Runtime(String),
    /// A template of that name exists.
    TemplateExists(String),
    /// The template version's image is not built (yet, or ever: the message says which).
    TemplateNotReady(String),
    /// Pools still make members from the template (the message names them).
    TemplateInUse(String),
    /// A pool of that name exists.
    PoolExists(String),
    /// Release of a sandbox that was not acquired from a pool.
    NotAllocated(String),
    /// The result of an execution that has not finished.
    ExecutionNotFinished {
        /// Execution id.
        id: String,
        /// Its state.
        state: String,
    },
    /// A cancel of an execution that has finished.
    ExecutionFinished {
        /// Execution id.
        id: String,
        /// Its state.
        state: String,
    },
    /// An isolated execution in a sandbox made without isolated sessions.
    IsolationUnavailable,
    /// A snapshot sandboxes were made from (the message names how many).
    SnapshotInUse(String),
    /// A snapshot that is not `Ready` (the message names its state).
    SnapshotNotReady(String),
    /// A snapshot of the sandbox is being taken: it cannot be paused meanwhile.
    SnapshotInProgress(String),
    /// A sandbox that cannot be Rootfs-paused (the message says why: made before sandboxd
    /// kept what a resume needs, or running in a pool's member).
    NotRestorable(String),
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Conflict::NotRunning { id, state } => write!(f, "sandbox {id} is {state}"),
            Conflict::NotPaused { id, state } => write!(f, "sandbox {id} is {state}, not Paused"),
            Conflict::NotAwaitingStart { id, state } => write!(
                f,
                "sandbox {id} is {state}, not awaiting start (only a sandbox created with \
                 extensions[\"sandboxd.autoStart\"]=\"false\" and not yet started can be started)"
            ),
            Conflict::DeletedWhileStarting(id) => write!(f, "sandbox {id} was deleted while starting"),
            Conflict::NoExpiry(id) => write!(
                f,
                "sandbox {id} was created for manual cleanup and has no expiry to renew"
            ),
            Conflict::NoRoute(id) => write!(f, "sandbox {id} has no published ports (not running)"),
            Conflict::Runtime(message)
            | Conflict::TemplateNotReady(message)
            | Conflict::TemplateInUse(message)
            | Conflict::SnapshotInUse(message)
            | Conflict::SnapshotNotReady(message)
            | Conflict::NotRestorable(message) => f.write_str(message),
            Conflict::PoolExists(name) => write!(f, "a pool named {name} already exists"),
            Conflict::NotAllocated(id) => write!(f, "sandbox {id} was not acquired from a pool"),
            Conflict::SnapshotInProgress(id) => write!(
                f,
                "a snapshot of sandbox {id} is being taken; pause it once the snapshot is Ready or Failed"
            ),

            Conflict::TemplateExists(name) => write!(f, "a template named {name} already exists"),
            Conflict::ExecutionNotFinished { id, state } => {
                write!(f, "execution {id} is {state}, not finished")
            }
            Conflict::ExecutionFinished { id, state } => {
                write!(f, "execution {id} has already finished ({state})")
            }
            Conflict::IsolationUnavailable => f.write_str(
                "isolated executions need a sandbox made with extensions[\"bootstrap.execd.isolation\"] = \"enable\" \
                 (on a sandboxd started with an isolation profile)",
            ),
        }
    }
}

/// A contract route this runtime does not serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feature {
    /// `/snapshots`, `/sandboxes/{id}/snapshots`.
    Snapshots,
    /// `/sandboxes/{id}/networkpolicy`.
    NetworkPolicy,
    /// A Freeze pause (`capabilities().freeze`: Kubernetes has no freezer for pods).
    FreezePause,
    /// A Rootfs pause of a sandbox without a persistent workspace, on a runtime that keeps
    /// only that (`RootfsPause::Workspace`: Kubernetes).
    RootfsWithoutWorkspace,
}

impl Feature {
    fn message(self) -> &'static str {
        match self {
            Feature::Snapshots => {
                "snapshots and Rootfs pause are not supported by this sandboxd's runtime (they commit the sandbox's filesystem to a local image)"
            }
            Feature::NetworkPolicy => "network policies need the egress sidecar, which sandboxd does not run",
            Feature::FreezePause => {
                "pausing with Freeze is not supported by this sandboxd's runtime (Kubernetes has no freezer for pods)"
            }
            Feature::RootfsWithoutWorkspace => {
                "pausing with Rootfs on this sandboxd's runtime keeps only a persistent workspace, and this sandbox has none: create it with \"workspace\": {\"persistent\": true} (its /workspace then survives the pause; nothing else does)"
            }
        }
    }
}

/// Why an authenticated caller is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// The role is below what the action needs.
    Role {
        /// The caller's role.
        role: super::auth::Role,
        /// The least role that may.
        needed: super::auth::Role,
    },
    /// A non-admin minting a token for someone else or with a higher role.
    Mint(String),
    /// The caller owns as many sandboxes as it may.
    Quota {
        /// The limit.
        limit: u64,
    },
    /// The diagnostics routes are switched off on this server.
    DiagnosticsDisabled,
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Denial::Role { role, needed } => {
                write!(f, "this needs the {needed} role; the caller is {role}")
            }
            Denial::Mint(why) => f.write_str(why),
            Denial::Quota { limit } => write!(
                f,
                "quota exceeded: at most {limit} sandboxes per user; delete one first"
            ),
            Denial::DiagnosticsDisabled => f.write_str("diagnostics are disabled on this server"),
        }
    }
}

/// Why a caller is not authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No credential.
    Missing,
    /// An API key that is not the server's.
    InvalidApiKey,
    /// A bearer token that is malformed, wrongly signed, of another algorithm or issuer.
    InvalidToken,
    /// A bearer token past its expiry.
    TokenExpired,
    /// A bearer token that was revoked.
    TokenRevoked,
    /// A console WebSocket ticket that is unknown, used, expired or for another sandbox.
    InvalidTicket,
}

impl AuthFailure {
    fn message(self) -> &'static str {
        match self {
            AuthFailure::Missing => {
                "the OPEN-SANDBOX-API-KEY header or an Authorization: Bearer token is required"
            }
            AuthFailure::InvalidApiKey => "the OPEN-SANDBOX-API-KEY header is not valid",
            AuthFailure::InvalidToken => "the bearer token is not valid",
            AuthFailure::TokenExpired => "the bearer token has expired",
            AuthFailure::TokenRevoked => "the bearer token was revoked",
            AuthFailure::InvalidTicket => {
                "the console ticket is unknown, already used, expired or for another sandbox"
            }
        }
    }
}

impl Error {
    /// A sandbox that does not exist.
    pub fn no_sandbox(id: &str) -> Self {
        Error::NotFound {
            kind: Kind::Sandbox,
            id: id.to_owned(),
        }
    }

    /// A missing resource of `kind`.
    pub fn not_found(kind: Kind, id: impl Into<String>) -> Self {
        Error::NotFound { kind, id: id.into() }
    }

    /// 400 naming what was wrong.
    pub fn invalid(message: impl Into<String>) -> Self {
        Error::Invalid(message.into())
    }

    /// Whether this error is the caller's to fix (logged quietly) rather than sandboxd's or
    /// the runtime's.
    pub fn is_client_error(&self) -> bool {
        match self {
            Error::NotFound { .. }
            | Error::Invalid(_)
            | Error::InvalidSpec(_)
            | Error::ImportInvalid(_)
            | Error::InvalidImage(_)
            | Error::UnsupportedLanguage(_)
            | Error::InvalidMetadataFilter(_)
            | Error::ScopeUnsupported { .. }
            | Error::UnsupportedField(_)
            | Error::Unsupported(_)
            | Error::HostPathNotAllowed(_)
            | Error::TooLarge { .. }
            | Error::BodyTimeout
            | Error::Conflict(_)
            | Error::Unauthenticated(_)
            | Error::Forbidden(_)
            | Error::RateLimited { .. }
            | Error::CapacityExhausted { .. }
            | Error::NoRoute => true,
            Error::Runtime(e) => matches!(
                e,
                RuntimeError::NotFound(_)
                    | RuntimeError::ImageNotFound(_)
                    | RuntimeError::Rejected(_)
                    | RuntimeError::Conflict(_)
            ),
            Error::StartFailed(_)
            | Error::FreezerGaveUp { .. }
            | Error::Unreachable { .. }
            | Error::Store(_)
            | Error::Internal(_) => false,
        }
    }
}
