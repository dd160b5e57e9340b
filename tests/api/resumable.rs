//! "Resumable Uploads for HTTP" (the IETF draft) at /api/uploads, beside
//! tus on the same upload engine: a client for interop version 8 built on
//! Node's `http` (which reports 104 interim responses), tus-js-client's
//! `ietf-draft-03`/`ietf-draft-05` protocols, and draft and tus uploads
//! mixed into one small room.

use std::{path::Path, time::Duration};

use base64::{engine::general_purpose::STANDARD as B64, Engine};
use serde_json::{json, Value};
use sha2::Digest as _;

use crate::{
    both,
    helpers::*,
    local,
    tus::{clients_dir, create_ok, reserved, run_client},
    tus_takeover::{statuses, stop_mid_upload, Stop},
};

const PROBLEM_TYPES: &str = "https://iana.org/assignments/http-problem-types#";
const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

/// One request through tests/clients/ietf/request.mjs (see there).
async fn node(plan: Value) -> Value {
    let mut c = tokio::process::Command::new("node");
    c.arg(clients_dir().join("ietf/request.mjs"))
        .arg(plan.to_string())
        .kill_on_drop(true);
    run_client(&mut c).await
}

fn auth(user: &str) -> (String, Value) {
    (
        "Authorization".into(),
        json!(format!("Bearer {}", token(user))),
    )
}

/// Only the session: a request naming no protocol.
fn auth_only(user: &str) -> Value {
    let (k, a) = auth(user);
    let mut m = serde_json::Map::new();
    m.insert(k, a);
    Value::Object(m)
}

/// Request headers for `user` speaking interop version `v`, plus `extra`.
fn headers(user: &str, v: u32, extra: &[(&str, &str)]) -> Value {
    let mut m = serde_json::Map::new();
    let (k, a) = auth(user);
    m.insert(k, a);
    m.insert("Upload-Draft-Interop-Version".into(), json!(v.to_string()));
    for (k, val) in extra {
        m.insert((*k).into(), json!(val));
    }
    Value::Object(m)
}

fn write_file(dir: &Path, name: &str, data: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    p.to_string_lossy().into_owned()
}

fn repr_digest(data: &[u8]) -> String {
    format!("sha-256=:{}:", B64.encode(sha2::Sha256::digest(data)))
}

fn h<'a>(res: &'a Value, name: &str) -> Option<&'a str> {
    res["headers"][name].as_str()
}

fn problem(res: &Value) -> Value {
    assert_eq!(
        h(res, "content-type"),
        Some("application/problem+json"),
        "{res}"
    );
    serde_json::from_str(res["body"].as_str().unwrap()).unwrap()
}

fn max_size(limit: &str) -> u64 {
    limit
        .split(',')
        .find_map(|m| m.trim().strip_prefix("max-size="))
        .unwrap_or_else(|| panic!("no max-size in {limit:?}"))
        .parse()
        .unwrap()
}

async fn file_bytes(app: &TestApp, user: &str, id: &str) -> Vec<u8> {
    let r = app.get(user, &format!("/api/files/{id}/download")).await;
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap().to_vec()
}

async fn head_v(app: &TestApp, user: &str, loc: &str, v: u32) -> Value {
    node(json!({"method": "HEAD", "url": app.url(loc), "headers": headers(user, v, &[])})).await
}

// Creation with a known length, whole body in the request: the 104 (with
// Location and Upload-Limit) arrives while the body is still being sent;
// the final answer carries Upload-Complete: ?1 and Stowage-File-Id, the
// name comes from Content-Disposition, the digest is checked.
both!(draft8_creation_with_length_and_104, |b| async move {
    let app = spawn_app(b).await;
    app.admin_set_quota("ann", 64 * MIB as u64).await;
    let data = png_bytes(3 * MIB);
    let file = write_file(app.dir.path(), "a.png", &data);
    let res = node(json!({
        "method": "POST", "url": app.url("/api/uploads"), "file": file,
        "hold_until_104": 256 * KIB,
        "headers": headers("ann", 8, &[
            ("Upload-Complete", "?1"),
            ("Upload-Length", &data.len().to_string()),
            ("Content-Type", "image/png"),
            ("Content-Disposition", "attachment; filename=\"holiday photo.png\""),
            ("Repr-Digest", &repr_digest(&data)),
        ]),
    }))
    .await;
    assert_eq!(res["error"], Value::Null, "{res}");
    let info = &res["informational"][0];
    assert_eq!(info["status"], 104, "{res}");
    // The draft: the 104 names the interop version (clients ignore it else).
    assert_eq!(
        info["headers"]["upload-draft-interop-version"], "8",
        "{res}"
    );
    assert_eq!(res["info_before_body_end"], true, "{res}");
    let loc = info["headers"]["location"].as_str().unwrap();
    assert!(loc.starts_with("/api/uploads/"), "{res}");
    let limit = info["headers"]["upload-limit"].as_str().unwrap();
    assert_eq!(
        max_size(limit),
        app.state.config.max_file_size.min(64 * MIB as u64)
    );
    assert_eq!(res["status"], 201, "{res}");
    assert_eq!(h(&res, "upload-complete"), Some("?1"));
    let id = h(&res, "stowage-file-id").unwrap().to_string();
    assert!(loc.ends_with(&id), "{loc} / {id}");
    let f: Value = serde_json::from_str(res["body"].as_str().unwrap()).unwrap();
    assert_eq!(f["file_name"], "holiday photo.png");
    assert_eq!(f["sha256"], sha256_hex(&data));
    assert!(file_bytes(&app, "ann", &id).await == data);
    // Offset retrieval of the finished upload.
    let done = head_v(&app, "ann", loc, 8).await;
    assert_eq!(done["status"], 204, "{done}");
    assert_eq!(h(&done, "upload-complete"), Some("?1"));
    assert_eq!(
        h(&done, "upload-offset"),
        Some(data.len().to_string().as_str())
    );
    assert_eq!(reserved(&app, "ann").await, 0);
    app.assert_consistent("ann").await;
});

