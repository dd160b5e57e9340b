//! Quota reservations, the file commit that turns one into a file row, and
//! the process registry that lets a dead holder's reservations go at once.
//!
//! Locks are taken in one order: a reservation row before its user's row
//! (release, growth, commit, expiry); a reservation is only ever created
//! under the user row's lock, as a new row nobody else holds.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::Row;
use uuid::Uuid;

use super::super::{plus, to_i64};
use super::users::CREATE_USER_SQL;
use super::{id_user_pairs, text, MySqlStore, Tx};
use crate::meta::{FileRecord, Gone, Holder, MetaError, MetaResult, NewEvent, NewFile, NodeRow};

impl MySqlStore {
    pub(super) async fn take_reservation(
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
        sqlx::query(CREATE_USER_SQL)
            .bind(user_id)
            .bind(to_i64(default_quota))
            .bind(t)
            .bind(t)
            .execute(&mut *tx)
            .await?;
        let granted = sqlx::query(
            "UPDATE user_storage SET reserved_bytes = reserved_bytes + ?, updated_at = ? \
             WHERE user_id = ? AND total_bytes + reserved_bytes + ? <= max_bytes",
        )
        .bind(to_i64(bytes))
        .bind(t)
        .bind(user_id)
        .bind(to_i64(bytes))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if granted == 0 {
            let available = Self::room_in(&mut tx, user_id).await?;
            tx.rollback().await?;
            return Err(MetaError::QuotaExceeded {
                needed: bytes,
                available,
            });
        }
        // The UPDATE above holds the user row until commit, and at READ
        // COMMITTED this count sees every reservation committed before it:
        // none can slip in between the count and the insert.
        let open: i64 = sqlx::query_scalar(
            "SELECT CAST(COUNT(*) AS SIGNED) FROM upload_reservations \
             WHERE user_id = ? AND expires_at >= ?",
        )
        .bind(user_id)
        .bind(t)
        .fetch_one(&mut *tx)
        .await?;
        if open as u64 >= max_unfinished {
            tx.rollback().await?;
            return Err(MetaError::TooManyUploads {
                limit: max_unfinished,
            });
        }
        let id = Uuid::now_v7();
        sqlx::query(
            "INSERT INTO upload_reservations (id, user_id, bytes, expires_at, created_at, \
             holder_node, holder_incarnation) VALUES (?, ?, ?, ?, ?, ?, ?)",
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

    pub(super) async fn grow(&self, id: Uuid, extra: u64, ttl: Duration) -> MetaResult<()> {
        let mut tx = self.begin_write().await.map_err(MetaError::from_sqlx)?;
        let row = sqlx::query("SELECT user_id FROM upload_reservations WHERE id = ? FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else {
            return Err(MetaError::NotFound);
        };
        let user_id = text(&row, "user_id")?;
        sqlx::query(
            "UPDATE upload_reservations SET bytes = bytes + ?, expires_at = ? WHERE id = ?",
        )
        .bind(to_i64(extra))
        .bind(plus(self.now(), ttl))
        .bind(id)
        .execute(&mut *tx)
        .await?;
        let granted = sqlx::query(
            "UPDATE user_storage SET reserved_bytes = reserved_bytes + ? \
             WHERE user_id = ? AND total_bytes + reserved_bytes + ? <= max_bytes",
        )
        .bind(to_i64(extra))
        .bind(&user_id)
        .bind(to_i64(extra))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if granted == 0 {
            let available = Self::room_in(&mut tx, &user_id).await?;
            tx.rollback().await?;
            return Err(MetaError::QuotaExceeded {
                needed: extra,
                available,
            });
        }
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn touch(&self, id: Uuid, ttl: Duration) -> MetaResult<()> {
        let n = sqlx::query("UPDATE upload_reservations SET expires_at = ? WHERE id = ?")
            .bind(plus(self.now(), ttl))
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(MetaError::from_sqlx)?
            .rows_affected();
        if n == 0 {
            return Err(MetaError::NotFound);
        }
        Ok(())
    }

    pub(super) async fn release_one(&self, id: Uuid) -> MetaResult<bool> {
        let mut tx = self.begin_write().await.map_err(MetaError::from_sqlx)?;
        let released = Self::release_in(&mut tx, id).await?;
        tx.commit().await?;
        Ok(released)
    }

    pub(super) async fn reservation_bytes_of(&self, id: Uuid) -> MetaResult<Option<u64>> {
        let row = sqlx::query("SELECT bytes FROM upload_reservations WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(MetaError::from_sqlx)?;
        match row {
            Some(r) => Ok(Some(r.try_get::<i64, _>("bytes")?.max(0) as u64)),
            None => Ok(None),
        }
    }

    pub(super) async fn expired(&self, at: DateTime<Utc>) -> MetaResult<Vec<(Uuid, String)>> {
        let rows = sqlx::query("SELECT id, user_id FROM upload_reservations WHERE expires_at < ?")
            .bind(at)
            .fetch_all(&self.pool)
            .await
            .map_err(MetaError::from_sqlx)?;
        id_user_pairs(&rows)
    }

    pub(super) async fn expire(&self, at: DateTime<Utc>) -> MetaResult<u64> {
        let mut tx = self.begin_write().await.map_err(MetaError::from_sqlx)?;
        let rows = sqlx::query(
            "SELECT id, user_id, bytes FROM upload_reservations WHERE expires_at < ? FOR UPDATE",
        )
        .bind(at)
        .fetch_all(&mut *tx)
        .await?;
        for r in &rows {
            let id: Uuid = r.try_get("id")?;
            sqlx::query("DELETE FROM upload_reservations WHERE id = ?")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            Self::give_back(&mut tx, &text(r, "user_id")?, r.try_get("bytes")?).await?;
        }
        tx.commit().await?;
        Ok(rows.len() as u64)
    }

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

    /// The room `user` has left, for a `QuotaExceeded` answer.
    async fn room_in(tx: &mut Tx, user: &str) -> Result<u64, sqlx::Error> {
        let row = sqlx::query(
            "SELECT max_bytes - total_bytes - reserved_bytes AS room FROM user_storage WHERE user_id = ?",
        )
        .bind(user)
        .fetch_one(&mut **tx)
        .await?;
        Ok(row.try_get::<i64, _>("room")?.max(0) as u64)
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
                .user_row(&f.user_id)
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

    pub(super) async fn heartbeat(&self, n: &NodeRow) -> MetaResult<()> {
        sqlx::query(
            "INSERT INTO nodes (incarnation_id, node_id, host, pid, started_at, heartbeat_at) \
             VALUES (?, ?, ?, ?, ?, ?) ON DUPLICATE KEY UPDATE heartbeat_at = ?",
        )
        .bind(n.holder.incarnation)
        .bind(n.holder.node)
        .bind(&n.host)
        .bind(n.pid)
        .bind(n.started_at)
        .bind(n.heartbeat_at)
        .bind(n.heartbeat_at)
        .execute(&self.pool)
        .await
        .map_err(MetaError::from_sqlx)?;
        Ok(())
    }

    pub(super) async fn remove_incarnation(&self, incarnation: Uuid) -> MetaResult<()> {
        sqlx::query("DELETE FROM nodes WHERE incarnation_id = ?")
            .bind(incarnation)
            .execute(&self.pool)
            .await
            .map_err(MetaError::from_sqlx)?;
        Ok(())
    }

    pub(super) async fn nodes(&self) -> MetaResult<Vec<NodeRow>> {
        let rows = sqlx::query(
            "SELECT incarnation_id, node_id, host, pid, started_at, heartbeat_at \
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
                    host: text(r, "host")?,
                    pid: r.try_get("pid")?,
                    started_at: r.try_get("started_at")?,
                    heartbeat_at: r.try_get("heartbeat_at")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(MetaError::from)
    }

    pub(super) async fn held_by_gone(&self, gone: &Gone) -> MetaResult<Vec<(Uuid, String)>> {
        let rows = match *gone {
            // No incarnation has the nil id, so `except: None` spares none.
            Gone::Node { node, except } => {
                sqlx::query(
                    "SELECT id, user_id FROM upload_reservations \
                     WHERE holder_node = ? AND holder_incarnation IS NOT NULL AND holder_incarnation <> ?",
                )
                .bind(node)
                .bind(except.unwrap_or(Uuid::nil()))
                .fetch_all(&self.pool)
                .await
            }
            Gone::SilentSince(t) => {
                sqlx::query(
                    "SELECT id, user_id FROM upload_reservations r \
                     WHERE r.holder_incarnation IS NOT NULL AND NOT EXISTS ( \
                       SELECT 1 FROM nodes n \
                       WHERE n.incarnation_id = r.holder_incarnation AND n.heartbeat_at >= ?)",
                )
                .bind(t)
                .fetch_all(&self.pool)
                .await
            }
        }
        .map_err(MetaError::from_sqlx)?;
        id_user_pairs(&rows)
    }

    pub(super) async fn forget(&self, gone: &Gone) -> MetaResult<u64> {
        let n = match *gone {
            Gone::Node { node, except } => {
                sqlx::query("DELETE FROM nodes WHERE node_id = ? AND incarnation_id <> ?")
                    .bind(node)
                    .bind(except.unwrap_or(Uuid::nil()))
                    .execute(&self.pool)
                    .await
            }
            Gone::SilentSince(t) => {
                sqlx::query("DELETE FROM nodes WHERE heartbeat_at < ?")
                    .bind(t)
                    .execute(&self.pool)
                    .await
            }
        }
        .map_err(MetaError::from_sqlx)?
        .rows_affected();
        Ok(n)
    }
}
