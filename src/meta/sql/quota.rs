//! Quota reservations ([`QuotaStore`], table `upload_reservations`): the
//! room an upload in flight holds, taken, grown, touched, released and
//! expired.
//!
//! The quota invariant lives here: a reservation is granted by ONE
//! conditional `UPDATE` of the user row (`total_bytes + reserved_bytes + ?
//! <= max_bytes`) in the transaction that inserts the reservation. That
//! UPDATE holds the user row (PostgreSQL, MySQL) or the write lock (SQLite)
//! until commit, so concurrent reservations, in one process or many, take
//! turns and never pass the room together.
//!
//! Locks are taken in one order: a reservation row before its user's row
//! (release, growth, expiry); a reservation is only ever created under the
//! user row's lock, as a new row nobody else holds.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::commit::{release_in, room_in};
use super::engine::{query, Row, Tx};
use super::users::create_user_in;
use super::{plus, to_i64, SqlStore};
use crate::meta::{Holder, MetaError, MetaResult, QuotaStore};

/// Adds `bytes` to the user's `reserved_bytes` inside `tx` when they fit
/// the room: the one conditional UPDATE the quota rests on. False (and
/// nothing changed) when they do not fit.
async fn take_room_in(
    tx: &mut Tx,
    user_id: &str,
    bytes: u64,
    now: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    let granted = query(
        "UPDATE user_storage SET reserved_bytes = reserved_bytes + ?, updated_at = ? \
         WHERE user_id = ? AND total_bytes + reserved_bytes + ? <= max_bytes",
    )
    .bind(to_i64(bytes))
    .bind(now)
    .bind(user_id)
    .bind(to_i64(bytes))
    .execute(tx)
    .await?;
    Ok(granted == 1)
}

/// The user's live reservations at `now`, counted inside `tx`.
async fn live_reservations_in(
    tx: &mut Tx,
    user_id: &str,
    now: DateTime<Utc>,
) -> Result<u64, sqlx::Error> {
    let row = query(
        "SELECT CAST(COUNT(*) AS BIGINT) AS n FROM upload_reservations \
         WHERE user_id = ? AND expires_at >= ?",
    )
    .bind(user_id)
    .bind(now)
    .fetch_one(tx)
    .await?;
    Ok(row.get::<i64>("n")?.max(0) as u64)
}

/// `QuotaExceeded` for `needed` bytes, with the room left read inside `tx`
/// (which is then rolled back).
async fn exceeded(mut tx: Tx, user_id: &str, needed: u64) -> MetaResult<MetaError> {
    let available = room_in(&mut tx, user_id).await?;
    tx.rollback().await?;
    Ok(MetaError::QuotaExceeded { needed, available })
}

/// `(id, user_id)` of reservation rows.
pub(crate) fn id_user_pairs(rows: &[Row]) -> MetaResult<Vec<(Uuid, String)>> {
    rows.iter()
        .map(|r| Ok((r.get("id")?, r.get("user_id")?)))
        .collect::<Result<_, sqlx::Error>>()
        .map_err(MetaError::from)
}

