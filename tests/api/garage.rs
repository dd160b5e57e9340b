#![allow(dead_code)]
//! A real Garage cluster for the object-store tests: three `garage server`
//! processes on loopback, one zone each, replication factor 3, with one
//! access key and one bucket. The binary comes from `STOWAGE_GARAGE_BIN`,
//! the cache `scripts/test.sh` installs into, or `PATH`.
//!
//! One cluster is shared by the whole test binary ([`shared`]); tests that
//! stop nodes start their own ([`Cluster::start`]). Node processes get
//! `PR_SET_PDEATHSIG`, from a spawner thread that lives as long as the test
//! binary, so they die with it even when a test panics.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{mpsc, Mutex, OnceLock},
    time::{Duration, Instant},
};

pub const GARAGE_VERSION: &str = "2.5.0";
pub const KEY_ID: &str = "GK0123456789abcdef01234567";
pub const SECRET: &str = "5ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7";
pub const BUCKET: &str = "stowage";
const RPC_SECRET: &str = "7b1f0c1e9a3d4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c";

/// The garage binary, if there is one.
pub fn binary() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("STOWAGE_GARAGE_BIN") {
        return Some(PathBuf::from(p));
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let cached =
        PathBuf::from(home).join(format!(".cache/stowage/garage-{GARAGE_VERSION}/bin/garage"));
    if cached.exists() {
        return Some(cached);
    }
    let on_path = Command::new("garage")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    on_path.then(|| PathBuf::from("garage"))
}

/// True when object-store tests can run; panics when they must
/// (`STOWAGE_REQUIRE_GARAGE=1`, set by `scripts/test.sh`) but cannot.
pub fn available() -> bool {
    let have = binary().is_some();
    if !have && std::env::var("STOWAGE_REQUIRE_GARAGE").is_ok_and(|v| v == "1") {
        panic!(
            "garage is required (STOWAGE_REQUIRE_GARAGE=1) but was not found; run scripts/test.sh"
        );
    }
    if !have {
        eprintln!("garage not installed: object-store variant skipped");
    }
    have
}

/// Spawns children from one thread that never exits, so that
/// `PR_SET_PDEATHSIG` (which follows the spawning *thread*) fires only when
/// the test binary itself ends.
fn spawn_detached(mut cmd: Command) -> std::io::Result<Child> {
    type Job = (Command, mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    let tx = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::spawn(move || {
            while let Ok((mut cmd, back)) = rx.recv() {
                use std::os::unix::process::CommandExt;
                // SAFETY: prctl is async-signal-safe.
                unsafe {
                    cmd.pre_exec(|| {
                        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                        Ok(())
                    });
                }
                let _ = back.send(cmd.spawn());
            }
            // Keep the thread (and so the children) alive.
            loop {
                std::thread::park();
            }
        });
        Mutex::new(tx)
    });
    let (back_tx, back_rx) = mpsc::channel();
    cmd.stdin(Stdio::null());
    tx.lock().unwrap().send((cmd, back_tx)).unwrap();
    back_rx.recv().unwrap()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Node {
    pub config: PathBuf,
    pub s3_port: u16,
    pub rpc_port: u16,
    child: Mutex<Option<Child>>,
}

pub struct Cluster {
    pub dir: PathBuf,
    pub nodes: Vec<Node>,
    bin: PathBuf,
}

