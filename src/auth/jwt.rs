//! Session JWT verification, networkless (a PEM public key, as Clerk's
//! `CLERK_JWT_KEY`) or through a JWKS endpoint (any, or Clerk's Backend API
//! with the secret key as the bearer; see [`super::clerk`]).
//!
//! Only RS256 and ES256 are accepted, and the algorithm must fit the key
//! type, so `alg: none` and "HMAC signed with the public key" tokens fail.
//! `exp` and `nbf` are checked with 5 s leeway, `iss` when configured, and a
//! present `azp` must be one of the authorized parties when those are set.
//! The `sub` must be a usable user id ([`super::valid_subject`]).
//!
//! JWKS keys are cached. A token whose `kid` is not cached triggers a
//! refetch, but at most one per `limits.jwks_refresh`, failed fetches
//! included, so an outage of the identity provider or a stream of made-up
//! `kid`s costs it (and us) one request per window. The fetch runs under a
//! mutex that only unknown-`kid` tokens take; the key map itself is behind a
//! lock that is held only to clone a key or swap the map, never across an
//! await, so tokens whose key is cached never wait for a fetch. A successful
//! fetch replaces the set, but a key that left it keeps verifying for
//! [`RETIRED_KEY_GRACE`]: the union kept forever would never honour a
//! revocation, while dropping at once would fail live tokens signed just
//! before a rotation (or whenever a cache in front of the provider serves
//! a partial set).

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use jsonwebtoken::{
    decode, decode_header, errors::ErrorKind, jwk::JwkSet, Algorithm, DecodingKey, Validation,
};
use serde::Deserialize;

use super::AuthError;
use crate::config::{Limits, Secret};

/// Leeway for `exp`/`nbf`, seconds.
const LEEWAY: u64 = 5;
/// A key that disappeared from the JWKS keeps verifying this long after the
/// fetch that first missed it (session tokens live about a minute).
pub const RETIRED_KEY_GRACE: Duration = Duration::from_secs(300);
/// A JWKS document larger than this is refused (a real one is a few KiB).
const MAX_JWKS_BYTES: usize = 1024 * 1024;

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    azp: Option<String>,
}

struct Key {
    key: DecodingKey,
    alg: Algorithm,
}

enum Source {
    Static(Arc<Key>),
    Jwks(Box<Jwks>),
}

/// The JWKS endpoint and what it last gave.
struct Jwks {
    url: String,
    /// Sent as `Authorization: Bearer` (Clerk's secret key); never logged.
    bearer: Option<Secret>,
    http: reqwest::Client,
    /// Whole-fetch deadline, connect to last byte.
    timeout: Duration,
    /// Least time between two fetches.
    min_interval: Duration,
    /// Read by every token; never held across an await.
    keys: RwLock<HashMap<String, Cached>>,
    /// Taken only by tokens whose `kid` is not cached; held through the
    /// fetch, so there is one at a time.
    refresh: tokio::sync::Mutex<Refresh>,
}

struct Cached {
    key: Arc<Key>,
    /// When a fetch first found this key gone from the set.
    retired: Option<Instant>,
}

impl Cached {
    fn live(&self, now: Instant) -> bool {
        self.retired
            .map_or(true, |t| now.duration_since(t) < RETIRED_KEY_GRACE)
    }
}

