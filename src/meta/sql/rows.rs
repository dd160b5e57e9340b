//! The column lists and row decoders of the tables more than one concern
//! reads, written once for every engine.

use sqlx::Error;

use super::engine::Row;
use crate::domain::filetype::FileType;
use crate::meta::{FileRecord, TusUpload, UserStorage};

pub(crate) const USER_COLS: &str = "user_id, total_bytes, reserved_bytes, max_bytes, \
     CAST(file_count AS BIGINT) AS file_count, created_at, updated_at";

pub(crate) fn user_from_row(row: &Row) -> Result<UserStorage, Error> {
    Ok(UserStorage {
        user_id: row.get("user_id")?,
        total_bytes: row.get("total_bytes")?,
        reserved_bytes: row.get("reserved_bytes")?,
        max_bytes: row.get("max_bytes")?,
        file_count: row.get("file_count")?,
        created_at: row.get("created_at")?,
        updated_at: row.get("updated_at")?,
    })
}

pub(crate) const FILE_COLS: &str = "id, user_id, file_name, file_type, mime_type, file_size, \
     file_path, thumbnail_path, resolution, duration, package_name, tags, is_favorite, sha256, \
     upload_date";

pub(crate) fn file_from_row(row: &Row) -> Result<FileRecord, Error> {
    let ft: String = row.get("file_type")?;
    Ok(FileRecord {
        id: row.get("id")?,
        user_id: row.get("user_id")?,
        file_name: row.get("file_name")?,
        file_type: FileType::parse(&ft)
            .ok_or_else(|| Error::Decode(format!("unknown file_type {ft:?}").into()))?,
        mime_type: row.get("mime_type")?,
        file_size: row.get("file_size")?,
        file_path: row.get("file_path")?,
        thumbnail_path: row.get("thumbnail_path")?,
        resolution: row.get("resolution")?,
        duration: row.get("duration")?,
        package_name: row.get("package_name")?,
        tags: row.tags("tags")?,
        is_favorite: row.get("is_favorite")?,
        // `CHAR(64)` pads on some engines.
        sha256: row.get::<String>("sha256")?.trim().to_string(),
        upload_date: row.get("upload_date")?,
    })
}

pub(crate) const TUS_COLS: &str =
    "id, user_id, upload_length, upload_offset, metadata, expires_at, created_at, hash_state";

pub(crate) fn tus_from_row(row: &Row) -> Result<TusUpload, Error> {
    Ok(TusUpload {
        id: row.get("id")?,
        user_id: row.get("user_id")?,
        upload_length: row.get("upload_length")?,
        upload_offset: row.get("upload_offset")?,
        metadata: row.get("metadata")?,
        expires_at: row.get("expires_at")?,
        created_at: row.get("created_at")?,
        hash_state: row.get("hash_state")?,
    })
}
