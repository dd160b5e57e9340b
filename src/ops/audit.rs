//! `stowage audit` (SPEC §6): reconciles the database with the blob store,
//! the local volume or an S3 bucket alike (through [`crate::blob::BlobStore`]'s
//! listings).
//!
//! Per user it compares the trigger-kept counters (`user_storage.total_bytes`,
//! `file_count`) with the sum of the user's rows ("drift"), and the rows with
//! the blobs under `{user}/` ("missing" blobs: a row without a blob;
//! "size_mismatch": a blob whose length differs from its row; "orphans": a
//! blob without a row). Thumbnails under `{user}/.thumbs/` are counted and
//! an unreferenced one is an orphan too. Staging data (`.tmp` on the volume,
//! `.staging/` in a bucket) with no live reservation is reported as well.
//!
//! Rows and blobs are fetched one user at a time, so memory follows the
//! largest user, not the whole store. Orphans and staging data younger than
//! the grace period are listed but never touched: they may be uploads in
//! progress. `--fix` repairs counters (re-checking the quota thresholds of
//! each user it corrects, as every change of usage does) and removes the
//! older orphans and stray staging data; it never deletes a row.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::progress::Progress;
use crate::{
    blob::{BlobEntry, BlobError, Modified, StagedEntry},
    core::Core,
    domain::names::user_dir_name,
    meta::FileRecord,
};

/// Default grace period for orphans and temp files.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(24 * 3600);

/// How an audit runs.
#[derive(Debug)]
pub struct AuditOptions {
    /// Repair counters and remove old orphans and stray temp files.
    pub fix: bool,
    /// Orphans and temp files younger than this are left alone.
    pub grace: Duration,
    /// Progress lines on stderr.
    pub progress: Progress,
}

impl Default for AuditOptions {
    fn default() -> Self {
        AuditOptions {
            fix: false,
            grace: DEFAULT_GRACE,
            progress: Progress::off(),
        }
    }
}

/// Counters that disagree with the rows.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Drift {
    pub user_id: String,
    pub counter_bytes: i64,
    pub row_bytes: i64,
    pub counter_files: i64,
    pub row_files: i64,
    /// Set by `--fix` once the counters equal the rows.
    pub repaired: bool,
}

/// A row whose blob (or thumbnail) is not on the volume.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct MissingBlob {
    pub user_id: String,
    pub file_id: Uuid,
    /// `file` or `thumbnail`.
    pub kind: String,
    pub key: String,
    /// The row's size (for a thumbnail: unknown, 0).
    pub expected_bytes: i64,
}

/// A blob whose length differs from its row.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SizeMismatch {
    pub user_id: String,
    pub file_id: Uuid,
    pub key: String,
    pub expected_bytes: i64,
    pub actual_bytes: u64,
}

/// A file on the volume that no row references, or a stray temp file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct StrayFile {
    /// Path relative to the volume root.
    pub path: String,
    /// `file`, `thumbnail`, `temp` or `unknown` (outside the layout).
    pub kind: String,
    pub bytes: u64,
    pub age_secs: u64,
    /// Set by `--fix` once the file is gone.
    pub removed: bool,
}

/// What an audit found (and, with `--fix`, did). A stable, serializable
/// shape: `stowage audit --json` prints it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AuditReport {
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub fix: bool,
    pub grace_secs: u64,
    pub users_checked: u64,
    /// File rows checked against the volume.
    pub files_checked: u64,
    /// Bytes of the blobs found for those rows.
    pub bytes_checked: u64,
    /// Thumbnails on the volume (referenced or not) and their bytes; system
    /// data, not counted against users.
    pub thumbnails: u64,
    pub thumbnail_bytes: u64,
    pub drift: Vec<Drift>,
    pub missing: Vec<MissingBlob>,
    pub size_mismatch: Vec<SizeMismatch>,
    /// Orphans older than the grace period (removed by `--fix`).
    pub orphans: Vec<StrayFile>,
    /// Orphans younger than the grace period: listed, never touched.
    pub recent_orphans: Vec<StrayFile>,
    /// Temp files older than the grace period with no live reservation.
    pub stray_temp: Vec<StrayFile>,
    /// Problems the audit itself ran into (unreadable directories, failed
    /// removals).
    pub errors: Vec<String>,
    /// True when nothing needs attention: no problem found, or (with
    /// `--fix`) everything found was repaired. Recent orphans do not count.
    pub clean: bool,
}

