//! The lifecycle orchestrator (`sandboxd`). Only its version exists so far; the lifecycle API,
//! Docker runtime, store and proxy arrive with their own issue. Must never import `agent`.

/// What `sandboxd` prints until it serves the lifecycle API.
pub fn banner() -> String {
    format!(
        "sandboxd {} (lifecycle API not yet implemented)",
        env!("CARGO_PKG_VERSION")
    )
}
