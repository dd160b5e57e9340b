//! Database leases for periodic tasks, so that several `stowage` processes
//! sharing one database run a task one at a time.
//!
//! A lease is a row of `task_leases` (name, holder, expires_at). Taking or
//! renewing it is one conditional upsert: the row is written only when it is
//! new, expired, or already ours, and the affected-row count says whether we
//! hold it. The same SQL runs on PostgreSQL and SQLite.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::{
    app::AppState,
    meta::{PgStore, SqliteStore},
};

const ACQUIRE_SQL: &str = "INSERT INTO task_leases (name, holder, expires_at) VALUES ($1, $2, $3) \
     ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at \
     WHERE task_leases.expires_at < $4 OR task_leases.holder = EXCLUDED.holder";

const RELEASE_SQL: &str = "DELETE FROM task_leases WHERE name = $1 AND holder = $2";

const HOLDER_SQL: &str = "SELECT holder FROM task_leases WHERE name = $1 AND expires_at >= $2";

/// Now, at the microsecond precision both engines keep.
fn now() -> DateTime<Utc> {
    let n = Utc::now();
    DateTime::from_timestamp_micros(n.timestamp_micros()).unwrap_or(n)
}

/// Takes (or renews, when `holder` already has it) the lease `name` for
/// `ttl`. True when `holder` holds it afterwards.
pub async fn try_acquire(
    state: &AppState,
    name: &str,
    holder: &str,
    ttl: Duration,
) -> anyhow::Result<bool> {
    let t = now();
    let until = t + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::hours(1));
    let any = state.meta.as_any();
    let n = if let Some(pg) = any.downcast_ref::<PgStore>() {
        sqlx::query(ACQUIRE_SQL)
            .bind(name)
            .bind(holder)
            .bind(until)
            .bind(t)
            .execute(pg.pool())
            .await?
            .rows_affected()
    } else if let Some(lite) = any.downcast_ref::<SqliteStore>() {
        sqlx::query(ACQUIRE_SQL)
            .bind(name)
            .bind(holder)
            .bind(until)
            .bind(t)
            .execute(lite.pool())
            .await?
            .rows_affected()
    } else {
        anyhow::bail!("task leases need the PostgreSQL or SQLite store");
    };
    Ok(n == 1)
}

/// Gives the lease up early; a no-op unless `holder` holds it.
pub async fn release(state: &AppState, name: &str, holder: &str) -> anyhow::Result<()> {
    let any = state.meta.as_any();
    if let Some(pg) = any.downcast_ref::<PgStore>() {
        sqlx::query(RELEASE_SQL)
            .bind(name)
            .bind(holder)
            .execute(pg.pool())
            .await?;
    } else if let Some(lite) = any.downcast_ref::<SqliteStore>() {
        sqlx::query(RELEASE_SQL)
            .bind(name)
            .bind(holder)
            .execute(lite.pool())
            .await?;
    } else {
        anyhow::bail!("task leases need the PostgreSQL or SQLite store");
    }
    Ok(())
}

/// The current holder of an unexpired lease, if any.
pub async fn holder(state: &AppState, name: &str) -> anyhow::Result<Option<String>> {
    use sqlx::Row;
    let any = state.meta.as_any();
    let t = now();
    if let Some(pg) = any.downcast_ref::<PgStore>() {
        let row = sqlx::query(HOLDER_SQL)
            .bind(name)
            .bind(t)
            .fetch_optional(pg.pool())
            .await?;
        Ok(row.map(|r| r.try_get("holder")).transpose()?)
    } else if let Some(lite) = any.downcast_ref::<SqliteStore>() {
        let row = sqlx::query(HOLDER_SQL)
            .bind(name)
            .bind(t)
            .fetch_optional(lite.pool())
            .await?;
        Ok(row.map(|r| r.try_get("holder")).transpose()?)
    } else {
        anyhow::bail!("task leases need the PostgreSQL or SQLite store");
    }
}
