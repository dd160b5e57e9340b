//! Backups (SPEC §7): one tar archive per backup, optionally gzip-compressed,
//! holding a consistent logical snapshot of the database, exactly the blobs
//! that snapshot references, and a manifest of sizes and sha256 sums.
//!
//! Archive layout, in this order:
//! - `backup.json`: [`BackupHeader`] (format, time, counts); read by `list`.
//! - `db/user_storage.jsonl`, `db/user_files.jsonl`: the rows, one JSON
//!   object per line ([`DumpUser`], [`DumpFile`]). The format is the same
//!   for both backends, so a backup restores into either.
//! - `blobs/{key}`: each referenced file and thumbnail, `key` being its blob
//!   key (its path relative to the volume root, or its object key). Blobs
//!   are read and written through [`BlobStore`], so an archive taken from the
//!   volume restores into a bucket and the other way round.
//! - `manifest.jsonl`: one [`ManifestLine`] per archived entry (size,
//!   sha256), per blob that vanished between snapshot and copy, and a final
//!   summary. It comes last because the sums are computed while streaming.
//!
//! Consistency: SQLite is copied with `VACUUM INTO` and the copy is read;
//! PostgreSQL is read inside one `REPEATABLE READ, READ ONLY` transaction.
//! Committed files never change, so uploads may go on meanwhile: only the
//! blobs of the snapshot's rows are copied, each streamed into the archive
//! while hashed (bounded memory). A file deleted after the snapshot is
//! skipped and recorded in the manifest; `restore` leaves its row out.
//! Upload reservations, tus uploads and jobs are not part of a backup.
//!
//! Archives are written to and read from a [`Dest`]: a directory, or a
//! prefix in an S3-compatible bucket ([`super::backup_dest`]). Either way an
//! archive is one stream, written once front to back and read once front to
//! back, so memory stays bounded whatever its size and a remote archive is
//! never copied to local disk; only the database rows are staged locally.

use std::{
    collections::{HashMap, HashSet},
    fs::File,
    io::{BufRead, BufReader, BufWriter, Read, Write},
    os::unix::fs::DirBuilderExt,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{bail, Context};
use chrono::{DateTime, NaiveDateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use uuid::Uuid;

use super::{
    backup_dest::{ArchiveSink, Dest, Location},
    progress::Progress,
};
use crate::{
    blob::{BlobError, BlobStore},
    core::Core,
    meta::{MetaError, MetaResult, RowSource, SnapshotSink},
};

pub use crate::meta::{DumpFile, DumpUser};

/// `format` of [`BackupHeader`].
pub const FORMAT: &str = "stowage-backup";
/// Archive format version this build writes and reads.
pub const VERSION: u32 = 1;
/// Archive file names: `stowage-backup-YYYYMMDDTHHMMSSmmmZ.tar[.gz]`.
const NAME_PREFIX: &str = "stowage-backup-";

const HEADER_ENTRY: &str = "backup.json";
const USERS_ENTRY: &str = "db/user_storage.jsonl";
const FILES_ENTRY: &str = "db/user_files.jsonl";
const MANIFEST_ENTRY: &str = "manifest.jsonl";
const BLOB_PREFIX: &str = "blobs/";

/// First entry of an archive.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct BackupHeader {
    pub format: String,
    pub version: u32,
    /// The moment of the database snapshot.
    pub created_at: DateTime<Utc>,
    /// `postgres` or `sqlite`.
    pub source_backend: String,
    pub stowage_version: String,
    pub users: u64,
    /// File rows in the snapshot.
    pub files: u64,
    /// Sum of `file_size` over those rows.
    pub bytes: u64,
}

/// One line of `manifest.jsonl`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ManifestLine {
    /// An archived entry and its sum.
    Entry {
        path: String,
        /// `db`, `file` or `thumbnail`.
        kind: String,
        size: u64,
        sha256: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        file_id: Option<Uuid>,
    },
    /// A blob of the snapshot that was gone when it was to be copied.
    Skipped {
        key: String,
        kind: String,
        file_id: Uuid,
        reason: String,
    },
    /// Last line.
    Summary {
        entries: u64,
        files: u64,
        thumbnails: u64,
        bytes: u64,
        skipped: u64,
    },
}

/// How `create` runs.
#[derive(Debug)]
pub struct CreateOptions {
    /// A directory or an `s3://bucket/prefix`.
    pub dest: Dest,
    /// Keep the newest N archives in `dest` (N ≥ 1).
    pub keep: Option<usize>,
    /// Delete archives older than this many days.
    pub keep_days: Option<u64>,
    pub gzip: bool,
    pub progress: Progress,
}

/// What `create` wrote.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CreateReport {
    /// The archive: a file path, or `s3://bucket/prefix/name`.
    pub path: PathBuf,
    pub header: BackupHeader,
    pub archive_bytes: u64,
    /// Blobs archived (files and thumbnails).
    pub blobs: u64,
    pub blob_bytes: u64,
    pub skipped: Vec<ManifestLine>,
    /// Archives deleted by retention (paths or `s3://` URLs).
    pub removed: Vec<PathBuf>,
}

/// One archive in a destination.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ArchiveInfo {
    /// A file path, or `s3://bucket/prefix/name`.
    pub path: PathBuf,
    /// From the file name.
    pub created_at: DateTime<Utc>,
    pub size: u64,
    pub header: Option<BackupHeader>,
    pub error: Option<String>,
}

/// The outcome of `verify`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct VerifyReport {
    pub ok: bool,
    pub header: Option<BackupHeader>,
    pub entries_checked: u64,
    pub bytes_checked: u64,
    /// Blobs of the snapshot recorded as deleted before they were copied.
    pub skipped: u64,
    pub problems: Vec<String>,
}

/// The outcome of `restore`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RestoreReport {
    pub users: u64,
    pub files: u64,
    pub bytes: u64,
    pub thumbnails: u64,
    /// Rows left out because their blob was deleted after the snapshot.
    pub rows_skipped: u64,
}

// ---------------------------------------------------------------- names

/// The archive name for a snapshot taken at `t`.
pub fn archive_name(t: DateTime<Utc>, gzip: bool) -> String {
    format!(
        "{NAME_PREFIX}{}{:03}Z.tar{}",
        t.format("%Y%m%dT%H%M%S"),
        t.timestamp_subsec_millis(),
        if gzip { ".gz" } else { "" }
    )
}

/// The time in a stowage archive name; `None` for any other name (those
/// are never touched by retention).
pub fn parse_archive_name(name: &str) -> Option<DateTime<Utc>> {
    let rest = name.strip_prefix(NAME_PREFIX)?;
    let stamp = rest
        .strip_suffix(".tar.gz")
        .or_else(|| rest.strip_suffix(".tar"))?;
    if stamp.len() != 19 || !stamp.ends_with('Z') || !stamp.is_ascii() {
        return None;
    }
    let base = NaiveDateTime::parse_from_str(&stamp[..15], "%Y%m%dT%H%M%S").ok()?;
    let ms = &stamp[15..18];
    if !ms.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let ms: i64 = ms.parse().ok()?;
    Some(base.and_utc() + chrono::Duration::milliseconds(ms))
}

