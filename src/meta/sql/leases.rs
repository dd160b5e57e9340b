//! Task leases and task runs ([`LeaseStore`]): the same SQL on both engines.
//!
//! Taking or renewing a lease is one conditional upsert: the row is written
//! only when it is new, expired, or already ours, and the affected-row count
//! says whether we hold it.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::Row;

use super::{plus, PgStore, SqliteStore};
use crate::meta::{LeaseStore, MetaError, MetaResult, TaskRun};

const ACQUIRE_SQL: &str = "INSERT INTO task_leases (name, holder, expires_at) VALUES ($1, $2, $3) \
     ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at \
     WHERE task_leases.expires_at < $4 OR task_leases.holder = EXCLUDED.holder";

const RELEASE_SQL: &str = "DELETE FROM task_leases WHERE name = $1 AND holder = $2";

const HOLDER_SQL: &str = "SELECT holder FROM task_leases WHERE name = $1 AND expires_at >= $2";

const PRUNE_RUNS_SQL: &str = "DELETE FROM task_runs WHERE name = $1 AND started_at < $2";

const START_RUN_SQL: &str =
    "INSERT INTO task_runs (name, holder, started_at) VALUES ($1, $2, $3) RETURNING id";

const FINISH_RUN_SQL: &str =
    "UPDATE task_runs SET finished_at = $1, outcome = $2, summary = $3 WHERE id = $4";

const RECENT_RUNS_SQL: &str = "SELECT id, name, holder, started_at, finished_at, outcome, summary \
     FROM task_runs WHERE (CAST($1 AS TEXT) IS NULL OR name = CAST($1 AS TEXT)) \
     ORDER BY started_at DESC, id DESC LIMIT $2";

/// How long run history is kept.
const HISTORY_DAYS: i64 = 30;

macro_rules! impl_leases {
    ($store:ident) => {
        #[async_trait]
        impl LeaseStore for $store {
            async fn try_acquire_lease(
                &self,
                name: &str,
                holder: &str,
                ttl: Duration,
            ) -> MetaResult<bool> {
                let t = self.now();
                let n = sqlx::query(ACQUIRE_SQL)
                    .bind(name)
                    .bind(holder)
                    .bind(plus(t, ttl))
                    .bind(t)
                    .execute(&self.pool)
                    .await
                    .map_err(MetaError::from_sqlx)?
                    .rows_affected();
                Ok(n == 1)
            }

            async fn release_lease(&self, name: &str, holder: &str) -> MetaResult<()> {
                sqlx::query(RELEASE_SQL)
                    .bind(name)
                    .bind(holder)
                    .execute(&self.pool)
                    .await
                    .map_err(MetaError::from_sqlx)?;
                Ok(())
            }

            async fn lease_holder(&self, name: &str) -> MetaResult<Option<String>> {
                let row = sqlx::query(HOLDER_SQL)
                    .bind(name)
                    .bind(self.now())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(MetaError::from_sqlx)?;
                Ok(row.map(|r| r.try_get::<String, _>("holder")).transpose()?)
            }

            async fn task_run_started(&self, name: &str, holder: &str) -> MetaResult<i64> {
                let t = self.now();
                sqlx::query(PRUNE_RUNS_SQL)
                    .bind(name)
                    .bind(t - chrono::Duration::days(HISTORY_DAYS))
                    .execute(&self.pool)
                    .await
                    .map_err(MetaError::from_sqlx)?;
                let row = sqlx::query(START_RUN_SQL)
                    .bind(name)
                    .bind(holder)
                    .bind(t)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(MetaError::from_sqlx)?;
                Ok(row.try_get::<i64, _>("id")?)
            }

            async fn task_run_finished(
                &self,
                id: i64,
                outcome: &str,
                summary: &str,
            ) -> MetaResult<()> {
                sqlx::query(FINISH_RUN_SQL)
                    .bind(self.now())
                    .bind(outcome)
                    .bind(summary)
                    .bind(id)
                    .execute(&self.pool)
                    .await
                    .map_err(MetaError::from_sqlx)?;
                Ok(())
            }

            async fn recent_task_runs(
                &self,
                name: Option<&str>,
                limit: i64,
            ) -> MetaResult<Vec<TaskRun>> {
                let rows = sqlx::query(RECENT_RUNS_SQL)
                    .bind(name)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(MetaError::from_sqlx)?;
                rows.iter()
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
                    .collect::<Result<_, sqlx::Error>>()
                    .map_err(MetaError::from)
            }
        }
    };
}

impl_leases!(PgStore);
impl_leases!(SqliteStore);
