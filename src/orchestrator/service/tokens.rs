//! `/v1/tokens`: minting, describing and revoking user tokens.

use super::Service;
use crate::orchestrator::auth::{Principal, Role};
use crate::orchestrator::error::{Denial, Error};
use crate::orchestrator::store::TokenRecord;
use crate::wire::identity::{CreateToken, CurrentPrincipal, Token};
use crate::wire::time::{format_ms, now_ms};

/// Token lifetimes, seconds.
const TTL_DEFAULT: u64 = 3600;
const TTL_MIN: u64 = 60;
const TTL_MAX: u64 = 604_800;
/// Longest user id.
const USER_ID_MAX: usize = 128;

impl Service {
    /// `POST /v1/tokens`: admins mint for anyone; others only for themselves, with a role no
    /// higher than their own.
    pub async fn mint_token(&self, req: CreateToken, caller: &Principal) -> Result<Token, Error> {
        let user_ok = !req.user_id.is_empty()
            && req.user_id.len() <= USER_ID_MAX
            && req
                .user_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._@-".contains(&b));
        if !user_ok {
            return Err(Error::invalid(format!(
                "userId must be 1 to {USER_ID_MAX} of A-Z, a-z, 0-9, '.', '_', '@' and '-'"
            )));
        }
        let role = match req.role.as_deref() {
            None => Role::User,
            Some(text) => Role::parse(text)
                .ok_or_else(|| Error::invalid(format!("role must be admin, user or viewer, got {text:?}")))?,
        };
        let ttl = req.ttl_seconds.unwrap_or(TTL_DEFAULT);
        if !(TTL_MIN..=TTL_MAX).contains(&ttl) {
            return Err(Error::invalid(format!(
                "ttlSeconds must be from {TTL_MIN} to {TTL_MAX}, got {ttl}"
            )));
        }
        if caller.role != Role::Admin {
            if req.user_id != caller.id {
                return Err(Error::Forbidden(Denial::Mint(format!(
                    "a {} may mint tokens only for itself ({})",
                    caller.role, caller.id
                ))));
            }
            if role > caller.role {
                return Err(Error::Forbidden(Denial::Mint(format!(
                    "a {} cannot mint a {role} token",
                    caller.role
                ))));
            }
        }
        let now = now_ms();
        let (token, claims) = self.authority.mint(&req.user_id, role, ttl, now);
        let expires_at = claims.exp as i64 * 1000;
        self.store
            .put_token(&TokenRecord {
                jti: claims.jti.clone(),
                user_id: req.user_id.clone(),
                role: role.as_str().into(),
                created_at: now,
                expires_at,
                revoked_at: None,
            })
            .await?;
        tracing::info!(user = %req.user_id, %role, token_id = %claims.jti, by = %caller.id, "token minted");
        Ok(Token {
            access_token: token,
            token_type: "Bearer".into(),
            expires_at: format_ms(expires_at),
            user_id: req.user_id,
            role: role.as_str().into(),
            token_id: claims.jti,
        })
    }

    /// `GET /v1/tokens/current`: who the caller is.
    pub fn current_principal(&self, caller: &Principal) -> CurrentPrincipal {
        CurrentPrincipal {
            user_id: caller.id.clone(),
            role: caller.role.as_str().into(),
            token_id: caller.token_id.clone(),
            expires_at: caller.expires_at.map(format_ms),
            auth_method: caller.method.as_str().into(),
        }
    }

    /// `DELETE /v1/tokens/{tokenId}`: admins revoke any token, others their own (someone
    /// else's is not found). The token is refused from now until it expires.
    pub async fn revoke_token(&self, jti: &str, caller: &Principal) -> Result<(), Error> {
        let not_found = || Error::NotFound {
            kind: crate::orchestrator::error::Kind::Token,
            id: jti.to_owned(),
        };
        let known = self.store.token(jti).await?;
        let mut record = match known {
            Some(r) if caller.role == Role::Admin || r.user_id == caller.id => r,
            Some(_) => return Err(not_found()),
            // A token minted elsewhere with the shared secret: its bearer may revoke it.
            None if caller.token_id.as_deref() == Some(jti) => TokenRecord {
                jti: jti.to_owned(),
                user_id: caller.id.clone(),
                role: caller.role.as_str().into(),
                created_at: now_ms(),
                expires_at: caller.expires_at.unwrap_or_else(now_ms),
                revoked_at: None,
            },
            None => return Err(not_found()),
        };
        record.revoked_at = Some(now_ms());
        self.store.put_token(&record).await?;
        self.authority.deny(jti, record.expires_at);
        tracing::info!(token_id = jti, by = %caller.id, "token revoked");
        Ok(())
    }
}
