//! The event outbox (SPEC §11): what happened, recorded in the same
//! transaction as the change itself, for the webhook worker
//! ([`crate::jobs::webhooks`]) to deliver at least once.
//!
//! A store operation that changes something calls
//! `Self::record_event_in(&mut tx, &NewEvent::…)` inside its open
//! transaction, so the event exists exactly when the change committed.
//! Refusals that change nothing (`upload.failed`) go through
//! [`EventStore::record_event`], one insert of their own.
//!
//! `quota.threshold` is decided here too: `user_storage.last_threshold`
//! remembers the highest threshold reached, and every change of
//! `total_bytes` or `max_bytes` compares it with the new usage while it
//! holds the user row's lock (PostgreSQL) or the write lock (SQLite), so
//! however many uploads cross 80 % at once, one of them records the event.

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sqlx::{postgres::PgRow, sqlite::SqliteRow, Row};
use uuid::Uuid;

use super::{FileRecord, FileView, MetaError, MetaResult, PgStore, SqliteStore};

/// The event types of SPEC §11 (their names on the wire are fixed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventType {
    #[serde(rename = "file.created")]
    FileCreated,
    #[serde(rename = "file.updated")]
    FileUpdated,
    #[serde(rename = "file.deleted")]
    FileDeleted,
    #[serde(rename = "upload.failed")]
    UploadFailed,
    #[serde(rename = "media.ready")]
    MediaReady,
    #[serde(rename = "media.failed")]
    MediaFailed,
    #[serde(rename = "quota.threshold")]
    QuotaThreshold,
}

impl EventType {
    pub const ALL: [EventType; 7] = [
        EventType::FileCreated,
        EventType::FileUpdated,
        EventType::FileDeleted,
        EventType::UploadFailed,
        EventType::MediaReady,
        EventType::MediaFailed,
        EventType::QuotaThreshold,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::FileCreated => "file.created",
            EventType::FileUpdated => "file.updated",
            EventType::FileDeleted => "file.deleted",
            EventType::UploadFailed => "upload.failed",
            EventType::MediaReady => "media.ready",
            EventType::MediaFailed => "media.failed",
            EventType::QuotaThreshold => "quota.threshold",
        }
    }

    pub fn parse(s: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// Where an event is in its delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventStatus {
    /// Not yet delivered (or no webhook is configured).
    Pending,
    /// A 2xx answer was received.
    Delivered,
    /// Retries were given up after the retry window.
    Failed,
}

impl EventStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            EventStatus::Pending => "pending",
            EventStatus::Delivered => "delivered",
            EventStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<EventStatus> {
        match s {
            "pending" => Some(EventStatus::Pending),
            "delivered" => Some(EventStatus::Delivered),
            "failed" => Some(EventStatus::Failed),
            _ => None,
        }
    }
}

/// The quota thresholds, percent, that `quota.threshold` reports.
pub const THRESHOLDS: [i64; 3] = [80, 95, 100];

/// The highest threshold `total` of `max` has reached (0 for none). A
/// quota of 0 holding nothing has reached none.
pub fn threshold_level(total: i64, max: i64) -> i64 {
    if total <= 0 {
        return 0;
    }
    if max <= 0 {
        return 100;
    }
    THRESHOLDS
        .into_iter()
        .filter(|p| i128::from(total) * 100 >= i128::from(*p) * i128::from(max))
        .max()
        .unwrap_or(0)
}

/// The thresholds crossed upwards when the level goes from `last` to `now`.
pub fn crossed(last: i64, now: i64) -> impl Iterator<Item = i64> {
    THRESHOLDS
        .into_iter()
        .filter(move |p| *p > last && *p <= now)
}

/// An event about to be recorded.
#[derive(Clone, Debug)]
pub struct NewEvent {
    pub event_type: EventType,
    pub user_id: String,
    pub data: Value,
}

impl NewEvent {
    /// `file.created`: an upload (multipart or tus) committed.
    pub fn file_created(rec: &FileRecord) -> NewEvent {
        Self::about_file(EventType::FileCreated, rec, json!({}))
    }

