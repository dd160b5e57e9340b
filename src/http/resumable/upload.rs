//! Creation, offset retrieval, append and cancellation of a resumable
//! upload, and the streaming append they share.
//!
//! - `POST /api/uploads` with `Upload-Complete` (`Upload-Incomplete` in
//!   interop version 3) creates the upload: the quota is reserved from its
//!   length when it is known (`Upload-Length`, or `Content-Length` with
//!   `Upload-Complete: ?1`), else grown while bytes arrive; the row is the
//!   same kind tus creates. Before the body is read, a `104 Upload
//!   Resumption Supported` tells the client where to resume (`Location`) and
//!   how much may come (`Upload-Limit`).
//! - `HEAD` ends a request still writing (takeover, as for tus) and answers
//!   the final offset.
//! - `PATCH` appends at `Upload-Offset`; with `Upload-Complete: ?1` the
//!   upload completes when the body ends: `Repr-Digest` (sha-256) is checked,
//!   then the file is committed in the transaction that deletes the upload
//!   row and releases the reservation.
//! - `DELETE` is tus termination.

// A problem is built once per failed request, and carries its headers.
#![allow(clippy::result_large_err)]

use axum::{
    body::Body,
    extract::State,
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Extension, Json,
};
use base64::{engine::general_purpose::STANDARD, Engine};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{
    problem::Problem, Version, INTEROP_VERSION, META_LENGTH_UNKNOWN, META_PROTOCOL, META_SHA256,
    NEWEST, PARTIAL_UPLOAD, REPR_DIGEST, UPLOAD_LENGTH, UPLOAD_LIMIT, UPLOAD_OFFSET, VERSIONS,
};
use crate::{
    app::AppState,
    http::{
        error::AppError,
        extract::{AuthUser, FileId},
        interim::Interim,
        tus::{
            self,
            core::{content_length, expiry_from, file_meta, id_value, Found},
            headers::{metadata_from_json, metadata_to_json, parse_metadata, parse_u64},
            lease::{self, Acquired, Lease},
            BODY_IDLE, STOWAGE_FILE_ID,
        },
    },
    ingest::{
        self,
        append::{self, Cut, End},
        sha256::RunningSha256,
        FileMeta, IngestError, SizeHint,
    },
    meta::{FileRecord, FileView, TusUpload},
};

type Metadata = std::collections::BTreeMap<String, Option<Vec<u8>>>;

/// `POST /api/uploads` with `Upload-Draft-Interop-Version`.
pub async fn create(
    State(state): State<AppState>,
    user: Result<AuthUser, AppError>,
    interim: Option<Extension<Interim>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let v = match Version::from_headers(&headers) {
        Ok(v) => v.unwrap_or(NEWEST),
        Err(raw) => return unsupported(&raw),
    };
    match create_inner(&state, user, interim.map(|e| e.0), v, &headers, body).await {
        Ok(r) => r,
        Err(p) => p.respond(v),
    }
}

