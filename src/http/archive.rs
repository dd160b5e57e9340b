//! Package archives (SPEC §11): `GET /api/files/archive?package_name=…` or
//! `?ids=a,b,…` streams a ZIP of those files, stored as they are (media is
//! already compressed), written by [`crate::zip`] while the blobs are read.
//! Memory is bounded whatever the total: one blob chunk at a time passes
//! through a small channel, and only the central directory (a small record
//! per entry) is kept until the end.
//!
//! `POST /api/files/archive/signed-url` hands out the same archive as a
//! link that needs no session, `/s/archive/{token}`: the token carries the
//! owner and the selection (a package name, or at most [`MAX_IDS`] ids),
//! signed and expiring like a download link, and answers 403 once expired
//! or altered.

use axum::{
    body::Body,
    extract::{Path, Query, State},
    http::{header, HeaderValue, StatusCode, Uri},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use bytes::Bytes;
use chrono::SecondsFormat;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{
    error::{AppError, AppResult},
    extract::{AuthUser, OptionalJson},
};
use crate::{
    app::AppState,
    auth::signed_url::{self, Purpose},
    domain::names::{content_disposition, sanitize_file_name},
    meta::FileRecord,
    zip::{Names, ZipWriter},
};

/// Most ids one archive request may name (a query string, a signed link).
pub const MAX_IDS: usize = 200;
/// Chunks in flight between the blob reader and the response.
const CHANNEL_CHUNKS: usize = 4;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/files/archive", get(archive))
        .route("/api/files/archive/signed-url", post(sign))
        .route("/s/archive/{token}", get(signed_archive))
}

/// Which files go into an archive.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum Selection {
    #[serde(rename = "p")]
    Package(String),
    #[serde(rename = "i")]
    Ids(Vec<Uuid>),
}

#[derive(Deserialize)]
struct ArchiveParams {
    package_name: Option<String>,
    ids: Option<String>,
}

fn too_many_ids() -> AppError {
    AppError::BadRequest(format!("an archive names at most {MAX_IDS} ids"))
}

/// Exactly one of a package name and an id list; ids deduplicated in order,
/// a malformed one not found (as a malformed path id is).
fn selection(package: Option<String>, ids: Option<Vec<String>>) -> AppResult<Selection> {
    match (package, ids) {
        (Some(p), None) if !p.trim().is_empty() => Ok(Selection::Package(p.trim().to_string())),
        (None, Some(raw)) => {
            let mut ids: Vec<Uuid> = Vec::new();
            for r in raw.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
                if ids.len() == MAX_IDS {
                    return Err(too_many_ids());
                }
                let id = Uuid::try_parse(r).map_err(|_| AppError::NotFound)?;
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
            if ids.is_empty() {
                return Err(AppError::BadRequest("ids names no file".into()));
            }
            Ok(Selection::Ids(ids))
        }
        _ => Err(AppError::BadRequest(
            "give either package_name or ids (a comma list)".into(),
        )),
    }
}

/// The user's files of `sel`; 404 when a named id is not theirs or the
/// package is empty.
async fn files_of(state: &AppState, user: &str, sel: &Selection) -> AppResult<Vec<FileRecord>> {
    let files = match sel {
        Selection::Package(p) => state.meta.package_files(user, p).await?,
        Selection::Ids(ids) => {
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                out.push(
                    state
                        .meta
                        .get_file(user, *id)
                        .await?
                        .ok_or(AppError::NotFound)?,
                );
            }
            out
        }
    };
    if files.is_empty() {
        return Err(AppError::NotFound);
    }
    Ok(files)
}

fn archive_name(sel: &Selection) -> String {
    match sel {
        Selection::Package(p) => format!("{}.zip", sanitize_file_name(p)),
        Selection::Ids(_) => "files.zip".into(),
    }
}

/// `GET /api/files/archive`
#[tracing::instrument(skip_all, fields(user_id = %user.0))]
async fn archive(
    State(state): State<AppState>,
    user: AuthUser,
    params: Result<Query<ArchiveParams>, axum::extract::rejection::QueryRejection>,
) -> AppResult<Response> {
    let Query(p) = params.map_err(|e| AppError::BadRequest(e.body_text()))?;
    if p.ids.as_ref().is_some_and(|s| s.len() > MAX_IDS * 40) {
        return Err(too_many_ids());
    }
    let ids = p
        .ids
        .map(|s| s.split(',').map(str::to_string).collect::<Vec<_>>());
    let sel = selection(p.package_name, ids)?;
    let files = files_of(&state, &user.0, &sel).await?;
    Ok(stream_zip(state, files, &archive_name(&sel)))
}

