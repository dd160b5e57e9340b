//! Extractors that carry authentication and input validation, so a handler
//! that takes one cannot forget the check:
//! - [`AuthUser`]: a verified session (JWT or development sign-in);
//!   An admin-token request with `Stowage-On-Behalf-Of` is that user too;
//! - [`AdminAuth`]: the admin bearer token;
//! - [`DevSignIn`]: a development sign-in request from this machine;
//! - [`ApiJson`], [`OptionalJson`]: a bounded JSON body whose errors answer
//!   the SPEC's 400 (413 over its limit);
//! - [`FileId`]: a path id where a malformed one answers 404.

use std::net::{IpAddr, SocketAddr};

use axum::{
    body::Body,
    extract::{ConnectInfo, FromRequest, FromRequestParts, Path, Request},
    http::{header, request::Parts, HeaderName, Method},
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
    meta::FileRecord,
};

/// The signed-in user (`sub`).
#[derive(Clone, Debug)]
pub struct AuthUser(pub String);

impl AuthUser {
    /// This user's file `id`; 404 when it is someone else's or none.
    pub async fn file(&self, state: &AppState, id: Uuid) -> Result<FileRecord, AppError> {
        state
            .meta
            .get_file(&self.0, id)
            .await?
            .ok_or(AppError::NotFound)
    }
}

/// A listing's `limit` parameter: 50 when absent, at most 200.
pub fn page_limit(raw: Option<&str>) -> Result<u32, AppError> {
    match raw {
        None | Some("") => Ok(50),
        Some(l) => Ok(l
            .parse::<u64>()
            .map_err(|_| {
                AppError::BadRequest(format!("limit must be a positive integer, not {l:?}"))
            })?
            .clamp(1, 200) as u32),
    }
}

/// Where a session token came from. A browser attaches the cookie to
/// requests that other sites start; it never adds the header by itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenSource {
    Bearer,
    Cookie,
}

/// Finds the session token: `Authorization: Bearer …`, else the `__session`
/// cookie (Clerk's conventions).
pub fn session_token(parts: &Parts) -> Option<String> {
    session_credential(parts).map(|(t, _)| t)
}

/// [`session_token`] with where it was found.
pub fn session_credential(parts: &Parts) -> Option<(String, TokenSource)> {
    if let Some(t) = bearer_token(parts) {
        return Some((t, TokenSource::Bearer));
    }
    for v in parts.headers.get_all(header::COOKIE) {
        let Ok(s) = v.to_str() else { continue };
        for pair in s.split(';') {
            if let Some((k, val)) = pair.trim().split_once('=') {
                if k == "__session" && !val.is_empty() {
                    return Some((val.to_string(), TokenSource::Cookie));
                }
            }
        }
    }
    None
}

fn bearer_token(parts: &Parts) -> Option<String> {
    let v = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())?;
    let t = v
        .strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("bearer "))?
        .trim();
    (!t.is_empty()).then(|| t.to_string())
}

/// Methods a cross-site page must not be able to make on the user's behalf.
fn is_unsafe(method: &Method) -> bool {
    !matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// The peer address the server accepted the connection from.
fn peer_ip(parts: &Parts) -> Option<IpAddr> {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(a)| a.ip())
}

/// The request's `Host` (HTTP/1.1) or `:authority` (HTTP/2).
fn request_authority(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| parts.uri.authority().map(|a| a.as_str()))
}

