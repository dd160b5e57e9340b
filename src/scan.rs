//! Virus scanning through clamd's `INSTREAM` command (`STOWAGE_CLAMD`:
//! `tcp://host:port` or a unix socket path). Every upload is streamed to
//! clamd after it is staged and before it is published; infected content is
//! refused with 422 and an unreachable clamd fails closed with 503.

use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use uuid::Uuid;

use crate::{
    app::AppState,
    http::error::{AppError, AppResult},
};

/// clamd's default StreamMaxLength is 25 MiB; chunks stay well under it.
const CHUNK: usize = 64 * 1024;

#[derive(Clone, Debug)]
pub struct Scanner {
    target: Target,
}

#[derive(Clone, Debug)]
enum Target {
    Tcp(String),
    Unix(std::path::PathBuf),
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
        Scanner { target }
    }

    /// Scans staging blob `id` of `len` bytes; maps the verdict to the API.
    pub async fn scan_staged(&self, state: &AppState, id: Uuid, len: u64) -> AppResult<()> {
        let stream = state.blobs.read_staged(id, 0..len).await?;
        match self.scan_stream(stream).await {
            Ok(Verdict::Clean) => Ok(()),
            Ok(Verdict::Infected(sig)) => {
                tracing::warn!(staging = %id, signature = %sig, "upload refused: malware detected");
                Err(AppError::Malware(format!("malware detected: {sig}")))
            }
            Err(e) => {
                tracing::error!(error = %e, "virus scanner unreachable; refusing upload");
                Err(AppError::Unavailable("virus scanner unavailable".into()))
            }
        }
    }

    /// Streams bytes to clamd and reads its verdict.
    pub async fn scan_stream(&self, stream: crate::blob::ByteStream) -> std::io::Result<Verdict> {
        match &self.target {
            Target::Tcp(addr) => {
                let s = tokio::net::TcpStream::connect(addr).await?;
                instream(s, stream).await
            }
            Target::Unix(path) => {
                let s = tokio::net::UnixStream::connect(path).await?;
                instream(s, stream).await
            }
        }
    }
}

async fn instream<S: AsyncRead + AsyncWrite + Unpin>(
    mut sock: S,
    mut data: crate::blob::ByteStream,
) -> std::io::Result<Verdict> {
    sock.write_all(b"zINSTREAM\0").await?;
    while let Some(chunk) = data.next().await {
        let chunk = chunk?;
        for part in chunk.chunks(CHUNK) {
            sock.write_all(&(part.len() as u32).to_be_bytes()).await?;
            sock.write_all(part).await?;
        }
    }
    sock.write_all(&0u32.to_be_bytes()).await?;
    sock.flush().await?;
    let mut reply = Vec::new();
    sock.take(4096).read_to_end(&mut reply).await?;
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
