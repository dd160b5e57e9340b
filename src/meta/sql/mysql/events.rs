//! Transitional: the two in-transaction outbox steps over the MySQL store's
//! own sqlx transactions, for the concerns here not yet written over
//! `sql::engine`; `sql::outbox` is the one to use, and this module goes
//! when its last caller has.

use chrono::{DateTime, Utc};
use sqlx::Row;
use uuid::Uuid;

use super::{MySqlStore, Tx};
use crate::meta::events::{crossed, threshold_level};
use crate::meta::NewEvent;

impl MySqlStore {
    /// Records `ev` inside `tx`, so it commits (or rolls back) with the
    /// change it describes; returns the event's id.
    pub(crate) async fn record_event_in(tx: &mut Tx, ev: &NewEvent) -> Result<Uuid, sqlx::Error> {
        let id = Uuid::now_v7();
        let t = wall_now();
        sqlx::query(
            "INSERT INTO events (id, event_type, user_id, created_at, body, status, \
             attempts, next_attempt_at, queued_at) VALUES (?, ?, ?, ?, ?, 'pending', 0, ?, ?)",
        )
        .bind(id)
        .bind(ev.event_type.as_str())
        .bind(&ev.user_id)
        .bind(t)
        .bind(ev.body(id, t))
        .bind(t)
        .bind(t)
        .execute(&mut **tx)
        .await?;
        Ok(id)
    }

    /// Compares the user's usage with `last_threshold` and records a
    /// `quota.threshold` per threshold crossed upwards; a drop below re-arms
    /// the lower ones. The caller has already written (so locked) the
    /// user's row in `tx`: concurrent changes see each other's
    /// `last_threshold`.
    pub(crate) async fn check_threshold_in(tx: &mut Tx, user_id: &str) -> Result<(), sqlx::Error> {
        let Some(row) = sqlx::query(
            "SELECT total_bytes, max_bytes, CAST(last_threshold AS SIGNED) AS last_threshold \
             FROM user_storage WHERE user_id = ?",
        )
        .bind(user_id)
        .fetch_optional(&mut **tx)
        .await?
        else {
            return Ok(());
        };
        let total: i64 = row.try_get("total_bytes")?;
        let max: i64 = row.try_get("max_bytes")?;
        let last: i64 = row.try_get("last_threshold")?;
        let level = threshold_level(total, max);
        if level == last {
            return Ok(());
        }
        sqlx::query("UPDATE user_storage SET last_threshold = ? WHERE user_id = ?")
            .bind(level as i32)
            .bind(user_id)
            .execute(&mut **tx)
            .await?;
        for p in crossed(last, level) {
            Self::record_event_in(tx, &NewEvent::quota_threshold(user_id, p, total, max)).await?;
        }
        Ok(())
    }
}

/// Now, at microsecond precision (events carry wall-clock times, as on the
/// other engines).
fn wall_now() -> DateTime<Utc> {
    let n = Utc::now();
    DateTime::from_timestamp_micros(n.timestamp_micros()).unwrap_or(n)
}
