//! Listing archives at a destination and the retention rule.

use super::*;

pub(super) fn header_of(mut ar: tar::Archive<Box<dyn Read>>) -> anyhow::Result<BackupHeader> {
    let mut entries = ar.entries()?;
    let mut first = entries.next().context("empty archive")??;
    if entry_path(&first)? != HEADER_ENTRY {
        bail!("not a stowage backup (no {HEADER_ENTRY} first)");
    }
    let mut s = String::new();
    first.read_to_string(&mut s)?;
    let h: BackupHeader = serde_json::from_str(&s)?;
    if h.format != FORMAT {
        bail!("not a stowage backup (format {:?})", h.format);
    }
    Ok(h)
}

/// The header comes first and is small: a remote archive is read this far
/// only.
pub(super) const HEADER_READ_BYTES: u64 = 64 * 1024;

/// Archives in directory `dest` (by name), oldest first.
pub async fn list(dest: &Path) -> anyhow::Result<Vec<ArchiveInfo>> {
    list_at(&Dest::Dir(dest.to_path_buf())).await
}

pub(super) fn sort_listing(list: &mut [ArchiveInfo]) {
    list.sort_by(|a, b| {
        a.created_at
            .cmp(&b.created_at)
            .then_with(|| a.path.cmp(&b.path))
    });
}

/// Archives in `dest` (by name), oldest first, each with its header (or
/// why it could not be read).
pub async fn list_at(dest: &Dest) -> anyhow::Result<Vec<ArchiveInfo>> {
    let mut out = Vec::new();
    for (name, size) in dest.archives().await? {
        let Some(created_at) = parse_archive_name(&name) else {
            continue;
        };
        let loc = dest.location(&name);
        let l = loc.clone();
        let header = tokio::task::spawn_blocking(move || {
            let rt = tokio::runtime::Handle::current();
            let r = l.open(Some(0..size.min(HEADER_READ_BYTES)), &rt)?;
            header_of(archive_from(r)?)
        })
        .await?;
        let (header, error) = match header {
            Ok(h) => (Some(h), None),
            Err(e) => (None, Some(format!("{e:#}"))),
        };
        out.push(ArchiveInfo {
            path: PathBuf::from(loc.display()),
            created_at,
            size,
            header,
            error,
        });
    }
    sort_listing(&mut out);
    Ok(out)
}

/// Which of `archives` (name, time) retention deletes: those beyond the
/// newest `keep`, or older than `keep_days` before `now`; never `current`.
pub(super) fn retention_victims(
    mut archives: Vec<(DateTime<Utc>, String)>,
    keep: Option<usize>,
    keep_days: Option<u64>,
    current: &str,
    now: DateTime<Utc>,
) -> Vec<String> {
    // A listing may lag behind the write just made; count it anyway.
    if let Some(t) = parse_archive_name(current) {
        if !archives.iter().any(|(_, n)| n == current) {
            archives.push((t, current.to_string()));
        }
    }
    // Newest first.
    archives.sort_by(|a, b| b.cmp(a));
    let cutoff = keep_days.map(|d| now - chrono::Duration::days(d.min(365_000) as i64));
    let mut out = Vec::new();
    for (i, (t, name)) in archives.into_iter().enumerate() {
        if name == current {
            continue;
        }
        let too_many = keep.is_some_and(|k| i >= k);
        let too_old = cutoff.is_some_and(|c| t < c);
        if too_many || too_old {
            out.push(name);
        }
    }
    out
}

/// Deletes archives beyond the newest `keep`, or older than `keep_days`
/// before `now`; only names of the stowage pattern are considered, and
/// `current` (the archive just written) is never deleted. The listing is
/// the destination's own (a directory, or the objects under the prefix).
pub async fn retention(
    dest: &Dest,
    keep: Option<usize>,
    keep_days: Option<u64>,
    current: &str,
    now: DateTime<Utc>,
) -> anyhow::Result<Vec<PathBuf>> {
    if keep.is_none() && keep_days.is_none() {
        return Ok(Vec::new());
    }
    let archives = dest
        .archives()
        .await?
        .into_iter()
        .filter_map(|(name, _)| parse_archive_name(&name).map(|t| (t, name)))
        .collect();
    let mut removed = Vec::new();
    for name in retention_victims(archives, keep, keep_days, current, now) {
        dest.delete(&name).await?;
        let at = dest.location(&name).display();
        tracing::info!(archive = %at, "removed old backup");
        removed.push(PathBuf::from(at));
    }
    Ok(removed)
}
