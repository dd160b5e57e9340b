#![allow(dead_code)]
//! A TCP forwarder for network-failure tests: it can slow uploads down (so a
//! kill lands mid-transfer) and drop the client side of every connection
//! while keeping the server side open, as a mobile network does when it
//! loses a device: the server sees a body that just stops arriving.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{tcp::OwnedWriteHalf, TcpListener, TcpStream},
};

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
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let Ok(server) = TcpStream::connect(target).await else {
                    // Server down: the client sees its connection closed.
                    continue;
                };
                let gen = *drop_rx.borrow();
                let mut rx = drop_rx.clone();
                let (up, parked) = (up.clone(), parked.clone());
                tokio::spawn(async move {
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, sw) = server.into_split();
                    let sw = Arc::new(tokio::sync::Mutex::new(Some(sw)));
                    let sw2 = sw.clone();
                    let upstream = async move {
                        let mut buf = vec![0u8; 16 * 1024];
                        loop {
                            let n = match cr.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            let mut g = sw2.lock().await;
                            let Some(w) = g.as_mut() else { return };
                            if w.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                            drop(g);
                            up.fetch_add(n as u64, Ordering::SeqCst);
                            if let Some(r) = rate {
                                tokio::time::sleep(Duration::from_secs_f64(n as f64 / r as f64))
                                    .await;
                            }
                        }
                    };
                    let downstream = async {
                        let mut buf = vec![0u8; 16 * 1024];
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
                });
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

/// A round-robin TCP load balancer over `backends`: each new connection goes
/// to the next backend in turn, skipping one that refuses connections (a
/// node being restarted), as a balancer retrying elsewhere does. With `rate`
/// (bytes per second) each connection's upload is paced to about that speed.
pub struct Balancer {
    pub addr: SocketAddr,
    /// Connections open to each backend now.
    open: Arc<Vec<AtomicU64>>,
}

impl Balancer {
    pub async fn start(backends: Vec<SocketAddr>, rate: Option<u64>) -> Balancer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open: Arc<Vec<AtomicU64>> =
            Arc::new(backends.iter().map(|_| AtomicU64::new(0)).collect());
        let counts = open.clone();
        tokio::spawn(async move {
            let mut next = 0usize;
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let first = next;
                next = next.wrapping_add(1);
                let (backends, counts) = (backends.clone(), counts.clone());
                tokio::spawn(async move {
                    let mut server = None;
                    for i in 0..backends.len() {
                        let k = (first + i) % backends.len();
                        if let Ok(s) = TcpStream::connect(backends[k]).await {
                            server = Some((k, s));
                            break;
                        }
                    }
                    // Every backend down: the client sees its connection
                    // closed.
                    let Some((k, server)) = server else { return };
                    counts[k].fetch_add(1, Ordering::SeqCst);
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let upstream = async move {
                        let mut buf = vec![0u8; 16 * 1024];
                        loop {
                            let n = match cr.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            if sw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                            if let Some(r) = rate {
                                tokio::time::sleep(Duration::from_secs_f64(n as f64 / r as f64))
                                    .await;
                            }
                        }
                        let _ = sw.shutdown().await;
                    };
                    let downstream = async move {
                        let _ = tokio::io::copy(&mut sr, &mut cw).await;
                        let _ = cw.shutdown().await;
                    };
                    tokio::join!(upstream, downstream);
                    counts[k].fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Balancer { addr, open }
    }

    /// Connections open to backend `i` (in the order given to `start`).
    pub fn open(&self, i: usize) -> u64 {
        self.open[i].load(Ordering::SeqCst)
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }
}
