//! Configuration: one typed struct built from defaults, then an optional TOML
//! file, then environment variables (the SPEC's names win over the file).
//!
//! Secrets are wrapped in [`Secret`] so that `Debug` never prints them.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use serde::Deserialize;

use crate::domain::size::parse_size;

/// A string that never shows up in logs or `Debug` output.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// Which blob backend holds file bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlobBackend {
    Local,
    S3,
}

/// Everything the service needs to run. Built by [`Config::load`].
#[derive(Clone, Debug)]
pub struct Config {
    pub bind: SocketAddr,
    pub data_dir: PathBuf,
    pub database_url: String,
    pub storage_root: PathBuf,
    /// Quota given to a user on first sign-in.
    pub default_quota: u64,
    /// Largest single file, inclusive.
    pub max_file_size: u64,
    pub jwt_public_key: Option<Secret>,
    pub jwks_url: Option<String>,
    /// Clerk's secret key: the JWKS comes from the Backend API with it as
    /// the bearer. Never logged.
    pub clerk_secret_key: Option<Secret>,
    /// Clerk's publishable key: names the Frontend API, whose JWKS it may
    /// use and whose URL is then the required `iss`.
    pub clerk_publishable_key: Option<String>,
    /// The Backend API base (`STOWAGE_CLERK_API_URL`); `None` for Clerk's.
    pub clerk_api_url: Option<String>,
    /// The Frontend API base instead of the one the publishable key names
    /// (`STOWAGE_CLERK_FRONTEND_API_URL`).
    pub clerk_frontend_api_url: Option<String>,
    /// Required `iss`; see [`Config::token_issuer`] for the default.
    pub jwt_issuer: Option<String>,
    pub authorized_parties: Vec<String>,
    pub admin_token: Option<Secret>,
    /// HMAC key for signed URLs and development sessions; generated into the
    /// data dir on first start when not configured.
    pub signing_secret: Option<Secret>,
    pub cors_origins: Vec<String>,
    pub clamd: Option<String>,
    pub blob_store: BlobBackend,
    pub s3_bucket: Option<String>,
    pub s3_endpoint: Option<String>,
    pub s3_region: String,
    /// Key prefix inside the bucket, so one bucket can hold several
    /// deployments (`STOWAGE_S3_PREFIX`); empty for the bucket's root.
    pub s3_prefix: String,
    /// `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`.
    pub s3_access_key_id: Option<String>,
    pub s3_secret_access_key: Option<Secret>,
    /// Downloads answer 302 to a short-lived presigned URL of the object
    /// store instead of streaming through stowage.
    pub s3_downloads_redirect: bool,
    /// `STOWAGE_DIRECT_IO`: uploads to the local volume are written with
    /// direct I/O (`auto`, the default; buffered where the filesystem
    /// refuses it) or always through the page cache (`off`).
    pub direct_io: bool,
    /// `STOWAGE_UPLOAD_BUFFER`: bytes of each of an upload's two write
    /// buffers on the local volume (256 KiB; 16 KiB to 16 MiB).
    pub upload_buffer: u64,
    /// `STOWAGE_ACCEL_REDIRECT`: behind nginx, downloads and signed links are
    /// authorized here and answered with `X-Accel-Redirect: {prefix}{key}`
    /// and no body, and nginx sends the bytes from an `internal` location
    /// aliased to the storage root. Local volume only. Starts and ends with
    /// `/` (say `/_stowage_blobs/`).
    pub accel_redirect: Option<String>,
    /// Requests per second allowed per signed-in user (burst is 4x).
    pub rate_limit_user_per_sec: u32,
    /// Requests per second allowed per client IP (burst is 4x).
    pub rate_limit_ip_per_sec: u32,
    /// How long an idle tus upload is kept before `cleanup` expires it.
    pub upload_expiry: Duration,
    /// How long a multipart reservation lives without progress before a
    /// crash-left one may be reclaimed by `cleanup`.
    pub reservation_ttl: Duration,
    /// Mime types accepted per file type (see [`crate::domain::filetype`]).
    pub allowed_mime: Option<Vec<String>>,
    /// Emit logs as JSON lines instead of human-readable text.
    pub log_json: bool,
    pub thumbnail_max_side: u32,
    /// Upper bound for job concurrency; defaults to the number of cores.
    pub job_workers: usize,
    /// How often `serve` runs a cleanup pass (one process at a time across
    /// the database); zero disables it.
    pub cleanup_interval: Duration,
    /// How often `serve` runs a report-only audit; zero disables it.
    pub audit_interval: Duration,
    /// What one client may cost the service (SPEC §9).
    pub limits: Limits,
    /// Event delivery to the SaaS backend (SPEC §11).
    pub webhook: WebhookConfig,
}

/// Where and how events are POSTed (see docs/integration.md). Without a
/// URL events are still recorded (and listed) but not sent.
#[derive(Clone, Debug, PartialEq)]
pub struct WebhookConfig {
    /// `STOWAGE_WEBHOOK_URL`: http(s) endpoint receiving every event.
    pub url: Option<String>,
    /// `STOWAGE_WEBHOOK_SECRET`: HMAC-SHA256 key of `Stowage-Signature`;
    /// required with a URL.
    pub secret: Option<Secret>,
    /// An event not delivered this long after it was queued is `failed`.
    pub retry_for: Duration,
    /// First retry delay; each further one doubles it, up to `backoff_max`
    /// (and each is jittered between half and all of it).
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Connecting to the receiver.
    pub connect_timeout: Duration,
    /// One delivery, connect to the end of the answer's headers.
    pub timeout: Duration,
    /// Deliveries in flight at once.
    pub concurrency: usize,
    /// How often the delivery worker looks for due events.
    pub poll: Duration,
    /// Delivered events (and, without a URL, all events) are pruned this
    /// long after their creation.
    pub retention: Duration,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            url: None,
            secret: None,
            retry_for: Duration::from_secs(24 * 3600),
            backoff_base: Duration::from_secs(5),
            backoff_max: Duration::from_secs(3600),
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(10),
            concurrency: 8,
            poll: Duration::from_secs(1),
            retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// The hostile-client limits of SPEC §9. Every one is configurable; the
/// defaults are the SPEC's. See docs/security.md for why each default.
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    /// Request headers must be complete this long after the connection's
    /// first byte (or the previous response on a keep-alive connection).
    pub header_timeout: Duration,
    /// An idle keep-alive connection is closed after this.
    pub keepalive_timeout: Duration,
    /// A request body that delivers nothing for this long is ended.
    pub body_idle_timeout: Duration,
    /// Open connections in all; beyond it new ones are refused.
    pub max_connections: usize,
    /// Open connections per client IP (trusted proxies are exempt).
    pub max_connections_per_ip: usize,
    /// Peers whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Vec<IpNet>,
    /// A multipart body's preamble and each part's headers, bytes.
    pub multipart_header_bytes: usize,
    /// Parts in one multipart body.
    pub multipart_max_parts: usize,
    /// Each non-file multipart field, bytes.
    pub multipart_field_bytes: usize,
    /// JSON request bodies, bytes (over → 413 `payload_too_large`).
    pub json_body_bytes: usize,
    /// Unfinished uploads (tus and multipart together) per user.
    pub max_unfinished_uploads: u64,
    /// An unknown JWKS `kid` refetches the set at most this often.
    pub jwks_refresh: Duration,
    /// One JWKS fetch, connect to last byte.
    pub jwks_timeout: Duration,
    /// One clamd exchange (connect, each write, the verdict).
    pub clamd_timeout: Duration,
    /// One media job (decode or ffmpeg run).
    pub media_timeout: Duration,
    /// Media jobs running at once on this node.
    pub media_concurrency: usize,
    /// Address space an ffmpeg/ffprobe child may map (`RLIMIT_AS`), bytes.
    pub ffmpeg_memory_bytes: u64,
    /// Threads ffmpeg may use per run.
    pub ffmpeg_threads: u32,
    /// `/readyz` answers from a cached check this long.
    pub readyz_cache: Duration,
    /// After SIGTERM, requests in flight may finish for this long; then the
    /// uploads still streaming are ended (SPEC §10).
    pub shutdown_grace: Duration,
    /// The process exits this long after SIGTERM, whatever the clients do.
    pub shutdown_timeout: Duration,
    /// How often a `serve` process records that it is alive.
    pub heartbeat_interval: Duration,
    /// A process whose heartbeat is this old is dead: any other releases
    /// the reservations its requests held.
    pub node_dead_after: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(60),
            body_idle_timeout: Duration::from_secs(30),
            max_connections: 4096,
            max_connections_per_ip: 64,
            trusted_proxies: Vec::new(),
            multipart_header_bytes: 16 * 1024,
            multipart_max_parts: 8,
            multipart_field_bytes: 4 * 1024,
            json_body_bytes: 64 * 1024,
            max_unfinished_uploads: 64,
            jwks_refresh: Duration::from_secs(30),
            jwks_timeout: Duration::from_secs(5),
            clamd_timeout: Duration::from_secs(60),
            media_timeout: Duration::from_secs(120),
            media_concurrency: 2,
            ffmpeg_memory_bytes: 1024 * 1024 * 1024,
            ffmpeg_threads: 2,
            readyz_cache: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(15),
            heartbeat_interval: Duration::from_secs(5),
            node_dead_after: Duration::from_secs(30),
        }
    }
}

