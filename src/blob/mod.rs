//! Blob storage: where file bytes live. The trait knows bytes and keys, not
//! HTTP, users or quotas.
//!
//! Writes go to a *staging* object named by an id (a temp file on the local
//! volume, a multipart upload on an object store) that is appended to in
//! order, made durable by [`BlobWriter::finish`], and then published under its
//! final key by [`BlobStore::publish`]. Readers get ranged byte streams.

pub mod local;
pub mod s3;

use std::{
    ops::Range,
    path::{Path, PathBuf},
    pin::Pin,
    time::Duration,
};

use async_trait::async_trait;
use bytes::Bytes;
use futures::Stream;
use uuid::Uuid;

/// Errors of the blob layer. `NotFound` is distinct so the HTTP layer can
/// answer 404 rather than 500.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob not found")]
    NotFound,
    #[error("storage full")]
    NoSpace,
    #[error("invalid blob key {0:?}")]
    BadKey(String),
    #[error("blob i/o: {0}")]
    Io(std::io::Error),
    /// The store did not answer (refused or dropped connections, timeouts,
    /// 5xx and 429 answers, every retry spent): an outage, not a fault of
    /// the request. Answered 503 with `Retry-After`, as a database outage.
    #[error("object store unavailable: {0}")]
    Unavailable(String),
}

impl From<std::io::Error> for BlobError {
    fn from(e: std::io::Error) -> Self {
        match e.kind() {
            std::io::ErrorKind::NotFound => BlobError::NotFound,
            std::io::ErrorKind::StorageFull => BlobError::NoSpace,
            _ if e.raw_os_error() == Some(libc::ENOSPC)
                || e.raw_os_error() == Some(libc::EDQUOT) =>
            {
                BlobError::NoSpace
            }
            _ => BlobError::Io(e),
        }
    }
}

pub type BlobResult<T> = Result<T, BlobError>;

/// When a blob was last written, as a listing reports it.
pub type Modified = Option<chrono::DateTime<chrono::Utc>>;

/// One blob as a listing reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobEntry {
    pub key: String,
    pub len: u64,
    /// Last write: the modification time on the local volume, the
    /// `Last-Modified` of an object.
    pub modified: Modified,
}

/// One entry of the staging area.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StagedEntry {
    /// The staging id, when the entry is a staged upload.
    pub id: Option<Uuid>,
    /// Where it is, relative to the store's root (`.tmp/{id}.part` on the
    /// volume, `.staging/{id}` in a bucket); for reports, and to remove an
    /// entry that is not a staged upload.
    pub key: String,
    /// Bytes staged.
    pub len: u64,
    /// The newest write.
    pub modified: Modified,
}

/// Sees every byte a [`BlobWriter`] stores, in order, on the thread that
/// writes them (the ingest's running sha256): the work then overlaps with
/// receiving the next bytes instead of following it.
pub trait Tap: Send {
    fn update(&mut self, data: &[u8]);
}

/// A [`Tap`] shared between its owner and the writer feeding it.
pub type SharedTap = std::sync::Arc<std::sync::Mutex<dyn Tap>>;

/// A stream of chunks read from a blob.
pub type ByteStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

/// Appends to one staging object. Dropping it without `finish` leaves the
/// staged bytes in place (a tus upload resumes from them); callers that
/// abandon an upload call [`BlobStore::discard`].
#[async_trait]
pub trait BlobWriter: Send {
    /// Appends `chunk`. It is taken by value so that a store which sends
    /// buffers on (an object store's multipart parts) need not copy it.
    async fn write(&mut self, chunk: Bytes) -> BlobResult<()>;
    /// Flushes and makes everything written durable; returns the staged length.
    /// Once it returns `Ok`, a [`Tap`] given to this writer has seen every byte.
    async fn finish(self: Box<Self>) -> BlobResult<u64>;
    /// Feeds `tap` every byte written from now on, before `finish` returns;
    /// only before the first `write`. `false`: this writer does not (the
    /// caller feeds the tap itself).
    fn set_tap(&mut self, _tap: SharedTap) -> bool {
        false
    }
}

