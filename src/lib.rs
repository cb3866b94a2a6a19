//! execd: an in-sandbox execution agent and a lightweight orchestrator, both speaking the
//! OpenSandbox wire contract.
//!
//! - [`wire`]: API types shared by both sides and the tests.
//! - [`agent`]: everything that runs inside the sandbox (binary `execd`).
//! - [`orchestrator`]: the lifecycle server (binary `sandboxd`); never imports `agent`.
//! - [`cli`]: the client subcommands of `sandboxd` (`ls`, `exec`, `cp`, ...); speaks only `wire`.
//! - [`auth`]: constant-time credential checks both servers use.
//! - [`relay`]: the streaming reverse-proxy hop both sides use.
//! - [`serve`]: the HTTP server loop with its limits (header and body timeouts, connection cap).
//! - [`logging`]: the log format and sink both binaries set up at start.
#![warn(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod agent;
pub mod auth;
#[cfg(feature = "orchestrator")]
pub mod cli;
pub mod logging;
#[cfg(feature = "orchestrator")]
pub mod orchestrator;
pub mod relay;
pub mod serve;
pub mod wire;
