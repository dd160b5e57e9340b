//! Backups (SPEC §7): a backup taken while uploads and deletes go on restores
//! exactly the snapshot's moment; verify catches a damaged archive;
//! retention deletes only stowage archives, oldest first.

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    time::Duration,
};

use serde_json::Value;
use stowage::meta::FileRecord;
use stowage::ops::{
    backup::dest::{Dest, Location},
    backup::{self, CreateOptions, DumpFile, ManifestLine},
    progress::Progress,
};

use crate::events::{all_events, json_bytes, percents};
use crate::helpers::*;
use crate::{both, local};

fn opts(dest: &Path) -> CreateOptions {
    CreateOptions {
        dest: Dest::Dir(dest.to_path_buf()),
        keep: None,
        keep_days: None,
        gzip: false,
        progress: Progress::off(),
    }
}

pub(crate) fn skipped_keys(manifest: &[ManifestLine]) -> HashSet<String> {
    manifest
        .iter()
        .filter_map(|m| match m {
            ManifestLine::Skipped { key, .. } => Some(key.clone()),
            _ => None,
        })
        .collect()
}

async fn download(app: &TestApp, user: &str, id: &str) -> Vec<u8> {
    let r = app.get(user, &format!("/api/files/{id}/download")).await;
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap().to_vec()
}

/// Restores `archive` into a fresh server and checks it against the dump:
/// same files per user, exact bytes, usage equal to the restored rows.
pub(crate) async fn restore_and_check(
    target: Backend,
    archive: &Path,
    dumped: &[DumpFile],
    skipped: &HashSet<String>,
    quotas: &HashMap<String, i64>,
) -> TestApp {
    let loc = Location::File(archive.to_path_buf());
    restore_from_and_check(target, &loc, dumped, skipped, quotas).await
}

/// [`restore_and_check`] from any location.
pub(crate) async fn restore_from_and_check(
    target: Backend,
    archive: &Location,
    dumped: &[DumpFile],
    skipped: &HashSet<String>,
    quotas: &HashMap<String, i64>,
) -> TestApp {
    let app2 = spawn_app(target).await;
    let rep = backup::restore_from(&app2.state, archive, Progress::off())
        .await
        .unwrap();
    let expected: Vec<&FileRecord> = dumped
        .iter()
        .map(|d| &d.file)
        .filter(|f| !skipped.contains(&f.file_path))
        .collect();
    assert_eq!(rep.files as usize, expected.len());
    assert_eq!(rep.rows_skipped as usize, dumped.len() - expected.len());
    let mut by_user: HashMap<&str, Vec<&FileRecord>> = HashMap::new();
    for f in &expected {
        by_user.entry(f.user_id.as_str()).or_default().push(f);
    }
    for (user, max) in quotas {
        let rows = by_user.remove(user.as_str()).unwrap_or_default();
        let listed = app2.list_all(user, "").await;
        let listed_ids: HashSet<String> = listed
            .iter()
            .map(|f| f["id"].as_str().unwrap().to_string())
            .collect();
        let want_ids: HashSet<String> = rows.iter().map(|f| f.id.to_string()).collect();
        assert_eq!(listed_ids, want_ids, "files of {user}");
        let usage = app2.usage(user).await;
        let sum: i64 = rows.iter().map(|f| f.file_size).sum();
        assert_eq!(
            usage["total_bytes"].as_i64().unwrap(),
            sum,
            "usage of {user}"
        );
        assert_eq!(usage["file_count"].as_i64().unwrap(), rows.len() as i64);
        assert_eq!(
            usage["max_bytes"].as_i64().unwrap(),
            *max,
            "quota of {user}"
        );
        for f in rows {
            let bytes = download(&app2, user, &f.id.to_string()).await;
            assert_eq!(sha256_hex(&bytes), f.sha256, "bytes of {}", f.id);
            assert_eq!(bytes.len() as i64, f.file_size);
            let listed = listed.iter().find(|l| l["id"] == f.id.to_string()).unwrap();
            assert_eq!(listed["file_name"], Value::String(f.file_name.clone()));
            assert_eq!(listed["tags"], serde_json::json!(f.tags));
        }
        app2.assert_consistent(user).await;
    }
    // Blobs in the store are exactly the restored files; on the volume, with
    // the layout's modes.
    assert_eq!(app2.blobs_on_disk().await.len(), expected.len());
    for f in expected.iter().filter(|_| target != Backend::S3) {
        use std::os::unix::fs::PermissionsExt;
        let p = app2.storage_root().join(&f.file_path);
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            std::fs::metadata(p.parent().unwrap())
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o700
        );
    }
    let audit = stowage::ops::audit::run(&app2.state, Default::default())
        .await
        .unwrap();
    assert!(audit.clean, "{}", audit.render());
    app2
}

