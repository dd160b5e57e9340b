//! Verifying an archive: every entry's size and sha256 against its
//! manifest, read once front to back.

use super::*;

/// Re-reads `path` end to end: every entry's size and sha256 against the
/// manifest, the manifest against the dumped rows (each row's blob present
/// with the row's size and sha256, or recorded as skipped), and the counts
/// against the header. Memory grows with the number of files (a small
/// record each), never with their size.
pub fn verify(path: &Path, progress: Progress) -> anyhow::Result<VerifyReport> {
    verify_archive(open_archive(path)?, progress)
}

/// [`verify`] on any location: a remote archive is read as one streaming
/// GET, never copied to disk.
pub async fn verify_at(loc: &Location, progress: Progress) -> anyhow::Result<VerifyReport> {
    let loc = loc.clone();
    tokio::task::spawn_blocking(move || verify_archive(open_location(&loc)?, progress)).await?
}

pub(super) fn verify_archive(
    mut ar: tar::Archive<Box<dyn Read>>,
    mut progress: Progress,
) -> anyhow::Result<VerifyReport> {
    let mut rep = VerifyReport::default();
    // path -> (size, sha256) as found in the archive
    let mut found: HashMap<String, (u64, String)> = HashMap::new();
    // blob key -> (kind, size and sha256) expected from the rows (thumbnails: unknown)
    let mut expected: HashMap<String, Expected> = HashMap::new();
    let mut manifest: Vec<ManifestLine> = Vec::new();
    let mut users = 0u64;
    let mut rows = 0u64;
    let mut row_bytes = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    for (i, entry) in ar.entries()?.enumerate() {
        let entry = entry?;
        let name = entry_path(&entry)?;
        if i == 0 && name != HEADER_ENTRY {
            rep.problems
                .push(format!("first entry is {name:?}, not {HEADER_ENTRY}"));
        }
        let mut r = Hashing::new(entry);
        match name.as_str() {
            HEADER_ENTRY => {
                let mut s = String::new();
                r.read_to_string(&mut s)?;
                match serde_json::from_str::<BackupHeader>(&s) {
                    Ok(h) if h.format == FORMAT && h.version == VERSION => rep.header = Some(h),
                    Ok(h) => rep.problems.push(format!(
                        "unsupported format {} version {}",
                        h.format, h.version
                    )),
                    Err(e) => rep.problems.push(format!("unreadable {HEADER_ENTRY}: {e}")),
                }
            }
            USERS_ENTRY | FILES_ENTRY | MANIFEST_ENTRY => {
                let mut lines = BufReader::new(&mut r);
                let mut l = String::new();
                while {
                    l.clear();
                    lines.read_line(&mut l)? > 0
                } {
                    let t = l.trim_end();
                    if t.is_empty() {
                        continue;
                    }
                    match name.as_str() {
                        USERS_ENTRY => match serde_json::from_str::<DumpUser>(t) {
                            Ok(_) => users += 1,
                            Err(e) => rep.problems.push(format!("bad user row: {e}")),
                        },
                        FILES_ENTRY => match serde_json::from_str::<DumpFile>(t) {
                            Ok(DumpFile { file: f, .. }) => {
                                rows += 1;
                                row_bytes += f.file_size.max(0) as u64;
                                if let Some(th) = f.thumbnail_path {
                                    expected
                                        .insert(format!("{BLOB_PREFIX}{th}"), ("thumbnail", None));
                                }
                                expected.insert(
                                    format!("{BLOB_PREFIX}{}", f.file_path),
                                    ("file", Some((f.file_size, f.sha256))),
                                );
                            }
                            Err(e) => rep.problems.push(format!("bad file row: {e}")),
                        },
                        _ => match serde_json::from_str::<ManifestLine>(t) {
                            Ok(m) => manifest.push(m),
                            Err(e) => rep.problems.push(format!("bad manifest line: {e}")),
                        },
                    }
                }
            }
            n if n.starts_with(BLOB_PREFIX) => loop {
                let k = r.read(&mut buf)?;
                if k == 0 {
                    break;
                }
            },
            other => rep.problems.push(format!("unexpected entry {other:?}")),
        }
        let (size, sha) = r.finish();
        rep.entries_checked += 1;
        rep.bytes_checked += size;
        if found.insert(name.clone(), (size, sha)).is_some() {
            rep.problems.push(format!("entry {name:?} appears twice"));
        }
        let (n, b) = (rep.entries_checked, rep.bytes_checked);
        progress.tick(|| format!("{n} entries, {b} bytes read"));
    }

    let Some(header) = rep.header.clone() else {
        rep.problems.push("no backup header".into());
        return Ok(rep);
    };
    if !matches!(manifest.last(), Some(ManifestLine::Summary { .. })) {
        rep.problems
            .push("manifest missing or truncated (no summary line)".into());
    }
    if header.users != users || header.files != rows || header.bytes != row_bytes {
        rep.problems.push(format!(
            "header says {} users, {} files, {} bytes; the dump has {users}, {rows}, {row_bytes}",
            header.users, header.files, header.bytes
        ));
    }
    let mut listed: HashSet<&str> = HashSet::new();
    let mut skipped: HashSet<&str> = HashSet::new();
    let (mut n_entries, mut n_files, mut n_thumbs, mut n_bytes) = (0u64, 0u64, 0u64, 0u64);
    for m in &manifest {
        match m {
            ManifestLine::Entry {
                path,
                kind,
                size,
                sha256,
                ..
            } => {
                listed.insert(path);
                n_entries += 1;
                match kind.as_str() {
                    "file" => n_files += 1,
                    "thumbnail" => n_thumbs += 1,
                    _ => {}
                }
                if kind != "db" {
                    n_bytes += size;
                }
                match found.get(path) {
                    None => rep.problems.push(format!("{path}: in the manifest but not in the archive")),
                    Some((s, h)) if s != size || h != sha256 => rep.problems.push(format!(
                        "{path}: archive has {s} bytes sha256 {h}, manifest says {size} bytes sha256 {sha256}"
                    )),
                    Some(_) => {}
                }
                if kind != "db" {
                    match expected.get(path.as_str()) {
                        None => rep.problems.push(format!("{path}: no row references it")),
                        Some((_, Some((rs, rh)))) if *rs != *size as i64 || rh != sha256 => rep.problems.push(format!(
                            "{path}: row says {rs} bytes sha256 {rh}, manifest says {size} bytes sha256 {sha256}"
                        )),
                        Some(_) => {}
                    }
                }
            }
            ManifestLine::Skipped { key, .. } => {
                rep.skipped += 1;
                skipped.insert(key);
            }
            ManifestLine::Summary {
                entries,
                files,
                thumbnails,
                bytes,
                skipped: s,
            } => {
                if (*entries, *files, *thumbnails, *bytes, *s)
                    != (n_entries, n_files, n_thumbs, n_bytes, rep.skipped)
                {
                    rep.problems
                        .push("manifest summary does not match its entries".into());
                }
            }
        }
    }
    for name in found.keys() {
        if name != HEADER_ENTRY && name != MANIFEST_ENTRY && !listed.contains(name.as_str()) {
            rep.problems
                .push(format!("{name}: in the archive but not in the manifest"));
        }
    }
    for (key, (kind, _)) in &expected {
        let bare = &key[BLOB_PREFIX.len()..];
        if !listed.contains(key.as_str()) && !skipped.contains(bare) {
            rep.problems.push(format!(
                "{key}: the {kind} of a row is neither archived nor recorded as skipped"
            ));
        }
    }
    for name in [USERS_ENTRY, FILES_ENTRY] {
        if !listed.contains(name) {
            rep.problems.push(format!("{name} missing"));
        }
    }
    rep.problems.sort();
    rep.ok = rep.problems.is_empty();
    progress.say(format!(
        "{} entries, {} bytes: {}",
        rep.entries_checked,
        rep.bytes_checked,
        if rep.ok { "OK" } else { "FAILED" }
    ));
    Ok(rep)
}

