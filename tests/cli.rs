//! The `stowage` binary as operators and their scripts use it, on SQLite,
//! PostgreSQL and MariaDB: every `--json` command prints one JSON document and nothing
//! else on stdout (logs go to stderr, so `stowage audit --json | jq` works),
//! `stowage doctor` passes on a healthy set-up and names the check that fails
//! on a broken one, completions and the man page come from the command
//! definition, and the files under `deploy/` stay true to the code.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Output,
};

use serde_json::Value;
use sqlx::Connection;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[path = "support/serve.rs"]
mod serve;

use serve::{dev_login, fresh_db, upload_file, Engine, Launch, TestDb, BIN};

const RSA_PUBLIC: &str = include_str!("fixtures/rsa_public.pem");
/// `fixtures/rsa_public.pem` as a JWK (`openssl rsa -pubin -modulus`).
const RSA_PUBLIC_N: &str = "z3TFp301DzI-ZV15zjR1751AyK02y9ixK6qAhg7BJ5MD_0Ngf48IlpSb7SlPYoEldt9c39ya4pl6nJcWu_0rKzhHWjDggWR4grIN2m2vQY2qV2nTZBXFqVWTM4W1Uf3Ve3weZfjMUyQkzDyUbKeRs8qhC9abbAPoFaazZt-WsurzGo_oSsvbE1XJ0YUchE8wkuISGUXHqoL6Lkv1nD8fu85jio_FRKn2F-opoCcI12fO6_2NkvsK_NK-bcEIy3QdbKjfo6zP_6s5a3HaUcTMFK_Ryt-1BAJl0X6BO_iTMktkitlxjsNglm9iR9HCg10wxA_kOhU2DhYXpfR_aYG4MQ";

/// One test body per metadata engine.
macro_rules! engines {
    ($name:ident, $body:expr) => {
        mod $name {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                ($body)(Engine::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                ($body)(Engine::Postgres).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mariadb() {
                ($body)(Engine::MariaDb).await
            }
        }
    };
}

/// A fresh data directory and database, and the environment the binary
/// runs with: nothing inherited but `PATH`, logs at `info` so that anything
/// logged to stdout would show.
struct Env {
    dir: TempDir,
    db_url: String,
    vars: Vec<(String, String)>,
    _db: Option<TestDb>,
}

impl Env {
    async fn new(engine: Engine) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let (db_url, db) = fresh_db(engine, dir.path()).await;
        let mut env = Env {
            vars: Vec::new(),
            db_url,
            dir,
            _db: db,
        };
        let data = env.path("data");
        env.set("STOWAGE_DATA_DIR", &data.display().to_string());
        env.set(
            "STOWAGE_STORAGE_ROOT",
            &data.join("users").display().to_string(),
        );
        let url = env.db_url.clone();
        env.set("STOWAGE_DATABASE_URL", &url);
        env.set("RUST_LOG", "info");
        env
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn set(&mut self, k: &str, v: &str) {
        self.vars.retain(|(n, _)| n != k);
        self.vars.push((k.into(), v.into()));
    }

    async fn run(&self, args: &[&str]) -> Output {
        tokio::process::Command::new(BIN)
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.vars.iter().map(|(k, v)| (k, v)))
            .current_dir(self.dir.path())
            .kill_on_drop(true)
            .output()
            .await
            .unwrap()
    }

    /// Runs a command that must succeed.
    async fn ok(&self, args: &[&str]) -> Output {
        let out = self.run(args).await;
        assert!(out.status.success(), "stowage {args:?}: {}", show(&out));
        out
    }

    /// Runs a `--json` command: exit status 0 and the whole of stdout one
    /// JSON document.
    async fn json(&self, args: &[&str]) -> Value {
        let out = self.ok(args).await;
        parse(args, &out)
    }

    /// A database with its schema and one user with a quota.
    async fn seeded(engine: Engine) -> Env {
        let env = Env::new(engine).await;
        env.ok(&["migrate"]).await;
        env.ok(&["user", "set-quota", "alice", "1GiB"]).await;
        env
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

fn parse(args: &[&str], out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stowage {args:?}: stdout is not one JSON document ({e}):\n{}",
            show(out)
        )
    })
}

// ---- machine output ----

engines!(audit_json_is_stdout_alone, |e| async move {
    let env = Env::seeded(e).await;
    let v = env.json(&["audit", "--json"]).await;
    assert_eq!(v["clean"], true, "{v}");
});

