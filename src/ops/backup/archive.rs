//! The archive format: names, the tar/gzip writer and reader, a hashing
//! reader, and blob staging shared by create, verify and restore.

use super::*;

/// The archive name for a snapshot taken at `t`.
pub fn archive_name(t: DateTime<Utc>, gzip: bool) -> String {
    format!(
        "{NAME_PREFIX}{}{:03}Z.tar{}",
        t.format("%Y%m%dT%H%M%S"),
        t.timestamp_subsec_millis(),
        if gzip { ".gz" } else { "" }
    )
}

/// The time in a stowage archive name; `None` for any other name (those
/// are never touched by retention).
pub fn parse_archive_name(name: &str) -> Option<DateTime<Utc>> {
    let rest = name.strip_prefix(NAME_PREFIX)?;
    let stamp = rest
        .strip_suffix(".tar.gz")
        .or_else(|| rest.strip_suffix(".tar"))?;
    if stamp.len() != 19 || !stamp.ends_with('Z') || !stamp.is_ascii() {
        return None;
    }
    let base = NaiveDateTime::parse_from_str(&stamp[..15], "%Y%m%dT%H%M%S").ok()?;
    let ms = &stamp[15..18];
    if !ms.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let ms: i64 = ms.parse().ok()?;
    Some(base.and_utc() + chrono::Duration::milliseconds(ms))
}

/// Passes bytes through while hashing and counting them.
pub(super) struct Hashing<R> {
    inner: R,
    hash: Sha256,
    len: u64,
}

impl<R> Hashing<R> {
    pub(super) fn new(inner: R) -> Self {
        Hashing {
            inner,
            hash: Sha256::new(),
            len: 0,
        }
    }
    pub(super) fn finish(self) -> (u64, String) {
        (self.len, hex::encode(self.hash.finalize()))
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

/// The archive stream, plain or gzip.
pub(super) enum ArchiveWriter {
    Plain(Box<dyn ArchiveSink>),
    Gzip(flate2::write::GzEncoder<Box<dyn ArchiveSink>>),
}

impl Write for ArchiveWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            ArchiveWriter::Plain(w) => w.write(buf),
            ArchiveWriter::Gzip(w) => w.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            ArchiveWriter::Plain(w) => w.flush(),
            ArchiveWriter::Gzip(w) => w.flush(),
        }
    }
}

impl ArchiveWriter {
    pub(super) fn finish(self) -> std::io::Result<Box<dyn ArchiveSink>> {
        match self {
            ArchiveWriter::Plain(w) => Ok(w),
            ArchiveWriter::Gzip(w) => w.finish(),
        }
    }
}

/// Opens an archive for reading, decompressing when it is gzip.
pub(super) fn open_archive(path: &Path) -> anyhow::Result<tar::Archive<Box<dyn Read>>> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    archive_from(Box::new(f))
}

/// An archive over any byte stream (a file, a streaming GET), read once
/// from the front; gzip is recognised by its first two bytes.
pub(super) fn archive_from(
    mut r: Box<dyn Read + Send>,
) -> anyhow::Result<tar::Archive<Box<dyn Read>>> {
    let mut magic = [0u8; 2];
    let mut n = 0;
    while n < magic.len() {
        match r.read(&mut magic[n..])? {
            0 => break,
            k => n += k,
        }
    }
    let r = std::io::Cursor::new(magic[..n].to_vec()).chain(r);
    let r: Box<dyn Read> = if n == 2 && magic == [0x1f, 0x8b] {
        Box::new(flate2::read::GzDecoder::new(BufReader::with_capacity(
            256 * 1024,
            r,
        )))
    } else {
        Box::new(BufReader::with_capacity(256 * 1024, r))
    };
    Ok(tar::Archive::new(r))
}

/// Opens `loc` on a blocking thread.
pub(super) fn open_location(loc: &Location) -> anyhow::Result<tar::Archive<Box<dyn Read>>> {
    archive_from(loc.open(None, &tokio::runtime::Handle::current())?)
}

pub(crate) fn mkdirs(p: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(p)
}

pub(super) fn entry_path(e: &tar::Entry<'_, impl Read>) -> anyhow::Result<String> {
    let raw = e.path_bytes();
    Ok(std::str::from_utf8(&raw)
        .context("archive entry name is not UTF-8")?
        .to_string())
}

