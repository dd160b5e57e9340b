//! The tus protocol and its extensions: discovery, creation, offsets,
//! errors, checksums, creation-with-upload, termination, ownership, limits
//! and expiry.

use super::*;

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
    app.assert_nothing_staged().await;
    app.assert_consistent("alice").await;
});

// PATCHes that end at offsets that are not multiples of the volume's 4 KiB
// alignment: each resume reads back the partial block before its offset
// (direct I/O) and the whole file, and its sha256 carried from PATCH to
// PATCH, is what was sent.
both!(patches_at_unaligned_offsets, |b| async move {
    let app = spawn_app(b).await;
    let data = png_bytes((1 << 20) + 4097);
    let loc = create_ok(&app, "alice", data.len() as u64, "").await;
    let mut at = 0;
    for cut in [1, 4095, 4097, 8191, 256 * 1024 + 3, 1 << 20, data.len()] {
        let r = patch(&app, "alice", &loc, at as u64, data[at..cut].to_vec(), &[]).await;
        assert_eq!(r.status(), 204, "{at}..{cut}");
        assert_eq!(hdr(&r, "upload-offset"), Some(cut.to_string().as_str()));
        at = cut;
    }
    let (s, files) = app.get_json("alice", "/api/files").await;
    assert_eq!(s, 200);
    let f = &files["files"][0];
    assert_eq!(f["sha256"], sha256_hex(&data));
    let id = f["id"].as_str().unwrap();
    assert!(download(&app, "alice", id).await == data);
    assert!(app.temp_files().await.is_empty());
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
        .tus(reqwest::Method::PATCH, "alice", &loc)
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
        .tus(reqwest::Method::PATCH, "alice", &loc)
        .header("Content-Type", OCTET)
        .header("Upload-Offset", "-1")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = app
        .tus(reqwest::Method::POST, "alice", "/api/uploads")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = app
        .tus(reqwest::Method::POST, "alice", "/api/uploads")
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
        .tus(reqwest::Method::POST, "alice", "/api/uploads/")
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
        .tus(reqwest::Method::POST, "alice", "/api/uploads")
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
        .tus(reqwest::Method::POST, "alice", "/api/uploads")
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
    let del = |user: &'static str| app.tus(reqwest::Method::DELETE, user, &loc).send();
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
        .tus(reqwest::Method::DELETE, "mallory", &loc)
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

both!(expiry_and_cleanup, |b| async move {
    let app = spawn_app_clocked(b, |c| c.upload_expiry = Duration::from_secs(1)).await;
    let loc = create_ok(&app, "frank", 100_000, "").await;
    assert_eq!(
        patch(&app, "frank", &loc, 0, png_bytes(1000), &[])
            .await
            .status(),
        204
    );
    let keep = create_ok(&app, "frank", 5_000, "").await;
    assert_eq!(reserved(&app, "frank").await, 105_000);
    app.advance(Duration::from_millis(1500));
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
    app.assert_nothing_staged().await;
    let again = stowage::jobs::cleanup::run(&app.state, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(again.expired_uploads, 0);
    assert_eq!(again.expired_reservations, 0);
    assert_eq!(head(&app, "frank", &keep).await.status(), 404);
    app.assert_consistent("frank").await;
});
