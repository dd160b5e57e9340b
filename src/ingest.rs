//! The one ingest path for multipart and tus uploads:
//! reserve quota → stream to a staging blob while hashing and sniffing →
//! fsync → decide the type from content → publish under its final key →
//! commit the row (which releases the reservation in the same transaction).
//! Every step takes the service [`Core`] and fails with an [`IngestError`];
//! the committed record goes back to the caller, which answers the client
//! and queues follow-up work.
//!
//! [`Stage`] is the streaming part every protocol shares (reservation
//! growth, early content sniff, the running sha256, the staging write and
//! its fsync); a tus PATCH runs one over its part of the upload, resuming
//! the hash saved with the upload's offset ([`sha256`]). [`append`] is the
//! loop both resumable protocols (tus and the IETF draft) feed a request
//! body through it with, under the request's lease.
//!
//! [`Ingest`] is a multipart upload's drop guard around a [`Stage`]: if it is
//! dropped before [`Ingest::commit`] (client gone, error, panic), a background
//! task removes the staging blob and releases the reservation, so nothing
//! leaks and nothing half-written is listed. A crash that skips even that is
//! caught by the reservation's expiry and `stowage cleanup`.

pub mod append;
pub mod error;
pub mod sha256;

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::StreamExt;
use uuid::Uuid;

pub use self::error::{IngestError, IngestResult};
use self::sha256::RunningSha256;

use crate::{
    blob::BlobWriter,
    core::Core,
    domain::{
        filetype::{decide, sniff, FileType, SNIFF_LEN},
        names::user_dir_name,
    },
    meta::{FileRecord, MediaUpdate, MetaError, NewEvent, NewFile},
};

/// Unknown-size uploads grow their reservation in steps of this size.
pub const GROW_STEP: u64 = 8 * 1024 * 1024;
/// How often a streaming upload pushes its reservation's expiry forward.
const TOUCH_EVERY: Duration = Duration::from_secs(30);

/// What the client told us about the size before sending the body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SizeHint {
    /// The file is exactly this long (tus `Upload-Length`).
    Exact(u64),
    /// The file is at most this long (a multipart request's Content-Length).
    AtMost(u64),
    /// Nothing known (chunked transfer): counted while streaming.
    Unknown,
}

/// Client-supplied descriptive fields; validated before commit.
#[derive(Clone, Debug, Default)]
pub struct FileMeta {
    pub file_name: String,
    pub declared_type: Option<FileType>,
    pub package_name: Option<String>,
    pub tags: Vec<String>,
}

/// Reserves room for an upload of `hint` for `user`, answering 413 over the
/// per-file limit, 507 without room and 429 at the user's cap of unfinished
/// uploads, before any byte is read. The reservation has no holder: it lives
/// until it is released or expires (a tus upload's).
pub async fn reserve(state: &Core, user: &str, hint: SizeHint) -> IngestResult<(Uuid, u64)> {
    reserve_with(state, user, hint, state.config.reservation_ttl, None).await
}

/// [`reserve`] with a reservation that expires after `ttl` unless used.
pub async fn reserve_for(
    state: &Core,
    user: &str,
    hint: SizeHint,
    ttl: Duration,
) -> IngestResult<(Uuid, u64)> {
    reserve_with(state, user, hint, ttl, None).await
}

/// [`reserve`] held by `holder`: released as soon as that process is gone
/// (see [`crate::node`]), for uploads that live within one request.
pub async fn reserve_as(
    state: &Core,
    user: &str,
    hint: SizeHint,
    holder: Option<crate::meta::Holder>,
) -> IngestResult<(Uuid, u64)> {
    reserve_with(state, user, hint, state.config.reservation_ttl, holder).await
}

async fn reserve_with(
    state: &Core,
    user: &str,
    hint: SizeHint,
    ttl: Duration,
    holder: Option<crate::meta::Holder>,
) -> IngestResult<(Uuid, u64)> {
    let max = state.config.max_file_size;
    let want = match hint {
        SizeHint::Exact(n) if n > max => {
            return Err(IngestError::TooLarge(format!(
                "file is {n} bytes; the limit is {max} bytes"
            )))
        }
        SizeHint::Exact(n) => n,
        SizeHint::AtMost(n) => n.min(max),
        // Grown while streaming, so a small file fits a nearly full quota.
        SizeHint::Unknown => 0,
    };
    let id = state
        .meta
        .reserve_upload(
            user,
            state.config.default_quota,
            want,
            ttl,
            state.config.limits.max_unfinished_uploads,
            holder,
        )
        .await
        .map_err(|e| {
            if matches!(e, MetaError::QuotaExceeded { .. }) {
                crate::telemetry::metrics::quota_refused();
            }
            IngestError::from(e)
        })?;
    Ok((id, want))
}

