//! The termination extension: `DELETE /api/uploads/{id}` removes an upload in
//! progress with its staged data and releases its quota reservation. 423
//! while a PATCH is writing to it; 404 for anyone but its creator.

use axum::{
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use chrono::Utc;

use super::*;
use crate::{
    http::{
        error::AppResult,
        extract::{AuthUser, FileId},
    },
    ingest,
    meta::TusLock,
};

pub async fn terminate(
    State(state): State<AppState>,
    user: AuthUser,
    FileId(id): FileId,
) -> AppResult<Response> {
    match state
        .meta
        .terminate_tus_upload(&user.0, id, Utc::now())
        .await?
    {
        TusLock::Acquired(_) => {
            core::hash_forget(id);
            ingest::abandon(&state, id).await;
            tracing::info!(upload = %id, "tus upload terminated");
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        TusLock::Busy => Err(AppError::Locked(
            "a request is writing to this upload; retry shortly".into(),
        )),
        TusLock::Missing => Err(AppError::NotFound),
    }
}
