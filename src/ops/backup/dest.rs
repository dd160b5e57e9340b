//! Where backup archives live: a directory on this machine, or a prefix in
//! any S3-compatible bucket (`s3://bucket/prefix`), reached with the blob
//! store's settings (endpoint, region, `AWS_*` credentials) through the same
//! client ([`crate::blob::s3::operator`]).
//!
//! [`super`] writes and reads archives as plain byte streams; this
//! module gives it, per destination, a sink to write one archive into, a
//! reader over one archive, the archive listing, and deletion. Nothing here
//! holds an archive whole, in memory or on disk:
//!
//! - A sink on a directory is a `.{name}.partial` file, fsynced and renamed
//!   into place on commit, removed when dropped uncommitted.
//! - A sink on S3 is one multipart upload: bytes are handed on in chunks of
//!   [`CHUNK`], and the upload holds one part at a time (see [`part_size`]
//!   and [`PART_CONCURRENCY`]). The object appears only when the upload completes,
//!   so a failed or interrupted backup leaves no archive; dropped
//!   uncommitted, the upload is aborted.
//! - A reader on S3 is one streaming GET.
//!
//! The sinks and readers are synchronous (the archive code is blocking tar
//! and gzip) and drive the async client through a runtime handle: create,
//! use and drop them only on a blocking thread.

use std::{
    fs::File,
    io::{BufWriter, Read, Write},
    ops::Range,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context};
use bytes::BytesMut;
use futures::TryStreamExt;
use opendal::Operator;

use crate::config::{BlobBackend, Config};

/// Bytes collected before they go to the multipart upload.
const CHUNK: usize = 1024 * 1024;
/// Smallest multipart part (S3's minimum is 5 MiB).
const MIN_PART: u64 = 8 * 1024 * 1024;
/// Parts of one archive upload in flight at once. One: with more, the
/// client (OpenDAL 0.53) keeps every completed part's bytes until the upload
/// ends whenever parts finish faster than they are produced (measured: the
/// whole archive in memory against a local Garage), which would make memory
/// grow with the archive.
const PART_CONCURRENCY: usize = 1;
/// S3 allows 10,000 parts per object; aim below that with room to spare.
const TARGET_PARTS: u64 = 9_000;

/// The part size for an archive expected to be about `expected` bytes:
/// [`MIN_PART`] up to about 56 GiB, then large enough to stay under S3's
/// part count limit. Memory of an upload is about one part.
pub fn part_size(expected: u64) -> usize {
    let need = expected.saturating_add(expected / 4) / TARGET_PARTS;
    let mib = 1024 * 1024;
    (need.max(MIN_PART).div_ceil(mib) * mib) as usize
}

/// A bucket and key prefix holding archives.
#[derive(Clone)]
pub struct Remote {
    pub bucket: String,
    /// No leading or trailing `/`; empty for the bucket's root.
    pub prefix: String,
    op: Operator,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.url())
    }
}

impl Remote {
    /// `s3://bucket/prefix`.
    pub fn url(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }

    /// The raw client, rooted at the prefix (tests look at what was written).
    pub fn operator(&self) -> &Operator {
        &self.op
    }
}

/// Where `backup create` writes and `backup list` looks.
#[derive(Clone, Debug)]
pub enum Dest {
    Dir(PathBuf),
    S3(Remote),
}

/// One archive: a file, or an object under a remote prefix.
#[derive(Clone, Debug)]
pub enum Location {
    File(PathBuf),
    S3 { remote: Remote, name: String },
}

/// Splits `s3://bucket/rest` into bucket and rest (no surrounding `/`).
fn split_s3_url(url: &str) -> anyhow::Result<Option<(String, String)>> {
    let Some(rest) = url.strip_prefix("s3://") else {
        return Ok(None);
    };
    let (bucket, path) = rest.split_once('/').unwrap_or((rest, ""));
    let bucket_ok = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.".contains(&b));
    if !bucket_ok {
        bail!("{url}: expected s3://bucket/prefix with a bucket name of 3 to 63 characters a-z, 0-9, '-' and '.'");
    }
    let path = path.trim_matches('/');
    if path.split('/').any(|c| c == "." || c == "..") || path.contains("//") || path.contains('\\')
    {
        bail!("{url}: the prefix may not contain empty, '.' or '..' components");
    }
    Ok(Some((bucket.to_string(), path.to_string())))
}

