//! The quota invariant of SPEC §4 under concurrency, across two servers, and
//! for declared, bounded and unknown sizes.

use std::time::Duration;

use futures::future::join_all;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::both;
use crate::helpers::*;

const MIB: usize = 1024 * 1024;

/// Sends a request head by hand and reads the answer without sending a body.
async fn raw_request(app: &TestApp, head: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("answer before body")
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).to_string()
}

both!(concurrent_uploads_never_pass_the_quota, |b| async move {
    let app = spawn_app(b).await;
    app.admin_set_quota("q1", 10 * MIB as u64).await;
    let uploads = (0..40).map(|i| {
        let app = &app;
        async move {
            // Exactly 1 MiB files; the multipart framing makes each request
            // a little larger, so at most 9 or 10 can hold a reservation.
            let r = app.upload("q1", &format!("f{i}.png"), png_bytes(MIB)).await;
            let s = r.status().as_u16();
            let v: Value = r.json().await.unwrap_or(Value::Null);
            (s, v)
        }
    });
    let results = join_all(uploads).await;
    let ok = results.iter().filter(|(s, _)| *s == 201).count();
    let refused = results.iter().filter(|(s, _)| *s == 507).count();
    assert_eq!(ok + refused, 40, "{results:?}");
    assert!((1..=10).contains(&ok), "at most 10 fit, got {ok}");
    for (s, v) in &results {
        if *s == 507 {
            assert_eq!(v["error"]["code"], "quota_exceeded");
        }
    }
    app.assert_consistent("q1").await;
    let u = app.usage("q1").await;
    assert_eq!(u["total_bytes"].as_u64().unwrap(), (ok * MIB) as u64);
    // Refused uploads left nothing: only the committed blobs exist, no temp files, no reservation.
    assert_eq!(app.blobs_on_disk().await.len(), ok);
    tokio::time::sleep(Duration::from_millis(200)).await;
    app.assert_nothing_staged().await;
    let row = app.state.meta.get_user("q1").await.unwrap().unwrap();
    assert_eq!(row.reserved_bytes, 0);
});

both!(two_servers_share_one_quota, |b| async move {
    let app = spawn_app(b).await;
    let peer = spawn_peer(&app).await;
    app.admin_set_quota("q2", 10 * MIB as u64).await;
    let uploads = (0..30).map(|i| {
        let target = if i % 2 == 0 { &app } else { &peer };
        async move {
            target
                .upload("q2", &format!("f{i}.png"), png_bytes(MIB))
                .await
                .status()
                .as_u16()
        }
    });
    let statuses = join_all(uploads).await;
    let ok = statuses.iter().filter(|s| **s == 201).count();
    assert!((1..=10).contains(&ok), "{statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == 201 || *s == 507),
        "{statuses:?}"
    );
    app.assert_consistent("q2").await;
    peer.assert_consistent("q2").await;
    assert_eq!(
        app.usage("q2").await["total_bytes"].as_u64().unwrap(),
        (ok * MIB) as u64
    );
});

both!(
    declared_size_over_room_is_refused_before_the_body,
    |b| async move {
        let app = spawn_app(b).await;
        app.admin_set_quota("q3", 5 * MIB as u64).await;
        let head = format!(
        "POST /api/files/upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: multipart/form-data; boundary=XyZ\r\nContent-Length: {}\r\n\r\n",
        token("q3"),
        50 * MIB
    );
        let answer = raw_request(&app, &head).await;
        assert!(answer.starts_with("HTTP/1.1 507"), "{answer}");
        assert!(answer.contains("quota_exceeded"), "{answer}");
        assert!(app.temp_files().await.is_empty());
        assert!(app.blobs_on_disk().await.is_empty());

        // Over the per-file limit: 413, also before the body.
        let head = format!(
        "POST /api/files/upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: multipart/form-data; boundary=XyZ\r\nContent-Length: {}\r\n\r\n",
        token("q3"),
        3u64 * 1024 * 1024 * 1024
    );
        let answer = raw_request(&app, &head).await;
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        assert!(answer.contains("file_too_large"), "{answer}");
        let row = app.state.meta.get_user("q3").await.unwrap().unwrap();
        assert_eq!(row.reserved_bytes, 0);
    }
);

both!(per_file_limit_is_inclusive, |b| async move {
    let app = spawn_app_with(b, |c| c.max_file_size = 64 * 1024).await;
    let r = app.upload("q4", "exact.png", png_bytes(64 * 1024)).await;
    assert_eq!(r.status(), 201);
    let r = app.upload("q4", "over.png", png_bytes(64 * 1024 + 1)).await;
    assert_eq!(r.status(), 413);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "file_too_large");
    app.assert_consistent("q4").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(app.temp_files().await.is_empty());
});

