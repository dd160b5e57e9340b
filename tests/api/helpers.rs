#![allow(dead_code)]
//! `spawn_app()`: a real server on port 0 with a fresh database and volume,
//! on SQLite, PostgreSQL or MariaDB. Every behaviour test runs on each
//! through [`both!`].

use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{SystemTime, UNIX_EPOCH},
};

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use stowage::{app::AppState, config::Config, meta::ManualClock};
use tempfile::TempDir;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// SQLite metadata, local volume.
    Sqlite,
    /// PostgreSQL metadata, local volume.
    Postgres,
    /// MySQL/MariaDB metadata, local volume.
    MariaDb,
    /// SQLite metadata, blobs in the shared Garage cluster (see
    /// [`crate::garage`]).
    S3,
}

impl Backend {
    /// Where its metadata lives.
    pub fn engine(self) -> Engine {
        match self {
            Backend::Sqlite | Backend::S3 => Engine::Sqlite,
            Backend::Postgres => Engine::Postgres,
            Backend::MariaDb => Engine::MariaDb,
        }
    }
}

/// Runs a test body once per metadata backend on the local volume, and once
/// with blobs in Garage: four `#[tokio::test]`s.
#[macro_export]
macro_rules! both {
    ($name:ident, $body:expr) => {
        $crate::engines!($name, $body, s3);
    };
}

/// Like [`both!`] for behaviour that belongs to the local volume (its
/// files, permissions, temp directory, disk-full injection, backups):
/// SQLite, PostgreSQL and MariaDB only.
#[macro_export]
macro_rules! local {
    ($name:ident, $body:expr) => {
        $crate::engines!($name, $body);
    };
}

/// A module `$name` with one test per engine, and with `s3` given, one
/// with blobs in Garage (skipped when it is not running).
#[macro_export]
macro_rules! engines {
    ($name:ident, $body:expr $(, $s3:ident)?) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                ($body)($crate::helpers::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                ($body)($crate::helpers::Backend::Postgres).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mariadb() {
                ($body)($crate::helpers::Backend::MariaDb).await
            }
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $s3() {
                    if $crate::garage::available() {
                        ($body)($crate::helpers::Backend::S3).await
                    }
                }
            )?
        }
    };
}

pub const RSA_PRIVATE: &str = include_str!("../fixtures/rsa_private.pem");
pub const RSA_PUBLIC: &str = include_str!("../fixtures/rsa_public.pem");
pub const RSA_OTHER_PRIVATE: &str = include_str!("../fixtures/rsa_other_private.pem");
pub const EC_PRIVATE: &str = include_str!("../fixtures/ec_private.pem");
pub const EC_PUBLIC: &str = include_str!("../fixtures/ec_public.pem");
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

pub use crate::serve::{fresh_db, pg_admin_url, Engine, TestDb};

/// A multipart form with one file part, `data` named `name`.
pub fn file_form(name: &str, data: Vec<u8>) -> reqwest::multipart::Form {
    reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(data).file_name(name.to_string()),
    )
}

pub struct TestApp {
    pub base: String,
    pub addr: std::net::SocketAddr,
    pub state: AppState,
    pub client: reqwest::Client,
    pub dir: TempDir,
    pub backend: Backend,
    pub db_url: String,
    /// The clock the server and its store read, when the test drives it
    /// ([`spawn_app_clocked`]); otherwise they read the wall clock.
    pub clock: Option<Arc<ManualClock>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
    _db: Option<TestDb>,
}

/// Default test configuration: RS256 auth with the fixture key, admin token,
/// generous rate limits.
pub fn test_config(dir: &std::path::Path, db_url: &str) -> Config {
    let mut c = Config::defaults(dir.join("data"));
    c.database_url = db_url.to_string();
    c.storage_root = dir.join("data/users");
    c.jwt_public_key = Some(stowage::config::Secret(RSA_PUBLIC.to_string()));
    c.admin_token = Some(stowage::config::Secret(ADMIN_TOKEN.to_string()));
    c.rate_limit_ip_per_sec = 100_000;
    c.rate_limit_user_per_sec = 100_000;
    c.job_workers = 1;
    c
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, |_| {}).await
}

