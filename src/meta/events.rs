//! The event outbox (SPEC §11): what happened, recorded in the same
//! transaction as the change itself, for the webhook worker
//! ([`crate::jobs::webhooks`]) to deliver at least once.
//!
//! A store operation that changes something records its `NewEvent::…`
//! inside its open transaction (`meta::sql::outbox`), so the event exists
//! exactly when the change committed.
//! Refusals that change nothing (`upload.failed`) go through
//! [`EventStore::record_event`], one insert of their own.
//!
//! `quota.threshold` is decided here too: `user_storage.last_threshold`
//! remembers the highest threshold reached, and every change of
//! `total_bytes` or `max_bytes` compares it with the new usage while it
//! holds the user row's lock (PostgreSQL, MySQL) or the write lock (SQLite), so
//! however many uploads cross 80 % at once, one of them records the event.

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;

use super::{FileRecord, FileView, MetaResult};

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
    /// returns it as requeued, `None` when there is no such event.
    async fn replay_event(&self, id: Uuid, now: DateTime<Utc>) -> MetaResult<Option<Event>>;
    async fn event_counts(&self) -> MetaResult<EventCounts>;
    /// Deletes delivered events created before `delivered_before`, and,
    /// with `any_before`, every event created before it; returns how many.
    async fn prune_events(
        &self,
        delivered_before: DateTime<Utc>,
        any_before: Option<DateTime<Utc>>,
    ) -> MetaResult<u64>;
}

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
