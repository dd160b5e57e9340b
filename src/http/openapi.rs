//! `GET /openapi.json`: the OpenAPI 3 description of the API, built from the
//! route table below, which is kept next to the routers it describes; a test
//! checks that every documented route answers something other than 404 for
//! an unknown route.

use axum::{routing::get, Json, Router};
use serde_json::{json, Map, Value};

use crate::app::AppState;

/// One documented operation.
pub struct Op {
    pub method: &'static str,
    pub path: &'static str,
    pub summary: &'static str,
    pub auth: Auth,
    /// `(status, description)`; every error also has the shared Error schema.
    pub responses: &'static [(&'static str, &'static str)],
    pub body: Option<&'static str>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    None,
    User,
    Admin,
}

const FILE: &str = "File";

/// Every route of SPEC §3.
pub const OPS: &[Op] = &[
    Op {
        method: "post",
        path: "/api/files/upload",
        summary: "Upload a file (multipart: file, file_type, package_name, tags)",
        auth: Auth::User,
        responses: &[
            ("201", FILE),
            ("400", "bad form"),
            ("413", "over the per-file limit"),
            ("415", "content type refused"),
            ("422", "malware"),
            ("507", "quota exceeded"),
        ],
        body: Some("multipart/form-data"),
    },
    Op {
        method: "get",
        path: "/api/files",
        summary: "List files (type, favorite, tag, q, sort, order, limit, cursor)",
        auth: Auth::User,
        responses: &[("200", "FileList"), ("400", "bad parameter")],
        body: None,
    },
    Op {
        method: "get",
        path: "/api/files/{id}",
        summary: "File details",
        auth: Auth::User,
        responses: &[("200", FILE), ("404", "not found")],
        body: None,
    },
    Op {
        method: "delete",
        path: "/api/files/{id}",
        summary: "Delete a file; usage drops in the same transaction",
        auth: Auth::User,
        responses: &[("204", "deleted"), ("404", "not found")],
        body: None,
    },
    Op {
        method: "get",
        path: "/api/files/{id}/download",
        summary: "Download bytes (Range, ETag, ?inline=1 for media)",
        auth: Auth::User,
        responses: &[
            ("200", "bytes"),
            ("206", "partial"),
            ("304", "not modified"),
            ("404", "not found"),
            ("416", "range not satisfiable"),
        ],
        body: None,
    },
    Op {
        method: "head",
        path: "/api/files/{id}/download",
        summary: "Download headers",
        auth: Auth::User,
        responses: &[("200", "headers")],
        body: None,
    },
    Op {
        method: "get",
        path: "/api/files/{id}/thumbnail",
        summary: "Thumbnail (JPEG or WebP); 404 until generated",
        auth: Auth::User,
        responses: &[("200", "image"), ("404", "not yet")],
        body: None,
    },
    Op {
        method: "post",
        path: "/api/files/{id}/signed-url",
        summary: "Create a signed download link ({\"expires_in\": seconds})",
        auth: Auth::User,
        responses: &[
            ("200", "SignedUrl"),
            ("400", "bad expiry"),
            ("404", "not found"),
        ],
        body: Some("application/json"),
    },
    Op {
        method: "get",
        path: "/s/{token}",
        summary: "Download through a signed link (Range honoured)",
        auth: Auth::None,
        responses: &[
            ("200", "bytes"),
            ("206", "partial"),
            ("403", "invalid or expired"),
        ],
        body: None,
    },
    Op {
        method: "post",
        path: "/api/files/{id}/favorite",
        summary: "Toggle, or set with {\"is_favorite\": bool}",
        auth: Auth::User,
        responses: &[("200", FILE), ("404", "not found")],
        body: Some("application/json"),
    },
    Op {
        method: "put",
        path: "/api/files/{id}/tags",
        summary: "Replace tags ({\"tags\": [...]})",
        auth: Auth::User,
        responses: &[
            ("200", FILE),
            ("400", "too many or too long"),
            ("404", "not found"),
        ],
        body: Some("application/json"),
    },
    Op {
        method: "get",
        path: "/api/storage/usage",
        summary: "Quota and usage by type",
        auth: Auth::User,
        responses: &[("200", "Usage")],
        body: None,
    },
    Op {
        method: "options",
        path: "/api/uploads",
        summary: "tus discovery",
        auth: Auth::None,
        responses: &[("204", "capabilities")],
        body: None,
    },
    Op {
        method: "post",
        path: "/api/uploads",
        summary: "tus creation (and creation-with-upload)",
        auth: Auth::User,
        responses: &[
            ("201", "created; Location"),
            ("413", "too large"),
            ("507", "quota exceeded"),
        ],
        body: Some("application/offset+octet-stream"),
    },
    Op {
        method: "head",
        path: "/api/uploads/{id}",
        summary: "tus offset",
        auth: Auth::User,
        responses: &[("200", "Upload-Offset"), ("404", "not found")],
        body: None,
    },
    Op {
        method: "patch",
        path: "/api/uploads/{id}",
        summary: "tus append; the last PATCH answers Stowage-File-Id",
        auth: Auth::User,
        responses: &[
            ("204", "appended"),
            ("409", "offset mismatch"),
            ("423", "locked"),
            ("460", "checksum mismatch"),
        ],
        body: Some("application/offset+octet-stream"),
    },
    Op {
        method: "delete",
        path: "/api/uploads/{id}",
        summary: "tus termination",
        auth: Auth::User,
        responses: &[("204", "terminated"), ("404", "not found")],
        body: None,
    },
    Op {
        method: "get",
        path: "/api/admin/users",
        summary: "List users",
        auth: Auth::Admin,
        responses: &[("200", "users")],
        body: None,
    },
    Op {
        method: "get",
        path: "/api/admin/users/{id}",
        summary: "User details and usage",
        auth: Auth::Admin,
        responses: &[("200", "Usage"), ("404", "not found")],
        body: None,
    },
    Op {
        method: "put",
        path: "/api/admin/users/{id}/quota",
        summary: "Set max_bytes (creates the user if new)",
        auth: Auth::Admin,
        responses: &[("200", "Usage")],
        body: Some("application/json"),
    },
    Op {
        method: "delete",
        path: "/api/admin/users/{id}",
        summary: "Delete a user with every file, upload and thumbnail",
        auth: Auth::Admin,
        responses: &[("204", "deleted"), ("404", "not found")],
        body: None,
    },
    Op {
        method: "get",
        path: "/healthz",
        summary: "Liveness",
        auth: Auth::None,
        responses: &[("200", "ok")],
        body: None,
    },
    Op {
        method: "get",
        path: "/readyz",
        summary: "Readiness: database and volume writable",
        auth: Auth::None,
        responses: &[("200", "ready"), ("503", "not ready")],
        body: None,
    },
    Op {
        method: "get",
        path: "/metrics",
        summary: "Prometheus metrics",
        auth: Auth::None,
        responses: &[("200", "text")],
        body: None,
    },
    Op {
        method: "get",
        path: "/openapi.json",
        summary: "This document",
        auth: Auth::None,
        responses: &[("200", "OpenAPI 3")],
        body: None,
    },
];