/// The streaming stage of an upload: appends chunks to staging blob `id`
/// from some offset, keeping the whole-file sha256 (when the state up to
/// that offset is known), the first [`SNIFF_LEN`] bytes for an early type
/// check, the per-file limit and the reservation.
pub struct Stage {
    state: Core,
    /// Reservation id; also the staging blob id.
    id: Uuid,
    writer: Option<Box<dyn BlobWriter>>,
    hash: Hash,
    head: Vec<u8>,
    /// The early type check is behind us (done by an earlier request, or
    /// impossible because the head could not be read back).
    head_checked: bool,
    len: u64,
    reserved: u64,
    growable: bool,
    /// The reservation is a hard limit the client agreed to (a signed
    /// upload URL's `max_bytes`): passing it is 413, not a malformed body.
    capped: bool,
    /// How far each touch pushes the reservation's expiry.
    touch_ttl: Duration,
    last_touch: Instant,
}

/// Where a [`Stage`]'s running sha256 is.
enum Hash {
    /// Unknown (the state before the start was lost): no hash.
    None,
    /// Updated here, chunk by chunk.
    Inline(RunningSha256),
    /// Fed by the writer on its own thread ([`crate::blob::Tap`]), so
    /// hashing overlaps with receiving; complete once the writer finished.
    Tapped(Arc<Mutex<RunningSha256>>),
}

impl crate::blob::Tap for RunningSha256 {
    fn update(&mut self, data: &[u8]) {
        RunningSha256::update(self, data)
    }
}

/// What a [`Stage`] made durable.
pub struct Staged {
    /// Bytes staged in all (the new offset).
    pub len: u64,
    /// The sha256 state over all of them, when known.
    pub hash: Option<RunningSha256>,
    /// The first bytes of the file, as far as this stage saw them.
    pub head: Vec<u8>,
}

impl Stage {
    /// A stage appending through `writer` (opened at `start`) to an upload
    /// whose reservation holds `reserved` bytes (`growable`: grown on
    /// demand). `hash` is the sha256 state over the first `start` bytes,
    /// if known.
    #[allow(clippy::too_many_arguments)]
    pub async fn resume(
        state: &Core,
        id: Uuid,
        writer: Box<dyn BlobWriter>,
        start: u64,
        hash: Option<RunningSha256>,
        reserved: u64,
        growable: bool,
        touch_ttl: Duration,
    ) -> Stage {
        let mut head = Vec::new();
        let mut head_checked = start >= SNIFF_LEN as u64;
        if start > 0 && !head_checked {
            match read_staged(state, id, 0..start).await {
                Ok(h) => head = h,
                Err(_) => head_checked = true,
            }
        }
        let mut writer = writer;
        let hash = match hash.filter(|h| h.len() == start) {
            None => Hash::None,
            Some(h) => {
                let shared = Arc::new(Mutex::new(h));
                if writer.set_tap(shared.clone()) {
                    Hash::Tapped(shared)
                } else {
                    Hash::Inline(unshare(shared))
                }
            }
        };
        Stage {
            state: state.clone(),
            id,
            writer: Some(writer),
            hash,
            head,
            head_checked,
            len: start,
            reserved,
            growable,
            capped: false,
            touch_ttl,
            last_touch: Instant::now(),
        }
    }

