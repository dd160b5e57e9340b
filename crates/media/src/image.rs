//! In-process image thumbnails.
//!
//! Owns everything between "a file that claims to be an image" and "a small JPEG/WebP
//! next to it": format sniffing by content, the decompression-bomb guard, decoding,
//! EXIF orientation, resizing and encoding. It is kept in-process (no ImageMagick, no
//! shell) so that untrusted images are handled by memory-safe decoders with explicit
//! limits.
//!
//! The pipeline, in order:
//! 1. Sniff the format from magic bytes (never the file name). JPEG, PNG, GIF, WebP
//!    and AVIF (through [`crate::avif`]) are decoded; anything else is
//!    [`MediaError::Unsupported`].
//! 2. Read only the header and refuse sources whose width × height exceeds
//!    [`ThumbnailSpec::max_pixels`] with [`MediaError::TooLarge`], before any pixel
//!    buffer exists. Decoding then also runs under `image::Limits`.
//! 3. Decode. Baseline JPEGs at least 8× larger than the thumbnail are decoded at
//!    1/8 scale by the DC-only decoder in `jpeg_dc` (no IDCT, no full-size buffers).
//!    Other 8-bit grey or YCbCr JPEGs go through `jpeg-decoder` with DCT-domain
//!    scaling (1/2, 1/4 or 1/8 in the inverse DCT, the "shrink on load" that
//!    libjpeg-turbo also offers). Everything else (CMYK, 12-bit) falls back to
//!    `image`'s zune-jpeg decoder at full size. Arithmetic-coded JPEGs are not
//!    supported by any of them and fail with [`MediaError::Decode`]. Animated GIF
//!    and WebP yield their first frame.
//! 4. Resize with `fast_image_resize` (Lanczos3, SIMD, alpha-aware) so the longest side
//!    is [`ThumbnailSpec::max_side`]; smaller sources are not upscaled.
//! 5. Apply the EXIF orientation (on the small image, where it is cheap).
//! 6. Encode and write to a temporary sibling of `dst`, then rename it into place, so a
//!    reader never sees a half-written thumbnail. The file is not fsynced: thumbnails
//!    can always be regenerated.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use ::image::codecs::jpeg::JpegEncoder;
use ::image::codecs::webp::WebPEncoder;
use ::image::metadata::Orientation;
use ::image::{
    DynamicImage, ExtendedColorType, ImageDecoder, ImageError, ImageFormat, ImageReader, Limits,
    RgbImage, RgbaImage,
};
use fast_image_resize as fir;

use crate::jpeg_dc::DcError;
use crate::{MediaError, ThumbFormat, ThumbnailSpec, JPEG_QUALITY};

/// Dimensions reported for a thumbnail job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageInfo {
    /// Width of the source as displayed, i.e. after EXIF orientation.
    /// For [`crate::MediaTools::video_poster`], the poster's width.
    pub width: u32,
    /// Height of the source as displayed, i.e. after EXIF orientation.
    /// For [`crate::MediaTools::video_poster`], the poster's height.
    pub height: u32,
    /// Width of the written thumbnail.
    pub thumb_width: u32,
    /// Height of the written thumbnail.
    pub thumb_height: u32,
}

/// Writes a thumbnail of the image `src` to `dst` and returns the source's displayed
/// dimensions (the "resolution" metadata) and the thumbnail's.
///
/// Blocking and CPU-bound: call it from `spawn_blocking`. `dst`'s directory must exist;
/// `dst` is replaced atomically. Errors: [`MediaError::Unsupported`] for formats other
/// than JPEG/PNG/GIF/WebP, [`MediaError::TooLarge`] when the header announces more than
/// `spec.max_pixels` pixels, [`MediaError::Decode`] for empty, truncated or corrupt
/// files, [`MediaError::Io`] for file-system errors.
pub fn image_thumbnail(
    src: &Path,
    dst: &Path,
    spec: &ThumbnailSpec,
) -> Result<ImageInfo, MediaError> {
    let decoded = decode(src, spec)?;
    let (tw, th) = fit_within(decoded.width, decoded.height, spec.max_side);
    let small = resize(decoded.raster, tw, th)?;
    let mut img = small.into_dynamic()?;
    img.apply_orientation(decoded.orientation);
    let bytes = encode(&img, spec.format)?;
    write_atomically(dst, &bytes)?;
    let (width, height) = if swaps_axes(decoded.orientation) {
        (decoded.height, decoded.width)
    } else {
        (decoded.width, decoded.height)
    };
    Ok(ImageInfo {
        width,
        height,
        thumb_width: img.width(),
        thumb_height: img.height(),
    })
}

