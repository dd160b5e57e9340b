//! Dependencies cannot be turned against the service (SPEC §9): `/readyz`
//! stays cheap and says nothing about why a component is down; a clamd that
//! stops answering fails the upload on time and releases its reservation;
//! image decodes that outlive their timeout keep their slot until they end,
//! so heavy decodes never pile up.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use futures::StreamExt;
use serde_json::Value;
use sqlx::Connection;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

use crate::helpers::*;
use crate::local;

// ---------------------------------------------------------------- /readyz

/// The words a `/readyz` body may hold: states, never causes.
fn assert_only_states(v: &Value) {
    let obj = v.as_object().expect("an object");
    let mut keys: Vec<&str> = obj.keys().map(|k| k.as_str()).collect();
    keys.sort();
    assert_eq!(
        keys,
        ["database", "status", "video_thumbnails", "volume"],
        "{v}"
    );
    for (k, val) in obj {
        let s = val
            .as_str()
            .unwrap_or_else(|| panic!("{k} is not a word: {v}"));
        assert!(
            ["ok", "unavailable", "ready", "on", "off"].contains(&s),
            "{k} names more than a state: {v}"
        );
    }
}

async fn readyz(app: &TestApp) -> (u16, Value) {
    let r = app.get_public("/readyz").await;
    (r.status().as_u16(), r.json().await.unwrap())
}

local!(readyz_names_states_not_errors, |b| async move {
    let app = spawn_app_with(b, |c| c.limits.readyz_cache = Duration::from_millis(100)).await;
    let (s, v) = readyz(&app).await;
    assert_eq!(s, 200, "{v}");
    assert_only_states(&v);
    assert_eq!(v["database"], "ok");
    // The volume's check area is no longer a directory: every write fails
    // with an operating-system error.
    let tmp = app.storage_root().join(".tmp");
    std::fs::remove_dir_all(&tmp).unwrap();
    std::fs::write(&tmp, b"in the way").unwrap();
    if b == Backend::Postgres {
        // And the database refuses every connection.
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
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (s, v) = readyz(&app).await;
    assert_eq!(s, 503, "{v}");
    assert_only_states(&v);
    assert_eq!(v["volume"], "unavailable");
    if b == Backend::Postgres {
        assert_eq!(v["database"], "unavailable");
    }
});

local!(
    readyz_on_a_dead_object_store_says_unavailable_only,
    |b| async move {
        // Nothing listens on this port: every request to the store fails.
        let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = dead.local_addr().unwrap().port();
        drop(dead);
        let app = spawn_app_with(b, |c| fake_bucket(c, port)).await;
        let (s, v) = readyz(&app).await;
        assert_eq!(s, 503, "{v}");
        assert_only_states(&v);
        assert_eq!(v["volume"], "unavailable");
        assert_eq!(v["database"], "ok");
    }
);

/// Points the blob store at an S3 endpoint on `127.0.0.1:port`.
fn fake_bucket(c: &mut stowage::config::Config, port: u16) {
    c.blob_store = stowage::config::BlobBackend::S3;
    c.s3_bucket = Some("readyz".into());
    c.s3_endpoint = Some(format!("http://127.0.0.1:{port}"));
    c.s3_region = "us-east-1".into();
    c.s3_access_key_id = Some("k".into());
    c.s3_secret_access_key = Some(stowage::config::Secret("s".into()));
}

/// A stand-in object store that answers every request with an empty 200
/// (204 to a `DELETE`) after `delay`, counting the `PUT`s (each readiness check writes one
/// probe object).
async fn counting_bucket(delay: Duration) -> (u16, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let puts = Arc::new(AtomicUsize::new(0));
    let counted = puts.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = l.accept().await {
            let puts = counted.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    // One request: headers, then Content-Length bytes of body.
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        let mut chunk = [0u8; 4096];
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    while buf.len() < head_end + len {
                        let mut chunk = [0u8; 4096];
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    if head.starts_with("put ") {
                        puts.fetch_add(1, Ordering::SeqCst);
                    }
                    buf.drain(..head_end + len);
                    tokio::time::sleep(delay).await;
                    let reply: &[u8] = if head.starts_with("delete ") {
                        b"HTTP/1.1 204 No Content\r\n\r\n"
                    } else {
                        b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\netag: \"e\"\r\n\r\n"
                    };
                    if sock.write_all(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, puts)
}

local!(readyz_hits_share_one_check_per_window, |b| async move {
    let (port, puts) = counting_bucket(Duration::from_millis(300)).await;
    let app = spawn_app_with(b, |c| {
        fake_bucket(c, port);
        c.limits.readyz_cache = Duration::from_secs(5);
    })
    .await;
    // 200 hits, 32 at a time, all inside one cache window: the first ones
    // arrive while the first check is still running (it takes 600 ms at
    // this store), the rest find its result.
    let started = Instant::now();
    let codes: Vec<u16> = futures::stream::iter(0..200)
        .map(|_| async { readyz(&app).await.0 })
        .buffer_unordered(32)
        .collect()
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "inside the window"
    );
    assert!(codes.iter().all(|c| *c == 200), "{codes:?}");
    let checks = puts.load(Ordering::SeqCst);
    assert!(
        (1..=2).contains(&checks),
        "200 hits ran {checks} real checks"
    );
    // Once the window has passed, the next hit checks again.
    tokio::time::sleep(Duration::from_secs(6).saturating_sub(started.elapsed())).await;
    assert_eq!(readyz(&app).await.0, 200);
    assert_eq!(puts.load(Ordering::SeqCst), checks + 1);
});

// ---------------------------------------------------------------- clamd

/// How a stand-in clamd misbehaves.
#[derive(Clone, Copy)]
enum Clamd {
    /// Accepts, never reads, never answers.
    Mute,
    /// Reads the whole stream, then answers after `secs`.
    Slow(u64),
}

/// Starts a stand-in clamd on a TCP port; returns `tcp://…`.
async fn fake_clamd(how: Clamd) -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut sock, _)) = l.accept().await {
            match how {
                Clamd::Mute => held.push(sock),
                Clamd::Slow(secs) => {
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 64 * 1024];
                        let mut seen = Vec::new();
                        // Until the zero-length chunk that ends INSTREAM.
                        while !seen.ends_with(&[0, 0, 0, 0]) {
                            match sock.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => {
                                    seen.extend_from_slice(&buf[..n]);
                                    let keep = seen.len().saturating_sub(4);
                                    seen.drain(..keep);
                                }
                            }
                        }
                        tokio::time::sleep(Duration::from_secs(secs)).await;
                        let _ = sock.write_all(b"stream: OK\0").await;
                    });
                }
            }
        }
    });
    format!("tcp://{addr}")
}

