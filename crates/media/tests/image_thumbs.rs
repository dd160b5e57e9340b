//! Image thumbnails on real files encoded in the test with the `image` crate.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use image::codecs::gif::GifEncoder;
use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::{
    Delay, DynamicImage, Frame, ImageEncoder, ImageFormat, Rgb, RgbImage, Rgba, RgbaImage,
};
use stowage_media::{image_thumbnail, ImageInfo, MediaError, ThumbFormat, ThumbnailSpec};

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// A deterministic gradient with noise, so encoders have realistic work.
fn noisy(width: u32, height: u32) -> RgbImage {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    RgbImage::from_fn(width, height, |x, y| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let n = (seed & 0x1f) as u32;
        Rgb([
            ((x * 255 / width) + n).min(255) as u8,
            ((y * 255 / height) + n).min(255) as u8,
            (128 + n) as u8,
        ])
    })
}

/// Left half red, right half blue.
fn halves(width: u32, height: u32) -> RgbImage {
    RgbImage::from_fn(width, height, |x, _| {
        if x < width / 2 {
            Rgb([255, 0, 0])
        } else {
            Rgb([0, 0, 255])
        }
    })
}

fn jpeg_bytes(img: &RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    JpegEncoder::new_with_quality(&mut out, 90)
        .encode_image(img)
        .unwrap();
    out
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn save_png(dir: &Path, name: &str, img: &DynamicImage) -> PathBuf {
    let p = dir.join(name);
    img.save_with_format(&p, ImageFormat::Png).unwrap();
    p
}

fn thumb(src: &Path, spec: &ThumbnailSpec) -> (Result<ImageInfo, MediaError>, PathBuf) {
    let dst = src.with_file_name(format!(
        "{}.thumb.{}",
        src.file_name().unwrap().to_string_lossy(),
        spec.format.extension()
    ));
    (image_thumbnail(src, &dst, spec), dst)
}

fn close(a: [u8; 3], b: [u8; 3]) -> bool {
    a.iter().zip(b).all(|(x, y)| x.abs_diff(y) <= 40)
}

#[test]
fn png_1200x800_to_320_jpeg() {
    let dir = tmp();
    let src = save_png(
        dir.path(),
        "a.png",
        &DynamicImage::ImageRgb8(noisy(1200, 800)),
    );
    let (info, dst) = thumb(&src, &ThumbnailSpec::default());
    let info = info.unwrap();
    assert_eq!((info.width, info.height), (1200, 800));
    assert_eq!((info.thumb_width, info.thumb_height), (320, 213));
    let out = image::open(&dst).unwrap();
    assert_eq!((out.width(), out.height()), (320, 213));
    assert_eq!(
        image::guess_format(&std::fs::read(&dst).unwrap()).unwrap(),
        ImageFormat::Jpeg
    );
}

#[test]
fn jpeg_1200x800_to_320_jpeg() {
    let dir = tmp();
    let src = write(dir.path(), "a.jpg", &jpeg_bytes(&noisy(1200, 800)));
    let (info, dst) = thumb(&src, &ThumbnailSpec::default());
    let info = info.unwrap();
    assert_eq!((info.width, info.height), (1200, 800));
    let out = image::open(&dst).unwrap();
    assert_eq!((out.width(), out.height()), (320, 213));
}

#[test]
fn jpeg_content_survives_dct_scaling() {
    let dir = tmp();
    let src = write(dir.path(), "h.jpg", &jpeg_bytes(&halves(1600, 800)));
    let (info, dst) = thumb(&src, &ThumbnailSpec::default());
    info.unwrap();
    let out = image::open(&dst).unwrap().to_rgb8();
    assert_eq!((out.width(), out.height()), (320, 160));
    assert!(
        close(out.get_pixel(40, 80).0, [255, 0, 0]),
        "{:?}",
        out.get_pixel(40, 80)
    );
    assert!(
        close(out.get_pixel(280, 80).0, [0, 0, 255]),
        "{:?}",
        out.get_pixel(280, 80)
    );
}

#[test]
fn grayscale_jpeg() {
    let dir = tmp();
    let gray = DynamicImage::ImageRgb8(noisy(900, 600)).to_luma8();
    let mut bytes = Vec::new();
    JpegEncoder::new(&mut bytes).encode_image(&gray).unwrap();
    let src = write(dir.path(), "g.jpg", &bytes);
    let (info, dst) = thumb(&src, &ThumbnailSpec::default());
    assert_eq!(info.unwrap().thumb_width, 320);
    assert_eq!(image::open(&dst).unwrap().height(), 213);
}

/// Inserts an APP1 Exif segment (little-endian TIFF, one IFD entry: Orientation) after
/// the JFIF APP0 segment.
fn with_exif_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    let mut tiff = Vec::new();
    tiff.extend_from_slice(b"II\x2a\x00");
    tiff.extend_from_slice(&8u32.to_le_bytes()); // IFD0 offset
    tiff.extend_from_slice(&1u16.to_le_bytes()); // one entry
    tiff.extend_from_slice(&0x0112u16.to_le_bytes()); // Orientation
    tiff.extend_from_slice(&3u16.to_le_bytes()); // SHORT
    tiff.extend_from_slice(&1u32.to_le_bytes()); // count
    tiff.extend_from_slice(&orientation.to_le_bytes());
    tiff.extend_from_slice(&[0, 0]); // value padding
    tiff.extend_from_slice(&0u32.to_le_bytes()); // no next IFD
    let mut payload = b"Exif\0\0".to_vec();
    payload.extend_from_slice(&tiff);
    let mut app1 = vec![0xFF, 0xE1];
    app1.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
    app1.extend_from_slice(&payload);

    assert_eq!(&jpeg[..2], &[0xFF, 0xD8]);
    let mut at = 2;
    if jpeg[2..4] == [0xFF, 0xE0] {
        at = 4 + u16::from_be_bytes([jpeg[4], jpeg[5]]) as usize;
    }
    let mut out = jpeg[..at].to_vec();
    out.extend_from_slice(&app1);
    out.extend_from_slice(&jpeg[at..]);
    out
}

