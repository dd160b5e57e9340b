//! The HTTP layer: one router per area, one error type, shared middleware.
//!
//! Connections are accepted and limited in [`server`], which also sets each
//! request's [`client_ip::ClientIp`]. Middleware, outermost first: request
//! id, tracing span, panic → 500 JSON, CORS, metrics, per-client rate
//! limit, header size limit. Unknown `/api` routes and wrong methods answer
//! with the SPEC's error JSON too.

pub mod admin;
pub mod archive;
pub mod client_ip;
pub mod dev;
pub mod download;
pub mod error;
pub mod extract;
pub mod files;
pub mod health;
pub mod interim;
pub mod multipart;
pub mod openapi;
pub mod range;
pub mod ratelimit;
pub mod resumable;
pub mod sendfile;
pub mod server;
pub mod signed_upload;
pub mod storage;
pub mod tus;
pub mod ui;

use std::{net::SocketAddr, time::Instant};

use axum::{
    extract::{ConnectInfo, MatchedPath, Request, State},
    http::{header, HeaderName, HeaderValue, Method, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    Router,
};
use tower::ServiceBuilder;
use tower_http::{
    catch_panic::CatchPanicLayer,
    cors::{AllowOrigin, CorsLayer},
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    trace::TraceLayer,
};

use self::error::{error_body, AppError};
use crate::app::AppState;

/// Total request header bytes accepted before answering 431.
const MAX_HEADER_BYTES: usize = 32 * 1024;

static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Headers a browser client may read (tus and downloads).
pub const EXPOSED_HEADERS: &[&str] = &[
    "location",
    "upload-offset",
    "upload-length",
    "upload-metadata",
    "upload-expires",
    "tus-resumable",
    "tus-version",
    "tus-extension",
    "tus-max-size",
    "tus-checksum-algorithm",
    "stowage-file-id",
    "upload-complete",
    "upload-incomplete",
    "upload-limit",
    "content-range",
    "content-disposition",
    "etag",
    "retry-after",
    "x-request-id",
];

/// Builds the whole application router.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .merge(archive::router())
        .merge(files::router())
        .merge(signed_upload::router())
        .merge(download::router())
        .merge(storage::router())
        .merge(admin::router())
        .merge(dev::router())
        .merge(tus::router().layer(middleware::from_fn_with_state(
            state.clone(),
            resumable::dispatch,
        )))
        .merge(health::router())
        .merge(openapi::router())
        .method_not_allowed_fallback(|| async { AppError::MethodNotAllowed })
        .fallback(fallback);

    let cors = cors_layer(&state);
    api.layer(middleware::from_fn_with_state(state.clone(), guard))
        .layer(middleware::from_fn(record_metrics))
        .layer(cors)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            tus::discovery_before_cors,
        ))
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::new(REQUEST_ID.clone(), MakeRequestUuid))
                .layer(
                    TraceLayer::new_for_http().make_span_with(|req: &Request| {
                        let id = req
                            .headers()
                            .get(&REQUEST_ID)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("");
                        let client = req
                            .extensions()
                            .get::<client_ip::ClientIp>()
                            .map(|c| c.to_string())
                            .unwrap_or_default();
                        tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id = %id, client_ip = %client, user_id = tracing::field::Empty, actor = tracing::field::Empty)
                    }),
                )
                .layer(PropagateRequestIdLayer::new(REQUEST_ID.clone()))
                .layer(CatchPanicLayer::custom(|_| {
                    error_body(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal server error")
                })),
        )
        .with_state(state)
}

async fn fallback(method: Method, uri: axum::http::Uri) -> Response {
    if !uri.path().starts_with("/api/") && (method == Method::GET || method == Method::HEAD) {
        if let Some(r) = ui::asset(&uri) {
            return r;
        }
    }
    error_body(StatusCode::NOT_FOUND, "not_found", "no such route")
}

fn cors_layer(state: &AppState) -> CorsLayer {
    if state.config.cors_origins.is_empty() {
        return CorsLayer::new();
    }
    let origins: Vec<HeaderValue> = state
        .config
        .cors_origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_credentials(true)
        .allow_methods([
            Method::GET,
            Method::HEAD,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::RANGE,
            header::IF_NONE_MATCH,
            HeaderName::from_static("tus-resumable"),
            HeaderName::from_static("upload-length"),
            HeaderName::from_static("upload-offset"),
            HeaderName::from_static("upload-metadata"),
            HeaderName::from_static("upload-checksum"),
            HeaderName::from_static("upload-defer-length"),
            HeaderName::from_static("upload-concat"),
            HeaderName::from_static("upload-draft-interop-version"),
            HeaderName::from_static("upload-complete"),
            HeaderName::from_static("upload-incomplete"),
            HeaderName::from_static("repr-digest"),
            header::CONTENT_DISPOSITION,
            HeaderName::from_static("x-http-method-override"),
            HeaderName::from_static("x-requested-with"),
        ])
        .expose_headers(
            EXPOSED_HEADERS
                .iter()
                .map(|h| HeaderName::from_static(h))
                .collect::<Vec<_>>(),
        )
        .max_age(std::time::Duration::from_secs(600))
}

/// Per-client rate limit and header size limit, before any handler runs.
/// The client is [`client_ip::ClientIp`] (the forwarded client behind a
/// trusted proxy), or the TCP peer when the request did not come through
/// [`server`].
async fn guard(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let header_bytes: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    if header_bytes > MAX_HEADER_BYTES {
        return error_body(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "invalid_request",
            "request headers are too large",
        );
    }
    let exempt = matches!(req.uri().path(), "/healthz" | "/readyz" | "/metrics");
    if !exempt {
        let client = req
            .extensions()
            .get::<client_ip::ClientIp>()
            .map(|c| c.0)
            .or_else(|| {
                req.extensions()
                    .get::<ConnectInfo<SocketAddr>>()
                    .map(|ConnectInfo(a)| client_ip::canonical(a.ip()))
            });
        if let Some(ip) = client {
            if let Err(e) = state.limits.check_ip(ip) {
                return e.into_response();
            }
        }
    }
    next.run(req).await
}

async fn record_metrics(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let resp = next.run(req).await;
    crate::telemetry::metrics::request(
        &route,
        &method,
        resp.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    resp
}