// ---------------------------------------------------------------- helpers

/// Passes bytes through while hashing and counting them.
struct Hashing<R> {
    inner: R,
    hash: Sha256,
    len: u64,
}

impl<R> Hashing<R> {
    fn new(inner: R) -> Self {
        Hashing {
            inner,
            hash: Sha256::new(),
            len: 0,
        }
    }
    fn finish(self) -> (u64, String) {
        (self.len, hex::encode(self.hash.finalize()))
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

/// The archive stream, plain or gzip.
enum ArchiveWriter {
    Plain(Box<dyn ArchiveSink>),
    Gzip(flate2::write::GzEncoder<Box<dyn ArchiveSink>>),
}

impl Write for ArchiveWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            ArchiveWriter::Plain(w) => w.write(buf),
            ArchiveWriter::Gzip(w) => w.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            ArchiveWriter::Plain(w) => w.flush(),
            ArchiveWriter::Gzip(w) => w.flush(),
        }
    }
}

impl ArchiveWriter {
    fn finish(self) -> std::io::Result<Box<dyn ArchiveSink>> {
        match self {
            ArchiveWriter::Plain(w) => Ok(w),
            ArchiveWriter::Gzip(w) => w.finish(),
        }
    }
}

/// Opens an archive for reading, decompressing when it is gzip.
fn open_archive(path: &Path) -> anyhow::Result<tar::Archive<Box<dyn Read>>> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    archive_from(Box::new(f))
}

/// An archive over any byte stream (a file, a streaming GET), read once
/// from the front; gzip is recognised by its first two bytes.
fn archive_from(mut r: Box<dyn Read + Send>) -> anyhow::Result<tar::Archive<Box<dyn Read>>> {
    let mut magic = [0u8; 2];
    let mut n = 0;
    while n < magic.len() {
        match r.read(&mut magic[n..])? {
            0 => break,
            k => n += k,
        }
    }
    let r = std::io::Cursor::new(magic[..n].to_vec()).chain(r);
    let r: Box<dyn Read> = if n == 2 && magic == [0x1f, 0x8b] {
        Box::new(flate2::read::GzDecoder::new(BufReader::with_capacity(
            256 * 1024,
            r,
        )))
    } else {
        Box::new(BufReader::with_capacity(256 * 1024, r))
    };
    Ok(tar::Archive::new(r))
}

/// Opens `loc` on a blocking thread.
fn open_location(loc: &Location) -> anyhow::Result<tar::Archive<Box<dyn Read>>> {
    archive_from(loc.open(None, &tokio::runtime::Handle::current())?)
}

pub(crate) fn mkdirs(p: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(p)
}

fn entry_path(e: &tar::Entry<'_, impl Read>) -> anyhow::Result<String> {
    let raw = e.path_bytes();
    Ok(std::str::from_utf8(&raw)
        .context("archive entry name is not UTF-8")?
        .to_string())
}

/// Removes a directory tree when dropped (work directories).
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Reads blob `key` whole for the blocking archive writer: its length and a
/// synchronous reader over the store's byte stream (a file on the volume,
/// ranged GETs on an object store), so memory stays bounded either way.
fn open_blob(
    blobs: &dyn BlobStore,
    rt: &tokio::runtime::Handle,
    key: &str,
) -> Result<(u64, impl Read), BlobError> {
    let (size, stream) = rt.block_on(async {
        let size = blobs.len(key).await?;
        // `read` reports a blob deleted since the stat as NotFound (both
        // stores open it there), so it is skipped like one deleted before.
        Ok::<_, BlobError>((size, blobs.read(key, 0..size).await?))
    })?;
    let reader = tokio_util::io::SyncIoBridge::new_with_handle(
        tokio_util::io::StreamReader::new(stream),
        rt.clone(),
    );
    Ok((size, reader.take(size)))
}

/// Writes one blob from an archive entry into the store under a staging
/// id, hashing it; returns (id, length, sha256). The caller publishes or
/// discards the id.
fn stage_blob(
    blobs: &dyn BlobStore,
    rt: &tokio::runtime::Handle,
    src: &mut impl Read,
) -> anyhow::Result<(Uuid, u64, String)> {
    let id = Uuid::new_v4();
    let res = (|| {
        let mut w = rt.block_on(blobs.stage(id, 0))?;
        let mut buf = vec![0u8; 256 * 1024];
        let mut hash = Sha256::new();
        let mut len = 0u64;
        loop {
            let n = src.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hash.update(&buf[..n]);
            len += n as u64;
            rt.block_on(w.write(bytes::Bytes::copy_from_slice(&buf[..n])))?;
        }
        rt.block_on(w.finish())?;
        Ok((id, len, hex::encode(hash.finalize())))
    })();
    if res.is_err() {
        let _ = rt.block_on(blobs.discard(id));
    }
    res
}

/// A scratch directory on local disk for work files (the database dump).
fn scratch_root(state: &Core) -> PathBuf {
    state.scratch.clone()
}

// ---------------------------------------------------------------- snapshot

/// Counts of a dump.
#[derive(Default)]
struct DumpCounts {
    users: u64,
    files: u64,
    bytes: u64,
}

fn rows_error(e: impl std::fmt::Display) -> MetaError {
    MetaError::Rows(e.to_string())
}

/// Writes the snapshot's rows as JSON lines, users and files each to its
/// own file, counting them.
struct JsonlSink {
    users: tokio::io::BufWriter<tokio::fs::File>,
    files: tokio::io::BufWriter<tokio::fs::File>,
    counts: DumpCounts,
}

impl JsonlSink {
    async fn line(
        out: &mut tokio::io::BufWriter<tokio::fs::File>,
        row: &impl Serialize,
    ) -> MetaResult<()> {
        let mut line = serde_json::to_vec(row).map_err(rows_error)?;
        line.push(b'\n');
        out.write_all(&line).await.map_err(rows_error)
    }

    async fn finish(mut self) -> std::io::Result<DumpCounts> {
        for out in [&mut self.users, &mut self.files] {
            out.flush().await?;
            out.get_ref().sync_all().await?;
        }
        Ok(self.counts)
    }
}

#[async_trait::async_trait]
impl SnapshotSink for JsonlSink {
    async fn user(&mut self, row: DumpUser) -> MetaResult<()> {
        Self::line(&mut self.users, &row).await?;
        self.counts.users += 1;
        Ok(())
    }

    async fn file(&mut self, row: DumpFile) -> MetaResult<()> {
        Self::line(&mut self.files, &row).await?;
        self.counts.files += 1;
        self.counts.bytes += row.file_size.max(0) as u64;
        Ok(())
    }
}