// Creation without a length (chunked, Upload-Complete: ?0), cut mid-body;
// HEAD gives the offset kept (no Upload-Length: none was given), a PATCH
// of application/partial-upload with Upload-Complete: ?1 finishes it.
both!(
    draft8_creation_without_length_resume_after_cut,
    |b| async move {
        let app = spawn_app(b).await;
        app.admin_set_quota("bea", 64 * MIB as u64).await;
        let data = png_bytes(6 * MIB);
        let file = write_file(app.dir.path(), "b.png", &data);
        let first = node(json!({
            "method": "POST", "url": app.url("/api/uploads"), "file": file, "chunked": true,
            // The 104 comes once the upload exists (on S3, once the store
            // opened it): wait for it however loaded the machine, then give
            // the server time to take some of the body before the cut.
            "cut_after": 2 * MIB, "wait_104_ms": 30_000, "settle_ms": 500,
            "headers": headers("bea", 8, &[("Upload-Complete", "?0"),
                ("Content-Disposition", "attachment; filename=b.png")]),
        }))
        .await;
        assert_eq!(first["cut"], true, "{first}");
        let info = &first["informational"][0];
        assert_eq!(info["status"], 104, "{first}");
        let loc = info["headers"]["location"]
            .as_str()
            .unwrap_or_else(|| panic!("no Location in the 104: {first}"))
            .to_string();
        let at = head_v(&app, "bea", &loc, 8).await;
        assert_eq!(at["status"], 204, "{at}");
        assert_eq!(h(&at, "upload-complete"), Some("?0"));
        assert_eq!(h(&at, "cache-control"), Some("no-store"));
        assert_eq!(h(&at, "upload-length"), None, "{at}");
        assert!(
            h(&at, "upload-limit").is_some_and(|l| max_size(l) > 0),
            "{at}"
        );
        let offset: usize = h(&at, "upload-offset").unwrap().parse().unwrap();
        assert!(offset > 0 && offset <= 2 * MIB, "{at}");
        // Nothing of the upload counts as stored; its reservation covers it.
        assert!(reserved(&app, "bea").await >= offset as i64);
        assert!(app.list_all("bea", "").await.is_empty());
        let rest = node(json!({
            "method": "PATCH", "url": app.url(&loc), "file": file, "start": offset,
            "headers": headers("bea", 8, &[("Upload-Complete", "?1"),
                ("Upload-Offset", &offset.to_string()),
                ("Content-Type", "application/partial-upload")]),
        }))
        .await;
        assert_eq!(rest["status"], 200, "{rest}");
        assert_eq!(h(&rest, "upload-complete"), Some("?1"));
        let id = h(&rest, "stowage-file-id").unwrap().to_string();
        let f: Value = serde_json::from_str(rest["body"].as_str().unwrap()).unwrap();
        assert_eq!(f["file_name"], "b.png");
        assert_eq!(f["file_size"], data.len() as u64);
        assert!(file_bytes(&app, "bea", &id).await == data);
        assert_eq!(reserved(&app, "bea").await, 0);
        app.assert_consistent("bea").await;
    }
);

