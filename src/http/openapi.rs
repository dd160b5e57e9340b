//! `GET /openapi.json`: the OpenAPI 3.1 description of the API, built from the
//! route table below, which is kept next to the routers it describes; a test
//! checks that every documented route answers something other than 404 for
//! an unknown route.
//!
//! The document is precise enough to generate clients from, and the web
//! package does exactly that (`web/src/lib/openapi.json` is a committed copy,
//! `web/src/lib/openapi.ts` the types generated from it; tests fail when
//! either drifts from what the server serves). So every schema names its
//! required fields, request bodies and query parameters are typed, each
//! operation has an `operationId`, and every answer that hands out a file id
//! carries OpenAPI `links` to the operations on that file (details, download,
//! thumbnail, signed link, tags, favourite, delete): generated clients and
//! stateful fuzzers chain an upload into the calls that follow it.

use axum::{routing::get, Json, Router};
use serde_json::{json, Map, Value};

use crate::app::AppState;

/// One documented operation.
pub struct Op {
    pub method: &'static str,
    pub path: &'static str,
    /// The `operationId`: unique, lower camel case; links refer to it.
    pub id: &'static str,
    pub summary: &'static str,
    pub auth: Auth,
    /// `(status, answer)`; every error also has the shared Error schema.
    pub responses: &'static [(&'static str, Out)],
    pub query: &'static [Query],
    pub body: Option<Body>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    None,
    User,
    Admin,
}

