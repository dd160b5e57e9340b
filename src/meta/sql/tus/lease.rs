//! The lease on a resumable upload: one request at a time appends to it.
//! A lease is `lock_owner` until `locked_until`; `takeover` is the marker a
//! later request sets to ask the holder to stop (see [`Takeover`]), and
//! `completing` shields a holder that is committing the file.
//!
//! Each change is one conditional `UPDATE` (atomic across processes: a
//! second writer waits for the row lock and then finds the condition
//! false), and its rows-affected count is the answer.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::super::engine::query;
use super::super::rows::{tus_from_row, TUS_COLS};
use super::super::SqlStore;
use super::LEASE_FREE;
use crate::meta::{LeaseCheck, MetaError, MetaResult, Takeover, TusHolder, TusLock, TusUpload};

/// See [`crate::meta::TusStore::lock_tus_upload`].
pub(super) async fn lock(
    s: &SqlStore,
    user_id: &str,
    id: Uuid,
    owner: Uuid,
    lease_until: DateTime<Utc>,
    expires_at: DateTime<Utc>,
) -> MetaResult<TusLock> {
    // A lease released between the UPDATE and the look at its holder: try
    // again (a few times; each is cheap).
    for _ in 0..3 {
        let t = s.now();
        if let Some(up) = take(s, user_id, id, owner, lease_until, expires_at, t).await? {
            return Ok(TusLock::Acquired(up));
        }
        let exists = query(
            "SELECT 1 AS one FROM tus_uploads WHERE id = ? AND user_id = ? AND expires_at > ?",
        )
        .bind(id)
        .bind(user_id)
        .bind(t)
        .fetch_optional(s.db())
        .await?;
        if exists.is_none() {
            return Ok(TusLock::Missing);
        }
        if let Some(h) = holder(s, id, t).await? {
            return Ok(TusLock::Busy(h));
        }
    }
    Err(MetaError::Conflict(
        "the upload's lease keeps changing hands".into(),
    ))
}

/// Takes the lease of the user's live upload `id` for `owner` if it is free
/// at `t`, clearing any takeover marker; the row as it is then.
async fn take(
    s: &SqlStore,
    user_id: &str,
    id: Uuid,
    owner: Uuid,
    lease_until: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    t: DateTime<Utc>,
) -> MetaResult<Option<TusUpload>> {
    let tx = s.db().begin_write().await?;
    let Some(mut tx) = query(format!(
        "UPDATE tus_uploads SET lock_owner = ?, locked_until = ?, expires_at = ?, \
           takeover = 0, completing = FALSE \
         WHERE id = ? AND user_id = ? AND expires_at > ? AND {LEASE_FREE}"
    ))
    .bind(owner)
    .bind(lease_until)
    .bind(expires_at)
    .bind(id)
    .bind(user_id)
    .bind(t)
    .bind(t)
    .execute_one(tx)
    .await?
    else {
        return Ok(None);
    };
    let row = query(format!("SELECT {TUS_COLS} FROM tus_uploads WHERE id = ?"))
        .bind(id)
        .fetch_one(&mut tx)
        .await?;
    let up = tus_from_row(&row)?;
    tx.commit().await?;
    Ok(Some(up))
}

/// The live lease holder of upload `id` at `t`, if any.
pub(super) async fn holder(
    s: &SqlStore,
    id: Uuid,
    t: DateTime<Utc>,
) -> MetaResult<Option<TusHolder>> {
    let row = query(
        "SELECT lock_owner, CAST(takeover AS BIGINT) AS takeover, completing FROM tus_uploads \
         WHERE id = ? AND lock_owner IS NOT NULL AND locked_until >= ?",
    )
    .bind(id)
    .bind(t)
    .fetch_optional(s.db())
    .await?;
    let Some(r) = row else { return Ok(None) };
    Ok(Some(TusHolder {
        owner: r.get("lock_owner")?,
        takeover: Takeover::from_i64(r.get("takeover")?),
        completing: r.get("completing")?,
    }))
}

