//! Any S3-compatible object store (AWS S3, Garage, MinIO, R2…). Reads,
//! listings, copies, deletes and small writes go through OpenDAL, which does
//! the signing and retries; staged uploads go through [`multipart`], which
//! spools parts to local scratch so that memory per upload stays small
//! whatever the part size.
//!
//! Object stores cannot append or rename, so staging works differently from
//! the local volume:
//!
//! * A staging object is a run of *segments* under `.staging/{id}/`, each a
//!   whole object named by its starting offset (20 zero-padded digits, so
//!   names sort by offset). Every [`BlobWriter`] writes one segment, as a
//!   multipart upload in parts of [`PART_SIZE`] bytes (S3 requires
//!   ≥ 5 MiB), or one PUT when it is smaller. A tus PATCH is one segment, so
//!   an upload resumes on any node: the segments are in the store, the
//!   offset in the database.
//! * Cutting back to an offset deletes the segments past it and rewrites the
//!   one that straddles it (rare: only after a crash between writing and
//!   recording an offset, or a refused checksum).
//! * Publishing copies a single segment server-side (a metadata operation on
//!   Garage) or concatenates several by streaming them into one multipart
//!   upload, then deletes the segments.
//!
//! Memory per writer is at most 1.25 MiB (see [`multipart`]); scratch disk
//! per writer is at most `PART_SIZE × (PART_CONCURRENCY + 1)`.

pub mod multipart;
pub mod sigv4;

use std::{ops::Range, path::PathBuf, sync::Arc, time::Duration};

use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use opendal::{layers::RetryLayer, layers::TimeoutLayer, ErrorKind, Operator};
use uuid::Uuid;

use super::*;

use self::multipart::{Client, MultipartWriter, Spool};
pub use self::multipart::{PART_CONCURRENCY, PART_SIZE};

/// S3's limit for a single-request CopyObject; larger single-segment blobs
/// are published by streaming instead.
const COPY_LIMIT: u64 = 5 * 1024 * 1024 * 1024;
const STAGING: &str = ".staging/";

/// Where and how to reach the object store.
#[derive(Clone, Debug)]
pub struct S3Options {
    pub bucket: String,
    /// `http(s)://host:port`; `None` for AWS itself.
    pub endpoint: Option<String>,
    pub region: String,
    /// Key prefix inside the bucket ("" for the root).
    pub prefix: String,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// A local directory for parts waiting to be sent (see [`multipart`]);
    /// only the blob store writes there.
    pub scratch: PathBuf,
}

pub struct S3Store {
    op: Operator,
    client: Arc<Client>,
    spool: Arc<Spool>,
}

/// A client for the bucket and prefix of `o`, with the timeouts and retries
/// the blob store uses; backups to an S3 destination go through it too
/// (`ops::backup::dest`), so both reach a store the same way.
pub fn operator(o: &S3Options) -> BlobResult<Operator> {
    let mut b = opendal::services::S3::default()
        .bucket(&o.bucket)
        .region(&o.region)
        .root(&format!("/{}", o.prefix.trim_matches('/')))
        // Credentials come from the options (read from AWS_* by the
        // config), never from instance metadata or ~/.aws.
        .disable_config_load()
        .disable_ec2_metadata();
    if let Some(e) = &o.endpoint {
        b = b.endpoint(e);
    }
    if let (Some(k), Some(s)) = (&o.access_key_id, &o.secret_access_key) {
        b = b.access_key_id(k).secret_access_key(s);
    }
    Ok(Operator::new(b)
        .map_err(to_blob)?
        .layer(
            TimeoutLayer::new()
                .with_timeout(Duration::from_secs(60))
                .with_io_timeout(Duration::from_secs(30)),
        )
        .layer(
            RetryLayer::new()
                .with_max_times(4)
                .with_min_delay(Duration::from_millis(100))
                .with_max_delay(Duration::from_secs(2))
                .with_jitter(),
        )
        .finish())
}

impl S3Store {
    /// A store for `o`. Touches no local disk until an upload does.
    pub fn open(o: &S3Options) -> BlobResult<S3Store> {
        Ok(S3Store {
            op: operator(o)?,
            client: Arc::new(Client::new(o)?),
            spool: Spool::new(o.scratch.clone()),
        })
    }