engines!(tasks_json_is_stdout_alone, |e| async move {
    let env = Env::seeded(e).await;
    let v = env.json(&["tasks", "--json"]).await;
    assert_eq!(v, Value::Array(vec![]), "no scheduled run yet: {v}");
});

/// Runs `stowage serve` on `env` long enough to upload one file as
/// `user` (development sign-in), so there is an event to look at.
async fn upload_one(env: &Env, user: &str) -> Value {
    let mut server = Launch::new(0)
        .envs(env.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir(env.dir.path())
        .start()
        .await;
    let token = dev_login(&server.base, user).await;
    let (status, file) = upload_file(
        &server.base,
        &token,
        "scene.json",
        br#"{"scene":1}"#.to_vec(),
    )
    .await;
    assert_eq!(status, 201, "{file}");
    server.kill().await;
    file
}

engines!(events_list_and_replay_from_the_shell, |e| async move {
    let env = Env::seeded(e).await;
    let v = env.json(&["events", "list", "--json"]).await;
    assert_eq!(v, Value::Array(vec![]), "{v}");
    let file = upload_one(&env, "alice").await;
    let v = env
        .json(&["events", "list", "--type", "file.created", "--json"])
        .await;
    let events = v.as_array().expect("an array of events");
    assert_eq!(events.len(), 1, "{v}");
    let ev = &events[0];
    assert_eq!(ev["type"], "file.created");
    assert_eq!(ev["user_id"], "alice");
    assert_eq!(ev["data"]["file"]["id"], file["id"]);
    // No webhook configured: recorded, not sent.
    assert_eq!(ev["status"], "pending");
    assert_eq!(ev["attempts"], 0);
    let none = env
        .json(&["events", "list", "--status", "delivered", "--json"])
        .await;
    assert_eq!(none, Value::Array(vec![]));
    let id = ev["id"].as_str().unwrap();
    let out = env.ok(&["events", "replay", id]).await;
    assert!(String::from_utf8_lossy(&out.stdout).contains(id));
    let again = env.json(&["events", "list", "--json"]).await;
    assert_eq!(again[0]["id"], ev["id"], "the same event, queued again");
    assert_eq!(again[0]["status"], "pending");
    // Unknown ids and filters are errors, not silence.
    assert!(!env
        .run(&["events", "replay", "0190d5a0-0000-7000-8000-000000000000"])
        .await
        .status
        .success());
    assert!(!env
        .run(&["events", "list", "--type", "file.exploded"])
        .await
        .status
        .success());
    let text = env.ok(&["events", "list"]).await;
    assert!(String::from_utf8_lossy(&text.stdout).contains("file.created"));
});

engines!(user_list_json_is_stdout_alone, |e| async move {
    let env = Env::seeded(e).await;
    let v = env.json(&["user", "list", "--json"]).await;
    let users = v.as_array().expect("an array of users");
    assert_eq!(users.len(), 1, "{v}");
    assert_eq!(users[0]["user_id"], "alice");
    assert_eq!(users[0]["max_bytes"], 1u64 << 30);
});

engines!(user_show_json_is_stdout_alone, |e| async move {
    let env = Env::seeded(e).await;
    let v = env.json(&["user", "show", "alice", "--json"]).await;
    assert_eq!(v["user_id"], "alice", "{v}");
    assert_eq!(v["max_bytes"], 1u64 << 30, "{v}");
});

engines!(cleanup_json_is_stdout_alone, |e| async move {
    let env = Env::seeded(e).await;
    let v = env.json(&["cleanup", "--json"]).await;
    assert_eq!(v["expired_reservations"], 0, "{v}");
});

engines!(backup_json_is_stdout_alone, |e| async move {
    let env = Env::seeded(e).await;
    let dest = env.path("backups");
    let dest = dest.to_str().unwrap();
    let created = env
        .json(&["backup", "create", "--dest", dest, "--json"])
        .await;
    assert_eq!(created["header"]["users"], 1, "{created}");
    let archive = created["path"].as_str().expect("archive path").to_string();

    let list = env
        .json(&["backup", "list", "--dest", dest, "--json"])
        .await;
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");

    let verified = env.json(&["backup", "verify", &archive, "--json"]).await;
    assert_eq!(verified["ok"], true, "{verified}");

    // Restore into a second, empty deployment on the same engine.
    let other = Env::new(e).await;
    other.ok(&["migrate"]).await;
    let restored = other.json(&["backup", "restore", &archive, "--json"]).await;
    assert_eq!(restored["users"], 1, "{restored}");
});

engines!(doctor_json_is_stdout_alone, |e| async move {
    let env = Env::seeded(e).await;
    let v = env.json(&["doctor", "--json"]).await;
    assert_eq!(v["ok"], true, "{v}");
});

// The NOTICE PostgreSQL sends when migrations find their table is routine:
// not logged by default, and when asked for it is a log line, on stderr.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_notices_are_quiet_by_default_and_go_to_stderr() {
    let mut env = Env::seeded(Engine::Postgres).await;
    let out = env.ok(&["audit", "--json"]).await;
    parse(&["audit"], &out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("already exists"), "{}", show(&out));

    env.set("RUST_LOG", "info,sqlx::postgres::notice=info");
    let out = env.ok(&["audit", "--json"]).await;
    parse(&["audit"], &out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("_sqlx_migrations\" already exists"),
        "asked for, the notice is logged to stderr: {}",
        show(&out)
    );
}

