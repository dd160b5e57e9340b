//! Start-up: builds the shared [`AppState`] from a [`Config`] and runs the
//! HTTP server on a listener handed in from outside (tests bind port 0),
//! until a shutdown future resolves.

use std::{future::Future, sync::Arc};

use anyhow::Context;
use tokio::net::TcpListener;

use crate::{
    auth::jwt::Verifier,
    blob::{local::LocalStore, s3::S3Store, BlobStore},
    config::{BlobBackend, Config},
    domain::filetype::DEFAULT_ALLOWED,
    http::ratelimit::RateLimits,
    meta::{self, FileRecord, MetaStore},
    scan::Scanner,
};

/// Everything a request handler needs; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub meta: Arc<dyn MetaStore>,
    pub blobs: Arc<dyn BlobStore>,
    /// Session token verifier; `None` in development sign-in mode.
    pub verifier: Option<Verifier>,
    /// HMAC key for signed URLs and development sessions.
    pub signing_key: Arc<Vec<u8>>,
    pub allowed_mime: Arc<Vec<String>>,
    pub limits: Arc<RateLimits>,
    pub scanner: Option<Scanner>,
    /// Wakes the background job workers after a commit enqueues work.
    pub jobs_notify: Arc<tokio::sync::Notify>,
    /// The last `/readyz` check, shared by concurrent callers.
    pub ready: Arc<crate::http::health::ReadyCache>,
    /// Media tools and the node's media concurrency limit.
    pub media: crate::jobs::media::MediaRuntime,
    /// tus requests writing on this process, so a later request for the
    /// same upload can end them at once (takeover).
    pub tus_writers: Arc<crate::http::tus::lease::Writers>,
}

impl AppState {
    /// Connects the stores and prepares auth. Does not migrate.
    pub async fn build(config: Config) -> anyhow::Result<AppState> {
        crate::telemetry::prometheus();
        let meta = meta::connect(&config.database_url)
            .await
            .with_context(|| format!("opening database {}", redact_url(&config.database_url)))?;
        let blobs: Arc<dyn BlobStore> = match config.blob_store {
            BlobBackend::Local => {
                Arc::new(LocalStore::open(&config.storage_root).with_context(|| {
                    format!("opening storage root {}", config.storage_root.display())
                })?)
            }
            BlobBackend::S3 => {
                let o = config.s3_options();
                Arc::new(S3Store::open(&o).with_context(|| {
                    format!(
                        "opening bucket {} at {}",
                        o.bucket,
                        o.endpoint.as_deref().unwrap_or("AWS")
                    )
                })?)
            }
        };
        let verifier = if let Some(pem) = &config.jwt_public_key {
            Some(
                Verifier::from_pem(
                    pem.expose(),
                    config.jwt_issuer.clone(),
                    config.authorized_parties.clone(),
                )
                .map_err(anyhow::Error::msg)?,
            )
        } else {
            config.jwks_url.as_ref().map(|url| {
                Verifier::from_jwks(
                    url.clone(),
                    config.jwt_issuer.clone(),
                    config.authorized_parties.clone(),
                    &config.limits,
                )
            })
        };
        let signing_key = match &config.signing_secret {
            Some(s) => s.expose().as_bytes().to_vec(),
            None => load_or_create_secret(&config.data_dir)?,
        };
        let allowed_mime = config
            .allowed_mime
            .clone()
            .unwrap_or_else(|| DEFAULT_ALLOWED.iter().map(|s| s.to_string()).collect());
        let limits = RateLimits::new(config.rate_limit_user_per_sec, config.rate_limit_ip_per_sec);
        let scanner = config
            .clamd
            .as_deref()
            .map(|c| Scanner::new(c).with_timeout(config.limits.clamd_timeout));
        let media = crate::jobs::media::MediaRuntime::new(&config.limits);
        Ok(AppState {
            config: Arc::new(config),
            meta,
            blobs,
            verifier,
            signing_key: Arc::new(signing_key),
            allowed_mime: Arc::new(allowed_mime),
            limits: Arc::new(limits),
            scanner,
            jobs_notify: Arc::new(tokio::sync::Notify::new()),
            ready: Arc::default(),
            media,
            tus_writers: Arc::default(),
        })
    }

    /// Runs after a file row commits: queues media work.
    pub async fn after_commit(&self, rec: &FileRecord) {
        if let Err(e) = crate::jobs::enqueue_media(self, rec).await {
            tracing::warn!(error = %e, file_id = %rec.id, "could not queue media processing");
        }
    }

    /// Development sign-in is on.
    pub fn dev_login(&self) -> bool {
        self.verifier.is_none() && self.config.dev_login()
    }
}

/// Reads `{data_dir}/signing.key`, creating it (0600, 32 random bytes) once.
fn load_or_create_secret(data_dir: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating data dir {}", data_dir.display()))?;
    let path = data_dir.join("signing.key");
    match std::fs::read_to_string(&path) {
        Ok(s) => return hex::decode(s.trim()).context("signing.key is not hex"),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("reading {}", path.display()))
        }
        Err(_) => {}
    }
    let key: [u8; 32] = rand::random();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(hex::encode(key).as_bytes())?;
    f.sync_all()?;
    Ok(key.to_vec())
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
            "refusing to listen on {} without authentication: set STOWAGE_JWT_PUBLIC_KEY \
             (or CLERK_JWT_KEY) or STOWAGE_JWKS_URL, or bind to 127.0.0.1 for development sign-in",
            config.bind
        );
    }
    Ok(())
}

/// Serves the API, web UI and background workers on `listener` until
/// `shutdown` resolves; in-flight requests are allowed to finish. The
/// connection limits of SPEC §9 are enforced by [`crate::http::server`].
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let workers = crate::jobs::spawn_workers(state.clone(), stop_rx.clone());
    let _scheduler = crate::ops::scheduler::spawn(state.clone(), stop_rx.clone());
    let app = crate::http::router(state.clone());
    let addr = listener.local_addr()?;
    if state.dev_login() {
        tracing::warn!(
            "DEVELOPMENT SIGN-IN is on: anyone who can reach http://{addr} may sign in as any user. \
             Requests that carry forwarding headers (Forwarded, X-Forwarded-*, X-Real-IP) or a \
             Host that is not a loopback name are refused, so a reverse proxy cannot publish it, \
             but any local process can still sign in. \
             Configure STOWAGE_JWT_PUBLIC_KEY or STOWAGE_JWKS_URL for real use."
        );
    }
    tracing::info!(%addr, database = state.meta.backend(), blobs = state.blobs.kind(), "stowage listening");
    let sweeper = state
        .limits
        .clone()
        .spawn_sweeper(crate::http::ratelimit::SWEEP_EVERY, stop_rx.clone());
    crate::http::server::serve(listener, app, &state.config.limits, async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    })
    .await?;
    let _ = sweeper.await;
    for w in workers {
        let _ = w.await;
    }
    Ok(())
}
