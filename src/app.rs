//! Start-up: builds the shared [`AppState`] from a [`Config`] and runs the
//! HTTP server on a listener handed in from outside (tests bind port 0),
//! until a shutdown future resolves.

use std::{future::Future, sync::Arc};

use anyhow::Context;
use tokio::net::TcpListener;

use crate::{
    auth::jwt::Verifier,
    config::{Config, TokenKeys},
    core::Core,
    http::ratelimit::RateLimits,
};

pub use crate::config::{check_auth_safety, redact_url};

/// Everything a request handler needs: the service [`Core`] plus what only
/// HTTP uses. Cheap to clone; dereferences to its [`Core`], which is what
/// the services take.
#[derive(Clone)]
pub struct AppState {
    pub core: Core,
    /// Session token verifier; `None` in development sign-in mode.
    pub verifier: Option<Verifier>,
    /// HMAC key for signed URLs and development sessions.
    pub signing_key: Arc<Vec<u8>>,
    pub limits: Arc<RateLimits>,
    /// The last `/readyz` check, shared by concurrent callers.
    pub ready: Arc<crate::http::health::ReadyCache>,
    /// tus requests writing on this process, so a later request for the
    /// same upload can end them at once (takeover).
    pub tus_writers: Arc<crate::http::tus::lease::Writers>,
}

impl std::ops::Deref for AppState {
    type Target = Core;

    fn deref(&self) -> &Core {
        &self.core
    }
}

impl std::ops::DerefMut for AppState {
    fn deref_mut(&mut self) -> &mut Core {
        &mut self.core
    }
}

impl AppState {
    /// Connects the stores and prepares auth. Does not migrate.
    pub async fn build(config: Config) -> anyhow::Result<AppState> {
        AppState::build_with_clock(config, Arc::new(crate::core::SystemClock)).await
    }

    /// [`AppState::build`] on a [`Core`] reading the time from `clock`
    /// (see [`Core::open_with_clock`]).
    pub async fn build_with_clock(
        config: Config,
        clock: Arc<dyn crate::core::Clock>,
    ) -> anyhow::Result<AppState> {
        crate::telemetry::prometheus();
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
        let limits = RateLimits::new(config.rate_limit_user_per_sec, config.rate_limit_ip_per_sec);
        let core = Core::open_with_clock(config, clock).await?;
        Ok(AppState {
            core,
            verifier,
            signing_key: Arc::new(signing_key),
            limits: Arc::new(limits),
            ready: Arc::default(),
            tus_writers: Arc::default(),
        })
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
    let workers = crate::jobs::spawn_workers(state.core.clone(), stop_rx.clone());
    let _scheduler = crate::ops::scheduler::spawn(state.core.clone(), stop_rx.clone());
    let webhooks = crate::jobs::webhooks::spawn(state.core.clone(), stop_rx.clone());
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
        // Uploads ended by the shutdown dropped their writers last.
        state.blobs.settle().await;
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
