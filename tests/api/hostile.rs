//! Bad input: hostile names, malformed and truncated bodies, vanishing
//! clients, failing disks, unknown routes. Each gets the SPEC's error shape
//! and loses nothing.

use std::{ops::Range, path::PathBuf, sync::Arc, time::Duration};

use async_trait::async_trait;
use bytes::Bytes;
use serde_json::Value;
use stowage::blob::{
    local::LocalStore, BlobEntry, BlobError, BlobResult, BlobStore, BlobWriter, ByteStream,
    StagedEntry,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

use crate::helpers::*;
use crate::{both, local};

both!(hostile_file_names_are_sanitized, |b| async move {
    let app = spawn_app(b).await;
    let long = format!("{}.png", "n".repeat(1000));
    let cases = [
        ("../../etc/passwd.png", "passwd.png"),
        ("/abs/path/x.png", "x.png"),
        ("C:\\Windows\\evil.png", "evil.png"),
        ("tab\there.png", "tabhere.png"),
        ("photo\u{202e}gnp.exe", "photognp.exe"),
        ("..", "file"),
    ];
    for (raw, want) in cases {
        let f = app.upload_ok("h", raw, png_bytes(100)).await;
        assert_eq!(f["file_name"], want, "{raw:?}");
    }
    // NUL and escape bytes inside a multipart header: either refused as a
    // malformed form or stored cleaned; never stored raw.
    for raw in ["nul\u{0}byte.png", "ctrl\u{7}\u{1b}[31m.png"] {
        let r = app.upload("h", raw, png_bytes(100)).await;
        let status = r.status().as_u16();
        let v: serde_json::Value = r.json().await.unwrap();
        match status {
            201 => assert!(
                !v["file_name"]
                    .as_str()
                    .unwrap()
                    .chars()
                    .any(|c| c.is_control()),
                "{v}"
            ),
            400 => assert_eq!(v["error"]["code"], "invalid_request"),
            other => panic!("unexpected {other}: {v}"),
        }
    }
    let f = app.upload_ok("h", &long, png_bytes(100)).await;
    let name = f["file_name"].as_str().unwrap();
    assert_eq!(name.chars().count(), 255);
    assert!(name.ends_with(".png"));
    // Nothing escaped the user's directory: every blob is {user}/images/{uuid}.png.
    for p in app.blobs_on_disk().await {
        let parts: Vec<&str> = p.split('/').collect();
        assert_eq!(parts.len(), 3, "{p}");
        assert_eq!(parts[0], "h");
        assert_eq!(parts[1], "images");
        assert!(
            Uuid::try_parse(parts[2].trim_end_matches(".png")).is_ok(),
            "{p}"
        );
    }
});

both!(content_type_is_decided_by_bytes, |b| async move {
    let app = spawn_app(b).await;
    let svg = b"<svg xmlns=\"http://www.w3.org/2000/svg\"><script>alert(1)</script></svg>".to_vec();
    let html = b"<!doctype html><html><script>alert(1)</script></html>".to_vec();
    for (name, data) in [
        ("x.svg", svg),
        ("x.png", html),
        ("x.mp4", b"just text".to_vec()),
    ] {
        let r = app.upload("t", name, data).await;
        assert_eq!(r.status(), 415, "{name}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "unsupported_media_type");
    }
    // A PNG claimed as a video.
    let r = app
        .upload_with("t", "x.mp4", png_bytes(2000), &[("file_type", "video")])
        .await;
    assert_eq!(r.status(), 415);
    let r = app
        .upload_with(
            "t",
            "x.png",
            png_bytes(2000),
            &[("file_type", "spreadsheet")],
        )
        .await;
    assert_eq!(r.status(), 400);
    assert!(app.blobs_on_disk().await.is_empty());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(app.temp_files().await.is_empty());
    assert_eq!(app.usage("t").await["total_bytes"], 0);
});

both!(malformed_requests_get_the_error_shape, |b| async move {
    let app = spawn_app(b).await;
    let t = token("m");
    let f = app.upload_ok("m", "a.png", png_bytes(100)).await;
    let id = f["id"].as_str().unwrap();
    let c = &app.client;
    let check = |r: reqwest::Response, status: u16, code: &'static str| async move {
        assert_eq!(r.status().as_u16(), status);
        let text = r.text().await.unwrap();
        let v: Value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("JSON error body for {status}: {text:?}"));
        assert_eq!(v["error"]["code"], code, "{v}");
        assert!(v["error"]["message"].is_string());
    };
    check(
        c.put(app.url(&format!("/api/files/{id}/tags")))
            .bearer_auth(&t)
            .body("{not json")
            .send()
            .await
            .unwrap(),
        400,
        "invalid_request",
    )
    .await;
    check(
        c.put(app.url(&format!("/api/files/{id}/tags")))
            .bearer_auth(&t)
            .body("{\"tags\": 5}")
            .send()
            .await
            .unwrap(),
        400,
        "invalid_request",
    )
    .await;
    // PATCH renames now; PUT is still no method of a file.
    check(
        c.put(app.url(&format!("/api/files/{id}")))
            .bearer_auth(&t)
            .send()
            .await
            .unwrap(),
        405,
        "invalid_request",
    )
    .await;
    check(
        c.get(app.url("/api/nope"))
            .bearer_auth(&t)
            .send()
            .await
            .unwrap(),
        404,
        "not_found",
    )
    .await;
    check(
        c.post(app.url("/api/files/upload"))
            .bearer_auth(&t)
            .body("x")
            .send()
            .await
            .unwrap(),
        400,
        "invalid_request",
    )
    .await;
    // A form without a file part.
    let form = reqwest::multipart::Form::new().text("tags", "a");
    check(
        c.post(app.url("/api/files/upload"))
            .bearer_auth(&t)
            .multipart(form)
            .send()
            .await
            .unwrap(),
        400,
        "invalid_request",
    )
    .await;
    // Oversized headers.
    let big = "x".repeat(40 * 1024);
    check(
        c.get(app.url("/api/files"))
            .bearer_auth(&t)
            .header("x-big", big)
            .send()
            .await
            .unwrap(),
        431,
        "invalid_request",
    )
    .await;
});

