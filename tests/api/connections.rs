//! Connections a hostile client holds (SPEC §9): slow and idle ones are
//! closed on time, a client cannot open more than its share, behind a
//! trusted proxy each forwarded client is limited on its own, and a body
//! that stops sending is ended without losing what was stored.

use std::time::{Duration, Instant};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::helpers::*;
use crate::local;
use crate::tus::create_ok;

const HEADER: Duration = Duration::from_secs(1);
const KEEPALIVE: Duration = Duration::from_secs(3);
/// Slack for a loaded machine on every deadline.
const MARGIN: Duration = Duration::from_secs(2);

async fn connect(app: &TestApp) -> TcpStream {
    TcpStream::connect(app.addr).await.unwrap()
}

/// Reads one HTTP/1.1 response with a Content-Length body; the status code.
async fn read_response(s: &mut TcpStream) -> u16 {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = Duration::from_secs(10);
    loop {
        let n = tokio::time::timeout(deadline, s.read(&mut chunk))
            .await
            .expect("an answer in time")
            .expect("the connection stays up");
        assert!(n > 0, "closed before a whole answer: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let head = text[..end].to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().unwrap())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return head[9..12].parse().unwrap();
            }
        }
    }
}

/// Waits until the server closes `s` (EOF or reset); how long that took.
/// Anything the server writes first (an error answer) is skipped.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> Duration {
    let started = Instant::now();
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((started + limit).into(), s.read(&mut chunk)).await {
            Err(_) => panic!("still open after {limit:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => continue,
        }
    }
}

/// True when the server has not closed `s` during `wait` (and sent nothing).
async fn stays_open(s: &mut TcpStream, wait: Duration) -> bool {
    let mut chunk = [0u8; 16];
    tokio::time::timeout(wait, s.read(&mut chunk))
        .await
        .is_err()
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n")
}

