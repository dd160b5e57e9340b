//! The metadata store: users and their quotas, file rows, quota reservations.
//!
//! One trait, [`MetaStore`], three backends chosen from the database URL at
//! start-up: PostgreSQL and SQLite generated from the same SQL in [`sql`],
//! and MySQL/MariaDB in `sql::mysql`, one module per concern.
//! Quota rules live here in one place: a reservation is taken with a single
//! conditional `UPDATE` (atomic on both engines, and across processes), and a
//! file row is committed in the same transaction that releases its
//! reservation, so `total_bytes + reserved_bytes <= max_bytes` always holds.
//! `total_bytes`/`file_count` themselves are kept by database triggers.

pub mod clock;
pub mod events;
mod sql;
mod view;

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::filetype::FileType;

pub use clock::{Clock, ManualClock, SystemClock};
pub use events::{Event, EventCounts, EventQuery, EventStatus, EventStore, EventType, NewEvent};
pub use sql::probe::{AppliedMigration, KnownMigration, Probe, ProbeError};
pub use sql::{connect, connect_with_clock, SqlStore};
pub use view::FileView;

/// Every store trait, for callers that use a `dyn MetaStore` (trait methods
/// need their trait in scope): `use crate::meta::prelude::*;`.
pub mod prelude {
    pub use super::{
        EventStore, FileStore, JobStore, LeaseStore, MetaStore, NodeStore, QuotaStore,
        SignedUploadStore, SnapshotStore, TusStore, UserStore,
    };
}

/// Errors of the metadata layer; `NotFound` and `QuotaExceeded` are expected
/// outcomes the HTTP layer maps to 404 and 507.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("not found")]
    NotFound,
    #[error("quota exceeded: {needed} bytes needed, {available} available")]
    QuotaExceeded { needed: u64, available: u64 },
    /// The user already has `limit` unfinished uploads (SPEC §9).
    #[error("{limit} unfinished uploads already")]
    TooManyUploads { limit: u64 },
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("database error: {0}")]
    Db(sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The caller's side of a streamed snapshot or restore failed (writing
    /// or reading its rows).
    #[error("snapshot rows: {0}")]
    Rows(String),
}

impl From<sqlx::Error> for MetaError {
    fn from(e: sqlx::Error) -> Self {
        MetaError::from_sqlx(e)
    }
}

impl MetaError {
    /// Classifies sqlx errors: "the database is not reachable right now"
    /// (answered 503 with `Retry-After`) versus everything else (500).
    pub(crate) fn from_sqlx(e: sqlx::Error) -> MetaError {
        let transient = match &e {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::WorkerCrashed => true,
            sqlx::Error::Database(db) => {
                if let Some(my) = db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
                    // MySQL's SQLSTATE is too coarse (HY000 for most):
                    // its error numbers tell.
                    return if sql::mysql_transient(my.number()) {
                        MetaError::Unavailable(e.to_string())
                    } else {
                        MetaError::Db(e)
                    };
                }
                let code = db.code().unwrap_or_default();
                // PostgreSQL: connection exceptions (08…), operator
                // intervention/shutdown (57P…), insufficient resources (53…),
                // database not accepting connections (55000). SQLite: busy
                // or locked beyond the busy timeout (5, 6 and extended codes).
                code.starts_with("08")
                    || code.starts_with("57P")
                    || code.starts_with("53")
                    || code == "55000"
                    || matches!(code.as_ref(), "5" | "6" | "261" | "517" | "262")
            }
            _ => false,
        };
        if transient {
            return MetaError::Unavailable(e.to_string());
        }
        match e {
            sqlx::Error::RowNotFound => MetaError::NotFound,
            other => MetaError::Db(other),
        }
    }
}

pub type MetaResult<T> = Result<T, MetaError>;

