//! The accept loop: HTTP/1.1 connections served by hyper, with the
//! connection limits of SPEC §9.
//!
//! * **Connection caps.** At most `max_connections` open in all and
//!   `max_connections_per_ip` per client (IPv6 per /64); trusted proxies
//!   are exempt from the per-IP cap. A connection over a cap is answered
//!   at once with a fixed `503 unavailable` (written without waiting for
//!   the request, best effort) and closed, so it never costs a task or a
//!   buffer, and the connections already served are untouched.
//! * **Slow headers.** hyper's `header_read_timeout` ends a connection
//!   whose request head is not complete `header_timeout` after its first
//!   byte. hyper starts that clock when it begins to wait for a head (at
//!   accept, and after each response on a keep-alive connection), which
//!   would also close an idle keep-alive connection after
//!   `header_timeout`. [`HeadTimer`], the timer handed to hyper, adds the
//!   missing part: until the first byte of a head arrives the connection is
//!   idle and may stay so for `keepalive_timeout`; from that byte on the
//!   head has `header_timeout` to complete.
//! * **Stalled bodies.** Every request body is wrapped in tower-http's
//!   [`TimeoutBody`], which fails a body that delivers no frame for
//!   `body_idle_timeout` (the clock runs only while the handler waits for
//!   data). Handlers see an ordinary body error: a multipart upload is
//!   released by its drop guard, a tus PATCH keeps what it fsynced.
//! * **Unread request bodies.** A handler may answer before it read the
//!   whole body (a refusal from the headers, an error mid-body). Closing a
//!   connection with request bytes still unread makes the kernel reset it,
//!   and the reset can destroy the answer before the client reads it (the
//!   client sees a reset or EPIPE instead of the error). So every body is
//!   watched ([`Tracked`]): when the answer is ready and the body was not
//!   read to its end, a small rest ([`DRAIN_LIMIT`], within [`DRAIN_TIME`],
//!   pausing no longer than [`DRAIN_PAUSE`]) is read and dropped first, and
//!   the connection stays usable; a bigger, slower or stalled rest (or a
//!   body the client holds back for `100 Continue`) is not waited for, and
//!   the answer says `Connection: close`.
//! * **Per-connection memory.** hyper's read buffer is capped at
//!   [`MAX_BUF`], enough for the largest head the API accepts (32 KiB,
//!   answered 431 above that).
//! * **Zero-copy downloads.** Every request carries the connection's
//!   [`Sendfile`] handle; a download from the local volume answers with a
//!   body of placeholders that the stream wrapper replaces by `sendfile(2)`
//!   from the blob's file (see [`super::sendfile`]). A send that makes no
//!   progress for `body_idle_timeout` (a client that stopped reading) ends
//!   the connection.
//!
//! Graceful shutdown (SPEC §10): when `shutdown` resolves the listener is
//! closed and every connection is told to finish its request in flight and
//! close. Requests get [`Stopping::grace`]; then [`Stopping::cancel`] is
//! cancelled, which ends the uploads still streaming, and [`serve`] returns
//! once every connection has ended or at [`Stopping::deadline`], whichever
//! comes first.

use std::{
    collections::HashMap,
    future::Future,
    io,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::{
    body::Body,
    extract::ConnectInfo,
    http::{header, HeaderValue},
    response::Response,
    Router,
};
use hyper::{
    body::{Body as _, Frame, Incoming, SizeHint},
    server::conn::http1,
    service::service_fn,
    Request,
};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::watch,
};
use tower::ServiceExt;
use tower_http::timeout::TimeoutBody;

use super::{
    client_ip::{self, ClientIp},
    interim::Interim,
    sendfile::{self, Sendfile},
};
use crate::config::Limits;

/// hyper's per-connection buffer cap (its default is ~400 KiB).
pub const MAX_BUF: usize = 64 * 1024;