/// What a response carries.
#[derive(Clone, Copy)]
pub enum Out {
    /// Nothing described (bytes, headers, an empty body; errors get Error).
    Plain(&'static str),
    /// A JSON body of the named schema.
    Json(&'static str, &'static str),
    /// A File as JSON: links from its `id` to the operations on it.
    File(&'static str),
    /// Headers only; a completed upload names its file in `Stowage-File-Id`,
    /// linked like a File's `id`.
    FileIdHeader(&'static str),
}

/// A request body: media type and, for JSON and forms, the schema.
#[derive(Clone, Copy)]
pub struct Body {
    pub content_type: &'static str,
    pub schema: Option<&'static str>,
    pub required: bool,
}

/// A query parameter (all optional).
#[derive(Clone, Copy)]
pub struct Query {
    pub name: &'static str,
    pub ty: Ty,
    pub description: &'static str,
}

#[derive(Clone, Copy)]
pub enum Ty {
    Str,
    Bool,
    Int,
    OneOf(&'static [&'static str]),
    Ref(&'static str),
}

const FILE: Out = Out::File("the file");
const NOT_FOUND: (&str, Out) = ("404", Out::Plain("not found"));

const fn json_body(schema: &'static str, required: bool) -> Body {
    Body {
        content_type: "application/json",
        schema: Some(schema),
        required,
    }
}

const TUS_BODY: Body = Body {
    content_type: "application/offset+octet-stream",
    schema: None,
    required: false,
};

const UPLOAD_FORM: Body = Body {
    content_type: "multipart/form-data",
    schema: Some("UploadForm"),
    required: true,
};

impl Op {
    /// An operation answering nothing yet, without query parameters or a
    /// body; the methods below add them.
    const fn new(
        method: &'static str,
        path: &'static str,
        id: &'static str,
        auth: Auth,
        summary: &'static str,
    ) -> Op {
        Op {
            method,
            path,
            id,
            summary,
            auth,
            responses: &[],
            query: &[],
            body: None,
        }
    }

    const fn responses(mut self, responses: &'static [(&'static str, Out)]) -> Op {
        self.responses = responses;
        self
    }

    const fn query(mut self, query: &'static [Query]) -> Op {
        self.query = query;
        self
    }

    const fn body(mut self, body: Body) -> Op {
        self.body = Some(body);
        self
    }
}

impl Query {
    const fn new(name: &'static str, ty: Ty, description: &'static str) -> Query {
        Query {
            name,
            ty,
            description,
        }
    }
}

/// The operations a file id leads to, as `(link name, operationId)`.
pub const FILE_LINKS: &[(&str, &str)] = &[
    ("GetFile", "getFile"),
    ("DownloadFile", "downloadFile"),
    ("GetThumbnail", "getThumbnail"),
    ("CreateSignedUrl", "createSignedUrl"),
    ("SetFileTags", "setFileTags"),
    ("SetFileFavorite", "setFileFavorite"),
    ("RenameFile", "renameFile"),
    ("CopyFile", "copyFile"),
    ("DeleteFile", "deleteFile"),
];

/// Every route of SPEC §3.
pub const OPS: &[Op] = &[
    Op::new(
        "post",
        "/api/files/upload",
        "uploadFile",
        Auth::User,
        "Upload a file (multipart: file, file_type, package_name, tags)",
    )
    .responses(&[
        ("201", FILE),
        ("400", Out::Plain("bad form")),
        ("413", Out::Plain("over the per-file limit")),
        ("415", Out::Plain("content type refused")),
        ("422", Out::Plain("malware")),
        ("507", Out::Plain("quota exceeded")),
    ])
    .body(UPLOAD_FORM),
    Op::new(
        "get",
        "/api/files",
        "listFiles",
        Auth::User,
        "List files (type, favorite, tag, q, sort, order, limit, cursor)",
    )
    .responses(&[
        ("200", Out::Json("a page of files", "FileList")),
        ("400", Out::Plain("bad parameter")),
    ])
    .query(&[
        Query::new("type", Ty::Ref("FileType"), "only files of this type"),
        Query::new("favorite", Ty::Bool, "only favourites"),
        Query::new("tag", Ty::Str, "only files with this tag"),
        Query::new("q", Ty::Str, "file name contains this, case-insensitively"),
        Query::new(
            "sort",
            Ty::OneOf(&["upload_date", "file_name", "file_size"]),
            "sort field (default upload_date)",
        ),
        Query::new("order", Ty::OneOf(&["asc", "desc"]), "sort order (default desc)"),
        Query::new("limit", Ty::Int, "page size: default 50, above 200 counts as 200"),
        Query::new("cursor", Ty::Str, "next_cursor of the previous page"),
    ]),
    Op::new("get", "/api/files/{id}", "getFile", Auth::User, "File details")
        .responses(&[("200", FILE), NOT_FOUND]),
    Op::new(
        "delete",
        "/api/files/{id}",
        "deleteFile",
        Auth::User,
        "Delete a file; usage drops in the same transaction",
    )
    .responses(&[("204", Out::Plain("deleted")), NOT_FOUND]),
    Op::new(
        "get",
        "/api/files/{id}/download",
        "downloadFile",
        Auth::User,
        "Download bytes (Range, ETag, ?inline=1 for media)",
    )
    .responses(&[
        ("200", Out::Plain("bytes")),
        ("206", Out::Plain("partial")),
        ("304", Out::Plain("not modified")),
        NOT_FOUND,
        ("416", Out::Plain("range not satisfiable")),
    ])
    .query(&[
        Query::new(
            "inline",
            Ty::OneOf(&["1"]),
            "Content-Disposition inline (raster images, video, audio only)",
        ),
    ]),
    Op::new("head", "/api/files/{id}/download", "headDownload", Auth::User, "Download headers")
        .responses(&[("200", Out::Plain("headers"))]),
    Op::new(
        "get",
        "/api/files/{id}/thumbnail",
        "getThumbnail",
        Auth::User,
        "Thumbnail (JPEG or WebP); 404 until generated",
    )
    .responses(&[("200", Out::Plain("image")), ("404", Out::Plain("not yet"))]),
    Op::new(
        "post",
        "/api/files/{id}/signed-url",
        "createSignedUrl",
        Auth::User,
        "Create a signed download link ({\"expires_in\": seconds})",
    )
    .responses(&[
        ("200", Out::Json("the link", "SignedUrl")),
        ("400", Out::Plain("bad expiry")),
        NOT_FOUND,
    ])
    .body(json_body("SignedUrlRequest", false)),
    Op::new(
        "get",
        "/s/{token}",
        "signedDownload",
        Auth::None,
        "Download through a signed link (Range honoured)",
    )
    .responses(&[
        ("200", Out::Plain("bytes")),
        ("206", Out::Plain("partial")),
        ("403", Out::Plain("invalid or expired")),
    ]),
    Op::new(
        "get",
        "/s/{token}/thumbnail",
        "signedThumbnail",
        Auth::None,
        "Thumbnail through a signed link",
    )
    .responses(&[
        ("200", Out::Plain("image")),
        ("403", Out::Plain("invalid or expired")),
        ("404", Out::Plain("not yet")),
    ]),
    Op::new(
        "patch",
        "/api/files/{id}",
        "renameFile",
        Auth::User,
        "Rename and/or move to another package ({\"file_name\"?, \"package_name\"?}); names sanitized as on upload",
    )
    .responses(&[("200", FILE), ("400", Out::Plain("bad body")), NOT_FOUND])
    .body(json_body("RenameRequest", false)),
    Op::new(
        "post",
        "/api/files/{id}/copy",
        "copyFile",
        Auth::User,
        "Copy a file ({\"file_name\"?}); counted against the quota like an upload, copied inside the store",
    )
    .responses(&[
        ("201", Out::File("the copy")),
        NOT_FOUND,
        ("413", Out::Plain("over the per-file limit")),
        ("507", Out::Plain("quota exceeded")),
    ])
    .body(json_body("CopyRequest", false)),
    Op::new(
        "get",
        "/api/files/archive",
        "downloadArchive",
        Auth::User,
        "A ZIP (stored entries, ZIP64 when needed) of a package or of up to 200 ids, streamed",
    )
    .responses(&[
        ("200", Out::Plain("application/zip")),
        ("400", Out::Plain("neither or both of package_name and ids")),
        ("404", Out::Plain("an id is not the user's, or the package is empty")),
    ])
    .query(&[
        Query::new("package_name", Ty::Str, "every file of this package"),
        Query::new("ids", Ty::Str, "comma-separated file ids (at most 200)"),
    ]),
    Op::new(
        "post",
        "/api/files/archive/signed-url",
        "createArchiveSignedUrl",
        Auth::User,
        "A signed link (/s/archive/…) to the archive of a package or of up to 200 ids",
    )
    .responses(&[
        ("200", Out::Json("the link", "SignedUrl")),
        ("400", Out::Plain("bad selection or expiry")),
        NOT_FOUND,
    ])
    .body(json_body("ArchiveLinkRequest", true)),
    Op::new(
        "get",
        "/s/archive/{token}",
        "signedArchive",
        Auth::None,
        "Download an archive through a signed link",
    )
    .responses(&[
        ("200", Out::Plain("application/zip")),
        ("403", Out::Plain("invalid or expired")),
        ("404", Out::Plain("the files are gone")),
    ]),
    Op::new(
        "post",
        "/api/uploads/signed",
        "createSignedUpload",
        Auth::User,
        "A single-use upload URL (/u/…) with max_bytes reserved at once",
    )
    .responses(&[
        ("200", Out::Json("the URL", "SignedUrl")),
        ("400", Out::Plain("bad body")),
        ("413", Out::Plain("max_bytes over the per-file limit")),
        ("429", Out::Plain("too many unfinished uploads")),
        ("507", Out::Plain("quota exceeded")),
    ])
    .body(json_body("SignedUploadRequest", true)),
    Op::new(
        "post",
        "/u/{token}",
        "signedUpload",
        Auth::None,
        "Upload one file through a signed upload URL (multipart as /api/files/upload; no session)",
    )
    .responses(&[
        ("201", FILE),
        ("400", Out::Plain("bad form")),
        ("403", Out::Plain("invalid or expired")),
        ("410", Out::Plain("already used")),
        ("413", Out::Plain("over the URL's max_bytes")),
        ("415", Out::Plain("content type refused")),
        ("422", Out::Plain("malware")),
    ])
    .body(UPLOAD_FORM),
    Op::new(
        "post",
        "/api/files/{id}/favorite",
        "setFileFavorite",
        Auth::User,
        "Toggle, or set with {\"is_favorite\": bool}",
    )
    .responses(&[("200", FILE), NOT_FOUND])
    .body(json_body("FavoriteRequest", false)),
    Op::new(
        "put",
        "/api/files/{id}/tags",
        "setFileTags",
        Auth::User,
        "Replace tags ({\"tags\": [...]})",
    )
    .responses(&[
        ("200", FILE),
        ("400", Out::Plain("too many or too long")),
        NOT_FOUND,
    ])
    .body(json_body("TagsRequest", true)),
    Op::new("get", "/api/storage/usage", "getUsage", Auth::User, "Quota and usage by type")
        .responses(&[("200", Out::Json("usage", "Usage"))]),
    Op::new("options", "/api/uploads", "tusDiscover", Auth::None, "tus discovery")
        .responses(&[("204", Out::Plain("capabilities"))]),
    Op::new(
        "post",
        "/api/uploads",
        "tusCreate",
        Auth::User,
        "tus creation (and creation-with-upload)",
    )
    .responses(&[
        (
            "201",
            Out::FileIdHeader("created; Location, and Stowage-File-Id when already complete"),
        ),
        ("413", Out::Plain("too large")),
        ("507", Out::Plain("quota exceeded")),
    ])
    .body(TUS_BODY),
    Op::new("head", "/api/uploads/{id}", "tusOffset", Auth::User, "tus offset")
        .responses(&[("200", Out::Plain("Upload-Offset")), NOT_FOUND]),
    Op::new(
        "patch",
        "/api/uploads/{id}",
        "tusAppend",
        Auth::User,
        "tus append; the last PATCH answers Stowage-File-Id",
    )
    .responses(&[
        ("204", Out::FileIdHeader("appended")),
        ("409", Out::Plain("offset mismatch")),
        ("423", Out::Plain("locked")),
        ("460", Out::Plain("checksum mismatch")),
    ])
    .body(TUS_BODY),
    Op::new("delete", "/api/uploads/{id}", "tusTerminate", Auth::User, "tus termination")
        .responses(&[("204", Out::Plain("terminated")), NOT_FOUND]),
    Op::new("get", "/api/admin/users", "adminListUsers", Auth::Admin, "List users")
        .responses(&[("200", Out::Json("users", "UserList"))]),
    Op::new("get", "/api/admin/users/{id}", "adminGetUser", Auth::Admin, "User details and usage")
        .responses(&[("200", Out::Json("the user", "UserDetails")), NOT_FOUND]),
    Op::new(
        "put",
        "/api/admin/users/{id}/quota",
        "adminSetQuota",
        Auth::Admin,
        "Set max_bytes (creates the user if new)",
    )
    .responses(&[
        ("200", Out::Json("the user", "UserDetails")),
        ("400", Out::Plain("bad quota")),
    ])
    .body(json_body("QuotaRequest", true)),
    Op::new(
        "delete",
        "/api/admin/users/{id}",
        "adminDeleteUser",
        Auth::Admin,
        "Delete a user with every file, upload and thumbnail",
    )
    .responses(&[("204", Out::Plain("deleted")), NOT_FOUND]),
    Op::new(
        "get",
        "/api/admin/jobs/failed",
        "adminFailedJobs",
        Auth::Admin,
        "Background jobs that gave up (at most 100)",
    )
    .responses(&[("200", Out::Json("jobs", "FailedJobs"))]),
    Op::new(
        "get",
        "/api/admin/events",
        "adminListEvents",
        Auth::Admin,
        "Recorded events and their webhook delivery, newest first (type, status, limit, cursor)",
    )
    .responses(&[
        ("200", Out::Json("a page of events", "EventList")),
        ("400", Out::Plain("bad parameter")),
    ])
    .query(&[
        Query::new("type", Ty::Ref("EventType"), "only events of this type"),
        Query::new(
            "status",
            Ty::OneOf(&["pending", "delivered", "failed"]),
            "only events in this delivery state",
        ),
        Query::new("limit", Ty::Int, "page size, 1 to 200 (default 50)"),
        Query::new("cursor", Ty::Str, "next_cursor of the previous page"),
    ]),
    Op::new(
        "post",
        "/api/admin/events/{id}/replay",
        "adminReplayEvent",
        Auth::Admin,
        "Queue one event for delivery again (due now, a fresh retry window)",
    )
    .responses(&[("200", Out::Json("the event", "Event")), NOT_FOUND]),
    Op::new("get", "/healthz", "healthz", Auth::None, "Liveness")
        .responses(&[("200", Out::Plain("ok"))]),
    Op::new("get", "/readyz", "readyz", Auth::None, "Readiness: database and volume writable")
        .responses(&[
            ("200", Out::Plain("ready")),
            ("503", Out::Plain("not ready")),
        ]),
    Op::new("get", "/metrics", "metrics", Auth::None, "Prometheus metrics")
        .responses(&[("200", Out::Plain("text"))]),
    Op::new("get", "/openapi.json", "openapi", Auth::None, "This document")
        .responses(&[("200", Out::Plain("OpenAPI 3"))]),
];

pub fn router() -> Router<AppState> {
    Router::new().route("/openapi.json", get(|| async { Json(document()) }))
}

const FILE_TYPES: [&str; 5] = ["video", "image", "audio", "scene", "project"];

fn object(required: &[&str], properties: Value) -> Value {
    json!({"type": "object", "required": required, "properties": properties})
}

fn schema_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn schemas() -> Value {
    let string = json!({"type": "string"});
    let int = json!({"type": "integer"});
    let nullable = json!({"type": ["string", "null"]});
    let by_type: Map<String, Value> = FILE_TYPES
        .iter()
        .map(|t| (t.to_string(), schema_ref("TypeUsage")))
        .collect();
    let usage_props = json!({
        "user_id": string, "total_bytes": int, "max_bytes": int, "file_count": int,
        "percent_used": {"type": "number", "description": "rounded to 2 decimals; a zero quota reads 100"},
        "by_type": {"type": "object", "required": FILE_TYPES, "properties": by_type, "additionalProperties": false}
    });
    let usage_required = [
        "user_id",
        "total_bytes",
        "max_bytes",
        "file_count",
        "percent_used",
        "by_type",
    ];
    let mut details = usage_props.clone();
    details["reserved_bytes"] = int.clone();
    details["created_at"] = json!({"type": "string", "format": "date-time"});
    let mut details_required = usage_required.to_vec();
    details_required.extend(["reserved_bytes", "created_at"]);
    json!({
        "Error": object(&["error"], json!({"error": object(&["code", "message"], json!({"code": string, "message": string}))})),
        "FileType": {"type": "string", "enum": FILE_TYPES},
        "File": object(
            &["id", "file_name", "file_type", "mime_type", "file_size", "sha256", "resolution", "duration",
              "package_name", "tags", "is_favorite", "upload_date", "thumbnail_url"],
            json!({
                "id": {"type": "string", "format": "uuid"}, "file_name": string,
                "file_type": schema_ref("FileType"),
                "mime_type": string, "file_size": int, "sha256": string,
                "resolution": {"type": ["string", "null"], "description": "WIDTHxHEIGHT; null until known"},
                "duration": {"type": ["string", "null"], "description": "HH:MM:SS; null until known"},
                "package_name": nullable, "tags": {"type": "array", "items": string},
                "is_favorite": {"type": "boolean"}, "upload_date": {"type": "string", "format": "date-time"},
                "thumbnail_url": {"type": ["string", "null"], "description": "null until generated"}
            }),
        ),
        "FileList": object(&["files", "next_cursor"], json!({
            "files": {"type": "array", "items": schema_ref("File")},
            "next_cursor": {"type": ["string", "null"], "description": "null on the last page"}
        })),
        "UploadForm": object(&["file"], json!({
            "file": {"type": "string", "contentMediaType": "application/octet-stream"},
            "file_type": schema_ref("FileType"),
            "package_name": string,
            "tags": {"type": "string", "description": "comma-separated"}
        })),
        "SignedUrlRequest": {"type": "object", "additionalProperties": false, "properties": {
            "expires_in": {"type": "integer", "minimum": 1, "maximum": 604_800, "description": "seconds; 3600 when absent"}
        }},
        "SignedUrl": object(&["url", "expires_at"], json!({
            "url": {"type": "string", "description": "/s/…, needs no session"},
            "expires_at": {"type": "string", "format": "date-time"}
        })),
        "RenameRequest": {"type": "object", "additionalProperties": false, "properties": {
            "file_name": string,
            "package_name": {"type": ["string", "null"], "description": "null or empty takes the file out of its package"}
        }},
        "CopyRequest": {"type": "object", "additionalProperties": false, "properties": {
            "file_name": {"type": "string", "description": "the copy's name; the original's when absent"}
        }},
        "ArchiveLinkRequest": {"type": "object", "additionalProperties": false, "properties": {
            "package_name": string,
            "ids": {"type": "array", "maxItems": 200, "items": {"type": "string", "format": "uuid"}},
            "expires_in": {"type": "integer", "minimum": 1, "maximum": 604_800, "description": "seconds; 3600 when absent"}
        }},
        "SignedUploadRequest": {"type": "object", "additionalProperties": false, "required": ["max_bytes"], "properties": {
            "max_bytes": {"type": "integer", "minimum": 1, "description": "reserved at once; the upload may not be larger"},
            "expires_in": {"type": "integer", "minimum": 1, "maximum": 604_800, "description": "seconds; 3600 when absent"},
            "file_type": schema_ref("FileType"),
            "file_name": string
        }},
        "FavoriteRequest": {"type": "object", "additionalProperties": false, "required": ["is_favorite"],
            "properties": {"is_favorite": {"type": "boolean"}}},
        "TagsRequest": {"type": "object", "additionalProperties": false, "required": ["tags"], "properties": {
            "tags": {"type": "array", "maxItems": 32, "items": {"type": "string", "maxLength": 64}}
        }},
        "TypeUsage": object(&["bytes", "count"], json!({"bytes": int, "count": int})),
        "Usage": object(&usage_required, usage_props),
        "UserDetails": object(&details_required, details),
        "QuotaRequest": {"type": "object", "additionalProperties": false, "required": ["max_bytes"],
            "properties": {"max_bytes": {"type": "integer", "minimum": 0}}},
        "UserStorage": object(
            &["user_id", "total_bytes", "reserved_bytes", "max_bytes", "file_count", "created_at", "updated_at"],
            json!({
                "user_id": string, "total_bytes": int, "reserved_bytes": int, "max_bytes": int, "file_count": int,
                "created_at": {"type": "string", "format": "date-time"},
                "updated_at": {"type": "string", "format": "date-time"}
            }),
        ),
        "UserList": object(&["users"], json!({"users": {"type": "array", "items": schema_ref("UserStorage")}})),
        "Job": object(&["id", "kind", "payload", "status", "attempts", "last_error"], json!({
            "id": {"type": "string", "format": "uuid"}, "kind": string, "payload": string, "status": string,
            "attempts": int, "last_error": nullable
        })),
        "FailedJobs": object(&["jobs"], json!({"jobs": {"type": "array", "items": schema_ref("Job")}})),
        "EventType": {"type": "string", "enum": crate::meta::EventType::ALL.map(|t| t.as_str())},
        "Event": object(
            &["id", "type", "created_at", "user_id", "data", "status", "attempts", "last_error",
              "next_attempt_at", "delivered_at"],
            json!({
                "id": {"type": "string", "format": "uuid", "description": "stable across retries"},
                "type": schema_ref("EventType"),
                "created_at": {"type": "string", "format": "date-time"},
                "user_id": string,
                "data": {"type": "object", "description": "per type; see docs/integration.md"},
                "status": {"type": "string", "enum": ["pending", "delivered", "failed"]},
                "attempts": int,
                "last_error": nullable,
                "next_attempt_at": {"type": ["string", "null"], "format": "date-time", "description": "when a pending event is tried next"},
                "delivered_at": {"type": ["string", "null"], "format": "date-time"}
            }),
        ),
        "EventList": object(&["events", "next_cursor"], json!({
            "events": {"type": "array", "items": schema_ref("Event")},
            "next_cursor": {"type": ["string", "null"], "description": "null on the last page"}
        }))
    })
}

/// `links` from a file id (a runtime expression) to [`FILE_LINKS`].
fn file_links(id: &str) -> Value {
    FILE_LINKS
        .iter()
        .map(|(name, op)| {
            (
                name.to_string(),
                json!({"operationId": op, "parameters": {"id": id}}),
            )
        })
        .collect::<Map<_, _>>()
        .into()
}

fn response(code: &str, out: Out) -> Value {
    let error = code.starts_with('4') || code.starts_with('5');
    match out {
        Out::Json(desc, schema) => {
            json!({"description": desc, "content": {"application/json": {"schema": schema_ref(schema)}}})
        }
        Out::File(desc) => json!({
            "description": desc,
            "content": {"application/json": {"schema": schema_ref("File")}},
            "links": file_links("$response.body#/id"),
        }),
        Out::FileIdHeader(desc) => json!({
            "description": desc,
            "headers": {"Stowage-File-Id": {
                "description": "id of the file the upload became, once complete",
                "schema": {"type": "string", "format": "uuid"}
            }},
            "links": file_links("$response.header.Stowage-File-Id"),
        }),
        Out::Plain(desc) if error => {
            json!({"description": desc, "content": {"application/json": {"schema": schema_ref("Error")}}})
        }
        Out::Plain(desc) => json!({"description": desc}),
    }
}

fn query_schema(ty: Ty) -> Value {
    match ty {
        Ty::Str => json!({"type": "string"}),
        Ty::Bool => json!({"type": "boolean"}),
        Ty::Int => json!({"type": "integer", "minimum": 1}),
        Ty::OneOf(values) => json!({"type": "string", "enum": values}),
        Ty::Ref(name) => schema_ref(name),
    }
}

/// Builds the document from [`OPS`].
pub fn document() -> Value {
    let mut paths = Map::new();
    for op in OPS {
        let responses: Map<String, Value> = op
            .responses
            .iter()
            .map(|(code, out)| (code.to_string(), response(code, *out)))
            .collect();
        let mut o = json!({"operationId": op.id, "summary": op.summary, "responses": responses});
        let params: Vec<Value> = op
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .chain(op.query.iter().map(|q| {
                json!({"name": q.name, "in": "query", "required": false,
                       "description": q.description, "schema": query_schema(q.ty)})
            }))
            .collect();
        if !params.is_empty() {
            o["parameters"] = Value::Array(params);
        }
        match op.auth {
            Auth::None => o["security"] = json!([]),
            Auth::User => {
                o["security"] =
                    json!([{"bearer": []}, {"session": []}, {"admin": [], "onBehalfOf": []}])
            }
            Auth::Admin => o["security"] = json!([{"admin": []}]),
        }
        if let Some(body) = op.body {
            let media = match body.schema {
                Some(s) => json!({"schema": schema_ref(s)}),
                None => json!({}),
            };
            o["requestBody"] =
                json!({"required": body.required, "content": {body.content_type: media}});
        }
        paths
            .entry(op.path.to_string())
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .expect("object")
            .insert(op.method.to_string(), o);
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "stowage", "version": env!("CARGO_PKG_VERSION"), "description": "Per-user file storage with hard quotas."},
        "paths": paths,
        "components": {
            "schemas": schemas(),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "session": {"type": "apiKey", "in": "cookie", "name": "__session"},
                "admin": {"type": "http", "scheme": "bearer", "description": "STOWAGE_ADMIN_TOKEN"},
                "onBehalfOf": {"type": "apiKey", "in": "header", "name": "Stowage-On-Behalf-Of",
                    "description": "with the admin token: the user id a request acts for, on /api/files, /api/storage and /api/uploads"}
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    /// `operationId` → (method, path, declared parameter names).
    fn operations(doc: &Value) -> BTreeMap<String, (String, String, BTreeSet<String>)> {
        let mut ops = BTreeMap::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let id = op["operationId"]
                    .as_str()
                    .expect("every operation has an id");
                let params = op["parameters"]
                    .as_array()
                    .map(|ps| {
                        ps.iter()
                            .filter(|p| p["in"] == "path")
                            .map(|p| p["name"].as_str().unwrap().to_string())
                            .collect()
                    })
                    .unwrap_or_default();
                let old = ops.insert(id.to_string(), (method.clone(), path.clone(), params));
                assert!(old.is_none(), "operationId {id} is used twice");
            }
        }
        ops
    }