// ---- doctor ----

fn checks(report: &Value) -> Vec<(String, String, String)> {
    report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_string(),
                c["status"].as_str().unwrap().to_string(),
                c["detail"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Runs `doctor --json`, which must exit 1 with exactly `name` failing;
/// returns that check's detail.
async fn doctor_fails(env: &Env, name: &str) -> String {
    let out = env.run(&["doctor", "--json"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let v = parse(&["doctor"], &out);
    assert_eq!(v["ok"], false);
    let failed: Vec<_> = checks(&v)
        .into_iter()
        .filter(|(_, s, _)| s == "fail")
        .collect();
    assert_eq!(
        failed
            .iter()
            .map(|(n, _, _)| n.as_str())
            .collect::<Vec<_>>(),
        vec![name],
        "{v}"
    );
    failed[0].2.clone()
}

/// A clamd that answers PING and VERSION, as the real one does.
async fn fake_clamd() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut cmd = Vec::new();
                let mut b = [0u8; 1];
                while s.read_exact(&mut b).await.is_ok() && b[0] != 0 {
                    cmd.push(b[0]);
                }
                let reply: &[u8] = match &cmd[..] {
                    b"zPING" => b"PONG\0",
                    b"zVERSION" => b"ClamAV 1.4.2/27000/Mon Jan  1 00:00:00 2025\0",
                    _ => b"UNKNOWN COMMAND\0",
                };
                let _ = s.write_all(reply).await;
            });
        }
    });
    format!("tcp://{addr}")
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// An HTTP server answering every request with `body` and a `Date` header
/// `offset_secs` away from our clock.
async fn fake_jwks(body: String, offset_secs: i64) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let date = (chrono::Utc::now() + chrono::TimeDelta::seconds(offset_secs))
                    .format("%a, %d %b %Y %H:%M:%S GMT");
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ndate: {date}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    format!("http://{addr}/.well-known/jwks.json")
}

fn jwks_body() -> String {
    serde_json::json!({"keys": [{
        "kty": "RSA", "kid": "test-1", "use": "sig", "alg": "RS256",
        "n": RSA_PUBLIC_N, "e": "AQAB"
    }]})
    .to_string()
}

/// A healthy set-up: schema applied, a PEM key, a clamd that answers.
async fn healthy(e: Engine) -> Env {
    let mut env = Env::seeded(e).await;
    env.set("STOWAGE_JWT_PUBLIC_KEY", RSA_PUBLIC);
    let clamd = fake_clamd().await;
    env.set("STOWAGE_CLAMD", &clamd);
    env
}