/// What a connection over a cap gets before it is closed.
const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json\r\n\
retry-after: 1\r\n\
connection: close\r\n\
content-length: 70\r\n\r\n\
{\"error\":{\"code\":\"unavailable\",\"message\":\"too many open connections\"}}";

/// How a stopping server spends its time; both durations count from the
/// moment `shutdown` resolves.
#[derive(Clone, Debug)]
pub struct Stopping {
    /// Requests in flight may finish for this long.
    pub grace: Duration,
    /// Cancelled once the grace is over with requests still running.
    pub cancel: tokio_util::sync::CancellationToken,
    /// [`serve`] returns by then, even with connections still open.
    pub deadline: Duration,
}

/// Serves `router` on `listener` until `shutdown` resolves, then lets the
/// requests in flight finish as `stopping` says and returns when every
/// connection is closed or the deadline has come.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: &Limits,
    shutdown: impl Future<Output = ()> + Send,
    stopping: Stopping,
) -> io::Result<()> {
    let gate = Arc::new(Gate::new(limits));
    let conf = Arc::new(ConnConfig::new(limits));
    let connections = Connections::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    if !is_connection_error(&e) {
                        // Out of file descriptors or memory: back off
                        // instead of spinning; connections already open
                        // keep being served meanwhile.
                        tracing::error!(error = %e, "accept failed");
                        tokio::select! {
                            _ = &mut shutdown => break,
                            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                        }
                    }
                    continue;
                }
            },
        };
        let slot = match gate.admit(peer.ip()) {
            Ok(slot) => slot,
            Err(why) => {
                refuse(stream, peer, why);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let conn = connections.watch();
        let conf = conf.clone();
        let router = router.clone();
        tokio::spawn(async move {
            serve_connection(stream, peer, router, conf, conn).await;
            drop(slot);
        });
    }
    let since = tokio::time::Instant::now();
    drop(listener);
    let drained = connections.drain();
    tokio::pin!(drained);
    if tokio::time::timeout(stopping.grace, &mut drained)
        .await
        .is_err()
    {
        tracing::warn!(
            open = gate.open(),
            "requests still running after the shutdown grace; ending the uploads still streaming"
        );
        stopping.cancel.cancel();
        if tokio::time::timeout_at(since + stopping.deadline, drained)
            .await
            .is_err()
        {
            tracing::warn!(
                open = gate.open(),
                "connections still open at the shutdown deadline; leaving them"
            );
        }
    }
    Ok(())
}

/// Errors of one incoming connection (it was reset before we accepted
/// it); the listener itself is fine.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// The per-connection settings, built once.
struct ConnConfig {
    header_timeout: Duration,
    keepalive_timeout: Duration,
    body_idle_timeout: Duration,
    trusted: Vec<crate::config::IpNet>,
}