pub async fn spawn_app_with(backend: Backend, tweak: impl FnOnce(&mut Config)) -> TestApp {
    spawn(backend, tweak, None).await
}

/// [`spawn_app_with`] on a [`ManualClock`] that starts at the wall clock's
/// now and stands still until [`TestApp::advance`] moves it: links,
/// uploads and reservations expire without the test sleeping.
pub async fn spawn_app_clocked(backend: Backend, tweak: impl FnOnce(&mut Config)) -> TestApp {
    spawn(
        backend,
        tweak,
        Some(Arc::new(ManualClock::new(chrono::Utc::now()))),
    )
    .await
}

async fn spawn(
    backend: Backend,
    tweak: impl FnOnce(&mut Config),
    clock: Option<Arc<ManualClock>>,
) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let (db_url, db) = fresh_db(backend.engine(), dir.path()).await;
    let mut config = test_config(dir.path(), &db_url);
    if backend == Backend::S3 {
        use_garage(&mut config, 0).await;
    }
    tweak(&mut config);
    start(dir, config, backend, db_url, db, clock).await
}

/// Points `config` at the shared Garage cluster (through node `node`), under
/// a key prefix of its own.
pub async fn use_garage(config: &mut Config, node: usize) {
    static N: AtomicU64 = AtomicU64::new(0);
    let cluster = tokio::task::spawn_blocking(crate::garage::shared)
        .await
        .unwrap();
    config.blob_store = stowage::config::BlobBackend::S3;
    config.s3_bucket = Some(crate::garage::BUCKET.into());
    config.s3_endpoint = Some(cluster.endpoint(node));
    config.s3_region = "us-east-1".into();
    config.s3_prefix = format!(
        "t{}-{}-{}",
        std::process::id(),
        now(),
        N.fetch_add(1, Ordering::SeqCst)
    );
    config.s3_access_key_id = Some(crate::garage::KEY_ID.into());
    config.s3_secret_access_key = Some(stowage::config::Secret(crate::garage::SECRET.into()));
}

/// The environment that keeps a `stowage serve` child's blobs in the shared
/// Garage cluster (through node 0), under a key prefix of its own; and that
/// prefix.
pub async fn garage_env() -> (Vec<(String, String)>, String) {
    let mut c = Config::defaults(std::env::temp_dir());
    use_garage(&mut c, 0).await;
    let env = vec![
        ("STOWAGE_BLOB_STORE".into(), "s3".into()),
        ("STOWAGE_S3_BUCKET".into(), crate::garage::BUCKET.into()),
        ("STOWAGE_S3_ENDPOINT".into(), c.s3_endpoint.clone().unwrap()),
        ("STOWAGE_S3_REGION".into(), c.s3_region.clone()),
        ("STOWAGE_S3_PREFIX".into(), c.s3_prefix.clone()),
        ("AWS_ACCESS_KEY_ID".into(), crate::garage::KEY_ID.into()),
        ("AWS_SECRET_ACCESS_KEY".into(), crate::garage::SECRET.into()),
    ];
    (env, c.s3_prefix)
}

/// Starts another server on the same database and volume as `other`.
pub async fn spawn_peer(other: &TestApp) -> TestApp {
    spawn_peer_with(other, |_| {}).await
}

/// [`spawn_peer`] with a configuration change (another Garage node, say).
pub async fn spawn_peer_with(other: &TestApp, tweak: impl FnOnce(&mut Config)) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let mut config = (*other.state.config).clone();
    tweak(&mut config);
    config.data_dir = dir.path().join("peer");
    config.signing_secret = Some(stowage::config::Secret(hex::encode(
        &*other.state.signing_key,
    )));
    start(
        dir,
        config,
        other.backend,
        other.db_url.clone(),
        None,
        other.clock.clone(),
    )
    .await
}