/// Pixels in RGB8 or RGBA8, row-major, tightly packed.
pub(crate) struct Raster {
    width: u32,
    height: u32,
    alpha: bool,
    data: Vec<u8>,
}

impl Raster {
    pub(crate) fn new(width: u32, height: u32, alpha: bool, data: Vec<u8>) -> Raster {
        Raster {
            width,
            height,
            alpha,
            data,
        }
    }

    fn from_dynamic(img: DynamicImage) -> Raster {
        let (width, height) = (img.width(), img.height());
        if img.color().has_alpha() {
            Raster {
                width,
                height,
                alpha: true,
                data: img.into_rgba8().into_raw(),
            }
        } else {
            Raster {
                width,
                height,
                alpha: false,
                data: img.into_rgb8().into_raw(),
            }
        }
    }

    fn into_dynamic(self) -> Result<DynamicImage, MediaError> {
        let bad = || MediaError::Decode("pixel buffer size mismatch".into());
        Ok(if self.alpha {
            DynamicImage::ImageRgba8(
                RgbaImage::from_raw(self.width, self.height, self.data).ok_or_else(bad)?,
            )
        } else {
            DynamicImage::ImageRgb8(
                RgbImage::from_raw(self.width, self.height, self.data).ok_or_else(bad)?,
            )
        })
    }
}

/// A decoded source: its full (stored, pre-orientation) dimensions, its EXIF
/// orientation, and pixels that may already be reduced (JPEG DCT scaling).
struct Decoded {
    width: u32,
    height: u32,
    orientation: Orientation,
    raster: Raster,
}

fn decode(src: &Path, spec: &ThumbnailSpec) -> Result<Decoded, MediaError> {
    let head = read_head(src)?;
    if head.is_empty() {
        return Err(MediaError::Decode("empty file".into()));
    }
    let format = ::image::guess_format(&head).map_err(|_| MediaError::Unsupported)?;
    // Formats whose dimensions sit at a fixed offset are checked straight from the
    // bytes, so a header-only bomb is refused even when the decoder would want more
    // of the file before it reports dimensions.
    if let Some((width, height)) = fixed_header_dimensions(&head, format) {
        check_pixels(width, height, spec)?;
    }
    match format {
        ImageFormat::Jpeg => match decode_jpeg_scaled(src, spec)? {
            Some(decoded) => Ok(decoded),
            None => decode_generic(src, format, spec),
        },
        ImageFormat::Png | ImageFormat::Gif | ImageFormat::WebP => {
            decode_generic(src, format, spec)
        }
        ImageFormat::Avif => {
            let raster = crate::avif::decode_avif(src, spec)?;
            Ok(Decoded {
                width: raster.width,
                height: raster.height,
                orientation: Orientation::NoTransforms,
                raster,
            })
        }
        _ => Err(MediaError::Unsupported),
    }
}

/// The first bytes of the file (up to 64), enough for magic numbers and fixed headers.
fn read_head(src: &Path) -> Result<Vec<u8>, MediaError> {
    use std::io::Read;
    let mut head = Vec::with_capacity(64);
    File::open(src)?.take(64).read_to_end(&mut head)?;
    Ok(head)
}

