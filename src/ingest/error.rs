//! What can go wrong in an upload, told apart so that the edge answering
//! the client (HTTP in [`crate::http::error`]) picks the status and code
//! without looking at messages.

use crate::{blob::BlobError, meta::MetaError, scan::ScanError};

/// An upload refused or failed. Messages are the client-facing ones.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// A malformed request: bad descriptive fields, a body longer than the
    /// size it declared.
    #[error("{0}")]
    Invalid(String),
    /// Over the per-file limit, or over what a signed URL allows.
    #[error("{0}")]
    TooLarge(String),
    /// Content that is not an accepted type (or not the declared one).
    #[error("{0}")]
    UnsupportedType(String),
    /// Not enough room left in the user's quota.
    #[error("storage quota exceeded: {needed} bytes needed, {available} bytes available")]
    QuotaExceeded { needed: u64, available: u64 },
    /// The user is at the cap of unfinished uploads (SPEC §9).
    #[error("{limit} unfinished uploads already")]
    TooManyUploads { limit: u64 },
    /// The virus scanner found something.
    #[error("{0}")]
    Malware(String),
    /// The upload, its staged data or the file it copies is gone.
    #[error("not found")]
    NotFound,
    /// Another request changed the same upload or file first.
    #[error("{0}")]
    Conflict(String),
    /// A dependency (database, scanner, volume) cannot take it now; retry.
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

pub type IngestResult<T> = Result<T, IngestError>;

impl IngestError {
    pub fn internal(e: impl Into<anyhow::Error>) -> IngestError {
        IngestError::Internal(e.into())
    }

    /// The SPEC §11 `upload.failed` code when this ends an upload after it
    /// started (see [`super::REFUSALS`]); `None` for anything else.
    pub fn refusal_code(&self) -> Option<&'static str> {
        match self {
            IngestError::QuotaExceeded { .. } => Some("quota_exceeded"),
            IngestError::Malware(_) => Some("malware_detected"),
            IngestError::UnsupportedType(_) => Some("unsupported_media_type"),
            IngestError::TooLarge(_) => Some("file_too_large"),
            _ => None,
        }
    }
}

impl From<MetaError> for IngestError {
    fn from(e: MetaError) -> Self {
        match e {
            MetaError::NotFound => IngestError::NotFound,
            MetaError::QuotaExceeded { needed, available } => {
                IngestError::QuotaExceeded { needed, available }
            }
            MetaError::TooManyUploads { limit } => IngestError::TooManyUploads { limit },
            MetaError::Conflict(m) => IngestError::Conflict(m),
            MetaError::Unavailable(m) => IngestError::Unavailable(m),
            other => IngestError::internal(other),
        }
    }
}

impl From<BlobError> for IngestError {
    fn from(e: BlobError) -> Self {
        if !matches!(e, BlobError::NotFound) {
            crate::telemetry::metrics::blob_error();
        }
        match e {
            BlobError::NotFound => IngestError::NotFound,
            BlobError::NoSpace => IngestError::Unavailable("storage volume is full".into()),
            BlobError::Unavailable(m) => IngestError::Unavailable(m),
            other => IngestError::internal(other),
        }
    }
}

impl From<ScanError> for IngestError {
    fn from(e: ScanError) -> Self {
        match e {
            ScanError::Infected(sig) => IngestError::Malware(format!("malware detected: {sig}")),
            ScanError::Unavailable => IngestError::Unavailable("virus scanner unavailable".into()),
            ScanError::Blob(b) => b.into(),
        }
    }
}
