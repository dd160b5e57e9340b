//! The single way this crate runs an external program.
//!
//! Owns process hygiene so that `ffmpeg`/`ffprobe` calls cannot hang a worker, eat
//! memory or touch a shell:
//! - `tokio::process::Command` with an argument vector: no shell, no interpolation.
//! - stdin is `/dev/null`; the child is killed if its future is dropped
//!   (`kill_on_drop`) and, on timeout, killed and reaped before returning.
//! - an address-space limit (`RLIMIT_AS`), set in the child between fork and exec,
//!   so a hostile file cannot make a decoder map more than the caller allows: the
//!   allocation fails inside the child, which exits with an error.
//! - stdout is captured up to a caller-given limit (more is drained and reported as an
//!   error); stderr keeps only its last [`STDERR_TAIL`] bytes for error messages.
//!
//! Concurrency limiting is the caller's job ([`crate::MediaTools`] holds the semaphore),
//! because the limit belongs to a pool of tools, not to one call.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

use crate::MediaError;

/// How much of a failing tool's stderr is kept, in bytes.
pub const STDERR_TAIL: usize = 4096;

/// What a successful run produced.
#[derive(Debug)]
pub struct Output {
    /// Standard output, complete (it stayed under the limit).
    pub stdout: Vec<u8>,
    /// The last [`STDERR_TAIL`] bytes of standard error, lossily decoded.
    pub stderr_tail: String,
}

/// What one run may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunLimits {
    /// Wall clock, start to exit.
    pub timeout: Duration,
    /// Standard output kept; more is an error.
    pub max_stdout: usize,
    /// Address space the child may map (`RLIMIT_AS`), bytes; `None`: inherited.
    pub address_space: Option<u64>,
}

/// Runs `program args…` within `limits`.
///
/// Returns [`MediaError::Timeout`] (child killed and reaped),
/// [`MediaError::Process`] for a non-zero exit, [`MediaError::Decode`] when stdout
/// exceeded `max_stdout`, [`MediaError::Io`] when the program could not be started.
pub async fn run<I, S>(program: &Path, args: I, limits: RunLimits) -> Result<Output, MediaError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let RunLimits {
        timeout,
        max_stdout,
        address_space,
    } = limits;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(bytes) = address_space {
        let lim = libc::rlimit {
            rlim_cur: bytes as libc::rlim_t,
            rlim_max: bytes as libc::rlim_t,
        };
        // SAFETY: runs in the forked child before exec; setrlimit is
        // async-signal-safe and touches only the child's own limits.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setrlimit(libc::RLIMIT_AS, &lim) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
    }
    let mut child = cmd.spawn()?;
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();

    let work = async {
        let (out, err, status) = tokio::join!(
            read_bounded(stdout, max_stdout),
            read_tail(stderr, STDERR_TAIL),
            child.wait()
        );
        Ok::<(std::io::Result<(Vec<u8>, bool)>, Vec<u8>, ExitStatus), std::io::Error>((
            out, err, status?,
        ))
    };
    let (out, err, status) = match tokio::time::timeout(timeout, work).await {
        Ok(res) => res?,
        Err(_elapsed) => {
            // The pipes were dropped with the future; kill and reap the child now
            // rather than leaving it to kill_on_drop's best effort.
            let _ = child.start_kill();
            let _ = child.wait().await;
            return Err(MediaError::Timeout);
        }
    };
    let stderr_tail = tail_string(&err);
    if !status.success() {
        return Err(MediaError::Process {
            status,
            stderr_tail,
        });
    }
    let (stdout, overflowed) = out?;
    if overflowed {
        return Err(MediaError::Decode(format!(
            "{} wrote more than {max_stdout} bytes",
            program.display()
        )));
    }
    Ok(Output {
        stdout,
        stderr_tail,
    })
}

