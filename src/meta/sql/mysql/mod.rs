//! MySQL 8 / MariaDB ≥ 10.6 backend ([`MySqlStore`]), one module per
//! concern not yet written over `sql::engine`: `quota` (the file commit),
//! `files` (file rows), `uploads` (tus), `events`, `leases` and `snapshot`.
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
mod leases;
mod quota;
mod snapshot;
mod uploads;

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

    pub(crate) fn pool(&self) -> &MySqlPool {
        &self.pool
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

}

/// MySQL error numbers that mean "try again later" rather than a bug:
/// lock wait timeout, deadlock (the transaction was rolled back), too many
/// connections, server shutting down, connection killed.
pub(crate) fn transient_number(n: u16) -> bool {
    matches!(n, 1205 | 1213 | 1040 | 1053 | 1927 | 2002 | 2006 | 2013)
}

#[async_trait]
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
