//! Restarts, deploys and dead processes (SPEC §10) against the real
//! `stowage serve`, on SQLite, PostgreSQL and MariaDB:
//!
//! * after `kill -9` with multipart uploads in flight, a restart of the same
//!   node hands the user's whole room back at once, and `stowage cleanup`
//!   (with the server up, or with none running) leaves an empty staging area,
//!   with the reservation TTL at its default hour;
//! * a second node on the same database releases what a killed node held
//!   once its heartbeat has stopped;
//! * SIGTERM with a slow multipart upload and a slow tus PATCH in flight: a
//!   quick request still completes, the process exits within 15 s, the
//!   multipart reservation is released and the tus upload resumes at once on
//!   the next process, at the offset of the bytes that arrived.

use std::{
    future::Future,
    path::PathBuf,
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use serde_json::Value;
use stowage::meta::MetaStore;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

#[path = "support/serve.rs"]
mod serve;

use serve::{dev_login, Engine, Launch, Serve, TestDb, BIN};

const MIB: usize = 1024 * 1024;
const BOUNDARY: &str = "lifecycleBoundary7Q";

/// Where a node keeps its data dir, and the settings every process of a
/// test shares (database, volume, signing key). The reservation TTL stays
/// at its default hour: nothing here may wait for it.
#[derive(Clone)]
struct Setup {
    dir: PathBuf,
    db: String,
    extra: Vec<(String, String)>,
}

impl Setup {
    fn storage_root(&self) -> PathBuf {
        self.dir.join("users")
    }

    fn envs(&self, node: &str) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = vec![
            (
                "STOWAGE_DATA_DIR".into(),
                self.dir.join(node).display().to_string(),
            ),
            ("STOWAGE_DATABASE_URL".into(), self.db.clone()),
            (
                "STOWAGE_STORAGE_ROOT".into(),
                self.storage_root().display().to_string(),
            ),
            (
                "STOWAGE_SIGNING_SECRET".into(),
                "lifecycle-test-signing-secret-0123456789".into(),
            ),
            ("STOWAGE_RATE_LIMIT_USER".into(), "100000".into()),
            ("STOWAGE_RATE_LIMIT_IP".into(), "100000".into()),
            ("RUST_LOG".into(), "warn".into()),
        ];
        v.extend(self.extra.iter().cloned());
        v
    }

    async fn start(&self, node: &str) -> Serve {
        Launch::new(0)
            .envs(self.envs(node))
            .inherit_stderr()
            .start()
            .await
    }

    /// `stowage cleanup --json` as node `node`'s operator would run it.
    fn cleanup(&self, node: &str) -> Value {
        let out = Command::new(BIN)
            .args(["cleanup", "--json"])
            .env_remove("DATABASE_URL")
            .envs(self.envs(node))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cleanup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// What is in the staging area, by file name (the media jobs' scratch
    /// directory aside).
    fn staged(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.storage_root().join(".tmp"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != "media")
            .collect();
        v.sort();
        v
    }

    async fn meta(&self) -> Arc<dyn MetaStore> {
        stowage::meta::connect(&self.db).await.unwrap()
    }
}

/// Runs `story` on `engine`, in a fresh directory.
async fn on<F, Fut>(engine: Engine, extra: &[(&str, &str)], story: F)
where
    F: FnOnce(Setup) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().unwrap();
    let extra = extra
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let (db, _guard) = match engine {
        Engine::Sqlite => (
            format!("sqlite://{}/stowage.db", dir.path().display()),
            None,
        ),
        server => {
            let db = TestDb::create(server).await;
            (db.url.clone(), Some(db))
        }
    };
    story(Setup {
        dir: dir.path().to_path_buf(),
        db,
        extra,
    })
    .await;
}

fn png_like(len: usize, seed: u8) -> Vec<u8> {
    let mut v = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    v.extend((0..len - 16).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)));
    v
}

