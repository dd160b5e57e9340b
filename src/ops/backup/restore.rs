//! Restoring an archive into an empty store and volume.

use super::*;

/// What the blocking half of `restore` unpacked.
pub(super) struct Unpacked {
    header: BackupHeader,
    /// Blob keys published in the store.
    restored: HashSet<String>,
    thumbnails: u64,
}

/// Rebuilds the configured database and blob store from `archive`. The
/// database must hold no file rows.
///
/// The archive is not trusted: before anything is published, the whole of
/// it is checked against its own database snapshot. Every blob must be the
/// file or the thumbnail of exactly one row, under that row's user's
/// directory in the folder of its type (`{user}/{type dir}/{id}.{ext}`,
/// `{user}/.thumbs/{id}.{ext}`), with the row's size and sha256 (files) and
/// the manifest's (every blob); every row's blobs must be archived or
/// recorded as deleted after the snapshot; nothing else is accepted. Blobs
/// are staged while they are read and published only once all of that
/// holds; on any violation restore fails with the reason, and the target
/// keeps no blob and no row. Rows then go in in one transaction; the
/// triggers rebuild the counters, which are then checked against the rows.
pub async fn restore(
    state: &Core,
    archive: &Path,
    progress: Progress,
) -> anyhow::Result<RestoreReport> {
    restore_from(state, &Location::File(archive.to_path_buf()), progress).await
}

/// [`restore`] from any location: a remote archive is read as one
/// streaming GET, its blobs staged in the store as they arrive.
pub async fn restore_from(
    state: &Core,
    archive: &Location,
    mut progress: Progress,
) -> anyhow::Result<RestoreReport> {
    state.meta.migrate().await.context("applying migrations")?;
    if state.meta.has_files().await? {
        bail!("the configured database already has files; restore needs an empty one");
    }
    let work = scratch_root(state).join(format!("restore-{}", Uuid::new_v4()));
    mkdirs(&work)?;
    let _cleanup = RemoveOnDrop(work.clone());
    let users_path = work.join("user_storage.jsonl");
    let files_path = work.join("user_files.jsonl");
    progress.say(format!("unpacking {}", archive.display()));
    let (archive_c, work_c) = (archive.clone(), work.clone());
    let (blobs, rt) = (state.blobs.clone(), tokio::runtime::Handle::current());
    let p = std::mem::replace(&mut progress, Progress::off());
    let (unpacked, mut progress) =
        tokio::task::spawn_blocking(move || unpack(&archive_c, blobs.as_ref(), &rt, &work_c, p))
            .await??;
    progress.say(format!(
        "blobs in place; inserting rows ({} files)",
        unpacked.header.files
    ));
    let mut rep = match insert_rows(state, &users_path, &files_path, &unpacked.restored).await {
        Ok(rep) => rep,
        Err(e) => {
            // The transaction rolled back; take the blobs back out too.
            for key in &unpacked.restored {
                let _ = state.blobs.remove(key).await;
            }
            return Err(e.context("inserting the rows"));
        }
    };
    rep.thumbnails = unpacked.thumbnails;
    state.meta.repair_counters().await?;
    // The counters must equal the rows now.
    if let Some(d) = crate::ops::audit::drift_once(state).await?.first() {
        bail!(
            "counters of {} do not match its rows after restore",
            d.user_id
        );
    }
    progress.say(format!(
        "restored {} user(s), {} file(s), {} bytes",
        rep.users, rep.files, rep.bytes
    ));
    Ok(rep)
}

/// Which blob of its row a key is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum BlobKind {
    File,
    Thumbnail,
}

impl BlobKind {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            BlobKind::File => "file",
            BlobKind::Thumbnail => "thumbnail",
        }
    }
}

/// What the snapshot says one blob key must be.
pub(super) struct Owner {
    row: Uuid,
    kind: BlobKind,
    /// Size and sha256 from the row (files only).
    sum: Option<(i64, String)>,
}

/// `key` is `{dir}/{id}.{ext}` with a plain extension.
pub(super) fn is_blob_key_in(key: &str, dir: &str, id: Uuid) -> bool {
    key.strip_prefix(dir)
        .and_then(|r| r.strip_prefix('/'))
        .and_then(|r| r.strip_prefix(id.to_string().as_str()))
        .and_then(|r| r.strip_prefix('.'))
        .is_some_and(|ext| {
            (1..=8).contains(&ext.len()) && ext.bytes().all(|b| b.is_ascii_alphanumeric())
        })
}