// Offset mismatch (409, mismatching-upload-offset with expected/provided),
// a PATCH without application/partial-upload (415), an append that ends
// short of the length it declared complete (inconsistent-upload-length),
// and an append to a completed upload.
both!(draft8_offset_and_length_errors, |b| async move {
    let app = spawn_app(b).await;
    app.admin_set_quota("cid", 64 * MIB as u64).await;
    let data = png_bytes(300 * KIB);
    let file = write_file(app.dir.path(), "c.png", &data);
    let created = node(json!({
        "method": "POST", "url": app.url("/api/uploads"),
        "headers": headers("cid", 8, &[("Upload-Complete", "?0"),
            ("Upload-Length", &data.len().to_string())]),
    }))
    .await;
    assert_eq!(created["status"], 201, "{created}");
    assert_eq!(h(&created, "upload-complete"), Some("?0"));
    assert_eq!(h(&created, "upload-offset"), Some("0"));
    assert!(h(&created, "upload-limit").is_some(), "{created}");
    let loc = h(&created, "location").unwrap().to_string();
    let url = app.url(&loc);
    let part = |start: usize, end: usize, off: usize, complete: &str, ct: &str| {
        json!({"method": "PATCH", "url": url, "file": file, "start": start, "end": end,
               "headers": headers("cid", 8, &[("Upload-Complete", complete),
                   ("Upload-Offset", &off.to_string()), ("Content-Type", ct)])})
    };
    let ok = node(part(0, 100 * KIB, 0, "?0", "application/partial-upload")).await;
    assert_eq!(ok["status"], 204, "{ok}");
    assert_eq!(h(&ok, "upload-complete"), Some("?0"));
    assert_eq!(
        h(&ok, "upload-offset"),
        Some((100 * KIB).to_string().as_str())
    );

    let wrong = node(part(0, 10, 5, "?0", "application/partial-upload")).await;
    assert_eq!(wrong["status"], 409, "{wrong}");
    assert_eq!(h(&wrong, "upload-complete"), Some("?0"));
    assert_eq!(
        h(&wrong, "upload-offset"),
        Some((100 * KIB).to_string().as_str())
    );
    let p = problem(&wrong);
    assert_eq!(
        p["type"],
        format!("{PROBLEM_TYPES}mismatching-upload-offset")
    );
    assert_eq!(p["expected-offset"], 100 * KIB);
    assert_eq!(p["provided-offset"], 5);

    let octet = node(part(
        100 * KIB,
        110 * KIB,
        100 * KIB,
        "?0",
        "application/offset+octet-stream",
    ))
    .await;
    assert_eq!(octet["status"], 415, "{octet}");
    problem(&octet);

    // Says it completes the upload, but 50 KiB short of Upload-Length.
    let short = node(part(
        100 * KIB,
        250 * KIB,
        100 * KIB,
        "?1",
        "application/partial-upload",
    ))
    .await;
    assert_eq!(short["status"], 400, "{short}");
    let p = problem(&short);
    assert_eq!(
        p["type"],
        format!("{PROBLEM_TYPES}inconsistent-upload-length")
    );
    // A different Upload-Length than the one recorded.
    let mut other = part(
        100 * KIB,
        110 * KIB,
        100 * KIB,
        "?0",
        "application/partial-upload",
    );
    other["headers"]["Upload-Length"] = json!("999999");
    let other = node(other).await;
    assert_eq!(other["status"], 400, "{other}");
    assert_eq!(
        problem(&other)["type"],
        format!("{PROBLEM_TYPES}inconsistent-upload-length")
    );

    // Nothing moved; the rest completes it.
    let at = head_v(&app, "cid", &loc, 8).await;
    assert_eq!(
        h(&at, "upload-offset"),
        Some((100 * KIB).to_string().as_str())
    );
    assert_eq!(
        h(&at, "upload-length"),
        Some(data.len().to_string().as_str())
    );
    let done = node(part(
        100 * KIB,
        data.len(),
        100 * KIB,
        "?1",
        "application/partial-upload",
    ))
    .await;
    assert_eq!(done["status"], 200, "{done}");
    let id = h(&done, "stowage-file-id").unwrap().to_string();
    assert!(file_bytes(&app, "cid", &id).await == data);
    // A retried empty completing append replays the answer; data does not.
    let replay = node(part(0, 0, data.len(), "?1", "application/partial-upload")).await;
    assert_eq!(replay["status"], 200, "{replay}");
    assert_eq!(h(&replay, "stowage-file-id"), Some(id.as_str()));
    let more = node(part(0, 10, data.len(), "?1", "application/partial-upload")).await;
    assert_eq!(more["status"], 400, "{more}");
    assert_eq!(
        problem(&more)["type"],
        format!("{PROBLEM_TYPES}completed-upload")
    );
    assert_eq!(app.list_all("cid", "").await.len(), 1);
    assert_eq!(reserved(&app, "cid").await, 0);
    app.assert_consistent("cid").await;
});

