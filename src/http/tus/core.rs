//! The core protocol: `HEAD` (offset), `PATCH` (append) and completion.
//!
//! A PATCH holds the upload's [`lease`], so two requests never write to one
//! upload at once, whichever processes they reach; a later `HEAD` or `PATCH`
//! ends the earlier request instead of being refused (takeover). The body
//! streams through the shared [`Stage`] (early content sniff, running
//! sha256, staging write); the new offset is recorded, with the sha256 state
//! over the bytes up to it, only after the data is fsynced, so the recorded
//! offset never runs ahead of the data, and a later PATCH truncates anything
//! written past it. Completion deletes the upload row in the transaction that
//! commits the file row and releases the reservation.
//!
//! The work of a PATCH runs in a task of its own, so a client that goes away
//! mid-body does not cancel it: what arrived is made durable and recorded
//! (unless the request carried a checksum, then it is rolled back).

use axum::{
    body::Body,
    extract::State,
    http::{header, HeaderMap, HeaderValue, Method, StatusCode},
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{
    checksum::BodyHasher,
    headers::{self, http_date, metadata_from_json, ChecksumError},
    lease::{self, Acquired, Ended, Lease},
    *,
};
use crate::{
    blob::BlobError,
    domain::{filetype::FileType, names::sanitize_file_name},
    http::{
        download::serve_file,
        error::AppResult,
        extract::{AuthUser, FileId},
    },
    ingest::{
        self,
        append::{self, Cut, End},
        sha256::RunningSha256,
        FileMeta, IngestError, Stage,
    },
    meta::{FileRecord, TusProgress, TusRecorded, TusUpload},
};

/// `HEAD /api/uploads/{id}`: the offset of an upload in progress (after
/// ending any request still writing to it, so the offset is final); a
/// finished upload (its file id is the upload id) answers its full length
/// and `Stowage-File-Id`. Anyone but the creator gets 404.
pub async fn head(
    State(state): State<AppState>,
    user: AuthUser,
    FileId(id): FileId,
) -> AppResult<Response> {
    let mut h = HeaderMap::new();
    match find(&state, &user.0, id).await? {
        Found::InProgress(up) => {
            h.insert(UPLOAD_OFFSET.clone(), HeaderValue::from(up.upload_offset));
            h.insert(UPLOAD_LENGTH.clone(), HeaderValue::from(up.upload_length));
            h.insert(UPLOAD_EXPIRES.clone(), date_value(up.expires_at));
            let meta = headers::format_metadata(&metadata_from_json(&up.metadata));
            if !meta.is_empty() {
                if let Ok(v) = HeaderValue::from_str(&meta) {
                    h.insert(UPLOAD_METADATA.clone(), v);
                }
            }
        }
        Found::Finished(f) => finished_headers(&mut h, &f),
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok((StatusCode::OK, h).into_response())
}

/// What an offset retrieval finds of one of the user's uploads.
pub enum Found {
    /// In progress, its offset final (see [`find`]).
    InProgress(TusUpload),
    /// Completed: the file it became (the file id is the upload id).
    Finished(FileRecord),
}

/// The user's upload `id` for an offset retrieval (tus `HEAD`, the draft's
/// `HEAD`): a request still writing to it is ended first, so the offset is
/// final; a finished upload is its file; anything else is 404.
pub async fn find(state: &AppState, user: &str, id: Uuid) -> AppResult<Found> {
    let mut up = state.meta.get_tus_upload(user, id, state.now()).await?;
    if up.is_some() && lease::end_writer(state, id).await? == Ended::Ended {
        up = state.meta.get_tus_upload(user, id, state.now()).await?;
    }
    if let Some(up) = up {
        return Ok(Found::InProgress(up));
    }
    match state.meta.get_file(user, id).await? {
        Some(f) => Ok(Found::Finished(f)),
        None => Err(AppError::NotFound),
    }
}

/// The offset, length and file id of a finished upload, as both protocols
/// answer them.
pub fn finished_headers(h: &mut HeaderMap, f: &FileRecord) {
    h.insert(UPLOAD_OFFSET.clone(), HeaderValue::from(f.file_size));
    h.insert(UPLOAD_LENGTH.clone(), HeaderValue::from(f.file_size));
    h.insert(STOWAGE_FILE_ID.clone(), id_value(f.id));
}

/// `GET /api/uploads/{id}` of a finished upload: the file's bytes, exactly as
/// `GET /api/files/{id}/download` serves them (not part of tus; lets a client
/// holding only the upload URL read back what it sent).
pub async fn get_finished(
    State(state): State<AppState>,
    user: AuthUser,
    FileId(id): FileId,
    headers: HeaderMap,
) -> AppResult<Response> {
    let rec = user.file(&state, id).await?;
    serve_file(&state, &rec, &Method::GET, &headers, false).await
}

/// `PATCH /api/uploads/{id}`: appends the body at `Upload-Offset`.
pub async fn patch(
    state: State<AppState>,
    user: AuthUser,
    id: FileId,
    headers: HeaderMap,
    body: Body,
) -> Response {
    // A body a refusal left unread is settled by the server: a small rest
    // is read, else the answer says `Connection: close` (see
    // crate::http::server).
    patch_inner(state, user, id, headers, body)
        .await
        .into_response()
}

async fn patch_inner(
    State(state): State<AppState>,
    user: AuthUser,
    FileId(id): FileId,
    headers: HeaderMap,
    body: Body,
) -> AppResult<Response> {
    if !is_offset_stream(&headers) {
        return Err(AppError::UnsupportedMedia(format!(
            "PATCH needs Content-Type: {OFFSET_OCTET_STREAM}"
        )));
    }
    let offset = headers
        .get(&UPLOAD_OFFSET)
        .ok_or_else(|| AppError::BadRequest("Upload-Offset is required".into()))?
        .to_str()
        .map_err(|_| AppError::BadRequest("Upload-Offset is not valid".into()))
        .and_then(|v| {
            headers::parse_u64("Upload-Offset", v).map_err(|e| AppError::BadRequest(e.0))
        })?;
    let checksum = parse_checksum_header(&headers)?;
    let content_length = content_length(&headers);
    let (mut lease, up) = loop {
        match Lease::acquire(&state, &user.0, id).await? {
            Acquired::Held(lease, up) => break (lease, up),
            Acquired::Completing => lease::wait_for_completion(&state, id).await?,
            Acquired::Missing => {
                return finished(&state, &user.0, id, offset, content_length).await;
            }
        }
    };
    if up.upload_offset as u64 != offset {
        lease.release().await;
        return Err(AppError::Conflict(format!(
            "Upload-Offset is {offset} but the upload is at {}",
            up.upload_offset
        )));
    }
    let st = state.clone();
    let user_id = user.0.clone();
    // Its own task: a client leaving mid-body must not cancel the bookkeeping.
    let done = tokio::spawn(async move {
        append(&st, &user_id, lease, &up, content_length, checksum, body).await
    })
    .await
    .map_err(AppError::internal)??;
    let mut h = HeaderMap::new();
    done.headers(&mut h);
    Ok((StatusCode::NO_CONTENT, h).into_response())
}

/// A PATCH of an upload that is no longer in progress: when it finished
/// (a retried final PATCH, or one that waited for a completion), an empty
/// PATCH at its full length answers as the completing one did; else 404.
async fn finished(
    state: &AppState,
    user: &str,
    id: Uuid,
    offset: u64,
    content_length: Option<u64>,
) -> AppResult<Response> {
    match state.meta.get_file(user, id).await? {
        Some(f) if f.file_size as u64 == offset && content_length.unwrap_or(0) == 0 => {
            let mut h = HeaderMap::new();
            h.insert(UPLOAD_OFFSET.clone(), HeaderValue::from(offset));
            h.insert(STOWAGE_FILE_ID.clone(), id_value(f.id));
            Ok((StatusCode::NO_CONTENT, h).into_response())
        }
        _ => Err(AppError::NotFound),
    }
}

/// True for `Content-Type: application/offset+octet-stream` (parameters and
/// case ignored).
pub fn is_offset_stream(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(OFFSET_OCTET_STREAM))
}

pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

pub fn parse_checksum_header(headers: &HeaderMap) -> AppResult<Option<headers::Checksum>> {
    let Some(v) = headers.get(&UPLOAD_CHECKSUM) else {
        return Ok(None);
    };
    let v = v
        .to_str()
        .map_err(|_| AppError::BadRequest("Upload-Checksum is not valid".into()))?;
    match headers::parse_checksum(v) {
        Ok(c) => Ok(Some(c)),
        Err(ChecksumError::Unsupported(m)) | Err(ChecksumError::Malformed(m)) => {
            Err(AppError::BadRequest(m))
        }
    }
}

pub fn id_value(id: Uuid) -> HeaderValue {
    HeaderValue::from_str(&id.to_string()).expect("uuid is a valid header")
}

pub fn date_value(t: DateTime<Utc>) -> HeaderValue {
    HeaderValue::from_str(&http_date(t)).expect("date is a valid header")
}

/// Upload-Metadata → the fields a file is committed with: `filename`
/// (sanitized), `file_type` (declared type, checked against the content),
/// `package_name`, `tags` (comma list). `filetype` (a MIME claim) is ignored:
/// content decides.
pub fn file_meta(
    meta: &std::collections::BTreeMap<String, Option<Vec<u8>>>,
) -> AppResult<FileMeta> {
    let text = |k: &str| -> Option<String> {
        meta.get(k)
            .and_then(|v| v.as_ref())
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    let mut fm = FileMeta {
        file_name: sanitize_file_name(
            &text("filename")
                .or_else(|| text("name"))
                .unwrap_or_default(),
        ),
        ..Default::default()
    };
    if let Some(d) = text("file_type")
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
    {
        fm.declared_type = Some(FileType::parse(&d).ok_or_else(|| {
            AppError::BadRequest(format!(
                "file_type must be one of video, image, audio, scene, project (got {d:?})"
            ))
        })?);
    }
    fm.package_name = text("package_name");
    if let Some(t) = text("tags") {
        fm.tags = ingest::normalize_tags(t.split(','))?;
    }
    ingest::check_meta(&mut fm)?;
    Ok(fm)
}

/// Makes the new upload `up` real: its reservation extended to the upload's
/// lifetime, an empty staging blob, and the row, locked for `owner` (who
/// appends at once) when given. On failure the reservation is given up.
pub async fn open_upload(state: &AppState, up: &TusUpload, owner: Option<Uuid>) -> AppResult<()> {
    let lock = owner.map(|o| (o, up.created_at + lease::lease_len()));
    let setup = async {
        state
            .meta
            .touch_reservation(up.id, state.config.upload_expiry)
            .await?;
        state.blobs.stage(up.id, 0).await?.finish().await?;
        state.meta.create_tus_upload(up, lock).await?;
        AppResult::Ok(())
    }
    .await;
    if setup.is_err() {
        ingest::abandon(state, up.id).await;
    }
    setup
}

pub fn expiry_from(state: &AppState, now: DateTime<Utc>) -> DateTime<Utc> {
    now + chrono::Duration::from_std(state.config.upload_expiry)
        .unwrap_or(chrono::Duration::days(1))
}

/// What an append did.
pub struct Appended {
    pub offset: u64,
    pub expires_at: DateTime<Utc>,
    /// Set when this append completed the upload.
    pub file: Option<FileRecord>,
}

impl Appended {
    /// The tus answer's headers: the new offset, and the file it became or
    /// when the rest is due.
    pub fn headers(&self, h: &mut HeaderMap) {
        h.insert(UPLOAD_OFFSET.clone(), HeaderValue::from(self.offset));
        match &self.file {
            Some(f) => {
                h.insert(STOWAGE_FILE_ID.clone(), id_value(f.id));
            }
            None => {
                h.insert(UPLOAD_EXPIRES.clone(), date_value(self.expires_at));
            }
        }
    }
}

/// Streams `body` onto upload `up` (whose offset the caller checked) under
/// `lease`, then records the new offset, or completes the upload when it is
/// whole. Consumes the lease, released before this returns.
pub async fn append(
    state: &AppState,
    user: &str,
    mut lease: Lease,
    up: &TusUpload,
    content_length: Option<u64>,
    checksum: Option<headers::Checksum>,
    body: Body,
) -> AppResult<Appended> {
    let res = append_inner(state, user, &mut lease, up, content_length, checksum, body).await;
    lease.release().await;
    // Refusals of the body itself; those of the finished upload (type,
    // malware, quota) were recorded by the commit.
    if let Err(e @ (AppError::ChecksumMismatch(_) | AppError::TooLarge(_))) = &res {
        ingest::record_refusal(state, user, up.id, None, e.code(), &e.to_string()).await;
    }
    res
}

async fn append_inner(
    state: &AppState,
    user: &str,
    lease: &mut Lease,
    up: &TusUpload,
    content_length: Option<u64>,
    checksum: Option<headers::Checksum>,
    body: Body,
) -> AppResult<Appended> {
    let id = up.id;
    let length = up.upload_length.max(0) as u64;
    let start = up.upload_offset.max(0) as u64;
    if let Some(cl) = content_length {
        if start + cl > length {
            return Err(AppError::TooLarge(format!(
                "{cl} bytes at offset {start} would pass Upload-Length {length}"
            )));
        }
    }
    let mut stage = open_stage(state, lease, up, length, false).await?;
    let mut body_hash = checksum.as_ref().map(|c| BodyHasher::new(c.algo));
    let watch = append::Watch {
        id,
        protocol: "tus",
        idle: BODY_IDLE,
        shutdown: &state.shutdown,
        limit: Some(length),
    };
    let end = append::run(&mut stage, lease, body.into_data_stream(), watch, |c| {
        if let Some(h) = body_hash.as_mut() {
            h.update(c);
        }
    })
    .await?;
    let cut = match end {
        End::Done => None,
        End::Cut(c) => Some(c),
        End::PastLimit => {
            drop(stage);
            rollback(state, id, start).await;
            return Err(AppError::TooLarge(format!(
                "the body goes past Upload-Length {length}"
            )));
        }
        End::Refused(e) => {
            drop(stage);
            if matches!(e, IngestError::UnsupportedType(_)) {
                // Refused by its first bytes: it can never complete.
                if lease.finish_row().await {
                    ingest::abandon(state, id).await;
                }
            }
            return Err(e.into());
        }
    };
    let staged = stage.finish().await?;
    let new_offset = staged.len;
    let written = new_offset - start;
    if let (Some(c), Some(h)) = (&checksum, body_hash) {
        if cut.is_some() {
            rollback(state, id, start).await;
            return Err(AppError::BadRequest(
                "the body ended early; with Upload-Checksum nothing of it is kept".into(),
            ));
        }
        if !h.matches(c) {
            rollback(state, id, start).await;
            return Err(AppError::ChecksumMismatch(format!(
                "the body does not match its {} checksum; nothing of it was kept",
                c.algo.name()
            )));
        }
    }
    let whole = new_offset == length;
    let expires_at = if written > 0 || whole {
        record(state, lease, id, new_offset, staged.hash.as_ref(), whole).await?
    } else {
        expiry_from(state, state.now())
    };
    if !whole {
        lease.release().await;
        return match cut {
            Some(Cut::Shutdown) => Err(AppError::Unavailable(format!(
                "the server is restarting; resume at Upload-Offset {new_offset}"
            ))),
            Some(Cut::Disconnected) => Err(AppError::BadRequest("the body ended early".into())),
            Some(Cut::TakenOver) => Err(AppError::Conflict(format!(
                "another request took this upload over at offset {new_offset}"
            ))),
            None => Ok(Appended {
                offset: new_offset,
                expires_at,
                file: None,
            }),
        };
    }
    let file = complete(state, user, lease, up, staged.hash, staged.head).await?;
    Ok(Appended {
        offset: new_offset,
        expires_at,
        file: Some(file),
    })
}

/// Opens upload `up`'s staged data at its offset for an append, with the
/// sha256 state saved with that offset, against a reservation of
/// `reserved` bytes (`growable`: grown as bytes arrive). One call opens the
/// data and checks it holds that many bytes (on an object store, a listing
/// plus a probe); when they are gone there is nothing to resume: the upload
/// is dropped and the answer is 404.
pub async fn open_stage(
    state: &AppState,
    lease: &mut Lease,
    up: &TusUpload,
    reserved: u64,
    growable: bool,
) -> AppResult<Stage> {
    let id = up.id;
    let start = up.upload_offset.max(0) as u64;
    let writer = match state.blobs.stage(id, start).await {
        Ok(w) => w,
        Err(BlobError::NotFound) => {
            tracing::error!(upload = %id, start, "staging data of an upload is missing; dropping the upload");
            if lease.finish_row().await {
                ingest::abandon(state, id).await;
            }
            return Err(AppError::NotFound);
        }
        Err(e) => return Err(e.into()),
    };
    let before = up
        .hash_state
        .as_deref()
        .and_then(RunningSha256::from_bytes)
        .filter(|h| h.len() == start)
        .or_else(|| (start == 0).then(RunningSha256::new));
    Ok(Stage::resume(
        state,
        id,
        writer,
        start,
        before,
        reserved,
        growable,
        state.config.upload_expiry,
    )
    .await)
}

/// Records an append's new offset (with the sha256 state over the bytes
/// up to it, and whether the holder goes on to complete the upload) under
/// the lease, after the data is durable, pushes the upload's and its
/// reservation's expiry forward and, unless it goes on to complete, gives
/// the lease up: all in one transaction, so an append costs one commit
/// after its data. Returns the new expiry; a lease lost meanwhile is a 409
/// (and nothing was recorded).
pub async fn record(
    state: &AppState,
    lease: &mut Lease,
    id: Uuid,
    offset: u64,
    hash: Option<&RunningSha256>,
    completing: bool,
) -> AppResult<DateTime<Utc>> {
    let expires_at = expiry_from(state, state.now());
    let progress = TusProgress {
        offset,
        hash_state: hash.map(RunningSha256::to_bytes),
        expires_at,
        completing,
    };
    let release = !completing;
    match state
        .meta
        .record_tus_progress(
            id,
            lease.owner(),
            &progress,
            state.config.upload_expiry,
            release,
        )
        .await?
    {
        TusRecorded::Lost => {
            lease.mark_lost();
            return Err(AppError::Conflict(
                "another request took this upload over".into(),
            ));
        }
        TusRecorded::NoReservation => {
            tracing::warn!(upload = %id, "could not extend the upload's reservation: it is gone");
        }
        TusRecorded::Recorded => {}
    }
    if release {
        lease.mark_released();
    }
    Ok(expires_at)
}

/// Cuts the staged data back to `offset` (nothing of a refused PATCH stays;
/// the row's offset and hash state did not move).
async fn rollback(state: &AppState, id: Uuid, offset: u64) {
    let res = async { state.blobs.stage(id, offset).await?.finish().await }.await;
    if let Err(e) = res {
        // The recorded offset did not move; the next PATCH truncates anyway.
        tracing::warn!(error = %e, upload = %id, "could not truncate staged data");
    }
}

/// The upload is whole: sha256 over all of it (from the saved state, or by
/// reading the staged data back when there is none), the type from its first
/// bytes, then the shared publish-and-commit, whose transaction also deletes
/// the upload row. The lease is renewed while this works, and nobody takes
/// it over (the row says `completing`). Any failure drops the upload and
/// releases its quota, unless the lease was lost to another request.
async fn complete(
    state: &AppState,
    user: &str,
    lease: &mut Lease,
    up: &TusUpload,
    whole: Option<RunningSha256>,
    head: Vec<u8>,
) -> AppResult<FileRecord> {
    let id = up.id;
    let len = up.upload_length.max(0) as u64;
    let owner = lease.owner();
    let work = async {
        let head = ingest::staged_head(state, id, len, head).await?;
        let sha256 = match whole {
            Some(h) => h.finish_hex(),
            None => {
                tracing::info!(upload = %id, "no saved hash state; reading the staged data back");
                ingest::hash_staged(state, id, len).await?.finish_hex()
            }
        };
        let meta = file_meta(&metadata_from_json(&up.metadata))?;
        let rec =
            ingest::publish_and_commit(state, user, id, len, &head, sha256, meta, Some(owner))
                .await?;
        Ok::<_, AppError>(rec)
    };
    let res = tokio::select! {
        r = work => r,
        _ = lease::renew_forever(state, id, owner) => unreachable!("renewal never ends"),
    };
    match &res {
        Ok(rec) => {
            lease.mark_done();
            crate::jobs::after_commit(state, rec).await;
        }
        Err(e) => {
            tracing::info!(upload = %id, error = %e, "tus completion failed");
            if lease.finish_row().await {
                ingest::abandon(state, id).await;
            }
        }
    }
    res
}
