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
mod events;
mod leases;
mod mysql;
mod nodes;
pub(crate) mod outbox;
pub(crate) mod probe;
mod quota;
mod outbox_legacy;
pub(crate) mod rows;
mod signed;
mod search;
mod snapshot;
mod users;
mod tus;

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
