//! Transitional: the two in-transaction outbox steps over the PostgreSQL
//! and SQLite stores' own sqlx transactions, for the concerns of
//! `impl_store!` not yet written over [`super::engine`]. [`super::outbox`]
//! is the one to use; this module goes when its last caller has.

use chrono::{DateTime, Utc};
use sqlx::Row;
use uuid::Uuid;

use super::{PgStore, SqliteStore};
use crate::meta::events::{crossed, threshold_level};
use crate::meta::NewEvent;

/// Now, at microsecond precision (events carry wall-clock times).
fn wall_now() -> DateTime<Utc> {
    let n = Utc::now();
    DateTime::from_timestamp_micros(n.timestamp_micros()).unwrap_or(n)
}

macro_rules! impl_outbox_in {
    ($store:ident, $db:ty) => {
        impl $store {
            /// Records `ev` inside the open transaction `tx`; returns its id.
            pub(crate) async fn record_event_in(
                tx: &mut sqlx::Transaction<'_, $db>,
                ev: &NewEvent,
            ) -> Result<Uuid, sqlx::Error> {
                let id = Uuid::now_v7();
                let t = wall_now();
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

            /// Records a `quota.threshold` per threshold the user's usage
            /// crossed upwards; the caller already wrote the user's row in
            /// `tx` (see [`super::outbox::check_threshold_in`]).
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
    };
}

impl_outbox_in!(PgStore, sqlx::Postgres);
impl_outbox_in!(SqliteStore, sqlx::Sqlite);
