//! Backups off the machine: `--dest s3://bucket/prefix` against a real
//! Garage cluster. An archive streamed there lists, verifies and restores
//! into an empty database and volume; retention deletes the oldest objects
//! under the prefix and nothing else; a tampered object fails verify and is
//! not restored; and [`restore_drill`] runs the restore drill of
//! docs/operations.md step by step, through the `stowage` binary.

use std::{
    collections::HashMap,
    path::Path,
    process::Output,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use serde_json::Value;
use stowage::{
    config::{Config, Secret},
    ops::{
        backup::dest::{Dest, Location},
        backup::{self, CreateOptions},
        progress::Progress,
    },
};

use crate::backup::{restore_from_and_check, skipped_keys};
use crate::helpers::*;
use crate::{both, local};

/// `app`'s configuration with the Garage cluster's endpoint and key, as an
/// operator sets them (the same settings as for blobs) to back up there.
async fn garage_config(app: &TestApp) -> Config {
    let cluster = tokio::task::spawn_blocking(crate::garage::shared)
        .await
        .unwrap();
    let mut c = (*app.state.config).clone();
    c.s3_endpoint = Some(cluster.endpoint(0));
    c.s3_region = "us-east-1".into();
    c.s3_access_key_id = Some(crate::garage::KEY_ID.into());
    c.s3_secret_access_key = Some(Secret(crate::garage::SECRET.into()));
    c
}

/// A prefix of its own in the cluster's bucket.
fn fresh_url() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "s3://{}/backups/t{}-{}-{}",
        crate::garage::BUCKET,
        std::process::id(),
        now(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

fn opts(dest: &Dest) -> CreateOptions {
    CreateOptions {
        dest: dest.clone(),
        keep: None,
        keep_days: None,
        gzip: false,
        progress: Progress::off(),
    }
}

fn operator(dest: &Dest) -> &opendal::Operator {
    match dest {
        Dest::S3(r) => r.operator(),
        Dest::Dir(_) => unreachable!("a remote destination"),
    }
}

/// Every object under the destination's prefix, by name.
async fn objects(dest: &Dest) -> Vec<String> {
    let mut names: Vec<String> = operator(dest)
        .list_with("/")
        .recursive(true)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.metadata().is_file())
        .map(|e| e.path().trim_start_matches('/').to_string())
        .collect();
    names.sort();
    names
}

/// The archive names `list_at` reports, once it reports `n` of them (a
/// bucket listing may trail a write by a moment).
async fn listed(dest: &Dest, n: usize) -> Vec<backup::ArchiveInfo> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let l = backup::list_at(dest).await.unwrap();
        if l.len() == n || Instant::now() > deadline {
            assert_eq!(l.len(), n, "{l:?}");
            return l;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn name_of(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

both!(remote_backup_lists_verifies_and_restores, |b| async move {
    if !crate::garage::available() {
        return;
    }
    let app = spawn_app(b).await;
    for i in 0..5 {
        app.upload_ok("rm1", &format!("r{i}.png"), png_bytes(70_000 + i * 4099))
            .await;
    }
    app.upload_ok("rm2", "other.png", png_bytes(12_345)).await;
    let config = garage_config(&app).await;
    let url = fresh_url();
    let dest = Dest::parse(&url, &config).unwrap();

    let made = backup::create(&app.state, opts(&dest)).await.unwrap();
    let name = name_of(&made.path);
    assert_eq!(made.path.to_string_lossy(), format!("{url}/{name}"));
    assert_eq!(made.header.files, 6);
    // One object, the archive, complete; nothing staged on this machine.
    assert_eq!(objects(&dest).await, vec![name.clone()]);
    let stat = operator(&dest).stat(&name).await.unwrap();
    assert_eq!(stat.content_length(), made.archive_bytes);
    let scratch = app.state.config.storage_root.join(".tmp");
    let left: Vec<_> = std::fs::read_dir(&scratch)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("backup-"))
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "left in {}: {left:?}", scratch.display());

    let list = listed(&dest, 1).await;
    assert_eq!(list[0].path, made.path);
    assert_eq!(list[0].size, made.archive_bytes);
    assert_eq!(list[0].header.as_ref().unwrap(), &made.header);

    let loc = Location::parse(&made.path.to_string_lossy(), &config).unwrap();
    let v = backup::verify_at(&loc, Progress::off()).await.unwrap();
    assert!(v.ok, "{:?}", v.problems);
    assert!(v.bytes_checked > made.blob_bytes, "every blob was read");

    // Into an empty database and store of the same kind, checked file by file.
    let contents = {
        // The rows and manifest, from a copy of the remote archive.
        let l = loc.clone();
        tokio::task::spawn_blocking(move || {
            let rt = tokio::runtime::Handle::current();
            let mut r = l.open(None, &rt).unwrap();
            let tmp = tempfile::NamedTempFile::new().unwrap();
            std::io::copy(&mut r, &mut tmp.as_file()).unwrap();
            backup::read_contents(tmp.path()).unwrap()
        })
        .await
        .unwrap()
    };
    let quotas: HashMap<String, i64> = contents
        .users
        .iter()
        .map(|u| (u.user_id.clone(), u.max_bytes))
        .collect();
    restore_from_and_check(
        b,
        &loc,
        &contents.files,
        &skipped_keys(&contents.manifest),
        &quotas,
    )
    .await;
});

local!(remote_retention_deletes_the_oldest_there, |b| async move {
    if !crate::garage::available() {
        return;
    }
    let app = spawn_app(b).await;
    app.upload_ok("rt1", "k.png", png_bytes(3000)).await;
    let config = garage_config(&app).await;
    let dest = Dest::parse(&fresh_url(), &config).unwrap();
    // Objects that are not stowage archives are never touched; an old
    // archive (by its name) is.
    let op = operator(&dest);
    let old = "stowage-backup-20200101T000000000Z.tar";
    for other in [
        "notes.txt",
        "stowage-backup-latest.tar",
        "nested/stowage-backup-20190101T000000000Z.tar",
    ] {
        op.write(other, "x").await.unwrap();
    }
    op.write(old, "not really").await.unwrap();

    let mut made = Vec::new();
    for _ in 0..3 {
        let r = backup::create(&app.state, opts(&dest)).await.unwrap();
        made.push(r.path);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let before = listed(&dest, 4).await;
    assert!(
        before[0].error.is_some(),
        "the fake old archive has no header"
    );

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
    let mut removed: Vec<String> = last.removed.iter().map(|p| name_of(p)).collect();
    removed.sort();
    let mut want = vec![old.to_string(), name_of(&made[0]), name_of(&made[1])];
    want.sort();
    assert_eq!(removed, want);
    let mut remaining = vec![
        "nested/stowage-backup-20190101T000000000Z.tar".to_string(),
        "notes.txt".into(),
        "stowage-backup-latest.tar".into(),
        name_of(&made[2]),
        name_of(&made[3]),
    ];
    remaining.sort();
    assert_eq!(objects(&dest).await, remaining);
    let list = listed(&dest, 2).await;
    assert_eq!(
        list.iter().map(|a| a.path.clone()).collect::<Vec<_>>(),
        made[2..].to_vec()
    );

    // --keep-days: archives older than D days, by the date in the name.
    op.write(old, "not really").await.unwrap();
    let r = backup::create(
        &app.state,
        CreateOptions {
            keep_days: Some(1),
            ..opts(&dest)
        },
    )
    .await
    .unwrap();
    assert_eq!(
        r.removed.iter().map(|p| name_of(p)).collect::<Vec<_>>(),
        vec![old.to_string()]
    );
    listed(&dest, 3).await;
});

/// Offset of the first blob's data inside an uncompressed archive.
fn first_blob_offset(archive: &[u8]) -> usize {
    let mut ar = tar::Archive::new(archive);
    for e in ar.entries().unwrap() {
        let e = e.unwrap();
        if e.path().unwrap().starts_with("blobs") && e.size() > 100 {
            return e.raw_file_position() as usize;
        }
    }
    panic!("no blob in archive");
}

local!(a_tampered_remote_archive_fails_verify, |b| async move {
    if !crate::garage::available() {
        return;
    }
    let app = spawn_app(b).await;
    for i in 0..3 {
        app.upload_ok("tp1", &format!("t{i}.png"), png_bytes(9000 + i))
            .await;
    }
    let config = garage_config(&app).await;
    let dest = Dest::parse(&fresh_url(), &config).unwrap();
    let made = backup::create(&app.state, opts(&dest)).await.unwrap();
    let url = made.path.to_string_lossy().into_owned();
    let loc = Location::parse(&url, &config).unwrap();
    assert!(backup::verify_at(&loc, Progress::off()).await.unwrap().ok);

    // One flipped byte inside a blob, written over the remote object.
    let name = name_of(&made.path);
    let mut bytes = operator(&dest).read(&name).await.unwrap().to_vec();
    let at = first_blob_offset(&bytes) + 50;
    bytes[at] ^= 0x01;
    operator(&dest).write(&name, bytes).await.unwrap();

    let rep = backup::verify_at(&loc, Progress::off()).await.unwrap();
    assert!(!rep.ok);
    assert!(
        rep.problems.iter().any(|p| p.contains("blobs/")),
        "{:?}",
        rep.problems
    );
    // Not restored: the target keeps no row.
    let target = spawn_app(b).await;
    assert!(backup::restore_from(&target.state, &loc, Progress::off())
        .await
        .is_err());
    assert!(target.state.meta.all_files(None).await.unwrap().is_empty());
    assert!(target.blobs_on_disk().await.is_empty());

    // The command line agrees: exit status 1, and the problem in its JSON.
    let cli = Cli::for_app(&app, &config);
    let out = cli.run(&["backup", "verify", &url, "--json"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let v = parse(&out);
    assert_eq!(v["ok"], false);
});

// ---- the restore drill of docs/operations.md, through the binary ----

/// The environment `stowage` runs with on one machine: nothing inherited
/// but `PATH`, logs at `info` (so that a log line on stdout would break the
/// JSON).
struct Cli {
    vars: Vec<(String, String)>,
}

impl Cli {
    fn new(db_url: &str, data_dir: &Path, storage_root: &Path, config: &Config) -> Cli {
        let mut vars: Vec<(String, String)> = vec![
            ("STOWAGE_DATABASE_URL".into(), db_url.into()),
            ("STOWAGE_DATA_DIR".into(), data_dir.display().to_string()),
            (
                "STOWAGE_STORAGE_ROOT".into(),
                storage_root.display().to_string(),
            ),
            ("STOWAGE_JWT_PUBLIC_KEY".into(), RSA_PUBLIC.into()),
            ("RUST_LOG".into(), "info".into()),
        ];
        // The object store's settings, as for blobs.
        vars.push((
            "STOWAGE_S3_ENDPOINT".into(),
            config.s3_endpoint.clone().unwrap(),
        ));
        vars.push(("STOWAGE_S3_REGION".into(), config.s3_region.clone()));
        vars.push((
            "AWS_ACCESS_KEY_ID".into(),
            config.s3_access_key_id.clone().unwrap(),
        ));
        vars.push((
            "AWS_SECRET_ACCESS_KEY".into(),
            config
                .s3_secret_access_key
                .as_ref()
                .unwrap()
                .expose()
                .into(),
        ));
        Cli { vars }
    }

    fn for_app(app: &TestApp, config: &Config) -> Cli {
        Cli::new(
            &app.db_url,
            &app.state.config.data_dir,
            &app.storage_root(),
            config,
        )
    }

    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_stowage"));
        c.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.vars.iter().map(|(k, v)| (k, v)))
            .kill_on_drop(true);
        c
    }

    async fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().await.unwrap()
    }

    /// A `--json` command that must succeed: stdout is one JSON document.
    async fn json(&self, args: &[&str]) -> Value {
        let out = self.run(args).await;
        assert!(out.status.success(), "stowage {args:?}: {}", show(&out));
        parse(&out)
    }
}

fn show(out: &Output) -> String {
    format!(
        "status {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn parse(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}):\n{}", show(out)))
}