/// Writes the snapshot's rows to `users_out` and `files_out`; returns the
/// counts and the snapshot time.
async fn snapshot(
    state: &Core,
    work: &Path,
    users_out: &Path,
    files_out: &Path,
) -> anyhow::Result<(DumpCounts, DateTime<Utc>)> {
    let mut sink = JsonlSink {
        users: tokio::io::BufWriter::new(tokio::fs::File::create(users_out).await?),
        files: tokio::io::BufWriter::new(tokio::fs::File::create(files_out).await?),
        counts: DumpCounts::default(),
    };
    let at = state.meta.snapshot(work, &mut sink).await?;
    Ok((sink.finish().await?, at))
}

// ---------------------------------------------------------------- create

/// Everything the blocking archive writer needs.
struct Pack {
    dest: Dest,
    name: String,
    /// About how large the archive will be (sizes the upload's parts).
    expected: u64,
    gzip: bool,
    blobs: Arc<dyn BlobStore>,
    rt: tokio::runtime::Handle,
    header: BackupHeader,
    users: PathBuf,
    files: PathBuf,
    manifest: PathBuf,
    progress: Progress,
}

struct Packed {
    blobs: u64,
    blob_bytes: u64,
    skipped: Vec<ManifestLine>,
    archive_bytes: u64,
}

/// Creates one archive in `opts.dest`, then applies retention.
pub async fn create(state: &Core, mut opts: CreateOptions) -> anyhow::Result<CreateReport> {
    if opts.keep == Some(0) {
        bail!("--keep must be at least 1");
    }
    opts.dest.check().await?;
    let stamp = Utc::now();
    let name = archive_name(stamp, opts.gzip);
    // The rows are staged beside a directory archive, as they always were;
    // for a remote one, in the volume's scratch directory.
    let work = match &opts.dest {
        Dest::Dir(d) => d.join(format!(".{name}.work")),
        Dest::S3(_) => scratch_root(state).join(format!("backup-{}", Uuid::new_v4())),
    };
    mkdirs(&work)?;
    let _cleanup = RemoveOnDrop(work.clone());
    let users = work.join("user_storage.jsonl");
    let files = work.join("user_files.jsonl");

    opts.progress.say("taking a database snapshot");
    let (counts, at) = snapshot(state, &work, &users, &files)
        .await
        .context("database snapshot")?;
    let header = BackupHeader {
        format: FORMAT.into(),
        version: VERSION,
        created_at: at,
        source_backend: state.meta.backend().into(),
        stowage_version: env!("CARGO_PKG_VERSION").into(),
        users: counts.users,
        files: counts.files,
        bytes: counts.bytes,
    };
    opts.progress.say(format!(
        "snapshot: {} user(s), {} file(s), {} bytes; copying blobs",
        counts.users, counts.files, counts.bytes
    ));
    let dump_bytes = std::fs::metadata(&users)?.len() + std::fs::metadata(&files)?.len();
    let pack = Pack {
        dest: opts.dest.clone(),
        name: name.clone(),
        // Blobs, rows, a manifest line and two tar headers per file.
        expected: counts.bytes + 2 * dump_bytes + counts.files * 1536 + 64 * 1024,
        gzip: opts.gzip,
        blobs: state.blobs.clone(),
        rt: tokio::runtime::Handle::current(),
        header: header.clone(),
        users,
        files,
        manifest: work.join("manifest.jsonl"),
        progress: std::mem::replace(&mut opts.progress, Progress::off()),
    };
    // The sink leaves nothing behind when this fails.
    let packed = tokio::task::spawn_blocking(move || write_archive(pack)).await??;
    for s in &packed.skipped {
        if let ManifestLine::Skipped { key, reason, .. } = s {
            tracing::warn!(key, reason, "blob not in backup");
        }
    }
    let removed = retention(&opts.dest, opts.keep, opts.keep_days, &name).await?;
    Ok(CreateReport {
        archive_bytes: packed.archive_bytes,
        path: PathBuf::from(opts.dest.location(&name).display()),
        header,
        blobs: packed.blobs,
        blob_bytes: packed.blob_bytes,
        skipped: packed.skipped,
        removed,
    })
}

fn tar_header(size: u64, mtime: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(size);
    h.set_mode(0o600);
    h.set_mtime(mtime);
    h
}

fn write_archive(mut p: Pack) -> anyhow::Result<Packed> {
    let sink = p.dest.create_sink(&p.name, p.expected, &p.rt)?;
    let writer = if p.gzip {
        ArchiveWriter::Gzip(flate2::write::GzEncoder::new(
            sink,
            flate2::Compression::fast(),
        ))
    } else {
        ArchiveWriter::Plain(sink)
    };
    let mut tar = tar::Builder::new(writer);
    let mtime = p.header.created_at.timestamp().max(0) as u64;
    let mut manifest = BufWriter::new(File::create(&p.manifest)?);
    let line = |m: &ManifestLine, out: &mut BufWriter<File>| -> anyhow::Result<()> {
        serde_json::to_writer(&mut *out, m)?;
        out.write_all(b"\n")?;
        Ok(())
    };

    let header_json = serde_json::to_vec_pretty(&p.header)?;
    tar.append_data(
        &mut tar_header(header_json.len() as u64, mtime),
        HEADER_ENTRY,
        &header_json[..],
    )?;

    let mut entries = 0u64;
    for (src, name) in [(&p.users, USERS_ENTRY), (&p.files, FILES_ENTRY)] {
        let f = File::open(src)?;
        let size = f.metadata()?.len();
        let mut r = Hashing::new(f.take(size));
        tar.append_data(&mut tar_header(size, mtime), name, &mut r)?;
        let (n, sha) = r.finish();
        if n != size {
            bail!("{name} changed while archiving");
        }
        line(
            &ManifestLine::Entry {
                path: name.into(),
                kind: "db".into(),
                size,
                sha256: sha,
                file_id: None,
            },
            &mut manifest,
        )?;
        entries += 1;
    }

    let mut packed = Packed {
        blobs: 0,
        blob_bytes: 0,
        skipped: Vec::new(),
        archive_bytes: 0,
    };
    let (mut files, mut thumbs) = (0u64, 0u64);
    let rows = BufReader::new(File::open(&p.files)?);
    let mut done = 0u64;
    for l in rows.lines() {
        let row: DumpFile = serde_json::from_str(&l?)?;
        let mut keys = vec![(row.file_path.as_str(), "file")];
        if let Some(t) = &row.thumbnail_path {
            keys.push((t.as_str(), "thumbnail"));
        }
        for (key, kind) in keys {
            crate::blob::check_key(key).map_err(|e| anyhow::anyhow!("row {}: {e}", row.id))?;
            let (size, f) = match open_blob(p.blobs.as_ref(), &p.rt, key) {
                Ok(opened) => opened,
                Err(BlobError::NotFound) => {
                    let s = ManifestLine::Skipped {
                        key: key.into(),
                        kind: kind.into(),
                        file_id: row.id,
                        reason: "deleted after the snapshot".into(),
                    };
                    line(&s, &mut manifest)?;
                    packed.skipped.push(s);
                    continue;
                }
                Err(e) => return Err(e).with_context(|| format!("reading {key}")),
            };
            let mut r = Hashing::new(f);
            let name = format!("{BLOB_PREFIX}{key}");
            tar.append_data(&mut tar_header(size, mtime), &name, &mut r)?;
            let (n, sha) = r.finish();
            if n != size {
                bail!("{key} shrank while it was archived");
            }
            if kind == "file" && (size as i64 != row.file_size || sha != row.sha256) {
                tracing::warn!(
                    key,
                    "blob differs from its row (size or sha256); archived as found"
                );
            }
            line(
                &ManifestLine::Entry {
                    path: name,
                    kind: kind.into(),
                    size,
                    sha256: sha,
                    file_id: Some(row.id),
                },
                &mut manifest,
            )?;
            entries += 1;
            packed.blobs += 1;
            packed.blob_bytes += size;
            if kind == "file" {
                files += 1;
            } else {
                thumbs += 1;
            }
        }
        done += 1;
        let (total, bytes) = (p.header.files, packed.blob_bytes);
        p.progress
            .tick(|| format!("{done}/{total} files, {bytes} bytes"));
    }
    line(
        &ManifestLine::Summary {
            entries,
            files,
            thumbnails: thumbs,
            bytes: packed.blob_bytes,
            skipped: packed.skipped.len() as u64,
        },
        &mut manifest,
    )?;
    let mf = manifest.into_inner().map_err(|e| e.into_error())?;
    mf.sync_all()?;
    drop(mf);
    let mut mf = File::open(&p.manifest)?;
    let size = mf.metadata()?.len();
    tar.append_data(&mut tar_header(size, mtime), MANIFEST_ENTRY, &mut mf)?;
    packed.archive_bytes = tar.into_inner()?.finish()?.commit()?;
    p.progress.say(format!(
        "archived {} blob(s), {} bytes",
        packed.blobs, packed.blob_bytes
    ));
    Ok(packed)
}

