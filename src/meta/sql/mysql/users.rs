//! User rows: creation, quota, deletion, and the counters the triggers
//! keep (with the audit's row sums and repair).

use sqlx::Row;

use super::super::to_i64;
use super::{file_from_row, text, user_from_row, MySqlStore, USER_COLS};
use crate::meta::{DeletedUser, MetaError, MetaResult, NewEvent, UserStorage, USER_SCOPED_TABLES};

/// Creates the user row if it is missing. `ON DUPLICATE KEY UPDATE` (not
/// `INSERT IGNORE`, which would turn a too-long id into a truncated one)
/// with a no-op assignment; on an existing row it takes the row's exclusive
/// lock, never a shared one that two transactions could both hold and then
/// both try to upgrade.
pub(super) const CREATE_USER_SQL: &str =
    "INSERT INTO user_storage (user_id, max_bytes, created_at, updated_at) VALUES (?, ?, ?, ?) \
     ON DUPLICATE KEY UPDATE user_id = user_id";

impl MySqlStore {
    pub(super) async fn ensure_user_row(
        &self,
        user_id: &str,
        default_quota: u64,
    ) -> MetaResult<UserStorage> {
        let t = self.now();
        sqlx::query(CREATE_USER_SQL)
            .bind(user_id)
            .bind(to_i64(default_quota))
            .bind(t)
            .bind(t)
            .execute(&self.pool)
            .await
            .map_err(MetaError::from_sqlx)?;
        self.user_row(user_id).await?.ok_or(MetaError::NotFound)
    }

    pub(super) async fn user_row(&self, user_id: &str) -> MetaResult<Option<UserStorage>> {
        let sql = format!("SELECT {USER_COLS} FROM user_storage WHERE user_id = ?");
        let row = sqlx::query(&sql)
            .bind(user_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(MetaError::from_sqlx)?;
        Ok(row.map(|r| user_from_row(&r)).transpose()?)
    }

    pub(super) async fn user_rows(&self) -> MetaResult<Vec<UserStorage>> {
        let sql = format!("SELECT {USER_COLS} FROM user_storage ORDER BY user_id");
        let rows = sqlx::query(&sql)
            .fetch_all(&self.pool)
            .await
            .map_err(MetaError::from_sqlx)?;
        Ok(rows.iter().map(user_from_row).collect::<Result<_, _>>()?)
    }

    pub(super) async fn set_user_quota(
        &self,
        user_id: &str,
        max_bytes: u64,
    ) -> MetaResult<UserStorage> {
        let t = self.now();
        let mut tx = self.begin_write().await.map_err(MetaError::from_sqlx)?;
        sqlx::query(
            "INSERT INTO user_storage (user_id, max_bytes, created_at, updated_at) VALUES (?, ?, ?, ?) \
             ON DUPLICATE KEY UPDATE max_bytes = ?, updated_at = ?",
        )
        .bind(user_id)
        .bind(to_i64(max_bytes))
        .bind(t)
        .bind(t)
        .bind(to_i64(max_bytes))
        .bind(t)
        .execute(&mut *tx)
        .await?;
        // A lower quota can carry usage past a threshold.
        Self::check_threshold_in(&mut tx, user_id).await?;
        let sql = format!("SELECT {USER_COLS} FROM user_storage WHERE user_id = ?");
        let row = sqlx::query(&sql).bind(user_id).fetch_one(&mut *tx).await?;
        tx.commit().await?;
        Ok(user_from_row(&row)?)
    }

    pub(super) async fn delete_user_rows(&self, user_id: &str) -> MetaResult<Option<DeletedUser>> {
        let mut tx = self.begin_write().await.map_err(MetaError::from_sqlx)?;
        // The user row first: concurrent uploads of this user wait here.
        let touched = sqlx::query("UPDATE user_storage SET updated_at = ? WHERE user_id = ?")
            .bind(self.now())
            .bind(user_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if touched == 0 {
            return Ok(None);
        }
        let sql = format!(
            "SELECT {} FROM user_files WHERE user_id = ? FOR UPDATE",
            super::super::FILE_COLS
        );
        let rows = sqlx::query(&sql).bind(user_id).fetch_all(&mut *tx).await?;
        sqlx::query("DELETE FROM user_files WHERE user_id = ?")
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        let mut out = DeletedUser::default();
        for r in &rows {
            let rec = file_from_row(r)?;
            // One `file.deleted` per file, like a delete of each.
            Self::record_event_in(&mut tx, &NewEvent::file_deleted(&rec, "user_deleted")).await?;
            out.files += 1;
            out.bytes += rec.file_size.max(0) as u64;
            out.blob_keys.push(rec.file_path);
            out.blob_keys.extend(rec.thumbnail_path);
        }
        for table in USER_SCOPED_TABLES {
            let sql = format!("DELETE FROM {table} WHERE user_id = ?");
            sqlx::query(&sql).bind(user_id).execute(&mut *tx).await?;
        }
        sqlx::query("DELETE FROM user_storage WHERE user_id = ?")
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(out))
    }

    pub(super) async fn totals(&self) -> MetaResult<Vec<(String, i64, i64)>> {
        let rows = sqlx::query(
            "SELECT s.user_id AS user_id, CAST(COALESCE(SUM(f.file_size), 0) AS SIGNED) AS bytes, \
             CAST(COUNT(f.id) AS SIGNED) AS n \
             FROM user_storage s LEFT JOIN user_files f ON f.user_id = s.user_id \
             GROUP BY s.user_id ORDER BY s.user_id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(MetaError::from_sqlx)?;
        rows.iter()
            .map(|r| Ok((text(r, "user_id")?, r.try_get("bytes")?, r.try_get("n")?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(MetaError::from)
    }

    /// Sets every counter that differs to its row sums, computed once per
    /// table in derived tables joined to the user rows.
    pub(super) async fn repair(&self) -> MetaResult<u64> {
        let n = sqlx::query(
            "UPDATE user_storage s \
             LEFT JOIN (SELECT user_id, CAST(SUM(file_size) AS SIGNED) AS bytes, COUNT(*) AS n \
                        FROM user_files GROUP BY user_id) f ON f.user_id = s.user_id \
             LEFT JOIN (SELECT user_id, CAST(SUM(bytes) AS SIGNED) AS bytes \
                        FROM upload_reservations GROUP BY user_id) r ON r.user_id = s.user_id \
             SET s.total_bytes = COALESCE(f.bytes, 0), s.file_count = COALESCE(f.n, 0), \
                 s.reserved_bytes = COALESCE(r.bytes, 0) \
             WHERE s.total_bytes <> COALESCE(f.bytes, 0) OR s.file_count <> COALESCE(f.n, 0) \
                OR s.reserved_bytes <> COALESCE(r.bytes, 0)",
        )
        .execute(&self.pool)
        .await
        .map_err(MetaError::from_sqlx)?
        .rows_affected();
        Ok(n)
    }
}
