//! This node's media tools (ffmpeg/ffprobe through `stowage-media`, found
//! once per process) with the configured limits, and the count of
//! in-process image decodes. The media job ([`crate::jobs::media`]) runs
//! its work through the [`MediaRuntime`] kept in the service core.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, OnceLock,
    },
    time::Duration,
};

use stowage_media::MediaTools;

use crate::config::Limits;

/// Why an in-process decode gave no result.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// No slot of the media limit could be had.
    #[error("{0}")]
    NoSlot(String),
    /// It ran past the media timeout (it keeps its slot until it ends).
    #[error("image decoding timed out")]
    TimedOut,
    /// The decoding task panicked.
    #[error("image decoder crashed: {0}")]
    Crashed(String),
}

static TOOLS: OnceLock<MediaTools> = OnceLock::new();

/// ffmpeg/ffprobe as found on `PATH`, looked up (and logged) once per
/// process; each node applies its own limits on a copy.
fn detected() -> &'static MediaTools {
    TOOLS.get_or_init(|| {
        let t = MediaTools::detect();
        match t.disabled_reason() {
            None => tracing::info!("video thumbnails on (ffmpeg and ffprobe found)"),
            Some(why) => {
                tracing::warn!(reason = %why, "video thumbnails and media durations are off")
            }
        }
        t
    })
}

/// Whether video thumbnails are available, for `/readyz` (the reason when
/// they are not is logged at start-up).
pub fn status() -> &'static str {
    match detected().disabled_reason() {
        None => "on",
        Some(_) => "off",
    }
}

/// One node's media tools, with the configured limits, and the count of
/// in-process decodes running. Cheap to clone; clones share the limit.
#[derive(Clone, Debug)]
pub struct MediaRuntime {
    tools: MediaTools,
    timeout: Duration,
    decodes: Arc<DecodeCount>,
}

/// In-process decodes running now, and the most seen at once.
#[derive(Debug, Default)]
struct DecodeCount {
    now: AtomicUsize,
    peak: AtomicUsize,
}

/// Counts one decode for as long as it lives.
struct Decoding(Arc<DecodeCount>);

impl Decoding {
    fn start(c: &Arc<DecodeCount>) -> Decoding {
        let n = c.now.fetch_add(1, Ordering::SeqCst) + 1;
        c.peak.fetch_max(n, Ordering::SeqCst);
        Decoding(c.clone())
    }
}

impl Drop for Decoding {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

impl MediaRuntime {
    pub fn new(limits: &Limits) -> MediaRuntime {
        let tools = detected()
            .clone()
            .with_timeout(limits.media_timeout)
            .with_concurrency(limits.media_concurrency)
            .with_memory_limit(Some(limits.ffmpeg_memory_bytes))
            .with_threads(Some(limits.ffmpeg_threads));
        MediaRuntime {
            tools,
            timeout: limits.media_timeout,
            decodes: Arc::default(),
        }
    }

    /// The ffmpeg/ffprobe wrapper with this node's limits.
    pub fn tools(&self) -> &MediaTools {
        &self.tools
    }

    /// In-process decodes running now (timed-out ones included).
    pub fn decodes_running(&self) -> usize {
        self.decodes.now.load(Ordering::SeqCst)
    }

    /// The most in-process decodes that ever ran at once on this node.
    pub fn decodes_peak(&self) -> usize {
        self.decodes.peak.load(Ordering::SeqCst)
    }

    /// Runs `work` on the blocking pool once a slot of the media limit is
    /// free, holding the slot until `work` returns, and waits at most the
    /// media timeout for it.
    pub async fn decode<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, DecodeError> {
        let permit = self
            .tools
            .permit()
            .await
            .map_err(|e| DecodeError::NoSlot(e.to_string()))?;
        let count = self.decodes.clone();
        let job = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let _counted = Decoding::start(&count);
            work()
        });
        tokio::time::timeout(self.timeout, job)
            .await
            .map_err(|_| DecodeError::TimedOut)?
            .map_err(|e| DecodeError::Crashed(e.to_string()))
    }
}
