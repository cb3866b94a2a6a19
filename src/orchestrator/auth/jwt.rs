//! sandboxd's user tokens: HS256 JWTs (the `jsonwebtoken` crate) with the claims `iss`
//! (`sandboxd`), `sub`, `role`, `iat`, `exp`, `jti` and the header `kid`. The algorithm is
//! pinned (anything else, `none` included, is refused), `exp`/`nbf` get 30 s of leeway, and
//! `kid` selects the current secret or a previous one still accepted for verification.

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use sha2::Digest as _;

use super::Role;

/// The issuer of every token.
pub const ISSUER: &str = "sandboxd";
/// Shortest secret accepted, bytes.
pub const MIN_SECRET: usize = 32;
/// Clock skew allowed on `exp` and `nbf`, seconds.
const LEEWAY: u64 = 30;

/// The claims of a token.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Claims {
    /// Always [`ISSUER`].
    pub iss: String,
    /// The user id.
    pub sub: String,
    /// `admin`, `user` or `viewer`.
    pub role: String,
    /// Issued at, epoch seconds.
    pub iat: u64,
    /// Expires at, epoch seconds.
    pub exp: u64,
    /// The token's id (for revocation).
    pub jti: String,
}

/// Why a token is not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Malformed, wrongly signed, another algorithm, a foreign issuer, a missing claim or an
    /// unknown role.
    Invalid,
    /// Past its `exp` (beyond the leeway).
    Expired,
}

/// One signing secret and its id.
struct Key {
    kid: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl Key {
    fn new(secret: &[u8]) -> Self {
        Self {
            kid: kid(secret),
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
        }
    }
}

/// `kid` of a secret: 16 hex digits of its SHA-256 (names the key, reveals nothing of it).
fn kid(secret: &[u8]) -> String {
    hex::encode(&sha2::Sha256::digest(secret)[..8])
}

/// The keys: the current one signs, every one verifies.
pub struct Keys {
    current: Key,
    previous: Vec<Key>,
    validation: Validation,
}

impl Keys {
    /// Keys from the current secret and the previous ones still accepted. Each must be at
    /// least [`MIN_SECRET`] bytes.
    pub fn new(current: &[u8], previous: &[Vec<u8>]) -> Result<Self, String> {
        for s in std::iter::once(current).chain(previous.iter().map(Vec::as_slice)) {
            if s.len() < MIN_SECRET {
                return Err(format!(
                    "a JWT secret must be at least {MIN_SECRET} bytes, got {}",
                    s.len()
                ));
            }
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY;
        validation.validate_nbf = true;
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "sub", "iss"]);
        Ok(Self {
            current: Key::new(current),
            previous: previous.iter().map(|s| Key::new(s)).collect(),
            validation,
        })
    }

    /// A signed token with `claims`.
    pub fn mint(&self, claims: &Claims) -> String {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(self.current.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.current.encoding)
            .expect("HS256 signing of serialisable claims cannot fail")
    }

    /// The claims and role of a valid token.
    pub fn verify(&self, token: &str) -> Result<(Claims, Role), Rejection> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| Rejection::Invalid)?;
        if header.alg != Algorithm::HS256 {
            return Err(Rejection::Invalid);
        }
        // With a `kid`, only that key; without one (a token minted elsewhere with the shared
        // secret), each key in turn.
        let keys = std::iter::once(&self.current).chain(&self.previous);
        let mut outcome = Err(Rejection::Invalid);
        for key in keys.filter(|k| header.kid.as_ref().is_none_or(|kid| *kid == k.kid)) {
            match jsonwebtoken::decode::<Claims>(token, &key.decoding, &self.validation) {
                Ok(data) => {
                    outcome = Ok(data.claims);
                    break;
                }
                Err(e) if *e.kind() == ErrorKind::ExpiredSignature => {
                    outcome = Err(Rejection::Expired);
                    break;
                }
                Err(_) => {}
            }
        }
        let claims = outcome?;
        let role = Role::parse(&claims.role).ok_or(Rejection::Invalid)?;
        Ok((claims, role))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const OLD: &[u8] = b"an older secret, also 32 bytes!!";

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn claims(exp: u64) -> Claims {
        Claims {
            iss: ISSUER.into(),
            sub: "alice".into(),
            role: "user".into(),
            iat: now(),
            exp,
            jti: "j1".into(),
        }
    }

    #[test]
    fn a_minted_token_verifies_and_a_tampered_one_does_not() {
        let keys = Keys::new(SECRET, &[]).unwrap();
        let token = keys.mint(&claims(now() + 600));
        let (got, role) = keys.verify(&token).unwrap();
        assert_eq!((got.sub.as_str(), role), ("alice", Role::User));
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        parts[1] = parts[1].replacen('e', "f", 1);
        assert_eq!(keys.verify(&parts.join(".")), Err(Rejection::Invalid));
        assert_eq!(keys.verify("garbage"), Err(Rejection::Invalid));
        assert_eq!(keys.verify(""), Err(Rejection::Invalid));
    }

    #[test]
    fn alg_none_another_issuer_and_unknown_roles_are_refused() {
        let keys = Keys::new(SECRET, &[]).unwrap();
        let b64 = |s: &str| {
            use base64::Engine as _;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
        };
        let body = serde_json::to_string(&claims(now() + 600)).unwrap();
        let none = format!("{}.{}.", b64(r#"{"alg":"none","typ":"JWT"}"#), b64(&body));
        assert_eq!(keys.verify(&none), Err(Rejection::Invalid));
        let mut foreign = claims(now() + 600);
        foreign.iss = "someone-else".into();
        assert_eq!(keys.verify(&keys.mint(&foreign)), Err(Rejection::Invalid));
        let mut root = claims(now() + 600);
        root.role = "root".into();
        assert_eq!(keys.verify(&keys.mint(&root)), Err(Rejection::Invalid));
    }

    #[test]
    fn expiry_has_leeway_and_then_is_told_apart() {
        let keys = Keys::new(SECRET, &[]).unwrap();
        assert!(
            keys.verify(&keys.mint(&claims(now() - 5))).is_ok(),
            "within the leeway"
        );
        assert_eq!(
            keys.verify(&keys.mint(&claims(now() - 120))),
            Err(Rejection::Expired)
        );
    }

    #[test]
    fn rotated_secrets_still_verify_old_tokens() {
        let old = Keys::new(OLD, &[]).unwrap();
        let token = old.mint(&claims(now() + 600));
        let rotated = Keys::new(SECRET, &[OLD.to_vec()]).unwrap();
        assert!(rotated.verify(&token).is_ok());
        let forgot = Keys::new(SECRET, &[]).unwrap();
        assert_eq!(forgot.verify(&token), Err(Rejection::Invalid));
        assert!(Keys::new(b"short", &[]).is_err());
    }
}
