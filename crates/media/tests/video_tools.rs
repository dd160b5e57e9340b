//! `MediaTools` against real ffmpeg/ffprobe on clips generated in the test.
//!
//! Without ffmpeg/ffprobe on PATH these tests print a note and pass, unless
//! `STOWAGE_REQUIRE_FFMPEG=1`, in which case they fail.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use stowage_media::{format_duration, MediaError, MediaTools, ThumbFormat, ThumbnailSpec};

fn tools(test: &str) -> Option<MediaTools> {
    let tools = MediaTools::detect();
    if tools.video_enabled() {
        return Some(tools);
    }
    let reason = tools.disabled_reason().unwrap_or_default();
    if std::env::var("STOWAGE_REQUIRE_FFMPEG").as_deref() == Ok("1") {
        panic!("{test}: STOWAGE_REQUIRE_FFMPEG=1 but {reason}");
    }
    eprintln!("note: skipping {test}: {reason}");
    None
}

/// Runs ffmpeg to make a test input (lavfi sources, no external files).
fn make(tools: &MediaTools, args: &[&str], out: &Path) {
    let status = Command::new(tools.ffmpeg().unwrap())
        .args(["-nostdin", "-hide_banner", "-v", "error", "-y"])
        .args(args)
        .arg(out)
        .status()
        .unwrap();
    assert!(status.success(), "ffmpeg failed making {}", out.display());
}

fn clip(tools: &MediaTools, dir: &Path, name: &str, secs: &str, size: &str) -> PathBuf {
    let out = dir.join(name);
    make(
        tools,
        &[
            "-f",
            "lavfi",
            "-i",
            &format!("testsrc=duration={secs}:size={size}:rate=25"),
            "-pix_fmt",
            "yuv420p",
        ],
        &out,
    );
    out
}

#[tokio::test]
async fn probe_video_resolution_and_duration() {
    let Some(tools) = tools("probe_video_resolution_and_duration") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let src = clip(&tools, dir.path(), "clip.mp4", "3", "640x360");
    let info = tools.probe(&src).await.unwrap();
    assert_eq!(info.resolution().as_deref(), Some("640x360"));
    assert_eq!((info.width, info.height), (Some(640), Some(360)));
    assert_eq!(format_duration(info.duration_secs.unwrap()), "00:00:03");
    assert!(info.has_video && !info.has_audio);
}

#[tokio::test]
async fn probe_webm_and_mkv() {
    let Some(tools) = tools("probe_webm_and_mkv") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("clip.mkv");
    make(
        &tools,
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc=duration=2:size=320x240:rate=10",
            "-c:v",
            "mjpeg",
        ],
        &src,
    );
    let info = tools.probe(&src).await.unwrap();
    assert_eq!(info.resolution().as_deref(), Some("320x240"));
    assert_eq!(info.duration_hms().as_deref(), Some("00:00:02"));
}

#[tokio::test]
async fn probe_audio_duration() {
    let Some(tools) = tools("probe_audio_duration") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for name in ["tone.m4a", "tone.wav", "tone.ogg", "tone.flac"] {
        let src = dir.path().join(name);
        make(
            &tools,
            &["-f", "lavfi", "-i", "sine=frequency=440:duration=2"],
            &src,
        );
        let info = tools.probe(&src).await.unwrap();
        assert_eq!(info.width, None, "{name}");
        assert!(info.has_audio && !info.has_video, "{name}");
        assert_eq!(
            format_duration(info.duration_secs.unwrap()),
            "00:00:02",
            "{name}"
        );
    }
}

#[tokio::test]
async fn poster_is_320_on_the_long_side() {
    let Some(tools) = tools("poster_is_320_on_the_long_side") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let src = clip(&tools, dir.path(), "clip.mp4", "3", "640x360");
    let probe = tools.probe(&src).await.unwrap();
    for format in [ThumbFormat::Jpeg, ThumbFormat::WebP] {
        let dst = dir.path().join(format!("poster.{}", format.extension()));
        let spec = ThumbnailSpec {
            format,
            ..ThumbnailSpec::default()
        };
        let info = tools
            .video_poster(&src, &dst, probe.duration_secs, &spec)
            .await
            .unwrap();
        assert_eq!((info.width, info.height), (320, 180));
        let bytes = std::fs::read(&dst).unwrap();
        let expected = match format {
            ThumbFormat::Jpeg => image::ImageFormat::Jpeg,
            ThumbFormat::WebP => image::ImageFormat::WebP,
        };
        assert_eq!(image::guess_format(&bytes).unwrap(), expected);
        let img = image::load_from_memory(&bytes).unwrap();
        assert_eq!(img.width().max(img.height()), 320);
        assert_eq!((img.width(), img.height()), (320, 180));
    }
}

