//! Who is calling and what they may do: [`Principal`], [`Role`], [`Perm`], and the
//! [`Authority`] that turns credentials (the API key, or a sandboxd-issued JWT) into a
//! principal. No I/O: the HTTP layer hands it the headers' values (`http/extract.rs`),
//! handlers ask [`Principal::require`], the service checks [`Principal::may_see`].
//!
//! - `jwt`: minting and verifying HS256 tokens.

pub mod jwt;

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;

use super::error::{AuthFailure, Denial, Error};
use crate::auth::constant_time_eq;

/// A role, from least to most powerful.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Read-only on its own resources.
    Viewer,
    /// Creates, reads and deletes its own resources.
    User,
    /// Everything, every owner.
    Admin,
}

impl Role {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::User => "user",
            Role::Admin => "admin",
        }
    }

    /// `admin`, `user` or `viewer`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "viewer" => Some(Role::Viewer),
            "user" => Some(Role::User),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the caller proved itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// The server's API key (`OPEN-SANDBOX-API-KEY`): the bootstrap admin `root`.
    ApiKey,
    /// A sandboxd-issued JWT (`Authorization: Bearer`).
    Bearer,
    /// No API key is configured and none was given: the insecure dev mode.
    Anonymous,
}

impl AuthMethod {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::ApiKey => "apiKey",
            AuthMethod::Bearer => "bearer",
            AuthMethod::Anonymous => "anonymous",
        }
    }
}

/// What an action needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Perm {
    /// Read one's own resources.
    Read,
    /// Create, change or delete one's own resources.
    Write,
    /// Act on every owner's resources, mint tokens for others, administer.
    Admin,
}

/// The id of the principal behind the API key.
pub const ROOT: &str = "root";
/// The id of the principal of the insecure dev mode.
pub const ANONYMOUS: &str = "anonymous";

/// The caller of one request, resolved once by the auth layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The user id (`root` for the API key, `anonymous` in dev mode, a token's `sub`).
    pub id: String,
    /// What it may do.
    pub role: Role,
    /// How it proved itself.
    pub method: AuthMethod,
    /// The token's `jti`, for bearer callers.
    pub token_id: Option<String>,
    /// The token's expiry (epoch ms), for bearer callers.
    pub expires_at: Option<i64>,
}

impl Principal {
    /// The bootstrap admin behind the API key.
    pub fn root() -> Self {
        Self {
            id: ROOT.into(),
            role: Role::Admin,
            method: AuthMethod::ApiKey,
            token_id: None,
            expires_at: None,
        }
    }

    /// The caller of the insecure dev mode (no API key configured).
    pub fn anonymous() -> Self {
        Self {
            id: ANONYMOUS.into(),
            role: Role::Admin,
            method: AuthMethod::Anonymous,
            token_id: None,
            expires_at: None,
        }
    }

    /// Ok when the role allows `perm`, else 403.
    pub fn require(&self, perm: Perm) -> Result<(), Error> {
        let needed = match perm {
            Perm::Read => Role::Viewer,
            Perm::Write => Role::User,
            Perm::Admin => Role::Admin,
        };
        if self.role >= needed {
            Ok(())
        } else {
            Err(Error::Forbidden(Denial::Role {
                role: self.role,
                needed,
            }))
        }
    }

    /// Whether this caller sees resources owned by `owner` (admins see all; everyone else
    /// only their own, and someone else's is reported as not found).
    pub fn may_see(&self, owner: &str) -> bool {
        self.role == Role::Admin || self.id == owner
    }
}

/// Resolves credentials into principals, mints tokens, and holds the deny-list of revoked
/// ones (in memory, written through to the store by the service).
pub struct Authority {
    api_key: Option<Vec<u8>>,
    keys: jwt::Keys,
    /// Revoked `jti` → its expiry (epoch ms); entries past it are dropped.
    revoked: Mutex<HashMap<String, i64>>,
}

impl Authority {
    /// An authority for `api_key` (none: the insecure dev mode) and `keys`, with the revoked
    /// tokens read from the store.
    pub fn new(api_key: Option<String>, keys: jwt::Keys, revoked: Vec<(String, i64)>) -> Self {
        Self {
            api_key: api_key.filter(|k| !k.is_empty()).map(String::into_bytes),
            keys,
            revoked: Mutex::new(revoked.into_iter().collect()),
        }
    }

    /// Whether no API key is configured.
    pub fn insecure(&self) -> bool {
        self.api_key.is_none()
    }

