//! Downloads from the local volume sent with `sendfile(2)` by the
//! connection: several requests on one keep-alive connection, bytes
//! compared; a slow reader; a blob truncated on disk before and during a
//! download; a client that goes away mid-file. Each test also checks the
//! `stowage_bytes_out_sendfile_total` counter, so it fails on a streamed
//! path.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::helpers::*;
use crate::local;

/// One parsed response read off a raw connection.
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A raw HTTP/1.1 connection: requests written by hand, responses framed by
/// their `Content-Length` only (what this path promises).
pub struct Raw {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    pub async fn connect(app: &TestApp) -> Raw {
        Raw {
            stream: TcpStream::connect(app.addr).await.unwrap(),
            buf: Vec::new(),
        }
    }

    pub async fn send(&mut self, method: &str, path: &str, headers: &[(&str, &str)]) {
        let mut req = format!("{method} {path} HTTP/1.1\r\nhost: localhost\r\n");
        for (n, v) in headers {
            req.push_str(&format!("{n}: {v}\r\n"));
        }
        req.push_str("\r\n");
        self.stream.write_all(req.as_bytes()).await.unwrap();
    }

    /// Reads more bytes into the buffer; false at end of stream.
    async fn fill(&mut self) -> bool {
        let mut chunk = vec![0u8; 256 * 1024];
        match self.stream.read(&mut chunk).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// The next response's status and headers.
    pub async fn head(&mut self) -> Answer {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let text = String::from_utf8(self.buf[..end].to_vec()).unwrap();
                self.buf.drain(..end + 4);
                let mut lines = text.split("\r\n");
                let status = lines.next().unwrap().split(' ').nth(1).unwrap();
                let headers = lines
                    .map(|l| {
                        let (n, v) = l.split_once(':').unwrap();
                        (n.trim().to_ascii_lowercase(), v.trim().to_string())
                    })
                    .collect();
                return Answer {
                    status: status.parse().unwrap(),
                    headers,
                    body: Vec::new(),
                };
            }
            assert!(
                self.fill().await,
                "connection closed before a response head"
            );
        }
    }

    /// Reads up to `n` body bytes; fewer only if the connection ends.
    pub async fn body(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            if !self.fill().await {
                break;
            }
        }
        let take = n.min(self.buf.len());
        self.buf.drain(..take).collect()
    }

    /// A whole exchange: the body is as long as `Content-Length` says
    /// (none for HEAD and 304).
    pub async fn exchange(&mut self, method: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
        self.send(method, path, headers).await;
        let mut a = self.head().await;
        let len: usize = a
            .header("content-length")
            .map(|v| v.parse().unwrap())
            .unwrap_or(0);
        if method != "HEAD" && a.status != 304 {
            a.body = self.body(len).await;
            assert_eq!(a.body.len(), len, "{method} {path}: whole body");
        }
        a
    }

    /// True once the server has closed the connection (EOF within 10 s).
    pub async fn closed(&mut self) -> bool {
        let mut sink = vec![0u8; 64 * 1024];
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match self.stream.read(&mut sink).await {
                    Ok(0) | Err(_) => return true,
                    Ok(_) => continue,
                }
            }
        })
        .await
        .unwrap_or(false)
    }
}

/// The server's `stowage_bytes_out_sendfile_total` now (the recorder is one
/// per test process, so other tests only ever add to it).
pub async fn sendfile_bytes(app: &TestApp) -> u64 {
    let text = app.get_public("/metrics").await.text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("stowage_bytes_out_sendfile_total "))
        .map(|v| v.trim().parse::<f64>().unwrap() as u64)
        .unwrap_or(0)
}

fn bearer(user: &str) -> String {
    format!("Bearer {}", token(user))
}