/// A user's storage row.
#[derive(Clone, Debug, Serialize)]
pub struct UserStorage {
    pub user_id: String,
    pub total_bytes: i64,
    pub reserved_bytes: i64,
    pub max_bytes: i64,
    pub file_count: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A committed file's row (also, with its `created_at`, a backup's line:
/// [`DumpFile`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    pub id: Uuid,
    pub user_id: String,
    pub file_name: String,
    pub file_type: FileType,
    pub mime_type: String,
    pub file_size: i64,
    /// Blob key relative to the volume root.
    pub file_path: String,
    pub thumbnail_path: Option<String>,
    pub resolution: Option<String>,
    pub duration: Option<String>,
    pub package_name: Option<String>,
    pub tags: Vec<String>,
    pub is_favorite: bool,
    pub sha256: String,
    pub upload_date: DateTime<Utc>,
}

/// What ingest hands over to commit a file.
#[derive(Clone, Debug)]
pub struct NewFile {
    pub id: Uuid,
    pub user_id: String,
    pub file_name: String,
    pub file_type: FileType,
    pub mime_type: String,
    pub file_size: i64,
    pub file_path: String,
    pub package_name: Option<String>,
    pub tags: Vec<String>,
    pub sha256: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SortKey {
    #[default]
    UploadDate,
    FileName,
    FileSize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SortOrder {
    Asc,
    #[default]
    Desc,
}

/// The position after the last row of a page (keyset pagination).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Cursor {
    /// The sort key's value: RFC 3339 date, name, or size as a string.
    pub k: String,
    pub id: Uuid,
}

/// Filters and page for [`FileStore::list_files`].
#[derive(Clone, Debug, Default)]
pub struct ListQuery {
    pub file_type: Option<FileType>,
    pub favorite: Option<bool>,
    pub tag: Option<String>,
    pub q: Option<String>,
    pub sort: SortKey,
    pub order: SortOrder,
    pub limit: u32,
    pub after: Option<Cursor>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct TypeUsage {
    pub bytes: i64,
    pub count: i64,
}

/// Media facts found after upload.
#[derive(Clone, Debug, Default)]
pub struct MediaUpdate {
    pub resolution: Option<String>,
    pub duration: Option<String>,
    pub thumbnail_path: Option<String>,
}

/// What deleting a user removed, for the caller to delete blobs and report.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DeletedUser {
    pub files: u64,
    pub bytes: u64,
    pub blob_keys: Vec<String>,
}

/// A claimed background job.
#[derive(Clone, Debug)]
pub struct Job {
    pub id: Uuid,
    pub kind: String,
    pub payload: String,
    pub attempts: i64,
    pub max_attempts: i64,
}

/// A job's row, for the admin view.
#[derive(Clone, Debug, Serialize)]
pub struct JobInfo {
    pub id: Uuid,
    pub kind: String,
    pub payload: String,
    pub status: String,
    pub attempts: i64,
    pub last_error: Option<String>,
}

/// A tus upload in progress (table `tus_uploads`). Its id is also the id of
/// its quota reservation and of its staging blob.
#[derive(Clone, Debug, PartialEq)]
pub struct TusUpload {
    pub id: Uuid,
    pub user_id: String,
    pub upload_length: i64,
    /// Bytes durably staged and acknowledged.
    pub upload_offset: i64,
    /// The client's `Upload-Metadata`, as JSON text (see `http::tus`).
    pub metadata: String,
    pub expires_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    /// The saved sha256 state over the first `upload_offset` bytes (see
    /// `ingest::sha256`); `None` for a row written before it was kept.
    pub hash_state: Option<Vec<u8>>,
}

/// Who holds a reservation taken by a request in flight: one start (the
/// incarnation) of one `serve` process (the node, whose id is kept in its data
/// dir). See [`crate::node`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Holder {
    pub node: Uuid,
    pub incarnation: Uuid,
}

/// A `serve` process as it registers in `nodes`.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeRow {
    pub holder: Holder,
    pub host: String,
    pub pid: i64,
    pub started_at: DateTime<Utc>,
    pub heartbeat_at: DateTime<Utc>,
}