async fn create_inner(
    state: &AppState,
    user: Result<AuthUser, AppError>,
    interim: Option<Interim>,
    v: Version,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let user = user?.0;
    let complete = v
        .read_complete(headers)
        .map_err(|_| Problem::bad_request(format!("{} must be ?0 or ?1", complete_name(v))))?
        .ok_or_else(|| {
            Problem::bad_request(format!(
                "{} is required to create a resumable upload",
                complete_name(v)
            ))
        })?;
    let declared = upload_length(headers)?;
    let cl = content_length(headers);
    let chunked = cl.is_none() && headers.contains_key(header::TRANSFER_ENCODING);
    let has_body = cl.is_some_and(|n| n > 0) || chunked;
    let length = match (declared, cl.filter(|_| complete)) {
        (Some(a), Some(b)) if a != b => {
            return Err(Problem::inconsistent_length(format!(
                "Upload-Length is {a} but the complete upload's content is {b} bytes"
            )))
        }
        (a, b) => a.or(b),
    };
    if let (Some(l), Some(c)) = (length, cl) {
        if c > l {
            return Err(Problem::inconsistent_length(format!(
                "the content ({c} bytes) is longer than Upload-Length {l}"
            )));
        }
    }
    let mut meta: Metadata = match headers.get(&tus::UPLOAD_METADATA) {
        Some(raw) => parse_metadata(
            raw.to_str()
                .map_err(|_| Problem::bad_request("Upload-Metadata is not valid"))?,
        )
        .map_err(|e| Problem::bad_request(e.0))?,
        None => Default::default(),
    };
    if let Some(name) = disposition_filename(headers) {
        meta.insert("filename".into(), Some(name.into_bytes()));
    }
    // Refuse bad fields now rather than after the whole file arrived.
    let fm = file_meta(&meta)?;
    let digest = repr_digest(headers)?;
    meta.insert(META_PROTOCOL.into(), Some(v.name().as_bytes().to_vec()));
    if length.is_none() {
        meta.insert(META_LENGTH_UNKNOWN.into(), Some(b"1".to_vec()));
    }
    if let Some(d) = digest {
        meta.insert(META_SHA256.into(), Some(d.to_vec()));
    }

    let hint = match length {
        Some(l) => SizeHint::Exact(l),
        None => SizeHint::Unknown,
    };
    let id = match ingest::reserve(state, &user, hint).await {
        Ok((id, _)) => id,
        Err(e) => return Err(refused(state, &user, 0, e.into()).await),
    };
    let now = state.now();
    let up = TusUpload {
        id,
        user_id: user.clone(),
        upload_length: length.unwrap_or(state.config.max_file_size) as i64,
        upload_offset: 0,
        metadata: metadata_to_json(&meta),
        expires_at: expiry_from(state, now),
        created_at: now,
        hash_state: None,
    };
    let appending = has_body || complete;
    let owner = Uuid::new_v4();
    tus::core::open_upload(state, &up, appending.then_some(owner)).await?;
    tracing::info!(upload = %id, ?length, version = v.0, "resumable upload created");

    let location =
        HeaderValue::from_str(&format!("/api/uploads/{id}")).expect("path is a valid header");
    let limit = limit_value(
        state,
        &user,
        length.unwrap_or(0),
        state.config.upload_expiry.as_secs(),
    )
    .await;
    let mut h = HeaderMap::new();
    h.insert(header::LOCATION, location.clone());
    if let Some(l) = &limit {
        h.insert(UPLOAD_LIMIT.clone(), l.clone());
    }
    if !appending {
        h.insert(UPLOAD_OFFSET.clone(), HeaderValue::from(0u64));
        v.set_complete(&mut h, false);
        return Ok((StatusCode::CREATED, h).into_response());
    }
    // Where to resume, before a byte of the body is read. The draft: a
    // 104 names the interop version (clients ignore one that does not).
    if let Some(i) = &interim {
        let mut info = h.clone();
        info.insert(INTEROP_VERSION.clone(), HeaderValue::from_static(v.name()));
        i.send(
            StatusCode::from_u16(104).expect("valid status"),
            "Upload Resumption Supported",
            &info,
        );
    }
    let job = Job {
        length,
        grows: length.is_none(),
        complete,
        digest,
        meta: fm,
    };
    let lease = Lease::held(state, id, owner);
    let (st, u) = (state.clone(), user.clone());
    let outcome = tokio::spawn(async move { write(&st, &u, lease, &up, job, body).await })
        .await
        .map_err(|e| Problem::from(AppError::internal(e)))?;
    match outcome {
        Ok(w) => Ok(written(v, StatusCode::CREATED, w, h)),
        Err(mut p) => {
            // The upload exists (unless it failed for good): say where.
            p.headers.insert(header::LOCATION, location);
            Err(p)
        }
    }
}

/// `HEAD` (or `GET`) of an upload: its offset, after ending any request
/// still writing to it, so the offset is final.
pub async fn offset(
    State(state): State<AppState>,
    user: Result<AuthUser, AppError>,
    id: Result<FileId, AppError>,
    headers: HeaderMap,
) -> Response {
    let (user, id, v) = match on_upload(&state, user, id, &headers).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    match offset_inner(&state, &user, id, v).await {
        Ok(r) => r,
        Err(p) => p.respond(v),
    }
}

