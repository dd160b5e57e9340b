//! The media job: a thumbnail and metadata (resolution, duration) for one
//! file, produced after upload, off the request path.
//!
//! Images are decoded in-process (`stowage-media`, on the blocking pool);
//! video and audio go through ffprobe/ffmpeg subprocesses with a timeout, an
//! address-space limit, a thread limit and no shell. Without ffmpeg the
//! service still works: video jobs fail with the reason, and `/readyz` says
//! video thumbnails are off.
//! Broken or hostile media never fails the upload: the file stays stored and
//! downloadable, and the job ends failed with its reason (admin API, logs).
//!
//! Bounds (SPEC §9): at most `limits.media_concurrency` media tasks (decodes
//! and tool runs together) at once per node. A decode cannot be cancelled, so
//! its permit moves into the blocking task: one that outlives
//! `limits.media_timeout` fails its job but keeps its slot until it really
//! ends, and new decodes wait instead of piling up on the blocking pool.

use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use stowage_media::{image_thumbnail, MediaError, ThumbFormat, ThumbnailSpec};
use uuid::Uuid;

use super::JobError;
use crate::{
    core::Core,
    domain::{filetype::FileType, names::user_dir_name},
    media::DecodeError,
    meta::{FileRecord, MediaUpdate},
};

impl From<DecodeError> for JobError {
    fn from(e: DecodeError) -> Self {
        match e {
            DecodeError::NoSlot(m) => JobError::Transient(m),
            DecodeError::TimedOut => JobError::Permanent("image decoding timed out".into()),
            DecodeError::Crashed(m) => JobError::Permanent(format!("image decoder crashed: {m}")),
        }
    }
}

/// Largest image (pixels announced by its header) that is decoded.
const MAX_PIXELS: u64 = 64_000_000;

/// Whether a file gets media processing at all.
pub fn wants_processing(rec: &FileRecord) -> bool {
    matches!(
        rec.file_type,
        FileType::Image | FileType::Video | FileType::Audio
    )
}

fn spec(state: &Core) -> ThumbnailSpec {
    ThumbnailSpec {
        max_side: state.config.thumbnail_max_side,
        format: ThumbFormat::Jpeg,
        max_pixels: MAX_PIXELS,
    }
}

fn classify(e: MediaError) -> JobError {
    match e {
        MediaError::Io(io) => JobError::Transient(format!("i/o: {io}")),
        other => JobError::Permanent(other.to_string()),
    }
}

/// Scratch directory for thumbnails being written (inside the volume's temp
/// dir, but in a subdirectory that upload cleanup does not sweep).
fn scratch(state: &Core) -> Result<PathBuf, JobError> {
    let dir = state.scratch.join("media");
    std::fs::create_dir_all(&dir).map_err(|e| JobError::Transient(format!("scratch dir: {e}")))?;
    Ok(dir)
}

/// A blob copied from the object store into the scratch directory; removed
/// on drop.
struct ScratchCopy(PathBuf);

impl ScratchCopy {
    async fn fetch(state: &Core, key: &str) -> Result<ScratchCopy, JobError> {
        use futures::StreamExt;
        use tokio::io::AsyncWriteExt;
        let transient = |what: &str, e: &dyn std::fmt::Display| {
            JobError::Transient(format!("fetching the file ({what}): {e}"))
        };
        let len = state
            .blobs
            .len(key)
            .await
            .map_err(|e| transient("size", &e))?;
        let copy = ScratchCopy(scratch(state)?.join(format!("{}.src", Uuid::new_v4())));
        let mut out = tokio::fs::File::create(&copy.0)
            .await
            .map_err(|e| transient("create", &e))?;
        let mut s = state
            .blobs
            .read(key, 0..len)
            .await
            .map_err(|e| transient("read", &e))?;
        while let Some(chunk) = s.next().await {
            let chunk = chunk.map_err(|e| transient("read", &e))?;
            out.write_all(&chunk)
                .await
                .map_err(|e| transient("write", &e))?;
        }
        out.flush().await.map_err(|e| transient("write", &e))?;
        Ok(copy)
    }
}

