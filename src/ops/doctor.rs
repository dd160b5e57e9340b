//! `stowage doctor`: one look at everything `serve` depends on, so that a
//! wrong permission on the volume, an unreachable clamd, a clock that makes
//! every token fail `nbf` or a missing ffmpeg shows up as one line at install
//! time instead of as failed requests later.
//!
//! Every check is read-only apart from a probe file written and removed in
//! each directory (and in the bucket), and every one is bounded in time, so
//! the command answers even when a dependency hangs. It never applies
//! migrations and never creates the database: a pending migration is
//! reported, not fixed.

use std::{
    future::Future,
    io::Write as _,
    os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt},
    path::Path,
    time::Duration,
};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::{
    blob::BlobStore as _,
    config::{BlobBackend, Config, TokenKeys},
    domain::size::format_size,
    meta::{Probe, ProbeError},
};

/// Tokens carry `nbf`/`exp` checked with this leeway, seconds; a clock off by
/// more turns every fresh token into "not yet valid".
const TOKEN_LEEWAY_SECS: f64 = 5.0;
/// Above this the clock is worth a warning before tokens start to fail.
const SKEW_WARN_SECS: f64 = 1.0;
/// Longest any single check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest a database connection may take to open.
const DB_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a clamd or ffmpeg exchange may take here (a scan may take longer).
const TOOL_TIMEOUT: Duration = Duration::from_secs(10);

/// How one check ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    /// Works, but something is worth fixing (the command still exits 0).
    Warn,
    /// `serve` would fail, or fail requests, because of this.
    Fail,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }
}

/// One line of the report.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    pub detail: String,
}

fn check(name: &'static str, status: Status, detail: impl Into<String>) -> Check {
    Check {
        name,
        status,
        detail: detail.into(),
    }
}

/// Everything `doctor` found; `ok` is false when any check failed.
#[derive(Debug, Serialize)]
pub struct Report {
    pub ok: bool,
    pub checks: Vec<Check>,
}

impl Report {
    fn new(checks: Vec<Check>) -> Report {
        Report {
            ok: checks.iter().all(|c| c.status != Status::Fail),
            checks,
        }
    }

    /// The report when the configuration itself does not load: nothing else
    /// can be checked.
    pub fn config_failed(error: &str) -> Report {
        Report::new(vec![check("config", Status::Fail, error)])
    }

    /// One line per check, then a summary line.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for c in &self.checks {
            out.push_str(&format!(
                "{:<4}  {:<13} {}\n",
                c.status.label(),
                c.name,
                c.detail
            ));
        }
        let count = |s| self.checks.iter().filter(|c| c.status == s).count();
        out.push_str(&format!(
            "{} check(s): {} failed, {} warning(s)\n",
            self.checks.len(),
            count(Status::Fail),
            count(Status::Warn)
        ));
        out
    }
}

/// Runs every check against `config`; `source` says where it came from.
pub async fn run(config: &Config, source: &str) -> Report {
    let mut checks = vec![config_check(config, source)];

    // The database: reachable, migrations, and its clock.
    let mut clocks: Vec<(String, f64, f64)> = Vec::new();
    match bounded("database", connect(&config.database_url)).await {
        Err(c) => {
            checks.push(c);
            checks.push(check(
                "migrations",
                Status::Fail,
                "not checked: the database is unreachable",
            ));
        }
        Ok(db) => {
            checks.push(check(
                "database",
                Status::Ok,
                format!(
                    "{} reachable at {}",
                    db.backend(),
                    crate::config::redact_url(&config.database_url)
                ),
            ));
            checks.push(
                bounded("migrations", migrations(&db))
                    .await
                    .unwrap_or_else(|c| c),
            );
            match bounded("clock", clock_skew(&db)).await {
                Ok(Some(skew)) => clocks.push(("database".into(), skew.0, skew.1)),
                Ok(None) => {}
                Err(c) => checks.push(c),
            }
            db.close().await;
        }
    }

    let auth = bounded("auth", auth(config)).await;
    let (auth, jwks_clock) = match auth {
        Ok(x) => x,
        Err(c) => (c, None),
    };
    if let Some((skew, precision)) = jwks_clock {
        clocks.push(("JWKS server".into(), skew, precision));
    }
    checks.push(clock_check(config, &clocks));

    if config.blob_store == BlobBackend::Local {
        checks.push(volume(config));
    }
    checks.push(data_dir(config));
    if config.blob_store == BlobBackend::S3 || config.s3_bucket.is_some() {
        checks.push(
            bounded("object store", object_store(config))
                .await
                .unwrap_or_else(|c| c),
        );
    }
    checks.push(bounded("clamd", clamd(config)).await.unwrap_or_else(|c| c));
    checks.push(bounded("ffmpeg", ffmpeg()).await.unwrap_or_else(|c| c));
    checks.push(auth);
    Report::new(checks)
}