// ---------------------------------------------------------------- list, retention

/// Reads the header entry of an archive.
pub fn read_header(path: &Path) -> anyhow::Result<BackupHeader> {
    header_of(open_archive(path)?)
}

fn header_of(mut ar: tar::Archive<Box<dyn Read>>) -> anyhow::Result<BackupHeader> {
    let mut entries = ar.entries()?;
    let mut first = entries.next().context("empty archive")??;
    if entry_path(&first)? != HEADER_ENTRY {
        bail!("not a stowage backup (no {HEADER_ENTRY} first)");
    }
    let mut s = String::new();
    first.read_to_string(&mut s)?;
    let h: BackupHeader = serde_json::from_str(&s)?;
    if h.format != FORMAT {
        bail!("not a stowage backup (format {:?})", h.format);
    }
    Ok(h)
}

/// The header comes first and is small: a remote archive is read this far
/// only.
const HEADER_READ_BYTES: u64 = 64 * 1024;

/// Archives in directory `dest` (by name), oldest first.
pub fn list(dest: &Path) -> anyhow::Result<Vec<ArchiveInfo>> {
    let mut out = Vec::new();
    for (name, size) in super::backup_dest::dir_archives(dest)? {
        let Some(created_at) = parse_archive_name(&name) else {
            continue;
        };
        let path = dest.join(&name);
        let (header, error) = match read_header(&path) {
            Ok(h) => (Some(h), None),
            Err(e) => (None, Some(format!("{e:#}"))),
        };
        out.push(ArchiveInfo {
            path,
            created_at,
            size,
            header,
            error,
        });
    }
    sort_listing(&mut out);
    Ok(out)
}

fn sort_listing(list: &mut [ArchiveInfo]) {
    list.sort_by(|a, b| {
        a.created_at
            .cmp(&b.created_at)
            .then_with(|| a.path.cmp(&b.path))
    });
}

/// Archives in `dest` (by name), oldest first, each with its header (or
/// why it could not be read).
pub async fn list_at(dest: &Dest) -> anyhow::Result<Vec<ArchiveInfo>> {
    let mut out = Vec::new();
    for (name, size) in dest.archives().await? {
        let Some(created_at) = parse_archive_name(&name) else {
            continue;
        };
        let loc = dest.location(&name);
        let l = loc.clone();
        let header = tokio::task::spawn_blocking(move || {
            let rt = tokio::runtime::Handle::current();
            let r = l.open(Some(0..size.min(HEADER_READ_BYTES)), &rt)?;
            header_of(archive_from(r)?)
        })
        .await?;
        let (header, error) = match header {
            Ok(h) => (Some(h), None),
            Err(e) => (None, Some(format!("{e:#}"))),
        };
        out.push(ArchiveInfo {
            path: PathBuf::from(loc.display()),
            created_at,
            size,
            header,
            error,
        });
    }
    sort_listing(&mut out);
    Ok(out)
}

/// Which of `archives` (name, time) retention deletes: those beyond the
/// newest `keep`, or older than `keep_days` before `now`; never `current`.
fn retention_victims(
    mut archives: Vec<(DateTime<Utc>, String)>,
    keep: Option<usize>,
    keep_days: Option<u64>,
    current: &str,
    now: DateTime<Utc>,
) -> Vec<String> {
    // A listing may lag behind the write just made; count it anyway.
    if let Some(t) = parse_archive_name(current) {
        if !archives.iter().any(|(_, n)| n == current) {
            archives.push((t, current.to_string()));
        }
    }
    // Newest first.
    archives.sort_by(|a, b| b.cmp(a));
    let cutoff = keep_days.map(|d| now - chrono::Duration::days(d.min(365_000) as i64));
    let mut out = Vec::new();
    for (i, (t, name)) in archives.into_iter().enumerate() {
        if name == current {
            continue;
        }
        let too_many = keep.is_some_and(|k| i >= k);
        let too_old = cutoff.is_some_and(|c| t < c);
        if too_many || too_old {
            out.push(name);
        }
    }
    out
}

/// Deletes archives beyond the newest `keep`, or older than `keep_days`;
/// only names of the stowage pattern are considered, and `current` (the
/// archive just written) is never deleted.
pub fn apply_retention(
    dest: &Path,
    keep: Option<usize>,
    keep_days: Option<u64>,
    current: &str,
) -> anyhow::Result<Vec<PathBuf>> {
    if keep.is_none() && keep_days.is_none() {
        return Ok(Vec::new());
    }
    let archives = super::backup_dest::dir_archives(dest)?
        .into_iter()
        .filter_map(|(name, _)| parse_archive_name(&name).map(|t| (t, name)))
        .collect();
    let mut removed = Vec::new();
    for name in retention_victims(archives, keep, keep_days, current, Utc::now()) {
        let p = dest.join(&name);
        std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
        tracing::info!(archive = %p.display(), "removed old backup");
        removed.push(p);
    }
    Ok(removed)
}