/// Holders that are gone, whose reservations may be reclaimed at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gone {
    /// Every incarnation of `node` but `except` (a restart reclaims what its
    /// earlier starts held; `None` when no process of that node runs).
    Node { node: Uuid, except: Option<Uuid> },
    /// Every incarnation whose last heartbeat is older than this (or whose
    /// row is gone).
    SilentSince(DateTime<Utc>),
}

/// Outcome of [`TusStore::lock_tus_upload`].
#[derive(Clone, Debug, PartialEq)]
pub enum TusLock {
    /// The caller holds the lease; the row as it is now.
    Acquired(TusUpload),
    /// Another request holds a live lease.
    Busy(TusHolder),
    /// No such live upload for this user (never created, finished,
    /// terminated or expired).
    Missing,
}

/// An issued signed upload URL (table `signed_uploads`). Its id is also its
/// quota reservation's and the id of the file it becomes.
#[derive(Clone, Debug, PartialEq)]
pub struct SignedUpload {
    pub id: Uuid,
    pub user_id: String,
    /// Bytes reserved at issue; the upload may not be larger.
    pub max_bytes: i64,
    pub file_type: Option<FileType>,
    pub file_name: Option<String>,
    pub expires_at: DateTime<Utc>,
}

/// Outcome of [`SignedUploadStore::claim_signed_upload`].
#[derive(Clone, Debug, PartialEq)]
pub enum SignedClaim {
    /// This call took the URL's single use.
    Claimed(SignedUpload),
    /// The URL was used before.
    Used,
    /// No such URL, or it expired.
    Missing,
}

/// A change of names for [`FileStore::rename_file`]; `None` keeps a field.
#[derive(Clone, Debug, Default)]
pub struct Rename {
    pub file_name: Option<String>,
    /// `Some(None)` clears the package.
    pub package_name: Option<Option<String>>,
}

/// Who holds a tus upload's live lease, and how far a takeover has got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TusHolder {
    pub owner: Uuid,
    pub takeover: Takeover,
    /// The holder is completing the upload: its lease is not taken away
    /// while it renews it.
    pub completing: bool,
}

/// The takeover marker on a leased tus upload (`tus_uploads.takeover`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Takeover {
    /// Nobody asked the holder to stop.
    None,
    /// A later request asked the holder to stop; not seen yet.
    Requested,
    /// The holder saw the request and is releasing the lease.
    Releasing,
}

impl Takeover {
    pub fn from_i64(v: i64) -> Takeover {
        match v {
            1 => Takeover::Requested,
            2 => Takeover::Releasing,
            _ => Takeover::None,
        }
    }
}

/// What the lease holder learns when it checks its lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseCheck {
    /// Still ours; nobody waits for it.
    Held,
    /// Still ours, but a later request asked us to stop: the marker is now
    /// [`Takeover::Releasing`].
    TakeoverRequested,
    /// Not ours any more (taken away, or the row is gone).
    Lost,
}

/// What [`TusStore::record_tus_progress`] records besides the offset.
#[derive(Clone, Debug)]
pub struct TusProgress {
    pub offset: u64,
    /// The sha256 state over the first `offset` bytes, when known.
    pub hash_state: Option<Vec<u8>>,
    pub expires_at: DateTime<Utc>,
    /// The upload is whole and its holder goes on to complete it.
    pub completing: bool,
}

/// Outcome of [`TusStore::record_tus_progress`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TusRecorded {
    /// The progress is recorded and the reservation's expiry pushed.
    Recorded,
    /// The progress is recorded, but the upload's reservation is gone
    /// (expired meanwhile): nothing to push.
    NoReservation,
    /// `owner` no longer holds the lease: nothing changed.
    Lost,
}