/// Runs `f` for at most [`CHECK_TIMEOUT`]; an error or a timeout becomes a
/// failed check named `name`.
async fn bounded<T>(
    name: &'static str,
    f: impl Future<Output = Result<T, String>>,
) -> Result<T, Check> {
    match tokio::time::timeout(CHECK_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(check(name, Status::Fail, e)),
        Err(_) => Err(check(
            name,
            Status::Fail,
            format!("no answer within {} s", CHECK_TIMEOUT.as_secs()),
        )),
    }
}

fn config_check(config: &Config, source: &str) -> Check {
    if let Err(e) = crate::config::check_auth_safety(config) {
        return check("config", Status::Fail, format!("{source}: {e:#}"));
    }
    check(
        "config",
        Status::Ok,
        format!("{source}; listening on {}", config.bind),
    )
}

// ---- database ----

/// Opens the doctor's look at the database ([`Probe`]: no pool, no
/// migrations, and no database file created where there is none).
async fn connect(url: &str) -> Result<Probe, String> {
    Probe::open(url, DB_CONNECT_TIMEOUT)
        .await
        .map_err(|e| match e {
            ProbeError::NoFile(_) | ProbeError::Unsupported => e.to_string(),
            e => format!("cannot connect to {}: {e}", crate::config::redact_url(url)),
        })
}

fn secs(d: chrono::TimeDelta) -> f64 {
    d.num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6
}

async fn clock_skew(db: &Probe) -> Result<Option<(f64, f64)>, String> {
    db.clock_skew()
        .await
        .map_err(|e| format!("reading the database's clock: {e}"))
}

async fn migrations(db: &Probe) -> Result<Check, String> {
    let known = db.known_migrations();
    let applied = db
        .applied_migrations()
        .await
        .map_err(|e| format!("cannot read _sqlx_migrations: {e}"))?;
    if let Some(a) = applied.iter().find(|a| !a.success) {
        return Ok(check(
            "migrations",
            Status::Fail,
            format!(
                "migration {} failed part-way; restore from a backup",
                a.version
            ),
        ));
    }
    let unknown: Vec<String> = applied
        .iter()
        .filter(|a| !known.iter().any(|m| m.version == a.version))
        .map(|a| a.version.to_string())
        .collect();
    if !unknown.is_empty() {
        return Ok(check(
            "migrations",
            Status::Fail,
            format!(
                "the database has migration(s) {} that this binary does not know: a newer stowage ran here",
                unknown.join(", ")
            ),
        ));
    }
    let changed: Vec<String> = known
        .iter()
        .filter(|m| {
            applied
                .iter()
                .any(|a| a.version == m.version && a.checksum != m.checksum)
        })
        .map(|m| m.version.to_string())
        .collect();
    if !changed.is_empty() {
        return Ok(check(
            "migrations",
            Status::Fail,
            format!(
                "migration(s) {} were applied from different SQL than this binary's",
                changed.join(", ")
            ),
        ));
    }
    let pending: Vec<String> = known
        .iter()
        .filter(|m| !applied.iter().any(|a| a.version == m.version))
        .map(|m| format!("{:04} {}", m.version, m.description))
        .collect();
    if !pending.is_empty() {
        return Ok(check(
            "migrations",
            Status::Fail,
            format!(
                "{} pending ({}); run `stowage migrate`",
                pending.len(),
                pending.join(", ")
            ),
        ));
    }
    Ok(check(
        "migrations",
        Status::Ok,
        format!("all {} applied", known.len()),
    ))
}