/// What a signed archive link carries.
#[derive(Serialize, Deserialize)]
struct LinkPayload {
    u: String,
    s: Selection,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignBody {
    package_name: Option<String>,
    ids: Option<Vec<String>>,
    expires_in: Option<i64>,
}

#[derive(Serialize, Deserialize)]
struct SignedLink {
    url: String,
    expires_at: String,
}

/// `POST /api/files/archive/signed-url`: `{"package_name"|"ids", "expires_in"?}`.
async fn sign(
    State(state): State<AppState>,
    user: AuthUser,
    OptionalJson(body): OptionalJson<SignBody>,
) -> AppResult<Json<SignedLink>> {
    let body =
        body.ok_or_else(|| AppError::BadRequest("give package_name or ids in a JSON body".into()))?;
    let expires_in = body.expires_in.unwrap_or(3600);
    if !(1..=604_800).contains(&expires_in) {
        return Err(AppError::BadRequest(
            "expires_in must be between 1 and 604800 seconds".into(),
        ));
    }
    if body.ids.as_ref().is_some_and(|i| i.len() > MAX_IDS) {
        return Err(too_many_ids());
    }
    let sel = selection(body.package_name, body.ids)?;
    // Refuse now what the link could not serve.
    files_of(&state, &user.0, &sel).await?;
    let payload = serde_json::to_vec(&LinkPayload {
        u: user.0.clone(),
        s: sel,
    })
    .map_err(AppError::internal)?;
    let expires = state.now().timestamp() + expires_in;
    let token = signed_url::sign_payload(&state.signing_key, Purpose::Archive, &payload, expires);
    let at = chrono::DateTime::from_timestamp(expires, 0).unwrap_or_default();
    Ok(Json(SignedLink {
        url: format!("/s/archive/{token}"),
        expires_at: at.to_rfc3339_opts(SecondsFormat::Secs, true),
    }))
}

/// `GET /s/archive/{token}`
async fn signed_archive(
    State(state): State<AppState>,
    Path(token): Path<String>,
    uri: Uri,
) -> AppResult<Response> {
    let denied = || AppError::Forbidden("link is invalid or expired".into());
    if uri.path().strip_prefix("/s/archive/") != Some(token.as_str()) {
        return Err(denied());
    }
    let (payload, expires) = signed_url::open_payload(&state.signing_key, Purpose::Archive, &token)
        .ok_or_else(denied)?;
    if expires < state.now().timestamp() {
        return Err(denied());
    }
    let link: LinkPayload = serde_json::from_slice(&payload).map_err(|_| denied())?;
    let files = files_of(&state, &link.u, &link.s).await?;
    Ok(stream_zip(state, files, &archive_name(&link.s)))
}

/// The response: headers now, the archive as it is written.
fn stream_zip(state: AppState, files: Vec<FileRecord>, name: &str) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(CHANNEL_CHUNKS);
    let count = files.len();
    let span = tracing::Span::current();
    tokio::spawn(tracing::Instrument::instrument(
        async move {
            if let Err(e) = write_zip(&state, files, &tx).await {
                if e.is::<ClientGone>() {
                    tracing::info!("archive download ended by the client");
                } else {
                    tracing::error!(error = %e, "archive cut short");
                    // The client sees a broken body, never a valid-looking
                    // archive with missing bytes.
                    let _ = tx.send(Err(std::io::Error::other("archive failed"))).await;
                }
            }
        },
        span,
    ));
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    tracing::info!(files = count, "archive streaming");
    let mut resp = (StatusCode::OK, Body::from_stream(stream)).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/zip"),
    );
    if let Ok(v) = HeaderValue::from_str(&content_disposition("attachment", name)) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-store"),
    );
    resp
}

/// The client went away: nothing to report.
#[derive(Debug, thiserror::Error)]
#[error("client gone")]
struct ClientGone;

async fn send(
    tx: &tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
    b: Bytes,
) -> anyhow::Result<()> {
    tx.send(Ok(b)).await.map_err(|_| ClientGone.into())
}

async fn write_zip(
    state: &AppState,
    files: Vec<FileRecord>,
    tx: &tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
) -> anyhow::Result<()> {
    let mut zip = ZipWriter::new();
    let mut names = Names::new();
    for f in files {
        let size = f.file_size.max(0) as u64;
        let name = names.unique(&f.file_name);
        send(tx, zip.start_entry(&name, size, f.upload_date)?).await?;
        let mut blob = state.blobs.read(&f.file_path, 0..size).await?;
        let mut crc = crc32fast::Hasher::new();
        let mut written = 0u64;
        while let Some(chunk) = blob.next().await {
            let chunk = chunk?;
            crc.update(&chunk);
            written += chunk.len() as u64;
            send(tx, chunk).await?;
        }
        send(tx, zip.finish_entry(crc.finalize(), written)?).await?;
    }
    send(tx, zip.finish()?).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_selection_is_one_thing() {
        let a = Uuid::new_v4();
        assert!(selection(None, None).is_err());
        assert!(selection(Some("p".into()), Some(vec![a.to_string()])).is_err());
        assert!(selection(Some("  ".into()), None).is_err());
        assert_eq!(
            selection(None, Some(vec![a.to_string(), format!(" {a}"), "".into()])).unwrap(),
            Selection::Ids(vec![a])
        );
        assert!(matches!(
            selection(None, Some(vec!["nope".into()])),
            Err(AppError::NotFound)
        ));
        let many: Vec<String> = (0..=MAX_IDS).map(|_| Uuid::new_v4().to_string()).collect();
        assert!(matches!(
            selection(None, Some(many)),
            Err(AppError::BadRequest(_))
        ));
    }
}