engines!(doctor_passes_on_a_healthy_setup, |e| async move {
    let env = healthy(e).await;
    let v = env.json(&["doctor", "--json"]).await;
    assert_eq!(v["ok"], true, "{v}");
    let all = checks(&v);
    for name in [
        "config",
        "database",
        "migrations",
        "clock",
        "volume",
        "data dir",
        "clamd",
        "ffmpeg",
        "auth",
    ] {
        let c = all.iter().find(|c| c.0 == name);
        assert!(
            c.is_some_and(|c| c.1 != "fail"),
            "{name} missing or failing: {v}"
        );
    }
    let status = |n: &str| all.iter().find(|c| c.0 == n).unwrap().1.clone();
    assert_eq!(status("database"), "ok");
    assert_eq!(status("migrations"), "ok");
    assert_eq!(status("clamd"), "ok");
    assert_eq!(status("auth"), "ok");
    // The volume is 0700 (stowage made it); only the host's own disk may
    // still make it warn, when little space is left.
    let volume = v["checks"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == "volume"))
        .cloned()
        .unwrap_or_default();
    let detail = volume["detail"].as_str().unwrap_or("");
    assert!(
        status("volume") == "ok"
            || (status("volume") == "warn" && detail.contains("free") && !detail.contains("mode")),
        "stowage made it 0700: {v}"
    );

    // The text form: one line per check, exit 0.
    let out = env.ok(&["doctor"]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), all.len() + 1, "{text}");
    assert!(text
        .lines()
        .any(|l| l.starts_with("ok") && l.contains("clamd") && l.contains("PONG")));
});

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_fails_when_clamd_does_not_answer() {
    let mut env = healthy(Engine::Sqlite).await;
    env.set(
        "STOWAGE_CLAMD",
        &format!("tcp://127.0.0.1:{}", closed_port()),
    );
    let detail = doctor_fails(&env, "clamd").await;
    assert!(detail.contains("refused"), "{detail}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_fails_on_a_volume_stowage_cannot_write() {
    let env = healthy(Engine::Sqlite).await;
    let root = env.path("data/users");
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o500)).unwrap();
    let detail = doctor_fails(&env, "volume").await;
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700)).unwrap();
    assert!(detail.contains("0500"), "{detail}");
}