/// Polls `check` every 50 ms until it holds, for at most `within`. While it
/// does not, `check` answers what it saw, which a timeout reports.
async fn until<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + within;
    loop {
        let seen = match check().await {
            Ok(()) => return,
            Err(seen) => seen,
        };
        assert!(
            Instant::now() < deadline,
            "timed out waiting until {what}; last seen: {seen}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `Ok` when `ok`, else what was seen, for [`until`].
fn holds(ok: bool, seen: impl std::fmt::Debug) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(format!("{seen:?}"))
    }
}

/// What a user's uploads in flight hold: room and staging files.
#[derive(Debug)]
struct Held {
    reserved: i64,
    staged: Vec<String>,
}

async fn held(setup: &Setup, meta: &Arc<dyn MetaStore>, user: &str) -> Held {
    Held {
        reserved: reserved(meta, user).await,
        staged: setup.staged(),
    }
}

async fn reserved(meta: &Arc<dyn MetaStore>, user: &str) -> i64 {
    meta.get_user(user)
        .await
        .unwrap()
        .map_or(0, |u| u.reserved_bytes)
}

async fn room(meta: &Arc<dyn MetaStore>, user: &str) -> u64 {
    let u = meta.get_user(user).await.unwrap().unwrap();
    (u.max_bytes - u.total_bytes - u.reserved_bytes).max(0) as u64
}

/// A request written by hand over TCP, so a test decides exactly which
/// bytes the server has seen and when the rest follows (or never does).
struct Raw {
    stream: TcpStream,
}

impl Raw {
    async fn open(addr: &str, head: &str) -> Raw {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(head.as_bytes()).await.unwrap();
        Raw { stream }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
        self.stream.flush().await.unwrap();
    }

    /// A chunk of a `Transfer-Encoding: chunked` body.
    async fn send_chunk(&mut self, bytes: &[u8]) {
        let mut c = format!("{:x}\r\n", bytes.len()).into_bytes();
        c.extend_from_slice(bytes);
        c.extend_from_slice(b"\r\n");
        self.send(&c).await;
    }

    /// The response's status and body, or `None` when the connection ended
    /// without one.
    async fn response(mut self) -> Option<(u16, String)> {
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(30), async {
            let mut b = [0u8; 8192];
            loop {
                match self.stream.read(&mut b).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&b[..n]),
                }
                if let Some(end) = find(&buf, b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                    let len = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    if buf.len() >= end + 4 + len {
                        break;
                    }
                }
            }
        })
        .await;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let status = text.split(' ').nth(1)?.parse().ok()?;
        Some((status, text))
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn part_prefix(name: &str) -> Vec<u8> {
    format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n\
         Content-Type: image/png\r\n\r\n"
    )
    .into_bytes()
}

fn part_suffix() -> Vec<u8> {
    format!("\r\n--{BOUNDARY}--\r\n").into_bytes()
}

/// The length of the multipart body [`multipart_start`] sends for `data`.
fn multipart_len(data: &[u8]) -> usize {
    part_prefix("slow.png").len() + data.len() + part_suffix().len()
}

/// Starts a multipart upload of `data` and sends its first `first` bytes;
/// with `chunked` the body has no length (the reservation grows as it
/// streams), else its Content-Length is reserved up front.
async fn multipart_start(s: &Serve, token: &str, data: &[u8], first: usize, chunked: bool) -> Raw {
    let prefix = part_prefix("slow.png");
    let len = multipart_len(data);
    let framing = if chunked {
        "Transfer-Encoding: chunked".to_string()
    } else {
        format!("Content-Length: {len}")
    };
    let head = format!(
        "POST /api/files/upload HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n{framing}\r\n\r\n",
        s.addr()
    );
    let mut r = Raw::open(&s.addr(), &head).await;
    let mut body = prefix;
    body.extend_from_slice(&data[..first]);
    if chunked {
        r.send_chunk(&body).await;
    } else {
        r.send(&body).await;
    }
    r
}

/// The rest of a Content-Length multipart upload begun by
/// [`multipart_start`].
async fn multipart_finish(mut r: Raw, data: &[u8], first: usize) -> Option<(u16, String)> {
    let mut rest = data[first..].to_vec();
    rest.extend_from_slice(&part_suffix());
    r.send(&rest).await;
    r.response().await
}