/// An address or CIDR block (`10.0.0.0/8`, `::1`), for trusted proxies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// Parses `addr` or `addr/prefix`.
    pub fn parse(s: &str) -> Result<IpNet, String> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .trim()
            .parse()
            .map_err(|_| format!("{s}: not an IP address or CIDR block"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s}: prefix must be 0 to {max}"))?,
            None => max,
        };
        Ok(IpNet { addr, prefix })
    }

    /// True when `ip` lies in this block (IPv4-mapped IPv6 counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - self.prefix as u32).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - self.prefix as u32).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Where the keys that verify session tokens come from
/// ([`Config::token_keys`]).
#[derive(Clone, Debug)]
pub enum TokenKeys {
    /// No real auth: development sign-in on loopback only.
    None,
    /// A PEM public key, networkless.
    Pem(Secret),
    /// A JWKS endpoint, fetched with `bearer` when set.
    Jwks {
        url: String,
        bearer: Option<Secret>,
        /// The setting that named it, for logs and `doctor`.
        source: &'static str,
    },
}

/// A base URL setting must be `http(s)://…`.
fn check_base_url(name: &'static str, url: &str) -> Result<(), ConfigError> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    match rest {
        Some(r) if !r.is_empty() && !r.bytes().any(|b| b.is_ascii_whitespace()) => Ok(()),
        _ => Err(invalid(
            name,
            format!("{url:?}: expected http(s)://host[:port]"),
        )),
    }
}

/// The on-disk TOML shape; every field optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    bind: Option<String>,
    data_dir: Option<PathBuf>,
    database_url: Option<String>,
    storage_root: Option<PathBuf>,
    default_quota: Option<toml::Value>,
    max_file_size: Option<toml::Value>,
    jwt_public_key: Option<Secret>,
    jwks_url: Option<String>,
    clerk_secret_key: Option<Secret>,
    clerk_publishable_key: Option<String>,
    clerk_api_url: Option<String>,
    clerk_frontend_api_url: Option<String>,
    jwt_issuer: Option<String>,
    authorized_parties: Option<Vec<String>>,
    admin_token: Option<Secret>,
    signing_secret: Option<Secret>,
    cors_origins: Option<Vec<String>>,
    clamd: Option<String>,
    blob_store: Option<BlobBackend>,
    s3_bucket: Option<String>,
    s3_endpoint: Option<String>,
    s3_region: Option<String>,
    s3_prefix: Option<String>,
    s3_downloads: Option<String>,
    direct_io: Option<String>,
    upload_buffer: Option<toml::Value>,
    accel_redirect: Option<String>,
    rate_limit_user_per_sec: Option<u32>,
    rate_limit_ip_per_sec: Option<u32>,
    upload_expiry_secs: Option<u64>,
    reservation_ttl_secs: Option<u64>,
    allowed_mime: Option<Vec<String>>,
    log_json: Option<bool>,
    thumbnail_max_side: Option<u32>,
    job_workers: Option<usize>,
    cleanup_interval_secs: Option<u64>,
    audit_interval_secs: Option<u64>,
    #[serde(default)]
    limits: FileLimits,
    #[serde(default)]
    webhook: FileWebhook,
}

/// `[webhook]` in the TOML file; every field optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileWebhook {
    url: Option<String>,
    secret: Option<Secret>,
    retry_secs: Option<u64>,
    backoff_base_ms: Option<u64>,
    backoff_max_ms: Option<u64>,
    connect_timeout_ms: Option<u64>,
    timeout_ms: Option<u64>,
    concurrency: Option<u64>,
    poll_ms: Option<u64>,
    events_retention_secs: Option<u64>,
}

/// A whole number: the variable `name`, else the config file's `file`,
/// else `default`.
fn number(
    env_any: &dyn Fn(&[&str]) -> Option<String>,
    name: &'static str,
    file: Option<u64>,
    default: u64,
) -> Result<u64, ConfigError> {
    match env_any(&[name]) {
        Some(s) => s
            .trim()
            .parse::<u64>()
            .map_err(|e| invalid(name, format!("{s}: {e}"))),
        None => Ok(file.unwrap_or(default)),
    }
}

