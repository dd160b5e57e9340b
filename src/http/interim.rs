//! Interim (1xx) responses on HTTP/1.1 connections.
//!
//! hyper 1.x answers one request with exactly one response: a service
//! cannot return a `104` before its final answer (its server refuses 1xx
//! statuses other than the `100 Continue` it sends by itself). The
//! resumable-upload protocol wants `104 Upload Resumption Supported` sent
//! while the request body is still arriving, so the accept loop
//! ([`super::server`]) wraps each connection's stream in a writer that can
//! put a complete interim response on the wire between hyper's own writes:
//! a handler finds an [`Interim`] in its request's extensions (HTTP/1.1
//! requests only; 1.0 clients must not see 1xx) and queues one; the bytes go
//! out the next time hyper reads from or writes to the connection, never in
//! the middle of a message of hyper's (a write it has not flushed yet).
//! Since hyper writes nothing of the final response before the handler
//! returns it, an interim response queued by the handler always precedes it.

use std::{
    io,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll, Waker},
};

use axum::http::{HeaderMap, StatusCode};
use tokio::io::AsyncWrite;

/// A handle a handler uses to send interim responses on its connection.
#[derive(Clone, Default)]
pub struct Interim {
    shared: Arc<Mutex<Queue>>,
}

#[derive(Default)]
struct Queue {
    bytes: Vec<u8>,
    /// How much of `bytes` is on the wire already.
    sent: usize,
    /// The connection task, woken when something is queued.
    waker: Option<Waker>,
}

impl Interim {
    /// Queues an interim response (`status` must be 1xx, not 101) with
    /// `headers`; it goes out before the final response.
    pub fn send(&self, status: StatusCode, reason: &str, headers: &HeaderMap) {
        debug_assert!(status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS);
        let mut msg = format!("HTTP/1.1 {} {reason}\r\n", status.as_u16()).into_bytes();
        for (name, value) in headers {
            msg.extend_from_slice(name.as_str().as_bytes());
            msg.extend_from_slice(b": ");
            msg.extend_from_slice(value.as_bytes());
            msg.extend_from_slice(b"\r\n");
        }
        msg.extend_from_slice(b"\r\n");
        let waker = {
            let mut q = self.shared.lock().unwrap_or_else(|e| e.into_inner());
            q.bytes.extend_from_slice(&msg);
            q.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Writes whatever is queued to `io`; `Ready(Ok)` once nothing is left.
    pub(super) fn poll_drain<W: AsyncWrite + Unpin>(
        &self,
        io: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        let mut q = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        q.waker = Some(cx.waker().clone());
        while q.sent < q.bytes.len() {
            let start = q.sent;
            match Pin::new(&mut *io).poll_write(cx, &q.bytes[start..]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => q.sent += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        q.bytes.clear();
        q.sent = 0;
        Poll::Ready(Ok(()))
    }
}
