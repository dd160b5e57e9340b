//! Crash safety: SIGKILL the real `stowage serve` while uploads stream,
//! restart it, run `stowage cleanup`, and find usage equal to the sum of the
//! listed files, every listed file whole on disk, and no stray file.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;

#[path = "support/serve.rs"]
mod serve;

use serve::{dev_login, Launch, Serve, TestDb, BIN};

/// The environment of a process on `dir`'s data dir and volume and on
/// database `db`, for `stowage serve` and the commands an operator runs.
fn envs(dir: &Path, db: &str) -> Vec<(String, String)> {
    vec![
        (
            "STOWAGE_DATA_DIR".into(),
            dir.join("data").display().to_string(),
        ),
        ("STOWAGE_DATABASE_URL".into(), db.into()),
        (
            "STOWAGE_STORAGE_ROOT".into(),
            dir.join("data/users").display().to_string(),
        ),
        ("STOWAGE_RATE_LIMIT_USER".into(), "100000".into()),
        ("STOWAGE_RATE_LIMIT_IP".into(), "100000".into()),
        ("RUST_LOG".into(), "warn".into()),
    ]
}

async fn start(dir: &Path, db: &str) -> Serve {
    start_with(dir, db, &[]).await
}

async fn start_with(dir: &Path, db: &str, extra: &[(String, String)]) -> Serve {
    Launch::new(0)
        .envs(envs(dir, db))
        .envs(extra.iter().cloned())
        .start()
        .await
}

fn png_like(len: usize, seed: u8) -> Vec<u8> {
    let mut v = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    v.extend((0..len - 16).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)));
    v
}

/// A multipart upload whose body trickles in, so the kill lands mid-stream.
async fn slow_upload(base: String, token: String, i: u8) -> Option<u16> {
    let data = png_like(4 * 1024 * 1024, i);
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        data.chunks(64 * 1024).map(|c| Ok(c.to_vec())).collect();
    let delay = Duration::from_millis(15 + i as u64 % 7);
    let stream = futures::StreamExt::then(futures::stream::iter(chunks), move |c| async move {
        tokio::time::sleep(delay).await;
        c
    });
    let part = reqwest::multipart::Part::stream(reqwest::Body::wrap_stream(stream))
        .file_name(format!("f{i}.png"));
    let form = reqwest::multipart::Form::new().part("file", part);
    let r = reqwest::Client::new()
        .post(format!("{base}/api/files/upload"))
        .bearer_auth(token)
        .multipart(form)
        .send()
        .await
        .ok()?;
    Some(r.status().as_u16())
}

fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