    /// Bytes staged so far, counting those before the start.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends a chunk, enforcing the per-file limit and the reservation.
    pub async fn write(&mut self, chunk: bytes::Bytes) -> IngestResult<()> {
        let new_len = self.len + chunk.len() as u64;
        let max = self.state.config.max_file_size;
        if new_len > max {
            return Err(IngestError::TooLarge(format!(
                "file exceeds the limit of {max} bytes"
            )));
        }
        if new_len > self.reserved {
            if self.capped {
                return Err(IngestError::TooLarge(format!(
                    "the upload is larger than the {} bytes this URL allows",
                    self.reserved
                )));
            }
            if !self.growable {
                return Err(IngestError::Invalid(
                    "body is longer than the size it declared".into(),
                ));
            }
            self.grow(new_len - self.reserved).await?;
        }
        if !self.head_checked && self.head.len() < SNIFF_LEN {
            let take = (SNIFF_LEN - self.head.len()).min(chunk.len());
            self.head.extend_from_slice(&chunk[..take]);
            if self.head.len() == SNIFF_LEN {
                self.head_checked = true;
                early_type_check(&self.state, &self.head)?;
            }
        }
        if let Hash::Inline(h) = &mut self.hash {
            h.update(&chunk);
        }
        self.writer
            .as_mut()
            .expect("writer open until finish")
            .write(chunk)
            .await?;
        self.len = new_len;
        if self.last_touch.elapsed() >= TOUCH_EVERY {
            self.last_touch = Instant::now();
            // Best effort: a failed touch only risks expiry, re-checked at commit.
            if let Err(e) = self
                .state
                .meta
                .touch_reservation(self.id, self.touch_ttl)
                .await
            {
                tracing::warn!(error = %e, reservation = %self.id, "could not extend reservation");
            }
        }
        Ok(())
    }

    /// Grows the reservation by at least `needed` bytes: a whole step first
    /// (fewer round trips); near the limit, just what is needed.
    async fn grow(&mut self, needed: u64) -> IngestResult<()> {
        let max = self.state.config.max_file_size;
        let step = needed.max(GROW_STEP).min(max - self.reserved);
        let ttl = self.state.config.reservation_ttl;
        let granted = match self.state.meta.grow_reservation(self.id, step, ttl).await {
            Ok(()) => step,
            Err(MetaError::QuotaExceeded { .. }) if step > needed => self
                .state
                .meta
                .grow_reservation(self.id, needed, ttl)
                .await
                .map(|_| needed)
                .map_err(|e| {
                    crate::telemetry::metrics::quota_refused();
                    IngestError::from(e)
                })?,
            Err(e) => {
                if matches!(e, MetaError::QuotaExceeded { .. }) {
                    crate::telemetry::metrics::quota_refused();
                }
                return Err(e.into());
            }
        };
        self.reserved += granted;
        self.last_touch = Instant::now();
        Ok(())
    }

    /// Flushes and fsyncs what was written.
    pub async fn finish(mut self) -> IngestResult<Staged> {
        let writer = self.writer.take().expect("writer open until finish");
        let staged = writer.finish().await?;
        debug_assert_eq!(staged, self.len);
        let hash = match std::mem::replace(&mut self.hash, Hash::None) {
            Hash::None => None,
            Hash::Inline(h) => Some(h),
            Hash::Tapped(shared) => Some(unshare(shared)),
        };
        Ok(Staged {
            len: self.len,
            hash,
            head: std::mem::take(&mut self.head),
        })
    }
}

/// The hash out of its shared cell (a copy, if a writer's finished task
/// were still holding the cell).
fn unshare(shared: Arc<Mutex<RunningSha256>>) -> RunningSha256 {
    match Arc::try_unwrap(shared) {
        Ok(m) => m.into_inner().unwrap_or_else(|p| p.into_inner()),
        Err(shared) => shared.lock().unwrap_or_else(|p| p.into_inner()).clone(),
    }
}

/// Refuses content that no declared type could make acceptable, as soon
/// as enough bytes are in, instead of after the whole body.
fn early_type_check(state: &Core, head: &[u8]) -> IngestResult<()> {
    match sniff(head) {
        Some(s) if state.allowed_mime.iter().any(|a| a == s.mime) => Ok(()),
        Some(s) => Err(IngestError::UnsupportedType(format!(
            "content type {} is not accepted",
            s.mime
        ))),
        None => Err(IngestError::UnsupportedType(
            "file content is not an accepted type".into(),
        )),
    }
}

/// Reads `range` of staging blob `id` into memory (small ranges only).
pub async fn read_staged(
    state: &Core,
    id: Uuid,
    range: std::ops::Range<u64>,
) -> IngestResult<Vec<u8>> {
    let mut out = Vec::new();
    let mut s = state.blobs.read_staged(id, range).await?;
    while let Some(chunk) = s.next().await {
        out.extend_from_slice(&chunk.map_err(IngestError::internal)?);
    }
    Ok(out)
}