// Repr-Digest that does not match the upload: the draft's problem type,
// nothing stored, the reservation released.
both!(draft8_digest_mismatch_stores_nothing, |b| async move {
    let app = spawn_app(b).await;
    app.admin_set_quota("dan", 64 * MIB as u64).await;
    let data = png_bytes(700 * KIB);
    let file = write_file(app.dir.path(), "d.png", &data);
    let mut other = data.clone();
    other[500] ^= 1;
    let res = node(json!({
        "method": "POST", "url": app.url("/api/uploads"), "file": file,
        "headers": headers("dan", 8, &[("Upload-Complete", "?1"),
            ("Repr-Digest", &repr_digest(&other))]),
    }))
    .await;
    assert_eq!(res["status"], 400, "{res}");
    assert_eq!(h(&res, "upload-complete"), Some("?1"));
    let p = problem(&res);
    assert_eq!(
        p["type"],
        format!("{PROBLEM_TYPES}digest-mismatched-values")
    );
    assert!(app.list_all("dan", "").await.is_empty());
    assert_eq!(reserved(&app, "dan").await, 0);
    let loc = h(&res, "location").unwrap().to_string();
    assert_eq!(head_v(&app, "dan", &loc, 8).await["status"], 404);
    app.assert_consistent("dan").await;
    // The same with the right digest is stored.
    let ok = node(json!({
        "method": "POST", "url": app.url("/api/uploads"), "file": file,
        "headers": headers("dan", 8, &[("Upload-Complete", "?1"),
            ("Repr-Digest", &repr_digest(&data))]),
    }))
    .await;
    assert_eq!(ok["status"], 201, "{ok}");
});

// Over the per-file limit (413) and over the room (507), both with the
// Upload-Limit that would fit; an upload of unknown length stops at the
// room; DELETE cancels and releases everything.
both!(draft8_over_limit_over_quota_and_cancel, |b| async move {
    let app = spawn_app_with(b, |c| c.max_file_size = 3 * MIB as u64).await;
    app.admin_set_quota("eve", 2 * MIB as u64).await;
    let create = |len: usize| {
        json!({"method": "POST", "url": app.url("/api/uploads"),
               "headers": headers("eve", 8, &[("Upload-Complete", "?0"),
                   ("Upload-Length", &len.to_string())])})
    };
    let big = node(create(4 * MIB)).await;
    assert_eq!(big["status"], 413, "{big}");
    assert_eq!(max_size(h(&big, "upload-limit").unwrap()), 2 * MIB as u64);
    problem(&big);
    let full = node(create(5 * MIB / 2)).await;
    assert_eq!(full["status"], 507, "{full}");
    assert_eq!(max_size(h(&full, "upload-limit").unwrap()), 2 * MIB as u64);
    assert_eq!(problem(&full)["code"], "quota_exceeded");
    assert_eq!(reserved(&app, "eve").await, 0);

    // No length: counted while streaming, stopped at the room.
    let data = png_bytes(3 * MIB);
    let file = write_file(app.dir.path(), "e.png", &data);
    let res = node(json!({
        "method": "POST", "url": app.url("/api/uploads"), "file": file, "chunked": true,
        "headers": headers("eve", 8, &[("Upload-Complete", "?1")]),
    }))
    .await;
    let loc = res["informational"][0]["headers"]["location"]
        .as_str()
        .unwrap_or_else(|| panic!("{res}"))
        .to_string();
    if !res["status"].is_null() {
        assert_eq!(res["status"], 507, "{res}");
        assert_eq!(problem(&res)["code"], "quota_exceeded");
    }
    let usage = app.usage("eve").await;
    let held = reserved(&app, "eve").await;
    assert!(
        usage["total_bytes"].as_i64().unwrap() + held <= 2 * MIB as i64,
        "{usage} {held}"
    );
    assert!(app.list_all("eve", "").await.is_empty());
    let at = head_v(&app, "eve", &loc, 8).await;
    assert_eq!(at["status"], 204, "{at}");
    let offset: u64 = h(&at, "upload-offset").unwrap().parse().unwrap();
    assert!(offset <= 2 * MIB as u64, "{at}");

    // Cancellation.
    let del =
        node(json!({"method": "DELETE", "url": app.url(&loc), "headers": headers("eve", 8, &[])}))
            .await;
    assert_eq!(del["status"], 204, "{del}");
    let gone = head_v(&app, "eve", &loc, 8).await;
    assert_eq!(gone["status"], 404, "{gone}");
    assert_eq!(h(&gone, "content-type"), Some("application/problem+json"));
    assert_eq!(reserved(&app, "eve").await, 0);
    app.assert_consistent("eve").await;
});

