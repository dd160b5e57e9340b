//! The local volume: `{root}/{user}/{type dir}/{id}.{ext}`, staging files in
//! `{root}/.tmp` on the same filesystem so publishing is one `rename`.
//! Directories are created 0700 and files 0600; data and the directory entry
//! are fsynced before a publish returns. Uploads are staged with direct I/O
//! where the filesystem allows it, two buffers per upload ([`writer`]).
//!
//! A published blob is never written again (a new version is a new key), so
//! downloads hand its open file to the connection, which sends it with
//! `sendfile(2)` ([`BlobStore::open_file`], `http::sendfile`). Other reads
//! are plain reads into buffers: never a memory mapping, whose pages would
//! kill the process with `SIGBUS` if the file were truncated under it.

mod writer;

use std::{
    io::SeekFrom,
    ops::Range,
    os::unix::fs::DirBuilderExt,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio_util::io::ReaderStream;
use uuid::Uuid;

use super::*;

/// Read chunk for downloads: large enough that per-chunk overhead vanishes.
const READ_CHUNK: usize = 256 * 1024;
/// Writers that get the whole configured buffer size at once.
const FULL_BUFFERS: usize = 4;

/// One open writer of a store, counted until it is dropped.
pub(crate) struct WriterCount {
    writers: Arc<AtomicUsize>,
    /// Writers open before this one.
    before: usize,
}

impl WriterCount {
    fn enter(writers: &Arc<AtomicUsize>) -> WriterCount {
        let before = writers.fetch_add(1, Ordering::Relaxed);
        WriterCount {
            writers: writers.clone(),
            before,
        }
    }
}

impl Drop for WriterCount {
    fn drop(&mut self) {
        self.writers.fetch_sub(1, Ordering::Relaxed);
    }
}

pub struct LocalStore {
    root: PathBuf,
    /// Staging files are written with direct I/O ([`writer`]); turned off
    /// by configuration, or for good the first time the filesystem refuses
    /// it at `open`.
    direct: AtomicBool,
    /// How a direct-I/O staging file is opened (tests simulate a refusal).
    direct_mode: writer::Mode,
    /// Size of each of an upload's two write buffers.
    buf_size: usize,
    /// Writers open now; see [`LocalStore::buffer_for`].
    writers: Arc<AtomicUsize>,
}

impl LocalStore {
    /// Opens (creating if needed) the volume at `root`.
    pub fn open(root: impl Into<PathBuf>) -> std::io::Result<LocalStore> {
        let root = root.into();
        mkdirs(&root)?;
        mkdirs(&root.join(".tmp"))?;
        Ok(LocalStore {
            root,
            direct: AtomicBool::new(true),
            direct_mode: writer::Mode::Direct,
            buf_size: writer::BUF,
            writers: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// The buffer size for a writer opened while `open` others are: the
    /// configured size for the first [`FULL_BUFFERS`], half of it for as
    /// many more, a quarter beyond, so that many uploads at once do not
    /// multiply the memory the fastest single upload gets.
    fn buffer_for(&self, open: usize) -> usize {
        let shift = (open / FULL_BUFFERS).min(2);
        let b = (self.buf_size >> shift) / writer::ALIGN * writer::ALIGN;
        b.max(writer::BUF_MIN)
    }

    /// Size of each of an upload's two write buffers: rounded up to a
    /// multiple of 4 KiB and kept within 16 KiB..=16 MiB.
    pub fn with_buffer_size(mut self, bytes: usize) -> LocalStore {
        let b = bytes.clamp(writer::BUF_MIN, writer::BUF_MAX);
        self.buf_size = b.div_ceil(writer::ALIGN) * writer::ALIGN;
        self
    }

    /// Whether uploads are written with direct I/O (`O_DIRECT`, on by
    /// default; the store falls back to buffered writes by itself where the
    /// filesystem refuses it).
    pub fn with_direct_io(self, on: bool) -> LocalStore {
        self.direct.store(on, Ordering::Relaxed);
        self
    }

    /// Opens staging file `id` at `offset` through [`writer::open`], with
    /// direct I/O when `direct` and the store allows it.
    async fn open_writer(
        &self,
        id: Uuid,
        offset: u64,
        direct: bool,
    ) -> BlobResult<writer::LocalWriter> {
        let mode = if direct && self.direct.load(Ordering::Relaxed) {
            self.direct_mode
        } else {
            writer::Mode::Buffered
        };
        let open = WriterCount::enter(&self.writers);
        let size = self.buffer_for(open.before);
        let (mut w, refused) = writer::open(&self.staging_path(id), offset, mode, size).await?;
        w.count(open);
        if refused && self.direct.swap(false, Ordering::Relaxed) {
            tracing::warn!(root = %self.root.display(), "the volume refuses direct I/O; uploads go through the page cache");
        }
        Ok(w)
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

fn range_stream(file: tokio::fs::File, len: u64) -> ByteStream {
    let reader = file.take(len);
    Box::pin(ReaderStream::with_capacity(reader, READ_CHUNK))
}

#[async_trait]
impl BlobStore for LocalStore {
    async fn stage(&self, id: Uuid, offset: u64) -> BlobResult<Box<dyn BlobWriter>> {
        match self.open_writer(id, offset, true).await {
            Ok(w) => Ok(Box::new(w)),
            Err(BlobError::NotFound) if offset > 0 => {
                tracing::warn!(upload = %id, offset, "staged data is missing or shorter than its offset");
                Err(BlobError::NotFound)
            }
            Err(e) => Err(e),
        }
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
        // Small: through the page cache, no direct I/O to set up.
        let mut w: Box<dyn BlobWriter> = Box::new(self.open_writer(id, 0, false).await?);
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

    fn pattern(n: usize, seed: usize) -> Vec<u8> {
        (0..n)
            .map(|i| (i.wrapping_mul(31) ^ (i >> 12) ^ seed) as u8)
            .collect()
    }

    /// Writes `data` as `chunks`-sized chunks into a new staging file and
    /// returns what the file holds after `finish`.
    async fn stage_all(store: &LocalStore, id: Uuid, data: &[u8], chunk: usize) -> Vec<u8> {
        let mut w = store.stage(id, 0).await.unwrap();
        for c in data.chunks(chunk.max(1)) {
            w.write(Bytes::copy_from_slice(c)).await.unwrap();
        }
        assert_eq!(w.finish().await.unwrap(), data.len() as u64);
        std::fs::read(store.staging_path(id)).unwrap()
    }

    /// Sizes around the alignment and buffer boundaries come back byte for
    /// byte, with direct I/O, buffered, and on a volume that refuses
    /// `O_DIRECT` at open (which then stays buffered).
    #[tokio::test]
    async fn unaligned_sizes_are_stored_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let direct = LocalStore::open(dir.path().join("d")).unwrap();
        let buffered = LocalStore::open(dir.path().join("b"))
            .unwrap()
            .with_direct_io(false);
        let mut refusing = LocalStore::open(dir.path().join("r")).unwrap();
        refusing.direct_mode = writer::Mode::Refused;
        let sizes = [
            0,
            1,
            4095,
            4096,
            4097,
            writer::BUF - 1,
            writer::BUF,
            writer::BUF + 1,
            (1 << 20) + 1,
            3 * writer::BUF + 4097,
        ];
        for store in [&direct, &buffered, &refusing] {
            for (i, &n) in sizes.iter().enumerate() {
                let data = pattern(n, i);
                for chunk in [1000, 65_536, 300_001] {
                    let got = stage_all(store, Uuid::new_v4(), &data, chunk).await;
                    assert!(got == data, "size {n}, chunks of {chunk}");
                }
            }
        }
        assert!(direct.direct.load(Ordering::Relaxed));
        assert!(
            !refusing.direct.load(Ordering::Relaxed),
            "a refusal turns direct I/O off"
        );
        let w = direct.open_writer(Uuid::new_v4(), 0, true).await.unwrap();
        assert!(w.is_direct(), "this volume takes O_DIRECT");
        let w = refusing.open_writer(Uuid::new_v4(), 0, true).await.unwrap();
        assert!(!w.is_direct());
    }

    /// Many writers at once get smaller buffers: full size for the first
    /// four, half for the next four, a quarter beyond; never below the
    /// minimum, always aligned.
    #[tokio::test]
    async fn many_writers_at_once_share_the_memory() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path().join("users")).unwrap();
        let mut open = Vec::new();
        for _ in 0..10 {
            open.push(store.open_writer(Uuid::new_v4(), 0, true).await.unwrap());
        }
        let sizes: Vec<usize> = open.iter().map(|w| w.buffer_size()).collect();
        let b = writer::BUF;
        assert_eq!(
            sizes,
            [b, b, b, b, b / 2, b / 2, b / 2, b / 2, b / 4, b / 4]
        );
        drop(open);
        assert_eq!(store.writers.load(Ordering::Relaxed), 0);
        let w = store.open_writer(Uuid::new_v4(), 0, true).await.unwrap();
        assert_eq!(w.buffer_size(), b);
        let small = LocalStore::open(dir.path().join("small"))
            .unwrap()
            .with_buffer_size(20_000);
        assert_eq!(small.buffer_for(0), 20_480);
        assert_eq!(small.buffer_for(9), writer::BUF_MIN);
    }

    /// A resumed upload (tus) reopens its staging file at any offset,
    /// aligned or not, cutting what lies past it, and the whole file is
    /// what was sent.
    #[tokio::test]
    async fn resumes_at_unaligned_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let direct = LocalStore::open(dir.path().join("d")).unwrap();
        let buffered = LocalStore::open(dir.path().join("b"))
            .unwrap()
            .with_direct_io(false);
        let total = 2 * writer::BUF + 10_000;
        let data = pattern(total, 7);
        for store in [&direct, &buffered] {
            let id = Uuid::new_v4();
            let mut at = 0usize;
            // Each "PATCH" writes a piece plus garbage past it that the next
            // one cuts off (a body whose offset was never recorded).
            for cut in [1, 4095, 4097, 8192, writer::BUF + 3, total] {
                let mut w = store.stage(id, at as u64).await.unwrap();
                w.write(Bytes::copy_from_slice(&data[at..cut]))
                    .await
                    .unwrap();
                if cut < total {
                    w.write(Bytes::from(vec![0xEE; 5000])).await.unwrap();
                }
                w.finish().await.unwrap();
                at = cut;
            }
            assert_eq!(store.staged_len(id).await.unwrap(), Some(total as u64));
            let got = std::fs::read(store.staging_path(id)).unwrap();
            assert!(got == data);
            // more than is staged: the bytes counted on are gone
            assert!(matches!(
                store.stage(id, total as u64 + 1).await,
                Err(BlobError::NotFound)
            ));
        }
    }

    /// Keeps what it is fed.
    struct Collect(Vec<u8>);

    impl crate::blob::Tap for Collect {
        fn update(&mut self, data: &[u8]) {
            self.0.extend_from_slice(data);
        }
    }

    /// A tap sees exactly the bytes written after it was set, in order and
    /// before `finish` returns, whatever the offset the writer was opened
    /// at (not the partial block read back) and the chunk sizes.
    #[tokio::test]
    async fn a_tap_sees_every_new_byte_in_order() {
        let dir = tempfile::tempdir().unwrap();
        for direct in [true, false] {
            let store = LocalStore::open(dir.path().join(format!("v{direct}")))
                .unwrap()
                .with_direct_io(direct);
            let id = Uuid::new_v4();
            let data = pattern(3 * writer::BUF + 777, 3);
            let mut at = 0;
            for cut in [0, 4097, 4097 + writer::BUF, data.len()] {
                let tap = std::sync::Arc::new(std::sync::Mutex::new(Collect(Vec::new())));
                let mut w = store.stage(id, at as u64).await.unwrap();
                assert!(w.set_tap(tap.clone()));
                for c in data[at..cut].chunks(50_000) {
                    w.write(Bytes::copy_from_slice(c)).await.unwrap();
                }
                w.finish().await.unwrap();
                assert!(tap.lock().unwrap().0 == data[at..cut], "{at}..{cut}");
                at = cut;
            }
            // too late once bytes are buffered
            let mut w = store.stage(id, 0).await.unwrap();
            w.write(Bytes::from_static(b"x")).await.unwrap();
            let tap = std::sync::Arc::new(std::sync::Mutex::new(Collect(Vec::new())));
            assert!(!w.set_tap(tap));
        }
    }

    /// A writer dropped with a write in flight (a refused or cut body) does
    /// not let that write land after the next writer has cut the file back.
    #[tokio::test]
    async fn a_dropped_writer_never_writes_over_the_next() {
        let dir = tempfile::tempdir().unwrap();
        // Writes start late, so the one left in flight would land after
        // the next writer has cut the file back, unless that one waits.
        let big = writer::BUF;
        let mut store = LocalStore::open(dir.path().join("users")).unwrap();
        store.direct_mode = writer::Mode::Slow;
        let id = Uuid::new_v4();
        let keep = pattern(4097, 1);
        let mut w = store.stage(id, 0).await.unwrap();
        w.write(Bytes::from(keep.clone())).await.unwrap();
        w.finish().await.unwrap();
        for round in 0..3 {
            let mut w = store.stage(id, keep.len() as u64).await.unwrap();
            // Fills both buffers: one write in flight, one buffer full.
            w.write(Bytes::from(vec![0xAA; 2 * big + 1])).await.unwrap();
            drop(w);
            let mut w = store.stage(id, keep.len() as u64).await.unwrap();
            w.write(Bytes::from_static(b"tail")).await.unwrap();
            w.finish().await.unwrap();
            // Long enough for a late write to have landed.
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            let got = std::fs::read(store.staging_path(id)).unwrap();
            assert_eq!(got.len(), keep.len() + 4, "round {round}");
            assert!(got[..keep.len()] == keep[..] && &got[keep.len()..] == b"tail");
        }
    }

    /// A tmpfs of `size` mounted on a fresh directory, unmounted on drop;
    /// `None` where this process may not mount (not root).
    struct SmallFs(tempfile::TempDir);

    impl SmallFs {
        fn mount(size: &str) -> Option<SmallFs> {
            let dir = tempfile::tempdir().ok()?;
            let ok = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(dir.path())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            ok.then_some(SmallFs(dir))
        }
    }

    impl Drop for SmallFs {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(self.0.path())
                .status();
        }
    }

    /// A volume that fills up: the write or the finish fails with
    /// `NoSpace` (the HTTP layer's 507), both with direct I/O and
    /// buffered, and discarding leaves the staging area empty.
    #[tokio::test]
    async fn a_full_volume_is_no_space() {
        let Some(fs) = SmallFs::mount("1m") else {
            eprintln!("skipped: cannot mount a tmpfs here (needs root)");
            return;
        };
        for direct in [true, false] {
            let store = LocalStore::open(fs.0.path().join("users"))
                .unwrap()
                .with_direct_io(direct);
            let id = Uuid::new_v4();
            let mut w = store.stage(id, 0).await.unwrap();
            let mut res = Ok(());
            for _ in 0..64 {
                res = w.write(Bytes::from(vec![7u8; 65_536])).await;
                if res.is_err() {
                    break;
                }
            }
            let res = match res {
                Ok(()) => w.finish().await.map(|_| ()),
                Err(e) => Err(e),
            };
            assert!(
                matches!(res, Err(BlobError::NoSpace)),
                "direct {direct}: {res:?}"
            );
            store.discard(id).await.unwrap();
            assert!(store.list_staged().await.unwrap().is_empty());
        }
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