#[async_trait]
impl QuotaStore for SqlStore {
    async fn reserve_upload(
        &self,
        user_id: &str,
        default_quota: u64,
        bytes: u64,
        ttl: Duration,
        max_unfinished: u64,
        holder: Option<Holder>,
    ) -> MetaResult<Uuid> {
        let s = self;
        let t = s.now();
        let mut tx = s.db().begin_write().await?;
        create_user_in(&mut tx, user_id, default_quota, t).await?;
        if !take_room_in(&mut tx, user_id, bytes, t).await? {
            return Err(exceeded(tx, user_id, bytes).await?);
        }
        // The UPDATE above holds the user row until commit, and at READ
        // COMMITTED (or under SQLite's write lock) this count sees every
        // reservation committed before it: none can slip in between the
        // count and the insert.
        if live_reservations_in(&mut tx, user_id, t).await? >= max_unfinished {
            tx.rollback().await?;
            return Err(MetaError::TooManyUploads {
                limit: max_unfinished,
            });
        }
        let id = Uuid::now_v7();
        query(
            "INSERT INTO upload_reservations (id, user_id, bytes, expires_at, created_at, \
             holder_node, holder_incarnation) VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(id)
        .bind(user_id)
        .bind(to_i64(bytes))
        .bind(plus(t, ttl))
        .bind(t)
        .bind(holder.map(|h| h.node))
        .bind(holder.map(|h| h.incarnation))
        .execute(&mut tx)
        .await?;
        tx.commit().await?;
        Ok(id)
    }

    async fn grow_reservation(&self, id: Uuid, extra: u64, ttl: Duration) -> MetaResult<()> {
        let s = self;
        let mut tx = s.db().begin_write().await?;
        let lock = s.engine().for_update();
        let row = query(format!(
            "SELECT user_id FROM upload_reservations WHERE id = ?{lock}"
        ))
        .bind(id)
        .fetch_optional(&mut tx)
        .await?;
        let Some(row) = row else {
            return Err(MetaError::NotFound);
        };
        let user_id: String = row.get("user_id")?;
        query("UPDATE upload_reservations SET bytes = bytes + ?, expires_at = ? WHERE id = ?")
            .bind(to_i64(extra))
            .bind(plus(s.now(), ttl))
            .bind(id)
            .execute(&mut tx)
            .await?;
        if !take_room_in(&mut tx, &user_id, extra, s.now()).await? {
            return Err(exceeded(tx, &user_id, extra).await?);
        }
        tx.commit().await?;
        Ok(())
    }

    async fn touch_reservation(&self, id: Uuid, ttl: Duration) -> MetaResult<()> {
        let s = self;
        let n = query("UPDATE upload_reservations SET expires_at = ? WHERE id = ?")
            .bind(plus(s.now(), ttl))
            .bind(id)
            .execute(s.db())
            .await?;
        if n == 0 {
            return Err(MetaError::NotFound);
        }
        Ok(())
    }

    async fn release(&self, id: Uuid) -> MetaResult<bool> {
        let s = self;
        let mut tx = s.db().begin_write().await?;
        let released = release_in(&mut tx, id).await?;
        tx.commit().await?;
        Ok(released)
    }

    async fn reservation_exists(&self, id: Uuid) -> MetaResult<bool> {
        Ok(self.reservation_bytes(id).await?.is_some())
    }

    async fn reservation_bytes(&self, id: Uuid) -> MetaResult<Option<u64>> {
        let s = self;
        let row = query("SELECT bytes FROM upload_reservations WHERE id = ?")
            .bind(id)
            .fetch_optional(s.db())
            .await?;
        match row {
            Some(r) => Ok(Some(r.get::<i64>("bytes")?.max(0) as u64)),
            None => Ok(None),
        }
    }

    async fn expired_reservations(&self, now: DateTime<Utc>) -> MetaResult<Vec<(Uuid, String)>> {
        let s = self;
        let rows = query("SELECT id, user_id FROM upload_reservations WHERE expires_at < ?")
            .bind(now)
            .fetch_all(s.db())
            .await?;
        id_user_pairs(&rows)
    }

    async fn expire_reservations(&self, now: DateTime<Utc>) -> MetaResult<u64> {
        let s = self;
        let mut tx = s.db().begin_write().await?;
        let lock = s.engine().for_update();
        let rows = query(format!(
            "SELECT id, user_id, bytes FROM upload_reservations WHERE expires_at < ?{lock}"
        ))
        .bind(now)
        .fetch_all(&mut tx)
        .await?;
        let mut released = 0;
        for r in &rows {
            let gone = query("DELETE FROM upload_reservations WHERE id = ?")
                .bind(r.get::<Uuid>("id")?)
                .execute(&mut tx)
                .await?;
            if gone == 0 {
                continue;
            }
            query("UPDATE user_storage SET reserved_bytes = reserved_bytes - ? WHERE user_id = ?")
                .bind(r.get::<i64>("bytes")?)
                .bind(r.get::<String>("user_id")?)
                .execute(&mut tx)
                .await?;
            released += 1;
        }
        tx.commit().await?;
        Ok(released)
    }
}