impl AuditReport {
    fn compute_clean(&self) -> bool {
        self.drift.iter().all(|d| d.repaired)
            && self.missing.is_empty()
            && self.size_mismatch.is_empty()
            && self.orphans.iter().all(|o| o.removed)
            && self.stray_temp.iter().all(|o| o.removed)
            && self.errors.is_empty()
    }

    /// A human-readable report.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "audit {}: {} user(s), {} file(s), {} bytes checked; {} thumbnail(s), {} bytes",
            if self.fix { "--fix" } else { "(report only)" },
            self.users_checked,
            self.files_checked,
            self.bytes_checked,
            self.thumbnails,
            self.thumbnail_bytes
        );
        let mark = |done: bool, word: &str| {
            if done {
                format!(" [{word}]")
            } else {
                String::new()
            }
        };
        if !self.drift.is_empty() {
            let _ = writeln!(s, "drift ({}):", self.drift.len());
            for d in &self.drift {
                let _ = writeln!(
                    s,
                    "  {}: counters {} bytes / {} files, rows {} bytes / {} files{}",
                    d.user_id,
                    d.counter_bytes,
                    d.counter_files,
                    d.row_bytes,
                    d.row_files,
                    mark(d.repaired, "repaired")
                );
            }
        }
        if !self.missing.is_empty() {
            let _ = writeln!(
                s,
                "missing blobs ({}) — rows kept, restore these from a backup:",
                self.missing.len()
            );
            for m in &self.missing {
                let _ = writeln!(
                    s,
                    "  {} {} {} ({}): {}",
                    m.user_id, m.kind, m.file_id, m.expected_bytes, m.key
                );
            }
        }
        if !self.size_mismatch.is_empty() {
            let _ = writeln!(s, "size mismatches ({}):", self.size_mismatch.len());
            for m in &self.size_mismatch {
                let _ = writeln!(
                    s,
                    "  {} {}: row {} bytes, file {} bytes: {}",
                    m.user_id, m.file_id, m.expected_bytes, m.actual_bytes, m.key
                );
            }
        }
        let files = |s: &mut String, title: &str, list: &[StrayFile], word: &str| {
            if !list.is_empty() {
                let _ = writeln!(s, "{title} ({}):", list.len());
                for o in list {
                    let _ = writeln!(
                        s,
                        "  {} {} bytes, {} s old ({}){}",
                        o.path,
                        o.bytes,
                        o.age_secs,
                        o.kind,
                        mark(o.removed, word)
                    );
                }
            }
        };
        files(&mut s, "orphans", &self.orphans, "removed");
        files(
            &mut s,
            "recent orphans, skipped (younger than the grace period)",
            &self.recent_orphans,
            "",
        );
        files(&mut s, "stray temp files", &self.stray_temp, "removed");
        for e in &self.errors {
            let _ = writeln!(s, "error: {e}");
        }
        let _ = writeln!(
            s,
            "{}",
            if self.clean {
                "clean"
            } else if self.fix {
                "NOT clean: some problems could not be repaired"
            } else {
                "NOT clean: run with --fix to repair counters and remove old orphans"
            }
        );
        s
    }
}

/// Parses a duration like `24h`, `30m`, `3600s`, `2d` or a plain number of
/// seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 24h, 30m, 3600s"))?;
    let mult = match unit.trim() {
        "" | "s" | "sec" | "secs" => 1,
        "m" | "min" | "mins" => 60,
        "h" | "hour" | "hours" => 3600,
        "d" | "day" | "days" => 86400,
        other => {
            return Err(format!(
                "invalid duration unit {other:?} in {s:?}: use s, m, h or d"
            ))
        }
    };
    n.checked_mul(mult)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("duration {s:?} is too large"))
}

fn kind_of(key: &str) -> &'static str {
    let mut parts = key.split('/');
    let _user = parts.next();
    match parts.next() {
        Some(".thumbs") => "thumbnail",
        Some("videos" | "images" | "audio" | "scenes" | "projects") => "file",
        _ => "unknown",
    }
}

