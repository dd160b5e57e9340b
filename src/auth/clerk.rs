//! Clerk by its own keys: where the session-token keys of a Clerk instance
//! are, found from the keys Clerk hands every application.
//!
//! - The secret key (`sk_test_…` / `sk_live_…`) authenticates to the Backend
//!   API, whose `GET /v1/jwks` answers the instance's JWKS to a request with
//!   `Authorization: Bearer <secret key>`.
//! - The publishable key (`pk_test_…` / `pk_live_…`) is the base64 of the
//!   instance's Frontend API host followed by `$`; that host serves the same
//!   JWKS, unauthenticated, at `/.well-known/jwks.json`, and it is the `iss`
//!   of every session token the instance issues.
//!
//! Nothing here fetches anything: the URLs go to [`super::jwt::Verifier`],
//! which caches and refetches them like any other JWKS.

use base64::{
    alphabet,
    engine::{general_purpose::GeneralPurpose, DecodePaddingMode, GeneralPurposeConfig},
    Engine,
};

/// Clerk's Backend API.
pub const DEFAULT_API_URL: &str = "https://api.clerk.com";

/// Publishable keys are written with or without `=` padding.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The Frontend API host a publishable key names (`clerk.example.com`,
/// `happy-cat-12.clerk.accounts.dev`). The error never repeats the key.
pub fn frontend_api_host(publishable_key: &str) -> Result<String, String> {
    let key = publishable_key.trim();
    let encoded = key
        .strip_prefix("pk_test_")
        .or_else(|| key.strip_prefix("pk_live_"))
        .ok_or("expected pk_test_… or pk_live_… (Clerk dashboard → API keys)")?;
    let decoded = LENIENT
        .decode(encoded)
        .map_err(|_| "the part after pk_test_/pk_live_ is not base64")?;
    let text = String::from_utf8(decoded).map_err(|_| "does not decode to a host name")?;
    let host = text
        .strip_suffix('$')
        .ok_or("does not decode to a host name followed by `$`")?;
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && !host.starts_with(['.', '-', ':'])
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:".contains(&b));
    if !host_ok {
        return Err("does not decode to a host name followed by `$`".into());
    }
    Ok(host.to_ascii_lowercase())
}

/// Checks the shape of a secret key (`sk_test_…` / `sk_live_…`, printable,
/// no spaces). The error never repeats the key.
pub fn check_secret_key(secret_key: &str) -> Result<(), String> {
    let rest = secret_key
        .strip_prefix("sk_test_")
        .or_else(|| secret_key.strip_prefix("sk_live_"));
    match rest {
        Some(r) if !r.is_empty() && r.bytes().all(|b| b.is_ascii_graphic()) => Ok(()),
        _ => Err(
            "expected sk_test_… or sk_live_… with no spaces (Clerk dashboard → API keys)".into(),
        ),
    }
}

/// The Backend API's JWKS endpoint under `api` (`https://api.clerk.com`).
pub fn backend_jwks_url(api: &str) -> String {
    format!("{}/v1/jwks", api.trim_end_matches('/'))
}

/// The Frontend API's JWKS endpoint under `frontend` (`https://clerk.example.com`).
pub fn frontend_jwks_url(frontend: &str) -> String {
    format!("{}/.well-known/jwks.json", frontend.trim_end_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD;

    fn pk(prefix: &str, payload: &str) -> String {
        format!("{prefix}{}", STANDARD.encode(payload))
    }

    #[test]
    fn publishable_keys_name_their_frontend_api() {
        assert_eq!(
            frontend_api_host(&pk("pk_test_", "happy-cat-12.clerk.accounts.dev$")).unwrap(),
            "happy-cat-12.clerk.accounts.dev"
        );
        assert_eq!(
            frontend_api_host(&pk("pk_live_", "clerk.example.com$")).unwrap(),
            "clerk.example.com"
        );
        // Padding left off, as some keys are written.
        let unpadded = pk("pk_live_", "clerk.example.co$");
        assert!(unpadded.ends_with('='));
        assert_eq!(
            frontend_api_host(unpadded.trim_end_matches('=')).unwrap(),
            "clerk.example.co"
        );
    }

    #[test]
    fn malformed_publishable_keys_are_refused_without_echo() {
        for bad in [
            String::new(),
            "sk_test_abc".into(),
            "pk_test_".into(),
            "pk_test_%%%not-base64".into(),
            pk("pk_test_", "clerk.example.com"),
            pk("pk_test_", "$"),
            pk("pk_test_", "evil.com/path$"),
            pk("pk_test_", "a b.com$"),
            pk("pk_live_", "clerk.example.com$$"),
        ] {
            let e = frontend_api_host(&bad).unwrap_err();
            assert!(bad.len() < 9 || !e.contains(&bad[8..]), "{bad}: {e}");
        }
    }

    #[test]
    fn secret_keys_are_checked_for_shape() {
        assert!(check_secret_key("sk_test_abcDEF123").is_ok());
        assert!(check_secret_key("sk_live_abcDEF123").is_ok());
        for bad in ["", "sk_test_", "pk_test_abc", "sk_test_abc def", "abc"] {
            let e = check_secret_key(bad).unwrap_err();
            assert!(!e.contains("abc"), "{bad}: {e}");
        }
    }

    #[test]
    fn urls_are_built_under_the_bases() {
        assert_eq!(
            backend_jwks_url("https://api.clerk.com/"),
            "https://api.clerk.com/v1/jwks"
        );
        assert_eq!(
            frontend_jwks_url("https://clerk.example.com"),
            "https://clerk.example.com/.well-known/jwks.json"
        );
    }
}