/// One run of a periodic task, as `task_runs` records it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct TaskRun {
    pub id: i64,
    pub name: String,
    pub holder: String,
    pub started_at: DateTime<Utc>,
    /// `None` while running, or when the process died during the run.
    pub finished_at: Option<DateTime<Utc>>,
    /// `ok`, `problems` or `failed`.
    pub outcome: Option<String>,
    pub summary: Option<String>,
}

/// Database leases for periodic tasks (table `task_leases`), so that
/// several processes sharing one database run a task one at a time, and the
/// history of their runs (`task_runs`). Deadlines come from the store's
/// [`Clock`].
#[async_trait]
pub trait LeaseStore: Send + Sync {
    /// Takes (or renews, when `holder` already has it) the lease `name` for
    /// `ttl`: one conditional upsert, atomic across processes. True when
    /// `holder` holds it afterwards.
    async fn try_acquire_lease(&self, name: &str, holder: &str, ttl: Duration) -> MetaResult<bool>;
    /// Gives the lease up early; a no-op unless `holder` holds it.
    async fn release_lease(&self, name: &str, holder: &str) -> MetaResult<()>;
    /// The holder of the unexpired lease `name`, if any.
    async fn lease_holder(&self, name: &str) -> MetaResult<Option<String>>;
    /// Records that `holder` starts a run of `name`; prunes history older
    /// than 30 days. Returns the run's id.
    async fn task_run_started(&self, name: &str, holder: &str) -> MetaResult<i64>;
    /// Records how run `id` ended.
    async fn task_run_finished(&self, id: i64, outcome: &str, summary: &str) -> MetaResult<()>;
    /// The newest `limit` runs, of task `name` or of every task, newest first.
    async fn recent_task_runs(&self, name: Option<&str>, limit: i64) -> MetaResult<Vec<TaskRun>>;
}

/// A `user_storage` row as a snapshot holds it (one line of a backup's
/// `db/user_storage.jsonl`). Not a [`UserStorage`]: reservations are not
/// backed up (a restore starts with none), and the line keeps its own
/// field order, while `UserStorage` is also what the admin API shows.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DumpUser {
    pub user_id: String,
    pub max_bytes: i64,
    /// Counters at snapshot time (a restore recomputes them from the rows).
    pub total_bytes: i64,
    pub file_count: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A `user_files` row as a snapshot holds it (one line of a backup's
/// `db/user_files.jsonl`): the [`FileRecord`] and when the row was written.
/// Flattened, the line is the record's fields in order, then `created_at`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DumpFile {
    #[serde(flatten)]
    pub file: FileRecord,
    pub created_at: DateTime<Utc>,
}

impl From<UserStorage> for DumpUser {
    fn from(u: UserStorage) -> Self {
        DumpUser {
            user_id: u.user_id,
            max_bytes: u.max_bytes,
            total_bytes: u.total_bytes,
            file_count: u.file_count,
            created_at: u.created_at,
            updated_at: u.updated_at,
        }
    }
}

/// Where [`SnapshotStore::snapshot`] streams its rows: every user (by
/// `user_id`), then every file (by `user_id`, `id`).
#[async_trait]
pub trait SnapshotSink: Send {
    async fn user(&mut self, row: DumpUser) -> MetaResult<()>;
    async fn file(&mut self, row: DumpFile) -> MetaResult<()>;
}

/// What [`SnapshotStore::restore_rows`] reads: every user, then every file.
#[async_trait]
pub trait RowSource: Send {
    async fn next_user(&mut self) -> MetaResult<Option<DumpUser>>;
    async fn next_file(&mut self) -> MetaResult<Option<DumpFile>>;
}