pub fn router() -> Router<AppState> {
    Router::new().route("/openapi.json", get(|| async { Json(document()) }))
}

fn schemas() -> Value {
    json!({
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "object", "required": ["code", "message"], "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}},
        "File": {"type": "object", "properties": {
            "id": {"type": "string", "format": "uuid"}, "file_name": {"type": "string"},
            "file_type": {"type": "string", "enum": ["video", "image", "audio", "scene", "project"]},
            "mime_type": {"type": "string"}, "file_size": {"type": "integer"}, "sha256": {"type": "string"},
            "resolution": {"type": ["string", "null"]}, "duration": {"type": ["string", "null"]},
            "package_name": {"type": ["string", "null"]}, "tags": {"type": "array", "items": {"type": "string"}},
            "is_favorite": {"type": "boolean"}, "upload_date": {"type": "string", "format": "date-time"},
            "thumbnail_url": {"type": ["string", "null"]}}},
        "FileList": {"type": "object", "properties": {"files": {"type": "array", "items": {"$ref": "#/components/schemas/File"}}, "next_cursor": {"type": ["string", "null"]}}},
        "SignedUrl": {"type": "object", "properties": {"url": {"type": "string"}, "expires_at": {"type": "string", "format": "date-time"}}},
        "Usage": {"type": "object", "properties": {"user_id": {"type": "string"}, "total_bytes": {"type": "integer"}, "max_bytes": {"type": "integer"}, "file_count": {"type": "integer"}, "percent_used": {"type": "number"}, "by_type": {"type": "object"}}}
    })
}

/// Builds the document from [`OPS`].
pub fn document() -> Value {
    let mut paths = Map::new();
    for op in OPS {
        let mut responses = Map::new();
        for (code, desc) in op.responses {
            let schema_name = ["File", "FileList", "SignedUrl", "Usage"]
                .contains(desc)
                .then_some(*desc);
            let mut r = json!({"description": desc});
            if let Some(s) = schema_name {
                r["content"] = json!({"application/json": {"schema": {"$ref": format!("#/components/schemas/{s}")}}});
            } else if code.starts_with('4') || code.starts_with('5') {
                r["content"] =
                    json!({"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}});
            }
            responses.insert(code.to_string(), r);
        }
        let mut o = json!({"summary": op.summary, "responses": responses});
        let params: Vec<Value> = op
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        if !params.is_empty() {
            o["parameters"] = Value::Array(params);
        }
        match op.auth {
            Auth::None => o["security"] = json!([]),
            Auth::User => o["security"] = json!([{"bearer": []}, {"session": []}]),
            Auth::Admin => o["security"] = json!([{"admin": []}]),
        }
        if let Some(ct) = op.body {
            o["requestBody"] = json!({"content": {ct: {}}});
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
                "admin": {"type": "http", "scheme": "bearer", "description": "STOWAGE_ADMIN_TOKEN"}
            }
        }
    })
}