engines!(doctor_fails_on_a_pending_migration, |e| async move {
    let env = healthy(e).await;
    let sql =
        "DELETE FROM _sqlx_migrations WHERE version = (SELECT MAX(version) FROM _sqlx_migrations)";
    match e {
        Engine::Postgres => {
            let mut c = sqlx::PgConnection::connect(&env.db_url).await.unwrap();
            sqlx::query(sql).execute(&mut c).await.unwrap();
        }
        Engine::Sqlite => {
            let mut c = sqlx::SqliteConnection::connect(&env.db_url).await.unwrap();
            sqlx::query(sql).execute(&mut c).await.unwrap();
        }
        Engine::MariaDb => {
            // MySQL cannot read the table a DELETE changes but through a
            // derived table.
            let sql = "DELETE FROM _sqlx_migrations WHERE version = \
                       (SELECT v FROM (SELECT MAX(version) AS v FROM _sqlx_migrations) AS m)";
            let mut c = sqlx::MySqlConnection::connect(&env.db_url).await.unwrap();
            sqlx::query(sql).execute(&mut c).await.unwrap();
        }
    }
    let detail = doctor_fails(&env, "migrations").await;
    assert!(
        detail.contains("1 pending") && detail.contains("stowage migrate"),
        "{detail}"
    );
});

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_fails_when_the_database_is_unreachable() {
    let url = format!("postgres://postgres@127.0.0.1:{}/stowage", closed_port());
    doctor_fails_on_database(Engine::Postgres, &url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_fails_when_the_mariadb_database_is_unreachable() {
    let url = format!("mysql://root@127.0.0.1:{}/stowage", closed_port());
    doctor_fails_on_database(Engine::MariaDb, &url).await;
}

/// `stowage doctor` set up on `engine`, then pointed at `url`, where no
/// database answers: the database check and the one after it fail.
async fn doctor_fails_on_database(engine: Engine, url: &str) {
    let mut env = healthy(engine).await;
    env.set("STOWAGE_DATABASE_URL", url);
    let out = env.run(&["doctor", "--json"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let all = checks(&parse(&["doctor"], &out));
    let failed: Vec<_> = all.iter().filter(|c| c.1 == "fail").map(|c| &c.0).collect();
    assert_eq!(failed, ["database", "migrations"], "{all:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_fails_when_the_jwks_url_does_not_answer() {
    // Accepts connections and never answers.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    let mut env = healthy(Engine::Sqlite).await;
    env.vars.retain(|(k, _)| k != "STOWAGE_JWT_PUBLIC_KEY");
    env.set(
        "STOWAGE_JWKS_URL",
        &format!("http://{addr}/.well-known/jwks.json"),
    );
    env.set("STOWAGE_JWKS_TIMEOUT_SECS", "1");
    let detail = doctor_fails(&env, "auth").await;
    assert!(detail.contains("JWKS"), "{detail}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_checks_the_jwks_keys_and_the_clock_against_the_key_server() {
    let mut env = healthy(Engine::Sqlite).await;
    env.vars.retain(|(k, _)| k != "STOWAGE_JWT_PUBLIC_KEY");

    // A JWKS with the fixture key and a clock in step with ours.
    env.set("STOWAGE_JWKS_URL", &fake_jwks(jwks_body(), 0).await);
    let v = env.json(&["doctor", "--json"]).await;
    let all = checks(&v);
    let auth = all.iter().find(|c| c.0 == "auth").unwrap();
    assert_eq!(auth.1, "ok", "{v}");
    assert!(auth.2.contains("1 usable key"), "{v}");
    let clock = all.iter().find(|c| c.0 == "clock").unwrap();
    assert_eq!(clock.1, "ok", "{v}");
    assert!(clock.2.contains("JWKS server"), "{v}");

    // The key server's clock a minute ahead: every fresh token would fail
    // `nbf` here.
    env.set("STOWAGE_JWKS_URL", &fake_jwks(jwks_body(), 60).await);
    let detail = doctor_fails(&env, "clock").await;
    assert!(detail.contains("leeway"), "{detail}");

    // A key set with no usable key.
    env.set(
        "STOWAGE_JWKS_URL",
        &fake_jwks(
            r#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"h"}]}"#.into(),
            0,
        )
        .await,
    );
    let detail = doctor_fails(&env, "auth").await;
    assert!(detail.contains("none usable"), "{detail}");
}

/// Clerk's Backend API as far as `GET /v1/jwks` goes: the JWKS to a
/// request with `Authorization: Bearer {secret}`, 401 to any other.
async fn fake_clerk_api(secret: &'static str) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&got).to_string();
                let authorized = head.starts_with("GET /v1/jwks ")
                    && head.lines().any(|l| {
                        l.split_once(':').is_some_and(|(k, v)| {
                            k.eq_ignore_ascii_case("authorization")
                                && v.trim() == format!("Bearer {secret}")
                        })
                    });
                let (status, body) = if authorized {
                    ("200 OK", jwks_body())
                } else {
                    ("401 Unauthorized", r#"{"errors":[]}"#.to_string())
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_checks_the_clerk_backend_api_with_the_secret_key() {
    const SECRET: &str = "sk_test_doctorCheck0123456789";
    let mut env = healthy(Engine::Sqlite).await;
    env.vars.retain(|(k, _)| k != "STOWAGE_JWT_PUBLIC_KEY");
    env.set("STOWAGE_CLERK_API_URL", &fake_clerk_api(SECRET).await);
    env.set("CLERK_SECRET_KEY", SECRET);
    let v = env.json(&["doctor", "--json"]).await;
    let all = checks(&v);
    let auth = all.iter().find(|c| c.0 == "auth").unwrap();
    assert_eq!(auth.1, "ok", "{v}");
    assert!(
        auth.2.contains("CLERK_SECRET_KEY") && auth.2.contains("1 usable key"),
        "{v}"
    );
    assert!(
        !v.to_string().contains("doctorCheck"),
        "the key is shown: {v}"
    );

    // Another instance's secret key: the Backend API answers 401.
    env.set("CLERK_SECRET_KEY", "sk_test_someOtherInstance");
    let detail = doctor_fails(&env, "auth").await;
    assert!(detail.contains("401"), "{detail}");
    assert!(!detail.contains("someOtherInstance"), "{detail}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_clerk_keys_stop_serve_and_doctor_with_their_name() {
    let mut env = healthy(Engine::Sqlite).await;
    env.set("CLERK_SECRET_KEY", "pk_test_pastedTheWrongKey");
    let detail = doctor_fails(&env, "config").await;
    assert!(detail.contains("CLERK_SECRET_KEY"), "{detail}");
    assert!(!detail.contains("pastedTheWrongKey"), "{detail}");

    let mut env = healthy(Engine::Sqlite).await;
    env.set("CLERK_PUBLISHABLE_KEY", "pk_live_bm90IGEgaG9zdA");
    let out = env.run(&["serve"]).await;
    assert!(!out.status.success(), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("CLERK_PUBLISHABLE_KEY"), "{}", show(&out));
    assert!(!err.contains("panicked"), "{}", show(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_reports_a_configuration_that_does_not_load() {
    let mut env = healthy(Engine::Sqlite).await;
    env.set("STOWAGE_MAX_CONNECTIONS", "0");
    let detail = doctor_fails(&env, "config").await;
    assert!(detail.contains("STOWAGE_MAX_CONNECTIONS"), "{detail}");

    // Reachable from the network with no token keys.
    let mut env = healthy(Engine::Sqlite).await;
    env.vars.retain(|(k, _)| k != "STOWAGE_JWT_PUBLIC_KEY");
    env.set("STOWAGE_BIND", "0.0.0.0:3001");
    let detail = doctor_fails(&env, "config").await;
    assert!(detail.contains("without authentication"), "{detail}");
}

// ---- generated from the command definition ----

#[tokio::test]
async fn completions_and_man_pages_cover_every_command() {
    let env = Env::new(Engine::Sqlite).await;
    for shell in ["bash", "zsh", "fish"] {
        let out = env.ok(&["completions", shell]).await;
        let text = String::from_utf8_lossy(&out.stdout);
        for sub in ["serve", "audit", "backup", "doctor", "migrate-blobs"] {
            assert!(text.contains(sub), "{shell} completions lack {sub}");
        }
    }
    let out = env.ok(&["man"]).await;
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(
        page.starts_with(".ie") || page.contains(".TH stowage"),
        "{page}"
    );
    for sub in ["serve", "audit", "backup", "doctor"] {
        assert!(page.contains(sub), "man page lacks {sub}");
    }
    let dir = env.path("man");
    std::fs::create_dir(&dir).unwrap();
    env.ok(&["man", "--dir", dir.to_str().unwrap()]).await;
    for page in ["stowage.1", "stowage-doctor.1", "stowage-backup-create.1"] {
        let p = dir.join(page);
        assert!(
            std::fs::metadata(&p).is_ok_and(|m| m.len() > 0),
            "{} missing",
            p.display()
        );
    }
}

// ---- deploy/ ----

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

/// Every variable the example environment file sets (commented out or not)
/// is one the service reads, so the example cannot drift from the code.
#[test]
fn the_example_environment_names_only_variables_stowage_reads() {
    let example = std::fs::read_to_string(repo("deploy/stowage.env.example")).unwrap();
    let config = std::fs::read_to_string(repo("src/config.rs")).unwrap();
    let mut names = Vec::new();
    for line in example.lines() {
        let l = line.trim_start_matches('#').trim();
        let Some((name, _)) = l.split_once('=') else {
            continue;
        };
        if !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        {
            names.push(name.to_string());
        }
    }
    assert!(names.len() >= 20, "too few variables found: {names:?}");
    for must in [
        "STOWAGE_BIND",
        "STOWAGE_DATABASE_URL",
        "STOWAGE_STORAGE_ROOT",
        "STOWAGE_DATA_DIR",
        "STOWAGE_ADMIN_TOKEN",
        "STOWAGE_TRUSTED_PROXIES",
    ] {
        assert!(names.iter().any(|n| n == must), "{must} missing");
    }
    // RUST_LOG is read by the logging set-up, not the config.
    for name in names.iter().filter(|n| *n != "RUST_LOG") {
        assert!(
            config.contains(&format!("\"{name}\"")),
            "{name} is in deploy/stowage.env.example but src/config.rs does not read it"
        );
    }
}

#[test]
fn the_systemd_unit_is_valid() {
    let unit = std::fs::read_to_string(repo("deploy/stowage.service")).unwrap();
    for line in [
        "EnvironmentFile=/etc/stowage/stowage.env",
        "ExecStart=/usr/local/bin/stowage serve",
        "User=stowage",
        "StateDirectory=stowage",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "TimeoutStopSec=20",
        "Restart=on-failure",
    ] {
        assert!(unit.lines().any(|l| l == line), "{line} missing");
    }
    let nofile: u64 = unit
        .lines()
        .find_map(|l| l.strip_prefix("LimitNOFILE="))
        .expect("LimitNOFILE")
        .parse()
        .unwrap();
    assert!(nofile >= 8192, "4096 connections need more descriptors");
    assert!(unit.lines().any(|l| l.starts_with("ReadWritePaths=")));

    // systemd's own check, where systemd is there to ask, on the unit as
    // shipped but for where the binary is.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("stowage.service");
    std::fs::write(&copy, unit.replace("/usr/local/bin/stowage", BIN)).unwrap();
    if let Ok(out) = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
    {
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "systemd-analyze verify: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
