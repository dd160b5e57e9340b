//! Upload sessions: tus uploads with their lease, takeover marker and
//! one-transaction completion (signed upload URLs are `sql::signed`'s).
//!
//! Each lease change is one conditional `UPDATE` (atomic across processes:
//! a second writer waits for the row lock and then finds the condition
//! false); where the row is wanted back it is read in the same transaction.

use chrono::{DateTime, Utc};
use sqlx::Row;
use uuid::Uuid;

use super::super::{to_i64, TUS_COLS};
use super::{tus_from_row, MySqlStore};
use crate::meta::{
    FileRecord, LeaseCheck, MetaError, MetaResult, NewFile, Takeover, TusHolder, TusLock,
    TusProgress, TusUpload,
};

/// The lease of a tus upload is free at the bound time.
const LEASE_FREE: &str = "(lock_owner IS NULL OR locked_until IS NULL OR locked_until < ?)";

impl MySqlStore {
    pub(super) async fn insert_tus(
        &self,
        up: &TusUpload,
        lock: Option<(Uuid, DateTime<Utc>)>,
    ) -> MetaResult<()> {
        sqlx::query(
            "INSERT INTO tus_uploads (id, user_id, upload_length, upload_offset, metadata, \
             lock_owner, locked_until, expires_at, created_at, hash_state) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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

    pub(super) async fn tus(
        &self,
        user_id: &str,
        id: Uuid,
        at: DateTime<Utc>,
    ) -> MetaResult<Option<TusUpload>> {
        let sql = format!(
            "SELECT {TUS_COLS} FROM tus_uploads WHERE id = ? AND user_id = ? AND expires_at > ?"
        );
        let row = sqlx::query(&sql)
            .bind(id)
            .bind(user_id)
            .bind(at)
            .fetch_optional(&self.pool)
            .await
            .map_err(MetaError::from_sqlx)?;
        Ok(row.map(|r| tus_from_row(&r)).transpose()?)
    }

    pub(super) async fn lock_tus(
        &self,
        user_id: &str,
        id: Uuid,
        owner: Uuid,
        lease_until: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> MetaResult<TusLock> {
        let update = format!(
            "UPDATE tus_uploads SET lock_owner = ?, locked_until = ?, expires_at = ?, \
               takeover = 0, completing = FALSE \
             WHERE id = ? AND user_id = ? AND expires_at > ? AND {LEASE_FREE}"
        );
        let read = format!("SELECT {TUS_COLS} FROM tus_uploads WHERE id = ?");
        // A lease released between the UPDATE and the look at its holder:
        // try again (a few times; each is cheap).
        for _ in 0..3 {
            let t = self.now();
            let mut tx = self.begin_write().await.map_err(MetaError::from_sqlx)?;
            let n = sqlx::query(&update)
                .bind(owner)
                .bind(lease_until)
                .bind(expires_at)
                .bind(id)
                .bind(user_id)
                .bind(t)
                .bind(t)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n == 1 {
                let row = sqlx::query(&read).bind(id).fetch_one(&mut *tx).await?;
                tx.commit().await?;
                return Ok(TusLock::Acquired(tus_from_row(&row)?));
            }
            tx.rollback().await?;
            let exists = sqlx::query(
                "SELECT 1 AS one FROM tus_uploads WHERE id = ? AND user_id = ? AND expires_at > ?",
            )
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
        Err(MetaError::Conflict(
            "the upload's lease keeps changing hands".into(),
        ))
    }

    /// The live lease holder of tus upload `id` at `t`.
    pub(super) async fn holder_of(
        &self,
        id: Uuid,
        t: DateTime<Utc>,
    ) -> MetaResult<Option<TusHolder>> {
        let row = sqlx::query(
            "SELECT lock_owner, CAST(takeover AS SIGNED) AS takeover, completing FROM tus_uploads \
             WHERE id = ? AND lock_owner IS NOT NULL AND locked_until >= ?",
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

    pub(super) async fn request_takeover(&self, id: Uuid, holder: Uuid) -> MetaResult<bool> {
        let n = sqlx::query(
            "UPDATE tus_uploads SET takeover = CASE WHEN takeover = 0 THEN 1 ELSE takeover END \
             WHERE id = ? AND lock_owner = ? AND completing = FALSE",
        )
        .bind(id)
        .bind(holder)
        .execute(&self.pool)
        .await
        .map_err(MetaError::from_sqlx)?
        .rows_affected();
        Ok(n == 1)
    }

    pub(super) async fn break_lock(
        &self,
        id: Uuid,
        holder: Uuid,
        at: DateTime<Utc>,
    ) -> MetaResult<bool> {
        let n = sqlx::query(
            "UPDATE tus_uploads SET lock_owner = NULL, locked_until = NULL, takeover = 0, completing = FALSE \
             WHERE id = ? AND lock_owner = ? AND (completing = FALSE OR locked_until < ?)",
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

    pub(super) async fn check_lock(
        &self,
        id: Uuid,
        owner: Uuid,
        renew_until: Option<DateTime<Utc>>,
    ) -> MetaResult<LeaseCheck> {
        let read =
            "SELECT CAST(takeover AS SIGNED) FROM tus_uploads WHERE id = ? AND lock_owner = ?";
        let takeover: Option<i64> = match renew_until {
            Some(until) => {
                let mut tx = self.begin_write().await.map_err(MetaError::from_sqlx)?;
                let n = sqlx::query(
                    "UPDATE tus_uploads SET locked_until = ?, \
                       takeover = CASE WHEN takeover = 1 THEN 2 ELSE takeover END \
                     WHERE id = ? AND lock_owner = ?",
                )
                .bind(until)
                .bind(id)
                .bind(owner)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                let seen = if n == 1 {
                    sqlx::query_scalar(read)
                        .bind(id)
                        .bind(owner)
                        .fetch_optional(&mut *tx)
                        .await?
                } else {
                    None
                };
                tx.commit().await?;
                seen
            }
            None => {
                // A read first: the common answer needs no write.
                let seen: Option<i64> = sqlx::query_scalar(read)
                    .bind(id)
                    .bind(owner)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(MetaError::from_sqlx)?;
                if seen == Some(1) {
                    sqlx::query(
                        "UPDATE tus_uploads SET takeover = 2 WHERE id = ? AND lock_owner = ? AND takeover = 1",
                    )
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

    pub(super) async fn set_offset(
        &self,
        id: Uuid,
        owner: Uuid,
        p: &TusProgress,
    ) -> MetaResult<bool> {
        let n = sqlx::query(
            "UPDATE tus_uploads SET upload_offset = ?, hash_state = ?, expires_at = ?, completing = ? \
             WHERE id = ? AND lock_owner = ?",
        )
        .bind(to_i64(p.offset))
        .bind(&p.hash_state)
        .bind(p.expires_at)
        .bind(p.completing)
        .bind(id)
        .bind(owner)
        .execute(&self.pool)
        .await
        .map_err(MetaError::from_sqlx)?
        .rows_affected();
        Ok(n == 1)
    }

    pub(super) async fn set_length(
        &self,
        id: Uuid,
        owner: Uuid,
        length: u64,
        metadata: &str,
    ) -> MetaResult<bool> {
        let n = sqlx::query(
            "UPDATE tus_uploads SET upload_length = ?, metadata = ? WHERE id = ? AND lock_owner = ?",
        )
        .bind(to_i64(length))
        .bind(metadata)
        .bind(id)
        .bind(owner)
        .execute(&self.pool)
        .await
        .map_err(MetaError::from_sqlx)?
        .rows_affected();
        Ok(n == 1)
    }

    pub(super) async fn unlock(&self, id: Uuid, owner: Uuid) -> MetaResult<()> {
        sqlx::query(
            "UPDATE tus_uploads SET lock_owner = NULL, locked_until = NULL, takeover = 0, completing = FALSE \
             WHERE id = ? AND lock_owner = ?",
        )
        .bind(id)
        .bind(owner)
        .execute(&self.pool)
        .await
        .map_err(MetaError::from_sqlx)?;
        Ok(())
    }

    pub(super) async fn finish(&self, id: Uuid, owner: Uuid) -> MetaResult<bool> {
        let n = sqlx::query("DELETE FROM tus_uploads WHERE id = ? AND lock_owner = ?")
            .bind(id)
            .bind(owner)
            .execute(&self.pool)
            .await
            .map_err(MetaError::from_sqlx)?
            .rows_affected();
        Ok(n == 1)
    }

    pub(super) async fn complete_tus(&self, owner: Uuid, f: NewFile) -> MetaResult<FileRecord> {
        let mut tx = self.begin_write().await.map_err(MetaError::from_sqlx)?;
        // The row goes first, under the lease: of two completions of one
        // upload only the lease holder's gets past this line.
        let gone = sqlx::query("DELETE FROM tus_uploads WHERE id = ? AND lock_owner = ?")
            .bind(f.id)
            .bind(owner)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if gone != 1 {
            tx.rollback().await?;
            return Err(MetaError::Conflict(
                "this request no longer holds the upload's lease".into(),
            ));
        }
        let reservation = f.id;
        self.commit_file_in(tx, reservation, f).await
    }

    pub(super) async fn terminate(
        &self,
        user_id: &str,
        id: Uuid,
        at: DateTime<Utc>,
    ) -> MetaResult<TusLock> {
        let sql = format!(
            "SELECT {TUS_COLS} FROM tus_uploads WHERE id = ? AND user_id = ? AND {LEASE_FREE} FOR UPDATE"
        );
        let mut tx = self.begin_write().await.map_err(MetaError::from_sqlx)?;
        let row = sqlx::query(&sql)
            .bind(id)
            .bind(user_id)
            .bind(at)
            .fetch_optional(&mut *tx)
            .await?;
        if let Some(r) = row {
            sqlx::query("DELETE FROM tus_uploads WHERE id = ?")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            return Ok(TusLock::Acquired(tus_from_row(&r)?));
        }
        tx.rollback().await?;
        let exists = sqlx::query("SELECT 1 AS one FROM tus_uploads WHERE id = ? AND user_id = ?")
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
            None => TusLock::Busy(TusHolder {
                owner: Uuid::nil(),
                takeover: Takeover::None,
                completing: false,
            }),
        })
    }

    pub(super) async fn expire_tus(&self, at: DateTime<Utc>) -> MetaResult<Vec<Uuid>> {
        let sql =
            format!("SELECT id FROM tus_uploads WHERE expires_at < ? AND {LEASE_FREE} FOR UPDATE");
        let mut tx = self.begin_write().await.map_err(MetaError::from_sqlx)?;
        let rows = sqlx::query(&sql)
            .bind(at)
            .bind(at)
            .fetch_all(&mut *tx)
            .await?;
        let mut ids = Vec::with_capacity(rows.len());
        for r in &rows {
            let id: Uuid = r.try_get("id")?;
            sqlx::query("DELETE FROM tus_uploads WHERE id = ?")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            ids.push(id);
        }
        tx.commit().await?;
        Ok(ids)
    }
}