local!(
    keep_alive_downloads_full_ranged_conditional_and_signed,
    |b| async move {
        let app = spawn_app(b).await;
        let n = 6 * 1024 * 1024 + 1234;
        let data = png_bytes(n);
        let f = app.upload_ok("k", "a \"b\".png", data.clone()).await;
        let id = f["id"].as_str().unwrap().to_string();
        let small = png_bytes(3000);
        let g = app.upload_ok("k", "small.png", small.clone()).await;
        let url = format!("/api/files/{id}/download");
        let small_url = format!("/api/files/{}/download", g["id"].as_str().unwrap());
        let v: Value = app
            .client
            .post(app.url(&format!("/api/files/{id}/signed-url")))
            .bearer_auth(token("k"))
            .json(&json!({"expires_in": 60}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let link = v["url"].as_str().unwrap().to_string();
        let etag = format!("\"{}\"", sha256_hex(&data));
        let before = sendfile_bytes(&app).await;
        let auth = bearer("k");
        let auth = auth.as_str();

        let mut c = Raw::connect(&app).await;
        let a = c.exchange("GET", &url, &[("authorization", auth)]).await;
        assert_eq!(a.status, 200);
        assert!(a.body == data, "whole file");
        assert_eq!(a.header("content-length"), Some(n.to_string().as_str()));
        assert_eq!(a.header("etag"), Some(etag.as_str()));
        assert_eq!(a.header("accept-ranges"), Some("bytes"));
        assert_eq!(a.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(a.header("content-type"), Some("image/png"));
        assert!(a.header("transfer-encoding").is_none(), "never chunked");
        assert!(a
            .header("content-disposition")
            .unwrap()
            .starts_with("attachment; filename=\"a _b_.png\""));

        let a = c
            .exchange(
                "GET",
                &url,
                &[("authorization", auth), ("range", "bytes=4097-5000000")],
            )
            .await;
        assert_eq!(a.status, 206);
        assert_eq!(
            a.header("content-range"),
            Some(format!("bytes 4097-5000000/{n}").as_str())
        );
        assert!(a.body == data[4097..5_000_001]);

        let a = c
            .exchange(
                "GET",
                &url,
                &[("authorization", auth), ("range", "bytes=-10")],
            )
            .await;
        assert_eq!(a.status, 206);
        assert!(a.body == data[n - 10..]);

        let a = c
            .exchange(
                "GET",
                &url,
                &[("authorization", auth), ("if-none-match", &etag)],
            )
            .await;
        assert_eq!(a.status, 304);
        assert_eq!(a.header("etag"), Some(etag.as_str()));

        // If-Range with another tag: the whole file, 200.
        let a = c
            .exchange(
                "GET",
                &url,
                &[
                    ("authorization", auth),
                    ("range", "bytes=0-9"),
                    ("if-range", "\"other\""),
                ],
            )
            .await;
        assert_eq!(a.status, 200);
        assert!(a.body == data);

        let a = c
            .exchange(
                "GET",
                &url,
                &[
                    ("authorization", auth),
                    ("range", "bytes=0-1048575"),
                    ("if-range", &etag),
                ],
            )
            .await;
        assert_eq!(a.status, 206);
        assert!(a.body == data[..1024 * 1024]);

        let a = c.exchange("HEAD", &url, &[("authorization", auth)]).await;
        assert_eq!(a.status, 200);
        assert_eq!(a.header("content-length"), Some(n.to_string().as_str()));

        let a = c
            .exchange(
                "GET",
                &url,
                &[("authorization", auth), ("range", &format!("bytes={n}-"))],
            )
            .await;
        assert_eq!(a.status, 416);

        let a = c.exchange("GET", &url, &[]).await;
        assert_eq!(a.status, 401, "no token, no bytes");

        let a = c.exchange("GET", &link, &[]).await;
        assert_eq!(a.status, 200);
        assert!(a.body == data, "signed link");
        let a = c.exchange("GET", &link, &[("range", "bytes=10-19")]).await;
        assert_eq!(a.status, 206);
        assert!(a.body == data[10..20]);

        let a = c
            .exchange("GET", &small_url, &[("authorization", auth)])
            .await;
        assert_eq!(a.status, 200);
        assert!(a.body == small, "small file");

        // Every body above went through sendfile.
        let sent = (n + (5_000_001 - 4097) + 10 + n + 1024 * 1024 + n + 10 + small.len()) as u64;
        let after = sendfile_bytes(&app).await;
        assert!(
            after - before >= sent,
            "sendfile sent {} of {sent} bytes",
            after - before
        );
    }
);

local!(a_slow_reader_gets_every_byte, |b| async move {
    let app = spawn_app(b).await;
    let n = 24 * 1024 * 1024 + 77;
    let data = png_bytes(n);
    let f = app.upload_ok("w", "slow.png", data.clone()).await;
    let url = format!("/api/files/{}/download", f["id"].as_str().unwrap());
    let before = sendfile_bytes(&app).await;
    let auth = bearer("w");
    let mut c = Raw::connect(&app).await;
    c.send("GET", &url, &[("authorization", &auth)]).await;
    let a = c.head().await;
    assert_eq!(a.status, 200);
    // Nothing read for a while: the socket buffers fill and the server
    // waits for the socket; then small reads with pauses.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        let part = c.body((n - got.len()).min(512 * 1024)).await;
        assert!(
            !part.is_empty(),
            "connection ended after {} bytes",
            got.len()
        );
        got.extend_from_slice(&part);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(got == data, "every byte, in order");
    // The connection is still good for the next request.
    let a = c
        .exchange(
            "GET",
            &url,
            &[("authorization", &auth), ("range", "bytes=0-99")],
        )
        .await;
    assert_eq!(a.status, 206);
    assert!(a.body == data[..100]);
    assert!(sendfile_bytes(&app).await - before >= n as u64 + 100);
});

/// File descriptors of this process open on `path`.
fn open_fds(path: &std::path::Path) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|t| t == path)
        .count()
}

local!(
    a_blob_truncated_on_disk_closes_the_connection_and_the_server_stays_up,
    |b| async move {
        let app = spawn_app(b).await;
        let mib = 1024 * 1024;
        let n = 64 * mib;
        let data = png_bytes(n);
        let f = app.upload_ok("t", "big.png", data.clone()).await;
        let id: uuid::Uuid = f["id"].as_str().unwrap().parse().unwrap();
        let rec = app.state.meta.get_file_any(id).await.unwrap().unwrap();
        let path = app.storage_root().join(&rec.file_path);
        let url = format!("/api/files/{id}/download");
        let before = sendfile_bytes(&app).await;
        let auth = bearer("t");

        // Truncated while the download runs: the client gets the bytes still
        // there and then the end of the connection, never a hang, never
        // bytes that are not the file's, and the server lives on.
        let mut c = Raw::connect(&app).await;
        c.send("GET", &url, &[("authorization", &auth)]).await;
        let a = c.head().await;
        assert_eq!(a.status, 200);
        assert_eq!(a.header("content-length"), Some(n.to_string().as_str()));
        let first = c.body(64 * 1024).await;
        assert!(first == data[..64 * 1024]);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(32 * mib as u64)
            .unwrap();
        let rest = tokio::time::timeout(Duration::from_secs(30), c.body(n))
            .await
            .expect("the connection ends, it does not hang");
        let got = [first, rest].concat();
        assert_eq!(got.len(), 32 * mib, "a short body, up to the new end");
        assert!(got == data[..32 * mib]);
        assert!(c.closed().await);
        assert!(sendfile_bytes(&app).await - before >= 32 * mib as u64);

        // Shorter than its record before the request: an error answer.
        let r = app.get("t", &url).await;
        assert_eq!(r.status(), 500);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "internal");

        // The server is up and serves other files.
        let small = png_bytes(5000);
        let g = app.upload_ok("t", "s.png", small.clone()).await;
        let r = app
            .get(
                "t",
                &format!("/api/files/{}/download", g["id"].as_str().unwrap()),
            )
            .await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.bytes().await.unwrap().to_vec(), small);
        // No descriptor of the truncated blob is left open.
        for _ in 0..100 {
            if open_fds(&path) == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(open_fds(&path), 0);
    }
);

local!(
    a_client_gone_mid_file_leaves_no_descriptor_open,
    |b| async move {
        let app = spawn_app(b).await;
        let n = 32 * 1024 * 1024;
        let data = png_bytes(n);
        let f = app.upload_ok("g", "gone.png", data.clone()).await;
        let id: uuid::Uuid = f["id"].as_str().unwrap().parse().unwrap();
        let rec = app.state.meta.get_file_any(id).await.unwrap().unwrap();
        let path = app.storage_root().join(&rec.file_path);
        let url = format!("/api/files/{id}/download");
        let auth = bearer("g");
        let mut c = Raw::connect(&app).await;
        c.send("GET", &url, &[("authorization", &auth)]).await;
        assert_eq!(c.head().await.status, 200);
        let part = c.body(1024 * 1024).await;
        assert!(part == data[..1024 * 1024]);
        assert!(open_fds(&path) >= 1, "the download holds the blob open");
        drop(c);
        for _ in 0..200 {
            if open_fds(&path) == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(open_fds(&path), 0, "closed with the connection");
        let r = app.get("g", &url).await;
        assert_eq!(r.status(), 200);
        assert!(r.bytes().await.unwrap().to_vec() == data);
    }
);
