//! Takeover instead of 423 (SPEC §10): a request for an upload that an
//! earlier request is still writing ends that request, which keeps what it
//! made durable; completion is one transaction; the running hash is saved
//! with the offset. With real clients against a real `stowage serve` that is
//! SIGKILLed or SIGTERMed and restarted mid-upload, and against two nodes
//! behind a balancer restarted one after the other.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use futures::StreamExt;
use serde_json::Value;
use uuid::Uuid;

use crate::{
    both,
    helpers::*,
    netproxy::{Balancer, NetProxy},
    serve::{free_port, Engine, Launch, Scratch, Serve},
    tus::{
        create_ok, download, hdr, head, js_cmd, patch, py_cmd, require_clients, reserved,
        run_client,
    },
};

const MIB: usize = 1024 * 1024;
const OCTET: &str = "application/offset+octet-stream";

fn upload_id(loc: &str) -> Uuid {
    loc.rsplit('/').next().unwrap().parse().unwrap()
}

/// Polls `cond` every 10 ms for up to 20 s.
async fn wait_until<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A PATCH at offset 0 whose body sends `first` and then nothing, ever,
/// with the connection left open: a request the server is "still
/// receiving". Sent to `base`.
fn hanging_patch(
    base: &str,
    user: &str,
    loc: &str,
    total: usize,
    first: Vec<u8>,
) -> tokio::task::JoinHandle<Result<reqwest::Response, reqwest::Error>> {
    let body =
        futures::stream::iter([Ok::<_, std::io::Error>(first)]).chain(futures::stream::pending());
    let rb = reqwest::Client::new()
        .patch(format!("{base}{loc}"))
        .bearer_auth(token(user))
        .header("Tus-Resumable", "1.0.0")
        .header("Content-Type", OCTET)
        .header("Upload-Offset", "0")
        .header("Content-Length", total.to_string())
        .body(reqwest::Body::wrap_stream(body));
    tokio::spawn(async move { rb.send().await })
}

/// Waits until a PATCH still in progress has received `len` bytes of upload
/// `id`. The local volume shows them in the staging file as they arrive
/// (64 KiB multiples only, its writer's buffer); an object store holds a
/// PATCH's bytes in one segment that appears only when the PATCH ends, so
/// there the server is given a moment to read them off the socket.
async fn wait_received(app: &TestApp, id: Uuid, len: u64) {
    if app.backend == Backend::S3 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        return;
    }
    wait_until("the staged bytes", || async {
        app.state.blobs.staged_len(id).await.unwrap() == Some(len)
    })
    .await;
}

/// Replaces the staged bytes of upload `id` behind the server's back,
/// through the blob store (a file on the volume, segments in the bucket).
async fn restage(app: &TestApp, id: Uuid, data: Vec<u8>) {
    let mut w = app.state.blobs.stage(id, 0).await.unwrap();
    w.write(bytes::Bytes::from(data)).await.unwrap();
    w.finish().await.unwrap();
}

async fn head_offset(app: &TestApp, user: &str, loc: &str) -> u64 {
    let r = head(app, user, loc).await;
    assert_eq!(r.status(), 200, "HEAD");
    hdr(&r, "upload-offset").unwrap().parse().unwrap()
}

// The mobile case: the client's connection dies in a way the server does not
// see (the proxy drops the client side and keeps the server side open, so
// the server's PATCH just stops receiving). The client resumes at once on a
// new connection: HEAD ends the stranded PATCH, which records what it
// staged, and reports that offset; a PATCH at it completes the file.
both!(dropped_client_resumes_at_once, |b| async move {
    let app = spawn_app(b).await;
    let data = png_bytes(3 * MIB);
    let loc = create_ok(&app, "mobile", data.len() as u64, "").await;
    let id = upload_id(&loc);
    let proxy = NetProxy::start(app.addr, None).await;
    let sent = MIB;
    let stranded = hanging_patch(
        &proxy.base(),
        "mobile",
        &loc,
        data.len(),
        data[..sent].to_vec(),
    );
    wait_received(&app, id, sent as u64).await;
    proxy.drop_clients();
    assert!(
        stranded.await.unwrap().is_err(),
        "the client saw its connection die"
    );

    let off = head_offset(&app, "mobile", &loc).await;
    assert_eq!(
        off, sent as u64,
        "HEAD reports what the stranded PATCH received"
    );
    let r = patch(&app, "mobile", &loc, off, data[sent..].to_vec(), &[]).await;
    assert_eq!(r.status(), 204, "the resumed PATCH proceeds");
    let file = hdr(&r, "stowage-file-id").unwrap().to_string();
    assert!(
        download(&app, "mobile", &file).await == data,
        "the file is whole"
    );
    let (_, f) = app.get_json("mobile", &format!("/api/files/{file}")).await;
    assert_eq!(f["sha256"], sha256_hex(&data));
    assert_eq!(reserved(&app, "mobile").await, 0);
    assert!(app.state.tus_writers.is_empty());
    app.assert_consistent("mobile").await;
});

