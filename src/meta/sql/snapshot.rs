//! Snapshot and restore of the rows a backup holds ([`SnapshotStore`]).
//!
//! PostgreSQL is read inside one `REPEATABLE READ, READ ONLY` transaction;
//! SQLite is copied with `VACUUM INTO` and the copy is read. Either way the
//! rows come out as [`DumpUser`] and [`DumpFile`], the same for both
//! engines, so a snapshot of one restores into the other. A restore writes
//! every row in one transaction.

use std::path::Path;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use sqlx::{postgres::PgRow, sqlite::SqliteRow, Connection, Row};

use super::{pg_tags_in, pg_tags_out, sqlite_tags_in, sqlite_tags_out, PgStore, SqliteStore};
use crate::meta::{
    DumpFile, DumpUser, MetaError, MetaResult, RowSource, SnapshotSink, SnapshotStore,
};

const USERS_SQL: &str =
    "SELECT user_id, max_bytes, total_bytes, CAST(file_count AS BIGINT) AS file_count, \
     created_at, updated_at FROM user_storage ORDER BY user_id";
const FILES_SQL: &str = "SELECT id, user_id, file_name, file_type, mime_type, file_size, file_path, \
     thumbnail_path, resolution, duration, package_name, tags, is_favorite, sha256, upload_date, created_at \
     FROM user_files ORDER BY user_id, id";
const HAS_FILES_SQL: &str = "SELECT 1 AS one FROM user_files LIMIT 1";
/// Counters start at zero: the triggers rebuild them from the file rows.
const INSERT_USER_SQL: &str = "INSERT INTO user_storage (user_id, max_bytes, total_bytes, reserved_bytes, file_count, created_at, updated_at) \
     VALUES ($1, $2, 0, 0, 0, $3, $4) \
     ON CONFLICT (user_id) DO UPDATE SET max_bytes = EXCLUDED.max_bytes";
const INSERT_FILE_SQL: &str = "INSERT INTO user_files (id, user_id, file_name, file_type, mime_type, file_size, file_path, \
     thumbnail_path, resolution, duration, package_name, tags, is_favorite, sha256, upload_date, created_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)";

/// Row decoding, the users-then-files dump and the restore, per engine.
macro_rules! impl_snapshot_rows {
    ($store:ident, $row:ty, $conn:ty, tags_in = $tags_in:path, tags_out = $tags_out:path) => {
        impl $store {
            fn dump_user(row: &$row) -> Result<DumpUser, sqlx::Error> {
                Ok(DumpUser {
                    user_id: row.try_get("user_id")?,
                    max_bytes: row.try_get("max_bytes")?,
                    total_bytes: row.try_get("total_bytes")?,
                    file_count: row.try_get("file_count")?,
                    created_at: row.try_get("created_at")?,
                    updated_at: row.try_get("updated_at")?,
                })
            }

            fn dump_file(row: &$row) -> Result<DumpFile, sqlx::Error> {
                Ok(DumpFile {
                    id: row.try_get("id")?,
                    user_id: row.try_get("user_id")?,
                    file_name: row.try_get("file_name")?,
                    file_type: row.try_get("file_type")?,
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
                    created_at: row.try_get("created_at")?,
                })
            }

            /// Streams every user, then every file, from `conn` into `sink`.
            async fn dump_in(conn: &mut $conn, sink: &mut dyn SnapshotSink) -> MetaResult<()> {
                let mut rows = sqlx::query(USERS_SQL).fetch(&mut *conn);
                while let Some(r) = rows.try_next().await? {
                    sink.user(Self::dump_user(&r)?).await?;
                }
                drop(rows);
                let mut rows = sqlx::query(FILES_SQL).fetch(&mut *conn);
                while let Some(r) = rows.try_next().await? {
                    sink.file(Self::dump_file(&r)?).await?;
                }
                Ok(())
            }

            async fn restore_in(&self, src: &mut dyn RowSource) -> MetaResult<()> {
                let mut tx = self.begin_write().await.map_err(MetaError::from_sqlx)?;
                while let Some(u) = src.next_user().await? {
                    sqlx::query(INSERT_USER_SQL)
                        .bind(&u.user_id)
                        .bind(u.max_bytes)
                        .bind(u.created_at)
                        .bind(u.updated_at)
                        .execute(&mut *tx)
                        .await?;
                }
                while let Some(f) = src.next_file().await? {
                    sqlx::query(INSERT_FILE_SQL)
                        .bind(f.id)
                        .bind(&f.user_id)
                        .bind(&f.file_name)
                        .bind(&f.file_type)
                        .bind(&f.mime_type)
                        .bind(f.file_size)
                        .bind(&f.file_path)
                        .bind(&f.thumbnail_path)
                        .bind(&f.resolution)
                        .bind(&f.duration)
                        .bind(&f.package_name)
                        .bind($tags_in(&f.tags))
                        .bind(f.is_favorite)
                        .bind(&f.sha256)
                        .bind(f.upload_date)
                        .bind(f.created_at)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn has_files_in(&self) -> MetaResult<bool> {
                let row = sqlx::query(HAS_FILES_SQL)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(MetaError::from_sqlx)?;
                Ok(row.is_some())
            }
        }
    };
}

impl_snapshot_rows!(
    PgStore,
    PgRow,
    sqlx::PgConnection,
    tags_in = pg_tags_in,
    tags_out = pg_tags_out
);
impl_snapshot_rows!(
    SqliteStore,
    SqliteRow,
    sqlx::SqliteConnection,
    tags_in = sqlite_tags_in,
    tags_out = sqlite_tags_out
);

#[async_trait]
impl SnapshotStore for PgStore {
    async fn snapshot(
        &self,
        _scratch: &Path,
        sink: &mut dyn SnapshotSink,
    ) -> MetaResult<DateTime<Utc>> {
        let mut tx = self.pool.begin().await.map_err(MetaError::from_sqlx)?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
        // The snapshot is taken by the first query of the transaction.
        let at: DateTime<Utc> = sqlx::query("SELECT now() AS t")
            .fetch_one(&mut *tx)
            .await?
            .try_get("t")?;
        Self::dump_in(&mut tx, sink).await?;
        tx.commit().await?;
        Ok(at)
    }

    async fn has_files(&self) -> MetaResult<bool> {
        self.has_files_in().await
    }

    async fn restore_rows(&self, src: &mut dyn RowSource) -> MetaResult<()> {
        self.restore_in(src).await
    }
}

#[async_trait]
impl SnapshotStore for SqliteStore {
    async fn snapshot(
        &self,
        scratch: &Path,
        sink: &mut dyn SnapshotSink,
    ) -> MetaResult<DateTime<Utc>> {
        let copy = scratch.join("snapshot.sqlite3");
        let copy_str = copy
            .to_str()
            .ok_or_else(|| MetaError::Rows("scratch directory path is not UTF-8".into()))?
            .to_string();
        let at = self.now();
        sqlx::query("VACUUM INTO $1")
            .bind(&copy_str)
            .execute(&self.pool)
            .await
            .map_err(MetaError::from_sqlx)?;
        let opts = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&copy)
            .read_only(true);
        let mut conn = sqlx::SqliteConnection::connect_with(&opts).await?;
        let dumped = Self::dump_in(&mut conn, sink).await;
        conn.close().await?;
        let _ = tokio::fs::remove_file(&copy).await;
        dumped?;
        Ok(at)
    }

    async fn has_files(&self) -> MetaResult<bool> {
        self.has_files_in().await
    }

    async fn restore_rows(&self, src: &mut dyn RowSource) -> MetaResult<()> {
        self.restore_in(src).await
    }
}