both!(unknown_size_stream_stops_at_the_limit, |b| async move {
    let app = spawn_app(b).await;
    app.admin_set_quota("q5", 3 * MIB as u64).await;
    // A chunked body: no Content-Length, so the size is counted while streaming.
    let boundary = "B0undary";
    let mut body = format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.png\"\r\nContent-Type: image/png\r\n\r\n").into_bytes();
    body.extend(png_bytes(20 * MIB));
    body.extend(format!("\r\n--{boundary}--\r\n").into_bytes());
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        body.chunks(256 * 1024).map(|c| Ok(c.to_vec())).collect();
    let stream = futures::stream::iter(chunks);
    let r = app
        .client
        .post(app.url("/api/files/upload"))
        .bearer_auth(token("q5"))
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await;
    match r {
        Ok(r) => {
            assert_eq!(r.status(), 507);
            // The upload was abandoned before the answer went out: the
            // usage a client reads right after the refusal is exact.
            let row = app.state.meta.get_user("q5").await.unwrap().unwrap();
            assert_eq!(row.reserved_bytes, 0);
            assert!(app.temp_files().await.is_empty());
        }
        // The server stopped reading mid-send: the client saw the reset
        // before the answer; give the server its moment.
        Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
    }
    assert!(app.temp_files().await.is_empty());
    let row = app.state.meta.get_user("q5").await.unwrap().unwrap();
    assert_eq!(row.reserved_bytes, 0);
    assert_eq!(row.total_bytes, 0);
    // A small chunked upload fits and is trimmed to its real size.
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"s.png\"\r\n\r\n"
    )
    .into_bytes();
    body.extend(png_bytes(1000));
    body.extend(format!("\r\n--{boundary}--\r\n").into_bytes());
    let stream = futures::stream::iter(vec![Ok::<_, std::io::Error>(body)]);
    let r = app
        .client
        .post(app.url("/api/files/upload"))
        .bearer_auth(token("q5"))
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(app.usage("q5").await["total_bytes"], 1000);
});

both!(
    delete_frees_room_at_once_and_zero_quota_blocks,
    |b| async move {
        let app = spawn_app(b).await;
        app.admin_set_quota("q6", 2 * MIB as u64).await;
        let f = app.upload_ok("q6", "a.png", png_bytes(MIB + MIB / 2)).await;
        assert_eq!(
            app.upload("q6", "b.png", png_bytes(MIB)).await.status(),
            507
        );
        let id = f["id"].as_str().unwrap();
        let r = app
            .client
            .delete(app.url(&format!("/api/files/{id}")))
            .bearer_auth(token("q6"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
        assert_eq!(
            app.upload("q6", "b.png", png_bytes(MIB)).await.status(),
            201
        );
        // Lowering below usage keeps files but blocks uploads.
        app.admin_set_quota("q6", 0).await;
        assert_eq!(app.list_all("q6", "").await.len(), 1);
        assert_eq!(
            app.upload("q6", "c.png", png_bytes(100)).await.status(),
            507
        );
        let u = app.usage("q6").await;
        assert_eq!(u["max_bytes"], 0);
        assert_eq!(u["percent_used"], 100.0);
    }
);

both!(percent_used_is_rounded, |b| async move {
    let app = spawn_app(b).await;
    app.admin_set_quota("q7", 3000).await;
    app.upload_ok("q7", "a.png", png_bytes(1000)).await;
    let u = app.usage("q7").await;
    assert_eq!(u["percent_used"], 33.33);
    assert_eq!(u["max_bytes"], 3000);
});

both!(
    cleanup_sweeps_what_a_crash_between_publish_and_commit_leaves,
    |b| async move {
        let app = spawn_app(b).await;
        let st = &app.state;
        // What a process killed right after the rename leaves: a reservation and
        // a published blob, but no row.
        let id = st
            .meta
            .reserve("crashed", 1 << 30, 1000, Duration::from_millis(1))
            .await
            .unwrap();
        let mut w = st.blobs.stage(id, 0).await.unwrap();
        w.write(png_bytes(1000).into()).await.unwrap();
        w.finish().await.unwrap();
        st.blobs
            .publish(id, &format!("crashed/images/{id}.png"))
            .await
            .unwrap();
        // And a committed file that must survive.
        app.upload_ok("crashed", "keep.png", png_bytes(500)).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let report = stowage::jobs::cleanup::run(st, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(report.unpublished_blobs, 1);
        assert!(report.expired_reservations >= 1);
        assert_eq!(app.blobs_on_disk().await.len(), 1);
        app.assert_consistent("crashed").await;
        assert_eq!(
            st.meta
                .get_user("crashed")
                .await
                .unwrap()
                .unwrap()
                .reserved_bytes,
            0
        );
        // A second pass finds nothing more.
        let again = stowage::jobs::cleanup::run(st, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(
            (again.unpublished_blobs, again.expired_reservations),
            (0, 0)
        );
    }
);
