//! The integration API for the SaaS backend (SPEC §11): acting on behalf of a
//! user, rename, copy, signed upload URLs and package archives.

use std::time::Duration;

use futures::future::join_all;
use serde_json::{json, Value};
use stowage::{
    auth::signed_url::{self, Purpose},
    http::openapi::{Auth, OPS},
    jobs::cleanup,
};
use uuid::Uuid;

use crate::audit::audit_with;
use crate::helpers::*;
use crate::media::wait_for;
use crate::{both, local};

const MIB: usize = 1024 * 1024;
const ON_BEHALF: &str = "Stowage-On-Behalf-Of";

/// Bytes that sniff as PNG, different for each `seed`.
fn blob(len: usize, seed: u8) -> Vec<u8> {
    let mut v = png_bytes(len);
    for (i, b) in v.iter_mut().enumerate().skip(16) {
        *b ^= seed.wrapping_add(i as u8);
    }
    v
}

async fn download(app: &TestApp, user: &str, id: &str) -> (u16, Vec<u8>) {
    let r = app.get(user, &format!("/api/files/{id}/download")).await;
    let s = r.status().as_u16();
    (s, r.bytes().await.unwrap().to_vec())
}

fn admin_for(app: &TestApp, m: reqwest::Method, path: &str, user: &str) -> reqwest::RequestBuilder {
    app.client
        .request(m, app.url(path))
        .bearer_auth(ADMIN_TOKEN)
        .header(ON_BEHALF, user)
}

