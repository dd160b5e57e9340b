//! `stowage cleanup`: deletes expired tus uploads (row, staging blob and
//! reservation), releases expired reservations and removes staging files that
//! no live reservation owns. Each reservation is released exactly once
//! (`DELETE … RETURNING` decides who releases it).

use std::time::{Duration, SystemTime};

use chrono::Utc;
use serde::Serialize;
use uuid::Uuid;

use crate::app::AppState;

/// What one cleanup pass did.
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct CleanupReport {
    /// tus uploads past their `Upload-Expires`, deleted with their data.
    pub expired_uploads: u64,
    pub expired_reservations: u64,
    pub stale_temp_files: u64,
    pub stale_temp_bytes: u64,
}

/// Temp files younger than this are left alone even without a reservation
/// (a file whose reservation is being created right now).
pub const TEMP_GRACE: Duration = Duration::from_secs(60);

/// Runs one pass.
pub async fn run(state: &AppState, temp_grace: Duration) -> anyhow::Result<CleanupReport> {
    // Expired tus uploads first: their reservations expire with them, and
    // are released here (once: `release` answers true only to one caller).
    let mut report = CleanupReport::default();
    for id in state.meta.expire_tus_uploads(Utc::now()).await? {
        report.expired_uploads += 1;
        state.blobs.discard(id).await?;
        if state.meta.release(id).await? {
            report.expired_reservations += 1;
        }
        tracing::info!(upload = %id, "expired tus upload removed");
    }
    report.expired_reservations += state.meta.expire_reservations(Utc::now()).await?;
    if state.blobs.kind() == "local" {
        let tmp = state.config.storage_root.join(".tmp");
        let mut dir = tokio::fs::read_dir(&tmp).await?;
        while let Some(entry) = dir.next_entry().await? {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let meta = match entry.metadata().await {
                Ok(m) if m.is_file() => m,
                _ => continue,
            };
            let age = meta
                .modified()
                .ok()
                .and_then(|m| SystemTime::now().duration_since(m).ok())
                .unwrap_or_default();
            if age < temp_grace {
                continue;
            }
            let live = match name.strip_suffix(".part").and_then(|s| Uuid::try_parse(s).ok()) {
                Some(id) => state.meta.reservation_exists(id).await?,
                None => false,
            };
            if !live {
                match tokio::fs::remove_file(entry.path()).await {
                    Ok(()) => {
                        report.stale_temp_files += 1;
                        report.stale_temp_bytes += meta.len();
                        tracing::info!(file = %name, bytes = meta.len(), "removed stale temp file");
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    Ok(report)
}
