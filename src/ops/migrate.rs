//! `stowage migrate-blobs`: copies the local volume's files and thumbnails
//! into the object store, while the service keeps running on the volume.
//!
//! Each file is streamed from the volume into a staging object while its
//! sha256 is computed and compared with the database's; the staged copy is
//! then read back from the store and hashed again; only when both match is it
//! published under the same key it has on the volume. A key present in the
//! store with the recorded size was therefore verified by an earlier run and
//! is skipped, so the command is resumable: stop it any time, run it again,
//! and run it once more after switching the nodes to `STOWAGE_BLOB_STORE=s3`
//! to pick up files uploaded in between. Nothing is deleted from the volume.

use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::progress::Progress;
use crate::{
    blob::{BlobError, BlobStore},
    meta::{FileRecord, MetaStore},
};

/// Files copied at once.
const PARALLEL: usize = 4;

#[derive(Debug, Default, Serialize)]
pub struct MigrateReport {
    pub files_total: u64,
    /// Copied and verified by this run.
    pub copied: u64,
    pub bytes_copied: u64,
    /// Already in the store with the recorded size (an earlier run).
    pub already_present: u64,
    /// Deleted by a user while the migration ran.
    pub deleted_meanwhile: u64,
    pub thumbnails_copied: u64,
    pub failed: Vec<MigrateFailure>,
}

#[derive(Debug, Serialize)]
pub struct MigrateFailure {
    pub file_id: Uuid,
    pub key: String,
    pub reason: String,
}

enum Outcome {
    Copied(u64),
    Present,
    Gone,
}

/// Copies every file of every user from `from` into `to`.
pub async fn run(
    meta: &dyn MetaStore,
    from: &dyn BlobStore,
    to: &dyn BlobStore,
    mut progress: Progress,
) -> anyhow::Result<MigrateReport> {
    let mut r = MigrateReport::default();
    let users = meta.list_users().await?;
    progress.say(format!(
        "copying the files of {} user(s) from the {} store to the {} store",
        users.len(),
        from.kind(),
        to.kind()
    ));
    for u in &users {
        let rows = meta.all_files(Some(&u.user_id)).await?;
        r.files_total += rows.len() as u64;
        let mut results = futures::stream::iter(rows.iter())
            .map(|f| async move { (f, copy_file(meta, from, to, f).await) })
            .buffer_unordered(PARALLEL);
        while let Some((f, res)) = results.next().await {
            match res {
                Ok(Outcome::Copied(n)) => {
                    r.copied += 1;
                    r.bytes_copied += n;
                }
                Ok(Outcome::Present) => r.already_present += 1,
                Ok(Outcome::Gone) => r.deleted_meanwhile += 1,
                Err(reason) => {
                    tracing::error!(file_id = %f.id, key = %f.file_path, %reason, "not migrated");
                    r.failed.push(MigrateFailure {
                        file_id: f.id,
                        key: f.file_path.clone(),
                        reason,
                    });
                }
            }
            let (c, p, t) = (r.copied, r.already_present, r.files_total);
            progress.tick(|| format!("{c} copied, {p} already there, of {t} files so far"));
        }
        drop(results);
        for f in &rows {
            if let Some(t) = &f.thumbnail_path {
                match copy_thumbnail(from, to, t).await {
                    Ok(true) => r.thumbnails_copied += 1,
                    Ok(false) => {}
                    // A thumbnail can be made again; report, do not fail.
                    Err(e) => tracing::warn!(key = %t, error = %e, "thumbnail not migrated"),
                }
            }
        }
    }
    progress.say(format!(
        "done: {} copied, {} already there, {} failed",
        r.copied,
        r.already_present,
        r.failed.len()
    ));
    Ok(r)
}

async fn copy_file(
    meta: &dyn MetaStore,
    from: &dyn BlobStore,
    to: &dyn BlobStore,
    f: &FileRecord,
) -> Result<Outcome, String> {
    let len = f.file_size.max(0) as u64;
    match to.len(&f.file_path).await {
        Ok(n) if n == len => return Ok(Outcome::Present),
        Ok(_) | Err(BlobError::NotFound) => {}
        Err(e) => return Err(format!("checking the object store: {e}")),
    }
    let src = match from.read(&f.file_path, 0..len).await {
        Ok(s) => s,
        Err(BlobError::NotFound) => {
            // Deleted while we ran (row first, then blob), or really lost.
            return match meta.get_file_any(f.id).await {
                Ok(None) => Ok(Outcome::Gone),
                _ => Err("the file is missing from the volume (see `stowage audit`)".into()),
            };
        }
        Err(e) => return Err(format!("reading the volume: {e}")),
    };
    let id = Uuid::new_v4();
    let res = stage_verify_publish(to, id, src, len, f).await;
    if res.is_err() {
        let _ = to.discard(id).await;
    }
    res.map(|()| Outcome::Copied(len))
}

async fn stage_verify_publish(
    to: &dyn BlobStore,
    id: Uuid,
    mut src: crate::blob::ByteStream,
    len: u64,
    f: &FileRecord,
) -> Result<(), String> {
    let mut w = to.stage(id, 0).await.map_err(|e| format!("staging: {e}"))?;
    let mut h = Sha256::new();
    let mut n = 0u64;
    while let Some(chunk) = src.next().await {
        let chunk = chunk.map_err(|e| format!("reading the volume: {e}"))?;
        h.update(&chunk);
        n += chunk.len() as u64;
        w.write(chunk)
            .await
            .map_err(|e| format!("writing the object store: {e}"))?;
    }
    w.finish()
        .await
        .map_err(|e| format!("writing the object store: {e}"))?;
    if n != len || hex::encode(h.finalize()) != f.sha256 {
        return Err(format!(
            "the volume's copy ({n} bytes) does not match the recorded size {len} and sha256; not migrated"
        ));
    }
    // Read back what the store holds.
    let mut h = Sha256::new();
    let mut back = to
        .read_staged(id, 0..len)
        .await
        .map_err(|e| format!("reading back: {e}"))?;
    let mut m = 0u64;
    while let Some(chunk) = back
        .try_next()
        .await
        .map_err(|e| format!("reading back: {e}"))?
    {
        h.update(&chunk);
        m += chunk.len() as u64;
    }
    if m != len || hex::encode(h.finalize()) != f.sha256 {
        return Err("the object store's copy does not match the recorded sha256".into());
    }
    to.publish(id, &f.file_path)
        .await
        .map_err(|e| format!("publishing: {e}"))
}

/// Copies one thumbnail when the store lacks it; `Ok(true)` when copied.
async fn copy_thumbnail(
    from: &dyn BlobStore,
    to: &dyn BlobStore,
    key: &str,
) -> Result<bool, BlobError> {
    if to.len(key).await.is_ok() {
        return Ok(false);
    }
    let len = match from.len(key).await {
        Ok(n) => n,
        Err(BlobError::NotFound) => return Ok(false),
        Err(e) => return Err(e),
    };
    let mut data = Vec::with_capacity(len as usize);
    let mut s = from.read(key, 0..len).await?;
    while let Some(chunk) = s.next().await {
        data.extend_from_slice(&chunk?);
    }
    to.put_small(key, data.into()).await?;
    Ok(true)
}