/// Sends `head` and `body`; then either reads the answer (keeping the socket
/// open, as a waiting client does) or drops the connection at once.
async fn send_raw(app: &TestApp, head: String, body: &[u8], wait_for_answer: bool) -> String {
    let mut s = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    if !wait_for_answer {
        drop(s);
        return String::new();
    }
    let mut out = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut out))
        .await
        .expect("an answer")
        .unwrap();
    String::from_utf8_lossy(&out[..n]).to_string()
}

fn multipart(boundary: &str, data: &[u8], close: bool) -> Vec<u8> {
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"t.png\"\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(data);
    if close {
        body.extend(format!("\r\n--{boundary}--\r\n").into_bytes());
    }
    body
}

async fn assert_nothing_left(app: &TestApp, user: &str) {
    // The drop guard cleans up in the background (allow for a loaded machine).
    for _ in 0..200 {
        let row = app.state.meta.get_user(user).await.unwrap();
        let reserved = row.as_ref().map(|r| r.reserved_bytes).unwrap_or(0);
        if reserved == 0 && app.temp_files().await.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let row = app.state.meta.get_user(user).await.unwrap();
    assert_eq!(
        row.as_ref().map(|r| r.reserved_bytes).unwrap_or(0),
        0,
        "reservation released"
    );
    assert_eq!(
        row.as_ref().map(|r| r.total_bytes).unwrap_or(0),
        0,
        "usage unchanged"
    );
    assert!(
        app.temp_files().await.is_empty(),
        "temp files: {:?}",
        app.temp_files().await
    );
    assert!(app.blobs_on_disk().await.is_empty());
    assert!(app.list_all(user, "").await.is_empty());
}

both!(truncated_and_short_bodies_leave_nothing, |b| async move {
    let app = spawn_app(b).await;
    let boundary = "ZZ";
    // Multipart without its closing boundary (complete Content-Length).
    let body = multipart(boundary, &png_bytes(300_000), false);
    let head = format!("POST /api/files/upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", token("tr"), body.len());
    let answer = send_raw(&app, head, &body, true).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_nothing_left(&app, "tr").await;

    // A body shorter than its Content-Length: the form's closing boundary
    // arrives before the declared length, which is refused at once.
    let body = multipart(boundary, &png_bytes(300_000), true);
    let head = format!("POST /api/files/upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {}\r\n\r\n", token("tr"), body.len() + 5000);
    let mut s = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&body).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut answer))
        .await
        .expect("an answer")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]).to_string();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("body ended"), "{answer}");
    drop(s);
    assert_nothing_left(&app, "tr").await;

    // A body longer than its Content-Length: the extra bytes are not part of
    // this request, so the multipart body is cut and refused.
    let body = multipart(boundary, &png_bytes(300_000), true);
    let head = format!("POST /api/files/upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", token("tr"), body.len() - 100);
    let answer = send_raw(&app, head, &body, true).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_nothing_left(&app, "tr").await;
});

