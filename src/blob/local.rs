//! The local volume: `{root}/{user}/{type dir}/{id}.{ext}`, staging files in
//! `{root}/.tmp` on the same filesystem so publishing is one `rename`.
//! Directories are created 0700 and files 0600; data and the directory entry
//! are fsynced before a publish returns.
//!
//! A published blob is never written again (a new version is a new key), so
//! downloads hand its open file to the connection, which sends it with
//! `sendfile(2)` ([`BlobStore::open_file`], `http::sendfile`). Other reads
//! are plain reads into buffers: never a memory mapping, whose pages would
//! kill the process with `SIGBUS` if the file were truncated under it.

use std::{
    io::SeekFrom,
    ops::Range,
    os::unix::fs::DirBuilderExt,
    path::{Path, PathBuf},
};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio_util::io::ReaderStream;
use uuid::Uuid;

use super::*;

/// Read chunk for downloads: large enough that per-chunk overhead vanishes.
const READ_CHUNK: usize = 256 * 1024;
/// Writes are gathered into buffers of this size before hitting the disk.
const WRITE_BUF: usize = 256 * 1024;
/// Written data is handed to the kernel's writeback every this many bytes
/// (`sync_file_range`), so the final `fdatasync` waits only for the tail
/// instead of the whole file.
const WRITEBACK_EVERY: u64 = 8 * 1024 * 1024;

pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    /// Opens (creating if needed) the volume at `root`.
    pub fn open(root: impl Into<PathBuf>) -> std::io::Result<LocalStore> {
        let root = root.into();
        mkdirs(&root)?;
        mkdirs(&root.join(".tmp"))?;
        Ok(LocalStore { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join(".tmp")
    }

    fn staging_path(&self, id: Uuid) -> PathBuf {
        self.root.join(".tmp").join(format!("{id}.part"))
    }

    fn key_path(&self, key: &str) -> BlobResult<PathBuf> {
        check_key(key)?;
        Ok(self.root.join(key))
    }
}

fn mkdirs(p: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(p)
}

async fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || std::fs::File::open(&dir)?.sync_all())
        .await
        .map_err(std::io::Error::other)?
}

/// Buffers small chunks and writes whole buffers from the blocking pool.
/// The buffer moves into the blocking task and back (no copy), so an upload
/// holds one buffer of [`WRITE_BUF`] bytes whatever its size.
struct LocalWriter {
    /// `None` only while a write is in flight on the blocking pool.
    file: Option<std::fs::File>,
    buf: Vec<u8>,
    len: u64,
    /// File offset up to which writeback has been started.
    written_back: u64,
    /// Bytes in the file (what `len` counts minus what is still buffered).
    pos: u64,
}

impl LocalWriter {
    /// Writes and empties the buffer.
    async fn flush_buf(&mut self) -> BlobResult<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let mut file = self.file.take().expect("file present between writes");
        let buf = std::mem::take(&mut self.buf);
        // File position once this buffer is written.
        let end = self.pos + buf.len() as u64;
        self.pos = end;
        let start_wb = self.written_back;
        let kick = end - start_wb >= WRITEBACK_EVERY;
        if kick {
            self.written_back = end;
        }
        let (file, mut buf, res) = tokio::task::spawn_blocking(move || {
            use std::io::Write;
            use std::os::fd::AsRawFd;
            let res = file.write_all(&buf);
            if kick && res.is_ok() {
                // Start (not wait for) writeback of what is written so far;
                // advisory, so a failure here changes nothing.
                // SAFETY: plain syscall on a valid open descriptor.
                unsafe {
                    libc::sync_file_range(
                        file.as_raw_fd(),
                        start_wb as libc::off64_t,
                        (end - start_wb) as libc::off64_t,
                        libc::SYNC_FILE_RANGE_WRITE,
                    );
                }
            }
            (file, buf, res)
        })
        .await
        .map_err(std::io::Error::other)?;
        self.file = Some(file);
        buf.clear();
        self.buf = buf;
        res?;
        Ok(())
    }
}