/// A consistent logical snapshot of the users and their files, and its
/// restore: the database side of backups (see `ops::backup`).
#[async_trait]
pub trait SnapshotStore: Send + Sync {
    /// Streams a consistent snapshot into `sink`; returns its moment.
    async fn snapshot(&self, sink: &mut dyn SnapshotSink) -> MetaResult<DateTime<Utc>>;
    /// True when any file row exists (a restore needs an empty database).
    async fn has_files(&self) -> MetaResult<bool>;
    /// Inserts every row of `src` in one transaction: all or nothing. Users
    /// start with zero counters (the triggers add the files) and with the
    /// quota threshold their archived usage had reached, already announced.
    async fn restore_rows(&self, src: &mut dyn RowSource) -> MetaResult<()>;
}

/// Users, their quotas and counters (`user_storage`).
#[async_trait]
pub trait UserStore: Send + Sync {
    /// Creates the user with `default_quota` if new; returns the row.
    async fn ensure_user(&self, user_id: &str, default_quota: u64) -> MetaResult<UserStorage>;
    async fn get_user(&self, user_id: &str) -> MetaResult<Option<UserStorage>>;
    async fn list_users(&self) -> MetaResult<Vec<UserStorage>>;
    /// Sets `max_bytes`, creating the user if new.
    async fn set_quota(&self, user_id: &str, max_bytes: u64) -> MetaResult<UserStorage>;
    /// Removes the user and every row they own.
    async fn delete_user(&self, user_id: &str) -> MetaResult<Option<DeletedUser>>;
    /// Sum of rows per user (audit): `(user_id, bytes, count)`.
    async fn row_totals(&self) -> MetaResult<Vec<(String, i64, i64)>>;
    /// Sets counters to the row sums (audit --fix), re-checking the quota
    /// thresholds of each user changed in the same transaction; returns
    /// how many users changed.
    async fn repair_counters(&self) -> MetaResult<u64>;
}

/// Quota reservations (`upload_reservations`): the room an upload in
/// flight holds.
#[async_trait]
pub trait QuotaStore: Send + Sync {
    /// Reserves `bytes` of the user's room (creating the user with
    /// `default_quota` if new), or answers `QuotaExceeded`; with
    /// `max_unfinished` live reservations already (one per unfinished
    /// upload, tus or multipart), answers `TooManyUploads`. Both checks are
    /// made under the user row's lock in the transaction that inserts the
    /// reservation, so concurrent reservations never pass either limit.
    /// `holder` is the process whose request in flight owns the reservation
    /// (released at once when that process is gone); `None` for a
    /// reservation that outlives requests (a tus upload's).
    async fn reserve_upload(
        &self,
        user_id: &str,
        default_quota: u64,
        bytes: u64,
        ttl: Duration,
        max_unfinished: u64,
        holder: Option<Holder>,
    ) -> MetaResult<Uuid>;
    /// [`QuotaStore::reserve_upload`] without a cap on unfinished uploads.
    async fn reserve(
        &self,
        user_id: &str,
        default_quota: u64,
        bytes: u64,
        ttl: Duration,
    ) -> MetaResult<Uuid> {
        self.reserve_upload(user_id, default_quota, bytes, ttl, u64::MAX, None)
            .await
    }
    /// Grows a live reservation by `extra` bytes (unknown-size streams).
    async fn grow_reservation(&self, id: Uuid, extra: u64, ttl: Duration) -> MetaResult<()>;
    /// Pushes a live reservation's expiry forward.
    async fn touch_reservation(&self, id: Uuid, ttl: Duration) -> MetaResult<()>;
    /// Releases a reservation; true when this call released it.
    async fn release(&self, id: Uuid) -> MetaResult<bool>;
    /// True while reservation `id` is live (staging files without one are stale).
    async fn reservation_exists(&self, id: Uuid) -> MetaResult<bool>;
    /// The bytes reservation `id` holds now (`None` when it is gone): what
    /// an upload of unknown length that resumes has already been granted.
    async fn reservation_bytes(&self, id: Uuid) -> MetaResult<Option<u64>>;
    /// Reservations expired at `now`, as `(id, user_id)`, without releasing them.
    async fn expired_reservations(&self, now: DateTime<Utc>) -> MetaResult<Vec<(Uuid, String)>>;
    /// Releases every reservation expired at `now`; returns how many.
    async fn expire_reservations(&self, now: DateTime<Utc>) -> MetaResult<u64>;
}