#[test]
fn jpeg_exif_orientation_6_rotates() {
    let dir = tmp();
    // Stored 1200x800, left red / right blue. Orientation 6 = rotate 90° clockwise to
    // display: displayed 800x1200 with red on top, blue at the bottom.
    let bytes = with_exif_orientation(&jpeg_bytes(&halves(1200, 800)), 6);
    let src = write(dir.path(), "o6.jpg", &bytes);
    let (info, dst) = thumb(&src, &ThumbnailSpec::default());
    let info = info.unwrap();
    assert_eq!((info.width, info.height), (800, 1200));
    assert_eq!((info.thumb_width, info.thumb_height), (213, 320));
    let out = image::open(&dst).unwrap().to_rgb8();
    assert_eq!((out.width(), out.height()), (213, 320));
    assert!(
        close(out.get_pixel(106, 40).0, [255, 0, 0]),
        "{:?}",
        out.get_pixel(106, 40)
    );
    assert!(
        close(out.get_pixel(106, 280).0, [0, 0, 255]),
        "{:?}",
        out.get_pixel(106, 280)
    );
}

#[test]
fn truncated_jpeg_is_an_error() {
    let dir = tmp();
    let bytes = jpeg_bytes(&noisy(1200, 800));
    let src = write(dir.path(), "t.jpg", &bytes[..bytes.len() / 2]);
    let (res, dst) = thumb(&src, &ThumbnailSpec::default());
    assert!(matches!(res, Err(MediaError::Decode(_))), "{res:?}");
    assert!(!dst.exists());
}

#[test]
fn truncated_png_is_an_error() {
    let dir = tmp();
    let src = save_png(
        dir.path(),
        "t.png",
        &DynamicImage::ImageRgb8(noisy(600, 400)),
    );
    let bytes = std::fs::read(&src).unwrap();
    std::fs::write(&src, &bytes[..bytes.len() / 2]).unwrap();
    let (res, _) = thumb(&src, &ThumbnailSpec::default());
    assert!(matches!(res, Err(MediaError::Decode(_))), "{res:?}");
}

#[test]
fn zero_byte_file_is_an_error() {
    let dir = tmp();
    let src = write(dir.path(), "empty.jpg", b"");
    let (res, dst) = thumb(&src, &ThumbnailSpec::default());
    assert!(matches!(res, Err(MediaError::Decode(_))), "{res:?}");
    assert!(!dst.exists());
}

#[test]
fn missing_file_is_io_error() {
    let dir = tmp();
    let (res, _) = thumb(&dir.path().join("nope.png"), &ThumbnailSpec::default());
    assert!(matches!(res, Err(MediaError::Io(_))), "{res:?}");
}

#[test]
fn garbage_and_text_are_unsupported() {
    let dir = tmp();
    let src = write(dir.path(), "x.jpg", b"hello, this is not an image at all\n");
    let (res, _) = thumb(&src, &ThumbnailSpec::default());
    assert!(matches!(res, Err(MediaError::Unsupported)), "{res:?}");
}