/// The first bytes of staging blob `id` (`len` long) that the type check
/// reads: `head` when it holds them already, else read back.
pub async fn staged_head(state: &Core, id: Uuid, len: u64, head: Vec<u8>) -> IngestResult<Vec<u8>> {
    let want = len.min(SNIFF_LEN as u64);
    if head.len() as u64 >= want {
        return Ok(head);
    }
    read_staged(state, id, 0..want).await
}

/// sha256 over the first `len` bytes of staging blob `id`, read back (for
/// an upload whose saved state is missing).
pub async fn hash_staged(state: &Core, id: Uuid, len: u64) -> IngestResult<RunningSha256> {
    let mut h = RunningSha256::new();
    let mut s = state.blobs.read_staged(id, 0..len).await?;
    while let Some(chunk) = s.next().await {
        h.update(&chunk.map_err(IngestError::internal)?);
    }
    Ok(h)
}

/// A multipart upload in progress. See the module docs.
pub struct Ingest {
    state: Core,
    user: String,
    /// Reservation id; also the staging blob id.
    id: Uuid,
    stage: Option<Stage>,
    done: bool,
}

impl Ingest {
    /// Reserves room (held by this process) and opens the staging blob.
    pub async fn begin(state: &Core, user: &str, hint: SizeHint) -> IngestResult<Ingest> {
        let (id, reserved) = reserve_as(state, user, hint, Some(state.holder)).await?;
        Self::open(state, user, id, reserved, hint == SizeHint::Unknown, false).await
    }

    /// Streams into reservation `id` that was taken earlier (a signed
    /// upload URL's), which holds `reserved` bytes and may not grow. The
    /// drop guard releases it like any other.
    pub async fn adopt(state: &Core, user: &str, id: Uuid, reserved: u64) -> IngestResult<Ingest> {
        Self::open(state, user, id, reserved, false, true).await
    }

    async fn open(
        state: &Core,
        user: &str,
        id: Uuid,
        reserved: u64,
        growable: bool,
        capped: bool,
    ) -> IngestResult<Ingest> {
        let mut ingest = Ingest {
            state: state.clone(),
            user: user.to_string(),
            id,
            stage: None,
            done: false,
        };
        let writer = state.blobs.stage(id, 0).await?;
        let mut stage = Stage::resume(
            state,
            id,
            writer,
            0,
            Some(RunningSha256::new()),
            reserved,
            growable,
            state.config.reservation_ttl,
        )
        .await;
        stage.capped = capped;
        ingest.stage = Some(stage);
        Ok(ingest)
    }

    /// Bytes received so far.
    pub fn len(&self) -> u64 {
        self.stage.as_ref().map_or(0, Stage::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends a chunk, enforcing the per-file limit and the reservation;
    /// a refusal is recorded as `upload.failed`.
    pub async fn write(&mut self, chunk: bytes::Bytes) -> IngestResult<()> {
        let res = self
            .stage
            .as_mut()
            .expect("stage open until commit")
            .write(chunk)
            .await;
        if let Err(e) = &res {
            record_ingest_refusal(&self.state, &self.user, self.id, None, e).await;
        }
        res
    }

    /// Makes the data durable, checks the type, publishes and commits.
    pub async fn commit(mut self, meta: FileMeta) -> IngestResult<FileRecord> {
        let stage = self.stage.take().expect("stage open until commit");
        let staged = match stage.finish().await {
            Ok(staged) => staged,
            Err(e) => {
                self.abandon().await;
                return Err(e);
            }
        };
        let sha256 = staged
            .hash
            .expect("a multipart upload hashes from its first byte")
            .finish_hex();
        let committed = publish_and_commit(
            &self.state,
            &self.user,
            self.id,
            staged.len,
            &staged.head,
            sha256,
            meta,
            None,
        )
        .await;
        match committed {
            Ok(rec) => {
                self.done = true;
                Ok(rec)
            }
            Err(e) => {
                self.abandon().await;
                Err(e)
            }
        }
    }
}

impl Ingest {
    /// Gives the upload up now: removes the staging blob and releases the
    /// reservation before the caller answers, so that the usage a client
    /// reads right after a refusal is already exact. (The drop guard does
    /// the same, but in the background, after the answer has gone.)
    pub async fn abandon(mut self) {
        drop(self.stage.take());
        self.done = true;
        abandon(&self.state, self.id).await;
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let state = self.state.clone();
        let id = self.id;
        // Close the file before removing it.
        drop(self.stage.take());
        // Tracked, so a stopping server waits for the release before it exits.
        if tokio::runtime::Handle::try_current().is_ok() {
            let tasks = state.tasks.clone();
            tasks.spawn(async move { abandon(&state, id).await });
        }
    }
}

/// Removes staging blob `id` and releases its reservation (in that order, so
/// a staging blob never outlives its reservation unnoticed).
pub async fn abandon(state: &Core, id: Uuid) {
    if let Err(e) = state.blobs.discard(id).await {
        tracing::warn!(error = %e, staging = %id, "could not remove staging blob");
    }
    match state.meta.release(id).await {
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %e, reservation = %id, "could not release reservation; cleanup will")
        }
    }
}