#[async_trait]
impl BlobWriter for LocalWriter {
    async fn write(&mut self, chunk: Bytes) -> BlobResult<()> {
        self.len += chunk.len() as u64;
        let mut rest = &chunk[..];
        while !rest.is_empty() {
            let room = WRITE_BUF - self.buf.len();
            let take = room.min(rest.len());
            self.buf.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.buf.len() >= WRITE_BUF {
                self.flush_buf().await?;
            }
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> BlobResult<u64> {
        self.flush_buf().await?;
        let file = self.file.take().expect("file present between writes");
        tokio::task::spawn_blocking(move || file.sync_data())
            .await
            .map_err(std::io::Error::other)??;
        Ok(self.len)
    }
}

fn range_stream(file: tokio::fs::File, len: u64) -> ByteStream {
    let reader = file.take(len);
    Box::pin(ReaderStream::with_capacity(reader, READ_CHUNK))
}

#[async_trait]
impl BlobStore for LocalStore {
    async fn stage(&self, id: Uuid, offset: u64) -> BlobResult<Box<dyn BlobWriter>> {
        let path = self.staging_path(id);
        let mut opts = tokio::fs::OpenOptions::new();
        opts.write(true).mode(0o600);
        if offset == 0 {
            opts.create(true).truncate(true);
        }
        let mut file = opts.open(&path).await?;
        if offset > 0 {
            let have = file.metadata().await?.len();
            if offset > have {
                tracing::warn!(upload = %id, have, offset, "staged data is shorter than its offset");
                return Err(BlobError::NotFound);
            }
            file.set_len(offset).await?;
            file.seek(SeekFrom::Start(offset)).await?;
        }
        Ok(Box::new(LocalWriter {
            file: Some(file.into_std().await),
            buf: Vec::with_capacity(WRITE_BUF),
            len: offset,
            written_back: offset,
            pos: offset,
        }))
    }

    async fn staged_len(&self, id: Uuid) -> BlobResult<Option<u64>> {
        match tokio::fs::metadata(self.staging_path(id)).await {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn read_staged(&self, id: Uuid, range: Range<u64>) -> BlobResult<ByteStream> {
        let mut f = tokio::fs::File::open(self.staging_path(id)).await?;
        f.seek(SeekFrom::Start(range.start)).await?;
        Ok(range_stream(f, range.end.saturating_sub(range.start)))
    }

    async fn publish(&self, id: Uuid, key: &str) -> BlobResult<()> {
        let dest = self.key_path(key)?;
        let parent = dest.parent().expect("keys have a parent").to_path_buf();
        let p2 = parent.clone();
        tokio::task::spawn_blocking(move || mkdirs(&p2))
            .await
            .map_err(std::io::Error::other)??;
        tokio::fs::rename(self.staging_path(id), &dest).await?;
        fsync_dir(&parent).await?;
        Ok(())
    }

    async fn discard(&self, id: Uuid) -> BlobResult<()> {
        match tokio::fs::remove_file(self.staging_path(id)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn read(&self, key: &str, range: Range<u64>) -> BlobResult<ByteStream> {
        let mut f = tokio::fs::File::open(self.key_path(key)?).await?;
        if range.start > 0 {
            f.seek(SeekFrom::Start(range.start)).await?;
        }
        Ok(range_stream(f, range.end.saturating_sub(range.start)))
    }

    async fn open_file(&self, key: &str, end: u64) -> BlobResult<Option<std::fs::File>> {
        let f = tokio::fs::File::open(self.key_path(key)?).await?;
        let have = f.metadata().await?.len();
        if end > have {
            tracing::warn!(key, have, end, "blob file is shorter than its record");
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "blob is shorter than the range read",
            )
            .into());
        }
        let f = f.into_std().await;
        {
            use std::os::fd::AsRawFd;
            // Advisory (a larger readahead for a cold file); a failure
            // changes nothing.
            // SAFETY: plain syscall on a valid open descriptor.
            unsafe {
                libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_SEQUENTIAL);
            }
        }
        Ok(Some(f))
    }

    async fn len(&self, key: &str) -> BlobResult<u64> {
        Ok(tokio::fs::metadata(self.key_path(key)?).await?.len())
    }

    async fn remove(&self, key: &str) -> BlobResult<()> {
        match tokio::fs::remove_file(self.key_path(key)?).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn copy(&self, from: &str, to: &str) -> BlobResult<()> {
        let src = self.key_path(from)?;
        let dest = self.key_path(to)?;
        let parent = dest.parent().expect("keys have a parent").to_path_buf();
        let p2 = parent.clone();
        tokio::task::spawn_blocking(move || {
            mkdirs(&p2)?;
            std::fs::hard_link(&src, &dest)
        })
        .await
        .map_err(std::io::Error::other)??;
        // The new name is durable once its directory is.
        fsync_dir(&parent).await?;
        Ok(())
    }

    async fn put_small(&self, key: &str, data: Bytes) -> BlobResult<()> {
        let id = Uuid::new_v4();
        let mut w = self.stage(id, 0).await?;
        let res = async {
            w.write(data).await?;
            w.finish().await?;
            self.publish(id, key).await
        }
        .await;
        if res.is_err() {
            let _ = self.discard(id).await;
        }
        res
    }

    fn local_path(&self, key: &str) -> Option<PathBuf> {
        self.key_path(key).ok()
    }

    async fn check_writable(&self) -> BlobResult<()> {
        let probe = self.tmp_dir().join(format!(".ready-{}", Uuid::new_v4()));
        let mut f = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&probe)
            .await?;
        let res = f.write_all(b"ok").await;
        drop(f);
        let _ = tokio::fs::remove_file(&probe).await;
        res?;
        Ok(())
    }

    async fn list_prefix(&self, prefix: &str) -> BlobResult<Vec<BlobEntry>> {
        // Walk the deepest directory the prefix names, keep what matches.
        let dir = prefix.rfind('/').map_or("", |i| &prefix[..i]);
        if !dir.is_empty() {
            check_key(dir)?;
        }
        if dir == ".tmp" || dir.starts_with(".tmp/") {
            return Ok(Vec::new());
        }
        let (root, start, prefix) = (self.root.clone(), self.root.join(dir), prefix.to_string());
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            walk_files(&root, &start, &mut |key, meta| {
                if key.starts_with(&prefix) && !key.starts_with(".tmp/") {
                    out.push(entry(key, meta));
                }
            })?;
            Ok(out)
        })
        .await
        .map_err(std::io::Error::other)?
    }

    async fn list_top(&self) -> BlobResult<(Vec<String>, Vec<BlobEntry>)> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || {
            let (mut dirs, mut blobs) = (Vec::new(), Vec::new());
            for e in std::fs::read_dir(&root)? {
                let e = e?;
                let name = e.file_name().to_string_lossy().into_owned();
                let ft = e.file_type()?;
                if ft.is_dir() && name != ".tmp" {
                    dirs.push(name);
                } else if ft.is_file() {
                    blobs.push(entry(name, &e.metadata()?));
                }
            }
            Ok((dirs, blobs))
        })
        .await
        .map_err(std::io::Error::other)?
    }

    async fn list_staged(&self) -> BlobResult<Vec<StagedEntry>> {
        let tmp = self.tmp_dir();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            for e in std::fs::read_dir(&tmp)? {
                let e = e?;
                let Ok(meta) = e.metadata() else {
                    continue; // removed while listing
                };
                if !meta.is_file() {
                    continue;
                }
                let name = e.file_name().to_string_lossy().into_owned();
                let id = name
                    .strip_suffix(".part")
                    .and_then(|s| Uuid::try_parse(s).ok());
                let e = entry(format!(".tmp/{name}"), &meta);
                out.push(StagedEntry {
                    id,
                    key: e.key,
                    len: e.len,
                    modified: e.modified,
                });
            }
            Ok(out)
        })
        .await
        .map_err(std::io::Error::other)?
    }

    fn kind(&self) -> &'static str {
        "local"
    }

    fn local_root(&self) -> Option<&Path> {
        Some(&self.root)
    }
}