/// Worst skew among the clocks we could compare with (`(what, skew,
/// precision)`): tokens are issued by another machine's clock and checked
/// against ours with [`TOKEN_LEEWAY_SECS`] of leeway.
fn clock_check(config: &Config, clocks: &[(String, f64, f64)]) -> Check {
    if clocks.is_empty() {
        let why = if config.database_url.starts_with("sqlite:") {
            "SQLite shares this machine's clock"
        } else {
            "the database's clock could not be read"
        };
        return check(
            "clock",
            Status::Ok,
            format!("nothing to compare with ({why}); keep NTP on (timedatectl)"),
        );
    }
    let detail = clocks
        .iter()
        .map(|(what, skew, prec)| format!("{what} {skew:+.1} s (±{prec:.1})"))
        .collect::<Vec<_>>()
        .join(", ");
    // A skew counts only by what it surely is, beyond its imprecision.
    let worst = clocks
        .iter()
        .map(|(_, skew, prec)| (skew.abs() - prec).max(0.0))
        .fold(0.0, f64::max);
    if worst > TOKEN_LEEWAY_SECS {
        check(
            "clock",
            Status::Fail,
            format!(
                "{detail}: over the {TOKEN_LEEWAY_SECS} s token leeway, fresh tokens fail `nbf` or `exp`; fix NTP (timedatectl set-ntp true)"
            ),
        )
    } else if worst > SKEW_WARN_SECS {
        check("clock", Status::Warn, format!("{detail}; check NTP"))
    } else {
        check("clock", Status::Ok, detail)
    }
}

// ---- directories ----

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Bytes free for us and in all on the filesystem holding `path`.
fn free_space(path: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("path holds a NUL byte"))?;
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `s` a valid out pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let frsize = s.f_frsize as u64;
    Ok((s.f_bavail as u64 * frsize, s.f_blocks as u64 * frsize))
}

/// Writes, syncs and removes a probe file in `dir`.
fn probe_write(dir: &Path) -> std::io::Result<()> {
    let p = dir.join(format!(".doctor-{}", uuid::Uuid::new_v4()));
    let res = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&p)?;
        f.write_all(b"stowage doctor")?;
        f.sync_all()
    })();
    let _ = std::fs::remove_file(&p);
    res
}

/// What is wrong with directory `path` for a service running as us, or
/// `Ok(notes)` when it is usable; `notes` are warnings.
fn inspect_dir(path: &Path) -> Result<Vec<String>, String> {
    let md = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !md.is_dir() {
        return Err(format!("{} is not a directory", path.display()));
    }
    let mode = md.permissions().mode() & 0o7777;
    let me = euid();
    let mut notes = Vec::new();
    if md.uid() != me {
        if me == 0 {
            notes.push(format!(
                "owned by uid {}, checked as root: run doctor as the service user (sudo -u stowage)",
                md.uid()
            ));
        } else {
            return Err(format!(
                "{} is owned by uid {}, but stowage runs as uid {me}: chown it to the service user",
                path.display(),
                md.uid()
            ));
        }
    }
    if mode & 0o300 != 0o300 {
        return Err(format!(
            "{} has mode {mode:04o}: its owner cannot write or enter it (stowage needs 0700)",
            path.display()
        ));
    }
    if mode & 0o077 != 0 {
        notes.push(format!(
            "mode {mode:04o} lets other local users in; stowage creates 0700 (chmod 0700)"
        ));
    }
    probe_write(path).map_err(|e| format!("cannot write in {}: {e}", path.display()))?;
    Ok(notes)
}

