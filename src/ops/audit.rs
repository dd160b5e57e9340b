//! `stowage audit` (SPEC §6): reconciles the database with the volume.
//!
//! Per user it compares the trigger-kept counters (`user_storage.total_bytes`,
//! `file_count`) with the sum of the user's rows ("drift"), and the rows with
//! the files under `{root}/{user}/` ("missing" blobs: a row without a file;
//! "size_mismatch": a file whose length differs from its row; "orphans": a
//! file without a row). Thumbnails under `{user}/.thumbs/` are counted and
//! an unreferenced one is an orphan too. Stray staging files in `.tmp` with
//! no live reservation are reported as well.
//!
//! Both sides are streamed: rows are fetched one user at a time, and the
//! volume is walked with directory iterators (only directory paths are kept
//! on a stack, never the list of files). Orphans and temp files younger than
//! the grace period are listed but never touched: they may be uploads in
//! progress. `--fix` repairs counters and removes the older orphans and
//! stray temp files; it never deletes a row.

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::progress::Progress;
use crate::{app::AppState, domain::names::user_dir_name};

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

fn age_of(meta: &std::fs::Metadata, now: SystemTime) -> Duration {
    meta.modified()
        .ok()
        .and_then(|m| now.duration_since(m).ok())
        .unwrap_or_default()
}

