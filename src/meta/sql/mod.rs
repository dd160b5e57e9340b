//! The SQL behind [`MetaStore`], written once and instantiated for PostgreSQL
//! and SQLite by the `impl_store!` macro. The dialects agree on nearly all of
//! it (`$N` parameters, `RETURNING`, `ON CONFLICT`, row-value comparisons);
//! the few differences (tag arrays vs JSON, id and time encodings) are passed
//! in as small functions and SQL fragments.
//!
//! Every operation that changes a user's files or usage records its event
//! in its own transaction with `Self::record_event_in` (see
//! [`super::events`]), and re-checks the quota thresholds with
//! `Self::check_threshold_in` once it holds the user row.

use std::{str::FromStr, sync::Arc, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{
    postgres::{PgPoolOptions, PgRow},
    sqlite::{
        SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
    },
    PgPool, Row, SqlitePool,
};
use uuid::Uuid;

use super::clock::{self, Clock, SystemClock};
use super::*;

pub(crate) mod commit;
pub(crate) mod engine;
mod jobs;
mod files;
mod leases;
mod mysql;
mod nodes;
pub(crate) mod outbox;
pub(crate) mod probe;
mod quota;
pub(crate) mod rows;
mod signed;
mod search;
mod snapshot;
mod users;

use engine::{Db, Engine};

/// The store written once over [`engine`]: one SQL text per statement, the
/// engine's differences answered by [`engine`]. Each concern (users, quota,
/// files, uploads, jobs, leases, events, snapshot) implements its trait for
/// every [`AsSqlStore`] in its own module.
pub struct SqlStore {
    db: Db,
    #[allow(dead_code)] // read by the concerns as they land
    clock: Arc<dyn Clock>,
}

impl SqlStore {
    pub(crate) fn new(db: Db, clock: Arc<dyn Clock>) -> Self {
        SqlStore { db, clock }
    }

    pub(crate) fn db(&self) -> &Db {
        &self.db
    }

    pub(crate) fn engine(&self) -> Engine {
        self.db.engine()
    }

    /// The store clock's now, at the microsecond precision every engine keeps.
    #[allow(dead_code)] // read by the concerns as they land
    pub(crate) fn now(&self) -> DateTime<Utc> {
        clock::micros(self.clock.as_ref())
    }
}

/// The stores whose concerns are written over [`SqlStore`].
pub(crate) trait AsSqlStore: Send + Sync + 'static {
    fn sql(&self) -> &SqlStore;
}

#[async_trait]
impl<S> MetaStore for S
where
    S: AsSqlStore
        + UserStore
        + QuotaStore
        + NodeStore
        + FileStore
        + SignedUploadStore
        + JobStore
        + TusStore
        + EventStore
        + LeaseStore
        + SnapshotStore,
{
    async fn migrate(&self) -> MetaResult<()> {
        self.sql().db().migrate().await?;
        Ok(())
    }

    async fn ping(&self) -> MetaResult<()> {
        engine::query("SELECT 1").execute(self.sql().db()).await?;
        Ok(())
    }

    fn backend(&self) -> &'static str {
        self.sql().engine().name()
    }
}

impl AsSqlStore for PgStore {
    fn sql(&self) -> &SqlStore {
        &self.sql
    }
}

impl AsSqlStore for SqliteStore {
    fn sql(&self) -> &SqlStore {
        &self.sql
    }
}

impl AsSqlStore for MySqlStore {
    fn sql(&self) -> &SqlStore {
        self.sql_store()
    }
}

pub(crate) use mysql::transient_number as mysql_transient;
pub use mysql::MySqlStore;

/// PostgreSQL backend.
pub struct PgStore {
    pool: PgPool,
    clock: Arc<dyn Clock>,
    sql: SqlStore,
}

/// SQLite backend (embedded, WAL, `synchronous=FULL` so a commit is durable
/// before an upload is acknowledged).
pub struct SqliteStore {
    pool: SqlitePool,
    clock: Arc<dyn Clock>,
    sql: SqlStore,
}

impl PgStore {
    /// A transaction that writes (PostgreSQL: a plain `BEGIN`).
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
        self.pool.begin().await
    }

    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The store clock's now, at the microsecond precision both engines keep.
    fn now(&self) -> DateTime<Utc> {
        clock::micros(self.clock.as_ref())
    }
}