    /// `file.updated`: `changed` names the fields that were set.
    pub fn file_updated(rec: &FileRecord, changed: &[&str]) -> NewEvent {
        Self::about_file(EventType::FileUpdated, rec, json!({ "changed": changed }))
    }

    /// `file.deleted`; `reason` is `deleted` (the file's own delete) or
    /// `user_deleted` (the admin removed the whole user).
    pub fn file_deleted(rec: &FileRecord, reason: &str) -> NewEvent {
        Self::about_file(EventType::FileDeleted, rec, json!({ "reason": reason }))
    }

    /// `media.ready`: thumbnail and media facts are known (`file` shows them).
    pub fn media_ready(rec: &FileRecord) -> NewEvent {
        Self::about_file(EventType::MediaReady, rec, json!({}))
    }

    /// `media.failed`: the media job gave up; the file itself is fine.
    pub fn media_failed(rec: &FileRecord, reason: &str) -> NewEvent {
        Self::about_file(EventType::MediaFailed, rec, json!({ "reason": reason }))
    }

    /// `upload.failed`: an upload that had started was refused. `reason` is
    /// the error code the client got (`quota_exceeded`, …).
    pub fn upload_failed(
        user_id: &str,
        upload_id: Uuid,
        reason: &str,
        file_name: Option<&str>,
        message: &str,
    ) -> NewEvent {
        NewEvent {
            event_type: EventType::UploadFailed,
            user_id: user_id.to_string(),
            data: json!({
                "reason": reason,
                "upload_id": upload_id.to_string(),
                "file_name": file_name,
                "message": message,
            }),
        }
    }

    /// `quota.threshold`: usage reached `percent` of the quota.
    pub fn quota_threshold(user_id: &str, percent: i64, total: i64, max: i64) -> NewEvent {
        NewEvent {
            event_type: EventType::QuotaThreshold,
            user_id: user_id.to_string(),
            data: json!({ "percent": percent, "total_bytes": total, "max_bytes": max }),
        }
    }

    /// `data` = `{"file": File, …extra}`.
    fn about_file(event_type: EventType, rec: &FileRecord, extra: Value) -> NewEvent {
        let mut data = json!({ "file": FileView::from(rec) });
        if let (Some(d), Value::Object(x)) = (data.as_object_mut(), extra) {
            d.extend(x);
        }
        NewEvent {
            event_type,
            user_id: rec.user_id.clone(),
            data,
        }
    }

    /// The JSON sent for this event: `{"id","type","created_at","user_id","data"}`.
    pub fn body(&self, id: Uuid, created_at: DateTime<Utc>) -> String {
        json!({
            "id": id.to_string(),
            "type": self.event_type.as_str(),
            "created_at": created_at.to_rfc3339_opts(SecondsFormat::Micros, true),
            "user_id": self.user_id,
            "data": self.data,
        })
        .to_string()
    }
}

/// A recorded event with its delivery state.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// Creation order (the paging key).
    pub seq: i64,
    pub id: Uuid,
    pub event_type: String,
    pub user_id: String,
    pub created_at: DateTime<Utc>,
    /// The exact JSON sent to the webhook.
    pub body: String,
    pub status: EventStatus,
    pub attempts: i64,
    pub next_attempt_at: DateTime<Utc>,
    /// Start of the retry window (creation or the last replay).
    pub queued_at: DateTime<Utc>,
    pub last_error: Option<String>,
    pub delivered_at: Option<DateTime<Utc>>,
}

impl Event {
    /// The admin view: the event JSON plus its delivery state.
    pub fn to_json(&self) -> Value {
        let mut v: Value = serde_json::from_str(&self.body).unwrap_or_else(|_| json!({}));
        if let Some(o) = v.as_object_mut() {
            o.insert("status".into(), json!(self.status));
            o.insert("attempts".into(), json!(self.attempts));
            o.insert("last_error".into(), json!(self.last_error));
            o.insert(
                "next_attempt_at".into(),
                json!((self.status == EventStatus::Pending).then(|| self
                    .next_attempt_at
                    .to_rfc3339_opts(SecondsFormat::Millis, true))),
            );
            o.insert(
                "delivered_at".into(),
                json!(self
                    .delivered_at
                    .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))),
            );
        }
        v
    }
}