/// The answer to an offset retrieval, in the request's version.
async fn offset_inner(
    state: &AppState,
    user: &str,
    id: Uuid,
    v: Version,
) -> Result<Response, Problem> {
    let mut h = HeaderMap::new();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    let complete = match tus::core::find(state, user, id).await? {
        Found::InProgress(up) => {
            h.insert(UPLOAD_OFFSET.clone(), HeaderValue::from(up.upload_offset));
            if !metadata_from_json(&up.metadata).contains_key(META_LENGTH_UNKNOWN) {
                h.insert(UPLOAD_LENGTH.clone(), HeaderValue::from(up.upload_length));
            }
            let own = state.meta.reservation_bytes(id).await?.unwrap_or(0);
            if let Some(l) =
                limit_value(state, user, own, secs_until(up.expires_at, state.now())).await
            {
                h.insert(UPLOAD_LIMIT.clone(), l);
            }
            false
        }
        Found::Finished(f) => {
            tus::core::finished_headers(&mut h, &f);
            true
        }
    };
    v.set_complete(&mut h, complete);
    Ok((StatusCode::NO_CONTENT, h).into_response())
}

/// `PATCH` of an upload: appends the body at `Upload-Offset`.
pub async fn append(
    State(state): State<AppState>,
    user: Result<AuthUser, AppError>,
    id: Result<FileId, AppError>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (user, id, v) = match on_upload(&state, user, id, &headers).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    // A body left unread by a refusal is settled by the server (see
    // crate::http::server).
    match append_inner(&state, &user, id, v, &headers, body).await {
        Ok(r) => r,
        Err(p) => p.respond(v),
    }
}

async fn append_inner(
    state: &AppState,
    user: &str,
    id: Uuid,
    v: Version,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    if v.needs_partial_upload() && !is_partial_upload(headers) {
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("an append needs Content-Type: {PARTIAL_UPLOAD}"),
        )
        .with_complete(false));
    }
    let offset = headers
        .get(&UPLOAD_OFFSET)
        .ok_or_else(|| Problem::bad_request("Upload-Offset is required"))?
        .to_str()
        .map_err(|_| Problem::bad_request("Upload-Offset is not valid"))
        .and_then(|s| parse_u64("Upload-Offset", s).map_err(|e| Problem::bad_request(e.0)))?;
    let complete = v
        .read_complete(headers)
        .map_err(|_| Problem::bad_request(format!("{} must be ?0 or ?1", complete_name(v))))?
        .ok_or_else(|| Problem::bad_request(format!("{} is required", complete_name(v))))?;
    let declared = upload_length(headers)?;
    let cl = content_length(headers);
    let digest = repr_digest(headers)?;
    let (mut lease, up) = loop {
        match Lease::acquire(state, user, id).await? {
            Acquired::Held(lease, up) => break (lease, up),
            Acquired::Completing => lease::wait_for_completion(state, id).await?,
            Acquired::Missing => return finished(state, user, id, v, offset, cl).await,
        }
    };
    let meta = metadata_from_json(&up.metadata);
    let grows = meta.contains_key(META_LENGTH_UNKNOWN);
    let recorded = (!grows).then_some(up.upload_length.max(0) as u64);
    let here = up.upload_offset.max(0) as u64;
    let check = || -> Result<Option<u64>, Problem> {
        if here != offset {
            return Err(Problem::mismatching_offset(here, offset));
        }
        let from_body = cl.filter(|_| complete).map(|c| offset + c);
        let mut length = recorded;
        for l in [declared, from_body].into_iter().flatten() {
            match length {
                Some(k) if k != l => {
                    return Err(Problem::inconsistent_length(format!(
                        "the upload's length is {k}, this request says {l}"
                    )))
                }
                _ => length = Some(l),
            }
        }
        if let (Some(l), Some(c)) = (length, cl) {
            if offset + c > l {
                return Err(Problem::inconsistent_length(format!(
                    "{c} bytes at offset {offset} would pass the upload's length {l}"
                )));
            }
        }
        Ok(length)
    };
    let length = match check() {
        Ok(l) => l,
        Err(p) => {
            lease.release().await;
            return Err(p);
        }
    };
    let recorded_digest = meta
        .get(META_SHA256)
        .and_then(|d| d.as_deref())
        .and_then(|d| <[u8; 32]>::try_from(d).ok());
    if let (Some(a), Some(b)) = (recorded_digest, digest) {
        if a != b {
            lease.release().await;
            return Err(Problem::bad_request(
                "Repr-Digest differs from the one given at creation",
            ));
        }
    }
    let fm = match file_meta(&meta) {
        Ok(m) => m,
        Err(e) => {
            lease.release().await;
            return Err(e.into());
        }
    };
    let job = Job {
        length,
        grows,
        complete,
        digest: digest.or(recorded_digest),
        meta: fm,
    };
    let (st, u) = (state.clone(), user.to_string());
    let w = tokio::spawn(async move { write(&st, &u, lease, &up, job, body).await })
        .await
        .map_err(|e| Problem::from(AppError::internal(e)))??;
    Ok(written(v, StatusCode::OK, w, HeaderMap::new()))
}