/// A client for `bucket`/`prefix` with the blob store's endpoint, region
/// and credentials. A prefix inside the blob store's own keys is refused:
/// audit and cleanup would take the archives for orphan blobs.
fn remote(config: &Config, bucket: String, prefix: String) -> anyhow::Result<Remote> {
    if config.blob_store == BlobBackend::S3 && config.s3_bucket.as_deref() == Some(&bucket) {
        let blobs = config.s3_prefix.trim_matches('/');
        let inside = blobs.is_empty()
            || prefix == blobs
            || prefix.starts_with(&format!("{blobs}/"))
            || blobs.starts_with(&format!("{prefix}/"))
            || prefix.is_empty();
        if inside {
            bail!(
                "s3://{bucket}/{prefix} overlaps the blob store (STOWAGE_S3_BUCKET={bucket}, STOWAGE_S3_PREFIX={blobs:?}): \
                 put backups in another bucket or under a prefix beside the blobs' one"
            );
        }
    }
    let opts = crate::blob::s3::S3Options {
        bucket: bucket.clone(),
        prefix: prefix.clone(),
        ..config.s3_options()
    };
    let op = crate::blob::s3::operator(&opts)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("opening s3://{bucket}/{prefix}"))?;
    Ok(Remote { bucket, prefix, op })
}

impl Dest {
    /// A directory path, or `s3://bucket/prefix`.
    pub fn parse(s: &str, config: &Config) -> anyhow::Result<Dest> {
        match split_s3_url(s)? {
            Some((bucket, prefix)) => Ok(Dest::S3(remote(config, bucket, prefix)?)),
            None => Ok(Dest::Dir(PathBuf::from(s))),
        }
    }

    /// The path, or `s3://bucket/prefix`.
    pub fn display(&self) -> String {
        match self {
            Dest::Dir(d) => d.display().to_string(),
            Dest::S3(r) => r.url(),
        }
    }

    /// Where archive `name` is (or would be) in this destination.
    pub fn location(&self, name: &str) -> Location {
        match self {
            Dest::Dir(d) => Location::File(d.join(name)),
            Dest::S3(r) => Location::S3 {
                remote: r.clone(),
                name: name.to_string(),
            },
        }
    }

    /// Fails early, before a snapshot is taken, when the destination cannot
    /// be reached (a missing bucket, wrong credentials).
    pub async fn check(&self) -> anyhow::Result<()> {
        match self {
            Dest::Dir(d) => super::mkdirs(d).with_context(|| format!("creating {}", d.display())),
            Dest::S3(r) => {
                let mut l =
                    r.op.lister("/")
                        .await
                        .with_context(|| format!("listing {}", r.url()))?;
                l.try_next()
                    .await
                    .with_context(|| format!("listing {}", r.url()))?;
                Ok(())
            }
        }
    }

    /// The names and sizes of the stowage archives directly in this
    /// destination (other names are never listed, so never deleted).
    pub async fn archives(&self) -> anyhow::Result<Vec<(String, u64)>> {
        let mut out = Vec::new();
        match self {
            Dest::Dir(d) => {
                let d = d.clone();
                return tokio::task::spawn_blocking(move || dir_archives(&d)).await?;
            }
            Dest::S3(r) => {
                let mut lister =
                    r.op.lister("/")
                        .await
                        .with_context(|| format!("listing {}", r.url()))?;
                while let Some(e) = lister
                    .try_next()
                    .await
                    .with_context(|| format!("listing {}", r.url()))?
                {
                    let name = e.name().to_string();
                    if e.metadata().is_file() && super::parse_archive_name(&name).is_some() {
                        out.push((name, e.metadata().content_length()));
                    }
                }
            }
        }
        Ok(out)
    }