/// Validates client fields: package name length, tags.
pub fn check_meta(meta: &mut FileMeta) -> IngestResult<()> {
    if let Some(p) = &meta.package_name {
        let p = p.trim();
        if p.chars().count() > 100 {
            return Err(IngestError::Invalid(
                "package_name is longer than 100 characters".into(),
            ));
        }
        meta.package_name = if p.is_empty() {
            None
        } else {
            Some(p.to_string())
        };
    }
    meta.tags = normalize_tags(std::mem::take(&mut meta.tags))?;
    Ok(())
}

/// Most tags a file may carry (SPEC §3).
pub const MAX_TAGS: usize = 32;
/// Longest tag, in characters (SPEC §3).
pub const MAX_TAG_CHARS: usize = 64;

/// Trims, drops empty ones, deduplicates (first occurrence wins); more than
/// [`MAX_TAGS`] tags or one over [`MAX_TAG_CHARS`] characters is a 400.
///
/// Linear in the input and stops at the first reason to refuse: the list
/// kept is never longer than `MAX_TAGS`, so each duplicate check costs at
/// most that many comparisons, and a tag bomb is refused at its 33rd
/// distinct tag.
pub fn normalize_tags<I, S>(tags: I) -> IngestResult<Vec<String>>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut out: Vec<String> = Vec::new();
    for t in tags {
        let t = t.as_ref().trim();
        if t.is_empty() {
            continue;
        }
        // A UTF-8 character is at most 4 bytes: refuse huge tags unread.
        if t.len() > 4 * MAX_TAG_CHARS || t.chars().count() > MAX_TAG_CHARS {
            return Err(IngestError::Invalid(format!(
                "a tag is longer than {MAX_TAG_CHARS} characters"
            )));
        }
        if t.chars().any(|c| c.is_control()) {
            return Err(IngestError::Invalid(
                "tags may not contain control characters".into(),
            ));
        }
        if !out.iter().any(|o| o == t) {
            if out.len() == MAX_TAGS {
                return Err(IngestError::Invalid(format!("more than {MAX_TAGS} tags")));
            }
            out.push(t.to_string());
        }
    }
    Ok(out)
}

/// Error codes that end an upload after it started, and are reported to
/// the SaaS backend as `upload.failed` (SPEC §11). A refusal before any
/// byte is read (no room to reserve, a Content-Length over the limit) is
/// only the client's answer.
pub const REFUSALS: &[&str] = &[
    "quota_exceeded",
    "malware_detected",
    "checksum_mismatch",
    "unsupported_media_type",
    "file_too_large",
];

/// Records `upload.failed` for upload `upload_id` of `user` when `err`
/// is one of [`REFUSALS`] (see [`record_refusal`]).
pub async fn record_ingest_refusal(
    state: &Core,
    user: &str,
    upload_id: Uuid,
    file_name: Option<&str>,
    err: &IngestError,
) {
    if let Some(code) = err.refusal_code() {
        record_refusal(state, user, upload_id, file_name, code, &err.to_string()).await;
    }
}

