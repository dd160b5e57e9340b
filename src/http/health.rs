//! Liveness, readiness and Prometheus metrics.
//!
//! `/readyz` is public and unthrottled (load balancers poll it), so it must
//! cost next to nothing however often it is hit (SPEC §9): a real check (a
//! database round trip and a write/delete on the volume or bucket) runs at
//! most once per `limits.readyz_cache`, concurrent requests share the one
//! check in flight, and the body names only each component's state. Why a
//! component is down goes to the log, never to the client.

use std::time::{Duration, Instant};

use axum::{extract::State, http::StatusCode, response::IntoResponse, routing::get, Json, Router};
use serde_json::json;
use tokio::sync::Mutex;

use crate::app::AppState;

/// Longest one component check may take before it counts as unavailable,
/// so a hanging dependency cannot hold every `/readyz` caller.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
}

/// The outcome of one readiness check: up or not, per component.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Readiness {
    pub database: bool,
    pub volume: bool,
}

impl Readiness {
    pub fn ok(&self) -> bool {
        self.database && self.volume
    }
}

/// The last readiness check and when it finished. The lock is held while a
/// check runs: that is what makes concurrent callers share it.
#[derive(Debug, Default)]
pub struct ReadyCache {
    last: Mutex<Option<(Instant, Readiness)>>,
}

impl ReadyCache {
    /// The cached outcome when it is younger than `ttl` or was produced
    /// while this caller waited; otherwise runs a check.
    pub async fn get(&self, state: &AppState) -> Readiness {
        let asked = Instant::now();
        let ttl = state.config.limits.readyz_cache;
        let mut last = self.last.lock().await;
        if let Some((at, r)) = *last {
            if at >= asked || at.elapsed() < ttl {
                return r;
            }
        }
        let r = check(state).await;
        *last = Some((Instant::now(), r));
        r
    }
}

/// One real check of the database and the blob store, each bounded by
/// [`CHECK_TIMEOUT`]; failures are logged with their cause.
async fn check(state: &AppState) -> Readiness {
    let timed_out = || "no answer within the readiness timeout".to_string();
    let (db, vol) = tokio::join!(
        tokio::time::timeout(CHECK_TIMEOUT, state.meta.ping()),
        tokio::time::timeout(CHECK_TIMEOUT, state.blobs.check_writable()),
    );
    let db = db
        .map_err(|_| timed_out())
        .and_then(|r| r.map_err(|e| e.to_string()));
    let vol = vol
        .map_err(|_| timed_out())
        .and_then(|r| r.map_err(|e| e.to_string()));
    if let Err(e) = &db {
        tracing::warn!(component = "database", backend = state.meta.backend(), error = %e, "not ready");
    }
    if let Err(e) = &vol {
        tracing::warn!(component = "volume", store = state.blobs.kind(), error = %e, "not ready");
    }
    Readiness {
        database: db.is_ok(),
        volume: vol.is_ok(),
    }
}

/// Ready when the database answers and the volume takes writes.
async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    let r = state.ready.get(&state).await;
    let word = |up: bool| if up { "ok" } else { "unavailable" };
    let body = json!({
        "status": if r.ok() { "ready" } else { "unavailable" },
        "database": word(r.database),
        "volume": word(r.volume),
        "video_thumbnails": crate::media::status(),
    });
    let code = if r.ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body))
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    if let Ok(n) = state.meta.queue_depth().await {
        crate::telemetry::metrics::job_queue_depth(n);
    }
    if let Ok(c) = state.meta.event_counts().await {
        crate::telemetry::metrics::events(c.pending, c.delivered, c.failed);
    }
    state.limits.shrink();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        crate::telemetry::prometheus().render(),
    )
}