    #[test]
    fn an_upload_links_to_every_operation_on_the_file() {
        let doc = document();
        let ops = operations(&doc);
        for (path, method, status, expr) in [
            ("/api/files/upload", "post", "201", "$response.body#/id"),
            (
                "/api/uploads",
                "post",
                "201",
                "$response.header.Stowage-File-Id",
            ),
            (
                "/api/uploads/{id}",
                "patch",
                "204",
                "$response.header.Stowage-File-Id",
            ),
        ] {
            let links = &doc["paths"][path][method]["responses"][status]["links"];
            let targets: BTreeSet<&str> = links
                .as_object()
                .unwrap_or_else(|| panic!("{method} {path} {status} has links"))
                .values()
                .map(|l| {
                    assert_eq!(l["parameters"]["id"], expr, "{method} {path}");
                    l["operationId"].as_str().unwrap()
                })
                .collect();
            for want in [
                "getFile",
                "downloadFile",
                "deleteFile",
                "setFileTags",
                "setFileFavorite",
            ] {
                assert!(targets.contains(want), "{method} {path} links to {want}");
                assert!(ops.contains_key(want), "{want} is an operation");
            }
        }
    }

    #[test]
    fn links_name_existing_operations_and_exactly_their_path_parameters() {
        let doc = document();
        let ops = operations(&doc);
        let mut seen = 0;
        for item in doc["paths"].as_object().unwrap().values() {
            for op in item.as_object().unwrap().values() {
                for resp in op["responses"].as_object().unwrap().values() {
                    for link in resp["links"]
                        .as_object()
                        .into_iter()
                        .flat_map(|l| l.values())
                    {
                        let target = link["operationId"].as_str().unwrap();
                        let (_, _, params) = ops
                            .get(target)
                            .unwrap_or_else(|| panic!("link to unknown operation {target}"));
                        let given: BTreeSet<String> = link["parameters"]
                            .as_object()
                            .unwrap()
                            .keys()
                            .cloned()
                            .collect();
                        assert_eq!(&given, params, "link to {target}");
                        seen += 1;
                    }
                }
            }
        }
        assert!(seen > 0);
    }

    #[test]
    fn every_schema_reference_resolves() {
        let doc = document();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        fn walk(v: &Value, found: &mut Vec<String>) {
            match v {
                Value::Object(m) => {
                    if let Some(Value::String(r)) = m.get("$ref") {
                        found.push(r.clone());
                    }
                    m.values().for_each(|x| walk(x, found));
                }
                Value::Array(a) => a.iter().for_each(|x| walk(x, found)),
                _ => {}
            }
        }
        let mut refs = Vec::new();
        walk(&doc, &mut refs);
        assert!(!refs.is_empty());
        for r in refs {
            let name = r.strip_prefix("#/components/schemas/").expect(&r);
            assert!(schemas.contains_key(name), "{r} resolves");
        }
    }
}
