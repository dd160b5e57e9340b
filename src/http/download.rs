//! Serving bytes: owner downloads, signed links (`/s/…`) and thumbnails.
//! Range → 206 (416 when unsatisfiable), strong ETag from the sha256,
//! `If-None-Match` → 304, `If-Range`, RFC 6266 file names, and headers that
//! keep a browser from running what it downloads: `nosniff`, a sandboxing
//! CSP, and `inline` only for raster images, video and audio.
//!
//! On the local volume the bytes of a file (or of its range) are sent by the
//! connection with `sendfile(2)` ([`super::sendfile`]); on the object store,
//! and where no connection handle is at hand, they are streamed.

use axum::{
    body::Body,
    extract::{Extension, Path, Query, State},
    http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri},
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use futures::StreamExt;
use serde::Deserialize;

use super::{
    error::{AppError, AppResult},
    extract::{AuthUser, FileId},
    range::{parse_range, RangeOutcome},
    sendfile::Sendfile,
};
use crate::{
    app::AppState,
    auth::signed_url,
    domain::{filetype::inline_safe, names::content_disposition},
    meta::FileRecord,
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/files/{id}/download", get(download))
        .route("/api/files/{id}/thumbnail", get(thumbnail))
        .route("/s/{token}", get(signed_download))
        .route("/s/{token}/thumbnail", get(signed_thumbnail))
}

#[derive(Deserialize)]
struct DownloadParams {
    inline: Option<String>,
}

fn wants_inline(p: &DownloadParams) -> bool {
    matches!(p.inline.as_deref(), Some("1") | Some("true"))
}

/// `GET|HEAD /api/files/{id}/download`
async fn download(
    State(state): State<AppState>,
    user: AuthUser,
    FileId(id): FileId,
    method: Method,
    headers: HeaderMap,
    Query(p): Query<DownloadParams>,
    conn: Option<Extension<Sendfile>>,
) -> AppResult<Response> {
    let rec = user.file(&state, id).await?;
    let conn = conn.as_ref().map(|c| &c.0);
    serve_file_on(&state, &rec, &method, &headers, wants_inline(&p), conn).await
}

/// Checks a signed-link token; every failure is the same 403. `uri` is the
/// request's: the token must appear in it literally, so a percent-encoded
/// spelling of a valid link is refused like any other altered form.
async fn check_signed(
    state: &AppState,
    token: &str,
    uri: &Uri,
    suffix: &str,
) -> AppResult<FileRecord> {
    let denied = || AppError::Forbidden("link is invalid or expired".into());
    let raw = uri
        .path()
        .strip_prefix("/s/")
        .and_then(|p| p.strip_suffix(suffix));
    if raw != Some(token) {
        return Err(denied());
    }
    let (id, exp, sig) = signed_url::parse(token).ok_or_else(denied)?;
    if exp < state.now().timestamp() {
        return Err(denied());
    }
    let rec = state.meta.get_file_any(id).await?.ok_or_else(denied)?;
    if !signed_url::check(&state.signing_key, id, &rec.user_id, exp, &sig) {
        return Err(denied());
    }
    Ok(rec)
}

/// `GET|HEAD /s/{token}`
async fn signed_download(
    State(state): State<AppState>,
    Path(token): Path<String>,
    uri: Uri,
    method: Method,
    headers: HeaderMap,
    Query(p): Query<DownloadParams>,
    conn: Option<Extension<Sendfile>>,
) -> AppResult<Response> {
    let rec = check_signed(&state, &token, &uri, "").await?;
    let conn = conn.as_ref().map(|c| &c.0);
    serve_file_on(&state, &rec, &method, &headers, wants_inline(&p), conn).await
}

/// `GET /api/files/{id}/thumbnail`
async fn thumbnail(
    State(state): State<AppState>,
    user: AuthUser,
    FileId(id): FileId,
    method: Method,
    headers: HeaderMap,
) -> AppResult<Response> {
    let rec = user.file(&state, id).await?;
    serve_thumbnail(&state, &rec, &method, &headers).await
}

