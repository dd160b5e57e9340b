//! MySQL 8 / MariaDB ≥ 10.6 backend ([`MySqlStore`]), one module per
//! concern: `users` (user rows and counters), `quota` (reservations, the
//! file commit, process registry), `files` (file rows), `uploads` (signed
//! URLs and tus), `jobs` and `events` (the in-transaction outbox steps).
//!
//! The SQL differs from the other engines' in ways a shared template would
//! have to hide: `?` placeholders; no `UPDATE … RETURNING` (and MySQL 8 has
//! no `RETURNING` at all), so a change is made and then read back inside
//! its transaction, or a row is locked with `SELECT … FOR UPDATE` before it
//! is deleted; `ON DUPLICATE KEY UPDATE` for upserts; `CAST(… AS SIGNED)`
//! for integers; tags as a JSON array in a text column.
//!
//! Every connection runs at `READ COMMITTED`: each statement sees what was
//! committed before it, as on PostgreSQL, and InnoDB takes no gap locks.
//! The quota rules rely on row locks, not on the isolation level: a
//! reservation's conditional `UPDATE` of the user row holds that row until
//! commit, so two uploads never both pass the room.
//!
//! Text columns use `utf8mb4_bin`; the MySQL protocol marks them binary, so
//! strings are read as bytes and checked as UTF-8 ([`text`]).

mod events;
mod files;
mod jobs;
mod quota;
mod uploads;
mod users;

use std::{str::FromStr, sync::Arc, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{
    mysql::{MySqlConnectOptions, MySqlPoolOptions, MySqlRow},
    Executor, MySqlPool, Row,
};
use uuid::Uuid;

use super::super::clock::{self, Clock};
use super::super::*;

/// MySQL/MariaDB backend.
pub struct MySqlStore {
    pool: MySqlPool,
    clock: Arc<dyn Clock>,
    sql: super::SqlStore,
}

type Tx = sqlx::Transaction<'static, sqlx::MySql>;

impl MySqlStore {
    /// Opens a pool on `url` (`mysql://…` or `mariadb://…`).
    pub(crate) async fn open(url: &str, clock: Arc<dyn Clock>) -> MetaResult<MySqlStore> {
        let url = match url.strip_prefix("mariadb://") {
            Some(rest) => format!("mysql://{rest}"),
            None => url.to_string(),
        };
        let opts = MySqlConnectOptions::from_str(&url)?
            .charset("utf8mb4")
            .timezone(Some("+00:00".into()));
        let pool = MySqlPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(5))
            .after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                        .await?;
                    Ok(())
                })
            })
            .connect_with(opts)
            .await
            .map_err(MetaError::from_sqlx)?;
        let sql = super::SqlStore::new(super::engine::Db::MySql(pool.clone()), clock.clone());
        Ok(MySqlStore { pool, clock, sql })
    }

    pub(super) fn sql_store(&self) -> &super::SqlStore {
        &self.sql
    }

    /// A transaction (InnoDB: row locks taken as statements run).
    async fn begin_write(&self) -> Result<Tx, sqlx::Error> {
        self.pool.begin().await
    }

    /// The store clock's now, at the microsecond precision DATETIME(6) keeps.
    fn now(&self) -> DateTime<Utc> {
        clock::micros(self.clock.as_ref())
    }
}

