//! SPEC §9, bodies and per-user limits: multipart framing (preamble, part
//! headers, part count, field size), JSON bodies, tag bombs and the cap on
//! unfinished uploads. After every refusal the user holds nothing.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use base64::{engine::general_purpose::STANDARD as B64, Engine};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{
    both,
    helpers::*,
    tus::{create_ok, hdr, patch},
};

/// Reservations `user` holds (one per unfinished upload).
async fn reservations(app: &TestApp, user: &str) -> usize {
    let far = chrono::Utc::now() + chrono::Duration::days(365 * 10);
    let all = app.state.meta.expired_reservations(far).await.unwrap();
    all.iter().filter(|(_, u)| u == user).count()
}

/// Waits for the drop guard's background cleanup, then checks that `user`
/// holds no reservation, no staged bytes, and only the `files` it had.
async fn assert_released(app: &TestApp, user: &str, files: usize) {
    for _ in 0..200 {
        if reservations(app, user).await == 0 && app.temp_files().await.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(reservations(app, user).await, 0, "reservations released");
    app.assert_nothing_staged().await;
    let usage = app.usage(user).await;
    assert_eq!(usage["file_count"], files, "{usage}");
    if let Some(row) = app.state.meta.get_user(user).await.unwrap() {
        assert_eq!(row.reserved_bytes, 0);
    }
    app.assert_consistent(user).await;
}

/// Sends a chunked multipart upload that starts with `prefix` and then goes
/// on with `filler` bytes in 16 KiB chunks, up to `total` bytes, while
/// reading the socket. Returns the answer and how much of the body had been
/// sent when it arrived (or `total` if it came only after the end).
async fn stream_until_answer(
    app: &TestApp,
    user: &str,
    prefix: &[u8],
    filler: u8,
    total: usize,
) -> (String, usize) {
    let s = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let head = format!(
        "POST /api/files/upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: multipart/form-data; boundary=BOMB\r\nTransfer-Encoding: chunked\r\n\r\n",
        token(user)
    );
    let sent = Arc::new(AtomicUsize::new(0));
    let counter = sent.clone();
    let prefix = prefix.to_vec();
    let writer = tokio::spawn(async move {
        let chunk = |data: &[u8]| {
            let mut c = format!("{:x}\r\n", data.len()).into_bytes();
            c.extend_from_slice(data);
            c.extend_from_slice(b"\r\n");
            c
        };
        wr.write_all(head.as_bytes()).await?;
        if !prefix.is_empty() {
            wr.write_all(&chunk(&prefix)).await?;
        }
        counter.fetch_add(prefix.len(), Ordering::SeqCst);
        let block = vec![filler; 16 * 1024];
        while counter.load(Ordering::SeqCst) < total {
            wr.write_all(&chunk(&block)).await?;
            counter.fetch_add(block.len(), Ordering::SeqCst);
            // A steady client, not a flood: the answer has time to arrive.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        wr.write_all(b"0\r\n\r\n").await?;
        std::io::Result::Ok(wr)
    });
    let mut out = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(60), rd.read(&mut out))
        .await
        .expect("an answer")
        .unwrap();
    let at = sent.load(Ordering::SeqCst);
    writer.abort();
    (String::from_utf8_lossy(&out[..n]).to_string(), at)
}

const BOMB_TOTAL: usize = 8 * 1024 * 1024;

both!(
    a_preamble_that_never_ends_is_refused_early,
    |b| async move {
        let app = spawn_app(b).await;
        let (answer, sent) = stream_until_answer(&app, "pre", b"", b'a', BOMB_TOTAL).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        assert!(answer.contains("invalid_request"), "{answer}");
        assert!(answer.contains("preamble"), "{answer}");
        // Refused once the 16 KiB limit was crossed, long before the body ended.
        assert!(sent < BOMB_TOTAL / 2, "answered after {sent} bytes");
        assert_released(&app, "pre", 0).await;
    }
);

both!(
    part_headers_that_never_end_are_refused_early,
    |b| async move {
        let app = spawn_app(b).await;
        let prefix = b"--BOMB\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\nX-Pad: ";
        let (answer, sent) = stream_until_answer(&app, "hdr", prefix, b'h', BOMB_TOTAL).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        assert!(answer.contains("headers are longer"), "{answer}");
        assert!(sent < BOMB_TOTAL / 2, "answered after {sent} bytes");
        assert_released(&app, "hdr", 0).await;
    }
);

both!(
    boundaries_that_are_empty_too_long_or_absent_are_refused,
    |b| async move {
        let app = spawn_app(b).await;
        let body = |boundary: &str| {
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n\r\nxx\r\n--{boundary}--\r\n"
            )
        };
        let long = "b".repeat(201);
        let cases = [
            (
                format!("multipart/form-data; boundary={long}"),
                body(&long),
                "longer than 200",
            ),
            (
                "multipart/form-data; boundary=\"\"".to_string(),
                body(""),
                "with a boundary",
            ),
            (
                "multipart/form-data".to_string(),
                body("x"),
                "with a boundary",
            ),
            (
                "multipart/mixed; boundary=x".to_string(),
                body("x"),
                "with a boundary",
            ),
        ];
        for (content_type, body, says) in cases {
            let r = app
                .client
                .post(app.url("/api/files/upload"))
                .bearer_auth(token("bnd"))
                .header("content-type", &content_type)
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 400, "{content_type}");
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["error"]["code"], "invalid_request", "{v}");
            let message = v["error"]["message"].as_str().unwrap();
            assert!(message.contains(says), "{content_type}: {message}");
        }
        // 200 characters is still a boundary.
        let fits = "b".repeat(200);
        let mut data = body(&fits).into_bytes();
        let png = png_bytes(300);
        let at = memchr::memmem::find(&data, b"xx").unwrap();
        data.splice(at..at + 2, png);
        let r = app
            .client
            .post(app.url("/api/files/upload"))
            .bearer_auth(token("bnd"))
            .header(
                "content-type",
                format!("multipart/form-data; boundary={fits}"),
            )
            .body(data)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        assert_released(&app, "bnd", 1).await;
    }
);