/// Records `upload.failed` for upload `upload_id` of `user` with the SPEC
/// error `code` and `message` when `code` is one of [`REFUSALS`] (a
/// protocol's own refusal, such as a tus checksum mismatch, comes through
/// here). Nothing was changed, so it is an insert of its own; a failure to
/// record is logged, and the client's answer stays what it was.
pub async fn record_refusal(
    state: &Core,
    user: &str,
    upload_id: Uuid,
    file_name: Option<&str>,
    code: &str,
    message: &str,
) {
    if !REFUSALS.contains(&code) {
        return;
    }
    let ev = NewEvent::upload_failed(user, upload_id, code, file_name, message);
    if let Err(e) = state.meta.record_event(&ev).await {
        tracing::warn!(error = %e, upload = %upload_id, "could not record upload.failed");
    }
}

/// Shared tail of every upload: type decision from `head`, publish of staging
/// blob `id` under its final key, and the row commit. With `lease` (a tus
/// upload's lease owner) the commit also deletes the upload row, in the same
/// transaction and only while that lease is held. On a failed commit the
/// published blob is removed again, unless a committed row names it (a
/// completion that won). The caller owns reservation cleanup on error (the
/// drop guard, or the tus completion). A refusal is recorded as
/// `upload.failed`. Follow-up work (the media job) is the caller's to queue
/// with the record returned ([`crate::jobs::after_commit`]).
#[allow(clippy::too_many_arguments)]
pub async fn publish_and_commit(
    state: &Core,
    user: &str,
    id: Uuid,
    len: u64,
    head: &[u8],
    sha256: String,
    meta: FileMeta,
    lease: Option<Uuid>,
) -> IngestResult<FileRecord> {
    let name = meta.file_name.clone();
    let res = publish_and_commit_inner(state, user, id, len, head, sha256, meta, lease).await;
    if let Err(e) = &res {
        record_ingest_refusal(state, user, id, Some(&name), e).await;
    }
    res
}

#[allow(clippy::too_many_arguments)]
async fn publish_and_commit_inner(
    state: &Core,
    user: &str,
    id: Uuid,
    len: u64,
    head: &[u8],
    sha256: String,
    mut meta: FileMeta,
    lease: Option<Uuid>,
) -> IngestResult<FileRecord> {
    check_meta(&mut meta)?;
    let sniffed = sniff(head).ok_or_else(|| {
        IngestError::UnsupportedType("file content is not an accepted type".into())
    })?;
    let file_type = decide(&sniffed, meta.declared_type, &state.allowed_mime)
        .map_err(IngestError::UnsupportedType)?;
    if let Some(scanner) = &state.scanner {
        scanner.scan_staged(state.blobs.as_ref(), id, len).await?;
    }
    let key = format!(
        "{}/{}/{}.{}",
        user_dir_name(user),
        file_type.dir(),
        id,
        sniffed.ext
    );
    state.blobs.publish(id, &key).await?;
    let new = NewFile {
        id,
        user_id: user.to_string(),
        file_name: meta.file_name,
        file_type,
        mime_type: sniffed.mime.to_string(),
        file_size: len as i64,
        file_path: key.clone(),
        package_name: meta.package_name,
        tags: meta.tags,
        sha256,
    };
    let committed = match lease {
        Some(owner) => state.meta.complete_tus_upload(owner, new).await,
        None => state.meta.commit_file(id, new).await,
    };
    match committed {
        Ok(rec) => {
            crate::telemetry::metrics::upload_committed(len);
            Ok(rec)
        }
        Err(e) => {
            if let Ok(Some(f)) = state.meta.get_file_any(id).await {
                if f.file_path == key {
                    tracing::warn!(file_id = %id, "a completion of this upload committed first; its blob stays");
                    return Err(e.into());
                }
            }
            if let Err(re) = state.blobs.remove(&key).await {
                tracing::error!(error = %re, key, "could not remove blob of a failed commit; audit will report it");
            }
            Err(e.into())
        }
    }
}

