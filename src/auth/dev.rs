//! Development sign-in: on a loopback server with no real auth configured,
//! `POST /api/dev/login {"user_id"}` sets a `__session` cookie holding
//! `dev.<base64url(user)>.<hmac>`. These tokens are accepted only in that
//! mode and are signed with the server's signing secret, so they cannot be
//! forged even locally.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD as B64, Engine};
use hmac::{Hmac, Mac};
use sha2::Sha256;

const PREFIX: &str = "dev.";

fn mac(secret: &[u8], user: &str) -> Vec<u8> {
    let mut m = Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
    m.update(b"stowage-dev-session\0");
    m.update(user.as_bytes());
    m.finalize().into_bytes().to_vec()
}

/// Mints a development session token for `user`.
pub fn mint(secret: &[u8], user: &str) -> String {
    format!(
        "{PREFIX}{}.{}",
        B64.encode(user.as_bytes()),
        B64.encode(mac(secret, user))
    )
}

/// True when `token` has the development shape (so JWT parsing is skipped).
pub fn is_dev_token(token: &str) -> bool {
    token.starts_with(PREFIX)
}

/// Returns the user of a valid development token; a user id that could not
/// come from a token ([`super::valid_subject`]) is refused even when signed.
pub fn verify(secret: &[u8], token: &str) -> Option<String> {
    let rest = token.strip_prefix(PREFIX)?;
    let (u, sig) = rest.split_once('.')?;
    let user = String::from_utf8(B64.decode(u).ok()?).ok()?;
    let sig = B64.decode(sig).ok()?;
    let mut m = Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
    m.update(b"stowage-dev-session\0");
    m.update(user.as_bytes());
    m.verify_slice(&sig).ok()?;
    super::valid_subject(&user).then_some(user)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_forgery() {
        let t = mint(b"k1", "alice");
        assert_eq!(verify(b"k1", &t).as_deref(), Some("alice"));
        assert_eq!(verify(b"k2", &t), None);
        let forged = format!(
            "dev.{}.{}",
            B64.encode("bob"),
            t.rsplit('.').next().unwrap()
        );
        assert_eq!(verify(b"k1", &forged), None);
        assert_eq!(verify(b"k1", "dev.garbage"), None);
    }

    #[test]
    fn hostile_users_are_refused_even_when_signed() {
        for user in ["", "user\u{0}nul", "a\nb", &"x".repeat(256)] {
            assert_eq!(verify(b"k1", &mint(b"k1", user)), None, "{user:?}");
        }
    }
}
