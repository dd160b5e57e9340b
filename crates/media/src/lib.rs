//! Media layer of stowage: thumbnails and metadata for uploaded files.
//!
//! After an upload is committed, a background job asks this crate for a thumbnail and
//! for the metadata the listing shows (resolution for images and video, duration as
//! `HH:MM:SS` for video and audio). The crate is deliberately fenced off: it knows local
//! files and external tools, nothing about HTTP, users or databases, so that decoding
//! untrusted content stays in one small, testable place.
//!
//! Modules:
//! - [`mod@image`] owns in-process image thumbnails (JPEG, PNG, GIF, WebP, AVIF) with a
//!   pixel-count guard read from the header before any decoding, EXIF orientation, and
//!   DCT-domain downscaling for JPEG.
//! - [`video`] owns [`MediaTools`], which runs `ffprobe`/`ffmpeg` for probing video and
//!   audio and for video poster frames.
//! - `jpeg_dc` (private) owns the DC-only decoder for baseline JPEGs that
//!   [`mod@image`] uses when 1/8 of the resolution is enough (typical photos).
//! - [`process`] owns the single subprocess wrapper (no shell, timeout, kill on drop,
//!   bounded output capture) that every external tool call goes through.
//! - [`error`] owns [`MediaError`].
//!
//! Formats: thumbnails are written as JPEG by default. [`ThumbFormat::WebP`] is
//! available but is *lossless* WebP, because the `image` crate only encodes lossless
//! WebP; it is larger than JPEG and meant for images where that matters. AVIF sources
//! are decoded by [`avif`] with a Rust port of dav1d (no C library; `image` would need
//! libdav1d >= 1.3, which the target platform, Debian 12, does not ship).
//!
//! Blocking vs async: [`image_thumbnail`] is CPU-bound and blocking (call it from
//! `tokio::task::spawn_blocking`); [`MediaTools`] methods are async and bounded by
//! a semaphore and a timeout.

#![warn(missing_docs)]

pub mod avif;
pub mod error;
pub mod image;
mod jpeg_dc;
pub mod process;
pub mod video;

pub use crate::error::MediaError;
pub use crate::image::{image_thumbnail, ImageInfo};
pub use crate::video::{MediaTools, ProbeInfo};

/// Output encoding of thumbnails and posters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ThumbFormat {
    /// Baseline JPEG, quality [`JPEG_QUALITY`]. The default: small and universally
    /// decodable. Transparent pixels are flattened onto white.
    #[default]
    Jpeg,
    /// Lossless WebP (the `image` crate has no lossy WebP encoder). Keeps alpha.
    WebP,
}

impl ThumbFormat {
    /// File extension without the dot: `"jpg"` or `"webp"`.
    pub fn extension(self) -> &'static str {
        match self {
            ThumbFormat::Jpeg => "jpg",
            ThumbFormat::WebP => "webp",
        }
    }

    /// MIME type of the output: `image/jpeg` or `image/webp`.
    pub fn mime(self) -> &'static str {
        match self {
            ThumbFormat::Jpeg => "image/jpeg",
            ThumbFormat::WebP => "image/webp",
        }
    }
}

/// JPEG quality used for thumbnails and posters (the same default as libvips/sharp).
pub const JPEG_QUALITY: u8 = 80;

/// What thumbnail to produce and how much work a source may cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThumbnailSpec {
    /// Longest side of the thumbnail in pixels; sources already smaller are not
    /// upscaled. Default 320.
    pub max_side: u32,
    /// Output encoding. Default [`ThumbFormat::Jpeg`].
    pub format: ThumbFormat,
    /// Largest source (width × height, as the header announces it) that will be
    /// decoded: the decompression-bomb guard. Default 100 000 000.
    pub max_pixels: u64,
}

impl Default for ThumbnailSpec {
    fn default() -> Self {
        ThumbnailSpec {
            max_side: 320,
            format: ThumbFormat::Jpeg,
            max_pixels: 100_000_000,
        }
    }
}

/// Formats a duration as `HH:MM:SS`, rounded to the nearest second.
///
/// Hours are not capped (`"123:04:05"`); negative, NaN or infinite inputs give
/// `"00:00:00"`.
pub fn format_duration(secs: f64) -> String {
    let total = if secs.is_finite() && secs > 0.0 {
        // Saturating float-to-int cast: absurd values cannot wrap.
        secs.round() as u64
    } else {
        0
    };
    format!(
        "{:02}:{:02}:{:02}",
        total / 3600,
        (total / 60) % 60,
        total % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(format_duration(0.0), "00:00:00");
        assert_eq!(format_duration(3.0), "00:00:03");
        assert_eq!(format_duration(2.9996), "00:00:03");
        assert_eq!(format_duration(2.023), "00:00:02");
        assert_eq!(format_duration(61.0), "00:01:01");
        assert_eq!(format_duration(3599.4), "00:59:59");
        assert_eq!(format_duration(3600.0), "01:00:00");
        assert_eq!(format_duration(100.0 * 3600.0 + 65.0), "100:01:05");
        assert_eq!(format_duration(-5.0), "00:00:00");
        assert_eq!(format_duration(f64::NAN), "00:00:00");
        assert_eq!(format_duration(f64::INFINITY), "00:00:00");
    }

    #[test]
    fn spec_defaults() {
        let s = ThumbnailSpec::default();
        assert_eq!(s.max_side, 320);
        assert_eq!(s.format, ThumbFormat::Jpeg);
        assert_eq!(s.max_pixels, 100_000_000);
    }
}
