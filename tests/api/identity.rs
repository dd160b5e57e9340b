//! SPEC §9, identity: hostile `sub`s, long user directories, the admin token
//! only as a bearer, cross-site cookie requests, development sign-in only
//! from this machine, a JWKS endpoint that fails or hangs, and signed links
//! only in the form the server issued.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use crate::helpers::*;
use crate::{both, local};

fn claims(sub: &str) -> Claims {
    Claims {
        sub: sub.into(),
        exp: now() + 600,
        nbf: None,
        iss: None,
        azp: None,
    }
}

async fn usage_status(app: &TestApp, bearer: &str) -> u16 {
    app.client
        .get(app.url("/api/storage/usage"))
        .bearer_auth(bearer)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn upload_as(app: &TestApp, bearer: &str, data: Vec<u8>) -> reqwest::Response {
    app.upload_bearer(bearer, "p.png", data).await
}

/// Subjects no user id may be: each is an invalid token (401), never a 500
/// from a store that cannot hold it.
const HOSTILE_SUBS: &[&str] = &["user\u{0}nul", "new\nline", "tab\there", "del\u{7f}", ""];

both!(hostile_subs_are_invalid_tokens, |b| async move {
    let app = spawn_app(b).await;
    let too_long = "x".repeat(256);
    for sub in HOSTILE_SUBS.iter().copied().chain([too_long.as_str()]) {
        let t = sign_rs256(RSA_PRIVATE, &claims(sub));
        assert_eq!(usage_status(&app, &t).await, 401, "usage as {sub:?}");
        let r = upload_as(&app, &t, png_bytes(64)).await;
        assert_eq!(r.status(), 401, "upload as {sub:?}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "unauthorized");
    }
    // The longest valid one is fine.
    let t = sign_rs256(RSA_PRIVATE, &claims(&"x".repeat(255)));
    assert_eq!(usage_status(&app, &t).await, 200);
});

local!(hostile_dev_sessions_are_invalid, |b| async move {
    let app = spawn_app_with(b, |c| c.jwt_public_key = None).await;
    for sub in HOSTILE_SUBS {
        let t = stowage::auth::dev::mint(&app.state.signing_key, sub);
        assert_eq!(usage_status(&app, &t).await, 401, "dev session {sub:?}");
        let r = upload_as(&app, &t, png_bytes(64)).await;
        assert_eq!(r.status(), 401, "dev upload as {sub:?}");
    }
    // The sign-in endpoint refuses them too (it is a request, so 400).
    let r = app
        .client
        .post(app.url("/api/dev/login"))
        .json(&json!({"user_id": "user\u{0}nul"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let t = stowage::auth::dev::mint(&app.state.signing_key, "fine");
    assert_eq!(usage_status(&app, &t).await, 200);
});

/// The directories directly under the volume root, without `.tmp`.
fn user_dirs(app: &TestApp) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(app.storage_root())
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| !n.starts_with('.'))
        .collect();
    v.sort();
    v
}

local!(long_subs_get_short_directories, |b| async move {
    let app = spawn_app(b).await;
    // 255 bytes that all need escaping: 766 bytes in the plain encoding.
    let long = "!".repeat(255);
    let t = sign_rs256(RSA_PRIVATE, &claims(&long));
    let data = png_bytes(5000);
    let r = upload_as(&app, &t, data.clone()).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let f: Value = r.json().await.unwrap();
    let id = f["id"].as_str().unwrap().to_string();

    let dirs = user_dirs(&app);
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    assert!(dirs[0].len() <= 200, "{} bytes", dirs[0].len());
    assert_eq!(dirs[0], stowage::domain::names::user_dir_name(&long));

    let r = app
        .client
        .get(app.url(&format!("/api/files/{id}/download")))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().to_vec(), data);

    // Another long id differing only in its last byte: its own directory.
    let twin = format!("{}?", "!".repeat(254));
    let t2 = sign_rs256(RSA_PRIVATE, &claims(&twin));
    let r = upload_as(&app, &t2, png_bytes(3000)).await;
    assert_eq!(r.status(), 201);
    let dirs = user_dirs(&app);
    assert_eq!(dirs.len(), 2, "{dirs:?}");
    assert!(dirs.iter().all(|d| d.len() <= 200));
    assert_eq!(usage_status(&app, &t2).await, 200);
    let u: Value = app
        .client
        .get(app.url("/api/storage/usage"))
        .bearer_auth(&t2)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(u["file_count"], 1, "the twin sees only its own file");

    let r = app
        .client
        .delete(app.url(&format!("/api/files/{id}")))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let dir = app
        .storage_root()
        .join(stowage::domain::names::user_dir_name(&long));
    let left: Vec<_> = walk_files(&dir);
    assert!(left.is_empty(), "{left:?}");

    // The admin API removes the twin's directory by the same name.
    let r = app
        .client
        .delete(app.url(&format!(
            "/api/admin/users/{}",
            percent_encoding::utf8_percent_encode(&twin, percent_encoding::NON_ALPHANUMERIC)
        )))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let twin_dir = app
        .storage_root()
        .join(stowage::domain::names::user_dir_name(&twin));
    assert!(walk_files(&twin_dir).is_empty());
});

fn walk_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

both!(admin_token_only_as_bearer, |b| async move {
    let app = spawn_app(b).await;
    let admin = |rb: reqwest::RequestBuilder| async move { rb.send().await.unwrap() };
    let r = admin(
        app.client
            .get(app.url("/api/admin/users"))
            .header("cookie", format!("__session={ADMIN_TOKEN}")),
    )
    .await;
    assert_eq!(r.status(), 401, "admin token in the session cookie");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "unauthorized");
    let r = admin(
        app.client
            .get(app.url("/api/admin/users"))
            .header("authorization", ADMIN_TOKEN),
    )
    .await;
    assert_eq!(r.status(), 401, "admin token without the Bearer scheme");
    // As a cookie it is not a user session either.
    let r = admin(
        app.client
            .get(app.url("/api/storage/usage"))
            .header("cookie", format!("__session={ADMIN_TOKEN}")),
    )
    .await;
    assert_eq!(r.status(), 401);
    // Bearer still works, and a user session is still 403.
    let r = admin(
        app.client
            .get(app.url("/api/admin/users"))
            .bearer_auth(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(r.status(), 200);
    let r = admin(
        app.client
            .get(app.url("/api/admin/users"))
            .header("cookie", format!("__session={}", token("u"))),
    )
    .await;
    assert_eq!(r.status(), 403);
});

/// One request of each unsafe kind against file `id`.
fn unsafe_requests(app: &TestApp, id: &str) -> Vec<(&'static str, reqwest::RequestBuilder)> {
    let c = &app.client;
    vec![
        (
            "POST favorite",
            c.post(app.url(&format!("/api/files/{id}/favorite")))
                .json(&json!({"is_favorite": true})),
        ),
        (
            "PUT tags",
            c.put(app.url(&format!("/api/files/{id}/tags")))
                .json(&json!({"tags": ["x"]})),
        ),
        (
            "POST upload",
            c.post(app.url("/api/files/upload"))
                .multipart(file_form("c.png", png_bytes(100))),
        ),
        (
            "POST tus",
            c.post(app.url("/api/uploads"))
                .header("tus-resumable", "1.0.0")
                .header("upload-length", "10"),
        ),
        (
            "DELETE file",
            c.delete(app.url(&format!("/api/files/{id}"))),
        ),
    ]
}

fn with_cookie(rb: reqwest::RequestBuilder, user: &str) -> reqwest::RequestBuilder {
    rb.header("cookie", format!("theme=dark; __session={}", token(user)))
}

both!(cross_site_cookie_requests_are_refused, |b| async move {
    let app = spawn_app(b).await;
    let f = app.upload_ok("cs", "a.png", png_bytes(200)).await;
    let id = f["id"].as_str().unwrap().to_string();
    let evil = "https://evil.example";

    for (what, rb) in unsafe_requests(&app, &id) {
        let r = with_cookie(rb, "cs")
            .header("origin", evil)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{what} with a cookie from another site");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "forbidden");
    }
    for (what, rb) in unsafe_requests(&app, &id) {
        let r = with_cookie(rb, "cs").send().await.unwrap();
        assert_eq!(r.status(), 403, "{what} with a cookie and no Origin");
    }
    for (what, rb) in unsafe_requests(&app, &id) {
        let r = with_cookie(rb, "cs")
            .header("origin", "null")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{what} with a cookie and Origin: null");
    }
    // A look-alike of the server's own origin.
    let r = with_cookie(
        app.client.delete(app.url(&format!("/api/files/{id}"))),
        "cs",
    )
    .header("origin", format!("{}.evil.example", app.base))
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(app.list_all("cs", "").await.len(), 1, "nothing was done");

    // Reading with the cookie and no Origin is fine.
    let r = with_cookie(app.client.get(app.url("/api/files")), "cs")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = with_cookie(
        app.client
            .get(app.url(&format!("/api/files/{id}/download"))),
        "cs",
    )
    .header("origin", evil)
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 200, "GET is not a cross-site write");

    // The same requests with a bearer token are not affected by Origin.
    let r = app
        .client
        .put(app.url(&format!("/api/files/{id}/tags")))
        .bearer_auth(token("cs"))
        .header("origin", evil)
        .json(&json!({"tags": ["bearer"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = app
        .client
        .post(app.url(&format!("/api/files/{id}/favorite")))
        .bearer_auth(token("cs"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Same origin (what a browser on the web UI sends) is allowed.
    let r = with_cookie(
        app.client.put(app.url(&format!("/api/files/{id}/tags"))),
        "cs",
    )
    .header("origin", &app.base)
    .json(&json!({"tags": ["same-origin"]}))
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["tags"], json!(["same-origin"]));
    let r = with_cookie(app.client.post(app.url("/api/uploads")), "cs")
        .header("origin", &app.base)
        .header("tus-resumable", "1.0.0")
        .header("upload-length", "10")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "tus creation from the web UI's origin");
    let r = with_cookie(
        app.client.delete(app.url(&format!("/api/files/{id}"))),
        "cs",
    )
    .header("origin", &app.base)
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 204);
});

both!(configured_cors_origins_may_use_the_cookie, |b| async move {
    let app = spawn_app_with(b, |c| {
        c.cors_origins = vec!["https://app.example.com".into()];
    })
    .await;
    let f = app.upload_ok("co", "a.png", png_bytes(200)).await;
    let id = f["id"].as_str().unwrap();
    let r = with_cookie(
        app.client.put(app.url(&format!("/api/files/{id}/tags"))),
        "co",
    )
    .header("origin", "https://app.example.com")
    .json(&json!({"tags": ["cors"]}))
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let r = with_cookie(
        app.client.put(app.url(&format!("/api/files/{id}/tags"))),
        "co",
    )
    .header("origin", "https://other.example.com")
    .json(&json!({"tags": ["cors"]}))
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 403);
});

local!(dev_sign_in_only_from_this_machine, |b| async move {
    let app = spawn_app_with(b, |c| c.jwt_public_key = None).await;
    let login = || {
        app.client
            .post(app.url("/api/dev/login"))
            .json(&json!({"user_id": "dev"}))
    };
    let proxied = [
        ("forwarded", "for=203.0.113.9"),
        ("x-forwarded-for", "203.0.113.9"),
        ("x-forwarded-host", "files.example.com"),
        ("x-forwarded-proto", "https"),
        ("x-real-ip", "203.0.113.9"),
    ];
    for (h, v) in proxied {
        let r = login().header(h, v).send().await.unwrap();
        assert_eq!(r.status(), 403, "dev login with {h}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "forbidden");
    }
    for host in [
        "files.example.com",
        "10.0.0.1:3001",
        "localhost.example.com",
    ] {
        let r = login().header("host", host).send().await.unwrap();
        assert_eq!(r.status(), 403, "dev login with Host {host}");
    }
    // A page of another site (or one with a session cookie and no Origin).
    let r = login()
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "cross-site dev login");
    let r = login()
        .header("cookie", "__session=stale")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "cookie and no Origin");

    // From this machine: the web UI's own origin, or a script.
    let r = login().header("origin", &app.base).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let port = app.addr.port();
    for host in [
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
        format!("127.1.2.3:{port}"),
    ] {
        let r = login().header("host", &host).send().await.unwrap();
        assert_eq!(r.status(), 200, "dev login with Host {host}");
    }
    let r = login().send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let dev_token = v["token"].as_str().unwrap().to_string();

    // A development session is refused through a proxy too.
    assert_eq!(usage_status(&app, &dev_token).await, 200);
    for (h, v) in proxied {
        let r = app
            .client
            .get(app.url("/api/storage/usage"))
            .bearer_auth(&dev_token)
            .header(h, v)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "dev session with {h}");
    }
    let r = app
        .client
        .get(app.url("/api/storage/usage"))
        .bearer_auth(&dev_token)
        .header("host", "files.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "dev session with a public Host");
});

/// A JWKS endpoint the test controls: it serves `keys`, answers 500, or
/// never answers, and counts the fetches.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum JwksMode {
    Serve,
    Fail,
    Hang,
}

struct JwksServer {
    url: String,
    state: Arc<JwksState>,
}

struct JwksState {
    mode: Mutex<JwksMode>,
    keys: Mutex<Vec<Value>>,
    fetches: AtomicUsize,
}

impl JwksServer {
    async fn start(keys: Vec<Value>) -> JwksServer {
        let state = Arc::new(JwksState {
            mode: Mutex::new(JwksMode::Serve),
            keys: Mutex::new(keys),
            fetches: AtomicUsize::new(0),
        });
        let st = state.clone();
        let app = axum::Router::new().route(
            "/.well-known/jwks.json",
            axum::routing::get(move || {
                let st = st.clone();
                async move {
                    use axum::response::IntoResponse;
                    st.fetches.fetch_add(1, Ordering::SeqCst);
                    let mode = *st.mode.lock().unwrap();
                    match mode {
                        JwksMode::Serve => {
                            let keys = st.keys.lock().unwrap().clone();
                            axum::Json(json!({ "keys": keys })).into_response()
                        }
                        JwksMode::Fail => {
                            axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response()
                        }
                        JwksMode::Hang => {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                            axum::http::StatusCode::GATEWAY_TIMEOUT.into_response()
                        }
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        JwksServer {
            url: format!("http://{addr}/.well-known/jwks.json"),
            state,
        }
    }

    fn set(&self, mode: JwksMode) {
        *self.state.mode.lock().unwrap() = mode;
    }

    fn fetches(&self) -> usize {
        self.state.fetches.load(Ordering::SeqCst)
    }
}

fn token_with_kid(kid: &str, user: &str) -> String {
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some(kid.into());
    encode(
        &h,
        &claims(user),
        &EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap(),
    )
    .unwrap()
}

/// Sends unknown-`kid` tokens from `n` tasks until the flag is set.
fn hammer(app: &TestApp, n: usize, stop: Arc<AtomicBool>) -> Vec<tokio::task::JoinHandle<usize>> {
    (0..n)
        .map(|i| {
            let client = app.client.clone();
            let url = app.url("/api/storage/usage");
            let stop = stop.clone();
            let rogue = token_with_kid(&format!("rogue-{i}"), "mallory");
            tokio::spawn(async move {
                let mut sent = 0;
                while !stop.load(Ordering::SeqCst) {
                    let r = client.get(&url).bearer_auth(&rogue).send().await.unwrap();
                    assert!(
                        r.status() == 401 || r.status() == 503,
                        "unknown kid answered {}",
                        r.status()
                    );
                    sent += 1;
                    // Paced, so the test's own client does not starve the
                    // two runtime threads the server shares with it.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                sent
            })
        })
        .collect()
}

/// Sends cached-key requests, paced, for `during`; the 95th percentile and
/// the slowest of their latencies.
async fn p95_of_cached(app: &TestApp, token: &str, during: Duration) -> (Duration, Duration) {
    let start = Instant::now();
    let mut took = Vec::new();
    while start.elapsed() < during {
        let t = Instant::now();
        assert_eq!(usage_status(app, token).await, 200);
        took.push(t.elapsed());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(took.len() > 10, "{} cached-key requests", took.len());
    took.sort();
    (took[took.len() * 95 / 100], *took.last().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_outage_costs_one_fetch_per_window_and_never_blocks_cached_keys() {
    const WINDOW: Duration = Duration::from_secs(3);
    let jwks = JwksServer::start(vec![rsa_jwk("k1")]).await;
    let url = jwks.url.clone();
    let app = spawn_app_with(Backend::Sqlite, |c| {
        c.jwt_public_key = None;
        c.jwks_url = Some(url);
        c.limits.jwks_refresh = WINDOW;
        c.limits.jwks_timeout = Duration::from_secs(1);
    })
    .await;
    let good = token_with_kid("k1", "alice");
    let t0 = Instant::now();
    assert_eq!(usage_status(&app, &good).await, 200);
    assert_eq!(jwks.fetches(), 1);
    // How fast a cached-key request is on this machine, with no attack.
    let baseline = p95_of_cached(&app, &good, Duration::from_millis(1000)).await;

    // The endpoint answers 500: unknown kids get one fetch per window.
    jwks.set(JwksMode::Fail);
    tokio::time::sleep(
        (t0 + WINDOW + Duration::from_millis(200)).saturating_duration_since(Instant::now()),
    )
    .await;
    let t1 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = hammer(&app, 4, stop.clone());
    while t1.elapsed() < Duration::from_secs(1) {
        assert_eq!(usage_status(&app, &good).await, 200);
    }
    stop.store(true, Ordering::SeqCst);
    let mut sent = 0;
    for t in tasks {
        sent += t.await.unwrap();
    }
    assert!(sent > 20, "the hammer sent {sent} requests");
    assert_eq!(jwks.fetches(), 2, "{sent} unknown kids during an outage");

    // The endpoint hangs: the one fetch waits out its timeout while cached
    // keys keep answering at once.
    jwks.set(JwksMode::Hang);
    tokio::time::sleep(
        (t1 + WINDOW + Duration::from_millis(200)).saturating_duration_since(Instant::now()),
    )
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = hammer(&app, 4, stop.clone());
    let waited = Instant::now();
    while jwks.fetches() < 3 {
        assert!(
            waited.elapsed() < Duration::from_secs(2),
            "no fetch was made"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let t2 = Instant::now();
    let (p95, slowest) = p95_of_cached(&app, &good, Duration::from_millis(1500)).await;
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
    // The no-attack figure again, now that the hammer stopped (the window
    // has time left before the next step).
    let after = p95_of_cached(&app, &good, Duration::from_millis(1000)).await;
    // A request queued behind the fetch would wait for its 1 s timeout. The
    // 95th percentile is held to 50 ms, or to three times the no-attack
    // figure on a machine so loaded that even that is slower.
    let quiet = baseline.0.max(after.0);
    let bound = Duration::from_millis(50).max(quiet * 3);
    assert!(
        p95 < bound && slowest < Duration::from_millis(500),
        "cached-key requests while the JWKS endpoint hung: p95 {p95:?} (bound {bound:?}, \
         no attack {quiet:?}), slowest {slowest:?}"
    );
    assert_eq!(jwks.fetches(), 3, "one fetch for the whole hang");

    // The provider rotates to k2 alone: a k2 token fetches it, and a k1
    // token signed just before keeps working.
    *jwks.state.keys.lock().unwrap() = vec![rsa_jwk("k2")];
    jwks.set(JwksMode::Serve);
    tokio::time::sleep(
        (t2 + WINDOW + Duration::from_millis(200)).saturating_duration_since(Instant::now()),
    )
    .await;
    assert_eq!(usage_status(&app, &token_with_kid("k2", "bob")).await, 200);
    assert_eq!(jwks.fetches(), 4);
    assert_eq!(usage_status(&app, &good).await, 200, "k1 within its grace");
    // A kid the new set does not name is still unknown (no new fetch).
    assert_eq!(
        usage_status(&app, &token_with_kid("k3", "carol")).await,
        401
    );
    assert_eq!(jwks.fetches(), 4);
}

both!(signed_links_only_in_the_issued_form, |b| async move {
    let app = spawn_app(b).await;
    let data = png_bytes(1000);
    let f = app.upload_ok("sl", "a.png", data.clone()).await;
    let id = f["id"].as_str().unwrap();
    let v: Value = app
        .client
        .post(app.url(&format!("/api/files/{id}/signed-url")))
        .bearer_auth(token("sl"))
        .json(&json!({"expires_in": 3600}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let url = v["url"].as_str().unwrap().to_string();
    let tok = url.strip_prefix("/s/").unwrap();
    let parts: Vec<&str> = tok.split('.').collect();
    let (fid, exp, sig) = (parts[0], parts[1], parts[2]);
    let uuid = uuid::Uuid::parse_str(fid).unwrap();

    let get = |path: String| {
        let c = app.client.clone();
        let u = app.url(&path);
        async move { c.get(u).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(get(url.clone()).await, 200);
    let altered = [
        format!("/s/{}.{exp}.{sig}", fid.to_uppercase()),
        format!("/s/{}.{exp}.{sig}", uuid.hyphenated()),
        format!("/s/%7B{}%7D.{exp}.{sig}", uuid.hyphenated()),
        format!("/s/{}.{exp}.{sig}", uuid.urn()),
        format!("/s/{fid}.+{exp}.{sig}"),
        format!("/s/{fid}.%2B{exp}.{sig}"),
        format!("/s/{fid}.0{exp}.{sig}"),
        format!("/s/{fid}.{exp}.{sig}="),
        format!("/s/{fid}.{exp}.{sig}%3D"),
        format!("/s/{fid}%2E{exp}.{sig}"),
        format!("/s/%{:02X}{}.{exp}.{sig}", fid.as_bytes()[0], &fid[1..]),
    ];
    for a in altered {
        assert_eq!(get(a.clone()).await, 403, "{a}");
        assert_eq!(get(format!("{a}/thumbnail")).await, 403, "{a}/thumbnail");
    }
    let r = app.get_public(&url).await;
    assert_eq!(r.status(), 200, "the issued link still works");
    assert_eq!(r.bytes().await.unwrap().to_vec(), data);
});
