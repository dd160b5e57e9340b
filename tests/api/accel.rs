//! `STOWAGE_ACCEL_REDIRECT` behind a real nginx: stowage authorizes and
//! answers `X-Accel-Redirect`, nginx sends the bytes. nginx runs as a child
//! with its own configuration (the location block of docs/deployment.md,
//! taken from there as it is) on a free port. Without nginx the tests say so
//! and pass, unless `STOWAGE_REQUIRE_NGINX` is set.

use std::{path::PathBuf, process::Stdio, time::Duration};

use serde_json::{json, Value};

use crate::helpers::*;
use crate::local;

const PREFIX: &str = "/_stowage_blobs/";

fn nginx_bin() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("STOWAGE_NGINX_BIN") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into()])
        .map(|d| d.join("nginx"))
        .find(|p| p.is_file())
}

/// The nginx location block documented in docs/deployment.md, with its
/// storage root replaced by `root`.
fn documented_location(root: &std::path::Path) -> String {
    let doc = include_str!("../../docs/deployment.md");
    let start = doc
        .find("```nginx\n    # Downloads: stowage authorizes")
        .expect("docs/deployment.md has the X-Accel-Redirect location");
    let block = &doc[start + "```nginx\n".len()..];
    let block = &block[..block.find("```").unwrap()];
    assert!(block.contains("alias /var/lib/stowage/users/;"));
    block.replace(
        "alias /var/lib/stowage/users/;",
        &format!("alias {}/;", root.display()),
    )
}

struct Nginx {
    base: String,
    _child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

async fn start_nginx(bin: &std::path::Path, app: &TestApp) -> Nginx {
    let dir = tempfile::tempdir().unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let d = dir.path().display();
    // One process (`master_process off`): killing it leaves no workers
    // behind, and it runs as the test's user, who owns the volume's files.
    let conf = format!(
        "daemon off;
master_process off;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log off;
    sendfile on;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen 127.0.0.1:{port};
        proxy_request_buffering off;
        proxy_buffering off;
        proxy_http_version 1.1;
        proxy_set_header Connection \"\";
        location / {{
            proxy_pass http://{addr};
            proxy_set_header Host $host;
        }}
{location}
    }}
}}
",
        addr = app.addr,
        location = documented_location(&app.storage_root()),
    );
    std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
    let child = tokio::process::Command::new(bin)
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(dir.path().join("nginx.conf"))
        .arg("-e")
        .arg(dir.path().join("error.log"))
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("nginx starts");
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Nginx {
                base: format!("http://127.0.0.1:{port}"),
                _child: child,
                _dir: dir,
            };
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let log = std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default();
    panic!("nginx did not listen on {port}: {log}");
}

fn nginx_or_skip() -> Option<PathBuf> {
    let bin = nginx_bin();
    if bin.is_none() {
        assert!(
            std::env::var_os("STOWAGE_REQUIRE_NGINX").is_none(),
            "STOWAGE_REQUIRE_NGINX is set but nginx is not installed"
        );
        eprintln!("skipped: nginx is not installed (apt-get install nginx)");
    }
    bin
}

local!(nginx_serves_downloads_and_signed_links, |b| async move {
    let Some(bin) = nginx_or_skip() else { return };
    let app = spawn_app_with(b, |c| c.accel_redirect = Some(PREFIX.into())).await;
    let nginx = start_nginx(&bin, &app).await;
    let data = png_bytes(300_000);
    let f = app
        .upload_ok("erin", "Plage été \"1\".png", data.clone())
        .await;
    let id = f["id"].as_str().unwrap().to_string();
    let etag = format!("\"{}\"", sha256_hex(&data));
    let auth = format!("Bearer {}", token("erin"));
    let http = reqwest::Client::new();
    let download = format!("/api/files/{id}/download");

    // Stowage itself answers with the redirect and no bytes.
    let r = app.get("erin", &download).await;
    assert_eq!(r.status(), 200);
    let accel = r.headers()["x-accel-redirect"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(accel.starts_with(PREFIX), "{accel}");
    assert!(
        app.storage_root().join(&accel[PREFIX.len()..]).is_file(),
        "{accel}"
    );
    assert!(r.bytes().await.unwrap().is_empty());

    let check_headers = |r: &reqwest::Response| {
        let h = r.headers();
        assert!(
            h.get("x-accel-redirect").is_none(),
            "nginx keeps it to itself"
        );
        assert_eq!(h["etag"], etag.as_str());
        assert_eq!(h["content-type"], "image/png");
        assert_eq!(h["accept-ranges"], "bytes");
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert!(h["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("sandbox"));
        let cd = h["content-disposition"].to_str().unwrap();
        assert!(
            cd.starts_with("attachment;") && cd.contains("filename*=UTF-8''Plage%20"),
            "{cd}"
        );
    };

    // Full download through nginx.
    let r = http
        .get(format!("{}{download}", nginx.base))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    check_headers(&r);
    assert_eq!(
        r.headers()["content-length"],
        data.len().to_string().as_str()
    );
    assert_eq!(r.bytes().await.unwrap().as_ref(), &data[..]);

    // A range, sent by nginx.
    let r = http
        .get(format!("{}{download}", nginx.base))
        .header("authorization", &auth)
        .header("range", "bytes=1000-1999")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    check_headers(&r);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes 1000-1999/{}", data.len()).as_str()
    );
    assert_eq!(r.bytes().await.unwrap().as_ref(), &data[1000..2000]);

    // If-Range with stowage's ETag keeps the range; a stale one gets it all.
    let r = http
        .get(format!("{}{download}", nginx.base))
        .header("authorization", &auth)
        .header("range", "bytes=-10")
        .header("if-range", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &data[data.len() - 10..]);
    let r = http
        .get(format!("{}{download}", nginx.base))
        .header("authorization", &auth)
        .header("range", "bytes=-10")
        .header("if-range", "\"stale\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().len(), data.len());

    // Conditional: the current ETag is 304, with no body.
    let r = http
        .get(format!("{}{download}", nginx.base))
        .header("authorization", &auth)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    assert_eq!(r.headers()["etag"], etag.as_str());
    assert!(r.bytes().await.unwrap().is_empty());

    // Authorization stays with stowage: no session, another user, or the
    // internal location asked for directly.
    let r = http
        .get(format!("{}{download}", nginx.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .get(format!("{}{download}", nginx.base))
        .header("authorization", format!("Bearer {}", token("mallory")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = http
        .get(format!("{}{accel}", nginx.base))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        404,
        "the internal location is not reachable from outside"
    );

    // Signed links: full, ranged, altered.
    let r = app
        .client
        .post(app.url(&format!("/api/files/{id}/signed-url")))
        .bearer_auth(token("erin"))
        .json(&json!({"expires_in": 600}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let link = v["url"].as_str().unwrap().to_string();
    let r = http
        .get(format!("{}{link}", nginx.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    check_headers(&r);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &data[..]);
    let r = http
        .get(format!("{}{link}", nginx.base))
        .header("range", "bytes=299990-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &data[299_990..]);
    let mut altered = link.clone();
    let last = altered.pop().unwrap();
    altered.push(if last == 'A' { 'B' } else { 'A' });
    let r = http
        .get(format!("{}{altered}", nginx.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    // HEAD stays with stowage and promises the full length.
    let r = http
        .head(format!("{}{download}", nginx.base))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-length"],
        data.len().to_string().as_str()
    );
});
