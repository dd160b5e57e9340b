//! What only the object store has: a storage node failing under load,
//! several stowage nodes on one database and one Garage cluster, presigned
//! redirects, and `migrate-blobs`. (The rest of the suite runs on Garage
//! through the `s3` variant of `both!`.)

use std::time::Duration;

use futures::future::join_all;
use reqwest::redirect::Policy;
use serde_json::Value;
use stowage::{
    blob::{local::LocalStore, s3::S3Store, BlobStore},
    config::BlobBackend,
    ops::{migrate, progress::Progress},
};

use crate::{
    garage::{self, Cluster},
    helpers::*,
    media::wait_for,
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
    let h = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(h.status(), 200, "{:?}", h.text().await);
    // The node comes back; nothing was lost.
    cluster.start_node(2);
    for (id, data) in uploaded.iter() {
        assert_eq!(&get_bytes(&app, "fo", id).await, data);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_nodes_on_one_database_and_one_cluster() {
    if !garage::available() {
        return;
    }
    // Three stowage nodes on one PostgreSQL database and one Garage
    // cluster, each talking to a different Garage node.
    let mut cfg = stowage::config::Config::defaults(std::env::temp_dir());
    use_garage(&mut cfg, 0).await;
    let a = spawn_app_with(Backend::Postgres, |c| {
        c.blob_store = cfg.blob_store;
        c.s3_bucket = cfg.s3_bucket.clone();
        c.s3_endpoint = cfg.s3_endpoint.clone();
        c.s3_prefix = cfg.s3_prefix.clone();
        c.s3_access_key_id = cfg.s3_access_key_id.clone();
        c.s3_secret_access_key = cfg.s3_secret_access_key.clone();
    })
    .await;
    let cluster = garage::shared();
    let b = spawn_peer_with(&a, |c| c.s3_endpoint = Some(cluster.endpoint(1))).await;
    let c = spawn_peer_with(&a, |c| c.s3_endpoint = Some(cluster.endpoint(2))).await;
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
    assert!(
        a.temp_files().await.is_empty(),
        "{:?}",
        a.temp_files().await
    );
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
