//! `GET /api/storage/usage`: the signed-in user's quota and usage by type
//! (computed by [`crate::quota`]).

use axum::{extract::State, routing::get, Json, Router};

use super::{error::AppResult, extract::AuthUser};
use crate::app::AppState;
use crate::quota::{usage_for, Usage};

pub fn router() -> Router<AppState> {
    Router::new().route("/api/storage/usage", get(usage))
}

async fn usage(State(state): State<AppState>, user: AuthUser) -> AppResult<Json<Usage>> {
    let row = state
        .meta
        .ensure_user(&user.0, state.config.default_quota)
        .await?;
    Ok(Json(usage_for(&state, &row).await?))
}
