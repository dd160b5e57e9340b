//! The two steps every change of a user's files or usage takes inside its
//! own transaction, written once for every engine: recording its event in
//! the outbox (`events`), and re-checking the quota thresholds under the
//! user row's lock. See [`crate::meta::events`] for what the events are.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::engine::{query, Tx};
use crate::meta::events::{crossed, threshold_level};
use crate::meta::NewEvent;

/// Now, at microsecond precision. Events carry wall-clock times: their
/// `created_at` is what a webhook receiver is told, not a deadline the
/// store computes (those come from the store's clock).
fn wall_now() -> DateTime<Utc> {
    let n = Utc::now();
    DateTime::from_timestamp_micros(n.timestamp_micros()).unwrap_or(n)
}

/// Records `ev` inside `tx`, so it commits (or rolls back) with the change
/// it describes; returns the event's id.
pub(crate) async fn record_event_in(tx: &mut Tx, ev: &NewEvent) -> Result<Uuid, sqlx::Error> {
    let id = Uuid::now_v7();
    let t = wall_now();
    query(
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
    .execute(tx)
    .await?;
    Ok(id)
}

/// Compares the user's usage with `last_threshold` and records a
/// `quota.threshold` per threshold crossed upwards; a drop below re-arms the
/// lower ones. The caller must already have written the user's
/// `user_storage` row in `tx` (so it holds the row's lock, or SQLite's write
/// lock): concurrent changes then see each other's `last_threshold`.
pub(crate) async fn check_threshold_in(tx: &mut Tx, user_id: &str) -> Result<(), sqlx::Error> {
    let Some(row) = query(
        "SELECT total_bytes, max_bytes, CAST(last_threshold AS BIGINT) AS last_threshold \
         FROM user_storage WHERE user_id = ?",
    )
    .bind(user_id)
    .fetch_optional(&mut *tx)
    .await?
    else {
        return Ok(());
    };
    let total: i64 = row.get("total_bytes")?;
    let max: i64 = row.get("max_bytes")?;
    let last: i64 = row.get("last_threshold")?;
    let level = threshold_level(total, max);
    if level == last {
        return Ok(());
    }
    query("UPDATE user_storage SET last_threshold = ? WHERE user_id = ?")
        .bind(level as i32)
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
    for p in crossed(last, level) {
        record_event_in(tx, &NewEvent::quota_threshold(user_id, p, total, max)).await?;
    }
    Ok(())
}
