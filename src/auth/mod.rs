//! Identity: who is calling.
//!
//! - [`jwt`]: session tokens (Clerk or any OIDC IdP), RS256/ES256 only.
//! - [`clerk`]: where a Clerk instance's token keys are, from its secret or
//!   publishable key.
//! - [`dev`]: development sign-in for a loopback server without real auth.
//! - [`signed_url`]: HMAC-signed, expiring download links that need no session.
//!
//! The HTTP extractors that apply these live in `http::extract`.

pub mod clerk;
pub mod dev;
pub mod jwt;
pub mod signed_url;

/// Longest `sub` accepted, in bytes.
pub const MAX_SUBJECT_BYTES: usize = 255;

/// True when `sub` may name a user: 1 to 255 bytes with no control
/// character (U+0000–U+001F, U+007F). Anything else is an invalid token, so
/// a NUL (which PostgreSQL text cannot hold) or a newline (which would forge
/// log lines) never reaches the stores.
pub fn valid_subject(sub: &str) -> bool {
    !sub.is_empty() && sub.len() <= MAX_SUBJECT_BYTES && !sub.bytes().any(|b| b < 0x20 || b == 0x7f)
}

/// Why a credential was refused; the message is safe to show a client.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing credentials")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("token expired")]
    Expired,
    #[error("identity provider unreachable")]
    KeysUnavailable,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects() {
        assert!(valid_subject("user_2abc"));
        assert!(valid_subject("ünïcode and spaces"));
        assert!(valid_subject(&"x".repeat(255)));
        assert!(!valid_subject(""));
        assert!(!valid_subject(&"x".repeat(256)));
        assert!(!valid_subject("user\u{0}nul"));
        assert!(!valid_subject("line\nbreak"));
        assert!(!valid_subject("tab\t"));
        assert!(!valid_subject("del\u{7f}"));
        // 255 bytes, not characters.
        assert!(!valid_subject(&"é".repeat(128)));
    }
}
