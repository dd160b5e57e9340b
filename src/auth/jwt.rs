//! Session JWT verification, networkless (a PEM public key, as Clerk's
//! `CLERK_JWT_KEY`) or through a JWKS endpoint.
//!
//! Only RS256 and ES256 are accepted, and the algorithm must fit the key
//! type, so `alg: none` and "HMAC signed with the public key" tokens fail.
//! `exp` and `nbf` are checked with 5 s leeway, `iss` when configured, and a
//! present `azp` must be one of the authorized parties when those are set.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use jsonwebtoken::{
    decode, decode_header, errors::ErrorKind, jwk::JwkSet, Algorithm, DecodingKey, Validation,
};
use serde::Deserialize;
use tokio::sync::RwLock;

use super::AuthError;

/// Leeway for `exp`/`nbf`, seconds.
const LEEWAY: u64 = 5;
/// A JWKS refetch for an unknown `kid` happens at most this often.
const JWKS_MIN_REFRESH: Duration = Duration::from_secs(30);

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    azp: Option<String>,
}

#[derive(Clone)]
struct Key {
    key: DecodingKey,
    alg: Algorithm,
}

enum Source {
    Static(Key),
    Jwks {
        url: String,
        http: reqwest::Client,
        cache: RwLock<JwksCache>,
    },
}

#[derive(Default)]
struct JwksCache {
    keys: HashMap<String, Key>,
    fetched: Option<Instant>,
}

/// Verifies session tokens; cheap to clone.
#[derive(Clone)]
pub struct Verifier {
    source: Arc<Source>,
    issuer: Option<String>,
    parties: Vec<String>,
}

/// Parses a PEM public key (RSA or EC P-256) and picks its algorithm.
fn key_from_pem(pem: &str) -> Result<Key, String> {
    // Environment variables often carry PEMs with literal "\n".
    let pem = pem.replace("\\n", "\n");
    if let Ok(key) = DecodingKey::from_rsa_pem(pem.as_bytes()) {
        return Ok(Key {
            key,
            alg: Algorithm::RS256,
        });
    }
    if let Ok(key) = DecodingKey::from_ec_pem(pem.as_bytes()) {
        return Ok(Key {
            key,
            alg: Algorithm::ES256,
        });
    }
    Err("STOWAGE_JWT_PUBLIC_KEY is not an RSA or EC public key in PEM form".into())
}

impl Verifier {
    /// From a PEM public key.
    pub fn from_pem(
        pem: &str,
        issuer: Option<String>,
        parties: Vec<String>,
    ) -> Result<Self, String> {
        Ok(Verifier {
            source: Arc::new(Source::Static(key_from_pem(pem)?)),
            issuer,
            parties,
        })
    }

    /// From a JWKS URL; keys are fetched lazily and cached.
    pub fn from_jwks(url: String, issuer: Option<String>, parties: Vec<String>) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("http client");
        Verifier {
            source: Arc::new(Source::Jwks {
                url,
                http,
                cache: RwLock::new(JwksCache::default()),
            }),
            issuer,
            parties,
        }
    }

    /// Verifies `token`; returns the user id (`sub`).
    pub async fn verify(&self, token: &str) -> Result<String, AuthError> {
        let header = decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        let key = match &*self.source {
            Source::Static(k) => k.clone(),
            Source::Jwks { url, http, cache } => {
                let kid = header
                    .kid
                    .clone()
                    .ok_or_else(|| AuthError::Invalid("token has no kid".into()))?;
                jwks_key(url, http, cache, &kid).await?
            }
        };
        if header.alg != key.alg {
            return Err(AuthError::Invalid(format!(
                "algorithm {:?} is not accepted for this key",
                header.alg
            )));
        }
        let mut v = Validation::new(key.alg);
        v.leeway = LEEWAY;
        v.validate_exp = true;
        v.validate_nbf = true;
        v.validate_aud = false;
        if let Some(iss) = &self.issuer {
            v.set_issuer(&[iss]);
            v.set_required_spec_claims(&["exp", "sub", "iss"]);
        } else {
            v.set_required_spec_claims(&["exp", "sub"]);
        }
        let data = decode::<Claims>(token, &key.key, &v).map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::ImmatureSignature => AuthError::Invalid("token not yet valid".into()),
            ErrorKind::InvalidIssuer => AuthError::Invalid("wrong issuer".into()),
            ErrorKind::InvalidSignature => AuthError::Invalid("bad signature".into()),
            ErrorKind::InvalidAlgorithm => AuthError::Invalid("algorithm not accepted".into()),
            _ => AuthError::Invalid("malformed token".into()),
        })?;
        if let Some(azp) = &data.claims.azp {
            if !self.parties.is_empty() && !self.parties.iter().any(|p| p == azp) {
                return Err(AuthError::Invalid("unauthorized party".into()));
            }
        }
        if data.claims.sub.is_empty() || data.claims.sub.len() > 255 {
            return Err(AuthError::Invalid("bad subject".into()));
        }
        Ok(data.claims.sub)
    }
}

async fn jwks_key(
    url: &str,
    http: &reqwest::Client,
    cache: &RwLock<JwksCache>,
    kid: &str,
) -> Result<Key, AuthError> {
    if let Some(k) = cache.read().await.keys.get(kid) {
        return Ok(k.clone());
    }
    let mut c = cache.write().await;
    if let Some(k) = c.keys.get(kid) {
        return Ok(k.clone());
    }
    let recently = c.fetched.is_some_and(|t| t.elapsed() < JWKS_MIN_REFRESH);
    if recently {
        return Err(AuthError::Invalid("unknown key id".into()));
    }
    let set: JwkSet = async {
        http.get(url)
            .send()
            .await?
            .error_for_status()?
            .json::<JwkSet>()
            .await
    }
    .await
    .map_err(|e| {
        tracing::warn!(error = %e, url, "JWKS fetch failed");
        AuthError::KeysUnavailable
    })?;
    c.fetched = Some(Instant::now());
    c.keys.clear();
    for jwk in &set.keys {
        let Some(id) = jwk.common.key_id.clone() else {
            continue;
        };
        let alg = match &jwk.algorithm {
            jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => Algorithm::RS256,
            jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
            _ => continue,
        };
        if let Ok(key) = DecodingKey::from_jwk(jwk) {
            c.keys.insert(id, Key { key, alg });
        }
    }
    c.keys
        .get(kid)
        .cloned()
        .ok_or_else(|| AuthError::Invalid("unknown key id".into()))
}
