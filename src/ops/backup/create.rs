//! Creating a backup: the database snapshot as JSON lines, then one
//! streamed archive of the rows and the blobs they reference.

use super::*;

/// Counts of a dump.
#[derive(Default)]
pub(super) struct DumpCounts {
    users: u64,
    files: u64,
    bytes: u64,
}

/// Writes the snapshot's rows as JSON lines, users and files each to its
/// own file, counting them.
pub(super) struct JsonlSink {
    users: tokio::io::BufWriter<tokio::fs::File>,
    files: tokio::io::BufWriter<tokio::fs::File>,
    counts: DumpCounts,
}

impl JsonlSink {
    pub(super) async fn line(
        out: &mut tokio::io::BufWriter<tokio::fs::File>,
        row: &impl Serialize,
    ) -> MetaResult<()> {
        let mut line = serde_json::to_vec(row).map_err(rows_error)?;
        line.push(b'\n');
        out.write_all(&line).await.map_err(rows_error)
    }

    pub(super) async fn finish(mut self) -> std::io::Result<DumpCounts> {
        for out in [&mut self.users, &mut self.files] {
            out.flush().await?;
            out.get_ref().sync_all().await?;
        }
        Ok(self.counts)
    }
}

#[async_trait::async_trait]
impl SnapshotSink for JsonlSink {
    async fn user(&mut self, row: DumpUser) -> MetaResult<()> {
        Self::line(&mut self.users, &row).await?;
        self.counts.users += 1;
        Ok(())
    }

    async fn file(&mut self, row: DumpFile) -> MetaResult<()> {
        Self::line(&mut self.files, &row).await?;
        self.counts.files += 1;
        self.counts.bytes += row.file.file_size.max(0) as u64;
        Ok(())
    }
}

/// Writes the snapshot's rows to `users_out` and `files_out`; returns the
/// counts and the snapshot time.
pub(super) async fn snapshot(
    state: &Core,
    users_out: &Path,
    files_out: &Path,
) -> anyhow::Result<(DumpCounts, DateTime<Utc>)> {
    let mut sink = JsonlSink {
        users: tokio::io::BufWriter::new(tokio::fs::File::create(users_out).await?),
        files: tokio::io::BufWriter::new(tokio::fs::File::create(files_out).await?),
        counts: DumpCounts::default(),
    };
    let at = state.meta.snapshot(&mut sink).await?;
    Ok((sink.finish().await?, at))
}

/// Everything the blocking archive writer needs.
pub(super) struct Pack {
    dest: Dest,
    name: String,
    /// About how large the archive will be (sizes the upload's parts).
    expected: u64,
    gzip: bool,
    blobs: Arc<dyn BlobStore>,
    rt: tokio::runtime::Handle,
    header: BackupHeader,
    users: PathBuf,
    files: PathBuf,
    manifest: PathBuf,
    progress: Progress,
}

pub(super) struct Packed {
    blobs: u64,
    blob_bytes: u64,
    skipped: Vec<ManifestLine>,
    archive_bytes: u64,
}

/// Creates one archive in `opts.dest`, then applies retention.
pub async fn create(state: &Core, mut opts: CreateOptions) -> anyhow::Result<CreateReport> {
    if opts.keep == Some(0) {
        bail!("--keep must be at least 1");
    }
    opts.dest.check().await?;
    let stamp = state.now();
    let name = archive_name(stamp, opts.gzip);
    // The rows are staged beside a directory archive, as they always were;
    // for a remote one, in the volume's scratch directory.
    let work = match &opts.dest {
        Dest::Dir(d) => d.join(format!(".{name}.work")),
        Dest::S3(_) => scratch_root(state).join(format!("backup-{}", Uuid::new_v4())),
    };
    mkdirs(&work)?;
    let _cleanup = RemoveOnDrop(work.clone());
    let users = work.join("user_storage.jsonl");
    let files = work.join("user_files.jsonl");

    opts.progress.say("taking a database snapshot");
    let (counts, at) = snapshot(state, &users, &files)
        .await
        .context("database snapshot")?;
    let header = BackupHeader {
        format: FORMAT.into(),
        version: VERSION,
        created_at: at,
        source_backend: state.meta.backend().into(),
        stowage_version: env!("CARGO_PKG_VERSION").into(),
        users: counts.users,
        files: counts.files,
        bytes: counts.bytes,
    };
    opts.progress.say(format!(
        "snapshot: {} user(s), {} file(s), {} bytes; copying blobs",
        counts.users, counts.files, counts.bytes
    ));
    let dump_bytes = std::fs::metadata(&users)?.len() + std::fs::metadata(&files)?.len();
    let pack = Pack {
        dest: opts.dest.clone(),
        name: name.clone(),
        // Blobs, rows, a manifest line and two tar headers per file.
        expected: counts.bytes + 2 * dump_bytes + counts.files * 1536 + 64 * 1024,
        gzip: opts.gzip,
        blobs: state.blobs.clone(),
        rt: tokio::runtime::Handle::current(),
        header: header.clone(),
        users,
        files,
        manifest: work.join("manifest.jsonl"),
        progress: std::mem::replace(&mut opts.progress, Progress::off()),
    };
    // The sink leaves nothing behind when this fails.
    let packed = tokio::task::spawn_blocking(move || write_archive(pack)).await??;
    for s in &packed.skipped {
        if let ManifestLine::Skipped { key, reason, .. } = s {
            tracing::warn!(key, reason, "blob not in backup");
        }
    }
    let removed = retention(&opts.dest, opts.keep, opts.keep_days, &name, state.now()).await?;
    Ok(CreateReport {
        archive_bytes: packed.archive_bytes,
        path: PathBuf::from(opts.dest.location(&name).display()),
        header,
        blobs: packed.blobs,
        blob_bytes: packed.blob_bytes,
        skipped: packed.skipped,
        removed,
    })
}

