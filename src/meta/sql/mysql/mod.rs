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
mod quota;

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