/// True when the request's `Origin` is the server's own (its authority is the
/// request's `Host`, or the `X-Forwarded-Host` a trusted proxy set) or one of
/// `STOWAGE_CORS_ORIGINS`. A missing, repeated or `null` Origin is not.
///
/// This is the cross-site check of SPEC §9 for cookie sessions: browsers
/// send `Origin` on every POST, PUT, PATCH and DELETE (same-origin ones
/// included), and a page cannot forge it. `SameSite=Lax` alone would still
/// let a sibling subdomain through, and multipart and `text/plain` POSTs are
/// "simple" requests that no CORS preflight stops.
pub fn same_origin(parts: &Parts, state: &AppState) -> bool {
    let mut all = parts.headers.get_all(header::ORIGIN).iter();
    let (Some(origin), None) = (all.next(), all.next()) else {
        return false;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    if state
        .config
        .cors_origins
        .iter()
        .any(|o| o.eq_ignore_ascii_case(origin))
    {
        return true;
    }
    let Some(authority) = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
    else {
        return false;
    };
    if authority.is_empty() || authority.contains(['/', '?', '#', '@']) {
        return false;
    }
    if request_authority(parts).is_some_and(|h| h.eq_ignore_ascii_case(authority)) {
        return true;
    }
    let trusted_peer = peer_ip(parts).is_some_and(|ip| {
        state
            .config
            .limits
            .trusted_proxies
            .iter()
            .any(|n| n.contains(ip))
    });
    trusted_peer
        && parts
            .headers
            .get("x-forwarded-host")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .is_some_and(|h| h.trim().eq_ignore_ascii_case(authority))
}

fn cross_site() -> AppError {
    AppError::Forbidden(
        "cross-site request refused: a cookie session needs an Origin of this server \
         or of STOWAGE_CORS_ORIGINS"
            .into(),
    )
}

/// Headers a reverse proxy adds. Development sign-in trusts the bind
/// address alone, which a proxy on the same host defeats, so their presence
/// means the request did not come straight from this machine.
const FORWARDING_HEADERS: [&str; 5] = [
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-real-ip",
];

/// True for `localhost`, 127.0.0.0/8 and `[::1]`, with or without a port.
fn is_loopback_host(authority: &str) -> bool {
    let host = if let Some(rest) = authority.strip_prefix('[') {
        match rest.split_once(']') {
            Some((h, port)) if port.is_empty() || port.starts_with(':') => h,
            _ => return false,
        }
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Refuses a development sign-in (or a request carrying a development
/// session) that came through a proxy or names a non-loopback host.
fn check_local_request(parts: &Parts) -> Result<(), AppError> {
    let forwarded = FORWARDING_HEADERS
        .iter()
        .any(|h| parts.headers.contains_key(HeaderName::from_static(h)));
    let local_host = request_authority(parts).is_some_and(is_loopback_host);
    if forwarded || !local_host {
        return Err(AppError::Forbidden(
            "development sign-in is only for requests made directly on this machine \
             (no forwarding headers, a loopback Host)"
                .into(),
        ));
    }
    Ok(())
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
        if parts.headers.contains_key(ON_BEHALF_OF) {
            let u = on_behalf_of(parts, state).await?;
            parts.extensions.insert(u.clone());
            return Ok(u);
        }
        let (token, source) =
            session_credential(parts).ok_or_else(|| auth_error(AuthError::Missing))?;
        if source == TokenSource::Cookie && is_unsafe(&parts.method) && !same_origin(parts, state) {
            return Err(cross_site());
        }
        let user = verify_user(state, &token).await.map_err(auth_error)?;
        if dev::is_dev_token(&token) {
            check_local_request(parts)?;
        }
        state.limits.check_user(&user)?;
        tracing::Span::current().record("user_id", user.as_str());
        let u = AuthUser(user);
        parts.extensions.insert(u.clone());
        Ok(u)
    }
}

/// The header naming the user an admin-token request acts for (SPEC §11).
pub const ON_BEHALF_OF: &str = "stowage-on-behalf-of";

/// Path prefixes whose routes act as a user, and so accept
/// [`ON_BEHALF_OF`]; the header is refused (403) anywhere else a user is
/// asked for.
const ON_BEHALF_ROUTES: [&str; 3] = ["/api/files", "/api/storage", "/api/uploads"];

/// True when `token` is the configured admin token (constant time).
fn is_admin_token(state: &AppState, token: &str) -> bool {
    state
        .config
        .admin_token
        .as_ref()
        .is_some_and(|t| bool::from(token.as_bytes().ct_eq(t.expose().as_bytes())))
}

/// A request made by the SaaS backend for one of its users: the admin token
/// in `Authorization: Bearer` plus `Stowage-On-Behalf-Of: <user id>`. The
/// user is provisioned if new and then acted for exactly as their own
/// session would be (rate limit included). A user session carrying the
/// header is 403 (a user may not act for another); anything else that is
/// not the admin token is 401. The header's value is checked like a token's
/// `sub`, so it can neither name an impossible user nor forge log lines.
async fn on_behalf_of(parts: &Parts, state: &AppState) -> Result<AuthUser, AppError> {
    let mut values = parts.headers.get_all(ON_BEHALF_OF).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return Err(AppError::BadRequest(
            "Stowage-On-Behalf-Of must be given once".into(),
        ));
    };
    let credential = session_credential(parts);
    let admin = matches!(&credential, Some((t, TokenSource::Bearer)) if is_admin_token(state, t));
    if !admin {
        if let Some((t, _)) = &credential {
            if verify_user(state, t).await.is_ok() {
                return Err(AppError::Forbidden(
                    "Stowage-On-Behalf-Of needs the admin token, not a user session".into(),
                ));
            }
        }
        return Err(AppError::Unauthorized(
            "Stowage-On-Behalf-Of needs the admin token".into(),
        ));
    }
    let path = parts.uri.path();
    if !ON_BEHALF_ROUTES
        .iter()
        .any(|p| path == *p || path.strip_prefix(p).is_some_and(|r| r.starts_with('/')))
    {
        return Err(AppError::Forbidden(
            "Stowage-On-Behalf-Of applies to /api/files, /api/storage and /api/uploads only".into(),
        ));
    }
    // UTF-8, as a token's `sub` may be.
    let user = std::str::from_utf8(value.as_bytes())
        .ok()
        .filter(|u| crate::auth::valid_subject(u))
        .ok_or_else(|| {
            AppError::BadRequest(
                "Stowage-On-Behalf-Of must be a user id of 1 to 255 bytes without control \
                 characters"
                    .into(),
            )
        })?
        .to_string();
    state
        .meta
        .ensure_user(&user, state.config.default_quota)
        .await?;
    state.limits.check_user(&user)?;
    let span = tracing::Span::current();
    span.record("user_id", user.as_str());
    span.record("actor", "admin");
    tracing::info!(user_id = %user, actor = "admin", "acting on behalf of a user");
    Ok(AuthUser(user))
}

/// The admin API's bearer token, compared in constant time. Only the
/// `Authorization` header carries it: in the `__session` cookie it is just
/// an invalid session, as a browser would send that cookie for any site.
pub struct AdminAuth;

impl FromRequestParts<AppState> for AdminAuth {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let Some(expected) = &state.config.admin_token else {
            return Err(AppError::NotFound);
        };
        if let Some((t, source)) = session_credential(parts) {
            if source == TokenSource::Bearer
                && bool::from(t.as_bytes().ct_eq(expected.expose().as_bytes()))
            {
                return Ok(AdminAuth);
            }
            if verify_user(state, &t).await.is_ok() {
                return Err(AppError::Forbidden(
                    "admin access requires the admin token".into(),
                ));
            }
        }
        Err(AppError::Unauthorized("admin token required".into()))
    }
}

/// A development sign-in: 404 when that mode is off; 403 when the request
/// came through a proxy, names a non-loopback host, or (being an unsafe
/// request that sets the session cookie) carries a foreign `Origin`. A
/// request with no `Origin` and no cookie at all is a script on this
/// machine (curl, a test), which no browser page can be.
pub struct DevSignIn;

impl FromRequestParts<AppState> for DevSignIn {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        if !state.dev_login() {
            return Err(AppError::NotFound);
        }
        check_local_request(parts)?;
        let scripted = !parts.headers.contains_key(header::ORIGIN)
            && !parts.headers.contains_key(header::COOKIE);
        if is_unsafe(&parts.method) && !scripted && !same_origin(parts, state) {
            return Err(cross_site());
        }
        Ok(DevSignIn)
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
