//! Errors of the resumable-upload protocol as RFC 9457 problem details
//! (`application/problem+json`), with the draft's problem types where it
//! defines one and `about:blank` otherwise. Each also carries the API's
//! stable `code` (SPEC §3) as an extension member.

use axum::{
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use serde_json::{json, Map, Value};

use super::{Version, UPLOAD_LIMIT, UPLOAD_OFFSET};
use crate::http::error::AppError;

const TYPES: &str = "https://iana.org/assignments/http-problem-types#";

/// What went wrong, with the headers and members the draft asks for.
#[derive(Debug)]
pub struct Problem {
    pub status: StatusCode,
    /// The problem type's fragment under the IANA registry, if any.
    pub kind: Option<&'static str>,
    pub title: String,
    pub detail: String,
    pub code: &'static str,
    /// Extension members (`expected-offset`, `provided-offset`, …).
    pub members: Map<String, Value>,
    pub headers: HeaderMap,
    /// `Upload-Complete` of the answer: true when the upload was whole and
    /// its processing failed (resuming cannot help).
    pub complete: Option<bool>,
}

impl Problem {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Problem {
        Problem {
            status,
            kind: None,
            title: status.canonical_reason().unwrap_or("error").to_string(),
            detail: detail.into(),
            code,
            members: Map::new(),
            headers: HeaderMap::new(),
            complete: None,
        }
    }

    pub fn bad_request(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::BAD_REQUEST, "invalid_request", detail)
    }

    /// 409 `mismatching-upload-offset`.
    pub fn mismatching_offset(expected: u64, provided: u64) -> Problem {
        let mut p = Problem::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("Upload-Offset is {provided} but the upload is at {expected}"),
        );
        p.kind = Some("mismatching-upload-offset");
        p.title = "offset from request does not match offset of resource".into();
        p.members.insert("expected-offset".into(), json!(expected));
        p.members.insert("provided-offset".into(), json!(provided));
        p.headers
            .insert(UPLOAD_OFFSET.clone(), HeaderValue::from(expected));
        p.complete = Some(false);
        p
    }

    /// 400 `inconsistent-upload-length`.
    pub fn inconsistent_length(detail: impl Into<String>) -> Problem {
        let mut p = Problem::bad_request(detail);
        p.kind = Some("inconsistent-upload-length");
        p.title = "inconsistent length values for upload".into();
        p.complete = Some(false);
        p
    }

    /// 400 `completed-upload`: an append to an upload that is complete.
    pub fn completed_upload() -> Problem {
        let mut p = Problem::bad_request("the upload is already complete");
        p.kind = Some("completed-upload");
        p.title = "upload is already completed".into();
        p.complete = Some(true);
        p
    }

    /// 400 `digest-mismatched-values`: the whole upload does not match the
    /// `Repr-Digest` the client gave; nothing was stored.
    pub fn digest_mismatch() -> Problem {
        let mut p = Problem::new(
            StatusCode::BAD_REQUEST,
            "checksum_mismatch",
            "the upload does not match its Repr-Digest sha-256; nothing was stored",
        );
        p.kind = Some("digest-mismatched-values");
        p.title = "mismatched digest values".into();
        p.members.insert("algorithm".into(), json!("sha-256"));
        p.members.insert("header".into(), json!("Repr-Digest"));
        p.complete = Some(true);
        p
    }

    /// Adds `Upload-Limit` (413 and 507 answers say what would fit).
    pub fn with_limit(mut self, limit: Option<HeaderValue>) -> Problem {
        if let Some(v) = limit {
            self.headers.insert(UPLOAD_LIMIT.clone(), v);
        }
        self
    }

    pub fn with_complete(mut self, complete: bool) -> Problem {
        self.complete = Some(complete);
        self
    }

    /// The answer, in the header names of `version`.
    pub fn respond(self, version: Version) -> Response {
        let mut body = Map::new();
        body.insert(
            "type".into(),
            json!(match self.kind {
                Some(k) => format!("{TYPES}{k}"),
                None => "about:blank".into(),
            }),
        );
        body.insert("title".into(), json!(self.title));
        body.insert("status".into(), json!(self.status.as_u16()));
        body.insert("detail".into(), json!(self.detail));
        body.insert("code".into(), json!(self.code));
        body.extend(self.members);
        let mut r = (
            self.status,
            serde_json::to_string(&Value::Object(body)).unwrap_or_default(),
        )
            .into_response();
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        h.extend(self.headers);
        if let Some(c) = self.complete {
            version.set_complete(h, c);
        }
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        r
    }
}

impl From<crate::meta::MetaError> for Problem {
    fn from(e: crate::meta::MetaError) -> Problem {
        AppError::from(e).into()
    }
}

impl From<crate::ingest::IngestError> for Problem {
    fn from(e: crate::ingest::IngestError) -> Problem {
        AppError::from(e).into()
    }
}

impl From<AppError> for Problem {
    fn from(e: AppError) -> Problem {
        let detail = match &e {
            AppError::Internal(err) => {
                tracing::error!(error = ?err, "internal error");
                "internal server error".to_string()
            }
            AppError::Unavailable(m) => {
                tracing::warn!(reason = %m, "service unavailable");
                "service temporarily unavailable, retry later".to_string()
            }
            other => other.to_string(),
        };
        let mut p = Problem::new(e.status(), e.code(), detail);
        match &e {
            AppError::RateLimited { retry_after_secs } => {
                p.headers
                    .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            AppError::Unavailable(_) => {
                p.headers
                    .insert(header::RETRY_AFTER, HeaderValue::from(5u32));
            }
            AppError::Unauthorized(_) => {
                p.headers
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        p
    }
}
