//! Background work kept in the database: a durable queue (the `jobs` table),
//! workers that claim jobs with a lease, retry failures with exponential
//! backoff, and stop when the server shuts down.
//!
//! Several `stowage` processes may share one database: a claim is a single
//! atomic `UPDATE … RETURNING` (with `FOR UPDATE SKIP LOCKED` on PostgreSQL),
//! so each job runs once; a worker that dies leaves a lease that expires and
//! the job is picked up again.

pub mod cleanup;
pub mod media;
pub mod webhooks;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::{sync::watch, task::JoinHandle};
use uuid::Uuid;

use crate::{core::Core, meta::FileRecord};

/// How long a claimed job may run before another worker may take it over.
const LEASE: Duration = Duration::from_secs(300);
/// Idle workers poll this often (a commit also wakes them at once).
const POLL: Duration = Duration::from_secs(2);

/// Job payloads, serialized as JSON in the `payload` column.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum JobPayload {
    /// Thumbnail and media metadata for one file.
    Media { file_id: Uuid },
}

impl JobPayload {
    fn kind(&self) -> &'static str {
        match self {
            JobPayload::Media { .. } => "media",
        }
    }
}

/// Queues a job now.
pub async fn enqueue(
    state: &Core,
    payload: &JobPayload,
    user: Option<&str>,
) -> anyhow::Result<Uuid> {
    let json = serde_json::to_string(payload)?;
    let id = state
        .meta
        .enqueue_job(payload.kind(), &json, user, state.now())
        .await?;
    state.jobs_notify.notify_waiters();
    Ok(id)
}

/// Queues thumbnail/metadata work for a freshly committed file, when its
/// type has any.
pub async fn enqueue_media(state: &Core, rec: &FileRecord) -> anyhow::Result<()> {
    if media::wants_processing(rec) {
        enqueue(
            state,
            &JobPayload::Media { file_id: rec.id },
            Some(&rec.user_id),
        )
        .await?;
    }
    Ok(())
}

/// Follow-up work for a freshly committed file: queues its media job, if
/// its type has one. A failure to queue is logged, not returned: the file
/// is committed either way, and a file without a thumbnail is still served.
pub async fn after_commit(state: &Core, rec: &FileRecord) {
    if let Err(e) = enqueue_media(state, rec).await {
        tracing::warn!(error = %e, file_id = %rec.id, "could not queue media processing");
    }
}

/// Backoff before retry `attempt` (1-based): 5 s, 20 s, 80 s, … capped at 1 h.
pub fn backoff(attempt: i64) -> Duration {
    let exp = (attempt.clamp(1, 10) - 1) as u32;
    Duration::from_secs((5u64 * 4u64.pow(exp)).min(3600))
}

/// Starts `config.job_workers` workers.
pub fn spawn_workers(state: Core, stop: watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
    let n = state.config.job_workers.max(1);
    (0..n)
        .map(|i| {
            let state = state.clone();
            let stop = stop.clone();
            tokio::spawn(async move { worker(i, state, stop).await })
        })
        .collect()
}

async fn worker(index: usize, state: Core, mut stop: watch::Receiver<bool>) {
    loop {
        if *stop.borrow() {
            return;
        }
        match state.meta.claim_job(LEASE).await {
            Ok(Some(job)) => run_one(&state, job).await,
            Ok(None) => {
                tokio::select! {
                    _ = state.jobs_notify.notified() => {}
                    _ = tokio::time::sleep(POLL) => {}
                    _ = stop.changed() => {}
                }
            }
            Err(e) => {
                tracing::warn!(worker = index, error = %e, "job claim failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(POLL * 5) => {}
                    _ = stop.changed() => {}
                }
            }
        }
    }
}

async fn run_one(state: &Core, job: crate::meta::Job) {
    let payload: JobPayload = match serde_json::from_str(&job.payload) {
        Ok(p) => p,
        Err(e) => {
            let _ = state
                .meta
                .fail_job(job.id, &format!("unreadable payload: {e}"), None, None)
                .await;
            return;
        }
    };
    let started = std::time::Instant::now();
    let result = match &payload {
        JobPayload::Media { file_id } => media::process(state, *file_id).await,
    };
    match result {
        Ok(()) => {
            tracing::info!(job_id = %job.id, kind = %job.kind, ms = started.elapsed().as_millis() as u64, "job done");
            if let Err(e) = state.meta.complete_job(job.id).await {
                tracing::warn!(job_id = %job.id, error = %e, "could not mark job done");
            }
        }
        Err(e) => {
            let msg = format!("{e:#}");
            let retry = e.retryable() && job.attempts < job.max_attempts;
            let retry_at = retry.then(|| {
                state.now() + chrono::Duration::from_std(backoff(job.attempts)).unwrap_or_default()
            });
            if retry {
                tracing::warn!(job_id = %job.id, kind = %job.kind, attempt = job.attempts, error = %msg, "job failed; will retry");
            } else {
                tracing::error!(job_id = %job.id, kind = %job.kind, attempt = job.attempts, error = %msg, "job failed for good");
            }
            // Given up for good: the file's owner hears of it.
            let event = match (&payload, retry) {
                (JobPayload::Media { file_id }, false) => {
                    match state.meta.get_file_any(*file_id).await {
                        Ok(Some(rec)) => Some(crate::meta::NewEvent::media_failed(&rec, &msg)),
                        _ => None,
                    }
                }
                _ => None,
            };
            if let Err(e) = state
                .meta
                .fail_job(job.id, &msg, retry_at, event.as_ref())
                .await
            {
                tracing::warn!(job_id = %job.id, error = %e, "could not record job failure");
            }
        }
    }
    if let Ok(n) = state.meta.queue_depth().await {
        crate::telemetry::metrics::job_queue_depth(n);
    }
}

/// A job's failure; `Permanent` ones (hostile or broken media) are not retried.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("{0}")]
    Permanent(String),
    #[error("{0}")]
    Transient(String),
}

impl JobError {
    fn retryable(&self) -> bool {
        matches!(self, JobError::Transient(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff(1), Duration::from_secs(5));
        assert_eq!(backoff(2), Duration::from_secs(20));
        assert_eq!(backoff(3), Duration::from_secs(80));
        assert_eq!(backoff(50), Duration::from_secs(3600));
    }

    #[test]
    fn payload_round_trips() {
        let p = JobPayload::Media {
            file_id: Uuid::nil(),
        };
        let s = serde_json::to_string(&p).unwrap();
        assert_eq!(
            s,
            r#"{"type":"media","file_id":"00000000-0000-0000-0000-000000000000"}"#
        );
        assert_eq!(serde_json::from_str::<JobPayload>(&s).unwrap(), p);
    }
}