// Versions: 3 speaks Upload-Incomplete; a version this server does not
// speak gets no 104 and no upload; a request naming no version reaches a
// draft upload all the same.
both!(draft_versions, |b| async move {
    let app = spawn_app(b).await;
    app.admin_set_quota("fay", 64 * MIB as u64).await;
    let data = png_bytes(200 * KIB);
    let file = write_file(app.dir.path(), "f.png", &data);
    let v3 = node(json!({
        "method": "POST", "url": app.url("/api/uploads"), "file": file, "hold_until_104": 64 * KIB,
        "headers": headers("fay", 3, &[("Upload-Incomplete", "?0")]),
    }))
    .await;
    assert_eq!(v3["informational"][0]["status"], 104, "{v3}");
    assert_eq!(
        v3["informational"][0]["headers"]["upload-draft-interop-version"], "3",
        "{v3}"
    );
    assert_eq!(v3["status"], 201, "{v3}");
    assert_eq!(h(&v3, "upload-incomplete"), Some("?0"));
    assert_eq!(h(&v3, "upload-complete"), None);

    let unknown = node(json!({
        "method": "POST", "url": app.url("/api/uploads"),
        "headers": headers("fay", 4, &[("Upload-Complete", "?0")]),
    }))
    .await;
    assert_eq!(unknown["status"], 400, "{unknown}");
    assert_eq!(unknown["informational"], json!([]), "{unknown}");
    assert_eq!(problem(&unknown)["code"], "unsupported_version");
    assert_eq!(app.list_all("fay", "").await.len(), 1);

    let created = node(json!({
        "method": "POST", "url": app.url("/api/uploads"),
        "headers": headers("fay", 6, &[("Upload-Complete", "?0"), ("Upload-Length", "10")]),
    }))
    .await;
    let loc = h(&created, "location").unwrap().to_string();
    let plain =
        node(json!({"method": "HEAD", "url": app.url(&loc), "headers": auth_only("fay")})).await;
    assert_eq!(plain["status"], 204, "{plain}");
    assert_eq!(h(&plain, "upload-complete"), Some("?0"));
    // A tus upload is still tus's.
    let tus = create_ok(&app, "fay", 10, "").await;
    let plain =
        node(json!({"method": "HEAD", "url": app.url(&tus), "headers": auth_only("fay")})).await;
    assert_eq!(plain["status"], 412, "{plain}");
});

// tus-js-client's IETF protocols (interop versions 5 and 6): a 50 MiB
// upload whose connection is cut after ~20 MiB, resumed by a second run
// from the server's offset; the bytes compared.
async fn js_ietf_cut_then_resume(b: Backend, protocol: &str) {
    crate::tus::require_clients();
    let app = spawn_app(b).await;
    let data = png_bytes(50 * MIB);
    let file = write_file(app.dir.path(), "big.png", &data);
    let endpoint = app.url("/api/uploads");
    let cmd = |extra: &[&str]| {
        let mut c = crate::tus::js_cmd(&endpoint, "gus", Path::new(&file), extra);
        c.args(["--protocol", protocol]);
        c
    };
    let first = run_client(&mut cmd(&["--abort-after", &(20 * MIB).to_string()])).await;
    assert_eq!(first["aborted"], true, "{first}");
    let url = first["url"].as_str().unwrap().to_string();
    let second = run_client(&mut cmd(&["--upload-url", &url])).await;
    assert_eq!(second["ok"], true, "{second}");
    let offsets: Vec<u64> = second["head_offsets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert!(
        offsets.iter().any(|o| *o > 0 && *o <= data.len() as u64),
        "resumed from the server's offset: {second}"
    );
    let id = second["file_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{second}"));
    let (s, f) = app.get_json("gus", &format!("/api/files/{id}")).await;
    assert_eq!(s, 200);
    assert_eq!(f["sha256"], sha256_hex(&data));
    assert_eq!(f["file_name"], "big.png");
    assert!(
        file_bytes(&app, "gus", id).await == data,
        "downloaded bytes differ"
    );
    assert_eq!(app.list_all("gus", "").await.len(), 1);
    assert_eq!(reserved(&app, "gus").await, 0);
}

both!(tus_js_ietf_draft_03_cut_then_resume, |b| async move {
    js_ietf_cut_then_resume(b, "ietf-draft-03").await
});

both!(tus_js_ietf_draft_05_cut_then_resume, |b| async move {
    js_ietf_cut_then_resume(b, "ietf-draft-05").await
});

