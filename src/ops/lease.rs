//! Database leases for periodic tasks, so that several `stowage` processes
//! sharing one database run a task one at a time.
//!
//! A lease is a row of `task_leases` (name, holder, expires_at). Taking or
//! renewing it is one conditional upsert: the row is written only when it is
//! new, expired, or already ours, and the affected-row count says whether we
//! hold it. The same SQL runs on PostgreSQL and SQLite.
//!
//! Each run is also recorded in `task_runs` (who ran it, when, how it
//! ended), which `stowage tasks` shows.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::{
    core::Core,
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

/// Runs `$body` with `$pool` bound to the store's connection pool; the
/// same SQL serves both engines.
macro_rules! with_pool {
    ($state:expr, $pool:ident => $body:expr) => {{
        let any = $state.meta.as_any();
        if let Some(pg) = any.downcast_ref::<PgStore>() {
            let $pool = pg.pool();
            $body
        } else if let Some(lite) = any.downcast_ref::<SqliteStore>() {
            let $pool = lite.pool();
            $body
        } else {
            anyhow::bail!("task leases need the PostgreSQL or SQLite store")
        }
    }};
}

/// Takes (or renews, when `holder` already has it) the lease `name` for
/// `ttl`. True when `holder` holds it afterwards.
pub async fn try_acquire(
    state: &Core,
    name: &str,
    holder: &str,
    ttl: Duration,
) -> anyhow::Result<bool> {
    let t = now();
    let until = t + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::hours(1));
    let n = with_pool!(state, pool => sqlx::query(ACQUIRE_SQL)
        .bind(name)
        .bind(holder)
        .bind(until)
        .bind(t)
        .execute(pool)
        .await?
        .rows_affected());
    Ok(n == 1)
}

/// Gives the lease up early; a no-op unless `holder` holds it.
pub async fn release(state: &Core, name: &str, holder: &str) -> anyhow::Result<()> {
    with_pool!(state, pool => sqlx::query(RELEASE_SQL)
        .bind(name)
        .bind(holder)
        .execute(pool)
        .await?
        .rows_affected());
    Ok(())
}

/// The current holder of an unexpired lease, if any.
pub async fn holder(state: &Core, name: &str) -> anyhow::Result<Option<String>> {
    use sqlx::Row;
    let t = now();
    let row = with_pool!(state, pool => sqlx::query(HOLDER_SQL)
        .bind(name)
        .bind(t)
        .fetch_optional(pool)
        .await?
        .map(|r| r.try_get::<String, _>("holder"))
        .transpose()?);
    Ok(row)
}

/// One run of a periodic task, as `task_runs` records it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct TaskRun {
    pub id: i64,
    pub name: String,
    pub holder: String,
    pub started_at: DateTime<Utc>,
    /// `None` while running, or when the process died during the run.
    pub finished_at: Option<DateTime<Utc>>,
    /// `ok`, `problems` or `failed`.
    pub outcome: Option<String>,
    pub summary: Option<String>,
}

/// How long run history is kept.
const HISTORY_DAYS: i64 = 30;

/// Records that `holder` starts a run of `name` (which it must hold the
/// lease of); prunes old history. Returns the run's id.
pub async fn run_started(state: &Core, name: &str, holder: &str) -> anyhow::Result<i64> {
    use sqlx::Row;
    let t = now();
    let id = with_pool!(state, pool => {
        sqlx::query("DELETE FROM task_runs WHERE name = $1 AND started_at < $2")
            .bind(name)
            .bind(t - chrono::Duration::days(HISTORY_DAYS))
            .execute(pool)
            .await?;
        sqlx::query(
            "INSERT INTO task_runs (name, holder, started_at) VALUES ($1, $2, $3) RETURNING id",
        )
        .bind(name)
        .bind(holder)
        .bind(t)
        .fetch_one(pool)
        .await?
        .try_get::<i64, _>("id")?
    });
    Ok(id)
}

/// Records how run `id` ended.
pub async fn run_finished(
    state: &Core,
    id: i64,
    outcome: &str,
    summary: &str,
) -> anyhow::Result<()> {
    let t = now();
    with_pool!(state, pool => sqlx::query(
        "UPDATE task_runs SET finished_at = $1, outcome = $2, summary = $3 WHERE id = $4",
    )
    .bind(t)
    .bind(outcome)
    .bind(summary)
    .bind(id)
    .execute(pool)
    .await?
    .rows_affected());
    Ok(())
}

/// The newest `limit` runs, of task `name` or of every task, newest first.
pub async fn recent_runs(
    state: &Core,
    name: Option<&str>,
    limit: i64,
) -> anyhow::Result<Vec<TaskRun>> {
    use sqlx::Row;
    const SQL: &str = "SELECT id, name, holder, started_at, finished_at, outcome, summary \
         FROM task_runs WHERE (CAST($1 AS TEXT) IS NULL OR name = CAST($1 AS TEXT)) ORDER BY started_at DESC, id DESC LIMIT $2";
    let runs = with_pool!(state, pool => sqlx::query(SQL)
        .bind(name)
        .bind(limit)
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|r| {
            Ok(TaskRun {
                id: r.try_get("id")?,
                name: r.try_get("name")?,
                holder: r.try_get("holder")?,
                started_at: r.try_get("started_at")?,
                finished_at: r.try_get("finished_at")?,
                outcome: r.try_get("outcome")?,
                summary: r.try_get("summary")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?);
    Ok(runs)
}