impl ConnConfig {
    fn new(l: &Limits) -> ConnConfig {
        ConnConfig {
            header_timeout: l.header_timeout,
            keepalive_timeout: l.keepalive_timeout,
            body_idle_timeout: l.body_idle_timeout,
            trusted: l.trusted_proxies.clone(),
        }
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    conf: Arc<ConnConfig>,
    mut conn: ConnWatch,
) {
    let activity = Arc::new(Activity::default());
    let interim = Interim::default();
    let files = Sendfile::default();
    let io = TokioIo::new(Watched {
        inner: stream,
        activity: activity.clone(),
        interim: interim.clone(),
        unflushed: false,
        files: files.clone(),
        stall_limit: conf.body_idle_timeout,
        stall: None,
    });
    let service = {
        let conf = conf.clone();
        service_fn(move |mut req: Request<Incoming>| {
            if req.version() == hyper::Version::HTTP_11 {
                req.extensions_mut().insert(interim.clone());
            }
            req.extensions_mut().insert(files.clone());
            let ip = client_ip::resolve(peer.ip(), req.headers(), &conf.trusted);
            req.extensions_mut().insert(ConnectInfo(peer));
            req.extensions_mut().insert(ClientIp(ip));
            let watch = Arc::new(BodyWatch::default());
            let waits_for_continue = req
                .headers()
                .get(header::EXPECT)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
            let req = req.map(|b| {
                Body::new(Tracked::new(
                    TimeoutBody::new(conf.body_idle_timeout, b),
                    watch.clone(),
                ))
            });
            let router = router.clone();
            async move {
                let mut res = router.oneshot(req).await?;
                settle_body(&watch, waits_for_continue, &mut res).await;
                Ok::<_, std::convert::Infallible>(res)
            }
        })
    };
    let mut builder = http1::Builder::new();
    builder
        .timer(HeadTimer {
            activity,
            idle: conf.keepalive_timeout,
        })
        .header_read_timeout(conf.header_timeout)
        .keep_alive(true)
        // Body frames are queued and handed to the stream as they are,
        // never copied into hyper's buffer: the sendfile placeholders must
        // reach `Watched` by address.
        .writev(true)
        .max_buf_size(MAX_BUF);
    let served = builder.serve_connection(io, service).with_upgrades();
    tokio::pin!(served);
    let result = tokio::select! {
        r = served.as_mut() => r,
        _ = conn.stopping() => {
            // Finish the request in flight (an idle connection closes at
            // once), then close.
            served.as_mut().graceful_shutdown();
            served.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

// ------------------------------------------------------ unread bodies

/// At most this much of a request body left unread by its handler is read
/// before the answer goes out (see the module docs).
pub const DRAIN_LIMIT: u64 = 1024 * 1024;
/// ... and for at most this long.
pub const DRAIN_TIME: Duration = Duration::from_secs(2);

type RequestBody = TimeoutBody<Incoming>;

/// What became of one request's body.
#[derive(Default)]
struct BodyWatch {
    /// Read to its end (or it had none).
    ended: std::sync::atomic::AtomicBool,
    /// Polled at least once (a `100 Continue` went out if one was due).
    polled: std::sync::atomic::AtomicBool,
    /// The unread rest, handed back when the handler dropped the body.
    rest: Mutex<Option<Pin<Box<RequestBody>>>>,
}

/// A request body that reports to its [`BodyWatch`], and hands what is
/// left of it back there when dropped unfinished.
struct Tracked {
    inner: Option<Pin<Box<RequestBody>>>,
    watch: Arc<BodyWatch>,
}

impl Tracked {
    fn new(body: RequestBody, watch: Arc<BodyWatch>) -> Tracked {
        Tracked {
            inner: Some(Box::pin(body)),
            watch,
        }
    }
}

impl hyper::body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = <RequestBody as hyper::body::Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        this.watch.polled.store(true, Ordering::Release);
        let r = inner.as_mut().poll_frame(cx);
        if matches!(r, Poll::Ready(None)) {
            this.watch.ended.store(true, Ordering::Release);
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Some(b) => b.is_end_stream(),
            None => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint())
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        let Some(inner) = self.inner.take() else {
            return;
        };
        if self.watch.ended.load(Ordering::Acquire) || inner.is_end_stream() {
            self.watch.ended.store(true, Ordering::Release);
            return;
        }
        *self.watch.rest.lock().unwrap_or_else(|p| p.into_inner()) = Some(inner);
    }
}

/// Once the answer is ready: reads a small unread rest of the request body
/// (so closing or reusing the connection cannot destroy the answer), or
/// marks the answer `Connection: close` when the rest is big, slow, or not
/// sent yet (the client waits for `100 Continue`). A body still held by
/// someone (a task that goes on reading it) is left alone.
async fn settle_body(watch: &BodyWatch, waits_for_continue: bool, res: &mut Response) {
    if watch.ended.load(Ordering::Acquire) {
        return;
    }
    let rest = watch.rest.lock().unwrap_or_else(|p| p.into_inner()).take();
    let Some(mut rest) = rest else {
        return;
    };
    let read_all = if waits_for_continue && !watch.polled.load(Ordering::Acquire) {
        // Reading would ask the client for a body nobody wants.
        false
    } else {
        drain(&mut rest).await
    };
    if !read_all {
        res.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
}

/// A rest that pauses this long is not waited for (a stalled or taken-over
/// client must not hold its answer back).
pub const DRAIN_PAUSE: Duration = Duration::from_millis(250);

/// Reads and drops up to [`DRAIN_LIMIT`] bytes within [`DRAIN_TIME`], as
/// long as they keep coming ([`DRAIN_PAUSE`]); true when the body ended
/// within all three. A rest known to be bigger is not read at all.
async fn drain(body: &mut Pin<Box<RequestBody>>) -> bool {
    use http_body_util::BodyExt;
    if body.size_hint().lower() > DRAIN_LIMIT {
        return false;
    }
    let mut seen = 0u64;
    let read = async {
        loop {
            let Ok(next) = tokio::time::timeout(DRAIN_PAUSE, body.frame()).await else {
                return false;
            };
            let Some(frame) = next else {
                break;
            };
            let Ok(frame) = frame else {
                return false;
            };
            if let Some(d) = frame.data_ref() {
                seen += d.len() as u64;
                if seen > DRAIN_LIMIT {
                    return false;
                }
            }
        }
        true
    };
    tokio::time::timeout(DRAIN_TIME, read)
        .await
        .unwrap_or(false)
}

/// Writes the fixed 503 without waiting and closes. Bytes the client
/// already sent are read first, so the close is a FIN rather than a reset
/// that could destroy the answer before the client reads it.
fn refuse(stream: TcpStream, peer: SocketAddr, why: Refusal) {
    ::metrics::counter!("stowage_connections_refused_total", "cap" => why.label()).increment(1);
    tracing::debug!(%peer, cap = why.label(), "connection refused");
    let mut sink = [0u8; 4096];
    for _ in 0..4 {
        match stream.try_read(&mut sink) {
            Ok(n) if n > 0 => continue,
            _ => break,
        }
    }
    let _ = stream.try_write(REFUSAL);
    if let Ok(s) = stream.into_std() {
        let _ = s.shutdown(std::net::Shutdown::Write);
    }
}

// ---------------------------------------------------------------- caps

/// Why a connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `max_connections` are open.
    Total,
    /// `max_connections_per_ip` are open from this client.
    PerIp,
}

impl Refusal {
    fn label(self) -> &'static str {
        match self {
            Refusal::Total => "total",
            Refusal::PerIp => "per_ip",
        }
    }
}

/// Counts open connections, in all and per client.
pub struct Gate {
    max_total: usize,
    max_per_ip: usize,
    trusted: Vec<crate::config::IpNet>,
    total: AtomicUsize,
    /// Only clients with an open connection have an entry, so the map
    /// holds at most `max_total` keys.
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// One open connection; dropping it frees its place.
pub struct Slot {
    gate: Arc<Gate>,
    key: Option<IpAddr>,
    /// Counted in the open-connections gauge (set once admitted).
    counted: bool,
}

impl Gate {
    pub fn new(l: &Limits) -> Gate {
        Gate {
            max_total: l.max_connections,
            max_per_ip: l.max_connections_per_ip,
            trusted: l.trusted_proxies.clone(),
            total: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
        }
    }

