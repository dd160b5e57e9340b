#![allow(dead_code)]
//! A TCP forwarder for network-failure tests: it can slow uploads down (so a
//! kill lands mid-transfer) and drop the client side of every connection
//! while keeping the server side open, as a mobile network does when it
//! loses a device: the server sees a body that just stops arriving.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        tcp::{OwnedReadHalf, OwnedWriteHalf},
        TcpListener, TcpStream,
    },
};

/// The server side's write half, shared between the upstream copy and the
/// code that may take it away (to park it: the server then sees a body that
/// stops, with its connection still open).
type SharedWriter = Arc<tokio::sync::Mutex<Option<OwnedWriteHalf>>>;

/// Copies the client's bytes to the server at most `rate` bytes a second,
/// adding each chunk to `sent`, until the client's side ends, a write fails
/// or the writer was taken.
async fn copy_up(
    mut from: OwnedReadHalf,
    to: SharedWriter,
    rate: Option<u64>,
    sent: Option<Arc<AtomicU64>>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let mut g = to.lock().await;
        let Some(w) = g.as_mut() else { return };
        if w.write_all(&buf[..n]).await.is_err() {
            return;
        }
        drop(g);
        if let Some(s) = &sent {
            s.fetch_add(n as u64, Ordering::SeqCst);
        }
        if let Some(r) = rate {
            tokio::time::sleep(Duration::from_secs_f64(n as f64 / r as f64)).await;
        }
    }
}

/// Copies the server's bytes to the client, showing each chunk to `seen`,
/// until either side ends.
async fn copy_down(mut from: OwnedReadHalf, to: &mut OwnedWriteHalf, mut seen: impl FnMut(&[u8])) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        seen(&buf[..n]);
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Accepts connections on `listener` and, for each, connects to `target`
/// and runs `pair(client, server)` as a task of its own; a client whose
/// server does not answer sees its connection closed.
fn forward_each<F, Fut>(listener: TcpListener, target: SocketAddr, pair: F)
where
    F: Fn(TcpStream, TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            let Ok(server) = TcpStream::connect(target).await else {
                continue;
            };
            tokio::spawn(pair(client, server));
        }
    });
}

pub struct NetProxy {
    pub addr: SocketAddr,
    /// Bytes forwarded from clients to the server, in all.
    up_bytes: Arc<AtomicU64>,
    /// Bumped to drop the client side of every open connection.
    drop_tx: tokio::sync::watch::Sender<u64>,
    /// Server sides kept open after their client was dropped.
    parked: Arc<Mutex<Vec<OwnedWriteHalf>>>,
}

impl NetProxy {
    /// Forwards to `target`; with `rate` (bytes per second) uploads are
    /// paced to about that speed.
    pub async fn start(target: SocketAddr, rate: Option<u64>) -> NetProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (drop_tx, drop_rx) = tokio::sync::watch::channel(0u64);
        let p = NetProxy {
            addr: listener.local_addr().unwrap(),
            up_bytes: Arc::new(AtomicU64::new(0)),
            drop_tx,
            parked: Arc::default(),
        };
        let (up, parked) = (p.up_bytes.clone(), p.parked.clone());
        forward_each(listener, target, move |client, server| {
            let gen = *drop_rx.borrow();
            let mut rx = drop_rx.clone();
            let (up, parked) = (up.clone(), parked.clone());
            async move {
                let (cr, mut cw) = client.into_split();
                let (sr, sw) = server.into_split();
                let sw: SharedWriter = Arc::new(tokio::sync::Mutex::new(Some(sw)));
                let upstream = copy_up(cr, sw.clone(), rate, Some(up));
                let downstream = copy_down(sr, &mut cw, |_| {});
                let dropped = async {
                    let _ = rx.wait_for(|g| *g > gen).await;
                };
                let was_dropped = tokio::select! {
                    _ = upstream => false,
                    _ = downstream => false,
                    _ = dropped => true,
                };
                if was_dropped {
                    // The client side closes here; the server side
                    // stays open, silent, until the proxy goes.
                    if let Some(w) = sw.lock().await.take() {
                        parked.lock().unwrap().push(w);
                    }
                }
            }
        });
        p
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Bytes forwarded upstream so far.
    pub fn up_bytes(&self) -> u64 {
        self.up_bytes.load(Ordering::SeqCst)
    }