/// The registry of `serve` processes (`nodes`) and the reservations their
/// requests in flight hold.
#[async_trait]
pub trait NodeStore: Send + Sync {
    /// Registers a `serve` process, or records its heartbeat at
    /// `node.heartbeat_at` (re-registering a row that was removed).
    async fn heartbeat_node(&self, node: &NodeRow) -> MetaResult<()>;
    /// Removes an incarnation's row (a clean exit).
    async fn remove_node(&self, incarnation: Uuid) -> MetaResult<()>;
    /// Every registered incarnation, oldest first.
    async fn list_nodes(&self) -> MetaResult<Vec<NodeRow>>;
    /// Reservations held by `gone` holders, as `(id, user_id)`, without
    /// releasing them (their staging data goes first).
    async fn gone_reservations(&self, gone: &Gone) -> MetaResult<Vec<(Uuid, String)>>;
    /// Removes the rows of `gone` incarnations; returns how many.
    async fn forget_nodes(&self, gone: &Gone) -> MetaResult<u64>;
}

/// File rows (`user_files`): the commit that turns a reservation into a file,
/// lookups, listings and changes.
#[async_trait]
pub trait FileStore: Send + Sync {
    /// Inserts the file row and releases `reservation` in one transaction.
    /// If the reservation is gone (expired), the row is inserted only when the
    /// room is still there.
    async fn commit_file(&self, reservation: Uuid, file: NewFile) -> MetaResult<FileRecord>;
    async fn get_file(&self, user_id: &str, id: Uuid) -> MetaResult<Option<FileRecord>>;
    /// Any user's file: for signed links and workers, never for user requests.
    async fn get_file_any(&self, id: Uuid) -> MetaResult<Option<FileRecord>>;
    async fn list_files(&self, user_id: &str, q: &ListQuery) -> MetaResult<Vec<FileRecord>>;
    /// How the engine would run [`FileStore::list_files`]'s statement for
    /// `user_id` and `q`: its planner's statistics refreshed first
    /// (`ANALYZE`), then the plan as the engine's `EXPLAIN` gives it, one
    /// line per row (SQLite's `EXPLAIN QUERY PLAN`, PostgreSQL's text
    /// plan, MySQL's `EXPLAIN FORMAT=JSON`). With `q=`, a first line says how
    /// the names were matched (`q=: …`). For tests that check each listing
    /// order walks an index.
    async fn listing_plan(&self, user_id: &str, q: &ListQuery) -> MetaResult<String>;
    /// Every file of a user or of all users, ordered by id (audit, backup).
    async fn all_files(&self, user_id: Option<&str>) -> MetaResult<Vec<FileRecord>>;
    async fn delete_file(&self, user_id: &str, id: Uuid) -> MetaResult<Option<FileRecord>>;
    async fn set_favorite(
        &self,
        user_id: &str,
        id: Uuid,
        fav: Option<bool>,
    ) -> MetaResult<Option<FileRecord>>;
    async fn set_tags(
        &self,
        user_id: &str,
        id: Uuid,
        tags: &[String],
    ) -> MetaResult<Option<FileRecord>>;
    /// Stores media facts and records `media.ready`; false when the file is
    /// gone.
    async fn set_media(&self, id: Uuid, media: &MediaUpdate) -> MetaResult<bool>;
    /// Renames the user's file and/or moves it to another package (records
    /// `file.updated`).
    async fn rename_file(
        &self,
        user_id: &str,
        id: Uuid,
        change: &Rename,
    ) -> MetaResult<Option<FileRecord>>;
    /// The user's files in package `package`, oldest first (archives).
    async fn package_files(&self, user_id: &str, package: &str) -> MetaResult<Vec<FileRecord>>;
    /// Bytes and count per file type, summed from rows.
    async fn usage_by_type(&self, user_id: &str) -> MetaResult<Vec<(FileType, TypeUsage)>>;
}