fn age_secs(modified: Modified, now: DateTime<Utc>) -> u64 {
    modified
        .and_then(|m| (now - m).to_std().ok())
        .unwrap_or_default()
        .as_secs()
}

/// A blob that was found without a row, before it is classified by age.
fn stray(e: &BlobEntry, now: DateTime<Utc>, kind: &str) -> StrayFile {
    StrayFile {
        path: e.key.clone(),
        kind: kind.to_string(),
        bytes: e.len,
        age_secs: age_secs(e.modified, now),
        removed: false,
    }
}

/// True when the blob at `key` is gone (a failed check counts as present:
/// the audit reports what it knows, and the error).
async fn is_missing(state: &Core, key: &str, errors: &mut Vec<String>) -> bool {
    match state.blobs.len(key).await {
        Ok(_) => false,
        Err(BlobError::NotFound) => true,
        Err(e) => {
            errors.push(format!("cannot check {key}: {e}"));
            false
        }
    }
}

/// Runs one audit, on whichever blob store is configured: counters against
/// row sums, each user's rows against their blobs, blobs of no known user,
/// staging data nobody owns, then (with `fix`) the repairs.
pub async fn run(state: &Core, mut opts: AuditOptions) -> anyhow::Result<AuditReport> {
    // The core's clock (the wall clock outside tests) against the blobs'
    // modification times: a test clock moved forward ages them past the grace.
    let started_at = state.now();
    let now = started_at;
    let grace = opts.grace;
    let mut r = AuditReport {
        started_at,
        finished_at: started_at,
        fix: opts.fix,
        grace_secs: grace.as_secs(),
        users_checked: 0,
        files_checked: 0,
        bytes_checked: 0,
        thumbnails: 0,
        thumbnail_bytes: 0,
        drift: Vec::new(),
        missing: Vec::new(),
        size_mismatch: Vec::new(),
        orphans: Vec::new(),
        recent_orphans: Vec::new(),
        stray_temp: Vec::new(),
        errors: Vec::new(),
        clean: false,
    };
    let mut orphan_candidates: Vec<StrayFile> = Vec::new();

    r.drift = find_drift(state).await?;
    let known_dirs = check_users(state, now, &mut r, &mut orphan_candidates, &mut opts).await?;
    find_unowned(state, now, &known_dirs, &mut r, &mut orphan_candidates).await?;
    for o in orphan_candidates {
        if o.age_secs >= grace.as_secs() {
            r.orphans.push(o);
        } else {
            r.recent_orphans.push(o);
        }
    }
    let stray_staged = find_stray_staged(state, now, grace, &mut r).await?;
    if opts.fix {
        repair(state, &mut r, &stray_staged).await?;
    }

    r.finished_at = state.now();
    r.clean = r.compute_clean();
    opts.progress.say(format!(
        "done: {} users, {} files, {}",
        r.users_checked,
        r.files_checked,
        if r.clean { "clean" } else { "problems found" }
    ));
    Ok(r)
}

/// Rows against the blobs, one user at a time; blobs without a row go to
/// `orphans`. Returns the directory names of the users checked.
async fn check_users(
    state: &Core,
    now: DateTime<Utc>,
    r: &mut AuditReport,
    orphans: &mut Vec<StrayFile>,
    opts: &mut AuditOptions,
) -> anyhow::Result<HashSet<String>> {
    let users = state.meta.list_users().await?;
    let total_users = users.len();
    let mut known_dirs: HashSet<String> = HashSet::with_capacity(users.len());
    opts.progress.say(format!("checking {total_users} user(s)"));
    for u in &users {
        let dir_name = user_dir_name(&u.user_id);
        known_dirs.insert(dir_name.clone());
        let rows = state.meta.all_files(Some(&u.user_id)).await?;
        let blobs = match state.blobs.list_prefix(&format!("{dir_name}/")).await {
            Ok(b) => b,
            Err(e) => {
                r.errors
                    .push(format!("cannot list the blobs of {}: {e}", u.user_id));
                continue;
            }
        };
        let (seen_file, seen_thumb) = match_blobs(&u.user_id, &rows, &blobs, now, r, orphans);
        check_missing(state, &u.user_id, &rows, &seen_file, &seen_thumb, r).await?;
        r.users_checked += 1;
        r.files_checked += rows.len() as u64;
        let (uc, fc) = (r.users_checked, r.files_checked);
        opts.progress
            .tick(|| format!("{uc}/{total_users} users, {fc} files"));
    }
    Ok(known_dirs)
}