/// Reads `[webhook]` and the `STOWAGE_WEBHOOK_*` variables.
fn webhook_from(
    fw: &FileWebhook,
    env_any: &dyn Fn(&[&str]) -> Option<String>,
) -> Result<WebhookConfig, ConfigError> {
    let d = WebhookConfig::default();
    let n = |name, file, default| number(env_any, name, file, default);
    let ms = |name: &'static str, file: Option<u64>, default: Duration| {
        let v = n(name, file, default.as_millis() as u64)?;
        if v == 0 {
            return Err(invalid(name, "must be at least 1"));
        }
        Ok(Duration::from_millis(v))
    };
    let w = WebhookConfig {
        url: env_any(&["STOWAGE_WEBHOOK_URL"]).or(fw.url.clone()),
        secret: env_any(&["STOWAGE_WEBHOOK_SECRET"])
            .map(Secret)
            .or(fw.secret.clone()),
        retry_for: Duration::from_secs(n(
            "STOWAGE_WEBHOOK_RETRY_SECS",
            fw.retry_secs,
            d.retry_for.as_secs(),
        )?),
        backoff_base: ms(
            "STOWAGE_WEBHOOK_BACKOFF_BASE_MS",
            fw.backoff_base_ms,
            d.backoff_base,
        )?,
        backoff_max: ms(
            "STOWAGE_WEBHOOK_BACKOFF_MAX_MS",
            fw.backoff_max_ms,
            d.backoff_max,
        )?,
        connect_timeout: ms(
            "STOWAGE_WEBHOOK_CONNECT_TIMEOUT_MS",
            fw.connect_timeout_ms,
            d.connect_timeout,
        )?,
        timeout: ms("STOWAGE_WEBHOOK_TIMEOUT_MS", fw.timeout_ms, d.timeout)?,
        concurrency: n(
            "STOWAGE_WEBHOOK_CONCURRENCY",
            fw.concurrency,
            d.concurrency as u64,
        )?
        .clamp(1, 256) as usize,
        poll: ms("STOWAGE_WEBHOOK_POLL_MS", fw.poll_ms, d.poll)?,
        retention: Duration::from_secs(n(
            "STOWAGE_EVENTS_RETENTION_SECS",
            fw.events_retention_secs,
            d.retention.as_secs(),
        )?),
    };
    if let Some(url) = &w.url {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(invalid(
                "STOWAGE_WEBHOOK_URL",
                format!("{url:?}: expected an http:// or https:// URL"),
            ));
        }
        if w.secret.as_ref().map_or(true, |s| s.expose().is_empty()) {
            return Err(invalid(
                "STOWAGE_WEBHOOK_SECRET",
                "required when STOWAGE_WEBHOOK_URL is set: receivers check every event's signature with it",
            ));
        }
    }
    Ok(w)
}

/// `[limits]` in the TOML file; every field optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLimits {
    header_timeout_secs: Option<u64>,
    keepalive_timeout_secs: Option<u64>,
    body_idle_timeout_secs: Option<u64>,
    max_connections: Option<u64>,
    max_connections_per_ip: Option<u64>,
    trusted_proxies: Option<Vec<String>>,
    multipart_header_bytes: Option<toml::Value>,
    multipart_max_parts: Option<u64>,
    multipart_field_bytes: Option<toml::Value>,
    json_body_bytes: Option<toml::Value>,
    max_unfinished_uploads: Option<u64>,
    jwks_refresh_secs: Option<u64>,
    jwks_timeout_secs: Option<u64>,
    clamd_timeout_secs: Option<u64>,
    media_timeout_secs: Option<u64>,
    media_concurrency: Option<u64>,
    ffmpeg_memory_bytes: Option<toml::Value>,
    ffmpeg_threads: Option<u64>,
    readyz_cache_ms: Option<u64>,
    shutdown_grace_secs: Option<u64>,
    shutdown_timeout_secs: Option<u64>,
    heartbeat_interval_secs: Option<u64>,
    node_dead_after_secs: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("invalid value for {name}: {message}")]
    Invalid { name: &'static str, message: String },
}

fn invalid(name: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        name,
        message: message.into(),
    }
}

fn size_value(name: &'static str, v: &toml::Value) -> Result<u64, ConfigError> {
    match v {
        toml::Value::Integer(i) if *i >= 0 => Ok(*i as u64),
        toml::Value::String(s) => parse_size(s).map_err(|e| invalid(name, e)),
        _ => Err(invalid(
            name,
            "expected a byte count or a size like \"10GiB\"",
        )),
    }
}

fn comma_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect()
}

/// A CORS origin must be exactly `scheme://host[:port]`: credentials are
/// allowed, so a wildcard would hand every site the user's session.
fn check_origin(origin: &str) -> Result<(), ConfigError> {
    let bad = |why: &str| invalid("STOWAGE_CORS_ORIGINS", format!("{origin:?}: {why}"));
    if origin.contains('*') {
        return Err(bad(
            "wildcards are not allowed with credentials; list each origin",
        ));
    }
    let rest = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
        .ok_or_else(|| bad("expected http://host[:port] or https://host[:port]"))?;
    if rest.is_empty()
        || rest.contains('/')
        || !rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
    {
        return Err(bad("expected scheme://host[:port], with no path"));
    }
    Ok(())
}

