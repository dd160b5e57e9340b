//! `/api/admin/*`: user list, details, quota and account deletion, behind
//! the admin bearer token ([`AdminAuth`]).

use axum::{
    extract::{Path, State},
    http::StatusCode,
    routing::{get, put},
    Json, Router,
};
use serde::{Deserialize, Serialize};

use super::{
    error::{AppError, AppResult},
    extract::{AdminAuth, ApiJson},
    storage::{usage_for, Usage},
};
use crate::{
    app::AppState,
    meta::{JobInfo, UserStorage},
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/admin/users", get(list_users))
        .route("/api/admin/users/{id}", get(show_user).delete(delete_user))
        .route("/api/admin/users/{id}/quota", put(set_quota))
        .route("/api/admin/jobs/failed", get(failed_jobs))
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
    if id.is_empty() || id.len() > 255 {
        return Err(AppError::BadRequest(
            "user id must be 1 to 255 bytes".into(),
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