    /// A place for a connection from `peer`, unless a cap is reached.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Slot, Refusal> {
        let taken = self
            .total
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_total).then_some(n + 1)
            });
        if taken.is_err() {
            return Err(Refusal::Total);
        }
        // From here on the slot owns its place in `total`.
        let mut slot = Slot {
            gate: self.clone(),
            key: None,
            counted: false,
        };
        if !client_ip::is_trusted(peer, &self.trusted) {
            let key = client_ip::limit_key(peer);
            let mut map = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            let n = map.entry(key).or_insert(0);
            if *n >= self.max_per_ip {
                if *n == 0 {
                    map.remove(&key);
                }
                return Err(Refusal::PerIp);
            }
            *n += 1;
            slot.key = Some(key);
        }
        ::metrics::gauge!("stowage_connections_open").increment(1.0);
        slot.counted = true;
        Ok(slot)
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            let mut map = self.gate.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = map.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&key);
                }
            }
        }
        if self.counted {
            ::metrics::gauge!("stowage_connections_open").decrement(1.0);
        }
        self.gate.total.fetch_sub(1, Ordering::AcqRel);
    }
}

// ---------------------------------------------------------- shutdown

/// Tracks the connection tasks for graceful shutdown: [`Connections::drain`]
/// tells them to stop and waits until the last one has ended.
struct Connections {
    stop_tx: watch::Sender<bool>,
    /// Every task holds a receiver; `closed()` fires when all are gone.
    alive_tx: watch::Sender<()>,
}