/// Matches one user's blobs with their rows: counts thumbnails and bytes,
/// records size mismatches, and puts blobs that no row names into
/// `orphans`. Returns, per row, whether its file and its thumbnail were seen.
fn match_blobs(
    user: &str,
    rows: &[FileRecord],
    blobs: &[BlobEntry],
    now: DateTime<Utc>,
    r: &mut AuditReport,
    orphans: &mut Vec<StrayFile>,
) -> (Vec<bool>, Vec<bool>) {
    // key -> (row index, is thumbnail)
    let mut by_key: HashMap<&str, (usize, bool)> = HashMap::with_capacity(rows.len() * 2);
    for (i, f) in rows.iter().enumerate() {
        by_key.insert(f.file_path.as_str(), (i, false));
        if let Some(t) = &f.thumbnail_path {
            by_key.insert(t.as_str(), (i, true));
        }
    }
    let mut seen_file = vec![false; rows.len()];
    let mut seen_thumb = vec![false; rows.len()];
    for e in blobs {
        let kind = kind_of(&e.key);
        if kind == "thumbnail" {
            r.thumbnails += 1;
            r.thumbnail_bytes += e.len;
        }
        match by_key.get(e.key.as_str()) {
            Some(&(i, true)) => seen_thumb[i] = true,
            Some(&(i, false)) => {
                seen_file[i] = true;
                r.bytes_checked += e.len;
                if e.len as i64 != rows[i].file_size {
                    r.size_mismatch.push(SizeMismatch {
                        user_id: user.to_string(),
                        file_id: rows[i].id,
                        key: e.key.clone(),
                        expected_bytes: rows[i].file_size,
                        actual_bytes: e.len,
                    });
                }
            }
            None => orphans.push(stray(e, now, kind)),
        }
    }
    (seen_file, seen_thumb)
}

/// Rows whose file or thumbnail was not listed: missing, once the row is
/// confirmed to still exist and the blob to still be absent.
async fn check_missing(
    state: &Core,
    user: &str,
    rows: &[FileRecord],
    seen_file: &[bool],
    seen_thumb: &[bool],
    r: &mut AuditReport,
) -> anyhow::Result<()> {
    for (i, f) in rows.iter().enumerate() {
        let lost_file = !seen_file[i];
        let lost_thumb = f.thumbnail_path.is_some() && !seen_thumb[i];
        if !lost_file && !lost_thumb {
            continue;
        }
        // The row may have been deleted (row first, then blob) while we
        // listed, or committed after (blob first, then row): only a row
        // that still exists and whose blob is still absent is missing it.
        if state.meta.get_file(user, f.id).await?.is_none() {
            continue;
        }
        if lost_file && is_missing(state, &f.file_path, &mut r.errors).await {
            r.missing.push(MissingBlob {
                user_id: user.to_string(),
                file_id: f.id,
                kind: "file".into(),
                key: f.file_path.clone(),
                expected_bytes: f.file_size,
            });
        }
        if let (true, Some(t)) = (lost_thumb, &f.thumbnail_path) {
            if is_missing(state, t, &mut r.errors).await {
                r.missing.push(MissingBlob {
                    user_id: user.to_string(),
                    file_id: f.id,
                    kind: "thumbnail".into(),
                    key: t.clone(),
                    expected_bytes: 0,
                });
            }
        }
    }
    Ok(())
}

/// Directories of no known user, and stray blobs at the top level: all
/// orphans.
async fn find_unowned(
    state: &Core,
    now: DateTime<Utc>,
    known_dirs: &HashSet<String>,
    r: &mut AuditReport,
    orphans: &mut Vec<StrayFile>,
) -> anyhow::Result<()> {
    let (dirs, top_blobs) = state.blobs.list_top().await?;
    for e in &top_blobs {
        orphans.push(stray(e, now, "unknown"));
    }
    for dir in dirs {
        if dir == "lost+found" || known_dirs.contains(&dir) {
            continue;
        }
        match state.blobs.list_prefix(&format!("{dir}/")).await {
            Ok(blobs) => {
                for e in &blobs {
                    let kind = kind_of(&e.key);
                    if kind == "thumbnail" {
                        r.thumbnails += 1;
                        r.thumbnail_bytes += e.len;
                    }
                    orphans.push(stray(e, now, kind));
                }
            }
            Err(e) => r.errors.push(format!("cannot list {dir}/: {e}")),
        }
    }
    Ok(())
}