/// Width and height of PNG (IHDR) and GIF (logical screen) from the first bytes.
fn fixed_header_dimensions(head: &[u8], format: ImageFormat) -> Option<(u32, u32)> {
    let be = |i: usize| Some(u32::from_be_bytes(head.get(i..i + 4)?.try_into().ok()?));
    let le16 = |i: usize| {
        Some(u32::from(u16::from_le_bytes(
            head.get(i..i + 2)?.try_into().ok()?,
        )))
    };
    match format {
        ImageFormat::Png if head.get(12..16) == Some(b"IHDR") => Some((be(16)?, be(20)?)),
        ImageFormat::Gif => Some((le16(6)?, le16(8)?)),
        _ => None,
    }
}

pub(crate) fn check_pixels(
    width: u32,
    height: u32,
    spec: &ThumbnailSpec,
) -> Result<(), MediaError> {
    let pixels = u64::from(width) * u64::from(height);
    if pixels > spec.max_pixels {
        return Err(MediaError::TooLarge { pixels });
    }
    if pixels == 0 {
        return Err(MediaError::Decode("image has no pixels".into()));
    }
    Ok(())
}

fn decode_limits(spec: &ThumbnailSpec) -> Limits {
    let mut limits = Limits::default();
    // Room for the decoded frame at up to 8 bytes per pixel (RGBA16).
    limits.max_alloc = Some(spec.max_pixels.saturating_mul(8).max(64 << 20));
    limits
}

fn map_image_error(e: ImageError, pixels: u64) -> MediaError {
    match e {
        ImageError::Limits(_) => MediaError::TooLarge { pixels },
        ImageError::Unsupported(_) => MediaError::Unsupported,
        ImageError::IoError(io) if io.kind() == io::ErrorKind::UnexpectedEof => {
            MediaError::Decode("truncated file".into())
        }
        ImageError::IoError(io) => MediaError::Io(io),
        other => MediaError::decode(other),
    }
}

/// Decoding through `image` (PNG, GIF, WebP, and JPEGs the fast path declines).
fn decode_generic(
    src: &Path,
    format: ImageFormat,
    spec: &ThumbnailSpec,
) -> Result<Decoded, MediaError> {
    // Header only: bounded work and memory whatever the file claims.
    let mut reader = ImageReader::with_format(BufReader::new(File::open(src)?), format);
    reader.limits(decode_limits(spec));
    let (width, height) = reader
        .into_dimensions()
        .map_err(|e| map_image_error(e, 0))?;
    check_pixels(width, height, spec)?;
    let pixels = u64::from(width) * u64::from(height);

    let mut reader = ImageReader::with_format(BufReader::new(File::open(src)?), format);
    reader.limits(decode_limits(spec));
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| map_image_error(e, pixels))?;
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    // For animated GIF and WebP this is the first frame.
    let img = DynamicImage::from_decoder(decoder).map_err(|e| map_image_error(e, pixels))?;
    Ok(Decoded {
        width,
        height,
        orientation,
        raster: Raster::from_dynamic(img),
    })
}

fn map_jpeg_error(e: jpeg_decoder::Error) -> MediaError {
    match e {
        jpeg_decoder::Error::Io(io) if io.kind() == io::ErrorKind::UnexpectedEof => {
            MediaError::Decode("truncated file".into())
        }
        jpeg_decoder::Error::Io(io) => MediaError::Io(io),
        other => MediaError::decode(other),
    }
}