/// Reads everything, keeping at most `limit` bytes; the flag says whether more came.
async fn read_bounded<R: AsyncRead + Unpin>(
    reader: Option<R>,
    limit: usize,
) -> std::io::Result<(Vec<u8>, bool)> {
    let Some(mut reader) = reader else {
        return Ok((Vec::new(), false));
    };
    let mut kept = Vec::new();
    let mut overflowed = false;
    let mut buf = vec![0u8; 16 << 10];
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            return Ok((kept, overflowed));
        }
        let room = limit.saturating_sub(kept.len());
        if n > room {
            overflowed = true;
        }
        kept.extend_from_slice(&buf[..n.min(room)]);
    }
}

/// Reads everything, keeping the last `cap` bytes. Read errors end the capture
/// quietly: stderr is diagnostic only.
async fn read_tail<R: AsyncRead + Unpin>(reader: Option<R>, cap: usize) -> Vec<u8> {
    let Some(mut reader) = reader else {
        return Vec::new();
    };
    let mut tail = Vec::with_capacity(cap * 2);
    let mut buf = vec![0u8; 4096];
    while let Ok(n) = reader.read(&mut buf).await {
        if n == 0 {
            break;
        }
        tail.extend_from_slice(&buf[..n]);
        if tail.len() > cap * 2 {
            tail.drain(..tail.len() - cap);
        }
    }
    if tail.len() > cap {
        tail.drain(..tail.len() - cap);
    }
    tail
}

fn tail_string(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tail_keeps_the_end() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let tail = read_tail(Some(&data[..]), 100).await;
        assert_eq!(tail, &data[data.len() - 100..]);
    }

    #[tokio::test]
    async fn bounded_flags_overflow() {
        let data = vec![7u8; 50_000];
        let (kept, over) = read_bounded(Some(&data[..]), 1000).await.unwrap();
        assert_eq!(kept.len(), 1000);
        assert!(over);
        let (kept, over) = read_bounded(Some(&data[..]), 50_000).await.unwrap();
        assert_eq!(kept.len(), 50_000);
        assert!(!over);
    }

    fn limits(timeout: Duration, address_space: Option<u64>) -> RunLimits {
        RunLimits {
            timeout,
            max_stdout: 1024,
            address_space,
        }
    }

    #[tokio::test]
    async fn nonzero_exit_carries_stderr() {
        let err = run(
            Path::new("/bin/sh"),
            ["-c", "echo boom >&2; exit 3"],
            limits(Duration::from_secs(10), None),
        )
        .await
        .unwrap_err();
        match err {
            MediaError::Process {
                status,
                stderr_tail,
            } => {
                assert_eq!(status.code(), Some(3));
                assert_eq!(stderr_tail, "boom");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn timeout_kills() {
        let started = std::time::Instant::now();
        let err = run(
            Path::new("/bin/sleep"),
            ["30"],
            limits(Duration::from_millis(200), None),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, MediaError::Timeout), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn the_child_runs_under_the_address_space_limit() {
        // `ulimit -v` reports RLIMIT_AS in KiB, as the child sees it.
        let out = run(
            Path::new("/bin/sh"),
            ["-c", "ulimit -v"],
            limits(Duration::from_secs(10), Some(300 << 20)),
        )
        .await
        .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "307200");
        // Without a limit the child inherits ours (unlimited in test runs, or
        // whatever the environment set, but not the one above).
        let out = run(
            Path::new("/bin/sh"),
            ["-c", "ulimit -v"],
            limits(Duration::from_secs(10), None),
        )
        .await
        .unwrap();
        assert_ne!(String::from_utf8_lossy(&out.stdout).trim(), "307200");
    }

    #[tokio::test]
    async fn an_allocation_over_the_limit_fails_in_the_child() {
        // A shell asked to hold a 64 MiB string under a 32 MiB limit.
        let err = run(
            Path::new("/bin/sh"),
            [
                "-c",
                "x=$(head -c 67108864 /dev/zero | tr '\\0' a); echo ${#x}",
            ],
            limits(Duration::from_secs(30), Some(32 << 20)),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, MediaError::Process { .. }), "{err:?}");
    }
}