both!(at_most_eight_parts_and_four_kib_fields, |b| async move {
    let app = spawn_app(b).await;
    // The file and seven more parts: fine (unknown parts are ignored).
    let fields: Vec<(String, String)> = (0..7).map(|i| (format!("x{i}"), "v".into())).collect();
    let refs: Vec<(&str, &str)> = fields
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let r = app
        .upload_with("parts", "a.png", png_bytes(500), &refs)
        .await;
    assert_eq!(r.status(), 201);

    // One more is a ninth part.
    let fields: Vec<(String, String)> = (0..8).map(|i| (format!("x{i}"), "v".into())).collect();
    let refs: Vec<(&str, &str)> = fields
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let r = app
        .upload_with("parts", "b.png", png_bytes(500), &refs)
        .await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "invalid_request");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at most 8 parts"),
        "{v}"
    );
    assert_released(&app, "parts", 1).await;

    // A 4 KiB field is accepted, a 5 KiB one is not.
    let four = "n".repeat(4096);
    let r = app
        .upload_with("parts", "c.png", png_bytes(500), &[("note", &four)])
        .await;
    assert_eq!(r.status(), 201);
    let five = "n".repeat(5 * 1024);
    let r = app
        .upload_with("parts", "d.png", png_bytes(500), &[("note", &five)])
        .await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "invalid_request");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("4096 bytes"),
        "{v}"
    );
    assert_released(&app, "parts", 2).await;
});

/// The largest `{"tags":[…]}` of distinct short tags under `limit` bytes.
fn tag_bomb(limit: usize) -> String {
    let mut body = String::from("{\"tags\":[");
    let mut i = 0u64;
    loop {
        let tag = format!("\"t{i:x}\",");
        if body.len() + tag.len() + 2 > limit {
            break;
        }
        body.push_str(&tag);
        i += 1;
    }
    body.pop();
    body.push_str("]}");
    body
}