#[derive(Default)]
struct Refresh {
    /// Start of the last fetch, successful or not.
    attempted: Option<Instant>,
    /// Whether that fetch succeeded.
    ok: bool,
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
            source: Arc::new(Source::Static(Arc::new(key_from_pem(pem)?))),
            issuer,
            parties,
        })
    }

    /// From a JWKS URL, fetched with `bearer` as the bearer token when set;
    /// keys are fetched lazily and cached, with the refetch interval and
    /// fetch timeout of `limits`.
    pub fn from_jwks(
        url: String,
        bearer: Option<Secret>,
        issuer: Option<String>,
        parties: Vec<String>,
        limits: &Limits,
    ) -> Self {
        let http = reqwest::Client::builder()
            .timeout(limits.jwks_timeout)
            .connect_timeout(limits.jwks_timeout)
            .build()
            .expect("http client");
        Verifier {
            source: Arc::new(Source::Jwks(Box::new(Jwks {
                url,
                bearer,
                http,
                timeout: limits.jwks_timeout,
                min_interval: limits.jwks_refresh,
                keys: RwLock::new(HashMap::new()),
                refresh: tokio::sync::Mutex::new(Refresh::default()),
            }))),
            issuer,
            parties,
        }
    }

    /// Verifies `token`; returns the user id (`sub`).
    pub async fn verify(&self, token: &str) -> Result<String, AuthError> {
        let header = decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        let key = match &*self.source {
            Source::Static(k) => k.clone(),
            Source::Jwks(jwks) => {
                let kid = header
                    .kid
                    .as_deref()
                    .ok_or_else(|| AuthError::Invalid("token has no kid".into()))?;
                jwks.key(kid).await?
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
        if !super::valid_subject(&data.claims.sub) {
            return Err(AuthError::Invalid("bad subject".into()));
        }
        Ok(data.claims.sub)
    }
}

impl Jwks {
    /// A cached, live key; takes the read lock for a moment only.
    fn cached(&self, kid: &str) -> Option<Arc<Key>> {
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        keys.get(kid)
            .filter(|c| c.live(Instant::now()))
            .map(|c| c.key.clone())
    }

    /// The key for `kid`, fetching the set when it is unknown and the last
    /// fetch is older than `min_interval`.
    async fn key(&self, kid: &str) -> Result<Arc<Key>, AuthError> {
        if let Some(k) = self.cached(kid) {
            return Ok(k);
        }
        let unknown = || AuthError::Invalid("unknown key id".into());
        let mut r = self.refresh.lock().await;
        // The fetch this token waited behind may have brought the key.
        if let Some(k) = self.cached(kid) {
            return Ok(k);
        }
        if r.attempted.is_some_and(|t| t.elapsed() < self.min_interval) {
            return Err(if r.ok {
                unknown()
            } else {
                AuthError::KeysUnavailable
            });
        }
        r.attempted = Some(Instant::now());
        let fetched = match tokio::time::timeout(self.timeout, self.fetch()).await {
            Ok(res) => res,
            Err(_) => Err("timed out".to_string()),
        };
        match fetched {
            Ok(fresh) => {
                r.ok = true;
                self.install(fresh);
            }
            Err(e) => {
                r.ok = false;
                tracing::warn!(error = %e, url = %self.url, "JWKS fetch failed");
                return Err(AuthError::KeysUnavailable);
            }
        }
        drop(r);
        self.cached(kid).ok_or_else(unknown)
    }

    /// One GET of the set, size-capped; keys without a `kid` or of another
    /// type than RSA or EC are skipped.
    async fn fetch(&self) -> Result<HashMap<String, Key>, String> {
        let mut req = self.http.get(&self.url);
        if let Some(b) = &self.bearer {
            // reqwest marks the header sensitive.
            req = req.bearer_auth(b.expose());
        }
        let mut resp = req
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| e.to_string())?;
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(format!("JWKS larger than {MAX_JWKS_BYTES} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        let set: JwkSet = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        let mut keys = HashMap::new();
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
                keys.insert(id, Key { key, alg });
            }
        }
        Ok(keys)
    }

    /// Swaps in a fetched set; keys it no longer lists stay for the grace.
    fn install(&self, fresh: HashMap<String, Key>) {
        let now = Instant::now();
        let mut keys = self.keys.write().unwrap_or_else(|e| e.into_inner());
        let mut next: HashMap<String, Cached> = fresh
            .into_iter()
            .map(|(kid, key)| {
                let cached = Cached {
                    key: Arc::new(key),
                    retired: None,
                };
                (kid, cached)
            })
            .collect();
        for (kid, old) in keys.drain() {
            if next.contains_key(&kid) {
                continue;
            }
            let retired = Cached {
                key: old.key,
                retired: Some(old.retired.unwrap_or(now)),
            };
            if retired.live(now) {
                next.insert(kid, retired);
            }
        }
        *keys = next;
    }
}