async fn crash_and_recover(db: &str, dir: &Path) {
    let mut server = start(dir, db).await;
    let token = dev_login(&server.base, "crashy").await;
    // A few committed files first.
    for i in 0..3u8 {
        assert_eq!(
            slow_upload(server.base.clone(), token.clone(), 100 + i).await,
            Some(201)
        );
    }
    let uploads: Vec<_> = (0..8u8)
        .map(|i| tokio::spawn(slow_upload(server.base.clone(), token.clone(), i)))
        .collect();
    // The kill lands while uploads are staging bytes, not after a fixed
    // pause: after 1.5 s, on a quiet host, all 8 had often finished (the
    // kill cut none on SQLite and PostgreSQL). Their starts spread out, so
    // fewer than half may be staging at any one moment (3 of 8 on MariaDB).
    let staging = dir.join("data/users/.tmp");
    poll_until(20, "uploads in flight", || {
        std::fs::read_dir(&staging)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
            .count()
            >= 2
    })
    .await;
    server.kill().await; // SIGKILL
    let mut cut = 0;
    for u in uploads {
        if u.await.unwrap() != Some(201) {
            cut += 1;
        }
    }
    assert!(cut > 0, "the kill cut at least one upload mid-stream");

    // Restart (which releases what the dead process held, with its temp
    // files, at once: no reservation TTL to wait for), clean up.
    let server = start(dir, db).await;
    let out = Command::new(BIN)
        .args(["cleanup", "--temp-grace-secs", "0", "--json"])
        .envs(envs(dir, db))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The restart released them first; the report is well-formed and
    // nothing is left below.
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["expired_reservations"].is_u64(), "{report}");

    let c = reqwest::Client::new();
    let usage: Value = c
        .get(format!("{}/api/storage/usage", server.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let list: Value = c
        .get(format!("{}/api/files?limit=200", server.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let files = list["files"].as_array().unwrap();
    assert!(files.len() >= 3);
    let sum: i64 = files.iter().map(|f| f["file_size"].as_i64().unwrap()).sum();
    assert_eq!(
        usage["total_bytes"].as_i64().unwrap(),
        sum,
        "usage equals the listed files"
    );
    assert_eq!(usage["file_count"].as_i64().unwrap(), files.len() as i64);

    // Every listed file is whole; nothing else is on the volume.
    let root = dir.join("data/users");
    let on_disk: Vec<PathBuf> = walk(&root)
        .into_iter()
        .filter(|p| {
            !p.components()
                .any(|c| c.as_os_str() == ".thumbs" || c.as_os_str() == "media")
        })
        .collect();
    for f in files {
        let id = f["id"].as_str().unwrap();
        let p = on_disk
            .iter()
            .find(|p| p.file_stem().unwrap().to_str().unwrap() == id)
            .unwrap_or_else(|| panic!("blob of {id}"));
        assert_eq!(
            std::fs::metadata(p).unwrap().len() as i64,
            f["file_size"].as_i64().unwrap()
        );
        let r = c
            .get(format!("{}/api/files/{id}/download", server.base))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    assert_eq!(on_disk.len(), files.len(), "no stray files: {on_disk:?}");
    let mut server = server;
    server.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_uploads_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/data/stowage.db", dir.path().display());
    crash_and_recover(&db, dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_uploads_postgres() {
    let db = TestDb::postgres().await;
    let dir = tempfile::tempdir().unwrap();
    crash_and_recover(&db.url, dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_uploads_mariadb() {
    let db = TestDb::mariadb().await;
    let dir = tempfile::tempdir().unwrap();
    crash_and_recover(&db.url, dir.path()).await;
}

// ---- webhook delivery across a SIGKILL ----

const HOOK_SECRET: &str = "crash-hook-secret";
const ADMIN: &str = "crash-admin-token";

/// The receiver's own signature check (HMAC-SHA256 of `"<t>.<body>"`).
fn signed(header: &str, body: &[u8]) -> bool {
    use hmac::{Hmac, Mac};
    let mut parts = header.split(',').filter_map(|p| p.split_once('='));
    let (Some(("t", t)), Some(("v1", v1))) = (parts.next(), parts.next()) else {
        return false;
    };
    let Ok(sig) = hex::decode(v1) else {
        return false;
    };
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(HOOK_SECRET.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

#[derive(Default)]
struct Hook {
    /// While true, requests are held (never answered): the kill lands
    /// during a delivery.
    hold: std::sync::atomic::AtomicBool,
    /// Ids of correctly signed requests, in arrival order.
    received: std::sync::Mutex<Vec<String>>,
    /// Ids answered 2xx.
    accepted: std::sync::Mutex<Vec<String>>,
}

async fn hook(
    axum::extract::State(h): axum::extract::State<std::sync::Arc<Hook>>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> axum::http::StatusCode {
    let sig = headers
        .get("stowage-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !signed(sig, &body) {
        return axum::http::StatusCode::UNAUTHORIZED;
    }
    let ev: Value = serde_json::from_slice(&body).unwrap();
    let id = ev["id"].as_str().unwrap().to_string();
    h.received.lock().unwrap().push(id.clone());
    if h.hold.load(std::sync::atomic::Ordering::SeqCst) {
        while h.hold.load(std::sync::atomic::Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Its sender is gone; this answer reaches no one.
        return axum::http::StatusCode::SERVICE_UNAVAILABLE;
    }
    h.accepted.lock().unwrap().push(id);
    axum::http::StatusCode::OK
}

async fn poll_until(secs: u64, what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn webhook_crash_and_recover(db: &str, dir: &Path) {
    let h = std::sync::Arc::new(Hook::default());
    h.hold.store(true, std::sync::atomic::Ordering::SeqCst);
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(hook))
        .with_state(h.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let extra: Vec<(String, String)> = [
        ("STOWAGE_WEBHOOK_URL", url.as_str()),
        ("STOWAGE_WEBHOOK_SECRET", HOOK_SECRET),
        ("STOWAGE_WEBHOOK_POLL_MS", "50"),
        ("STOWAGE_WEBHOOK_BACKOFF_BASE_MS", "20"),
        ("STOWAGE_WEBHOOK_BACKOFF_MAX_MS", "100"),
        ("STOWAGE_WEBHOOK_TIMEOUT_MS", "600000"),
        ("STOWAGE_ADMIN_TOKEN", ADMIN),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();

    let mut server = start_with(dir, db, &extra).await;
    let token = dev_login(&server.base, "hooked").await;
    for i in 0..4u8 {
        let form = reqwest::multipart::Form::new().part(
            "file",
            reqwest::multipart::Part::bytes(png_like(2048, i)).file_name(format!("h{i}.png")),
        );
        let r = reqwest::Client::new()
            .post(format!("{}/api/files/upload", server.base))
            .bearer_auth(&token)
            .multipart(form)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    // A delivery is in flight (held by the receiver): kill the server.
    let h2 = h.clone();
    poll_until(30, "a delivery in flight", move || {
        !h2.received.lock().unwrap().is_empty()
    })
    .await;
    server.kill().await; // SIGKILL
    let before_kill = h.received.lock().unwrap().clone();
    assert!(h.accepted.lock().unwrap().is_empty());

    // The receiver answers again; a new process takes the delivery over.
    h.hold.store(false, std::sync::atomic::Ordering::SeqCst);
    let mut server = start_with(dir, db, &extra).await;
    let c = reqwest::Client::new();
    let events = {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let v: Value = c
                .get(format!("{}/api/admin/events?limit=200", server.base))
                .bearer_auth(ADMIN)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let evs = v["events"].as_array().unwrap().clone();
            // 4 × file.created, and the media job's verdict on the fake
            // PNGs (one whose job the kill interrupted waits for its job
            // lease, minutes: not counted on).
            let created = evs.iter().filter(|e| e["type"] == "file.created").count();
            if created == 4 && evs.iter().all(|e| e["status"] == "delivered") {
                break evs;
            }
            assert!(Instant::now() < deadline, "not all delivered: {v:#}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let accepted = h.accepted.lock().unwrap().clone();
    for e in &events {
        let id = e["id"].as_str().unwrap();
        assert!(accepted.iter().any(|a| a == id), "{id} was delivered");
    }
    // What was in flight at the kill came again, with the same id.
    for id in &before_kill {
        assert!(accepted.contains(id), "{id} delivered after the restart");
        assert!(events.iter().any(|e| e["id"] == id.as_str()));
    }
    server.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_webhook_delivery_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/data/stowage.db", dir.path().display());
    webhook_crash_and_recover(&db, dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_webhook_delivery_postgres() {
    let db = TestDb::postgres().await;
    let dir = tempfile::tempdir().unwrap();
    webhook_crash_and_recover(&db.url, dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_webhook_delivery_mariadb() {
    let db = TestDb::mariadb().await;
    let dir = tempfile::tempdir().unwrap();
    webhook_crash_and_recover(&db.url, dir.path()).await;
}
