//! Video and audio through `ffprobe` and `ffmpeg`.
//!
//! Owns [`MediaTools`]: discovery of the two binaries, their limits (timeout,
//! concurrency, probe size, input duration, allowed demuxers and protocols) and the
//! translation of their output into [`ProbeInfo`] and poster images. The service keeps
//! working without the tools: [`MediaTools::video_enabled`] is then false and
//! [`MediaTools::disabled_reason`] says why, so the caller can log it once and skip
//! video/audio metadata.
//!
//! Hardening applied to every invocation: inputs are passed as `file:` URLs (a name can
//! never be read as another protocol or an option), `-protocol_whitelist file` stops
//! playlists from reaching the network or other protocols, `-format_whitelist` restricts
//! demuxers to the media types stowage accepts, `-probesize`/`-analyzeduration` bound
//! probing, `-t` bounds how much input ffmpeg reads, `-threads` bounds the threads of
//! decoders and encoders, and the process wrapper applies the timeout, output and
//! address-space limits (see [`crate::process`]).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ::image::{DynamicImage, ImageFormat, ImageReader, Limits};
use serde_json::Value;
use tokio::sync::Semaphore;

use crate::image::{encode, write_atomically, ImageInfo};
use crate::{process, MediaError, ThumbnailSpec};

/// Default wall-clock limit for one tool invocation.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Default `-probesize`, in bytes.
pub const DEFAULT_PROBESIZE: u64 = 20_000_000;
/// Default `-analyzeduration`, in microseconds.
pub const DEFAULT_ANALYZE_DURATION_US: u64 = 10_000_000;
/// Default demuxer whitelist: the containers of the video and audio types stowage
/// accepts (MP4/QuickTime, Matroska/WebM, AVI, MP3, WAV, Ogg, FLAC, ADTS AAC).
pub const DEFAULT_FORMAT_WHITELIST: &str =
    "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,avi,mp3,wav,ogg,flac,aac";

/// Largest ffprobe JSON accepted, in bytes.
const MAX_PROBE_OUTPUT: usize = 4 << 20;
/// Largest poster PNG accepted from ffmpeg, in bytes.
const MAX_POSTER_OUTPUT: usize = 32 << 20;
/// How much input ffmpeg may read after the seek point when looking for a frame.
const POSTER_INPUT_SECS: u32 = 10;

/// What `ffprobe` says about a video or audio file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProbeInfo {
    /// Display width of the first video stream (rotation applied); `None` for audio.
    pub width: Option<u32>,
    /// Display height of the first video stream (rotation applied); `None` for audio.
    pub height: Option<u32>,
    /// Duration in seconds, from the container, else the longest stream.
    pub duration_secs: Option<f64>,
    /// Whether there is a real video stream (cover art attached to audio does not count).
    pub has_video: bool,
    /// Whether there is an audio stream.
    pub has_audio: bool,
}

impl ProbeInfo {
    /// `"WIDTHxHEIGHT"` when both are known, e.g. `"640x360"`.
    pub fn resolution(&self) -> Option<String> {
        Some(format!("{}x{}", self.width?, self.height?))
    }

    /// Duration as `HH:MM:SS` when known.
    pub fn duration_hms(&self) -> Option<String> {
        self.duration_secs.map(crate::format_duration)
    }
}

/// Handle on the external media tools, with their limits. Cheap to clone; clones share
/// the concurrency limit.
#[derive(Debug, Clone)]
pub struct MediaTools {
    ffmpeg: Option<PathBuf>,
    ffprobe: Option<PathBuf>,
    timeout: Duration,
    limiter: Arc<Semaphore>,
    concurrency: usize,
    probesize: u64,
    analyze_duration_us: u64,
    format_whitelist: Option<String>,
    /// `RLIMIT_AS` of every tool process, bytes.
    memory_limit: Option<u64>,
    /// `-threads` of every tool run.
    threads: Option<u32>,
}

impl MediaTools {
    /// Looks for `ffmpeg` and `ffprobe` on `PATH` (executable regular files). Limits
    /// start at their defaults: 60 s timeout, one concurrent tool per CPU.
    pub fn detect() -> Self {
        Self::with_paths(find_in_path("ffmpeg"), find_in_path("ffprobe"))
    }

    /// Uses the given binaries (`None`: that tool is unavailable).
    pub fn with_paths(ffmpeg: Option<PathBuf>, ffprobe: Option<PathBuf>) -> Self {
        let concurrency = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        MediaTools {
            ffmpeg,
            ffprobe,
            timeout: DEFAULT_TIMEOUT,
            limiter: Arc::new(Semaphore::new(concurrency)),
            concurrency,
            probesize: DEFAULT_PROBESIZE,
            analyze_duration_us: DEFAULT_ANALYZE_DURATION_US,
            format_whitelist: Some(DEFAULT_FORMAT_WHITELIST.to_string()),
            memory_limit: None,
            threads: None,
        }
    }