/// Checks one snapshot row's blob keys against the layout of SPEC §5 and
/// records them in `owners`; a key claimed twice is refused.
pub(super) fn claim_keys(
    f: &FileRecord,
    users: &HashSet<String>,
    owners: &mut HashMap<String, Owner>,
) -> anyhow::Result<()> {
    use crate::domain::names::user_dir_name;
    if !users.contains(&f.user_id) {
        bail!(
            "row {}: its user {:?} is not in the snapshot",
            f.id,
            f.user_id
        );
    }
    // The row's file type was checked when it was read.
    let ft = f.file_type;
    let user_dir = user_dir_name(&f.user_id);
    let mut claim = |key: &str, kind: BlobKind, dir: String| -> anyhow::Result<()> {
        crate::blob::check_key(key).map_err(|e| anyhow::anyhow!("row {}: {e}", f.id))?;
        if !is_blob_key_in(key, &dir, f.id) {
            bail!(
                "row {}: its {} {key:?} is not {dir}/{}.<ext>, where its user's {} belong",
                f.id,
                kind.as_str(),
                f.id,
                kind.as_str()
            );
        }
        let sum = (kind == BlobKind::File).then(|| (f.file_size, f.sha256.clone()));
        if let Some(o) = owners.insert(
            key.to_string(),
            Owner {
                row: f.id,
                kind,
                sum,
            },
        ) {
            bail!("{key}: claimed by rows {} and {}", o.row, f.id);
        }
        Ok(())
    };
    claim(
        &f.file_path,
        BlobKind::File,
        format!("{user_dir}/{}", ft.dir()),
    )?;
    if let Some(th) = &f.thumbnail_path {
        claim(th, BlobKind::Thumbnail, format!("{user_dir}/.thumbs"))?;
    }
    Ok(())
}

/// Staged blobs of a restore, keyed by blob key; discarded on drop unless
/// published.
pub(super) struct Staged<'a> {
    blobs: &'a dyn BlobStore,
    rt: &'a tokio::runtime::Handle,
    ids: HashMap<String, Uuid>,
}

impl Drop for Staged<'_> {
    fn drop(&mut self) {
        for id in self.ids.values() {
            let _ = self.rt.block_on(self.blobs.discard(*id));
        }
    }
}

impl Staged<'_> {
    /// Publishes every staged blob whose key is in `keep` and discards the
    /// rest; on a failure, removes what was published already.
    pub(super) fn publish(mut self, keep: &HashSet<&str>) -> anyhow::Result<HashSet<String>> {
        let mut done: HashSet<String> = HashSet::new();
        let ids = std::mem::take(&mut self.ids);
        let mut pending = ids.iter();
        for (key, id) in pending.by_ref() {
            if !keep.contains(key.as_str()) {
                let _ = self.rt.block_on(self.blobs.discard(*id));
                continue;
            }
            if let Err(e) = self.rt.block_on(self.blobs.publish(*id, key)) {
                for k in &done {
                    let _ = self.rt.block_on(self.blobs.remove(k));
                }
                let _ = self.rt.block_on(self.blobs.discard(*id));
                for (_, rest) in pending {
                    let _ = self.rt.block_on(self.blobs.discard(*rest));
                }
                return Err(anyhow::Error::new(e).context(format!("publishing {key}")));
            }
            done.insert(key.clone());
        }
        Ok(done)
    }
}