both!(
    backup_during_uploads_and_deletes_restores_the_snapshot,
    |b| async move {
        let app = spawn_app(b).await;
        let dest = app.dir.path().join("backups");
        app.admin_set_quota("bk2", 50 * 1024 * 1024).await;
        let mut initial = Vec::new();
        for i in 0..12 {
            let f = app
                .upload_ok("bk1", &format!("f{i}.png"), png_bytes(1000 + i * 7919))
                .await;
            initial.push(f["id"].as_str().unwrap().to_string());
        }
        for i in 0..3 {
            app.upload_ok("bk2", &format!("g{i}.png"), png_bytes(50_000 + i))
                .await;
        }
        let r = app
            .client
            .put(app.url(&format!("/api/files/{}/tags", initial[0])))
            .bearer_auth(token("bk1"))
            .json(&serde_json::json!({"tags": ["intro", "été"]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);

        // Uploads and deletes run while the backup is taken.
        let to_delete: Vec<String> = initial[6..].to_vec();
        let kept: Vec<String> = initial[..6].to_vec();
        let busy = {
            let base = app.base.clone();
            let client = app.client.clone();
            let to_delete = to_delete.clone();
            tokio::spawn(async move {
                let mut uploaded = Vec::new();
                for (i, id) in to_delete.iter().enumerate() {
                    let form = file_form(&format!("n{i}.png"), png_bytes(20_000 + i));
                    let r = client
                        .post(format!("{base}/api/files/upload"))
                        .bearer_auth(token("bk1"))
                        .multipart(form)
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 201);
                    let v: Value = r.json().await.unwrap();
                    uploaded.push(v["id"].as_str().unwrap().to_string());
                    let r = client
                        .delete(format!("{base}/api/files/{id}"))
                        .bearer_auth(token("bk1"))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 204);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                uploaded
            })
        };
        let state = app.state.clone();
        let dest2 = dest.clone();
        let made = tokio::spawn(async move { backup::create(&state, opts(&dest2)).await.unwrap() });
        let (made, uploaded) = (made.await.unwrap(), busy.await.unwrap());
        // Uploaded once the backup is done: never part of it.
        let after = app.upload_ok("bk1", "after.png", png_bytes(4321)).await;

        let verify = backup::verify(&made.path, Progress::off()).unwrap();
        assert!(verify.ok, "{:?}", verify.problems);
        let backup::Contents {
            header,
            users,
            files,
            manifest,
        } = backup::read_contents(&made.path).unwrap();
        assert_eq!(header.files as usize, files.len());
        assert_eq!(header.users as usize, users.len());
        assert_eq!(header.source_backend, app.state.meta.backend());
        let records: Vec<&FileRecord> = files.iter().map(|d| &d.file).collect();
        let ids: HashSet<String> = records.iter().map(|f| f.id.to_string()).collect();
        for id in &kept {
            assert!(ids.contains(id), "a file never deleted is in the snapshot");
        }
        assert!(!ids.contains(after["id"].as_str().unwrap()));
        for id in &ids {
            assert!(
                initial.contains(id)
                    || uploaded.contains(id)
                    || records
                        .iter()
                        .any(|f| f.user_id == "bk2" && f.id.to_string() == *id)
            );
        }
        // Every row of the dump is archived or recorded as deleted after the snapshot.
        let skipped = skipped_keys(&manifest);
        let archived: HashSet<String> = manifest
            .iter()
            .filter_map(|m| match m {
                ManifestLine::Entry { path, kind, .. } if kind == "file" => {
                    Some(path.trim_start_matches("blobs/").to_string())
                }
                _ => None,
            })
            .collect();
        for f in &records {
            assert!(
                archived.contains(&f.file_path) ^ skipped.contains(&f.file_path),
                "{}",
                f.file_path
            );
        }
        for k in &skipped {
            let f = records.iter().find(|f| &f.file_path == k).unwrap();
            assert!(
                to_delete.contains(&f.id.to_string()),
                "only deleted files are skipped"
            );
        }
        let quotas: HashMap<String, i64> = users
            .iter()
            .map(|u| (u.user_id.clone(), u.max_bytes))
            .collect();
        assert_eq!(quotas["bk2"], 50 * 1024 * 1024);

        let app2 = restore_and_check(b, &made.path, &files, &skipped, &quotas).await;
        let listed: Vec<String> = app2
            .list_all("bk1", "")
            .await
            .iter()
            .map(|f| f["id"].as_str().unwrap().to_string())
            .collect();
        assert!(!listed.contains(&after["id"].as_str().unwrap().to_string()));
        // Restoring again into a database with files is refused.
        let err = backup::restore(&app2.state, &made.path, Progress::off())
            .await
            .unwrap_err();
        assert!(format!("{err:#}").contains("empty"), "{err:#}");
    }
);

both!(backup_restores_across_backends, |b| async move {
    let app = spawn_app(b).await;
    let dest = app.dir.path().join("backups");
    for i in 0..4 {
        app.upload_ok("xb1", &format!("x{i}.png"), png_bytes(3000 + i))
            .await;
    }
    let made = backup::create(
        &app.state,
        CreateOptions {
            gzip: true,
            ..opts(&dest)
        },
    )
    .await
    .unwrap();
    assert!(made.path.to_string_lossy().ends_with(".tar.gz"));
    assert!(backup::verify(&made.path, Progress::off()).unwrap().ok);
    let backup::Contents {
        users,
        files,
        manifest,
        ..
    } = backup::read_contents(&made.path).unwrap();
    let quotas = users
        .iter()
        .map(|u| (u.user_id.clone(), u.max_bytes))
        .collect();
    // SQLite to PostgreSQL and MariaDB, PostgreSQL to SQLite, MariaDB to
    // both others, and a bucket to a volume; then the volume's archive back
    // into a bucket.
    let others: &[Backend] = match b {
        Backend::Sqlite => &[Backend::Postgres, Backend::MariaDb],
        Backend::Postgres | Backend::S3 => &[Backend::Sqlite],
        Backend::MariaDb => &[Backend::Postgres, Backend::Sqlite],
    };
    for other in others {
        restore_and_check(
            *other,
            &made.path,
            &files,
            &skipped_keys(&manifest),
            &quotas,
        )
        .await;
    }
    if b == Backend::Sqlite && crate::garage::available() {
        restore_and_check(
            Backend::S3,
            &made.path,
            &files,
            &skipped_keys(&manifest),
            &quotas,
        )
        .await;
    }
});

// A restore keeps the quota threshold a user had reached: the 80 % recorded
// before the backup is not recorded again by the first upload after the
// restore, and the next crossing (95 %) is.
local!(restore_keeps_the_threshold_reached, |b| async move {
    let app = &spawn_app(b).await;
    app.admin_set_quota("rt1", 10_000).await;
    app.upload_ok("rt1", "a.json", json_bytes(8500)).await;
    assert_eq!(percents(&all_events(app, "").await, "rt1"), [80]);
    let made = backup::create(&app.state, opts(&app.dir.path().join("backups")))
        .await
        .unwrap();

    let app2 = &spawn_app(b).await;
    backup::restore(&app2.state, &made.path, Progress::off())
        .await
        .unwrap();
    assert_eq!(app2.usage("rt1").await["total_bytes"], 8500);
    app2.upload_ok("rt1", "b.json", json_bytes(500)).await;
    assert!(
        percents(&all_events(app2, "").await, "rt1").is_empty(),
        "90 %: nothing crossed since the backup"
    );
    app2.upload_ok("rt1", "c.json", json_bytes(500)).await;
    assert_eq!(percents(&all_events(app2, "").await, "rt1"), [95]);
});

/// Offset of the first blob's data inside an uncompressed archive.
fn first_blob_offset(path: &Path) -> u64 {
    let mut ar = tar::Archive::new(std::fs::File::open(path).unwrap());
    for e in ar.entries().unwrap() {
        let e = e.unwrap();
        if e.path().unwrap().starts_with("blobs") && e.size() > 100 {
            return e.raw_file_position();
        }
    }
    panic!("no blob in archive");
}

local!(verify_detects_a_damaged_archive, |b| async move {
    let app = spawn_app(b).await;
    let dest = app.dir.path().join("backups");
    for i in 0..3 {
        app.upload_ok("vb1", &format!("v{i}.png"), png_bytes(5000 + i))
            .await;
    }
    let made = backup::create(&app.state, opts(&dest)).await.unwrap();
    let good = backup::verify(&made.path, Progress::off()).unwrap();
    assert!(good.ok, "{:?}", good.problems);
    assert_eq!(good.skipped, 0);

    // One flipped byte inside a blob.
    let bad = app.dir.path().join("flipped.tar");
    std::fs::copy(&made.path, &bad).unwrap();
    let mut bytes = std::fs::read(&bad).unwrap();
    let at = first_blob_offset(&bad) as usize + 50;
    bytes[at] ^= 0x01;
    std::fs::write(&bad, &bytes).unwrap();
    let rep = backup::verify(&bad, Progress::off()).unwrap();
    assert!(!rep.ok);
    assert!(
        rep.problems.iter().any(|p| p.contains("blobs/")),
        "{:?}",
        rep.problems
    );

    // A damaged archive is not restored: the target database stays empty.
    let app2 = spawn_app(b).await;
    assert!(backup::restore(&app2.state, &bad, Progress::off())
        .await
        .is_err());
    assert!(app2.state.meta.all_files(None).await.unwrap().is_empty());

    // A truncated archive fails too.
    let cut = app.dir.path().join("cut.tar");
    std::fs::write(&cut, &std::fs::read(&made.path).unwrap()[..bytes.len() / 2]).unwrap();
    let truncated = backup::verify(&cut, Progress::off());
    assert!(truncated.map(|r| !r.ok).unwrap_or(true));

    // The command line agrees: exit status 1 for the damaged one, 0 for the good one.
    let run = |p: &PathBuf| {
        std::process::Command::new(env!("CARGO_BIN_EXE_stowage"))
            .args(["backup", "verify"])
            .arg(p)
            .env_clear()
            .env("STOWAGE_DATA_DIR", app.dir.path().join("cli"))
            .current_dir(app.dir.path())
            .output()
            .unwrap()
            .status
            .code()
    };
    assert_eq!(run(&made.path), Some(0));
    assert_eq!(run(&bad), Some(1));
});

local!(retention_keeps_the_newest_archives_only, |b| async move {
    let app = spawn_app(b).await;
    let dest = app.dir.path().join("backups");
    app.upload_ok("rb1", "r.png", png_bytes(2000)).await;
    std::fs::create_dir_all(&dest).unwrap();
    // Files that are not stowage archives are never touched.
    for other in [
        "notes.txt",
        "stowage-backup-latest.tar",
        "stowage-backup-20200101T000000000Z.tar.partial",
    ] {
        std::fs::write(dest.join(other), b"x").unwrap();
    }
    let old = dest.join("stowage-backup-20200101T000000000Z.tar");
    std::fs::write(&old, b"not really").unwrap();

    let mut made = Vec::new();
    for _ in 0..3 {
        made.push(backup::create(&app.state, opts(&dest)).await.unwrap().path);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(backup::list(&dest).await.unwrap().len(), 4);
    let last = backup::create(
        &app.state,
        CreateOptions {
            keep: Some(2),
            ..opts(&dest)
        },
    )
    .await
    .unwrap();
    made.push(last.path.clone());
    assert_eq!(last.removed.len(), 3, "{:?}", last.removed);
    let listed = backup::list(&dest).await.unwrap();
    let names: Vec<PathBuf> = listed.iter().map(|a| a.path.clone()).collect();
    assert_eq!(names, made[2..].to_vec());
    for a in &listed {
        assert_eq!(a.header.as_ref().unwrap().files, 1);
        assert!(a.size > 2000);
    }
    for other in [
        "notes.txt",
        "stowage-backup-latest.tar",
        "stowage-backup-20200101T000000000Z.tar.partial",
    ] {
        assert!(dest.join(other).exists(), "{other}");
    }

    // --keep-days deletes archives older than D days, by the date in the name.
    std::fs::write(&old, b"not really").unwrap();
    let r = backup::create(
        &app.state,
        CreateOptions {
            keep_days: Some(1),
            ..opts(&dest)
        },
    )
    .await
    .unwrap();
    assert_eq!(r.removed, vec![old.clone()]);
    assert_eq!(backup::list(&dest).await.unwrap().len(), 3);
});
