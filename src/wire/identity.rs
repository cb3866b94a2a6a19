//! sandboxd's identity plane: user tokens (`/v1/tokens`). camelCase, like the lifecycle plane.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST /v1/tokens` body.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateToken {
    /// The user the token is for: 1–128 of `A-Z a-z 0-9 . _ @ -`.
    pub user_id: String,
    /// `admin`, `user` (default) or `viewer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Lifetime, 60–604800 seconds (default 3600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u64>,
}

/// `POST /v1/tokens` answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Token {
    /// The JWT, for `Authorization: Bearer`.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Expiry (RFC 3339).
    pub expires_at: String,
    /// The user.
    pub user_id: String,
    /// The role.
    pub role: String,
    /// The token's id, for `DELETE /v1/tokens/{tokenId}`.
    pub token_id: String,
}

/// `GET /v1/tokens/current` answer: who the caller is.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CurrentPrincipal {
    /// The user (`root` for the API key, `anonymous` without one).
    pub user_id: String,
    /// The role.
    pub role: String,
    /// The token's id, for bearer callers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_id: Option<String>,
    /// The token's expiry (RFC 3339), for bearer callers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// `apiKey`, `bearer` or `anonymous`.
    pub auth_method: String,
}