    /// The caller behind an `OPEN-SANDBOX-API-KEY` value and an `Authorization: Bearer`
    /// token, either of which may be absent. The API key, when given, decides alone: a valid
    /// one is `root`, an invalid one is refused even beside a valid token. Without any
    /// credential the caller is anonymous only when no API key is configured.
    pub fn resolve(
        &self,
        api_key: Option<&[u8]>,
        bearer: Option<&str>,
        now_ms: i64,
    ) -> Result<Principal, AuthFailure> {
        if let (Some(given), Some(expected)) = (api_key, &self.api_key) {
            return if constant_time_eq(given, expected) {
                Ok(Principal::root())
            } else {
                Err(AuthFailure::InvalidApiKey)
            };
        }
        let Some(token) = bearer else {
            return match self.api_key {
                Some(_) => Err(AuthFailure::Missing),
                None => Ok(Principal::anonymous()),
            };
        };
        let (claims, role) = self.keys.verify(token).map_err(|r| match r {
            jwt::Rejection::Invalid => AuthFailure::InvalidToken,
            jwt::Rejection::Expired => AuthFailure::TokenExpired,
        })?;
        if self.is_revoked(&claims.jti, now_ms) {
            return Err(AuthFailure::TokenRevoked);
        }
        Ok(Principal {
            id: claims.sub,
            role,
            method: AuthMethod::Bearer,
            token_id: Some(claims.jti),
            expires_at: i64::try_from(claims.exp).ok().map(|s| s.saturating_mul(1000)),
        })
    }

    fn is_revoked(&self, jti: &str, now_ms: i64) -> bool {
        let mut revoked = self.revoked.lock().unwrap_or_else(|e| e.into_inner());
        revoked.retain(|_, exp| *exp > now_ms);
        revoked.contains_key(jti)
    }

    /// A signed token for `user_id` with `role`, valid from `now_ms` for `ttl_secs`; returns
    /// the token and its claims.
    pub fn mint(&self, user_id: &str, role: Role, ttl_secs: u64, now_ms: i64) -> (String, jwt::Claims) {
        let iat = (now_ms / 1000).max(0) as u64;
        let claims = jwt::Claims {
            iss: jwt::ISSUER.into(),
            sub: user_id.to_owned(),
            role: role.as_str().into(),
            iat,
            exp: iat + ttl_secs,
            jti: uuid::Uuid::new_v4().simple().to_string(),
        };
        (self.keys.mint(&claims), claims)
    }

    /// Refuses the token `jti` from now until `expires_at` (epoch ms).
    pub fn deny(&self, jti: &str, expires_at: i64) {
        self.revoked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(jti.to_owned(), expires_at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(role: Role) -> Principal {
        Principal {
            id: "u1".into(),
            role,
            method: AuthMethod::Bearer,
            token_id: Some("t".into()),
            expires_at: None,
        }
    }

    #[test]
    fn roles_are_ordered_and_checked() {
        assert!(user(Role::Viewer).require(Perm::Read).is_ok());
        assert!(user(Role::Viewer).require(Perm::Write).is_err());
        assert!(user(Role::User).require(Perm::Write).is_ok());
        assert!(user(Role::User).require(Perm::Admin).is_err());
        assert!(Principal::root().require(Perm::Admin).is_ok());
        assert!(Principal::anonymous().require(Perm::Admin).is_ok());
        for r in [Role::Viewer, Role::User, Role::Admin] {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        assert_eq!(Role::parse("root"), None);
    }

    fn authority(api_key: Option<&str>) -> Authority {
        let keys = jwt::Keys::new(b"0123456789abcdef0123456789abcdef", &[]).unwrap();
        Authority::new(api_key.map(str::to_owned), keys, Vec::new())
    }

    #[test]
    fn the_api_key_decides_alone_and_tokens_name_their_user() {
        let now = crate::wire::time::now_ms();
        let a = authority(Some("key"));
        let (token, claims) = a.mint("alice", Role::User, 600, now);
        assert_eq!(a.resolve(Some(b"key"), None, now), Ok(Principal::root()));
        assert_eq!(
            a.resolve(Some(b"nope"), Some(&token), now),
            Err(AuthFailure::InvalidApiKey)
        );
        assert_eq!(a.resolve(None, None, now), Err(AuthFailure::Missing));
        let alice = a.resolve(None, Some(&token), now).unwrap();
        assert_eq!(
            (alice.id.as_str(), alice.role, alice.method),
            ("alice", Role::User, AuthMethod::Bearer)
        );
        assert_eq!(alice.token_id.as_deref(), Some(claims.jti.as_str()));
        assert_eq!(
            a.resolve(None, Some("x.y.z"), now),
            Err(AuthFailure::InvalidToken)
        );
        a.deny(&claims.jti, now + 600_000);
        assert_eq!(a.resolve(None, Some(&token), now), Err(AuthFailure::TokenRevoked));
        // The deny-list forgets a token once it has expired anyway.
        assert!(!a.is_revoked(&claims.jti, now + 600_001));
    }

    #[test]
    fn without_an_api_key_callers_are_anonymous_admins_unless_they_bring_a_token() {
        let now = crate::wire::time::now_ms();
        let a = authority(None);
        assert_eq!(a.resolve(None, None, now), Ok(Principal::anonymous()));
        assert_eq!(
            a.resolve(Some(b"anything"), None, now),
            Ok(Principal::anonymous())
        );
        let (token, _) = a.mint("bob", Role::Viewer, 600, now);
        assert_eq!(a.resolve(None, Some(&token), now).unwrap().id, "bob");
    }

    #[test]
    fn only_admins_see_other_owners() {
        assert!(user(Role::User).may_see("u1"));
        assert!(!user(Role::User).may_see("u2"));
        assert!(Principal::root().may_see("u2"));
    }
}