impl Cluster {
    /// Starts a three-node cluster under `dir` and waits until its bucket
    /// accepts writes.
    pub fn start(dir: &Path) -> Cluster {
        let bin = binary().expect("garage binary");
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).unwrap();
        let mut nodes = Vec::new();
        for i in 0..3 {
            let ndir = dir.join(format!("n{i}"));
            std::fs::create_dir_all(&ndir).unwrap();
            let (rpc, s3) = (free_port(), free_port());
            let config = ndir.join("garage.toml");
            std::fs::write(
                &config,
                format!(
                    r#"metadata_dir = "{d}/meta"
data_dir = "{d}/data"
db_engine = "lmdb"
metadata_fsync = false
data_fsync = false
replication_factor = 3
rpc_bind_addr = "127.0.0.1:{rpc}"
rpc_public_addr = "127.0.0.1:{rpc}"
rpc_secret = "{RPC_SECRET}"

[s3_api]
s3_region = "us-east-1"
api_bind_addr = "127.0.0.1:{s3}"
root_domain = ".s3.garage.localhost"
"#,
                    d = ndir.display()
                ),
            )
            .unwrap();
            nodes.push(Node {
                config,
                s3_port: s3,
                rpc_port: rpc,
                child: Mutex::new(None),
            });
        }
        let c = Cluster {
            dir: dir.to_path_buf(),
            nodes,
            bin,
        };
        for i in 0..3 {
            c.start_node(i);
        }
        c.wait_for(0, &["status"]);
        let ids: Vec<String> = (0..3)
            .map(|i| c.wait_for(i, &["node", "id", "-q"]).trim().to_string())
            .collect();
        for id in &ids[1..] {
            c.cli(0, &["node", "connect", id]);
        }
        for (i, id) in ids.iter().enumerate() {
            let short = id.split('@').next().unwrap();
            c.cli(
                0,
                &[
                    "layout",
                    "assign",
                    "-z",
                    &format!("z{i}"),
                    "-c",
                    "1G",
                    short,
                ],
            );
        }
        c.cli(0, &["layout", "apply", "--version", "1"]);
        c.wait_for(
            0,
            &["key", "import", "--yes", "-n", "stowage", KEY_ID, SECRET],
        );
        c.wait_for(0, &["bucket", "create", BUCKET]);
        c.cli(
            0,
            &[
                "bucket", "allow", "--read", "--write", "--owner", BUCKET, "--key", "stowage",
            ],
        );
        c.wait_writable();
        c
    }

    pub fn endpoint(&self, node: usize) -> String {
        format!("http://127.0.0.1:{}", self.nodes[node].s3_port)
    }

    pub fn start_node(&self, i: usize) {
        let n = &self.nodes[i];
        let log = std::fs::File::create(n.config.with_file_name("garage.log")).unwrap();
        let mut cmd = Command::new(&self.bin);
        cmd.arg("-c")
            .arg(&n.config)
            .arg("server")
            .env("RUST_LOG", "garage=warn")
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        *n.child.lock().unwrap() = Some(spawn_detached(cmd).expect("start garage"));
    }

    /// Kills node `i` (SIGKILL: no goodbye to its peers).
    pub fn stop_node(&self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.lock().unwrap().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Runs the CLI against node `i`; panics with its output on failure.
    pub fn cli(&self, i: usize, args: &[&str]) -> String {
        match self.try_cli(i, args) {
            Ok(out) => out,
            Err(e) => panic!("garage {args:?}: {e}"),
        }
    }

    fn try_cli(&self, i: usize, args: &[&str]) -> Result<String, String> {
        let out = Command::new(&self.bin)
            .arg("-c")
            .arg(&self.nodes[i].config)
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// Retries a CLI call until it succeeds (the daemon may still be
    /// starting, or the layout still spreading).
    fn wait_for(&self, i: usize, args: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match self.try_cli(i, args) {
                Ok(out) => return out,
                Err(e) if Instant::now() > deadline => panic!("garage {args:?}: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// Waits until every node's S3 endpoint takes a write and a read.
    fn wait_writable(&self) {
        // On a thread of its own: callers may be inside a runtime already.
        std::thread::scope(|s| s.spawn(|| self.wait_writable_blocking()).join().unwrap());
    }

    fn wait_writable_blocking(&self) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        for i in 0..3 {
            let op = self.operator(i, "");
            let deadline = Instant::now() + Duration::from_secs(60);
            rt.block_on(async {
                loop {
                    let res = async {
                        op.write(".probe", "ok").await?;
                        op.read(".probe").await?;
                        op.delete(".probe").await
                    }
                    .await;
                    match res {
                        Ok(_) => break,
                        Err(e) if Instant::now() > deadline => {
                            panic!("garage node {i} never became writable: {e}")
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                    }
                }
            });
        }
    }

    /// A raw S3 client on node `i`, rooted at `prefix` (for looking at
    /// what the service left in the bucket).
    pub fn operator(&self, i: usize, prefix: &str) -> opendal::Operator {
        let b = opendal::services::S3::default()
            .bucket(BUCKET)
            .endpoint(&self.endpoint(i))
            .region("us-east-1")
            .root(&format!("/{prefix}"))
            .access_key_id(KEY_ID)
            .secret_access_key(SECRET)
            .disable_config_load()
            .disable_ec2_metadata();
        // Retries as the service does: a pooled connection the daemon has
        // just closed fails once with a temporary error.
        opendal::Operator::new(b)
            .unwrap()
            .layer(
                opendal::layers::RetryLayer::new()
                    .with_max_times(4)
                    .with_jitter(),
            )
            .finish()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.stop_node(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Where clusters of this test binary keep their data.
pub fn scratch(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("garage-{}-{name}", std::process::id()))
}

/// The cluster shared by all object-store variants of the suite; each test
/// uses its own key prefix in its bucket.
pub fn shared() -> &'static Cluster {
    static SHARED: OnceLock<Cluster> = OnceLock::new();
    SHARED.get_or_init(|| {
        // Leftovers of earlier runs (processes died with their binary).
        if let Ok(rd) = std::fs::read_dir(env!("CARGO_TARGET_TMPDIR")) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let mine = format!("garage-{}-", std::process::id());
                if name.starts_with("garage-") && !name.starts_with(&mine) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        Cluster::start(&scratch("shared"))
    })
}