    /// Drops the client side of every open connection; server sides stay
    /// open and silent.
    pub fn drop_clients(&self) {
        self.drop_tx.send_modify(|g| *g += 1);
    }
}

/// A TCP forwarder in front of the servers, so a test can cut every
/// connection mid-transfer (once `cut_after` bytes went upstream) and point
/// the same address at another server (a restart, from the client's side).
pub struct CutProxy {
    pub addr: SocketAddr,
    target: Arc<Mutex<SocketAddr>>,
    up_bytes: Arc<AtomicU64>,
    cut_after: Arc<AtomicU64>,
    /// Bumped on every cut; connections of an older generation close.
    generation: Arc<AtomicU64>,
    /// While set, new connections are closed at once (server "down").
    down: Arc<AtomicBool>,
    cut_tx: tokio::sync::watch::Sender<u64>,
}

impl CutProxy {
    pub async fn start(target: SocketAddr) -> CutProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (cut_tx, cut_rx) = tokio::sync::watch::channel(0u64);
        let p = CutProxy {
            addr: listener.local_addr().unwrap(),
            target: Arc::new(Mutex::new(target)),
            up_bytes: Arc::new(AtomicU64::new(0)),
            cut_after: Arc::new(AtomicU64::new(u64::MAX)),
            generation: Arc::new(AtomicU64::new(0)),
            down: Arc::new(AtomicBool::new(false)),
            cut_tx,
        };
        let (target, up, cut_after, generation, down) = (
            p.target.clone(),
            p.up_bytes.clone(),
            p.cut_after.clone(),
            p.generation.clone(),
            p.down.clone(),
        );
        let cut_tx = p.cut_tx.clone();
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                if down.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let to = *target.lock().unwrap();
                let Ok(server) = TcpStream::connect(to).await else {
                    continue;
                };
                let gen = generation.load(Ordering::SeqCst);
                let (up, cut_after, generation, down, cut_tx) = (
                    up.clone(),
                    cut_after.clone(),
                    generation.clone(),
                    down.clone(),
                    cut_tx.clone(),
                );
                let mut rx = cut_rx.clone();
                tokio::spawn(async move {
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let upstream = async {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = match cr.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            if sw.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                            let total = up.fetch_add(n as u64, Ordering::SeqCst) + n as u64;
                            if total >= cut_after.load(Ordering::SeqCst) {
                                cut_after.store(u64::MAX, Ordering::SeqCst);
                                down.store(true, Ordering::SeqCst);
                                let g = generation.fetch_add(1, Ordering::SeqCst) + 1;
                                let _ = cut_tx.send(g);
                                return;
                            }
                        }
                    };
                    let downstream = async {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = match sr.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            if cw.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    };
                    let cut = async {
                        let _ = rx.wait_for(|g| *g > gen).await;
                    };
                    tokio::select! {
                        _ = upstream => {}
                        _ = downstream => {}
                        _ = cut => {}
                    }
                    // Both sockets drop here: the connection is cut.
                });
            }
        });
        p
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Cuts every connection once `n` more bytes went upstream, and closes
    /// new ones until [`CutProxy::up`].
    pub fn cut_after(&self, n: u64) {
        let now = self.up_bytes.load(Ordering::SeqCst);
        self.cut_after.store(now + n, Ordering::SeqCst);
    }

    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::SeqCst)
    }

    pub fn up(&self, target: SocketAddr) {
        *self.target.lock().unwrap() = target;
        self.down.store(false, Ordering::SeqCst);
    }
}

/// A round-robin TCP load balancer over `backends`: each new connection goes
/// to the next backend in turn, skipping one that is out of rotation or
/// refuses connections (a node being restarted), as a balancer retrying
/// elsewhere does. With `rate` (bytes per second) each connection's upload
/// is paced to about that speed. It logs the status of every HTTP response
/// it forwards, so a test sees what the clients saw.
pub struct Balancer {
    pub addr: SocketAddr,
    /// Connections open to each backend now.
    open: Arc<Vec<AtomicU64>>,
    /// Backends taken out of rotation.
    out: Arc<Vec<AtomicBool>>,
    /// Bumped (per backend) to drop the client side of its connections.
    drop_tx: Arc<Vec<tokio::sync::watch::Sender<u64>>>,
    /// Server sides kept open after their client was dropped.
    parked: Arc<Mutex<Vec<OwnedWriteHalf>>>,
    /// Every response status forwarded, in order.
    statuses: Arc<Mutex<Vec<u16>>>,
}