/// Reads the `[limits]` table and the `STOWAGE_*` limit variables.
fn limits_from(
    fl: &FileLimits,
    env_any: &dyn Fn(&[&str]) -> Option<String>,
) -> Result<Limits, ConfigError> {
    let d = Limits::default();
    // A whole number from the environment, else the file, else the default.
    let n = |name, file, default| number(env_any, name, file, default);
    let size = |name: &'static str,
                file: &Option<toml::Value>,
                default: u64|
     -> Result<u64, ConfigError> {
        match env_any(&[name]) {
            Some(s) => parse_size(&s).map_err(|e| invalid(name, e)),
            None => match file {
                Some(v) => size_value(name, v),
                None => Ok(default),
            },
        }
    };
    let secs =
        |name, file, default: Duration| n(name, file, default.as_secs()).map(Duration::from_secs);
    let positive = |name: &'static str, v: u64| -> Result<u64, ConfigError> {
        if v == 0 {
            Err(invalid(name, "must be at least 1"))
        } else {
            Ok(v)
        }
    };
    let trusted_proxies = match env_any(&["STOWAGE_TRUSTED_PROXIES"]) {
        Some(s) => comma_list(&s),
        None => fl.trusted_proxies.clone().unwrap_or_default(),
    }
    .iter()
    .map(|p| IpNet::parse(p).map_err(|e| invalid("STOWAGE_TRUSTED_PROXIES", e)))
    .collect::<Result<Vec<_>, _>>()?;
    let l = Limits {
        header_timeout: secs(
            "STOWAGE_HEADER_TIMEOUT_SECS",
            fl.header_timeout_secs,
            d.header_timeout,
        )?,
        keepalive_timeout: secs(
            "STOWAGE_KEEPALIVE_TIMEOUT_SECS",
            fl.keepalive_timeout_secs,
            d.keepalive_timeout,
        )?,
        body_idle_timeout: secs(
            "STOWAGE_BODY_IDLE_TIMEOUT_SECS",
            fl.body_idle_timeout_secs,
            d.body_idle_timeout,
        )?,
        max_connections: positive(
            "STOWAGE_MAX_CONNECTIONS",
            n(
                "STOWAGE_MAX_CONNECTIONS",
                fl.max_connections,
                d.max_connections as u64,
            )?,
        )? as usize,
        max_connections_per_ip: positive(
            "STOWAGE_MAX_CONNECTIONS_PER_IP",
            n(
                "STOWAGE_MAX_CONNECTIONS_PER_IP",
                fl.max_connections_per_ip,
                d.max_connections_per_ip as u64,
            )?,
        )? as usize,
        trusted_proxies,
        multipart_header_bytes: positive(
            "STOWAGE_MULTIPART_HEADER_BYTES",
            size(
                "STOWAGE_MULTIPART_HEADER_BYTES",
                &fl.multipart_header_bytes,
                d.multipart_header_bytes as u64,
            )?,
        )? as usize,
        multipart_max_parts: positive(
            "STOWAGE_MULTIPART_MAX_PARTS",
            n(
                "STOWAGE_MULTIPART_MAX_PARTS",
                fl.multipart_max_parts,
                d.multipart_max_parts as u64,
            )?,
        )? as usize,
        multipart_field_bytes: positive(
            "STOWAGE_MULTIPART_FIELD_BYTES",
            size(
                "STOWAGE_MULTIPART_FIELD_BYTES",
                &fl.multipart_field_bytes,
                d.multipart_field_bytes as u64,
            )?,
        )? as usize,
        json_body_bytes: positive(
            "STOWAGE_JSON_BODY_BYTES",
            size(
                "STOWAGE_JSON_BODY_BYTES",
                &fl.json_body_bytes,
                d.json_body_bytes as u64,
            )?,
        )? as usize,
        max_unfinished_uploads: positive(
            "STOWAGE_MAX_UNFINISHED_UPLOADS",
            n(
                "STOWAGE_MAX_UNFINISHED_UPLOADS",
                fl.max_unfinished_uploads,
                d.max_unfinished_uploads,
            )?,
        )?,
        jwks_refresh: secs(
            "STOWAGE_JWKS_REFRESH_SECS",
            fl.jwks_refresh_secs,
            d.jwks_refresh,
        )?,
        jwks_timeout: secs(
            "STOWAGE_JWKS_TIMEOUT_SECS",
            fl.jwks_timeout_secs,
            d.jwks_timeout,
        )?,
        clamd_timeout: secs(
            "STOWAGE_CLAMD_TIMEOUT_SECS",
            fl.clamd_timeout_secs,
            d.clamd_timeout,
        )?,
        media_timeout: secs(
            "STOWAGE_MEDIA_TIMEOUT_SECS",
            fl.media_timeout_secs,
            d.media_timeout,
        )?,
        media_concurrency: positive(
            "STOWAGE_MEDIA_CONCURRENCY",
            n(
                "STOWAGE_MEDIA_CONCURRENCY",
                fl.media_concurrency,
                d.media_concurrency as u64,
            )?,
        )? as usize,
        ffmpeg_memory_bytes: size(
            "STOWAGE_FFMPEG_MEMORY_BYTES",
            &fl.ffmpeg_memory_bytes,
            d.ffmpeg_memory_bytes,
        )?,
        ffmpeg_threads: positive(
            "STOWAGE_FFMPEG_THREADS",
            n(
                "STOWAGE_FFMPEG_THREADS",
                fl.ffmpeg_threads,
                d.ffmpeg_threads as u64,
            )?,
        )? as u32,
        readyz_cache: Duration::from_millis(n(
            "STOWAGE_READYZ_CACHE_MS",
            fl.readyz_cache_ms,
            d.readyz_cache.as_millis() as u64,
        )?),
        shutdown_grace: secs(
            "STOWAGE_SHUTDOWN_GRACE_SECS",
            fl.shutdown_grace_secs,
            d.shutdown_grace,
        )?,
        shutdown_timeout: secs(
            "STOWAGE_SHUTDOWN_TIMEOUT_SECS",
            fl.shutdown_timeout_secs,
            d.shutdown_timeout,
        )?,
        heartbeat_interval: secs(
            "STOWAGE_HEARTBEAT_INTERVAL_SECS",
            fl.heartbeat_interval_secs,
            d.heartbeat_interval,
        )?,
        node_dead_after: secs(
            "STOWAGE_NODE_DEAD_AFTER_SECS",
            fl.node_dead_after_secs,
            d.node_dead_after,
        )?,
    };
    for (name, t) in [
        ("STOWAGE_HEADER_TIMEOUT_SECS", l.header_timeout),
        ("STOWAGE_KEEPALIVE_TIMEOUT_SECS", l.keepalive_timeout),
        ("STOWAGE_BODY_IDLE_TIMEOUT_SECS", l.body_idle_timeout),
        ("STOWAGE_JWKS_TIMEOUT_SECS", l.jwks_timeout),
        ("STOWAGE_CLAMD_TIMEOUT_SECS", l.clamd_timeout),
        ("STOWAGE_MEDIA_TIMEOUT_SECS", l.media_timeout),
        ("STOWAGE_HEARTBEAT_INTERVAL_SECS", l.heartbeat_interval),
    ] {
        if t.is_zero() {
            return Err(invalid(name, "must be at least 1 second"));
        }
    }
    // The last seconds before the exit deadline are for closing down
    // (releasing what is left, leaving the node table).
    if l.shutdown_timeout < l.shutdown_grace + Duration::from_secs(2) {
        return Err(invalid(
            "STOWAGE_SHUTDOWN_TIMEOUT_SECS",
            "must be at least 2 seconds more than STOWAGE_SHUTDOWN_GRACE_SECS",
        ));
    }
    // One late heartbeat must not make a live process look dead.
    if l.node_dead_after < 2 * l.heartbeat_interval {
        return Err(invalid(
            "STOWAGE_NODE_DEAD_AFTER_SECS",
            "must be at least twice STOWAGE_HEARTBEAT_INTERVAL_SECS",
        ));
    }
    Ok(l)
}

impl Config {
    /// Loads `path` (or `./stowage.toml` when present), then applies the
    /// environment.
    pub fn load(path: Option<&std::path::Path>) -> Result<Config, ConfigError> {
        let default_path = PathBuf::from("stowage.toml");
        let file = match path {
            Some(p) => Some(p.to_path_buf()),
            None if default_path.exists() => Some(default_path),
            None => None,
        };
        let fc = match file {
            Some(path) => {
                let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                toml::from_str::<FileConfig>(&text)
                    .map_err(|source| ConfigError::Parse { path, source })?
            }
            None => FileConfig::default(),
        };
        Self::from_parts(fc, &|name| std::env::var(name).ok())
    }

    /// Defaults only, rooted at `data_dir`, ignoring the environment (tests,
    /// embedding).
    pub fn defaults(data_dir: PathBuf) -> Config {
        let fc = FileConfig {
            data_dir: Some(data_dir),
            ..Default::default()
        };
        Self::from_parts(fc, &|_| None).expect("defaults are valid")
    }

