//! The steps that turn a reservation into a file row, shared by the
//! multipart commit ([`crate::meta::FileStore::commit_file`]) and the
//! completion of a resumable upload
//! ([`crate::meta::TusStore::complete_tus_upload`]), each inside the
//! caller's transaction.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::engine::{query, Tx};
use super::outbox::{check_threshold_in, record_event_in};
use crate::meta::{FileRecord, MetaError, MetaResult, NewEvent, NewFile};

/// Deletes reservation `id` and hands its bytes back to its user, inside
/// `tx`; false when it was gone already.
pub(crate) async fn release_in(tx: &mut Tx, id: Uuid) -> Result<bool, sqlx::Error> {
    let lock = tx.engine().for_update();
    let row = query(format!(
        "SELECT user_id, bytes FROM upload_reservations WHERE id = ?{lock}"
    ))
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        return Ok(false);
    };
    query("DELETE FROM upload_reservations WHERE id = ?")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    let user: String = row.get("user_id")?;
    let bytes: i64 = row.get("bytes")?;
    query("UPDATE user_storage SET reserved_bytes = reserved_bytes - ? WHERE user_id = ?")
        .bind(bytes)
        .bind(user)
        .execute(&mut *tx)
        .await?;
    Ok(true)
}

/// The room `user` has left, for a `QuotaExceeded` answer.
pub(crate) async fn room_in(tx: &mut Tx, user: &str) -> Result<u64, sqlx::Error> {
    let row = query(
        "SELECT max_bytes - total_bytes - reserved_bytes AS room FROM user_storage \
         WHERE user_id = ?",
    )
    .bind(user)
    .fetch_optional(&mut *tx)
    .await?;
    Ok(match row {
        Some(r) => r.get::<i64>("room")?.max(0) as u64,
        None => 0,
    })
}

/// Inserts file row `f`, written at `created_at`: a new upload's (at its
/// upload date) or a restored backup's line.
pub(crate) async fn insert_file_row(
    tx: &mut Tx,
    f: &FileRecord,
    created_at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    query(
        "INSERT INTO user_files (id, user_id, file_name, file_type, mime_type, file_size, \
         file_path, thumbnail_path, resolution, duration, package_name, tags, is_favorite, \
         sha256, upload_date, created_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(f.id)
    .bind(&f.user_id)
    .bind(&f.file_name)
    .bind(f.file_type.as_str())
    .bind(&f.mime_type)
    .bind(f.file_size)
    .bind(&f.file_path)
    .bind(&f.thumbnail_path)
    .bind(&f.resolution)
    .bind(&f.duration)
    .bind(&f.package_name)
    .bind_tags(&f.tags)
    .bind(f.is_favorite)
    .bind(&f.sha256)
    .bind(f.upload_date)
    .bind(created_at)
    .execute(tx)
    .await?;
    Ok(())
}

/// Releases `reservation`, checks that `f` still fits (which covers a
/// reservation that expired while the upload ran), inserts the file row,
/// records `file.created` and re-checks the thresholds, all inside `tx`,
/// which the caller commits. `now` is the file's upload date.
pub(crate) async fn insert_file_in(
    tx: &mut Tx,
    now: DateTime<Utc>,
    reservation: Uuid,
    f: NewFile,
) -> MetaResult<FileRecord> {
    release_in(tx, reservation).await?;
    // This conditional UPDATE holds the user row until commit, so concurrent
    // commits take turns from here on.
    let fits = query(
        "UPDATE user_storage SET updated_at = ? \
         WHERE user_id = ? AND total_bytes + reserved_bytes + ? <= max_bytes",
    )
    .bind(now)
    .bind(&f.user_id)
    .bind(f.file_size)
    .execute(&mut *tx)
    .await?;
    if fits == 0 {
        return Err(MetaError::QuotaExceeded {
            needed: f.file_size.max(0) as u64,
            available: room_in(tx, &f.user_id).await?,
        });
    }
    let rec = FileRecord {
        id: f.id,
        user_id: f.user_id,
        file_name: f.file_name,
        file_type: f.file_type,
        mime_type: f.mime_type,
        file_size: f.file_size,
        file_path: f.file_path,
        thumbnail_path: None,
        resolution: None,
        duration: None,
        package_name: f.package_name,
        tags: f.tags,
        is_favorite: false,
        sha256: f.sha256,
        upload_date: now,
    };
    insert_file_row(tx, &rec, now).await?;
    record_event_in(tx, &NewEvent::file_created(&rec)).await?;
    check_threshold_in(tx, &rec.user_id).await?;
    Ok(rec)
}
