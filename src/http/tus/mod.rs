//! tus 1.0.0 resumable uploads at `/api/uploads` (SPEC §5, docs/tus.md).
//!
//! Core protocol plus the creation, creation-with-upload, termination,
//! expiration and checksum (sha1, sha256) extensions. Not creation-defer-length:
//! quota is reserved at creation from `Upload-Length`.
//!
//! - [`creation`]: `POST` reserves the quota (the reservation id is the upload
//!   id and the staging blob id), creates the row, and with a body appends it;
//! - [`core`]: `HEAD` (offset), `PATCH` (append through the shared ingest
//!   stage), completion in one transaction, and `GET` of a finished upload;
//! - [`lease`]: the database lease a writing request holds, so two requests
//!   never write at once (across processes too), and takeover: a later
//!   request ends an earlier one instead of being refused with 423;
//! - [`termination`]: `DELETE` discards the data and releases the quota;
//! - [`checksum`], [`headers`]: the pieces the above parse and check.

pub mod checksum;
pub mod core;
pub mod creation;
pub mod headers;
pub mod lease;
pub mod termination;

use std::time::Duration;

use axum::{
    extract::{DefaultBodyLimit, Request, State},
    http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::options,
    Router,
};

use super::{error::AppError, extract::AuthUser};
use crate::app::AppState;
use axum::extract::FromRequestParts;

pub const TUS_VERSION: &str = "1.0.0";
pub const TUS_EXTENSIONS: &str = "creation,creation-with-upload,termination,expiration,checksum";

pub static TUS_RESUMABLE: HeaderName = HeaderName::from_static("tus-resumable");
pub static UPLOAD_OFFSET: HeaderName = HeaderName::from_static("upload-offset");
pub static UPLOAD_LENGTH: HeaderName = HeaderName::from_static("upload-length");
pub static UPLOAD_METADATA: HeaderName = HeaderName::from_static("upload-metadata");
pub static UPLOAD_EXPIRES: HeaderName = HeaderName::from_static("upload-expires");
pub static UPLOAD_CHECKSUM: HeaderName = HeaderName::from_static("upload-checksum");
pub static STOWAGE_FILE_ID: HeaderName = HeaderName::from_static("stowage-file-id");

/// The body type of `PATCH` (and of a creation-with-upload `POST`).
pub const OFFSET_OCTET_STREAM: &str = "application/offset+octet-stream";

pub use lease::LEASE;

/// A body that sends nothing for this long counts as a disconnect (so a
/// stalled client cannot hold the lease past its end).
pub const BODY_IDLE: Duration = Duration::from_secs(20);

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/uploads", options(discover).post(creation::create))
        .route("/api/uploads/", options(discover).post(creation::create))
        .route(
            "/api/uploads/{id}",
            axum::routing::head(core::head)
                .get(core::get_finished)
                .patch(core::patch)
                .delete(termination::terminate),
        )
        .layer(DefaultBodyLimit::disable())
        .layer(middleware::from_fn(tus_headers))
}

/// `OPTIONS /api/uploads`: what this server offers. No session needed.
async fn discover(State(state): State<AppState>, user: Result<AuthUser, AppError>) -> Response {
    discovery(&state, user.ok()).await
}

/// tus discovery, and the draft's limits (`Upload-Limit`; with a session,
/// `max-size` counts the user's room).
async fn discovery(state: &AppState, user: Option<AuthUser>) -> Response {
    let max_age = state.config.upload_expiry.as_secs();
    let limit = match user {
        Some(u) => crate::http::resumable::upload::limit_value(state, &u.0, 0, max_age).await,
        None => None,
    }
    .or_else(|| {
        HeaderValue::from_str(&format!(
            "max-size={}, max-age={max_age}",
            state.config.max_file_size
        ))
        .ok()
    });
    let mut h = HeaderMap::new();
    if let Some(l) = limit {
        h.insert(crate::http::resumable::UPLOAD_LIMIT.clone(), l);
    }
    h.insert("tus-version", HeaderValue::from_static(TUS_VERSION));
    h.insert("tus-extension", HeaderValue::from_static(TUS_EXTENSIONS));
    h.insert(
        "tus-max-size",
        HeaderValue::from(state.config.max_file_size),
    );
    h.insert(
        "tus-checksum-algorithm",
        HeaderValue::from_static(headers::CHECKSUM_ALGORITHMS),
    );
    (StatusCode::NO_CONTENT, h).into_response()
}

/// Answers tus discovery (`OPTIONS /api/uploads` without CORS preflight
/// headers) before the CORS layer, which otherwise takes every `OPTIONS` for
/// a preflight. Installed outside the CORS layer in [`crate::http::router`];
/// a real preflight (with `Access-Control-Request-Method`) passes through.
pub async fn discovery_before_cors(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    let path = req.uri().path();
    if req.method() == Method::OPTIONS
        && (path == "/api/uploads" || path == "/api/uploads/")
        && !req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    {
        let (mut parts, body) = req.into_parts();
        let user = AuthUser::from_request_parts(&mut parts, &state).await.ok();
        drop(body);
        let mut r = discovery(&state, user).await;
        r.headers_mut()
            .insert(TUS_RESUMABLE.clone(), HeaderValue::from_static(TUS_VERSION));
        return r;
    }
    next.run(req).await
}

/// Every response of the tus routes carries `Tus-Resumable`; a request other
/// than `OPTIONS` (and the non-tus `GET` of a finished upload) must name
/// version 1.0.0, else 412.
async fn tus_headers(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let versioned = method != Method::OPTIONS && method != Method::GET;
    let mut resp = if versioned
        && req.headers().get(&TUS_RESUMABLE).map(|v| v.as_bytes()) != Some(TUS_VERSION.as_bytes())
    {
        let mut r = AppError::UnsupportedVersion(format!(
            "Tus-Resumable must be {TUS_VERSION}, the only version this server speaks"
        ))
        .into_response();
        r.headers_mut()
            .insert("tus-version", HeaderValue::from_static(TUS_VERSION));
        r
    } else {
        next.run(req).await
    };
    let h = resp.headers_mut();
    h.insert(TUS_RESUMABLE.clone(), HeaderValue::from_static(TUS_VERSION));
    if method != Method::GET && !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}
