//! Snapshot and restore of the rows a backup holds ([`SnapshotStore`]) on
//! MySQL: the rows are read inside one `REPEATABLE READ, READ ONLY`
//! transaction started `WITH CONSISTENT SNAPSHOT`, and come out as the same
//! [`DumpUser`] and [`DumpFile`] as on the other engines, so a backup of
//! any engine restores into any other. A restore writes every row in one
//! transaction (the triggers rebuild the counters).

use std::path::Path;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use sqlx::{mysql::MySqlRow, Connection, Row};

use super::{opt_text, tags_in, tags_out, text, MySqlStore};
use crate::meta::{
    DumpFile, DumpUser, MetaError, MetaResult, RowSource, SnapshotSink, SnapshotStore,
};

const USERS_SQL: &str =
    "SELECT user_id, max_bytes, total_bytes, CAST(file_count AS SIGNED) AS file_count, \
     created_at, updated_at FROM user_storage ORDER BY user_id";
const FILES_SQL: &str = "SELECT id, user_id, file_name, file_type, mime_type, file_size, file_path, \
     thumbnail_path, resolution, duration, package_name, tags, is_favorite, sha256, upload_date, created_at \
     FROM user_files ORDER BY user_id, id";

fn dump_user(row: &MySqlRow) -> Result<DumpUser, sqlx::Error> {
    Ok(DumpUser {
        user_id: text(row, "user_id")?,
        max_bytes: row.try_get("max_bytes")?,
        total_bytes: row.try_get("total_bytes")?,
        file_count: row.try_get("file_count")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn dump_file(row: &MySqlRow) -> Result<DumpFile, sqlx::Error> {
    Ok(DumpFile {
        id: row.try_get("id")?,
        user_id: text(row, "user_id")?,
        file_name: text(row, "file_name")?,
        file_type: text(row, "file_type")?,
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
        created_at: row.try_get("created_at")?,
    })
}

/// Streams every user, then every file, from `conn` into `sink`.
async fn dump_in(conn: &mut sqlx::MySqlConnection, sink: &mut dyn SnapshotSink) -> MetaResult<()> {
    let mut rows = sqlx::query(USERS_SQL).fetch(&mut *conn);
    while let Some(r) = rows.try_next().await? {
        sink.user(dump_user(&r)?).await?;
    }
    drop(rows);
    let mut rows = sqlx::query(FILES_SQL).fetch(&mut *conn);
    while let Some(r) = rows.try_next().await? {
        sink.file(dump_file(&r)?).await?;
    }
    Ok(())
}

#[async_trait]
impl SnapshotStore for MySqlStore {
    async fn snapshot(
        &self,
        _scratch: &Path,
        sink: &mut dyn SnapshotSink,
    ) -> MetaResult<DateTime<Utc>> {
        let mut pooled = self.pool.acquire().await.map_err(MetaError::from_sqlx)?;
        let conn: &mut sqlx::MySqlConnection = &mut pooled;
        // Applies to the next transaction only; the session stays at READ
        // COMMITTED afterwards.
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            .execute(&mut *conn)
            .await?;
        let mut tx = conn
            .begin_with("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
            .await?;
        let at: DateTime<Utc> = sqlx::query("SELECT UTC_TIMESTAMP(6) AS t")
            .fetch_one(&mut *tx)
            .await?
            .try_get("t")?;
        dump_in(&mut tx, sink).await?;
        tx.commit().await?;
        Ok(at)
    }

    async fn has_files(&self) -> MetaResult<bool> {
        let row = sqlx::query("SELECT 1 AS one FROM user_files LIMIT 1")
            .fetch_optional(&self.pool)
            .await
            .map_err(MetaError::from_sqlx)?;
        Ok(row.is_some())
    }

    async fn restore_rows(&self, src: &mut dyn RowSource) -> MetaResult<()> {
        let mut tx = self.begin_write().await.map_err(MetaError::from_sqlx)?;
        while let Some(u) = src.next_user().await? {
            // Counters start at zero: the triggers rebuild them from the files.
            sqlx::query(
                "INSERT INTO user_storage (user_id, max_bytes, total_bytes, reserved_bytes, file_count, \
                 created_at, updated_at) VALUES (?, ?, 0, 0, 0, ?, ?) \
                 ON DUPLICATE KEY UPDATE max_bytes = ?",
            )
            .bind(&u.user_id)
            .bind(u.max_bytes)
            .bind(u.created_at)
            .bind(u.updated_at)
            .bind(u.max_bytes)
            .execute(&mut *tx)
            .await?;
        }
        while let Some(f) = src.next_file().await? {
            sqlx::query(
                "INSERT INTO user_files (id, user_id, file_name, file_type, mime_type, file_size, file_path, \
                 thumbnail_path, resolution, duration, package_name, tags, is_favorite, sha256, upload_date, \
                 created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
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
            .bind(tags_in(&f.tags))
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
}
