//! sandboxd's Bearer tokens: `jwt::Keys::verify` must never panic, and a token not signed
//! with one of the keys must never verify.
//!
//! Input: a mode byte, then either a token as sent (mode 0) or claims JSON that is signed
//! with a foreign secret, as `alg: none`, or with our secret and then altered (modes 1–3).
#![no_main]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use execd::orchestrator::auth::jwt::{Claims, Keys};
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use sha2::Sha256;

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
const OLD: &[u8] = b"an older secret, also 32 bytes!!";
const FOREIGN: &[u8] = b"a foreign secret of 32 bytes ...";

/// Whether `token` carries a valid HS256 signature by `secret` (checked without the crate).
fn signed_by(token: &str, secret: &[u8]) -> bool {
    let Some((signing_input, sig)) = token.rsplit_once('.') else {
        return false;
    };
    let Ok(sig) = URL_SAFE_NO_PAD.decode(sig) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
    mac.update(signing_input.as_bytes());
    mac.verify_slice(&sig).is_ok()
}

fn sign(header: &str, claims: &[u8], secret: &[u8]) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
    mac.update(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
}

fuzz_target!(|data: &[u8]| {
    let keys = Keys::new(SECRET, &[OLD.to_vec()]).unwrap();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        0 => {
            let Ok(token) = std::str::from_utf8(rest) else {
                return;
            };
            if keys.verify(token).is_ok() {
                assert!(
                    signed_by(token, SECRET) || signed_by(token, OLD),
                    "{token:?} verified without our signature"
                );
            }
        }
        1 => {
            // Anything signed with a secret we do not hold.
            let token = sign(r#"{"alg":"HS256","typ":"JWT"}"#, rest, FOREIGN);
            assert!(keys.verify(&token).is_err(), "foreign token verified: {token}");
        }
        2 => {
            // Unsigned, or signed under another algorithm name.
            for header in [r#"{"alg":"none"}"#, r#"{"alg":"HS384"}"#, r#"{"alg":"hs256"}"#] {
                let unsigned = format!(
                    "{}.{}.",
                    URL_SAFE_NO_PAD.encode(header),
                    URL_SAFE_NO_PAD.encode(rest)
                );
                assert!(
                    keys.verify(&unsigned).is_err(),
                    "unsigned token verified: {unsigned}"
                );
                let token = sign(header, rest, SECRET);
                assert!(keys.verify(&token).is_err(), "{header} token verified: {token}");
            }
        }
        _ => {
            // A token we minted, then one byte changed: only an unchanged token verifies.
            let Some((&at, claims)) = rest.split_first() else {
                return;
            };
            let Ok(claims) = serde_json::from_slice::<Claims>(claims) else {
                return;
            };
            let token = keys.mint(&claims);
            let mut bytes = token.clone().into_bytes();
            let i = usize::from(at) % bytes.len();
            bytes[i] = bytes[i].wrapping_add(1 + at / 64);
            let Ok(altered) = String::from_utf8(bytes) else {
                return;
            };
            if keys.verify(&altered).is_ok() {
                assert!(
                    signed_by(&altered, SECRET),
                    "altered token verified: {altered} (from {token})"
                );
            }
        }
    }
});