/// A whole tus upload of `data`: creation, then one PATCH. Returns the
/// PATCH's status and the file id it answered.
async fn tus_upload(base: &str, token: &str, data: &[u8]) -> (u16, Option<String>) {
    let id = tus_create(base, token, data.len()).await;
    let r = tus_patch(base, token, &id, 0, data.to_vec()).await;
    let file = r
        .headers()
        .get("stowage-file-id")
        .map(|v| v.to_str().unwrap().to_string());
    (r.status().as_u16(), file)
}

async fn tus_create(base: &str, token: &str, len: usize) -> String {
    let r = reqwest::Client::new()
        .post(format!("{base}/api/uploads"))
        .bearer_auth(token)
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Length", len.to_string())
        .header("Upload-Metadata", "filename cm9vbS5wbmc=")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    loc.rsplit('/').next().unwrap().to_string()
}

async fn tus_patch(
    base: &str,
    token: &str,
    id: &str,
    offset: usize,
    body: Vec<u8>,
) -> reqwest::Response {
    reqwest::Client::new()
        .patch(format!("{base}/api/uploads/{id}"))
        .bearer_auth(token)
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Offset", offset.to_string())
        .header("Content-Type", "application/offset+octet-stream")
        .body(body)
        .send()
        .await
        .unwrap()
}

// ------------------------------------------------------------ kill -9