/// Relative path with `/` separators.
fn rel_key(root: &Path, p: &Path) -> String {
    p.strip_prefix(root)
        .unwrap_or(p)
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
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

/// Streams every regular file under `dir`, calling `f(path, metadata)`.
/// Only directories wait on the stack; unreadable ones become errors.
async fn walk(dir: &Path, errors: &mut Vec<String>, mut f: impl FnMut(PathBuf, std::fs::Metadata)) {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let mut rd = match tokio::fs::read_dir(&d).await {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                errors.push(format!("cannot read {}: {e}", d.display()));
                continue;
            }
        };
        loop {
            match rd.next_entry().await {
                Ok(Some(entry)) => {
                    let Ok(ft) = entry.file_type().await else {
                        continue;
                    };
                    if ft.is_dir() {
                        stack.push(entry.path());
                    } else if ft.is_file() {
                        if let Ok(meta) = entry.metadata().await {
                            f(entry.path(), meta);
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    errors.push(format!("cannot list {}: {e}", d.display()));
                    break;
                }
            }
        }
    }
}

/// A file that was found without a row, before it is classified by age.
fn stray(
    root: &Path,
    path: &Path,
    meta: &std::fs::Metadata,
    now: SystemTime,
    kind: &str,
) -> StrayFile {
    StrayFile {
        path: rel_key(root, path),
        kind: kind.to_string(),
        bytes: meta.len(),
        age_secs: age_of(meta, now).as_secs(),
        removed: false,
    }
}

/// Runs one audit. Only the local volume is supported.
pub async fn run(state: &AppState, mut opts: AuditOptions) -> anyhow::Result<AuditReport> {
    if state.blobs.kind() != "local" {
        anyhow::bail!("audit needs the local volume (STOWAGE_BLOB_STORE=local)");
    }
    let root = state.config.storage_root.clone();
    let started_at = Utc::now();
    let now = SystemTime::now();
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

    // 1. Counters against row sums.
    r.drift = find_drift(state).await?;

    // 2. Rows against the volume, one user at a time.
    let users = state.meta.list_users().await?;
    let total_users = users.len();
    let mut known_dirs: HashSet<String> = HashSet::with_capacity(users.len());
    opts.progress.say(format!("checking {total_users} user(s)"));
    for u in &users {
        let dir_name = user_dir_name(&u.user_id);
        known_dirs.insert(dir_name.clone());
        let rows = state.meta.all_files(Some(&u.user_id)).await?;
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
        let mut mismatches = Vec::new();
        let mut errors = Vec::new();
        let udir = root.join(&dir_name);
        walk(&udir, &mut errors, |path, meta| {
            let key = rel_key(&root, &path);
            let kind = kind_of(&key);
            if kind == "thumbnail" {
                r.thumbnails += 1;
                r.thumbnail_bytes += meta.len();
            }
            match by_key.get(key.as_str()) {
                Some(&(i, true)) => seen_thumb[i] = true,
                Some(&(i, false)) => {
                    seen_file[i] = true;
                    r.bytes_checked += meta.len();
                    if meta.len() as i64 != rows[i].file_size {
                        mismatches.push(SizeMismatch {
                            user_id: u.user_id.clone(),
                            file_id: rows[i].id,
                            key: key.clone(),
                            expected_bytes: rows[i].file_size,
                            actual_bytes: meta.len(),
                        });
                    }
                }
                None => orphan_candidates.push(stray(&root, &path, &meta, now, kind)),
            }
        })
        .await;
        r.errors.extend(errors);
        r.size_mismatch.extend(mismatches);
        for (i, f) in rows.iter().enumerate() {
            let lost_file = !seen_file[i];
            let lost_thumb = f.thumbnail_path.is_some() && !seen_thumb[i];
            if !lost_file && !lost_thumb {
                continue;
            }
            // The row may have been deleted (row first, then blob) while we
            // walked: only a row that still exists is missing its blob.
            if state.meta.get_file(&u.user_id, f.id).await?.is_none() {
                continue;
            }
            if lost_file && !root.join(&f.file_path).exists() {
                r.missing.push(MissingBlob {
                    user_id: u.user_id.clone(),
                    file_id: f.id,
                    kind: "file".into(),
                    key: f.file_path.clone(),
                    expected_bytes: f.file_size,
                });
            }
            if let (true, Some(t)) = (lost_thumb, &f.thumbnail_path) {
                if !root.join(t).exists() {
                    r.missing.push(MissingBlob {
                        user_id: u.user_id.clone(),
                        file_id: f.id,
                        kind: "thumbnail".into(),
                        key: t.clone(),
                        expected_bytes: 0,
                    });
                }
            }
        }
        r.users_checked += 1;
        r.files_checked += rows.len() as u64;
        let (uc, fc) = (r.users_checked, r.files_checked);
        opts.progress
            .tick(|| format!("{uc}/{total_users} users, {fc} files"));
    }

    // 3. Directories of no known user, and stray files at the top level.
    let mut top = tokio::fs::read_dir(&root).await?;
    while let Some(entry) = top.next_entry().await? {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == ".tmp" || name == "lost+found" || known_dirs.contains(&name) {
            continue;
        }
        let Ok(ft) = entry.file_type().await else {
            continue;
        };
        if ft.is_dir() {
            let mut errors = Vec::new();
            walk(&entry.path(), &mut errors, |path, meta| {
                let key = rel_key(&root, &path);
                let kind = kind_of(&key);
                if kind == "thumbnail" {
                    r.thumbnails += 1;
                    r.thumbnail_bytes += meta.len();
                }
                orphan_candidates.push(stray(&root, &path, &meta, now, kind));
            })
            .await;
            r.errors.extend(errors);
        } else if ft.is_file() {
            if let Ok(meta) = entry.metadata().await {
                orphan_candidates.push(stray(&root, &entry.path(), &meta, now, "unknown"));
            }
        }
    }
    for o in orphan_candidates {
        if o.age_secs >= grace.as_secs() {
            r.orphans.push(o);
        } else {
            r.recent_orphans.push(o);
        }
    }

    // 4. Staging files nobody owns.
    let tmp = root.join(".tmp");
    if let Ok(mut rd) = tokio::fs::read_dir(&tmp).await {
        while let Some(entry) = rd.next_entry().await? {
            let Ok(meta) = entry.metadata().await else {
                continue;
            };
            if !meta.is_file() || age_of(&meta, now) < grace {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            let live = match name
                .strip_suffix(".part")
                .and_then(|s| Uuid::try_parse(s).ok())
            {
                Some(id) => state.meta.reservation_exists(id).await?,
                None => false,
            };
            if !live {
                r.stray_temp
                    .push(stray(&root, &entry.path(), &meta, now, "temp"));
            }
        }
    }

    // 5. Repairs.
    if opts.fix {
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
        for o in r.orphans.iter_mut().chain(r.stray_temp.iter_mut()) {
            match tokio::fs::remove_file(root.join(&o.path)).await {
                Ok(()) => o.removed = true,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => o.removed = true,
                Err(e) => r.errors.push(format!("cannot remove {}: {e}", o.path)),
            }
        }
    }

    r.finished_at = Utc::now();
    r.clean = r.compute_clean();
    opts.progress.say(format!(
        "done: {} users, {} files, {}",
        r.users_checked,
        r.files_checked,
        if r.clean { "clean" } else { "problems found" }
    ));
    Ok(r)
}

/// Users whose counters differ from their row sums. A difference is
/// confirmed by reading again, so that a commit landing between the two
/// queries is not reported as drift.
async fn find_drift(state: &AppState) -> anyhow::Result<Vec<Drift>> {
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

async fn drift_once(state: &AppState) -> anyhow::Result<Vec<Drift>> {
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