/// A directory that `serve` creates when missing: fine if its nearest
/// existing ancestor is writable.
fn missing_dir(name: &'static str, path: &Path) -> Check {
    let mut parent = path.parent();
    while let Some(p) = parent {
        if p.exists() {
            return match probe_write(p) {
                Ok(()) => check(
                    name,
                    Status::Warn,
                    format!(
                        "{} does not exist yet; serve creates it (0700)",
                        path.display()
                    ),
                ),
                Err(e) => check(
                    name,
                    Status::Fail,
                    format!(
                        "{} does not exist and {} is not writable: {e}",
                        path.display(),
                        p.display()
                    ),
                ),
            };
        }
        parent = p.parent();
    }
    check(
        name,
        Status::Fail,
        format!("{} does not exist", path.display()),
    )
}

/// The volume: the storage root and its temp directory usable, on one
/// filesystem (publishing an upload is a rename), with room to spare.
fn volume(config: &Config) -> Check {
    let root = &config.storage_root;
    if !root.exists() {
        return missing_dir("volume", root);
    }
    let mut notes = match inspect_dir(root) {
        Ok(n) => n,
        Err(e) => return check("volume", Status::Fail, e),
    };
    let tmp = root.join(".tmp");
    if tmp.exists() {
        if let Err(e) = inspect_dir(&tmp) {
            return check("volume", Status::Fail, e);
        }
        match (std::fs::metadata(root), std::fs::metadata(&tmp)) {
            (Ok(a), Ok(b)) if a.dev() != b.dev() => {
                return check(
                    "volume",
                    Status::Fail,
                    format!(
                        "{} is on another filesystem than {}: uploads are published by rename",
                        tmp.display(),
                        root.display()
                    ),
                )
            }
            _ => {}
        }
    }
    let space = match free_space(root) {
        Ok((free, total)) => {
            let pct = if total == 0 {
                0.0
            } else {
                free as f64 * 100.0 / total as f64
            };
            if free < config.max_file_size.saturating_mul(2) || pct < 5.0 {
                notes.push(format!(
                    "only {} free of {} ({pct:.0}%)",
                    format_size(free),
                    format_size(total)
                ));
            }
            format!(
                "{} free of {} ({pct:.0}%)",
                format_size(free),
                format_size(total)
            )
        }
        Err(e) => {
            notes.push(format!("free space unknown: {e}"));
            String::new()
        }
    };
    dir_result("volume", root, &space, notes)
}

/// The data directory: generated secrets (signing.key) live here.
fn data_dir(config: &Config) -> Check {
    let dir = &config.data_dir;
    if !dir.exists() {
        return missing_dir("data dir", dir);
    }
    let mut notes = match inspect_dir(dir) {
        Ok(n) => n,
        Err(e) => return check("data dir", Status::Fail, e),
    };
    let key = dir.join("signing.key");
    if config.signing_secret.is_none() {
        if let Ok(md) = std::fs::metadata(&key) {
            if let Err(e) = std::fs::File::open(&key) {
                return check(
                    "data dir",
                    Status::Fail,
                    format!("cannot read {}: {e}", key.display()),
                );
            }
            let mode = md.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                notes.push(format!(
                    "{} has mode {mode:04o}: anyone who reads it can sign download links (chmod 0600)",
                    key.display()
                ));
            }
        }
    }
    dir_result("data dir", dir, "writable", notes)
}

fn dir_result(name: &'static str, path: &Path, ok: &str, notes: Vec<String>) -> Check {
    let mut detail = format!("{}: {ok}", path.display());
    for n in &notes {
        detail.push_str("; ");
        detail.push_str(n);
    }
    let status = if notes.is_empty() {
        Status::Ok
    } else {
        Status::Warn
    };
    check(name, status, detail)
}

// ---- dependencies ----

