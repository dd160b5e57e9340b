//! `stowage audit` (SPEC §6) and the scheduler inside `serve`: every kind of
//! inconsistency is found, `--fix` repairs what it may and nothing else, the
//! grace period protects young files, and periodic tasks hold a database
//! lease so that two servers never run one at once.

use std::{
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use stowage::{
    domain::names::user_dir_name,
    ops::{
        audit::{self, AuditOptions, AuditReport},
        lease,
    },
};
use uuid::Uuid;

use crate::events::{all_events, json_bytes, percents};
use crate::helpers::*;
use crate::local;

const DAY: u64 = 24 * 3600;

/// Sets a file's modification time `secs` into the past.
fn age(path: &Path, secs: u64) {
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(SystemTime::now() - Duration::from_secs(secs))
        .unwrap();
}

/// Writes a file (and its directories) with `len` bytes, `secs` old.
fn put(path: &Path, len: usize, secs: u64) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, vec![7u8; len]).unwrap();
    age(path, secs);
}

pub async fn audit_with(app: &TestApp, fix: bool, grace: Duration) -> AuditReport {
    audit::run(
        &app.state,
        AuditOptions {
            fix,
            grace,
            ..Default::default()
        },
    )
    .await
    .unwrap()
}

fn blob_path(app: &TestApp, file: &serde_json::Value) -> PathBuf {
    let user_dir = app.storage_root();
    // Stored as {user}/images/{id}.png for the PNG fixtures.
    let id = file["id"].as_str().unwrap();
    let mut found = None;
    for entry in walk(&user_dir) {
        if entry.file_name().unwrap().to_string_lossy().starts_with(id) {
            found = Some(entry);
        }
    }
    found.expect("blob on disk")
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

local!(clean_volume_audits_clean, |b| async move {
    let app = spawn_app(b).await;
    app.upload_ok("ac1", "a.png", png_bytes(1000)).await;
    app.upload_ok("ac1", "b.png", png_bytes(2000)).await;
    app.upload_ok("ac2", "c.png", png_bytes(3000)).await;
    let r = audit_with(&app, false, audit::DEFAULT_GRACE).await;
    assert!(r.clean, "{}", r.render());
    assert_eq!(r.users_checked, 2);
    assert_eq!(r.files_checked, 3);
    assert_eq!(r.bytes_checked, 6000);
    assert!(r.drift.is_empty() && r.orphans.is_empty() && r.missing.is_empty());
});

local!(
    audit_finds_every_inconsistency_and_fix_repairs_what_it_may,
    |b| async move {
        let app = spawn_app(b).await;
        let root = app.storage_root();
        let udir = root.join(user_dir_name("au1"));
        let a = app.upload_ok("au1", "a.png", png_bytes(1000)).await;
        let bb = app.upload_ok("au1", "b.png", png_bytes(2000)).await;
        app.upload_ok("au1", "c.png", png_bytes(3000)).await;

        // Missing blob: a row whose file is gone.
        let a_path = blob_path(&app, &a);
        std::fs::remove_file(&a_path).unwrap();
        // Size mismatch: bytes appended to a blob.
        let b_path = blob_path(&app, &bb);
        {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&b_path)
                .unwrap();
            f.write_all(b"garbage").unwrap();
        }
        // Drifted counters.
        app.exec_sql("UPDATE user_storage SET total_bytes = total_bytes + 7, file_count = file_count + 1 WHERE user_id = 'au1'").await;
        // Orphans: an old file and an old thumbnail with no row, and a young one.
        let old_orphan = udir.join("images").join(format!("{}.png", Uuid::new_v4()));
        put(&old_orphan, 500, 2 * DAY);
        let old_thumb = udir.join(".thumbs").join(format!("{}.jpg", Uuid::new_v4()));
        put(&old_thumb, 90, 2 * DAY);
        let young_orphan = udir.join("images").join(format!("{}.png", Uuid::new_v4()));
        put(&young_orphan, 400, 60);
        // A directory of no known user.
        let stranger = root.join("nobody").join("videos").join("x.mp4");
        put(&stranger, 10, 3 * DAY);
        // Stray temp files: no reservation owns them.
        let stray = root.join(".tmp").join(format!("{}.part", Uuid::new_v4()));
        put(&stray, 300, 2 * DAY);
        let junk = root.join(".tmp").join("junk");
        put(&junk, 5, 2 * DAY);
        let young_tmp = root.join(".tmp").join(format!("{}.part", Uuid::new_v4()));
        put(&young_tmp, 5, 10);

        let r = audit_with(&app, false, audit::DEFAULT_GRACE).await;
        assert!(!r.clean, "{}", r.render());
        assert_eq!(r.drift.len(), 1, "{}", r.render());
        let d = &r.drift[0];
        assert_eq!(
            (
                d.user_id.as_str(),
                d.counter_bytes - d.row_bytes,
                d.counter_files - d.row_files
            ),
            ("au1", 7, 1)
        );
        assert!(!d.repaired);
        assert_eq!(r.missing.len(), 1);
        assert_eq!(r.missing[0].file_id.to_string(), a["id"].as_str().unwrap());
        assert_eq!(r.missing[0].kind, "file");
        assert_eq!(r.size_mismatch.len(), 1);
        assert_eq!(
            (
                r.size_mismatch[0].expected_bytes,
                r.size_mismatch[0].actual_bytes
            ),
            (2000, 2007)
        );
        let mut orphans: Vec<(&str, &str)> = r
            .orphans
            .iter()
            .map(|o| (o.path.as_str(), o.kind.as_str()))
            .collect();
        orphans.sort();
        let rel = |p: &Path| p.strip_prefix(&root).unwrap().display().to_string();
        let mut want = [
            (rel(&old_orphan), "file"),
            (rel(&old_thumb), "thumbnail"),
            (rel(&stranger), "file"),
        ];
        want.sort();
        assert_eq!(
            orphans,
            want.iter()
                .map(|(p, k)| (p.as_str(), *k))
                .collect::<Vec<_>>()
        );
        assert_eq!(r.recent_orphans.len(), 1);
        assert_eq!(r.recent_orphans[0].path, rel(&young_orphan));
        assert_eq!(r.thumbnails, 1);
        assert_eq!(r.thumbnail_bytes, 90);
        let mut strays: Vec<String> = r.stray_temp.iter().map(|s| s.path.clone()).collect();
        strays.sort();
        let mut want_strays = [rel(&stray), rel(&junk)];
        want_strays.sort();
        assert_eq!(strays, want_strays);
        // Report-only touched nothing.
        assert!(old_orphan.exists() && stray.exists() && junk.exists());
        assert_eq!(
            app.state
                .meta
                .get_user("au1")
                .await
                .unwrap()
                .unwrap()
                .total_bytes,
            1000 + 2000 + 3000 + 7
        );
        let human = r.render();
        assert!(
            human.contains("drift") && human.contains("missing") && human.contains("NOT clean"),
            "{human}"
        );

        // --fix: counters repaired, old orphans and stray temp files removed; the
        // young orphan, the young temp file and every row stay.
        let r = audit_with(&app, true, audit::DEFAULT_GRACE).await;
        assert!(r.drift.iter().all(|d| d.repaired), "{}", r.render());
        assert!(r.orphans.iter().all(|o| o.removed));
        assert!(r.stray_temp.iter().all(|o| o.removed));
        assert!(
            !old_orphan.exists()
                && !old_thumb.exists()
                && !stranger.exists()
                && !stray.exists()
                && !junk.exists()
        );
        assert!(young_orphan.exists() && young_tmp.exists());
        let u = app.state.meta.get_user("au1").await.unwrap().unwrap();
        assert_eq!((u.total_bytes, u.file_count), (6000, 3));
        assert_eq!(
            app.list_all("au1", "").await.len(),
            3,
            "rows are never deleted"
        );
        // Missing blob and size mismatch cannot be repaired: still not clean.
        assert_eq!(r.missing.len(), 1);
        assert_eq!(r.size_mismatch.len(), 1);
        assert!(!r.clean);

        // Once the operator deals with those, the audit is clean (the young
        // orphan is listed but does not count).
        let resp = app
            .client
            .delete(app.url(&format!("/api/files/{}", a["id"].as_str().unwrap())))
            .bearer_auth(token("au1"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 204);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&b_path)
            .unwrap()
            .set_len(2000)
            .unwrap();
        let r = audit_with(&app, false, audit::DEFAULT_GRACE).await;
        assert!(r.clean, "{}", r.render());
        assert_eq!(r.recent_orphans.len(), 1);
    }
);

