//! Code-context API types (`/code*`).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST /code/context`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct CreateContextRequest {
    /// Language of the context (`python`, `bash`, or any installed kernel's language).
    #[serde(default)]
    pub language: String,
    /// Working directory of the kernel; created if missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
}

/// A code context.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CodeContext {
    /// Context id.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// Its language.
    pub language: String,
    /// Working directory (echoed on create).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
}

/// Which context a `POST /code` runs in.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct ContextRef {
    /// Existing context; absent means the language's default context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Language; empty means "run as a shell command".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
}

/// `POST /code`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct RunCodeRequest {
    /// Where to run.
    #[serde(default)]
    pub context: Option<ContextRef>,
    /// The code.
    pub code: String,
}

/// What runs a language here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// A Jupyter kernel, spoken to over ZeroMQ.
    Jupyter,
    /// execd's own driver (python via the image's python3, bash via a persistent shell).
    Builtin,
}

/// One entry of `GET /code/languages`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LanguageInfo {
    /// Language name as used in requests.
    pub language: String,
    /// Backend that runs it.
    pub backend: Backend,
    /// Kernelspec name (Jupyter backend).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    /// Human-readable name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// Started kernels waiting in the warm pool (pooled languages only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm: Option<usize>,
}