fn entry(key: String, meta: &std::fs::Metadata) -> BlobEntry {
    BlobEntry {
        key,
        len: meta.len(),
        modified: meta.modified().ok().map(chrono::DateTime::from),
    }
}

/// Calls `f(key, metadata)` for every regular file under `dir`, keys
/// relative to `root` with `/` separators. Only directory paths wait on the
/// stack; a directory that vanishes meanwhile is skipped.
fn walk_files(
    root: &Path,
    dir: &Path,
    f: &mut dyn FnMut(String, &std::fs::Metadata),
) -> std::io::Result<()> {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let rd = match std::fs::read_dir(&d) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for e in rd {
            let e = e?;
            let ft = e.file_type()?;
            if ft.is_dir() {
                if e.path() != root.join(".tmp") {
                    stack.push(e.path());
                }
            } else if ft.is_file() {
                let Ok(meta) = e.metadata() else { continue };
                let path = e.path();
                let key = path
                    .strip_prefix(root)
                    .unwrap_or(&path)
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/");
                f(key, &meta);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use std::os::unix::fs::PermissionsExt;

    async fn collect(s: ByteStream) -> Vec<u8> {
        let mut out = Vec::new();
        let mut s = s;
        while let Some(c) = s.next().await {
            out.extend_from_slice(&c.unwrap());
        }
        out
    }

    #[tokio::test]
    async fn stage_resume_publish_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path().join("users")).unwrap();
        let id = Uuid::new_v4();
        let mut w = store.stage(id, 0).await.unwrap();
        w.write(Bytes::from_static(b"hello ")).await.unwrap();
        assert_eq!(w.finish().await.unwrap(), 6);
        // Resume at 5 cuts the trailing space.
        let mut w = store.stage(id, 5).await.unwrap();
        w.write(Bytes::from_static(b" world")).await.unwrap();
        assert_eq!(w.finish().await.unwrap(), 11);
        assert_eq!(store.staged_len(id).await.unwrap(), Some(11));
        assert!(store.stage(id, 99).await.is_err());

        store.publish(id, "u1/images/x.png").await.unwrap();
        assert_eq!(store.staged_len(id).await.unwrap(), None);
        assert_eq!(store.len("u1/images/x.png").await.unwrap(), 11);
        let all = collect(store.read("u1/images/x.png", 0..11).await.unwrap()).await;
        assert_eq!(all, b"hello world");
        let part = collect(store.read("u1/images/x.png", 6..9).await.unwrap()).await;
        assert_eq!(part, b"wor");

        let meta = std::fs::metadata(dir.path().join("users/u1/images/x.png")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let dmeta = std::fs::metadata(dir.path().join("users/u1")).unwrap();
        assert_eq!(dmeta.permissions().mode() & 0o777, 0o700);

        store.remove("u1/images/x.png").await.unwrap();
        store.remove("u1/images/x.png").await.unwrap();
        assert!(matches!(
            store.len("u1/images/x.png").await,
            Err(BlobError::NotFound)
        ));
        assert!(store.read("../escape", 0..1).await.is_err());
    }

    /// Large reads come back byte for byte for every range (unaligned
    /// starts, buffer boundaries, the tail); the file handed out for
    /// `sendfile` must hold the range asked for.
    #[tokio::test]
    async fn large_reads_match_the_file_and_open_file_checks_the_length() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path().join("users")).unwrap();
        let chunk = READ_CHUNK as u64;
        let n = 9 * READ_CHUNK + 12_345;
        let data: Vec<u8> = (0..n).map(|i| (i * 7 + i / 4099) as u8).collect();
        store
            .put_small("u1/files/big.bin", Bytes::from(data.clone()))
            .await
            .unwrap();
        let n = n as u64;
        for r in [0..n, 1..n, chunk - 1..3 * chunk + 1, n - chunk - 3..n] {
            let got = collect(store.read("u1/files/big.bin", r.clone()).await.unwrap()).await;
            assert_eq!(got.len() as u64, r.end - r.start, "{r:?}");
            assert!(got == data[r.start as usize..r.end as usize], "{r:?}");
        }
        let f = store.open_file("u1/files/big.bin", n).await.unwrap();
        assert_eq!(f.unwrap().metadata().unwrap().len(), n);
        // a range past the end is an error, not a short send
        assert!(store.open_file("u1/files/big.bin", n + 1).await.is_err());
        assert!(matches!(
            store.open_file("u1/files/none.bin", 1).await,
            Err(BlobError::NotFound)
        ));
    }
}