// A counter that drifted below the rows hid a crossing: the fix that
// corrects it is the change that crosses, and records `quota.threshold`
// as any other change of usage does (once: fixing again records nothing).
local!(
    fix_that_carries_usage_across_a_threshold_records_it,
    |b| async move {
        let app = &spawn_app(b).await;
        app.admin_set_quota("at1", 10_000).await;
        app.upload_ok("at1", "a.json", json_bytes(5000)).await;
        app.exec_sql(
            "UPDATE user_storage SET total_bytes = total_bytes - 4000 WHERE user_id = 'at1'",
        )
        .await;
        // 8500 bytes of rows (85 %), counted as 4500.
        app.upload_ok("at1", "b.json", json_bytes(3500)).await;
        assert!(percents(&all_events(app, "").await, "at1").is_empty());

        let r = audit_with(app, true, audit::DEFAULT_GRACE).await;
        assert!(r.clean && r.drift.len() == 1, "{}", r.render());
        assert_eq!(app.usage("at1").await["total_bytes"], 8500);
        let events = all_events(app, "&type=quota.threshold").await;
        assert_eq!(percents(&events, "at1"), [80], "{events:#?}");
        let e = &events[0];
        assert_eq!(
            (&e["data"]["total_bytes"], &e["data"]["max_bytes"]),
            (&8500.into(), &10_000.into())
        );

        audit_with(app, true, audit::DEFAULT_GRACE).await;
        assert_eq!(percents(&all_events(app, "").await, "at1"), [80]);
        // The fix re-armed nothing and hid nothing: the next crossing is 95 %.
        app.upload_ok("at1", "c.json", json_bytes(1000)).await;
        assert_eq!(percents(&all_events(app, "").await, "at1"), [80, 95]);
    }
);

