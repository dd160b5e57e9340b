//! tus 1.0.0 resumable uploads at `/api/uploads`.

use axum::Router;

use crate::app::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
}