    /// Removes what a crashed process left in the scratch directory (done
    /// once at start-up).
    pub fn clean_scratch(&self) -> BlobResult<()> {
        self.spool.clean()
    }

    fn segment_key(id: Uuid, start: u64) -> String {
        format!("{STAGING}{id}/{start:020}")
    }

    /// The segments of staging object `id`, in offset order, as
    /// `(start, len)`; only the contiguous run from 0 counts. Segments past
    /// a gap (left by an interrupted cut-back) are returned separately so
    /// they can be removed.
    async fn segments(&self, id: Uuid) -> BlobResult<(Vec<(u64, u64)>, Vec<u64>)> {
        let prefix = format!("{STAGING}{id}/");
        let mut found: Vec<(u64, u64)> = Vec::new();
        let mut lister = self
            .op
            .lister_with(&prefix)
            .recursive(true)
            .await
            .map_err(to_blob)?;
        while let Some(e) = lister.try_next().await.map_err(to_blob)? {
            let Some(start) = e
                .name()
                .parse::<u64>()
                .ok()
                .filter(|_| e.metadata().is_file())
            else {
                continue;
            };
            found.push((start, e.metadata().content_length()));
        }
        found.sort_unstable();
        let mut run = Vec::new();
        let mut stray = Vec::new();
        let mut end = 0u64;
        for (start, len) in found {
            if start == end {
                run.push((start, len));
                end += len;
            } else {
                stray.push(start);
            }
        }
        // A listing may lag behind writes (Garage's does under load), and a
        // segment it misses would make a resumable upload look shorter than
        // its recorded offset. A HEAD of the next expected key is
        // read-after-write consistent, so extend the run with it.
        loop {
            let key = Self::segment_key(id, end);
            match self.op.stat(&key).await {
                Ok(m) if m.content_length() > 0 || run.is_empty() => {
                    stray.retain(|s| *s != end);
                    run.push((end, m.content_length()));
                    end += m.content_length();
                    if m.content_length() == 0 {
                        break;
                    }
                }
                Ok(_) => break,
                Err(e) if e.kind() == ErrorKind::NotFound => break,
                Err(e) => return Err(to_blob(e)),
            }
        }
        Ok((run, stray))
    }

    /// Streams `range` of the concatenation of `segs`.
    fn segments_stream(&self, id: Uuid, segs: Vec<(u64, u64)>, range: Range<u64>) -> ByteStream {
        let op = self.op.clone();
        let parts: Vec<(String, Range<u64>)> = segs
            .into_iter()
            .filter_map(|(start, len)| {
                let a = range.start.max(start);
                let b = range.end.min(start + len);
                (a < b).then(|| (Self::segment_key(id, start), a - start..b - start))
            })
            .collect();
        let s = futures::stream::iter(parts)
            .then(move |(key, r)| {
                let op = op.clone();
                async move { read_range(&op, &key, r).await.map_err(std::io::Error::from) }
            })
            .try_flatten();
        Box::pin(s)
    }

    /// Streams `src` into a new object at `key` (multipart when large);
    /// aborts the upload when reading or writing fails, so the old object
    /// at `key`, if any, stays as it was.
    async fn write_stream(&self, key: &str, mut src: ByteStream) -> BlobResult<()> {
        // Dropped on an error, the writer aborts its upload.
        let mut w = self.writer(key);
        while let Some(chunk) = src.next().await {
            w.write(chunk?).await?;
        }
        w.finish().await?;
        Ok(())
    }

    fn writer(&self, key: &str) -> MultipartWriter {
        MultipartWriter::new(self.client.clone(), self.spool.clone(), key.to_string())
    }

    async fn delete_segments(
        &self,
        id: Uuid,
        starts: impl IntoIterator<Item = u64>,
    ) -> BlobResult<()> {
        for s in starts {
            self.op
                .delete(&Self::segment_key(id, s))
                .await
                .map_err(to_blob)?;
        }
        Ok(())
    }