#[test]
fn jpeg_magic_with_garbage_body_is_an_error() {
    let dir = tmp();
    let mut bytes = vec![0xFF, 0xD8, 0xFF, 0xE0];
    bytes.extend((0..5000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
    let src = write(dir.path(), "g.jpg", &bytes);
    let (res, _) = thumb(&src, &ThumbnailSpec::default());
    assert!(res.is_err(), "{res:?}");
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut c = (data.len() as u32).to_be_bytes().to_vec();
    let mut body = kind.to_vec();
    body.extend_from_slice(data);
    c.extend_from_slice(&body);
    c.extend_from_slice(&crc32(&body).to_be_bytes());
    c
}

#[test]
fn png_header_claiming_100000x100000_is_refused_quickly() {
    let dir = tmp();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 6, 0, 0, 0]); // 8-bit RGBA, no interlace
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    bytes.extend(png_chunk(b"IHDR", &ihdr));
    bytes.extend(png_chunk(b"IEND", &[]));
    assert_eq!(crc32(b"IEND"), 0xAE42_6082); // the well-known IEND CRC
    let src = write(dir.path(), "bomb.png", &bytes);
    let started = Instant::now();
    let (res, dst) = thumb(&src, &ThumbnailSpec::default());
    assert!(started.elapsed() < Duration::from_secs(1));
    match res {
        Err(MediaError::TooLarge { pixels }) => assert_eq!(pixels, 10_000_000_000),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(!dst.exists());
}

#[test]
fn max_pixels_applies_to_jpeg_too() {
    let dir = tmp();
    let src = write(dir.path(), "a.jpg", &jpeg_bytes(&noisy(1200, 800)));
    let spec = ThumbnailSpec {
        max_pixels: 1200 * 800 - 1,
        ..ThumbnailSpec::default()
    };
    let (res, _) = thumb(&src, &spec);
    assert!(
        matches!(res, Err(MediaError::TooLarge { pixels: 960_000 })),
        "{res:?}"
    );
}

#[test]
fn animated_gif_uses_first_frame() {
    let dir = tmp();
    let path = dir.path().join("anim.gif");
    {
        let file = std::fs::File::create(&path).unwrap();
        let mut enc = GifEncoder::new(file);
        enc.set_repeat(image::codecs::gif::Repeat::Infinite)
            .unwrap();
        for color in [[255, 0, 0, 255], [0, 0, 255, 255], [0, 255, 0, 255]] {
            let img = RgbaImage::from_pixel(400, 300, Rgba(color));
            enc.encode_frame(Frame::from_parts(
                img,
                0,
                0,
                Delay::from_numer_denom_ms(100, 1),
            ))
            .unwrap();
        }
    }
    let (info, dst) = thumb(&path, &ThumbnailSpec::default());
    let info = info.unwrap();
    assert_eq!((info.width, info.height), (400, 300));
    let out = image::open(&dst).unwrap().to_rgb8();
    assert_eq!((out.width(), out.height()), (320, 240));
    assert!(
        close(out.get_pixel(160, 120).0, [255, 0, 0]),
        "{:?}",
        out.get_pixel(160, 120)
    );
}

#[test]
fn webp_output_and_webp_input() {
    let dir = tmp();
    let src = save_png(
        dir.path(),
        "a.png",
        &DynamicImage::ImageRgb8(halves(1000, 500)),
    );
    let spec = ThumbnailSpec {
        format: ThumbFormat::WebP,
        ..ThumbnailSpec::default()
    };
    let (info, dst) = thumb(&src, &spec);
    info.unwrap();
    let bytes = std::fs::read(&dst).unwrap();
    assert_eq!(image::guess_format(&bytes).unwrap(), ImageFormat::WebP);
    let out = image::load_from_memory(&bytes).unwrap();
    assert_eq!((out.width(), out.height()), (320, 160));

    // That WebP is itself a valid source.
    let (info, dst2) = thumb(&dst, &ThumbnailSpec::default());
    assert_eq!(info.unwrap().width, 320);
    assert_eq!(image::open(&dst2).unwrap().width(), 320);
}

#[test]
fn transparent_png_is_flattened_on_white_for_jpeg() {
    let dir = tmp();
    let img = RgbaImage::from_fn(640, 640, |x, _| {
        if x < 320 {
            Rgba([0, 0, 0, 0])
        } else {
            Rgba([0, 0, 255, 255])
        }
    });
    let src = dir.path().join("alpha.png");
    let file = std::fs::File::create(&src).unwrap();
    PngEncoder::new(file)
        .write_image(img.as_raw(), 640, 640, image::ExtendedColorType::Rgba8)
        .unwrap();
    let (info, dst) = thumb(&src, &ThumbnailSpec::default());
    info.unwrap();
    let out = image::open(&dst).unwrap().to_rgb8();
    assert!(
        close(out.get_pixel(40, 160).0, [255, 255, 255]),
        "{:?}",
        out.get_pixel(40, 160)
    );
    assert!(
        close(out.get_pixel(280, 160).0, [0, 0, 255]),
        "{:?}",
        out.get_pixel(280, 160)
    );
}

#[test]
fn small_images_are_not_upscaled() {
    let dir = tmp();
    let src = write(dir.path(), "s.jpg", &jpeg_bytes(&noisy(100, 60)));
    let (info, dst) = thumb(&src, &ThumbnailSpec::default());
    let info = info.unwrap();
    assert_eq!((info.thumb_width, info.thumb_height), (100, 60));
    let out = image::open(&dst).unwrap();
    assert_eq!((out.width(), out.height()), (100, 60));
}

#[test]
fn output_replaces_destination_and_leaves_no_temp_files() {
    let dir = tmp();
    let src = write(dir.path(), "a.jpg", &jpeg_bytes(&noisy(800, 800)));
    let dst = dir.path().join("out.jpg");
    std::fs::write(&dst, b"old").unwrap();
    let info = image_thumbnail(&src, &dst, &ThumbnailSpec::default()).unwrap();
    assert_eq!((info.thumb_width, info.thumb_height), (320, 320));
    assert_eq!(image::open(&dst).unwrap().width(), 320);
    let mut names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["a.jpg", "out.jpg"]);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&dst).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

