//! Zero-copy downloads from the local volume: the file's bytes go from the
//! page cache to the socket with `sendfile(2)`, never through a buffer of
//! ours.
//!
//! hyper frames and writes the response (head, `Content-Length`,
//! keep-alive) but cannot hand a file to the kernel, so the two meet in the
//! connection's stream wrapper ([`super::server`]):
//!
//! * a handler that finds a [`Sendfile`] handle in its request's extensions
//!   (HTTP/1 connections of the accept loop only) answers with a
//!   [`FileBody`] instead of a byte stream. When hyper first polls it, the
//!   body queues the file and its range on the connection's handle, then
//!   yields *placeholder* frames as long as the range: slices of one static
//!   buffer ([`MARK`]) that no one ever reads;
//! * hyper (told to use vectored writes, so body frames are queued, never
//!   copied) hands those slices to the wrapper's write; the wrapper knows
//!   them by their address, and instead of writing them sends as many bytes
//!   of the queued file, from where the last send ended, with `sendfile`.
//!   hyper sees an ordinary write of that many bytes, so its framing, its
//!   flushes and the next request on the connection go on as usual.
//!
//! Backpressure is the socket's: `sendfile` on the non-blocking socket until
//! `EAGAIN`, then wait for writability through tokio's registration. A file
//! shorter than its range (truncated behind the server's back) ends the
//! send early: the write fails, hyper closes the connection, the client sees
//! a short body. A placeholder with no file queued fails the same way, so a
//! placeholder byte is never put on the wire.

use std::{
    collections::VecDeque,
    convert::Infallible,
    io,
    ops::Range,
    os::fd::AsRawFd,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::{io::Interest, net::TcpStream};

/// Length of the placeholder buffer, and so the largest placeholder frame.
const MARK_LEN: usize = 4 * 1024 * 1024;

/// The placeholder bytes. Zero-initialised, never written and never read:
/// only its address range matters (it stays untouched virtual memory).
static MARK: [u8; MARK_LEN] = [0; MARK_LEN];

/// Whether `buf` is (part of) a placeholder frame.
pub(super) fn is_placeholder(buf: &[u8]) -> bool {
    let base = MARK.as_ptr() as usize;
    let at = buf.as_ptr() as usize;
    !buf.is_empty() && at >= base && at < base + MARK_LEN
}

/// A connection's queue of files to send, shared by its stream wrapper and
/// the bodies of its responses (one at a time in HTTP/1, in wire order).
#[derive(Clone, Default)]
pub struct Sendfile {
    jobs: Arc<Mutex<VecDeque<Job>>>,
}

/// One response body's file and the part of it still to send.
struct Job {
    file: Arc<std::fs::File>,
    at: u64,
    end: u64,
    /// `TCP_CORK` is set on the socket for this file's bytes.
    corked: bool,
}

impl Sendfile {
    /// A body of `range.end - range.start` bytes of `file`, sent with
    /// `sendfile` by this connection. `range` must be non-empty.
    pub fn body(&self, file: std::fs::File, range: Range<u64>) -> FileBody {
        FileBody {
            conn: self.clone(),
            job: Some(Job {
                file: Arc::new(file),
                at: range.start,
                end: range.end,
                corked: false,
            }),
            left: range.end.saturating_sub(range.start),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Job>> {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends at most `max` bytes of the first queued file to `sock` in place
    /// of as many placeholder bytes; `Ready(Ok(n))` with `n > 0`.
    pub(super) fn poll_send(
        &self,
        sock: &TcpStream,
        max: usize,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        loop {
            std::task::ready!(sock.poll_write_ready(cx))?;
            let mut jobs = self.lock();
            let Some(job) = jobs.front_mut() else {
                tracing::error!("placeholder bytes to write with no file queued");
                return Poll::Ready(Err(io::Error::other("no file queued for sendfile")));
            };
            if !job.corked {
                // Full segments only while the file is sent (the socket has
                // TCP_NODELAY for everything else); cleared at its end,
                // which pushes the tail out at once.
                set_cork(sock, true);
                job.corked = true;
            }
            let count = (job.end - job.at).min(max as u64) as usize;
            let sent = sock.try_io(Interest::WRITABLE, || {
                let mut off = job.at as libc::off_t;
                // SAFETY: both descriptors are open for the duration of the
                // call (the socket by `sock`, the file by `job`), and `off`
                // is a valid offset variable the kernel updates.
                let n = unsafe {
                    libc::sendfile(sock.as_raw_fd(), job.file.as_raw_fd(), &mut off, count)
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match sent {
                Ok(0) => {
                    tracing::warn!(
                        offset = job.at,
                        expected_end = job.end,
                        "blob file is shorter than its record; closing the connection"
                    );
                    jobs.pop_front();
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "blob file ended early",
                    )));
                }
                Ok(n) => {
                    job.at += n as u64;
                    if job.at >= job.end {
                        jobs.pop_front();
                        set_cork(sock, false);
                    }
                    crate::telemetry::metrics::bytes_out(n as u64);
                    crate::telemetry::metrics::bytes_out_sendfile(n as u64);
                    return Poll::Ready(Ok(n));
                }
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::Interrupted =>
                {
                    continue
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

/// Sets or clears `TCP_CORK`; advisory, so a failure changes nothing.
fn set_cork(sock: &TcpStream, on: bool) {
    let v: libc::c_int = on.into();
    // SAFETY: a plain setsockopt on an open socket with an int option.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_CORK,
            &v as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// A response body whose bytes the connection sends with `sendfile`; to
/// hyper, a sequence of placeholder frames of the range's length.
pub struct FileBody {
    conn: Sendfile,
    /// Queued on the connection when hyper first asks for data, so the file
    /// is always queued before its first placeholder is written.
    job: Option<Job>,
    left: u64,
}

impl HttpBody for FileBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(job) = self.job.take() {
            if job.end > job.at {
                self.conn.lock().push_back(job);
            }
        }
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = self.left.min(MARK_LEN as u64) as usize;
        self.left -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&MARK[..n])))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_known_by_address_only() {
        assert!(is_placeholder(&MARK[..1]));
        assert!(is_placeholder(&MARK[MARK_LEN - 1..]));
        assert!(!is_placeholder(&MARK[..0]));
        let zeros = vec![0u8; 16];
        assert!(!is_placeholder(&zeros));
    }

    #[test]
    fn a_body_is_as_long_as_its_range_in_placeholder_frames() {
        let f = tempfile::tempfile().unwrap();
        let conn = Sendfile::default();
        let mut body = conn.body(f, 10..(10 + MARK_LEN as u64 + 5));
        assert_eq!(body.size_hint().exact(), Some(MARK_LEN as u64 + 5));
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut total = 0;
        while let Poll::Ready(Some(Ok(frame))) = Pin::new(&mut body).poll_frame(&mut cx) {
            let data = frame.into_data().unwrap();
            assert!(is_placeholder(&data));
            total += data.len();
        }
        assert_eq!(total, MARK_LEN + 5);
        assert!(body.is_end_stream());
        assert_eq!(conn.lock().len(), 1, "the file is queued once");
    }
}
