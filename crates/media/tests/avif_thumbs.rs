//! AVIF thumbnails on real AVIF files made in the test by ffmpeg (libaom, Debian's
//! ffmpeg package) from lavfi sources, and decoded by the crate's in-process AV1
//! path. Without ffmpeg these tests print a note and pass, unless
//! `STOWAGE_REQUIRE_FFMPEG=1`, in which case they fail.

use std::path::{Path, PathBuf};
use std::process::Command;

use image::ImageReader;
use stowage_media::{image_thumbnail, ImageInfo, MediaError, ThumbFormat, ThumbnailSpec};

fn have_ffmpeg(test: &str) -> bool {
    let ok = Command::new("ffmpeg")
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        if std::env::var("STOWAGE_REQUIRE_FFMPEG").as_deref() == Ok("1") {
            panic!("{test}: STOWAGE_REQUIRE_FFMPEG=1 but ffmpeg is not on PATH");
        }
        eprintln!("{test}: skipped, ffmpeg is not on PATH");
    }
    ok
}

/// Encodes one frame of the lavfi `source` as an AVIF still (libaom).
fn avif(dir: &Path, name: &str, source: &str, extra: &[&str]) -> PathBuf {
    let out = dir.join(name);
    let status = Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-f",
            "lavfi",
            "-i",
            source,
        ])
        .args(extra)
        .args([
            "-frames:v",
            "1",
            "-c:v",
            "libaom-av1",
            "-still-picture",
            "1",
            "-y",
        ])
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success(), "ffmpeg failed making {name}");
    out
}

fn thumb(src: &Path, spec: &ThumbnailSpec) -> (Result<ImageInfo, MediaError>, PathBuf) {
    let dst = src.with_extension(format!("thumb.{}", spec.format.extension()));
    (image_thumbnail(src, &dst, spec), dst)
}

fn close(a: &[u8], b: &[u8], tolerance: u8) -> bool {
    a.iter().zip(b).all(|(x, y)| x.abs_diff(*y) <= tolerance)
}

#[test]
fn avif_8bit_420_odd_size_to_320_jpeg() {
    if !have_ffmpeg("avif_8bit_420_odd_size_to_320_jpeg") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Red left half, blue right half, scaled to 641 x 401: odd sizes exercise
    // the rounded-up 4:2:0 chroma planes.
    let src = avif(
        dir.path(),
        "halves.avif",
        "color=c=red:s=320x400[l];color=c=blue:s=320x400[r];[l][r]hstack,scale=641:401",
        &["-pix_fmt", "yuv420p"],
    );
    let (res, dst) = thumb(&src, &ThumbnailSpec::default());
    let info = res.unwrap();
    assert_eq!((info.width, info.height), (641, 401));
    assert_eq!((info.thumb_width, info.thumb_height), (320, 200));
    let t = image::open(&dst).unwrap().into_rgb8();
    assert_eq!(t.dimensions(), (320, 200));
    assert!(
        close(&t.get_pixel(40, 100).0, &[255, 0, 0], 40),
        "{:?}",
        t.get_pixel(40, 100)
    );
    assert!(
        close(&t.get_pixel(280, 100).0, &[0, 0, 255], 40),
        "{:?}",
        t.get_pixel(280, 100)
    );
}

#[test]
fn avif_10bit_and_444_odd_size_and_monochrome() {
    if !have_ffmpeg("avif_10bit_and_444_odd_size_and_monochrome") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "ten.avif",
            "color=c=0x20C040:s=800x600",
            "yuv420p10le",
            "800x600",
            [0x20, 0xC0, 0x40],
        ),
        (
            "full.avif",
            "color=c=0xE0A010:s=400x300,scale=401:301",
            "yuv444p",
            "401x301",
            [0xE0, 0xA0, 0x10],
        ),
        (
            "grey.avif",
            "color=c=0x808080:s=640x480",
            "gray",
            "640x480",
            [0x80, 0x80, 0x80],
        ),
    ];
    for (name, source, pix_fmt, size, want) in cases {
        let src = avif(dir.path(), name, source, &["-pix_fmt", pix_fmt]);
        let (res, dst) = thumb(&src, &ThumbnailSpec::default());
        let info = res.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(format!("{}x{}", info.width, info.height), size, "{name}");
        let t = image::open(&dst).unwrap().into_rgb8();
        assert_eq!(
            (t.width(), t.height()),
            (info.thumb_width, info.thumb_height)
        );
        assert_eq!(t.width().max(t.height()), 320, "{name}");
        let mid = t.get_pixel(t.width() / 2, t.height() / 2).0;
        assert!(close(&mid, &want, 24), "{name}: {mid:?}, want {want:?}");
    }
}