/// What a row says about its blob: kind, and (for files) size and sha256.
pub(super) type Expected = (&'static str, Option<(i64, String)>);

/// An archive's header, rows and manifest, read whole.
#[derive(Clone, Debug)]
pub struct Contents {
    pub header: BackupHeader,
    pub users: Vec<DumpUser>,
    pub files: Vec<DumpFile>,
    pub manifest: Vec<ManifestLine>,
}

/// Reads an archive's header, rows and manifest (small archives: tests,
/// inspection); blob contents are skipped.
pub fn read_contents(path: &Path) -> anyhow::Result<Contents> {
    let mut ar = open_archive(path)?;
    let (mut header, mut users, mut files, mut manifest) =
        (None, Vec::new(), Vec::new(), Vec::new());
    for entry in ar.entries()? {
        let mut entry = entry?;
        let name = entry_path(&entry)?;
        if name.starts_with(BLOB_PREFIX) {
            continue;
        }
        let mut s = String::new();
        entry.read_to_string(&mut s)?;
        match name.as_str() {
            HEADER_ENTRY => header = Some(serde_json::from_str(&s)?),
            USERS_ENTRY => {
                users = s
                    .lines()
                    .map(serde_json::from_str)
                    .collect::<Result<_, _>>()?
            }
            FILES_ENTRY => {
                files = s
                    .lines()
                    .map(serde_json::from_str)
                    .collect::<Result<_, _>>()?
            }
            MANIFEST_ENTRY => {
                manifest = s
                    .lines()
                    .map(serde_json::from_str)
                    .collect::<Result<_, _>>()?
            }
            _ => {}
        }
    }
    Ok(Contents {
        header: header.context("no header")?,
        users,
        files,
        manifest,
    })
}
