//! Object writes whose memory does not depend on the part size: incoming
//! bytes are spooled to files on local disk, and each finished part is sent
//! from its file as a body of known length, read in small pieces.
//!
//! OpenDAL's writer keeps every part in memory until the store has it (two
//! in flight plus the one filling: 24 MiB per upload at 8 MiB parts, and
//! more as the allocator holds on to freed parts), and S3 parts are at
//! least 5 MiB, so no in-memory design fits 16 uploads in 64 MiB. This
//! module sends the multipart calls itself (create, upload part, complete,
//! abort, and a plain PUT for objects under one part), signed with
//! [`super::sigv4`]; everything else still goes through OpenDAL.
//!
//! Per writer, memory is one coalescing buffer of [`WRITE_BUF`] plus
//! [`READ_CHUNK`] per part in flight; disk is at most
//! `PART_SIZE × (PART_CONCURRENCY + 1)`. A spool file is unlinked as soon as
//! it is created, so the space comes back when the part is sent, the writer
//! is dropped or the process dies; [`Spool::clean`] removes any name a
//! crash left between the two steps.

use std::{
    fs::File,
    io::Write,
    os::unix::fs::FileExt,
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use reqwest::{Method, StatusCode};
use tokio::task::JoinSet;
use uuid::Uuid;

use super::sigv4::{self, Signer, UNSIGNED_PAYLOAD};
use super::S3Options;
use crate::blob::{BlobError, BlobResult};

/// Multipart part size: above S3's 5 MiB minimum. Memory does not depend on
/// it; the scratch disk a writer may fill does.
pub const PART_SIZE: u64 = 8 * 1024 * 1024;
/// Parts of one upload in flight at once (with two, one upload to a Garage
/// cluster went at 0.53–0.89× boto3's ten; see
/// bench/results/2026-12-02-s3).
pub const PART_CONCURRENCY: usize = 4;
/// Small chunks are gathered up to this size before they go to the file
/// (one blocking write per gathering, not per network read).
pub const WRITE_BUF: usize = 256 * 1024;
/// A part is read back from its file in pieces of this size.
pub const READ_CHUNK: usize = 256 * 1024;
/// Tries of one request on a connection error, a timeout or a 5xx.
const ATTEMPTS: u32 = 4;
/// The longest reply body read (XML answers are small).
const MAX_REPLY: usize = 64 * 1024;
/// A request without a body, or with a small one.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// A request sending one part (at most [`PART_SIZE`] plus a chunk).
const PART_TIMEOUT: Duration = Duration::from_secs(300);

/// The scratch directory parts wait in, and how many bytes are there.
pub struct Spool {
    dir: PathBuf,
    /// Bytes in spool files now, every writer of the process together.
    used: AtomicU64,
    /// Free space a new part must leave on the scratch volume; a part that
    /// would not is refused as [`BlobError::NoSpace`].
    keep_free: u64,
}

impl Spool {
    /// A spool in `dir`, created when the first part is.
    pub fn new(dir: PathBuf) -> Arc<Spool> {
        Arc::new(Spool {
            dir,
            used: AtomicU64::new(0),
            keep_free: 0,
        })
    }

    /// Removes the spool files a crash left (a file loses its name as soon
    /// as it is created, so only a crash between the two leaves one; a name
    /// another process is about to remove is harmless to remove here).
    pub fn clean(&self) -> BlobResult<()> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        for e in entries {
            let path = e?.path();
            if path.extension().is_some_and(|x| x == "part") {
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(())
    }

    /// Bytes spooled now, by every writer of this process.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    fn add(&self, n: u64) {
        let v = self.used.fetch_add(n, Ordering::Relaxed) + n;
        crate::telemetry::metrics::s3_spool_bytes(v);
    }

    fn sub(&self, n: u64) {
        let v = self.used.fetch_sub(n, Ordering::Relaxed) - n;
        crate::telemetry::metrics::s3_spool_bytes(v);
    }

    /// A new, already unlinked spool file, if the volume has room for a
    /// whole part.
    async fn create(self: &Arc<Self>) -> BlobResult<SpoolFile> {
        let me = self.clone();
        let file = tokio::task::spawn_blocking(move || -> BlobResult<File> {
            std::fs::create_dir_all(&me.dir)?;
            if free_bytes(&me.dir)? < PART_SIZE.saturating_add(me.keep_free) {
                return Err(BlobError::NoSpace);
            }
            let path = me.dir.join(format!("{}.part", Uuid::new_v4()));
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)?;
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                // Another process's start-up clean-up got there first.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
            Ok(f)
        })
        .await
        .map_err(join_error)??;
        Ok(SpoolFile {
            file: Arc::new(file),
            len: 0,
            spool: self.clone(),
        })
    }
}