    /// Every object under `prefix`, recursively.
    async fn list_objects(&self, prefix: &str) -> BlobResult<Vec<BlobEntry>> {
        let mut out = Vec::new();
        let mut lister = self
            .op
            .lister_with(prefix)
            .recursive(true)
            .await
            .map_err(to_blob)?;
        while let Some(e) = lister.try_next().await.map_err(to_blob)? {
            if e.metadata().is_file() && e.path().starts_with(prefix) {
                out.push(BlobEntry {
                    key: e.path().to_string(),
                    len: e.metadata().content_length(),
                    modified: e.metadata().last_modified(),
                });
            }
        }
        Ok(out)
    }
}

/// One ranged GET as a byte stream. An empty range reads nothing (S3 has no
/// way to ask for zero bytes).
async fn read_range(
    op: &Operator,
    key: &str,
    r: Range<u64>,
) -> opendal::Result<futures::stream::BoxStream<'static, std::io::Result<Bytes>>> {
    if r.start >= r.end {
        return Ok(futures::stream::empty().boxed());
    }
    let reader = op.reader(key).await?;
    Ok(reader.into_bytes_stream(r).await?.boxed())
}

fn to_blob(e: opendal::Error) -> BlobError {
    match e.kind() {
        ErrorKind::NotFound => BlobError::NotFound,
        k if is_outage(k) => BlobError::Unavailable(e.to_string()),
        _ => BlobError::Io(std::io::Error::other(e)),
    }
}

/// Connection errors, timeouts, 5xx and 429 answers, which the retry layer
/// gave up on. It marks every error it returns persistent, so the kind is
/// what tells them apart from a refusal (a 403 is `PermissionDenied`) or a
/// bad configuration.
fn is_outage(kind: ErrorKind) -> bool {
    matches!(kind, ErrorKind::Unexpected | ErrorKind::RateLimited)
}

/// [`to_blob`] for an OpenDAL error that a byte stream wrapped in an I/O
/// error; other I/O errors as usual.
fn io_to_blob(e: std::io::Error) -> BlobError {
    match e.get_ref().and_then(|i| i.downcast_ref::<opendal::Error>()) {
        Some(o) if is_outage(o.kind()) => BlobError::Unavailable(o.to_string()),
        _ => BlobError::from(e),
    }
}

/// One segment being written, starting at offset `start` of the upload.
struct S3Writer {
    w: MultipartWriter,
    start: u64,
}

#[async_trait]
impl BlobWriter for S3Writer {
    async fn write(&mut self, chunk: Bytes) -> BlobResult<()> {
        self.w.write(chunk).await
    }

    async fn finish(self: Box<Self>) -> BlobResult<u64> {
        let S3Writer { w, start } = *self;
        Ok(start + w.finish().await?)
    }
}

#[async_trait]
impl BlobStore for S3Store {
    async fn stage(&self, id: Uuid, offset: u64) -> BlobResult<Box<dyn BlobWriter>> {
        let (run, stray) = self.segments(id).await?;
        self.delete_segments(id, stray).await?;
        let have: u64 = run.iter().map(|s| s.1).sum();
        if offset > 0 && (run.is_empty() || offset > have) {
            tracing::warn!(upload = %id, have, offset, "staged data is shorter than its offset");
            return Err(BlobError::NotFound);
        }
        // Drop everything at or past `offset`; keep the head of a segment
        // that straddles it (rewritten under the same name, atomically).
        let mut straddle = None;
        let mut past = Vec::new();
        for &(start, len) in &run {
            if start >= offset {
                past.push(start);
            } else if start + len > offset {
                straddle = Some(start);
            }
        }
        // Delete from the end so an interruption leaves a contiguous head.
        past.reverse();
        self.delete_segments(id, past).await?;
        if let Some(start) = straddle {
            let key = Self::segment_key(id, start);
            let head = read_range(&self.op, &key, 0..offset - start)
                .await
                .map_err(to_blob)?;
            self.write_stream(&key, Box::pin(head)).await?;
        }
        let w = self.writer(&Self::segment_key(id, offset));
        Ok(Box::new(S3Writer { w, start: offset }))
    }

    async fn staged_len(&self, id: Uuid) -> BlobResult<Option<u64>> {
        let (run, _) = self.segments(id).await?;
        if run.is_empty() {
            return Ok(None);
        }
        Ok(Some(run.iter().map(|s| s.1).sum()))
    }

