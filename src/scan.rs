//! Virus scanning through clamd's `INSTREAM` command (`STOWAGE_CLAMD`:
//! `tcp://host:port` or a unix socket path). Every upload is streamed to
//! clamd after it is staged and before it is published; infected content is
//! refused with 422 and an unreachable clamd fails closed with 503.
//!
//! A clamd that stops answering must not hold an upload (and its quota
//! reservation) forever: connecting, each write and waiting for the verdict
//! are each bounded by `limits.clamd_timeout` (connecting by at most
//! [`CONNECT_TIMEOUT`]); running out of time fails the upload closed, as an
//! unreachable clamd does.

use std::{future::Future, time::Duration};

use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use uuid::Uuid;

use crate::blob::{BlobError, BlobStore};

/// clamd's default StreamMaxLength is 25 MiB; chunks stay well under it.
const CHUNK: usize = 64 * 1024;
/// Longest wait for clamd to accept a connection (a local daemon answers at
/// once; a full backlog or a dead host should not use the whole exchange's
/// budget).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub struct Scanner {
    target: Target,
    /// Bound of each step of the exchange: one write, the verdict.
    timeout: Duration,
}

#[derive(Clone, Debug)]
enum Target {
    Tcp(String),
    Unix(std::path::PathBuf),
}

/// Why a staged upload did not pass the scan.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// clamd found this signature.
    #[error("malware detected: {0}")]
    Infected(String),
    /// clamd could not be reached or did not answer in time: fail closed.
    #[error("virus scanner unavailable")]
    Unavailable,
    /// The staged data could not be read.
    #[error(transparent)]
    Blob(#[from] BlobError),
}

/// Outcome of one scan.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Clean,
    Infected(String),
}

impl Scanner {
    pub fn new(spec: &str) -> Scanner {
        let target = match spec.strip_prefix("tcp://") {
            Some(addr) => Target::Tcp(addr.to_string()),
            None => Target::Unix(spec.strip_prefix("unix://").unwrap_or(spec).into()),
        };
        Scanner {
            target,
            timeout: crate::config::Limits::default().clamd_timeout,
        }
    }

    /// Bounds each step of the exchange (connect: at most [`CONNECT_TIMEOUT`]).
    pub fn with_timeout(mut self, timeout: Duration) -> Scanner {
        self.timeout = timeout;
        self
    }

    /// Scans staging blob `id` of `len` bytes in `blobs`.
    pub async fn scan_staged(
        &self,
        blobs: &dyn BlobStore,
        id: Uuid,
        len: u64,
    ) -> Result<(), ScanError> {
        let stream = blobs.read_staged(id, 0..len).await?;
        match self.scan_stream(stream).await {
            Ok(Verdict::Clean) => Ok(()),
            Ok(Verdict::Infected(sig)) => {
                tracing::warn!(staging = %id, signature = %sig, "upload refused: malware detected");
                Err(ScanError::Infected(sig))
            }
            Err(e) => {
                tracing::error!(error = %e, "virus scanner unreachable; refusing upload");
                Err(ScanError::Unavailable)
            }
        }
    }

    /// Streams bytes to clamd and reads its verdict.
    pub async fn scan_stream(&self, stream: crate::blob::ByteStream) -> std::io::Result<Verdict> {
        let t = self.timeout;
        let connect = t.min(CONNECT_TIMEOUT);
        match &self.target {
            Target::Tcp(addr) => {
                let s = bounded(connect, "connect", tokio::net::TcpStream::connect(addr)).await?;
                instream(s, stream, t).await
            }
            Target::Unix(path) => {
                let s = bounded(connect, "connect", tokio::net::UnixStream::connect(path)).await?;
                instream(s, stream, t).await
            }
        }
    }
}

/// `step` within `limit`, else a `TimedOut` error naming it.
async fn bounded<T>(
    limit: Duration,
    step: &str,
    step_fut: impl Future<Output = std::io::Result<T>>,
) -> std::io::Result<T> {
    tokio::time::timeout(limit, step_fut)
        .await
        .unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("clamd did not complete {step} within {limit:?}"),
            ))
        })
}

async fn instream<S: AsyncRead + AsyncWrite + Unpin>(
    mut sock: S,
    mut data: crate::blob::ByteStream,
    t: Duration,
) -> std::io::Result<Verdict> {
    bounded(t, "the command", sock.write_all(b"zINSTREAM\0")).await?;
    while let Some(chunk) = data.next().await {
        let chunk = chunk?;
        for part in chunk.chunks(CHUNK) {
            let len = (part.len() as u32).to_be_bytes();
            bounded(t, "a write", async {
                sock.write_all(&len).await?;
                sock.write_all(part).await
            })
            .await?;
        }
    }
    bounded(t, "the last write", async {
        sock.write_all(&0u32.to_be_bytes()).await?;
        sock.flush().await
    })
    .await?;
    let mut reply = Vec::new();
    bounded(
        t,
        "the verdict",
        (&mut sock).take(4096).read_to_end(&mut reply),
    )
    .await?;
    parse_reply(&reply)
}

fn parse_reply(reply: &[u8]) -> std::io::Result<Verdict> {
    let text = String::from_utf8_lossy(reply);
    let text = text.trim_end_matches(['\0', '\n']).trim();
    if text.ends_with("OK") {
        Ok(Verdict::Clean)
    } else if let Some(rest) = text.strip_suffix("FOUND") {
        let sig = rest.trim().trim_start_matches("stream:").trim();
        Ok(Verdict::Infected(sig.to_string()))
    } else {
        Err(std::io::Error::other(format!("clamd answered {text:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_replies() {
        assert_eq!(parse_reply(b"stream: OK\0").unwrap(), Verdict::Clean);
        assert_eq!(
            parse_reply(b"stream: Eicar-Test-Signature FOUND\0").unwrap(),
            Verdict::Infected("Eicar-Test-Signature".into())
        );
        assert!(parse_reply(b"INSTREAM size limit exceeded. ERROR\0").is_err());
    }
}