/// [`apply_retention`] on any destination: the listing is the
/// destination's own (a directory, or the objects under the prefix).
pub async fn retention(
    dest: &Dest,
    keep: Option<usize>,
    keep_days: Option<u64>,
    current: &str,
) -> anyhow::Result<Vec<PathBuf>> {
    if keep.is_none() && keep_days.is_none() {
        return Ok(Vec::new());
    }
    let archives = dest
        .archives()
        .await?
        .into_iter()
        .filter_map(|(name, _)| parse_archive_name(&name).map(|t| (t, name)))
        .collect();
    let mut removed = Vec::new();
    for name in retention_victims(archives, keep, keep_days, current, Utc::now()) {
        dest.delete(&name).await?;
        let at = dest.location(&name).display();
        tracing::info!(archive = %at, "removed old backup");
        removed.push(PathBuf::from(at));
    }
    Ok(removed)
}

// ---------------------------------------------------------------- verify

/// Re-reads `path` end to end: every entry's size and sha256 against the
/// manifest, the manifest against the dumped rows (each row's blob present
/// with the row's size and sha256, or recorded as skipped), and the counts
/// against the header. Memory grows with the number of files (a small
/// record each), never with their size.
pub fn verify(path: &Path, progress: Progress) -> anyhow::Result<VerifyReport> {
    verify_archive(open_archive(path)?, progress)
}

/// [`verify`] on any location: a remote archive is read as one streaming
/// GET, never copied to disk.
pub async fn verify_at(loc: &Location, progress: Progress) -> anyhow::Result<VerifyReport> {
    let loc = loc.clone();
    tokio::task::spawn_blocking(move || verify_archive(open_location(&loc)?, progress)).await?
}

fn verify_archive(
    mut ar: tar::Archive<Box<dyn Read>>,
    mut progress: Progress,
) -> anyhow::Result<VerifyReport> {
    let mut rep = VerifyReport::default();
    // path -> (size, sha256) as found in the archive
    let mut found: HashMap<String, (u64, String)> = HashMap::new();
    // blob key -> (kind, size and sha256) expected from the rows (thumbnails: unknown)
    let mut expected: HashMap<String, Expected> = HashMap::new();
    let mut manifest: Vec<ManifestLine> = Vec::new();
    let mut users = 0u64;
    let mut rows = 0u64;
    let mut row_bytes = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    for (i, entry) in ar.entries()?.enumerate() {
        let entry = entry?;
        let name = entry_path(&entry)?;
        if i == 0 && name != HEADER_ENTRY {
            rep.problems
                .push(format!("first entry is {name:?}, not {HEADER_ENTRY}"));
        }
        let mut r = Hashing::new(entry);
        match name.as_str() {
            HEADER_ENTRY => {
                let mut s = String::new();
                r.read_to_string(&mut s)?;
                match serde_json::from_str::<BackupHeader>(&s) {
                    Ok(h) if h.format == FORMAT && h.version == VERSION => rep.header = Some(h),
                    Ok(h) => rep.problems.push(format!(
                        "unsupported format {} version {}",
                        h.format, h.version
                    )),
                    Err(e) => rep.problems.push(format!("unreadable {HEADER_ENTRY}: {e}")),
                }
            }
            USERS_ENTRY | FILES_ENTRY | MANIFEST_ENTRY => {
                let mut lines = BufReader::new(&mut r);
                let mut l = String::new();
                while {
                    l.clear();
                    lines.read_line(&mut l)? > 0
                } {
                    let t = l.trim_end();
                    if t.is_empty() {
                        continue;
                    }
                    match name.as_str() {
                        USERS_ENTRY => match serde_json::from_str::<DumpUser>(t) {
                            Ok(_) => users += 1,
                            Err(e) => rep.problems.push(format!("bad user row: {e}")),
                        },
                        FILES_ENTRY => match serde_json::from_str::<DumpFile>(t) {
                            Ok(f) => {
                                rows += 1;
                                row_bytes += f.file_size.max(0) as u64;
                                if let Some(th) = f.thumbnail_path {
                                    expected
                                        .insert(format!("{BLOB_PREFIX}{th}"), ("thumbnail", None));
                                }
                                expected.insert(
                                    format!("{BLOB_PREFIX}{}", f.file_path),
                                    ("file", Some((f.file_size, f.sha256))),
                                );
                            }
                            Err(e) => rep.problems.push(format!("bad file row: {e}")),
                        },
                        _ => match serde_json::from_str::<ManifestLine>(t) {
                            Ok(m) => manifest.push(m),
                            Err(e) => rep.problems.push(format!("bad manifest line: {e}")),
                        },
                    }
                }
            }
            n if n.starts_with(BLOB_PREFIX) => loop {
                let k = r.read(&mut buf)?;
                if k == 0 {
                    break;
                }
            },
            other => rep.problems.push(format!("unexpected entry {other:?}")),
        }
        let (size, sha) = r.finish();
        rep.entries_checked += 1;
        rep.bytes_checked += size;
        if found.insert(name.clone(), (size, sha)).is_some() {
            rep.problems.push(format!("entry {name:?} appears twice"));
        }
        let (n, b) = (rep.entries_checked, rep.bytes_checked);
        progress.tick(|| format!("{n} entries, {b} bytes read"));
    }

    let Some(header) = rep.header.clone() else {
        rep.problems.push("no backup header".into());
        return Ok(rep);
    };
    if !matches!(manifest.last(), Some(ManifestLine::Summary { .. })) {
        rep.problems
            .push("manifest missing or truncated (no summary line)".into());
    }
    if header.users != users || header.files != rows || header.bytes != row_bytes {
        rep.problems.push(format!(
            "header says {} users, {} files, {} bytes; the dump has {users}, {rows}, {row_bytes}",
            header.users, header.files, header.bytes
        ));
    }
    let mut listed: HashSet<&str> = HashSet::new();
    let mut skipped: HashSet<&str> = HashSet::new();
    let (mut n_entries, mut n_files, mut n_thumbs, mut n_bytes) = (0u64, 0u64, 0u64, 0u64);
    for m in &manifest {
        match m {
            ManifestLine::Entry {
                path,
                kind,
                size,
                sha256,
                ..
            } => {
                listed.insert(path);
                n_entries += 1;
                match kind.as_str() {
                    "file" => n_files += 1,
                    "thumbnail" => n_thumbs += 1,
                    _ => {}
                }
                if kind != "db" {
                    n_bytes += size;
                }
                match found.get(path) {
                    None => rep.problems.push(format!("{path}: in the manifest but not in the archive")),
                    Some((s, h)) if s != size || h != sha256 => rep.problems.push(format!(
                        "{path}: archive has {s} bytes sha256 {h}, manifest says {size} bytes sha256 {sha256}"
                    )),
                    Some(_) => {}
                }
                if kind != "db" {
                    match expected.get(path.as_str()) {
                        None => rep.problems.push(format!("{path}: no row references it")),
                        Some((_, Some((rs, rh)))) if *rs != *size as i64 || rh != sha256 => rep.problems.push(format!(
                            "{path}: row says {rs} bytes sha256 {rh}, manifest says {size} bytes sha256 {sha256}"
                        )),
                        Some(_) => {}
                    }
                }
            }
            ManifestLine::Skipped { key, .. } => {
                rep.skipped += 1;
                skipped.insert(key);
            }
            ManifestLine::Summary {
                entries,
                files,
                thumbnails,
                bytes,
                skipped: s,
            } => {
                if (*entries, *files, *thumbnails, *bytes, *s)
                    != (n_entries, n_files, n_thumbs, n_bytes, rep.skipped)
                {
                    rep.problems
                        .push("manifest summary does not match its entries".into());
                }
            }
        }
    }
    for name in found.keys() {
        if name != HEADER_ENTRY && name != MANIFEST_ENTRY && !listed.contains(name.as_str()) {
            rep.problems
                .push(format!("{name}: in the archive but not in the manifest"));
        }
    }
    for (key, (kind, _)) in &expected {
        let bare = &key[BLOB_PREFIX.len()..];
        if !listed.contains(key.as_str()) && !skipped.contains(bare) {
            rep.problems.push(format!(
                "{key}: the {kind} of a row is neither archived nor recorded as skipped"
            ));
        }
    }
    for name in [USERS_ENTRY, FILES_ENTRY] {
        if !listed.contains(name) {
            rep.problems.push(format!("{name} missing"));
        }
    }
    rep.problems.sort();
    rep.ok = rep.problems.is_empty();
    progress.say(format!(
        "{} entries, {} bytes: {}",
        rep.entries_checked,
        rep.bytes_checked,
        if rep.ok { "OK" } else { "FAILED" }
    ));
    Ok(rep)
}