    /// Deletes archive `name`.
    pub async fn delete(&self, name: &str) -> anyhow::Result<()> {
        match self {
            Dest::Dir(d) => {
                let p = d.join(name);
                std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))
            }
            Dest::S3(r) => {
                r.op.delete(name)
                    .await
                    .with_context(|| format!("removing {}/{name}", r.url()))
            }
        }
    }

    /// Opens a sink for archive `name`, of about `expected` bytes. Call on
    /// a blocking thread.
    pub fn create_sink(
        &self,
        name: &str,
        expected: u64,
        rt: &tokio::runtime::Handle,
    ) -> anyhow::Result<Box<dyn ArchiveSink>> {
        match self {
            Dest::Dir(d) => {
                let partial = d.join(format!(".{name}.partial"));
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&partial)
                    .with_context(|| format!("creating {}", partial.display()))?;
                Ok(Box::new(FileSink {
                    out: Some(BufWriter::with_capacity(1024 * 1024, file)),
                    partial,
                    dest: d.join(name),
                    dir: d.clone(),
                    written: 0,
                }))
            }
            Dest::S3(r) => {
                let w = rt
                    .block_on(async {
                        r.op.writer_with(name)
                            .chunk(part_size(expected))
                            .concurrent(PART_CONCURRENCY)
                            .content_type("application/x-tar")
                            .await
                    })
                    .with_context(|| format!("starting the upload of {}/{name}", r.url()))?;
                Ok(Box::new(S3Sink {
                    rt: rt.clone(),
                    w: Some(w),
                    buf: BytesMut::new(),
                    written: 0,
                }))
            }
        }
    }
}

/// The stowage archives directly in directory `d`, with their sizes.
pub fn dir_archives(d: &Path) -> anyhow::Result<Vec<(String, u64)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(d).with_context(|| format!("reading {}", d.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if super::parse_archive_name(&name).is_none() {
            continue;
        }
        let meta = entry.metadata()?;
        if meta.is_file() {
            out.push((name, meta.len()));
        }
    }
    Ok(out)
}

impl Location {
    /// A file path, or `s3://bucket/prefix/<archive name>`.
    pub fn parse(s: &str, config: &Config) -> anyhow::Result<Location> {
        let Some((bucket, path)) = split_s3_url(s)? else {
            return Ok(Location::File(PathBuf::from(s)));
        };
        let (prefix, name) = path.rsplit_once('/').unwrap_or(("", path.as_str()));
        if super::parse_archive_name(name).is_none() {
            bail!("{s}: expected s3://bucket/prefix/stowage-backup-….tar[.gz] (see `stowage backup list --dest s3://bucket/prefix`)");
        }
        Ok(Location::S3 {
            name: name.to_string(),
            remote: remote(config, bucket, prefix.to_string())?,
        })
    }

    /// The path, or `s3://bucket/prefix/name`.
    pub fn display(&self) -> String {
        match self {
            Location::File(p) => p.display().to_string(),
            Location::S3 { remote, name } => format!("{}/{name}", remote.url()),
        }
    }

    /// Reads the archive (or only `range` of it) as one stream. Call on a
    /// blocking thread.
    pub fn open(
        &self,
        range: Option<Range<u64>>,
        rt: &tokio::runtime::Handle,
    ) -> anyhow::Result<Box<dyn Read + Send>> {
        match self {
            Location::File(p) => {
                let f = File::open(p).with_context(|| format!("opening {}", p.display()))?;
                Ok(match range {
                    Some(r) => {
                        use std::io::{Seek, SeekFrom};
                        let mut f = f;
                        f.seek(SeekFrom::Start(r.start))?;
                        Box::new(f.take(r.end.saturating_sub(r.start)))
                    }
                    None => Box::new(f),
                })
            }
            Location::S3 { remote, name } => {
                let stream = rt
                    .block_on(async {
                        let reader = remote.op.reader(name).await?;
                        match range {
                            Some(r) => reader.into_bytes_stream(r).await,
                            None => reader.into_bytes_stream(..).await,
                        }
                    })
                    .with_context(|| format!("reading {}", self.display()))?;
                Ok(Box::new(tokio_util::io::SyncIoBridge::new_with_handle(
                    tokio_util::io::StreamReader::new(stream),
                    rt.clone(),
                )))
            }
        }
    }
}

/// Where one archive is written. `commit` makes it durable and visible
/// under its final name; dropping a sink uncommitted leaves no archive.
pub trait ArchiveSink: Write + Send {
    /// Returns the archive's size in bytes.
    fn commit(self: Box<Self>) -> anyhow::Result<u64>;
}

struct FileSink {
    out: Option<BufWriter<File>>,
    partial: PathBuf,
    dest: PathBuf,
    dir: PathBuf,
    written: u64,
}

impl Write for FileSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self
            .out
            .as_mut()
            .ok_or_else(|| std::io::Error::other("archive already committed"))?
            .write(buf)?;
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self.out.as_mut() {
            Some(o) => o.flush(),
            None => Ok(()),
        }
    }
}