impl SqliteStore {
    /// A transaction that writes: `BEGIN IMMEDIATE` takes SQLite's write
    /// lock up front, waiting out the busy timeout. A deferred `BEGIN` that
    /// has read (a trigger's lookup, a count) and then writes cannot wait:
    /// SQLite answers "database is locked" at once when another connection
    /// wrote meanwhile.
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, sqlx::Error> {
        self.pool.begin_with("BEGIN IMMEDIATE").await
    }

    pub(crate) fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// The store clock's now, at the microsecond precision both engines keep.
    fn now(&self) -> DateTime<Utc> {
        clock::micros(self.clock.as_ref())
    }
}

/// Opens the store named by `url` (`postgres://…`, `mysql://…` (or
/// `mariadb://…`) or `sqlite://…`).
pub async fn connect(url: &str) -> MetaResult<Arc<dyn MetaStore>> {
    connect_with_clock(url, Arc::new(SystemClock)).await
}

/// [`connect`] with the store reading the time from `clock` (tests move a
/// [`super::ManualClock`] to expire leases without sleeping).
pub async fn connect_with_clock(
    url: &str,
    clock: Arc<dyn Clock>,
) -> MetaResult<Arc<dyn MetaStore>> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(5))
            .connect(url)
            .await
            .map_err(MetaError::from_sqlx)?;
        let sql = SqlStore::new(Db::Pg(pool.clone()), clock.clone());
        Ok(Arc::new(PgStore { pool, clock, sql }))
    } else if url.starts_with("mysql://") || url.starts_with("mariadb://") {
        Ok(Arc::new(MySqlStore::open(url, clock).await?))
    } else if url.starts_with("sqlite:") {
        let opts = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(30))
            .foreign_keys(true);
        if let Some(parent) = opts.get_filename().parent() {
            if !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent).map_err(|e| {
                    MetaError::Unavailable(format!("cannot create {}: {e}", parent.display()))
                })?;
            }
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(opts)
            .await
            .map_err(MetaError::from_sqlx)?;
        let sql = SqlStore::new(Db::Sqlite(pool.clone()), clock.clone());
        Ok(Arc::new(SqliteStore { pool, clock, sql }))
    } else {
        Err(MetaError::Unavailable(format!(
            "unsupported database URL {url:?}: expected postgres://…, mysql://… or sqlite://…"
        )))
    }
}

/// `t + ttl` (an hour when `ttl` is out of range).
fn plus(t: DateTime<Utc>, ttl: Duration) -> DateTime<Utc> {
    t + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::hours(1))
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

const FILE_COLS: &str = "id, user_id, file_name, file_type, mime_type, file_size, file_path, \
     thumbnail_path, resolution, duration, package_name, tags, is_favorite, sha256, upload_date";

const TUS_COLS: &str =
    "id, user_id, upload_length, upload_offset, metadata, expires_at, created_at, hash_state";