/// Copies the user's file `src` as a new file named `file_name`: its size
/// reserved like an upload's (507 when it does not fit, atomic under
/// concurrency), the blob copied inside the store ([`BlobStore::copy`]:
/// a hard link, a server-side copy), then the row committed in the
/// transaction that releases the reservation. Resolution and duration are
/// carried over; the thumbnail is made again for the copy by the media job
/// (queued by the caller, as after an upload), so each file owns its own and
/// deleting one never touches the other's.
///
/// [`BlobStore::copy`]: crate::blob::BlobStore::copy
pub async fn copy_file(
    state: &Core,
    src: &FileRecord,
    file_name: String,
) -> IngestResult<FileRecord> {
    let size = src.file_size.max(0) as u64;
    let (id, _) = reserve_as(
        state,
        &src.user_id,
        SizeHint::Exact(size),
        Some(state.holder),
    )
    .await?;
    let ext = src
        .file_path
        .rsplit_once('/')
        .map_or(src.file_path.as_str(), |(_, f)| f)
        .split_once('.')
        .map(|(_, e)| e.to_string());
    let key = match ext {
        Some(e) => format!(
            "{}/{}/{id}.{e}",
            user_dir_name(&src.user_id),
            src.file_type.dir()
        ),
        None => format!(
            "{}/{}/{id}",
            user_dir_name(&src.user_id),
            src.file_type.dir()
        ),
    };
    if let Err(e) = state.blobs.copy(&src.file_path, &key).await {
        abandon(state, id).await;
        if let Err(re) = state.blobs.remove(&key).await {
            tracing::warn!(error = %re, key, "could not remove a partial copy");
        }
        return Err(match e {
            crate::blob::BlobError::NotFound => {
                tracing::error!(key = %src.file_path, "the blob of a listed file is missing");
                IngestError::internal(anyhow::anyhow!("blob missing"))
            }
            other => other.into(),
        });
    }
    let new = NewFile {
        id,
        user_id: src.user_id.clone(),
        file_name,
        file_type: src.file_type,
        mime_type: src.mime_type.clone(),
        file_size: src.file_size,
        file_path: key.clone(),
        package_name: src.package_name.clone(),
        tags: src.tags.clone(),
        sha256: src.sha256.clone(),
    };
    // `file.created` is recorded in commit_file's transaction, as for uploads.
    let mut rec = match state.meta.commit_file(id, new).await {
        Ok(rec) => rec,
        Err(e) => {
            if let Err(re) = state.blobs.remove(&key).await {
                tracing::error!(error = %re, key, "could not remove the blob of a failed copy; audit will report it");
            }
            abandon(state, id).await;
            return Err(e.into());
        }
    };
    if src.resolution.is_some() || src.duration.is_some() {
        let media = MediaUpdate {
            resolution: src.resolution.clone(),
            duration: src.duration.clone(),
            thumbnail_path: None,
        };
        match state.meta.set_media(rec.id, &media).await {
            Ok(true) => {
                rec.resolution = media.resolution;
                rec.duration = media.duration;
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, file_id = %rec.id, "could not carry media facts over; the media job will find them")
            }
        }
    }
    Ok(rec)
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    #[test]
    fn tags_are_trimmed_deduplicated_and_bounded() {
        let got = normalize_tags([" a ", "b", "", "a", "  "]).unwrap();
        assert_eq!(got, ["a", "b"]);
        let many: Vec<String> = (0..MAX_TAGS).map(|i| format!("t{i}")).collect();
        assert_eq!(normalize_tags(&many).unwrap().len(), MAX_TAGS);
        // Duplicates do not count towards the limit.
        let twice: Vec<&String> = many.iter().chain(&many).collect();
        assert_eq!(normalize_tags(twice).unwrap().len(), MAX_TAGS);
        assert!(normalize_tags(["x".repeat(MAX_TAG_CHARS)]).is_ok());
        assert!(normalize_tags(["é".repeat(MAX_TAG_CHARS)]).is_ok());
        assert!(normalize_tags(["x".repeat(MAX_TAG_CHARS + 1)]).is_err());
        assert!(normalize_tags(["a\u{0}b"]).is_err());
    }

    #[test]
    fn a_tag_bomb_is_refused_at_its_33rd_distinct_tag() {
        let read = Cell::new(0usize);
        let bomb = (0..1_000_000).map(|i| {
            read.set(read.get() + 1);
            format!("t{i}")
        });
        let err = normalize_tags(bomb).unwrap_err();
        assert!(err.to_string().contains("more than 32 tags"), "{err}");
        assert_eq!(read.get(), MAX_TAGS + 1);
    }
}