/// JPEG with DCT-domain downscaling. `Ok(None)` means "not for this path" (CMYK, 16-bit,
/// or a feature jpeg-decoder lacks): the caller falls back to the generic decoder.
fn decode_jpeg_scaled(src: &Path, spec: &ThumbnailSpec) -> Result<Option<Decoded>, MediaError> {
    use jpeg_decoder::{Decoder, PixelFormat};

    let mut dec = Decoder::new(BufReader::with_capacity(64 << 10, File::open(src)?));
    match dec.read_info() {
        Ok(()) => {}
        Err(jpeg_decoder::Error::Unsupported(_)) => return Ok(None),
        Err(e) => return Err(map_jpeg_error(e)),
    }
    let info = dec
        .info()
        .ok_or_else(|| MediaError::Decode("JPEG without a frame header".into()))?;
    let (width, height) = (u32::from(info.width), u32::from(info.height));
    check_pixels(width, height, spec)?;
    let channels = match info.pixel_format {
        PixelFormat::L8 => 1,
        PixelFormat::RGB24 => 3,
        _ => return Ok(None),
    };
    let (tw, th) = fit_within(width, height, spec.max_side);
    let exif_orientation = |exif: Option<&[u8]>| {
        exif.and_then(Orientation::from_exif_chunk)
            .unwrap_or(Orientation::NoTransforms)
    };

    // 1/8 scale is enough: take the DC-only fast path for baseline files.
    if info.coding_process == jpeg_decoder::CodingProcess::DctSequential
        && (width.div_ceil(8) >= tw || height.div_ceil(8) >= th)
        // The fast path reads the whole file; a file far larger than its pixels can
        // justify is left to the streaming decoder.
        && fs::metadata(src)?.len() <= (u64::from(width) * u64::from(height) * 2).max(16 << 20)
    {
        let bytes = fs::read(src)?;
        match crate::jpeg_dc::decode(&bytes) {
            Ok(img) => {
                return Ok(Some(Decoded {
                    width,
                    height,
                    orientation: exif_orientation(dec.exif_data()),
                    raster: Raster {
                        width: img.width,
                        height: img.height,
                        alpha: false,
                        data: img.rgb,
                    },
                }));
            }
            Err(DcError::Corrupt(what)) => return Err(MediaError::Decode(what.into())),
            Err(DcError::NotApplicable) => {}
        }
    }

    dec.set_max_decoding_buffer_size(
        usize::try_from(spec.max_pixels.saturating_mul(4)).unwrap_or(usize::MAX),
    );
    // Both fit in u16: they are no larger than the JPEG's own u16 dimensions.
    let (ow, oh) = dec.scale(tw as u16, th as u16).map_err(map_jpeg_error)?;
    let data = match dec.decode() {
        Ok(data) => data,
        Err(jpeg_decoder::Error::Unsupported(_)) => return Ok(None),
        Err(e) => return Err(map_jpeg_error(e)),
    };
    let (ow, oh) = (u32::from(ow), u32::from(oh));
    let expected = ow as usize * oh as usize * channels;
    if data.len() != expected {
        return Err(MediaError::Decode("unexpected JPEG output size".into()));
    }
    let data = if channels == 1 {
        data.iter().flat_map(|&l| [l, l, l]).collect()
    } else {
        data
    };
    let orientation = exif_orientation(dec.exif_data());
    Ok(Some(Decoded {
        width,
        height,
        orientation,
        raster: Raster {
            width: ow,
            height: oh,
            alpha: false,
            data,
        },
    }))
}

/// The size that fits `width × height` within a `max_side` square, keeping the aspect
/// ratio, never upscaling, never 0.
pub(crate) fn fit_within(width: u32, height: u32, max_side: u32) -> (u32, u32) {
    let longest = width.max(height);
    let max_side = max_side.max(1);
    if longest <= max_side {
        return (width.max(1), height.max(1));
    }
    let scale = f64::from(max_side) / f64::from(longest);
    let w = ((f64::from(width) * scale).round() as u32).clamp(1, max_side);
    let h = ((f64::from(height) * scale).round() as u32).clamp(1, max_side);
    (w, h)
}

