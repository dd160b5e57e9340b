//! The core protocol: `HEAD` (offset), `PATCH` (append) and completion.
//!
//! A PATCH holds a lease on its upload row (`lock_owner`, `locked_until`),
//! taken with one conditional `UPDATE` and renewed while the body streams, so
//! two PATCHes on one upload never write at once, whichever processes they
//! reach; the loser answers 423 (or 409 once the offset has moved). The body
//! streams chunk by chunk into the staging blob; the new offset is recorded
//! only after the data is fsynced, so the recorded offset never runs ahead of
//! the data, and a later PATCH truncates anything written past it.
//!
//! The work of a PATCH runs in a task of its own, so a client that goes away
//! mid-body does not cancel it: what arrived is made durable and recorded
//! (unless the request carried a checksum, then it is rolled back).

use std::{collections::HashMap, sync::Mutex, time::Instant};

use axum::{
    body::Body,
    extract::State,
    http::{header, HeaderMap, HeaderValue, Method, StatusCode},
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{
    checksum::BodyHasher,
    headers::{self, http_date, metadata_from_json, ChecksumError},
    *,
};
use crate::{
    blob::BlobError,
    domain::{
        filetype::{FileType, SNIFF_LEN},
        names::sanitize_file_name,
    },
    http::{
        download::serve_file,
        error::AppResult,
        extract::{AuthUser, FileId},
    },
    ingest::{self, FileMeta},
    meta::{FileRecord, TusLock, TusUpload},
};

/// `HEAD /api/uploads/{id}`: the offset of an upload in progress; a finished
/// upload (its file id is the upload id) answers its full length and
/// `Stowage-File-Id`. Anyone but the creator gets 404.
pub async fn head(
    State(state): State<AppState>,
    user: AuthUser,
    FileId(id): FileId,
) -> AppResult<Response> {
    let mut h = HeaderMap::new();
    if let Some(up) = state.meta.get_tus_upload(&user.0, id, Utc::now()).await? {
        h.insert(UPLOAD_OFFSET.clone(), HeaderValue::from(up.upload_offset));
        h.insert(UPLOAD_LENGTH.clone(), HeaderValue::from(up.upload_length));
        h.insert(UPLOAD_EXPIRES.clone(), date_value(up.expires_at));
        let meta = headers::format_metadata(&metadata_from_json(&up.metadata));
        if !meta.is_empty() {
            if let Ok(v) = HeaderValue::from_str(&meta) {
                h.insert(UPLOAD_METADATA.clone(), v);
            }
        }
    } else if let Some(f) = state.meta.get_file(&user.0, id).await? {
        h.insert(UPLOAD_OFFSET.clone(), HeaderValue::from(f.file_size));
        h.insert(UPLOAD_LENGTH.clone(), HeaderValue::from(f.file_size));
        h.insert(STOWAGE_FILE_ID.clone(), id_value(f.id));
    } else {
        return Err(AppError::NotFound);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok((StatusCode::OK, h).into_response())
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
    let rec = state
        .meta
        .get_file(&user.0, id)
        .await?
        .ok_or(AppError::NotFound)?;
    serve_file(&state, &rec, &Method::GET, &headers, false).await
}

/// `PATCH /api/uploads/{id}`: appends the body at `Upload-Offset`.
pub async fn patch(
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
    let (mut lease, up) = Lease::acquire(&state, &user.0, id).await?;
    if up.upload_offset as u64 != offset {
        lease.release().await;
        return Err(AppError::Conflict(format!(
            "Upload-Offset is {offset} but the upload is at {}",
            up.upload_offset
        )));
    }
    let st = state.clone();
    let user_id = user.0.clone();
    let content_length = content_length(&headers);
    // Its own task: a client leaving mid-body must not cancel the bookkeeping.
    let done = tokio::spawn(async move {
        append(&st, &user_id, lease, &up, content_length, checksum, body).await
    })
    .await
    .map_err(AppError::internal)??;
    let mut h = HeaderMap::new();
    h.insert(UPLOAD_OFFSET.clone(), HeaderValue::from(done.offset));
    match &done.file {
        Some(f) => {
            h.insert(STOWAGE_FILE_ID.clone(), id_value(f.id));
        }
        None => {
            h.insert(UPLOAD_EXPIRES.clone(), date_value(done.expires_at));
        }
    }
    Ok((StatusCode::NO_CONTENT, h).into_response())
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

/// A PATCH's hold on its upload row. Released explicitly, or (error, panic)
/// by a background task on drop; a crashed process's lease runs out.
pub struct Lease {
    state: AppState,
    id: Uuid,
    owner: Uuid,
    last_renew: Instant,
    held: bool,
}

impl Lease {
    /// Takes the lease: 423 while someone else holds it, 404 when there is
    /// no such live upload of this user.
    pub async fn acquire(state: &AppState, user: &str, id: Uuid) -> AppResult<(Lease, TusUpload)> {
        let owner = Uuid::new_v4();
        let now = Utc::now();
        let lock = state
            .meta
            .lock_tus_upload(user, id, owner, now + lease_len(), expiry_from(state, now))
            .await?;
        match lock {
            TusLock::Acquired(up) => Ok((Lease::held(state, id, owner), up)),
            TusLock::Busy => Err(AppError::Locked(
                "another request is writing to this upload; retry shortly".into(),
            )),
            TusLock::Missing => Err(AppError::NotFound),
        }
    }

    /// A lease taken by creating the row already locked.
    pub fn held(state: &AppState, id: Uuid, owner: Uuid) -> Lease {
        Lease {
            state: state.clone(),
            id,
            owner,
            last_renew: Instant::now(),
            held: true,
        }
    }

    pub fn owner(&self) -> Uuid {
        self.owner
    }

    /// Renews the lease when due; 423 when it was lost (stalled too long).
    async fn keep(&mut self) -> AppResult<()> {
        if self.last_renew.elapsed() < LEASE_RENEW_EVERY {
            return Ok(());
        }
        self.last_renew = Instant::now();
        if self
            .state
            .meta
            .renew_tus_lock(self.id, self.owner, Utc::now() + lease_len())
            .await?
        {
            Ok(())
        } else {
            self.held = false;
            Err(AppError::Locked(
                "this request lost its lock on the upload".into(),
            ))
        }
    }

    async fn release(&mut self) {
        if !self.held {
            return;
        }
        self.held = false;
        if let Err(e) = self.state.meta.unlock_tus_upload(self.id, self.owner).await {
            tracing::warn!(error = %e, upload = %self.id, "could not release upload lock; it will expire");
        }
    }

    /// The row is gone (completed or failed); nothing to release.
    async fn finish_row(&mut self) {
        self.held = false;
        if let Err(e) = self.state.meta.finish_tus_upload(self.id, self.owner).await {
            tracing::warn!(error = %e, upload = %self.id, "could not delete finished upload row; cleanup will");
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.held {
            return;
        }
        let (state, id, owner) = (self.state.clone(), self.id, self.owner);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = state.meta.unlock_tus_upload(id, owner).await;
            });
        }
    }
}

fn lease_len() -> chrono::Duration {
    chrono::Duration::from_std(LEASE).expect("small duration")
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

/// sha256 states of uploads in progress on this process, by id, at the
/// offset they cover: a chunked upload then needs no re-read at completion.
/// A miss (another process, a restart) re-reads the staged data instead.
static WHOLE_HASH: Mutex<Option<HashMap<Uuid, (u64, Sha256)>>> = Mutex::new(None);
const WHOLE_HASH_MAX: usize = 4096;

fn hash_take(id: Uuid, offset: u64) -> Option<Sha256> {
    let mut g = WHOLE_HASH.lock().unwrap_or_else(|e| e.into_inner());
    match g.as_mut()?.remove(&id) {
        Some((o, h)) if o == offset => Some(h),
        _ => None,
    }
}

fn hash_put(id: Uuid, offset: u64, h: Sha256) {
    let mut g = WHOLE_HASH.lock().unwrap_or_else(|e| e.into_inner());
    let map = g.get_or_insert_with(HashMap::new);
    if map.len() < WHOLE_HASH_MAX {
        map.insert(id, (offset, h));
    }
}

pub fn hash_forget(id: Uuid) {
    let mut g = WHOLE_HASH.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(m) = g.as_mut() {
        m.remove(&id);
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
        ingest::record_refusal(state, user, up.id, None, e).await;
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
    // One call opens the staged data at the offset and checks it holds
    // that many bytes (on an object store, a listing plus a probe).
    let mut writer = match state.blobs.stage(id, start).await {
        Ok(w) => w,
        Err(BlobError::NotFound) => {
            // The staged bytes the offset counts are gone: nothing to resume.
            tracing::error!(upload = %id, start, "staging data of a tus upload is missing; dropping the upload");
            lease.finish_row().await;
            ingest::abandon(state, id).await;
            return Err(AppError::NotFound);
        }
        Err(e) => return Err(e.into()),
    };
    let before = hash_take(id, start).or_else(|| (start == 0).then(Sha256::new));
    let mut whole = before.clone();
    let mut body_hash = checksum.as_ref().map(|c| BodyHasher::new(c.algo));
    let mut written: u64 = 0;
    let mut disconnected = false;
    let mut stream = body.into_data_stream();
    loop {
        // A stopping server ends the PATCH like a disconnect: what arrived
        // is kept, its offset recorded and the lease released.
        let next = tokio::select! {
            n = tokio::time::timeout(BODY_IDLE, stream.next()) => n,
            _ = state.shutdown.cancelled() => {
                tracing::info!(upload = %id, written, "server stopping; keeping what arrived");
                disconnected = true;
                break;
            }
        };
        let chunk = match next {
            Ok(Some(Ok(c))) => c,
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                tracing::info!(upload = %id, error = %e, written, "tus body ended early");
                disconnected = true;
                break;
            }
            Err(_) => {
                tracing::info!(upload = %id, written, "tus body stalled");
                disconnected = true;
                break;
            }
        };
        if start + written + chunk.len() as u64 > length {
            drop(writer);
            rollback(state, id, start, before).await;
            return Err(AppError::TooLarge(format!(
                "the body goes past Upload-Length {length}"
            )));
        }
        lease.keep().await?;
        if let Some(h) = whole.as_mut() {
            h.update(&chunk);
        }
        if let Some(h) = body_hash.as_mut() {
            h.update(&chunk);
        }
        written += chunk.len() as u64;
        writer.write(chunk).await?;
    }
    let new_offset = writer.finish().await?;
    debug_assert_eq!(new_offset, start + written);
    if let (Some(c), Some(h)) = (&checksum, body_hash) {
        if disconnected {
            rollback(state, id, start, before).await;
            return Err(AppError::BadRequest(
                "the body ended early; with Upload-Checksum nothing of it is kept".into(),
            ));
        }
        if !h.matches(c) {
            rollback(state, id, start, before).await;
            return Err(AppError::ChecksumMismatch(format!(
                "the body does not match its {} checksum; nothing of it was kept",
                c.algo.name()
            )));
        }
    }
    let expires_at = expiry_from(state, Utc::now());
    if written > 0 || new_offset == length {
        if !state
            .meta
            .set_tus_offset(id, lease.owner(), new_offset, expires_at)
            .await?
        {
            lease.held = false;
            return Err(AppError::Locked(
                "this request lost its lock on the upload".into(),
            ));
        }
        if let Err(e) = state
            .meta
            .touch_reservation(id, state.config.upload_expiry)
            .await
        {
            tracing::warn!(error = %e, upload = %id, "could not extend the upload's reservation");
        }
    }
    if new_offset < length {
        if let Some(h) = whole {
            hash_put(id, new_offset, h);
        }
        lease.release().await;
        if disconnected && state.shutdown.is_cancelled() {
            return Err(AppError::Unavailable(format!(
                "the server is restarting; resume at Upload-Offset {new_offset}"
            )));
        }
        if disconnected {
            return Err(AppError::BadRequest("the body ended early".into()));
        }
        return Ok(Appended {
            offset: new_offset,
            expires_at,
            file: None,
        });
    }
    let file = complete(state, user, lease, up, whole).await?;
    Ok(Appended {
        offset: new_offset,
        expires_at,
        file: Some(file),
    })
}

/// Cuts the staged data back to `offset` (nothing of a refused PATCH stays).
async fn rollback(state: &AppState, id: Uuid, offset: u64, hash: Option<Sha256>) {
    let res = async { state.blobs.stage(id, offset).await?.finish().await }.await;
    if let Err(e) = res {
        // The recorded offset did not move; the next PATCH truncates anyway.
        tracing::warn!(error = %e, upload = %id, "could not truncate staged data");
    }
    if let Some(h) = hash {
        hash_put(id, offset, h);
    }
}

/// The upload is whole: sha256 over all of it (from the running state, or by
/// streaming the staged data back), the type from its first bytes, then the
/// shared publish-and-commit, which also releases the reservation. Any
/// failure drops the upload and releases its quota.
async fn complete(
    state: &AppState,
    user: &str,
    lease: &mut Lease,
    up: &TusUpload,
    whole: Option<Sha256>,
) -> AppResult<FileRecord> {
    let id = up.id;
    let len = up.upload_length.max(0) as u64;
    hash_forget(id);
    let res = async {
        let head = read_staged_all(state, id, 0..len.min(SNIFF_LEN as u64), None).await?;
        let sha256 = match whole {
            Some(h) => hex::encode(h.finalize()),
            None => {
                let mut h = Sha256::new();
                read_staged_all(state, id, 0..len, Some(&mut h)).await?;
                hex::encode(h.finalize())
            }
        };
        let meta = file_meta(&metadata_from_json(&up.metadata))?;
        ingest::publish_and_commit(state, user, id, len, &head, sha256, meta).await
    }
    .await;
    lease.finish_row().await;
    if res.is_err() {
        ingest::abandon(state, id).await;
    }
    res
}

/// Reads `range` of staging blob `id`: into the returned buffer when `hash`
/// is `None` (small ranges only), else through `hash` chunk by chunk.
async fn read_staged_all(
    state: &AppState,
    id: Uuid,
    range: std::ops::Range<u64>,
    mut hash: Option<&mut Sha256>,
) -> AppResult<Vec<u8>> {
    let mut out = Vec::new();
    let mut s = state.blobs.read_staged(id, range).await?;
    while let Some(chunk) = s.next().await {
        let chunk = chunk.map_err(AppError::internal)?;
        match hash.as_deref_mut() {
            Some(h) => h.update(&chunk),
            None => out.extend_from_slice(&chunk),
        }
    }
    Ok(out)
}
