//! Periodic operator tasks inside `serve`: a cleanup pass every
//! `cleanup_interval` and a report-only audit every `audit_interval`
//! (zero disables either).
//!
//! Several processes may share one database, so each run first takes the
//! task's lease ([`super::lease`]) for one interval: whoever holds it runs
//! the task, the others skip that tick. The lease is renewed while a long
//! run is in progress and then left to expire, so across all processes a
//! task runs about once per interval. The first run comes one interval after
//! start-up. Every run is recorded in `task_runs` (`stowage tasks` lists
//! them), "running" until it ends, or forever if its process died.

use std::time::Duration;

use tokio::{sync::watch, task::JoinHandle};
use uuid::Uuid;

use super::{audit, lease};
use crate::{core::Core, jobs::cleanup};

/// Lease names in `task_leases`.
pub const CLEANUP_TASK: &str = "cleanup";
pub const AUDIT_TASK: &str = "audit";

/// Starts the scheduler; it stops when `stop` turns true.
pub fn spawn(state: Core, stop: watch::Receiver<bool>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let holder = format!(
            "{}:{}:{}",
            crate::node::hostname(),
            std::process::id(),
            Uuid::new_v4().simple()
        );
        let cleanup_every = state.config.cleanup_interval;
        let audit_every = state.config.audit_interval;
        let mut tasks = Vec::new();
        if !cleanup_every.is_zero() {
            tasks.push(tokio::spawn(every(
                state.clone(),
                stop.clone(),
                holder.clone(),
                CLEANUP_TASK,
                cleanup_every,
            )));
        }
        if !audit_every.is_zero() {
            tasks.push(tokio::spawn(every(
                state.clone(),
                stop.clone(),
                holder.clone(),
                AUDIT_TASK,
                audit_every,
            )));
        }
        for t in tasks {
            let _ = t.await;
        }
    })
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Ticks every `interval` until stopped; runs `task` when the lease is ours.
async fn every(
    state: Core,
    mut stop: watch::Receiver<bool>,
    holder: String,
    task: &'static str,
    interval: Duration,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stopped(&mut stop) => return,
        }
        match lease::try_acquire(&state, task, &holder, interval).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::debug!(task, "another process holds the lease; skipping this run");
                continue;
            }
            Err(e) => {
                tracing::warn!(task, error = %e, "could not take the task lease");
                continue;
            }
        }
        let run_id = match lease::run_started(&state, task, &holder).await {
            Ok(id) => Some(id),
            Err(e) => {
                tracing::warn!(task, error = %e, "could not record the run");
                None
            }
        };
        let run = run_task(&state, task);
        tokio::pin!(run);
        // Keep the lease while a long run is in progress.
        let renew_every = (interval / 2).max(Duration::from_millis(500));
        loop {
            tokio::select! {
                (outcome, summary) = &mut run => {
                    if let Some(id) = run_id {
                        if let Err(e) = lease::run_finished(&state, id, outcome, &summary).await {
                            tracing::warn!(task, error = %e, "could not record the end of the run");
                        }
                    }
                    break;
                }
                _ = stopped(&mut stop) => {
                    // Shutting down mid-run: let another process take over.
                    let _ = lease::release(&state, task, &holder).await;
                    return;
                }
                _ = tokio::time::sleep(renew_every) => {
                    if let Err(e) = lease::try_acquire(&state, task, &holder, interval).await {
                        tracing::warn!(task, error = %e, "could not renew the task lease");
                    }
                }
            }
        }
    }
}

/// Runs one task; returns its outcome (`ok`, `problems`, `failed`) and a
/// one-line summary for `task_runs`.
async fn run_task(state: &Core, task: &'static str) -> (&'static str, String) {
    match task {
        CLEANUP_TASK => match cleanup::run(state, cleanup::TEMP_GRACE).await {
            Ok(r) => {
                if r.expired_reservations > 0 || r.stale_temp_files > 0 {
                    tracing::info!(
                        expired_reservations = r.expired_reservations,
                        stale_temp_files = r.stale_temp_files,
                        stale_temp_bytes = r.stale_temp_bytes,
                        "scheduled cleanup"
                    );
                } else {
                    tracing::debug!("scheduled cleanup: nothing to do");
                }
                (
                    "ok",
                    format!(
                        "{} expired upload(s), {} expired reservation(s), {} stale staging entr(ies), {} unpublished blob(s)",
                        r.expired_uploads, r.expired_reservations, r.stale_temp_files, r.unpublished_blobs
                    ),
                )
            }
            Err(e) => {
                tracing::error!(error = %e, "scheduled cleanup failed");
                ("failed", format!("{e:#}"))
            }
        },
        AUDIT_TASK => match audit::run(state, audit::AuditOptions::default()).await {
            Ok(r) => {
                let summary = format!(
                    "{} user(s), {} file(s); drift {}, missing {}, size mismatch {}, orphans {}, stray staging {}, errors {}",
                    r.users_checked,
                    r.files_checked,
                    r.drift.len(),
                    r.missing.len(),
                    r.size_mismatch.len(),
                    r.orphans.len(),
                    r.stray_temp.len(),
                    r.errors.len()
                );
                if r.clean {
                    tracing::info!(
                        users = r.users_checked,
                        files = r.files_checked,
                        recent_orphans = r.recent_orphans.len(),
                        "scheduled audit: clean"
                    );
                    ("ok", summary)
                } else {
                    tracing::warn!(
                        users = r.users_checked,
                        files = r.files_checked,
                        drift = r.drift.len(),
                        missing = r.missing.len(),
                        size_mismatch = r.size_mismatch.len(),
                        orphans = r.orphans.len(),
                        stray_temp = r.stray_temp.len(),
                        errors = r.errors.len(),
                        "scheduled audit found problems; run `stowage audit` for details and `stowage audit --fix` to repair"
                    );
                    ("problems", summary)
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "scheduled audit failed");
                ("failed", format!("{e:#}"))
            }
        },
        _ => ("failed", format!("unknown task {task}")),
    }
}