    /// Sets the wall-clock limit of each tool invocation.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets how many tool processes may run at once (at least 1). Creates a new
    /// limiter, not shared with clones made before.
    pub fn with_concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self.limiter = Arc::new(Semaphore::new(self.concurrency));
        self
    }

    /// Sets the address space each tool process may map (`RLIMIT_AS`, bytes), or
    /// `None` to leave the inherited limit.
    pub fn with_memory_limit(mut self, bytes: Option<u64>) -> Self {
        self.memory_limit = bytes;
        self
    }

    /// Sets how many threads ffmpeg/ffprobe may use per run (`-threads`, at least 1),
    /// or `None` for ffmpeg's default (one per CPU and more).
    pub fn with_threads(mut self, n: Option<u32>) -> Self {
        self.threads = n.map(|n| n.max(1));
        self
    }

    /// Sets `-probesize` (bytes) and `-analyzeduration` (microseconds).
    pub fn with_probe_limits(mut self, probesize: u64, analyze_duration_us: u64) -> Self {
        self.probesize = probesize.max(32);
        self.analyze_duration_us = analyze_duration_us;
        self
    }

    /// Sets the demuxer whitelist (comma-separated ffmpeg demuxer names), or `None` to
    /// allow every demuxer ffmpeg was built with.
    pub fn with_format_whitelist(mut self, list: Option<String>) -> Self {
        self.format_whitelist = list;
        self
    }

    /// True when both `ffmpeg` and `ffprobe` are available.
    pub fn video_enabled(&self) -> bool {
        self.ffmpeg.is_some() && self.ffprobe.is_some()
    }

    /// Why video/audio processing is disabled, or `None` when it is enabled.
    pub fn disabled_reason(&self) -> Option<String> {
        match (&self.ffmpeg, &self.ffprobe) {
            (Some(_), Some(_)) => None,
            (None, None) => Some("ffmpeg and ffprobe not found on PATH".into()),
            (None, Some(_)) => Some("ffmpeg not found on PATH".into()),
            (Some(_), None) => Some("ffprobe not found on PATH".into()),
        }
    }

    /// Path of `ffmpeg`, if available.
    pub fn ffmpeg(&self) -> Option<&Path> {
        self.ffmpeg.as_deref()
    }

    /// Path of `ffprobe`, if available.
    pub fn ffprobe(&self) -> Option<&Path> {
        self.ffprobe.as_deref()
    }

    /// The per-invocation timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The maximum number of concurrent tool processes.
    pub fn concurrency(&self) -> usize {
        self.concurrency
    }

    /// Waits for a slot of the concurrency limit. Tool runs take one each;
    /// callers doing other media work (in-process decodes) take one too, so a
    /// single limit bounds both. The slot is free again when the permit drops.
    pub async fn permit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, MediaError> {
        self.limiter
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| MediaError::Decode("tool limiter closed".into()))
    }

    /// Probes a video or audio file: display resolution of the first video stream and
    /// duration. Runs `ffprobe -v error -print_format json -show_format -show_streams`
    /// with bounded `-probesize`/`-analyzeduration`.
    pub async fn probe(&self, src: &Path) -> Result<ProbeInfo, MediaError> {
        let ffprobe = self
            .ffprobe
            .as_deref()
            .ok_or(MediaError::ToolMissing("ffprobe"))?;
        let mut args = vec![OsString::from("-v"), "error".into(), "-hide_banner".into()];
        args.extend(self.input_limits());
        args.extend([
            "-print_format".into(),
            "json".into(),
            "-show_format".into(),
            "-show_streams".into(),
            file_url(src),
        ]);
        let out = self.run(ffprobe, &args, MAX_PROBE_OUTPUT).await?;
        let json: Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| MediaError::Decode(format!("ffprobe output: {e}")))?;
        let info = parse_probe(&json);
        if !info.has_video && !info.has_audio {
            return Err(MediaError::Unsupported);
        }
        Ok(info)
    }

    /// Writes a poster frame of the video `src` to `dst`, scaled so its longest side is
    /// at most `spec.max_side`, encoded per `spec.format`. The frame is taken at 10 % of
    /// `duration_secs` (from [`MediaTools::probe`]), or the first frame for clips shorter
    /// than a second or of unknown duration; if seeking finds no frame, the first frame
    /// is used. Rotation metadata is honoured (ffmpeg autorotates). Returns the
    /// poster's dimensions (as both the `width`/`height` and the `thumb_*` fields).
    pub async fn video_poster(
        &self,
        src: &Path,
        dst: &Path,
        duration_secs: Option<f64>,
        spec: &ThumbnailSpec,
    ) -> Result<ImageInfo, MediaError> {
        let ffmpeg = self
            .ffmpeg
            .as_deref()
            .ok_or(MediaError::ToolMissing("ffmpeg"))?;
        let seek = match duration_secs {
            Some(d) if d.is_finite() && d >= 1.0 => d * 0.1,
            _ => 0.0,
        };
        let mut png = self.grab_frame(ffmpeg, src, seek, spec.max_side).await?;
        if png.is_empty() && seek > 0.0 {
            png = self.grab_frame(ffmpeg, src, 0.0, spec.max_side).await?;
        }
        if png.is_empty() {
            return Err(MediaError::Decode("no video frame could be decoded".into()));
        }
        let img = decode_poster_png(&png, spec)?;
        let bytes = encode(&img, spec.format)?;
        let dst = dst.to_path_buf();
        let (w, h) = (img.width(), img.height());
        tokio::task::spawn_blocking(move || write_atomically(&dst, &bytes))
            .await
            .map_err(|e| MediaError::Decode(format!("writer task: {e}")))??;
        Ok(ImageInfo {
            width: w,
            height: h,
            thumb_width: w,
            thumb_height: h,
        })
    }

    /// One frame at `seek` seconds, scaled to fit `max_side`, as PNG bytes on stdout.
    /// Empty when ffmpeg found no frame there.
    async fn grab_frame(
        &self,
        ffmpeg: &Path,
        src: &Path,
        seek: f64,
        max_side: u32,
    ) -> Result<Vec<u8>, MediaError> {
        let side = max_side.max(1);
        // Fit within side×side keeping the display aspect ratio (sample aspect ratio
        // applied), never upscaling.
        let filter = format!(
            "scale=w='min({side},iw*sar)':h='min({side},ih)':force_original_aspect_ratio=decrease,setsar=1"
        );
        let mut args: Vec<OsString> = vec![
            "-nostdin".into(),
            "-hide_banner".into(),
            "-v".into(),
            "error".into(),
            "-y".into(),
        ];
        args.extend(self.input_limits());
        args.extend([
            "-ss".into(),
            format!("{seek:.3}").into(),
            "-t".into(),
            POSTER_INPUT_SECS.to_string().into(),
            "-i".into(),
            file_url(src),
            "-map".into(),
            "0:v:0".into(),
            "-frames:v".into(),
            "1".into(),
            "-vf".into(),
            filter.into(),
            "-pix_fmt".into(),
            "rgb24".into(),
            "-c:v".into(),
            "png".into(),
        ]);
        if let Some(n) = self.threads {
            args.extend([
                "-threads".into(),
                n.to_string().into(),
                "-filter_threads".into(),
                n.to_string().into(),
            ]);
        }
        args.extend(["-f".into(), "image2pipe".into(), "pipe:1".into()]);
        Ok(self.run(ffmpeg, &args, MAX_POSTER_OUTPUT).await?.stdout)
    }

    /// Input options shared by ffprobe and ffmpeg.
    fn input_limits(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        if let Some(n) = self.threads {
            // Before the input: the decoder's threads (an output option would only
            // reach the encoder).
            args.push("-threads".into());
            args.push(n.to_string().into());
        }
        args.extend::<[OsString; 6]>([
            "-probesize".into(),
            self.probesize.to_string().into(),
            "-analyzeduration".into(),
            self.analyze_duration_us.to_string().into(),
            "-protocol_whitelist".into(),
            "file".into(),
        ]);
        if let Some(list) = &self.format_whitelist {
            args.push("-format_whitelist".into());
            args.push(list.into());
        }
        args
    }

    async fn run(
        &self,
        program: &Path,
        args: &[OsString],
        max_stdout: usize,
    ) -> Result<process::Output, MediaError> {
        let _permit = self.permit().await?;
        let limits = process::RunLimits {
            timeout: self.timeout,
            max_stdout,
            address_space: self.memory_limit,
        };
        process::run(program, args, limits).await
    }
}