impl ArchiveSink for FileSink {
    fn commit(mut self: Box<Self>) -> anyhow::Result<u64> {
        let out = self.out.take().context("archive already committed")?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&self.partial, &self.dest)?;
        fsync_dir(&self.dir)?;
        Ok(self.written)
    }
}

impl Drop for FileSink {
    fn drop(&mut self) {
        if self.out.take().is_some() {
            let _ = std::fs::remove_file(&self.partial);
        }
    }
}

fn fsync_dir(p: &Path) -> std::io::Result<()> {
    File::open(p)?.sync_all()
}

struct S3Sink {
    rt: tokio::runtime::Handle,
    /// `None` once committed.
    w: Option<opendal::Writer>,
    buf: BytesMut,
    written: u64,
}

impl S3Sink {
    /// Hands the collected bytes to the upload (which sends a part whenever
    /// it has one).
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = self.buf.split().freeze();
        let w = self
            .w
            .as_mut()
            .ok_or_else(|| std::io::Error::other("archive already committed"))?;
        self.rt
            .block_on(w.write(chunk))
            .map_err(std::io::Error::other)
    }
}

impl Write for S3Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(buf);
        self.written += buf.len() as u64;
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        // Parts go out when full; the whole is durable only on commit.
        Ok(())
    }
}

impl ArchiveSink for S3Sink {
    fn commit(mut self: Box<Self>) -> anyhow::Result<u64> {
        self.send()?;
        let mut w = self.w.take().context("archive already committed")?;
        if let Err(e) = self.rt.block_on(w.close()) {
            let _ = self.rt.block_on(w.abort());
            return Err(anyhow::Error::new(e).context("completing the upload"));
        }
        Ok(self.written)
    }
}

impl Drop for S3Sink {
    fn drop(&mut self) {
        if let Some(mut w) = self.w.take() {
            let _ = self.rt.block_on(w.abort());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_urls_split_into_bucket_and_prefix() {
        let s = |u: &str| split_s3_url(u).unwrap();
        assert_eq!(s("/mnt/backup"), None);
        assert_eq!(
            s("s3://my-bucket/stowage/nightly/"),
            Some(("my-bucket".into(), "stowage/nightly".into()))
        );
        assert_eq!(s("s3://my-bucket"), Some(("my-bucket".into(), "".into())));
        for bad in [
            "s3://",
            "s3://A_B/x",
            "s3://ok-bucket/a/../b",
            "s3://ok-bucket/a//b",
        ] {
            assert!(split_s3_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parts_stay_under_the_part_count_limit() {
        let mib = 1024 * 1024;
        assert_eq!(part_size(0), 8 * mib);
        assert_eq!(part_size(50 * 1024 * mib as u64), 8 * mib);
        for size in [100u64 << 30, 1 << 40, 5 << 40] {
            let part = part_size(size) as u64;
            assert!(size.div_ceil(part) < 10_000, "{size}: {part}");
            assert_eq!(part % mib as u64, 0);
        }
    }

    #[test]
    fn archive_locations_name_an_archive() {
        let c = Config::defaults(PathBuf::from("/tmp/x"));
        let l = Location::parse(
            "s3://backups/site-a/stowage-backup-20260124T101500123Z.tar.gz",
            &c,
        )
        .unwrap();
        assert_eq!(
            l.display(),
            "s3://backups/site-a/stowage-backup-20260124T101500123Z.tar.gz"
        );
        let l = Location::parse("s3://backups/stowage-backup-20260124T101500123Z.tar", &c).unwrap();
        assert_eq!(
            l.display(),
            "s3://backups/stowage-backup-20260124T101500123Z.tar"
        );
        assert!(Location::parse("s3://backups/site-a", &c).is_err());
        assert!(matches!(
            Location::parse("/mnt/b/x.tar", &c).unwrap(),
            Location::File(_)
        ));
    }

    #[test]
    fn a_destination_inside_the_blob_store_is_refused() {
        let mut c = Config::defaults(PathBuf::from("/tmp/x"));
        c.blob_store = BlobBackend::S3;
        c.s3_bucket = Some("files".into());
        c.s3_prefix = "prod".into();
        for bad in ["s3://files", "s3://files/prod", "s3://files/prod/backups"] {
            assert!(Dest::parse(bad, &c).is_err(), "{bad}");
        }
        for ok in ["s3://files/prod-backups", "s3://other/prod"] {
            assert!(Dest::parse(ok, &c).is_ok(), "{ok}");
        }
    }
}