local!(
    a_clamd_that_stops_answering_fails_the_upload_on_time,
    |b| async move {
        for (how, what, size) in [
            (
                Clamd::Mute,
                "never reads (small file: the verdict waits)",
                3000,
            ),
            (
                Clamd::Mute,
                "never reads (large file: a write waits)",
                16 << 20,
            ),
            (Clamd::Slow(6), "answers after 6 s", 3000),
        ] {
            let clamd = fake_clamd(how).await;
            let app = spawn_app_with(b, |c| {
                c.clamd = Some(clamd);
                c.limits.clamd_timeout = Duration::from_secs(1);
            })
            .await;
            let user = "scanwait";
            app.admin_set_quota(user, 64 << 20).await;
            let started = Instant::now();
            let r = tokio::time::timeout(
                Duration::from_secs(15),
                app.upload(user, "a.png", png_bytes(size)),
            )
            .await
            .unwrap_or_else(|_| panic!("{what}: the upload still hangs after 15 s"));
            let took = started.elapsed();
            assert_eq!(r.status(), 503, "{what}");
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["error"]["code"], "unavailable", "{what}");
            assert!(took < Duration::from_secs(5), "{what}: took {took:?}");
            // Nothing stored, nothing reserved (the release runs right after
            // the answer, off the request).
            let deadline = Instant::now() + Duration::from_secs(10);
            while app
                .state
                .meta
                .get_user(user)
                .await
                .unwrap()
                .unwrap()
                .reserved_bytes
                != 0
                && Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert!(app.blobs_on_disk().await.is_empty(), "{what}");
            assert!(app.temp_files().await.is_empty(), "{what}");
            assert_eq!(app.usage(user).await["total_bytes"], 0, "{what}");
            let row = app.state.meta.get_user(user).await.unwrap().unwrap();
            assert_eq!(row.reserved_bytes, 0, "{what}");
        }
    }
);

// ---------------------------------------------------------------- decodes

/// A PNG that takes far longer than the test's media timeout to decode.
fn heavy_png() -> Vec<u8> {
    real_png(HEAVY_SIDE, HEAVY_SIDE)
}

const HEAVY_SIDE: u32 = 4000;

local!(timed_out_decodes_keep_their_slot, |b| async move {
    let app = spawn_app_with(b, |c| {
        c.job_workers = 3;
        c.limits.media_concurrency = 1;
        c.limits.media_timeout = Duration::from_millis(100);
    })
    .await;
    let png = tokio::task::spawn_blocking(heavy_png).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..3 {
        let f = app
            .upload_ok("heavy", &format!("{i}.png"), png.clone())
            .await;
        ids.push(f["id"].as_str().unwrap().to_string());
    }
    // Every job fails on its timeout (so each decode outlived it) ...
    let deadline = Instant::now() + Duration::from_secs(120);
    let jobs = loop {
        let v: Value = app.admin_json("/api/admin/jobs/failed").await;
        let jobs = v["jobs"].as_array().unwrap().clone();
        if jobs.len() >= 3 || Instant::now() > deadline {
            break jobs;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(jobs.len(), 3, "{jobs:?}");
    for j in &jobs {
        assert!(
            j["last_error"].as_str().unwrap().contains("timed out"),
            "{j}"
        );
    }
    // ... yet the decodes ran one at a time, each holding the one slot
    // until it really ended.
    let deadline = Instant::now() + Duration::from_secs(60);
    while app.state.media.decodes_running() > 0 {
        assert!(Instant::now() < deadline, "decodes end");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(app.state.media.decodes_peak(), 1);
    // The files stay whole and downloadable, without thumbnails, and the
    // abandoned decodes left no scratch output behind.
    for id in &ids {
        let r = app.get("heavy", &format!("/api/files/{id}/download")).await;
        assert_eq!(r.status(), 200);
        assert_eq!(sha256_hex(&r.bytes().await.unwrap()), sha256_hex(&png));
        let (_, f) = app.get_json("heavy", &format!("/api/files/{id}")).await;
        assert!(f["thumbnail_url"].is_null(), "{f}");
    }
    let scratch = app.storage_root().join(".tmp/media");
    let left: Vec<_> = std::fs::read_dir(&scratch)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
});
