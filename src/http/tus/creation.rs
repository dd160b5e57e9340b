//! The creation and creation-with-upload extensions: `POST /api/uploads`.
//!
//! The whole `Upload-Length` is reserved against the user's quota before
//! anything is stored (413 over the per-file limit, 507 without room); the
//! reservation's id becomes the upload id and the staging blob id. A body
//! sent with the `POST` is appended as a first `PATCH` would be; if it
//! completes the upload, the answer carries `Stowage-File-Id`.

use axum::{
    body::Body,
    extract::State,
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use uuid::Uuid;

use super::{
    core::{self, append, date_value, expiry_from, file_meta},
    headers::{self, metadata_to_json},
    lease::Lease,
    *,
};
use crate::{
    http::{error::AppResult, extract::AuthUser},
    ingest::{self, SizeHint},
    meta::TusUpload,
};

/// `POST /api/uploads` (also with a trailing slash).
pub async fn create(
    State(state): State<AppState>,
    user: AuthUser,
    headers: HeaderMap,
    body: Body,
) -> AppResult<Response> {
    if headers.contains_key("upload-defer-length") {
        return Err(AppError::BadRequest(
            "Upload-Defer-Length is not supported: send Upload-Length (quota is reserved at creation)"
                .into(),
        ));
    }
    if headers.contains_key("upload-concat") {
        return Err(AppError::BadRequest(
            "the concatenation extension is not supported".into(),
        ));
    }
    let length = headers
        .get(&UPLOAD_LENGTH)
        .ok_or_else(|| AppError::BadRequest("Upload-Length is required".into()))?
        .to_str()
        .map_err(|_| AppError::BadRequest("Upload-Length is not valid".into()))
        .and_then(|v| {
            headers::parse_u64("Upload-Length", v).map_err(|e| AppError::BadRequest(e.0))
        })?;
    let metadata = match headers.get(&UPLOAD_METADATA) {
        Some(v) => headers::parse_metadata(
            v.to_str()
                .map_err(|_| AppError::BadRequest("Upload-Metadata is not valid".into()))?,
        )
        .map_err(|e| AppError::BadRequest(e.0))?,
        None => Default::default(),
    };
    // Refuse bad fields now rather than after the whole file arrived.
    file_meta(&metadata)?;
    let content_length = core::content_length(&headers);
    let has_body = content_length.is_some_and(|n| n > 0)
        || (content_length.is_none() && headers.contains_key(header::TRANSFER_ENCODING));
    if has_body && !core::is_offset_stream(&headers) {
        return Err(AppError::UnsupportedMedia(format!(
            "a body sent with the creation request needs Content-Type: {OFFSET_OCTET_STREAM}"
        )));
    }
    if let Some(cl) = content_length {
        if cl > length {
            return Err(AppError::TooLarge(format!(
                "the body ({cl} bytes) is longer than Upload-Length {length}"
            )));
        }
    }
    let checksum = if has_body {
        core::parse_checksum_header(&headers)?
    } else {
        None
    };

    let (id, _) = ingest::reserve(&state, &user.0, SizeHint::Exact(length)).await?;
    let now = state.now();
    let up = TusUpload {
        id,
        user_id: user.0.clone(),
        upload_length: length as i64,
        upload_offset: 0,
        metadata: metadata_to_json(&metadata),
        expires_at: expiry_from(&state, now),
        created_at: now,
        hash_state: None,
    };
    // An empty upload is complete at once: it goes through the append path.
    let appending = has_body || length == 0;
    let owner = Uuid::new_v4();
    core::open_upload(&state, &up, appending.then_some(owner)).await?;
    tracing::info!(upload = %id, length, "tus upload created");

    let mut h = HeaderMap::new();
    let location = format!("/api/uploads/{id}");
    h.insert(
        header::LOCATION,
        HeaderValue::from_str(&location).expect("path is a valid header"),
    );
    if !appending {
        h.insert(UPLOAD_OFFSET.clone(), HeaderValue::from(0u64));
        h.insert(UPLOAD_EXPIRES.clone(), date_value(up.expires_at));
        return Ok((StatusCode::CREATED, h).into_response());
    }
    let lease = Lease::held(&state, id, owner);
    let st = state.clone();
    let user_id = user.0.clone();
    let outcome = tokio::spawn(async move {
        append(&st, &user_id, lease, &up, content_length, checksum, body).await
    })
    .await
    .map_err(AppError::internal)?;
    match outcome {
        Ok(done) => {
            done.headers(&mut h);
            Ok((StatusCode::CREATED, h).into_response())
        }
        Err(e) => {
            // The upload exists (unless completing it failed): say where, so
            // the client can resume it.
            let mut r = e.into_response();
            r.headers_mut().extend(h);
            Ok(r)
        }
    }
}