// Large JPEGs (at least 8× the thumbnail) take the DC-only 1/8 fast path.

#[test]
fn large_jpeg_fast_path_matches_full_decode() {
    let dir = tmp();
    let src_img = RgbImage::from_fn(2600, 1700, |x, y| {
        let t = ((x as f32 / 53.0).sin() * (y as f32 / 41.0).cos() * 60.0) as i32;
        Rgb([
            (x * 255 / 2600) as u8,
            (128 + t).clamp(0, 255) as u8,
            (y * 255 / 1700) as u8,
        ])
    });
    let bytes = jpeg_bytes(&src_img);
    let src = write(dir.path(), "big.jpg", &bytes);
    let (info, dst) = thumb(&src, &ThumbnailSpec::default());
    let info = info.unwrap();
    assert_eq!((info.width, info.height), (2600, 1700));
    assert_eq!((info.thumb_width, info.thumb_height), (320, 209));
    let ours = image::open(&dst).unwrap().to_rgb8();
    let reference = image::load_from_memory(&bytes)
        .unwrap()
        .resize_exact(320, 209, image::imageops::FilterType::Lanczos3)
        .to_rgb8();
    let diff: u64 = ours
        .as_raw()
        .iter()
        .zip(reference.as_raw())
        .map(|(a, b)| u64::from(a.abs_diff(*b)))
        .sum();
    let mean = diff as f64 / ours.as_raw().len() as f64;
    assert!(mean < 4.0, "mean abs difference {mean}");
}

#[test]
fn large_jpeg_exif_orientation_6_rotates() {
    let dir = tmp();
    let bytes = with_exif_orientation(&jpeg_bytes(&halves(2800, 1600)), 6);
    let src = write(dir.path(), "big-o6.jpg", &bytes);
    let (info, dst) = thumb(&src, &ThumbnailSpec::default());
    let info = info.unwrap();
    assert_eq!((info.width, info.height), (1600, 2800));
    let out = image::open(&dst).unwrap().to_rgb8();
    assert_eq!((out.width(), out.height()), (183, 320));
    assert!(
        close(out.get_pixel(91, 40).0, [255, 0, 0]),
        "{:?}",
        out.get_pixel(91, 40)
    );
    assert!(
        close(out.get_pixel(91, 280).0, [0, 0, 255]),
        "{:?}",
        out.get_pixel(91, 280)
    );
}

#[test]
fn large_truncated_jpeg_is_an_error() {
    let dir = tmp();
    let bytes = jpeg_bytes(&noisy(2600, 1000));
    for keep in [bytes.len() / 10, bytes.len() / 2, bytes.len() - 1000] {
        let src = write(dir.path(), "t.jpg", &bytes[..keep]);
        let (res, _) = thumb(&src, &ThumbnailSpec::default());
        assert!(
            matches!(res, Err(MediaError::Decode(_))),
            "keep {keep}: {res:?}"
        );
    }
}

#[test]
fn corrupted_jpegs_never_panic() {
    let dir = tmp();
    // 2600 wide: fast path; 1200 wide: jpeg-decoder's scaled path.
    for (w, h) in [(2600, 400), (1200, 300)] {
        let bytes = jpeg_bytes(&noisy(w, h));
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for i in 0..60 {
            let mut b = bytes.clone();
            for _ in 0..1 + i % 5 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let at = (seed % b.len() as u64) as usize;
                b[at] = (seed >> 40) as u8;
            }
            let src = write(dir.path(), "fuzz.jpg", &b);
            let _ = thumb(&src, &ThumbnailSpec::default()); // Ok or Err, never a panic
        }
    }
}
