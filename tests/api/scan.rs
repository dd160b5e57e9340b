//! Virus scanning against a real clamd (Debian `clamav-daemon`), started here
//! with a one-line hash signature database made in the test (no signature
//! download is needed).

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::both;
use crate::helpers::*;

/// MD5 of `data` for clamd's `.hdb` hash signatures, from coreutils.
fn md5_hex(data: &[u8]) -> String {
    {
        let out = std::process::Command::new("md5sum")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().unwrap().write_all(data)?;
                c.wait_with_output()
            })
            .expect("md5sum");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    }
}

struct Clamd {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Clamd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts clamd knowing one "virus": exactly `infected`.
fn start_clamd(infected: &[u8]) -> Option<Clamd> {
    if Command::new("clamd").arg("--version").output().is_err() {
        if std::env::var("STOWAGE_REQUIRE_CLAMD").as_deref() == Ok("1") {
            panic!("clamd is required (STOWAGE_REQUIRE_CLAMD=1); scripts/test.sh installs clamav-daemon");
        }
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    std::fs::create_dir(&db).unwrap();
    std::fs::write(
        db.join("stowage-test.hdb"),
        format!(
            "{}:{}:Stowage.Test.Infected\n",
            md5_hex(infected),
            infected.len()
        ),
    )
    .unwrap();
    let socket = dir.path().join("clamd.sock");
    let conf = dir.path().join("clamd.conf");
    std::fs::write(
        &conf,
        format!(
            "LocalSocket {}\nDatabaseDirectory {}\nForeground yes\nLogFile {}\nTemporaryDirectory {}\nStreamMaxLength 100M\nBytecode no\n",
            socket.display(),
            db.display(),
            dir.path().join("clamd.log").display(),
            dir.path().display()
        ),
    )
    .unwrap();
    let child = Command::new("clamd")
        .arg(format!("--config-file={}", conf.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "clamd did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    Some(Clamd {
        child,
        socket,
        _dir: dir,
    })
}

both!(
    infected_uploads_are_refused_and_nothing_is_kept,
    |b| async move {
        let mut infected = png_bytes(4000);
        infected.extend_from_slice(b"this payload is the test signature");
        let Some(clamd) = start_clamd(&infected) else {
            eprintln!("skipping: clamd not installed");
            return;
        };
        let sock = clamd.socket.display().to_string();
        let app = spawn_app_with(b, |c| c.clamd = Some(sock)).await;

        let r = app.upload("v", "evil.png", infected.clone()).await;
        assert_eq!(r.status(), 422);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "malware_detected");
        assert!(v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Stowage.Test.Infected"));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(app.blobs_on_disk().await.is_empty());
        assert!(app.temp_files().await.is_empty());
        let u = app.usage("v").await;
        assert_eq!(u["total_bytes"], 0);
        assert_eq!(
            app.state
                .meta
                .get_user("v")
                .await
                .unwrap()
                .unwrap()
                .reserved_bytes,
            0
        );

        // Clean content passes the same scanner.
        let clean = app.upload_ok("v", "fine.png", png_bytes(5000)).await;
        assert_eq!(clean["file_size"], 5000);

        // The tus path is scanned too.
        let c = &app.client;
        let r = c
            .post(app.url("/api/uploads"))
            .bearer_auth(token("v"))
            .header("tus-resumable", "1.0.0")
            .header("upload-length", infected.len().to_string())
            .header("content-type", "application/offset+octet-stream")
            .body(infected.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 422, "{:?}", r.headers());
        assert_eq!(app.list_all("v", "").await.len(), 1);
        app.assert_consistent("v").await;
    }
);

both!(an_unreachable_scanner_fails_closed, |b| async move {
    let app = spawn_app_with(b, |c| c.clamd = Some("/nonexistent/clamd.sock".into())).await;
    let r = app.upload("w", "a.png", png_bytes(3000)).await;
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "unavailable");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(app.blobs_on_disk().await.is_empty());
    assert!(app.temp_files().await.is_empty());
    assert_eq!(app.usage("w").await["total_bytes"], 0);
    assert_eq!(
        app.state
            .meta
            .get_user("w")
            .await
            .unwrap()
            .unwrap()
            .reserved_bytes,
        0
    );
});