/// Two slow multipart uploads (one of known length, one chunked) are in
/// flight when the server is killed; the same node restarts.
async fn killed_uploads_free_their_room_at_once(setup: Setup) {
    let user = "kim";
    let mut server = setup.start("node").await;
    let meta = setup.meta().await;
    meta.set_quota(user, 8 * MIB as u64).await.unwrap();
    let token = dev_login(&server.base, user).await;
    let a = png_like(3 * MIB, 1);
    let b = png_like(3 * MIB, 2);
    // The upload of known length reserves its Content-Length before its
    // body is read; the chunked one grows its reservation as bytes come, by
    // a whole step (8 MiB, all of this room) where that fits. Two requests
    // are served in no promised order, so the chunked one starts only once
    // the other holds its room: first, it would take all the room and the
    // other would be refused with 507.
    let a_len = multipart_len(&a) as i64;
    let _ra = multipart_start(&server, &token, &a, 256 * 1024, false).await;
    until(
        "the upload of known length holds its room",
        Duration::from_secs(20),
        || async {
            let h = held(&setup, &meta, user).await;
            holds(h.reserved == a_len && h.staged.len() == 1, h)
        },
    )
    .await;
    let _rb = multipart_start(&server, &token, &b, 256 * 1024, true).await;
    until(
        "the chunked upload holds room too",
        Duration::from_secs(20),
        || async {
            let h = held(&setup, &meta, user).await;
            holds(h.reserved > a_len && h.staged.len() == 2, h)
        },
    )
    .await;
    server.kill().await;
    assert!(
        reserved(&meta, user).await > 0,
        "the dead process held room"
    );

    // The restarted node hands the room back before it serves a request.
    let server = setup.start("node").await;
    assert_eq!(reserved(&meta, user).await, 0, "nothing held after restart");
    let room = room(&meta, user).await as usize;
    assert_eq!(room, 8 * MIB);
    let (status, file) = tus_upload(&server.base, &token, &png_like(room, 3)).await;
    assert_eq!(status, 204, "an upload of exactly the room fits");
    let file = file.expect("the finished upload names its file");

    // With the server up, cleanup finds nothing left to wait for.
    let report = setup.cleanup("node");
    assert!(report["reclaimed_reservations"].is_u64(), "{report}");
    assert_eq!(setup.staged(), Vec::<String>::new(), "staging area empty");

    // Killed again, and this time no serve is restarted: cleanup alone
    // releases what the dead process held.
    let c = reqwest::Client::new();
    let r = c
        .delete(format!("{}/api/files/{file}", server.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let mut server = server;
    let _rc = multipart_start(&server, &token, &a, 512 * 1024, false).await;
    until("the upload holds room", Duration::from_secs(20), || async {
        let h = held(&setup, &meta, user).await;
        holds(h.reserved > 0 && h.staged.len() == 1, h)
    })
    .await;
    server.kill().await;
    let report = setup.cleanup("node");
    assert_eq!(report["reclaimed_reservations"], 1, "{report}");
    assert_eq!(reserved(&meta, user).await, 0);
    assert_eq!(setup.staged(), Vec::<String>::new(), "staging area empty");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_restart_frees_the_room_at_once_sqlite() {
    on(Engine::Sqlite, &[], killed_uploads_free_their_room_at_once).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_restart_frees_the_room_at_once_postgres() {
    on(
        Engine::Postgres,
        &[],
        killed_uploads_free_their_room_at_once,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_restart_frees_the_room_at_once_mariadb() {
    on(Engine::MariaDb, &[], killed_uploads_free_their_room_at_once).await;
}

// ------------------------------------------------------ another node

/// Two nodes share the database and the volume; one is killed with an
/// upload in flight and not restarted.
async fn a_peer_reclaims_a_dead_node(setup: Setup) {
    let user = "pia";
    let mut a = setup.start("a").await;
    let b = setup.start("b").await;
    let meta = setup.meta().await;
    meta.set_quota(user, 6 * MIB as u64).await.unwrap();
    let token = dev_login(&a.base, user).await;
    let data = png_like(3 * MIB, 4);
    let _r = multipart_start(&a, &token, &data, 256 * 1024, false).await;
    until(
        "the upload on node a holds room",
        Duration::from_secs(20),
        || async {
            let h = held(&setup, &meta, user).await;
            holds(h.reserved > 0 && h.staged.len() == 1, h)
        },
    )
    .await;
    let nodes = meta.list_nodes().await.unwrap();
    assert_eq!(nodes.len(), 2, "both nodes registered: {nodes:?}");
    a.kill().await;
    let killed = Instant::now();
    // Node b's heartbeat loop notices a's silence (dead after 4 s here).
    until(
        "node b released what node a held",
        Duration::from_secs(30),
        || async {
            let r = reserved(&meta, user).await;
            holds(r == 0, format!("{r} bytes reserved"))
        },
    )
    .await;
    assert!(
        killed.elapsed() >= Duration::from_secs(2),
        "not before the heartbeat went stale"
    );
    assert_eq!(
        setup.staged(),
        Vec::<String>::new(),
        "a's staging data removed"
    );
    // The row goes right after the reservations, in the same reclaim.
    until(
        "the dead node's row is gone",
        Duration::from_secs(10),
        || async {
            let nodes = meta.list_nodes().await.unwrap();
            holds(nodes.len() == 1, nodes)
        },
    )
    .await;
    let room = room(&meta, user).await as usize;
    assert_eq!(room, 6 * MIB);
    let (status, _) = tus_upload(&b.base, &token, &png_like(room, 5)).await;
    assert_eq!(status, 204, "an upload of exactly the room fits on node b");
}

const FAST_HEARTBEATS: &[(&str, &str)] = &[
    ("STOWAGE_HEARTBEAT_INTERVAL_SECS", "1"),
    ("STOWAGE_NODE_DEAD_AFTER_SECS", "4"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_node_reclaims_a_dead_node_sqlite() {
    on(Engine::Sqlite, FAST_HEARTBEATS, a_peer_reclaims_a_dead_node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_node_reclaims_a_dead_node_postgres() {
    on(
        Engine::Postgres,
        FAST_HEARTBEATS,
        a_peer_reclaims_a_dead_node,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_node_reclaims_a_dead_node_mariadb() {
    on(
        Engine::MariaDb,
        FAST_HEARTBEATS,
        a_peer_reclaims_a_dead_node,
    )
    .await;
}

// ----------------------------------------------------------- SIGTERM

/// A deploy: SIGTERM with a slow multipart upload, a slow tus PATCH and a
/// quick upload in flight, then a new process.
async fn sigterm_ends_uploads_and_exits_in_time(setup: Setup) {
    let user = "tom";
    let mut server = setup.start("node").await;
    let meta = setup.meta().await;
    let token = dev_login(&server.base, user).await;

    // tus: 3 MiB announced, the first 1 MiB + 5 bytes sent, then silence.
    let tus_data = png_like(3 * MIB, 6);
    let sent = MIB + 5;
    let id = tus_create(&server.base, &token, tus_data.len()).await;
    let head = format!(
        "PATCH /api/uploads/{id} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n\
         Tus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\n\
         Content-Type: application/offset+octet-stream\r\nContent-Length: {}\r\n\r\n",
        server.addr(),
        tus_data.len()
    );
    let mut tus = Raw::open(&server.addr(), &head).await;
    tus.send(&tus_data[..sent]).await;
    // multipart: 2 MiB announced, 300 KiB sent, then silence.
    let mp_data = png_like(2 * MIB, 7);
    let mp = multipart_start(&server, &token, &mp_data, 300 * 1024, false).await;
    let tus_part = setup.storage_root().join(format!(".tmp/{id}.part"));
    until(
        "both uploads are streaming",
        Duration::from_secs(20),
        || async {
            // The staging writer writes whole buffers (256 KiB): the first
            // MiB is on disk once it arrived, the last 5 bytes stay in the
            // buffer until the PATCH ends.
            let on_disk = std::fs::metadata(&tus_part).map_or(0, |m| m.len());
            let h = held(&setup, &meta, user).await;
            holds(
                on_disk + 64 * 1024 >= sent as u64
                    && h.staged.len() == 2
                    && h.reserved == (tus_data.len() + multipart_len(&mp_data)) as i64,
                (on_disk, h),
            )
        },
    )
    .await;
    // A quick upload, half sent when the signal comes.
    let quick = png_like(64 * 1024, 8);
    let half = quick.len() / 2;
    let q = multipart_start(&server, &token, &quick, half, false).await;
    until(
        "the quick upload is being served",
        Duration::from_secs(20),
        || async {
            let staged = setup.staged();
            holds(staged.len() == 3, staged)
        },
    )
    .await;

    let signalled = Instant::now();
    server.signal_term();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let quick_res = multipart_finish(q, &quick, half).await;
    assert_eq!(
        quick_res.as_ref().map(|r| r.0),
        Some(201),
        "a quick request in flight at SIGTERM completes: {quick_res:?}"
    );
    let status = loop {
        if let Some(s) = server.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(20),
            "still running 20 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let took = signalled.elapsed();
    eprintln!("exited {took:?} after SIGTERM");
    assert!(
        took < Duration::from_secs(15),
        "exited {took:?} after SIGTERM; the limit is 15 s"
    );
    assert!(status.success(), "clean exit: {status:?}");
    drop(mp);
    drop(tus);

    // The multipart reservation is gone; the tus upload keeps its room and
    // exactly the bytes that arrived.
    assert_eq!(
        reserved(&meta, user).await,
        tus_data.len() as i64,
        "only the tus upload holds room"
    );
    assert_eq!(setup.staged(), vec![format!("{id}.part")]);

    // The next process takes the upload over at once, at that offset.
    let server = setup.start("node").await;
    let c = reqwest::Client::new();
    let h = c
        .head(format!("{}/api/uploads/{id}", server.base))
        .bearer_auth(&token)
        .header("Tus-Resumable", "1.0.0")
        .send()
        .await
        .unwrap();
    assert_eq!(h.status(), 200);
    assert_eq!(h.headers()["upload-offset"], sent.to_string().as_str());
    let r = tus_patch(&server.base, &token, &id, sent, tus_data[sent..].to_vec()).await;
    assert_eq!(r.status(), 204, "resumed at once, no 423");
    let file = r.headers()["stowage-file-id"].to_str().unwrap().to_string();
    let got = c
        .get(format!("{}/api/files/{file}/download", server.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(got[..] == tus_data[..], "the file is whole");
    assert_eq!(reserved(&meta, user).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_uploads_sqlite() {
    on(Engine::Sqlite, &[], sigterm_ends_uploads_and_exits_in_time).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_uploads_postgres() {
    on(
        Engine::Postgres,
        &[],
        sigterm_ends_uploads_and_exits_in_time,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_uploads_mariadb() {
    on(Engine::MariaDb, &[], sigterm_ends_uploads_and_exits_in_time).await;
}
