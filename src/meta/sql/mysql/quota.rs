//! The file commit that turns a reservation into a file row (the
//! reservations themselves are `sql::quota`'s).
//!
//! Locks are taken in one order: a reservation row before its user's row.

use sqlx::Row;
use uuid::Uuid;

use super::{text, MySqlStore, Tx};
use crate::meta::{FileRecord, MetaError, MetaResult, NewEvent, NewFile, UserStore};

impl MySqlStore {
    /// Deletes reservation `id` and hands its bytes back to its user, inside
    /// `tx`. True when this call released it: the row is locked first, so
    /// of two concurrent releases the second finds it gone.
    pub(super) async fn release_in(tx: &mut Tx, id: Uuid) -> Result<bool, sqlx::Error> {
        let row =
            sqlx::query("SELECT user_id, bytes FROM upload_reservations WHERE id = ? FOR UPDATE")
                .bind(id)
                .fetch_optional(&mut **tx)
                .await?;
        let Some(row) = row else {
            return Ok(false);
        };
        sqlx::query("DELETE FROM upload_reservations WHERE id = ?")
            .bind(id)
            .execute(&mut **tx)
            .await?;
        Self::give_back(tx, &text(&row, "user_id")?, row.try_get("bytes")?).await?;
        Ok(true)
    }

    /// Lowers `reserved_bytes` of `user` by `bytes`.
    async fn give_back(tx: &mut Tx, user: &str, bytes: i64) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE user_storage SET reserved_bytes = reserved_bytes - ? WHERE user_id = ?",
        )
        .bind(bytes)
        .bind(user)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Inserts file row `f` and releases `reservation` inside `tx`, then
    /// commits; see [`crate::meta::FileStore::commit_file`].
    pub(super) async fn commit_file_in(
        &self,
        mut tx: Tx,
        reservation: Uuid,
        f: NewFile,
    ) -> MetaResult<FileRecord> {
        let t = self.now();
        Self::release_in(&mut tx, reservation).await?;
        // With the reservation handed back, the file must fit; this also
        // covers a reservation that expired while the upload ran.
        let fits = sqlx::query(
            "UPDATE user_storage SET updated_at = ? \
             WHERE user_id = ? AND total_bytes + reserved_bytes + ? <= max_bytes",
        )
        .bind(t)
        .bind(&f.user_id)
        .bind(f.file_size)
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
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, FALSE, ?, ?, ?)",
        )
        .bind(f.id)
        .bind(&f.user_id)
        .bind(&f.file_name)
        .bind(f.file_type.as_str())
        .bind(&f.mime_type)
        .bind(f.file_size)
        .bind(&f.file_path)
        .bind(&f.package_name)
        .bind(super::tags_in(&f.tags))
        .bind(&f.sha256)
        .bind(t)
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
        // The `fits` UPDATE above holds the user row until commit, so
        // concurrent commits take turns here.
        Self::check_threshold_in(&mut tx, &rec.user_id).await?;
        tx.commit().await?;
        Ok(rec)
    }
}
