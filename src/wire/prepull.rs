//! sandboxd's image prepull tasks (`/v1/prepulls`): pull an image onto the host ahead of the
//! sandboxes that need it, and watch the pull's progress.
//!
//! The request rejects unknown fields, so a typo such as `timout` is a 400 naming it.
//! Credentials are accepted and never echoed: no answer type carries them.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::lifecycle::Pagination;

/// Seconds a prepull may take when the request sets none.
pub const DEFAULT_TIMEOUT: u64 = 600;
/// The shortest `timeout` accepted.
pub const MIN_TIMEOUT: u64 = 60;
/// The longest `timeout` accepted.
pub const MAX_TIMEOUT: u64 = 3600;

/// `POST /v1/prepulls` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreatePrepullRequest {
    /// Image reference, `[registry[:port]/]path[:tag][@sha256:<64 hex>]`, at most 512
    /// characters; without a tag or digest, `:latest`.
    #[schema(min_length = 1, max_length = 512)]
    pub image: String,
    /// Seconds the pull may take once it starts (60–3600, default 600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 60, maximum = 3600)]
    pub timeout: Option<u64>,
    /// Registry credentials for this pull (never stored or echoed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<PrepullAuth>,
    /// The platform to pull for (default: the host's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<PrepullPlatform>,
}

/// Registry credentials of a prepull.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrepullAuth {
    /// User name.
    pub username: String,
    /// Password or token.
    pub password: String,
}

impl std::fmt::Debug for PrepullAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrepullAuth")
            .field("username", &self.username)
            .field("password", &"<hidden>")
            .finish()
    }
}

/// `{os, arch}` of a prepull.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrepullPlatform {
    /// `linux`.
    pub os: String,
    /// `amd64`, `arm64`, …
    pub arch: String,
}

/// Where a prepull task is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub enum PrepullState {
    /// Waiting for a free pull slot.
    Pending,
    /// Pulling.
    Pulling,
    /// The image is present.
    Completed,
    /// The pull failed; `reason` says why.
    Failed,
    /// Deleted while pending or pulling.
    Cancelled,
}

impl PrepullState {
    /// The wire (and stored) name.
    pub fn as_str(self) -> &'static str {
        match self {
            PrepullState::Pending => "Pending",
            PrepullState::Pulling => "Pulling",
            PrepullState::Completed => "Completed",
            PrepullState::Failed => "Failed",
            PrepullState::Cancelled => "Cancelled",
        }
    }

    /// The state named `text` (case-insensitive, so that `?state=pulling` works too).
    pub fn parse(text: &str) -> Option<Self> {
        [
            PrepullState::Pending,
            PrepullState::Pulling,
            PrepullState::Completed,
            PrepullState::Failed,
            PrepullState::Cancelled,
        ]
        .into_iter()
        .find(|s| s.as_str().eq_ignore_ascii_case(text))
    }

    /// Whether the task is over (nothing will change it any more).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            PrepullState::Completed | PrepullState::Failed | PrepullState::Cancelled
        )
    }
}

/// `status` of a prepull task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrepullStatus {
    /// The state.
    pub state: PrepullState,
    /// Why it is in it: `ALREADY_PRESENT`, `IMAGE_NOT_FOUND`, `UNAUTHORIZED`,
    /// `REGISTRY_UNREACHABLE`, `TIMEOUT`, `INTERRUPTED`, `RUNTIME_UNAVAILABLE`, `PULL_FAILED`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What happened, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When `state` last changed (RFC 3339).
    pub last_transition_at: String,
}

/// `progress` of a prepull task.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrepullProgress {
    /// Layers of the image seen so far.
    pub layers_total: u32,
    /// Layers downloaded or already present.
    pub layers_done: u32,
    /// Bytes to download, over the layers whose size is known.
    pub bytes_total: u64,
    /// Bytes downloaded of those.
    pub bytes_done: u64,
    /// 0–100: by bytes while every layer still downloading has a known size, else by layers;
    /// it never goes down.
    pub percent: f64,
}

/// A prepull task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrepullTask {
    /// `pp-<uuid>`.
    pub id: String,
    /// The image reference, normalised (`:latest` added when it had no tag or digest).
    pub image: String,
    /// The template whose image this is (`POST /templates/{idOrName}/prepull`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_id: Option<String>,
    /// That template's version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_version: Option<u32>,
    /// Where it is.
    pub status: PrepullStatus,
    /// How far the pull got.
    pub progress: PrepullProgress,
    /// RFC 3339.
    pub created_at: String,
    /// When the pull started (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// When it ended, whichever way (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<String>,
    /// Seconds the pull may take once started.
    pub timeout: u64,
}

/// `GET /v1/prepulls` answer, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ListPrepullsResponse {
    /// The page's tasks.
    pub items: Vec<PrepullTask>,
    /// Where the page is.
    pub pagination: Pagination,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_reject_unknown_fields_and_answers_never_hold_credentials() {
        let err = serde_json::from_value::<CreatePrepullRequest>(serde_json::json!({
            "image": "busybox", "timout": 60
        }))
        .unwrap_err();
        assert!(err.to_string().contains("timout"), "{err}");
        let err = serde_json::from_value::<CreatePrepullRequest>(serde_json::json!({
            "image": "busybox", "auth": {"username": "u", "password": "p", "token": "t"}
        }))
        .unwrap_err();
        assert!(err.to_string().contains("token"), "{err}");
        let req: CreatePrepullRequest = serde_json::from_value(serde_json::json!({
            "image": "busybox", "auth": {"username": "u", "password": "hunter2"},
            "platform": {"os": "linux", "arch": "amd64"}
        }))
        .unwrap();
        assert!(!format!("{req:?}").contains("hunter2"));
        assert_eq!(req.timeout, None);
    }

    #[test]
    fn tasks_are_camel_case_and_omit_what_is_unset() {
        let task = PrepullTask {
            id: "pp-1".into(),
            image: "busybox:latest".into(),
            template_id: None,
            template_version: None,
            status: PrepullStatus {
                state: PrepullState::Pulling,
                reason: None,
                message: None,
                last_transition_at: "2026-01-01T00:00:00Z".into(),
            },
            progress: PrepullProgress {
                layers_total: 2,
                layers_done: 1,
                bytes_total: 100,
                bytes_done: 36,
                percent: 36.0,
            },
            created_at: "2026-01-01T00:00:00Z".into(),
            started_at: None,
            completed_at: None,
            timeout: 600,
        };
        let json = serde_json::to_value(&task).unwrap();
        assert_eq!(json["status"]["state"], "Pulling");
        assert_eq!(json["status"]["lastTransitionAt"], "2026-01-01T00:00:00Z");
        assert_eq!(json["progress"]["bytesDone"], 36);
        assert!(json.get("templateId").is_none());
        assert!(json["status"].get("reason").is_none());
        assert_eq!(PrepullState::parse("pulling"), Some(PrepullState::Pulling));
        assert_eq!(PrepullState::parse("done"), None);
    }
}