/// Filters and page for [`EventStore::list_events`], newest first.
#[derive(Clone, Debug, Default)]
pub struct EventQuery {
    pub event_type: Option<EventType>,
    pub status: Option<EventStatus>,
    /// Only events older than this `seq` (the previous page's last).
    pub before_seq: Option<i64>,
    pub limit: u32,
}

/// Events per delivery state, for `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct EventCounts {
    pub pending: u64,
    pub delivered: u64,
    pub failed: u64,
}

/// The outbox, one transaction per call.
#[async_trait]
pub trait EventStore: Send + Sync {
    /// Records an event that goes with no change of its own (a refused
    /// upload), in a transaction of its own.
    async fn record_event(&self, ev: &NewEvent) -> MetaResult<Uuid>;
    async fn get_event(&self, id: Uuid) -> MetaResult<Option<Event>>;
    async fn list_events(&self, q: &EventQuery) -> MetaResult<Vec<Event>>;
    /// Pending events due at `now`, oldest first.
    async fn due_events(&self, now: DateTime<Utc>, limit: u32) -> MetaResult<Vec<Event>>;
    /// The earliest `next_attempt_at` among pending events.
    async fn next_due(&self) -> MetaResult<Option<DateTime<Utc>>>;
    /// Records a 2xx answer.
    async fn mark_delivered(&self, id: Uuid, at: DateTime<Utc>) -> MetaResult<()>;
    /// Records a failed attempt: due again at `retry_at`, or failed for good
    /// when `None`.
    async fn mark_attempt_failed(
        &self,
        id: Uuid,
        error: &str,
        retry_at: Option<DateTime<Utc>>,
    ) -> MetaResult<()>;
    /// Puts one event back in the queue (due now, a fresh retry window);
    /// false when there is no such event.
    async fn replay_event(&self, id: Uuid, now: DateTime<Utc>) -> MetaResult<bool>;
    async fn event_counts(&self) -> MetaResult<EventCounts>;
    /// Deletes delivered events created before `delivered_before`, and,
    /// with `any_before`, every event created before it; returns how many.
    async fn prune_events(
        &self,
        delivered_before: DateTime<Utc>,
        any_before: Option<DateTime<Utc>>,
    ) -> MetaResult<u64>;
}

const EVENT_COLS: &str = "seq, id, event_type, user_id, created_at, body, status, \
     CAST(attempts AS BIGINT) AS attempts, next_attempt_at, queued_at, last_error, delivered_at";

/// Now, at the microsecond precision both engines keep.
fn now() -> DateTime<Utc> {
    let n = Utc::now();
    DateTime::from_timestamp_micros(n.timestamp_micros()).unwrap_or(n)
}