// Two nodes on one database: node A is still receiving a PATCH (its client
// is alive but sends nothing more); a PATCH on node B at the offset A has
// staged takes the upload over. A's request ends (its response arrives)
// within the 2 s of SPEC §10, and the file is whole.
both!(patch_on_another_node_takes_over, |b| async move {
    let a = spawn_app(b).await;
    let node_b = spawn_peer(&a).await;
    let data = png_bytes(2 * MIB);
    let loc = create_ok(&a, "nodes", data.len() as u64, "").await;
    let id = upload_id(&loc);
    let sent = MIB;
    let on_a = hanging_patch(&a.base, "nodes", &loc, data.len(), data[..sent].to_vec());
    wait_received(&a, id, sent as u64).await;

    let asked = Instant::now();
    let on_b = tokio::spawn({
        let (base, loc, rest) = (node_b.base.clone(), loc.clone(), data[sent..].to_vec());
        async move {
            reqwest::Client::new()
                .patch(format!("{base}{loc}"))
                .bearer_auth(token("nodes"))
                .header("Tus-Resumable", "1.0.0")
                .header("Content-Type", OCTET)
                .header("Upload-Offset", sent.to_string())
                .body(rest)
                .send()
                .await
                .unwrap()
        }
    });
    let r_a = tokio::time::timeout(Duration::from_secs(10), on_a)
        .await
        .expect("node A's request ended")
        .unwrap()
        .expect("node A answered");
    let ended_after = asked.elapsed();
    assert_eq!(r_a.status(), 409, "the earlier request was taken over");
    assert!(
        ended_after < Duration::from_secs(2),
        "node A's request ended {ended_after:?} after the takeover began"
    );
    let r_b = on_b.await.unwrap();
    assert_eq!(r_b.status(), 204);
    let file = hdr(&r_b, "stowage-file-id").unwrap().to_string();
    assert!(
        download(&a, "nodes", &file).await == data,
        "the file is whole"
    );
    let (_, f) = a.get_json("nodes", &format!("/api/files/{file}")).await;
    assert_eq!(f["sha256"], sha256_hex(&data));
    a.assert_consistent("nodes").await;
});

/// Runs `sql` (one statement) on `app`'s database.
async fn exec(app: &TestApp, sql: &str) {
    app.exec_sql(&dialect(app, sql)).await
}

async fn count(app: &TestApp, sql: &str) -> i64 {
    app.sql_scalar(&dialect(app, sql)).await
}

/// `sql` as `app`'s engine spells it.
fn dialect(app: &TestApp, sql: &str) -> String {
    match app.backend {
        Backend::MariaDb => mysql_dialect(sql),
        _ => sql.to_string(),
    }
}

/// The statements above in MySQL's spelling: its integer cast is `SIGNED`,
/// and a DATETIME literal has no zone.
fn mysql_dialect(sql: &str) -> String {
    sql.replace("AS BIGINT", "AS SIGNED")
        .replace("T00:00:00Z'", " 00:00:00'")
}

/// Makes every `event` (`DELETE`, `INSERT`) on `table` fail, by a trigger.
async fn inject_failure(app: &TestApp, table: &str, event: &str) {
    let name = format!("fail_{table}_{}", event.to_lowercase());
    if app.backend == Backend::Postgres {
        exec(
            app,
            &format!(
                "CREATE FUNCTION {name}() RETURNS trigger AS $$ \
                 BEGIN RAISE EXCEPTION 'injected failure'; END $$ LANGUAGE plpgsql"
            ),
        )
        .await;
        exec(
            app,
            &format!("CREATE TRIGGER {name} BEFORE {event} ON {table} FOR EACH ROW EXECUTE FUNCTION {name}()"),
        )
        .await;
    } else if app.backend == Backend::MariaDb {
        exec(
            app,
            &format!(
                "CREATE TRIGGER {name} BEFORE {event} ON {table} FOR EACH ROW \
                 SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'injected failure'"
            ),
        )
        .await;
    } else {
        exec(
            app,
            &format!(
                "CREATE TRIGGER {name} BEFORE {event} ON {table} \
                 BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
            ),
        )
        .await;
    }
}

async fn heal(app: &TestApp, table: &str, event: &str) {
    let name = format!("fail_{table}_{}", event.to_lowercase());
    if app.backend == Backend::Postgres {
        exec(app, &format!("DROP TRIGGER {name} ON {table}")).await;
        exec(app, &format!("DROP FUNCTION {name}()")).await;
    } else {
        exec(app, &format!("DROP TRIGGER {name}")).await;
    }
}

/// Nothing of the upload is listed or counted, and no blob is published.
async fn nothing_committed(app: &TestApp, user: &str, loc: &str) {
    let id = upload_id(loc);
    let (s, _) = app.get_json(user, &format!("/api/files/{id}")).await;
    assert_eq!(s, 404, "no file row");
    let u = app.usage(user).await;
    assert_eq!(u["total_bytes"], 0, "{u}");
    assert_eq!(u["file_count"], 0, "{u}");
    assert!(
        app.blobs_on_disk().await.is_empty(),
        "{:?}",
        app.blobs_on_disk().await
    );
}

