//! Database leases for periodic tasks, so that several `stowage` processes
//! sharing one database run a task one at a time.
//!
//! A lease is a row of `task_leases` (name, holder, expires_at), taken and
//! renewed by [`crate::meta::LeaseStore`] with one conditional upsert. Each
//! run is also recorded in `task_runs` (who ran it, when, how it ended),
//! which `stowage tasks` shows.

use std::time::Duration;

use crate::core::Core;
pub use crate::meta::TaskRun;

/// Takes (or renews, when `holder` already has it) the lease `name` for
/// `ttl`. True when `holder` holds it afterwards.
pub async fn try_acquire(
    state: &Core,
    name: &str,
    holder: &str,
    ttl: Duration,
) -> anyhow::Result<bool> {
    Ok(state.meta.try_acquire_lease(name, holder, ttl).await?)
}

/// Gives the lease up early; a no-op unless `holder` holds it.
pub async fn release(state: &Core, name: &str, holder: &str) -> anyhow::Result<()> {
    Ok(state.meta.release_lease(name, holder).await?)
}

/// The current holder of an unexpired lease, if any.
pub async fn holder(state: &Core, name: &str) -> anyhow::Result<Option<String>> {
    Ok(state.meta.lease_holder(name).await?)
}

/// Records that `holder` starts a run of `name` (which it must hold the
/// lease of); prunes old history. Returns the run's id.
pub async fn run_started(state: &Core, name: &str, holder: &str) -> anyhow::Result<i64> {
    Ok(state.meta.task_run_started(name, holder).await?)
}

/// Records how run `id` ended.
pub async fn run_finished(
    state: &Core,
    id: i64,
    outcome: &str,
    summary: &str,
) -> anyhow::Result<()> {
    Ok(state.meta.task_run_finished(id, outcome, summary).await?)
}

/// The newest `limit` runs, of task `name` or of every task, newest first.
pub async fn recent_runs(
    state: &Core,
    name: Option<&str>,
    limit: i64,
) -> anyhow::Result<Vec<TaskRun>> {
    Ok(state.meta.recent_task_runs(name, limit).await?)
}
