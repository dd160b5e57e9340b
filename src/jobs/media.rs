//! The media job: thumbnail and metadata for one file.

use uuid::Uuid;

use super::JobError;
use crate::{app::AppState, meta::FileRecord};

/// Whether a file gets media processing at all.
pub fn wants_processing(_rec: &FileRecord) -> bool {
    false
}

pub async fn process(_state: &AppState, _file_id: Uuid) -> Result<(), JobError> {
    Err(JobError::Permanent("media processing is not available".into()))
}

/// Whether video thumbnails are available, for `/readyz`.
pub fn status() -> String {
    "off: media processing not built".into()
}