    fn from_parts(
        fc: FileConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        // Reads the first set, non-empty variable among `names`.
        let env_any = |names: &[&str]| -> Option<String> {
            names
                .iter()
                .find_map(|n| env(n).filter(|v| !v.trim().is_empty()))
        };
        let bind_str = env_any(&["STOWAGE_BIND"])
            .or_else(|| env_any(&["PORT"]).map(|p| format!("127.0.0.1:{p}")))
            .or(fc.bind)
            .unwrap_or_else(|| "127.0.0.1:3001".into());
        let bind: SocketAddr = bind_str
            .parse()
            .map_err(|e| invalid("STOWAGE_BIND", format!("{bind_str}: {e}")))?;

        let data_dir = env_any(&["STOWAGE_DATA_DIR"])
            .map(PathBuf::from)
            .or(fc.data_dir)
            .unwrap_or_else(|| PathBuf::from("data"));
        let database_url = env_any(&["STOWAGE_DATABASE_URL", "DATABASE_URL"])
            .or(fc.database_url)
            .unwrap_or_else(|| format!("sqlite://{}/stowage.db", data_dir.display()));
        let storage_root = env_any(&["STOWAGE_STORAGE_ROOT", "USER_STORAGE_ROOT"])
            .map(PathBuf::from)
            .or(fc.storage_root)
            .unwrap_or_else(|| data_dir.join("users"));

        let default_quota = match env_any(&["STOWAGE_DEFAULT_QUOTA", "MAX_STORAGE_PER_USER"]) {
            Some(s) => parse_size(&s).map_err(|e| invalid("STOWAGE_DEFAULT_QUOTA", e))?,
            None => match &fc.default_quota {
                Some(v) => size_value("default_quota", v)?,
                None => 10 * 1024 * 1024 * 1024,
            },
        };
        let max_file_size = match env_any(&["STOWAGE_MAX_FILE_SIZE"]) {
            Some(s) => parse_size(&s).map_err(|e| invalid("STOWAGE_MAX_FILE_SIZE", e))?,
            None => match &fc.max_file_size {
                Some(v) => size_value("max_file_size", v)?,
                None => 2 * 1024 * 1024 * 1024,
            },
        };

        let blob_store = match env_any(&["STOWAGE_BLOB_STORE"]) {
            Some(s) => match s.as_str() {
                "local" => BlobBackend::Local,
                "s3" => BlobBackend::S3,
                other => {
                    return Err(invalid(
                        "STOWAGE_BLOB_STORE",
                        format!("{other}: expected local or s3"),
                    ))
                }
            },
            None => fc.blob_store.unwrap_or(BlobBackend::Local),
        };
        let s3_downloads = env_any(&["STOWAGE_S3_DOWNLOADS"])
            .or(fc.s3_downloads)
            .unwrap_or_else(|| "proxy".into());
        let s3_downloads_redirect = match s3_downloads.as_str() {
            "proxy" => false,
            "redirect" => true,
            other => {
                return Err(invalid(
                    "STOWAGE_S3_DOWNLOADS",
                    format!("{other}: expected proxy or redirect"),
                ))
            }
        };

        let direct_io = match env_any(&["STOWAGE_DIRECT_IO"])
            .or(fc.direct_io)
            .as_deref()
            .unwrap_or("auto")
        {
            "auto" => true,
            "off" => false,
            other => {
                return Err(invalid(
                    "STOWAGE_DIRECT_IO",
                    format!("{other}: expected auto or off"),
                ))
            }
        };

        let upload_buffer = match env_any(&["STOWAGE_UPLOAD_BUFFER"]) {
            Some(s) => parse_size(&s).map_err(|e| invalid("STOWAGE_UPLOAD_BUFFER", e))?,
            None => match &fc.upload_buffer {
                Some(v) => size_value("upload_buffer", v)?,
                None => 256 * 1024,
            },
        };
        if !(16 * 1024..=16 * 1024 * 1024).contains(&upload_buffer) {
            return Err(invalid(
                "STOWAGE_UPLOAD_BUFFER",
                format!("{upload_buffer}: expected 16 KiB to 16 MiB"),
            ));
        }

        let n = |name, file, default| number(&env_any, name, file, default);
        let secs = |name, file, default| n(name, file, default).map(Duration::from_secs);
        let limits = limits_from(&fc.limits, &env_any)?;
        let webhook = webhook_from(&fc.webhook, &env_any)?;

        let cfg = Config {
            bind,
            database_url,
            storage_root,
            default_quota,
            max_file_size,
            jwt_public_key: env_any(&["STOWAGE_JWT_PUBLIC_KEY", "CLERK_JWT_KEY"])
                .map(Secret)
                .or(fc.jwt_public_key),
            jwks_url: env_any(&["STOWAGE_JWKS_URL"]).or(fc.jwks_url),
            clerk_secret_key: env_any(&["STOWAGE_CLERK_SECRET_KEY", "CLERK_SECRET_KEY"])
                .map(|s| Secret(s.trim().to_string()))
                .or(fc.clerk_secret_key),
            clerk_publishable_key: env_any(&[
                "STOWAGE_CLERK_PUBLISHABLE_KEY",
                "CLERK_PUBLISHABLE_KEY",
            ])
            .or(fc.clerk_publishable_key),
            clerk_api_url: env_any(&["STOWAGE_CLERK_API_URL"]).or(fc.clerk_api_url),
            clerk_frontend_api_url: env_any(&["STOWAGE_CLERK_FRONTEND_API_URL"])
                .or(fc.clerk_frontend_api_url),
            jwt_issuer: env_any(&["STOWAGE_JWT_ISSUER"]).or(fc.jwt_issuer),
            authorized_parties: env_any(&["STOWAGE_AUTHORIZED_PARTIES"])
                .map(|s| comma_list(&s))
                .or(fc.authorized_parties)
                .unwrap_or_default(),
            admin_token: env_any(&["STOWAGE_ADMIN_TOKEN"])
                .map(Secret)
                .or(fc.admin_token),
            signing_secret: env_any(&["STOWAGE_SIGNING_SECRET"])
                .map(Secret)
                .or(fc.signing_secret),
            cors_origins: env_any(&["STOWAGE_CORS_ORIGINS"])
                .map(|s| comma_list(&s))
                .or(fc.cors_origins)
                .unwrap_or_default(),
            clamd: env_any(&["STOWAGE_CLAMD"]).or(fc.clamd),
            blob_store,
            s3_bucket: env_any(&["STOWAGE_S3_BUCKET"]).or(fc.s3_bucket),
            s3_endpoint: env_any(&["STOWAGE_S3_ENDPOINT"]).or(fc.s3_endpoint),
            s3_region: env_any(&["STOWAGE_S3_REGION"])
                .or(fc.s3_region)
                .unwrap_or_else(|| "us-east-1".into()),
            s3_prefix: env_any(&["STOWAGE_S3_PREFIX"])
                .or(fc.s3_prefix)
                .unwrap_or_default(),
            s3_access_key_id: env_any(&["AWS_ACCESS_KEY_ID"]),
            s3_secret_access_key: env_any(&["AWS_SECRET_ACCESS_KEY"]).map(Secret),
            s3_downloads_redirect,
            direct_io,
            upload_buffer,
            accel_redirect: env_any(&["STOWAGE_ACCEL_REDIRECT"])
                .or(fc.accel_redirect)
                .filter(|s| !s.is_empty()),
            rate_limit_user_per_sec: n(
                "STOWAGE_RATE_LIMIT_USER",
                fc.rate_limit_user_per_sec.map(u64::from),
                50,
            )? as u32,
            rate_limit_ip_per_sec: n(
                "STOWAGE_RATE_LIMIT_IP",
                fc.rate_limit_ip_per_sec.map(u64::from),
                200,
            )? as u32,
            upload_expiry: secs(
                "STOWAGE_UPLOAD_EXPIRY_SECS",
                fc.upload_expiry_secs,
                24 * 3600,
            )?,
            reservation_ttl: secs(
                "STOWAGE_RESERVATION_TTL_SECS",
                fc.reservation_ttl_secs,
                3600,
            )?,
            allowed_mime: env_any(&["STOWAGE_ALLOWED_MIME"])
                .map(|s| comma_list(&s))
                .or(fc.allowed_mime),
            log_json: env_any(&["STOWAGE_LOG_JSON"])
                .map(|v| v == "1" || v == "true")
                .or(fc.log_json)
                .unwrap_or(false),
            thumbnail_max_side: fc.thumbnail_max_side.unwrap_or(320),
            job_workers: fc.job_workers.unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(2)
            }),
            cleanup_interval: secs(
                "STOWAGE_CLEANUP_INTERVAL_SECS",
                fc.cleanup_interval_secs,
                15 * 60,
            )?,
            audit_interval: secs(
                "STOWAGE_AUDIT_INTERVAL_SECS",
                fc.audit_interval_secs,
                6 * 3600,
            )?,
            data_dir,
            limits,
            webhook,
        };
        if cfg.rate_limit_ip_per_sec == 0 || cfg.rate_limit_user_per_sec == 0 {
            return Err(invalid("rate limits", "must be at least 1 per second"));
        }
        for origin in &cfg.cors_origins {
            check_origin(origin)?;
        }
        // Malformed Clerk keys or URLs stop start-up here, with the name.
        cfg.token_keys()?;
        if cfg.blob_store == BlobBackend::S3 && cfg.s3_bucket.is_none() {
            return Err(invalid(
                "STOWAGE_S3_BUCKET",
                "required when STOWAGE_BLOB_STORE=s3",
            ));
        }
        if let Some(prefix) = &cfg.accel_redirect {
            if cfg.blob_store != BlobBackend::Local {
                return Err(invalid(
                    "STOWAGE_ACCEL_REDIRECT",
                    "needs the local volume (STOWAGE_BLOB_STORE=local): nginx reads the files \
                     from the storage root; with s3 use STOWAGE_S3_DOWNLOADS=redirect",
                ));
            }
            let ok = prefix.len() > 1
                && prefix.starts_with('/')
                && prefix.ends_with('/')
                && prefix
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"/_-.~".contains(&b))
                && !prefix.split('/').any(|seg| seg == "." || seg == "..");
            if !ok {
                return Err(invalid(
                    "STOWAGE_ACCEL_REDIRECT",
                    format!(
                        "{prefix:?}: expected the path of an nginx internal location, \
                         starting and ending with / (like /_stowage_blobs/)"
                    ),
                ));
            }
        }
        Ok(cfg)
    }

    /// How to reach the object store (meaningful with a bucket set).
    pub fn s3_options(&self) -> crate::blob::s3::S3Options {
        crate::blob::s3::S3Options {
            bucket: self.s3_bucket.clone().unwrap_or_default(),
            endpoint: self.s3_endpoint.clone(),
            region: self.s3_region.clone(),
            prefix: self.s3_prefix.clone(),
            access_key_id: self.s3_access_key_id.clone(),
            secret_access_key: self
                .s3_secret_access_key
                .as_ref()
                .map(|s| s.expose().to_string()),
            scratch: self.s3_spool_dir(),
        }
    }

    /// Where the object store spools parts of uploads in flight: inside the
    /// volume's temp directory (a local disk in S3 mode too).
    pub fn s3_spool_dir(&self) -> PathBuf {
        self.storage_root.join(".tmp").join("s3-spool")
    }

    /// True when real token verification is configured (a PEM, a JWKS URL
    /// or a Clerk key).
    pub fn has_real_auth(&self) -> bool {
        self.jwt_public_key.is_some()
            || self.jwks_url.is_some()
            || self.clerk_secret_key.is_some()
            || self.clerk_publishable_key.is_some()
    }

    /// The Clerk Frontend API base URL in effect: the override, else
    /// `https://<host>` of the publishable key. A malformed publishable key
    /// is an error even when overridden.
    pub fn clerk_frontend_api(&self) -> Result<Option<String>, ConfigError> {
        let derived = match &self.clerk_publishable_key {
            Some(pk) => Some(format!(
                "https://{}",
                crate::auth::clerk::frontend_api_host(pk)
                    .map_err(|e| invalid("CLERK_PUBLISHABLE_KEY", e))?
            )),
            None => None,
        };
        match &self.clerk_frontend_api_url {
            Some(url) => {
                check_base_url("STOWAGE_CLERK_FRONTEND_API_URL", url)?;
                Ok(Some(url.trim_end_matches('/').to_string()))
            }
            None => Ok(derived),
        }
    }

    /// Where session-token keys come from. The first configured of: the PEM
    /// (`STOWAGE_JWT_PUBLIC_KEY`/`CLERK_JWT_KEY`, networkless), the JWKS URL
    /// (`STOWAGE_JWKS_URL`), Clerk's Backend API with the secret key, the
    /// Frontend API the publishable key names. Explicit settings win over
    /// derived ones, and the authenticated Backend API over the public
    /// Frontend API; see docs/configuration.md.
    pub fn token_keys(&self) -> Result<TokenKeys, ConfigError> {
        if let Some(sk) = &self.clerk_secret_key {
            crate::auth::clerk::check_secret_key(sk.expose())
                .map_err(|e| invalid("CLERK_SECRET_KEY", e))?;
        }
        if let Some(url) = &self.clerk_api_url {
            check_base_url("STOWAGE_CLERK_API_URL", url)?;
        }
        if let Some(url) = &self.jwks_url {
            check_base_url("STOWAGE_JWKS_URL", url)?;
        }
        let frontend = self.clerk_frontend_api()?;
        if let Some(pem) = &self.jwt_public_key {
            return Ok(TokenKeys::Pem(pem.clone()));
        }
        if let Some(url) = &self.jwks_url {
            return Ok(TokenKeys::Jwks {
                url: url.clone(),
                bearer: None,
                source: "STOWAGE_JWKS_URL",
            });
        }
        if let Some(sk) = &self.clerk_secret_key {
            let api = self
                .clerk_api_url
                .as_deref()
                .unwrap_or(crate::auth::clerk::DEFAULT_API_URL);
            return Ok(TokenKeys::Jwks {
                url: crate::auth::clerk::backend_jwks_url(api),
                bearer: Some(sk.clone()),
                source: "CLERK_SECRET_KEY (Clerk Backend API)",
            });
        }
        if let Some(frontend) = frontend {
            return Ok(TokenKeys::Jwks {
                url: crate::auth::clerk::frontend_jwks_url(&frontend),
                bearer: None,
                source: "CLERK_PUBLISHABLE_KEY (Clerk Frontend API)",
            });
        }
        Ok(TokenKeys::None)
    }

    /// The `iss` every token must carry: `STOWAGE_JWT_ISSUER` when set, else
    /// the Clerk Frontend API URL when a publishable key (or its override)
    /// names one, whichever source supplies the keys; else none.
    pub fn token_issuer(&self) -> Result<Option<String>, ConfigError> {
        match &self.jwt_issuer {
            Some(iss) => Ok(Some(iss.clone())),
            None => self.clerk_frontend_api(),
        }
    }

    /// Development sign-in is allowed only without real auth and on loopback.
    pub fn dev_login(&self) -> bool {
        !self.has_real_auth() && self.bind.ip().is_loopback()
    }
}

