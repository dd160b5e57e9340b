//! File types decided from content (magic bytes), never from the client's
//! claim, and the allow-list of mime types per type.

use serde::{Deserialize, Serialize};

/// The five kinds of file a user stores; each has its own directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileType {
    Video,
    Image,
    Audio,
    Scene,
    Project,
}

impl FileType {
    pub const ALL: [FileType; 5] = [
        FileType::Video,
        FileType::Image,
        FileType::Audio,
        FileType::Scene,
        FileType::Project,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FileType::Video => "video",
            FileType::Image => "image",
            FileType::Audio => "audio",
            FileType::Scene => "scene",
            FileType::Project => "project",
        }
    }

    /// Directory under the user's root (SPEC §5 layout).
    pub fn dir(self) -> &'static str {
        match self {
            FileType::Video => "videos",
            FileType::Image => "images",
            FileType::Audio => "audio",
            FileType::Scene => "scenes",
            FileType::Project => "projects",
        }
    }

    pub fn parse(s: &str) -> Option<FileType> {
        match s.trim().to_ascii_lowercase().as_str() {
            "video" | "videos" => Some(FileType::Video),
            "image" | "images" => Some(FileType::Image),
            "audio" => Some(FileType::Audio),
            "scene" | "scenes" => Some(FileType::Scene),
            "project" | "projects" => Some(FileType::Project),
            _ => None,
        }
    }
}

/// What sniffing the first bytes found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sniffed {
    pub mime: &'static str,
    pub ext: &'static str,
    /// The media type this content belongs to, if it is media.
    pub media: Option<FileType>,
    /// JSON or ZIP: acceptable as a scene or project.
    pub container: bool,
}

/// Bytes needed for a reliable decision.
pub const SNIFF_LEN: usize = 8192;

/// Default allow-list: SPEC §5.
pub const DEFAULT_ALLOWED: &[&str] = &[
    "video/mp4",
    "video/webm",
    "video/quicktime",
    "video/x-matroska",
    "image/jpeg",
    "image/png",
    "image/webp",
    "image/gif",
    "image/avif",
    "audio/mpeg",
    "audio/x-wav",
    "audio/ogg",
    "audio/x-flac",
    "audio/aac",
    "application/json",
    "application/zip",
];

/// Decides the content type from the first bytes. `None`: not a known format
/// (which includes SVG, HTML and other text that is not JSON).
pub fn sniff(head: &[u8]) -> Option<Sniffed> {
    if let Some(kind) = infer::get(head) {
        // Text formats (HTML, XML, scripts) are never stored: a browser or a
        // viewer may execute them.
        if kind.matcher_type() == infer::MatcherType::Text {
            return None;
        }
        let mime = kind.mime_type();
        let media = match kind.matcher_type() {
            infer::MatcherType::Video => Some(FileType::Video),
            infer::MatcherType::Image => Some(FileType::Image),
            infer::MatcherType::Audio => Some(FileType::Audio),
            _ => None,
        };
        // ISO-BMFF audio (m4a) reports as audio/m4a; keep infer's answer.
        let container = mime == "application/zip";
        return Some(Sniffed {
            mime,
            ext: kind.extension(),
            media: if container { None } else { media },
            container,
        });
    }
    if looks_like_json(head) {
        return Some(Sniffed {
            mime: "application/json",
            ext: "json",
            media: None,
            container: true,
        });
    }
    None
}

/// A JSON document starts (after whitespace and an optional BOM) with `{` or
/// `[`, and its first bytes are valid UTF-8. SVG/HTML start with `<`.
fn looks_like_json(head: &[u8]) -> bool {
    let head = head.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(head);
    let first = head.iter().find(|b| !b.is_ascii_whitespace());
    if !matches!(first, Some(b'{') | Some(b'[')) {
        return false;
    }
    // Tolerate a multi-byte char cut at the end of the sniff window.
    match std::str::from_utf8(head) {
        Ok(_) => true,
        Err(e) => e.error_len().is_none(),
    }
}

/// The file type stored for sniffed content, given an optional declared type.
/// Errors carry the message for a 415.
pub fn decide(
    sniffed: &Sniffed,
    declared: Option<FileType>,
    allowed: &[String],
) -> Result<FileType, String> {
    if !allowed.iter().any(|a| a == sniffed.mime) {
        return Err(format!("content type {} is not accepted", sniffed.mime));
    }
    let natural = match (sniffed.media, sniffed.container) {
        (Some(t), _) => t,
        (None, true) => FileType::Project,
        (None, false) => return Err(format!("content type {} is not accepted", sniffed.mime)),
    };
    match declared {
        None => Ok(natural),
        Some(d) if d == natural => Ok(d),
        Some(FileType::Scene) if sniffed.container => Ok(FileType::Scene),
        Some(d) => Err(format!(
            "declared file_type {} does not match the content ({})",
            d.as_str(),
            sniffed.mime
        )),
    }
}

/// True for content a browser may render inline safely: raster images,
/// video and audio (never SVG, HTML or anything scriptable).
pub fn inline_safe(mime: &str) -> bool {
    (mime.starts_with("image/") && mime != "image/svg+xml")
        || mime.starts_with("video/")
        || mime.starts_with("audio/")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed() -> Vec<String> {
        DEFAULT_ALLOWED.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn sniffs_common_formats() {
        let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";
        assert_eq!(sniff(png).unwrap().mime, "image/png");
        let jpg = b"\xFF\xD8\xFF\xE0\0\x10JFIF\0";
        assert_eq!(sniff(jpg).unwrap().media, Some(FileType::Image));
        let json = b"  {\"scene\": 1}";
        assert_eq!(sniff(json).unwrap().mime, "application/json");
        let zip = b"PK\x03\x04\x14\0\0\0\0\0";
        assert!(sniff(zip).unwrap().container);
    }

    #[test]
    fn refuses_svg_html_and_text() {
        assert!(sniff(b"<svg xmlns='http://www.w3.org/2000/svg'></svg>").is_none());
        assert!(sniff(b"<!DOCTYPE html><html></html>").is_none());
        assert!(sniff(b"hello world").is_none());
        assert!(sniff(b"").is_none());
    }

    #[test]
    fn declared_type_must_match() {
        let png = sniff(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR").unwrap();
        assert_eq!(decide(&png, None, &allowed()).unwrap(), FileType::Image);
        assert!(decide(&png, Some(FileType::Video), &allowed()).is_err());
        let json = sniff(b"{}").unwrap();
        assert_eq!(decide(&json, None, &allowed()).unwrap(), FileType::Project);
        assert_eq!(
            decide(&json, Some(FileType::Scene), &allowed()).unwrap(),
            FileType::Scene
        );
        assert!(decide(&json, Some(FileType::Image), &allowed()).is_err());
    }

    #[test]
    fn allow_list_is_configurable() {
        let png = sniff(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR").unwrap();
        assert!(decide(&png, None, &["image/jpeg".to_string()]).is_err());
    }
}