impl Balancer {
    pub async fn start(backends: Vec<SocketAddr>, rate: Option<u64>) -> Balancer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let b = Balancer {
            addr,
            open: Arc::new(backends.iter().map(|_| AtomicU64::new(0)).collect()),
            out: Arc::new(backends.iter().map(|_| AtomicBool::new(false)).collect()),
            drop_tx: Arc::new(
                backends
                    .iter()
                    .map(|_| tokio::sync::watch::channel(0u64).0)
                    .collect(),
            ),
            parked: Arc::default(),
            statuses: Arc::default(),
        };
        let (counts, out, drop_tx, parked, statuses) = (
            b.open.clone(),
            b.out.clone(),
            b.drop_tx.clone(),
            b.parked.clone(),
            b.statuses.clone(),
        );
        tokio::spawn(async move {
            let mut next = 0usize;
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let first = next;
                next = next.wrapping_add(1);
                let (backends, counts, out, drop_tx, parked, statuses) = (
                    backends.clone(),
                    counts.clone(),
                    out.clone(),
                    drop_tx.clone(),
                    parked.clone(),
                    statuses.clone(),
                );
                tokio::spawn(async move {
                    let mut server = None;
                    for i in 0..backends.len() {
                        let k = (first + i) % backends.len();
                        if out[k].load(Ordering::SeqCst) {
                            continue;
                        }
                        if let Ok(s) = TcpStream::connect(backends[k]).await {
                            server = Some((k, s));
                            break;
                        }
                    }
                    // Every backend down: the client sees its connection
                    // closed.
                    let Some((k, server)) = server else { return };
                    counts[k].fetch_add(1, Ordering::SeqCst);
                    let mut rx = drop_tx[k].subscribe();
                    let gen = *rx.borrow();
                    let (cr, mut cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    let sw: SharedWriter = Arc::new(tokio::sync::Mutex::new(Some(sw)));
                    let sw2 = sw.clone();
                    let upstream = async move {
                        copy_up(cr, sw2.clone(), rate, None).await;
                        if let Some(w) = sw2.lock().await.as_mut() {
                            let _ = w.shutdown().await;
                        }
                    };
                    let downstream = async {
                        let mut scan = StatusScan::default();
                        copy_down(sr, &mut cw, |chunk| {
                            let seen = scan.feed(chunk);
                            if !seen.is_empty() {
                                statuses.lock().unwrap().extend(seen);
                            }
                        })
                        .await;
                        let _ = cw.shutdown().await;
                    };
                    let dropped = async {
                        let _ = rx.wait_for(|g| *g > gen).await;
                    };
                    let was_dropped = tokio::select! {
                        _ = async { tokio::join!(upstream, downstream) } => false,
                        _ = dropped => true,
                    };
                    if was_dropped {
                        // The client side closes here; the server side
                        // stays open, silent, until the balancer goes.
                        if let Some(w) = sw.lock().await.take() {
                            parked.lock().unwrap().push(w);
                        }
                    }
                    counts[k].fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        b
    }

    /// Connections open to backend `i` (in the order given to `start`).
    pub fn open(&self, i: usize) -> u64 {
        self.open[i].load(Ordering::SeqCst)
    }

    /// Takes backend `i` out of rotation (`false`) or puts it back.
    pub fn set_in_rotation(&self, i: usize, on: bool) {
        self.out[i].store(!on, Ordering::SeqCst);
    }

    /// Closes the client side of every connection open to backend `i`,
    /// keeping the server side open and silent: what a balancer does to
    /// the connections of a node whose deregistration delay ran out.
    pub fn drop_clients(&self, i: usize) {
        self.drop_tx[i].send_modify(|g| *g += 1);
    }

    /// The status of every response forwarded so far.
    pub fn statuses(&self) -> Vec<u16> {
        self.statuses.lock().unwrap().clone()
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Finds `HTTP/1.1 NNN` status lines in a response stream that arrives in
/// pieces (a status line may straddle two reads).
#[derive(Default)]
struct StatusScan {
    tail: Vec<u8>,
}

impl StatusScan {
    const MARK: &'static [u8] = b"HTTP/1.1 ";

    fn feed(&mut self, bytes: &[u8]) -> Vec<u16> {
        let mut hay = std::mem::take(&mut self.tail);
        hay.extend_from_slice(bytes);
        let mut found = Vec::new();
        let need = Self::MARK.len() + 3;
        let mut i = 0;
        while i + need <= hay.len() {
            if &hay[i..i + Self::MARK.len()] == Self::MARK {
                let code = &hay[i + Self::MARK.len()..i + need];
                if let Some(c) = std::str::from_utf8(code).ok().and_then(|c| c.parse().ok()) {
                    found.push(c);
                }
                i += need;
            } else {
                i += 1;
            }
        }
        // Keep what could be the start of a status line cut by this read
        // (fewer bytes than a whole one).
        self.tail = hay[i.min(hay.len())..].to_vec();
        found
    }
}

/// What [`Tamper`] does to a request it matches.
#[derive(Clone, Copy, Debug)]
pub enum Tampering {
    /// The request goes to the server whole; when the server's answer
    /// begins, the connection is closed instead of forwarding it. The
    /// client sees a connection cut after its request, though the server
    /// did the work (a reply lost on the network).
    LoseAnswer,
    /// The request waits this long before it goes on (a slow network or a
    /// busy store).
    Delay(Duration),
    /// The request never reaches the server: the client gets S3's 403
    /// `AccessDenied` (a key without the right to make that call).
    Forbid,
}

/// S3's answer to a call the key may not make.
fn access_denied() -> Vec<u8> {
    let body = r#"<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>"#;
    format!(
        "HTTP/1.1 403 Forbidden\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A TCP forwarder that tampers with the requests whose head starts with
/// `method` and whose request line holds `marker`, while it is
/// [`Tamper::arm`]ed for them.
pub struct Tamper {
    pub addr: SocketAddr,
    /// Matching requests still to tamper with.
    armed: Arc<AtomicU64>,
    /// Matching requests tampered with so far.
    done: Arc<AtomicU64>,
}

impl Tamper {
    pub async fn start(
        target: SocketAddr,
        method: &'static str,
        marker: &'static str,
        how: Tampering,
    ) -> Tamper {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let p = Tamper {
            addr: listener.local_addr().unwrap(),
            armed: Arc::new(AtomicU64::new(0)),
            done: Arc::new(AtomicU64::new(0)),
        };
        let (armed, done) = (p.armed.clone(), p.done.clone());
        forward_each(listener, target, move |client, server| {
            let (armed, done) = (armed.clone(), done.clone());
            async move {
                let (mut cr, cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let cw = Arc::new(tokio::sync::Mutex::new(cw));
                // Set before the matching request goes upstream, so it
                // is seen when its answer comes back.
                let swallow = Arc::new(AtomicBool::new(false));
                let upstream = {
                    let (swallow, done, cw) = (swallow.clone(), done.clone(), cw.clone());
                    async move {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = match cr.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            let head = &buf[..n];
                            let line = head.split(|&b| b == b'\n').next().unwrap_or(&[]);
                            let matches = head.starts_with(method.as_bytes())
                                && memchr::memmem::find(line, marker.as_bytes()).is_some()
                                && armed
                                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |a| {
                                        a.checked_sub(1)
                                    })
                                    .is_ok();
                            if matches {
                                match how {
                                    Tampering::Forbid => {
                                        done.fetch_add(1, Ordering::SeqCst);
                                        let mut w = cw.lock().await;
                                        let _ = w.write_all(&access_denied()).await;
                                        return;
                                    }
                                    Tampering::LoseAnswer => swallow.store(true, Ordering::SeqCst),
                                    Tampering::Delay(d) => {
                                        tokio::time::sleep(d).await;
                                        done.fetch_add(1, Ordering::SeqCst);
                                    }
                                }
                            }
                            if sw.write_all(head).await.is_err() {
                                return;
                            }
                        }
                    }
                };
                let downstream = async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match sr.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        if swallow.load(Ordering::SeqCst) {
                            done.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                        if cw.lock().await.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                };
                tokio::select! {
                    _ = upstream => {}
                    _ = downstream => {}
                }
            }
        });
        p
    }

    /// Tampers with the next `n` matching requests.
    pub fn arm(&self, n: u64) {
        self.armed.store(n, Ordering::SeqCst);
    }

    /// Requests tampered with so far (a delayed one once it went on).
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::SeqCst)
    }
}
