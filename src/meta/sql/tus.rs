//! Resumable uploads ([`TusStore`]): the `tus_uploads` rows that tus and the
//! IETF draft share, written once for every engine. The lease statements
//! (who may append, takeover, renewal) are in [`lease`]; this module keeps
//! the rows themselves: creation, progress, a length learned late, the
//! one-transaction completion, termination and expiry.
//!
//! Every change that decides a race between processes is one conditional
//! statement whose rows-affected count says who won; where the row is
//! wanted back it is read in the same transaction (MySQL has no
//! `RETURNING`).

mod lease;

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::commit::insert_file_in;
use super::engine::query;
use super::rows::{tus_from_row, TUS_COLS};
use super::{plus, to_i64, SqlStore};
use crate::meta::{
    FileRecord, LeaseCheck, MetaError, MetaResult, NewFile, Takeover, TusHolder, TusLock,
    TusProgress, TusRecorded, TusStore, TusUpload,
};

/// The lease of an upload is free at the bound time: never taken, given up,
/// or run out.
const LEASE_FREE: &str = "(lock_owner IS NULL OR locked_until IS NULL OR locked_until < ?)";

#[async_trait]
impl TusStore for SqlStore {
    async fn create_tus_upload(
        &self,
        up: &TusUpload,
        lock: Option<(Uuid, DateTime<Utc>)>,
    ) -> MetaResult<()> {
        let s = self;
        query(
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
        .execute(s.db())
        .await?;
        Ok(())
    }

    async fn get_tus_upload(
        &self,
        user_id: &str,
        id: Uuid,
        now: DateTime<Utc>,
    ) -> MetaResult<Option<TusUpload>> {
        let s = self;
        let row = query(format!(
            "SELECT {TUS_COLS} FROM tus_uploads WHERE id = ? AND user_id = ? AND expires_at > ?"
        ))
        .bind(id)
        .bind(user_id)
        .bind(now)
        .fetch_optional(s.db())
        .await?;
        Ok(row.map(|r| tus_from_row(&r)).transpose()?)
    }

    async fn lock_tus_upload(
        &self,
        user_id: &str,
        id: Uuid,
        owner: Uuid,
        lease_until: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> MetaResult<TusLock> {
        let s = self;
        lease::lock(s, user_id, id, owner, lease_until, expires_at).await
    }

    async fn tus_holder(&self, id: Uuid, now: DateTime<Utc>) -> MetaResult<Option<TusHolder>> {
        let s = self;
        lease::holder(s, id, now).await
    }

    async fn request_tus_takeover(&self, id: Uuid, holder: Uuid) -> MetaResult<bool> {
        let s = self;
        lease::request_takeover(s, id, holder).await
    }

    async fn break_tus_lock(&self, id: Uuid, holder: Uuid, now: DateTime<Utc>) -> MetaResult<bool> {
        let s = self;
        lease::break_lock(s, id, holder, now).await
    }

    async fn check_tus_lock(
        &self,
        id: Uuid,
        owner: Uuid,
        renew_until: Option<DateTime<Utc>>,
    ) -> MetaResult<LeaseCheck> {
        let s = self;
        lease::check(s, id, owner, renew_until).await
    }

    async fn record_tus_progress(
        &self,
        id: Uuid,
        owner: Uuid,
        p: &TusProgress,
        reservation_ttl: Duration,
        release: bool,
    ) -> MetaResult<TusRecorded> {
        debug_assert!(
            !(release && p.completing),
            "a holder that goes on to complete keeps its lease"
        );
        let s = self;
        let tx = s.db().begin_write().await?;
        // The row first, under the lease (its rows-affected count decides;
        // a lost lease rolls back and changes nothing); giving the lease up
        // is the same statement, as `lease::unlock` writes it.
        let unlock = if release {
            ", lock_owner = NULL, locked_until = NULL, takeover = 0"
        } else {
            ""
        };
        let Some(mut tx) = query(format!(
            "UPDATE tus_uploads SET upload_offset = ?, hash_state = ?, expires_at = ?, \
             completing = ?{unlock} WHERE id = ? AND lock_owner = ?"
        ))
        .bind(to_i64(p.offset))
        .bind(&p.hash_state)
        .bind(p.expires_at)
        .bind(p.completing)
        .bind(id)
        .bind(owner)
        .execute_one(tx)
        .await?
        else {
            return Ok(TusRecorded::Lost);
        };
        let n = query("UPDATE upload_reservations SET expires_at = ? WHERE id = ?")
            .bind(plus(s.now(), reservation_ttl))
            .bind(id)
            .execute(&mut tx)
            .await?;
        tx.commit().await?;
        Ok(if n == 0 {
            TusRecorded::NoReservation
        } else {
            TusRecorded::Recorded
        })
    }

    async fn set_tus_length(
        &self,
        id: Uuid,
        owner: Uuid,
        length: u64,
        metadata: &str,
    ) -> MetaResult<bool> {
        let s = self;
        let n = query(
            "UPDATE tus_uploads SET upload_length = ?, metadata = ? \
             WHERE id = ? AND lock_owner = ?",
        )
        .bind(to_i64(length))
        .bind(metadata)
        .bind(id)
        .bind(owner)
        .execute(s.db())
        .await?;
        Ok(n == 1)
    }

    async fn unlock_tus_upload(&self, id: Uuid, owner: Uuid) -> MetaResult<()> {
        let s = self;
        lease::unlock(s, id, owner).await
    }

    async fn finish_tus_upload(&self, id: Uuid, owner: Uuid) -> MetaResult<bool> {
        let s = self;
        let n = query("DELETE FROM tus_uploads WHERE id = ? AND lock_owner = ?")
            .bind(id)
            .bind(owner)
            .execute(s.db())
            .await?;
        Ok(n == 1)
    }

    async fn complete_tus_upload(&self, owner: Uuid, file: NewFile) -> MetaResult<FileRecord> {
        let s = self;
        let tx = s.db().begin_write().await?;
        // The row goes first, under the lease: of two completions of one
        // upload only the lease holder's gets past this line.
        let Some(mut tx) = query("DELETE FROM tus_uploads WHERE id = ? AND lock_owner = ?")
            .bind(file.id)
            .bind(owner)
            .execute_one(tx)
            .await?
        else {
            return Err(MetaError::Conflict(
                "this request no longer holds the upload's lease".into(),
            ));
        };
        // The upload's id is its reservation's. On an error the dropped
        // transaction rolls back, the row's deletion with the rest.
        let reservation = file.id;
        let rec = insert_file_in(&mut tx, s.now(), reservation, file).await?;
        tx.commit().await?;
        Ok(rec)
    }

    async fn terminate_tus_upload(
        &self,
        user_id: &str,
        id: Uuid,
        now: DateTime<Utc>,
    ) -> MetaResult<TusLock> {
        let s = self;
        if let Some(up) = delete_unleased(s, user_id, id, now).await? {
            return Ok(TusLock::Acquired(up));
        }
        let exists = query("SELECT 1 AS one FROM tus_uploads WHERE id = ? AND user_id = ?")
            .bind(id)
            .bind(user_id)
            .fetch_optional(s.db())
            .await?;
        if exists.is_none() {
            return Ok(TusLock::Missing);
        }
        Ok(match lease::holder(s, id, now).await? {
            Some(h) => TusLock::Busy(h),
            // Released in between: the caller tries again.
            None => TusLock::Busy(TusHolder {
                owner: Uuid::nil(),
                takeover: Takeover::None,
                completing: false,
            }),
        })
    }

    async fn expire_tus_uploads(&self, now: DateTime<Utc>) -> MetaResult<Vec<Uuid>> {
        let s = self;
        let lock = s.engine().for_update();
        let mut tx = s.db().begin_write().await?;
        // The expired, unleased rows are locked first, then deleted one by
        // one: a single conditional DELETE could also take a row whose
        // lease was given up meanwhile, and its id would not be returned.
        let rows = query(format!(
            "SELECT id FROM tus_uploads WHERE expires_at < ? AND {LEASE_FREE}{lock}"
        ))
        .bind(now)
        .bind(now)
        .fetch_all(&mut tx)
        .await?;
        let mut ids = Vec::with_capacity(rows.len());
        for r in &rows {
            let id: Uuid = r.get("id")?;
            query("DELETE FROM tus_uploads WHERE id = ?")
                .bind(id)
                .execute(&mut tx)
                .await?;
            ids.push(id);
        }
        tx.commit().await?;
        Ok(ids)
    }
}

/// Deletes the user's upload `id` unless a live lease is held on it at
/// `now`; the row as it was when it is deleted. The row is locked by the
/// read (SQLite: the writer holds the database), and the DELETE repeats the
/// condition so that its rows-affected count decides.
async fn delete_unleased(
    s: &SqlStore,
    user_id: &str,
    id: Uuid,
    now: DateTime<Utc>,
) -> MetaResult<Option<TusUpload>> {
    let lock = s.engine().for_update();
    let mut tx = s.db().begin_write().await?;
    let row = query(format!(
        "SELECT {TUS_COLS} FROM tus_uploads WHERE id = ? AND user_id = ? AND {LEASE_FREE}{lock}"
    ))
    .bind(id)
    .bind(user_id)
    .bind(now)
    .fetch_optional(&mut tx)
    .await?;
    let Some(row) = row else {
        tx.rollback().await?;
        return Ok(None);
    };
    let Some(tx) = query(format!(
        "DELETE FROM tus_uploads WHERE id = ? AND user_id = ? AND {LEASE_FREE}"
    ))
    .bind(id)
    .bind(user_id)
    .bind(now)
    .execute_one(tx)
    .await?
    else {
        return Ok(None);
    };
    let up = tus_from_row(&row)?;
    tx.commit().await?;
    Ok(Some(up))
}