fn timeouts(c: &mut stowage::config::Config) {
    c.limits.header_timeout = HEADER;
    c.limits.keepalive_timeout = KEEPALIVE;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_a_header_line_is_closed_on_time_while_others_are_served() {
    let app = spawn_app_with(Backend::Sqlite, timeouts).await;
    let mut slow = connect(&app).await;
    slow.write_all(b"GET /api/files HT").await.unwrap();
    let sent = Instant::now();
    // Meanwhile a normal client is served, on its own connections.
    for _ in 0..5 {
        let (status, _) = app.get_json("well", "/api/files").await;
        assert_eq!(status, 200);
    }
    closed_within(&mut slow, HEADER + MARGIN).await;
    let took = sent.elapsed();
    assert!(
        took >= HEADER - Duration::from_millis(100),
        "closed after {took:?}, before its header time was up"
    );
    // A whole header sent byte by byte, but too slowly, fares no better.
    let mut trickle = connect(&app).await;
    let started = Instant::now();
    let mut closed = false;
    for b in get("/healthz").bytes() {
        if trickle.write_all(&[b]).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
        if started.elapsed() > HEADER + MARGIN {
            break;
        }
    }
    assert!(
        closed || !stays_open(&mut trickle, MARGIN).await,
        "a trickled head was not cut"
    );
    let (status, _) = app.get_json("well", "/api/files").await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_closes_after_the_keepalive_timeout() {
    let app = spawn_app_with(Backend::Sqlite, timeouts).await;
    let mut s = connect(&app).await;
    s.write_all(get("/healthz").as_bytes()).await.unwrap();
    assert_eq!(read_response(&mut s).await, 200);
    let answered = Instant::now();
    // Idle past the header timeout: a keep-alive connection may wait for
    // its next request longer than a head may take to arrive.
    assert!(
        stays_open(&mut s, HEADER * 2).await,
        "an idle keep-alive connection was closed after the header timeout"
    );
    // And the next request, sent now, is served.
    s.write_all(get("/healthz").as_bytes()).await.unwrap();
    assert_eq!(read_response(&mut s).await, 200);
    let answered_again = Instant::now();
    assert!(answered_again - answered >= HEADER * 2);
    // Then nothing more: closed once the keep-alive timeout has passed.
    let took = closed_within(&mut s, KEEPALIVE + MARGIN).await;
    assert!(
        took >= KEEPALIVE - Duration::from_millis(200),
        "closed after {took:?}"
    );

    // A fresh connection that never sends a byte is idle too.
    let mut quiet = connect(&app).await;
    let took = closed_within(&mut quiet, KEEPALIVE + MARGIN).await;
    assert!(took >= KEEPALIVE - Duration::from_millis(200), "{took:?}");

    // The head's clock starts with its first byte, not with the idle wait.
    let mut late = connect(&app).await;
    late.write_all(get("/healthz").as_bytes()).await.unwrap();
    assert_eq!(read_response(&mut late).await, 200);
    tokio::time::sleep(HEADER + HEADER / 2).await;
    late.write_all(b"GET /healthz HTTP/1.1\r\nHo")
        .await
        .unwrap();
    let took = closed_within(&mut late, HEADER + MARGIN).await;
    assert!(took < KEEPALIVE, "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_per_ip_cap_are_refused_and_the_others_kept() {
    let app = spawn_app_with(Backend::Sqlite, |c| {
        c.limits.max_connections_per_ip = 4;
    })
    .await;
    let mut open = Vec::new();
    for _ in 0..4 {
        let mut s = connect(&app).await;
        s.write_all(get("/healthz").as_bytes()).await.unwrap();
        assert_eq!(read_response(&mut s).await, 200);
        open.push(s);
    }
    // The fifth is answered 503 with the SPEC's error and closed.
    let mut extra = connect(&app).await;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), extra.read_to_end(&mut answer))
        .await
        .expect("refused at once")
        .ok();
    let answer = String::from_utf8_lossy(&answer).to_string();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
    assert!(answer.contains("\"code\":\"unavailable\""), "{answer}");
    // The four are still served.
    for s in open.iter_mut() {
        s.write_all(get("/healthz").as_bytes()).await.unwrap();
        assert_eq!(read_response(s).await, 200);
    }
    // One closes: its place is free again.
    drop(open.pop());
    let mut again = None;
    for _ in 0..50 {
        let mut s = connect(&app).await;
        s.write_all(get("/healthz").as_bytes()).await.unwrap();
        let mut first = [0u8; 12];
        if s.read_exact(&mut first).await.is_ok() && &first[9..12] == b"200" {
            again = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(again.is_some(), "the freed place was not given out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_each_forwarded_client_is_limited_on_its_own() {
    let proxy = spawn_app_with(Backend::Sqlite, |c| {
        c.limits.max_connections_per_ip = 2;
        c.limits.trusted_proxies = vec![stowage::config::IpNet::parse("127.0.0.0/8").unwrap()];
        c.rate_limit_ip_per_sec = 1;
    })
    .await;
    // The proxy (127.0.0.1) is not held to the per-IP cap.
    let mut held = Vec::new();
    for _ in 0..6 {
        let mut s = connect(&proxy).await;
        s.write_all(get("/healthz").as_bytes()).await.unwrap();
        assert_eq!(read_response(&mut s).await, 200);
        held.push(s);
    }
    // Rate limits count the forwarded client: 7.7.7.7 spends its burst
    // (4), then 8.8.8.8 is still welcome.
    let c = reqwest::Client::new();
    let status = |ip: &'static str| {
        let c = c.clone();
        let url = proxy.url("/openapi.json");
        async move {
            c.get(url)
                .header("x-forwarded-for", format!("6.6.6.6, {ip}"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let mut seven = Vec::new();
    for _ in 0..8 {
        seven.push(status("7.7.7.7").await);
    }
    assert_eq!(seven.iter().filter(|s| **s == 200).count(), 4, "{seven:?}");
    assert_eq!(seven.last(), Some(&429));
    assert_eq!(status("8.8.8.8").await, 200);
    assert_eq!(status("2001:db8:0:1::1").await, 200);
    drop(held);

    // Without the proxy trusted, the header is the client's own claim and
    // changes nothing: every request counts against 127.0.0.1.
    let direct = spawn_app_with(Backend::Sqlite, |c| {
        c.rate_limit_ip_per_sec = 1;
    })
    .await;
    let mut seen = Vec::new();
    for i in 0..8 {
        let r = c
            .get(direct.url("/openapi.json"))
            .header("x-forwarded-for", format!("9.9.9.{i}"))
            .send()
            .await
            .unwrap();
        seen.push(r.status().as_u16());
    }
    assert_eq!(seen.iter().filter(|s| **s == 200).count(), 4, "{seen:?}");
}

local!(
    a_stalled_multipart_body_is_ended_and_released,
    |b| async move {
        let quota = 1_000_000u64;
        let app = spawn_app_with(b, |c| {
            c.limits.body_idle_timeout = Duration::from_secs(1);
            c.default_quota = quota;
        })
        .await;
        let boundary = "SS";
        let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"t.png\"\r\n\r\n"
    )
        .into_bytes();
        body.extend_from_slice(&png_bytes(900_000));
        body.extend(format!("\r\n--{boundary}--\r\n").into_bytes());
        let head = format!(
        "POST /api/files/upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {}\r\n\r\n",
        token("stall"),
        body.len()
    );
        let mut s = connect(&app).await;
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(&body[..300_000]).await.unwrap();
        // The client keeps the connection open and sends nothing more.
        let started = Instant::now();
        let status = read_response(&mut s).await;
        assert!((400..500).contains(&status), "{status}");
        assert!(started.elapsed() < Duration::from_secs(1) + MARGIN * 2);
        // Released while the client still holds the socket: the whole room is
        // there for the next upload.
        let mut released = false;
        for _ in 0..100 {
            let row = app.state.meta.get_user("stall").await.unwrap().unwrap();
            if row.reserved_bytes == 0 {
                released = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(released, "the reservation was kept");
        app.upload_ok("stall", "full.png", png_bytes(quota as usize - 4096))
            .await;
        drop(s);
        app.assert_consistent("stall").await;
    }
);

local!(
    a_stalled_tus_patch_keeps_its_fsynced_bytes,
    |b| async move {
        let app = spawn_app_with(b, |c| {
            c.limits.body_idle_timeout = Duration::from_secs(1);
        })
        .await;
        let len = 1_000_000u64;
        let loc = create_ok(&app, "tstall", len, "").await;
        let data = png_bytes(len as usize);
        let head = format!(
        "PATCH {loc} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nTus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\nContent-Type: application/offset+octet-stream\r\nContent-Length: {len}\r\n\r\n",
        token("tstall")
    );
        let mut s = connect(&app).await;
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(&data[..300_000]).await.unwrap();
        let started = Instant::now();
        let status = read_response(&mut s).await;
        assert_eq!(status, 400);
        // Well before tus's own 20 s guard: the configured limit ended it.
        assert!(started.elapsed() < Duration::from_secs(1) + MARGIN * 2);
        drop(s);
        let r = app
            .tus(reqwest::Method::HEAD, "tstall", &loc)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["upload-offset"], "300000");
        // It resumes from there to a whole file.
        let r = app
            .tus(reqwest::Method::PATCH, "tstall", &loc)
            .header("Upload-Offset", "300000")
            .header("Content-Type", "application/offset+octet-stream")
            .body(data[300_000..].to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
        assert!(r.headers().contains_key("stowage-file-id"));
    }
);

/// Reads one answer on `r`: its status and lowercased head (the body, of
/// `Content-Length` bytes, is read too).
async fn read_answer(r: &mut tokio::net::tcp::OwnedReadHalf) -> (u16, String) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), r.read(&mut chunk))
            .await
            .expect("an answer in time")
            .expect("no reset before the answer");
        assert!(n > 0, "closed before a whole answer: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let head = text[..end].to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().unwrap())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return (head[9..12].parse().unwrap(), head);
            }
        }
    }
}

/// Sends `head` and `body` on a new connection from a task of its own (so
/// a server that stops reading cannot block the test); the read half and
/// the task, which hands the write half back.
async fn send_in_background(
    app: &TestApp,
    head: String,
    body: Vec<u8>,
) -> (
    tokio::net::tcp::OwnedReadHalf,
    tokio::task::JoinHandle<Option<tokio::net::tcp::OwnedWriteHalf>>,
) {
    let (r, mut w) = connect(app).await.into_split();
    let task = tokio::spawn(async move {
        w.write_all(head.as_bytes()).await.ok()?;
        w.write_all(&body).await.ok()?;
        Some(w)
    });
    (r, task)
}

fn multipart_without_session(len: usize) -> String {
    format!(
        "POST /api/files/upload HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=B\r\nContent-Length: {len}\r\n\r\n"
    )
}

// A request refused before its body was read (a tus PATCH of an unknown
// upload: 404; a multipart upload without a session: 401), with a body of
// a few hundred KiB: the server reads that rest before answering, so the
// answer arrives whole and the connection stays usable for the next
// request. Without it the server closes the connection with the body
// unread (the next request finds it gone, and the reset that such a close
// sends can destroy the answer itself).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_refused_body_is_read_and_the_connection_kept() {
    let app = spawn_app(Backend::Sqlite).await;
    let body = vec![7u8; 400 * 1024];
    let requests = [
        format!(
            "PATCH /api/uploads/{} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nTus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\nContent-Type: application/offset+octet-stream\r\nContent-Length: {}\r\n\r\n",
            uuid::Uuid::new_v4(),
            token("drain"),
            body.len()
        ),
        multipart_without_session(body.len()),
    ];
    for (head, want) in requests.into_iter().zip([404, 401]) {
        let (mut r, task) = send_in_background(&app, head, body.clone()).await;
        let (status, head) = read_answer(&mut r).await;
        assert_eq!(status, want, "{head}");
        assert!(!head.contains("connection: close"), "{head}");
        let mut w = task.await.unwrap().expect("the whole body was taken");
        w.write_all(get("/healthz").as_bytes()).await.unwrap();
        let (status, head) = read_answer(&mut r).await;
        assert_eq!(status, 200, "the connection was kept: {head}");
    }
}

// A refused body bigger than the server reads before answering: the
// answer still arrives, and says `Connection: close`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_refused_body_gets_its_answer_and_connection_close() {
    let app = spawn_app(Backend::Sqlite).await;
    let body = vec![7u8; 8 * 1024 * 1024];
    let (mut r, task) = send_in_background(&app, multipart_without_session(body.len()), body).await;
    let started = Instant::now();
    let (status, head) = read_answer(&mut r).await;
    assert_eq!(status, 401, "{head}");
    assert!(head.contains("connection: close"), "{head}");
    assert!(started.elapsed() < Duration::from_secs(2) + MARGIN);
    drop(r);
    task.abort();
}
