//! `/api/files`: multipart upload, listing with filters and keyset paging,
//! details, rename, copy, delete, favourite, tags and signed links.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Instant,
};

use futures::{stream::BoxStream, StreamExt};

use axum::{
    body::Body,
    extract::{Query, State},
    http::{header, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post, put},
    Json, Router,
};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD as B64, Engine};
use chrono::SecondsFormat;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::{
    error::{AppError, AppResult},
    extract::{page_limit, ApiJson, AuthUser, FileId, OptionalJson},
    multipart,
};
use crate::{
    app::AppState,
    auth::signed_url,
    domain::{filetype::FileType, names::sanitize_file_name},
    ingest::{check_meta, normalize_tags, FileMeta, Ingest, SizeHint},
    meta::{Cursor, FileRecord, ListQuery, Rename, SignedUpload, SortKey, SortOrder},
};

pub use crate::meta::FileView;

/// Multipart framing allowed on top of the per-file limit before a
/// Content-Length alone proves the file too large.
const MULTIPART_SLACK: u64 = 64 * 1024;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/files", get(list))
        .route(
            "/api/files/upload",
            post(upload).layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route("/api/files/{id}", get(details).delete(remove).patch(rename))
        .route("/api/files/{id}/copy", post(copy))
        .route("/api/files/{id}/favorite", post(favorite))
        .route("/api/files/{id}/tags", put(tags))
        .route("/api/files/{id}/signed-url", post(signed_link))
}

fn bad_form(e: multipart::FormError) -> AppError {
    AppError::BadRequest(e.to_string())
}

/// The upload's form, read straight from the request body.
type Form = multipart::FormReader<BoxStream<'static, Result<bytes::Bytes, axum::Error>>>;

/// A non-file field of at most `limit` bytes.
async fn read_text_field(form: &mut Form, name: &str, limit: usize) -> AppResult<String> {
    let mut buf = Vec::new();
    while let Some(chunk) = form.chunk().await.map_err(bad_form)? {
        if buf.len() + chunk.len() > limit {
            return Err(AppError::BadRequest(format!(
                "form field {name:?} is longer than {limit} bytes"
            )));
        }
        buf.extend_from_slice(&chunk);
    }
    String::from_utf8(buf).map_err(|_| AppError::BadRequest("form field is not UTF-8".into()))
}

/// `POST /api/files/upload`: streams part `file` through [`Ingest`].
#[tracing::instrument(skip_all, fields(user_id = %user.0, file_id))]
async fn upload(
    State(state): State<AppState>,
    user: AuthUser,
    headers: HeaderMap,
    body: Body,
) -> AppResult<Response> {
    multipart_upload(&state, Target::Session(&user.0), &headers, body).await
}

