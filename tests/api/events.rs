//! Events and webhooks (SPEC §11): every change leaves its event, the
//! webhook gets each one signed, retries until it answers 2xx, and the
//! admin API lists them. The receiver is a real HTTP server on port 0 that
//! checks every signature with its own HMAC code.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use axum::{body::Bytes, extract::State, http::HeaderMap, http::StatusCode, routing::post, Router};
use serde_json::{json, Value};

use crate::helpers::*;
use crate::local;

pub const SECRET: &str = "whsec-test-0123456789";

/// What the receiver saw.
#[derive(Default)]
pub struct Seen {
    /// Every request whose signature checked out, in arrival order.
    pub requests: Mutex<Vec<Value>>,
    /// Requests answered 2xx.
    pub accepted: Mutex<Vec<Value>>,
    pub bad_signatures: AtomicUsize,
    /// Answer 500 to this many (correctly signed) requests first.
    pub fail_first: AtomicUsize,
}

#[derive(Clone)]
struct Rx {
    secret: String,
    seen: Arc<Seen>,
}

/// The receiver's own check: `t=<secs>,v1=<hex>` with v1 the HMAC-SHA256 of
/// `"<t>.<body>"`, compared in constant time, and `t` recent.
pub fn verify(secret: &str, header: &str, body: &[u8]) -> bool {
    use hmac::{Hmac, Mac};
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", x)) => t = Some(x),
            Some(("v1", x)) => v1 = Some(x),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return false;
    };
    let Ok(ts) = t.parse::<i64>() else {
        return false;
    };
    if (now() as i64 - ts).abs() > 300 {
        return false;
    }
    let Ok(sig) = hex::decode(v1) else {
        return false;
    };
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