/// What a row says about its blob: kind, and (for files) size and sha256.
type Expected = (&'static str, Option<(i64, String)>);

/// An archive's header, rows and manifest, read whole.
#[derive(Clone, Debug)]
pub struct Contents {
    pub header: BackupHeader,
    pub users: Vec<DumpUser>,
    pub files: Vec<DumpFile>,
    pub manifest: Vec<ManifestLine>,
}

/// Reads an archive's header, rows and manifest (small archives: tests,
/// inspection); blob contents are skipped.
pub fn read_contents(path: &Path) -> anyhow::Result<Contents> {
    let mut ar = open_archive(path)?;
    let (mut header, mut users, mut files, mut manifest) =
        (None, Vec::new(), Vec::new(), Vec::new());
    for entry in ar.entries()? {
        let mut entry = entry?;
        let name = entry_path(&entry)?;
        if name.starts_with(BLOB_PREFIX) {
            continue;
        }
        let mut s = String::new();
        entry.read_to_string(&mut s)?;
        match name.as_str() {
            HEADER_ENTRY => header = Some(serde_json::from_str(&s)?),
            USERS_ENTRY => {
                users = s
                    .lines()
                    .map(serde_json::from_str)
                    .collect::<Result<_, _>>()?
            }
            FILES_ENTRY => {
                files = s
                    .lines()
                    .map(serde_json::from_str)
                    .collect::<Result<_, _>>()?
            }
            MANIFEST_ENTRY => {
                manifest = s
                    .lines()
                    .map(serde_json::from_str)
                    .collect::<Result<_, _>>()?
            }
            _ => {}
        }
    }
    Ok(Contents {
        header: header.context("no header")?,
        users,
        files,
        manifest,
    })
}

// ---------------------------------------------------------------- restore

/// What the blocking half of `restore` unpacked.
struct Unpacked {
    header: BackupHeader,
    /// Blob keys published in the store.
    restored: HashSet<String>,
    thumbnails: u64,
}

/// Rebuilds the configured database and blob store from `archive`. The
/// database must hold no file rows.
///
/// The archive is not trusted: before anything is published, the whole of
/// it is checked against its own database snapshot. Every blob must be the
/// file or the thumbnail of exactly one row, under that row's user's
/// directory in the folder of its type (`{user}/{type dir}/{id}.{ext}`,
/// `{user}/.thumbs/{id}.{ext}`), with the row's size and sha256 (files) and
/// the manifest's (every blob); every row's blobs must be archived or
/// recorded as deleted after the snapshot; nothing else is accepted. Blobs
/// are staged while they are read and published only once all of that
/// holds; on any violation restore fails with the reason, and the target
/// keeps no blob and no row. Rows then go in in one transaction; the
/// triggers rebuild the counters, which are then checked against the rows.
pub async fn restore(
    state: &Core,
    archive: &Path,
    progress: Progress,
) -> anyhow::Result<RestoreReport> {
    restore_from(state, &Location::File(archive.to_path_buf()), progress).await
}

/// [`restore`] from any location: a remote archive is read as one
/// streaming GET, its blobs staged in the store as they arrive.
pub async fn restore_from(
    state: &Core,
    archive: &Location,
    mut progress: Progress,
) -> anyhow::Result<RestoreReport> {
    state.meta.migrate().await.context("applying migrations")?;
    if state.meta.has_files().await? {
        bail!("the configured database already has files; restore needs an empty one");
    }
    let work = scratch_root(state).join(format!("restore-{}", Uuid::new_v4()));
    mkdirs(&work)?;
    let _cleanup = RemoveOnDrop(work.clone());
    let users_path = work.join("user_storage.jsonl");
    let files_path = work.join("user_files.jsonl");
    progress.say(format!("unpacking {}", archive.display()));
    let (archive_c, work_c) = (archive.clone(), work.clone());
    let (blobs, rt) = (state.blobs.clone(), tokio::runtime::Handle::current());
    let p = std::mem::replace(&mut progress, Progress::off());
    let (unpacked, mut progress) =
        tokio::task::spawn_blocking(move || unpack(&archive_c, blobs.as_ref(), &rt, &work_c, p))
            .await??;
    progress.say(format!(
        "blobs in place; inserting rows ({} files)",
        unpacked.header.files
    ));
    let mut rep = match insert_rows(state, &users_path, &files_path, &unpacked.restored).await {
        Ok(rep) => rep,
        Err(e) => {
            // The transaction rolled back; take the blobs back out too.
            for key in &unpacked.restored {
                let _ = state.blobs.remove(key).await;
            }
            return Err(e.context("inserting the rows"));
        }
    };
    rep.thumbnails = unpacked.thumbnails;
    state.meta.repair_counters().await?;
    // The counters must equal the rows now.
    let totals: HashMap<String, (i64, i64)> = state
        .meta
        .row_totals()
        .await?
        .into_iter()
        .map(|(u, b, n)| (u, (b, n)))
        .collect();
    for u in state.meta.list_users().await? {
        let (b, n) = totals.get(&u.user_id).copied().unwrap_or((0, 0));
        if (u.total_bytes, u.file_count) != (b, n) {
            bail!(
                "counters of {} do not match its rows after restore",
                u.user_id
            );
        }
    }
    progress.say(format!(
        "restored {} user(s), {} file(s), {} bytes",
        rep.users, rep.files, rep.bytes
    ));
    Ok(rep)
}

/// Which blob of its row a key is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BlobKind {
    File,
    Thumbnail,
}

impl BlobKind {
    fn as_str(self) -> &'static str {
        match self {
            BlobKind::File => "file",
            BlobKind::Thumbnail => "thumbnail",
        }
    }
}

