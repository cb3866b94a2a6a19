//! sandboxd's request metrics on the wire (design §6): the per-principal summary of
//! `GET /v1/metrics/summary` and the SDK's `POST /v1/metrics/events` body (upstream 1.1.1).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `GET /v1/metrics/summary`: the requests of one principal (`self`) or of all (`all`), since
/// sandboxd started. Requests that reached no principal (401s, unknown routes, `/health`)
/// and the proxy data plane are not in it; Prometheus `/metrics` has them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricsSummary {
    /// `self` or `all`.
    pub scope: String,
    /// When counting began (sandboxd's start), RFC 3339 UTC.
    pub since: String,
    /// The last request counted, or `since` when none was.
    pub last_updated: String,
    /// Every request counted.
    pub total_requests: u64,
    /// Those answered with a status below 400.
    pub successful_requests: u64,
    /// Those answered with 400 or above (429s included).
    pub failed_requests: u64,
    /// Those answered with 429.
    pub rate_limited_requests: u64,
    /// Mean time to answer, ms.
    pub average_response_time_ms: f64,
    /// 95th percentile time to answer, ms (the upper bound of its histogram bucket, at most
    /// 20 % above the true value).
    pub p95_response_time_ms: f64,
    /// Total run time of executions, ms (0 until sandboxd runs executions).
    pub total_execution_time_ms: u64,
    /// Executions by outcome (zeros until sandboxd runs executions).
    pub executions: ExecutionCounts,
    /// Sandboxes now Running (the caller's own for `self`, every one for `all`).
    pub active_sandboxes: u64,
    /// Sandboxes now Paused (likewise).
    pub paused_sandboxes: u64,
}

/// Executions by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionCounts {
    /// All.
    pub total: u64,
    /// Finished with success.
    pub succeeded: u64,
    /// Finished with failure.
    pub failed: u64,
    /// Stopped at their deadline.
    pub timed_out: u64,
}

/// The 1.1.1 SDKs' `POST /v1/metrics/events` body. The SDK's language and version are in its
/// `User-Agent` (`OpenSandbox-Python-SDK/1.1.1`), not here. Unknown fields are tolerated, as
/// upstream does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricsEvent {
    /// `sandbox.create` (the only type upstream defines).
    pub event_type: String,
    /// Wall-clock ms from the start of create to ready or failure.
    pub create_duration_ms: u64,
    /// Whether create and readiness succeeded.
    pub success: bool,
    /// The sandbox, when create got as far as an id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox_id: Option<String>,
    /// The image (or snapshot source label).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}
