//! What only the object store has: a storage node failing under load,
//! several stowage nodes on one database and one Garage cluster (requests
//! and scheduled tasks), presigned redirects, audit of a bucket, and
//! `migrate-blobs`. (The rest of the suite runs on Garage
//! through the `s3` variant of `both!`.)

use std::time::Duration;

use futures::future::join_all;
use reqwest::redirect::Policy;
use serde_json::Value;
use stowage::{
    blob::{local::LocalStore, s3::S3Store, BlobStore},
    config::BlobBackend,
    domain::names::user_dir_name,
    ops::{audit, lease, migrate, progress::Progress},
};
use uuid::Uuid;

use crate::{
    audit::audit_with,
    garage::{self, Cluster},
    helpers::*,
    media::wait_for,
    netproxy::{Tamper, Tampering},
    tus::{create_ok, download, hdr, offset_of, patch},
};

const MIB: usize = 1024 * 1024;

/// Bytes that sniff as PNG, different for each `seed`.
fn blob(len: usize, seed: u8) -> Vec<u8> {
    let mut v = png_bytes(len);
    for (i, b) in v.iter_mut().enumerate().skip(16) {
        *b ^= seed.wrapping_add(i as u8);
    }
    v
}

fn sha256_hex(d: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(d))
}

async fn get_bytes(app: &TestApp, user: &str, id: &str) -> Vec<u8> {
    let r = app.get(user, &format!("/api/files/{id}/download")).await;
    assert_eq!(r.status(), 200, "download {id}");
    r.bytes().await.unwrap().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storage_node_fails_during_uploads_and_downloads() {
    if !garage::available() {
        return;
    }
    let dir = garage::scratch("failover");
    let cluster = tokio::task::spawn_blocking(move || Cluster::start(&dir))
        .await
        .unwrap();
    let app = spawn_app_with(Backend::Sqlite, |c| {
        c.blob_store = BlobBackend::S3;
        c.s3_bucket = Some(garage::BUCKET.into());
        c.s3_endpoint = Some(cluster.endpoint(0));
        c.s3_access_key_id = Some(garage::KEY_ID.into());
        c.s3_secret_access_key = Some(stowage::config::Secret(garage::SECRET.into()));
    })
    .await;
    // Files that exist before the failure.
    let mut before = Vec::new();
    for i in 0..4 {
        let data = blob(3 * MIB, i);
        let f = app
            .upload_ok("fo", &format!("b{i}.png"), data.clone())
            .await;
        before.push((f["id"].as_str().unwrap().to_string(), data));
    }
    // Uploads (large enough for multipart) and downloads in flight while
    // node 2 is killed.
    let uploads = (0..6u8).map(|i| {
        let app = &app;
        async move {
            let data = blob(10 * MIB, 100 + i);
            let f = app
                .upload_ok("fo", &format!("u{i}.png"), data.clone())
                .await;
            (f["id"].as_str().unwrap().to_string(), data)
        }
    });
    let downloads = before.iter().map(|(id, data)| {
        let app = &app;
        async move {
            for _ in 0..3 {
                assert_eq!(&get_bytes(app, "fo", id).await, data);
            }
        }
    });
    let kill = async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        cluster.stop_node(2);
    };
    let (uploaded, _, _) = tokio::join!(join_all(uploads), join_all(downloads), kill);
    // With the node down: everything still reads, new uploads (multipart
    // and tus) still land, deletes work.
    for (id, data) in before.iter().chain(uploaded.iter()) {
        assert_eq!(&get_bytes(&app, "fo", id).await, data);
    }
    let data = blob(9 * MIB, 7);
    let loc = create_ok(&app, "fo", data.len() as u64, "").await;
    assert_eq!(
        patch(&app, "fo", &loc, 0, data[..4 * MIB].to_vec(), &[])
            .await
            .status(),
        204
    );
    let r = patch(
        &app,
        "fo",
        &loc,
        4 * MIB as u64,
        data[4 * MIB..].to_vec(),
        &[],
    )
    .await;
    assert_eq!(r.status(), 204);
    let id = hdr(&r, "stowage-file-id").unwrap().to_string();
    assert_eq!(download(&app, "fo", &id).await, data);
    let r = app
        .client
        .delete(app.url(&format!("/api/files/{}", before[0].0)))
        .bearer_auth(token("fo"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    app.assert_consistent("fo").await;
    assert_eq!(app.list_all("fo", "").await.len(), 4 - 1 + 6 + 1);
    let h = app.get_public("/readyz").await;
    assert_eq!(h.status(), 200, "{:?}", h.text().await);
    // The node comes back; nothing was lost.
    cluster.start_node(2);
    for (id, data) in uploaded.iter() {
        assert_eq!(&get_bytes(&app, "fo", id).await, data);
    }
}

/// Three stowage nodes on one PostgreSQL database and one bucket prefix,
/// talking to Garage nodes 0, 1 and 2; `tweak` applies to all of them.
async fn three_nodes(tweak: impl FnOnce(&mut stowage::config::Config)) -> [TestApp; 3] {
    let mut shared = stowage::config::Config::defaults(std::env::temp_dir());
    use_garage(&mut shared, 0).await;
    let a = spawn_app_with(Backend::Postgres, |c| {
        c.blob_store = shared.blob_store;
        c.s3_bucket = shared.s3_bucket.clone();
        c.s3_endpoint = shared.s3_endpoint.clone();
        c.s3_prefix = shared.s3_prefix.clone();
        c.s3_access_key_id = shared.s3_access_key_id.clone();
        c.s3_secret_access_key = shared.s3_secret_access_key.clone();
        tweak(c);
    })
    .await;
    let cluster = garage::shared();
    let b = spawn_peer_with(&a, |c| c.s3_endpoint = Some(cluster.endpoint(1))).await;
    let c = spawn_peer_with(&a, |c| c.s3_endpoint = Some(cluster.endpoint(2))).await;
    [a, b, c]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_nodes_on_one_database_and_one_cluster() {
    if !garage::available() {
        return;
    }
    // Three stowage nodes on one PostgreSQL database and one Garage
    // cluster, each talking to a different Garage node.
    let [a, b, c] = three_nodes(|_| {}).await;
    let nodes = [&a, &b, &c];

    // The quota holds with uploads spread over the nodes.
    a.admin_set_quota("mq", 10 * MIB as u64).await;
    let statuses = join_all((0..30).map(|i| {
        let n = nodes[i % 3];
        async move {
            n.upload("mq", &format!("f{i}.png"), blob(MIB, i as u8))
                .await
                .status()
                .as_u16()
        }
    }))
    .await;
    let ok = statuses.iter().filter(|s| **s == 201).count();
    assert!((1..=10).contains(&ok), "{statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == 201 || *s == 507),
        "{statuses:?}"
    );
    for n in nodes {
        n.assert_consistent("mq").await;
    }
    assert_eq!(
        c.usage("mq").await["total_bytes"].as_u64().unwrap(),
        (ok * MIB) as u64
    );

    // A tus upload started on one node, continued on the second and
    // finished on the third (more than one multipart part).
    let data = blob(20 * MIB, 42);
    let loc = create_ok(&a, "mt", data.len() as u64, "").await;
    let cut1 = 9 * MIB;
    let cut2 = 13 * MIB;
    assert_eq!(
        patch(&a, "mt", &loc, 0, data[..cut1].to_vec(), &[])
            .await
            .status(),
        204
    );
    assert_eq!(offset_of(&b, "mt", &loc).await, cut1 as u64);
    assert_eq!(
        patch(&b, "mt", &loc, cut1 as u64, data[cut1..cut2].to_vec(), &[])
            .await
            .status(),
        204
    );
    assert_eq!(offset_of(&c, "mt", &loc).await, cut2 as u64);
    let r = patch(&c, "mt", &loc, cut2 as u64, data[cut2..].to_vec(), &[]).await;
    assert_eq!(r.status(), 204);
    let id = hdr(&r, "stowage-file-id").unwrap().to_string();
    // Downloads, ranges and deletes from any node.
    for n in nodes {
        assert_eq!(download(n, "mt", &id).await, data);
    }
    let r = b
        .client
        .get(b.url(&format!("/api/files/{id}/download")))
        .bearer_auth(token("mt"))
        .header("Range", "bytes=10000000-10000099")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(&r.bytes().await.unwrap()[..], &data[10_000_000..10_000_100]);
    let r = c
        .client
        .delete(c.url(&format!("/api/files/{id}")))
        .bearer_auth(token("mt"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        a.get("mt", &format!("/api/files/{id}/download"))
            .await
            .status(),
        404
    );
    a.assert_nothing_staged().await;
    for n in nodes {
        n.assert_consistent("mt").await;
    }

    // Cleanup run on every node at once releases an expired upload once.
    let loc = create_ok(&a, "mx", 5 * MIB as u64, "").await;
    assert_eq!(
        patch(&a, "mx", &loc, 0, blob(MIB, 9), &[]).await.status(),
        204
    );
    let uid: uuid::Uuid = loc.rsplit('/').next().unwrap().parse().unwrap();
    sqlx::query("UPDATE tus_uploads SET expires_at = NOW() - INTERVAL '1 hour' WHERE id = $1")
        .bind(uid)
        .execute(&sqlx::PgPool::connect(&a.db_url).await.unwrap())
        .await
        .unwrap();
    let reports = join_all(
        nodes
            .iter()
            .map(|n| stowage::jobs::cleanup::run(&n.state, Duration::ZERO)),
    )
    .await;
    let expired: u64 = reports
        .iter()
        .map(|r| r.as_ref().unwrap().expired_uploads)
        .sum();
    assert_eq!(expired, 1, "{reports:?}");
    assert_eq!(
        a.state
            .meta
            .get_user("mx")
            .await
            .unwrap()
            .unwrap()
            .reserved_bytes,
        0
    );
    assert_eq!(a.state.blobs.staged_len(uid).await.unwrap(), None);
}

// The answer to CompleteMultipartUpload lost on the way back (the object
// store did complete it): the retry finds the upload gone, and the upload
// still lands, because the object is checked to be exactly its parts. An
// upload is never refused for an object the store holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_answer_to_complete_multipart_upload_loses_no_upload() {
    if !garage::available() {
        return;
    }
    let target = garage_addr().await;
    let proxy = Tamper::start(target, "POST ", "?uploadId=", Tampering::LoseAnswer).await;
    let app = spawn_app_with(Backend::S3, |c| {
        c.s3_endpoint = Some(format!("http://{}", proxy.addr));
    })
    .await;
    // Two parts (over one part of 8 MiB), so it is a multipart upload.
    let data = blob(10 * MIB, 9);
    proxy.arm(1);
    let f = app.upload_ok("lr", "lost.png", data.clone()).await;
    assert_eq!(proxy.done(), 1, "the answer to Complete was lost");
    let id = f["id"].as_str().unwrap().to_string();
    assert_eq!(get_bytes(&app, "lr", &id).await, data);
    // A second upload with nothing lost, and the books balance.
    let g = app.upload_ok("lr", "kept.png", blob(9 * MIB, 10)).await;
    assert_eq!(proxy.done(), 1);
    assert_eq!(g["file_size"], 9 * MIB as u64);
    app.assert_consistent("lr").await;
    assert_eq!(app.list_all("lr", "").await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_can_redirect_to_presigned_urls() {
    if !garage::available() {
        return;
    }
    let app = spawn_app_with(Backend::S3, |c| c.s3_downloads_redirect = true).await;
    let data = blob(300_000, 3);
    let f = app.upload_ok("rd", "Résumé 2026.png", data.clone()).await;
    let id = f["id"].as_str().unwrap();
    let no_follow = reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .unwrap();
    let r = no_follow
        .get(app.url(&format!("/api/files/{id}/download")))
        .bearer_auth(token("rd"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    assert_eq!(hdr(&r, "cache-control"), Some("no-store"));
    let loc = hdr(&r, "location").unwrap().to_string();
    assert!(loc.starts_with("http://127.0.0.1:"), "{loc}");
    assert!(loc.contains("X-Amz-Signature="), "{loc}");
    // The store answers with the file's name and type, and serves ranges
    // (Garage leaves the overrides off ranged answers).
    let r = no_follow.get(&loc).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(hdr(&r, "content-type"), Some("image/png"));
    let cd = hdr(&r, "content-disposition").unwrap().to_string();
    assert!(cd.starts_with("attachment;"), "{cd}");
    assert!(cd.contains("R%C3%A9sum%C3%A9%202026.png"), "{cd}");
    assert_eq!(&r.bytes().await.unwrap()[..], &data[..]);
    let r = no_follow
        .get(&loc)
        .header("Range", "bytes=1000-1999")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(&r.bytes().await.unwrap()[..], &data[1000..2000]);
    // A tampered presigned URL is refused by the store.
    let bad = loc.replace("X-Amz-Signature=", "X-Amz-Signature=0");
    assert_eq!(no_follow.get(&bad).send().await.unwrap().status(), 403);
    // Signed links redirect too; following them yields the bytes.
    let v: Value = app
        .client
        .post(app.url(&format!("/api/files/{id}/signed-url")))
        .bearer_auth(token("rd"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let link = app.url(v["url"].as_str().unwrap());
    assert_eq!(no_follow.get(&link).send().await.unwrap().status(), 302);
    assert_eq!(
        &app.client
            .get(&link)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()[..],
        &data[..]
    );
    // Still owner-only, and 304 is answered by stowage itself.
    assert_eq!(
        app.get("someone-else", &format!("/api/files/{id}/download"))
            .await
            .status(),
        404
    );
    let r = no_follow
        .get(app.url(&format!("/api/files/{id}/download")))
        .bearer_auth(token("rd"))
        .header("If-None-Match", format!("\"{}\"", sha256_hex(&data)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_blobs_copies_the_volume_and_resumes() {
    if !garage::available() {
        return;
    }
    // A service on the local volume with files and a thumbnail.
    let app = spawn_app(Backend::Sqlite).await;
    let mut files = Vec::new();
    for i in 0..5u8 {
        let data = blob(MIB + i as usize * 100_000, i);
        let f = app
            .upload_ok("mig", &format!("m{i}.png"), data.clone())
            .await;
        files.push((f["id"].as_str().unwrap().to_string(), data));
    }
    let img = app.upload_ok("mig", "pic.png", real_png(800, 400)).await;
    let img_id = img["id"].as_str().unwrap().to_string();
    wait_for(&app, "mig", &img_id, "thumbnail_url", 30).await;
    files.push((img_id.clone(), real_png(800, 400)));

    let mut s3cfg = (*app.state.config).clone();
    use_garage(&mut s3cfg, 1).await;
    let to = S3Store::open(&s3cfg.s3_options()).unwrap();
    let from = LocalStore::open(app.storage_root()).unwrap();

    // One file is damaged on the volume: it is refused, the rest copied.
    let rec = app
        .state
        .meta
        .get_file_any(files[2].0.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    let path = app.storage_root().join(&rec.file_path);
    let good = std::fs::read(&path).unwrap();
    let mut bad = good.clone();
    bad[500] ^= 0xff;
    std::fs::write(&path, &bad).unwrap();
    let r = migrate::run(app.state.meta.as_ref(), &from, &to, Progress::off())
        .await
        .unwrap();
    assert_eq!(
        (r.files_total, r.copied, r.already_present),
        (6, 5, 0),
        "{r:?}"
    );
    assert_eq!(r.failed.len(), 1, "{r:?}");
    assert_eq!(r.failed[0].key, rec.file_path);
    assert!(r.failed[0].reason.contains("sha256"), "{r:?}");
    assert_eq!(r.thumbnails_copied, 1);
    assert!(matches!(
        to.len(&rec.file_path).await,
        Err(stowage::blob::BlobError::NotFound)
    ));

    // Repaired, the run resumes through the real binary: only that one
    // file is copied; a new upload meanwhile is picked up as well.
    std::fs::write(&path, &good).unwrap();
    let late = blob(200_000, 77);
    let f = app.upload_ok("mig", "late.png", late.clone()).await;
    files.push((f["id"].as_str().unwrap().to_string(), late));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stowage"))
        .args(["migrate-blobs", "--json"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .env("STOWAGE_DATABASE_URL", &app.db_url)
        .env("STOWAGE_STORAGE_ROOT", app.storage_root())
        .env("STOWAGE_DATA_DIR", app.dir.path().join("data"))
        .env("STOWAGE_S3_BUCKET", garage::BUCKET)
        .env("STOWAGE_S3_ENDPOINT", s3cfg.s3_endpoint.as_ref().unwrap())
        .env("STOWAGE_S3_PREFIX", &s3cfg.s3_prefix)
        .env("AWS_ACCESS_KEY_ID", garage::KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", garage::SECRET)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["copied"], 2, "{v}");
    assert_eq!(v["already_present"], 5, "{v}");
    assert_eq!(v["failed"].as_array().unwrap().len(), 0, "{v}");

    // A node switched to the object store serves every file and thumbnail.
    let s3node = spawn_peer_with(&app, |c| {
        c.blob_store = BlobBackend::S3;
        c.s3_bucket = s3cfg.s3_bucket.clone();
        c.s3_endpoint = s3cfg.s3_endpoint.clone();
        c.s3_prefix = s3cfg.s3_prefix.clone();
        c.s3_access_key_id = s3cfg.s3_access_key_id.clone();
        c.s3_secret_access_key = s3cfg.s3_secret_access_key.clone();
    })
    .await;
    assert_eq!(s3node.state.blobs.kind(), "s3");
    for (id, data) in &files {
        assert_eq!(&get_bytes(&s3node, "mig", id).await, data);
    }
    let t = s3node
        .get("mig", &format!("/api/files/{img_id}/thumbnail"))
        .await;
    assert_eq!(t.status(), 200);
    s3node.assert_consistent("mig").await;
}

/// The blob key of an uploaded file, from its row.
async fn key_of(app: &TestApp, user: &str, file: &Value) -> String {
    let id = file["id"].as_str().unwrap().parse().unwrap();
    app.state
        .meta
        .get_file(user, id)
        .await
        .unwrap()
        .unwrap()
        .file_path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_on_the_bucket_finds_every_inconsistency_and_fix_repairs_it() {
    if !garage::available() {
        return;
    }
    let app = spawn_app(Backend::S3).await;
    let op = garage::shared().operator(0, &app.state.config.s3_prefix);
    let udir = user_dir_name("sa1");
    let a = app.upload_ok("sa1", "a.png", png_bytes(1000)).await;
    let b_data = png_bytes(2000);
    let b = app.upload_ok("sa1", "b.png", b_data.clone()).await;
    app.upload_ok("sa1", "c.png", png_bytes(3000)).await;
    let (a_key, b_key) = (key_of(&app, "sa1", &a).await, key_of(&app, "sa1", &b).await);

    // Missing blob, size mismatch, drifted counters.
    op.delete(&a_key).await.unwrap();
    op.write(&b_key, vec![7u8; 2007]).await.unwrap();
    app.exec_sql("UPDATE user_storage SET total_bytes = total_bytes + 7, file_count = file_count + 1 WHERE user_id = 'sa1'").await;
    // Objects no row names, and staging data no reservation owns. An
    // object's age is its Last-Modified, which cannot be set: these are
    // made "old" by waiting past a short grace period.
    let old_orphan = format!("{udir}/images/{}.png", Uuid::new_v4());
    let old_thumb = format!("{udir}/.thumbs/{}.jpg", Uuid::new_v4());
    let stranger = "nobody/videos/x.mp4".to_string();
    let at_top = "stray.bin".to_string();
    let stray_id = Uuid::new_v4();
    let stray_seg = format!(".staging/{stray_id}/{:020}", 0);
    let junk = ".staging/junk".to_string();
    for (k, n) in [
        (&old_orphan, 500),
        (&old_thumb, 90),
        (&stranger, 10),
        (&at_top, 3),
        (&stray_seg, 300),
        (&junk, 5),
    ] {
        op.write(k, vec![1u8; n]).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let young_orphan = format!("{udir}/images/{}.png", Uuid::new_v4());
    let young_seg = format!(".staging/{}/{:020}", Uuid::new_v4(), 0);
    op.write(&young_orphan, vec![1u8; 400]).await.unwrap();
    op.write(&young_seg, vec![1u8; 5]).await.unwrap();
    let grace = Duration::from_secs(4);

    let r = audit_with(&app, false, grace).await;
    assert!(!r.clean, "{}", r.render());
    assert_eq!(r.users_checked, 1);
    assert_eq!(r.files_checked, 3);
    assert_eq!(r.drift.len(), 1, "{}", r.render());
    assert_eq!(
        (
            r.drift[0].counter_bytes - r.drift[0].row_bytes,
            r.drift[0].counter_files - r.drift[0].row_files
        ),
        (7, 1)
    );
    assert_eq!(r.missing.len(), 1, "{}", r.render());
    assert_eq!(
        (r.missing[0].key.as_str(), r.missing[0].kind.as_str()),
        (a_key.as_str(), "file")
    );
    assert_eq!(r.size_mismatch.len(), 1, "{}", r.render());
    assert_eq!(
        (
            r.size_mismatch[0].key.as_str(),
            r.size_mismatch[0].expected_bytes,
            r.size_mismatch[0].actual_bytes
        ),
        (b_key.as_str(), 2000, 2007)
    );
    let mut orphans: Vec<(&str, &str, u64)> = r
        .orphans
        .iter()
        .map(|o| (o.path.as_str(), o.kind.as_str(), o.bytes))
        .collect();
    orphans.sort();
    let mut want = vec![
        (old_orphan.as_str(), "file", 500),
        (old_thumb.as_str(), "thumbnail", 90),
        (stranger.as_str(), "file", 10),
        (at_top.as_str(), "unknown", 3),
    ];
    want.sort();
    assert_eq!(orphans, want, "{}", r.render());
    assert!(r.orphans.iter().all(|o| o.age_secs >= 4));
    assert_eq!(r.recent_orphans.len(), 1, "{}", r.render());
    assert_eq!(r.recent_orphans[0].path, young_orphan);
    assert_eq!((r.thumbnails, r.thumbnail_bytes), (1, 90));
    let mut strays: Vec<(String, u64)> = r
        .stray_temp
        .iter()
        .map(|s| (s.path.clone(), s.bytes))
        .collect();
    strays.sort();
    let mut want_strays = vec![(format!(".staging/{stray_id}"), 300), (junk.clone(), 5)];
    want_strays.sort();
    assert_eq!(strays, want_strays, "{}", r.render());
    // Report-only touched nothing.
    for k in [&old_orphan, &stray_seg, &junk] {
        assert!(op.stat(k).await.is_ok(), "{k}");
    }

    // --fix: counters repaired, old orphans and stray staging data removed;
    // the young ones and every row stay.
    let r = audit_with(&app, true, grace).await;
    assert!(r.drift.iter().all(|d| d.repaired), "{}", r.render());
    assert!(
        r.orphans.iter().all(|o| o.removed) && r.orphans.len() == 4,
        "{}",
        r.render()
    );
    assert!(r.stray_temp.iter().all(|o| o.removed) && r.stray_temp.len() == 2);
    for k in [
        &old_orphan,
        &old_thumb,
        &stranger,
        &at_top,
        &stray_seg,
        &junk,
    ] {
        assert!(
            matches!(op.stat(k).await, Err(e) if e.kind() == opendal::ErrorKind::NotFound),
            "{k} should be gone"
        );
    }
    for k in [&young_orphan, &young_seg] {
        assert!(op.stat(k).await.is_ok(), "{k} should stay");
    }
    let u = app.state.meta.get_user("sa1").await.unwrap().unwrap();
    assert_eq!((u.total_bytes, u.file_count), (6000, 3));
    assert_eq!(
        app.list_all("sa1", "").await.len(),
        3,
        "rows are never deleted"
    );
    assert!(!r.clean, "a missing blob and a size mismatch remain");

    // Once the operator deals with those, the audit is clean; the real
    // binary agrees (exit status 0).
    let r = app
        .client
        .delete(app.url(&format!("/api/files/{}", a["id"].as_str().unwrap())))
        .bearer_auth(token("sa1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    op.write(&b_key, b_data).await.unwrap();
    let r = audit_with(&app, false, audit::DEFAULT_GRACE).await;
    assert!(r.clean, "{}", r.render());
    assert_eq!(r.recent_orphans.len(), 1);
    let c = &app.state.config;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stowage"))
        .args(["audit", "--json"])
        .env_clear()
        .env("STOWAGE_DATA_DIR", app.dir.path().join("data"))
        .env("STOWAGE_DATABASE_URL", &app.db_url)
        .env("STOWAGE_BLOB_STORE", "s3")
        .env("STOWAGE_S3_BUCKET", garage::BUCKET)
        .env("STOWAGE_S3_ENDPOINT", c.s3_endpoint.as_deref().unwrap())
        .env("STOWAGE_S3_PREFIX", &c.s3_prefix)
        .env("AWS_ACCESS_KEY_ID", garage::KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", garage::SECRET)
        .env("RUST_LOG", "error")
        .current_dir(app.dir.path())
        .output()
        .unwrap();
    let report: audit::AuditReport = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}", String::from_utf8_lossy(&out.stderr));
    });
    assert_eq!(out.status.code(), Some(0), "{}", report.render());
    assert_eq!((report.files_checked, report.bytes_checked), (2, 5000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_tasks_run_once_at_a_time_across_nodes() {
    if !garage::available() {
        return;
    }
    // Three nodes on one PostgreSQL database and one bucket, each through
    // another Garage node, all scheduling cleanup and audit every second.
    let interval = Duration::from_secs(1);
    let started = std::time::Instant::now();
    let [a, b, c] = three_nodes(|c| {
        c.cleanup_interval = interval;
        c.audit_interval = interval;
    })
    .await;
    // Work for the audits, uploaded through every node.
    for (i, n) in [&a, &b, &c].into_iter().enumerate() {
        n.upload_ok(&format!("st{i}"), "f.png", blob(2 * MIB, i as u8))
            .await;
    }
    // Watch for about six intervals.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let runs = loop {
        let runs = lease::recent_runs(&a.state, None, 1000).await.unwrap();
        let finished = |name: &str| {
            runs.iter()
                .filter(|r| r.name == name && r.finished_at.is_some())
                .count()
        };
        if finished("audit") >= 6 && finished("cleanup") >= 6 {
            break runs;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "too few runs: {runs:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let elapsed = started.elapsed();
    for task in ["audit", "cleanup"] {
        let mut mine: Vec<_> = runs.iter().filter(|r| r.name == task).collect();
        mine.sort_by_key(|r| r.started_at);
        // One lease per task: runs start at least an interval apart, so
        // there are at most elapsed/interval + 1 of them (three unguarded
        // schedulers would make about three times as many) ...
        let most = (elapsed.as_secs_f64() / interval.as_secs_f64()).floor() as usize + 1;
        assert!(
            mine.len() <= most,
            "{task}: {} runs in {elapsed:?}",
            mine.len()
        );
        // ... and none overlaps the next.
        for w in mine.windows(2) {
            let prev_end = w[0]
                .finished_at
                .expect("only the last run may be unfinished");
            assert!(
                prev_end <= w[1].started_at,
                "{task} runs overlap: {:?} and {:?}",
                w[0],
                w[1]
            );
        }
        // Every finished run succeeded: the bucket and the rows agree.
        for r in mine.iter().filter(|r| r.finished_at.is_some()) {
            assert_eq!(r.outcome.as_deref(), Some("ok"), "{r:?}");
        }
    }
    let audit = runs
        .iter()
        .find(|r| r.name == "audit" && r.finished_at.is_some())
        .unwrap();
    assert!(
        audit
            .summary
            .as_deref()
            .unwrap()
            .starts_with("3 user(s), 3 file(s)"),
        "{audit:?}"
    );
}

/// The server's peak resident set (`VmHWM`), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status");
    kib * 1024
}

/// Eight 48 MiB uploads at once to the object store hardly raise the
/// server's peak memory: parts wait on local scratch, not in memory. Per
/// upload the writer holds a 256 KiB gathering buffer and a 256 KiB read
/// per part in flight (two), under 1 MiB; with the request's own buffers
/// and the HTTP clients', 3 MiB per upload is the bound, 24 MiB for eight,
/// plus 8 MiB for the allocator's slack. The writer that kept parts in
/// memory held at least two 8 MiB parts per upload (128 MiB for eight;
/// 277 MiB measured). Afterwards the spool is empty and nothing is left in
/// staging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_uploads_to_the_object_store_spool_instead_of_buffering() {
    if !garage::available() {
        return;
    }
    const N: usize = 8;
    const LEN: usize = 48 * MIB;
    let scratch = crate::serve::Scratch::new(false).await;
    let (env, prefix) = garage_env().await;
    let dir = scratch.path();
    let server = crate::serve::Launch::node(
        0,
        &dir.join("data"),
        &dir.join("data/users"),
        &scratch.db_url,
    )
    .envs(env)
    .start()
    .await;
    let pid = server.child.id().expect("running");
    let token = crate::serve::dev_login(&server.base, "mem").await;
    // Warm up (connection pools, allocator arenas) with one small upload.
    let (status, _) =
        crate::serve::upload_file(&server.base, &token, "warm.png", blob(MIB, 99)).await;
    assert_eq!(status, 201);
    let before = peak_rss(pid);
    let uploads = (0..N).map(|i| {
        let (base, token) = (server.base.clone(), token.clone());
        async move {
            let data = blob(LEN, i as u8);
            let want = sha256_hex(&data);
            let (status, v) =
                crate::serve::upload_file(&base, &token, &format!("f{i}.png"), data).await;
            assert_eq!(status, 201, "{v}");
            assert_eq!(v["sha256"], want.as_str(), "{v}");
        }
    });
    join_all(uploads).await;
    let grew = peak_rss(pid).saturating_sub(before);
    let bound = (N * 3 * MIB + 8 * MIB) as u64;
    assert!(
        grew <= bound,
        "{N} uploads of {} MiB at once raised the peak RSS by {} MiB (bound {} MiB)",
        LEN / MIB,
        grew / MIB as u64,
        bound / MIB as u64
    );
    eprintln!(
        "{N} × {} MiB at once: peak RSS {} MiB → {} MiB",
        LEN / MIB,
        before / MIB as u64,
        peak_rss(pid) / MIB as u64
    );
    let spool = dir.join("data/users/.tmp/s3-spool");
    assert_eq!(std::fs::read_dir(&spool).unwrap().count(), 0);
    let op = garage::shared().operator(0, &prefix);
    let staged = op.list_with(".staging/").recursive(true).await.unwrap();
    assert!(
        staged.iter().all(|e| !e.metadata().is_file()),
        "{:?}",
        staged
            .iter()
            .map(|e| e.path().to_string())
            .collect::<Vec<_>>()
    );
}

/// The address of the shared cluster's node 0.
async fn garage_addr() -> std::net::SocketAddr {
    let endpoint = tokio::task::spawn_blocking(|| garage::shared().endpoint(0))
        .await
        .unwrap();
    endpoint
        .trim_start_matches("http://")
        .parse()
        .expect("a Garage endpoint is host:port")
}

/// Multipart uploads the store holds under `prefix` (ListMultipartUploads,
/// signed as stowage signs its own calls).
async fn unfinished_uploads(prefix: &str) -> usize {
    use stowage::blob::s3::sigv4::{self, Signer};
    let endpoint = tokio::task::spawn_blocking(|| garage::shared().endpoint(0))
        .await
        .unwrap();
    let host = endpoint.trim_start_matches("http://").to_string();
    let path = format!("/{}/", garage::BUCKET);
    let want = format!("{}/", prefix.trim_matches('/'));
    let query = sigv4::canonical_query(&[("prefix", want.as_str()), ("uploads", "")]);
    let sha = sigv4::payload_hash(b"");
    let signed = Signer {
        access_key_id: garage::KEY_ID.into(),
        secret_access_key: garage::SECRET.into(),
        region: "us-east-1".into(),
    }
    .sign("GET", &host, &path, &query, &sha, chrono::Utc::now());
    let r = reqwest::Client::new()
        .get(format!("{endpoint}{path}?{query}"))
        .header("x-amz-content-sha256", sha)
        .header("x-amz-date", signed.amz_date)
        .header("authorization", signed.authorization)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "ListMultipartUploads");
    r.text().await.unwrap().matches("<Upload>").count()
}

/// An upload still streaming when the server is told to stop: the stop
/// ends it, and the multipart upload it had begun on the store is aborted
/// before the process exits, so the store keeps (and bills) nothing of it.
/// The store is slow to take the abort (2 s), as a busy one is: a process
/// that did not wait for it would exit first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_mid_upload_leaves_no_multipart_upload_on_the_store() {
    if !garage::available() {
        return;
    }
    let scratch = crate::serve::Scratch::new(false).await;
    let (env, prefix) = garage_env().await;
    let dir = scratch.path();
    let slow = Tamper::start(
        garage_addr().await,
        "DELETE ",
        "?uploadId=",
        Tampering::Delay(Duration::from_secs(2)),
    )
    .await;
    slow.arm(u64::MAX);
    let mut server = crate::serve::Launch::node(
        0,
        &dir.join("data"),
        &dir.join("data/users"),
        &scratch.db_url,
    )
    .envs(env)
    .env("STOWAGE_S3_ENDPOINT", format!("http://{}", slow.addr))
    .env("STOWAGE_SHUTDOWN_GRACE_SECS", 1)
    .env("STOWAGE_SHUTDOWN_TIMEOUT_SECS", 20)
    .start()
    .await;
    let token = crate::serve::dev_login(&server.base, "halt").await;
    // A multipart form whose file part never ends: 12 MiB (more than one
    // part of 8 MiB, so the store has a multipart upload), then nothing.
    let (mut tx, rx) = futures::channel::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    let boundary = "halt-boundary";
    let upload = tokio::spawn(
        reqwest::Client::new()
            .post(format!("{}/api/files/upload", server.base))
            .bearer_auth(&token)
            .header(
                "content-type",
                format!("multipart/form-data; boundary={boundary}"),
            )
            .body(reqwest::Body::wrap_stream(rx))
            .send(),
    );
    use futures::SinkExt;
    let head = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"h.png\"\r\n\
         Content-Type: image/png\r\n\r\n"
    );
    tx.send(Ok(head.into_bytes())).await.unwrap();
    let data = blob(12 * MIB, 12);
    for c in data.chunks(MIB) {
        tx.send(Ok(c.to_vec())).await.unwrap();
    }
    let p = prefix.clone();
    crate::events::until(30, "the upload's multipart upload on the store", || {
        let p = p.clone();
        async move { (unfinished_uploads(&p).await > 0).then_some(()) }
    })
    .await;
    server.signal_term();
    let status = server.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "{status:?}\n{}", server.logs());
    assert_eq!(slow.done(), 1, "one abort, delayed");
    assert_eq!(
        unfinished_uploads(&prefix).await,
        0,
        "a multipart upload left on the store:\n{}",
        server.logs()
    );
    drop(tx);
    let _ = upload.await;
}

/// A process that died mid-upload leaves a multipart upload on the store
/// (no object, so listing objects never finds it): the staging listing
/// reports it, and cleanup aborts it once no reservation owns it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_aborts_a_multipart_upload_a_dead_process_left() {
    if !garage::available() {
        return;
    }
    let app = spawn_app(Backend::S3).await;
    let prefix = app.state.config.s3_prefix.clone();
    let id = Uuid::new_v4();
    let mut w = app.state.blobs.stage(id, 0).await.unwrap();
    // More than one part (8 MiB): the first goes out as a multipart part.
    for c in blob(9 * MIB, 5).chunks(MIB) {
        w.write(bytes::Bytes::copy_from_slice(c)).await.unwrap();
    }
    // The process dies: no abort is sent.
    std::mem::forget(w);
    let p = prefix.clone();
    crate::events::until(30, "the part on the store", || {
        let p = p.clone();
        async move { (unfinished_uploads(&p).await == 1).then_some(()) }
    })
    .await;
    let staged = app.state.blobs.list_staged().await.unwrap();
    assert!(
        staged
            .iter()
            .any(|e| e.id == Some(id) && e.modified.is_some()),
        "{staged:?}"
    );
    let report = stowage::jobs::cleanup::run(&app.state, Duration::ZERO)
        .await
        .unwrap();
    assert!(report.stale_temp_files >= 1, "{report:?}");
    assert_eq!(unfinished_uploads(&prefix).await, 0);
    assert!(app.state.blobs.list_staged().await.unwrap().is_empty());
}

/// A key that may not list multipart uploads (ListBucketMultipartUploads
/// denied, as an access policy may): cleanup still removes the stale
/// staging objects, and only the unfinished uploads are left to the
/// bucket's lifecycle rules.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_without_the_right_to_list_multipart_uploads_still_removes_objects() {
    if !garage::available() {
        return;
    }
    let proxy = Tamper::start(
        garage_addr().await,
        "GET ",
        "max-uploads=",
        Tampering::Forbid,
    )
    .await;
    proxy.arm(u64::MAX);
    let app = spawn_app_with(Backend::S3, |c| {
        c.s3_endpoint = Some(format!("http://{}", proxy.addr));
    })
    .await;
    let op = garage::shared().operator(0, &app.state.config.s3_prefix);
    let seg = format!(".staging/{}/{:020}", Uuid::new_v4(), 0);
    op.write(&seg, vec![1u8; 100]).await.unwrap();
    let report = stowage::jobs::cleanup::run(&app.state, Duration::ZERO)
        .await
        .unwrap();
    assert!(proxy.done() >= 1, "the listing was refused");
    assert_eq!(report.stale_temp_files, 1, "{report:?}");
    assert!(!op.exists(&seg).await.unwrap());
}

/// The object store goes away (every connection cut or refused): uploads
/// small and multipart-sized, tus appends and downloads answer 503
/// `unavailable` with `Retry-After`, never a bare 500; nothing is counted
/// and nothing stays reserved. Once it is back, the same requests work and
/// the file kept from before reads whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_store_that_goes_away_answers_503_until_it_is_back() {
    if !garage::available() {
        return;
    }
    let target = garage_addr().await;
    let proxy = crate::netproxy::CutProxy::start(target).await;
    let app = spawn_app_with(Backend::S3, |c| {
        c.s3_endpoint = Some(proxy.base());
    })
    .await;
    let kept_data = blob(300_000, 21);
    let kept = app.upload_ok("gone", "kept.png", kept_data.clone()).await;
    let kept_id = kept["id"].as_str().unwrap().to_string();
    let loc = create_ok(&app, "gone", 9 * MIB as u64, "").await;
    // The next byte sent to the store cuts every connection, and new ones
    // are closed at once.
    proxy.cut_after(1);
    let unavailable = |what: &'static str| {
        move |status: u16, retry: Option<String>, body: String| {
            assert_eq!(status, 503, "{what}: {body}");
            assert!(retry.is_some(), "{what}: Retry-After");
            assert!(body.contains("\"unavailable\""), "{what}: {body}");
        }
    };
    for (name, len) in [("small.png", 300_000), ("large.png", 10 * MIB)] {
        let r = app.upload("gone", name, blob(len, 22)).await;
        let retry = hdr(&r, "retry-after").map(str::to_string);
        unavailable("upload")(r.status().as_u16(), retry, r.text().await.unwrap());
    }
    let r = patch(&app, "gone", &loc, 0, blob(4 * MIB, 23), &[]).await;
    let retry = hdr(&r, "retry-after").map(str::to_string);
    unavailable("tus PATCH")(r.status().as_u16(), retry, r.text().await.unwrap());
    let r = app
        .get("gone", &format!("/api/files/{kept_id}/download"))
        .await;
    let retry = hdr(&r, "retry-after").map(str::to_string);
    unavailable("download")(r.status().as_u16(), retry, r.text().await.unwrap());
    assert!(proxy.is_down());
    app.assert_consistent("gone").await;
    assert_eq!(app.list_all("gone", "").await.len(), 1);
    // Back: the tus upload resumes where it was, a new upload lands, the
    // old file reads whole.
    proxy.up(target);
    assert_eq!(get_bytes(&app, "gone", &kept_id).await, kept_data);
    let data = blob(9 * MIB, 24);
    let at = offset_of(&app, "gone", &loc).await;
    let r = patch(&app, "gone", &loc, at, data[at as usize..].to_vec(), &[]).await;
    assert_eq!(r.status(), 204, "{:?}", r.text().await);
    app.upload_ok("gone", "after.png", blob(300_000, 25)).await;
    app.assert_consistent("gone").await;
    assert_eq!(app.list_all("gone", "").await.len(), 3);
    assert_eq!(
        app.state
            .meta
            .get_user("gone")
            .await
            .unwrap()
            .unwrap()
            .reserved_bytes,
        0
    );
}
