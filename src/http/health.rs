//! Liveness, readiness and Prometheus metrics.

use axum::{extract::State, http::StatusCode, response::IntoResponse, routing::get, Json, Router};
use serde_json::json;

use crate::app::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
}

/// Ready when the database answers and the volume takes writes.
async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    let db = state.meta.ping().await;
    let vol = state.blobs.check_writable().await;
    let media = crate::jobs::media::status();
    let ok = db.is_ok() && vol.is_ok();
    let body = json!({
        "status": if ok { "ready" } else { "unavailable" },
        "database": db.as_ref().map(|_| "ok".to_string()).unwrap_or_else(|e| e.to_string()),
        "volume": vol.as_ref().map(|_| "ok".to_string()).unwrap_or_else(|e| e.to_string()),
        "video_thumbnails": media,
    });
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    if !ok {
        tracing::warn!(%body, "not ready");
    }
    (code, Json(body))
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    if let Ok(n) = state.meta.queue_depth().await {
        crate::telemetry::metrics::job_queue_depth(n);
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