macro_rules! impl_events {
    ($store:ident, $db:ty, $row:ty) => {
        impl $store {
            fn event_from_row(row: &$row) -> Result<Event, sqlx::Error> {
                let status: String = row.try_get("status")?;
                Ok(Event {
                    seq: row.try_get("seq")?,
                    id: row.try_get("id")?,
                    event_type: row.try_get("event_type")?,
                    user_id: row.try_get("user_id")?,
                    created_at: row.try_get("created_at")?,
                    body: row.try_get("body")?,
                    status: EventStatus::parse(&status).ok_or_else(|| {
                        sqlx::Error::Decode(format!("unknown event status {status:?}").into())
                    })?,
                    attempts: row.try_get("attempts")?,
                    next_attempt_at: row.try_get("next_attempt_at")?,
                    queued_at: row.try_get("queued_at")?,
                    last_error: row.try_get("last_error")?,
                    delivered_at: row.try_get("delivered_at")?,
                })
            }

            /// Records `ev` inside the open transaction `tx`, so it commits
            /// (or rolls back) with the change it describes. Every store
            /// operation that changes a user's files or usage calls this;
            /// returns the event's id.
            pub(crate) async fn record_event_in(
                tx: &mut sqlx::Transaction<'_, $db>,
                ev: &NewEvent,
            ) -> Result<Uuid, sqlx::Error> {
                let id = Uuid::now_v7();
                let t = now();
                sqlx::query(
                    "INSERT INTO events (id, event_type, user_id, created_at, body, status, \
                     attempts, next_attempt_at, queued_at) VALUES ($1, $2, $3, $4, $5, 'pending', 0, $4, $4)",
                )
                .bind(id)
                .bind(ev.event_type.as_str())
                .bind(&ev.user_id)
                .bind(t)
                .bind(ev.body(id, t))
                .execute(&mut **tx)
                .await?;
                Ok(id)
            }

            /// Compares the user's usage with `last_threshold` and records a
            /// `quota.threshold` per threshold crossed upwards; a drop below
            /// re-arms the lower ones. The caller must already have written
            /// the user's `user_storage` row in `tx` (so it holds the row's
            /// lock on PostgreSQL and the write lock on SQLite): concurrent
            /// changes then see each other's `last_threshold`.
            pub(crate) async fn check_threshold_in(
                tx: &mut sqlx::Transaction<'_, $db>,
                user_id: &str,
            ) -> Result<(), sqlx::Error> {
                let Some(row) = sqlx::query(
                    "SELECT total_bytes, max_bytes, CAST(last_threshold AS BIGINT) AS last_threshold \
                     FROM user_storage WHERE user_id = $1",
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
                sqlx::query("UPDATE user_storage SET last_threshold = $2 WHERE user_id = $1")
                    .bind(user_id)
                    .bind(level as i32)
                    .execute(&mut **tx)
                    .await?;
                for p in crossed(last, level) {
                    Self::record_event_in(tx, &NewEvent::quota_threshold(user_id, p, total, max))
                        .await?;
                }
                Ok(())
            }
        }

        #[async_trait]
        impl EventStore for $store {
            async fn record_event(&self, ev: &NewEvent) -> MetaResult<Uuid> {
                let mut tx = self.pool().begin().await.map_err(MetaError::from_sqlx)?;
                let id = Self::record_event_in(&mut tx, ev).await?;
                tx.commit().await?;
                Ok(id)
            }

            async fn get_event(&self, id: Uuid) -> MetaResult<Option<Event>> {
                let sql = format!("SELECT {EVENT_COLS} FROM events WHERE id = $1");
                let row = sqlx::query(&sql)
                    .bind(id)
                    .fetch_optional(self.pool())
                    .await
                    .map_err(MetaError::from_sqlx)?;
                Ok(row.map(|r| Self::event_from_row(&r)).transpose()?)
            }

            async fn list_events(&self, q: &EventQuery) -> MetaResult<Vec<Event>> {
                let sql = format!(
                    "SELECT {EVENT_COLS} FROM events \
                     WHERE (CAST($1 AS TEXT) IS NULL OR event_type = CAST($1 AS TEXT)) \
                       AND (CAST($2 AS TEXT) IS NULL OR status = CAST($2 AS TEXT)) \
                       AND seq < $3 \
                     ORDER BY seq DESC LIMIT $4"
                );
                let rows = sqlx::query(&sql)
                    .bind(q.event_type.map(|t| t.as_str()))
                    .bind(q.status.map(|s| s.as_str()))
                    .bind(q.before_seq.unwrap_or(i64::MAX))
                    .bind(i64::from(q.limit))
                    .fetch_all(self.pool())
                    .await
                    .map_err(MetaError::from_sqlx)?;
                Ok(rows.iter().map(Self::event_from_row).collect::<Result<_, _>>()?)
            }

            async fn due_events(&self, at: DateTime<Utc>, limit: u32) -> MetaResult<Vec<Event>> {
                let sql = format!(
                    "SELECT {EVENT_COLS} FROM events WHERE status = 'pending' AND next_attempt_at <= $1 \
                     ORDER BY seq LIMIT $2"
                );
                let rows = sqlx::query(&sql)
                    .bind(at)
                    .bind(i64::from(limit))
                    .fetch_all(self.pool())
                    .await
                    .map_err(MetaError::from_sqlx)?;
                Ok(rows.iter().map(Self::event_from_row).collect::<Result<_, _>>()?)
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
                     delivered_at = $2, last_error = NULL WHERE id = $1",
                )
                .bind(id)
                .bind(at)
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
                    None => ("failed", now()),
                };
                sqlx::query(
                    "UPDATE events SET status = $2, attempts = attempts + 1, next_attempt_at = $3, \
                     last_error = $4 WHERE id = $1",
                )
                .bind(id)
                .bind(status)
                .bind(next)
                .bind(error)
                .execute(self.pool())
                .await
                .map_err(MetaError::from_sqlx)?;
                Ok(())
            }

            async fn replay_event(&self, id: Uuid, at: DateTime<Utc>) -> MetaResult<bool> {
                let n = sqlx::query(
                    "UPDATE events SET status = 'pending', attempts = 0, next_attempt_at = $2, \
                     queued_at = $2, delivered_at = NULL WHERE id = $1",
                )
                .bind(id)
                .bind(at)
                .execute(self.pool())
                .await
                .map_err(MetaError::from_sqlx)?
                .rows_affected();
                Ok(n == 1)
            }

            async fn event_counts(&self) -> MetaResult<EventCounts> {
                let rows = sqlx::query(
                    "SELECT status, CAST(COUNT(*) AS BIGINT) AS n FROM events GROUP BY status",
                )
                .fetch_all(self.pool())
                .await
                .map_err(MetaError::from_sqlx)?;
                let mut c = EventCounts::default();
                for r in rows {
                    let n = r.try_get::<i64, _>("n")?.max(0) as u64;
                    match EventStatus::parse(&r.try_get::<String, _>("status")?) {
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
                let mut n = sqlx::query(
                    "DELETE FROM events WHERE status = 'delivered' AND created_at < $1",
                )
                .bind(delivered_before)
                .execute(self.pool())
                .await
                .map_err(MetaError::from_sqlx)?
                .rows_affected();
                if let Some(t) = any_before {
                    n += sqlx::query("DELETE FROM events WHERE created_at < $1")
                        .bind(t)
                        .execute(self.pool())
                        .await
                        .map_err(MetaError::from_sqlx)?
                        .rows_affected();
                }
                Ok(n)
            }
        }
    };
}

impl_events!(PgStore, sqlx::Postgres, PgRow);
impl_events!(SqliteStore, sqlx::Sqlite, SqliteRow);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_are_reached_at_their_percent() {
        assert_eq!(threshold_level(0, 100), 0);
        assert_eq!(threshold_level(79, 100), 0);
        assert_eq!(threshold_level(80, 100), 80);
        assert_eq!(threshold_level(94, 100), 80);
        assert_eq!(threshold_level(95, 100), 95);
        assert_eq!(threshold_level(100, 100), 100);
        assert_eq!(threshold_level(150, 100), 100);
        assert_eq!(threshold_level(0, 0), 0);
        assert_eq!(threshold_level(1, 0), 100);
        // No overflow near the limits.
        assert_eq!(threshold_level(i64::MAX, i64::MAX), 100);
    }

    #[test]
    fn a_jump_crosses_every_threshold_in_between_once() {
        assert_eq!(crossed(0, 95).collect::<Vec<_>>(), [80, 95]);
        assert_eq!(crossed(80, 80).count(), 0);
        assert_eq!(crossed(95, 80).count(), 0);
        assert_eq!(crossed(80, 100).collect::<Vec<_>>(), [95, 100]);
    }

    #[test]
    fn type_names_round_trip() {
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.as_str()), Some(t));
            assert_eq!(serde_json::to_value(t).unwrap(), json!(t.as_str()));
        }
    }
}