/// Hides a password in a database URL for logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{}:***{}", &url[..s + 3], user, &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// Refuses to run a reachable server with no real authentication.
pub fn check_auth_safety(config: &Config) -> anyhow::Result<()> {
    if !config.has_real_auth() && !config.bind.ip().is_loopback() {
        anyhow::bail!(
            "refusing to listen on {} without authentication: set CLERK_SECRET_KEY or \
             CLERK_PUBLISHABLE_KEY, STOWAGE_JWT_PUBLIC_KEY (or CLERK_JWT_KEY) or \
             STOWAGE_JWKS_URL, or bind to 127.0.0.1 for development sign-in",
            config.bind
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_env(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_parts(FileConfig::default(), &move |name| {
            vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn limits_default_to_the_spec() {
        let c = with_env(&[]).unwrap();
        assert_eq!(c.limits, Limits::default());
        assert_eq!(c.limits.header_timeout, Duration::from_secs(10));
        assert_eq!(c.limits.max_connections_per_ip, 64);
        assert_eq!(c.limits.multipart_header_bytes, 16 * 1024);
        assert_eq!(c.limits.json_body_bytes, 64 * 1024);
        assert_eq!(c.limits.max_unfinished_uploads, 64);
        assert_eq!(c.limits.shutdown_grace, Duration::from_secs(10));
        assert_eq!(c.limits.shutdown_timeout, Duration::from_secs(15));
        assert_eq!(c.limits.heartbeat_interval, Duration::from_secs(5));
        assert_eq!(c.limits.node_dead_after, Duration::from_secs(30));
    }

    #[test]
    fn restart_deadlines_must_leave_room() {
        for (k, v) in [
            ("STOWAGE_SHUTDOWN_TIMEOUT_SECS", "11"),
            ("STOWAGE_HEARTBEAT_INTERVAL_SECS", "0"),
            ("STOWAGE_NODE_DEAD_AFTER_SECS", "9"),
        ] {
            let e = with_env(&[(k, v)]).unwrap_err().to_string();
            assert!(e.contains(k), "{k}={v}: {e}");
        }
        let c = with_env(&[
            ("STOWAGE_SHUTDOWN_GRACE_SECS", "0"),
            ("STOWAGE_SHUTDOWN_TIMEOUT_SECS", "2"),
            ("STOWAGE_HEARTBEAT_INTERVAL_SECS", "1"),
            ("STOWAGE_NODE_DEAD_AFTER_SECS", "2"),
        ])
        .unwrap();
        assert_eq!(c.limits.shutdown_grace, Duration::ZERO);
        assert_eq!(c.limits.node_dead_after, Duration::from_secs(2));
    }

    #[test]
    fn limits_read_the_environment_and_refuse_nonsense() {
        let c = with_env(&[
            ("STOWAGE_HEADER_TIMEOUT_SECS", "3"),
            ("STOWAGE_JSON_BODY_BYTES", "1KiB"),
            ("STOWAGE_TRUSTED_PROXIES", "10.0.0.0/8, ::1"),
        ])
        .unwrap();
        assert_eq!(c.limits.header_timeout, Duration::from_secs(3));
        assert_eq!(c.limits.json_body_bytes, 1024);
        assert_eq!(c.limits.trusted_proxies.len(), 2);
        for (k, v) in [
            ("STOWAGE_MAX_CONNECTIONS", "0"),
            ("STOWAGE_HEADER_TIMEOUT_SECS", "0"),
            ("STOWAGE_HEADER_TIMEOUT_SECS", "ten"),
            ("STOWAGE_TRUSTED_PROXIES", "10.0.0.0/33"),
            ("STOWAGE_TRUSTED_PROXIES", "proxy.local"),
        ] {
            let e = with_env(&[(k, v)]).unwrap_err().to_string();
            assert!(e.contains(k), "{k}={v}: {e}");
        }
    }

    #[test]
    fn a_wildcard_cors_origin_is_a_clean_error() {
        for bad in [
            "*",
            "https://*.example.com",
            "example.com",
            "https://a.com/path",
        ] {
            let e = with_env(&[("STOWAGE_CORS_ORIGINS", bad)])
                .unwrap_err()
                .to_string();
            assert!(e.contains("STOWAGE_CORS_ORIGINS"), "{bad}: {e}");
        }
        let ok = with_env(&[(
            "STOWAGE_CORS_ORIGINS",
            "https://app.example.com,http://localhost:5173",
        )])
        .unwrap();
        assert_eq!(ok.cors_origins.len(), 2);
    }

    /// `pk_test_` + base64 of `host$`, as Clerk writes them.
    fn publishable(host: &str) -> String {
        use base64::Engine;
        format!(
            "pk_test_{}",
            base64::engine::general_purpose::STANDARD.encode(format!("{host}$"))
        )
    }

    #[test]
    fn clerk_keys_name_their_endpoints_in_order() {
        let pk = publishable("happy-cat-12.clerk.accounts.dev");
        let sk = "sk_test_0123456789abcdefABCDEF";
        let jwks = |c: &Config| match c.token_keys().unwrap() {
            TokenKeys::Jwks { url, bearer, .. } => (url, bearer.map(|b| b.0)),
            other => panic!("{other:?}"),
        };

        // The publishable key alone: the Frontend API's JWKS, and its URL as `iss`.
        let c = with_env(&[("CLERK_PUBLISHABLE_KEY", &pk)]).unwrap();
        assert!(c.has_real_auth() && !c.dev_login());
        assert_eq!(
            jwks(&c),
            (
                "https://happy-cat-12.clerk.accounts.dev/.well-known/jwks.json".into(),
                None
            )
        );
        assert_eq!(
            c.token_issuer().unwrap().as_deref(),
            Some("https://happy-cat-12.clerk.accounts.dev")
        );

        // The secret key: the Backend API with it as the bearer; with the
        // publishable key too, `iss` is still the Frontend API.
        let c = with_env(&[("CLERK_SECRET_KEY", sk), ("CLERK_PUBLISHABLE_KEY", &pk)]).unwrap();
        assert_eq!(
            jwks(&c),
            ("https://api.clerk.com/v1/jwks".into(), Some(sk.to_string()))
        );
        assert_eq!(
            c.token_issuer().unwrap().as_deref(),
            Some("https://happy-cat-12.clerk.accounts.dev")
        );
        let c = with_env(&[("STOWAGE_CLERK_SECRET_KEY", sk)]).unwrap();
        assert!(c.has_real_auth());
        assert_eq!(c.token_issuer().unwrap(), None);

        // Overridden bases, and an explicit issuer.
        let c = with_env(&[
            ("CLERK_SECRET_KEY", sk),
            ("STOWAGE_CLERK_API_URL", "http://127.0.0.1:9/"),
        ])
        .unwrap();
        assert_eq!(jwks(&c).0, "http://127.0.0.1:9/v1/jwks");
        let c = with_env(&[
            ("STOWAGE_CLERK_PUBLISHABLE_KEY", &pk),
            ("STOWAGE_CLERK_FRONTEND_API_URL", "http://127.0.0.1:8"),
            ("STOWAGE_JWT_ISSUER", "https://issuer.example.com"),
        ])
        .unwrap();
        assert_eq!(jwks(&c).0, "http://127.0.0.1:8/.well-known/jwks.json");
        assert_eq!(
            c.token_issuer().unwrap().as_deref(),
            Some("https://issuer.example.com")
        );

        // Explicit settings win: STOWAGE_JWKS_URL over the Clerk keys, the
        // PEM over everything.
        let c = with_env(&[
            ("CLERK_SECRET_KEY", sk),
            ("STOWAGE_JWKS_URL", "https://idp.example.com/jwks"),
        ])
        .unwrap();
        assert_eq!(jwks(&c), ("https://idp.example.com/jwks".into(), None));
        let c = with_env(&[("CLERK_SECRET_KEY", sk), ("CLERK_JWT_KEY", "PEM")]).unwrap();
        assert!(matches!(c.token_keys().unwrap(), TokenKeys::Pem(_)));

        // Nothing configured: development sign-in.
        let c = with_env(&[]).unwrap();
        assert!(matches!(c.token_keys().unwrap(), TokenKeys::None));
        assert!(!c.has_real_auth());
    }

    #[test]
    fn malformed_clerk_keys_stop_start_up_without_printing_them() {
        let secret_tail = "s3cr3tPart";
        for (k, v) in [
            ("CLERK_SECRET_KEY", format!("pk_test_{secret_tail}")),
            ("CLERK_SECRET_KEY", format!("sk_test_{secret_tail} x")),
            ("STOWAGE_CLERK_SECRET_KEY", secret_tail.to_string()),
            ("CLERK_PUBLISHABLE_KEY", format!("pk_test_{secret_tail}")),
            ("STOWAGE_CLERK_PUBLISHABLE_KEY", "pk_live_".to_string()),
            ("CLERK_PUBLISHABLE_KEY", publishable("bad/host")),
            ("STOWAGE_CLERK_API_URL", "api.clerk.com".to_string()),
            ("STOWAGE_CLERK_FRONTEND_API_URL", "ftp://x".to_string()),
        ] {
            let with = [(k, v.as_str()), ("CLERK_SECRET_KEY", "sk_test_ok")];
            let vars = if k.contains("SECRET") {
                &with[..1]
            } else {
                &with[..]
            };
            let e = with_env(vars).unwrap_err().to_string();
            assert!(e.contains(k.trim_start_matches("STOWAGE_")), "{k}={v}: {e}");
            assert!(!e.contains(secret_tail), "{k}: the key is echoed: {e}");
        }
        // And the secret key never shows in the configuration's Debug.
        let c = with_env(&[("CLERK_SECRET_KEY", "sk_live_topsecret")]).unwrap();
        assert!(!format!("{c:?}").contains("topsecret"));
    }

    #[test]
    fn a_webhook_url_needs_a_secret() {
        let e = with_env(&[("STOWAGE_WEBHOOK_URL", "https://backend.example/hooks")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("STOWAGE_WEBHOOK_SECRET"), "{e}");
        let e = with_env(&[
            ("STOWAGE_WEBHOOK_URL", "ftp://backend.example/hooks"),
            ("STOWAGE_WEBHOOK_SECRET", "s"),
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("STOWAGE_WEBHOOK_URL"), "{e}");
        let ok = with_env(&[
            ("STOWAGE_WEBHOOK_URL", "https://backend.example/hooks"),
            ("STOWAGE_WEBHOOK_SECRET", "whsec"),
            ("STOWAGE_WEBHOOK_BACKOFF_BASE_MS", "20"),
        ])
        .unwrap();
        assert_eq!(ok.webhook.backoff_base, Duration::from_millis(20));
        assert_eq!(ok.webhook.retry_for, Duration::from_secs(86400));
        assert_eq!(ok.webhook.concurrency, 8);
        assert!(!format!("{:?}", ok.webhook).contains("whsec"));
    }

    #[test]
    fn direct_io_and_upload_buffer() {
        let c = with_env(&[]).unwrap();
        assert!(c.direct_io);
        assert_eq!(c.upload_buffer, 256 * 1024);
        let c = with_env(&[
            ("STOWAGE_DIRECT_IO", "off"),
            ("STOWAGE_UPLOAD_BUFFER", "1MiB"),
        ])
        .unwrap();
        assert!(!c.direct_io);
        assert_eq!(c.upload_buffer, 1024 * 1024);
        for (k, v) in [
            ("STOWAGE_DIRECT_IO", "yes"),
            ("STOWAGE_UPLOAD_BUFFER", "1KiB"),
            ("STOWAGE_UPLOAD_BUFFER", "1GiB"),
            ("STOWAGE_UPLOAD_BUFFER", "lots"),
        ] {
            let e = with_env(&[(k, v)]).unwrap_err().to_string();
            assert!(e.contains(k), "{k}={v}: {e}");
        }
    }

    #[test]
    fn accel_redirect_needs_the_local_volume_and_a_location_path() {
        let c = with_env(&[("STOWAGE_ACCEL_REDIRECT", "/_stowage_blobs/")]).unwrap();
        assert_eq!(c.accel_redirect.as_deref(), Some("/_stowage_blobs/"));
        assert_eq!(with_env(&[]).unwrap().accel_redirect, None);
        for bad in ["_blobs/", "/_blobs", "/", "/a/../b/", "/a b/", "/a?x/"] {
            let e = with_env(&[("STOWAGE_ACCEL_REDIRECT", bad)])
                .unwrap_err()
                .to_string();
            assert!(e.contains("STOWAGE_ACCEL_REDIRECT"), "{bad}: {e}");
        }
        let e = with_env(&[
            ("STOWAGE_ACCEL_REDIRECT", "/_stowage_blobs/"),
            ("STOWAGE_BLOB_STORE", "s3"),
            ("STOWAGE_S3_BUCKET", "b"),
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("local volume"), "{e}");
    }

    #[test]
    fn cidr_blocks_match_what_they_cover() {
        let net = IpNet::parse("10.1.0.0/16").unwrap();
        assert!(net.contains("10.1.200.3".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.0.9".parse().unwrap()));
        let one = IpNet::parse("::1").unwrap();
        assert!(one.contains("::1".parse().unwrap()));
        assert!(!one.contains("::2".parse().unwrap()));
        assert!(IpNet::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
    }
}
