//! Signed upload URLs (SPEC §11): `POST /api/uploads/signed` reserves
//! `max_bytes` of the user's room at once and answers a `/u/…` URL; one
//! multipart `POST` to that URL, without a session, becomes a File through
//! the same ingest as `POST /api/files/upload` (type checks, scanning,
//! limits).
//!
//! The URL's id is its reservation's id (and the id of the file it becomes),
//! so the reservation's expiry is the URL's: `cleanup` (and the scheduler)
//! give an unused URL's room back once it expires. The URL is single-use:
//! the first `POST` takes it in one conditional `UPDATE`, so a second one,
//! concurrent or later, answers 410 `gone`. An upload that fails (over
//! `max_bytes`, a refused type, malware, a dropped connection) releases the
//! reservation like any failed upload, and the URL stays used: the caller
//! asks its backend for a new one.

use axum::{
    body::Body,
    extract::{Path, State},
    http::{HeaderMap, Uri},
    response::Response,
    routing::post,
    Json, Router,
};
use chrono::SecondsFormat;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{
    error::{AppError, AppResult},
    extract::{ApiJson, AuthUser},
    files::{multipart_upload, Target},
};
use crate::{
    app::AppState,
    auth::signed_url::{self, Purpose},
    domain::{filetype::FileType, names::sanitize_file_name},
    ingest,
    meta::{SignedClaim, SignedUpload},
};

/// Longest validity of a signed upload URL, as for download links.
pub const MAX_EXPIRES_IN: i64 = 604_800;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/uploads/signed", post(issue))
        .route(
            "/u/{token}",
            post(upload).layer(axum::extract::DefaultBodyLimit::disable()),
        )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IssueBody {
    max_bytes: u64,
    expires_in: Option<i64>,
    file_type: Option<String>,
    file_name: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct Issued {
    url: String,
    expires_at: String,
}

/// `POST /api/uploads/signed`
#[tracing::instrument(skip_all, fields(user_id = %user.0, upload_id))]
async fn issue(
    State(state): State<AppState>,
    user: AuthUser,
    ApiJson(body): ApiJson<IssueBody>,
) -> AppResult<Json<Issued>> {
    let expires_in = body.expires_in.unwrap_or(3600);
    if !(1..=MAX_EXPIRES_IN).contains(&expires_in) {
        return Err(AppError::BadRequest(format!(
            "expires_in must be between 1 and {MAX_EXPIRES_IN} seconds"
        )));
    }
    if body.max_bytes == 0 {
        return Err(AppError::BadRequest("max_bytes must be at least 1".into()));
    }
    let file_type = match body.file_type.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(t) => Some(FileType::parse(t).ok_or_else(|| {
            AppError::BadRequest(format!(
                "file_type must be one of video, image, audio, scene, project (got {t:?})"
            ))
        })?),
    };
    let file_name = body.file_name.as_deref().map(sanitize_file_name);
    // 413 over the per-file limit, 507 without room, 429 at the cap of
    // unfinished uploads: the URL counts as one until used or expired.
    let hint = ingest::SizeHint::Exact(body.max_bytes);
    let expires = state.now().timestamp() + expires_in;
    // The reservation outlives the URL by a moment, never the other way.
    let ttl = std::time::Duration::from_secs(expires_in as u64 + 1);
    let id = ingest::reserve_for(&state, &user.0, hint, ttl).await?.0;
    let expires_at = chrono::DateTime::from_timestamp(expires, 0).unwrap_or_default();
    let row = SignedUpload {
        id,
        user_id: user.0.clone(),
        max_bytes: body.max_bytes as i64,
        file_type,
        file_name,
        expires_at,
    };
    if let Err(e) = state.meta.create_signed_upload(&row).await {
        ingest::abandon(&state, id).await;
        return Err(e.into());
    }
    tracing::Span::current().record("upload_id", id.to_string());
    tracing::info!(
        max_bytes = body.max_bytes,
        expires_in,
        "signed upload URL issued"
    );
    let token =
        signed_url::sign_payload(&state.signing_key, Purpose::Upload, id.as_bytes(), expires);
    Ok(Json(Issued {
        url: format!("/u/{token}"),
        expires_at: expires_at.to_rfc3339_opts(SecondsFormat::Secs, true),
    }))
}

/// `POST /u/{token}`: one multipart upload. Altered or expired → 403, used
/// before → 410, over `max_bytes` → 413.
#[tracing::instrument(skip_all, fields(user_id, file_id))]
async fn upload(
    State(state): State<AppState>,
    Path(token): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> AppResult<Response> {
    let denied = || AppError::Forbidden("upload URL is invalid or expired".into());
    // The token must appear literally: a percent-encoded spelling of a
    // valid URL is an altered one.
    if uri.path().strip_prefix("/u/") != Some(token.as_str()) {
        return Err(denied());
    }
    let (payload, expires) =
        signed_url::open_payload(&state.signing_key, Purpose::Upload, &token).ok_or_else(denied)?;
    let id = Uuid::from_slice(&payload).map_err(|_| denied())?;
    let now = state.now();
    if expires < now.timestamp() {
        return Err(denied());
    }
    let up = match state.meta.claim_signed_upload(id, now).await? {
        SignedClaim::Claimed(up) => up,
        SignedClaim::Used => return Err(AppError::Gone("this upload URL was already used".into())),
        SignedClaim::Missing => return Err(denied()),
    };
    tracing::Span::current().record("user_id", up.user_id.as_str());
    // From here the reservation is an upload's: kept alive while it streams.
    if let Err(e) = state
        .meta
        .touch_reservation(up.id, state.config.reservation_ttl)
        .await
    {
        tracing::warn!(error = %e, upload_id = %up.id, "could not extend the reservation of a signed upload");
    }
    let result = multipart_upload(&state, Target::Signed(&up), &headers, body).await;
    if result.is_err() {
        // Whatever failed, before or during the ingest, the room goes back
        // now (a second release is a no-op).
        ingest::abandon(&state, up.id).await;
    }
    result
}