/// An append to an upload that is no longer in progress: when it was
/// completed, an empty completing append at its length replays the final
/// answer; any other is `completed-upload`. Else 404.
async fn finished(
    state: &AppState,
    user: &str,
    id: Uuid,
    v: Version,
    offset: u64,
    cl: Option<u64>,
) -> Result<Response, Problem> {
    match state.meta.get_file(user, id).await? {
        Some(f) if f.file_size as u64 == offset && cl.unwrap_or(0) == 0 => Ok(written(
            v,
            StatusCode::OK,
            Written {
                offset,
                file: Some(f),
            },
            HeaderMap::new(),
        )),
        Some(_) => Err(Problem::completed_upload()),
        None => Err(AppError::NotFound.into()),
    }
}

/// `DELETE` of an upload: tus termination (ends a request still writing,
/// discards the data, releases the quota).
pub async fn cancel(
    State(state): State<AppState>,
    user: Result<AuthUser, AppError>,
    id: Result<FileId, AppError>,
    headers: HeaderMap,
) -> Response {
    let (user, id, v) = match on_upload(&state, user, id, &headers).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    match tus::termination::terminate(State(state), AuthUser(user), FileId(id)).await {
        Ok(r) => r,
        Err(e) => Problem::from(e).respond(v),
    }
}

/// The user, the upload and the version of a request on an existing
/// upload, or the answer refusing it.
async fn on_upload(
    state: &AppState,
    user: Result<AuthUser, AppError>,
    id: Result<FileId, AppError>,
    headers: &HeaderMap,
) -> Result<(String, Uuid, Version), Response> {
    let (user, id) = match (user, id) {
        (Ok(u), Ok(i)) => (u.0, i.0),
        (Err(e), _) | (_, Err(e)) => return Err(Problem::from(e).respond(NEWEST)),
    };
    let v = resolve(state, &user, id, headers).await?;
    Ok((user, id, v))
}

/// The version a request speaks: the one it names, else (no version and
/// no `Tus-Resumable`) the newest when the upload was created with the
/// draft; for any other upload, tus's answer to a request without
/// `Tus-Resumable`.
async fn resolve(
    state: &AppState,
    user: &str,
    id: Uuid,
    headers: &HeaderMap,
) -> Result<Version, Response> {
    match Version::from_headers(headers) {
        Ok(Some(v)) => return Ok(v),
        Err(raw) => return Err(unsupported(&raw)),
        Ok(None) => {}
    }
    let created_here = match state.meta.get_tus_upload(user, id, state.now()).await {
        Ok(Some(up)) => metadata_from_json(&up.metadata).contains_key(META_PROTOCOL),
        Ok(None) => false,
        Err(e) => return Err(Problem::from(AppError::from(e)).respond(NEWEST)),
    };
    if created_here {
        return Ok(NEWEST);
    }
    let mut r = AppError::UnsupportedVersion(format!(
        "Tus-Resumable must be {}, or Upload-Draft-Interop-Version one of {VERSIONS:?}",
        tus::TUS_VERSION
    ))
    .into_response();
    let h = r.headers_mut();
    h.insert("tus-version", HeaderValue::from_static(tus::TUS_VERSION));
    h.insert(
        tus::TUS_RESUMABLE.clone(),
        HeaderValue::from_static(tus::TUS_VERSION),
    );
    Err(r)
}