fn pg_tags_in(tags: &[String]) -> Vec<String> {
    tags.to_vec()
}
fn pg_tags_out(row: &PgRow) -> Result<Vec<String>, sqlx::Error> {
    row.try_get::<Vec<String>, _>("tags")
}
fn sqlite_tags_in(tags: &[String]) -> String {
    serde_json::to_string(tags).unwrap_or_else(|_| "[]".into())
}
fn sqlite_tags_out(row: &SqliteRow) -> Result<Vec<String>, sqlx::Error> {
    let s: String = row.try_get("tags")?;
    serde_json::from_str(&s).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

macro_rules! impl_store {
    (
        $store:ident, $db:ty, $row:ty, $name:literal, $migrator:expr,
        tags_in = $tags_in:path, tags_out = $tags_out:path,
        skip_locked = $skip_locked:literal
    ) => {
        impl $store {
            fn file_from_row(row: &$row) -> Result<FileRecord, sqlx::Error> {
                let ft: String = row.try_get("file_type")?;
                Ok(FileRecord {
                    id: row.try_get("id")?,
                    user_id: row.try_get("user_id")?,
                    file_name: row.try_get("file_name")?,
                    file_type: FileType::parse(&ft).ok_or_else(|| {
                        sqlx::Error::Decode(format!("unknown file_type {ft:?}").into())
                    })?,
                    mime_type: row.try_get("mime_type")?,
                    file_size: row.try_get("file_size")?,
                    file_path: row.try_get("file_path")?,
                    thumbnail_path: row.try_get("thumbnail_path")?,
                    resolution: row.try_get("resolution")?,
                    duration: row.try_get("duration")?,
                    package_name: row.try_get("package_name")?,
                    tags: $tags_out(row)?,
                    is_favorite: row.try_get("is_favorite")?,
                    sha256: row.try_get::<String, _>("sha256")?.trim().to_string(),
                    upload_date: row.try_get("upload_date")?,
                })
            }

            fn tus_from_row(row: &$row) -> Result<TusUpload, sqlx::Error> {
                Ok(TusUpload {
                    id: row.try_get("id")?,
                    user_id: row.try_get("user_id")?,
                    upload_length: row.try_get("upload_length")?,
                    upload_offset: row.try_get("upload_offset")?,
                    metadata: row.try_get("metadata")?,
                    expires_at: row.try_get("expires_at")?,
                    created_at: row.try_get("created_at")?,
                    hash_state: row.try_get("hash_state")?,
                })
            }

            /// Inserts file row `f` and releases `reservation` inside `tx`,
            /// then commits; see [`FileStore::commit_file`].
            async fn commit_file_in(
                &self,
                mut tx: sqlx::Transaction<'_, $db>,
                reservation: Uuid,
                f: NewFile,
            ) -> MetaResult<FileRecord> {
                let t = self.now();
                Self::release_in(&mut tx, reservation).await?;
                // With the reservation handed back, the file must fit; this also
                // covers a reservation that expired while the upload ran.
                let fits = sqlx::query(
                    "UPDATE user_storage SET updated_at = $3 \
                     WHERE user_id = $1 AND total_bytes + reserved_bytes + $2 <= max_bytes",
                )
                .bind(&f.user_id)
                .bind(f.file_size)
                .bind(t)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if fits == 0 {
                    tx.rollback().await?;
                    let room = self
                        .get_user(&f.user_id)
                        .await?
                        .map(|u| (u.max_bytes - u.total_bytes - u.reserved_bytes).max(0) as u64)
                        .unwrap_or(0);
                    return Err(MetaError::QuotaExceeded {
                        needed: f.file_size.max(0) as u64,
                        available: room,
                    });
                }
                sqlx::query(
                    "INSERT INTO user_files (id, user_id, file_name, file_type, mime_type, file_size, \
                     file_path, package_name, tags, is_favorite, sha256, upload_date, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, FALSE, $10, $11, $11)",
                )
                .bind(f.id)
                .bind(&f.user_id)
                .bind(&f.file_name)
                .bind(f.file_type.as_str())
                .bind(&f.mime_type)
                .bind(f.file_size)
                .bind(&f.file_path)
                .bind(&f.package_name)
                .bind($tags_in(&f.tags))
                .bind(&f.sha256)
                .bind(t)
                .execute(&mut *tx)
                .await?;
                let rec = FileRecord {
                    id: f.id,
                    user_id: f.user_id,
                    file_name: f.file_name,
                    file_type: f.file_type,
                    mime_type: f.mime_type,
                    file_size: f.file_size,
                    file_path: f.file_path,
                    thumbnail_path: None,
                    resolution: None,
                    duration: None,
                    package_name: f.package_name,
                    tags: f.tags,
                    is_favorite: false,
                    sha256: f.sha256,
                    upload_date: t,
                };
                Self::record_event_in(&mut tx, &NewEvent::file_created(&rec)).await?;
                // The `fits` UPDATE above holds the user row (or the write
                // lock) until commit, so concurrent commits take turns here.
                Self::check_threshold_in(&mut tx, &rec.user_id).await?;
                tx.commit().await?;
                Ok(rec)
            }

            /// The live lease holder of tus upload `id` at `t`, read inside
            /// whatever executor is given.
            async fn holder_of(&self, id: Uuid, t: DateTime<Utc>) -> MetaResult<Option<TusHolder>> {
                let row = sqlx::query(
                    "SELECT lock_owner, CAST(takeover AS BIGINT) AS takeover, completing FROM tus_uploads \
                     WHERE id = $1 AND lock_owner IS NOT NULL AND locked_until >= $2",
                )
                .bind(id)
                .bind(t)
                .fetch_optional(&self.pool)
                .await
                .map_err(MetaError::from_sqlx)?;
                let Some(r) = row else { return Ok(None) };
                Ok(Some(TusHolder {
                    owner: r.try_get("lock_owner")?,
                    takeover: Takeover::from_i64(r.try_get("takeover")?),
                    completing: r.try_get("completing")?,
                }))
            }

            /// Deletes reservation `id` and hands its bytes back to its user,
            /// inside `tx`. True when this call released it (`DELETE …
            /// RETURNING` lets only one caller win).
            async fn release_in(tx: &mut sqlx::Transaction<'_, $db>, id: Uuid) -> Result<bool, sqlx::Error> {
                let row = sqlx::query("DELETE FROM upload_reservations WHERE id = $1 RETURNING user_id, bytes")
                    .bind(id)
                    .fetch_optional(&mut **tx)
                    .await?;
                let Some(row) = row else {
                    return Ok(false);
                };
                Self::give_back(tx, &row.try_get::<String, _>("user_id")?, row.try_get("bytes")?).await?;
                Ok(true)
            }

            /// Lowers `reserved_bytes` of `user` by `bytes`.
            async fn give_back(tx: &mut sqlx::Transaction<'_, $db>, user: &str, bytes: i64) -> Result<(), sqlx::Error> {
                sqlx::query("UPDATE user_storage SET reserved_bytes = reserved_bytes - $2 WHERE user_id = $1")
                    .bind(user)
                    .bind(bytes)
                    .execute(&mut **tx)
                    .await?;
                Ok(())
            }
        }

        #[async_trait]
            }
        }

        #[async_trait]
        impl TusStore for $store {
            async fn create_tus_upload(&self, up: &TusUpload, lock: Option<(Uuid, DateTime<Utc>)>) -> MetaResult<()> {
                sqlx::query(
                    "INSERT INTO tus_uploads (id, user_id, upload_length, upload_offset, metadata, \
                     lock_owner, locked_until, expires_at, created_at, hash_state) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                )
                .bind(up.id)
                .bind(&up.user_id)
                .bind(up.upload_length)
                .bind(up.upload_offset)
                .bind(&up.metadata)
                .bind(lock.map(|l| l.0))
                .bind(lock.map(|l| l.1))
                .bind(up.expires_at)
                .bind(up.created_at)
                .bind(&up.hash_state)
                .execute(&self.pool)
                .await
                .map_err(MetaError::from_sqlx)?;
                Ok(())
            }

            async fn get_tus_upload(&self, user_id: &str, id: Uuid, at: DateTime<Utc>) -> MetaResult<Option<TusUpload>> {
                let sql = format!("SELECT {TUS_COLS} FROM tus_uploads WHERE id = $1 AND user_id = $2 AND expires_at > $3");
                let row = sqlx::query(&sql)
                    .bind(id)
                    .bind(user_id)
                    .bind(at)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(MetaError::from_sqlx)?;
                Ok(row.map(|r| Self::tus_from_row(&r)).transpose()?)
            }

            async fn lock_tus_upload(
                &self,
                user_id: &str,
                id: Uuid,
                owner: Uuid,
                lease_until: DateTime<Utc>,
                expires_at: DateTime<Utc>,
            ) -> MetaResult<TusLock> {
                let sql = format!(
                    "UPDATE tus_uploads SET lock_owner = $3, locked_until = $4, expires_at = $5, \
                       takeover = 0, completing = FALSE \
                     WHERE id = $1 AND user_id = $2 AND expires_at > $6 \
                       AND (lock_owner IS NULL OR locked_until IS NULL OR locked_until < $6) \
                     RETURNING {TUS_COLS}"
                );
                // A lease released between the UPDATE and the look at its
                // holder: try again (a few times; each is cheap).
                for _ in 0..3 {
                    let t = self.now();
                    let row = sqlx::query(&sql)
                        .bind(id)
                        .bind(user_id)
                        .bind(owner)
                        .bind(lease_until)
                        .bind(expires_at)
                        .bind(t)
                        .fetch_optional(&self.pool)
                        .await
                        .map_err(MetaError::from_sqlx)?;
                    if let Some(r) = row {
                        return Ok(TusLock::Acquired(Self::tus_from_row(&r)?));
                    }
                    let exists = sqlx::query("SELECT 1 AS one FROM tus_uploads WHERE id = $1 AND user_id = $2 AND expires_at > $3")
                        .bind(id)
                        .bind(user_id)
                        .bind(t)
                        .fetch_optional(&self.pool)
                        .await
                        .map_err(MetaError::from_sqlx)?;
                    if exists.is_none() {
                        return Ok(TusLock::Missing);
                    }
                    if let Some(h) = self.holder_of(id, t).await? {
                        return Ok(TusLock::Busy(h));
                    }
                }
                Err(MetaError::Conflict("the upload's lease keeps changing hands".into()))
            }

            async fn tus_holder(&self, id: Uuid, at: DateTime<Utc>) -> MetaResult<Option<TusHolder>> {
                self.holder_of(id, at).await
            }

            async fn request_tus_takeover(&self, id: Uuid, holder: Uuid) -> MetaResult<bool> {
                let n = sqlx::query(
                    "UPDATE tus_uploads SET takeover = CASE WHEN takeover = 0 THEN 1 ELSE takeover END \
                     WHERE id = $1 AND lock_owner = $2 AND completing = FALSE",
                )
                .bind(id)
                .bind(holder)
                .execute(&self.pool)
                .await
                .map_err(MetaError::from_sqlx)?
                .rows_affected();
                Ok(n == 1)
            }

            async fn break_tus_lock(&self, id: Uuid, holder: Uuid, at: DateTime<Utc>) -> MetaResult<bool> {
                let n = sqlx::query(
                    "UPDATE tus_uploads SET lock_owner = NULL, locked_until = NULL, takeover = 0, completing = FALSE \
                     WHERE id = $1 AND lock_owner = $2 AND (completing = FALSE OR locked_until < $3)",
                )
                .bind(id)
                .bind(holder)
                .bind(at)
                .execute(&self.pool)
                .await
                .map_err(MetaError::from_sqlx)?
                .rows_affected();
                Ok(n == 1)
            }

            async fn check_tus_lock(
                &self,
                id: Uuid,
                owner: Uuid,
                renew_until: Option<DateTime<Utc>>,
            ) -> MetaResult<LeaseCheck> {
                let takeover: Option<i64> = match renew_until {
                    Some(until) => sqlx::query_scalar(
                        "UPDATE tus_uploads SET locked_until = $3, \
                           takeover = CASE WHEN takeover = 1 THEN 2 ELSE takeover END \
                         WHERE id = $1 AND lock_owner = $2 RETURNING CAST(takeover AS BIGINT)",
                    )
                    .bind(id)
                    .bind(owner)
                    .bind(until)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(MetaError::from_sqlx)?,
                    None => {
                        // A read first: the common answer needs no write.
                        let seen: Option<i64> = sqlx::query_scalar(
                            "SELECT CAST(takeover AS BIGINT) FROM tus_uploads WHERE id = $1 AND lock_owner = $2",
                        )
                        .bind(id)
                        .bind(owner)
                        .fetch_optional(&self.pool)
                        .await
                        .map_err(MetaError::from_sqlx)?;
                        if seen == Some(1) {
                            sqlx::query("UPDATE tus_uploads SET takeover = 2 WHERE id = $1 AND lock_owner = $2 AND takeover = 1")
                                .bind(id)
                                .bind(owner)
                                .execute(&self.pool)
                                .await
                                .map_err(MetaError::from_sqlx)?;
                        }
                        seen
                    }
                };
                Ok(match takeover {
                    None => LeaseCheck::Lost,
                    Some(0) => LeaseCheck::Held,
                    Some(_) => LeaseCheck::TakeoverRequested,
                })
            }

            async fn set_tus_offset(&self, id: Uuid, owner: Uuid, p: &TusProgress) -> MetaResult<bool> {
                let n = sqlx::query(
                    "UPDATE tus_uploads SET upload_offset = $3, hash_state = $4, expires_at = $5, completing = $6 \
                     WHERE id = $1 AND lock_owner = $2",
                )
                .bind(id)
                .bind(owner)
                .bind(to_i64(p.offset))
                .bind(&p.hash_state)
                .bind(p.expires_at)
                .bind(p.completing)
                .execute(&self.pool)
                .await
                .map_err(MetaError::from_sqlx)?
                .rows_affected();
                Ok(n == 1)
            }

            async fn set_tus_length(
                &self,
                id: Uuid,
                owner: Uuid,
                length: u64,
                metadata: &str,
            ) -> MetaResult<bool> {
                let n = sqlx::query(
                    "UPDATE tus_uploads SET upload_length = $3, metadata = $4 \
                     WHERE id = $1 AND lock_owner = $2",
                )
                .bind(id)
                .bind(owner)
                .bind(to_i64(length))
                .bind(metadata)
                .execute(&self.pool)
                .await
                .map_err(MetaError::from_sqlx)?
                .rows_affected();
                Ok(n == 1)
            }

            async fn unlock_tus_upload(&self, id: Uuid, owner: Uuid) -> MetaResult<()> {
                sqlx::query(
                    "UPDATE tus_uploads SET lock_owner = NULL, locked_until = NULL, takeover = 0, completing = FALSE \
                     WHERE id = $1 AND lock_owner = $2",
                )
                .bind(id)
                .bind(owner)
                .execute(&self.pool)
                .await
                .map_err(MetaError::from_sqlx)?;
                Ok(())
            }

            async fn finish_tus_upload(&self, id: Uuid, owner: Uuid) -> MetaResult<bool> {
                let n = sqlx::query("DELETE FROM tus_uploads WHERE id = $1 AND lock_owner = $2")
                    .bind(id)
                    .bind(owner)
                    .execute(&self.pool)
                    .await
                    .map_err(MetaError::from_sqlx)?
                    .rows_affected();
                Ok(n == 1)
            }

            async fn complete_tus_upload(&self, owner: Uuid, f: NewFile) -> MetaResult<FileRecord> {
                let mut tx = self.begin_write().await.map_err(MetaError::from_sqlx)?;
                // The row goes first, under the lease: of two completions of
                // one upload only the lease holder's gets past this line.
                let gone = sqlx::query("DELETE FROM tus_uploads WHERE id = $1 AND lock_owner = $2")
                    .bind(f.id)
                    .bind(owner)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if gone != 1 {
                    tx.rollback().await?;
                    return Err(MetaError::Conflict("this request no longer holds the upload's lease".into()));
                }
                let reservation = f.id;
                self.commit_file_in(tx, reservation, f).await
            }

            async fn terminate_tus_upload(&self, user_id: &str, id: Uuid, at: DateTime<Utc>) -> MetaResult<TusLock> {
                let sql = format!(
                    "DELETE FROM tus_uploads WHERE id = $1 AND user_id = $2 \
                       AND (lock_owner IS NULL OR locked_until IS NULL OR locked_until < $3) \
                     RETURNING {TUS_COLS}"
                );
                let row = sqlx::query(&sql)
                    .bind(id)
                    .bind(user_id)
                    .bind(at)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(MetaError::from_sqlx)?;
                if let Some(r) = row {
                    return Ok(TusLock::Acquired(Self::tus_from_row(&r)?));
                }
                let exists = sqlx::query("SELECT 1 AS one FROM tus_uploads WHERE id = $1 AND user_id = $2")
                    .bind(id)
                    .bind(user_id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(MetaError::from_sqlx)?;
                if exists.is_none() {
                    return Ok(TusLock::Missing);
                }
                Ok(match self.holder_of(id, at).await? {
                    Some(h) => TusLock::Busy(h),
                    // Released in between: the caller tries again.
                    None => TusLock::Busy(TusHolder { owner: Uuid::nil(), takeover: Takeover::None, completing: false }),
                })
            }

            async fn expire_tus_uploads(&self, at: DateTime<Utc>) -> MetaResult<Vec<Uuid>> {
                let rows = sqlx::query(
                    "DELETE FROM tus_uploads WHERE expires_at < $1 \
                       AND (lock_owner IS NULL OR locked_until IS NULL OR locked_until < $1) \
                     RETURNING id",
                )
                .bind(at)
                .fetch_all(&self.pool)
                .await
                .map_err(MetaError::from_sqlx)?;
                rows.iter()
                    .map(|r| r.try_get::<Uuid, _>("id"))
                    .collect::<Result<_, sqlx::Error>>()
                    .map_err(MetaError::from)
            }
        }
    };
}

impl_store!(
    PgStore,
    sqlx::Postgres,
    PgRow,
    "postgres",
    sqlx::migrate!("./migrations/postgres"),
    tags_in = pg_tags_in,
    tags_out = pg_tags_out,
    skip_locked = " FOR UPDATE SKIP LOCKED"
);

impl_store!(
    SqliteStore,
    sqlx::Sqlite,
    SqliteRow,
    "sqlite",
    sqlx::migrate!("./migrations/sqlite"),
    tags_in = sqlite_tags_in,
    tags_out = sqlite_tags_out,
    skip_locked = ""
);