/// Signed upload URLs (`signed_uploads`), each usable once.
#[async_trait]
pub trait SignedUploadStore: Send + Sync {
    /// Records an issued signed upload URL (its reservation `up.id` taken).
    async fn create_signed_upload(&self, up: &SignedUpload) -> MetaResult<()>;
    /// Takes the single use of signed upload `id` if it is unused and
    /// unexpired at `now` (one conditional `UPDATE`, so of two concurrent
    /// uses exactly one wins).
    async fn claim_signed_upload(&self, id: Uuid, now: DateTime<Utc>) -> MetaResult<SignedClaim>;
    /// Deletes signed upload rows expired at `now` (their reservations
    /// expire with them); returns how many.
    async fn expire_signed_uploads(&self, now: DateTime<Utc>) -> MetaResult<u64>;
}

/// The durable job queue (`jobs`).
#[async_trait]
pub trait JobStore: Send + Sync {
    /// Queues a job to run at `run_at`.
    async fn enqueue_job(
        &self,
        kind: &str,
        payload: &str,
        user_id: Option<&str>,
        run_at: DateTime<Utc>,
    ) -> MetaResult<Uuid>;
    /// Claims one runnable job (queued and due, or running with an expired
    /// lease), leasing it for `lease`. At most one claimer gets a given job.
    async fn claim_job(&self, lease: Duration) -> MetaResult<Option<Job>>;
    async fn complete_job(&self, id: Uuid) -> MetaResult<()>;
    /// Records a failure: requeued at `retry_at`, or failed for good when
    /// `retry_at` is `None`; `event` (a `media.failed`) is recorded in the
    /// same transaction.
    async fn fail_job(
        &self,
        id: Uuid,
        error: &str,
        retry_at: Option<DateTime<Utc>>,
        event: Option<&NewEvent>,
    ) -> MetaResult<()>;
    /// Jobs queued or running.
    async fn queue_depth(&self) -> MetaResult<u64>;
    /// Jobs that failed for good, newest first (admin view).
    async fn failed_jobs(&self, limit: u32) -> MetaResult<Vec<JobInfo>>;
}

