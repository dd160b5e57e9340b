//! The termination extension: `DELETE /api/uploads/{id}` removes an upload in
//! progress with its staged data and releases its quota reservation. A
//! request still writing to it is ended first (takeover, as for `HEAD`);
//! 409 while it is being completed; 404 for anyone but its creator.

use axum::{
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
};

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
    for _ in 0..4 {
        match state
            .meta
            .terminate_tus_upload(&user.0, id, state.now())
            .await?
        {
            TusLock::Acquired(_) => {
                ingest::abandon(&state, id).await;
                tracing::info!(upload = %id, "tus upload terminated");
                return Ok(StatusCode::NO_CONTENT.into_response());
            }
            TusLock::Busy(h) if h.completing => {
                return Err(AppError::Conflict(
                    "the upload is being completed; it cannot be terminated".into(),
                ))
            }
            TusLock::Busy(_) => {
                if lease::end_writer(&state, id).await? == lease::Ended::Completing {
                    return Err(AppError::Conflict(
                        "the upload is being completed; it cannot be terminated".into(),
                    ));
                }
            }
            TusLock::Missing => return Err(AppError::NotFound),
        }
    }
    Err(AppError::Locked(
        "other requests keep writing to this upload; retry shortly".into(),
    ))
}