fn resize(raster: Raster, width: u32, height: u32) -> Result<Raster, MediaError> {
    if raster.width == width && raster.height == height {
        return Ok(raster);
    }
    let pixel_type = if raster.alpha {
        fir::PixelType::U8x4
    } else {
        fir::PixelType::U8x3
    };
    let src = fir::images::ImageRef::new(raster.width, raster.height, &raster.data, pixel_type)
        .map_err(MediaError::decode)?;
    let mut dst = fir::images::Image::new(width, height, pixel_type);
    let options = fir::ResizeOptions::new()
        .resize_alg(fir::ResizeAlg::Convolution(fir::FilterType::Lanczos3));
    fir::Resizer::new()
        .resize(&src, &mut dst, &options)
        .map_err(MediaError::decode)?;
    Ok(Raster {
        width,
        height,
        alpha: raster.alpha,
        data: dst.into_vec(),
    })
}

fn swaps_axes(orientation: Orientation) -> bool {
    matches!(
        orientation,
        Orientation::Rotate90
            | Orientation::Rotate270
            | Orientation::Rotate90FlipH
            | Orientation::Rotate270FlipH
    )
}

/// Alpha-composites onto white; JPEG has no alpha channel.
fn flatten_on_white(img: &RgbaImage) -> RgbImage {
    let mut out = RgbImage::new(img.width(), img.height());
    for (dst, src) in out.pixels_mut().zip(img.pixels()) {
        let a = u32::from(src[3]);
        for c in 0..3 {
            let v = (u32::from(src[c]) * a + 255 * (255 - a) + 127) / 255;
            dst[c] = v as u8;
        }
    }
    out
}

/// Encodes a thumbnail in the requested format.
pub(crate) fn encode(img: &DynamicImage, format: ThumbFormat) -> Result<Vec<u8>, MediaError> {
    let mut out = Vec::with_capacity(32 << 10);
    match format {
        ThumbFormat::Jpeg => {
            let rgb = match img {
                DynamicImage::ImageRgb8(rgb) => rgb.clone(),
                other if other.color().has_alpha() => flatten_on_white(&other.to_rgba8()),
                other => other.to_rgb8(),
            };
            JpegEncoder::new_with_quality(&mut out, JPEG_QUALITY)
                .encode_image(&rgb)
                .map_err(MediaError::decode)?;
        }
        ThumbFormat::WebP => {
            let (data, color) = if img.color().has_alpha() {
                (img.to_rgba8().into_raw(), ExtendedColorType::Rgba8)
            } else {
                (img.to_rgb8().into_raw(), ExtendedColorType::Rgb8)
            };
            WebPEncoder::new_lossless(&mut out)
                .encode(&data, img.width(), img.height(), color)
                .map_err(MediaError::decode)?;
        }
    }
    Ok(out)
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `bytes` to a temporary sibling of `dst` (mode 0600) and renames it over `dst`.
pub(crate) fn write_atomically(dst: &Path, bytes: &[u8]) -> Result<(), MediaError> {
    let name = dst.file_name().ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, "destination has no file name")
    })?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(
        ".{}.{}.tmp",
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let tmp: PathBuf = dst.with_file_name(tmp_name);
    let result = (|| {
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(&tmp)?;
        file.write_all(bytes)?;
        drop(file);
        fs::rename(&tmp, dst)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(MediaError::Io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_keeps_aspect_and_never_upscales() {
        assert_eq!(fit_within(1200, 800, 320), (320, 213));
        assert_eq!(fit_within(800, 1200, 320), (213, 320));
        assert_eq!(fit_within(4000, 3000, 320), (320, 240));
        assert_eq!(fit_within(100, 50, 320), (100, 50));
        assert_eq!(fit_within(10000, 1, 320), (320, 1));
        assert_eq!(fit_within(320, 320, 320), (320, 320));
    }

    #[test]
    fn flatten_transparent_is_white() {
        let mut img = RgbaImage::new(2, 1);
        img.put_pixel(0, 0, ::image::Rgba([0, 0, 0, 0]));
        img.put_pixel(1, 0, ::image::Rgba([10, 20, 30, 255]));
        let out = flatten_on_white(&img);
        assert_eq!(out.get_pixel(0, 0).0, [255, 255, 255]);
        assert_eq!(out.get_pixel(1, 0).0, [10, 20, 30]);
    }
}
