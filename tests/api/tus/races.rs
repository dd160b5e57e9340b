//! Concurrent requests: tus and multipart uploads racing for one quota, and
//! two PATCHes of one upload at once, on one server or two.

use super::*;

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
    app.tus(reqwest::Method::PATCH, user, loc)
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