/// Reads the archive, checking it whole and staging its blobs; publishes
/// them only when everything checked out (see [`restore`]).
pub(super) fn unpack(
    archive: &Location,
    blobs: &dyn BlobStore,
    rt: &tokio::runtime::Handle,
    work: &Path,
    mut progress: Progress,
) -> anyhow::Result<(Unpacked, Progress)> {
    let mut ar = archive_from(archive.open(None, rt)?)?;
    let mut header: Option<BackupHeader> = None;
    let mut users: Option<HashSet<String>> = None;
    let mut rows: Option<Vec<FileRecord>> = None;
    // blob key -> what its row says it is
    let mut owners: HashMap<String, Owner> = HashMap::new();
    // archive path -> (size, sha256) as read
    let mut got: HashMap<String, (u64, String)> = HashMap::new();
    let mut manifest: Option<(HashSet<String>, HashSet<String>)> = None;
    let mut staged = Staged {
        blobs,
        rt,
        ids: HashMap::new(),
    };
    let mut n = 0u64;
    for entry in ar.entries()? {
        let entry = entry?;
        let name = entry_path(&entry)?;
        if got.contains_key(&name) {
            bail!("archive entry {name:?} appears twice");
        }
        if manifest.is_some() {
            bail!("archive entry {name:?} after the manifest");
        }
        let mut r = Hashing::new(entry);
        match name.as_str() {
            HEADER_ENTRY => {
                let mut s = String::new();
                r.read_to_string(&mut s)?;
                let h: BackupHeader = serde_json::from_str(&s)?;
                if h.format != FORMAT || h.version != VERSION {
                    bail!("unsupported archive: {} version {}", h.format, h.version);
                }
                header = Some(h);
            }
            USERS_ENTRY | FILES_ENTRY => {
                let out = work.join(&name[3..]);
                let mut w = BufWriter::new(File::create(&out)?);
                let mut lines = BufReader::new(&mut r);
                let mut l = String::new();
                let (mut seen_users, mut seen_rows) = (HashSet::new(), Vec::new());
                while {
                    l.clear();
                    lines.read_line(&mut l)? > 0
                } {
                    if !l.trim().is_empty() {
                        if name == FILES_ENTRY {
                            let f: DumpFile = serde_json::from_str(l.trim_end())?;
                            seen_rows.push(f.file);
                        } else {
                            let u: DumpUser = serde_json::from_str(l.trim_end())?;
                            if !seen_users.insert(u.user_id.clone()) {
                                bail!("user {:?} appears twice in the snapshot", u.user_id);
                            }
                        }
                    }
                    w.write_all(l.as_bytes())?;
                }
                w.flush()?;
                if name == FILES_ENTRY {
                    let known = users
                        .as_ref()
                        .context("the file rows come before the users in the archive")?;
                    let mut ids = HashSet::new();
                    for f in &seen_rows {
                        if !ids.insert(f.id) {
                            bail!("row {} appears twice in the snapshot", f.id);
                        }
                        claim_keys(f, known, &mut owners)?;
                    }
                    rows = Some(seen_rows);
                } else {
                    users = Some(seen_users);
                }
            }
            MANIFEST_ENTRY => {
                let mut s = String::new();
                r.read_to_string(&mut s)?;
                let (mut listed, mut skipped) = (HashSet::new(), HashSet::new());
                for l in s.lines().filter(|l| !l.trim().is_empty()) {
                    match serde_json::from_str::<ManifestLine>(l)? {
                        ManifestLine::Entry {
                            path, size, sha256, ..
                        } => {
                            match got.get(&path) {
                                Some((s, h)) if *s == size && *h == sha256 => {}
                                _ => bail!("{path}: archive content does not match the manifest"),
                            }
                            listed.insert(path);
                        }
                        ManifestLine::Skipped { key, .. } => {
                            skipped.insert(key);
                        }
                        ManifestLine::Summary { .. } => {}
                    }
                }
                manifest = Some((listed, skipped));
            }
            blob if blob.starts_with(BLOB_PREFIX) => {
                let key = blob[BLOB_PREFIX.len()..].to_string();
                if rows.is_none() {
                    bail!("archive entry {blob:?} comes before the file rows");
                }
                let owner = owners
                    .get(&key)
                    .with_context(|| format!("{key}: archived blob that no row references"))?;
                crate::blob::check_key(&key)
                    .map_err(|e| anyhow::anyhow!("archive entry {blob:?}: {e}"))?;
                let (id, size, sha) =
                    stage_blob(blobs, rt, &mut r).with_context(|| format!("writing {key}"))?;
                staged.ids.insert(key.clone(), id);
                if let Some((rs, rh)) = &owner.sum {
                    if *rs != size as i64 || *rh != sha {
                        bail!(
                            "{key}: {size} bytes sha256 {sha}, but row {} says its {} has {rs} bytes sha256 {rh}",
                            owner.row,
                            owner.kind.as_str()
                        );
                    }
                }
                n += 1;
                progress.tick(|| format!("{n} blobs checked"));
            }
            other => bail!("unexpected archive entry {other:?}"),
        }
        let (size, sha) = r.finish();
        got.insert(name, (size, sha));
    }
    let header = header.context("archive has no header")?;
    let rows = rows.context("archive has no file rows")?;
    let Some((listed, skipped)) = manifest else {
        bail!("archive has no manifest (truncated?)");
    };
    // Every entry's sum is in the manifest (a thumbnail's only check).
    for name in got.keys() {
        if name != HEADER_ENTRY && name != MANIFEST_ENTRY && !listed.contains(name) {
            bail!("{name}: in the archive but not in the manifest");
        }
    }
    // Every row's blobs are here, or were deleted after the snapshot; a row
    // whose file is gone is left out, and so is its thumbnail.
    let mut keep: HashSet<&str> = HashSet::new();
    let mut thumbnails = 0u64;
    for f in &rows {
        for (key, kind) in std::iter::once((&f.file_path, BlobKind::File))
            .chain(f.thumbnail_path.iter().map(|t| (t, BlobKind::Thumbnail)))
        {
            if !staged.ids.contains_key(key) && !skipped.contains(key) {
                bail!(
                    "{key}: the {} of row {} is neither archived nor recorded as deleted",
                    kind.as_str(),
                    f.id
                );
            }
        }
        if staged.ids.contains_key(&f.file_path) {
            keep.insert(&f.file_path);
            if let Some(th) = f.thumbnail_path.as_deref() {
                if staged.ids.contains_key(th) {
                    keep.insert(th);
                    thumbnails += 1;
                }
            }
        }
    }
    progress.say(format!("{n} blobs checked; publishing"));
    let restored = staged.publish(&keep)?;
    Ok((
        Unpacked {
            header,
            restored,
            thumbnails,
        },
        progress,
    ))
}