/// Who a multipart upload is for, and under which reservation.
pub enum Target<'a> {
    /// A signed-in user: the room is reserved now from the request's size.
    Session(&'a str),
    /// A signed upload URL: the room was reserved at issue and caps the
    /// file; its `file_type` and `file_name`, when given, win over the
    /// form's.
    Signed(&'a SignedUpload),
}

/// The multipart upload behind `POST /api/files/upload` and `POST /u/…`.
pub async fn multipart_upload(
    state: &AppState,
    target: Target<'_>,
    headers: &HeaderMap,
    body: Body,
) -> AppResult<Response> {
    let started = Instant::now();
    let user = match &target {
        Target::Session(u) => u.to_string(),
        Target::Signed(s) => s.user_id.clone(),
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let boundary =
        multipart::parse_boundary(content_type).map_err(|e| AppError::BadRequest(e.into()))?;
    let hint = match headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        Some(n) => {
            if n > state.config.max_file_size + MULTIPART_SLACK {
                return Err(AppError::TooLarge(format!(
                    "request is {n} bytes; the per-file limit is {} bytes",
                    state.config.max_file_size
                )));
            }
            SizeHint::AtMost(n)
        }
        None => SizeHint::Unknown,
    };
    // Count what arrives, to tell a complete body from one cut short after
    // its closing boundary.
    let received = Arc::new(AtomicU64::new(0));
    let counter = received.clone();
    let stream = body.into_data_stream().map(move |chunk| {
        if let Ok(c) = &chunk {
            counter.fetch_add(c.len() as u64, Ordering::Relaxed);
        }
        chunk
    });
    // The framing (preamble, part headers, part count) is bounded by the
    // reader, non-file fields by `read_text_field`, the file by the ingest.
    let limits = &state.config.limits;
    let mut form: Form = multipart::FormReader::new(
        stream.boxed(),
        &boundary,
        multipart::FramingLimits {
            header_bytes: limits.multipart_header_bytes,
            max_parts: limits.multipart_max_parts,
        },
    );
    let field_limit = limits.multipart_field_bytes;
    // Reserve before reading a byte of the body: an upload that cannot fit
    // is refused while the client is still sending headers.
    let stop = &state.shutdown;
    // A signed URL's cap, when the Content-Length alone already passes it;
    // refused after draining a small body, as any early refusal.
    if let (Target::Signed(s), SizeHint::AtMost(n)) = (&target, hint) {
        if n > s.max_bytes.max(0) as u64 + MULTIPART_SLACK {
            let e = AppError::TooLarge(format!(
                "request is {n} bytes; this URL takes at most {} bytes",
                s.max_bytes
            ));
            return Err(drain_then(e, hint, &mut form, stop).await);
        }
    }
    let begun = match &target {
        Target::Session(_) => Ingest::begin(state, &user, hint).await,
        Target::Signed(s) => Ingest::adopt(state, &user, s.id, s.max_bytes.max(0) as u64).await,
    };
    let up = match begun {
        Ok(up) => up,
        Err(e) => return Err(drain_then(e.into(), hint, &mut form, stop).await),
    };
    let mut parsed = FormFields::default();
    let up = match read_form(up, &mut form, field_limit, &mut parsed, stop).await {
        Ok(Some(up)) => up,
        Ok(None) => {
            return Err(AppError::BadRequest(
                "multipart part \"file\" is required".into(),
            ))
        }
        Err(e) => return Err(drain_then(e, hint, &mut form, stop).await),
    };
    if let SizeHint::AtMost(n) = hint {
        if received.load(Ordering::Relaxed) < n {
            up.abandon().await;
            return Err(AppError::BadRequest(format!(
                "body ended after {} of its {n} bytes",
                received.load(Ordering::Relaxed)
            )));
        }
    }
    let FormFields {
        mut declared,
        mut client_name,
        mut meta,
    } = parsed;
    if let Target::Signed(s) = &target {
        if let Some(t) = s.file_type {
            declared = Some(t.as_str().to_string());
        }
        if let Some(n) = &s.file_name {
            client_name = n.clone();
        }
    }
    if let Some(d) = declared.as_deref().map(str::trim).filter(|d| !d.is_empty()) {
        let Some(t) = FileType::parse(d) else {
            up.abandon().await;
            return Err(AppError::BadRequest(format!(
                "file_type must be one of video, image, audio, scene, project (got {d:?})"
            )));
        };
        meta.declared_type = Some(t);
    }
    meta.file_name = sanitize_file_name(&client_name);
    let bytes = up.len();
    // `file.created` is recorded in commit_file's transaction.
    let rec = up.commit(meta).await?;
    crate::jobs::after_commit(state, &rec).await;
    tracing::Span::current().record("file_id", rec.id.to_string());
    crate::telemetry::metrics::upload_duration(started.elapsed().as_secs_f64());
    tracing::info!(file_id = %rec.id, bytes, ms = started.elapsed().as_millis() as u64, "upload committed");
    Ok((StatusCode::CREATED, Json(FileView::from(&rec))).into_response())
}

/// Requests refused early whose body is at most this big are read to the end
/// (and discarded) before answering, so that clients which cannot take an
/// early answer mid-send (most HTTP libraries without `Expect: 100-continue`)
/// still see the error instead of a connection reset.
const DRAIN_LIMIT: u64 = 16 * 1024 * 1024;

async fn drain_then(
    e: AppError,
    hint: SizeHint,
    form: &mut Form,
    stop: &CancellationToken,
) -> AppError {
    if let SizeHint::AtMost(n) = hint {
        if n <= DRAIN_LIMIT && !stop.is_cancelled() {
            let drain = form.drain();
            tokio::select! {
                _ = drain => {}
                _ = stop.cancelled() => {}
            }
        }
    }
    e
}

#[derive(Default)]
struct FormFields {
    declared: Option<String>,
    client_name: String,
    meta: FileMeta,
}

/// Reads the form: streams part `file` into `up`, collects the small fields.
/// Returns `None` when there was no file part.
/// A stopping server (`stop` cancelled) ends the upload with 503. On any
/// refusal the upload is abandoned (staging blob removed, reservation
/// released) before the answer goes out.
async fn read_form(
    mut up: Ingest,
    form: &mut Form,
    field_limit: usize,
    out: &mut FormFields,
    stop: &CancellationToken,
) -> AppResult<Option<Ingest>> {
    match read_fields(&mut up, form, field_limit, out, stop).await {
        Ok(true) => Ok(Some(up)),
        Ok(false) => {
            up.abandon().await;
            Ok(None)
        }
        Err(e) => {
            up.abandon().await;
            Err(e)
        }
    }
}

/// [`read_form`]'s loop over the parts; true when there was a file part.
async fn read_fields(
    up: &mut Ingest,
    form: &mut Form,
    field_limit: usize,
    out: &mut FormFields,
    stop: &CancellationToken,
) -> AppResult<bool> {
    let mut seen_file = false;
    while let Some(part) = form.next_part().await.map_err(bad_form)? {
        let name = part.name.unwrap_or_default();
        match name.as_str() {
            "file" => {
                if seen_file {
                    return Err(AppError::BadRequest(
                        "only one part named file is allowed".into(),
                    ));
                }
                seen_file = true;
                out.client_name = part.file_name.unwrap_or_default();
                loop {
                    let chunk = tokio::select! {
                        c = form.chunk() => c.map_err(bad_form)?,
                        _ = stop.cancelled() => return Err(AppError::Unavailable(
                            "the server is restarting; send the upload again".into(),
                        )),
                    };
                    let Some(chunk) = chunk else { break };
                    up.write(chunk).await?;
                }
            }
            "file_type" => out.declared = Some(read_text_field(form, &name, field_limit).await?),
            "package_name" => {
                out.meta.package_name = Some(read_text_field(form, &name, field_limit).await?)
            }
            // Checked now, so a bad list is refused before the file is read
            // when it comes first.
            "tags" => {
                let tags = read_text_field(form, &name, field_limit).await?;
                out.meta.tags = normalize_tags(tags.split(','))?
            }
            // Unknown parts are read (bounded like text) and ignored.
            _ => {
                read_text_field(form, &name, field_limit).await?;
            }
        }
    }
    Ok(seen_file)
}

#[derive(Debug, Deserialize)]
struct ListParams {
    #[serde(rename = "type")]
    file_type: Option<String>,
    favorite: Option<String>,
    tag: Option<String>,
    q: Option<String>,
    sort: Option<String>,
    order: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct ListPage {
    files: Vec<FileView>,
    next_cursor: Option<String>,
}

fn parse_list(p: ListParams) -> AppResult<ListQuery> {
    let bad = |m: String| AppError::BadRequest(m);
    let file_type = match p.file_type.as_deref().filter(|s| !s.is_empty()) {
        Some(t) => Some(FileType::parse(t).ok_or_else(|| bad(format!("unknown type {t:?}")))?),
        None => None,
    };
    let favorite = match p.favorite.as_deref() {
        None | Some("") => None,
        Some("true") | Some("1") => Some(true),
        Some("false") | Some("0") => Some(false),
        Some(o) => return Err(bad(format!("favorite must be true or false, not {o:?}"))),
    };
    let sort = match p.sort.as_deref() {
        None | Some("") | Some("upload_date") => SortKey::UploadDate,
        Some("file_name") => SortKey::FileName,
        Some("file_size") => SortKey::FileSize,
        Some(o) => {
            return Err(bad(format!(
                "sort must be upload_date, file_name or file_size, not {o:?}"
            )))
        }
    };
    let order = match p.order.as_deref() {
        None | Some("") | Some("desc") => SortOrder::Desc,
        Some("asc") => SortOrder::Asc,
        Some(o) => return Err(bad(format!("order must be asc or desc, not {o:?}"))),
    };
    let limit = page_limit(p.limit.as_deref())?;
    let after = match p.cursor.as_deref().filter(|c| !c.is_empty()) {
        Some(c) => Some(decode_cursor(c, sort, order)?),
        None => None,
    };
    if p.q.as_ref().is_some_and(|q| q.len() > 500) || p.tag.as_ref().is_some_and(|t| t.len() > 64) {
        return Err(bad("search text too long".into()));
    }
    Ok(ListQuery {
        file_type,
        favorite,
        tag: p
            .tag
            .filter(|t| !t.trim().is_empty())
            .map(|t| t.trim().to_string()),
        q: p.q.filter(|q| !q.is_empty()),
        sort,
        order,
        limit,
        after,
    })
}

/// Cursors are opaque: base64url of JSON naming the sort they belong to, so
/// a cursor reused with another sort is refused rather than misread.
#[derive(Serialize, Deserialize)]
struct CursorToken {
    s: String,
    o: String,
    #[serde(flatten)]
    c: Cursor,
}

fn sort_name(s: SortKey, o: SortOrder) -> (String, String) {
    (format!("{s:?}"), format!("{o:?}"))
}

fn encode_cursor(rec: &FileRecord, sort: SortKey, order: SortOrder) -> String {
    let k = match sort {
        SortKey::UploadDate => rec.upload_date.to_rfc3339_opts(SecondsFormat::Micros, true),
        SortKey::FileName => rec.file_name.clone(),
        SortKey::FileSize => rec.file_size.to_string(),
    };
    let (s, o) = sort_name(sort, order);
    let tok = CursorToken {
        s,
        o,
        c: Cursor { k, id: rec.id },
    };
    B64.encode(serde_json::to_vec(&tok).expect("cursor serializes"))
}

fn decode_cursor(c: &str, sort: SortKey, order: SortOrder) -> AppResult<Cursor> {
    let bad = || AppError::BadRequest("invalid cursor".into());
    let raw = B64.decode(c).map_err(|_| bad())?;
    let tok: CursorToken = serde_json::from_slice(&raw).map_err(|_| bad())?;
    if (tok.s, tok.o) != sort_name(sort, order) {
        return Err(AppError::BadRequest(
            "cursor belongs to a different sort order".into(),
        ));
    }
    Ok(tok.c)
}

/// `GET /api/files`
async fn list(
    State(state): State<AppState>,
    user: AuthUser,
    params: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> AppResult<Json<ListPage>> {
    let Query(params) = params.map_err(|e| AppError::BadRequest(e.body_text()))?;
    let mut q = parse_list(params)?;
    let limit = q.limit as usize;
    q.limit += 1;
    let mut rows = state
        .meta
        .list_files(&user.0, &q)
        .await
        .map_err(|e| match e {
            crate::meta::MetaError::Conflict(_) => AppError::BadRequest("invalid cursor".into()),
            other => other.into(),
        })?;
    let next_cursor = if rows.len() > limit {
        rows.truncate(limit);
        rows.last().map(|r| encode_cursor(r, q.sort, q.order))
    } else {
        None
    };
    Ok(Json(ListPage {
        files: rows.iter().map(FileView::from).collect(),
        next_cursor,
    }))
}

/// `GET /api/files/{id}`
async fn details(
    State(state): State<AppState>,
    user: AuthUser,
    FileId(id): FileId,
) -> AppResult<Json<FileView>> {
    let rec = user.file(&state, id).await?;
    Ok(Json(FileView::from(&rec)))
}

/// `DELETE /api/files/{id}`: the row goes (and usage with it, by trigger) in
/// one transaction; the blob and thumbnail are removed after.
#[tracing::instrument(skip_all, fields(user_id = %user.0, file_id = %id))]
async fn remove(
    State(state): State<AppState>,
    user: AuthUser,
    FileId(id): FileId,
) -> AppResult<StatusCode> {
    let rec = state
        .meta
        .delete_file(&user.0, id)
        .await?
        .ok_or(AppError::NotFound)?;
    for key in std::iter::once(&rec.file_path).chain(rec.thumbnail_path.as_ref()) {
        if let Err(e) = state.blobs.remove(key).await {
            tracing::error!(error = %e, key, "blob removal failed after row delete; audit will report an orphan");
        }
    }
    tracing::info!(bytes = rec.file_size, "file deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Deserializes a field that may be absent (`None`), `null` (`Some(None)`)
/// or a value.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RenameBody {
    file_name: Option<String>,
    /// `null` or `""` takes the file out of its package.
    #[serde(default, deserialize_with = "present")]
    package_name: Option<Option<String>>,
}

/// `PATCH /api/files/{id}`: a new name and/or package, checked exactly as
/// on upload.
#[tracing::instrument(skip_all, fields(user_id = %user.0, file_id = %id))]
async fn rename(
    State(state): State<AppState>,
    user: AuthUser,
    FileId(id): FileId,
    OptionalJson(body): OptionalJson<RenameBody>,
) -> AppResult<Json<FileView>> {
    // No body changes nothing and answers the file as it is.
    let body = body.unwrap_or(RenameBody {
        file_name: None,
        package_name: None,
    });
    let package_name = match body.package_name {
        Some(p) => {
            let mut meta = FileMeta {
                package_name: p,
                ..FileMeta::default()
            };
            check_meta(&mut meta)?;
            Some(meta.package_name)
        }
        None => None,
    };
    let change = Rename {
        file_name: body.file_name.as_deref().map(sanitize_file_name),
        package_name,
    };
    let rec = state
        .meta
        .rename_file(&user.0, id, &change)
        .await?
        .ok_or(AppError::NotFound)?;
    Ok(Json(FileView::from(&rec)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CopyBody {
    file_name: Option<String>,
}

/// `POST /api/files/{id}/copy`: a new file with the same bytes, counted
/// against the quota like an upload; see [`crate::ingest::copy_file`].
#[tracing::instrument(skip_all, fields(user_id = %user.0, file_id = %id))]
async fn copy(
    State(state): State<AppState>,
    user: AuthUser,
    FileId(id): FileId,
    OptionalJson(body): OptionalJson<CopyBody>,
) -> AppResult<(StatusCode, Json<FileView>)> {
    let name = body.and_then(|b| b.file_name);
    let src = user.file(&state, id).await?;
    let name = name
        .as_deref()
        .map(sanitize_file_name)
        .unwrap_or_else(|| src.file_name.clone());
    let rec = crate::ingest::copy_file(&state, &src, name).await?;
    crate::jobs::after_commit(&state, &rec).await;
    tracing::info!(copy_id = %rec.id, bytes = rec.file_size, "file copied");
    Ok((StatusCode::CREATED, Json(FileView::from(&rec))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FavoriteBody {
    is_favorite: bool,
}

/// `POST /api/files/{id}/favorite`: toggles, or sets with a body.
async fn favorite(
    State(state): State<AppState>,
    user: AuthUser,
    FileId(id): FileId,
    OptionalJson(body): OptionalJson<FavoriteBody>,
) -> AppResult<Json<FileView>> {
    let set = body.map(|b| b.is_favorite);
    let rec = state
        .meta
        .set_favorite(&user.0, id, set)
        .await?
        .ok_or(AppError::NotFound)?;
    Ok(Json(FileView::from(&rec)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TagsBody {
    tags: Vec<String>,
}

/// `PUT /api/files/{id}/tags`
async fn tags(
    State(state): State<AppState>,
    user: AuthUser,
    FileId(id): FileId,
    ApiJson(body): ApiJson<TagsBody>,
) -> AppResult<Json<FileView>> {
    // Before the database is asked whether the file exists (SPEC §9).
    let tags = normalize_tags(body.tags)?;
    let rec = state
        .meta
        .set_tags(&user.0, id, &tags)
        .await?
        .ok_or(AppError::NotFound)?;
    Ok(Json(FileView::from(&rec)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignBody {
    expires_in: Option<i64>,
}

#[derive(Serialize, Deserialize)]
struct SignedLink {
    url: String,
    expires_at: String,
}

/// `POST /api/files/{id}/signed-url`
async fn signed_link(
    State(state): State<AppState>,
    user: AuthUser,
    FileId(id): FileId,
    OptionalJson(body): OptionalJson<SignBody>,
) -> AppResult<Json<SignedLink>> {
    let expires_in = body.and_then(|b| b.expires_in).unwrap_or(3600);
    if !(1..=604_800).contains(&expires_in) {
        return Err(AppError::BadRequest(
            "expires_in must be between 1 and 604800 seconds".into(),
        ));
    }
    let rec = user.file(&state, id).await?;
    let expires = state.now().timestamp() + expires_in;
    let token = signed_url::sign(&state.signing_key, rec.id, &rec.user_id, expires);
    let at = chrono::DateTime::from_timestamp(expires, 0).unwrap_or_default();
    Ok(Json(SignedLink {
        url: format!("/s/{token}"),
        expires_at: at.to_rfc3339_opts(SecondsFormat::Secs, true),
    }))
}
