//! Who is calling and what they may do: [`Principal`], [`Role`], [`Perm`]. Pure: the HTTP
//! layer resolves credentials into a principal (`http/extract.rs`), handlers ask
//! [`Principal::require`], and the service filters by [`Principal::owner_filter`].

use std::fmt;

use super::error::{Denial, Error};

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

    #[test]
    fn only_admins_see_other_owners() {
        assert!(user(Role::User).may_see("u1"));
        assert!(!user(Role::User).may_see("u2"));
        assert!(Principal::root().may_see("u2"));
    }
}