// The steps of docs/operations.md, "Restore drill", in their order.
local!(restore_drill, |b| async move {
    if !crate::garage::available() {
        return;
    }
    // The machine in service, with some files.
    let app = spawn_app(b).await;
    let mut uploaded = Vec::new();
    for i in 0..4 {
        let data = png_bytes(30_000 + i * 1013);
        let f = app
            .upload_ok("drill", &format!("d{i}.png"), data.clone())
            .await;
        uploaded.push((f["id"].as_str().unwrap().to_string(), data));
    }
    let config = garage_config(&app).await;
    let here = Cli::for_app(&app, &config);
    let dest = fresh_url();

    // 1. Create a backup in the bucket.
    let made = here
        .json(&["backup", "create", "--dest", &dest, "--keep", "7", "--json"])
        .await;
    let archive = made["path"].as_str().unwrap().to_string();
    assert!(
        archive.starts_with(&format!("{dest}/stowage-backup-")),
        "{made}"
    );
    assert_eq!(made["header"]["files"], 4);

    // 2. List the bucket's archives.
    let deadline = Instant::now() + Duration::from_secs(10);
    let list = loop {
        let list = here
            .json(&["backup", "list", "--dest", &dest, "--json"])
            .await;
        if !list.as_array().unwrap().is_empty() || Instant::now() > deadline {
            break list;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["path"], archive.as_str());
    assert_eq!(list[0]["header"]["files"], 4);

    // 3. Verify it where it lies.
    let v = here.json(&["backup", "verify", &archive, "--json"]).await;
    assert_eq!(v["ok"], true, "{v}");

    // 4. On a fresh machine: an empty database and volume, the same
    //    object-store settings; restore from the bucket.
    let fresh = tempfile::tempdir().unwrap();
    let (db_url, _db) = fresh_db(b.engine(), fresh.path()).await;
    let data_dir = fresh.path().join("data");
    let there = Cli::new(&db_url, &data_dir, &data_dir.join("users"), &config);
    let r = there.json(&["backup", "restore", &archive, "--json"]).await;
    assert_eq!(
        (r["users"].as_u64(), r["files"].as_u64()),
        (Some(1), Some(4)),
        "{r}"
    );

    // 5. The audit is clean.
    let audit = there.json(&["audit", "--json"]).await;
    assert_eq!(audit["clean"], true, "{audit}");

    // 6. Serve: every file is there, byte for byte.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut serve = there.command(&["serve"]);
    serve
        .env("STOWAGE_BIND", format!("127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let _server = serve.spawn().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !client
        .get(format!("{base}/healthz"))
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
    {
        assert!(Instant::now() < deadline, "serve did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (id, data) in &uploaded {
        let r = client
            .get(format!("{base}/api/files/{id}/download"))
            .bearer_auth(token("drill"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(&r.bytes().await.unwrap()[..], &data[..], "file {id}");
    }
});