#[tokio::test]
async fn poster_of_short_portrait_clip_and_unknown_duration() {
    let Some(tools) = tools("poster_of_short_portrait_clip_and_unknown_duration") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let src = clip(&tools, dir.path(), "short.mp4", "0.4", "360x640");
    let probe = tools.probe(&src).await.unwrap();
    assert!(probe.duration_secs.unwrap() < 1.0);
    assert_eq!(probe.duration_hms().as_deref(), Some("00:00:00"));
    let dst = dir.path().join("p.jpg");
    let spec = ThumbnailSpec::default();
    let info = tools
        .video_poster(&src, &dst, probe.duration_secs, &spec)
        .await
        .unwrap();
    assert_eq!((info.width, info.height), (180, 320));
    // Unknown duration: first frame.
    let info = tools.video_poster(&src, &dst, None, &spec).await.unwrap();
    assert_eq!((info.width, info.height), (180, 320));
    // A duration that overstates the clip: seeking finds nothing, first frame is used.
    let info = tools
        .video_poster(&src, &dst, Some(100.0), &spec)
        .await
        .unwrap();
    assert_eq!((info.width, info.height), (180, 320));
    assert_eq!(image::open(&dst).unwrap().height(), 320);
}

#[tokio::test]
async fn small_video_is_not_upscaled() {
    let Some(tools) = tools("small_video_is_not_upscaled") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let src = clip(&tools, dir.path(), "tiny.mp4", "1", "160x90");
    let dst = dir.path().join("p.jpg");
    let info = tools
        .video_poster(&src, &dst, Some(1.0), &ThumbnailSpec::default())
        .await
        .unwrap();
    assert_eq!((info.width, info.height), (160, 90));
}

#[tokio::test]
async fn garbage_mp4_is_an_error_not_a_panic() {
    let Some(tools) = tools("garbage_mp4_is_an_error_not_a_panic") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("garbage.mp4");
    let bytes: Vec<u8> = (0..100_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    std::fs::write(&src, bytes).unwrap();
    let err = tools.probe(&src).await.unwrap_err();
    assert!(
        matches!(err, MediaError::Process { .. } | MediaError::Unsupported),
        "{err:?}"
    );
    let dst = dir.path().join("p.jpg");
    let err = tools
        .video_poster(&src, &dst, Some(10.0), &ThumbnailSpec::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, MediaError::Process { .. } | MediaError::Decode(_)),
        "{err:?}"
    );
    assert!(!dst.exists());
}

#[tokio::test]
async fn audio_has_no_poster() {
    let Some(tools) = tools("audio_has_no_poster") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("tone.m4a");
    make(
        &tools,
        &["-f", "lavfi", "-i", "sine=frequency=440:duration=2"],
        &src,
    );
    let dst = dir.path().join("p.jpg");
    let err = tools
        .video_poster(&src, &dst, Some(2.0), &ThumbnailSpec::default())
        .await
        .unwrap_err();
    assert!(matches!(err, MediaError::Process { .. }), "{err:?}");
}

#[tokio::test]
async fn demuxers_outside_the_whitelist_are_refused() {
    let Some(tools) = tools("demuxers_outside_the_whitelist_are_refused") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // An HLS playlist, the classic way to make ffmpeg fetch other resources.
    let src = dir.path().join("list.mp4");
    std::fs::write(
        &src,
        "#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\nfile:///etc/passwd\n#EXT-X-ENDLIST\n",
    )
    .unwrap();
    let err = tools.probe(&src).await.unwrap_err();
    assert!(matches!(err, MediaError::Process { .. }), "{err:?}");
}

#[tokio::test]
async fn tiny_timeout_kills_ffprobe() {
    let Some(tools) = tools("tiny_timeout_kills_ffprobe") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let src = clip(&tools, dir.path(), "clip.mp4", "3", "640x360");
    let tools = tools.with_timeout(Duration::from_millis(1));
    let err = tools.probe(&src).await.unwrap_err();
    assert!(matches!(err, MediaError::Timeout), "{err:?}");
    let err = tools
        .video_poster(
            &src,
            &dir.path().join("p.jpg"),
            Some(3.0),
            &ThumbnailSpec::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, MediaError::Timeout), "{err:?}");
}

/// A stand-in "ffprobe" that hangs: the timeout must kill it promptly. Needs no ffmpeg.
#[cfg(unix)]
#[tokio::test]
async fn hanging_tool_is_killed_at_timeout() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("fake-ffprobe");
    std::fs::write(&fake, "#!/bin/sh\nexec /bin/sleep 30\n").unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let tools = MediaTools::with_paths(Some(fake.clone()), Some(fake))
        .with_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let err = tools.probe(Path::new("/dev/null")).await.unwrap_err();
    assert!(matches!(err, MediaError::Timeout), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn missing_tools_are_reported() {
    let tools = MediaTools::with_paths(None, None);
    assert!(!tools.video_enabled());
    assert!(tools.disabled_reason().unwrap().contains("ffmpeg"));
    let err = tools.probe(Path::new("/x.mp4")).await.unwrap_err();
    assert!(matches!(err, MediaError::ToolMissing("ffprobe")), "{err:?}");
    let err = tools
        .video_poster(
            Path::new("/x.mp4"),
            Path::new("/tmp/x.jpg"),
            None,
            &ThumbnailSpec::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, MediaError::ToolMissing("ffmpeg")), "{err:?}");
}

