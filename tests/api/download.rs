//! Downloads: ranges, ETags, headers, signed links.

use serde_json::{json, Value};

use crate::both;
use crate::helpers::*;

both!(download_ranges_and_headers, |b| async move {
    let app = spawn_app(b).await;
    let data = png_bytes(10_000);
    let f = app
        .upload_ok("d", "na\u{ef}ve \"pic\".png", data.clone())
        .await;
    let id = f["id"].as_str().unwrap();
    let url = format!("/api/files/{id}/download");
    let r = app.get("d", &url).await;
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    assert_eq!(h["accept-ranges"], "bytes");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert!(h["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("sandbox"));
    assert_eq!(h["content-type"], "image/png");
    assert_eq!(h["content-length"], "10000");
    let cd = h["content-disposition"].to_str().unwrap();
    assert!(
        cd.starts_with("attachment; filename=\"na_ve _pic_.png\""),
        "{cd}"
    );
    assert!(
        cd.contains("filename*=UTF-8''na%C3%AFve%20%22pic%22.png"),
        "{cd}"
    );
    let etag = h["etag"].to_str().unwrap().to_string();
    assert_eq!(etag, format!("\"{}\"", sha256_hex(&data)));
    assert_eq!(r.bytes().await.unwrap().to_vec(), data);

    let get_range = |range: &'static str| {
        app.client
            .get(app.url(&url))
            .bearer_auth(token("d"))
            .header("range", range)
            .send()
    };
    let r = get_range("bytes=100-199").await.unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["content-range"], "bytes 100-199/10000");
    assert_eq!(r.bytes().await.unwrap().to_vec(), data[100..200].to_vec());
    let r = get_range("bytes=-10").await.unwrap();
    assert_eq!(r.bytes().await.unwrap().to_vec(), data[9990..].to_vec());
    let r = get_range("bytes=9999-").await.unwrap();
    assert_eq!(r.bytes().await.unwrap().to_vec(), data[9999..].to_vec());
    let r = get_range("bytes=10000-").await.unwrap();
    assert_eq!(r.status(), 416);
    assert_eq!(r.headers()["content-range"], "bytes */10000");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "range_not_satisfiable");

    // Conditional requests.
    let r = app
        .client
        .get(app.url(&url))
        .bearer_auth(token("d"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    let r = app
        .client
        .get(app.url(&url))
        .bearer_auth(token("d"))
        .header("range", "bytes=0-9")
        .header("if-range", "\"stale\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "If-Range mismatch serves the whole file");

    // HEAD.
    let r = app
        .client
        .head(app.url(&url))
        .bearer_auth(token("d"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], "10000");

    // inline only for safe media.
    let r = app.get("d", &format!("{url}?inline=1")).await;
    assert!(r.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .starts_with("inline"));
    let j = app.upload_ok("d", "p.json", b"{\"a\":1}".to_vec()).await;
    let r = app
        .get(
            "d",
            &format!("/api/files/{}/download?inline=1", j["id"].as_str().unwrap()),
        )
        .await;
    assert!(r.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .starts_with("attachment"));
});

// Large files, sent with sendfile on the local volume (streamed from the
// object store): the same bytes, headers, ranges and conditionals.
both!(large_download_ranges_and_headers, |b| async move {
    let app = spawn_app(b).await;
    let sent_before = crate::sendfile::sendfile_bytes(&app).await;
    let n = 9 * 1024 * 1024 + 4321;
    let data = png_bytes(n);
    let f = app.upload_ok("d", "big.png", data.clone()).await;
    let url = format!("/api/files/{}/download", f["id"].as_str().unwrap());
    let r = app.get("d", &url).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], n.to_string());
    assert_eq!(r.headers()["content-type"], "image/png");
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    assert_eq!(etag, format!("\"{}\"", sha256_hex(&data)));
    assert!(r.bytes().await.unwrap().to_vec() == data, "whole file");

    let mib = 1024 * 1024;
    for (range, start, end) in [
        (format!("bytes=1-{}", 4 * mib), 1, 4 * mib + 1),
        (
            format!("bytes={}-{}", 4 * mib - 7, 8 * mib + 9),
            4 * mib - 7,
            8 * mib + 10,
        ),
        (format!("bytes={}-", n - 2 * mib - 1), n - 2 * mib - 1, n),
        (format!("bytes=-{}", 3 * mib + 5), n - 3 * mib - 5, n),
        (format!("bytes=4097-{}", n + 100), 4097, n),
    ] {
        let r = app
            .client
            .get(app.url(&url))
            .bearer_auth(token("d"))
            .header("range", &range)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 206, "{range}");
        assert_eq!(
            r.headers()["content-range"],
            format!("bytes {}-{}/{n}", start, end - 1),
            "{range}"
        );
        assert_eq!(r.headers()["content-length"], (end - start).to_string());
        assert!(
            r.bytes().await.unwrap().to_vec() == data[start..end],
            "{range}"
        );
    }
    let r = app
        .client
        .get(app.url(&url))
        .bearer_auth(token("d"))
        .header("range", "bytes=0-1048575")
        .header("if-range", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206, "If-Range match keeps the range");
    assert!(r.bytes().await.unwrap().to_vec() == data[..mib]);
    let r = app
        .client
        .get(app.url(&url))
        .bearer_auth(token("d"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    let r = app.get_public(&url).await;
    assert_eq!(r.status(), 401, "no token, no bytes");
    // On the local volume every body above went through sendfile.
    let sent = crate::sendfile::sendfile_bytes(&app).await - sent_before;
    if b != Backend::S3 {
        assert!(sent >= (n + 4 * mib + 2 * mib + 3 * mib) as u64, "{sent}");
    }
});

both!(signed_links, |b| async move {
    let app = spawn_app_clocked(b, |_| {}).await;
    let data = png_bytes(5000);
    let f = app.upload_ok("s", "a.png", data.clone()).await;
    let id = f["id"].as_str().unwrap();
    let sign = |body: Value| {
        app.client
            .post(app.url(&format!("/api/files/{id}/signed-url")))
            .bearer_auth(token("s"))
            .json(&body)
            .send()
    };
    let v: Value = sign(json!({"expires_in": 60}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let link = v["url"].as_str().unwrap().to_string();
    assert!(link.starts_with("/s/"));
    assert!(v["expires_at"].as_str().unwrap().ends_with('Z'));
    // No session needed.
    let r = app.get_public(&link).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().to_vec(), data);
    let r = app
        .client
        .get(app.url(&link))
        .header("range", "bytes=0-3")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap().to_vec(), data[..4].to_vec());
    // Any alteration is 403.
    let mut altered = link.clone().into_bytes();
    let i = altered.len() - 2;
    altered[i] = if altered[i] == b'A' { b'B' } else { b'A' };
    let altered = String::from_utf8(altered).unwrap();
    assert_eq!(app.get_public(&altered).await.status(), 403);
    let parts: Vec<&str> = link.trim_start_matches("/s/").split('.').collect();
    let later = format!(
        "/s/{}.{}.{}",
        parts[0],
        parts[1].parse::<i64>().unwrap() + 1000,
        parts[2]
    );
    assert_eq!(app.get_public(&later).await.status(), 403);
    assert_eq!(app.get_public("/s/garbage").await.status(), 403);
    // Expired.
    let v: Value = sign(json!({"expires_in": 1}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    app.advance(std::time::Duration::from_secs(2));
    let r = app.get_public(v["url"].as_str().unwrap()).await;
    assert_eq!(r.status(), 403);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "forbidden");
    // Expiry bounds.
    assert_eq!(sign(json!({"expires_in": 0})).await.unwrap().status(), 400);
    assert_eq!(
        sign(json!({"expires_in": 604801})).await.unwrap().status(),
        400
    );
    assert_eq!(
        sign(json!({"expires_in": "soon"})).await.unwrap().status(),
        400
    );
    let r = app
        .client
        .post(app.url(&format!("/api/files/{id}/signed-url")))
        .bearer_auth(token("s"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "empty body means the default expiry");
    // A deleted file's link stops working.
    app.client
        .delete(app.url(&format!("/api/files/{id}")))
        .bearer_auth(token("s"))
        .send()
        .await
        .unwrap();
    assert_eq!(app.get_public(&link).await.status(), 403);
});