/// See [`crate::meta::TusStore::request_tus_takeover`]. A marker already
/// set stays as it is (the row still counts as matched).
pub(super) async fn request_takeover(s: &SqlStore, id: Uuid, holder: Uuid) -> MetaResult<bool> {
    let n = query(
        "UPDATE tus_uploads SET takeover = CASE WHEN takeover = 0 THEN 1 ELSE takeover END \
         WHERE id = ? AND lock_owner = ? AND completing = FALSE",
    )
    .bind(id)
    .bind(holder)
    .execute(s.db())
    .await?;
    Ok(n == 1)
}

/// See [`crate::meta::TusStore::break_tus_lock`].
pub(super) async fn break_lock(
    s: &SqlStore,
    id: Uuid,
    holder: Uuid,
    now: DateTime<Utc>,
) -> MetaResult<bool> {
    let n = query(
        "UPDATE tus_uploads SET lock_owner = NULL, locked_until = NULL, takeover = 0, \
           completing = FALSE \
         WHERE id = ? AND lock_owner = ? AND (completing = FALSE OR locked_until < ?)",
    )
    .bind(id)
    .bind(holder)
    .bind(now)
    .execute(s.db())
    .await?;
    Ok(n == 1)
}

/// The holder's marker, read back (`None`: not the holder any more).
const MARKER_SQL: &str =
    "SELECT CAST(takeover AS BIGINT) AS takeover FROM tus_uploads WHERE id = ? AND lock_owner = ?";

/// See [`crate::meta::TusStore::check_tus_lock`].
pub(super) async fn check(
    s: &SqlStore,
    id: Uuid,
    owner: Uuid,
    renew_until: Option<DateTime<Utc>>,
) -> MetaResult<LeaseCheck> {
    let takeover = match renew_until {
        Some(until) => renew(s, id, owner, until).await?,
        None => look(s, id, owner).await?,
    };
    Ok(match takeover {
        None => LeaseCheck::Lost,
        Some(0) => LeaseCheck::Held,
        Some(_) => LeaseCheck::TakeoverRequested,
    })
}

/// Renews `owner`'s lease until `until`, acknowledging a takeover request;
/// the marker as it is then.
async fn renew(
    s: &SqlStore,
    id: Uuid,
    owner: Uuid,
    until: DateTime<Utc>,
) -> MetaResult<Option<i64>> {
    let tx = s.db().begin_write().await?;
    let Some(mut tx) = query(
        "UPDATE tus_uploads SET locked_until = ?, \
           takeover = CASE WHEN takeover = 1 THEN 2 ELSE takeover END \
         WHERE id = ? AND lock_owner = ?",
    )
    .bind(until)
    .bind(id)
    .bind(owner)
    .execute_one(tx)
    .await?
    else {
        return Ok(None);
    };
    let row = query(MARKER_SQL)
        .bind(id)
        .bind(owner)
        .fetch_optional(&mut tx)
        .await?;
    tx.commit().await?;
    Ok(row.map(|r| r.get::<i64>("takeover")).transpose()?)
}

/// Reads `owner`'s marker without renewing; a takeover request seen is
/// acknowledged. A read first: the common answer needs no write.
async fn look(s: &SqlStore, id: Uuid, owner: Uuid) -> MetaResult<Option<i64>> {
    let seen = query(MARKER_SQL)
        .bind(id)
        .bind(owner)
        .fetch_optional(s.db())
        .await?
        .map(|r| r.get::<i64>("takeover"))
        .transpose()?;
    if seen == Some(1) {
        query(
            "UPDATE tus_uploads SET takeover = 2 WHERE id = ? AND lock_owner = ? AND takeover = 1",
        )
        .bind(id)
        .bind(owner)
        .execute(s.db())
        .await?;
    }
    Ok(seen)
}

/// See [`crate::meta::TusStore::unlock_tus_upload`].
pub(super) async fn unlock(s: &SqlStore, id: Uuid, owner: Uuid) -> MetaResult<()> {
    query(
        "UPDATE tus_uploads SET lock_owner = NULL, locked_until = NULL, takeover = 0, \
           completing = FALSE \
         WHERE id = ? AND lock_owner = ?",
    )
    .bind(id)
    .bind(owner)
    .execute(s.db())
    .await?;
    Ok(())
}