    async fn read_staged(&self, id: Uuid, range: Range<u64>) -> BlobResult<ByteStream> {
        let (run, _) = self.segments(id).await?;
        if run.is_empty() {
            return Err(BlobError::NotFound);
        }
        Ok(self.segments_stream(id, run, range))
    }

    async fn publish(&self, id: Uuid, key: &str) -> BlobResult<()> {
        check_key(key)?;
        let (run, _) = self.segments(id).await?;
        if run.is_empty() {
            return Err(BlobError::NotFound);
        }
        // Only segments with bytes matter (a tus upload starts with an
        // empty one).
        let full: Vec<(u64, u64)> = run.iter().copied().filter(|s| s.1 > 0).collect();
        match full.as_slice() {
            [] => {
                self.op.write(key, Bytes::new()).await.map_err(to_blob)?;
            }
            [(start, len)] if *len <= COPY_LIMIT => {
                self.op
                    .copy(&Self::segment_key(id, *start), key)
                    .await
                    .map_err(to_blob)?;
            }
            _ => {
                let total = full.iter().map(|s| s.0 + s.1).max().unwrap_or(0);
                let src = self.segments_stream(id, full, 0..total);
                self.write_stream(key, src).await?
            }
        }
        self.discard(id).await
    }

    async fn discard(&self, id: Uuid) -> BlobResult<()> {
        let prefix = format!("{STAGING}{id}/");
        let keys: Vec<String> = self
            .op
            .list_with(&prefix)
            .recursive(true)
            .await
            .map_err(to_blob)?
            .into_iter()
            .filter(|e| e.metadata().is_file())
            .map(|e| e.path().to_string())
            .collect();
        for k in keys {
            self.op.delete(&k).await.map_err(to_blob)?;
        }
        Ok(())
    }

    async fn read(&self, key: &str, range: Range<u64>) -> BlobResult<ByteStream> {
        check_key(key)?;
        if range.start >= range.end {
            // Still report a missing blob as missing.
            self.op.stat(key).await.map_err(to_blob)?;
        }
        let mut s = read_range(&self.op, key, range).await.map_err(to_blob)?;
        // The GET goes out when the stream is first polled. Poll it here, so
        // that a key deleted meanwhile is `NotFound` now, as on the volume
        // (where `read` opens the file), and not an error half-way through
        // a response or an archive entry.
        let first = s.next().await.transpose().map_err(io_to_blob)?;
        Ok(Box::pin(futures::stream::iter(first.map(Ok)).chain(s)))
    }

    async fn len(&self, key: &str) -> BlobResult<u64> {
        check_key(key)?;
        Ok(self.op.stat(key).await.map_err(to_blob)?.content_length())
    }