/// `file:` URL for a path, so that ffmpeg never reads it as an option or a protocol.
fn file_url(path: &Path) -> OsString {
    let mut url = OsString::from("file:");
    if path.is_relative() {
        // "file:-x" would still be a file, but keep relative names unambiguous.
        url.push("./");
    }
    url.push(path.as_os_str());
    url
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    match std::fs::metadata(path) {
        #[cfg(unix)]
        Ok(meta) => {
            use std::os::unix::fs::PermissionsExt;
            meta.is_file() && meta.permissions().mode() & 0o111 != 0
        }
        #[cfg(not(unix))]
        Ok(meta) => meta.is_file(),
        Err(_) => false,
    }
}

fn decode_poster_png(png: &[u8], spec: &ThumbnailSpec) -> Result<DynamicImage, MediaError> {
    let mut reader = ImageReader::with_format(std::io::Cursor::new(png), ImageFormat::Png);
    let mut limits = Limits::default();
    limits.max_alloc = Some(64 << 20);
    reader.limits(limits);
    let img = reader.decode().map_err(MediaError::decode)?;
    // ffmpeg already scaled; guard against a filter that did not.
    if img.width().max(img.height()) > spec.max_side.max(1) {
        let (w, h) = crate::image::fit_within(img.width(), img.height(), spec.max_side);
        return Ok(img.resize_exact(w, h, ::image::imageops::FilterType::Triangle));
    }
    Ok(img)
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .filter(|x: &f64| x.is_finite())
}

