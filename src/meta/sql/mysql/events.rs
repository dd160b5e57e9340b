//! The event outbox on MySQL ([`EventStore`]), and the two helpers every
//! change calls inside its transaction: recording its event and re-checking
//! the quota thresholds under the user row's lock.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{mysql::MySqlRow, Row};
use uuid::Uuid;

use super::{opt_text, text, MySqlStore, Tx};
use crate::meta::events::{crossed, threshold_level};
use crate::meta::{
    Event, EventCounts, EventQuery, EventStatus, EventStore, MetaError, MetaResult, NewEvent,
};

const EVENT_COLS: &str = "seq, id, event_type, user_id, created_at, body, status, \
     CAST(attempts AS SIGNED) AS attempts, next_attempt_at, queued_at, last_error, delivered_at";

fn event_from_row(row: &MySqlRow) -> Result<Event, sqlx::Error> {
    let status = text(row, "status")?;
    Ok(Event {
        seq: row.try_get("seq")?,
        id: row.try_get("id")?,
        event_type: text(row, "event_type")?,
        user_id: text(row, "user_id")?,
        created_at: row.try_get("created_at")?,
        body: text(row, "body")?,
        status: EventStatus::parse(&status).ok_or_else(|| {
            sqlx::Error::Decode(format!("unknown event status {status:?}").into())
        })?,
        attempts: row.try_get("attempts")?,
        next_attempt_at: row.try_get("next_attempt_at")?,
        queued_at: row.try_get("queued_at")?,
        last_error: opt_text(row, "last_error")?,
        delivered_at: row.try_get("delivered_at")?,
    })
}

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

#[async_trait]
impl EventStore for MySqlStore {
    async fn record_event(&self, ev: &NewEvent) -> MetaResult<Uuid> {
        let mut tx = self.pool().begin().await.map_err(MetaError::from_sqlx)?;
        let id = Self::record_event_in(&mut tx, ev).await?;
        tx.commit().await?;
        Ok(id)
    }

    async fn get_event(&self, id: Uuid) -> MetaResult<Option<Event>> {
        let sql = format!("SELECT {EVENT_COLS} FROM events WHERE id = ?");
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(self.pool())
            .await
            .map_err(MetaError::from_sqlx)?;
        Ok(row.map(|r| event_from_row(&r)).transpose()?)
    }

    async fn list_events(&self, q: &EventQuery) -> MetaResult<Vec<Event>> {
        let sql = format!(
            "SELECT {EVENT_COLS} FROM events \
             WHERE (? IS NULL OR event_type = ?) AND (? IS NULL OR status = ?) AND seq < ? \
             ORDER BY seq DESC LIMIT ?"
        );
        let event_type = q.event_type.map(|t| t.as_str());
        let status = q.status.map(|s| s.as_str());
        let rows = sqlx::query(&sql)
            .bind(event_type)
            .bind(event_type)
            .bind(status)
            .bind(status)
            .bind(q.before_seq.unwrap_or(i64::MAX))
            .bind(i64::from(q.limit))
            .fetch_all(self.pool())
            .await
            .map_err(MetaError::from_sqlx)?;
        Ok(rows.iter().map(event_from_row).collect::<Result<_, _>>()?)
    }

    async fn due_events(&self, at: DateTime<Utc>, limit: u32) -> MetaResult<Vec<Event>> {
        let sql = format!(
            "SELECT {EVENT_COLS} FROM events WHERE status = 'pending' AND next_attempt_at <= ? \
             ORDER BY seq LIMIT ?"
        );
        let rows = sqlx::query(&sql)
            .bind(at)
            .bind(i64::from(limit))
            .fetch_all(self.pool())
            .await
            .map_err(MetaError::from_sqlx)?;
        Ok(rows.iter().map(event_from_row).collect::<Result<_, _>>()?)
    }

    async fn next_due(&self) -> MetaResult<Option<DateTime<Utc>>> {
        let row = sqlx::query(
            "SELECT next_attempt_at FROM events WHERE status = 'pending' \
             ORDER BY next_attempt_at LIMIT 1",
        )
        .fetch_optional(self.pool())
        .await
        .map_err(MetaError::from_sqlx)?;
        Ok(row.map(|r| r.try_get("next_attempt_at")).transpose()?)
    }

    async fn mark_delivered(&self, id: Uuid, at: DateTime<Utc>) -> MetaResult<()> {
        sqlx::query(
            "UPDATE events SET status = 'delivered', attempts = attempts + 1, \
             delivered_at = ?, last_error = NULL WHERE id = ?",
        )
        .bind(at)
        .bind(id)
        .execute(self.pool())
        .await
        .map_err(MetaError::from_sqlx)?;
        Ok(())
    }

    async fn mark_attempt_failed(
        &self,
        id: Uuid,
        error: &str,
        retry_at: Option<DateTime<Utc>>,
    ) -> MetaResult<()> {
        let (status, next) = match retry_at {
            Some(t) => ("pending", t),
            None => ("failed", wall_now()),
        };
        sqlx::query(
            "UPDATE events SET status = ?, attempts = attempts + 1, next_attempt_at = ?, \
             last_error = ? WHERE id = ?",
        )
        .bind(status)
        .bind(next)
        .bind(error)
        .bind(id)
        .execute(self.pool())
        .await
        .map_err(MetaError::from_sqlx)?;
        Ok(())
    }

    async fn replay_event(&self, id: Uuid, at: DateTime<Utc>) -> MetaResult<bool> {
        let n = sqlx::query(
            "UPDATE events SET status = 'pending', attempts = 0, next_attempt_at = ?, \
             queued_at = ?, delivered_at = NULL WHERE id = ?",
        )
        .bind(at)
        .bind(at)
        .bind(id)
        .execute(self.pool())
        .await
        .map_err(MetaError::from_sqlx)?
        .rows_affected();
        Ok(n == 1)
    }

    async fn event_counts(&self) -> MetaResult<EventCounts> {
        let rows =
            sqlx::query("SELECT status, CAST(COUNT(*) AS SIGNED) AS n FROM events GROUP BY status")
                .fetch_all(self.pool())
                .await
                .map_err(MetaError::from_sqlx)?;
        let mut c = EventCounts::default();
        for r in rows {
            let n = r.try_get::<i64, _>("n")?.max(0) as u64;
            match EventStatus::parse(&text(&r, "status")?) {
                Some(EventStatus::Pending) => c.pending = n,
                Some(EventStatus::Delivered) => c.delivered = n,
                Some(EventStatus::Failed) => c.failed = n,
                None => {}
            }
        }
        Ok(c)
    }

    async fn prune_events(
        &self,
        delivered_before: DateTime<Utc>,
        any_before: Option<DateTime<Utc>>,
    ) -> MetaResult<u64> {
        let mut n = sqlx::query("DELETE FROM events WHERE status = 'delivered' AND created_at < ?")
            .bind(delivered_before)
            .execute(self.pool())
            .await
            .map_err(MetaError::from_sqlx)?
            .rows_affected();
        if let Some(t) = any_before {
            n += sqlx::query("DELETE FROM events WHERE created_at < ?")
                .bind(t)
                .execute(self.pool())
                .await
                .map_err(MetaError::from_sqlx)?
                .rows_affected();
        }
        Ok(n)
    }
}
