//! The append loop of a resumable upload, shared by tus and the IETF
//! draft: a request body streams through a [`Stage`] while the request's
//! hold on the upload (its lease, see `http::tus::lease`) is kept, until
//! the body ends, is cut (client gone or stalled, a later request taking
//! the upload over, the server stopping), would pass the upload's length,
//! or the stage refuses a chunk. What to answer for each end is the
//! protocol's business; the caller then finishes the stage (fsync) and
//! records the new offset.

use std::{fmt::Display, future::Future, time::Duration};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{IngestError, Stage};

/// A request's hold on the upload it writes to.
pub trait Hold {
    type Error;
    /// Resolves when a later request on this node asks the writer to stop.
    fn asked_to_stop(&self) -> impl Future<Output = ()> + Send;
    /// Time until the hold is due for a look (renewal, a takeover asked
    /// from another node).
    fn next_check(&self) -> Duration;
    /// `Ok(true)` while writing may go on, `Ok(false)` once a later request
    /// asked for the upload, an error when the hold is lost.
    fn still_ours(&mut self) -> impl Future<Output = Result<bool, Self::Error>> + Send;
}

/// Why a body stopped before its end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// The client went away, or sent nothing for the idle time.
    Disconnected,
    /// A later request took the upload over.
    TakenOver,
    /// The server is stopping (past its grace period).
    Shutdown,
}

/// How an append loop ended. In every case the stage holds what was
/// written before (nothing of a refused or overlong chunk).
#[derive(Debug)]
pub enum End {
    /// The body ended.
    Done,
    Cut(Cut),
    /// The next chunk would take the stage past the limit given.
    PastLimit,
    /// The stage refused a chunk (per-file limit, room, content type, I/O).
    Refused(IngestError),
}

/// What an append loop watches besides the body.
pub struct Watch<'a> {
    /// The upload, for the log.
    pub id: Uuid,
    /// The protocol, for the log.
    pub protocol: &'static str,
    /// A body silent for this long counts as a disconnect.
    pub idle: Duration,
    /// Cancelled when the server stops: the body is cut.
    pub shutdown: &'a CancellationToken,
    /// The stage may not pass this many bytes in all.
    pub limit: Option<u64>,
}

/// Streams `body` into `stage` (see the module docs). `on_chunk` sees each
/// chunk before it is written (a per-request checksum).
pub async fn run<H, S, E>(
    stage: &mut Stage,
    hold: &mut H,
    body: S,
    w: Watch<'_>,
    mut on_chunk: impl FnMut(&Bytes),
) -> Result<End, H::Error>
where
    H: Hold,
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: Display,
{
    let start = stage.len();
    let (id, protocol) = (w.id, w.protocol);
    let mut body = body;
    let idle = tokio::time::sleep(w.idle);
    let check = tokio::time::sleep(hold.next_check());
    tokio::pin!(idle, check);
    loop {
        // A chunk, or a reason to look at the hold first: a takeover on
        // this node, or a look due (another node's takeover, renewal).
        let next = tokio::select! {
            biased;
            _ = w.shutdown.cancelled() => {
                tracing::info!(upload = %id, protocol, written = stage.len() - start, "server stopping; keeping what arrived");
                return Ok(End::Cut(Cut::Shutdown));
            }
            _ = hold.asked_to_stop() => None,
            _ = &mut check => None,
            _ = &mut idle => {
                tracing::info!(upload = %id, protocol, written = stage.len() - start, "upload body stalled");
                return Ok(End::Cut(Cut::Disconnected));
            }
            c = body.next() => Some(c),
        };
        if !hold.still_ours().await? {
            tracing::info!(upload = %id, protocol, written = stage.len() - start, "upload body ended: another request took the upload over");
            return Ok(End::Cut(Cut::TakenOver));
        }
        if check.is_elapsed() {
            check
                .as_mut()
                .reset(tokio::time::Instant::now() + hold.next_check());
        }
        let chunk = match next {
            None => continue,
            Some(None) => return Ok(End::Done),
            Some(Some(Ok(c))) => c,
            Some(Some(Err(e))) => {
                tracing::info!(upload = %id, protocol, error = %e, written = stage.len() - start, "upload body ended early");
                return Ok(End::Cut(Cut::Disconnected));
            }
        };
        idle.as_mut().reset(tokio::time::Instant::now() + w.idle);
        if w.limit
            .is_some_and(|l| stage.len() + chunk.len() as u64 > l)
        {
            return Ok(End::PastLimit);
        }
        on_chunk(&chunk);
        if let Err(e) = stage.write(chunk).await {
            return Ok(End::Refused(e));
        }
    }
}