local!(
    fix_makes_clean_when_everything_is_repairable,
    |b| async move {
        let app = spawn_app(b).await;
        let root = app.storage_root();
        app.upload_ok("af1", "a.png", png_bytes(1500)).await;
        app.exec_sql(
            "UPDATE user_storage SET total_bytes = 0, file_count = 0 WHERE user_id = 'af1'",
        )
        .await;
        put(
            &root
                .join(user_dir_name("af1"))
                .join("audio")
                .join("old.mp3"),
            100,
            3 * DAY,
        );
        put(
            &root.join(".tmp").join(format!("{}.part", Uuid::new_v4())),
            100,
            3 * DAY,
        );

        let before = audit_with(&app, false, audit::DEFAULT_GRACE).await;
        assert!(!before.clean);
        assert_eq!(
            (
                before.drift.len(),
                before.orphans.len(),
                before.stray_temp.len()
            ),
            (1, 1, 1)
        );
        let fixed = audit_with(&app, true, audit::DEFAULT_GRACE).await;
        assert!(fixed.clean, "{}", fixed.render());
        let after = audit_with(&app, false, audit::DEFAULT_GRACE).await;
        assert!(after.clean, "{}", after.render());
        assert!(after.drift.is_empty() && after.orphans.is_empty() && after.stray_temp.is_empty());
        app.assert_consistent("af1").await;
    }
);

