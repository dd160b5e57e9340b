//! Extractors that carry authentication and input validation, so a handler
//! that takes one cannot forget the check:
//! - [`AuthUser`]: a verified session (JWT or development sign-in);
//! - [`AdminAuth`]: the admin bearer token;
//! - [`ApiJson`], [`OptionalJson`]: a bounded JSON body whose errors answer
//!   the SPEC's 400 (413 over its limit);
//! - [`FileId`]: a path id where a malformed one answers 404.

use axum::{
    body::Body,
    extract::{FromRequest, FromRequestParts, Path, Request},
    http::{header, request::Parts},
};
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::de::DeserializeOwned;
use subtle::ConstantTimeEq;
use uuid::Uuid;

use super::error::AppError;
use crate::{
    app::AppState,
    auth::{dev, AuthError},
};

/// The signed-in user (`sub`).
#[derive(Clone, Debug)]
pub struct AuthUser(pub String);

/// Finds the session token: `Authorization: Bearer …`, else the `__session`
/// cookie (Clerk's conventions).
pub fn session_token(parts: &Parts) -> Option<String> {
    if let Some(v) = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        if let Some(t) = v
            .strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
        {
            let t = t.trim();
            if !t.is_empty() {
                return Some(t.to_string());
            }
        }
    }
    for v in parts.headers.get_all(header::COOKIE) {
        let Ok(s) = v.to_str() else { continue };
        for pair in s.split(';') {
            if let Some((k, val)) = pair.trim().split_once('=') {
                if k == "__session" && !val.is_empty() {
                    return Some(val.to_string());
                }
            }
        }
    }
    None
}

/// Verifies a token as a user session.
pub async fn verify_user(state: &AppState, token: &str) -> Result<String, AuthError> {
    if dev::is_dev_token(token) {
        if !state.dev_login() {
            return Err(AuthError::Invalid("development sessions are off".into()));
        }
        return dev::verify(&state.signing_key, token)
            .ok_or_else(|| AuthError::Invalid("bad development session".into()));
    }
    match &state.verifier {
        Some(v) => v.verify(token).await,
        None => Err(AuthError::Invalid(
            "no token verifier configured; use development sign-in".into(),
        )),
    }
}

fn auth_error(e: AuthError) -> AppError {
    match e {
        AuthError::KeysUnavailable => AppError::Unavailable("identity provider unreachable".into()),
        other => AppError::Unauthorized(other.to_string()),
    }
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        if let Some(u) = parts.extensions.get::<AuthUser>() {
            return Ok(u.clone());
        }
        let token = session_token(parts).ok_or_else(|| auth_error(AuthError::Missing))?;
        let user = verify_user(state, &token).await.map_err(auth_error)?;
        state.limits.check_user(&user)?;
        tracing::Span::current().record("user_id", user.as_str());
        let u = AuthUser(user);
        parts.extensions.insert(u.clone());
        Ok(u)
    }
}

/// The admin API's bearer token, compared in constant time.
pub struct AdminAuth;

impl FromRequestParts<AppState> for AdminAuth {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let Some(expected) = &state.config.admin_token else {
            return Err(AppError::NotFound);
        };
        let token = session_token(parts);
        if let Some(t) = &token {
            if bool::from(t.as_bytes().ct_eq(expected.expose().as_bytes())) {
                return Ok(AdminAuth);
            }
            if verify_user(state, t).await.is_ok() {
                return Err(AppError::Forbidden(
                    "admin access requires the admin token".into(),
                ));
            }
        }
        Err(AppError::Unauthorized("admin token required".into()))
    }
}

/// A JSON request body; malformed JSON or wrong types answer 400, a body
/// over `limits.json_body_bytes` 413 `payload_too_large` (SPEC §9).
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = AppError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, AppError> {
        let bytes = json_body(req, state.config.limits.json_body_bytes).await?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// An optional JSON body: empty (or only whitespace) is `None`; otherwise as
/// [`ApiJson`].
pub struct OptionalJson<T>(pub Option<T>);

impl<T: DeserializeOwned> FromRequest<AppState> for OptionalJson<T> {
    type Rejection = AppError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, AppError> {
        let bytes = json_body(req, state.config.limits.json_body_bytes).await?;
        if bytes.iter().all(|b| b.is_ascii_whitespace()) {
            return Ok(OptionalJson(None));
        }
        parse_json(&bytes).map(|v| OptionalJson(Some(v)))
    }
}

/// Refused JSON bodies up to this size are read to their end (and
/// discarded) before the 413 is sent: most HTTP clients cannot take an
/// answer while they are still sending and would see a reset connection.
const DRAIN_LIMIT: u64 = 4 * 1024 * 1024;

/// Reads a JSON body of at most `limit` bytes. A `Content-Length` over it
/// is refused before reading; a chunked body as soon as it passes it, so no
/// more than `limit` bytes are ever held.
pub async fn json_body(req: Request, limit: usize) -> Result<Bytes, AppError> {
    let too_large =
        || AppError::PayloadTooLarge(format!("JSON bodies are limited to {limit} bytes"));
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut body = req.into_body();
    if let Some(n) = declared.filter(|&n| n > limit as u64) {
        if n <= DRAIN_LIMIT {
            discard(&mut body, DRAIN_LIMIT).await;
        }
        return Err(too_large());
    }
    match Limited::new(&mut body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => {
            discard(&mut body, DRAIN_LIMIT).await;
            Err(too_large())
        }
        Err(e) => Err(AppError::BadRequest(format!("could not read body: {e}"))),
    }
}

/// Reads and drops what is left of `body`, up to `max` bytes.
async fn discard(body: &mut Body, max: u64) {
    let mut seen = 0u64;
    while let Some(Ok(frame)) = body.frame().await {
        if let Some(data) = frame.data_ref() {
            seen += data.len() as u64;
            if seen > max {
                return;
            }
        }
    }
}

/// Parses a JSON body with a message that names the problem.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, AppError> {
    serde_json::from_slice(bytes)
        .map_err(|e| AppError::BadRequest(format!("invalid JSON body: {e}")))
}

/// A file id from the path; anything that is not a UUID is simply not found.
pub struct FileId(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for FileId {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| AppError::NotFound)?;
        Uuid::try_parse(&raw)
            .map(FileId)
            .map_err(|_| AppError::NotFound)
    }
}
