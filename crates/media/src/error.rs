//! The one error type of the crate.
//!
//! Owns [`MediaError`], so that callers (the upload job in the main crate) can map each
//! failure to a log line or a metadata state without matching on strings. Nothing here
//! knows about HTTP: a failed thumbnail is a background-job outcome, not a response.

use std::process::ExitStatus;

/// Why a thumbnail, poster or probe could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// The content is not a format this crate decodes (for example AVIF, SVG, text).
    #[error("unsupported media format")]
    Unsupported,
    /// The header announces more pixels than [`crate::ThumbnailSpec::max_pixels`] allows;
    /// refused before any pixel buffer is allocated.
    #[error("image too large: {pixels} pixels")]
    TooLarge {
        /// Width × height as announced by the file's header.
        pixels: u64,
    },
    /// The file is corrupt, truncated, empty, or its data could not be decoded.
    #[error("decode failed: {0}")]
    Decode(String),
    /// An external tool ran longer than the configured timeout and was killed.
    #[error("external tool timed out")]
    Timeout,
    /// `ffmpeg` or `ffprobe` is not available (its name is carried).
    #[error("{0} is not available")]
    ToolMissing(&'static str),
    /// An external tool exited unsuccessfully; carries the last few KiB of its stderr.
    #[error("external tool failed ({status}): {stderr_tail}")]
    Process {
        /// The tool's exit status.
        status: ExitStatus,
        /// The end of its standard error, at most about 4 KiB, lossily decoded as UTF-8.
        stderr_tail: String,
    },
    /// Reading the source or writing the output failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl MediaError {
    pub(crate) fn decode(e: impl std::fmt::Display) -> Self {
        MediaError::Decode(e.to_string())
    }
}