async fn send_json(r: reqwest::RequestBuilder) -> (u16, Value) {
    let r = r.send().await.unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

/// Polls until `user` has no reservation left (releases run just after the
/// answer).
async fn wait_unreserved(app: &TestApp, user: &str) -> i64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = app
            .state
            .meta
            .get_user(user)
            .await
            .unwrap()
            .unwrap()
            .reserved_bytes;
        if r == 0 || std::time::Instant::now() > deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls until no background job is queued or running (thumbnails write
/// staging files that an audit with no grace would count).
async fn wait_jobs_idle(app: &TestApp) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while app.state.meta.queue_depth().await.unwrap() > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `(name, bytes)` of every entry, read by Python's `zipfile` (which also
/// checks every CRC).
fn unzip(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.zip");
    std::fs::write(&path, bytes).unwrap();
    let script = "import sys, zipfile, json, base64\n\
        with zipfile.ZipFile(sys.argv[1]) as z:\n\
        \tassert z.testzip() is None\n\
        \tprint(json.dumps([[i.filename, base64.b64encode(z.read(i)).decode()] for i in z.infolist()]))";
    let o = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&path)
        .output()
        .expect("python3 runs");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let entries: Vec<(String, String)> = serde_json::from_slice(&o.stdout).unwrap();
    use base64::Engine;
    entries
        .into_iter()
        .map(|(n, b)| {
            (
                n,
                base64::engine::general_purpose::STANDARD.decode(b).unwrap(),
            )
        })
        .collect()
}

// ---------------------------------------------------------------- on behalf

both!(
    the_admin_token_acts_for_a_user_on_every_upload_path,
    |b| async move {
        let app = spawn_app(b).await;
        // A new user: provisioned by the first request made for them.
        let (s, u) = send_json(admin_for(
            &app,
            reqwest::Method::GET,
            "/api/storage/usage",
            "ob-new",
        ))
        .await;
        assert_eq!(s, 200, "{u}");
        assert_eq!(u["user_id"], "ob-new");
        assert_eq!(
            u["max_bytes"].as_u64().unwrap(),
            app.state.config.default_quota
        );
        assert!(app.state.meta.get_user("ob-new").await.unwrap().is_some());

        // Multipart.
        let data = blob(3000, 1);
        let form = file_form("mp.png", data.clone());
        let (s, f) = send_json(
            admin_for(&app, reqwest::Method::POST, "/api/files/upload", "ob-user").multipart(form),
        )
        .await;
        assert_eq!(s, 201, "{f}");
        // tus creation-with-upload.
        let tus = blob(2000, 2);
        let r = admin_for(&app, reqwest::Method::POST, "/api/uploads", "ob-user")
            .header("Tus-Resumable", "1.0.0")
            .header("Upload-Length", tus.len().to_string())
            .header("Upload-Metadata", "filename dHVzLnBuZw==")
            .header("Content-Type", "application/offset+octet-stream")
            .body(tus.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let tus_id = r.headers()["stowage-file-id"].to_str().unwrap().to_string();

        // The user's own session sees both, with their bytes.
        let names: Vec<String> = app
            .list_all("ob-user", "")
            .await
            .iter()
            .map(|f| f["file_name"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(names.contains(&"mp.png".to_string()) && names.contains(&"tus.png".to_string()));
        assert_eq!(
            download(&app, "ob-user", f["id"].as_str().unwrap()).await,
            (200, data)
        );
        assert_eq!(download(&app, "ob-user", &tus_id).await, (200, tus));
        // And the backend lists and deletes for them.
        let (s, page) = send_json(admin_for(
            &app,
            reqwest::Method::GET,
            "/api/files",
            "ob-user",
        ))
        .await;
        assert_eq!((s, page["files"].as_array().unwrap().len()), (200, 2));
        let r = admin_for(
            &app,
            reqwest::Method::DELETE,
            &format!("/api/files/{tus_id}"),
            "ob-user",
        )
        .send()
        .await
        .unwrap();
        assert_eq!(r.status(), 204);
        // Another user's file is not found when acting for someone else.
        let (s, _) = send_json(admin_for(
            &app,
            reqwest::Method::GET,
            &format!("/api/files/{}", f["id"].as_str().unwrap()),
            "ob-other",
        ))
        .await;
        assert_eq!(s, 404);
        app.assert_consistent("ob-user").await;
    }
);

local!(
    every_user_route_refuses_a_user_token_or_a_wrong_admin_token_with_the_header,
    |b| async move {
        let app = spawn_app(b).await;
        let f = app.upload_ok("ob-victim", "a.png", png_bytes(1000)).await;
        let id = f["id"].as_str().unwrap();
        let mut checked = 0;
        for op in OPS.iter().filter(|o| o.auth == Auth::User) {
            let path = op.path.replace("{id}", id);
            let m = reqwest::Method::from_bytes(op.method.to_uppercase().as_bytes()).unwrap();
            // A user's own valid session may not act for anyone.
            let r = app
                .client
                .request(m.clone(), app.url(&path))
                .bearer_auth(token("ob-attacker"))
                .header(ON_BEHALF, "ob-victim")
                .header("Tus-Resumable", "1.0.0")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 403, "{} {path} with a user token", op.method);
            // Nor may a token that is not the admin's.
            let r = app
                .client
                .request(m.clone(), app.url(&path))
                .bearer_auth("not-the-admin-token")
                .header(ON_BEHALF, "ob-victim")
                .header("Tus-Resumable", "1.0.0")
                .send()
                .await
                .unwrap();
            assert_eq!(
                r.status(),
                401,
                "{} {path} with a wrong admin token",
                op.method
            );
            checked += 1;
        }
        assert!(checked >= 15, "{checked} routes checked");
        // The cookie cannot carry the admin token either.
        let r = app
            .client
            .get(app.url("/api/files"))
            .header("Cookie", format!("__session={ADMIN_TOKEN}"))
            .header(ON_BEHALF, "ob-victim")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        // The value is checked like a token's sub.
        for bad in ["", &"x".repeat(256)] {
            let (s, v) = send_json(admin_for(&app, reqwest::Method::GET, "/api/files", bad)).await;
            assert_eq!(s, 400, "{bad:?}: {v}");
        }
        let r = app
            .client
            .get(app.url("/api/files"))
            .bearer_auth(ADMIN_TOKEN)
            .header(ON_BEHALF, "a\tb")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        // Routes that do not act as a user ignore the header.
        let (s, _) = send_json(admin_for(
            &app,
            reqwest::Method::GET,
            "/api/admin/users",
            "ob-victim",
        ))
        .await;
        assert_eq!(s, 200);
        // Nothing was created for the victim by the refused requests.
        assert_eq!(app.list_all("ob-victim", "").await.len(), 1);
    }
);

// ------------------------------------------------------------------- rename

both!(
    rename_sanitizes_like_an_upload_and_only_for_the_owner,
    |b| async move {
        let app = spawn_app(b).await;
        let f = app.upload_ok("rn", "a.png", png_bytes(1000)).await;
        let id = f["id"].as_str().unwrap();
        let patch = |user: &str, body: Value| {
            app.client
                .patch(app.url(&format!("/api/files/{id}")))
                .bearer_auth(token(user))
                .json(&body)
        };
        let (s, v) = send_json(patch(
            "rn",
            json!({"file_name": "../../etc/ev\u{202e}il\n.png", "package_name": "  pk  "}),
        ))
        .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["file_name"], "evil.png");
        assert_eq!(v["package_name"], "pk");
        assert_eq!(v["id"], f["id"]);
        assert_eq!(v["sha256"], f["sha256"]);
        // Only the package: the name stays.
        let (s, v) = send_json(patch("rn", json!({"package_name": "other"}))).await;
        assert_eq!(
            (s, v["file_name"].as_str(), v["package_name"].as_str()),
            (200, Some("evil.png"), Some("other"))
        );
        // null takes it out of its package; an absent field keeps it.
        let (_, v) = send_json(patch("rn", json!({"package_name": null}))).await;
        assert!(v["package_name"].is_null(), "{v}");
        let (_, v) = send_json(patch("rn", json!({"file_name": "b.png"}))).await;
        assert_eq!(v["file_name"], "b.png");
        assert!(v["package_name"].is_null());
        let (_, listed) = app.get_json("rn", &format!("/api/files/{id}")).await;
        assert_eq!(listed["file_name"], "b.png");
        // Checked as on upload.
        let (s, _) = send_json(patch("rn", json!({"package_name": "p".repeat(101)}))).await;
        assert_eq!(s, 400);
        let (s, _) = send_json(patch("rn", json!({"file_name": 7}))).await;
        assert_eq!(s, 400);
        let (s, _) = send_json(patch("rn", json!({"unknown": "x"}))).await;
        assert_eq!(s, 400);
        // Another user's id is not found.
        let (s, _) = send_json(patch("rn-other", json!({"file_name": "mine.png"}))).await;
        assert_eq!(s, 404);
        // Bounded like every JSON body.
        let big = json!({"file_name": "x".repeat(70 * 1024)});
        let (s, v) = send_json(patch("rn", big)).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (413, Some("payload_too_large"))
        );
        let (_, still) = app.get_json("rn", &format!("/api/files/{id}")).await;
        assert_eq!(still["file_name"], "b.png");
    }
);

// --------------------------------------------------------------------- copy

both!(
    a_copy_has_the_same_bytes_and_outlives_its_original,
    |b| async move {
        let app = spawn_app(b).await;
        let data = real_png(64, 48);
        let f = app.upload_ok("cp", "pic.png", data.clone()).await;
        let id = f["id"].as_str().unwrap();
        wait_for(&app, "cp", id, "thumbnail_url", 20).await;
        let (s, c) = send_json(
            app.client
                .post(app.url(&format!("/api/files/{id}/copy")))
                .bearer_auth(token("cp"))
                .json(&json!({"file_name": "../copy.png"})),
        )
        .await;
        assert_eq!(s, 201, "{c}");
        let cid = c["id"].as_str().unwrap().to_string();
        assert_ne!(cid, id);
        assert_eq!(c["file_name"], "copy.png");
        assert_eq!(c["sha256"], f["sha256"]);
        assert_eq!(c["file_size"], f["file_size"]);
        assert_eq!(c["resolution"], "64x48", "media facts carried over: {c}");
        // Without a body, the original's name.
        let (s, c2) = send_json(
            app.client
                .post(app.url(&format!("/api/files/{id}/copy")))
                .bearer_auth(token("cp")),
        )
        .await;
        assert_eq!((s, c2["file_name"].as_str()), (201, Some("pic.png")));
        let u = app.usage("cp").await;
        assert_eq!(u["total_bytes"].as_u64().unwrap(), 3 * data.len() as u64);
        assert_eq!(u["file_count"], 3);
        // The copy gets a thumbnail of its own.
        let cf = wait_for(&app, "cp", &cid, "thumbnail_url", 20).await;
        assert!(!cf["thumbnail_url"].is_null(), "{cf}");
        wait_for(&app, "cp", c2["id"].as_str().unwrap(), "thumbnail_url", 20).await;
        wait_jobs_idle(&app).await;
        let report = audit_with(&app, false, Duration::ZERO).await;
        assert!(report.clean, "audit after copies: {}", report.render());
        // Deleting the original leaves the copy whole, thumbnail included.
        let r = app
            .client
            .delete(app.url(&format!("/api/files/{id}")))
            .bearer_auth(token("cp"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
        assert_eq!(download(&app, "cp", &cid).await, (200, data.clone()));
        let r = app.get("cp", &format!("/api/files/{cid}/thumbnail")).await;
        assert_eq!(r.status(), 200);
        // And deleting a copy leaves the other copy whole.
        let r = app
            .client
            .delete(app.url(&format!("/api/files/{cid}")))
            .bearer_auth(token("cp"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
        assert_eq!(
            download(&app, "cp", c2["id"].as_str().unwrap()).await,
            (200, data)
        );
        let report = audit_with(&app, false, Duration::ZERO).await;
        assert!(report.clean, "audit after deletes: {}", report.render());
        app.assert_consistent("cp").await;
        // Another user's file cannot be copied.
        let r = app
            .client
            .post(app.url(&format!("/api/files/{}/copy", c2["id"].as_str().unwrap())))
            .bearer_auth(token("cp-other"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
    }
);

both!(concurrent_copies_never_pass_the_quota, |b| async move {
    let app = spawn_app(b).await;
    app.admin_set_quota("cpq", 10 * MIB as u64).await;
    let f = app.upload_ok("cpq", "one.png", png_bytes(MIB)).await;
    let id = f["id"].as_str().unwrap();
    let copies = (0..40).map(|_| {
        let app = &app;
        async move {
            let r = app
                .client
                .post(app.url(&format!("/api/files/{id}/copy")))
                .bearer_auth(token("cpq"))
                .send()
                .await
                .unwrap();
            let s = r.status().as_u16();
            let v: Value = r.json().await.unwrap_or(Value::Null);
            (s, v)
        }
    });
    let results = join_all(copies).await;
    let ok = results.iter().filter(|(s, _)| *s == 201).count();
    let full = results
        .iter()
        .filter(|(s, v)| *s == 507 && v["error"]["code"] == "quota_exceeded")
        .count();
    assert_eq!(ok + full, 40, "{results:?}");
    assert_eq!(ok, 9, "exactly the room for nine more");
    app.assert_consistent("cpq").await;
    let u = app.usage("cpq").await;
    assert_eq!(u["total_bytes"].as_u64().unwrap(), 10 * MIB as u64);
    assert_eq!(wait_unreserved(&app, "cpq").await, 0);
    wait_jobs_idle(&app).await;
    let report = audit_with(&app, false, Duration::ZERO).await;
    assert!(report.clean, "{}", report.render());
});

// ------------------------------------------------------ signed upload URLs

async fn issue(app: &TestApp, user: &str, body: Value) -> (u16, Value) {
    send_json(
        app.client
            .post(app.url("/api/uploads/signed"))
            .bearer_auth(token(user))
            .json(&body),
    )
    .await
}

/// A multipart POST to a signed upload URL, with no credentials at all.
async fn post_signed(app: &TestApp, url: &str, name: &str, data: Vec<u8>) -> (u16, Value) {
    send_json(
        app.client
            .post(app.url(url))
            .multipart(file_form(name, data)),
    )
    .await
}

fn reserved(u: &stowage::meta::UserStorage) -> i64 {
    u.reserved_bytes
}

both!(
    a_signed_upload_url_reserves_at_once_and_works_once,
    |b| async move {
        let app = spawn_app(b).await;
        app.admin_set_quota("su", 100_000).await;
        let (s, v) = issue(
            &app,
            "su",
            json!({"max_bytes": 60_000, "expires_in": 600, "file_name": "from-url.png"}),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        let url = v["url"].as_str().unwrap().to_string();
        assert!(url.starts_with("/u/"), "{url}");
        assert!(v["expires_at"].as_str().unwrap().ends_with('Z'));
        let row = app.state.meta.get_user("su").await.unwrap().unwrap();
        assert_eq!(reserved(&row), 60_000, "reserved at issue");
        // The room it holds is not there for anyone else.
        let (s, _) = issue(&app, "su", json!({"max_bytes": 50_000})).await;
        assert_eq!(s, 507);
        let r = app.upload("su", "big.png", png_bytes(45_000)).await;
        assert_eq!(r.status(), 507);
        // One upload, no session.
        let data = blob(20_000, 3);
        let (s, f) = post_signed(&app, &url, "client-name.png", data.clone()).await;
        assert_eq!(s, 201, "{f}");
        assert_eq!(f["file_name"], "from-url.png", "the URL's name wins");
        assert_eq!(
            download(&app, "su", f["id"].as_str().unwrap()).await,
            (200, data)
        );
        assert_eq!(
            wait_unreserved(&app, "su").await,
            0,
            "trimmed to the file at commit"
        );
        assert_eq!(app.usage("su").await["total_bytes"], 20_000);
        // A second use.
        let (s, v) = post_signed(&app, &url, "again.png", blob(1000, 4)).await;
        assert_eq!((s, v["error"]["code"].as_str()), (410, Some("gone")));
        // Altered: every part of the token.
        let token_part = url.strip_prefix("/u/").unwrap();
        let parts: Vec<&str> = token_part.split('.').collect();
        let flip = |s: &str| {
            let mut c: Vec<char> = s.chars().collect();
            c[0] = if c[0] == 'A' { 'B' } else { 'A' };
            c.into_iter().collect::<String>()
        };
        for altered in [
            format!("/u/{}.{}.{}", flip(parts[0]), parts[1], parts[2]),
            format!(
                "/u/{}.{}.{}",
                parts[0],
                parts[1].parse::<i64>().unwrap() + 1,
                parts[2]
            ),
            format!("/u/{}.{}.{}", parts[0], parts[1], flip(parts[2])),
            format!("/u/{}.0{}.{}", parts[0], parts[1], parts[2]),
            format!("{url}x"),
        ] {
            let (s, _) = post_signed(&app, &altered, "x.png", blob(1000, 5)).await;
            assert_eq!(s, 403, "{altered}");
        }
        // A file type is enforced as declared.
        let (_, v) = issue(
            &app,
            "su",
            json!({"max_bytes": 5_000, "file_type": "video"}),
        )
        .await;
        let (s, _) = post_signed(&app, v["url"].as_str().unwrap(), "x.png", blob(1000, 6)).await;
        assert_eq!(s, 415);
        assert_eq!(
            wait_unreserved(&app, "su").await,
            0,
            "a failed upload gives its room back"
        );
        app.assert_consistent("su").await;
        // Limits at issue.
        let (s, v) = issue(
            &app,
            "su",
            json!({"max_bytes": app.state.config.max_file_size + 1}),
        )
        .await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (413, Some("file_too_large"))
        );
        for bad in [
            json!({"max_bytes": 0}),
            json!({"max_bytes": 10, "expires_in": 0}),
            json!({"max_bytes": 10, "expires_in": 604_801}),
            json!({"max_bytes": 10, "file_type": "exe"}),
            json!({}),
        ] {
            let (s, _) = issue(&app, "su", bad.clone()).await;
            assert_eq!(s, 400, "{bad}");
        }
        // The SaaS backend issues them for its users.
        let (s, v) = send_json(
            admin_for(&app, reqwest::Method::POST, "/api/uploads/signed", "su-new")
                .json(&json!({"max_bytes": 4000})),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        let (s, f) = post_signed(&app, v["url"].as_str().unwrap(), "n.png", blob(3000, 7)).await;
        assert_eq!(s, 201);
        let (s, _) = app
            .get_json(
                "su-new",
                &format!("/api/files/{}", f["id"].as_str().unwrap()),
            )
            .await;
        assert_eq!(s, 200);
    }
);

both!(
    a_signed_upload_over_max_bytes_is_413_and_spends_the_url,
    |b| async move {
        let app = spawn_app(b).await;
        let (_, v) = issue(&app, "so", json!({"max_bytes": 10_000})).await;
        let url = v["url"].as_str().unwrap().to_string();
        // Far over: refused from the Content-Length alone.
        let (s, e) = post_signed(&app, &url, "big.png", blob(200_000, 1)).await;
        assert_eq!(
            (s, e["error"]["code"].as_str()),
            (413, Some("file_too_large"))
        );
        assert_eq!(wait_unreserved(&app, "so").await, 0);
        let (s, _) = post_signed(&app, &url, "small.png", blob(1000, 2)).await;
        assert_eq!(s, 410, "the URL was used");
        // Just over, within the framing slack: refused while streaming.
        let (_, v) = issue(&app, "so", json!({"max_bytes": 10_000})).await;
        let (s, e) = post_signed(&app, v["url"].as_str().unwrap(), "b.png", blob(10_001, 3)).await;
        assert_eq!(
            (s, e["error"]["code"].as_str()),
            (413, Some("file_too_large"))
        );
        assert_eq!(wait_unreserved(&app, "so").await, 0);
        // Exactly max_bytes fits.
        let (_, v) = issue(&app, "so", json!({"max_bytes": 10_000})).await;
        let (s, f) = post_signed(&app, v["url"].as_str().unwrap(), "c.png", blob(10_000, 4)).await;
        assert_eq!((s, f["file_size"].as_u64()), (201, Some(10_000)));
        assert!(app.temp_files().await.is_empty());
        app.assert_consistent("so").await;
    }
);

both!(
    an_expired_signed_upload_is_403_and_cleanup_gives_its_room_back,
    |b| async move {
        let app = spawn_app(b).await;
        let (_, v) = issue(&app, "se", json!({"max_bytes": 50_000, "expires_in": 3600})).await;
        let url = v["url"].as_str().unwrap().to_string();
        let token_part = url.strip_prefix("/u/").unwrap();
        let (payload, _) =
            signed_url::open_payload(&app.state.signing_key, Purpose::Upload, token_part).unwrap();
        let id = Uuid::from_slice(&payload).unwrap();
        // The same URL, validly signed, with an expiry in the past.
        let past = signed_url::sign_payload(
            &app.state.signing_key,
            Purpose::Upload,
            &payload,
            1_000_000_000,
        );
        let (s, _) = post_signed(&app, &format!("/u/{past}"), "a.png", blob(1000, 1)).await;
        assert_eq!(s, 403);
        // Cleanup before expiry keeps the reservation.
        cleanup::run(&app.state, Duration::ZERO).await.unwrap();
        assert_eq!(
            app.state
                .meta
                .get_user("se")
                .await
                .unwrap()
                .unwrap()
                .reserved_bytes,
            50_000
        );
        // Its time passes (the rows say so) and cleanup runs.
        let past_time = if b == Backend::Postgres {
            "'2000-01-01T00:00:00Z'".to_string()
        } else if b == Backend::MariaDb {
            "'2000-01-01 00:00:00'".to_string()
        } else {
            "'2000-01-01T00:00:00.000000Z'".to_string()
        };
        let id_lit = if b == Backend::Postgres {
            format!("'{id}'")
        } else {
            format!("X'{}'", id.simple())
        };
        app.exec_sql(&format!(
            "UPDATE upload_reservations SET expires_at = {past_time} WHERE id = {id_lit}"
        ))
        .await;
        app.exec_sql(&format!(
            "UPDATE signed_uploads SET expires_at = {past_time} WHERE id = {id_lit}"
        ))
        .await;
        let report = cleanup::run(&app.state, Duration::ZERO).await.unwrap();
        assert_eq!(report.expired_reservations, 1, "{report:?}");
        assert_eq!(report.expired_signed_uploads, 1, "{report:?}");
        assert_eq!(
            app.state
                .meta
                .get_user("se")
                .await
                .unwrap()
                .unwrap()
                .reserved_bytes,
            0
        );
        // The URL is dead after that, and nothing was listed.
        let (s, _) = post_signed(&app, &url, "a.png", blob(1000, 2)).await;
        assert_eq!(s, 403);
        assert!(app.list_all("se", "").await.is_empty());
        app.assert_consistent("se").await;
    }
);

// ----------------------------------------------------------------- archives

both!(an_archive_unzips_to_the_same_bytes, |b| async move {
    let app = spawn_app(b).await;
    let a = blob(5000, 1);
    let b2 = blob(70_000, 2);
    let c = blob(200, 3);
    let fa = app
        .upload_with("ar", "same.png", a.clone(), &[("package_name", "pk")])
        .await
        .json::<Value>()
        .await
        .unwrap();
    app.upload_with("ar", "same.png", b2.clone(), &[("package_name", "pk")])
        .await
        .json::<Value>()
        .await
        .unwrap();
    let fc = app
        .upload_with("ar", "ünï.png", c.clone(), &[("package_name", "pk")])
        .await
        .json::<Value>()
        .await
        .unwrap();
    app.upload_with(
        "ar",
        "elsewhere.png",
        blob(100, 4),
        &[("package_name", "other")],
    )
    .await;
    // A name that only a rename could give: still Zip-safe.
    let r = app
        .client
        .patch(app.url(&format!("/api/files/{}", fc["id"].as_str().unwrap())))
        .bearer_auth(token("ar"))
        .json(&json!({"file_name": "a..b:c.png"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let r = app.get("ar", "/api/files/archive?package_name=pk").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/zip");
    assert!(r.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .contains("pk.zip"));
    let zip = r.bytes().await.unwrap();
    let got = unzip(&zip);
    let want = vec![
        ("same.png".to_string(), a.clone()),
        ("same (2).png".to_string(), b2.clone()),
        ("a.b_c.png".to_string(), c.clone()),
    ];
    assert_eq!(got, want);

    // By ids, in the order given, duplicates once.
    let ids = format!(
        "{},{},{}",
        fc["id"].as_str().unwrap(),
        fa["id"].as_str().unwrap(),
        fc["id"].as_str().unwrap()
    );
    let r = app
        .get("ar", &format!("/api/files/archive?ids={ids}"))
        .await;
    assert_eq!(r.status(), 200);
    let got = unzip(&r.bytes().await.unwrap());
    assert_eq!(
        got,
        vec![
            ("a.b_c.png".to_string(), c.clone()),
            ("same.png".to_string(), a.clone())
        ]
    );

    // Not the user's, unknown, empty or ambiguous.
    let other = app.upload_ok("ar-other", "x.png", blob(100, 5)).await;
    let r = app
        .get(
            "ar",
            &format!(
                "/api/files/archive?ids={},{}",
                fa["id"].as_str().unwrap(),
                other["id"].as_str().unwrap()
            ),
        )
        .await;
    assert_eq!(r.status(), 404);
    assert_eq!(
        app.get("ar", "/api/files/archive?package_name=none")
            .await
            .status(),
        404
    );
    assert_eq!(app.get("ar", "/api/files/archive").await.status(), 400);
    assert_eq!(
        app.get("ar", "/api/files/archive?package_name=pk&ids=x")
            .await
            .status(),
        400
    );
    assert_eq!(
        app.get("ar-other", "/api/files/archive?package_name=pk")
            .await
            .status(),
        404
    );

    // Through a signed link, without a session.
    let (s, v) = send_json(
        app.client
            .post(app.url("/api/files/archive/signed-url"))
            .bearer_auth(token("ar"))
            .json(&json!({"package_name": "pk", "expires_in": 600})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let link = v["url"].as_str().unwrap().to_string();
    assert!(link.starts_with("/s/archive/"), "{link}");
    let r = app.get_public(&link).await;
    assert_eq!(r.status(), 200);
    assert_eq!(unzip(&r.bytes().await.unwrap()), want);
    let altered = format!("{}A", &link[..link.len() - 1]);
    let altered = if altered == link {
        format!("{}B", &link[..link.len() - 1])
    } else {
        altered
    };
    assert_eq!(app.get_public(&altered).await.status(), 403);
    let tok = link.strip_prefix("/s/archive/").unwrap();
    let (payload, _) =
        signed_url::open_payload(&app.state.signing_key, Purpose::Archive, tok).unwrap();
    let expired = signed_url::sign_payload(
        &app.state.signing_key,
        Purpose::Archive,
        &payload,
        1_000_000_000,
    );
    assert_eq!(
        app.get_public(&format!("/s/archive/{expired}"))
            .await
            .status(),
        403
    );
    // An upload token is no archive link.
    let (_, up) = issue(&app, "ar", json!({"max_bytes": 10})).await;
    let up_tok = up["url"]
        .as_str()
        .unwrap()
        .strip_prefix("/u/")
        .unwrap()
        .to_string();
    assert_eq!(
        app.get_public(&format!("/s/archive/{up_tok}"))
            .await
            .status(),
        403
    );
    // A link for ids of someone else's is refused at issue.
    let (s, _) = send_json(
        app.client
            .post(app.url("/api/files/archive/signed-url"))
            .bearer_auth(token("ar"))
            .json(&json!({"ids": [other["id"]]})),
    )
    .await;
    assert_eq!(s, 404);
});