/// Three calls through a limit of one run one after another: a stand-in tool that
/// sleeps 0.3 s makes that measurable. Needs no ffmpeg.
#[cfg(unix)]
#[tokio::test]
async fn concurrency_limit_serialises_calls() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("fake-ffprobe");
    std::fs::write(
        &fake,
        "#!/bin/sh
/bin/sleep 0.3
echo '{\"streams\":[{\"codec_type\":\"audio\"}],\"format\":{\"duration\":\"1.0\"}}'\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let tools = MediaTools::with_paths(None, Some(fake)).with_concurrency(1);
    assert_eq!(tools.concurrency(), 1);
    let started = Instant::now();
    let jobs: Vec<_> = (0..3)
        .map(|_| {
            let t = tools.clone();
            tokio::spawn(async move { t.probe(Path::new("/dev/null")).await })
        })
        .collect();
    for job in jobs {
        let info = job.await.unwrap().unwrap();
        assert_eq!(info.duration_secs, Some(1.0));
    }
    assert!(
        started.elapsed() >= Duration::from_millis(850),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn rotated_video_reports_display_size() {
    let Some(tools) = tools("rotated_video_reports_display_size") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let src = clip(&tools, dir.path(), "clip.mp4", "2", "640x360");
    let rotated = dir.path().join("rotated.mp4");
    let src_str = src.to_str().unwrap();
    make(
        &tools,
        &["-i", src_str, "-c", "copy", "-metadata:s:v:0", "rotate=90"],
        &rotated,
    );
    let info = tools.probe(&rotated).await.unwrap();
    assert_eq!(info.resolution().as_deref(), Some("360x640"));
    let dst = dir.path().join("p.jpg");
    let poster = tools
        .video_poster(
            &rotated,
            &dst,
            info.duration_secs,
            &ThumbnailSpec::default(),
        )
        .await
        .unwrap();
    assert_eq!((poster.width, poster.height), (180, 320));
}

/// A stand-in for ffprobe that records its arguments and the address-space limit
/// it runs under (`ulimit -v`, KiB), then answers like ffprobe for a 2 s clip.
fn recording_probe(dir: &Path) -> (PathBuf, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let log = dir.join("seen");
    let script = dir.join("ffprobe");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$@\" > {log}\nulimit -v >> {log}\n\
             echo '{{\"format\":{{\"duration\":\"2.0\"}},\"streams\":[{{\"codec_type\":\"audio\"}}]}}'\n",
            log = log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    (script, log)
}

#[tokio::test]
async fn every_tool_run_gets_the_memory_and_thread_limits() {
    let dir = tempfile::tempdir().unwrap();
    let (probe, log) = recording_probe(dir.path());
    let tools = MediaTools::with_paths(None, Some(probe))
        .with_memory_limit(Some(256 << 20))
        .with_threads(Some(1));
    let info = tools.probe(&dir.path().join("in.mp3")).await.unwrap();
    assert_eq!(info.duration_secs, Some(2.0));
    let seen = std::fs::read_to_string(&log).unwrap();
    let mut lines = seen.lines();
    let args: Vec<&str> = lines.next().unwrap().split(' ').collect();
    let i = args
        .iter()
        .position(|a| *a == "-threads")
        .expect("-threads passed");
    assert_eq!(args[i + 1], "1");
    assert!(
        i < args.iter().position(|a| a.starts_with("file:")).unwrap(),
        "-threads comes before the input: {args:?}"
    );
    assert_eq!(lines.next().unwrap().trim(), (256 << 10).to_string());
}

#[tokio::test]
async fn ffmpeg_under_a_tiny_memory_limit_fails_cleanly() {
    let Some(tools) = tools("ffmpeg_under_a_tiny_memory_limit_fails_cleanly") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let src = clip(&tools, dir.path(), "clip.mp4", "2", "320x240");
    let tools = tools.with_memory_limit(Some(16 << 20));
    let started = Instant::now();
    let err = tools.probe(&src).await.unwrap_err();
    assert!(matches!(err, MediaError::Process { .. }), "{err:?}");
    let spec = ThumbnailSpec {
        max_side: 64,
        format: ThumbFormat::Jpeg,
        ..Default::default()
    };
    let err = tools
        .video_poster(&src, &dir.path().join("p.jpg"), Some(2.0), &spec)
        .await
        .unwrap_err();
    assert!(matches!(err, MediaError::Process { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(20));
    // The same clip with room to work: the limit was the only difference.
    let tools = tools.with_memory_limit(Some(1 << 30)).with_threads(Some(1));
    assert!(tools.probe(&src).await.is_ok());
    tools
        .video_poster(&src, &dir.path().join("p.jpg"), Some(2.0), &spec)
        .await
        .unwrap();
}
