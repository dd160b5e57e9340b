//! tus 1.0.0 at /api/uploads: protocol, extensions, quota, locking across
//! processes, restarts, expiry, and real clients (tus-js-client, tuspy).

use std::{
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use base64::{engine::general_purpose::STANDARD as B64, Engine};
use futures::StreamExt;
use reqwest::{Method, Response};
use serde_json::Value;
use sha1::Digest as _;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use crate::{both, helpers::*};

const OCTET: &str = "application/offset+octet-stream";

fn b64(s: &str) -> String {
    B64.encode(s.as_bytes())
}

pub(crate) fn hdr<'a>(r: &'a Response, name: &str) -> Option<&'a str> {
    r.headers().get(name).and_then(|v| v.to_str().ok())
}

async fn create(app: &TestApp, user: &str, len: u64, meta: &str) -> Response {
    let mut rb = app
        .client
        .post(app.url("/api/uploads"))
        .bearer_auth(token(user))
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Length", len.to_string());
    if !meta.is_empty() {
        rb = rb.header("Upload-Metadata", meta);
    }
    rb.send().await.unwrap()
}

/// Creates and returns the Location path.
pub(crate) async fn create_ok(app: &TestApp, user: &str, len: u64, meta: &str) -> String {
    let r = create(app, user, len, meta).await;
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
    let loc = hdr(&r, "location").unwrap().to_string();
    assert!(loc.starts_with("/api/uploads/"), "{loc}");
    assert_eq!(hdr(&r, "tus-resumable"), Some("1.0.0"));
    assert!(hdr(&r, "upload-expires").unwrap().ends_with(" GMT"));
    loc
}

pub(crate) async fn patch(
    app: &TestApp,
    user: &str,
    loc: &str,
    offset: u64,
    data: Vec<u8>,
    extra: &[(&str, String)],
) -> Response {
    let mut rb = app
        .client
        .patch(app.url(loc))
        .bearer_auth(token(user))
        .header("Tus-Resumable", "1.0.0")
        .header("Content-Type", OCTET)
        .header("Upload-Offset", offset.to_string());
    for (k, v) in extra {
        rb = rb.header(*k, v);
    }
    rb.body(data).send().await.unwrap()
}

pub(crate) async fn head(app: &TestApp, user: &str, loc: &str) -> Response {
    app.client
        .head(app.url(loc))
        .bearer_auth(token(user))
        .header("Tus-Resumable", "1.0.0")
        .send()
        .await
        .unwrap()
}

pub(crate) async fn offset_of(app: &TestApp, user: &str, loc: &str) -> u64 {
    let r = head(app, user, loc).await;
    assert_eq!(r.status(), 200);
    hdr(&r, "upload-offset").unwrap().parse().unwrap()
}

pub(crate) async fn reserved(app: &TestApp, user: &str) -> i64 {
    app.state
        .meta
        .get_user(user)
        .await
        .unwrap()
        .map(|u| u.reserved_bytes)
        .unwrap_or(0)
}

pub(crate) async fn download(app: &TestApp, user: &str, id: &str) -> Vec<u8> {
    let r = app.get(user, &format!("/api/files/{id}/download")).await;
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap().to_vec()
}

async fn error_code(r: Response) -> String {
    let v: Value = r.json().await.unwrap_or(Value::Null);
    v["error"]["code"].as_str().unwrap_or("").to_string()
}

