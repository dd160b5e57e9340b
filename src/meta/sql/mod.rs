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
mod events;
mod leases;
mod mysql;
pub(crate) mod outbox;
mod outbox_legacy;
pub(crate) mod rows;
mod snapshot;

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

/// Escapes `%`, `_` and `\` for a LIKE pattern with `ESCAPE '\'`.
fn like_pattern(q: &str) -> String {
    let mut p = String::with_capacity(q.len() + 2);
    p.push('%');
    for c in q.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

/// A `q=` text, prepared for each way a name can be matched: case-folded
/// for `LIKE`, quoted for an FTS5 phrase, or spelled out in every case variant.
struct NameSearch {
    text: String,
    lower: String,
    ascii: bool,
}

impl NameSearch {
    fn new(text: &str) -> Self {
        NameSearch {
            text: text.to_string(),
            lower: text.to_lowercase(),
            ascii: text.is_ascii(),
        }
    }

    /// Long enough for a trigram index (three characters, not bytes).
    fn trigrams(&self) -> bool {
        self.text.chars().nth(2).is_some()
    }

    /// An FTS5 phrase matching the text as a substring, every character
    /// literal (a double quote is doubled).
    fn phrase(&self) -> String {
        format!("\"{}\"", self.text.replace('"', "\"\""))
    }

    /// Every spelling of the text with each character in its lower, upper
    /// or own case: at most 3^n strings, used for texts under three characters.
    fn variants(&self) -> Vec<String> {
        let mut out = vec![String::new()];
        for c in self.text.chars() {
            let mut forms = vec![
                c.to_string(),
                c.to_lowercase().collect(),
                c.to_uppercase().collect(),
            ];
            forms.sort();
            forms.dedup();
            out = out
                .iter()
                .flat_map(|p| forms.iter().map(move |f| format!("{p}{f}")))
                .collect();
        }
        out
    }
}

const FILE_COLS: &str = "id, user_id, file_name, file_type, mime_type, file_size, file_path, \
     thumbnail_path, resolution, duration, package_name, tags, is_favorite, sha256, upload_date";

const TUS_COLS: &str =
    "id, user_id, upload_length, upload_offset, metadata, expires_at, created_at, hash_state";

const USER_COLS: &str = "user_id, total_bytes, reserved_bytes, max_bytes, \
     CAST(file_count AS BIGINT) AS file_count, created_at, updated_at";

/// A bind value for dynamically built queries.
enum Param {
    Str(String),
    I64(i64),
    Bool(bool),
    Id(Uuid),
    Time(DateTime<Utc>),
}

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
        tag_filter = $tag_filter:literal, skip_locked = $skip_locked:literal,
        fts = $fts:literal, persistent_lists = $persistent_lists:literal
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

            /// Whether at least `10 × limit` of `user`'s names contain
            /// `search` (SQLite's trigram index). Then matches are dense
            /// enough that walking the sort order's index and testing each
            /// name finds a page sooner than sorting every match would.
            async fn dense_hits(&self, user: &str, search: &NameSearch, limit: u32) -> MetaResult<bool> {
                let cap = i64::from(limit.max(1)).saturating_mul(10).min(10_000);
                let row = sqlx::query(
                    "SELECT CAST(COUNT(*) AS BIGINT) AS n FROM (SELECT 1 FROM user_file_names_fts \
                     JOIN user_file_names m ON m.seq = user_file_names_fts.rowid \
                     WHERE user_file_names_fts MATCH $1 AND m.user_id = $2 LIMIT $3)",
                )
                .bind(search.phrase())
                .bind(user)
                .bind(cap)
                .fetch_one(&self.pool)
                .await
                .map_err(MetaError::from_sqlx)?;
                Ok(row.try_get::<i64, _>("n")? >= cap)
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

            /// The room `user` has left, for a `QuotaExceeded` answer.
            async fn room_in(tx: &mut sqlx::Transaction<'_, $db>, user: &str) -> Result<u64, sqlx::Error> {
                let row = sqlx::query("SELECT max_bytes - total_bytes - reserved_bytes AS room FROM user_storage WHERE user_id = $1")
                    .bind(user)
                    .fetch_one(&mut **tx)
                    .await?;
                Ok(row.try_get::<i64, _>("room")?.max(0) as u64)
            }

            fn user_from_row(row: &$row) -> Result<UserStorage, sqlx::Error> {
                Ok(UserStorage {
                    user_id: row.try_get("user_id")?,
                    total_bytes: row.try_get("total_bytes")?,
                    reserved_bytes: row.try_get("reserved_bytes")?,
                    max_bytes: row.try_get("max_bytes")?,
                    file_count: row.try_get("file_count")?,
                    created_at: row.try_get("created_at")?,
                    updated_at: row.try_get("updated_at")?,
                })
            }
        }

        #[async_trait]
        impl UserStore for $store {
            async fn ensure_user(&self, user_id: &str, default_quota: u64) -> MetaResult<UserStorage> {
                let sql = format!(
                    "INSERT INTO user_storage (user_id, max_bytes, created_at, updated_at) \
                     VALUES ($1, $2, $3, $3) ON CONFLICT (user_id) DO UPDATE SET user_id = EXCLUDED.user_id \
                     RETURNING {USER_COLS}"
                );
                let row = sqlx::query(&sql)
                    .bind(user_id)
                    .bind(to_i64(default_quota))
                    .bind(self.now())
                    .fetch_one(&self.pool)
                    .await
                    .map_err(MetaError::from_sqlx)?;
                Ok(Self::user_from_row(&row)?)
            }

            async fn get_user(&self, user_id: &str) -> MetaResult<Option<UserStorage>> {
                let sql = format!("SELECT {USER_COLS} FROM user_storage WHERE user_id = $1");
                let row = sqlx::query(&sql)
                    .bind(user_id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(MetaError::from_sqlx)?;
                Ok(row.map(|r| Self::user_from_row(&r)).transpose()?)
            }

            async fn list_users(&self) -> MetaResult<Vec<UserStorage>> {
                let sql = format!("SELECT {USER_COLS} FROM user_storage ORDER BY user_id");
                let rows = sqlx::query(&sql)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(MetaError::from_sqlx)?;
                Ok(rows.iter().map(Self::user_from_row).collect::<Result<_, _>>()?)
            }

            async fn set_quota(&self, user_id: &str, max_bytes: u64) -> MetaResult<UserStorage> {
                let sql = format!(
                    "INSERT INTO user_storage (user_id, max_bytes, created_at, updated_at) \
                     VALUES ($1, $2, $3, $3) \
                     ON CONFLICT (user_id) DO UPDATE SET max_bytes = EXCLUDED.max_bytes, updated_at = EXCLUDED.updated_at \
                     RETURNING {USER_COLS}"
                );
                let mut tx = self.begin_write().await.map_err(MetaError::from_sqlx)?;
                let row = sqlx::query(&sql)
                    .bind(user_id)
                    .bind(to_i64(max_bytes))
                    .bind(self.now())
                    .fetch_one(&mut *tx)
                    .await?;
                // A lower quota can carry usage past a threshold.
                Self::check_threshold_in(&mut tx, user_id).await?;
                tx.commit().await?;
                Ok(Self::user_from_row(&row)?)
            }

            async fn delete_user(&self, user_id: &str) -> MetaResult<Option<DeletedUser>> {
                let mut tx = self.begin_write().await.map_err(MetaError::from_sqlx)?;
                // A write first, so SQLite takes its write lock before reading.
                let touched = sqlx::query("UPDATE user_storage SET updated_at = $2 WHERE user_id = $1")
                    .bind(user_id)
                    .bind(self.now())
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if touched == 0 {
                    return Ok(None);
                }
                let sql = format!("DELETE FROM user_files WHERE user_id = $1 RETURNING {FILE_COLS}");
                let rows = sqlx::query(&sql)
                    .bind(user_id)
                    .fetch_all(&mut *tx)
                    .await?;
                let mut out = DeletedUser::default();
                for r in &rows {
                    let rec = Self::file_from_row(r)?;
                    // One `file.deleted` per file, like a delete of each.
                    Self::record_event_in(&mut tx, &NewEvent::file_deleted(&rec, "user_deleted")).await?;
                    out.files += 1;
                    out.bytes += rec.file_size.max(0) as u64;
                    out.blob_keys.push(rec.file_path);
                    out.blob_keys.extend(rec.thumbnail_path);
                }
                for table in super::USER_SCOPED_TABLES {
                    let sql = format!("DELETE FROM {table} WHERE user_id = $1");
                    sqlx::query(&sql).bind(user_id).execute(&mut *tx).await?;
                }
                sqlx::query("DELETE FROM user_storage WHERE user_id = $1")
                    .bind(user_id)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(Some(out))
            }

            async fn row_totals(&self) -> MetaResult<Vec<(String, i64, i64)>> {
                let rows = sqlx::query(
                    "SELECT s.user_id AS user_id, CAST(COALESCE(SUM(f.file_size), 0) AS BIGINT) AS bytes, \
                     CAST(COUNT(f.id) AS BIGINT) AS n \
                     FROM user_storage s LEFT JOIN user_files f ON f.user_id = s.user_id \
                     GROUP BY s.user_id ORDER BY s.user_id",
                )
                .fetch_all(&self.pool)
                .await
                .map_err(MetaError::from_sqlx)?;
                rows.iter()
                    .map(|r| Ok((r.try_get("user_id")?, r.try_get("bytes")?, r.try_get("n")?)))
                    .collect::<Result<_, sqlx::Error>>()
                    .map_err(MetaError::from)
            }

            async fn repair_counters(&self) -> MetaResult<u64> {
                let n = sqlx::query(
                    "UPDATE user_storage SET \
                       total_bytes = (SELECT CAST(COALESCE(SUM(f.file_size), 0) AS BIGINT) FROM user_files f WHERE f.user_id = user_storage.user_id), \
                       file_count = (SELECT COUNT(*) FROM user_files f WHERE f.user_id = user_storage.user_id), \
                       reserved_bytes = (SELECT CAST(COALESCE(SUM(r.bytes), 0) AS BIGINT) FROM upload_reservations r WHERE r.user_id = user_storage.user_id) \
                     WHERE total_bytes <> (SELECT CAST(COALESCE(SUM(f.file_size), 0) AS BIGINT) FROM user_files f WHERE f.user_id = user_storage.user_id) \
                        OR file_count <> (SELECT COUNT(*) FROM user_files f WHERE f.user_id = user_storage.user_id) \
                        OR reserved_bytes <> (SELECT CAST(COALESCE(SUM(r.bytes), 0) AS BIGINT) FROM upload_reservations r WHERE r.user_id = user_storage.user_id)",
                )
                .execute(&self.pool)
                .await
                .map_err(MetaError::from_sqlx)?
                .rows_affected();
                Ok(n)
            }
        }

        #[async_trait]
        impl QuotaStore for $store {
            async fn reserve_upload(
                &self,
                user_id: &str,
                default_quota: u64,
                bytes: u64,
                ttl: Duration,
                max_unfinished: u64,
                holder: Option<Holder>,
            ) -> MetaResult<Uuid> {
                let t = self.now();
                let mut tx = self.begin_write().await.map_err(MetaError::from_sqlx)?;
                sqlx::query(
                    "INSERT INTO user_storage (user_id, max_bytes, created_at, updated_at) \
                     VALUES ($1, $2, $3, $3) ON CONFLICT (user_id) DO NOTHING",
                )
                .bind(user_id)
                .bind(to_i64(default_quota))
                .bind(t)
                .execute(&mut *tx)
                .await?;
                let granted = sqlx::query(
                    "UPDATE user_storage SET reserved_bytes = reserved_bytes + $2, updated_at = $3 \
                     WHERE user_id = $1 AND total_bytes + reserved_bytes + $2 <= max_bytes",
                )
                .bind(user_id)
                .bind(to_i64(bytes))
                .bind(t)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if granted == 0 {
                    let available = Self::room_in(&mut tx, user_id).await?;
                    tx.rollback().await?;
                    return Err(MetaError::QuotaExceeded { needed: bytes, available });
                }
                // The UPDATE above holds the user row (PostgreSQL) or the
                // write lock (SQLite) until commit, so this count sees every
                // reservation committed before it and none can slip in
                // between the count and the insert.
                let open: i64 = sqlx::query_scalar(
                    "SELECT CAST(COUNT(*) AS BIGINT) FROM upload_reservations \
                     WHERE user_id = $1 AND expires_at >= $2",
                )
                .bind(user_id)
                .bind(t)
                .fetch_one(&mut *tx)
                .await?;
                if open as u64 >= max_unfinished {
                    tx.rollback().await?;
                    return Err(MetaError::TooManyUploads { limit: max_unfinished });
                }
                let id = Uuid::now_v7();
                sqlx::query(
                    "INSERT INTO upload_reservations (id, user_id, bytes, expires_at, created_at, \
                     holder_node, holder_incarnation) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(id)
                .bind(user_id)
                .bind(to_i64(bytes))
                .bind(plus(self.now(), ttl))
                .bind(t)
                .bind(holder.map(|h| h.node))
                .bind(holder.map(|h| h.incarnation))
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(id)
            }

            async fn grow_reservation(&self, id: Uuid, extra: u64, ttl: Duration) -> MetaResult<()> {
                let mut tx = self.begin_write().await.map_err(MetaError::from_sqlx)?;
                let row = sqlx::query(
                    "UPDATE upload_reservations SET bytes = bytes + $2, expires_at = $3 WHERE id = $1 RETURNING user_id",
                )
                .bind(id)
                .bind(to_i64(extra))
                .bind(plus(self.now(), ttl))
                .fetch_optional(&mut *tx)
                .await?;
                let Some(row) = row else {
                    return Err(MetaError::NotFound);
                };
                let user_id: String = row.try_get("user_id")?;
                let granted = sqlx::query(
                    "UPDATE user_storage SET reserved_bytes = reserved_bytes + $2 \
                     WHERE user_id = $1 AND total_bytes + reserved_bytes + $2 <= max_bytes",
                )
                .bind(&user_id)
                .bind(to_i64(extra))
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if granted == 0 {
                    let available = Self::room_in(&mut tx, &user_id).await?;
                    tx.rollback().await?;
                    return Err(MetaError::QuotaExceeded { needed: extra, available });
                }
                tx.commit().await?;
                Ok(())
            }

            async fn touch_reservation(&self, id: Uuid, ttl: Duration) -> MetaResult<()> {
                let n = sqlx::query("UPDATE upload_reservations SET expires_at = $2 WHERE id = $1")
                    .bind(id)
                    .bind(plus(self.now(), ttl))
                    .execute(&self.pool)
                    .await
                    .map_err(MetaError::from_sqlx)?
                    .rows_affected();
                if n == 0 {
                    return Err(MetaError::NotFound);
                }
                Ok(())
            }

            async fn release(&self, id: Uuid) -> MetaResult<bool> {
                let mut tx = self.begin_write().await.map_err(MetaError::from_sqlx)?;
                let released = Self::release_in(&mut tx, id).await?;
                tx.commit().await?;
                Ok(released)
            }

            async fn reservation_exists(&self, id: Uuid) -> MetaResult<bool> {
                let row = sqlx::query("SELECT 1 AS one FROM upload_reservations WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(MetaError::from_sqlx)?;
                Ok(row.is_some())
            }

            async fn reservation_bytes(&self, id: Uuid) -> MetaResult<Option<u64>> {
                let row = sqlx::query("SELECT bytes FROM upload_reservations WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(MetaError::from_sqlx)?;
                match row {
                    Some(r) => Ok(Some(r.try_get::<i64, _>("bytes")?.max(0) as u64)),
                    None => Ok(None),
                }
            }

            async fn expired_reservations(&self, at: DateTime<Utc>) -> MetaResult<Vec<(Uuid, String)>> {
                let rows = sqlx::query("SELECT id, user_id FROM upload_reservations WHERE expires_at < $1")
                    .bind(at)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(MetaError::from_sqlx)?;
                rows.iter()
                    .map(|r| Ok((r.try_get("id")?, r.try_get("user_id")?)))
                    .collect::<Result<_, sqlx::Error>>()
                    .map_err(MetaError::from)
            }

            async fn expire_reservations(&self, at: DateTime<Utc>) -> MetaResult<u64> {
                let mut tx = self.begin_write().await.map_err(MetaError::from_sqlx)?;
                let rows = sqlx::query(
                    "DELETE FROM upload_reservations WHERE expires_at < $1 RETURNING user_id, bytes",
                )
                .bind(at)
                .fetch_all(&mut *tx)
                .await?;
                for r in &rows {
                    Self::give_back(&mut tx, &r.try_get::<String, _>("user_id")?, r.try_get("bytes")?).await?;
                }
                tx.commit().await?;
                Ok(rows.len() as u64)
            }
        }

        #[async_trait]
        impl NodeStore for $store {
            async fn heartbeat_node(&self, n: &NodeRow) -> MetaResult<()> {
                sqlx::query(
                    "INSERT INTO nodes (incarnation_id, node_id, host, pid, started_at, heartbeat_at) \
                     VALUES ($1, $2, $3, $4, $5, $6) \
                     ON CONFLICT (incarnation_id) DO UPDATE SET heartbeat_at = EXCLUDED.heartbeat_at",
                )
                .bind(n.holder.incarnation)
                .bind(n.holder.node)
                .bind(&n.host)
                .bind(n.pid)
                .bind(n.started_at)
                .bind(n.heartbeat_at)
                .execute(&self.pool)
                .await
                .map_err(MetaError::from_sqlx)?;
                Ok(())
            }

            async fn remove_node(&self, incarnation: Uuid) -> MetaResult<()> {
                sqlx::query("DELETE FROM nodes WHERE incarnation_id = $1")
                    .bind(incarnation)
                    .execute(&self.pool)
                    .await
                    .map_err(MetaError::from_sqlx)?;
                Ok(())
            }

            async fn list_nodes(&self) -> MetaResult<Vec<NodeRow>> {
                let rows = sqlx::query(
                    "SELECT incarnation_id, node_id, host, CAST(pid AS BIGINT) AS pid, started_at, heartbeat_at \
                     FROM nodes ORDER BY started_at, incarnation_id",
                )
                .fetch_all(&self.pool)
                .await
                .map_err(MetaError::from_sqlx)?;
                rows.iter()
                    .map(|r| {
                        Ok(NodeRow {
                            holder: Holder {
                                node: r.try_get("node_id")?,
                                incarnation: r.try_get("incarnation_id")?,
                            },
                            host: r.try_get("host")?,
                            pid: r.try_get("pid")?,
                            started_at: r.try_get("started_at")?,
                            heartbeat_at: r.try_get("heartbeat_at")?,
                        })
                    })
                    .collect::<Result<_, sqlx::Error>>()
                    .map_err(MetaError::from)
            }

            async fn gone_reservations(&self, gone: &Gone) -> MetaResult<Vec<(Uuid, String)>> {
                let rows = match *gone {
                    // No incarnation has the nil id, so `except: None` spares none.
                    Gone::Node { node, except } => sqlx::query(
                        "SELECT id, user_id FROM upload_reservations \
                         WHERE holder_node = $1 AND holder_incarnation IS NOT NULL AND holder_incarnation <> $2",
                    )
                    .bind(node)
                    .bind(except.unwrap_or(Uuid::nil()))
                    .fetch_all(&self.pool)
                    .await,
                    Gone::SilentSince(t) => sqlx::query(
                        "SELECT id, user_id FROM upload_reservations r \
                         WHERE r.holder_incarnation IS NOT NULL AND NOT EXISTS ( \
                           SELECT 1 FROM nodes n \
                           WHERE n.incarnation_id = r.holder_incarnation AND n.heartbeat_at >= $1)",
                    )
                    .bind(t)
                    .fetch_all(&self.pool)
                    .await,
                }
                .map_err(MetaError::from_sqlx)?;
                rows.iter()
                    .map(|r| Ok((r.try_get("id")?, r.try_get("user_id")?)))
                    .collect::<Result<_, sqlx::Error>>()
                    .map_err(MetaError::from)
            }

            async fn forget_nodes(&self, gone: &Gone) -> MetaResult<u64> {
                let n = match *gone {
                    Gone::Node { node, except } => sqlx::query(
                        "DELETE FROM nodes WHERE node_id = $1 AND incarnation_id <> $2",
                    )
                    .bind(node)
                    .bind(except.unwrap_or(Uuid::nil()))
                    .execute(&self.pool)
                    .await,
                    Gone::SilentSince(t) => sqlx::query("DELETE FROM nodes WHERE heartbeat_at < $1")
                        .bind(t)
                        .execute(&self.pool)
                        .await,
                }
                .map_err(MetaError::from_sqlx)?
                .rows_affected();
                Ok(n)
            }
        }

        #[async_trait]
        impl FileStore for $store {
            async fn commit_file(&self, reservation: Uuid, f: NewFile) -> MetaResult<FileRecord> {
                let tx = self.begin_write().await.map_err(MetaError::from_sqlx)?;
                self.commit_file_in(tx, reservation, f).await
            }

            async fn get_file(&self, user_id: &str, id: Uuid) -> MetaResult<Option<FileRecord>> {
                let sql = format!("SELECT {FILE_COLS} FROM user_files WHERE id = $1 AND user_id = $2");
                let row = sqlx::query(&sql)
                    .bind(id)
                    .bind(user_id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(MetaError::from_sqlx)?;
                Ok(row.map(|r| Self::file_from_row(&r)).transpose()?)
            }

            async fn get_file_any(&self, id: Uuid) -> MetaResult<Option<FileRecord>> {
                let sql = format!("SELECT {FILE_COLS} FROM user_files WHERE id = $1");
                let row = sqlx::query(&sql)
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(MetaError::from_sqlx)?;
                Ok(row.map(|r| Self::file_from_row(&r)).transpose()?)
            }

            async fn list_files(&self, user_id: &str, q: &ListQuery) -> MetaResult<Vec<FileRecord>> {
                let search = q.q.as_deref().filter(|s| !s.is_empty()).map(NameSearch::new);
                let via_index = match &search {
                    Some(s) if $fts && s.trigrams() => !s.ascii || !self.dense_hits(user_id, s, q.limit).await?,
                    _ => false,
                };
                let mut sql = format!("SELECT {FILE_COLS} FROM user_files WHERE user_id = $1");
                let mut params = vec![Param::Str(user_id.to_string())];
                let next = |params: &mut Vec<Param>, p: Param| {
                    params.push(p);
                    params.len()
                };
                if let Some(t) = q.file_type {
                    let n = next(&mut params, Param::Str(t.as_str().into()));
                    sql.push_str(&format!(" AND file_type = ${n}"));
                }
                if let Some(f) = q.favorite {
                    let n = next(&mut params, Param::Bool(f));
                    sql.push_str(&format!(" AND is_favorite = ${n}"));
                }
                if let Some(tag) = &q.tag {
                    let n = next(&mut params, Param::Str(tag.clone()));
                    sql.push_str(&format!($tag_filter, n = n));
                }
                if let Some(search) = &search {
                    if via_index {
                        // The trigram index names the candidates, all of them
                        // this user's; they are few (see `dense_hits`), so
                        // they drive the join and are sorted afterwards.
                        let n = next(&mut params, Param::Str(search.phrase()));
                        sql = format!(
                            "SELECT {FILE_COLS} FROM (SELECT m.file_id AS hit FROM user_file_names_fts \
                             JOIN user_file_names m ON m.seq = user_file_names_fts.rowid \
                             WHERE user_file_names_fts MATCH ${n} AND m.user_id = $1) AS hits \
                             CROSS JOIN user_files ON user_files.id = hits.hit{}",
                            sql.split_once(" FROM user_files").map(|(_, w)| w).unwrap_or_default()
                        );
                    } else if $fts && !search.ascii {
                        // SQLite folds only ASCII: every case variant of a
                        // short query is looked for as it is.
                        let mut any = Vec::new();
                        for v in search.variants() {
                            let n = next(&mut params, Param::Str(v));
                            any.push(format!("instr(file_name, ${n}) > 0"));
                        }
                        sql.push_str(&format!(" AND ({})", any.join(" OR ")));
                    } else if !$fts && !search.trigrams() {
                        // Too short for the trigram index: read the user's
                        // rows in sort order (the planner must not pick a
                        // full scan of the trigram index instead).
                        let n = next(&mut params, Param::Str(search.lower.clone()));
                        sql.push_str(&format!(" AND strpos(lower(file_name), ${n}) > 0"));
                    } else {
                        let n = next(&mut params, Param::Str(like_pattern(&search.lower)));
                        sql.push_str(&format!(" AND lower(file_name) LIKE ${n} ESCAPE '\\'"));
                    }
                }
                let col = match q.sort {
                    SortKey::UploadDate => "upload_date",
                    SortKey::FileName => "file_name",
                    SortKey::FileSize => "file_size",
                };
                let (cmp, dir) = match q.order {
                    SortOrder::Asc => (">", "ASC"),
                    SortOrder::Desc => ("<", "DESC"),
                };
                if let Some(c) = &q.after {
                    let key = match q.sort {
                        SortKey::UploadDate => Param::Time(
                            DateTime::parse_from_rfc3339(&c.k)
                                .map_err(|_| MetaError::Conflict("bad cursor".into()))?
                                .with_timezone(&Utc),
                        ),
                        SortKey::FileName => Param::Str(c.k.clone()),
                        SortKey::FileSize => Param::I64(
                            c.k.parse().map_err(|_| MetaError::Conflict("bad cursor".into()))?,
                        ),
                    };
                    let a = next(&mut params, key);
                    let b = next(&mut params, Param::Id(c.id));
                    sql.push_str(&format!(" AND ({col}, id) {cmp} (${a}, ${b})"));
                }
                let n = next(&mut params, Param::I64(i64::from(q.limit)));
                sql.push_str(&format!(" ORDER BY {col} {dir}, id {dir} LIMIT ${n}"));
                let mut query = sqlx::query(&sql).persistent($persistent_lists);
                for p in params {
                    query = match p {
                        Param::Str(s) => query.bind(s),
                        Param::I64(i) => query.bind(i),
                        Param::Bool(b) => query.bind(b),
                        Param::Id(u) => query.bind(u),
                        Param::Time(t) => query.bind(t),
                    };
                }
                let rows = query.fetch_all(&self.pool).await.map_err(MetaError::from_sqlx)?;
                Ok(rows.iter().map(Self::file_from_row).collect::<Result<_, _>>()?)
            }

            async fn all_files(&self, user_id: Option<&str>) -> MetaResult<Vec<FileRecord>> {
                let rows = match user_id {
                    Some(u) => {
                        let sql = format!("SELECT {FILE_COLS} FROM user_files WHERE user_id = $1 ORDER BY id");
                        sqlx::query(&sql).bind(u).fetch_all(&self.pool).await
                    }
                    None => {
                        let sql = format!("SELECT {FILE_COLS} FROM user_files ORDER BY user_id, id");
                        sqlx::query(&sql).fetch_all(&self.pool).await
                    }
                }
                .map_err(MetaError::from_sqlx)?;
                Ok(rows.iter().map(Self::file_from_row).collect::<Result<_, _>>()?)
            }

            async fn delete_file(&self, user_id: &str, id: Uuid) -> MetaResult<Option<FileRecord>> {
                let sql = format!("DELETE FROM user_files WHERE id = $1 AND user_id = $2 RETURNING {FILE_COLS}");
                let mut tx = self.begin_write().await.map_err(MetaError::from_sqlx)?;
                let row = sqlx::query(&sql)
                    .bind(id)
                    .bind(user_id)
                    .fetch_optional(&mut *tx)
                    .await?;
                let Some(row) = row else {
                    return Ok(None);
                };
                let rec = Self::file_from_row(&row)?;
                Self::record_event_in(&mut tx, &NewEvent::file_deleted(&rec, "deleted")).await?;
                // The delete trigger wrote the user row: its lock is ours, and
                // usage back below a threshold re-arms it.
                Self::check_threshold_in(&mut tx, user_id).await?;
                tx.commit().await?;
                Ok(Some(rec))
            }

            async fn set_favorite(&self, user_id: &str, id: Uuid, fav: Option<bool>) -> MetaResult<Option<FileRecord>> {
                let mut tx = self.begin_write().await.map_err(MetaError::from_sqlx)?;
                let row = match fav {
                    Some(v) => {
                        let sql = format!("UPDATE user_files SET is_favorite = $3 WHERE id = $1 AND user_id = $2 RETURNING {FILE_COLS}");
                        sqlx::query(&sql).bind(id).bind(user_id).bind(v).fetch_optional(&mut *tx).await?
                    }
                    None => {
                        let sql = format!("UPDATE user_files SET is_favorite = NOT is_favorite WHERE id = $1 AND user_id = $2 RETURNING {FILE_COLS}");
                        sqlx::query(&sql).bind(id).bind(user_id).fetch_optional(&mut *tx).await?
                    }
                };
                let Some(row) = row else {
                    return Ok(None);
                };
                let rec = Self::file_from_row(&row)?;
                Self::record_event_in(&mut tx, &NewEvent::file_updated(&rec, &["is_favorite"])).await?;
                tx.commit().await?;
                Ok(Some(rec))
            }

            async fn set_tags(&self, user_id: &str, id: Uuid, tags: &[String]) -> MetaResult<Option<FileRecord>> {
                let sql = format!("UPDATE user_files SET tags = $3 WHERE id = $1 AND user_id = $2 RETURNING {FILE_COLS}");
                let mut tx = self.begin_write().await.map_err(MetaError::from_sqlx)?;
                let row = sqlx::query(&sql)
                    .bind(id)
                    .bind(user_id)
                    .bind($tags_in(tags))
                    .fetch_optional(&mut *tx)
                    .await?;
                let Some(row) = row else {
                    return Ok(None);
                };
                let rec = Self::file_from_row(&row)?;
                Self::record_event_in(&mut tx, &NewEvent::file_updated(&rec, &["tags"])).await?;
                tx.commit().await?;
                Ok(Some(rec))
            }

            async fn set_media(&self, id: Uuid, m: &MediaUpdate) -> MetaResult<bool> {
                let sql = format!(
                    "UPDATE user_files SET resolution = COALESCE($2, resolution), \
                     duration = COALESCE($3, duration), thumbnail_path = COALESCE($4, thumbnail_path) \
                     WHERE id = $1 RETURNING {FILE_COLS}"
                );
                let mut tx = self.begin_write().await.map_err(MetaError::from_sqlx)?;
                let row = sqlx::query(&sql)
                    .bind(id)
                    .bind(&m.resolution)
                    .bind(&m.duration)
                    .bind(&m.thumbnail_path)
                    .fetch_optional(&mut *tx)
                    .await?;
                let Some(row) = row else {
                    return Ok(false);
                };
                let rec = Self::file_from_row(&row)?;
                Self::record_event_in(&mut tx, &NewEvent::media_ready(&rec)).await?;
                tx.commit().await?;
                Ok(true)
            }

            async fn rename_file(&self, user_id: &str, id: Uuid, c: &Rename) -> MetaResult<Option<FileRecord>> {
                let sql = format!(
                    "UPDATE user_files SET file_name = COALESCE($3, file_name), \
                     package_name = CASE WHEN $4 THEN $5 ELSE package_name END \
                     WHERE id = $1 AND user_id = $2 RETURNING {FILE_COLS}"
                );
                let mut tx = self.begin_write().await.map_err(MetaError::from_sqlx)?;
                let row = sqlx::query(&sql)
                    .bind(id)
                    .bind(user_id)
                    .bind(&c.file_name)
                    .bind(c.package_name.is_some())
                    .bind(c.package_name.clone().flatten())
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(MetaError::from_sqlx)?;
                let Some(row) = row else {
                    return Ok(None);
                };
                let rec = Self::file_from_row(&row)?;
                let mut changed = Vec::new();
                if c.file_name.is_some() {
                    changed.push("file_name");
                }
                if c.package_name.is_some() {
                    changed.push("package_name");
                }
                if !changed.is_empty() {
                    Self::record_event_in(&mut tx, &NewEvent::file_updated(&rec, &changed)).await?;
                }
                tx.commit().await?;
                Ok(Some(rec))
            }

            async fn package_files(&self, user_id: &str, package: &str) -> MetaResult<Vec<FileRecord>> {
                let sql = format!(
                    "SELECT {FILE_COLS} FROM user_files WHERE user_id = $1 AND package_name = $2 \
                     ORDER BY upload_date, id"
                );
                let rows = sqlx::query(&sql)
                    .bind(user_id)
                    .bind(package)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(MetaError::from_sqlx)?;
                Ok(rows.iter().map(Self::file_from_row).collect::<Result<_, _>>()?)
            }

            async fn usage_by_type(&self, user_id: &str) -> MetaResult<Vec<(FileType, TypeUsage)>> {
                let rows = sqlx::query(
                    "SELECT file_type, CAST(COALESCE(SUM(file_size), 0) AS BIGINT) AS bytes, \
                     CAST(COUNT(*) AS BIGINT) AS n FROM user_files WHERE user_id = $1 GROUP BY file_type",
                )
                .bind(user_id)
                .fetch_all(&self.pool)
                .await
                .map_err(MetaError::from_sqlx)?;
                let mut out = Vec::new();
                for r in rows {
                    let t: String = r.try_get("file_type")?;
                    if let Some(ft) = FileType::parse(&t) {
                        out.push((ft, TypeUsage { bytes: r.try_get("bytes")?, count: r.try_get("n")? }));
                    }
                }
                Ok(out)
            }
        }

        #[async_trait]
        impl SignedUploadStore for $store {
            async fn create_signed_upload(&self, up: &SignedUpload) -> MetaResult<()> {
                sqlx::query(
                    "INSERT INTO signed_uploads (id, user_id, max_bytes, file_type, file_name, expires_at, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(up.id)
                .bind(&up.user_id)
                .bind(up.max_bytes)
                .bind(up.file_type.map(|t| t.as_str()))
                .bind(&up.file_name)
                .bind(up.expires_at)
                .bind(self.now())
                .execute(&self.pool)
                .await
                .map_err(MetaError::from_sqlx)?;
                Ok(())
            }

            async fn claim_signed_upload(&self, id: Uuid, at: DateTime<Utc>) -> MetaResult<SignedClaim> {
                let row = sqlx::query(
                    "UPDATE signed_uploads SET used_at = $2 \
                     WHERE id = $1 AND used_at IS NULL AND expires_at >= $2 \
                     RETURNING id, user_id, max_bytes, file_type, file_name, expires_at",
                )
                .bind(id)
                .bind(at)
                .fetch_optional(&self.pool)
                .await
                .map_err(MetaError::from_sqlx)?;
                if let Some(r) = row {
                    let ft: Option<String> = r.try_get("file_type")?;
                    return Ok(SignedClaim::Claimed(SignedUpload {
                        id: r.try_get("id")?,
                        user_id: r.try_get("user_id")?,
                        max_bytes: r.try_get("max_bytes")?,
                        file_type: ft.as_deref().and_then(FileType::parse),
                        file_name: r.try_get("file_name")?,
                        expires_at: r.try_get("expires_at")?,
                    }));
                }
                let used = sqlx::query(
                    "SELECT 1 AS one FROM signed_uploads WHERE id = $1 AND used_at IS NOT NULL AND expires_at >= $2",
                )
                .bind(id)
                .bind(at)
                .fetch_optional(&self.pool)
                .await
                .map_err(MetaError::from_sqlx)?;
                Ok(if used.is_some() { SignedClaim::Used } else { SignedClaim::Missing })
            }

            async fn expire_signed_uploads(&self, at: DateTime<Utc>) -> MetaResult<u64> {
                let n = sqlx::query("DELETE FROM signed_uploads WHERE expires_at < $1")
                    .bind(at)
                    .execute(&self.pool)
                    .await
                    .map_err(MetaError::from_sqlx)?
                    .rows_affected();
                Ok(n)
            }
        }

        #[async_trait]
        impl JobStore for $store {
            async fn enqueue_job(&self, kind: &str, payload: &str, user_id: Option<&str>, run_at: DateTime<Utc>) -> MetaResult<Uuid> {
                let id = Uuid::now_v7();
                sqlx::query(
                    "INSERT INTO jobs (id, kind, payload, user_id, status, run_at, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, 'queued', $5, $6, $6)",
                )
                .bind(id)
                .bind(kind)
                .bind(payload)
                .bind(user_id)
                .bind(run_at)
                .bind(self.now())
                .execute(&self.pool)
                .await
                .map_err(MetaError::from_sqlx)?;
                Ok(id)
            }

            async fn claim_job(&self, lease: Duration) -> MetaResult<Option<Job>> {
                let t = self.now();
                let sql = format!(
                    "UPDATE jobs SET status = 'running', attempts = attempts + 1, locked_until = $2, updated_at = $1 \
                     WHERE id = (SELECT id FROM jobs \
                                 WHERE (status = 'queued' AND run_at <= $1) OR (status = 'running' AND locked_until < $1) \
                                 ORDER BY run_at LIMIT 1{}) \
                     RETURNING id, kind, payload, CAST(attempts AS BIGINT) AS attempts, CAST(max_attempts AS BIGINT) AS max_attempts",
                    $skip_locked
                );
                let row = sqlx::query(&sql)
                    .bind(t)
                    .bind(plus(self.now(), lease))
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(MetaError::from_sqlx)?;
                Ok(match row {
                    Some(r) => Some(Job {
                        id: r.try_get("id")?,
                        kind: r.try_get("kind")?,
                        payload: r.try_get("payload")?,
                        attempts: r.try_get("attempts")?,
                        max_attempts: r.try_get("max_attempts")?,
                    }),
                    None => None,
                })
            }

            async fn complete_job(&self, id: Uuid) -> MetaResult<()> {
                sqlx::query("UPDATE jobs SET status = 'done', locked_until = NULL, last_error = NULL, updated_at = $2 WHERE id = $1")
                    .bind(id)
                    .bind(self.now())
                    .execute(&self.pool)
                    .await
                    .map_err(MetaError::from_sqlx)?;
                Ok(())
            }

            async fn fail_job(&self, id: Uuid, error: &str, retry_at: Option<DateTime<Utc>>, event: Option<&NewEvent>) -> MetaResult<()> {
                let (status, run_at) = match retry_at {
                    Some(t) => ("queued", t),
                    None => ("failed", self.now()),
                };
                let mut tx = self.begin_write().await.map_err(MetaError::from_sqlx)?;
                sqlx::query("UPDATE jobs SET status = $2, run_at = $3, locked_until = NULL, last_error = $4, updated_at = $5 WHERE id = $1")
                    .bind(id)
                    .bind(status)
                    .bind(run_at)
                    .bind(error)
                    .bind(self.now())
                    .execute(&mut *tx)
                    .await?;
                if let Some(ev) = event {
                    Self::record_event_in(&mut tx, ev).await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn queue_depth(&self) -> MetaResult<u64> {
                let row = sqlx::query("SELECT CAST(COUNT(*) AS BIGINT) AS n FROM jobs WHERE status IN ('queued', 'running')")
                    .fetch_one(&self.pool)
                    .await
                    .map_err(MetaError::from_sqlx)?;
                Ok(row.try_get::<i64, _>("n")?.max(0) as u64)
            }

            async fn failed_jobs(&self, limit: u32) -> MetaResult<Vec<JobInfo>> {
                let rows = sqlx::query(
                    "SELECT id, kind, payload, status, CAST(attempts AS BIGINT) AS attempts, last_error \
                     FROM jobs WHERE status = 'failed' ORDER BY updated_at DESC LIMIT $1",
                )
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await
                .map_err(MetaError::from_sqlx)?;
                rows.iter()
                    .map(|r| {
                        Ok(JobInfo {
                            id: r.try_get("id")?,
                            kind: r.try_get("kind")?,
                            payload: r.try_get("payload")?,
                            status: r.try_get("status")?,
                            attempts: r.try_get("attempts")?,
                            last_error: r.try_get("last_error")?,
                        })
                    })
                    .collect::<Result<_, sqlx::Error>>()
                    .map_err(MetaError::from)
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
    tag_filter = " AND ${n} = ANY(tags)",
    skip_locked = " FOR UPDATE SKIP LOCKED",
    fts = false,
    persistent_lists = false
);

impl_store!(
    SqliteStore,
    sqlx::Sqlite,
    SqliteRow,
    "sqlite",
    sqlx::migrate!("./migrations/sqlite"),
    tags_in = sqlite_tags_in,
    tags_out = sqlite_tags_out,
    tag_filter =
        " AND EXISTS (SELECT 1 FROM json_each(user_files.tags) WHERE json_each.value = ${n})",
    skip_locked = "",
    fts = true,
    persistent_lists = true
);
