//! The event outbox's own table (`events`, [`EventStore`]): reading it for
//! the admin view and the webhook worker, and recording each delivery
//! attempt. A change records its event inside its own transaction with
//! [`outbox::record_event_in`]; see [`crate::meta::events`] for what the
//! events are.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::engine::{query, Row};
use super::{outbox, SqlStore};
use crate::meta::clock::{self, SystemClock};
use crate::meta::{Event, EventCounts, EventQuery, EventStatus, EventStore, MetaResult, NewEvent};

const EVENT_COLS: &str = "seq, id, event_type, user_id, created_at, body, status, \
     CAST(attempts AS BIGINT) AS attempts, next_attempt_at, queued_at, last_error, delivered_at";

fn event_from_row(row: &Row) -> Result<Event, sqlx::Error> {
    let status: String = row.get("status")?;
    Ok(Event {
        seq: row.get("seq")?,
        id: row.get("id")?,
        event_type: row.get("event_type")?,
        user_id: row.get("user_id")?,
        created_at: row.get("created_at")?,
        body: row.get("body")?,
        status: EventStatus::parse(&status).ok_or_else(|| {
            sqlx::Error::Decode(format!("unknown event status {status:?}").into())
        })?,
        attempts: row.get("attempts")?,
        next_attempt_at: row.get("next_attempt_at")?,
        queued_at: row.get("queued_at")?,
        last_error: row.get("last_error")?,
        delivered_at: row.get("delivered_at")?,
    })
}

fn events_from_rows(rows: &[Row]) -> MetaResult<Vec<Event>> {
    Ok(rows.iter().map(event_from_row).collect::<Result<_, _>>()?)
}

#[async_trait]
impl EventStore for SqlStore {
    async fn record_event(&self, ev: &NewEvent) -> MetaResult<Uuid> {
        let s = self;
        let mut tx = s.db().begin_write().await?;
        let id = outbox::record_event_in(&mut tx, ev).await?;
        tx.commit().await?;
        Ok(id)
    }

    async fn get_event(&self, id: Uuid) -> MetaResult<Option<Event>> {
        let s = self;
        let row = query(format!("SELECT {EVENT_COLS} FROM events WHERE id = ?"))
            .bind(id)
            .fetch_optional(s.db())
            .await?;
        Ok(row.map(|r| event_from_row(&r)).transpose()?)
    }

    async fn list_events(&self, q: &EventQuery) -> MetaResult<Vec<Event>> {
        let s = self;
        let event_type = q.event_type.map(|t| t.as_str());
        let status = q.status.map(|st| st.as_str());
        let rows = query(format!(
            "SELECT {EVENT_COLS} FROM events \
             WHERE (? IS NULL OR event_type = ?) AND (? IS NULL OR status = ?) AND seq < ? \
             ORDER BY seq DESC LIMIT ?"
        ))
        .bind(event_type)
        .bind(event_type)
        .bind(status)
        .bind(status)
        .bind(q.before_seq.unwrap_or(i64::MAX))
        .bind(i64::from(q.limit))
        .fetch_all(s.db())
        .await?;
        events_from_rows(&rows)
    }

    async fn due_events(&self, at: DateTime<Utc>, limit: u32) -> MetaResult<Vec<Event>> {
        let s = self;
        let rows = query(format!(
            "SELECT {EVENT_COLS} FROM events WHERE status = 'pending' AND next_attempt_at <= ? \
             ORDER BY seq LIMIT ?"
        ))
        .bind(at)
        .bind(i64::from(limit))
        .fetch_all(s.db())
        .await?;
        events_from_rows(&rows)
    }

    async fn next_due(&self) -> MetaResult<Option<DateTime<Utc>>> {
        let s = self;
        let row = query(
            "SELECT next_attempt_at FROM events WHERE status = 'pending' \
             ORDER BY next_attempt_at LIMIT 1",
        )
        .fetch_optional(s.db())
        .await?;
        Ok(row.map(|r| r.get("next_attempt_at")).transpose()?)
    }

    async fn mark_delivered(&self, id: Uuid, at: DateTime<Utc>) -> MetaResult<()> {
        let s = self;
        query(
            "UPDATE events SET status = 'delivered', attempts = attempts + 1, \
             delivered_at = ?, last_error = NULL WHERE id = ?",
        )
        .bind(at)
        .bind(id)
        .execute(s.db())
        .await?;
        Ok(())
    }

    async fn mark_attempt_failed(
        &self,
        id: Uuid,
        error: &str,
        retry_at: Option<DateTime<Utc>>,
    ) -> MetaResult<()> {
        let s = self;
        // Events carry wall-clock times (see `outbox`), not the store's.
        let (status, next) = match retry_at {
            Some(t) => ("pending", t),
            None => ("failed", clock::micros(&SystemClock)),
        };
        query(
            "UPDATE events SET status = ?, attempts = attempts + 1, next_attempt_at = ?, \
             last_error = ? WHERE id = ?",
        )
        .bind(status)
        .bind(next)
        .bind(error)
        .bind(id)
        .execute(s.db())
        .await?;
        Ok(())
    }

    async fn replay_event(&self, id: Uuid, at: DateTime<Utc>) -> MetaResult<Option<Event>> {
        let s = self;
        let tx = s.db().begin_write().await?;
        let Some(mut tx) = query(
            "UPDATE events SET status = 'pending', attempts = 0, next_attempt_at = ?, \
             queued_at = ?, delivered_at = NULL WHERE id = ?",
        )
        .bind(at)
        .bind(at)
        .bind(id)
        .execute_one(tx)
        .await?
        else {
            return Ok(None);
        };
        // Read back before the commit: a delivery worker woken by the
        // requeue may deliver it the moment it is visible.
        let row = query(format!("SELECT {EVENT_COLS} FROM events WHERE id = ?"))
            .bind(id)
            .fetch_one(&mut tx)
            .await?;
        let ev = event_from_row(&row)?;
        tx.commit().await?;
        Ok(Some(ev))
    }

    async fn event_counts(&self) -> MetaResult<EventCounts> {
        let s = self;
        let rows =
            query("SELECT status, CAST(COUNT(*) AS BIGINT) AS n FROM events GROUP BY status")
                .fetch_all(s.db())
                .await?;
        let mut c = EventCounts::default();
        for r in rows {
            let n = r.get::<i64>("n")?.max(0) as u64;
            match EventStatus::parse(&r.get::<String>("status")?) {
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
        let s = self;
        let mut n = query("DELETE FROM events WHERE status = 'delivered' AND created_at < ?")
            .bind(delivered_before)
            .execute(s.db())
            .await?;
        if let Some(t) = any_before {
            n += query("DELETE FROM events WHERE created_at < ?")
                .bind(t)
                .execute(s.db())
                .await?;
        }
        Ok(n)
    }
}