struct ConnWatch {
    stop_rx: watch::Receiver<bool>,
    _alive: watch::Receiver<()>,
}

impl Connections {
    fn new() -> Connections {
        Connections {
            stop_tx: watch::channel(false).0,
            alive_tx: watch::channel(()).0,
        }
    }

    fn watch(&self) -> ConnWatch {
        ConnWatch {
            stop_rx: self.stop_tx.subscribe(),
            _alive: self.alive_tx.subscribe(),
        }
    }

    /// Asks every connection to finish and waits for all of them. A
    /// deadline, when wanted, goes around this future.
    async fn drain(self) {
        let _ = self.stop_tx.send(true);
        self.alive_tx.closed().await;
    }
}

impl ConnWatch {
    async fn stopping(&mut self) {
        let _ = self.stop_rx.wait_for(|s| *s).await;
    }
}

// ------------------------------------------------------- head timer

/// Reads seen on one connection, shared by its [`Watched`] stream and its
/// [`HeadTimer`].
#[derive(Default)]
struct Activity {
    reads: AtomicU64,
    /// When the last read that delivered bytes happened (nanoseconds
    /// after `origin`).
    last_read: AtomicU64,
    origin: OnceInstant,
}

/// An `Instant` fixed when the connection is created.
struct OnceInstant(tokio::time::Instant);

impl Default for OnceInstant {
    fn default() -> Self {
        OnceInstant(tokio::time::Instant::now())
    }
}

impl Activity {
    fn saw_bytes(&self) {
        let at = self.origin.0.elapsed().as_nanos() as u64;
        self.last_read.store(at, Ordering::Release);
        self.reads.fetch_add(1, Ordering::AcqRel);
    }

    fn reads(&self) -> u64 {
        self.reads.load(Ordering::Acquire)
    }

    fn last_read(&self) -> tokio::time::Instant {
        self.origin.0 + Duration::from_nanos(self.last_read.load(Ordering::Acquire))
    }
}