async fn object_store(config: &Config) -> Result<Check, String> {
    let o = config.s3_options();
    let at = format!(
        "bucket {} at {}",
        o.bucket,
        o.endpoint.as_deref().unwrap_or("AWS")
    );
    let store = crate::blob::s3::S3Store::open(&o).map_err(|e| format!("cannot open {at}: {e}"))?;
    store
        .check_writable()
        .await
        .map_err(|e| format!("{at} does not accept a write and delete: {e}"))?;
    Ok(check(
        "object store",
        Status::Ok,
        format!("{at}: a probe object was written and deleted"),
    ))
}

/// One clamd command (`zPING\0`, `zVERSION\0`) and its answer.
async fn clamd_command<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    cmd: &[u8],
) -> std::io::Result<String> {
    s.write_all(cmd).await?;
    s.flush().await?;
    let mut reply = Vec::new();
    (&mut s).take(1024).read_to_end(&mut reply).await?;
    Ok(String::from_utf8_lossy(&reply)
        .trim_end_matches(['\0', '\n'])
        .trim()
        .to_string())
}

async fn clamd_ask(spec: &str, cmd: &[u8], limit: Duration) -> Result<String, String> {
    let exchange = async {
        match spec.strip_prefix("tcp://") {
            Some(addr) => clamd_command(tokio::net::TcpStream::connect(addr).await?, cmd).await,
            None => {
                let path = spec.strip_prefix("unix://").unwrap_or(spec);
                clamd_command(tokio::net::UnixStream::connect(path).await?, cmd).await
            }
        }
    };
    match tokio::time::timeout(limit, exchange).await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err(format!("{spec}: {e}")),
        Err(_) => Err(format!("{spec}: no answer within {} s", limit.as_secs())),
    }
}

async fn clamd(config: &Config) -> Result<Check, String> {
    let Some(spec) = config.clamd.as_deref() else {
        return Ok(check(
            "clamd",
            Status::Ok,
            "not configured (STOWAGE_CLAMD): uploads are not scanned",
        ));
    };
    let limit = config.limits.clamd_timeout.min(TOOL_TIMEOUT);
    let pong = clamd_ask(spec, b"zPING\0", limit)
        .await
        .map_err(|e| format!("{e}; uploads would be refused (503)"))?;
    if pong != "PONG" {
        return Err(format!("{spec} answered {pong:?} to PING instead of PONG"));
    }
    let version = clamd_ask(spec, b"zVERSION\0", limit)
        .await
        .unwrap_or_else(|e| format!("version unknown: {e}"));
    Ok(check(
        "clamd",
        Status::Ok,
        format!("{spec}: PONG; {version}"),
    ))
}

/// Why `tool -version` gave no version.
#[derive(Debug, PartialEq, Eq)]
enum ToolError {
    /// It did not answer within the limit: the tool may work, only slowly
    /// (a machine under load loads ffmpeg's hundred shared libraries from a
    /// cold cache), so this is a warning, not a failure.
    Slow(String),
    /// It could not be run, or it exited with an error: media jobs would fail.
    Broken(String),
}