async fn start(
    dir: TempDir,
    config: Config,
    backend: Backend,
    db_url: String,
    db: Option<TestDb>,
    clock: Option<Arc<ManualClock>>,
) -> TestApp {
    let state = match &clock {
        Some(c) => AppState::build_with_clock(config, c.clone()).await,
        None => AppState::build(config).await,
    }
    .expect("build state");
    state.meta.migrate().await.expect("migrate");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let st = state.clone();
    let server = tokio::spawn(async move {
        stowage::app::serve(listener, st, async {
            let _ = rx.await;
        })
        .await
        .expect("server runs");
    });
    TestApp {
        base: format!("http://{addr}"),
        addr,
        state,
        client: reqwest::Client::builder().build().unwrap(),
        dir,
        backend,
        db_url,
        clock,
        stop: Some(tx),
        server: Some(server),
        _db: db,
    }
}

impl TestApp {
    /// Moves the clock of an app from [`spawn_app_clocked`] forward.
    pub fn advance(&self, by: std::time::Duration) {
        self.clock
            .as_ref()
            .expect("an app from spawn_app_clocked")
            .advance(by);
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn storage_root(&self) -> PathBuf {
        self.state.config.storage_root.clone()
    }

    /// Stops the server and waits for it.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.server.take() {
            let _ = h.await;
        }
    }

    pub async fn upload(&self, user: &str, name: &str, data: Vec<u8>) -> reqwest::Response {
        self.upload_with(user, name, data, &[]).await
    }

    pub async fn upload_with(
        &self,
        user: &str,
        name: &str,
        data: Vec<u8>,
        fields: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut form = reqwest::multipart::Form::new();
        for (k, v) in fields {
            form = form.text(k.to_string(), v.to_string());
        }
        form = form.part(
            "file",
            reqwest::multipart::Part::bytes(data).file_name(name.to_string()),
        );
        self.upload_form(&token(user), form).await
    }

    /// A multipart upload of `data` as `name`, signed in with `bearer` (any
    /// session token, valid or not).
    pub async fn upload_bearer(
        &self,
        bearer: &str,
        name: &str,
        data: Vec<u8>,
    ) -> reqwest::Response {
        self.upload_form(bearer, file_form(name, data)).await
    }

    /// POSTs `form` to the upload endpoint with `bearer` as the session.
    pub async fn upload_form(
        &self,
        bearer: &str,
        form: reqwest::multipart::Form,
    ) -> reqwest::Response {
        self.client
            .post(self.url("/api/files/upload"))
            .bearer_auth(bearer)
            .multipart(form)
            .send()
            .await
            .expect("request sent")
    }

    /// Uploads and asserts 201; returns the File JSON.
    pub async fn upload_ok(&self, user: &str, name: &str, data: Vec<u8>) -> Value {
        let r = self.upload(user, name, data).await;
        let status = r.status();
        let body: Value = r.json().await.unwrap();
        assert_eq!(status, 201, "upload failed: {body}");
        body
    }

    pub async fn get(&self, user: &str, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .bearer_auth(token(user))
            .send()
            .await
            .unwrap()
    }

    /// A tus request by `user`: the session and `Tus-Resumable: 1.0.0` set.
    pub fn tus(&self, method: reqwest::Method, user: &str, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, self.url(path))
            .bearer_auth(token(user))
            .header("Tus-Resumable", "1.0.0")
    }

    /// A GET without a session (signed links, health, the document).
    pub async fn get_public(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    /// The JSON answer to a GET with the admin token.
    pub async fn admin_json(&self, path: &str) -> Value {
        self.client
            .get(self.url(path))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Runs `sql` (one statement, no parameters) on the app's database, on
    /// a connection of the test's own (the store keeps its pool to itself).
    pub async fn exec_sql(&self, sql: &str) {
        use sqlx::Connection;
        let url = &self.db_url;
        match self.backend.engine() {
            Engine::Postgres => {
                let mut c = sqlx::PgConnection::connect(url).await.unwrap();
                sqlx::raw_sql(sql).execute(&mut c).await.unwrap();
            }
            Engine::MariaDb => {
                let mut c = sqlx::MySqlConnection::connect(url).await.unwrap();
                sqlx::raw_sql(sql).execute(&mut c).await.unwrap();
            }
            Engine::Sqlite => {
                let mut c = sqlx::SqliteConnection::connect(url).await.unwrap();
                sqlx::raw_sql(sql).execute(&mut c).await.unwrap();
            }
        }
    }

    /// One integer from the app's database, as [`TestApp::exec_sql`] reads it.
    pub async fn sql_scalar(&self, sql: &str) -> i64 {
        use sqlx::Connection;
        let url = &self.db_url;
        match self.backend.engine() {
            Engine::Postgres => {
                let mut c = sqlx::PgConnection::connect(url).await.unwrap();
                sqlx::query_scalar(sql).fetch_one(&mut c).await.unwrap()
            }
            Engine::MariaDb => {
                let mut c = sqlx::MySqlConnection::connect(url).await.unwrap();
                sqlx::query_scalar(sql).fetch_one(&mut c).await.unwrap()
            }
            Engine::Sqlite => {
                let mut c = sqlx::SqliteConnection::connect(url).await.unwrap();
                sqlx::query_scalar(sql).fetch_one(&mut c).await.unwrap()
            }
        }
    }

    pub async fn get_json(&self, user: &str, path: &str) -> (u16, Value) {
        let r = self.get(user, path).await;
        let s = r.status().as_u16();
        let v = r.json().await.unwrap_or(Value::Null);
        (s, v)
    }

    pub async fn usage(&self, user: &str) -> Value {
        let (s, v) = self.get_json(user, "/api/storage/usage").await;
        assert_eq!(s, 200, "{v}");
        v
    }

    pub async fn admin_set_quota(&self, user: &str, bytes: u64) {
        let r = self
            .client
            .put(self.url(&format!("/api/admin/users/{user}/quota")))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({"max_bytes": bytes}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }

    /// Lists every file of `user` through the paging API.
    pub async fn list_all(&self, user: &str, query: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut path = format!("/api/files?limit=200{query}");
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            let (s, v) = self.get_json(user, &path).await;
            assert_eq!(s, 200, "{v}");
            out.extend(v["files"].as_array().unwrap().iter().cloned());
            match v["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => return out,
            }
        }
    }

    /// For the object store: every key under this app's prefix.
    async fn bucket_keys(&self) -> Vec<String> {
        let c = &self.state.config;
        let op = crate::garage::shared().operator(0, &c.s3_prefix);
        let mut keys: Vec<String> = op
            .list_with("")
            .recursive(true)
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.metadata().is_file())
            .map(|e| e.path().to_string())
            .collect();
        // A listing can lag behind deletes; keep only keys a HEAD (which is
        // read-after-write consistent) still finds.
        let mut live = Vec::with_capacity(keys.len());
        for k in keys.drain(..) {
            if op.stat(&k).await.is_ok() {
                live.push(k);
            }
        }
        live.sort();
        live
    }

    /// Published blobs (local volume excluding `.tmp`, or the bucket
    /// excluding staging), as keys.
    pub async fn blobs_on_disk(&self) -> Vec<String> {
        if self.backend == Backend::S3 {
            return self
                .bucket_keys()
                .await
                .into_iter()
                .filter(|k| !k.starts_with(".staging/") && !k.starts_with(".ready/"))
                .collect();
        }
        let root = self.storage_root();
        let mut out = Vec::new();
        let mut stack = vec![root.clone()];
        while let Some(d) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    if p.file_name().unwrap() != ".tmp" {
                        stack.push(p);
                    }
                } else {
                    out.push(p.strip_prefix(&root).unwrap().display().to_string());
                }
            }
        }
        out.sort();
        out
    }

    /// Staged uploads: files in the volume's temp directory, or staging
    /// segments in the bucket.
    pub async fn temp_files(&self) -> Vec<String> {
        if self.backend == Backend::S3 {
            return self
                .bucket_keys()
                .await
                .into_iter()
                .filter(|k| k.starts_with(".staging/"))
                .collect();
        }
        let tmp = self.storage_root().join(".tmp");
        let mut v: Vec<String> = std::fs::read_dir(tmp)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.path().is_file())
                    .map(|e| e.file_name().to_string_lossy().to_string())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Nothing is left staged (see [`TestApp::temp_files`]).
    pub async fn assert_nothing_staged(&self) {
        let staged = self.temp_files().await;
        assert!(staged.is_empty(), "{staged:?}");
    }

    /// Checks the quota invariant and that usage equals the listed files.
    pub async fn assert_consistent(&self, user: &str) {
        let usage = self.usage(user).await;
        let files = self.list_all(user, "").await;
        let sum: i64 = files.iter().map(|f| f["file_size"].as_i64().unwrap()).sum();
        assert_eq!(
            usage["total_bytes"].as_i64().unwrap(),
            sum,
            "usage equals listed sizes"
        );
        assert_eq!(usage["file_count"].as_i64().unwrap(), files.len() as i64);
        assert!(usage["total_bytes"].as_i64().unwrap() <= usage["max_bytes"].as_i64().unwrap());
        let row = self.state.meta.get_user(user).await.unwrap().unwrap();
        assert!(row.total_bytes + row.reserved_bytes <= row.max_bytes.max(row.total_bytes));
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

#[derive(serde::Serialize)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub azp: Option<String>,
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A valid RS256 session token for `user`, as Clerk would issue.
pub fn token(user: &str) -> String {
    sign_rs256(
        RSA_PRIVATE,
        &Claims {
            sub: user.into(),
            exp: now() + 600,
            nbf: None,
            iss: None,
            azp: None,
        },
    )
}

pub fn sign_rs256(pem: &str, claims: &Claims) -> String {
    encode(
        &Header::new(Algorithm::RS256),
        claims,
        &EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
    )
    .unwrap()
}

pub fn sign_es256(pem: &str, claims: &Claims) -> String {
    encode(
        &Header::new(Algorithm::ES256),
        claims,
        &EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
    )
    .unwrap()
}

/// Reads one DER element: (tag, contents, rest).
pub fn der(input: &[u8]) -> (u8, &[u8], &[u8]) {
    let tag = input[0];
    let (len, head) = if input[1] < 0x80 {
        (input[1] as usize, 2)
    } else {
        let n = (input[1] & 0x7f) as usize;
        let len = input[2..2 + n]
            .iter()
            .fold(0usize, |a, b| (a << 8) | *b as usize);
        (len, 2 + n)
    };
    (tag, &input[head..head + len], &input[head + len..])
}

/// The key of a PEM SubjectPublicKeyInfo (the bits of its BIT STRING).
fn spki_key(pem: &str) -> Vec<u8> {
    use base64::Engine;
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let spki = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    // SubjectPublicKeyInfo { algorithm, BIT STRING { key } }
    let (_, spki, _) = der(&spki);
    let (_, _, rest) = der(spki);
    let (tag, bits, _) = der(rest);
    assert_eq!(tag, 0x03);
    bits[1..].to_vec()
}

/// The fixture RSA public key as a JWK with id `kid`.
pub fn rsa_jwk(kid: &str) -> Value {
    use base64::{engine::general_purpose::URL_SAFE_NO_PAD as B64, Engine};
    // RSAPublicKey { n, e }
    let key = spki_key(RSA_PUBLIC);
    let (_, rsa, _) = der(&key);
    let (_, n, rest) = der(rsa);
    let (_, e, _) = der(rest);
    let n = n.strip_prefix(&[0u8]).unwrap_or(n);
    json!({"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig",
           "n": B64.encode(n), "e": B64.encode(e)})
}

/// The fixture EC P-256 public key as a JWK with id `kid`.
pub fn ec_jwk(kid: &str) -> Value {
    use base64::{engine::general_purpose::URL_SAFE_NO_PAD as B64, Engine};
    // 0x04 || x || y
    let point = spki_key(EC_PUBLIC);
    assert_eq!((point[0], point.len()), (0x04, 65));
    json!({"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
           "x": B64.encode(&point[1..33]), "y": B64.encode(&point[33..])})
}

/// Bytes that sniff as PNG, of exactly `len` bytes (`len` ≥ 16).
pub fn png_bytes(len: usize) -> Vec<u8> {
    let mut v = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    let mut x: u32 = 0x1234_5678 ^ len as u32;
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        v.push(x as u8);
    }
    v.truncate(len);
    v
}

/// A real, decodable PNG of `w`×`h` pixels.
pub fn real_png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, 128])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}