/// What the snapshot says one blob key must be.
struct Owner {
    row: Uuid,
    kind: BlobKind,
    /// Size and sha256 from the row (files only).
    sum: Option<(i64, String)>,
}

/// `key` is `{dir}/{id}.{ext}` with a plain extension.
fn is_blob_key_in(key: &str, dir: &str, id: Uuid) -> bool {
    key.strip_prefix(dir)
        .and_then(|r| r.strip_prefix('/'))
        .and_then(|r| r.strip_prefix(id.to_string().as_str()))
        .and_then(|r| r.strip_prefix('.'))
        .is_some_and(|ext| {
            (1..=8).contains(&ext.len()) && ext.bytes().all(|b| b.is_ascii_alphanumeric())
        })
}

/// Checks one snapshot row's blob keys against the layout of SPEC §5 and
/// records them in `owners`; a key claimed twice is refused.
fn claim_keys(
    f: &DumpFile,
    users: &HashSet<String>,
    owners: &mut HashMap<String, Owner>,
) -> anyhow::Result<()> {
    use crate::domain::{filetype::FileType, names::user_dir_name};
    if !users.contains(&f.user_id) {
        bail!(
            "row {}: its user {:?} is not in the snapshot",
            f.id,
            f.user_id
        );
    }
    let ft = FileType::parse(&f.file_type)
        .filter(|t| t.as_str() == f.file_type)
        .with_context(|| format!("row {}: unknown file type {:?}", f.id, f.file_type))?;
    let user_dir = user_dir_name(&f.user_id);
    let mut claim = |key: &str, kind: BlobKind, dir: String| -> anyhow::Result<()> {
        crate::blob::check_key(key).map_err(|e| anyhow::anyhow!("row {}: {e}", f.id))?;
        if !is_blob_key_in(key, &dir, f.id) {
            bail!(
                "row {}: its {} {key:?} is not {dir}/{}.<ext>, where its user's {} belong",
                f.id,
                kind.as_str(),
                f.id,
                kind.as_str()
            );
        }
        let sum = (kind == BlobKind::File).then(|| (f.file_size, f.sha256.clone()));
        if let Some(o) = owners.insert(
            key.to_string(),
            Owner {
                row: f.id,
                kind,
                sum,
            },
        ) {
            bail!("{key}: claimed by rows {} and {}", o.row, f.id);
        }
        Ok(())
    };
    claim(
        &f.file_path,
        BlobKind::File,
        format!("{user_dir}/{}", ft.dir()),
    )?;
    if let Some(th) = &f.thumbnail_path {
        claim(th, BlobKind::Thumbnail, format!("{user_dir}/.thumbs"))?;
    }
    Ok(())
}

/// Staged blobs of a restore, keyed by blob key; discarded on drop unless
/// published.
struct Staged<'a> {
    blobs: &'a dyn BlobStore,
    rt: &'a tokio::runtime::Handle,
    ids: HashMap<String, Uuid>,
}

impl Drop for Staged<'_> {
    fn drop(&mut self) {
        for id in self.ids.values() {
            let _ = self.rt.block_on(self.blobs.discard(*id));
        }
    }
}

impl Staged<'_> {
    /// Publishes every staged blob whose key is in `keep` and discards the
    /// rest; on a failure, removes what was published already.
    fn publish(mut self, keep: &HashSet<&str>) -> anyhow::Result<HashSet<String>> {
        let mut done: HashSet<String> = HashSet::new();
        let ids = std::mem::take(&mut self.ids);
        let mut pending = ids.iter();
        for (key, id) in pending.by_ref() {
            if !keep.contains(key.as_str()) {
                let _ = self.rt.block_on(self.blobs.discard(*id));
                continue;
            }
            if let Err(e) = self.rt.block_on(self.blobs.publish(*id, key)) {
                for k in &done {
                    let _ = self.rt.block_on(self.blobs.remove(k));
                }
                let _ = self.rt.block_on(self.blobs.discard(*id));
                for (_, rest) in pending {
                    let _ = self.rt.block_on(self.blobs.discard(*rest));
                }
                return Err(anyhow::Error::new(e).context(format!("publishing {key}")));
            }
            done.insert(key.clone());
        }
        Ok(done)
    }
}

