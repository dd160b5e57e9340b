//! The job queue: a claim locks the oldest runnable row with `FOR UPDATE
//! SKIP LOCKED` (MySQL 8, MariaDB 10.6), so concurrent claimers each get a
//! different job without waiting on each other, then marks it running.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::Row;
use uuid::Uuid;

use super::super::plus;
use super::{opt_text, text, MySqlStore};
use crate::meta::{Job, JobInfo, MetaError, MetaResult, NewEvent};

impl MySqlStore {
    pub(super) async fn enqueue(
        &self,
        kind: &str,
        payload: &str,
        user_id: Option<&str>,
        run_at: DateTime<Utc>,
    ) -> MetaResult<Uuid> {
        let id = Uuid::now_v7();
        let t = self.now();
        sqlx::query(
            "INSERT INTO jobs (id, kind, payload, user_id, status, run_at, created_at, updated_at) \
             VALUES (?, ?, ?, ?, 'queued', ?, ?, ?)",
        )
        .bind(id)
        .bind(kind)
        .bind(payload)
        .bind(user_id)
        .bind(run_at)
        .bind(t)
        .bind(t)
        .execute(&self.pool)
        .await
        .map_err(MetaError::from_sqlx)?;
        Ok(id)
    }

    pub(super) async fn claim(&self, lease: Duration) -> MetaResult<Option<Job>> {
        let t = self.now();
        let mut tx = self.begin_write().await.map_err(MetaError::from_sqlx)?;
        let picked: Option<Uuid> = sqlx::query_scalar(
            "SELECT id FROM jobs \
             WHERE (status = 'queued' AND run_at <= ?) OR (status = 'running' AND locked_until < ?) \
             ORDER BY run_at LIMIT 1 FOR UPDATE SKIP LOCKED",
        )
        .bind(t)
        .bind(t)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(id) = picked else {
            tx.commit().await?;
            return Ok(None);
        };
        sqlx::query(
            "UPDATE jobs SET status = 'running', attempts = attempts + 1, locked_until = ?, updated_at = ? \
             WHERE id = ?",
        )
        .bind(plus(t, lease))
        .bind(t)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        let r = sqlx::query(
            "SELECT id, kind, payload, CAST(attempts AS SIGNED) AS attempts, \
             CAST(max_attempts AS SIGNED) AS max_attempts FROM jobs WHERE id = ?",
        )
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(Job {
            id: r.try_get("id")?,
            kind: text(&r, "kind")?,
            payload: text(&r, "payload")?,
            attempts: r.try_get("attempts")?,
            max_attempts: r.try_get("max_attempts")?,
        }))
    }

    pub(super) async fn complete(&self, id: Uuid) -> MetaResult<()> {
        sqlx::query(
            "UPDATE jobs SET status = 'done', locked_until = NULL, last_error = NULL, updated_at = ? WHERE id = ?",
        )
        .bind(self.now())
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(MetaError::from_sqlx)?;
        Ok(())
    }

    pub(super) async fn fail(
        &self,
        id: Uuid,
        error: &str,
        retry_at: Option<DateTime<Utc>>,
        event: Option<&NewEvent>,
    ) -> MetaResult<()> {
        let (status, run_at) = match retry_at {
            Some(t) => ("queued", t),
            None => ("failed", self.now()),
        };
        let mut tx = self.begin_write().await.map_err(MetaError::from_sqlx)?;
        sqlx::query(
            "UPDATE jobs SET status = ?, run_at = ?, locked_until = NULL, last_error = ?, updated_at = ? \
             WHERE id = ?",
        )
        .bind(status)
        .bind(run_at)
        .bind(error)
        .bind(self.now())
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if let Some(ev) = event {
            Self::record_event_in(&mut tx, ev).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn depth(&self) -> MetaResult<u64> {
        let n: i64 = sqlx::query_scalar(
            "SELECT CAST(COUNT(*) AS SIGNED) FROM jobs WHERE status IN ('queued', 'running')",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(MetaError::from_sqlx)?;
        Ok(n.max(0) as u64)
    }

    pub(super) async fn failed(&self, limit: u32) -> MetaResult<Vec<JobInfo>> {
        let rows = sqlx::query(
            "SELECT id, kind, payload, status, CAST(attempts AS SIGNED) AS attempts, last_error \
             FROM jobs WHERE status = 'failed' ORDER BY updated_at DESC LIMIT ?",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(MetaError::from_sqlx)?;
        rows.iter()
            .map(|r| {
                Ok(JobInfo {
                    id: r.try_get("id")?,
                    kind: text(r, "kind")?,
                    payload: text(r, "payload")?,
                    status: text(r, "status")?,
                    attempts: r.try_get("attempts")?,
                    last_error: opt_text(r, "last_error")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(MetaError::from)
    }
}
