//! Identity: who is calling.
//!
//! - [`jwt`]: session tokens (Clerk or any OIDC IdP), RS256/ES256 only.
//! - [`dev`]: development sign-in for a loopback server without real auth.
//! - [`signed_url`]: HMAC-signed, expiring download links that need no session.
//!
//! The HTTP extractors that apply these live in `http::extract`.

pub mod dev;
pub mod jwt;
pub mod signed_url;

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
