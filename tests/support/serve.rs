//! Shared by the integration test crates (`#[path = "support/serve.rs"] mod
//! serve;`): the real `stowage serve` as a child process (a free port, its
//! environment, waiting until it is ready, SIGKILL and SIGTERM, its log), and
//! throwaway PostgreSQL and MySQL/MariaDB databases ([`TestDb`]).
#![allow(dead_code)]

use std::{
    path::Path,
    process::{ExitStatus, Stdio},
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use sqlx::Connection;

/// The `stowage` binary of this build.
pub const BIN: &str = env!("CARGO_BIN_EXE_stowage");

/// A TCP port nobody listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The metadata engine a test runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
    MariaDb,
}

impl Engine {
    /// The URL of the server tests create databases on (the environment's
    /// `STOWAGE_TEST_PG_URL` or `STOWAGE_TEST_MYSQL_URL`); `None` for SQLite.
    pub fn admin_url(self) -> Option<String> {
        let (var, default) = match self {
            Engine::Sqlite => return None,
            Engine::Postgres => (
                "STOWAGE_TEST_PG_URL",
                "postgres://postgres@127.0.0.1:5432/postgres",
            ),
            Engine::MariaDb => ("STOWAGE_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/"),
        };
        Some(std::env::var(var).unwrap_or_else(|_| default.into()))
    }
}

/// Base URL of the PostgreSQL server tests create databases on.
pub fn pg_admin_url() -> String {
    Engine::Postgres.admin_url().unwrap()
}

/// A throwaway PostgreSQL or MySQL/MariaDB database, dropped with the
/// guard.
pub struct TestDb {
    pub engine: Engine,
    pub name: String,
    pub url: String,
}

impl TestDb {
    pub async fn postgres() -> TestDb {
        TestDb::create(Engine::Postgres).await
    }

    pub async fn mariadb() -> TestDb {
        TestDb::create(Engine::MariaDb).await
    }

    /// A new database on `engine`'s server (not SQLite).
    pub async fn create(engine: Engine) -> TestDb {
        static N: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let name = format!(
            "stowage_test_{}_{}_{}",
            std::process::id(),
            nanos % 1_000_000_000,
            N.fetch_add(1, Ordering::SeqCst)
        );
        let admin = engine.admin_url().expect("a database server");
        let (sql, url) = match engine {
            Engine::Postgres => (
                format!("CREATE DATABASE {name}"),
                format!("{}/{name}", admin.rsplit_once('/').unwrap().0),
            ),
            _ => (
                format!("CREATE DATABASE {name} CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"),
                format!("{}/{name}", admin.trim_end_matches('/')),
            ),
        };
        on_server(engine, &sql)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        TestDb { engine, name, url }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let engine = self.engine;
        let sql = match engine {
            Engine::Postgres => format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            _ => format!("DROP DATABASE IF EXISTS {}", self.name),
        };
        // Dropped from sync code inside a runtime: use a thread of our own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let _ = rt.block_on(on_server(engine, &sql));
        })
        .join();
    }
}

/// Runs one statement on `engine`'s server, on a connection of its own.
async fn on_server(engine: Engine, sql: &str) -> Result<(), String> {
    let admin = engine.admin_url().expect("a database server");
    let absent = |e: sqlx::Error| {
        format!(
            "{engine:?} is required for the test suite ({admin}): {e}. \
             Run scripts/test.sh, which starts one."
        )
    };
    let failed = |e: sqlx::Error| format!("{sql}: {e}");
    match engine {
        Engine::Postgres => {
            let mut c = sqlx::PgConnection::connect(&admin).await.map_err(absent)?;
            sqlx::query(sql).execute(&mut c).await.map_err(failed)?;
            let _ = c.close().await;
        }
        _ => {
            let mut c = sqlx::MySqlConnection::connect(&admin)
                .await
                .map_err(absent)?;
            sqlx::query(sql).execute(&mut c).await.map_err(failed)?;
            let _ = c.close().await;
        }
    }
    Ok(())
}

/// A fresh metadata database on `engine`: its URL, and the guard that drops
/// a server database (SQLite's file lives in `dir/data`).
pub async fn fresh_db(engine: Engine, dir: &Path) -> (String, Option<TestDb>) {
    match engine {
        Engine::Sqlite => (format!("sqlite://{}/data/stowage.db", dir.display()), None),
        _ => {
            let db = TestDb::create(engine).await;
            (db.url.clone(), Some(db))
        }
    }
}

/// A data directory and a database for child processes: SQLite in the
/// directory, or a PostgreSQL or MariaDB database of its own.
pub struct Scratch {
    pub dir: tempfile::TempDir,
    pub db_url: String,
    _db: Option<TestDb>,
}

impl Scratch {
    /// SQLite, or PostgreSQL when `pg`.
    pub async fn new(pg: bool) -> Scratch {
        Scratch::on(if pg { Engine::Postgres } else { Engine::Sqlite }).await
    }