// 40 uploads at once, half draft and half tus, into a room for a few of
// them: committed + reserved never passes the quota, the ones that fit are
// stored whole, the others refused with 507.
both!(mixed_draft_and_tus_never_pass_the_quota, |b| async move {
    let app = spawn_app(b).await;
    let room = 5 * 256 * KIB as u64;
    app.admin_set_quota("hal", room).await;
    let data = png_bytes(256 * KIB);
    let file = write_file(app.dir.path(), "m.png", &data);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (state, stop) = (app.state.clone(), stop.clone());
        tokio::spawn(async move {
            let mut worst = 0i64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                if let Ok(Some(u)) = state.meta.get_user("hal").await {
                    worst = worst.max(u.total_bytes + u.reserved_bytes);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            worst
        })
    };
    let mut tasks = Vec::new();
    for i in 0..40 {
        let (app_url, file, data) = (app.url("/api/uploads"), file.clone(), data.clone());
        let base = app.base.clone();
        let client = app.client.clone();
        tasks.push(tokio::spawn(async move {
            if i % 2 == 0 {
                // Created first (the reservation), then the whole body.
                let r = node(json!({
                    "method": "POST", "url": app_url,
                    "headers": headers("hal", 8, &[("Upload-Complete", "?0"),
                        ("Upload-Length", &data.len().to_string())]),
                }))
                .await;
                if r["status"] != 201 {
                    return r["status"].as_u64().unwrap_or(0);
                }
                let loc = r["headers"]["location"].as_str().unwrap();
                let r = node(json!({
                    "method": "PATCH", "url": format!("{base}{loc}"), "file": file,
                    "headers": headers("hal", 8, &[("Upload-Complete", "?1"),
                        ("Upload-Offset", "0"), ("Content-Type", "application/partial-upload")]),
                }))
                .await;
                match r["status"].as_u64() {
                    Some(200) => 201,
                    other => other.unwrap_or(0),
                }
            } else {
                let r = client
                    .post(format!("{base}/api/uploads"))
                    .bearer_auth(token("hal"))
                    .header("Tus-Resumable", "1.0.0")
                    .header("Upload-Length", data.len().to_string())
                    .send()
                    .await
                    .unwrap();
                if r.status() != 201 {
                    return r.status().as_u16() as u64;
                }
                let loc = r.headers()["location"].to_str().unwrap().to_string();
                let r = client
                    .patch(format!("{base}{loc}"))
                    .bearer_auth(token("hal"))
                    .header("Tus-Resumable", "1.0.0")
                    .header("Content-Type", "application/offset+octet-stream")
                    .header("Upload-Offset", "0")
                    .body(data)
                    .send()
                    .await
                    .unwrap();
                if r.status() == 204 {
                    201
                } else {
                    r.status().as_u16() as u64
                }
            }
        }));
    }
    let mut stored = 0;
    for t in tasks {
        match t.await.unwrap() {
            201 => stored += 1,
            507 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let worst = watcher.await.unwrap();
    assert!(
        worst <= room as i64,
        "committed + reserved reached {worst} > {room}"
    );
    assert_eq!(stored, 5, "exactly the room's worth is stored");
    let files = app.list_all("hal", "").await;
    assert_eq!(files.len(), 5);
    for f in &files {
        assert_eq!(f["sha256"], sha256_hex(&data));
    }
    assert_eq!(reserved(&app, "hal").await, 0);
    app.assert_consistent("hal").await;
});

fn max_age(limit: &str) -> u64 {
    limit
        .split(',')
        .find_map(|m| m.trim().strip_prefix("max-age="))
        .unwrap_or_else(|| panic!("no max-age in {limit:?}"))
        .parse()
        .unwrap()
}

// OPTIONS on the upload endpoint reveals the limits (the draft: a server
// whose resource supports creating uploads MUST send Upload-Limit there):
// without a session the per-file limit, with one the smaller of it and the
// user's room; max-age is the upload lifetime.
local!(options_reveal_the_upload_limit, |b| async move {
    let app = spawn_app_with(b, |c| c.max_file_size = 5 * MIB as u64).await;
    app.admin_set_quota("ivy", 3 * MIB as u64).await;
    let options = |user: Option<&str>| {
        let mut rb = app
            .client
            .request(reqwest::Method::OPTIONS, app.url("/api/uploads"));
        if let Some(u) = user {
            rb = rb.bearer_auth(token(u));
        }
        rb.send()
    };
    let anon = options(None).await.unwrap();
    assert!(anon.status().is_success(), "{}", anon.status());
    let limit = anon.headers()["upload-limit"].to_str().unwrap().to_string();
    assert_eq!(max_size(&limit), 5 * MIB as u64, "{limit}");
    assert_eq!(max_age(&limit), app.state.config.upload_expiry.as_secs());
    // tus discovery is still there.
    assert_eq!(anon.headers()["tus-version"], "1.0.0");
    let ivy = options(Some("ivy")).await.unwrap();
    let limit = ivy.headers()["upload-limit"].to_str().unwrap().to_string();
    assert_eq!(max_size(&limit), 3 * MIB as u64, "{limit}");
    // What an upload in progress holds is not room any more.
    let created = node(json!({
        "method": "POST", "url": app.url("/api/uploads"),
        "headers": headers("ivy", 8, &[("Upload-Complete", "?0"), ("Upload-Length", &MIB.to_string())]),
    }))
    .await;
    assert_eq!(created["status"], 201, "{created}");
    let ivy = options(Some("ivy")).await.unwrap();
    let limit = ivy.headers()["upload-limit"].to_str().unwrap().to_string();
    assert_eq!(max_size(&limit), 2 * MIB as u64, "{limit}");
});

// An upload created without a length learns it later: from Upload-Length
// on an append, or from the Content-Length of an append that completes it.
// Either way it is written to the upload, so HEAD reports it and later
// appends are held to it, even when the request that told it was cut.
local!(draft8_a_length_learned_later_is_kept, |b| async move {
    let app = spawn_app(b).await;
    app.admin_set_quota("jon", 64 * MIB as u64).await;
    let data = png_bytes(300 * KIB);
    let file = write_file(app.dir.path(), "j.png", &data);
    let create = || {
        node(json!({
            "method": "POST", "url": app.url("/api/uploads"),
            "headers": headers("jon", 8, &[("Upload-Complete", "?0")]),
        }))
    };
    let created = create().await;
    assert_eq!(created["status"], 201, "{created}");
    let loc = h(&created, "location").unwrap().to_string();
    let url = app.url(&loc);
    assert_eq!(
        h(&head_v(&app, "jon", &loc, 8).await, "upload-length"),
        None
    );
    let part = |start: usize, end: usize, complete: &str, extra: &[(&str, &str)]| {
        let mut hs = vec![
            ("Upload-Complete", complete.to_string()),
            ("Upload-Offset", start.to_string()),
            ("Content-Type", PARTIAL.to_string()),
        ];
        hs.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
        let hs: Vec<(&str, &str)> = hs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        json!({"method": "PATCH", "url": url, "file": file, "start": start, "end": end,
               "headers": headers("jon", 8, &hs)})
    };
    let len = data.len().to_string();
    let first = node(part(0, 100 * KIB, "?0", &[("Upload-Length", &len)])).await;
    assert_eq!(first["status"], 204, "{first}");
    let at = head_v(&app, "jon", &loc, 8).await;
    assert_eq!(h(&at, "upload-length"), Some(len.as_str()), "{at}");
    assert_eq!(reserved(&app, "jon").await, data.len() as i64);
    // Held to it from then on.
    let other = node(part(
        100 * KIB,
        110 * KIB,
        "?0",
        &[("Upload-Length", "999999")],
    ))
    .await;
    assert_eq!(other["status"], 400, "{other}");
    assert_eq!(
        problem(&other)["type"],
        format!("{PROBLEM_TYPES}inconsistent-upload-length")
    );
    let bigger = write_file(app.dir.path(), "j-big.png", &png_bytes(400 * KIB));
    let mut past = part(100 * KIB, 400 * KIB, "?0", &[]);
    past["file"] = json!(bigger);
    let past = node(past).await;
    assert_eq!(past["status"], 400, "{past}");
    assert_eq!(
        problem(&past)["type"],
        format!("{PROBLEM_TYPES}inconsistent-upload-length")
    );
    let done = node(part(100 * KIB, data.len(), "?1", &[])).await;
    assert_eq!(done["status"], 200, "{done}");
    let id = h(&done, "stowage-file-id").unwrap().to_string();
    assert!(file_bytes(&app, "jon", &id).await == data);

    // A completing append of known Content-Length, cut: the length it
    // told is kept.
    let created = create().await;
    let loc = h(&created, "location").unwrap().to_string();
    let url = app.url(&loc);
    let res = node(
        json!({"method": "PATCH", "url": url, "file": file, "cut_after": 100 * KIB,
        "headers": headers("jon", 8, &[("Upload-Complete", "?1"), ("Upload-Offset", "0"),
            ("Content-Type", PARTIAL)])}),
    )
    .await;
    assert_eq!(res["cut"], true, "{res}");
    let at = head_v(&app, "jon", &loc, 8).await;
    assert_eq!(at["status"], 204, "{at}");
    assert_eq!(h(&at, "upload-length"), Some(len.as_str()), "{at}");
    assert_eq!(h(&at, "upload-complete"), Some("?0"));
    let offset: usize = h(&at, "upload-offset").unwrap().parse().unwrap();
    assert!(offset <= 100 * KIB, "{at}");
    let done = node(
        json!({"method": "PATCH", "url": url, "file": file, "start": offset,
        "headers": headers("jon", 8, &[("Upload-Complete", "?1"),
            ("Upload-Offset", &offset.to_string()), ("Content-Type", PARTIAL)])}),
    )
    .await;
    assert_eq!(done["status"], 200, "{done}");
    let id = h(&done, "stowage-file-id").unwrap().to_string();
    assert!(file_bytes(&app, "jon", &id).await == data);
    assert_eq!(reserved(&app, "jon").await, 0);
    app.assert_consistent("jon").await;
});

const PARTIAL: &str = "application/partial-upload";

// An upload left incomplete past its lifetime (max-age in Upload-Limit,
// 2 s here): HEAD and PATCH find no upload (404, as problem details);
// cleanup drops it, its reservation is released and its staged bytes
// removed; usage counts nothing of it, and the room is whole again.
local!(
    draft8_an_upload_left_past_its_expiry_is_gone,
    |b| async move {
        let app = spawn_app_clocked(b, |c| c.upload_expiry = Duration::from_secs(2)).await;
        app.admin_set_quota("kim", 2 * MIB as u64).await;
        let data = png_bytes(MIB);
        let file = write_file(app.dir.path(), "k.png", &data);
        let created = node(json!({
            "method": "POST", "url": app.url("/api/uploads"), "file": file, "end": 300 * KIB,
            "headers": headers("kim", 8, &[("Upload-Complete", "?0"),
                ("Upload-Length", &data.len().to_string())]),
        }))
        .await;
        assert_eq!(created["status"], 201, "{created}");
        assert_eq!(
            h(&created, "upload-offset"),
            Some((300 * KIB).to_string().as_str())
        );
        let limit = created["informational"][0]["headers"]["upload-limit"]
            .as_str()
            .unwrap_or_else(|| panic!("{created}"));
        assert!(max_age(limit) <= 2, "{limit}");
        let loc = h(&created, "location").unwrap().to_string();
        let at = head_v(&app, "kim", &loc, 8).await;
        assert!(max_age(h(&at, "upload-limit").unwrap()) <= 2, "{at}");
        assert_eq!(reserved(&app, "kim").await, MIB as i64);

        app.advance(Duration::from_millis(2500));
        let gone = head_v(&app, "kim", &loc, 8).await;
        assert_eq!(gone["status"], 404, "{gone}");
        assert_eq!(h(&gone, "content-type"), Some("application/problem+json"));
        let late = node(
            json!({"method": "PATCH", "url": app.url(&loc), "file": file,
        "start": 300 * KIB,
        "headers": headers("kim", 8, &[("Upload-Complete", "?1"),
            ("Upload-Offset", &(300 * KIB).to_string()), ("Content-Type", PARTIAL)])}),
        )
        .await;
        assert_eq!(late["status"], 404, "{late}");
        problem(&late);
        let report = stowage::jobs::cleanup::run(&app.state, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(report.expired_uploads, 1);
        assert_eq!(reserved(&app, "kim").await, 0);
        app.assert_nothing_staged().await;
        let usage = app.usage("kim").await;
        assert_eq!(usage["total_bytes"], 0, "{usage}");
        assert!(app.list_all("kim", "").await.is_empty());
        // The whole room is there again: a new upload of the file is stored,
        // and counted exactly once.
        let again = node(json!({
            "method": "POST", "url": app.url("/api/uploads"), "file": file,
            "headers": headers("kim", 8, &[("Upload-Complete", "?1")]),
        }))
        .await;
        assert_eq!(again["status"], 201, "{again}");
        let usage = app.usage("kim").await;
        assert_eq!(usage["total_bytes"], data.len() as u64, "{usage}");
        app.assert_consistent("kim").await;
    }
);

// tus-js-client's IETF protocols (interop versions 5 and 6), one request
// for the whole 50 MiB file, paced to ~6 MiB/s: the `stowage serve` child
// is stopped once 6 MiB are staged (SIGKILL for one, SIGTERM for the other)
// and started again on the same port, data and database; the client's own
// retries (HEAD, then the rest from the server's offset) finish the upload
// there; the bytes and sha256 are compared against the restarted server.
async fn js_ietf_across_a_restart(b: Backend, protocol: &str, stop: Stop) {
    let (res, _site) = stop_mid_upload(b, stop, 50 * MIB, |endpoint, file| {
        let mut c = crate::tus::js_cmd(endpoint, "killed", file, &["--retry-delays", "default"]);
        c.args(["--protocol", protocol]);
        c
    })
    .await;
    assert_eq!(res["ok"], true, "{res}");
    let seen = statuses(&res);
    assert!(
        seen.iter().any(|s| s.starts_with("HEAD ")),
        "resumed: {seen:?}"
    );
    // A stopping server (SIGTERM) records what it made durable; a killed
    // one records nothing of the request it was in (the offset moves when a
    // request's bytes are fsynced, at its end), so the retry starts over
    // from the offset the database holds.
    if stop == Stop::Term {
        assert!(
            res["head_offsets"]
                .as_array()
                .unwrap()
                .iter()
                .any(|o| o.as_u64().unwrap() >= 6 * MIB as u64),
            "resumed from what the stopped server kept: {res}"
        );
    }
    assert!(
        !seen.iter().any(|s| s.ends_with(" 423")),
        "no 423: {seen:?}"
    );
}

local!(tus_js_ietf_draft_03_across_a_sigkill, |b| async move {
    js_ietf_across_a_restart(b, "ietf-draft-03", Stop::Kill).await
});

local!(tus_js_ietf_draft_05_across_a_sigterm, |b| async move {
    js_ietf_across_a_restart(b, "ietf-draft-05", Stop::Term).await
});
