//! `GET /api/storage/usage`: the signed-in user's quota and usage by type.

use std::collections::BTreeMap;

use axum::{extract::State, routing::get, Json, Router};
use serde::{Deserialize, Serialize};

use super::{error::AppResult, extract::AuthUser};
use crate::{
    app::AppState,
    domain::filetype::FileType,
    meta::{TypeUsage, UserStorage},
};

pub fn router() -> Router<AppState> {
    Router::new().route("/api/storage/usage", get(usage))
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Usage {
    pub user_id: String,
    pub total_bytes: i64,
    pub max_bytes: i64,
    pub file_count: i64,
    pub percent_used: f64,
    pub by_type: BTreeMap<String, TypeUsage>,
}

/// Percent of `max` used, rounded to 2 decimals; a zero quota reads as full.
pub fn percent(total: i64, max: i64) -> f64 {
    if max <= 0 {
        return 100.0;
    }
    (total as f64 * 10_000.0 / max as f64).round() / 100.0
}

pub async fn usage_for(state: &AppState, user: &UserStorage) -> AppResult<Usage> {
    let mut by_type: BTreeMap<String, TypeUsage> = FileType::ALL
        .iter()
        .map(|t| (t.as_str().to_string(), TypeUsage::default()))
        .collect();
    for (t, u) in state.meta.usage_by_type(&user.user_id).await? {
        by_type.insert(t.as_str().to_string(), u);
    }
    Ok(Usage {
        user_id: user.user_id.clone(),
        total_bytes: user.total_bytes,
        max_bytes: user.max_bytes,
        file_count: user.file_count,
        percent_used: percent(user.total_bytes, user.max_bytes),
        by_type,
    })
}

async fn usage(State(state): State<AppState>, user: AuthUser) -> AppResult<Json<Usage>> {
    let row = state
        .meta
        .ensure_user(&user.0, state.config.default_quota)
        .await?;
    Ok(Json(usage_for(&state, &row).await?))
}

#[cfg(test)]
mod tests {
    #[test]
    fn percent_rounds_to_two_decimals() {
        assert_eq!(super::percent(1, 3), 33.33);
        assert_eq!(super::percent(0, 100), 0.0);
        assert_eq!(super::percent(5, 0), 100.0);
        assert_eq!(super::percent(2, 3), 66.67);
    }
}
