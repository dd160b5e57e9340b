//! Signed upload URLs ([`SignedUploadStore`], table `signed_uploads`), each
//! usable once: its use is taken by one conditional `UPDATE`, so of two
//! concurrent uses exactly one wins. The row's id is also its quota
//! reservation's and the id of the file it becomes.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::engine::{query, Row};
use super::SqlStore;
use crate::domain::filetype::FileType;
use crate::meta::{MetaResult, SignedClaim, SignedUpload, SignedUploadStore};

fn signed_from_row(r: &Row) -> Result<SignedUpload, sqlx::Error> {
    let ft: Option<String> = r.get("file_type")?;
    Ok(SignedUpload {
        id: r.get("id")?,
        user_id: r.get("user_id")?,
        max_bytes: r.get("max_bytes")?,
        file_type: ft.as_deref().and_then(FileType::parse),
        file_name: r.get("file_name")?,
        expires_at: r.get("expires_at")?,
    })
}

#[async_trait]
impl SignedUploadStore for SqlStore {
    async fn create_signed_upload(&self, up: &SignedUpload) -> MetaResult<()> {
        let s = self;
        query(
            "INSERT INTO signed_uploads (id, user_id, max_bytes, file_type, file_name, \
             expires_at, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(up.id)
        .bind(&up.user_id)
        .bind(up.max_bytes)
        .bind(up.file_type.map(|t| t.as_str()))
        .bind(&up.file_name)
        .bind(up.expires_at)
        .bind(s.now())
        .execute(s.db())
        .await?;
        Ok(())
    }

    async fn claim_signed_upload(&self, id: Uuid, now: DateTime<Utc>) -> MetaResult<SignedClaim> {
        let s = self;
        let tx = s.db().begin_write().await?;
        let taken = query(
            "UPDATE signed_uploads SET used_at = ? \
             WHERE id = ? AND used_at IS NULL AND expires_at >= ?",
        )
        .bind(now)
        .bind(id)
        .bind(now)
        .execute_one(tx)
        .await?;
        if let Some(mut tx) = taken {
            let r = query(
                "SELECT id, user_id, max_bytes, file_type, file_name, expires_at \
                 FROM signed_uploads WHERE id = ?",
            )
            .bind(id)
            .fetch_one(&mut tx)
            .await?;
            tx.commit().await?;
            return Ok(SignedClaim::Claimed(signed_from_row(&r)?));
        }
        let used = query(
            "SELECT 1 AS one FROM signed_uploads \
             WHERE id = ? AND used_at IS NOT NULL AND expires_at >= ?",
        )
        .bind(id)
        .bind(now)
        .fetch_optional(s.db())
        .await?;
        Ok(if used.is_some() {
            SignedClaim::Used
        } else {
            SignedClaim::Missing
        })
    }

    async fn expire_signed_uploads(&self, now: DateTime<Utc>) -> MetaResult<u64> {
        let s = self;
        Ok(query("DELETE FROM signed_uploads WHERE expires_at < ?")
            .bind(now)
            .execute(s.db())
            .await?)
    }
}
