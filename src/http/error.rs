//! One error type for every handler, rendered as the SPEC's
//! `{"error":{"code","message"}}`. Lower layers convert into it with `From`;
//! internal causes are logged here and never sent to clients.

use axum::{
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use serde_json::json;

use crate::{blob::BlobError, ingest::IngestError, meta::MetaError};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("not found")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("{0}")]
    Conflict(String),
    /// A single-use link that was already used (a signed upload URL).
    #[error("{0}")]
    Gone(String),
    #[error("{0}")]
    UnsupportedVersion(String),
    #[error("{0}")]
    TooLarge(String),
    /// A JSON or form body over its limit (SPEC §9); `TooLarge` is the file.
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMedia(String),
    #[error("range not satisfiable")]
    RangeNotSatisfiable { len: u64 },
    #[error("{0}")]
    Malware(String),
    #[error("{0}")]
    Locked(String),
    #[error("too many requests")]
    RateLimited { retry_after_secs: u64 },
    #[error("{0}")]
    ChecksumMismatch(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    QuotaExceeded(String),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl AppError {
    pub fn internal(e: impl Into<anyhow::Error>) -> AppError {
        AppError::Internal(e.into())
    }

    pub fn status(&self) -> StatusCode {
        use AppError::*;
        match self {
            BadRequest(_) => StatusCode::BAD_REQUEST,
            Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Forbidden(_) => StatusCode::FORBIDDEN,
            NotFound => StatusCode::NOT_FOUND,
            MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Conflict(_) => StatusCode::CONFLICT,
            Gone(_) => StatusCode::GONE,
            UnsupportedVersion(_) => StatusCode::PRECONDITION_FAILED,
            TooLarge(_) | PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            UnsupportedMedia(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            RangeNotSatisfiable { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
            Malware(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Locked(_) => StatusCode::LOCKED,
            RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ChecksumMismatch(_) => StatusCode::from_u16(460).expect("valid status"),
            Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            QuotaExceeded(_) => StatusCode::INSUFFICIENT_STORAGE,
            Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable machine-readable code (SPEC §3).
    pub fn code(&self) -> &'static str {
        use AppError::*;
        match self {
            BadRequest(_) | MethodNotAllowed => "invalid_request",
            Unauthorized(_) => "unauthorized",
            Forbidden(_) => "forbidden",
            NotFound => "not_found",
            Conflict(_) => "conflict",
            Gone(_) => "gone",
            UnsupportedVersion(_) => "unsupported_version",
            TooLarge(_) => "file_too_large",
            PayloadTooLarge(_) => "payload_too_large",
            UnsupportedMedia(_) => "unsupported_media_type",
            RangeNotSatisfiable { .. } => "range_not_satisfiable",
            Malware(_) => "malware_detected",
            Locked(_) => "locked",
            RateLimited { .. } => "rate_limited",
            ChecksumMismatch(_) => "checksum_mismatch",
            Unavailable(_) => "unavailable",
            QuotaExceeded(_) => "quota_exceeded",
            Internal(_) => "internal",
        }
    }
}

/// Builds the error body; also used by middleware that answers directly.
pub fn error_body(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = match &self {
            AppError::Internal(e) => {
                tracing::error!(error = ?e, "internal error");
                "internal server error".to_string()
            }
            AppError::Unavailable(m) => {
                tracing::warn!(reason = %m, "service unavailable");
                "service temporarily unavailable, retry later".to_string()
            }
            other => other.to_string(),
        };
        let mut resp = error_body(status, self.code(), &message);
        let headers = resp.headers_mut();
        match &self {
            AppError::RateLimited { retry_after_secs } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            AppError::RangeNotSatisfiable { len } => {
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                    headers.insert(header::CONTENT_RANGE, v);
                }
            }
            AppError::Unavailable(_) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(5u32));
            }
            AppError::Unauthorized(_) => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        resp
    }
}

/// `Retry-After` for a user at their cap of unfinished uploads: a slot frees
/// when one of them finishes, is terminated or expires, which the server
/// cannot predict; a minute keeps well-behaved clients from spinning.
const UNFINISHED_RETRY_AFTER_SECS: u64 = 60;

impl From<MetaError> for AppError {
    fn from(e: MetaError) -> Self {
        match e {
            MetaError::NotFound => AppError::NotFound,
            MetaError::QuotaExceeded { needed, available } => AppError::QuotaExceeded(format!(
                "storage quota exceeded: {needed} bytes needed, {available} bytes available"
            )),
            MetaError::Conflict(m) => AppError::Conflict(m),
            MetaError::TooManyUploads { .. } => AppError::RateLimited {
                retry_after_secs: UNFINISHED_RETRY_AFTER_SECS,
            },
            MetaError::Unavailable(m) => AppError::Unavailable(m),
            other => AppError::internal(other),
        }
    }
}

impl From<BlobError> for AppError {
    fn from(e: BlobError) -> Self {
        if !matches!(e, BlobError::NotFound) {
            crate::telemetry::metrics::blob_error();
        }
        match e {
            BlobError::NotFound => AppError::NotFound,
            BlobError::NoSpace => AppError::Unavailable("storage volume is full".into()),
            BlobError::Unavailable(m) => AppError::Unavailable(m),
            other => AppError::internal(other),
        }
    }
}

impl From<IngestError> for AppError {
    fn from(e: IngestError) -> Self {
        match e {
            IngestError::Invalid(m) => AppError::BadRequest(m),
            IngestError::TooLarge(m) => AppError::TooLarge(m),
            IngestError::UnsupportedType(m) => AppError::UnsupportedMedia(m),
            e @ IngestError::QuotaExceeded { .. } => AppError::QuotaExceeded(e.to_string()),
            IngestError::TooManyUploads { .. } => AppError::RateLimited {
                retry_after_secs: UNFINISHED_RETRY_AFTER_SECS,
            },
            IngestError::Malware(m) => AppError::Malware(m),
            IngestError::NotFound => AppError::NotFound,
            IngestError::Conflict(m) => AppError::Conflict(m),
            IngestError::Unavailable(m) => AppError::Unavailable(m),
            IngestError::Internal(e) => AppError::Internal(e),
        }
    }
}

pub type AppResult<T> = Result<T, AppError>;