    pub async fn on(engine: Engine) -> Scratch {
        let dir = tempfile::tempdir().unwrap();
        let (db_url, db) = fresh_db(engine, dir.path()).await;
        Scratch {
            db_url,
            dir,
            _db: db,
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// How to start a `stowage serve`: its port, environment and where its
/// stderr goes. Nothing of the test's own environment reaches it but `PATH`
/// (so a developer's `STOWAGE_*` or `DATABASE_URL` cannot change a test).
pub struct Launch {
    port: u16,
    vars: Vec<(String, String)>,
    dir: Option<std::path::PathBuf>,
    inherit_stderr: bool,
}

impl Launch {
    /// On `port` (0: a free one), logging warnings, with generous rate
    /// limits.
    pub fn new(port: u16) -> Launch {
        let port = if port == 0 { free_port() } else { port };
        Launch {
            port,
            vars: Vec::new(),
            dir: None,
            inherit_stderr: false,
        }
        .env("RUST_LOG", "warn")
        .env("STOWAGE_RATE_LIMIT_USER", "100000")
        .env("STOWAGE_RATE_LIMIT_IP", "100000")
    }

    /// A node with data dir `data` on volume `storage` and database `db`.
    pub fn node(port: u16, data: &Path, storage: &Path, db: &str) -> Launch {
        Launch::new(port)
            .env("STOWAGE_DATA_DIR", data.display())
            .env("STOWAGE_STORAGE_ROOT", storage.display())
            .env("STOWAGE_DATABASE_URL", db)
    }

    /// Sets (or replaces) one variable.
    pub fn env(mut self, k: &str, v: impl std::fmt::Display) -> Launch {
        self.vars.retain(|(n, _)| n != k);
        self.vars.push((k.to_string(), v.to_string()));
        self
    }

    pub fn envs<K: AsRef<str>, V: std::fmt::Display>(
        mut self,
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> Launch {
        for (k, v) in vars {
            self = self.env(k.as_ref(), v);
        }
        self
    }

    /// Its working directory.
    pub fn current_dir(mut self, dir: &Path) -> Launch {
        self.dir = Some(dir.to_path_buf());
        self
    }

    /// Its stderr goes to the test's (shown when a test fails) instead of
    /// its log file.
    pub fn inherit_stderr(mut self) -> Launch {
        self.inherit_stderr = true;
        self
    }

    /// Starts it and waits (up to 60 s) until `/readyz` answers 2xx.
    pub async fn start(self) -> Serve {
        let log = tempfile::NamedTempFile::new().unwrap();
        let mut cmd = tokio::process::Command::new(BIN);
        cmd.arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.vars.iter().map(|(k, v)| (k, v)))
            .env("STOWAGE_BIND", format!("127.0.0.1:{}", self.port))
            .stdout(Stdio::null())
            .kill_on_drop(true);
        if let Some(d) = &self.dir {
            cmd.current_dir(d);
        }
        if self.inherit_stderr {
            cmd.stderr(Stdio::inherit());
        } else {
            cmd.stderr(log.reopen().unwrap());
        }
        let mut child = cmd.spawn().unwrap();
        let base = format!("http://127.0.0.1:{}", self.port);
        let deadline = Instant::now() + Duration::from_secs(60);
        let client = reqwest::Client::new();
        loop {
            let ready = client
                .get(format!("{base}/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "stowage serve exited before it was ready ({status}):\n{}",
                    std::fs::read_to_string(log.path()).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "stowage serve was not ready within 60 s:\n{}",
                std::fs::read_to_string(log.path()).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Serve {
            child,
            port: self.port,
            base,
            log,
        }
    }
}

/// A running `stowage serve`; SIGKILLed when dropped.
pub struct Serve {
    pub child: tokio::process::Child,
    pub port: u16,
    /// `http://127.0.0.1:{port}`.
    pub base: String,
    log: tempfile::NamedTempFile,
}

impl Serve {
    /// `127.0.0.1:{port}`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// What it wrote to stderr so far (empty with
    /// [`Launch::inherit_stderr`]).
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// SIGKILL, and waits for it.
    pub async fn kill(&mut self) {
        self.child.kill().await.unwrap();
    }

    /// Sends SIGTERM and returns at once.
    pub fn signal_term(&self) {
        let pid = self.child.id().expect("still running") as libc::pid_t;
        // SAFETY: kill(2) on our own child's pid, which it still is: the
        // child has not been waited for.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    }

    /// Waits up to `within` for it to exit.
    pub async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        tokio::time::timeout(within, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("still running after {within:?}:\n{}", self.logs()))
            .unwrap()
    }

    /// SIGTERM, then waits (up to 20 s) for a clean exit.
    pub async fn terminate(&mut self) {
        self.signal_term();
        let status = self.wait_exit(Duration::from_secs(20)).await;
        assert!(
            status.success(),
            "clean exit after SIGTERM: {status:?}\n{}",
            self.logs()
        );
    }
}

/// A session token for `user` from the development sign-in (a server
/// without a JWT key).
pub async fn dev_login(base: &str, user: &str) -> String {
    let v: serde_json::Value = reqwest::Client::new()
        .post(format!("{base}/api/dev/login"))
        .json(&serde_json::json!({"user_id": user}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["token"]
        .as_str()
        .unwrap_or_else(|| panic!("no token from the development sign-in: {v}"))
        .to_string()
}

/// A multipart upload of `data` as `name`: the status and the JSON body.
pub async fn upload_file(
    base: &str,
    token: &str,
    name: &str,
    data: Vec<u8>,
) -> (u16, serde_json::Value) {
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(data).file_name(name.to_string()),
    );
    let r = reqwest::Client::new()
        .post(format!("{base}/api/files/upload"))
        .bearer_auth(token)
        .multipart(form)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(serde_json::Value::Null))
}