/// The TCP stream, noting each read that delivers bytes, and putting the
/// interim responses handlers queue on the wire between hyper's messages
/// (see [`super::interim`]).
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
    interim: Interim,
    /// hyper wrote bytes it has not flushed yet: it may be mid-message.
    unflushed: bool,
    /// Files whose bytes replace the placeholder frames hyper writes.
    files: Sendfile,
    /// How long a file send may wait for a socket that takes nothing.
    stall_limit: Duration,
    /// Armed while a file send waits for the socket.
    stall: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Watched {
    /// Sends queued interim responses unless hyper is mid-message.
    fn poll_interim(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.unflushed {
            return Poll::Ready(Ok(()));
        }
        self.interim.poll_drain(&mut self.inner, cx)
    }

    /// Sends up to `max` bytes of the queued file in place of placeholder
    /// bytes, failing once the socket has taken nothing for `stall_limit`.
    fn poll_file(&mut self, max: usize, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        match self.files.poll_send(&self.inner, max, cx) {
            Poll::Ready(r) => {
                self.stall = None;
                if matches!(r, Ok(n) if n > 0) {
                    self.unflushed = true;
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                let limit = self.stall_limit;
                let stall = self
                    .stall
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                if stall.as_mut().poll(cx).is_ready() {
                    self.stall = None;
                    tracing::debug!("download stalled: the client takes no bytes");
                    return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
                }
                Poll::Pending
            }
        }
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Poll::Ready(Err(e)) = self.poll_interim(cx) {
            return Poll::Ready(Err(e));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.saw_bytes();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.poll_interim(cx))?;
        if sendfile::is_placeholder(buf) {
            return self.poll_file(buf.len(), cx);
        }
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.unflushed = true;
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.poll_interim(cx))?;
        // Placeholder frames are never written: the bytes before the first
        // one go out as they are, the placeholder itself is sent from the
        // file on the next call.
        let bufs = match bufs.iter().position(|b| sendfile::is_placeholder(b)) {
            Some(i) if bufs[..i].iter().all(|b| b.is_empty()) => {
                return self.poll_file(bufs[i].len(), cx)
            }
            Some(i) => &bufs[..i],
            None => bufs,
        };
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.unflushed = true;
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // hyper flushes the socket only once its own buffer is written out:
        // its messages are whole on the wire now.
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        if matches!(r, Poll::Ready(Ok(()))) {
            self.unflushed = false;
        }
        r
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The timer hyper uses for `header_read_timeout` (its only use of a timer
/// on an HTTP/1 server connection). hyper asks for a sleep of
/// `header_timeout` whenever it starts waiting for a request head; the
/// sleep handed back first waits `idle` for the head's first byte and,
/// once bytes arrive, ends `header_timeout` after the first of them.
///
/// A pipelining client whose next head was already buffered with the
/// previous request is the one case where no new read is seen: its head is
/// then bounded by `idle` instead.
#[derive(Clone)]
struct HeadTimer {
    activity: Arc<Activity>,
    idle: Duration,
}

impl hyper::rt::Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(HeadSleep {
            activity: self.activity.clone(),
            reads_at_start: self.activity.reads(),
            header: duration,
            waiting_for_first_byte: true,
            sleep: Box::pin(tokio::time::sleep(self.idle)),
        })
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep(deadline.saturating_duration_since(Instant::now()))
    }
}

struct HeadSleep {
    activity: Arc<Activity>,
    reads_at_start: u64,
    header: Duration,
    waiting_for_first_byte: bool,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl Future for HeadSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // hyper polls this right after every read that leaves the head
        // incomplete, so the first byte is noticed when it arrives.
        if self.waiting_for_first_byte && self.activity.reads() != self.reads_at_start {
            self.waiting_for_first_byte = false;
            let deadline = self.activity.last_read() + self.header;
            self.sleep.as_mut().reset(deadline);
        }
        self.sleep.as_mut().poll(cx)
    }
}

impl hyper::rt::Sleep for HeadSleep {}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, per_ip: usize, trusted: &[&str]) -> Limits {
        Limits {
            max_connections: total,
            max_connections_per_ip: per_ip,
            trusted_proxies: trusted
                .iter()
                .map(|s| crate::config::IpNet::parse(s).unwrap())
                .collect(),
            ..Limits::default()
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_gate_counts_per_client_and_in_all_and_frees_on_drop() {
        let gate = Arc::new(Gate::new(&limits(5, 2, &["10.0.0.0/8"])));
        let a1 = gate.admit(ip("1.1.1.1")).unwrap();
        let _a2 = gate.admit(ip("1.1.1.1")).unwrap();
        assert_eq!(gate.admit(ip("1.1.1.1")).err(), Some(Refusal::PerIp));
        // One IPv6 /64 is one client.
        let _b1 = gate.admit(ip("2001:db8::1")).unwrap();
        let _b2 = gate.admit(ip("2001:db8::2")).unwrap();
        assert_eq!(gate.admit(ip("2001:db8::3")).err(), Some(Refusal::PerIp));
        // A trusted proxy is not capped per IP, only in all.
        let _p = gate.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(gate.admit(ip("10.0.0.1")).err(), Some(Refusal::Total));
        assert_eq!(gate.admit(ip("3.3.3.3")).err(), Some(Refusal::Total));
        assert_eq!(gate.open(), 5);
        drop(a1);
        assert_eq!(gate.open(), 4);
        let _a3 = gate.admit(ip("1.1.1.1")).unwrap();
        drop(_b1);
        drop(_b2);
        assert!(!gate.per_ip.lock().unwrap().contains_key(&ip("2001:db8::")));
    }

    #[test]
    fn the_refusal_is_the_spec_error_json() {
        let text = std::str::from_utf8(REFUSAL).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "unavailable");
    }
}
