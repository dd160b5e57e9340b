//! Task leases and task runs ([`LeaseStore`]): `task_leases`, which lets
//! one process at a time run a periodic task, and `task_runs`, their
//! history. Deadlines come from the store's clock.
//!
//! Taking a lease is two statements, each atomic, neither of which can
//! give it to two processes: a conditional `UPDATE` that only matches an
//! expired lease or our own (renewal), then, when it matched nothing, an
//! insert that only succeeds for a name with no row. A taker that loses
//! either race sees 0 rows and is refused. (A single upsert cannot say on
//! MySQL whether its condition held: a skipped update and one to the same
//! values report the same count.)

use std::time::Duration;

use async_trait::async_trait;

use super::engine::{query, Engine, Row};
use super::{plus, AsSqlStore};
use crate::meta::{LeaseStore, MetaResult, TaskRun};

/// How long run history is kept.
const HISTORY_DAYS: i64 = 30;

/// Inserts a lease unless its name has a row. The engines spell "skip the
/// row on a duplicate key" differently.
fn insert_lease_sql(engine: Engine) -> &'static str {
    match engine {
        Engine::MySql => {
            "INSERT IGNORE INTO task_leases (name, holder, expires_at) VALUES (?, ?, ?)"
        }
        Engine::Postgres | Engine::Sqlite => {
            "INSERT INTO task_leases (name, holder, expires_at) VALUES (?, ?, ?) \
             ON CONFLICT (name) DO NOTHING"
        }
    }
}

/// The id the last insert on this transaction's connection generated.
fn last_id_sql(engine: Engine) -> &'static str {
    match engine {
        Engine::Postgres => "SELECT lastval() AS id",
        Engine::Sqlite => "SELECT last_insert_rowid() AS id",
        Engine::MySql => "SELECT LAST_INSERT_ID() AS id",
    }
}

fn run_from_row(r: &Row) -> Result<TaskRun, sqlx::Error> {
    Ok(TaskRun {
        id: r.get("id")?,
        name: r.get("name")?,
        holder: r.get("holder")?,
        started_at: r.get("started_at")?,
        finished_at: r.get("finished_at")?,
        outcome: r.get("outcome")?,
        summary: r.get("summary")?,
    })
}

#[async_trait]
impl<S: AsSqlStore> LeaseStore for S {
    async fn try_acquire_lease(&self, name: &str, holder: &str, ttl: Duration) -> MetaResult<bool> {
        let s = self.sql();
        let t = s.now();
        let until = plus(t, ttl);
        let renewed = query(
            "UPDATE task_leases SET holder = ?, expires_at = ? \
             WHERE name = ? AND (expires_at < ? OR holder = ?)",
        )
        .bind(holder)
        .bind(until)
        .bind(name)
        .bind(t)
        .bind(holder)
        .execute(s.db())
        .await?;
        if renewed == 1 {
            return Ok(true);
        }
        let inserted = query(insert_lease_sql(s.engine()))
            .bind(name)
            .bind(holder)
            .bind(until)
            .execute(s.db())
            .await?;
        Ok(inserted == 1)
    }

    async fn release_lease(&self, name: &str, holder: &str) -> MetaResult<()> {
        let s = self.sql();
        query("DELETE FROM task_leases WHERE name = ? AND holder = ?")
            .bind(name)
            .bind(holder)
            .execute(s.db())
            .await?;
        Ok(())
    }

    async fn lease_holder(&self, name: &str) -> MetaResult<Option<String>> {
        let s = self.sql();
        let row = query("SELECT holder FROM task_leases WHERE name = ? AND expires_at >= ?")
            .bind(name)
            .bind(s.now())
            .fetch_optional(s.db())
            .await?;
        Ok(row.map(|r| r.get("holder")).transpose()?)
    }

    async fn task_run_started(&self, name: &str, holder: &str) -> MetaResult<i64> {
        let s = self.sql();
        let t = s.now();
        let mut tx = s.db().begin_write().await?;
        query("DELETE FROM task_runs WHERE name = ? AND started_at < ?")
            .bind(name)
            .bind(t - chrono::Duration::days(HISTORY_DAYS))
            .execute(&mut tx)
            .await?;
        query("INSERT INTO task_runs (name, holder, started_at) VALUES (?, ?, ?)")
            .bind(name)
            .bind(holder)
            .bind(t)
            .execute(&mut tx)
            .await?;
        let id: i64 = query(last_id_sql(s.engine()))
            .fetch_one(&mut tx)
            .await?
            .get("id")?;
        tx.commit().await?;
        Ok(id)
    }

    async fn task_run_finished(&self, id: i64, outcome: &str, summary: &str) -> MetaResult<()> {
        let s = self.sql();
        query("UPDATE task_runs SET finished_at = ?, outcome = ?, summary = ? WHERE id = ?")
            .bind(s.now())
            .bind(outcome)
            .bind(summary)
            .bind(id)
            .execute(s.db())
            .await?;
        Ok(())
    }

    async fn recent_task_runs(&self, name: Option<&str>, limit: i64) -> MetaResult<Vec<TaskRun>> {
        let s = self.sql();
        let rows = query(
            "SELECT id, name, holder, started_at, finished_at, outcome, summary \
             FROM task_runs WHERE (? IS NULL OR name = ?) \
             ORDER BY started_at DESC, id DESC LIMIT ?",
        )
        .bind(name)
        .bind(name)
        .bind(limit)
        .fetch_all(s.db())
        .await?;
        Ok(rows.iter().map(run_from_row).collect::<Result<_, _>>()?)
    }
}