pub(super) fn tar_header(size: u64, mtime: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(size);
    h.set_mode(0o600);
    h.set_mtime(mtime);
    h
}

pub(super) fn write_archive(mut p: Pack) -> anyhow::Result<Packed> {
    let sink = p.dest.create_sink(&p.name, p.expected, &p.rt)?;
    let writer = if p.gzip {
        ArchiveWriter::Gzip(flate2::write::GzEncoder::new(
            sink,
            flate2::Compression::fast(),
        ))
    } else {
        ArchiveWriter::Plain(sink)
    };
    let mut tar = tar::Builder::new(writer);
    let mtime = p.header.created_at.timestamp().max(0) as u64;
    let mut manifest = BufWriter::new(File::create(&p.manifest)?);
    let line = |m: &ManifestLine, out: &mut BufWriter<File>| -> anyhow::Result<()> {
        serde_json::to_writer(&mut *out, m)?;
        out.write_all(b"\n")?;
        Ok(())
    };

    let header_json = serde_json::to_vec_pretty(&p.header)?;
    tar.append_data(
        &mut tar_header(header_json.len() as u64, mtime),
        HEADER_ENTRY,
        &header_json[..],
    )?;

    let mut entries = 0u64;
    for (src, name) in [(&p.users, USERS_ENTRY), (&p.files, FILES_ENTRY)] {
        let f = File::open(src)?;
        let size = f.metadata()?.len();
        let mut r = Hashing::new(f.take(size));
        tar.append_data(&mut tar_header(size, mtime), name, &mut r)?;
        let (n, sha) = r.finish();
        if n != size {
            bail!("{name} changed while archiving");
        }
        line(
            &ManifestLine::Entry {
                path: name.into(),
                kind: "db".into(),
                size,
                sha256: sha,
                file_id: None,
            },
            &mut manifest,
        )?;
        entries += 1;
    }

    let mut packed = Packed {
        blobs: 0,
        blob_bytes: 0,
        skipped: Vec::new(),
        archive_bytes: 0,
    };
    let (mut files, mut thumbs) = (0u64, 0u64);
    let rows = BufReader::new(File::open(&p.files)?);
    let mut done = 0u64;
    for l in rows.lines() {
        let row = serde_json::from_str::<DumpFile>(&l?)?.file;
        let mut keys = vec![(row.file_path.as_str(), "file")];
        if let Some(t) = &row.thumbnail_path {
            keys.push((t.as_str(), "thumbnail"));
        }
        for (key, kind) in keys {
            crate::blob::check_key(key).map_err(|e| anyhow::anyhow!("row {}: {e}", row.id))?;
            let (size, f) = match open_blob(p.blobs.as_ref(), &p.rt, key) {
                Ok(opened) => opened,
                Err(BlobError::NotFound) => {
                    let s = ManifestLine::Skipped {
                        key: key.into(),
                        kind: kind.into(),
                        file_id: row.id,
                        reason: "deleted after the snapshot".into(),
                    };
                    line(&s, &mut manifest)?;
                    packed.skipped.push(s);
                    continue;
                }
                Err(e) => return Err(e).with_context(|| format!("reading {key}")),
            };
            let mut r = Hashing::new(f);
            let name = format!("{BLOB_PREFIX}{key}");
            tar.append_data(&mut tar_header(size, mtime), &name, &mut r)?;
            let (n, sha) = r.finish();
            if n != size {
                bail!("{key} shrank while it was archived");
            }
            if kind == "file" && (size as i64 != row.file_size || sha != row.sha256) {
                tracing::warn!(
                    key,
                    "blob differs from its row (size or sha256); archived as found"
                );
            }
            line(
                &ManifestLine::Entry {
                    path: name,
                    kind: kind.into(),
                    size,
                    sha256: sha,
                    file_id: Some(row.id),
                },
                &mut manifest,
            )?;
            entries += 1;
            packed.blobs += 1;
            packed.blob_bytes += size;
            if kind == "file" {
                files += 1;
            } else {
                thumbs += 1;
            }
        }
        done += 1;
        let (total, bytes) = (p.header.files, packed.blob_bytes);
        p.progress
            .tick(|| format!("{done}/{total} files, {bytes} bytes"));
    }
    line(
        &ManifestLine::Summary {
            entries,
            files,
            thumbnails: thumbs,
            bytes: packed.blob_bytes,
            skipped: packed.skipped.len() as u64,
        },
        &mut manifest,
    )?;
    let mf = manifest.into_inner().map_err(|e| e.into_error())?;
    mf.sync_all()?;
    drop(mf);
    let mut mf = File::open(&p.manifest)?;
    let size = mf.metadata()?.len();
    tar.append_data(&mut tar_header(size, mtime), MANIFEST_ENTRY, &mut mf)?;
    packed.archive_bytes = tar.into_inner()?.finish()?.commit()?;
    p.progress.say(format!(
        "archived {} blob(s), {} bytes",
        packed.blobs, packed.blob_bytes
    ));
    Ok(packed)
}
