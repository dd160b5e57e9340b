//! Uploads that outlive their server: resuming on a peer after a stop (with
//! raw requests and with real clients), and staged data that went missing.

use super::*;

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
        app.assert_nothing_staged().await;
    }
    app.assert_consistent("lost").await;
    // The user can upload again at once.
    let loc = create_ok(&app, "lost", 1_000, "").await;
    let r = patch(&app, "lost", &loc, 0, png_bytes(1_000), &[]).await;
    assert_eq!(r.status(), 204);
    assert!(hdr(&r, "stowage-file-id").is_some());
});

// tus-js-client, 8 MiB chunks, through a proxy: every connection is cut after
// ~20 MiB, the server is stopped and another one on the same database and
// volume takes its place; the same client run retries and finishes there.
both!(tus_js_server_restart_mid_upload, |b| async move {
    require_clients();
    let mut app = spawn_app(b).await;
    let (file, data) = big_file(app.dir.path());
    let proxy = CutProxy::start(app.addr).await;
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