/// The first line of `tool -version`, within `limit`.
async fn tool_version(tool: &Path, limit: Duration) -> Result<String, ToolError> {
    let run = tokio::process::Command::new(tool)
        .arg("-version")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(limit, run)
        .await
        .map_err(|_| {
            ToolError::Slow(format!(
                "{} -version did not answer within {} s",
                tool.display(),
                limit.as_secs_f64()
            ))
        })?
        .map_err(|e| ToolError::Broken(format!("cannot run {}: {e}", tool.display())))?;
    if !out.status.success() {
        return Err(ToolError::Broken(format!(
            "{} -version exited with {}",
            tool.display(),
            out.status
        )));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text.lines().next().unwrap_or("").trim();
    // "ffmpeg version 7.1.1-1 Copyright (c) …": name and version only.
    Ok(first
        .split(" Copyright")
        .next()
        .unwrap_or(first)
        .to_string())
}

async fn ffmpeg() -> Result<Check, String> {
    let tools = stowage_media::MediaTools::detect();
    let (Some(ffmpeg), Some(ffprobe)) = (tools.ffmpeg(), tools.ffprobe()) else {
        let missing: Vec<&str> = [("ffmpeg", tools.ffmpeg()), ("ffprobe", tools.ffprobe())]
            .into_iter()
            .filter(|(_, p)| p.is_none())
            .map(|(n, _)| n)
            .collect();
        return Ok(check(
            "ffmpeg",
            Status::Warn,
            format!(
                "{} not found on PATH: video thumbnails and media durations are off (apt-get install ffmpeg)",
                missing.join(" and ")
            ),
        ));
    };
    // Both at once: on a loaded machine each start can take seconds.
    let (a, b) = tokio::join!(
        tool_version(ffmpeg, TOOL_TIMEOUT),
        tool_version(ffprobe, TOOL_TIMEOUT)
    );
    tools_check(a, b)
}

/// The ffmpeg check from the two `-version` answers: a broken tool fails,
/// a slow one warns.
fn tools_check(
    ffmpeg: Result<String, ToolError>,
    ffprobe: Result<String, ToolError>,
) -> Result<Check, String> {
    let mut versions = Vec::new();
    let mut slow = Vec::new();
    for r in [ffmpeg, ffprobe] {
        match r {
            Ok(v) => versions.push(v),
            Err(ToolError::Slow(e)) => slow.push(e),
            Err(ToolError::Broken(e)) => return Err(e),
        }
    }
    if !slow.is_empty() {
        return Ok(check(
            "ffmpeg",
            Status::Warn,
            format!(
                "{}: the machine may be loaded; a media job has STOWAGE_MEDIA_TIMEOUT_SECS",
                slow.join("; ")
            ),
        ));
    }
    Ok(check("ffmpeg", Status::Ok, versions.join("; ")))
}

/// The token keys, from the source `serve` would use
/// ([`Config::token_keys`]): a PEM that parses, or a JWKS endpoint (any, or
/// Clerk's Backend API with the secret key, or the Frontend API its
/// publishable key names) that answers with at least one usable key. Also
/// returns the JWKS server's clock minus ours (from its `Date` header), for
/// the clock check.
async fn auth(config: &Config) -> Result<(Check, Option<(f64, f64)>), String> {
    let issuer = config.token_issuer().map_err(|e| e.to_string())?;
    let iss = issuer
        .map(|i| format!("; tokens must have iss {i}"))
        .unwrap_or_default();
    let (url, bearer, source) = match config.token_keys().map_err(|e| e.to_string())? {
        TokenKeys::Pem(pem) => {
            crate::auth::jwt::Verifier::from_pem(pem.expose(), None, Vec::new())?;
            return Ok((
                check(
                    "auth",
                    Status::Ok,
                    format!("STOWAGE_JWT_PUBLIC_KEY: a public key that parses{iss}"),
                ),
                None,
            ));
        }
        TokenKeys::None => {
            return Ok((
                check(
                    "auth",
                    Status::Warn,
                    "no CLERK_SECRET_KEY, CLERK_PUBLISHABLE_KEY, STOWAGE_JWT_PUBLIC_KEY or STOWAGE_JWKS_URL: development sign-in only (loopback)",
                ),
                None,
            ));
        }
        TokenKeys::Jwks {
            url,
            bearer,
            source,
        } => (url, bearer, source),
    };
    let url = &url;
    let http = reqwest::Client::builder()
        .timeout(config.limits.jwks_timeout)
        .build()
        .map_err(|e| format!("http client: {e}"))?;
    // The wall clock: the skew of this machine's clock is what is measured.
    let before = Utc::now();
    let mut req = http.get(url);
    if let Some(b) = &bearer {
        req = req.bearer_auth(b.expose());
    }
    let resp = req
        .send()
        .await
        .map_err(|e| format!("{source}: JWKS {url}: {e}"))?;
    let after = Utc::now();
    let skew = resp
        .headers()
        .get(reqwest::header::DATE)
        .and_then(|d| d.to_str().ok())
        .and_then(|d| DateTime::parse_from_rfc2822(d).ok())
        .map(|theirs| {
            // `Date` has whole seconds, truncated: the server answered
            // somewhere in the second it names.
            let half = (after - before) / 2;
            let ours = before + half;
            (
                secs(theirs.with_timezone(&Utc) - ours) + 0.5,
                0.5 + secs(half),
            )
        });
    let status = resp.status();
    if !status.is_success() {
        let hint = if bearer.is_some() && matches!(status.as_u16(), 401 | 403) {
            " (is CLERK_SECRET_KEY the secret key of this instance?)"
        } else {
            ""
        };
        return Err(format!("{source}: JWKS {url} answered {status}{hint}"));
    }
    let set: jsonwebtoken::jwk::JwkSet = resp
        .json()
        .await
        .map_err(|e| format!("JWKS {url}: not a JWK set: {e}"))?;
    let usable = set
        .keys
        .iter()
        .filter(|k| k.common.key_id.is_some())
        .filter(|k| {
            matches!(
                k.algorithm,
                jsonwebtoken::jwk::AlgorithmParameters::RSA(_)
                    | jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_)
            )
        })
        .filter(|k| jsonwebtoken::DecodingKey::from_jwk(k).is_ok())
        .count();
    if usable == 0 {
        return Err(format!(
            "JWKS {url}: {} key(s), none usable (RSA or EC with a kid)",
            set.keys.len()
        ));
    }
    Ok((
        check(
            "auth",
            Status::Ok,
            format!("{source}: JWKS {url}: {usable} usable key(s){iss}"),
        ),
        skew,
    ))
}