fn rotation_of(stream: &Value) -> i64 {
    let from_side_data = stream["side_data_list"].as_array().and_then(|list| {
        list.iter()
            .find_map(|sd| number(&sd["rotation"]).map(|r| r.round() as i64))
    });
    from_side_data
        .or_else(|| number(&stream["tags"]["rotate"]).map(|r| r.round() as i64))
        .unwrap_or(0)
}

/// Extracts [`ProbeInfo`] from ffprobe's JSON.
pub(crate) fn parse_probe(json: &Value) -> ProbeInfo {
    let empty = Vec::new();
    let streams = json["streams"].as_array().unwrap_or(&empty);
    let is_cover_art = |s: &Value| s["disposition"]["attached_pic"].as_i64() == Some(1);
    let video = streams
        .iter()
        .find(|s| s["codec_type"] == "video" && !is_cover_art(s));
    let has_audio = streams.iter().any(|s| s["codec_type"] == "audio");

    let (mut width, mut height) = match video {
        Some(v) => (
            v["width"]
                .as_u64()
                .and_then(|w| u32::try_from(w).ok())
                .filter(|&w| w > 0),
            v["height"]
                .as_u64()
                .and_then(|h| u32::try_from(h).ok())
                .filter(|&h| h > 0),
        ),
        None => (None, None),
    };
    if let Some(v) = video {
        if rotation_of(v).rem_euclid(180) == 90 {
            std::mem::swap(&mut width, &mut height);
        }
    }

    let duration_secs = number(&json["format"]["duration"])
        .or_else(|| {
            streams
                .iter()
                .filter_map(|s| number(&s["duration"]))
                .fold(None, |acc: Option<f64>, d| {
                    Some(acc.map_or(d, |a| a.max(d)))
                })
        })
        .filter(|d| *d >= 0.0);

    ProbeInfo {
        width,
        height,
        duration_secs,
        has_video: video.is_some(),
        has_audio,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_video_with_rotation() {
        let v = json!({
            "streams": [
                {"codec_type": "video", "width": 1920, "height": 1080,
                 "side_data_list": [{"side_data_type": "Display Matrix", "rotation": -90}]},
                {"codec_type": "audio", "duration": "12.5"}
            ],
            "format": {"duration": "12.480000"}
        });
        let p = parse_probe(&v);
        assert_eq!((p.width, p.height), (Some(1080), Some(1920)));
        assert_eq!(p.duration_secs, Some(12.48));
        assert!(p.has_video && p.has_audio);
        assert_eq!(p.resolution().as_deref(), Some("1080x1920"));
    }

    #[test]
    fn audio_with_cover_art_is_not_video() {
        let v = json!({
            "streams": [
                {"codec_type": "audio", "duration": "200.1"},
                {"codec_type": "video", "width": 500, "height": 500,
                 "disposition": {"attached_pic": 1}}
            ],
            "format": {}
        });
        let p = parse_probe(&v);
        assert_eq!((p.width, p.height), (None, None));
        assert_eq!(p.duration_secs, Some(200.1));
        assert!(!p.has_video && p.has_audio);
        assert_eq!(p.duration_hms().as_deref(), Some("00:03:20"));
    }

    #[test]
    fn legacy_rotate_tag_and_missing_duration() {
        let v = json!({
            "streams": [{"codec_type": "video", "width": 640, "height": 480,
                         "tags": {"rotate": "270"}, "duration": "N/A"}],
            "format": {"duration": "N/A"}
        });
        let p = parse_probe(&v);
        assert_eq!((p.width, p.height), (Some(480), Some(640)));
        assert_eq!(p.duration_secs, None);
    }

    #[test]
    fn file_urls() {
        assert_eq!(
            file_url(Path::new("/a/b.mp4")),
            OsString::from("file:/a/b.mp4")
        );
        assert_eq!(
            file_url(Path::new("-x.mp4")),
            OsString::from("file:./-x.mp4")
        );
    }

    #[test]
    fn missing_tools_disable_video() {
        let t = MediaTools::with_paths(None, Some(PathBuf::from("/usr/bin/ffprobe")));
        assert!(!t.video_enabled());
        assert_eq!(
            t.disabled_reason().as_deref(),
            Some("ffmpeg not found on PATH")
        );
    }
}