/// Reads the archive, checking it whole and staging its blobs; publishes
/// them only when everything checked out (see [`restore`]).
fn unpack(
    archive: &Location,
    blobs: &dyn BlobStore,
    rt: &tokio::runtime::Handle,
    work: &Path,
    mut progress: Progress,
) -> anyhow::Result<(Unpacked, Progress)> {
    let mut ar = archive_from(archive.open(None, rt)?)?;
    let mut header: Option<BackupHeader> = None;
    let mut users: Option<HashSet<String>> = None;
    let mut rows: Option<Vec<DumpFile>> = None;
    // blob key -> what its row says it is
    let mut owners: HashMap<String, Owner> = HashMap::new();
    // archive path -> (size, sha256) as read
    let mut got: HashMap<String, (u64, String)> = HashMap::new();
    let mut manifest: Option<(HashSet<String>, HashSet<String>)> = None;
    let mut staged = Staged {
        blobs,
        rt,
        ids: HashMap::new(),
    };
    let mut n = 0u64;
    for entry in ar.entries()? {
        let entry = entry?;
        let name = entry_path(&entry)?;
        if got.contains_key(&name) {
            bail!("archive entry {name:?} appears twice");
        }
        if manifest.is_some() {
            bail!("archive entry {name:?} after the manifest");
        }
        let mut r = Hashing::new(entry);
        match name.as_str() {
            HEADER_ENTRY => {
                let mut s = String::new();
                r.read_to_string(&mut s)?;
                let h: BackupHeader = serde_json::from_str(&s)?;
                if h.format != FORMAT || h.version != VERSION {
                    bail!("unsupported archive: {} version {}", h.format, h.version);
                }
                header = Some(h);
            }
            USERS_ENTRY | FILES_ENTRY => {
                let out = work.join(&name[3..]);
                let mut w = BufWriter::new(File::create(&out)?);
                let mut lines = BufReader::new(&mut r);
                let mut l = String::new();
                let (mut seen_users, mut seen_rows) = (HashSet::new(), Vec::new());
                while {
                    l.clear();
                    lines.read_line(&mut l)? > 0
                } {
                    if !l.trim().is_empty() {
                        if name == FILES_ENTRY {
                            let f: DumpFile = serde_json::from_str(l.trim_end())?;
                            seen_rows.push(f);
                        } else {
                            let u: DumpUser = serde_json::from_str(l.trim_end())?;
                            if !seen_users.insert(u.user_id.clone()) {
                                bail!("user {:?} appears twice in the snapshot", u.user_id);
                            }
                        }
                    }
                    w.write_all(l.as_bytes())?;
                }
                w.flush()?;
                if name == FILES_ENTRY {
                    let known = users
                        .as_ref()
                        .context("the file rows come before the users in the archive")?;
                    let mut ids = HashSet::new();
                    for f in &seen_rows {
                        if !ids.insert(f.id) {
                            bail!("row {} appears twice in the snapshot", f.id);
                        }
                        claim_keys(f, known, &mut owners)?;
                    }
                    rows = Some(seen_rows);
                } else {
                    users = Some(seen_users);
                }
            }
            MANIFEST_ENTRY => {
                let mut s = String::new();
                r.read_to_string(&mut s)?;
                let (mut listed, mut skipped) = (HashSet::new(), HashSet::new());
                for l in s.lines().filter(|l| !l.trim().is_empty()) {
                    match serde_json::from_str::<ManifestLine>(l)? {
                        ManifestLine::Entry {
                            path, size, sha256, ..
                        } => {
                            match got.get(&path) {
                                Some((s, h)) if *s == size && *h == sha256 => {}
                                _ => bail!("{path}: archive content does not match the manifest"),
                            }
                            listed.insert(path);
                        }
                        ManifestLine::Skipped { key, .. } => {
                            skipped.insert(key);
                        }
                        ManifestLine::Summary { .. } => {}
                    }
                }
                manifest = Some((listed, skipped));
            }
            blob if blob.starts_with(BLOB_PREFIX) => {
                let key = blob[BLOB_PREFIX.len()..].to_string();
                if rows.is_none() {
                    bail!("archive entry {blob:?} comes before the file rows");
                }
                let owner = owners
                    .get(&key)
                    .with_context(|| format!("{key}: archived blob that no row references"))?;
                crate::blob::check_key(&key)
                    .map_err(|e| anyhow::anyhow!("archive entry {blob:?}: {e}"))?;
                let (id, size, sha) =
                    stage_blob(blobs, rt, &mut r).with_context(|| format!("writing {key}"))?;
                staged.ids.insert(key.clone(), id);
                if let Some((rs, rh)) = &owner.sum {
                    if *rs != size as i64 || *rh != sha {
                        bail!(
                            "{key}: {size} bytes sha256 {sha}, but row {} says its {} has {rs} bytes sha256 {rh}",
                            owner.row,
                            owner.kind.as_str()
                        );
                    }
                }
                n += 1;
                progress.tick(|| format!("{n} blobs checked"));
            }
            other => bail!("unexpected archive entry {other:?}"),
        }
        let (size, sha) = r.finish();
        got.insert(name, (size, sha));
    }
    let header = header.context("archive has no header")?;
    let rows = rows.context("archive has no file rows")?;
    let Some((listed, skipped)) = manifest else {
        bail!("archive has no manifest (truncated?)");
    };
    // Every entry's sum is in the manifest (a thumbnail's only check).
    for name in got.keys() {
        if name != HEADER_ENTRY && name != MANIFEST_ENTRY && !listed.contains(name) {
            bail!("{name}: in the archive but not in the manifest");
        }
    }
    // Every row's blobs are here, or were deleted after the snapshot; a row
    // whose file is gone is left out, and so is its thumbnail.
    let mut keep: HashSet<&str> = HashSet::new();
    let mut thumbnails = 0u64;
    for f in &rows {
        for (key, kind) in std::iter::once((&f.file_path, BlobKind::File))
            .chain(f.thumbnail_path.iter().map(|t| (t, BlobKind::Thumbnail)))
        {
            if !staged.ids.contains_key(key) && !skipped.contains(key) {
                bail!(
                    "{key}: the {} of row {} is neither archived nor recorded as deleted",
                    kind.as_str(),
                    f.id
                );
            }
        }
        if staged.ids.contains_key(&f.file_path) {
            keep.insert(&f.file_path);
            if let Some(th) = f.thumbnail_path.as_deref() {
                if staged.ids.contains_key(th) {
                    keep.insert(th);
                    thumbnails += 1;
                }
            }
        }
    }
    progress.say(format!("{n} blobs checked; publishing"));
    let restored = staged.publish(&keep)?;
    Ok((
        Unpacked {
            header,
            restored,
            thumbnails,
        },
        progress,
    ))
}

/// Reads the staged rows back for the store to insert, leaving out the
/// rows whose file was not restored (and thumbnails that were not), and
/// counting what goes in.
struct JsonlSource<'a> {
    users: tokio::io::Lines<tokio::io::BufReader<tokio::fs::File>>,
    files: tokio::io::Lines<tokio::io::BufReader<tokio::fs::File>>,
    restored: &'a HashSet<String>,
    rep: RestoreReport,
}

impl JsonlSource<'_> {
    async fn next<T: serde::de::DeserializeOwned>(
        lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::fs::File>>,
    ) -> MetaResult<Option<T>> {
        while let Some(l) = lines.next_line().await.map_err(rows_error)? {
            if !l.trim().is_empty() {
                return serde_json::from_str(&l).map(Some).map_err(rows_error);
            }
        }
        Ok(None)
    }
}

#[async_trait::async_trait]
impl RowSource for JsonlSource<'_> {
    async fn next_user(&mut self) -> MetaResult<Option<DumpUser>> {
        let u = Self::next::<DumpUser>(&mut self.users).await?;
        if u.is_some() {
            self.rep.users += 1;
        }
        Ok(u)
    }

    async fn next_file(&mut self) -> MetaResult<Option<DumpFile>> {
        while let Some(mut f) = Self::next::<DumpFile>(&mut self.files).await? {
            if !self.restored.contains(&f.file_path) {
                self.rep.rows_skipped += 1;
                continue;
            }
            f.thumbnail_path = f.thumbnail_path.filter(|t| self.restored.contains(t));
            self.rep.files += 1;
            self.rep.bytes += f.file_size.max(0) as u64;
            return Ok(Some(f));
        }
        Ok(None)
    }
}

async fn insert_rows(
    state: &Core,
    users: &Path,
    files: &Path,
    restored: &HashSet<String>,
) -> anyhow::Result<RestoreReport> {
    let mut src = JsonlSource {
        users: tokio::io::BufReader::new(tokio::fs::File::open(users).await?).lines(),
        files: tokio::io::BufReader::new(tokio::fs::File::open(files).await?).lines(),
        restored,
        rep: RestoreReport::default(),
    };
    state.meta.restore_rows(&mut src).await?;
    Ok(src.rep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let t = DateTime::parse_from_rfc3339("2026-01-24T10:15:00.123Z")
            .unwrap()
            .with_timezone(&Utc);
        let n = archive_name(t, false);
        assert_eq!(n, "stowage-backup-20260124T101500123Z.tar");
        assert_eq!(parse_archive_name(&n), Some(t));
        assert_eq!(parse_archive_name(&archive_name(t, true)), Some(t));
        for other in [
            "stowage-backup-20260124T101500123Z.tar.partial",
            ".stowage-backup-20260124T101500123Z.tar.partial",
            "stowage-backup-latest.tar",
            "notes.txt",
            "stowage-backup-20261324T101500123Z.tar",
        ] {
            assert_eq!(parse_archive_name(other), None, "{other}");
        }
    }
}