both!(options_discovery, |b| async move {
    let app = spawn_app(b).await;
    let r = app
        .client
        .request(Method::OPTIONS, app.url("/api/uploads"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(hdr(&r, "tus-resumable"), Some("1.0.0"));
    assert_eq!(hdr(&r, "tus-version"), Some("1.0.0"));
    let ext = hdr(&r, "tus-extension").unwrap();
    for e in [
        "creation",
        "creation-with-upload",
        "termination",
        "expiration",
        "checksum",
    ] {
        assert!(ext.split(',').any(|x| x == e), "{ext}");
    }
    assert!(!ext.contains("creation-defer-length"));
    assert_eq!(
        hdr(&r, "tus-max-size"),
        Some(app.state.config.max_file_size.to_string().as_str())
    );
    assert_eq!(hdr(&r, "tus-checksum-algorithm"), Some("sha1,sha256"));
    // Trailing slash too.
    let r = app
        .client
        .request(Method::OPTIONS, app.url("/api/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
});

both!(create_head_patch_complete, |b| async move {
    let app = spawn_app(b).await;
    let data = png_bytes(300_000);
    let meta = format!(
        "filename {},file_type {},tags {},package_name {},filetype {}",
        b64("holiday.png"),
        b64("image"),
        b64("a, b,a"),
        b64("pkg"),
        b64("image/png")
    );
    let loc = create_ok(&app, "alice", data.len() as u64, &meta).await;
    assert_eq!(reserved(&app, "alice").await, 300_000);
    let r = head(&app, "alice", &loc).await;
    assert_eq!(r.status(), 200);
    assert_eq!(hdr(&r, "upload-offset"), Some("0"));
    assert_eq!(hdr(&r, "upload-length"), Some("300000"));
    assert_eq!(hdr(&r, "cache-control"), Some("no-store"));
    assert!(hdr(&r, "upload-metadata")
        .unwrap()
        .contains(&format!("filename {}", b64("holiday.png"))));
    // Partial data is never listed.
    let r = patch(&app, "alice", &loc, 0, data[..100_000].to_vec(), &[]).await;
    assert_eq!(r.status(), 204);
    assert_eq!(hdr(&r, "upload-offset"), Some("100000"));
    assert!(hdr(&r, "upload-expires").is_some());
    assert!(hdr(&r, "stowage-file-id").is_none());
    assert_eq!(offset_of(&app, "alice", &loc).await, 100_000);
    assert!(app.list_all("alice", "").await.is_empty());
    let r = patch(&app, "alice", &loc, 100_000, data[100_000..].to_vec(), &[]).await;
    assert_eq!(r.status(), 204);
    assert_eq!(hdr(&r, "upload-offset"), Some("300000"));
    let id = hdr(&r, "stowage-file-id").unwrap().to_string();
    assert_eq!(loc, format!("/api/uploads/{id}"));
    let (s, f) = app.get_json("alice", &format!("/api/files/{id}")).await;
    assert_eq!(s, 200);
    assert_eq!(f["file_name"], "holiday.png");
    assert_eq!(f["file_type"], "image");
    assert_eq!(f["mime_type"], "image/png");
    assert_eq!(f["sha256"], sha256_hex(&data));
    assert_eq!(f["tags"], serde_json::json!(["a", "b"]));
    assert_eq!(f["package_name"], "pkg");
    assert_eq!(download(&app, "alice", &id).await, data);
    assert_eq!(reserved(&app, "alice").await, 0);
    // The finished upload still answers HEAD (full offset) and GET (bytes).
    let r = head(&app, "alice", &loc).await;
    assert_eq!(r.status(), 200);
    assert_eq!(hdr(&r, "upload-offset"), Some("300000"));
    assert_eq!(hdr(&r, "stowage-file-id"), Some(id.as_str()));
    let r = app.get("alice", &loc).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().to_vec(), data);
    assert_eq!(app.list_all("alice", "").await.len(), 1);
    assert!(
        app.temp_files().await.is_empty(),
        "{:?}",
        app.temp_files().await
    );
    app.assert_consistent("alice").await;
});

both!(protocol_errors, |b| async move {
    let app = spawn_app(b).await;
    let loc = create_ok(&app, "alice", 1000, "").await;
    // 412 without (or with another) Tus-Resumable, with Tus-Version.
    for v in [None, Some("0.2.2")] {
        let mut rb = app
            .client
            .post(app.url("/api/uploads"))
            .bearer_auth(token("alice"))
            .header("Upload-Length", "10");
        if let Some(v) = v {
            rb = rb.header("Tus-Resumable", v);
        }
        let r = rb.send().await.unwrap();
        assert_eq!(r.status(), 412);
        assert_eq!(hdr(&r, "tus-version"), Some("1.0.0"));
        assert_eq!(hdr(&r, "tus-resumable"), Some("1.0.0"));
        assert_eq!(error_code(r).await, "unsupported_version");
    }
    let r = app
        .client
        .patch(app.url(&loc))
        .bearer_auth(token("alice"))
        .header("Content-Type", OCTET)
        .header("Upload-Offset", "0")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 412);
    // 415 for a wrong PATCH Content-Type.
    let r = app
        .client
        .patch(app.url(&loc))
        .bearer_auth(token("alice"))
        .header("Tus-Resumable", "1.0.0")
        .header("Content-Type", "application/octet-stream")
        .header("Upload-Offset", "0")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    assert_eq!(hdr(&r, "tus-resumable"), Some("1.0.0"));
    assert_eq!(error_code(r).await, "unsupported_media_type");
    // 409 on an offset mismatch; nothing written.
    let r = patch(&app, "alice", &loc, 5, b"hello".to_vec(), &[]).await;
    assert_eq!(r.status(), 409);
    assert_eq!(error_code(r).await, "conflict");
    assert_eq!(offset_of(&app, "alice", &loc).await, 0);
    // 400: missing/bad Upload-Offset, missing Upload-Length, deferred length, bad metadata.
    let r = app
        .client
        .patch(app.url(&loc))
        .bearer_auth(token("alice"))
        .header("Tus-Resumable", "1.0.0")
        .header("Content-Type", OCTET)
        .header("Upload-Offset", "-1")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = app
        .client
        .post(app.url("/api/uploads"))
        .bearer_auth(token("alice"))
        .header("Tus-Resumable", "1.0.0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = app
        .client
        .post(app.url("/api/uploads"))
        .bearer_auth(token("alice"))
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Defer-Length", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        create(&app, "alice", 10, "filename !!!").await.status(),
        400
    );
    assert_eq!(
        create(
            &app,
            "alice",
            10,
            &format!("file_type {}", b64("spreadsheet"))
        )
        .await
        .status(),
        400
    );
    // A body longer than Upload-Length: 413, nothing kept.
    let r = patch(&app, "alice", &loc, 0, vec![0u8; 1001], &[]).await;
    assert_eq!(r.status(), 413);
    assert_eq!(offset_of(&app, "alice", &loc).await, 0);
    // No session: 401; bad id: 404.
    let r = app
        .client
        .head(app.url(&loc))
        .header("Tus-Resumable", "1.0.0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        head(&app, "alice", "/api/uploads/not-a-uuid")
            .await
            .status(),
        404
    );
    // Content not of an accepted type: the completing PATCH is 415 and the
    // upload and its reservation are gone.
    let r = patch(&app, "alice", &loc, 0, vec![0u8; 1000], &[]).await;
    assert_eq!(r.status(), 415);
    assert_eq!(head(&app, "alice", &loc).await.status(), 404);
    assert_eq!(reserved(&app, "alice").await, 0);
    assert!(app.temp_files().await.is_empty());
});

both!(checksums, |b| async move {
    let app = spawn_app(b).await;
    let data = png_bytes(30_000);
    let loc = create_ok(&app, "alice", 30_000, "").await;
    let sha1 = |d: &[u8]| B64.encode(sha1::Sha1::digest(d));
    let sha256 = |d: &[u8]| B64.encode(sha2::Sha256::digest(d));
    let r = patch(
        &app,
        "alice",
        &loc,
        0,
        data[..10_000].to_vec(),
        &[("Upload-Checksum", format!("sha1 {}", sha1(&data[..10_000])))],
    )
    .await;
    assert_eq!(r.status(), 204);
    // A mismatch: 460, the offset and the staged bytes stay as they were.
    let r = patch(
        &app,
        "alice",
        &loc,
        10_000,
        vec![7u8; 10_000],
        &[(
            "Upload-Checksum",
            format!("sha256 {}", sha256(&data[10_000..20_000])),
        )],
    )
    .await;
    assert_eq!(r.status(), 460);
    assert_eq!(hdr(&r, "tus-resumable"), Some("1.0.0"));
    assert_eq!(error_code(r).await, "checksum_mismatch");
    assert_eq!(offset_of(&app, "alice", &loc).await, 10_000);
    let id = uuid::Uuid::parse_str(loc.rsplit('/').next().unwrap()).unwrap();
    let staged = app.state.blobs.staged_len(id).await.unwrap();
    assert_eq!(staged, Some(10_000));
    // Unsupported algorithm: 400.
    let r = patch(
        &app,
        "alice",
        &loc,
        10_000,
        data[10_000..20_000].to_vec(),
        &[("Upload-Checksum", "md5 1B2M2Y8AsgTpgAmY7PhCfg==".into())],
    )
    .await;
    assert_eq!(r.status(), 400);
    let r = patch(
        &app,
        "alice",
        &loc,
        10_000,
        data[10_000..20_000].to_vec(),
        &[(
            "Upload-Checksum",
            format!("sha256 {}", sha256(&data[10_000..20_000])),
        )],
    )
    .await;
    assert_eq!(r.status(), 204);
    let r = patch(
        &app,
        "alice",
        &loc,
        20_000,
        data[20_000..].to_vec(),
        &[("Upload-Checksum", format!("sha1 {}", sha1(&data[20_000..])))],
    )
    .await;
    assert_eq!(r.status(), 204);
    let id = hdr(&r, "stowage-file-id").unwrap().to_string();
    assert_eq!(download(&app, "alice", &id).await, data);
    let (_, f) = app.get_json("alice", &format!("/api/files/{id}")).await;
    assert_eq!(f["sha256"], sha256_hex(&data));
});

both!(creation_with_upload, |b| async move {
    let app = spawn_app(b).await;
    let data = png_bytes(50_000);
    // The whole file in the POST: answered with Stowage-File-Id.
    let r = app
        .client
        .post(app.url("/api/uploads/"))
        .bearer_auth(token("alice"))
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Length", "50000")
        .header("Upload-Metadata", format!("filename {}", b64("one.png")))
        .header("Content-Type", OCTET)
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(hdr(&r, "upload-offset"), Some("50000"));
    let id = hdr(&r, "stowage-file-id").unwrap().to_string();
    assert_eq!(hdr(&r, "location").unwrap(), format!("/api/uploads/{id}"));
    assert_eq!(download(&app, "alice", &id).await, data);
    let (_, f) = app.get_json("alice", &format!("/api/files/{id}")).await;
    assert_eq!(f["file_name"], "one.png");
    assert_eq!(f["file_type"], "image");
    // Part of it in the POST, the rest by PATCH.
    let r = app
        .client
        .post(app.url("/api/uploads"))
        .bearer_auth(token("alice"))
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Length", "50000")
        .header("Content-Type", OCTET)
        .body(data[..20_000].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(hdr(&r, "upload-offset"), Some("20000"));
    assert!(hdr(&r, "stowage-file-id").is_none());
    let loc = hdr(&r, "location").unwrap().to_string();
    let r = patch(&app, "alice", &loc, 20_000, data[20_000..].to_vec(), &[]).await;
    assert_eq!(r.status(), 204);
    assert!(hdr(&r, "stowage-file-id").is_some());
    // A body of another type in the POST: 415 before anything is reserved.
    let r = app
        .client
        .post(app.url("/api/uploads"))
        .bearer_auth(token("alice"))
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Length", "50000")
        .header("Content-Type", "text/plain")
        .body(data[..10].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    assert_eq!(reserved(&app, "alice").await, 0);
    app.assert_consistent("alice").await;
});

both!(termination_releases_quota, |b| async move {
    let app = spawn_app(b).await;
    let loc = create_ok(&app, "alice", 1_000_000, "").await;
    assert_eq!(
        patch(&app, "alice", &loc, 0, png_bytes(400_000), &[])
            .await
            .status(),
        204
    );
    assert_eq!(reserved(&app, "alice").await, 1_000_000);
    assert_eq!(app.temp_files().await.len(), 1);
    let del = |user: &'static str| {
        app.client
            .delete(app.url(&loc))
            .bearer_auth(token(user))
            .header("Tus-Resumable", "1.0.0")
            .send()
    };
    let r = del("alice").await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(hdr(&r, "tus-resumable"), Some("1.0.0"));
    assert_eq!(reserved(&app, "alice").await, 0);
    assert!(app.temp_files().await.is_empty());
    assert_eq!(head(&app, "alice", &loc).await.status(), 404);
    assert_eq!(
        patch(&app, "alice", &loc, 400_000, vec![1; 10], &[])
            .await
            .status(),
        404
    );
    assert_eq!(del("alice").await.unwrap().status(), 404);
});

both!(ownership, |b| async move {
    let app = spawn_app(b).await;
    let loc = create_ok(&app, "alice", 1000, "").await;
    assert_eq!(head(&app, "mallory", &loc).await.status(), 404);
    assert_eq!(
        patch(&app, "mallory", &loc, 0, vec![1; 10], &[])
            .await
            .status(),
        404
    );
    let r = app
        .client
        .delete(app.url(&loc))
        .bearer_auth(token("mallory"))
        .header("Tus-Resumable", "1.0.0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(offset_of(&app, "alice", &loc).await, 0);
    // A finished upload is private too.
    let data = png_bytes(1000);
    let r = patch(&app, "alice", &loc, 0, data, &[]).await;
    assert_eq!(r.status(), 204);
    assert_eq!(head(&app, "mallory", &loc).await.status(), 404);
    assert_eq!(app.get("mallory", &loc).await.status(), 404);
});

both!(quota_and_limits, |b| async move {
    let app = spawn_app_with(b, |c| c.max_file_size = 100_000).await;
    // Over the per-file limit (inclusive): 413; at the limit: fine.
    let r = create(&app, "alice", 100_001, "").await;
    assert_eq!(r.status(), 413);
    assert_eq!(error_code(r).await, "file_too_large");
    create_ok(&app, "alice", 100_000, "").await;
    // Over the quota: 507 before anything is stored.
    app.admin_set_quota("bob", 50_000).await;
    let r = create(&app, "bob", 60_000, "").await;
    assert_eq!(r.status(), 507);
    assert_eq!(hdr(&r, "tus-resumable"), Some("1.0.0"));
    assert_eq!(error_code(r).await, "quota_exceeded");
    let loc = create_ok(&app, "bob", 30_000, "").await;
    // The reservation counts: a second one no longer fits.
    assert_eq!(create(&app, "bob", 30_000, "").await.status(), 507);
    assert_eq!(app.temp_files().await.len(), 2);
    assert_eq!(
        patch(&app, "bob", &loc, 0, png_bytes(30_000), &[])
            .await
            .status(),
        204
    );
    assert_eq!(create(&app, "bob", 30_000, "").await.status(), 507);
    app.assert_consistent("bob").await;
});

both!(mixed_tus_and_multipart_respect_quota, |b| async move {
    let app = Arc::new(spawn_app(b).await);
    app.admin_set_quota("carol", 1_000_000).await;
    let size = 150_000usize;
    let mut tasks = Vec::new();
    for i in 0..12 {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            let data = png_bytes(size + i);
            if i % 2 == 0 {
                let r = create(&app, "carol", data.len() as u64, "").await;
                if r.status() == 507 {
                    return false;
                }
                assert_eq!(r.status(), 201);
                let loc = hdr(&r, "location").unwrap().to_string();
                let half = data.len() / 2;
                assert_eq!(
                    patch(&app, "carol", &loc, 0, data[..half].to_vec(), &[])
                        .await
                        .status(),
                    204
                );
                let r = patch(&app, "carol", &loc, half as u64, data[half..].to_vec(), &[]).await;
                assert_eq!(r.status(), 204);
                true
            } else {
                let r = app.upload("carol", "m.png", data).await;
                assert!(r.status() == 201 || r.status() == 507, "{}", r.status());
                r.status() == 201
            }
        }));
    }
    let mut ok = 0;
    for t in tasks {
        if t.await.unwrap() {
            ok += 1;
        }
    }
    assert!((1..=6).contains(&ok), "{ok} uploads fit in 1 MB");
    let u = app.usage("carol").await;
    assert!(u["total_bytes"].as_i64().unwrap() <= 1_000_000);
    assert_eq!(reserved(&app, "carol").await, 0);
    app.assert_consistent("carol").await;
});

/// A body that trickles out `data` in pieces, so two PATCHes overlap.
fn slow_body(data: Vec<u8>, pieces: usize, pause: Duration) -> reqwest::Body {
    let step = data.len().div_ceil(pieces);
    let chunks: Vec<Vec<u8>> = data.chunks(step).map(|c| c.to_vec()).collect();
    let s = futures::stream::iter(chunks).then(move |c| async move {
        tokio::time::sleep(pause).await;
        Ok::<_, std::io::Error>(c)
    });
    reqwest::Body::wrap_stream(s)
}

async fn slow_patch(app: &TestApp, user: &str, loc: &str, offset: u64, data: Vec<u8>) -> Response {
    app.client
        .patch(app.url(loc))
        .bearer_auth(token(user))
        .header("Tus-Resumable", "1.0.0")
        .header("Content-Type", OCTET)
        .header("Upload-Offset", offset.to_string())
        .header("Content-Length", data.len().to_string())
        .body(slow_body(data, 8, Duration::from_millis(40)))
        .send()
        .await
        .unwrap()
}

/// Two PATCHes with different bodies race at offset 0 (on `a` and `b`, which
/// may be one server or two sharing the database). The later one takes the
/// upload over: the earlier one ends, keeping what it made durable, and the
/// later one proceeds (204) when the offset is still 0, else answers 409.
/// Either way the staged bytes are one request's bytes, never a mix, and a
/// PATCH at the offset HEAD reports completes the file with the right sha256.
async fn race(a: &TestApp, b: &TestApp) {
    let full = png_bytes(400_000);
    let half = 200_000;
    let loc = create_ok(a, "dave", full.len() as u64, "").await;
    let mut other = full[..half].to_vec();
    for x in other[16..].iter_mut() {
        *x = x.wrapping_add(1);
    }
    let (r1, r2) = tokio::join!(
        slow_patch(a, "dave", &loc, 0, full[..half].to_vec()),
        slow_patch(b, "dave", &loc, 0, other.clone())
    );
    let (s1, s2) = (r1.status().as_u16(), r2.status().as_u16());
    assert!(
        matches!((s1, s2), (204 | 409, 204 | 409)) && (s1, s2) != (204, 204),
        "statuses {s1} {s2}"
    );
    let off = offset_of(a, "dave", &loc).await as usize;
    assert!(off <= half, "offset {off}");
    let r = patch(b, "dave", &loc, off as u64, full[off..].to_vec(), &[]).await;
    assert_eq!(r.status(), 204);
    let id = hdr(&r, "stowage-file-id").unwrap().to_string();
    let got = download(a, "dave", &id).await;
    assert_eq!(got.len(), full.len());
    assert!(got[off..] == full[off..], "the tail is the last PATCH's");
    assert!(
        got[..off] == full[..off] || got[..off] == other[..off],
        "the first {off} bytes are one request's bytes"
    );
    let (_, f) = a.get_json("dave", &format!("/api/files/{id}")).await;
    assert_eq!(f["sha256"], sha256_hex(&got));
}

both!(racing_patches, |b| async move {
    let app = spawn_app(b).await;
    race(&app, &app).await;
});

both!(racing_patches_across_servers, |b| async move {
    let app = spawn_app(b).await;
    let peer = spawn_peer(&app).await;
    race(&app, &peer).await;
});

both!(resume_on_peer_after_stop, |b| async move {
    let mut app = spawn_app(b).await;
    let data = png_bytes(600_000);
    let loc = create_ok(&app, "erin", data.len() as u64, "").await;
    assert_eq!(
        patch(&app, "erin", &loc, 0, data[..250_000].to_vec(), &[])
            .await
            .status(),
        204
    );
    app.stop().await;
    let peer = spawn_peer(&app).await;
    let off = offset_of(&peer, "erin", &loc).await;
    assert_eq!(off, 250_000);
    let r = patch(&peer, "erin", &loc, off, data[off as usize..].to_vec(), &[]).await;
    assert_eq!(r.status(), 204);
    let id = hdr(&r, "stowage-file-id").unwrap().to_string();
    assert_eq!(download(&peer, "erin", &id).await, data);
    peer.assert_consistent("erin").await;
});

both!(expiry_and_cleanup, |b| async move {
    let app = spawn_app_with(b, |c| c.upload_expiry = Duration::from_secs(1)).await;
    let loc = create_ok(&app, "frank", 100_000, "").await;
    assert_eq!(
        patch(&app, "frank", &loc, 0, png_bytes(1000), &[])
            .await
            .status(),
        204
    );
    let keep = create_ok(&app, "frank", 5_000, "").await;
    assert_eq!(reserved(&app, "frank").await, 105_000);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Expired: gone for the client even before cleanup runs.
    assert_eq!(head(&app, "frank", &loc).await.status(), 404);
    assert_eq!(
        patch(&app, "frank", &loc, 1000, vec![0; 10], &[])
            .await
            .status(),
        404
    );
    let report = stowage::jobs::cleanup::run(&app.state, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(report.expired_uploads, 2);
    assert_eq!(report.expired_reservations, 2);
    assert_eq!(reserved(&app, "frank").await, 0);
    assert!(
        app.temp_files().await.is_empty(),
        "{:?}",
        app.temp_files().await
    );
    let again = stowage::jobs::cleanup::run(&app.state, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(again.expired_uploads, 0);
    assert_eq!(again.expired_reservations, 0);
    assert_eq!(head(&app, "frank", &keep).await.status(), 404);
    app.assert_consistent("frank").await;
});

// ---------------------------------------------------------------- real clients

pub(crate) fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

pub(crate) fn require_clients() {
    let js = clients_dir().join("tus-js/node_modules/tus-js-client");
    assert!(
        js.exists(),
        "tus-js-client is not installed ({}): run scripts/test.sh (or tests/clients/install.sh)",
        js.display()
    );
    let ok = std::process::Command::new("python3")
        .args(["-c", "import tusclient"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "tuspy is not installed: run scripts/test.sh (or tests/clients/install.sh)"
    );
}

/// A 50 MiB file that sniffs as PNG, written once per test.
fn big_file(dir: &Path) -> (PathBuf, Vec<u8>) {
    let data = png_bytes(50 * 1024 * 1024);
    let p = dir.join("big.png");
    std::fs::write(&p, &data).unwrap();
    (p, data)
}

/// A TCP forwarder in front of the servers, so a test can cut every
/// connection mid-transfer (once `cut_after` bytes went upstream) and point
/// the same address at another server (a restart, from the client's side).
struct Proxy {
    addr: std::net::SocketAddr,
    target: Arc<Mutex<std::net::SocketAddr>>,
    up_bytes: Arc<AtomicU64>,
    cut_after: Arc<AtomicU64>,
    /// Bumped on every cut; connections of an older generation close.
    generation: Arc<AtomicU64>,
    /// While set, new connections are closed at once (server "down").
    down: Arc<AtomicBool>,
    cut_tx: tokio::sync::watch::Sender<u64>,
}

impl Proxy {
    async fn start(target: std::net::SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (cut_tx, cut_rx) = tokio::sync::watch::channel(0u64);
        let p = Proxy {
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

    fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Cuts every connection once `n` more bytes went upstream, and closes
    /// new ones until [`Proxy::up`].
    fn cut_after(&self, n: u64) {
        let now = self.up_bytes.load(Ordering::SeqCst);
        self.cut_after.store(now + n, Ordering::SeqCst);
    }

    fn is_down(&self) -> bool {
        self.down.load(Ordering::SeqCst)
    }

    fn up(&self, target: std::net::SocketAddr) {
        *self.target.lock().unwrap() = target;
        self.down.store(false, Ordering::SeqCst);
    }
}

pub(crate) async fn run_client(cmd: &mut tokio::process::Command) -> Value {
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("client finished in time")
        .expect("client runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or("");
    serde_json::from_str(last).unwrap_or_else(|_| {
        panic!(
            "client printed no JSON: {stdout} / {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

pub(crate) fn js_cmd(
    endpoint: &str,
    user: &str,
    file: &Path,
    extra: &[&str],
) -> tokio::process::Command {
    let mut c = tokio::process::Command::new("node");
    c.arg(clients_dir().join("tus-js/upload.mjs"))
        .args([
            "--endpoint",
            endpoint,
            "--header",
            &format!("Authorization: Bearer {}", token(user)),
        ])
        .args([
            "--metadata",
            "filename=big.png",
            "--metadata",
            "filetype=image/png",
        ])
        .args(extra)
        .arg(file)
        .kill_on_drop(true);
    c
}

pub(crate) fn py_cmd(
    endpoint: &str,
    user: &str,
    file: &Path,
    extra: &[&str],
) -> tokio::process::Command {
    let mut c = tokio::process::Command::new("python3");
    c.arg(clients_dir().join("tuspy/upload.py"))
        .args([
            "--endpoint",
            endpoint,
            "--header",
            &format!("Authorization: Bearer {}", token(user)),
        ])
        .args(["--metadata", "filename=big.png"])
        .args(extra)
        .arg(file)
        .kill_on_drop(true);
    c
}

/// Checks the finished upload: listed once, byte-identical, right sha256.
async fn check_result(app: &TestApp, user: &str, res: &Value, data: &[u8]) {
    assert_eq!(res["ok"], true, "{res}");
    let id = res["file_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no Stowage-File-Id: {res}"))
        .to_string();
    assert!(
        res["url"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/api/uploads/{id}")),
        "{res}"
    );
    let (s, f) = app.get_json(user, &format!("/api/files/{id}")).await;
    assert_eq!(s, 200);
    assert_eq!(f["sha256"], sha256_hex(data));
    assert_eq!(f["file_size"], data.len() as u64);
    assert_eq!(f["file_type"], "image");
    assert_eq!(f["file_name"], "big.png");
    let got = download(app, user, &id).await;
    assert!(got == data, "downloaded bytes differ");
    assert_eq!(app.list_all(user, "").await.len(), 1);
    assert_eq!(reserved(app, user).await, 0);
}

const MIB: u64 = 1024 * 1024;

// tus-js-client, one PATCH: aborted after ~20 MiB (connection cut), then a
// second run resumes from the stored URL.
both!(tus_js_abort_then_resume, |b| async move {
    require_clients();
    let app = spawn_app(b).await;
    let (file, data) = big_file(app.dir.path());
    let endpoint = app.url("/api/uploads");
    let first = run_client(&mut js_cmd(
        &endpoint,
        "gina",
        &file,
        &["--abort-after", &(20 * MIB).to_string()],
    ))
    .await;
    assert_eq!(first["aborted"], true, "{first}");
    let url = first["url"].as_str().unwrap().to_string();
    let second = run_client(&mut js_cmd(
        &endpoint,
        "gina",
        &file,
        &["--upload-url", &url],
    ))
    .await;
    let offsets: Vec<u64> = second["head_offsets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    // The abort cuts the connection after ~20 MiB have been handed to the
    // socket; on a fast loopback the server may already hold all of them
    // (and more) by then, so the resumed run may find the upload whole.
    // Either way it must resume from the server's offset, not from 0.
    assert!(
        offsets.iter().any(|o| *o > 0 && *o <= data.len() as u64),
        "resumed from the server's offset: {second}"
    );
    check_result(&app, "gina", &second, &data).await;
});

// tus-js-client, 8 MiB chunks, through a proxy: every connection is cut after
// ~20 MiB, the server is stopped and another one on the same database and
// volume takes its place; the same client run retries and finishes there.
both!(tus_js_server_restart_mid_upload, |b| async move {
    require_clients();
    let mut app = spawn_app(b).await;
    let (file, data) = big_file(app.dir.path());
    let proxy = Proxy::start(app.addr).await;
    proxy.cut_after(20 * MIB);
    let endpoint = format!("{}/api/uploads", proxy.base());
    let mut cmd = js_cmd(
        &endpoint,
        "hank",
        &file,
        &["--chunk-size", &(8 * MIB).to_string()],
    );
    let client = tokio::spawn(async move { run_client(&mut cmd).await });
    while !proxy.is_down() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    app.stop().await;
    let peer = spawn_peer(&app).await;
    proxy.up(peer.addr);
    let res = client.await.unwrap();
    let offsets: Vec<u64> = res["head_offsets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert!(
        offsets.iter().any(|o| *o >= 8 * MIB),
        "resumed past the first chunks: {res}"
    );
    check_result(&peer, "hank", &res, &data).await;
});

// tuspy with the checksum extension (sha1 per PATCH), 8 MiB chunks: the
// connection is cut mid-chunk; tuspy's run resumes from the server's offset.
both!(tuspy_checksum_connection_cut, |b| async move {
    require_clients();
    let app = spawn_app(b).await;
    let (file, data) = big_file(app.dir.path());
    let proxy = Proxy::start(app.addr).await;
    proxy.cut_after(20 * MIB);
    let endpoint = format!("{}/api/uploads", proxy.base());
    let mut cmd = py_cmd(
        &endpoint,
        "ivan",
        &file,
        &["--checksum", "--chunk-size", &(8 * MIB).to_string()],
    );
    let client = tokio::spawn(async move { run_client(&mut cmd).await });
    while !proxy.is_down() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.up(app.addr);
    let res = client.await.unwrap();
    let offsets: Vec<u64> = res["resumed_offsets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    // With a checksum a cut PATCH keeps nothing: resumption is on a chunk boundary.
    assert!(
        offsets.iter().any(|o| *o > 0 && *o % (8 * MIB) == 0),
        "{res}"
    );
    check_result(&app, "ivan", &res, &data).await;
});

// tuspy, one 50 MiB PATCH stopped with the server: a first run pauses at
// 16 MiB (two chunks), the server is stopped, and a second run resumes on
// another server sharing the database and volume.
both!(tuspy_resume_after_restart, |b| async move {
    require_clients();
    let mut app = spawn_app(b).await;
    let (file, data) = big_file(app.dir.path());
    let first = run_client(&mut py_cmd(
        &app.url("/api/uploads"),
        "judy",
        &file,
        &[
            "--chunk-size",
            &(8 * MIB).to_string(),
            "--stop-after",
            &(16 * MIB).to_string(),
        ],
    ))
    .await;
    let url = first["url"].as_str().unwrap().to_string();
    let path = url
        .split_once("/api/")
        .map(|(_, p)| format!("/api/{p}"))
        .unwrap();
    app.stop().await;
    let peer = spawn_peer(&app).await;
    let second = run_client(&mut py_cmd(
        &peer.url("/api/uploads"),
        "judy",
        &file,
        &[
            "--url",
            &peer.url(&path),
            "--chunk-size",
            &(64 * MIB).to_string(),
        ],
    ))
    .await;
    assert_eq!(second["resumed_offsets"][0], 16 * MIB, "{second}");
    check_result(&peer, "judy", &second, &data).await;
});

both!(lost_staging_data_drops_the_upload_cleanly, |b| async move {
    // The staged bytes of an upload vanish (a volume restored from an old
    // snapshot, a bucket lifecycle rule): the next PATCH cannot resume, so
    // the upload is dropped with 404 and its reservation released; a
    // shorter staged copy is treated the same way.
    let app = spawn_app(b).await;
    for shorten in [false, true] {
        let loc = create_ok(&app, "lost", 300_000, "").await;
        let id: uuid::Uuid = loc.rsplit('/').next().unwrap().parse().unwrap();
        let data = png_bytes(300_000);
        let r = patch(&app, "lost", &loc, 0, data[..200_000].to_vec(), &[]).await;
        assert_eq!(r.status(), 204);
        assert_eq!(reserved(&app, "lost").await, 300_000);
        if shorten {
            // Only the first 1,000 bytes survive.
            let mut w = app.state.blobs.stage(id, 1_000).await.unwrap();
            w.write(bytes::Bytes::new()).await.unwrap();
            w.finish().await.unwrap();
        } else {
            app.state.blobs.discard(id).await.unwrap();
        }
        let r = patch(&app, "lost", &loc, 200_000, data[200_000..].to_vec(), &[]).await;
        assert_eq!(r.status(), 404, "shortened: {shorten}");
        assert_eq!(head(&app, "lost", &loc).await.status(), 404);
        assert_eq!(reserved(&app, "lost").await, 0, "shortened: {shorten}");
        assert!(
            app.temp_files().await.is_empty(),
            "{:?}",
            app.temp_files().await
        );
    }
    app.assert_consistent("lost").await;
    // The user can upload again at once.
    let loc = create_ok(&app, "lost", 1_000, "").await;
    let r = patch(&app, "lost", &loc, 0, png_bytes(1_000), &[]).await;
    assert_eq!(r.status(), 204);
    assert!(hdr(&r, "stowage-file-id").is_some());
});