async fn receive(State(rx): State<Rx>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let sig = headers
        .get("stowage-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !verify(&rx.secret, sig, &body) {
        rx.seen.bad_signatures.fetch_add(1, Ordering::SeqCst);
        return StatusCode::UNAUTHORIZED;
    }
    let ev: Value = serde_json::from_slice(&body).expect("the body is JSON");
    assert_eq!(
        headers["stowage-event-id"].to_str().unwrap(),
        ev["id"].as_str().unwrap()
    );
    rx.seen.requests.lock().unwrap().push(ev.clone());
    let failing = rx
        .seen
        .fail_first
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if failing {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    rx.seen.accepted.lock().unwrap().push(ev);
    StatusCode::NO_CONTENT
}

/// Starts a receiver that checks signatures with `secret`; returns its URL.
pub async fn receiver(secret: &str) -> (String, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let app = Router::new().route("/hook", post(receive)).with_state(Rx {
        secret: secret.to_string(),
        seen: seen.clone(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (format!("http://{addr}/hook"), seen)
}

/// Test delivery settings: the given URL and short retry delays.
fn webhook_to(c: &mut stowage::config::Config, url: &str) {
    c.webhook.url = Some(url.to_string());
    c.webhook.secret = Some(stowage::config::Secret(SECRET.into()));
    c.webhook.backoff_base = Duration::from_millis(20);
    c.webhook.backoff_max = Duration::from_millis(100);
    c.webhook.poll = Duration::from_millis(50);
}

/// Polls `check` until it returns `Some` (or fails after `secs`).
pub async fn until<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every event of the admin API (all pages), oldest first.
pub async fn all_events(app: &TestApp, query: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("/api/admin/events?limit=200{query}");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let r = app
            .client
            .get(app.url(&url))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        out.extend(v["events"].as_array().unwrap().iter().cloned());
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    out.reverse();
    out
}

fn of_type<'a>(events: &'a [Value], t: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == t).collect()
}

/// The `percent` of each `quota.threshold` of `user`, oldest first.
pub(crate) fn percents(events: &[Value], user: &str) -> Vec<i64> {
    events
        .iter()
        .filter(|e| e["type"] == "quota.threshold" && e["user_id"] == user)
        .map(|e| e["data"]["percent"].as_i64().unwrap())
        .collect()
}

/// A JSON document of exactly `len` bytes (a project file).
pub(crate) fn json_bytes(len: usize) -> Vec<u8> {
    let mut v = br#"{"pad":""#.to_vec();
    v.resize(len - 2, b'x');
    v.extend_from_slice(br#""}"#);
    v
}

/// A multipart upload of `data` without a Content-Length (chunked), so the
/// quota is counted while it streams.
async fn chunked_upload(app: &TestApp, user: &str, data: Vec<u8>) -> u16 {
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        data.chunks(16 * 1024).map(|c| Ok(c.to_vec())).collect();
    let part =
        reqwest::multipart::Part::stream(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
            .file_name("big.png");
    let form = reqwest::multipart::Form::new().part("file", part);
    // The server may answer and close before the body is all sent.
    match app
        .client
        .post(app.url("/api/files/upload"))
        .bearer_auth(token(user))
        .multipart(form)
        .send()
        .await
    {
        Ok(r) => r.status().as_u16(),
        Err(_) => 507,
    }
}

local!(
    every_change_is_an_event_and_every_event_reaches_the_webhook,
    |b| async move {
        let (url, seen) = receiver(SECRET).await;
        let seen = &*seen;
        let app = &spawn_app_with(b, |c| webhook_to(c, &url)).await;
        let user = "evie";
        app.admin_set_quota(user, 1_000_000).await;

        // file.created (and later media.ready) for a real image.
        let img = app.upload_ok(user, "pic.png", real_png(64, 48)).await;
        let id = img["id"].as_str().unwrap().to_string();
        // file.updated, twice.
        let r = app
            .client
            .put(app.url(&format!("/api/files/{id}/tags")))
            .bearer_auth(token(user))
            .json(&json!({"tags": ["a", "b"]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let r = app
            .client
            .post(app.url(&format!("/api/files/{id}/favorite")))
            .bearer_auth(token(user))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        // media.failed: sniffs as PNG, does not decode.
        let broken = app.upload_ok(user, "broken.png", png_bytes(5000)).await;
        // upload.failed: refused by content once streaming started…
        let r = app
            .upload(
                user,
                "notes.txt",
                b"just some text, not an image at all".repeat(20),
            )
            .await;
        assert_eq!(r.status(), 415);
        // …and over the quota while streaming (no Content-Length to reserve).
        assert_eq!(chunked_upload(app, user, png_bytes(1_200_000)).await, 507);
        // The refused upload's reservation is released in the background.
        until(10, "the reservation released", || async move {
            let u = app.state.meta.get_user(user).await.unwrap().unwrap();
            (u.reserved_bytes == 0).then_some(())
        })
        .await;
        // quota.threshold: past 80 % of the quota (a project: no media job).
        let big = app.upload_ok(user, "big.json", json_bytes(800_000)).await;
        // file.deleted by the user, then the rest by the admin's user deletion.
        let r = app
            .client
            .delete(app.url(&format!("/api/files/{}", big["id"].as_str().unwrap())))
            .bearer_auth(token(user))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
        until(30, "media events", || async move {
            let ev = all_events(app, "").await;
            (of_type(&ev, "media.ready").len() == 1 && of_type(&ev, "media.failed").len() == 1)
                .then_some(())
        })
        .await;
        let r = app
            .client
            .delete(app.url(&format!("/api/admin/users/{user}")))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);

        let events = all_events(app, "").await;
        let count: BTreeMap<&str, usize> = events.iter().fold(BTreeMap::new(), |mut m, e| {
            *m.entry(e["type"].as_str().unwrap()).or_default() += 1;
            m
        });
        assert_eq!(
            count,
            BTreeMap::from([
                ("file.created", 3),
                ("file.updated", 2),
                ("file.deleted", 3),
                ("upload.failed", 2),
                ("media.ready", 1),
                ("media.failed", 1),
                ("quota.threshold", 1),
            ]),
            "{events:#?}"
        );
        for e in &events {
            assert_eq!(e["user_id"], user);
            assert!(uuid::Uuid::parse_str(e["id"].as_str().unwrap()).is_ok());
            assert!(
                chrono::DateTime::parse_from_rfc3339(e["created_at"].as_str().unwrap()).is_ok()
            );
        }
        let created = of_type(&events, "file.created");
        assert_eq!(created[0]["data"]["file"]["id"], id.as_str());
        assert_eq!(created[0]["data"]["file"]["file_name"], "pic.png");
        assert_eq!(created[0]["data"]["file"]["file_size"], img["file_size"]);
        let updated = of_type(&events, "file.updated");
        assert_eq!(updated[0]["data"]["changed"], json!(["tags"]));
        assert_eq!(updated[0]["data"]["file"]["tags"], json!(["a", "b"]));
        assert_eq!(updated[1]["data"]["changed"], json!(["is_favorite"]));
        assert_eq!(updated[1]["data"]["file"]["is_favorite"], true);
        let ready = of_type(&events, "media.ready");
        assert_eq!(ready[0]["data"]["file"]["resolution"], "64x48");
        assert!(ready[0]["data"]["file"]["thumbnail_url"].is_string());
        let failed = of_type(&events, "media.failed");
        assert_eq!(failed[0]["data"]["file"]["id"], broken["id"]);
        assert!(failed[0]["data"]["reason"].as_str().unwrap().len() > 3);
        let refusals: Vec<&str> = of_type(&events, "upload.failed")
            .iter()
            .map(|e| e["data"]["reason"].as_str().unwrap())
            .collect();
        assert_eq!(refusals, ["unsupported_media_type", "quota_exceeded"]);
        let threshold = of_type(&events, "quota.threshold");
        assert_eq!(
            threshold[0]["data"],
            json!({"percent": 80, "total_bytes": img["file_size"].as_i64().unwrap() + 5000 + 800_000, "max_bytes": 1_000_000})
        );
        let deleted: Vec<&str> = of_type(&events, "file.deleted")
            .iter()
            .map(|e| e["data"]["reason"].as_str().unwrap())
            .collect();
        assert_eq!(deleted, ["deleted", "user_deleted", "user_deleted"]);

        // Every one reaches the webhook, signed, with the same id and body.
        let n = events.len();
        until(30, "every event delivered", || async move {
            (seen.accepted.lock().unwrap().len() >= n).then_some(())
        })
        .await;
        let accepted = seen.accepted.lock().unwrap().clone();
        let by_id: BTreeMap<String, Value> = accepted
            .iter()
            .map(|e| (e["id"].as_str().unwrap().to_string(), e.clone()))
            .collect();
        for e in &events {
            let got = &by_id[e["id"].as_str().unwrap()];
            for k in ["type", "created_at", "user_id", "data"] {
                assert_eq!(got[k], e[k], "{k} of {}", e["id"]);
            }
            assert_eq!(
                got.as_object().unwrap().keys().collect::<Vec<_>>(),
                ["created_at", "data", "id", "type", "user_id"]
            );
        }
        // One user's events arrive in creation order while deliveries succeed
        // (these three were made one after the other).
        let pos = |e: &Value| accepted.iter().position(|a| a["id"] == e["id"]).unwrap();
        assert!(pos(created[0]) < pos(updated[0]) && pos(updated[0]) < pos(updated[1]));
        assert_eq!(seen.bad_signatures.load(Ordering::SeqCst), 0);
        until(10, "delivered status", || async move {
            let ev = all_events(app, "&status=delivered").await;
            (ev.len() == n).then_some(())
        })
        .await;
        // The gauges are process-wide (other tests' servers set them too):
        // only their presence is checked here.
        let r = app.get_public("/metrics").await;
        let text = r.text().await.unwrap();
        for status in ["pending", "delivered", "failed"] {
            assert!(
                text.contains(&format!("stowage_events{{status=\"{status}\"}}")),
                "{text}"
            );
        }
    }
);

local!(
    forty_concurrent_uploads_cross_80_percent_once,
    |b| async move {
        let app = &spawn_app(b).await;
        let user = "racer";
        // 40 files of 1000 bytes fill exactly 40 000: 80 % at the 32nd, 95 %
        // at the 38th, 100 % at the 40th, whichever order they commit in.
        app.admin_set_quota(user, 40_000).await;
        let uploads: Vec<_> = (0..40)
            .map(|i| {
                let app_url = app.url("/api/files/upload");
                let client = app.client.clone();
                tokio::spawn(async move {
                    let form = file_form(&format!("f{i}.json"), json_bytes(1000));
                    client
                        .post(app_url)
                        .bearer_auth(token("racer"))
                        .multipart(form)
                        .send()
                        .await
                        .unwrap()
                        .status()
                        .as_u16()
                })
            })
            .collect();
        for u in uploads {
            // A multipart reservation is its Content-Length (a little more than
            // the file, under 1250 bytes), so a few may be refused near the top:
            // at least 32 fit even when all 40 reserve before any commits (as on
            // MariaDB); none may slip past the quota.
            let s = u.await.unwrap();
            assert!(s == 201 || s == 507, "{s}");
        }
        app.assert_consistent(user).await;
        let total = app.usage(user).await["total_bytes"].as_i64().unwrap();
        assert!(total >= 32_000, "at least 32 files fit: {total}");
        let events = all_events(app, "&type=quota.threshold").await;
        let p = percents(&events, user);
        assert_eq!(p.iter().filter(|x| **x == 80).count(), 1, "{events:#?}");
        assert!(p.iter().all(|x| [80, 95, 100].contains(x)));
        assert_eq!(p.len(), {
            let mut v = p.clone();
            v.dedup();
            v.len()
        });
        let first = events.iter().find(|e| e["data"]["percent"] == 80).unwrap();
        assert_eq!(first["data"]["total_bytes"], 32_000, "crossed by the 32nd");
        assert_eq!(first["data"]["max_bytes"], 40_000);

        // Back below 80 %, then across again: a second `percent: 80`.
        let files = app.list_all(user, "").await;
        let keep = 30;
        for f in files.iter().skip(keep) {
            let r = app
                .client
                .delete(app.url(&format!("/api/files/{}", f["id"].as_str().unwrap())))
                .bearer_auth(token(user))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 204);
        }
        assert_eq!(app.usage(user).await["total_bytes"], 30_000);
        let again = all_events(app, "&type=quota.threshold").await;
        assert_eq!(again.len(), events.len(), "dropping below records nothing");
        for i in 0..3 {
            app.upload_ok(user, &format!("again{i}.json"), json_bytes(1000))
                .await;
        }
        let again = all_events(app, "&type=quota.threshold").await;
        let p = percents(&again, user);
        assert_eq!(p.iter().filter(|x| **x == 80).count(), 2, "{again:#?}");
        assert_eq!(again.last().unwrap()["data"]["percent"], 80);
        assert_eq!(again.last().unwrap()["data"]["total_bytes"], 32_000);
    }
);

local!(a_lower_quota_can_cross_a_threshold, |b| async move {
    let app = &spawn_app(b).await;
    app.admin_set_quota("plan", 10_000).await;
    app.upload_ok("plan", "a.json", json_bytes(5000)).await;
    assert!(percents(&all_events(app, "").await, "plan").is_empty());
    // A downgrade to a plan the files nearly fill.
    app.admin_set_quota("plan", 5200).await;
    assert_eq!(percents(&all_events(app, "").await, "plan"), [80, 95]);
});

local!(
    a_receiver_answering_500_three_times_gets_the_event_on_the_fourth_try,
    |b| async move {
        let (url, seen) = receiver(SECRET).await;
        let seen = &*seen;
        seen.fail_first.store(3, Ordering::SeqCst);
        let app = &spawn_app_with(b, |c| webhook_to(c, &url)).await;
        let f = app.upload_ok("retry", "a.json", json_bytes(100)).await;
        until(30, "the delivery", || async move {
            (!seen.accepted.lock().unwrap().is_empty()).then_some(())
        })
        .await;
        let requests = seen.requests.lock().unwrap().clone();
        assert_eq!(requests.len(), 4, "{requests:#?}");
        let id = &requests[0]["id"];
        assert!(
            requests.iter().all(|r| r == &requests[0]),
            "same id and body every time"
        );
        assert_eq!(requests[0]["data"]["file"]["id"], f["id"]);
        let ev = until(10, "delivered", || async move {
            all_events(app, "")
                .await
                .into_iter()
                .find(|e| &e["id"] == id && e["status"] == "delivered")
        })
        .await;
        assert_eq!(ev["attempts"], 4);
        assert!(ev["delivered_at"].is_string());
        assert_eq!(ev["last_error"], Value::Null);
    }
);

local!(
    a_receiver_with_another_secret_never_accepts,
    |b| async move {
        // The receiver checks with a different key: if the check were not
        // real, the event would be delivered.
        let (url, seen) = receiver("not-the-secret").await;
        let seen = &*seen;
        let app = &spawn_app_with(b, |c| webhook_to(c, &url)).await;
        app.upload_ok("wrong", "a.json", json_bytes(100)).await;
        let ev = until(30, "three refused attempts", || async move {
            all_events(app, "")
                .await
                .into_iter()
                .find(|e| e["attempts"].as_i64().unwrap() >= 3)
        })
        .await;
        assert_eq!(ev["status"], "pending");
        assert!(ev["last_error"].as_str().unwrap().contains("401"), "{ev}");
        assert!(seen.bad_signatures.load(Ordering::SeqCst) >= 3);
        assert!(seen.accepted.lock().unwrap().is_empty());
        // The receiver's check itself, on a body signed with the right key.
        let body = r#"{"id":"x"}"#;
        let t = now() as i64;
        let good = stowage::jobs::webhooks::signature(SECRET.as_bytes(), t, body);
        assert!(verify(SECRET, &good, body.as_bytes()));
        assert!(!verify(SECRET, &good, br#"{"id":"y"}"#));
        assert!(!verify("not-the-secret", &good, body.as_bytes()));
    }
);

local!(
    delivery_gives_up_after_the_retry_window_and_replay_requeues,
    |b| async move {
        let (url, seen) = receiver(SECRET).await;
        let seen = &*seen;
        seen.fail_first.store(usize::MAX / 2, Ordering::SeqCst);
        let app = &spawn_app_with(b, |c| {
            webhook_to(c, &url);
            c.webhook.retry_for = Duration::from_millis(300);
        })
        .await;
        app.upload_ok("giveup", "a.json", json_bytes(100)).await;
        let ev = until(30, "failed", || async move {
            all_events(app, "&status=failed").await.into_iter().next()
        })
        .await;
        assert!(ev["last_error"].as_str().unwrap().contains("500"), "{ev}");
        // The receiver is fixed; the admin queues the event again.
        seen.fail_first.store(0, Ordering::SeqCst);
        let id = ev["id"].as_str().unwrap();
        let r = app
            .client
            .post(app.url(&format!("/api/admin/events/{id}/replay")))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["status"], "pending");
        until(30, "delivered after replay", || async move {
            seen.accepted
                .lock()
                .unwrap()
                .iter()
                .any(|e| e["id"] == id)
                .then_some(())
        })
        .await;
    }
);

local!(admin_events_filter_and_page, |b| async move {
    let app = &spawn_app(b).await;
    for i in 0..7 {
        app.upload_ok("pager", &format!("{i}.json"), json_bytes(100 + i))
            .await;
    }
    let f = app.upload_ok("other", "x.json", json_bytes(100)).await;
    let r = app
        .client
        .put(app.url(&format!("/api/files/{}/tags", f["id"].as_str().unwrap())))
        .bearer_auth(token("other"))
        .json(&json!({"tags": ["t"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let get = |q: String| async move {
        let r = app
            .client
            .get(app.url(&format!("/api/admin/events{q}")))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        let s = r.status().as_u16();
        (s, r.json::<Value>().await.unwrap())
    };
    // Pages of 3 visit every event once, newest first.
    let mut ids = Vec::new();
    let mut cursor = String::new();
    let mut pages = 0;
    loop {
        let (s, v) = get(format!("?limit=3{cursor}")).await;
        assert_eq!(s, 200, "{v}");
        pages += 1;
        ids.extend(
            v["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["id"].as_str().unwrap().to_string()),
        );
        match v["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(ids.len(), 9);
    assert_eq!(pages, 3);
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 9, "no event twice");
    sorted.reverse();

    let (_, v) = get("?type=file.updated".into()).await;
    let evs = v["events"].as_array().unwrap();
    assert_eq!(evs.len(), 1);
    assert_eq!(evs[0]["user_id"], "other");
    assert_eq!(evs[0]["status"], "pending");
    let (_, v) = get("?type=file.created&status=pending".into()).await;
    assert_eq!(v["events"].as_array().unwrap().len(), 8);
    let (_, v) = get("?status=delivered".into()).await;
    assert_eq!(v["events"], json!([]));
    for bad in [
        "?type=file.exploded",
        "?status=lost",
        "?cursor=bm90LWEtY3Vyc29y",
        "?limit=x",
    ] {
        let (s, v) = get(bad.into()).await;
        assert_eq!(s, 400, "{bad}: {v}");
        assert_eq!(v["error"]["code"], "invalid_request");
    }
    // Admin only.
    let r = app.get("pager", "/api/admin/events").await;
    assert_eq!(r.status(), 403);
    let r = app
        .client
        .get(app.url("/api/admin/events"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
});

local!(
    without_a_webhook_events_are_kept_for_the_retention_only,
    |b| async move {
        let app = &spawn_app_with(b, |c| c.webhook.retention = Duration::ZERO).await;
        app.upload_ok("keeper", "a.json", json_bytes(100)).await;
        assert_eq!(all_events(app, "").await.len(), 1);
        let report = stowage::jobs::cleanup::run(&app.state, Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(report.pruned_events, 1);
        assert!(all_events(app, "").await.is_empty());
    }
);

local!(
    a_tus_upload_records_its_checksum_refusal_and_its_file,
    |b| async move {
        use base64::{engine::general_purpose::STANDARD as B64, Engine};
        use sha2::Digest;
        let app = &spawn_app(b).await;
        let data = json_bytes(20_000);
        let loc = crate::tus::create_ok(
            app,
            "tusser",
            data.len() as u64,
            &format!("filename {}", B64.encode("t.json")),
        )
        .await;
        let wrong = B64.encode(sha2::Sha256::digest(b"something else"));
        let r = crate::tus::patch(
            app,
            "tusser",
            &loc,
            0,
            data.clone(),
            &[("Upload-Checksum", format!("sha256 {wrong}"))],
        )
        .await;
        assert_eq!(r.status().as_u16(), 460);
        let r = crate::tus::patch(app, "tusser", &loc, 0, data.clone(), &[]).await;
        assert_eq!(r.status(), 204);
        let file_id = r.headers()["stowage-file-id"].to_str().unwrap().to_string();
        // (The media job's verdict on these bytes may follow; not looked at.)
        let events: Vec<Value> = all_events(app, "")
            .await
            .into_iter()
            .filter(|e| !e["type"].as_str().unwrap().starts_with("media."))
            .collect();
        let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(types, ["upload.failed", "file.created"], "{events:#?}");
        let upload_id = loc.rsplit('/').next().unwrap();
        assert_eq!(events[0]["data"]["reason"], "checksum_mismatch");
        assert_eq!(events[0]["data"]["upload_id"], upload_id);
        assert_eq!(events[1]["data"]["file"]["id"], file_id.as_str());
        assert_eq!(events[1]["data"]["file"]["file_name"], "t.json");
        assert_eq!(events[1]["data"]["file"]["file_size"], 20_000);
    }
);
