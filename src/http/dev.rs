//! Development sign-in endpoints (only in development mode; 404 otherwise).
//! Signing in is refused with 403 when the request did not come straight
//! from this machine or came from another site's page ([`DevSignIn`]).

use axum::{
    extract::State,
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use serde::Deserialize;
use serde_json::json;

use super::{
    error::{AppError, AppResult},
    extract::{ApiJson, DevSignIn},
};
use crate::{
    app::AppState,
    auth::{dev, valid_subject},
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/dev/status", get(status))
        .route("/api/dev/login", post(login))
        .route("/api/dev/logout", post(logout))
}

async fn status(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(json!({"dev_login": state.dev_login()}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    user_id: String,
}

async fn login(
    State(state): State<AppState>,
    _local: DevSignIn,
    ApiJson(body): ApiJson<Login>,
) -> AppResult<Response> {
    let user = body.user_id.trim();
    if !valid_subject(user) || user.chars().any(|c| c.is_control()) {
        return Err(AppError::BadRequest(
            "user_id must be 1 to 255 printable characters".into(),
        ));
    }
    let token = dev::mint(&state.signing_key, user);
    let cookie = format!("__session={token}; Path=/; HttpOnly; SameSite=Lax");
    let mut resp = Json(json!({"user_id": user, "token": token})).into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).map_err(AppError::internal)?,
    );
    tracing::info!(user_id = user, "development sign-in");
    Ok(resp)
}

async fn logout() -> Response {
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("__session=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0"),
    );
    resp
}