/// Removes a directory tree when dropped (work directories).
pub(super) struct RemoveOnDrop(pub(super) PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Reads blob `key` whole for the blocking archive writer: its length and a
/// synchronous reader over the store's byte stream (a file on the volume,
/// ranged GETs on an object store), so memory stays bounded either way.
pub(super) fn open_blob(
    blobs: &dyn BlobStore,
    rt: &tokio::runtime::Handle,
    key: &str,
) -> Result<(u64, impl Read), BlobError> {
    let (size, stream) = rt.block_on(async {
        let size = blobs.len(key).await?;
        // `read` reports a blob deleted since the stat as NotFound (both
        // stores open it there), so it is skipped like one deleted before.
        Ok::<_, BlobError>((size, blobs.read(key, 0..size).await?))
    })?;
    let reader = tokio_util::io::SyncIoBridge::new_with_handle(
        tokio_util::io::StreamReader::new(stream),
        rt.clone(),
    );
    Ok((size, reader.take(size)))
}

/// Writes one blob from an archive entry into the store under a staging
/// id, hashing it; returns (id, length, sha256). The caller publishes or
/// discards the id.
pub(super) fn stage_blob(
    blobs: &dyn BlobStore,
    rt: &tokio::runtime::Handle,
    src: &mut impl Read,
) -> anyhow::Result<(Uuid, u64, String)> {
    let id = Uuid::new_v4();
    let res = (|| {
        let mut w = rt.block_on(blobs.stage(id, 0))?;
        let mut buf = vec![0u8; 256 * 1024];
        let mut hash = Sha256::new();
        let mut len = 0u64;
        loop {
            let n = src.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hash.update(&buf[..n]);
            len += n as u64;
            rt.block_on(w.write(bytes::Bytes::copy_from_slice(&buf[..n])))?;
        }
        rt.block_on(w.finish())?;
        Ok((id, len, hex::encode(hash.finalize())))
    })();
    if res.is_err() {
        let _ = rt.block_on(blobs.discard(id));
    }
    res
}

/// A scratch directory on local disk for work files (the database dump).
pub(super) fn scratch_root(state: &Core) -> PathBuf {
    state.scratch.clone()
}

/// A row (de)serialisation error as the store's error.
pub(super) fn rows_error(e: impl std::fmt::Display) -> MetaError {
    MetaError::Rows(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let t = DateTime::parse_from_rfc3339("2026-01-24T10:15:00.123Z")
            .unwrap()
            .with_timezone(&Utc);
        let n = archive_name(t, false);
        assert_eq!(n, "stowage-backup-20260124T101500123Z.tar");
        assert_eq!(parse_archive_name(&n), Some(t));
        assert_eq!(parse_archive_name(&archive_name(t, true)), Some(t));
        for other in [
            "stowage-backup-20260124T101500123Z.tar.partial",
            ".stowage-backup-20260124T101500123Z.tar.partial",
            "stowage-backup-latest.tar",
            "notes.txt",
            "stowage-backup-20261324T101500123Z.tar",
        ] {
            assert_eq!(parse_archive_name(other), None, "{other}");
        }
    }

    /// A file row's line in `db/user_files.jsonl` is the one backups have
    /// always held: an old line reads, and writes back byte for byte.
    #[test]
    fn file_rows_keep_their_line() {
        let line = concat!(
            r#"{"id":"0191d6a0-5c3e-7b21-9a4f-2d7c1e0b3a55","user_id":"ta","#,
            r#""file_name":"a b.png","file_type":"image","mime_type":"image/png","#,
            r#""file_size":42,"file_path":"ta/images/0191d6a0-5c3e-7b21-9a4f-2d7c1e0b3a55.png","#,
            r#""thumbnail_path":null,"resolution":"10x10","duration":null,"package_name":"p","#,
            r#""tags":["x","ünï",""],"is_favorite":true,"#,
            r#""sha256":"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08","#,
            r#""upload_date":"2026-01-24T10:15:00.123456Z","#,
            r#""created_at":"2026-01-24T10:15:00.123457Z"}"#
        );
        let row: DumpFile = serde_json::from_str(line).unwrap();
        assert_eq!(row.file.file_type, crate::domain::filetype::FileType::Image);
        assert_eq!(row.file.tags, ["x", "ünï", ""]);
        assert_eq!(row.created_at.timestamp_subsec_micros(), 123457);
        assert_eq!(serde_json::to_string(&row).unwrap(), line);
        // A file type the store does not know is refused, as it always was.
        let odd = line.replace(r#""image""#, r#""images""#);
        assert!(serde_json::from_str::<DumpFile>(&odd).is_err());
    }
}