/// Free bytes for an unprivileged writer on the volume holding `dir`.
fn free_bytes(dir: &std::path::Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("scratch path holds a NUL"))?;
    // SAFETY: an all-zero `statvfs` is a valid value of that plain C struct.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `s` a valid out pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((s.f_bavail as u64).saturating_mul(s.f_frsize as u64))
}

fn join_error(e: tokio::task::JoinError) -> BlobError {
    BlobError::Io(std::io::Error::other(e))
}

/// One part on disk (unlinked); its bytes leave the count when it is
/// dropped.
struct SpoolFile {
    file: Arc<File>,
    len: u64,
    spool: Arc<Spool>,
}

impl SpoolFile {
    /// Appends `data` and hands it back (a buffer to reuse).
    async fn append<B: AsRef<[u8]> + Send + 'static>(&mut self, data: B) -> BlobResult<B> {
        let n = data.as_ref().len() as u64;
        let f = self.file.clone();
        let data =
            tokio::task::spawn_blocking(move || (&*f).write_all(data.as_ref()).map(|_| data))
                .await
                .map_err(join_error)??;
        self.len += n;
        self.spool.add(n);
        Ok(data)
    }

    /// The file's bytes as a stream of [`READ_CHUNK`] pieces, each read
    /// when the HTTP client asks for it.
    fn body(&self) -> reqwest::Body {
        let (file, len) = (self.file.clone(), self.len);
        let s = futures::stream::try_unfold(0u64, move |pos| {
            let file = file.clone();
            async move {
                if pos >= len {
                    return Ok::<_, std::io::Error>(None);
                }
                let n = (len - pos).min(READ_CHUNK as u64) as usize;
                let mut b = vec![0u8; n];
                let buf =
                    tokio::task::spawn_blocking(move || file.read_exact_at(&mut b, pos).map(|_| b))
                        .await
                        .map_err(std::io::Error::other)??;
                Ok(Some((Bytes::from(buf), pos + n as u64)))
            }
        });
        reqwest::Body::wrap_stream(s)
    }
}

impl Drop for SpoolFile {
    fn drop(&mut self) {
        self.spool.sub(self.len);
    }
}

