//! tus 1.0.0 at /api/uploads, by concern: the protocol and its extensions
//! ([`protocol`]), concurrent requests and quota ([`races`]), restarts and
//! lost staging data ([`restarts`]), and real clients (tus-js-client, tuspy)
//! over cut connections ([`clients`]). The request helpers here are shared
//! with the takeover tests.

mod clients;
mod protocol;
mod races;
mod restarts;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use base64::{engine::general_purpose::STANDARD as B64, Engine};
use futures::StreamExt;
use reqwest::{Method, Response};
use serde_json::Value;
use sha1::Digest as _;

use crate::{both, helpers::*, netproxy::CutProxy};

const OCTET: &str = "application/offset+octet-stream";

fn b64(s: &str) -> String {
    B64.encode(s.as_bytes())
}

pub(crate) fn hdr<'a>(r: &'a Response, name: &str) -> Option<&'a str> {
    r.headers().get(name).and_then(|v| v.to_str().ok())
}

async fn create(app: &TestApp, user: &str, len: u64, meta: &str) -> Response {
    let mut rb = app
        .tus(reqwest::Method::POST, user, "/api/uploads")
        .header("Upload-Length", len.to_string());
    if !meta.is_empty() {
        rb = rb.header("Upload-Metadata", meta);
    }
    rb.send().await.unwrap()
}

/// Creates and returns the Location path.
pub(crate) async fn create_ok(app: &TestApp, user: &str, len: u64, meta: &str) -> String {
    let r = create(app, user, len, meta).await;
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
    let loc = hdr(&r, "location").unwrap().to_string();
    assert!(loc.starts_with("/api/uploads/"), "{loc}");
    assert_eq!(hdr(&r, "tus-resumable"), Some("1.0.0"));
    assert!(hdr(&r, "upload-expires").unwrap().ends_with(" GMT"));
    loc
}

pub(crate) async fn patch(
    app: &TestApp,
    user: &str,
    loc: &str,
    offset: u64,
    data: Vec<u8>,
    extra: &[(&str, String)],
) -> Response {
    let mut rb = app
        .tus(reqwest::Method::PATCH, user, loc)
        .header("Content-Type", OCTET)
        .header("Upload-Offset", offset.to_string());
    for (k, v) in extra {
        rb = rb.header(*k, v);
    }
    rb.body(data).send().await.unwrap()
}

pub(crate) async fn head(app: &TestApp, user: &str, loc: &str) -> Response {
    app.tus(reqwest::Method::HEAD, user, loc)
        .send()
        .await
        .unwrap()
}

pub(crate) async fn offset_of(app: &TestApp, user: &str, loc: &str) -> u64 {
    let r = head(app, user, loc).await;
    assert_eq!(r.status(), 200);
    hdr(&r, "upload-offset").unwrap().parse().unwrap()
}

pub(crate) async fn reserved(app: &TestApp, user: &str) -> i64 {
    app.state
        .meta
        .get_user(user)
        .await
        .unwrap()
        .map(|u| u.reserved_bytes)
        .unwrap_or(0)
}

pub(crate) async fn download(app: &TestApp, user: &str, id: &str) -> Vec<u8> {
    let r = app.get(user, &format!("/api/files/{id}/download")).await;
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap().to_vec()
}

async fn error_code(r: Response) -> String {
    let v: Value = r.json().await.unwrap_or(Value::Null);
    v["error"]["code"].as_str().unwrap_or("").to_string()
}

pub(crate) fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

pub(crate) fn require_clients() {
    let js = clients_dir().join("tus-js/node_modules/tus-js-client");
    assert!(
        js.exists(),
        "tus-js-client is not installed ({}): run scripts/test.sh (or tests/clients/install.sh)",
        js.display()
    );
    let ok = std::process::Command::new("python3")
        .args(["-c", "import tusclient"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "tuspy is not installed: run scripts/test.sh (or tests/clients/install.sh)"
    );
}

/// A 50 MiB file that sniffs as PNG, written once per test.
fn big_file(dir: &Path) -> (PathBuf, Vec<u8>) {
    let data = png_bytes(50 * 1024 * 1024);
    let p = dir.join("big.png");
    std::fs::write(&p, &data).unwrap();
    (p, data)
}

pub(crate) async fn run_client(cmd: &mut tokio::process::Command) -> Value {
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("client finished in time")
        .expect("client runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or("");
    serde_json::from_str(last).unwrap_or_else(|_| {
        panic!(
            "client printed no JSON: {stdout} / {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

pub(crate) fn js_cmd(
    endpoint: &str,
    user: &str,
    file: &Path,
    extra: &[&str],
) -> tokio::process::Command {
    let mut c = tokio::process::Command::new("node");
    c.arg(clients_dir().join("tus-js/upload.mjs"))
        .args([
            "--endpoint",
            endpoint,
            "--header",
            &format!("Authorization: Bearer {}", token(user)),
        ])
        .args([
            "--metadata",
            "filename=big.png",
            "--metadata",
            "filetype=image/png",
        ])
        .args(extra)
        .arg(file)
        .kill_on_drop(true);
    c
}

pub(crate) fn py_cmd(
    endpoint: &str,
    user: &str,
    file: &Path,
    extra: &[&str],
) -> tokio::process::Command {
    let mut c = tokio::process::Command::new("python3");
    c.arg(clients_dir().join("tuspy/upload.py"))
        .args([
            "--endpoint",
            endpoint,
            "--header",
            &format!("Authorization: Bearer {}", token(user)),
        ])
        .args(["--metadata", "filename=big.png"])
        .args(extra)
        .arg(file)
        .kill_on_drop(true);
    c
}

/// Checks the finished upload: listed once, byte-identical, right sha256.
async fn check_result(app: &TestApp, user: &str, res: &Value, data: &[u8]) {
    assert_eq!(res["ok"], true, "{res}");
    let id = res["file_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no Stowage-File-Id: {res}"))
        .to_string();
    assert!(
        res["url"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/api/uploads/{id}")),
        "{res}"
    );
    let (s, f) = app.get_json(user, &format!("/api/files/{id}")).await;
    assert_eq!(s, 200);
    assert_eq!(f["sha256"], sha256_hex(data));
    assert_eq!(f["file_size"], data.len() as u64);
    assert_eq!(f["file_type"], "image");
    assert_eq!(f["file_name"], "big.png");
    let got = download(app, user, &id).await;
    assert!(got == data, "downloaded bytes differ");
    assert_eq!(app.list_all(user, "").await.len(), 1);
    assert_eq!(reserved(app, user).await, 0);
}

const MIB: u64 = 1024 * 1024;