/// `GET /s/{token}/thumbnail`
async fn signed_thumbnail(
    State(state): State<AppState>,
    Path(token): Path<String>,
    uri: Uri,
    method: Method,
    headers: HeaderMap,
) -> AppResult<Response> {
    let rec = check_signed(&state, &token, &uri, "/thumbnail").await?;
    serve_thumbnail(&state, &rec, &method, &headers).await
}

async fn serve_thumbnail(
    state: &AppState,
    rec: &FileRecord,
    method: &Method,
    headers: &HeaderMap,
) -> AppResult<Response> {
    let key = rec.thumbnail_path.as_deref().ok_or(AppError::NotFound)?;
    let len = state.blobs.len(key).await?;
    let etag = format!("\"t-{}\"", &rec.sha256[..16.min(rec.sha256.len())]);
    if etag_matches(headers, &etag) {
        return Ok(not_modified(&etag));
    }
    let mime = if key.ends_with(".webp") {
        "image/webp"
    } else {
        "image/jpeg"
    };
    let mut resp = if method == Method::HEAD {
        Response::new(Body::empty())
    } else {
        Response::new(Body::from_stream(state.blobs.read(key, 0..len).await?))
    };
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(mime));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(
        header::ETAG,
        HeaderValue::from_str(&etag).expect("hex etag"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=31536000, immutable"),
    );
    security_headers(h);
    Ok(resp)
}

fn security_headers(h: &mut HeaderMap) {
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; img-src 'self'; media-src 'self'; style-src 'unsafe-inline'; sandbox"),
    );
    h.insert(
        header::HeaderName::from_static("cross-origin-resource-policy"),
        HeaderValue::from_static("same-site"),
    );
}

fn etag_matches(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == etag || t == "*")
}

fn not_modified(etag: &str) -> Response {
    let mut r = StatusCode::NOT_MODIFIED.into_response();
    r.headers_mut()
        .insert(header::ETAG, HeaderValue::from_str(etag).expect("hex etag"));
    r
}

/// How long a presigned object-store URL handed out by a redirect lives.
pub const REDIRECT_TTL: std::time::Duration = std::time::Duration::from_secs(300);

/// `STOWAGE_S3_DOWNLOADS=redirect`: a 302 to a short-lived presigned URL of
/// the object store, which answers with the same type and disposition and
/// handles ranges itself. `None` when the backend cannot presign.
async fn redirect_to_store(
    state: &AppState,
    rec: &FileRecord,
    inline: bool,
) -> AppResult<Option<Response>> {
    let inline = inline && inline_safe(&rec.mime_type);
    let disposition =
        content_disposition(if inline { "inline" } else { "attachment" }, &rec.file_name);
    let Some(url) = state
        .blobs
        .presign_read(&rec.file_path, REDIRECT_TTL, &rec.mime_type, &disposition)
        .await?
    else {
        return Ok(None);
    };
    let mut resp = StatusCode::FOUND.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::LOCATION,
        HeaderValue::from_str(&url).map_err(AppError::internal)?,
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    security_headers(h);
    Ok(Some(resp))
}

/// Characters of a blob key written as they are in an `X-Accel-Redirect`
/// URI; nginx percent-decodes the rest.
const ACCEL_KEEP: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'/')
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// `STOWAGE_ACCEL_REDIRECT`: the request is authorized and `If-None-Match`
/// answered already; nginx serves the bytes of `{prefix}{key}` from its
/// internal location (ranges and `If-Range` included), keeping the headers
/// set here that it passes on (Content-Type, Content-Disposition,
/// Cache-Control, Accept-Ranges) and adding the others from
/// `$upstream_http_…` (docs/deployment.md).
fn accel_redirect(prefix: &str, rec: &FileRecord, etag: &str, inline: bool) -> Response {
    let key = percent_encoding::utf8_percent_encode(&rec.file_path, ACCEL_KEEP);
    let mut resp = Response::new(Body::empty());
    let h = resp.headers_mut();
    h.insert(
        header::HeaderName::from_static("x-accel-redirect"),
        HeaderValue::from_str(&format!("{prefix}{key}")).expect("percent-encoded"),
    );
    file_headers(h, rec, etag, inline);
    resp
}