// Completion is one transaction (file row, usage, upload row). A failure
// injected into either of its steps leaves nothing half-done: never a listed
// file whose upload HEAD still reports unfinished, never an upload row
// without its reservation. A retried final PATCH of a finished upload
// answers as the completing one did.
both!(completion_is_one_transaction, |b| async move {
    let app = spawn_app(b).await;
    let data = png_bytes(200_000);

    // The upload row cannot be deleted: the file row must not appear either.
    let loc = create_ok(&app, "atomic", data.len() as u64, "").await;
    assert_eq!(
        patch(&app, "atomic", &loc, 0, data[..100_000].to_vec(), &[])
            .await
            .status(),
        204
    );
    inject_failure(&app, "tus_uploads", "DELETE").await;
    let r = patch(&app, "atomic", &loc, 100_000, data[100_000..].to_vec(), &[]).await;
    assert!(r.status().is_server_error(), "{}", r.status());
    nothing_committed(&app, "atomic", &loc).await;
    // The upload is still there, and so is its reservation.
    assert_eq!(head(&app, "atomic", &loc).await.status(), 200);
    assert_eq!(reserved(&app, "atomic").await, data.len() as i64);
    heal(&app, "tus_uploads", "DELETE").await;
    // Its staged data went with the failed publish: the next PATCH drops it.
    let r = patch(&app, "atomic", &loc, data.len() as u64, vec![], &[]).await;
    assert_eq!(r.status(), 404);
    assert_eq!(reserved(&app, "atomic").await, 0);
    nothing_committed(&app, "atomic", &loc).await;

    // The file row cannot be inserted: the upload row's deletion is undone
    // with it, then the failed upload is dropped whole.
    let loc = create_ok(&app, "atomic", data.len() as u64, "").await;
    assert_eq!(
        patch(&app, "atomic", &loc, 0, data[..100_000].to_vec(), &[])
            .await
            .status(),
        204
    );
    inject_failure(&app, "user_files", "INSERT").await;
    let r = patch(&app, "atomic", &loc, 100_000, data[100_000..].to_vec(), &[]).await;
    assert!(r.status().is_server_error(), "{}", r.status());
    nothing_committed(&app, "atomic", &loc).await;
    assert_eq!(head(&app, "atomic", &loc).await.status(), 404);
    assert_eq!(reserved(&app, "atomic").await, 0);
    heal(&app, "user_files", "INSERT").await;
    app.assert_nothing_staged().await;

    // Without failures: one file; a retried final PATCH gets the same id.
    let loc = create_ok(&app, "atomic", data.len() as u64, "").await;
    let r = patch(&app, "atomic", &loc, 0, data.clone(), &[]).await;
    assert_eq!(r.status(), 204);
    let file = hdr(&r, "stowage-file-id").unwrap().to_string();
    let again = patch(&app, "atomic", &loc, data.len() as u64, vec![], &[]).await;
    assert_eq!(again.status(), 204);
    assert_eq!(hdr(&again, "stowage-file-id"), Some(file.as_str()));
    assert_eq!(app.list_all("atomic", "").await.len(), 1);
    app.assert_consistent("atomic").await;
});

// The end of a PATCH is one transaction: the offset (with its hash state),
// the reservation's new expiry and the lease's release commit together or
// not at all. When pushing the reservation fails, the offset does not move
// either (the PATCH fails, and its lease is given up all the same); the
// next PATCH resumes at the old offset and completes the file.
both!(a_patch_records_in_one_transaction, |b| async move {
    let app = spawn_app(b).await;
    let data = png_bytes(300_000);
    let loc = create_ok(&app, "onetx", data.len() as u64, "").await;
    let leased = "SELECT COUNT(*) FROM tus_uploads WHERE lock_owner IS NOT NULL";
    let r = patch(&app, "onetx", &loc, 0, data[..100_000].to_vec(), &[]).await;
    assert_eq!(r.status(), 204);
    assert_eq!(count(&app, leased).await, 0, "the PATCH gave its lease up");
    assert_eq!(head_offset(&app, "onetx", &loc).await, 100_000);

    inject_failure(&app, "upload_reservations", "UPDATE").await;
    let r = patch(
        &app,
        "onetx",
        &loc,
        100_000,
        data[100_000..200_000].to_vec(),
        &[],
    )
    .await;
    assert!(
        r.status().is_server_error(),
        "the offset was recorded without the reservation's expiry: {}",
        r.status()
    );
    heal(&app, "upload_reservations", "UPDATE").await;
    assert_eq!(count(&app, leased).await, 0, "the failed PATCH let go");
    assert_eq!(
        head_offset(&app, "onetx", &loc).await,
        100_000,
        "the offset did not move without the reservation"
    );
    assert_eq!(reserved(&app, "onetx").await, data.len() as i64);

    let r = patch(&app, "onetx", &loc, 100_000, data[100_000..].to_vec(), &[]).await;
    assert_eq!(r.status(), 204);
    let file = hdr(&r, "stowage-file-id").unwrap().to_string();
    assert!(
        download(&app, "onetx", &file).await == data,
        "the file is whole"
    );
    let (_, f) = app.get_json("onetx", &format!("/api/files/{file}")).await;
    assert_eq!(f["sha256"], sha256_hex(&data));
    app.assert_consistent("onetx").await;
});