#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Opens staging object `id` for appending at `offset`: 0 creates (or
    /// truncates) it; otherwise the staged length is cut back to `offset`.
    /// Fewer than `offset` bytes staged (or none) is `NotFound`: the bytes
    /// the caller counts on are gone.
    async fn stage(&self, id: Uuid, offset: u64) -> BlobResult<Box<dyn BlobWriter>>;
    /// Bytes currently staged under `id`, or `None`.
    async fn staged_len(&self, id: Uuid) -> BlobResult<Option<u64>>;
    /// Reads from a staging object (for sniffing and scanning before publish).
    async fn read_staged(&self, id: Uuid, range: Range<u64>) -> BlobResult<ByteStream>;
    /// Atomically makes staging object `id` visible as `key`.
    async fn publish(&self, id: Uuid, key: &str) -> BlobResult<()>;
    /// Removes a staging object; absent is fine.
    async fn discard(&self, id: Uuid) -> BlobResult<()>;
    /// Streams `range` of the blob at `key`. A missing blob is `NotFound`
    /// here, not later from the stream.
    async fn read(&self, key: &str, range: Range<u64>) -> BlobResult<ByteStream>;
    /// The blob's length, or `NotFound`.
    async fn len(&self, key: &str) -> BlobResult<u64>;
    /// The open file of a blob kept as a local file, checked to hold at
    /// least `end` bytes, for the connection to send with `sendfile(2)`;
    /// `None` for a store without local files.
    async fn open_file(&self, _key: &str, _end: u64) -> BlobResult<Option<std::fs::File>> {
        Ok(None)
    }
    /// Removes the blob; absent is fine.
    async fn remove(&self, key: &str) -> BlobResult<()>;
    /// Makes `to` a durable copy of the blob at `from` without moving its
    /// bytes through this process: a hard link on the local volume, a
    /// server-side copy on an object store. Blobs are immutable once
    /// published, so the two never diverge, and removing one leaves the
    /// other intact. A missing `from` is `NotFound`; an existing `to` is an
    /// error.
    async fn copy(&self, from: &str, to: &str) -> BlobResult<()>;
    /// Writes a small object whole (thumbnails), durably.
    async fn put_small(&self, key: &str, data: Bytes) -> BlobResult<()>;
    /// A local path for `key` when the backend is a filesystem (media tools
    /// read it directly); `None` for object stores.
    fn local_path(&self, key: &str) -> Option<PathBuf>;
    /// Checks that the store accepts writes (for `/readyz`).
    async fn check_writable(&self) -> BlobResult<()>;
    /// A URL that reads `key` directly from the store for `ttl`, answering
    /// with the given `Content-Type` and `Content-Disposition`; `None` when
    /// the backend cannot hand out such links (the local volume).
    async fn presign_read(
        &self,
        _key: &str,
        _ttl: Duration,
        _content_type: &str,
        _disposition: &str,
    ) -> BlobResult<Option<String>> {
        Ok(None)
    }
    /// Every blob whose key starts with `prefix` (a key prefix such as
    /// `{user}/` or `{user}/images/{id}.`), at any depth, with its length
    /// and last write time; the staging area is never included. Used by
    /// audit, cleanup and account deletion, which need the same view of
    /// both backends.
    async fn list_prefix(&self, prefix: &str) -> BlobResult<Vec<BlobEntry>>;
    /// The top level of the store: its directory names (for object stores,
    /// the first key components) and the blobs stored directly at the root,
    /// leaving out the staging area.
    async fn list_top(&self) -> BlobResult<(Vec<String>, Vec<BlobEntry>)>;
    /// Everything in the staging area: staged uploads (by id, with the
    /// bytes staged so far) and anything else found there.
    async fn list_staged(&self) -> BlobResult<Vec<StagedEntry>>;
    /// Removes one entry returned by [`BlobStore::list_staged`].
    async fn remove_staged(&self, entry: &StagedEntry) -> BlobResult<()> {
        match entry.id {
            Some(id) => self.discard(id).await,
            None => self.remove(&entry.key).await,
        }
    }
    /// "local" or "s3", for logs and reports; code that depends on how the
    /// bytes are kept asks [`BlobStore::local_root`] instead.
    fn kind(&self) -> &'static str;
    /// Waits for work the store does in the background of its own (on S3,
    /// aborting the multipart uploads of writers dropped unfinished), so a
    /// stopping process does not cut it off. Bounded by the caller.
    async fn settle(&self) {}
    /// The directory holding every blob, when blobs are files on a local
    /// volume (whose directories need sweeping as well as its files).
    fn local_root(&self) -> Option<&Path> {
        None
    }
}

/// Validates a blob key: relative, `/`-separated, no empty, `.` or `..`
/// components, no backslash or NUL. Keys are built by the service, never
/// from client input; this is defence in depth.
pub fn check_key(key: &str) -> BlobResult<()> {
    let ok = !key.is_empty()
        && !key.starts_with('/')
        && !key.contains('\\')
        && !key.contains('\0')
        && key
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..");
    if ok {
        Ok(())
    } else {
        Err(BlobError::BadKey(key.to_string()))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_are_checked() {
        assert!(super::check_key("u/videos/a.mp4").is_ok());
        for bad in ["", "/abs", "a/../b", "a//b", "a\\b", "./a", "a/.."] {
            assert!(super::check_key(bad).is_err(), "{bad}");
        }
    }
}