    async fn remove(&self, key: &str) -> BlobResult<()> {
        check_key(key)?;
        match self.op.delete(key).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(to_blob(e)),
        }
    }

    async fn copy(&self, from: &str, to: &str) -> BlobResult<()> {
        check_key(from)?;
        check_key(to)?;
        // One CopyObject: the store copies the bytes itself. Objects over
        // its single-request limit are refused rather than streamed
        // through this node.
        let len = self.len(from).await?;
        if len > COPY_LIMIT {
            return Err(BlobError::Io(std::io::Error::other(format!(
                "a server-side copy is limited to {COPY_LIMIT} bytes; {from} has {len}"
            ))));
        }
        self.op.copy(from, to).await.map_err(to_blob)
    }

    async fn put_small(&self, key: &str, data: Bytes) -> BlobResult<()> {
        check_key(key)?;
        self.op.write(key, data).await.map_err(to_blob)?;
        Ok(())
    }

    fn local_path(&self, _key: &str) -> Option<PathBuf> {
        None
    }

    async fn check_writable(&self) -> BlobResult<()> {
        let probe = format!(".ready/{}", Uuid::new_v4());
        self.op
            .write(&probe, Bytes::from_static(b"ok"))
            .await
            .map_err(to_blob)?;
        self.op.delete(&probe).await.map_err(to_blob)?;
        Ok(())
    }

    async fn presign_read(
        &self,
        key: &str,
        ttl: Duration,
        content_type: &str,
        disposition: &str,
    ) -> BlobResult<Option<String>> {
        check_key(key)?;
        let req = self
            .op
            .presign_read_with(key, ttl)
            .override_content_type(content_type)
            .override_content_disposition(disposition)
            .await
            .map_err(to_blob)?;
        Ok(Some(req.uri().to_string()))
    }

    async fn list_prefix(&self, prefix: &str) -> BlobResult<Vec<BlobEntry>> {
        let mut all = self.list_objects(prefix).await?;
        all.retain(|e| !e.key.starts_with(STAGING));
        Ok(all)
    }

    async fn list_top(&self) -> BlobResult<(Vec<String>, Vec<BlobEntry>)> {
        let (mut dirs, mut blobs) = (Vec::new(), Vec::new());
        let mut lister = self.op.lister("/").await.map_err(to_blob)?;
        while let Some(e) = lister.try_next().await.map_err(to_blob)? {
            let path = e.path().trim_start_matches('/');
            if path.is_empty() || path == STAGING {
                continue;
            }
            if let Some(dir) = path.strip_suffix('/') {
                dirs.push(dir.to_string());
            } else {
                blobs.push(BlobEntry {
                    key: path.to_string(),
                    len: e.metadata().content_length(),
                    modified: e.metadata().last_modified(),
                });
            }
        }
        Ok((dirs, blobs))
    }

    /// Segments are grouped by upload: an upload's length is the sum of
    /// its listed segments and its time the newest segment's (or the start
    /// of an unfinished multipart upload of one, whose bytes are not
    /// counted). Objects in the staging area that are not segments are
    /// listed one by one.
    async fn list_staged(&self) -> BlobResult<Vec<StagedEntry>> {
        let objects = self.list_objects(STAGING).await?;
        // Multipart uploads a dead process began and never finished hold
        // their parts on the store with no object to list. A key without
        // ListBucketMultipartUploads still gets the objects cleaned; these
        // are then left to the bucket's lifecycle rules.
        let unfinished = match self.client.unfinished(STAGING).await {
            Ok(u) => u,
            Err(e) => {
                tracing::warn!(error = %e, "could not list unfinished multipart uploads in the staging area; those a stopped process left stay on the store");
                Vec::new()
            }
        };
        let mut uploads: std::collections::HashMap<Uuid, StagedEntry> = Default::default();
        let mut other = Vec::new();
        let found = objects
            .into_iter()
            .map(|e| (e.key, e.len, e.modified))
            .chain(unfinished.into_iter().map(|u| (u.key, 0, u.initiated)));
        for (key, len, modified) in found {
            let id = key[STAGING.len()..]
                .split_once('/')
                .and_then(|(id, _)| Uuid::try_parse(id).ok());
            let Some(id) = id else {
                other.push(StagedEntry {
                    id: None,
                    key,
                    len,
                    modified,
                });
                continue;
            };
            let slot = uploads.entry(id).or_insert_with(|| StagedEntry {
                id: Some(id),
                key: format!("{STAGING}{id}"),
                len: 0,
                modified: None,
            });
            slot.len += len;
            slot.modified = slot.modified.max(modified);
        }
        other.extend(uploads.into_values());
        Ok(other)
    }

    /// Also aborts the entry's unfinished multipart uploads (their parts are
    /// not objects, so deleting objects leaves them).
    async fn remove_staged(&self, entry: &StagedEntry) -> BlobResult<()> {
        let prefix = match entry.id {
            Some(id) => format!("{STAGING}{id}/"),
            None => entry.key.clone(),
        };
        // Not listable (see list_staged): the objects still go.
        let unfinished = match self.client.unfinished(&prefix).await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(key = %entry.key, error = %e, "could not list its unfinished multipart uploads");
                Vec::new()
            }
        };
        for u in unfinished {
            if entry.id.is_some() || u.key == entry.key {
                self.client.abort(&u.key, &u.upload_id).await?;
            }
        }
        match entry.id {
            Some(id) => self.discard(id).await,
            None => self.remove(&entry.key).await,
        }
    }

    async fn settle(&self) {
        self.client.settle().await
    }

    fn kind(&self) -> &'static str {
        "s3"
    }
}
