//! The durable job queue ([`JobStore`], table `jobs`).
//!
//! A claim picks the oldest runnable row (queued and due, or running with
//! an expired lease) and marks it running, in one transaction. On
//! PostgreSQL and MySQL the pick is `FOR UPDATE SKIP LOCKED`, so concurrent
//! claimers each lock a different row without waiting on each other; on
//! SQLite the transaction begins with `BEGIN IMMEDIATE`, so claimers take
//! turns as the database's single writer and the next one sees the row
//! already running.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::engine::{query, Row};
use super::outbox::record_event_in;
use super::{plus, SqlStore};
use crate::meta::{Job, JobInfo, JobStore, MetaError, MetaResult, NewEvent};

fn job_from_row(r: &Row) -> Result<Job, sqlx::Error> {
    Ok(Job {
        id: r.get("id")?,
        kind: r.get("kind")?,
        payload: r.get("payload")?,
        attempts: r.get("attempts")?,
        max_attempts: r.get("max_attempts")?,
    })
}

fn job_info_from_row(r: &Row) -> Result<JobInfo, sqlx::Error> {
    Ok(JobInfo {
        id: r.get("id")?,
        kind: r.get("kind")?,
        payload: r.get("payload")?,
        status: r.get("status")?,
        attempts: r.get("attempts")?,
        last_error: r.get("last_error")?,
    })
}

#[async_trait]
impl JobStore for SqlStore {
    async fn enqueue_job(
        &self,
        kind: &str,
        payload: &str,
        user_id: Option<&str>,
        run_at: DateTime<Utc>,
    ) -> MetaResult<Uuid> {
        let s = self;
        let id = Uuid::now_v7();
        let t = s.now();
        query(
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
        .execute(s.db())
        .await?;
        Ok(id)
    }

    async fn claim_job(&self, lease: Duration) -> MetaResult<Option<Job>> {
        let s = self;
        let t = s.now();
        let mut tx = s.db().begin_write().await?;
        let skip = s.engine().skip_locked();
        let picked = query(format!(
            "SELECT id FROM jobs \
             WHERE (status = 'queued' AND run_at <= ?) OR (status = 'running' AND locked_until < ?) \
             ORDER BY run_at LIMIT 1{skip}"
        ))
        .bind(t)
        .bind(t)
        .fetch_optional(&mut tx)
        .await?;
        let Some(picked) = picked else {
            tx.commit().await?;
            return Ok(None);
        };
        let id: Uuid = picked.get("id")?;
        query(
            "UPDATE jobs SET status = 'running', attempts = attempts + 1, locked_until = ?, \
             updated_at = ? WHERE id = ?",
        )
        .bind(plus(t, lease))
        .bind(t)
        .bind(id)
        .execute(&mut tx)
        .await?;
        let r = query(
            "SELECT id, kind, payload, CAST(attempts AS BIGINT) AS attempts, \
             CAST(max_attempts AS BIGINT) AS max_attempts FROM jobs WHERE id = ?",
        )
        .bind(id)
        .fetch_one(&mut tx)
        .await?;
        tx.commit().await?;
        Ok(Some(job_from_row(&r)?))
    }

    async fn complete_job(&self, id: Uuid) -> MetaResult<()> {
        let s = self;
        query(
            "UPDATE jobs SET status = 'done', locked_until = NULL, last_error = NULL, \
             updated_at = ? WHERE id = ?",
        )
        .bind(s.now())
        .bind(id)
        .execute(s.db())
        .await?;
        Ok(())
    }

    async fn fail_job(
        &self,
        id: Uuid,
        error: &str,
        retry_at: Option<DateTime<Utc>>,
        event: Option<&NewEvent>,
    ) -> MetaResult<()> {
        let s = self;
        let t = s.now();
        let (status, run_at) = match retry_at {
            Some(r) => ("queued", r),
            None => ("failed", t),
        };
        let mut tx = s.db().begin_write().await?;
        query(
            "UPDATE jobs SET status = ?, run_at = ?, locked_until = NULL, last_error = ?, \
             updated_at = ? WHERE id = ?",
        )
        .bind(status)
        .bind(run_at)
        .bind(error)
        .bind(t)
        .bind(id)
        .execute(&mut tx)
        .await?;
        if let Some(ev) = event {
            record_event_in(&mut tx, ev).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn queue_depth(&self) -> MetaResult<u64> {
        let s = self;
        let row = query(
            "SELECT CAST(COUNT(*) AS BIGINT) AS n FROM jobs WHERE status IN ('queued', 'running')",
        )
        .fetch_one(s.db())
        .await?;
        Ok(row.get::<i64>("n")?.max(0) as u64)
    }

    async fn failed_jobs(&self, limit: u32) -> MetaResult<Vec<JobInfo>> {
        let s = self;
        let rows = query(
            "SELECT id, kind, payload, status, CAST(attempts AS BIGINT) AS attempts, last_error \
             FROM jobs WHERE status = 'failed' ORDER BY updated_at DESC LIMIT ?",
        )
        .bind(limit)
        .fetch_all(s.db())
        .await?;
        rows.iter()
            .map(job_info_from_row)
            .collect::<Result<_, _>>()
            .map_err(MetaError::from)
    }
}