/// A request naming an interop version this server does not speak: no
/// upload is created (and no `104` sent).
fn unsupported(raw: &str) -> Response {
    let mut p = Problem::bad_request(format!(
        "Upload-Draft-Interop-Version {raw:?} is not supported; this server speaks {VERSIONS:?}"
    ));
    p.code = "unsupported_version";
    p.respond(NEWEST)
}

fn complete_name(v: Version) -> &'static str {
    if v.0 < 5 {
        "Upload-Incomplete"
    } else {
        "Upload-Complete"
    }
}

/// The final answer of a creation or an append that went through.
fn written(v: Version, created: StatusCode, w: Written, mut h: HeaderMap) -> Response {
    h.insert(UPLOAD_OFFSET.clone(), HeaderValue::from(w.offset));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    match w.file {
        Some(f) => {
            v.set_complete(&mut h, true);
            h.insert(STOWAGE_FILE_ID.clone(), id_value(f.id));
            (created, h, Json(FileView::from(&f))).into_response()
        }
        None => {
            v.set_complete(&mut h, false);
            let status = if created == StatusCode::CREATED {
                created
            } else {
                StatusCode::NO_CONTENT
            };
            (status, h).into_response()
        }
    }
}

/// `Upload-Length`, a non-negative integer.
fn upload_length(h: &HeaderMap) -> Result<Option<u64>, Problem> {
    let Some(v) = h.get(&UPLOAD_LENGTH) else {
        return Ok(None);
    };
    let s = v
        .to_str()
        .map_err(|_| Problem::bad_request("Upload-Length is not valid"))?;
    parse_u64("Upload-Length", s.trim())
        .map(Some)
        .map_err(|e| Problem::bad_request(e.0))
}

fn is_partial_upload(h: &HeaderMap) -> bool {
    h.get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(PARTIAL_UPLOAD))
}

/// The `sha-256` member of `Repr-Digest` (a Dictionary of byte sequences);
/// other algorithms are ignored.
pub fn repr_digest(h: &HeaderMap) -> Result<Option<[u8; 32]>, Problem> {
    let mut found = None;
    for v in h.get_all(&REPR_DIGEST) {
        let s = v
            .to_str()
            .map_err(|_| Problem::bad_request("Repr-Digest is not valid"))?;
        for member in s.split(',') {
            let Some((k, val)) = member.split_once('=') else {
                continue;
            };
            if !k.trim().eq_ignore_ascii_case("sha-256") {
                continue;
            }
            let val = val.trim();
            let bytes = val
                .strip_prefix(':')
                .and_then(|x| x.strip_suffix(':'))
                .and_then(|b64| STANDARD.decode(b64).ok())
                .and_then(|d| <[u8; 32]>::try_from(d).ok())
                .ok_or_else(|| {
                    Problem::bad_request("Repr-Digest sha-256 must be :<base64 of 32 bytes>:")
                })?;
            found = Some(bytes);
        }
    }
    Ok(found)
}

/// The file name of `Content-Disposition` (`filename*` in UTF-8 preferred
/// over `filename`).
pub fn disposition_filename(h: &HeaderMap) -> Option<String> {
    let raw = h.get(header::CONTENT_DISPOSITION)?.to_str().ok()?;
    let mut plain = None;
    let mut extended = None;
    for part in split_params(raw).into_iter().skip(1) {
        let Some((k, v)) = part.split_once('=') else {
            continue;
        };
        let k = k.trim().to_ascii_lowercase();
        let v = v.trim();
        if k == "filename*" {
            if let Some((charset, rest)) = v.split_once('\'') {
                if let Some((_, encoded)) = rest.split_once('\'') {
                    if charset.eq_ignore_ascii_case("utf-8") {
                        extended = percent_decode(encoded);
                    }
                }
            }
        } else if k == "filename" {
            plain = Some(unquote(v));
        }
    }
    extended.or(plain).filter(|n| !n.is_empty())
}

/// Splits at `;` outside quoted strings.
fn split_params(s: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let (mut quoted, mut escaped) = (false, false);
    for c in s.chars() {
        let cur = out.last_mut().expect("never empty");
        if escaped {
            cur.push(c);
            escaped = false;
        } else if quoted && c == '\\' {
            cur.push(c);
            escaped = true;
        } else if c == '"' {
            cur.push(c);
            quoted = !quoted;
        } else if c == ';' && !quoted {
            out.push(String::new());
        } else {
            cur.push(c);
        }
    }
    out
}