/// Reads the staged rows back for the store to insert, leaving out the
/// rows whose file was not restored (and thumbnails that were not), and
/// counting what goes in.
pub(super) struct JsonlSource<'a> {
    users: tokio::io::Lines<tokio::io::BufReader<tokio::fs::File>>,
    files: tokio::io::Lines<tokio::io::BufReader<tokio::fs::File>>,
    restored: &'a HashSet<String>,
    rep: RestoreReport,
}

impl JsonlSource<'_> {
    pub(super) async fn next<T: serde::de::DeserializeOwned>(
        lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::fs::File>>,
    ) -> MetaResult<Option<T>> {
        while let Some(l) = lines.next_line().await.map_err(rows_error)? {
            if !l.trim().is_empty() {
                return serde_json::from_str(&l).map(Some).map_err(rows_error);
            }
        }
        Ok(None)
    }
}

#[async_trait::async_trait]
impl RowSource for JsonlSource<'_> {
    async fn next_user(&mut self) -> MetaResult<Option<DumpUser>> {
        let u = Self::next::<DumpUser>(&mut self.users).await?;
        if u.is_some() {
            self.rep.users += 1;
        }
        Ok(u)
    }

    async fn next_file(&mut self) -> MetaResult<Option<DumpFile>> {
        while let Some(mut row) = Self::next::<DumpFile>(&mut self.files).await? {
            let f = &mut row.file;
            if !self.restored.contains(&f.file_path) {
                self.rep.rows_skipped += 1;
                continue;
            }
            f.thumbnail_path = f
                .thumbnail_path
                .take()
                .filter(|t| self.restored.contains(t));
            self.rep.files += 1;
            self.rep.bytes += f.file_size.max(0) as u64;
            return Ok(Some(row));
        }
        Ok(None)
    }
}

pub(super) async fn insert_rows(
    state: &Core,
    users: &Path,
    files: &Path,
    restored: &HashSet<String>,
) -> anyhow::Result<RestoreReport> {
    let mut src = JsonlSource {
        users: tokio::io::BufReader::new(tokio::fs::File::open(users).await?).lines(),
        files: tokio::io::BufReader::new(tokio::fs::File::open(files).await?).lines(),
        restored,
        rep: RestoreReport::default(),
    };
    state.meta.restore_rows(&mut src).await?;
    Ok(src.rep)
}
