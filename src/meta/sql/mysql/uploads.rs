//! Signed upload URLs (single use): issue, the one conditional `UPDATE`
//! that takes a URL's use, expiry.

use chrono::{DateTime, Utc};
use sqlx::Row;
use uuid::Uuid;

use super::{opt_text, text, MySqlStore};
use crate::domain::filetype::FileType;
use crate::meta::{MetaError, MetaResult, SignedClaim, SignedUpload};

impl MySqlStore {
    pub(super) async fn insert_signed(&self, up: &SignedUpload) -> MetaResult<()> {
        sqlx::query(
            "INSERT INTO signed_uploads (id, user_id, max_bytes, file_type, file_name, expires_at, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
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

    pub(super) async fn claim_signed(
        &self,
        id: Uuid,
        at: DateTime<Utc>,
    ) -> MetaResult<SignedClaim> {
        let mut tx = self.begin_write().await.map_err(MetaError::from_sqlx)?;
        let n = sqlx::query(
            "UPDATE signed_uploads SET used_at = ? \
             WHERE id = ? AND used_at IS NULL AND expires_at >= ?",
        )
        .bind(at)
        .bind(id)
        .bind(at)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 1 {
            let r = sqlx::query(
                "SELECT id, user_id, max_bytes, file_type, file_name, expires_at FROM signed_uploads WHERE id = ?",
            )
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
            tx.commit().await?;
            let ft = opt_text(&r, "file_type")?;
            return Ok(SignedClaim::Claimed(SignedUpload {
                id: r.try_get("id")?,
                user_id: text(&r, "user_id")?,
                max_bytes: r.try_get("max_bytes")?,
                file_type: ft.as_deref().and_then(FileType::parse),
                file_name: opt_text(&r, "file_name")?,
                expires_at: r.try_get("expires_at")?,
            }));
        }
        tx.rollback().await?;
        let used = sqlx::query(
            "SELECT 1 AS one FROM signed_uploads WHERE id = ? AND used_at IS NOT NULL AND expires_at >= ?",
        )
        .bind(id)
        .bind(at)
        .fetch_optional(&self.pool)
        .await
        .map_err(MetaError::from_sqlx)?;
        Ok(if used.is_some() {
            SignedClaim::Used
        } else {
            SignedClaim::Missing
        })
    }

    pub(super) async fn expire_signed(&self, at: DateTime<Utc>) -> MetaResult<u64> {
        let n = sqlx::query("DELETE FROM signed_uploads WHERE expires_at < ?")
            .bind(at)
            .execute(&self.pool)
            .await
            .map_err(MetaError::from_sqlx)?
            .rows_affected();
        Ok(n)
    }
}