/// The headers of every answer carrying a file's bytes, except the lengths.
fn file_headers(h: &mut HeaderMap, rec: &FileRecord, etag: &str, inline: bool) {
    let inline = inline && inline_safe(&rec.mime_type);
    let ctype = HeaderValue::from_str(&rec.mime_type)
        .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"));
    h.insert(header::CONTENT_TYPE, ctype);
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::ETAG, HeaderValue::from_str(etag).expect("hex etag"));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-cache"),
    );
    let disposition =
        content_disposition(if inline { "inline" } else { "attachment" }, &rec.file_name);
    h.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_str(&disposition)
            .unwrap_or_else(|_| HeaderValue::from_static("attachment")),
    );
    security_headers(h);
}

/// Streams a file's bytes (or a range of them) with all download headers.
pub async fn serve_file(
    state: &AppState,
    rec: &FileRecord,
    method: &Method,
    headers: &HeaderMap,
    inline: bool,
) -> AppResult<Response> {
    serve_file_on(state, rec, method, headers, inline, None).await
}

/// [`serve_file`]; with the connection's `conn`, a local blob's bytes are
/// sent with `sendfile` rather than streamed.
async fn serve_file_on(
    state: &AppState,
    rec: &FileRecord,
    method: &Method,
    headers: &HeaderMap,
    inline: bool,
    conn: Option<&Sendfile>,
) -> AppResult<Response> {
    let len = rec.file_size.max(0) as u64;
    let etag = format!("\"{}\"", rec.sha256);
    if etag_matches(headers, &etag) {
        return Ok(not_modified(&etag));
    }
    if state.config.s3_downloads_redirect && method == Method::GET {
        if let Some(resp) = redirect_to_store(state, rec, inline).await? {
            return Ok(resp);
        }
    }
    if let Some(prefix) = &state.config.accel_redirect {
        if method == Method::GET {
            return Ok(accel_redirect(prefix, rec, &etag, inline));
        }
    }
    let range_header = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    // If-Range: a range applies only while the representation is unchanged.
    let range_header = match headers.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) {
        Some(tag) if tag.trim() != etag => None,
        _ => range_header,
    };
    let (status, start, end) = match parse_range(range_header, len) {
        RangeOutcome::Full => (StatusCode::OK, 0, len),
        RangeOutcome::Partial { start, end } => (StatusCode::PARTIAL_CONTENT, start, end),
        RangeOutcome::Unsatisfiable => return Err(AppError::RangeNotSatisfiable { len }),
    };
    let file = match conn {
        Some(_) if method != Method::HEAD && start < end => {
            state.blobs.open_file(&rec.file_path, end).await?
        }
        _ => None,
    };
    let body = if method == Method::HEAD || start == end {
        Body::empty()
    } else if let (Some(conn), Some(file)) = (conn, file) {
        Body::new(conn.body(file, start..end))
    } else {
        let stream = state.blobs.read(&rec.file_path, start..end).await?;
        let counted = stream.inspect(|chunk| {
            if let Ok(c) = chunk {
                crate::telemetry::metrics::bytes_out(c.len() as u64);
            }
        });
        Body::from_stream(counted)
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    file_headers(h, rec, &etag, inline);
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
    if status == StatusCode::PARTIAL_CONTENT {
        h.insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&format!("bytes {}-{}/{}", start, end - 1, len)).expect("ascii"),
        );
    }
    Ok(resp)
}
