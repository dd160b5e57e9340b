//! The File object of SPEC §3, as the API answers it and as events carry it.

use chrono::SecondsFormat;
use serde::{Deserialize, Serialize};

use super::FileRecord;
use crate::domain::filetype::FileType;

/// The File object of SPEC §3.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct FileView {
    pub id: String,
    pub file_name: String,
    pub file_type: FileType,
    pub mime_type: String,
    pub file_size: i64,
    pub sha256: String,
    pub resolution: Option<String>,
    pub duration: Option<String>,
    pub package_name: Option<String>,
    pub tags: Vec<String>,
    pub is_favorite: bool,
    pub upload_date: String,
    pub thumbnail_url: Option<String>,
}

impl From<&FileRecord> for FileView {
    fn from(r: &FileRecord) -> Self {
        FileView {
            id: r.id.to_string(),
            file_name: r.file_name.clone(),
            file_type: r.file_type,
            mime_type: r.mime_type.clone(),
            file_size: r.file_size,
            sha256: r.sha256.clone(),
            resolution: r.resolution.clone(),
            duration: r.duration.clone(),
            package_name: r.package_name.clone(),
            tags: r.tags.clone(),
            is_favorite: r.is_favorite,
            upload_date: r.upload_date.to_rfc3339_opts(SecondsFormat::Secs, true),
            thumbnail_url: r
                .thumbnail_path
                .as_ref()
                .map(|_| format!("/api/files/{}/thumbnail", r.id)),
        }
    }
}