/// A final PATCH (the rest of the upload at `offset`) sent to `app`.
fn final_patch(
    app: &TestApp,
    user: &str,
    loc: &str,
    offset: usize,
    rest: Vec<u8>,
) -> impl std::future::Future<Output = reqwest::Response> {
    let rb = app
        .tus(reqwest::Method::PATCH, user, loc)
        .header("Content-Type", OCTET)
        .header("Upload-Offset", offset.to_string())
        .body(rest);
    async move { rb.send().await.unwrap() }
}

// Two final PATCHes of one upload at once (a client's retry of its final
// PATCH while the first is still running, on the same node or another),
// and a retried final PATCH racing a takeover by a HEAD. However they
// interleave, the upload completes once: one file row, its blob readable
// with the right bytes, usage counted once, nothing left in staging and no
// blob that no row names (on S3: the bucket prefix, listed).
both!(racing_final_patches_complete_once, |b| async move {
    let app = spawn_app(b).await;
    let peer = spawn_peer(&app).await;
    let user = "twice";
    let rounds = 6;
    let mut sizes = 0;
    for round in 0..rounds {
        let data = png_bytes(400_000 + round);
        sizes += data.len();
        let half = 200_000;
        let loc = create_ok(&app, user, data.len() as u64, "").await;
        let r = patch(&app, user, &loc, 0, data[..half].to_vec(), &[]).await;
        assert_eq!(r.status(), 204);
        let other = if round % 2 == 0 { &app } else { &peer };
        let rest = data[half..].to_vec();
        let (r1, r2, h) = tokio::join!(
            final_patch(&app, user, &loc, half, rest.clone()),
            final_patch(other, user, &loc, half, rest.clone()),
            async {
                // A resuming client's HEAD in the middle of it all.
                if round >= rounds - 2 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    Some(head(other, user, &loc).await.status())
                } else {
                    None
                }
            }
        );
        let statuses = [r1.status().as_u16(), r2.status().as_u16()];
        // 204: completed (or answered as the completion did); 409: taken
        // over, or the offset moved; 404: the upload finished while this
        // body (not an empty one) waited.
        for s in statuses {
            assert!(matches!(s, 204 | 409 | 404), "round {round}: {statuses:?}");
        }
        assert!(h.is_none_or(|s| s == 200), "HEAD answered {h:?}");
        let ids: Vec<String> = [&r1, &r2]
            .iter()
            .filter_map(|r| hdr(r, "stowage-file-id").map(str::to_string))
            .collect();
        let id = upload_id(&loc).to_string();
        assert!(ids.iter().all(|i| *i == id), "{ids:?}");
        if ids.is_empty() {
            // Neither finished it: the client resumes at the server's offset.
            let off = head_offset(&app, user, &loc).await as usize;
            let r = patch(&peer, user, &loc, off as u64, data[off..].to_vec(), &[]).await;
            assert_eq!(r.status(), 204, "round {round}: resumed at {off}");
            assert_eq!(hdr(&r, "stowage-file-id"), Some(id.as_str()));
        }
        // A retried empty final PATCH answers as the completion did.
        let again = patch(&peer, user, &loc, data.len() as u64, vec![], &[]).await;
        assert_eq!(again.status(), 204);
        assert_eq!(hdr(&again, "stowage-file-id"), Some(id.as_str()));
        assert!(
            download(&app, user, &id).await == data,
            "round {round}: the blob holds the upload's bytes"
        );
        let (_, f) = app.get_json(user, &format!("/api/files/{id}")).await;
        assert_eq!(f["sha256"], sha256_hex(&data));
    }
    let files = app.list_all(user, "").await;
    assert_eq!(files.len(), rounds, "one file row per upload");
    let u = app.usage(user).await;
    assert_eq!(u["total_bytes"], sizes, "usage counted once: {u}");
    assert_eq!(u["file_count"], rounds, "{u}");
    assert_eq!(reserved(&app, user).await, 0);
    app.assert_consistent(user).await;
    // Exactly the committed blobs are stored, and nothing is staged.
    let mut named: Vec<String> = Vec::new();
    for f in &files {
        let rec = app
            .state
            .meta
            .get_file(user, f["id"].as_str().unwrap().parse().unwrap())
            .await
            .unwrap()
            .unwrap();
        named.push(rec.file_path);
    }
    named.sort();
    assert_eq!(app.blobs_on_disk().await, named, "no orphan blob");
    app.assert_nothing_staged().await;
});

