//! Configuration: one typed struct built from defaults, then an optional TOML
//! file, then environment variables (the SPEC's names win over the file).
//!
//! Secrets are wrapped in [`Secret`] so that `Debug` never prints them.

use std::{fmt, net::SocketAddr, path::PathBuf, time::Duration};

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

        let num = |name: &'static str, v: Option<String>| -> Result<Option<u64>, ConfigError> {
            v.map(|s| s.parse::<u64>().map_err(|e| invalid(name, e.to_string())))
                .transpose()
        };

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
            rate_limit_user_per_sec: num(
                "STOWAGE_RATE_LIMIT_USER",
                env_any(&["STOWAGE_RATE_LIMIT_USER"]),
            )?
            .map(|v| v as u32)
            .or(fc.rate_limit_user_per_sec)
            .unwrap_or(50),
            rate_limit_ip_per_sec: num(
                "STOWAGE_RATE_LIMIT_IP",
                env_any(&["STOWAGE_RATE_LIMIT_IP"]),
            )?
            .map(|v| v as u32)
            .or(fc.rate_limit_ip_per_sec)
            .unwrap_or(200),
            upload_expiry: Duration::from_secs(
                num(
                    "STOWAGE_UPLOAD_EXPIRY_SECS",
                    env_any(&["STOWAGE_UPLOAD_EXPIRY_SECS"]),
                )?
                .or(fc.upload_expiry_secs)
                .unwrap_or(24 * 3600),
            ),
            reservation_ttl: Duration::from_secs(
                num(
                    "STOWAGE_RESERVATION_TTL_SECS",
                    env_any(&["STOWAGE_RESERVATION_TTL_SECS"]),
                )?
                .or(fc.reservation_ttl_secs)
                .unwrap_or(3600),
            ),
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
            cleanup_interval: Duration::from_secs(
                num(
                    "STOWAGE_CLEANUP_INTERVAL_SECS",
                    env_any(&["STOWAGE_CLEANUP_INTERVAL_SECS"]),
                )?
                .or(fc.cleanup_interval_secs)
                .unwrap_or(15 * 60),
            ),
            audit_interval: Duration::from_secs(
                num(
                    "STOWAGE_AUDIT_INTERVAL_SECS",
                    env_any(&["STOWAGE_AUDIT_INTERVAL_SECS"]),
                )?
                .or(fc.audit_interval_secs)
                .unwrap_or(6 * 3600),
            ),
            data_dir,
        };
        if cfg.rate_limit_ip_per_sec == 0 || cfg.rate_limit_user_per_sec == 0 {
            return Err(invalid("rate limits", "must be at least 1 per second"));
        }
        if cfg.blob_store == BlobBackend::S3 && cfg.s3_bucket.is_none() {
            return Err(invalid(
                "STOWAGE_S3_BUCKET",
                "required when STOWAGE_BLOB_STORE=s3",
            ));
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
        }
    }

    /// True when real token verification is configured.
    pub fn has_real_auth(&self) -> bool {
        self.jwt_public_key.is_some() || self.jwks_url.is_some()
    }

    /// Development sign-in is allowed only without real auth and on loopback.
    pub fn dev_login(&self) -> bool {
        !self.has_real_auth() && self.bind.ip().is_loopback()
    }
}
