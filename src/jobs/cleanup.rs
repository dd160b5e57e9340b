//! `stowage cleanup`: releases what stopped processes held (see
//! [`crate::node`]), deletes expired tus uploads (row, staging blob and
//! reservation), releases expired reservations and removes staging files that
//! no live reservation owns. Each reservation is released exactly once
//! (`DELETE … RETURNING` decides who releases it). It also prunes the
//! event outbox ([`crate::jobs::webhooks::prune`]).

use std::time::Duration;

use serde::Serialize;

use crate::core::Core;

/// What one cleanup pass did.
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct CleanupReport {
    /// tus uploads past their `Upload-Expires`, deleted with their data.
    pub expired_uploads: u64,
    pub expired_reservations: u64,
    /// Signed upload URLs past their expiry, used or not.
    pub expired_signed_uploads: u64,
    pub stale_temp_files: u64,
    pub stale_temp_bytes: u64,
    /// Blobs published by a process that died before committing their row.
    pub unpublished_blobs: u64,
    /// Reservations of requests whose process is gone (a stopped node, or
    /// one whose heartbeat stopped), released without waiting for expiry.
    pub reclaimed_reservations: u64,
    /// Events past their retention (`STOWAGE_EVENTS_RETENTION_SECS`).
    pub pruned_events: u64,
}

/// Temp files younger than this are left alone even without a reservation
/// (a file whose reservation is being created right now).
pub const TEMP_GRACE: Duration = Duration::from_secs(60);

/// Runs one pass (`stowage cleanup`, which also reclaims what this data
/// dir's node held when no process of it runs).
pub async fn run(state: &Core, temp_grace: Duration) -> anyhow::Result<CleanupReport> {
    let reclaimed = crate::node::reclaim_for_cleanup(state, state.now()).await?;
    let mut report = pass(state, temp_grace).await?;
    report.reclaimed_reservations = reclaimed.reservations;
    report.unpublished_blobs += reclaimed.unpublished_blobs;
    Ok(report)
}

/// Expiry and the sweep of the staging area.
async fn pass(state: &Core, temp_grace: Duration) -> anyhow::Result<CleanupReport> {
    // Expired tus uploads first: their reservations expire with them, and
    // are released here (once: `release` answers true only to one caller).
    let mut report = CleanupReport::default();
    for id in state.meta.expire_tus_uploads(state.now()).await? {
        report.expired_uploads += 1;
        state.blobs.discard(id).await?;
        if state.meta.release(id).await? {
            report.expired_reservations += 1;
        }
        tracing::info!(upload = %id, "expired tus upload removed");
    }
    let now = state.now();
    for (id, user) in state.meta.expired_reservations(now).await? {
        report.unpublished_blobs +=
            crate::node::sweep_unpublished_any(state, id, &user, temp_grace).await?;
    }
    report.expired_reservations += state.meta.expire_reservations(now).await?;
    // Signed upload URLs past their expiry: their reservations went above.
    report.expired_signed_uploads = state.meta.expire_signed_uploads(now).await?;
    // Staging entries no reservation owns: a temp file or multipart
    // upload whose process died, an expired tus upload whose row was
    // already gone, or anything else left in the staging area.
    let cutoff = now - chrono::Duration::from_std(temp_grace).unwrap_or_default();
    for e in state.blobs.list_staged().await? {
        if e.modified.map_or(true, |m| m > cutoff) {
            continue;
        }
        if let Some(id) = e.id {
            if state.meta.reservation_exists(id).await? {
                continue;
            }
        }
        state.blobs.remove_staged(&e).await?;
        report.stale_temp_files += 1;
        report.stale_temp_bytes += e.len;
        tracing::info!(key = %e.key, bytes = e.len, "removed stale staging data");
    }
    report.pruned_events = crate::jobs::webhooks::prune(state).await?;
    Ok(report)
}
