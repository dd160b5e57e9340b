//! `/api/admin/*`: user list, details, quota and account deletion, the
//! event outbox, behind the admin bearer token ([`AdminAuth`]).

use axum::{
    extract::{Path, Query, State},
    http::StatusCode,
    routing::{get, post, put},
    Json, Router,
};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD as B64, Engine};
use serde::{Deserialize, Serialize};

use super::{
    error::{AppError, AppResult},
    extract::{page_limit, AdminAuth, ApiJson},
};
use crate::{
    app::AppState,
    meta::{EventQuery, EventStatus, EventType, JobInfo, UserStorage},
    quota::{usage_for, Usage},
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/admin/users", get(list_users))
        .route("/api/admin/users/{id}", get(show_user).delete(delete_user))
        .route("/api/admin/users/{id}/quota", put(set_quota))
        .route("/api/admin/jobs/failed", get(failed_jobs))
        .route("/api/admin/events", get(list_events))
        .route("/api/admin/events/{id}/replay", post(replay_event))
}

#[derive(Serialize)]
struct UsersPage {
    users: Vec<UserStorage>,
}

async fn list_users(State(state): State<AppState>, _: AdminAuth) -> AppResult<Json<UsersPage>> {
    Ok(Json(UsersPage {
        users: state.meta.list_users().await?,
    }))
}

#[derive(Serialize)]
struct UserDetails {
    #[serde(flatten)]
    usage: Usage,
    reserved_bytes: i64,
    created_at: String,
}

async fn details(state: &AppState, row: &UserStorage) -> AppResult<UserDetails> {
    Ok(UserDetails {
        usage: usage_for(state, row).await?,
        reserved_bytes: row.reserved_bytes,
        created_at: row.created_at.to_rfc3339(),
    })
}

async fn show_user(
    State(state): State<AppState>,
    _: AdminAuth,
    Path(id): Path<String>,
) -> AppResult<Json<UserDetails>> {
    if !crate::auth::valid_subject(&id) {
        return Err(AppError::NotFound);
    }
    let row = state.meta.get_user(&id).await?.ok_or(AppError::NotFound)?;
    Ok(Json(details(&state, &row).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QuotaBody {
    max_bytes: u64,
}

async fn set_quota(
    State(state): State<AppState>,
    _: AdminAuth,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<QuotaBody>,
) -> AppResult<Json<UserDetails>> {
    // The ids a session can carry (SPEC §9): a quota set for any other id
    // could never be used, and a NUL reached PostgreSQL as a 500.
    if !crate::auth::valid_subject(&id) {
        return Err(AppError::BadRequest(
            "user id must be 1 to 255 bytes without control characters".into(),
        ));
    }
    if body.max_bytes > i64::MAX as u64 {
        return Err(AppError::BadRequest("max_bytes is too large".into()));
    }
    let row = state.meta.set_quota(&id, body.max_bytes).await?;
    tracing::info!(user_id = %id, max_bytes = body.max_bytes, "quota set");
    Ok(Json(details(&state, &row).await?))
}

async fn delete_user(
    State(state): State<AppState>,
    _: AdminAuth,
    Path(id): Path<String>,
) -> AppResult<StatusCode> {
    if !crate::auth::valid_subject(&id) {
        return Err(AppError::NotFound);
    }
    let removed = crate::ops::delete_user(&state, &id)
        .await?
        .ok_or(AppError::NotFound)?;
    tracing::info!(user_id = %id, files = removed.files, bytes = removed.bytes, "user deleted");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize)]
struct FailedJobs {
    jobs: Vec<JobInfo>,
}

async fn failed_jobs(State(state): State<AppState>, _: AdminAuth) -> AppResult<Json<FailedJobs>> {
    Ok(Json(FailedJobs {
        jobs: state.meta.failed_jobs(100).await?,
    }))
}

#[derive(Deserialize)]
pub(crate) struct EventParams {
    #[serde(rename = "type")]
    event_type: Option<String>,
    status: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

#[derive(Serialize)]
struct EventsPage {
    events: Vec<serde_json::Value>,
    next_cursor: Option<String>,
}

/// Cursors are opaque: base64url of the last event's position.
fn event_cursor(seq: i64) -> String {
    B64.encode(format!("e{seq}"))
}

fn parse_event_cursor(c: &str) -> AppResult<i64> {
    B64.decode(c)
        .ok()
        .and_then(|raw| String::from_utf8(raw).ok())
        .and_then(|s| s.strip_prefix('e').and_then(|n| n.parse().ok()))
        .ok_or_else(|| AppError::BadRequest("invalid cursor".into()))
}

/// Reads the filters and page of `GET /api/admin/events`.
fn parse_events(p: EventParams) -> AppResult<EventQuery> {
    let bad = |m: String| AppError::BadRequest(m);
    let event_type = match p.event_type.as_deref().filter(|s| !s.is_empty()) {
        Some(t) => {
            Some(EventType::parse(t).ok_or_else(|| bad(format!("unknown event type {t:?}")))?)
        }
        None => None,
    };
    let status = match p.status.as_deref().filter(|s| !s.is_empty()) {
        Some(s) => Some(EventStatus::parse(s).ok_or_else(|| {
            bad(format!(
                "status must be pending, delivered or failed, not {s:?}"
            ))
        })?),
        None => None,
    };
    let limit = page_limit(p.limit.as_deref())?;
    let before_seq = match p.cursor.as_deref().filter(|c| !c.is_empty()) {
        Some(c) => Some(parse_event_cursor(c)?),
        None => None,
    };
    Ok(EventQuery {
        event_type,
        status,
        before_seq,
        limit,
    })
}

/// `GET /api/admin/events?type=&status=&limit=&cursor=`: newest first.
async fn list_events(
    State(state): State<AppState>,
    _: AdminAuth,
    Query(p): Query<EventParams>,
) -> AppResult<Json<EventsPage>> {
    let mut q = parse_events(p)?;
    let limit = q.limit as usize;
    // One more than asked says whether another page follows.
    q.limit += 1;
    let mut rows = state.meta.list_events(&q).await?;
    let more = rows.len() > limit;
    rows.truncate(limit);
    let next_cursor = if more {
        rows.last().map(|e| event_cursor(e.seq))
    } else {
        None
    };
    Ok(Json(EventsPage {
        events: rows.iter().map(|e| e.to_json()).collect(),
        next_cursor,
    }))
}

/// `POST /api/admin/events/{id}/replay`: queues one event again (due now,
/// a fresh retry window), whatever its state; answers the event.
async fn replay_event(
    State(state): State<AppState>,
    _: AdminAuth,
    Path(id): Path<String>,
) -> AppResult<Json<serde_json::Value>> {
    let id = uuid::Uuid::parse_str(&id).map_err(|_| AppError::NotFound)?;
    // The event as requeued: a delivery may already be under way.
    let ev = state
        .meta
        .replay_event(id, state.now())
        .await?
        .ok_or(AppError::NotFound)?;
    tracing::info!(event_id = %id, "event queued again");
    Ok(Json(ev.to_json()))
}