#[test]
fn avif_with_alpha_keeps_it_in_webp() {
    if !have_ffmpeg("avif_with_alpha_keeps_it_in_webp") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // The colour and the alpha plane as two AV1 items.
    let src = avif(
        dir.path(),
        "alpha.avif",
        "color=c=red@0.5:s=400x200,format=rgba",
        &[
            "-filter_complex",
            "[0:v]format=yuva444p,split[c][a];[a]alphaextract[a2]",
            "-map",
            "[c]",
            "-map",
            "[a2]",
        ],
    );
    let spec = ThumbnailSpec {
        format: ThumbFormat::WebP,
        ..ThumbnailSpec::default()
    };
    let (res, dst) = thumb(&src, &spec);
    let info = res.unwrap();
    assert_eq!((info.thumb_width, info.thumb_height), (320, 160));
    let t = ImageReader::open(&dst)
        .unwrap()
        .with_guessed_format()
        .unwrap()
        .decode()
        .unwrap();
    assert!(t.color().has_alpha());
    let px = t.into_rgba8().get_pixel(160, 80).0;
    assert!(close(&px[..3], &[255, 0, 0], 40), "{px:?}");
    assert!(px[3].abs_diff(128) <= 12, "alpha {px:?}");
}

#[test]
fn hostile_avif_fails_cleanly() {
    if !have_ffmpeg("hostile_avif_fails_cleanly") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let good = avif(dir.path(), "good.avif", "testsrc=size=640x480", &[]);
    let bytes = std::fs::read(&good).unwrap();

    // Truncated at several points: the container or the AV1 data ends early.
    for cut in [12, 40, bytes.len() / 2, bytes.len() - 10] {
        let p = dir.path().join(format!("cut{cut}.avif"));
        std::fs::write(&p, &bytes[..cut]).unwrap();
        let (res, dst) = thumb(&p, &ThumbnailSpec::default());
        assert!(
            matches!(res, Err(MediaError::Decode(_))),
            "cut {cut}: {res:?}"
        );
        assert!(!dst.exists());
    }
    // A valid container whose AV1 payload is noise.
    let mut noise = bytes.clone();
    let n = noise.len();
    for (i, b) in noise[n - 200..].iter_mut().enumerate() {
        *b = (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[1];
    }
    let p = dir.path().join("noise.avif");
    std::fs::write(&p, &noise).unwrap();
    let (res, _) = thumb(&p, &ThumbnailSpec::default());
    assert!(res.is_err(), "{res:?}");
    // Just the AVIF brand and nothing else.
    let mut head = 24u32.to_be_bytes().to_vec();
    head.extend_from_slice(b"ftypavif\0\0\0\0avifmif1");
    let p = dir.path().join("head.avif");
    std::fs::write(&p, &head).unwrap();
    let (res, _) = thumb(&p, &ThumbnailSpec::default());
    assert!(matches!(res, Err(MediaError::Decode(_))), "{res:?}");
    // More pixels than allowed: refused from the sequence header.
    let spec = ThumbnailSpec {
        max_pixels: 100_000,
        ..ThumbnailSpec::default()
    };
    let (res, dst) = thumb(&good, &spec);
    assert!(
        matches!(res, Err(MediaError::TooLarge { pixels: 307_200 })),
        "{res:?}"
    );
    assert!(!dst.exists());
}