#[cfg(test)]
mod tests {
    use std::{os::unix::fs::PermissionsExt as _, path::PathBuf};

    use super::*;

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[tokio::test]
    async fn a_tool_that_answers_late_is_slow_and_one_that_exits_badly_is_broken() {
        let dir = tempfile::tempdir().unwrap();
        let good = script(
            dir.path(),
            "good",
            "echo 'ffmpeg version 7.1 Copyright (c) 2000 the authors'",
        );
        let slow = script(dir.path(), "slow", "sleep 5");
        let bad = script(dir.path(), "bad", "exit 3");
        let limit = Duration::from_millis(300);

        assert_eq!(
            tool_version(&good, limit).await,
            Ok("ffmpeg version 7.1".to_string())
        );
        let started = std::time::Instant::now();
        assert!(matches!(
            tool_version(&slow, limit).await,
            Err(ToolError::Slow(e)) if e.contains("did not answer within 0.3 s")
        ));
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "it waited for the tool"
        );
        assert!(matches!(
            tool_version(&bad, limit).await,
            Err(ToolError::Broken(e)) if e.contains("exited with")
        ));
        assert!(matches!(
            tool_version(&dir.path().join("absent"), limit).await,
            Err(ToolError::Broken(e)) if e.contains("cannot run")
        ));
    }

    #[test]
    fn a_slow_tool_warns_and_a_broken_one_fails() {
        let ok = || Ok::<_, ToolError>("ffmpeg version 7.1".to_string());
        let c = tools_check(ok(), ok()).unwrap();
        assert_eq!(c.status, Status::Ok);

        let c = tools_check(ok(), Err(ToolError::Slow("ffprobe was slow".into()))).unwrap();
        assert_eq!(c.status, Status::Warn);
        assert!(c.detail.contains("ffprobe was slow"), "{}", c.detail);

        let e = tools_check(
            Err(ToolError::Slow("slow".into())),
            Err(ToolError::Broken("ffprobe exited with 3".into())),
        )
        .unwrap_err();
        assert!(e.contains("exited with 3"), "{e}");
    }
}
