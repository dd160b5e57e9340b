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
//! prefix in an S3-compatible bucket ([`dest`]). Either way an
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

use super::progress::Progress;
use crate::{
    blob::{BlobError, BlobStore},
    core::Core,
    meta::{FileRecord, MetaError, MetaResult, RowSource, SnapshotSink},
};
use dest::{ArchiveSink, Dest, Location};

pub use crate::meta::{DumpFile, DumpUser};

mod archive;
mod create;
pub mod dest;
mod restore;
mod retention;
mod verify;

use archive::*;
pub use archive::{archive_name, parse_archive_name};
pub use create::create;
pub use restore::{restore, restore_from};
pub use retention::{list, list_at, retention};
pub use verify::{read_contents, verify, verify_at, Contents};

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