local!(grace_period_protects_young_files, |b| async move {
    let app = spawn_app(b).await;
    let root = app.storage_root();
    app.upload_ok("ag1", "a.png", png_bytes(1000)).await;
    let two_hours = root
        .join(user_dir_name("ag1"))
        .join("images")
        .join(format!("{}.png", Uuid::new_v4()));
    put(&two_hours, 100, 2 * 3600);
    let tmp = root.join(".tmp").join(format!("{}.part", Uuid::new_v4()));
    put(&tmp, 100, 2 * 3600);

    // Default grace (24 h): listed as recent, left alone even by --fix.
    let r = audit_with(&app, true, audit::parse_duration("24h").unwrap()).await;
    assert!(r.clean, "{}", r.render());
    assert!(r.orphans.is_empty() && r.stray_temp.is_empty());
    assert_eq!(r.recent_orphans.len(), 1);
    assert!(two_hours.exists() && tmp.exists());

    // A 30-minute grace makes them removable.
    let r = audit_with(&app, false, audit::parse_duration("30m").unwrap()).await;
    assert_eq!((r.orphans.len(), r.stray_temp.len()), (1, 1));
    assert!(!r.clean);
    let r = audit_with(&app, true, audit::parse_duration("3600s").unwrap()).await;
    assert!(r.clean, "{}", r.render());
    assert!(!two_hours.exists() && !tmp.exists());

    // A temp file owned by a live reservation is never stray, however old.
    let res = app
        .state
        .meta
        .reserve("ag1", 1 << 30, 10, Duration::from_secs(3600))
        .await
        .unwrap();
    let owned = root.join(".tmp").join(format!("{res}.part"));
    put(&owned, 10, 3 * DAY);
    let r = audit_with(&app, true, Duration::from_secs(60)).await;
    assert!(r.clean && r.stray_temp.is_empty(), "{}", r.render());
    assert!(owned.exists());
});

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_binary_json_and_exit_status() {
    let app = spawn_app(Backend::Sqlite).await;
    app.upload_ok("ab1", "a.png", png_bytes(1000)).await;
    let orphan = app
        .storage_root()
        .join(user_dir_name("ab1"))
        .join("images")
        .join("stray.png");
    put(&orphan, 321, 2 * DAY);
    let data_dir = app.dir.path().join("data");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_stowage"))
            .args(args)
            .env_clear()
            .env("STOWAGE_DATA_DIR", &data_dir)
            .env("RUST_LOG", "error")
            .current_dir(app.dir.path())
            .output()
            .unwrap();
        let report: AuditReport = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{e}: {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.code(), report)
    };
    let (code, r) = run(&["audit", "--json"]);
    assert_eq!(code, Some(1));
    assert!(!r.clean);
    assert_eq!(r.orphans.len(), 1);
    assert_eq!(r.orphans[0].bytes, 321);
    assert!(orphan.exists());

    let (code, r) = run(&["audit", "--fix", "--json", "--grace", "1h"]);
    assert_eq!(code, Some(0), "{r:?}");
    assert!(r.orphans[0].removed);
    assert!(!orphan.exists());

    let (code, r) = run(&["audit", "--json"]);
    assert_eq!(code, Some(0));
    assert_eq!(r.files_checked, 1);

    // A bad --grace is a usage error.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stowage"))
        .args(["audit", "--grace", "soon"])
        .env_clear()
        .env("STOWAGE_DATA_DIR", &data_dir)
        .current_dir(app.dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

local!(two_servers_never_hold_one_lease, |b| async move {
    let app = spawn_app(b).await;
    let peer = spawn_peer(&app).await;
    let ttl = Duration::from_secs(30);
    assert!(lease::try_acquire(&app.state, "t1", "A", ttl)
        .await
        .unwrap());
    assert!(!lease::try_acquire(&peer.state, "t1", "B", ttl)
        .await
        .unwrap());
    // Renewal by the holder works; the other still cannot take it.
    assert!(lease::try_acquire(&app.state, "t1", "A", ttl)
        .await
        .unwrap());
    assert!(!lease::try_acquire(&peer.state, "t1", "B", ttl)
        .await
        .unwrap());
    assert_eq!(
        lease::holder(&peer.state, "t1").await.unwrap().as_deref(),
        Some("A")
    );
    // Releasing by a non-holder does nothing; by the holder frees it.
    lease::release(&peer.state, "t1", "B").await.unwrap();
    assert!(!lease::try_acquire(&peer.state, "t1", "B", ttl)
        .await
        .unwrap());
    lease::release(&app.state, "t1", "A").await.unwrap();
    assert!(lease::try_acquire(&peer.state, "t1", "B", ttl)
        .await
        .unwrap());
    assert!(!lease::try_acquire(&app.state, "t1", "A", ttl)
        .await
        .unwrap());

    // An expired lease may be taken over.
    assert!(
        lease::try_acquire(&app.state, "t2", "A", Duration::from_millis(200))
            .await
            .unwrap()
    );
    assert!(!lease::try_acquire(&peer.state, "t2", "B", ttl)
        .await
        .unwrap());
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(lease::try_acquire(&peer.state, "t2", "B", ttl)
        .await
        .unwrap());
    assert_eq!(
        lease::holder(&app.state, "t2").await.unwrap().as_deref(),
        Some("B")
    );

    // Racing for a fresh lease: exactly one of many contenders wins.
    for round in 0..10 {
        let name = format!("race{round}");
        let tries = (0..8).map(|i| {
            let state = if i % 2 == 0 {
                app.state.clone()
            } else {
                peer.state.clone()
            };
            let name = name.clone();
            tokio::spawn(async move {
                lease::try_acquire(&state, &name, &format!("h{i}"), ttl)
                    .await
                    .unwrap()
            })
        });
        let won = futures::future::join_all(tries)
            .await
            .into_iter()
            .filter(|r| *r.as_ref().unwrap())
            .count();
        assert_eq!(won, 1, "round {round}");
    }
});

local!(serve_scheduler_runs_cleanup, |b| async move {
    let app = spawn_app_with(b, |c| {
        c.cleanup_interval = Duration::from_secs(1);
        c.audit_interval = Duration::from_secs(1);
    })
    .await;
    // A reservation left behind by a crash: already expired.
    app.state
        .meta
        .reserve("sc1", 1 << 30, 12345, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(
        app.state
            .meta
            .get_user("sc1")
            .await
            .unwrap()
            .unwrap()
            .reserved_bytes,
        12345
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let reserved = app
            .state
            .meta
            .get_user("sc1")
            .await
            .unwrap()
            .unwrap()
            .reserved_bytes;
        if reserved == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the scheduler did not release the reservation"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The runs go through the lease table.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while lease::holder(&app.state, "cleanup")
        .await
        .unwrap()
        .is_none()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no cleanup lease was taken"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Each run is recorded with its outcome: the cleanup that released the
    // reservation, and audits of this (clean) volume.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let runs = loop {
        let runs = lease::recent_runs(&app.state, None, 100).await.unwrap();
        let done = |name: &str| {
            runs.iter()
                .any(|r| r.name == name && r.finished_at.is_some())
        };
        if done("cleanup") && done("audit") {
            break runs;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "runs not recorded: {runs:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let cleanup_runs: Vec<_> = runs.iter().filter(|r| r.name == "cleanup").collect();
    assert!(
        cleanup_runs
            .iter()
            .any(|r| r.outcome.as_deref() == Some("ok")
                && r.summary
                    .as_deref()
                    .unwrap_or("")
                    .contains("1 expired reservation")),
        "{cleanup_runs:?}"
    );
    let audit_run = runs
        .iter()
        .find(|r| r.name == "audit" && r.finished_at.is_some())
        .unwrap();
    assert_eq!(audit_run.outcome.as_deref(), Some("ok"), "{audit_run:?}");
    assert!(audit_run.finished_at.unwrap() >= audit_run.started_at);
    // Filtered by task, newest first.
    let only = lease::recent_runs(&app.state, Some("audit"), 2)
        .await
        .unwrap();
    assert!(!only.is_empty() && only.len() <= 2);
    assert!(only.iter().all(|r| r.name == "audit"));
    assert!(only.windows(2).all(|w| w[0].started_at >= w[1].started_at));

    // `stowage tasks --json` shows the same history.
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_stowage"));
    cmd.args(["tasks", "--json", "--task", "cleanup"])
        .env_clear()
        .env("STOWAGE_DATA_DIR", app.dir.path().join("data"))
        .env("STOWAGE_DATABASE_URL", &app.db_url)
        .env("RUST_LOG", "error")
        .current_dir(app.dir.path());
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!listed.is_empty());
    assert!(listed.iter().all(|r| r["name"] == "cleanup"));
    assert!(listed.iter().any(|r| r["outcome"] == "ok"));
});