impl Drop for ScratchCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Runs the media job for `file_id`.
pub async fn process(state: &Core, file_id: Uuid) -> Result<(), JobError> {
    let rec = match state.meta.get_file_any(file_id).await {
        Ok(Some(r)) => r,
        // Deleted before its turn came: nothing to do.
        Ok(None) => return Ok(()),
        Err(e) => return Err(JobError::Transient(e.to_string())),
    };
    // Decoders and ffmpeg read files: the volume's own, or a scratch copy
    // fetched from the object store (removed when the job ends).
    let mut _fetched = None;
    let src = match state.blobs.local_path(&rec.file_path) {
        Some(p) => p,
        None => {
            let copy = ScratchCopy::fetch(state, &rec.file_path).await?;
            let p = copy.0.clone();
            _fetched = Some(copy);
            p
        }
    };
    let spec = spec(state);
    let thumb_tmp = scratch(state)?.join(format!("{}.{}", Uuid::new_v4(), spec.format.extension()));
    let mut update = MediaUpdate::default();
    let mut thumb_written = false;

    match rec.file_type {
        FileType::Image => {
            let (s, d, sp) = (src.clone(), thumb_tmp.clone(), spec.clone());
            // A decode that outlives the timeout removes its own output when
            // it ends; the job has given up on it by then.
            let abandoned = Arc::new(AtomicBool::new(false));
            let gone = abandoned.clone();
            let decoded = state
                .media
                .decode(move || {
                    let r = image_thumbnail(&s, &d, &sp);
                    if gone.load(Ordering::SeqCst) {
                        let _ = std::fs::remove_file(&d);
                    }
                    r
                })
                .await;
            if decoded.is_err() {
                abandoned.store(true, Ordering::SeqCst);
                let _ = std::fs::remove_file(&thumb_tmp);
            }
            let info = decoded?.map_err(classify)?;
            update.resolution = Some(format!("{}x{}", info.width, info.height));
            thumb_written = true;
        }
        FileType::Video => {
            let t = state.media.tools();
            if let Some(why) = t.disabled_reason() {
                return Err(JobError::Permanent(format!(
                    "video processing is off: {why}"
                )));
            }
            let probe = t.probe(&src).await.map_err(classify)?;
            update.resolution = probe.resolution();
            update.duration = probe.duration_hms();
            match t
                .video_poster(&src, &thumb_tmp, probe.duration_secs, &spec)
                .await
            {
                Ok(_) => thumb_written = true,
                // Metadata without a poster is still worth keeping.
                Err(e) => tracing::warn!(file_id = %rec.id, error = %e, "no poster frame"),
            }
        }
        FileType::Audio => {
            let t = state.media.tools();
            if let Some(why) = t.disabled_reason() {
                return Err(JobError::Permanent(format!("audio probing is off: {why}")));
            }
            let probe = t.probe(&src).await.map_err(classify)?;
            update.duration = probe.duration_hms();
        }
        FileType::Scene | FileType::Project => return Ok(()),
    }

    if thumb_written {
        let key = format!(
            "{}/.thumbs/{}.{}",
            user_dir_name(&rec.user_id),
            rec.id,
            spec.format.extension()
        );
        let data = tokio::fs::read(&thumb_tmp)
            .await
            .map_err(|e| JobError::Transient(format!("reading thumbnail: {e}")));
        let _ = tokio::fs::remove_file(&thumb_tmp).await;
        state
            .blobs
            .put_small(&key, data?.into())
            .await
            .map_err(|e| JobError::Transient(format!("storing thumbnail: {e}")))?;
        update.thumbnail_path = Some(key.clone());
        state
            .meta
            .set_media(rec.id, &update)
            .await
            .map_err(|e| JobError::Transient(e.to_string()))?;
        // Deleted while we worked: do not leave the thumbnail behind.
        if matches!(state.meta.get_file_any(rec.id).await, Ok(None)) {
            let _ = state.blobs.remove(&key).await;
        }
    } else {
        state
            .meta
            .set_media(rec.id, &update)
            .await
            .map_err(|e| JobError::Transient(e.to_string()))?;
    }
    tracing::info!(file_id = %rec.id, resolution = ?update.resolution, duration = ?update.duration, thumbnail = thumb_written, "media processed");
    Ok(())
}