both!(json_bodies_over_the_limit_answer_413, |b| async move {
    let app = spawn_app(b).await;
    let file = app.upload_ok("js", "a.png", png_bytes(500)).await;
    let id = file["id"].as_str().unwrap();
    let over = format!("{{\"tags\":[\"{}\"]}}", "x".repeat(64 * 1024));
    let two_mib = format!("{{\"tags\":[\"{}\"]}}", "x".repeat(2 * 1024 * 1024));
    let cases = [
        (
            reqwest::Method::PUT,
            format!("/api/files/{id}/tags"),
            over.clone(),
        ),
        (
            reqwest::Method::PUT,
            format!("/api/files/{id}/tags"),
            two_mib,
        ),
        (
            reqwest::Method::POST,
            format!("/api/files/{id}/favorite"),
            over.clone(),
        ),
        (
            reqwest::Method::POST,
            format!("/api/files/{id}/signed-url"),
            over.clone(),
        ),
    ];
    for (method, path, body) in cases {
        let r = app
            .client
            .request(method.clone(), app.url(&path))
            .bearer_auth(token("js"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 413, "{method} {path}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(
            v["error"]["code"], "payload_too_large",
            "{method} {path}: {v}"
        );
    }
    // Without a Content-Length: refused once the limit is passed.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = vec![
        Ok(b"{\"tags\":[\"".to_vec()),
        Ok(vec![b'y'; 70 * 1024]),
        Ok(b"\"]}".to_vec()),
    ];
    let r = app
        .client
        .put(app.url(&format!("/api/files/{id}/tags")))
        .bearer_auth(token("js"))
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    // The admin API too.
    let r = app
        .client
        .put(app.url("/api/admin/users/js/quota"))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/json")
        .body(format!("{{\"max_bytes\":1{}}}", " ".repeat(64 * 1024)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    // Under the limit, bodies work as before.
    let r = app
        .client
        .put(app.url(&format!("/api/files/{id}/tags")))
        .bearer_auth(token("js"))
        .json(&json!({"tags": [" a ", "b", "a", ""]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["tags"], json!(["a", "b"]));
    let r = app
        .client
        .post(app.url(&format!("/api/files/{id}/favorite")))
        .bearer_auth(token("js"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["is_favorite"], true);
});

both!(
    a_tag_bomb_is_refused_before_any_other_work,
    |b| async move {
        let app = spawn_app(b).await;
        let bomb = tag_bomb(64 * 1024);
        assert!(bomb.len() <= 64 * 1024 && bomb.len() > 60 * 1024);
        // A file that does not exist: the tags are checked first.
        let path = format!("/api/files/{}/tags", uuid::Uuid::new_v4());
        let r = app
            .client
            .put(app.url(&path))
            .bearer_auth(token("tb"))
            .header("content-type", "application/json")
            .body(bomb.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let v: Value = r.json().await.unwrap();
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("more than 32 tags"),
            "{v}"
        );

        // The same kind of list as a tus Upload-Metadata `tags` (as much as its
        // 8 KiB allow), and as a multipart `tags` field (its 4 KiB limit).
        let list: Vec<String> = (0..1000).map(|i| format!("t{i:x}")).collect();
        let meta = format!(
            "filename {},tags {}",
            B64.encode("a.png"),
            B64.encode(list.join(","))
        );
        assert!(meta.len() <= 8 * 1024);
        let r = app
            .tus(reqwest::Method::POST, "tb", "/api/uploads")
            .header("Upload-Length", "500")
            .header("Upload-Metadata", meta)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let v: Value = r.json().await.unwrap();
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("more than 32 tags"),
            "{v}"
        );
        let field = list[..600].join(",");
        assert!(field.len() <= 4096);
        let r = app
            .upload_with("tb", "a.png", png_bytes(500), &[("tags", &field)])
            .await;
        assert_eq!(r.status(), 400);
        let v: Value = r.json().await.unwrap();
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("more than 32 tags"),
            "{v}"
        );
        assert_released(&app, "tb", 0).await;
    }
);

async fn tus_create(app: &TestApp, user: &str, len: u64) -> reqwest::Response {
    app.tus(reqwest::Method::POST, user, "/api/uploads")
        .header("Upload-Length", len.to_string())
        .header(
            "Upload-Metadata",
            format!("filename {}", B64.encode("a.png")),
        )
        .send()
        .await
        .unwrap()
}

async fn assert_429(r: reqwest::Response) {
    assert_eq!(r.status(), 429);
    let retry: u64 = hdr(&r, "retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!(retry >= 1);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "rate_limited");
}

both!(the_65th_unfinished_upload_answers_429, |b| async move {
    let app = spawn_app(b).await;
    let data = png_bytes(500);
    let mut locs = Vec::new();
    for _ in 0..64 {
        locs.push(create_ok(&app, "cap", data.len() as u64, "").await);
    }
    assert_429(tus_create(&app, "cap", data.len() as u64).await).await;
    // A multipart upload is an unfinished upload too.
    assert_429(app.upload("cap", "a.png", data.clone()).await).await;
    assert_eq!(reservations(&app, "cap").await, 64);

    // Terminating one frees a slot…
    let r = app
        .tus(reqwest::Method::DELETE, "cap", &locs.pop().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    locs.push(create_ok(&app, "cap", data.len() as u64, "").await);
    assert_429(tus_create(&app, "cap", data.len() as u64).await).await;

    // …and so does finishing one.
    let r = patch(&app, "cap", &locs.pop().unwrap(), 0, data.clone(), &[]).await;
    assert_eq!(r.status(), 204);
    assert!(hdr(&r, "stowage-file-id").is_some());
    let r = app.upload("cap", "a.png", data.clone()).await;
    assert_eq!(r.status(), 201);
    locs.push(create_ok(&app, "cap", data.len() as u64, "").await);
    assert_429(tus_create(&app, "cap", data.len() as u64).await).await;
    assert_eq!(reservations(&app, "cap").await, 64);

    // Another user is not affected.
    create_ok(&app, "other", data.len() as u64, "").await;
    app.assert_consistent("cap").await;
});

both!(a_multipart_upload_counts_while_in_flight, |b| async move {
    let app = spawn_app_with(b, |c| c.limits.max_unfinished_uploads = 1).await;
    let data = png_bytes(400_000);
    let boundary = "FL";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f.png\"\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(&data);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let head = format!(
        "POST /api/files/upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        token("fl"),
        body.len()
    );
    let mut s = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&body[..body.len() / 2]).await.unwrap();
    for _ in 0..200 {
        if reservations(&app, "fl").await == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(reservations(&app, "fl").await, 1);
    assert_429(tus_create(&app, "fl", 10).await).await;
    assert_429(app.upload("fl", "b.png", png_bytes(500)).await).await;

    s.write_all(&body[body.len() / 2..]).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut answer))
        .await
        .expect("an answer")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    create_ok(&app, "fl", 10, "").await;
    app.assert_consistent("fl").await;
});

both!(concurrent_creations_never_exceed_the_cap, |b| async move {
    let app = spawn_app_with(b, |c| c.limits.max_unfinished_uploads = 8).await;
    let app = Arc::new(app);
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            tus_create(&app, "race", 100).await.status().as_u16()
        }));
    }
    let mut created = 0;
    for t in tasks {
        match t.await.unwrap() {
            201 => created += 1,
            429 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(created, 8);
    assert_eq!(reservations(&app, "race").await, 8);
    let row = app.state.meta.get_user("race").await.unwrap().unwrap();
    assert_eq!(row.reserved_bytes, 800);
});