/// A text column (read as bytes: `utf8mb4_bin` columns come marked binary).
fn text(row: &MySqlRow, col: &str) -> Result<String, sqlx::Error> {
    let bytes: Vec<u8> = row.try_get(col)?;
    String::from_utf8(bytes).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

/// A nullable text column.
fn opt_text(row: &MySqlRow, col: &str) -> Result<Option<String>, sqlx::Error> {
    let bytes: Option<Vec<u8>> = row.try_get(col)?;
    bytes
        .map(|b| String::from_utf8(b).map_err(|e| sqlx::Error::Decode(Box::new(e))))
        .transpose()
}

/// Tags as stored: a JSON array of strings.
fn tags_in(tags: &[String]) -> String {
    serde_json::to_string(tags).unwrap_or_else(|_| "[]".into())
}

fn tags_out(row: &MySqlRow) -> Result<Vec<String>, sqlx::Error> {
    serde_json::from_str(&text(row, "tags")?).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

const USER_COLS: &str = "user_id, total_bytes, reserved_bytes, max_bytes, \
     CAST(file_count AS SIGNED) AS file_count, created_at, updated_at";

fn user_from_row(row: &MySqlRow) -> Result<UserStorage, sqlx::Error> {
    Ok(UserStorage {
        user_id: text(row, "user_id")?,
        total_bytes: row.try_get("total_bytes")?,
        reserved_bytes: row.try_get("reserved_bytes")?,
        max_bytes: row.try_get("max_bytes")?,
        file_count: row.try_get("file_count")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn file_from_row(row: &MySqlRow) -> Result<FileRecord, sqlx::Error> {
    let ft = text(row, "file_type")?;
    Ok(FileRecord {
        id: row.try_get("id")?,
        user_id: text(row, "user_id")?,
        file_name: text(row, "file_name")?,
        file_type: FileType::parse(&ft)
            .ok_or_else(|| sqlx::Error::Decode(format!("unknown file_type {ft:?}").into()))?,
        mime_type: text(row, "mime_type")?,
        file_size: row.try_get("file_size")?,
        file_path: text(row, "file_path")?,
        thumbnail_path: opt_text(row, "thumbnail_path")?,
        resolution: opt_text(row, "resolution")?,
        duration: opt_text(row, "duration")?,
        package_name: opt_text(row, "package_name")?,
        tags: tags_out(row)?,
        is_favorite: row.try_get("is_favorite")?,
        sha256: text(row, "sha256")?.trim().to_string(),
        upload_date: row.try_get("upload_date")?,
    })
}

fn tus_from_row(row: &MySqlRow) -> Result<TusUpload, sqlx::Error> {
    Ok(TusUpload {
        id: row.try_get("id")?,
        user_id: text(row, "user_id")?,
        upload_length: row.try_get("upload_length")?,
        upload_offset: row.try_get("upload_offset")?,
        metadata: text(row, "metadata")?,
        expires_at: row.try_get("expires_at")?,
        created_at: row.try_get("created_at")?,
        hash_state: row.try_get("hash_state")?,
    })
}

/// `(id, user_id)` pairs of reservation rows.
fn id_user_pairs(rows: &[MySqlRow]) -> MetaResult<Vec<(Uuid, String)>> {
    rows.iter()
        .map(|r| Ok((r.try_get("id")?, text(r, "user_id")?)))
        .collect::<Result<_, sqlx::Error>>()
        .map_err(MetaError::from)
}

/// Escapes `%`, `_` and `!` for a LIKE pattern with `ESCAPE '!'` (not `\`,
/// which a server in `NO_BACKSLASH_ESCAPES` mode reads differently), and
/// case-folds it: a substring match of `lower(name)`.
fn like_pattern(q: &str) -> String {
    let mut p = String::with_capacity(q.len() + 2);
    p.push('%');
    for c in q.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '!') {
            p.push('!');
        }
        p.push(c);
    }
    p.push('%');
    p
}

/// MySQL error numbers that mean "try again later" rather than a bug:
/// lock wait timeout, deadlock (the transaction was rolled back), too many
/// connections, server shutting down, connection killed.
pub(crate) fn transient_number(n: u16) -> bool {
    matches!(n, 1205 | 1213 | 1040 | 1053 | 1927 | 2002 | 2006 | 2013)
}

#[async_trait]
impl UserStore for MySqlStore {
    async fn ensure_user(&self, user_id: &str, default_quota: u64) -> MetaResult<UserStorage> {
        self.ensure_user_row(user_id, default_quota).await
    }
    async fn get_user(&self, user_id: &str) -> MetaResult<Option<UserStorage>> {
        self.user_row(user_id).await
    }
    async fn list_users(&self) -> MetaResult<Vec<UserStorage>> {
        self.user_rows().await
    }
    async fn set_quota(&self, user_id: &str, max_bytes: u64) -> MetaResult<UserStorage> {
        self.set_user_quota(user_id, max_bytes).await
    }
    async fn delete_user(&self, user_id: &str) -> MetaResult<Option<DeletedUser>> {
        self.delete_user_rows(user_id).await
    }
    async fn row_totals(&self) -> MetaResult<Vec<(String, i64, i64)>> {
        self.totals().await
    }
    async fn repair_counters(&self) -> MetaResult<u64> {
        self.repair().await
    }
}

#[async_trait]
impl QuotaStore for MySqlStore {
    async fn reserve_upload(
        &self,
        user_id: &str,
        default_quota: u64,
        bytes: u64,
        ttl: Duration,
        max_unfinished: u64,
        holder: Option<Holder>,
    ) -> MetaResult<Uuid> {
        self.take_reservation(user_id, default_quota, bytes, ttl, max_unfinished, holder)
            .await
    }
    async fn grow_reservation(&self, id: Uuid, extra: u64, ttl: Duration) -> MetaResult<()> {
        self.grow(id, extra, ttl).await
    }
    async fn touch_reservation(&self, id: Uuid, ttl: Duration) -> MetaResult<()> {
        self.touch(id, ttl).await
    }
    async fn release(&self, id: Uuid) -> MetaResult<bool> {
        self.release_one(id).await
    }
    async fn reservation_exists(&self, id: Uuid) -> MetaResult<bool> {
        Ok(self.reservation_bytes_of(id).await?.is_some())
    }
    async fn reservation_bytes(&self, id: Uuid) -> MetaResult<Option<u64>> {
        self.reservation_bytes_of(id).await
    }
    async fn expired_reservations(&self, at: DateTime<Utc>) -> MetaResult<Vec<(Uuid, String)>> {
        self.expired(at).await
    }
    async fn expire_reservations(&self, at: DateTime<Utc>) -> MetaResult<u64> {
        self.expire(at).await
    }
}

#[async_trait]
impl NodeStore for MySqlStore {
    async fn heartbeat_node(&self, node: &NodeRow) -> MetaResult<()> {
        self.heartbeat(node).await
    }
    async fn remove_node(&self, incarnation: Uuid) -> MetaResult<()> {
        self.remove_incarnation(incarnation).await
    }
    async fn list_nodes(&self) -> MetaResult<Vec<NodeRow>> {
        self.nodes().await
    }
    async fn gone_reservations(&self, gone: &Gone) -> MetaResult<Vec<(Uuid, String)>> {
        self.held_by_gone(gone).await
    }
    async fn forget_nodes(&self, gone: &Gone) -> MetaResult<u64> {
        self.forget(gone).await
    }
}

#[async_trait]
impl FileStore for MySqlStore {
    async fn commit_file(&self, reservation: Uuid, file: NewFile) -> MetaResult<FileRecord> {
        let tx = self.begin_write().await.map_err(MetaError::from_sqlx)?;
        self.commit_file_in(tx, reservation, file).await
    }
    async fn get_file(&self, user_id: &str, id: Uuid) -> MetaResult<Option<FileRecord>> {
        self.file(Some(user_id), id).await
    }
    async fn get_file_any(&self, id: Uuid) -> MetaResult<Option<FileRecord>> {
        self.file(None, id).await
    }
    async fn list_files(&self, user_id: &str, q: &ListQuery) -> MetaResult<Vec<FileRecord>> {
        self.file_page(user_id, q).await
    }
    async fn all_files(&self, user_id: Option<&str>) -> MetaResult<Vec<FileRecord>> {
        self.every_file(user_id).await
    }
    async fn delete_file(&self, user_id: &str, id: Uuid) -> MetaResult<Option<FileRecord>> {
        self.delete_one_file(user_id, id).await
    }
    async fn set_favorite(
        &self,
        user_id: &str,
        id: Uuid,
        fav: Option<bool>,
    ) -> MetaResult<Option<FileRecord>> {
        self.favorite(user_id, id, fav).await
    }
    async fn set_tags(
        &self,
        user_id: &str,
        id: Uuid,
        tags: &[String],
    ) -> MetaResult<Option<FileRecord>> {
        self.tags(user_id, id, tags).await
    }
    async fn set_media(&self, id: Uuid, media: &MediaUpdate) -> MetaResult<bool> {
        self.media(id, media).await
    }
    async fn rename_file(
        &self,
        user_id: &str,
        id: Uuid,
        change: &Rename,
    ) -> MetaResult<Option<FileRecord>> {
        self.rename(user_id, id, change).await
    }
    async fn package_files(&self, user_id: &str, package: &str) -> MetaResult<Vec<FileRecord>> {
        self.package(user_id, package).await
    }
    async fn usage_by_type(&self, user_id: &str) -> MetaResult<Vec<(FileType, TypeUsage)>> {
        self.usage_per_type(user_id).await
    }
}

#[async_trait]
impl SignedUploadStore for MySqlStore {
    async fn create_signed_upload(&self, up: &SignedUpload) -> MetaResult<()> {
        self.insert_signed(up).await
    }
    async fn claim_signed_upload(&self, id: Uuid, now: DateTime<Utc>) -> MetaResult<SignedClaim> {
        self.claim_signed(id, now).await
    }
    async fn expire_signed_uploads(&self, now: DateTime<Utc>) -> MetaResult<u64> {
        self.expire_signed(now).await
    }
}

#[async_trait]
impl JobStore for MySqlStore {
    async fn enqueue_job(
        &self,
        kind: &str,
        payload: &str,
        user_id: Option<&str>,
        run_at: DateTime<Utc>,
    ) -> MetaResult<Uuid> {
        self.enqueue(kind, payload, user_id, run_at).await
    }
    async fn claim_job(&self, lease: Duration) -> MetaResult<Option<Job>> {
        self.claim(lease).await
    }
    async fn complete_job(&self, id: Uuid) -> MetaResult<()> {
        self.complete(id).await
    }
    async fn fail_job(
        &self,
        id: Uuid,
        error: &str,
        retry_at: Option<DateTime<Utc>>,
        event: Option<&NewEvent>,
    ) -> MetaResult<()> {
        self.fail(id, error, retry_at, event).await
    }
    async fn queue_depth(&self) -> MetaResult<u64> {
        self.depth().await
    }
    async fn failed_jobs(&self, limit: u32) -> MetaResult<Vec<JobInfo>> {
        self.failed(limit).await
    }
}

#[async_trait]
impl TusStore for MySqlStore {
    async fn create_tus_upload(
        &self,
        up: &TusUpload,
        lock: Option<(Uuid, DateTime<Utc>)>,
    ) -> MetaResult<()> {
        self.insert_tus(up, lock).await
    }
    async fn get_tus_upload(
        &self,
        user_id: &str,
        id: Uuid,
        now: DateTime<Utc>,
    ) -> MetaResult<Option<TusUpload>> {
        self.tus(user_id, id, now).await
    }
    async fn lock_tus_upload(
        &self,
        user_id: &str,
        id: Uuid,
        owner: Uuid,
        lease_until: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> MetaResult<TusLock> {
        self.lock_tus(user_id, id, owner, lease_until, expires_at)
            .await
    }
    async fn tus_holder(&self, id: Uuid, now: DateTime<Utc>) -> MetaResult<Option<TusHolder>> {
        self.holder_of(id, now).await
    }
    async fn request_tus_takeover(&self, id: Uuid, holder: Uuid) -> MetaResult<bool> {
        self.request_takeover(id, holder).await
    }
    async fn break_tus_lock(&self, id: Uuid, holder: Uuid, now: DateTime<Utc>) -> MetaResult<bool> {
        self.break_lock(id, holder, now).await
    }
    async fn check_tus_lock(
        &self,
        id: Uuid,
        owner: Uuid,
        renew_until: Option<DateTime<Utc>>,
    ) -> MetaResult<LeaseCheck> {
        self.check_lock(id, owner, renew_until).await
    }
    async fn set_tus_offset(&self, id: Uuid, owner: Uuid, p: &TusProgress) -> MetaResult<bool> {
        self.set_offset(id, owner, p).await
    }
    async fn set_tus_length(
        &self,
        id: Uuid,
        owner: Uuid,
        length: u64,
        metadata: &str,
    ) -> MetaResult<bool> {
        self.set_length(id, owner, length, metadata).await
    }
    async fn unlock_tus_upload(&self, id: Uuid, owner: Uuid) -> MetaResult<()> {
        self.unlock(id, owner).await
    }
    async fn finish_tus_upload(&self, id: Uuid, owner: Uuid) -> MetaResult<bool> {
        self.finish(id, owner).await
    }
    async fn complete_tus_upload(&self, owner: Uuid, file: NewFile) -> MetaResult<FileRecord> {
        self.complete_tus(owner, file).await
    }
    async fn terminate_tus_upload(
        &self,
        user_id: &str,
        id: Uuid,
        now: DateTime<Utc>,
    ) -> MetaResult<TusLock> {
        self.terminate(user_id, id, now).await
    }
    async fn expire_tus_uploads(&self, now: DateTime<Utc>) -> MetaResult<Vec<Uuid>> {
        self.expire_tus(now).await
    }
}
