//! Start-up: builds the shared [`AppState`] from a [`Config`] and runs the
//! HTTP server on a listener handed in from outside (tests bind port 0),
//! until a shutdown future resolves.

use std::{future::Future, sync::Arc};

use anyhow::Context;
use tokio::net::TcpListener;

use crate::{
    auth::jwt::Verifier,
    blob::{local::LocalStore, s3::S3Store, BlobStore},
    config::{BlobBackend, Config, TokenKeys},
    domain::filetype::DEFAULT_ALLOWED,
    http::ratelimit::RateLimits,
    meta::{self, FileRecord, Holder, MetaStore},
    scan::Scanner,
};
use tokio_util::sync::CancellationToken;

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
    /// This process (its node and this start of it): the holder recorded on
    /// the reservations its requests take (see [`crate::node`]).
    pub holder: Holder,
    /// Cancelled when a stopping server stops waiting for requests in
    /// flight (SPEC §10): uploads still streaming end (a multipart upload is
    /// released, a tus PATCH keeps what it fsynced).
    pub shutdown: CancellationToken,
    /// Short clean-up tasks (releasing an abandoned upload) that a stopping
    /// server waits for before it exits.
    pub tasks: Background,
    /// tus requests writing on this process, so a later request for the
    /// same upload can end them at once (takeover).
    pub tus_writers: Arc<crate::http::tus::lease::Writers>,
}

/// Tracks short tasks spawned in the background so that shutdown can wait
/// for them: each holds a receiver of a watch channel, and the sender's
/// `closed()` fires when the last one has ended.
#[derive(Clone)]
pub struct Background {
    alive: Arc<tokio::sync::watch::Sender<()>>,
}

impl Default for Background {
    fn default() -> Self {
        Background {
            alive: Arc::new(tokio::sync::watch::channel(()).0),
        }
    }
}

impl Background {
    /// Spawns `task` on the current runtime, tracked.
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let guard = self.alive.subscribe();
        tokio::spawn(async move {
            task.await;
            drop(guard);
        });
    }

    /// Resolves when no tracked task is running.
    pub async fn idle(&self) {
        self.alive.closed().await
    }
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
        let issuer = config.token_issuer()?;
        let verifier = match config.token_keys()? {
            TokenKeys::None => None,
            TokenKeys::Pem(pem) => Some(
                Verifier::from_pem(pem.expose(), issuer, config.authorized_parties.clone())
                    .map_err(anyhow::Error::msg)?,
            ),
            TokenKeys::Jwks {
                url,
                bearer,
                source,
            } => {
                tracing::debug!(%url, source, issuer = ?issuer, "session-token keys from a JWKS");
                Some(Verifier::from_jwks(
                    url,
                    bearer,
                    issuer,
                    config.authorized_parties.clone(),
                    &config.limits,
                ))
            }
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
        let holder = Holder {
            // Written to the data dir by the first `serve` (see `node`).
            node: crate::node::read_id(&config.data_dir)?.unwrap_or_else(uuid::Uuid::now_v7),
            incarnation: uuid::Uuid::now_v7(),
        };
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
            holder,
            shutdown: CancellationToken::new(),
            tasks: Background::default(),
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
            "refusing to listen on {} without authentication: set CLERK_SECRET_KEY or \
             CLERK_PUBLISHABLE_KEY, STOWAGE_JWT_PUBLIC_KEY (or CLERK_JWT_KEY) or \
             STOWAGE_JWKS_URL, or bind to 127.0.0.1 for development sign-in",
            config.bind
        );
    }
    Ok(())
}

/// Serves the API, web UI and background workers on `listener` until
/// `shutdown` resolves. The connection limits of SPEC §9 are enforced by
/// [`crate::http::server`].
///
/// Stopping (SPEC §10): new connections are refused at once; requests in
/// flight have `limits.shutdown_grace` to finish; then
/// [`AppState::shutdown`] is cancelled, which ends the uploads still
/// streaming; whatever still runs `limits.shutdown_timeout` after the
/// signal is left behind (its reservations are released before returning),
/// so this returns within that time.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let registration = crate::node::Registration::start(&state).await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let workers = crate::jobs::spawn_workers(state.clone(), stop_rx.clone());
    let _scheduler = crate::ops::scheduler::spawn(state.clone(), stop_rx.clone());
    let webhooks = crate::jobs::webhooks::spawn(state.clone(), stop_rx.clone());
    let app = crate::http::router(state.clone());
    let addr = listener.local_addr()?;
    if state.dev_login() {
        tracing::warn!(
            "DEVELOPMENT SIGN-IN is on: anyone who can reach http://{addr} may sign in as any user. \
             Requests that carry forwarding headers (Forwarded, X-Forwarded-*, X-Real-IP) or a \
             Host that is not a loopback name are refused, so a reverse proxy cannot publish it, \
             but any local process can still sign in. \
             Configure CLERK_SECRET_KEY, CLERK_PUBLISHABLE_KEY, STOWAGE_JWT_PUBLIC_KEY or \
             STOWAGE_JWKS_URL for real use."
        );
    }
    tracing::info!(%addr, database = state.meta.backend(), blobs = state.blobs.kind(), "stowage listening");
    let sweeper = state
        .limits
        .clone()
        .spawn_sweeper(crate::http::ratelimit::SWEEP_EVERY, stop_rx.clone());
    let signalled = Arc::new(std::sync::OnceLock::new());
    let mark = signalled.clone();
    let limits = &state.config.limits;
    let stopping = crate::http::server::Stopping {
        grace: limits.shutdown_grace,
        // The last second is for what follows below.
        deadline: limits
            .shutdown_timeout
            .saturating_sub(std::time::Duration::from_secs(1)),
        cancel: state.shutdown.clone(),
    };
    crate::http::server::serve(
        listener,
        app,
        limits,
        async move {
            shutdown.await;
            let _ = mark.set(tokio::time::Instant::now());
            let _ = stop_tx.send(true);
        },
        stopping,
    )
    .await?;
    let signalled = signalled
        .get()
        .copied()
        .unwrap_or_else(tokio::time::Instant::now);
    // Close down within the exit deadline, whatever is stuck.
    let finish_by = signalled
        + limits
            .shutdown_timeout
            .saturating_sub(std::time::Duration::from_millis(250));
    let rest = async {
        state.tasks.idle().await;
        let _ = sweeper.await;
        for w in workers {
            let _ = w.await;
        }
    };
    if tokio::time::timeout_at(finish_by, rest).await.is_err() {
        tracing::warn!("background work still running at the shutdown deadline; leaving it");
    }
    if tokio::time::timeout_at(finish_by, registration.stop(&state))
        .await
        .is_err()
    {
        tracing::warn!("could not leave the nodes table before the shutdown deadline");
    }
    if let Some(w) = webhooks {
        let _ = w.await;
    }
    Ok(())
}