/// Staging data older than `grace` that no live reservation owns, reported
/// in `stray_temp` and returned (in the same order) for the repairs.
async fn find_stray_staged(
    state: &Core,
    now: DateTime<Utc>,
    grace: Duration,
    r: &mut AuditReport,
) -> anyhow::Result<Vec<StagedEntry>> {
    let mut stray_staged = Vec::new();
    for e in state.blobs.list_staged().await? {
        if age_secs(e.modified, now) < grace.as_secs() {
            continue;
        }
        let live = match e.id {
            Some(id) => state.meta.reservation_exists(id).await?,
            None => false,
        };
        if !live {
            r.stray_temp.push(StrayFile {
                path: e.key.clone(),
                kind: "temp".into(),
                bytes: e.len,
                age_secs: age_secs(e.modified, now),
                removed: false,
            });
            stray_staged.push(e);
        }
    }
    Ok(stray_staged)
}

/// `--fix`: repairs the counters (marking each drift repaired when a fresh
/// look no longer finds it) and removes the old orphans and stray staging
/// data; never a row.
async fn repair(
    state: &Core,
    r: &mut AuditReport,
    stray_staged: &[StagedEntry],
) -> anyhow::Result<()> {
    if !r.drift.is_empty() {
        let changed = state.meta.repair_counters().await?;
        tracing::info!(users = changed, "audit repaired counters");
        let still: HashSet<String> = find_drift(state)
            .await?
            .into_iter()
            .map(|d| d.user_id)
            .collect();
        for d in &mut r.drift {
            d.repaired = !still.contains(&d.user_id);
        }
    }
    for o in r.orphans.iter_mut() {
        match state.blobs.remove(&o.path).await {
            Ok(()) => o.removed = true,
            Err(e) => r.errors.push(format!("cannot remove {}: {e}", o.path)),
        }
    }
    for (o, e) in r.stray_temp.iter_mut().zip(stray_staged) {
        match state.blobs.remove_staged(e).await {
            Ok(()) => o.removed = true,
            Err(e) => r.errors.push(format!("cannot remove {}: {e}", o.path)),
        }
    }
    Ok(())
}

/// Users whose counters differ from their row sums. A difference is
/// confirmed by reading again, so that a commit landing between the two
/// queries is not reported as drift.
async fn find_drift(state: &Core) -> anyhow::Result<Vec<Drift>> {
    let mut confirmed: Option<Vec<Drift>> = None;
    for _ in 0..5 {
        let current = drift_once(state).await?;
        if current.is_empty() {
            return Ok(current);
        }
        match &confirmed {
            Some(prev) if *prev == current => return Ok(current),
            _ => confirmed = Some(current),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(confirmed.unwrap_or_default())
}

/// Users whose counters differ from their row sums now (one reading).
pub(crate) async fn drift_once(state: &Core) -> anyhow::Result<Vec<Drift>> {
    let users = state.meta.list_users().await?;
    let totals: HashMap<String, (i64, i64)> = state
        .meta
        .row_totals()
        .await?
        .into_iter()
        .map(|(u, b, n)| (u, (b, n)))
        .collect();
    Ok(users
        .into_iter()
        .filter_map(|u| {
            let (rb, rn) = totals.get(&u.user_id).copied().unwrap_or((0, 0));
            (u.total_bytes != rb || u.file_count != rn).then_some(Drift {
                user_id: u.user_id,
                counter_bytes: u.total_bytes,
                row_bytes: rb,
                counter_files: u.file_count,
                row_files: rn,
                repaired: false,
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86400));
        assert_eq!(parse_duration("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_duration("3600s").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("3600").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(172800));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        for bad in ["", "h", "1w", "-1h", "1.5h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn kinds() {
        assert_eq!(kind_of("u/.thumbs/x.jpg"), "thumbnail");
        assert_eq!(kind_of("u/images/x.png"), "file");
        assert_eq!(kind_of("u/other/x"), "unknown");
        assert_eq!(kind_of("stray"), "unknown");
    }
}