/// Resumable uploads (`tus_uploads`), shared by tus and the IETF draft,
/// with the lease that lets one process at a time append.
#[async_trait]
pub trait TusStore: Send + Sync {
    /// Inserts a tus upload row (its reservation `up.id` already taken).
    /// With `lock`, the row is created leased to `lock.0` until `lock.1`
    /// (creation-with-upload).
    async fn create_tus_upload(
        &self,
        up: &TusUpload,
        lock: Option<(Uuid, DateTime<Utc>)>,
    ) -> MetaResult<()>;
    /// The user's live (unexpired at `now`) upload `id`.
    async fn get_tus_upload(
        &self,
        user_id: &str,
        id: Uuid,
        now: DateTime<Utc>,
    ) -> MetaResult<Option<TusUpload>>;
    /// Takes the upload's lease for `owner` until `lease_until` when nobody
    /// holds a live one (one conditional `UPDATE`: atomic across processes),
    /// pushing its expiry to `expires_at` and clearing any takeover marker.
    async fn lock_tus_upload(
        &self,
        user_id: &str,
        id: Uuid,
        owner: Uuid,
        lease_until: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> MetaResult<TusLock>;
    /// The holder of upload `id`'s live lease at `now`, if any.
    async fn tus_holder(&self, id: Uuid, now: DateTime<Utc>) -> MetaResult<Option<TusHolder>>;
    /// Asks `holder` to give up its lease (marker [`Takeover::Requested`]),
    /// unless it is completing; false when `holder` no longer holds it.
    async fn request_tus_takeover(&self, id: Uuid, holder: Uuid) -> MetaResult<bool>;
    /// Takes the lease away from `holder` (taken for dead), unless it is
    /// completing with a live lease at `now`; true when it was taken.
    async fn break_tus_lock(&self, id: Uuid, holder: Uuid, now: DateTime<Utc>) -> MetaResult<bool>;
    /// The holder's look at its lease: renews it until `renew_until` when
    /// given, and acknowledges a takeover request (the marker becomes
    /// [`Takeover::Releasing`]).
    async fn check_tus_lock(
        &self,
        id: Uuid,
        owner: Uuid,
        renew_until: Option<DateTime<Utc>>,
    ) -> MetaResult<LeaseCheck>;
    /// The end of an append, in ONE transaction: records progress `p`
    /// while `owner` holds the lease, pushes the upload's reservation (same
    /// id) to expire `reservation_ttl` from now and, when `release`, gives
    /// the lease up. A lost lease changes nothing.
    async fn record_tus_progress(
        &self,
        id: Uuid,
        owner: Uuid,
        p: &TusProgress,
        reservation_ttl: Duration,
        release: bool,
    ) -> MetaResult<TusRecorded>;
    /// Writes the length (and metadata) of an upload created without one,
    /// learned later, while `owner` holds the lease; false otherwise. The
    /// reservation must already cover `length`.
    async fn set_tus_length(
        &self,
        id: Uuid,
        owner: Uuid,
        length: u64,
        metadata: &str,
    ) -> MetaResult<bool>;
    /// Gives up `owner`'s lease (no-op when not held).
    async fn unlock_tus_upload(&self, id: Uuid, owner: Uuid) -> MetaResult<()>;
    /// Deletes the row of an upload that `owner` holds (failure).
    async fn finish_tus_upload(&self, id: Uuid, owner: Uuid) -> MetaResult<bool>;
    /// Completes upload `id` in ONE transaction: deletes its row (only while
    /// `owner` holds the lease, so a second completion cannot commit),
    /// releases its reservation and inserts the file row. On any failure
    /// nothing of it is visible. `Conflict` when the lease was lost.
    async fn complete_tus_upload(&self, owner: Uuid, file: NewFile) -> MetaResult<FileRecord>;
    /// Termination: deletes the user's upload unless a live lease is held on
    /// it at `now` (then `Busy`).
    async fn terminate_tus_upload(
        &self,
        user_id: &str,
        id: Uuid,
        now: DateTime<Utc>,
    ) -> MetaResult<TusLock>;
    /// Deletes every upload expired at `now` and not leased; returns their ids
    /// (the caller discards their staging blobs and releases reservations).
    async fn expire_tus_uploads(&self, now: DateTime<Utc>) -> MetaResult<Vec<Uuid>>;
}

/// The metadata store: every concern's trait, and what the store as a
/// whole answers. Every method is one transaction; each that changes a
/// user's files or usage records its event ([`events`]) in it.
#[async_trait]
pub trait MetaStore:
    UserStore
    + QuotaStore
    + NodeStore
    + FileStore
    + SignedUploadStore
    + JobStore
    + TusStore
    + EventStore
    + LeaseStore
    + SnapshotStore
    + Send
    + Sync
    + 'static
{
    /// Applies pending migrations.
    async fn migrate(&self) -> MetaResult<()>;
    /// Cheap round trip for `/readyz`.
    async fn ping(&self) -> MetaResult<()>;
    /// "postgres", "mysql" or "sqlite".
    fn backend(&self) -> &'static str;
}

/// Tables besides `user_files` whose rows belong to one user; emptied by
/// [`UserStore::delete_user`]. Later features add theirs here. `events` is
/// not one: the deletion's own `file.deleted` events must outlive it (they
/// go with the retention, see [`crate::jobs::webhooks::prune`]).
pub(crate) const USER_SCOPED_TABLES: &[&str] = &[
    "signed_uploads",
    "upload_reservations",
    "jobs",
    "tus_uploads",
];