/// Waits until `user` holds a reservation (an upload is in flight).
async fn wait_for_reservation(app: &TestApp, user: &str) {
    for _ in 0..200 {
        if let Some(r) = app.state.meta.get_user(user).await.unwrap() {
            if r.reserved_bytes > 0 {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("no upload of {user} got a reservation");
}

both!(
    client_vanishing_mid_upload_releases_everything,
    |b| async move {
        let app = spawn_app(b).await;
        let boundary = "VV";
        let body = multipart(boundary, &png_bytes(2_000_000), true);
        let head = format!("POST /api/files/upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {}\r\n\r\n", token("gone"), body.len());
        // Send half, wait until the server holds a reservation, then drop the socket.
        let mut s = tokio::net::TcpStream::connect(app.addr).await.unwrap();
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(&body[..body.len() / 2]).await.unwrap();
        wait_for_reservation(&app, "gone").await;
        drop(s);
        assert_nothing_left(&app, "gone").await;
    }
);

/// A volume whose writes fail with "no space" after `budget` bytes.
struct FullDisk {
    inner: LocalStore,
    budget: u64,
}

struct FullWriter {
    inner: Box<dyn BlobWriter>,
    left: u64,
}

#[async_trait]
impl BlobWriter for FullWriter {
    async fn write(&mut self, chunk: Bytes) -> BlobResult<()> {
        if chunk.len() as u64 > self.left {
            return Err(BlobError::NoSpace);
        }
        self.left -= chunk.len() as u64;
        self.inner.write(chunk).await
    }
    async fn finish(self: Box<Self>) -> BlobResult<u64> {
        self.inner.finish().await
    }
}

#[async_trait]
impl BlobStore for FullDisk {
    async fn stage(&self, id: Uuid, offset: u64) -> BlobResult<Box<dyn BlobWriter>> {
        Ok(Box::new(FullWriter {
            inner: self.inner.stage(id, offset).await?,
            left: self.budget,
        }))
    }
    async fn staged_len(&self, id: Uuid) -> BlobResult<Option<u64>> {
        self.inner.staged_len(id).await
    }
    async fn read_staged(&self, id: Uuid, r: Range<u64>) -> BlobResult<ByteStream> {
        self.inner.read_staged(id, r).await
    }
    async fn publish(&self, id: Uuid, key: &str) -> BlobResult<()> {
        self.inner.publish(id, key).await
    }
    async fn discard(&self, id: Uuid) -> BlobResult<()> {
        self.inner.discard(id).await
    }
    async fn read(&self, key: &str, r: Range<u64>) -> BlobResult<ByteStream> {
        self.inner.read(key, r).await
    }
    async fn len(&self, key: &str) -> BlobResult<u64> {
        self.inner.len(key).await
    }
    async fn remove(&self, key: &str) -> BlobResult<()> {
        self.inner.remove(key).await
    }
    async fn put_small(&self, key: &str, data: Bytes) -> BlobResult<()> {
        self.inner.put_small(key, data).await
    }
    async fn copy(&self, from: &str, to: &str) -> BlobResult<()> {
        self.inner.copy(from, to).await
    }
    fn local_path(&self, key: &str) -> Option<PathBuf> {
        self.inner.local_path(key)
    }
    async fn check_writable(&self) -> BlobResult<()> {
        self.inner.check_writable().await
    }
    async fn list_prefix(&self, prefix: &str) -> BlobResult<Vec<BlobEntry>> {
        self.inner.list_prefix(prefix).await
    }
    async fn list_top(&self) -> BlobResult<(Vec<String>, Vec<BlobEntry>)> {
        self.inner.list_top().await
    }
    async fn list_staged(&self) -> BlobResult<Vec<StagedEntry>> {
        self.inner.list_staged().await
    }
    fn kind(&self) -> &'static str {
        "local"
    }
}

local!(a_full_disk_fails_cleanly, |b| async move {
    let mut app = spawn_app(b).await;
    let root = app.storage_root();
    app.state.blobs = Arc::new(FullDisk {
        inner: LocalStore::open(&root).unwrap(),
        budget: 100_000,
    });
    // Restart the server with the faulty volume on the same state.
    app.stop().await;
    let listener = tokio::net::TcpListener::bind(app.addr).await.unwrap();
    let st = app.state.clone();
    let server = tokio::spawn(async move {
        stowage::app::serve(listener, st, std::future::pending())
            .await
            .unwrap()
    });
    let r = app.upload("full", "big.png", png_bytes(500_000)).await;
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "unavailable");
    assert_nothing_left(&app, "full").await;
    // Small files still fit.
    assert_eq!(
        app.upload("full", "small.png", png_bytes(1000))
            .await
            .status(),
        201
    );
    server.abort();
});

/// PostgreSQL goes away (connections refused and cut) and comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_goes_away_answers_503_and_recovers() {
    use sqlx::Connection;
    let app = spawn_app_with(Backend::Postgres, |_| {}).await;
    app.upload_ok("db", "before.png", png_bytes(1000)).await;
    let name = app.db_url.rsplit('/').next().unwrap().to_string();
    let mut admin = sqlx::PgConnection::connect(&pg_admin_url()).await.unwrap();
    sqlx::query(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false"))
        .execute(&mut admin)
        .await
        .unwrap();
    sqlx::query(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
    ))
    .execute(&mut admin)
    .await
    .unwrap();

    let r = app.upload("db", "during.png", png_bytes(2000)).await;
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "unavailable");
    assert!(r_retry_after_is_set(&app).await);
    let r = app.get_public("/readyz").await;
    assert_eq!(r.status(), 503);
    assert_eq!(app.blobs_on_disk().await.len(), 1, "nothing new was stored");
    assert!(app.temp_files().await.is_empty());

    sqlx::query(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"))
        .execute(&mut admin)
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while app.get_public("/readyz").await.status() != 200 {
        assert!(std::time::Instant::now() < deadline, "recovers");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    app.upload_ok("db", "after.png", png_bytes(3000)).await;
    app.assert_consistent("db").await;
    assert_eq!(app.usage("db").await["total_bytes"], 4000);
}

async fn r_retry_after_is_set(app: &TestApp) -> bool {
    let r = app.get("db", "/api/storage/usage").await;
    r.status() == 503 && r.headers().get("retry-after").is_some()
}

#[tokio::test]
async fn cors_allows_only_configured_origins() {
    let app = spawn_app_with(Backend::Sqlite, |c| {
        c.cors_origins = vec!["https://app.example.com".into()]
    })
    .await;
    let pre = |origin: &'static str| {
        app.client
            .request(reqwest::Method::OPTIONS, app.url("/api/uploads"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "tus-resumable,upload-length,authorization",
            )
            .send()
    };
    let r = pre("https://app.example.com").await.unwrap();
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert_eq!(r.headers()["access-control-allow-credentials"], "true");
    let r = pre("https://evil.example.com").await.unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
    let r = app.get("c", "/api/storage/usage").await;
    assert!(
        r.headers().get("access-control-allow-origin").is_none(),
        "no Origin, no CORS headers"
    );
    let r = app
        .client
        .get(app.url("/api/storage/usage"))
        .bearer_auth(token("c"))
        .header("origin", "https://app.example.com")
        .send()
        .await
        .unwrap();
    let exposed = r.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_lowercase();
    assert!(
        exposed.contains("upload-offset") && exposed.contains("stowage-file-id"),
        "{exposed}"
    );
}
