//! Task leases and task runs ([`LeaseStore`]) on MySQL.
//!
//! `ON DUPLICATE KEY UPDATE` cannot say whether its condition held (an
//! update to the same values and a skipped one report the same count), so
//! taking a lease is two statements, each atomic: an insert that only
//! succeeds for a new name, then a conditional update that only matches an
//! expired lease or our own. Of two processes racing, at most one gets
//! either.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::Row;

use super::super::plus;
use super::{opt_text, text, MySqlStore};
use crate::meta::{LeaseStore, MetaError, MetaResult, TaskRun};

/// How long run history is kept.
const HISTORY_DAYS: i64 = 30;

#[async_trait]
impl LeaseStore for MySqlStore {
    async fn try_acquire_lease(&self, name: &str, holder: &str, ttl: Duration) -> MetaResult<bool> {
        let t = self.now();
        let until = plus(t, ttl);
        let inserted =
            sqlx::query("INSERT INTO task_leases (name, holder, expires_at) VALUES (?, ?, ?)")
                .bind(name)
                .bind(holder)
                .bind(until)
                .execute(&self.pool)
                .await;
        match inserted {
            Ok(_) => return Ok(true),
            // The name has a row: whether we may take it is the UPDATE's to say.
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {}
            Err(e) => return Err(MetaError::from_sqlx(e)),
        }
        let n = sqlx::query(
            "UPDATE task_leases SET holder = ?, expires_at = ? \
             WHERE name = ? AND (expires_at < ? OR holder = ?)",
        )
        .bind(holder)
        .bind(until)
        .bind(name)
        .bind(t)
        .bind(holder)
        .execute(&self.pool)
        .await
        .map_err(MetaError::from_sqlx)?
        .rows_affected();
        Ok(n == 1)
    }

    async fn release_lease(&self, name: &str, holder: &str) -> MetaResult<()> {
        sqlx::query("DELETE FROM task_leases WHERE name = ? AND holder = ?")
            .bind(name)
            .bind(holder)
            .execute(&self.pool)
            .await
            .map_err(MetaError::from_sqlx)?;
        Ok(())
    }

    async fn lease_holder(&self, name: &str) -> MetaResult<Option<String>> {
        let row = sqlx::query("SELECT holder FROM task_leases WHERE name = ? AND expires_at >= ?")
            .bind(name)
            .bind(self.now())
            .fetch_optional(&self.pool)
            .await
            .map_err(MetaError::from_sqlx)?;
        Ok(row.map(|r| text(&r, "holder")).transpose()?)
    }

    async fn task_run_started(&self, name: &str, holder: &str) -> MetaResult<i64> {
        let t = self.now();
        sqlx::query("DELETE FROM task_runs WHERE name = ? AND started_at < ?")
            .bind(name)
            .bind(t - chrono::Duration::days(HISTORY_DAYS))
            .execute(&self.pool)
            .await
            .map_err(MetaError::from_sqlx)?;
        let done = sqlx::query("INSERT INTO task_runs (name, holder, started_at) VALUES (?, ?, ?)")
            .bind(name)
            .bind(holder)
            .bind(t)
            .execute(&self.pool)
            .await
            .map_err(MetaError::from_sqlx)?;
        i64::try_from(done.last_insert_id())
            .map_err(|_| MetaError::Conflict("task run id out of range".into()))
    }

    async fn task_run_finished(&self, id: i64, outcome: &str, summary: &str) -> MetaResult<()> {
        sqlx::query("UPDATE task_runs SET finished_at = ?, outcome = ?, summary = ? WHERE id = ?")
            .bind(self.now())
            .bind(outcome)
            .bind(summary)
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(MetaError::from_sqlx)?;
        Ok(())
    }

    async fn recent_task_runs(&self, name: Option<&str>, limit: i64) -> MetaResult<Vec<TaskRun>> {
        let rows = sqlx::query(
            "SELECT id, name, holder, started_at, finished_at, outcome, summary \
             FROM task_runs WHERE (? IS NULL OR name = ?) \
             ORDER BY started_at DESC, id DESC LIMIT ?",
        )
        .bind(name)
        .bind(name)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(MetaError::from_sqlx)?;
        rows.iter()
            .map(|r| {
                Ok(TaskRun {
                    id: r.try_get("id")?,
                    name: text(r, "name")?,
                    holder: text(r, "holder")?,
                    started_at: r.try_get("started_at")?,
                    finished_at: r.try_get("finished_at")?,
                    outcome: opt_text(r, "outcome")?,
                    summary: opt_text(r, "summary")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(MetaError::from)
    }
}