fn unquote(v: &str) -> String {
    let Some(inner) = v.strip_prefix('"').and_then(|x| x.strip_suffix('"')) else {
        return v.to_string();
    };
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// `Upload-Limit: max-size=…, max-age=…`: `max-size` is the smaller of the
/// per-file limit and the user's room (counting `own`, what this upload
/// already holds); `max-age` the seconds the upload lives without activity.
pub(crate) async fn limit_value(
    state: &AppState,
    user: &str,
    own: u64,
    max_age: u64,
) -> Option<HeaderValue> {
    let room = match state.meta.get_user(user).await {
        Ok(Some(u)) => (u.max_bytes - u.total_bytes - u.reserved_bytes).max(0) as u64,
        Ok(None) => state.config.default_quota,
        Err(e) => {
            tracing::warn!(error = %e, "could not read the user's room for Upload-Limit");
            return None;
        }
    };
    let max = state.config.max_file_size.min(room.saturating_add(own));
    HeaderValue::from_str(&format!("max-size={max}, max-age={max_age}")).ok()
}

fn secs_until(t: DateTime<Utc>, now: DateTime<Utc>) -> u64 {
    (t - now).num_seconds().max(0) as u64
}

/// A refusal of the size (413 over the per-file limit, 507 without room),
/// with the `Upload-Limit` that would fit.
async fn refused(state: &AppState, user: &str, own: u64, e: AppError) -> Problem {
    let sized = matches!(e, AppError::TooLarge(_) | AppError::QuotaExceeded(_));
    let p = Problem::from(e);
    if !sized {
        return p;
    }
    let limit = limit_value(state, user, own, state.config.upload_expiry.as_secs()).await;
    p.with_limit(limit)
}

/// What an append is to do.
struct Job {
    /// The upload's length, when known (recorded, or said by this request).
    length: Option<u64>,
    /// The length was unknown at creation: the reservation grows.
    grows: bool,
    /// The request's content ends the upload.
    complete: bool,
    /// `Repr-Digest` sha-256 of the whole upload, checked at completion.
    digest: Option<[u8; 32]>,
    meta: FileMeta,
}

/// What an append did.
struct Written {
    offset: u64,
    /// Set when it completed the upload.
    file: Option<FileRecord>,
}

/// Streams `body` onto upload `up` (whose offset the caller checked) under
/// `lease`, records the new offset, and completes the upload when the
/// request said its content ends it. Consumes the lease.
async fn write(
    state: &AppState,
    user: &str,
    mut lease: Lease,
    up: &TusUpload,
    job: Job,
    body: Body,
) -> Result<Written, Problem> {
    let res = write_inner(state, user, &mut lease, up, job, body).await;
    lease.release().await;
    res
}

async fn write_inner(
    state: &AppState,
    user: &str,
    lease: &mut Lease,
    up: &TusUpload,
    job: Job,
    body: Body,
) -> Result<Written, Problem> {
    let id = up.id;
    let start = up.upload_offset.max(0) as u64;
    // What the reservation holds: the length when it was known at
    // creation; else what was granted so far, topped up to the length once
    // a request says it (refused with 507 at once when it does not fit).
    let (reserved, growable) = if job.grows {
        let held = state.meta.reservation_bytes(id).await?.unwrap_or(start);
        match job.length {
            Some(l) if l > held => {
                if let Err(e) = state
                    .meta
                    .grow_reservation(id, l - held, state.config.reservation_ttl)
                    .await
                {
                    return Err(refused(state, user, held, AppError::from(e)).await);
                }
                (l, false)
            }
            Some(l) => (held.max(l), false),
            None => (held, true),
        }
    } else {
        (job.length.unwrap_or(up.upload_length.max(0) as u64), false)
    };
    if let (true, Some(l)) = (job.grows, job.length) {
        // Learned now: HEAD reports it and later appends are held to it.
        record_length(state, lease, up, l).await?;
    }
    let mut stage = tus::core::open_stage(state, lease, up, reserved, growable).await?;
    let watch = append::Watch {
        id,
        protocol: "ietf-draft",
        idle: BODY_IDLE,
        shutdown: &state.shutdown,
        limit: job.length,
    };
    let end = append::run(&mut stage, lease, body.into_data_stream(), watch, |_| {}).await?;
    let mut cut = None;
    let mut out_of_room = None;
    match end {
        End::Done => {}
        End::Cut(c) => cut = Some(c),
        End::PastLimit => {
            // The draft: an upload whose offset would pass its length is
            // invalid from then on.
            drop(stage);
            if lease.finish_row().await {
                ingest::abandon(state, id).await;
            }
            return Err(Problem::inconsistent_length(format!(
                "the content runs past the upload's length {}; the upload is dropped",
                job.length.unwrap_or_default()
            )));
        }
        // Out of room: keep what is in (it may resume once there is
        // room), answer 507.
        End::Refused(e @ IngestError::QuotaExceeded { .. }) => {
            out_of_room = Some(AppError::from(e))
        }
        End::Refused(e) => {
            drop(stage);
            if matches!(
                e,
                IngestError::UnsupportedType(_) | IngestError::TooLarge(_)
            ) {
                // It can never complete.
                ingest::record_ingest_refusal(state, user, id, None, &e).await;
                if lease.finish_row().await {
                    ingest::abandon(state, id).await;
                }
            }
            return Err(refused(state, user, 0, e.into()).await);
        }
    }
    let staged = stage.finish().await.map_err(AppError::from)?;
    let new_offset = staged.len;
    let written = new_offset - start;
    let ended = cut.is_none() && out_of_room.is_none();
    // Complete when the request says so, or (what tus-js-client's IETF
    // protocols count on) when a known length is reached.
    let whole = ended
        && match job.length {
            Some(l) => l == new_offset,
            None => job.complete,
        };
    if written > 0 || whole {
        tus::core::record(state, lease, id, new_offset, staged.hash.as_ref(), whole).await?;
    }
    if !whole {
        lease.release().await;
        let at = |mut p: Problem| {
            p.headers
                .insert(UPLOAD_OFFSET.clone(), HeaderValue::from(new_offset));
            p.with_complete(false)
        };
        if let Some(e) = out_of_room {
            let held = state.meta.reservation_bytes(id).await?.unwrap_or(0);
            return Err(at(refused(state, user, held, e).await));
        }
        return match cut {
            Some(Cut::Shutdown) => Err(at(AppError::Unavailable(format!(
                "the server is restarting; resume at Upload-Offset {new_offset}"
            ))
            .into())),
            Some(Cut::Disconnected) => Err(at(Problem::bad_request("the content ended early"))),
            Some(Cut::TakenOver) => Err(at(AppError::Conflict(format!(
                "another request took this upload over at offset {new_offset}"
            ))
            .into())),
            None if job.complete => Err(at(Problem::inconsistent_length(format!(
                "the upload was to end here, at {new_offset} bytes, but its length is {}",
                job.length.unwrap_or_default()
            )))),
            None => Ok(Written {
                offset: new_offset,
                file: None,
            }),
        };
    }
    let file = complete(
        state,
        user,
        lease,
        id,
        new_offset,
        staged.hash,
        staged.head,
        job,
    )
    .await?;
    Ok(Written {
        offset: new_offset,
        file: Some(file),
    })
}

/// Writes the length of an upload created without one, learned from a
/// later append (its `Upload-Length`, or the offset plus the
/// `Content-Length` of an append that completes it), into the upload row
/// (one conditional `UPDATE` under this request's lease), whose
/// reservation already covers it; the unknown-length mark is dropped from
/// its metadata.
async fn record_length(
    state: &AppState,
    lease: &mut Lease,
    up: &TusUpload,
    length: u64,
) -> Result<(), Problem> {
    let mut meta = metadata_from_json(&up.metadata);
    meta.remove(META_LENGTH_UNKNOWN);
    let metadata = metadata_to_json(&meta);
    if !state
        .meta
        .set_tus_length(up.id, lease.owner(), length, &metadata)
        .await?
    {
        lease.mark_lost();
        return Err(AppError::Conflict("another request took this upload over".into()).into());
    }
    tracing::info!(upload = %up.id, length, "resumable upload length learned");
    Ok(())
}

/// The upload is whole (`len` bytes): sha256 over all of it (from the saved
/// state, or by reading the staged data back), checked against
/// `Repr-Digest`, then the shared publish-and-commit, whose transaction also
/// deletes the upload row. The lease is renewed meanwhile and nobody takes
/// it over (the row says `completing`). Any failure drops the upload and
/// releases its quota: nothing is stored.
#[allow(clippy::too_many_arguments)]
async fn complete(
    state: &AppState,
    user: &str,
    lease: &mut Lease,
    id: Uuid,
    len: u64,
    whole: Option<RunningSha256>,
    head: Vec<u8>,
    job: Job,
) -> Result<FileRecord, Problem> {
    let owner = lease.owner();
    let name = job.meta.file_name.clone();
    let work = async {
        let head = ingest::staged_head(state, id, len, head).await?;
        let hash = match whole {
            Some(h) => h,
            None => ingest::hash_staged(state, id, len).await?,
        };
        let sha = hash.finish();
        if job.digest.is_some_and(|d| d != sha) {
            return Ok(Err(Problem::digest_mismatch()));
        }
        let hex: String = sha.iter().map(|b| format!("{b:02x}")).collect();
        ingest::publish_and_commit(state, user, id, len, &head, hex, job.meta, Some(owner))
            .await
            .map(Ok)
    };
    let res: Result<Result<FileRecord, Problem>, IngestError> = tokio::select! {
        r = work => r,
        _ = lease::renew_forever(state, id, owner) => unreachable!("renewal never ends"),
    };
    let res = match res {
        Ok(Ok(f)) => Ok(f),
        Ok(Err(p)) => {
            ingest::record_refusal(
                state,
                user,
                id,
                Some(&name),
                "checksum_mismatch",
                "Repr-Digest does not match",
            )
            .await;
            Err(p)
        }
        Err(e) => Err(Problem::from(e).with_complete(true)),
    };
    match &res {
        Ok(_) => lease.mark_done(),
        Err(p) => {
            tracing::info!(upload = %id, detail = %p.detail, "resumable upload completion failed");
            if lease.finish_row().await {
                ingest::abandon(state, id).await;
            }
        }
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(name: &'static str, v: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(name, HeaderValue::from_str(v).unwrap());
        m
    }

    #[test]
    fn disposition_names() {
        let cd = "content-disposition";
        assert_eq!(
            disposition_filename(&h(cd, "attachment; filename=\"a;b \\\"c\\\".png\"")),
            Some("a;b \"c\".png".into())
        );
        assert_eq!(
            disposition_filename(&h(
                cd,
                "attachment; filename=\"x.png\"; filename*=UTF-8''%C3%A9t%C3%A9.png"
            )),
            Some("été.png".into())
        );
        assert_eq!(disposition_filename(&h(cd, "inline")), None);
        assert_eq!(
            disposition_filename(&h(cd, "form-data; name=x; filename=plain.bin")),
            Some("plain.bin".into())
        );
    }

    #[test]
    fn repr_digest_sha256() {
        let d = [7u8; 32];
        let v = format!("sha-512=:AAAA:, sha-256=:{}:", STANDARD.encode(d));
        assert_eq!(repr_digest(&h("repr-digest", &v)).unwrap(), Some(d));
        assert!(repr_digest(&h("repr-digest", "sha-256=:AAAA:")).is_err());
        assert_eq!(repr_digest(&h("repr-digest", "md5=:AAAA:")).unwrap(), None);
    }

    #[test]
    fn completion_header_per_version() {
        let v3 = Version(3);
        let v8 = Version(8);
        assert_eq!(
            v3.read_complete(&h("upload-incomplete", "?1")),
            Ok(Some(false))
        );
        assert_eq!(
            v8.read_complete(&h("upload-complete", "?1")),
            Ok(Some(true))
        );
        assert_eq!(v8.read_complete(&h("upload-incomplete", "?1")), Ok(None));
        assert!(v8.read_complete(&h("upload-complete", "1")).is_err());
        let mut m = HeaderMap::new();
        v3.set_complete(&mut m, true);
        assert_eq!(m.get("upload-incomplete").unwrap(), "?0");
    }
}