// The running sha256 is saved with the offset, not kept in one process's
// memory: a completion on another node (no state of its own) does not read
// the staged data back. Shown by changing staged bytes behind the server's
// back: the recorded sha256 is that of what was received. Expiry removes
// the saved state with its row.
both!(hash_state_travels_with_the_offset, |b| async move {
    let app = spawn_app(b).await;
    let peer = spawn_peer(&app).await;
    let data = png_bytes(300_000);
    let loc = create_ok(&app, "hashy", data.len() as u64, "").await;
    let id = upload_id(&loc);
    assert_eq!(
        patch(&app, "hashy", &loc, 0, data[..150_000].to_vec(), &[])
            .await
            .status(),
        204
    );
    assert_eq!(
        count(
            &app,
            "SELECT CAST(COUNT(*) AS BIGINT) FROM tus_uploads WHERE hash_state IS NOT NULL"
        )
        .await,
        1
    );
    let mut staged = data[..150_000].to_vec();
    staged[1000..2000].fill(0);
    restage(&app, id, staged).await;
    let r = patch(&peer, "hashy", &loc, 150_000, data[150_000..].to_vec(), &[]).await;
    assert_eq!(r.status(), 204);
    let file = hdr(&r, "stowage-file-id").unwrap().to_string();
    let (_, f) = peer.get_json("hashy", &format!("/api/files/{file}")).await;
    assert_eq!(
        f["sha256"],
        sha256_hex(&data),
        "hashed as received, not re-read"
    );

    let loc = create_ok(&app, "hashy", 100_000, "").await;
    assert_eq!(
        patch(&app, "hashy", &loc, 0, png_bytes(50_000), &[])
            .await
            .status(),
        204
    );
    exec(
        &app,
        "UPDATE tus_uploads SET expires_at = '2000-01-01T00:00:00Z'",
    )
    .await;
    let report = stowage::jobs::cleanup::run(&app.state, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(report.expired_uploads, 1);
    assert_eq!(
        count(&app, "SELECT CAST(COUNT(*) AS BIGINT) FROM tus_uploads").await,
        0
    );
});

// ------------------------------------------------- a real process, killed

/// A data dir and database for `stowage serve` children and, for the
/// object-store variant, the environment that keeps their blobs in Garage
/// under a prefix of their own.
pub(crate) struct Site {
    scratch: Scratch,
    blobs: Vec<(String, String)>,
    /// The key prefix in the bucket (object-store variant only).
    prefix: Option<String>,
}

impl Site {
    async fn new(backend: Backend) -> Site {
        let scratch = Scratch::on(match backend {
            Backend::Postgres => Engine::Postgres,
            Backend::MariaDb => Engine::MariaDb,
            Backend::Sqlite | Backend::S3 => Engine::Sqlite,
        })
        .await;
        let (blobs, prefix) = if backend == Backend::S3 {
            let (env, prefix) = garage_env().await;
            (env, Some(prefix))
        } else {
            (Vec::new(), None)
        };
        Site {
            scratch,
            blobs,
            prefix,
        }
    }

    fn dir(&self) -> &Path {
        self.scratch.path()
    }

    /// The one node of a test, on a fixed port.
    async fn start(&self, port: u16) -> Serve {
        let dir = self.dir();
        self.node(&dir.join("data"), &dir.join("data/users"), port)
            .await
    }

    /// A node with its own data dir, on a volume and database it may share
    /// with other nodes. SIGTERM gives in-flight requests 1 s, the process
    /// 5 s.
    async fn node(&self, data: &Path, storage: &Path, port: u16) -> Serve {
        Launch::node(port, data, storage, &self.scratch.db_url)
            .env("STOWAGE_JWT_PUBLIC_KEY", RSA_PUBLIC)
            .env(
                "STOWAGE_SIGNING_SECRET",
                "rolling-restart-signing-secret-0123456789",
            )
            .env("STOWAGE_SHUTDOWN_GRACE_SECS", "1")
            .env("STOWAGE_SHUTDOWN_TIMEOUT_SECS", "5")
            .envs(self.blobs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .start()
            .await
    }

    /// A raw client of the bucket under this site's prefix.
    fn bucket(&self) -> Option<opendal::Operator> {
        let prefix = self.prefix.as_ref()?;
        Some(crate::garage::shared().operator(0, prefix))
    }
}

/// How a test stops the server mid-upload.
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Stop {
    Kill,
    Term,
}

/// The largest staging file under `dir`'s volume.
fn staged_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir.join("data/users/.tmp"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .max()
        .unwrap_or(0)
}

/// Uploads a 24 MiB file with `client` (a tus client run) through a proxy
/// that paces it to ~6 MiB/s; SIGKILLs the server once 6 MiB are staged and
/// restarts it on the same port, data dir and database. Returns the client's
/// report and the file's bytes, checked against the restarted server.
async fn kill_mid_upload(
    backend: Backend,
    client: impl FnOnce(&str, &Path) -> tokio::process::Command,
) -> (Value, Site) {
    stop_mid_upload(backend, Stop::Kill, 24 * MIB, client).await
}

/// Uploads a `size`-byte file with `client` through a proxy that paces it to
/// ~6 MiB/s; stops the server (`stop`) once 6 MiB are staged (on the object
/// store, where a PATCH's segment appears only when it ends: once 6 MiB went
/// through the proxy) and restarts it on the same port, data dir and
/// database. Returns the client's report; the file's sha256 and bytes are
/// checked against the restarted server.
pub(crate) async fn stop_mid_upload(
    backend: Backend,
    stop: Stop,
    size: usize,
    client: impl FnOnce(&str, &Path) -> tokio::process::Command,
) -> (Value, Site) {
    require_clients();
    let site = Site::new(backend).await;
    let port = free_port();
    let mut server = site.start(port).await;
    let proxy = NetProxy::start(
        format!("127.0.0.1:{port}").parse().unwrap(),
        Some(6 * MIB as u64),
    )
    .await;
    let data = png_bytes(size);
    let file = site.dir().join("big.png");
    std::fs::write(&file, &data).unwrap();
    let mut cmd = client(&format!("{}/api/uploads", proxy.base()), &file);
    let run = tokio::spawn(async move { run_client(&mut cmd).await });
    let dir = site.dir().to_path_buf();
    let s3 = backend == Backend::S3;
    wait_until("6 MiB staged", || {
        let dir = dir.clone();
        let sent = proxy.up_bytes();
        async move {
            if s3 {
                sent >= 6 * MIB as u64
            } else {
                staged_bytes(&dir) >= 6 * MIB as u64
            }
        }
    })
    .await;
    match stop {
        Stop::Kill => server.kill().await,
        Stop::Term => server.terminate().await,
    }
    let mut server = site.start(port).await;
    let res = run.await.unwrap();
    let id = res["file_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no Stowage-File-Id: {res}"))
        .to_string();
    let c = reqwest::Client::new();
    let f: Value = c
        .get(server.url(&format!("/api/files/{id}")))
        .bearer_auth(token("killed"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(f["sha256"], sha256_hex(&data), "{f}");
    let got = c
        .get(server.url(&format!("/api/files/{id}/download")))
        .bearer_auth(token("killed"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(got == data, "downloaded bytes differ");
    server.kill().await;
    (res, site)
}

pub(crate) fn statuses(res: &Value) -> Vec<String> {
    res["statuses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

// tus-js-client with its default retry delays ([0, 1000, 3000, 5000]: about
// 9 s in all), one PATCH for the whole file: the server is SIGKILLed
// mid-body and restarted. The dead process's lease is taken over, so the
// client's retry (HEAD, then PATCH at the offset) goes through: no 423.
both!(tus_js_default_retries_survive_sigkill, |b| async move {
    let (res, _db) = kill_mid_upload(b, |endpoint, file| {
        js_cmd(endpoint, "killed", file, &["--retry-delays", "default"])
    })
    .await;
    assert_eq!(res["ok"], true, "{res}");
    let seen = statuses(&res);
    assert!(
        seen.iter().any(|s| s.starts_with("HEAD ")),
        "resumed: {seen:?}"
    );
    assert!(
        !seen.iter().any(|s| s.ends_with(" 423")),
        "no 423: {seen:?}"
    );
});

// The same with tuspy (8 MiB chunks), resuming from the server's offset
// after each failure.
both!(tuspy_survives_sigkill, |b| async move {
    let (res, _db) = kill_mid_upload(b, |endpoint, file| {
        py_cmd(
            endpoint,
            "killed",
            file,
            &["--chunk-size", &(8 * MIB).to_string()],
        )
    })
    .await;
    assert_eq!(res["ok"], true, "{res}");
    let errors = res["errors"].as_array().unwrap();
    assert!(!errors.is_empty(), "the kill was felt: {res}");
    assert!(!errors.iter().any(|e| e["status"] == 423), "no 423: {res}");
    assert!(
        !res["resumed_offsets"].as_array().unwrap().is_empty(),
        "{res}"
    );
});

// A deploy mid-upload: the server is SIGTERMed while tus-js-client (default
// retry delays, one PATCH for the whole 32 MiB file) is sending, and a new
// process starts on the same port, data dir and database. The stopping
// server ends the PATCH (503) and keeps what it made durable; the client's
// retries (HEAD, then PATCH at the offset) reach the new process and finish
// the file: no 423.
both!(tus_js_default_retries_survive_sigterm, |b| async move {
    let (res, _db) = stop_mid_upload(b, Stop::Term, 32 * MIB, |endpoint, file| {
        js_cmd(endpoint, "killed", file, &["--retry-delays", "default"])
    })
    .await;
    assert_eq!(res["ok"], true, "{res}");
    let seen = statuses(&res);
    assert!(
        seen.iter().any(|s| s.starts_with("HEAD ")),
        "resumed: {seen:?}"
    );
    assert!(
        res["head_offsets"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o.as_u64().unwrap() >= 6 * MIB as u64),
        "resumed from what the stopped process kept: {res}"
    );
    assert!(
        !seen.iter().any(|s| s.ends_with(" 423")),
        "no 423: {seen:?}"
    );
});

// The same with tuspy (16 MiB chunks): the SIGTERM lands in the first
// chunk, too far from its end for the 1 s grace, and the client resumes
// inside it, where the old process stopped.
both!(tuspy_survives_sigterm, |b| async move {
    let (res, _db) = stop_mid_upload(b, Stop::Term, 32 * MIB, |endpoint, file| {
        py_cmd(
            endpoint,
            "killed",
            file,
            &["--chunk-size", &(16 * MIB).to_string()],
        )
    })
    .await;
    assert_eq!(res["ok"], true, "{res}");
    let errors = res["errors"].as_array().unwrap();
    assert!(!errors.is_empty(), "the restart was felt: {res}");
    assert!(!errors.iter().any(|e| e["status"] == 423), "no 423: {res}");
    assert!(
        res["resumed_offsets"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o.as_u64().unwrap() >= 6 * MIB as u64),
        "resumed from what the stopped process kept: {res}"
    );
});

// ------------------------------------------------------ a rolling restart

/// One client's uploads: each file's bytes and the client's report.
type Uploaded = Vec<(Vec<u8>, Value)>;

/// Uploads `size`-byte files one after another with tus-js-client (default
/// settings) to `endpoint` until `stop` is set, counting each one in
/// `finished`; file `n` of worker `w` has its own bytes.
async fn upload_loop(
    w: usize,
    endpoint: String,
    dir: std::path::PathBuf,
    size: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    finished: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> Uploaded {
    let mut done = Vec::new();
    let mut n = 0;
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        let mut data = png_bytes(size);
        // png_bytes is deterministic: make each file differ.
        let tag = format!("worker {w} file {n}");
        data[size - tag.len()..].copy_from_slice(tag.as_bytes());
        let file = dir.join(format!("w{w}-{n}.png"));
        std::fs::write(&file, &data).unwrap();
        let mut cmd = js_cmd(&endpoint, "rolling", &file, &["--retry-delays", "default"]);
        let res = run_client(&mut cmd).await;
        std::fs::remove_file(&file).unwrap();
        done.push((data, res));
        finished.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        n += 1;
    }
    done
}

// Two nodes on one PostgreSQL database and one volume, each with its data
// dir, behind a round-robin balancer; docs/deployment.md's rolling restart.
// Three tus-js-clients (default settings) upload 8 MiB files without pause,
// paced so that uploads are in flight when each node is restarted. For each
// node in turn the balancer takes it out of rotation and, as one whose
// deregistration delay ran out, closes its clients' connections while the
// node still holds their PATCHes (the clients retry on the other node at
// once); then the node is SIGTERMed and started again. What the clients saw
// is counted from their side and from the balancer's log of response
// statuses: no upload fails, no 423 is ever answered, every file is whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_of_two_nodes_postgres() {
    use std::{
        collections::HashSet,
        sync::{
            atomic::{AtomicBool, AtomicUsize, Ordering},
            Arc,
        },
    };
    require_clients();
    let site = Site::new(Backend::Postgres).await;
    let root = site.dir();
    let storage = root.join("volume");
    let (data_a, data_b) = (root.join("node-a"), root.join("node-b"));
    let (port_a, port_b) = (free_port(), free_port());
    let mut a = site.node(&data_a, &storage, port_a).await;
    let mut b = site.node(&data_b, &storage, port_b).await;
    let lb = Balancer::start(
        vec![
            format!("127.0.0.1:{port_a}").parse().unwrap(),
            format!("127.0.0.1:{port_b}").parse().unwrap(),
        ],
        Some(4 * MIB as u64),
    )
    .await;
    let files = root.join("files");
    std::fs::create_dir(&files).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let finished = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..3)
        .map(|w| {
            tokio::spawn(upload_loop(
                w,
                format!("{}/api/uploads", lb.base()),
                files.clone(),
                8 * MIB,
                stop.clone(),
                finished.clone(),
            ))
        })
        .collect();
    let staging = storage.join(".tmp");
    // The staging files of uploads in flight, at least 1 MiB into their body.
    let in_flight = || -> HashSet<String> {
        std::fs::read_dir(&staging)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.metadata().is_ok_and(|m| m.len() >= MIB as u64))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    };
    // Waits until three more uploads have finished since `since`, two
    // uploads not cut by an earlier restart are well under way, and node
    // `node` (0: A, 1: B) is serving a client.
    let busy = |since: usize, cut: HashSet<String>, node: usize| {
        let (finished, lb) = (finished.clone(), &lb);
        async move {
            wait_until("uploads to finish and others to be in flight", || {
                let fresh = in_flight().difference(&cut).count();
                let n = finished.load(Ordering::SeqCst);
                let serving = lb.open(node) > 0;
                async move { n >= since + 3 && fresh >= 2 && serving }
            })
            .await
        }
    };
    let mut cut = HashSet::new();
    let mut dropped = 0;
    for (node, data) in [(0, &data_a), (1, &data_b)] {
        busy(finished.load(Ordering::SeqCst), cut.clone(), node).await;
        cut.extend(in_flight());
        dropped += lb.open(node);
        lb.set_in_rotation(node, false);
        lb.drop_clients(node);
        // The node keeps the dropped PATCHes (their server side is open)
        // until it is stopped: meanwhile the clients resume elsewhere.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let server = if node == 0 { &mut a } else { &mut b };
        server.terminate().await;
        *server = site.node(data, &storage, [port_a, port_b][node]).await;
        lb.set_in_rotation(node, true);
    }
    busy(finished.load(Ordering::SeqCst), cut.clone(), 0).await;
    stop.store(true, Ordering::SeqCst);

    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.unwrap());
    }
    // What the clients saw.
    let failed: Vec<&Value> = all
        .iter()
        .map(|(_, res)| res)
        .filter(|res| res["ok"] != true)
        .collect();
    let locked_seen: usize = all
        .iter()
        .map(|(_, res)| statuses(res).iter().filter(|s| s.ends_with(" 423")).count())
        .sum();
    let resumed = all
        .iter()
        .filter(|(_, res)| statuses(res).iter().any(|s| s.starts_with("HEAD ")))
        .count();
    let answered = lb.statuses();
    let locked_answered = answered.iter().filter(|s| **s == 423).count();
    let mut by_status = std::collections::BTreeMap::<u16, usize>::new();
    for s in &answered {
        *by_status.entry(*s).or_default() += 1;
    }
    eprintln!(
        "{} uploads, {resumed} resumed, {} failed; {dropped} connections dropped; \
         423 seen by the clients: {locked_seen}; statuses through the balancer: {by_status:?}",
        all.len(),
        failed.len()
    );
    assert!(failed.is_empty(), "uploads failed: {failed:?}");
    assert_eq!(locked_seen, 0, "the clients saw 423");
    assert_eq!(
        locked_answered, 0,
        "the balancer forwarded 423: {by_status:?}"
    );
    assert!(dropped > 0, "the balancer dropped clients of a node");
    assert!(resumed > 0, "the restarts cut uploads in flight");

    let c = reqwest::Client::new();
    for (data, res) in &all {
        let id = res["file_id"]
            .as_str()
            .unwrap_or_else(|| panic!("no Stowage-File-Id: {res}"));
        let f: Value = c
            .get(a.url(&format!("/api/files/{id}")))
            .bearer_auth(token("rolling"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(f["sha256"], sha256_hex(data), "{f}");
        let got = c
            .get(a.url(&format!("/api/files/{id}/download")))
            .bearer_auth(token("rolling"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert!(got == *data, "downloaded bytes of {id} differ");
    }
    a.terminate().await;
    b.terminate().await;
}

// The saved sha256 state outlives the process: half an upload, a SIGKILL, a
// restart, staged bytes changed behind the server's back, then the rest. The
// recorded sha256 is that of what was received, so the restarted process
// did not read the staged data back (nor need any memory of its own).
both!(hash_state_survives_a_restart, |b| async move {
    let site = Site::new(b).await;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut server = site.start(port).await;
    let c = reqwest::Client::new();
    let data = png_bytes(300_000);
    let r = c
        .post(format!("{base}/api/uploads"))
        .bearer_auth(token("restart"))
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Length", data.len().to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let loc = hdr(&r, "location").unwrap().to_string();
    let send = |offset: usize, body: Vec<u8>| {
        c.patch(format!("{base}{loc}"))
            .bearer_auth(token("restart"))
            .header("Tus-Resumable", "1.0.0")
            .header("Content-Type", OCTET)
            .header("Upload-Offset", offset.to_string())
            .body(body)
            .send()
    };
    assert_eq!(
        send(0, data[..150_000].to_vec()).await.unwrap().status(),
        204
    );
    server.kill().await;
    let id = upload_id(&loc);
    match site.bucket() {
        // The PATCH at 0 wrote one segment, named by its offset.
        Some(op) => {
            let key = format!(".staging/{id}/{:020}", 0);
            let mut staged = op.read(&key).await.unwrap().to_vec();
            assert_eq!(staged.len(), 150_000);
            staged[1000..2000].fill(0);
            op.write(&key, staged).await.unwrap();
        }
        None => {
            let part = site.dir().join(format!("data/users/.tmp/{id}.part"));
            let mut staged = std::fs::read(&part).unwrap();
            staged[1000..2000].fill(0);
            std::fs::write(&part, &staged).unwrap();
        }
    }
    let mut server = site.start(port).await;
    let r = send(150_000, data[150_000..].to_vec()).await.unwrap();
    assert_eq!(r.status(), 204);
    let id = hdr(&r, "stowage-file-id").unwrap().to_string();
    let f: Value = c
        .get(format!("{base}/api/files/{id}"))
        .bearer_auth(token("restart"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        f["sha256"],
        sha256_hex(&data),
        "hashed as received, not re-read"
    );
    server.kill().await;
});