/// What a request sends.
#[derive(Clone, Copy)]
enum Payload<'a> {
    Empty,
    /// A small body, hashed into the signature.
    Small(&'a [u8]),
    /// A spooled part, sent unsigned with its length.
    Spooled(&'a SpoolFile),
}

/// Signs and sends the multipart calls (path-style addressing, as the
/// OpenDAL operator uses).
pub struct Client {
    http: reqwest::Client,
    /// `scheme://authority` of the endpoint.
    origin: String,
    /// `Host` as the HTTP client sends it (and the signature covers).
    host: String,
    /// Encoded path up to the object key: `/{bucket}/` and the prefix.
    base_path: String,
    /// Encoded path of the bucket itself, `/{bucket}/` (for listings).
    bucket_path: String,
    /// The store's prefix as keys in a listing begin with it (`a/b/`, or
    /// empty).
    key_prefix: String,
    signer: Option<Signer>,
    /// Aborts of unfinished multipart uploads, sent in the background when
    /// a writer is dropped; [`Client::settle`] waits for them.
    aborts: tokio_util::task::TaskTracker,
}

impl Client {
    pub fn new(o: &S3Options) -> BlobResult<Client> {
        let endpoint = o
            .endpoint
            .clone()
            .unwrap_or_else(|| format!("https://s3.{}.amazonaws.com", o.region));
        let bad = |m: String| BlobError::Io(std::io::Error::other(m));
        let url = reqwest::Url::parse(&endpoint)
            .map_err(|e| bad(format!("S3 endpoint {endpoint:?}: {e}")))?;
        let h = url
            .host_str()
            .ok_or_else(|| bad(format!("S3 endpoint {endpoint:?} has no host")))?;
        let host = match url.port() {
            Some(p) => format!("{h}:{p}"),
            None => h.to_string(),
        };
        let mut base_path = url.path().trim_end_matches('/').to_string();
        base_path.push('/');
        base_path.push_str(&sigv4::uri_encode(&o.bucket, false));
        base_path.push('/');
        let bucket_path = base_path.clone();
        let mut key_prefix = String::new();
        for seg in o.prefix.split('/').filter(|s| !s.is_empty()) {
            base_path.push_str(&sigv4::uri_encode(seg, false));
            base_path.push('/');
            key_prefix.push_str(seg);
            key_prefix.push('/');
        }
        let signer = match (&o.access_key_id, &o.secret_access_key) {
            (Some(k), Some(s)) => Some(Signer {
                access_key_id: k.clone(),
                secret_access_key: s.clone(),
                region: o.region.clone(),
            }),
            _ => None,
        };
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| bad(format!("S3 client: {e}")))?;
        Ok(Client {
            http,
            origin: format!("{}://{host}", url.scheme()),
            host,
            base_path,
            bucket_path,
            key_prefix,
            signer,
            aborts: tokio_util::task::TaskTracker::new(),
        })
    }

    /// Waits for the aborts still being sent (see [`MultipartWriter`]'s
    /// `Drop`): a process that stops without them leaves multipart uploads
    /// the store keeps, and may bill for, until its own lifecycle rule.
    pub async fn settle(&self) {
        self.aborts.close();
        self.aborts.wait().await;
        self.aborts.reopen();
    }

    /// Sends one request, retrying connection errors, timeouts and 5xx
    /// answers; returns the answer's status, headers and (bounded) body. A
    /// 404 is [`BlobError::NotFound`]; every try spent on those failures is
    /// [`BlobError::Unavailable`]; any other refusal an I/O error. Both
    /// name the call and S3's error code.
    async fn call(
        &self,
        what: &str,
        method: Method,
        key: &str,
        query: &[(&str, &str)],
        payload: Payload<'_>,
    ) -> BlobResult<(reqwest::header::HeaderMap, String)> {
        let path = format!("{}{}", self.base_path, sigv4::uri_encode(key, true));
        self.call_at(what, method, key, path, query, payload).await
    }

    /// [`Client::call`] on an encoded `path` (`key` only names the request
    /// in errors and logs).
    async fn call_at(
        &self,
        what: &str,
        method: Method,
        key: &str,
        path: String,
        query: &[(&str, &str)],
        payload: Payload<'_>,
    ) -> BlobResult<(reqwest::header::HeaderMap, String)> {
        let query = sigv4::canonical_query(query);
        let url = if query.is_empty() {
            format!("{}{path}", self.origin)
        } else {
            format!("{}{path}?{query}", self.origin)
        };
        let sha = match payload {
            Payload::Empty => sigv4::payload_hash(b""),
            Payload::Small(b) => sigv4::payload_hash(b),
            Payload::Spooled(_) => UNSIGNED_PAYLOAD.to_string(),
        };
        let mut last = String::new();
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                let ms = (100u64 << attempt).min(2000);
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            let mut req = self
                .http
                .request(method.clone(), &url)
                .header("x-amz-content-sha256", &sha);
            if let Some(s) = &self.signer {
                let signed = s.sign(
                    method.as_str(),
                    &self.host,
                    &path,
                    &query,
                    &sha,
                    // The wall clock: S3 refuses a request signed more
                    // than a few minutes off its own time.
                    chrono::Utc::now(),
                );
                req = req
                    .header("x-amz-date", signed.amz_date)
                    .header(reqwest::header::AUTHORIZATION, signed.authorization);
            }
            req = match payload {
                Payload::Empty => req
                    .header(reqwest::header::CONTENT_LENGTH, 0)
                    .timeout(CALL_TIMEOUT),
                Payload::Small(b) => req.body(b.to_vec()).timeout(CALL_TIMEOUT),
                Payload::Spooled(f) => req
                    .header(reqwest::header::CONTENT_LENGTH, f.len)
                    .body(f.body())
                    .timeout(PART_TIMEOUT),
            };
            let resp = match req.send().await {
                Ok(r) => r,
                Err(e) => {
                    last = format!("{e}");
                    tracing::debug!(call = what, key, attempt, error = %e, "S3 request failed");
                    continue;
                }
            };
            let status = resp.status();
            let headers = resp.headers().clone();
            let body = match read_reply(resp).await {
                Ok(b) => b,
                Err(e) => {
                    last = format!("reading the answer: {e}");
                    continue;
                }
            };
            if status.is_success() {
                return Ok((headers, body));
            }
            let code = tag(&body, "Code").unwrap_or("").to_string();
            if status == StatusCode::NOT_FOUND {
                tracing::debug!(call = what, key, code = %code, "S3 answered 404");
                return Err(BlobError::NotFound);
            }
            last = format!("{status} {code}");
            if !(status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS) {
                // Refused for good (403, 400, ...): the request or the
                // configuration is wrong, and retrying will not help.
                return Err(BlobError::Io(std::io::Error::other(format!(
                    "S3 {what} of {key}: {last}"
                ))));
            }
        }
        // Every try met a connection error, a timeout or a 5xx/429: the
        // store is not answering.
        Err(BlobError::Unavailable(format!(
            "S3 {what} of {key}: {last}"
        )))
    }

    async fn create(&self, key: &str) -> BlobResult<String> {
        let (_, body) = self
            .call(
                "CreateMultipartUpload",
                Method::POST,
                key,
                &[("uploads", "")],
                Payload::Empty,
            )
            .await?;
        tag(&body, "UploadId")
            .filter(|u| !u.is_empty())
            .map(str::to_string)
            .ok_or_else(|| {
                BlobError::Io(std::io::Error::other(
                    "S3 CreateMultipartUpload answered without an UploadId",
                ))
            })
    }

    async fn upload_part(
        &self,
        key: &str,
        upload: &str,
        n: u32,
        part: &SpoolFile,
    ) -> BlobResult<String> {
        let num = n.to_string();
        let (headers, _) = self
            .call(
                "UploadPart",
                Method::PUT,
                key,
                &[("partNumber", num.as_str()), ("uploadId", upload)],
                Payload::Spooled(part),
            )
            .await?;
        headers
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .ok_or_else(|| {
                BlobError::Io(std::io::Error::other(
                    "S3 UploadPart answered without an ETag",
                ))
            })
    }

    /// Completes the upload of `len` bytes in `parts`. A retried call whose
    /// first try did reach the store (its answer lost on the way back) finds
    /// the upload gone: the object is then looked at, and taken as done when
    /// it is exactly these parts (see [`Client::holds_parts`]).
    async fn complete(
        &self,
        key: &str,
        upload: &str,
        parts: &[(u32, String)],
        len: u64,
    ) -> BlobResult<()> {
        match self.complete_call(key, upload, parts).await {
            Err(BlobError::NotFound) if self.holds_parts(key, parts, len).await? => {
                tracing::info!(
                    key,
                    "S3 CompleteMultipartUpload: the upload was gone and the object is its parts (an earlier answer was lost)"
                );
                Ok(())
            }
            Err(BlobError::NotFound) => Err(BlobError::Io(std::io::Error::other(format!(
                "S3 CompleteMultipartUpload of {key}: the multipart upload is gone"
            )))),
            r => r,
        }
    }

    /// Whether the object at `key` is the one completing `parts` makes: its
    /// length, and the multipart ETag (the MD5 of the parts' MD5s, then
    /// `-` and the number of parts), which no other content has in practice.
    async fn holds_parts(&self, key: &str, parts: &[(u32, String)], len: u64) -> BlobResult<bool> {
        let headers = match self
            .call("HeadObject", Method::HEAD, key, &[], Payload::Empty)
            .await
        {
            Ok((h, _)) => h,
            Err(BlobError::NotFound) => return Ok(false),
            Err(e) => return Err(e),
        };
        let header = |name| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
        };
        let same_len = header(reqwest::header::CONTENT_LENGTH).parse::<u64>() == Ok(len);
        let same_etag = multipart_etag(parts).is_some_and(|e| {
            header(reqwest::header::ETAG)
                .trim_matches('"')
                .eq_ignore_ascii_case(&e)
        });
        Ok(same_len && same_etag)
    }

    async fn complete_call(
        &self,
        key: &str,
        upload: &str,
        parts: &[(u32, String)],
    ) -> BlobResult<()> {
        let mut xml = String::from("<CompleteMultipartUpload>");
        for (n, etag) in parts {
            xml.push_str(&format!(
                "<Part><PartNumber>{n}</PartNumber><ETag>{}</ETag></Part>",
                xml_escape(etag)
            ));
        }
        xml.push_str("</CompleteMultipartUpload>");
        let (_, body) = self
            .call(
                "CompleteMultipartUpload",
                Method::POST,
                key,
                &[("uploadId", upload)],
                Payload::Small(xml.as_bytes()),
            )
            .await?;
        // S3 may answer 200 and report the failure in the body.
        if body.contains("<Error>") {
            return Err(BlobError::Io(std::io::Error::other(format!(
                "S3 CompleteMultipartUpload of {key}: {}",
                tag(&body, "Code").unwrap_or("error")
            ))));
        }
        Ok(())
    }

    /// The multipart uploads begun and neither completed nor aborted on
    /// keys that start with `prefix` (under the store's prefix; keys are
    /// answered relative to it, as every other key here). A process that
    /// died mid-upload leaves one: nothing else ever lists it.
    pub(super) async fn unfinished(&self, prefix: &str) -> BlobResult<Vec<Unfinished>> {
        let full = format!("{}{prefix}", self.key_prefix);
        let mut out = Vec::new();
        let mut markers: Option<(String, String)> = None;
        loop {
            let mut q = vec![
                ("uploads", ""),
                ("prefix", full.as_str()),
                // Pages stay well under the answer size read (MAX_REPLY).
                ("max-uploads", "100"),
            ];
            if let Some((k, u)) = &markers {
                q.push(("key-marker", k.as_str()));
                q.push(("upload-id-marker", u.as_str()));
            }
            let (_, body) = self
                .call_at(
                    "ListMultipartUploads",
                    Method::GET,
                    prefix,
                    self.bucket_path.clone(),
                    &q,
                    Payload::Empty,
                )
                .await?;
            for item in body.split("<Upload>").skip(1) {
                let (Some(key), Some(id)) = (tag(item, "Key"), tag(item, "UploadId")) else {
                    continue;
                };
                let key = xml_unescape(key);
                let Some(rel) = key.strip_prefix(&self.key_prefix) else {
                    continue;
                };
                out.push(Unfinished {
                    key: rel.to_string(),
                    upload_id: xml_unescape(id),
                    initiated: tag(item, "Initiated")
                        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                        .map(|t| t.with_timezone(&chrono::Utc)),
                });
            }
            let next = (
                tag(&body, "NextKeyMarker").map(xml_unescape),
                tag(&body, "NextUploadIdMarker").map(xml_unescape),
            );
            match (tag(&body, "IsTruncated"), next) {
                (Some("true"), (Some(k), Some(u))) if !k.is_empty() => {
                    if markers.as_ref() == Some(&(k.clone(), u.clone())) {
                        break;
                    }
                    markers = Some((k, u));
                }
                _ => break,
            }
        }
        Ok(out)
    }

    pub(super) async fn abort(&self, key: &str, upload: &str) -> BlobResult<()> {
        match self
            .call(
                "AbortMultipartUpload",
                Method::DELETE,
                key,
                &[("uploadId", upload)],
                Payload::Empty,
            )
            .await
        {
            Ok(_) | Err(BlobError::NotFound) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn put(&self, key: &str, part: Option<&SpoolFile>) -> BlobResult<()> {
        let payload = match part {
            Some(p) if p.len > 0 => Payload::Spooled(p),
            _ => Payload::Empty,
        };
        self.call("PutObject", Method::PUT, key, &[], payload)
            .await
            .map(|_| ())
    }
}

/// Reads at most [`MAX_REPLY`] bytes of an answer's body.
async fn read_reply(mut resp: reqwest::Response) -> reqwest::Result<String> {
    let mut out = Vec::new();
    while let Some(c) = resp.chunk().await? {
        let room = MAX_REPLY - out.len();
        out.extend_from_slice(&c[..c.len().min(room)]);
        if out.len() == MAX_REPLY {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// The ETag S3 gives the object completed from `parts` (sorted, with their
/// ETags as UploadPart answered them: the quoted hex MD5 of each part):
/// the hex MD5 of the parts' binary MD5s, `-`, the number of parts. `None`
/// when a part's ETag is not an MD5.
fn multipart_etag(parts: &[(u32, String)]) -> Option<String> {
    use md5::Digest as _;
    let mut all = md5::Md5::new();
    for (_, etag) in parts {
        let raw = hex::decode(etag.trim_matches('"')).ok()?;
        if raw.len() != 16 {
            return None;
        }
        all.update(&raw);
    }
    Some(format!("{}-{}", hex::encode(all.finalize()), parts.len()))
}

/// The text of the first `<name>` element of a small XML answer.
fn tag<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    let open = format!("<{name}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{name}>"))? + start;
    Some(&xml[start..end])
}

fn xml_unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A multipart upload the store holds unfinished (see [`Client::unfinished`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unfinished {
    /// Its key, relative to the store's prefix.
    pub key: String,
    pub upload_id: String,
    pub initiated: Option<chrono::DateTime<chrono::Utc>>,
}

/// Writes one object: bytes are spooled, full parts sent in the background
/// (at most [`PART_CONCURRENCY`] at once; the next write waits for a slot),
/// and [`MultipartWriter::finish`] completes the upload, or sends the
/// object in one PUT when it never filled a part. Dropped unfinished, it
/// stops its parts and aborts the multipart upload in the background, so
/// the object at `key` stays as it was.
pub struct MultipartWriter {
    client: Arc<Client>,
    spool: Arc<Spool>,
    key: String,
    /// Small chunks gathered before they go to the file (one buffer,
    /// reused).
    buf: Vec<u8>,
    /// The part being filled.
    cur: Option<SpoolFile>,
    /// The multipart upload, once the first part is full.
    upload: Option<String>,
    inflight: JoinSet<BlobResult<(u32, String)>>,
    etags: Vec<(u32, String)>,
    next_part: u32,
    len: u64,
}

impl MultipartWriter {
    pub fn new(client: Arc<Client>, spool: Arc<Spool>, key: String) -> MultipartWriter {
        MultipartWriter {
            client,
            spool,
            key,
            buf: Vec::new(),
            cur: None,
            upload: None,
            inflight: JoinSet::new(),
            etags: Vec::new(),
            next_part: 1,
            len: 0,
        }
    }

    pub async fn write(&mut self, chunk: Bytes) -> BlobResult<()> {
        // A part that failed in the background fails the next write.
        while let Some(r) = self.inflight.try_join_next() {
            self.record(r)?;
        }
        self.len += chunk.len() as u64;
        if chunk.len() >= WRITE_BUF {
            self.flush_buf().await?;
            self.spool_write(chunk).await?;
        } else {
            if self.buf.len() + chunk.len() > WRITE_BUF {
                self.flush_buf().await?;
            }
            // Allocated once, at its full size, and never grown.
            self.buf.reserve_exact(WRITE_BUF - self.buf.len());
            self.buf.extend_from_slice(&chunk);
        }
        if self.cur.as_ref().is_some_and(|c| c.len >= PART_SIZE) {
            self.ship().await?;
        }
        Ok(())
    }

    async fn flush_buf(&mut self) -> BlobResult<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let data = std::mem::take(&mut self.buf);
        let mut back = self.spool_write(data).await?;
        back.clear();
        self.buf = back;
        Ok(())
    }

    async fn spool_write<B: AsRef<[u8]> + Send + 'static>(&mut self, data: B) -> BlobResult<B> {
        if self.cur.is_none() {
            self.cur = Some(self.spool.create().await?);
        }
        self.cur
            .as_mut()
            .expect("a part is open")
            .append(data)
            .await
    }

    fn record(
        &mut self,
        r: Result<BlobResult<(u32, String)>, tokio::task::JoinError>,
    ) -> BlobResult<()> {
        let (n, etag) = r.map_err(join_error)??;
        self.etags.push((n, etag));
        Ok(())
    }

    /// Sends the part being filled in the background, once a slot is free.
    async fn ship(&mut self) -> BlobResult<()> {
        let Some(part) = self.cur.take() else {
            return Ok(());
        };
        let upload = match &self.upload {
            Some(u) => u.clone(),
            None => {
                let u = self.client.create(&self.key).await?;
                self.upload = Some(u.clone());
                u
            }
        };
        while self.inflight.len() >= PART_CONCURRENCY {
            let r = self
                .inflight
                .join_next()
                .await
                .expect("parts are in flight");
            self.record(r)?;
        }
        let n = self.next_part;
        self.next_part += 1;
        let (client, key) = (self.client.clone(), self.key.clone());
        self.inflight.spawn(async move {
            let etag = client.upload_part(&key, &upload, n, &part).await?;
            Ok((n, etag))
        });
        Ok(())
    }

    /// Sends what is left and makes the object visible; returns its length.
    pub async fn finish(mut self) -> BlobResult<u64> {
        self.flush_buf().await?;
        if self.upload.is_none() {
            let part = self.cur.take();
            self.client.put(&self.key, part.as_ref()).await?;
            return Ok(self.len);
        }
        if self.cur.as_ref().is_some_and(|c| c.len > 0) {
            self.ship().await?;
        }
        while let Some(r) = self.inflight.join_next().await {
            self.record(r)?;
        }
        let mut parts = std::mem::take(&mut self.etags);
        parts.sort_unstable_by_key(|p| p.0);
        let upload = self.upload.clone().expect("a multipart upload was created");
        self.client
            .complete(&self.key, &upload, &parts, self.len)
            .await?;
        self.upload = None;
        Ok(self.len)
    }
}

impl Drop for MultipartWriter {
    fn drop(&mut self) {
        self.inflight.abort_all();
        let Some(upload) = self.upload.take() else {
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (client, key) = (self.client.clone(), std::mem::take(&mut self.key));
        let aborts = self.client.aborts.clone();
        aborts.spawn_on(async move {
            if let Err(e) = client.abort(&key, &upload).await {
                tracing::warn!(key = %key, error = %e, "could not abort an unfinished multipart upload");
            }
        }, &rt);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> S3Options {
        S3Options {
            bucket: "b".into(),
            // Nothing listens here: a test that reaches the network fails.
            endpoint: Some("http://127.0.0.1:9".into()),
            region: "us-east-1".into(),
            prefix: "/p/q/".into(),
            access_key_id: None,
            secret_access_key: None,
            scratch: PathBuf::new(),
        }
    }

    #[test]
    fn the_multipart_etag_is_the_md5_of_the_parts_md5s() {
        // md5("a"), md5("b"), as UploadPart answers them (quoted).
        let a = (1, "\"0cc175b9c0f1b6a831c399e269772661\"".to_string());
        let b = (2, "\"92EB5FFEE6AE2FEC3AD71C777531578F\"".to_string());
        assert_eq!(
            multipart_etag(std::slice::from_ref(&a)).as_deref(),
            Some("b6ff9a06b7e20bcb2858c5b8ff744aea-1")
        );
        assert_eq!(
            multipart_etag(&[a.clone(), b]).as_deref(),
            Some("96e024ba2074fe77e8e965ba43a704be-2")
        );
        // Not an MD5: no ETag to compare with (the object is not taken).
        assert_eq!(multipart_etag(&[a, (3, "\"xyz\"".into())]), None);
        assert_eq!(multipart_etag(&[(1, "\"00\"".into())]), None);
    }

    #[test]
    fn addresses_objects_path_style_under_the_prefix() {
        let c = Client::new(&options()).unwrap();
        assert_eq!(c.origin, "http://127.0.0.1:9");
        assert_eq!(c.host, "127.0.0.1:9");
        assert_eq!(c.base_path, "/b/p/q/");
        assert_eq!(c.bucket_path, "/b/");
        assert_eq!(c.key_prefix, "p/q/");
    }

    #[test]
    fn reads_tags_of_small_answers() {
        let x = "<R><Bucket>b</Bucket><UploadId>a&b</UploadId></R>";
        assert_eq!(tag(x, "UploadId"), Some("a&b"));
        assert_eq!(tag(x, "Code"), None);
    }

    /// Bytes are counted while spooled and uncounted when the writer goes;
    /// the spool file has no name from the start.
    #[tokio::test]
    async fn spooled_bytes_are_counted_and_released() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::new(dir.path().join("s"));
        let client = Arc::new(Client::new(&options()).unwrap());
        let mut w = MultipartWriter::new(client, spool.clone(), "k".into());
        w.write(Bytes::from(vec![1u8; 1000])).await.unwrap();
        w.write(Bytes::from(vec![2u8; WRITE_BUF])).await.unwrap();
        assert_eq!(spool.used(), 1000 + WRITE_BUF as u64);
        assert_eq!(std::fs::read_dir(dir.path().join("s")).unwrap().count(), 0);
        drop(w);
        assert_eq!(spool.used(), 0);
    }

    /// A scratch volume without room for a part refuses the write as
    /// "storage full" before anything is sent.
    #[tokio::test]
    async fn a_full_scratch_volume_refuses_the_part() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::new(dir.path().join("s"));
        Arc::get_mut(&mut spool).unwrap().keep_free = u64::MAX / 2;
        let client = Arc::new(Client::new(&options()).unwrap());
        let mut w = MultipartWriter::new(client, spool.clone(), "k".into());
        let e = w
            .write(Bytes::from(vec![1u8; WRITE_BUF]))
            .await
            .unwrap_err();
        assert!(matches!(e, BlobError::NoSpace), "{e:?}");
    }

    #[test]
    fn clean_removes_leftover_parts() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("s");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("x.part"), b"old").unwrap();
        Spool::new(d.clone()).clean().unwrap();
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 0);
    }
}
