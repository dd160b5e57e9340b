//! AVIF decoding, in-process and without C libraries.
//!
//! An AVIF file is an ISO-BMFF container (HEIF) holding one AV1 key frame, and
//! optionally a second, monochrome AV1 frame for alpha. The container is parsed by
//! `avif-parse` (a fork of Mozilla's mp4parse), the
//! AV1 frames are decoded by `re_rav1d` (a Rust port of dav1d, the reference AV1
//! decoder, with a safe API), and YUV is converted to RGB by `yuv`.
//!
//! Why not `image`'s AVIF support: it links the C libdav1d >= 1.3, which the target
//! platform (Debian 12: 1.0) does not ship; building dav1d from source would add
//! meson, ninja and nasm to every build. This path needs nothing beyond cargo.
//!
//! Limits, checked before any pixel buffer exists: the file is read whole (AVIF has no
//! streaming decode), so it must be at most [`MAX_FILE_BYTES`]; the frame size from
//! the AV1 sequence header must be within [`ThumbnailSpec::max_pixels`], and the
//! decoder is told the same limit (`frame_size_limit`), so a frame that grows past
//! its header is refused too. Decoding runs on one thread.
//!
//! Not handled: the container's crop (`clap`) and rotation/mirror (`irot`/`imir`)
//! properties, image sequences beyond their first frame (AVIS), and premultiplied
//! alpha is shown as stored. Colour is converted with the matrix and range the AV1
//! sequence header declares (unspecified means BT.601, as libavif assumes).

use std::fs::File;
use std::io::Read;
use std::path::Path;

use re_rav1d::dav1d::{self, pixel, PixelLayout, PlanarImageComponent as Plane, Settings};
use yuv::{YuvGrayImage, YuvPlanarImage, YuvRange, YuvStandardMatrix};

use crate::image::Raster;
use crate::{MediaError, ThumbnailSpec};

/// Largest AVIF file decoded (it is read into memory whole).
pub const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// Decodes the AVIF at `src` to RGB8 (or RGBA8 with an alpha item). Returns the
/// picture's width, height and pixels.
///
/// The parser and decoder are memory-safe Rust, but a hostile file could still
/// reach a panic in them; that is turned into [`MediaError::Decode`] here so
/// it fails the one job and nothing else.
pub(crate) fn decode_avif(src: &Path, spec: &ThumbnailSpec) -> Result<Raster, MediaError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| decode(src, spec))).unwrap_or_else(
        |panic| {
            let why = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(MediaError::Decode(format!("AVIF decoder failed: {why}")))
        },
    )
}

fn decode(src: &Path, spec: &ThumbnailSpec) -> Result<Raster, MediaError> {
    let len = std::fs::metadata(src)?.len();
    if len > MAX_FILE_BYTES {
        return Err(MediaError::Decode(format!(
            "AVIF file of {len} bytes is larger than the {MAX_FILE_BYTES}-byte limit"
        )));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    File::open(src)?
        .take(MAX_FILE_BYTES)
        .read_to_end(&mut bytes)?;
    let avif = avif_parse::read_avif(&mut bytes.as_slice()).map_err(container_error)?;
    drop(bytes);

    // The sequence header's maximum frame size, before anything is allocated.
    let meta = avif.primary_item_metadata().map_err(container_error)?;
    let (w, h) = (meta.max_frame_width.get(), meta.max_frame_height.get());
    crate::image::check_pixels(w, h, spec)?;

    let color = decode_frame(&avif.primary_item, spec)?;
    let (width, height) = (color.width(), color.height());
    crate::image::check_pixels(width, height, spec)?;
    let rgb = to_rgb8(&color)?;
    drop(color);

    let Some(alpha_item) = &avif.alpha_item else {
        return Ok(Raster::new(width, height, false, rgb));
    };
    let alpha = decode_frame(alpha_item, spec)?;
    if (alpha.width(), alpha.height()) != (width, height) {
        return Err(MediaError::Decode(
            "AVIF alpha plane size differs from the image".into(),
        ));
    }
    let a = alpha_values(&alpha)?;
    let mut rgba = Vec::with_capacity(width as usize * height as usize * 4);
    for (px, a) in rgb.chunks_exact(3).zip(a) {
        rgba.extend_from_slice(px);
        rgba.push(a);
    }
    Ok(Raster::new(width, height, true, rgba))
}

fn container_error(e: avif_parse::Error) -> MediaError {
    match e {
        avif_parse::Error::UnexpectedEOF => MediaError::Decode("truncated AVIF file".into()),
        avif_parse::Error::Unsupported(what) => {
            MediaError::Decode(format!("unsupported AVIF feature: {what}"))
        }
        other => MediaError::Decode(format!("invalid AVIF container: {other:?}")),
    }
}

/// Decodes one AV1 still frame.
fn decode_frame(obus: &[u8], spec: &ThumbnailSpec) -> Result<dav1d::Picture, MediaError> {
    let av1 = |e: dav1d::Error| MediaError::Decode(format!("AV1 decoding failed: {e}"));
    let mut settings = Settings::new();
    settings.set_n_threads(1);
    settings.set_max_frame_delay(1);
    settings.set_frame_size_limit(u32::try_from(spec.max_pixels).unwrap_or(u32::MAX));
    let mut dec = dav1d::Decoder::with_settings(&settings).map_err(av1)?;
    match dec.send_data(obus.to_vec(), None, None, None) {
        Ok(()) | Err(dav1d::Error::Again) => {}
        Err(e) => return Err(av1(e)),
    }
    // One frame went in; it comes out after at most a few rounds of feeding
    // what the decoder has not taken yet.
    for _ in 0..8 {
        match dec.get_picture() {
            Ok(p) => return Ok(p),
            Err(dav1d::Error::Again) => match dec.send_pending_data() {
                Ok(()) | Err(dav1d::Error::Again) => {}
                Err(e) => return Err(av1(e)),
            },
            Err(e) => return Err(av1(e)),
        }
    }
    Err(MediaError::Decode("AVIF holds no decodable frame".into()))
}

/// One plane as 8-bit samples, tightly packed (`cols` × `rows`): 8-bit planes
/// are copied row by row without their padding, 10- and 12-bit planes are
/// shifted down.
fn plane8(pic: &dav1d::Picture, which: Plane, cols: u32, rows: u32) -> Vec<u8> {
    let data = pic.plane(which);
    let stride = pic.stride(which) as usize;
    let (cols, rows) = (cols as usize, rows as usize);
    let bpc = pic.bit_depth();
    let mut out = Vec::with_capacity(cols * rows);
    for r in 0..rows {
        let row = &data[r * stride..];
        if bpc <= 8 {
            out.extend_from_slice(&row[..cols]);
        } else {
            let shift = bpc - 8;
            out.extend(
                row[..cols * 2]
                    .chunks_exact(2)
                    .map(|b| (u16::from_ne_bytes([b[0], b[1]]) >> shift).min(255) as u8),
            );
        }
    }
    out
}

fn range_of(pic: &dav1d::Picture) -> YuvRange {
    match pic.color_range() {
        pixel::YUVRange::Full => YuvRange::Full,
        pixel::YUVRange::Limited => YuvRange::Limited,
    }
}

/// The picture as packed RGB8.
fn to_rgb8(pic: &dav1d::Picture) -> Result<Vec<u8>, MediaError> {
    use pixel::MatrixCoefficients as M;
    let (w, h) = (pic.width(), pic.height());
    let range = range_of(pic);
    let identity = matches!(pic.matrix_coefficients(), M::Identity);
    let matrix = match pic.matrix_coefficients() {
        M::BT709 => YuvStandardMatrix::Bt709,
        M::BT2020NonConstantLuminance | M::BT2020ConstantLuminance => YuvStandardMatrix::Bt2020,
        M::ST240M => YuvStandardMatrix::Smpte240,
        M::BT470M => YuvStandardMatrix::Fcc,
        M::YCgCo | M::ICtCp | M::ST2085 => {
            return Err(MediaError::Decode(format!(
                "unsupported AVIF colour matrix {:?}",
                pic.matrix_coefficients()
            )))
        }
        _ => YuvStandardMatrix::Bt601,
    };
    let (cw, ch) = match pic.pixel_layout() {
        PixelLayout::I420 => (w.div_ceil(2), h.div_ceil(2)),
        PixelLayout::I422 => (w.div_ceil(2), h),
        PixelLayout::I444 | PixelLayout::I400 => (w, h),
    };
    let y = plane8(pic, Plane::Y, w, h);
    let mut rgb = vec![0u8; w as usize * h as usize * 3];
    let conv = |e: yuv::YuvError| MediaError::Decode(format!("AVIF colour conversion: {e}"));
    if pic.pixel_layout() == PixelLayout::I400 {
        let gray = YuvGrayImage {
            y_plane: &y,
            y_stride: w,
            width: w,
            height: h,
        };
        yuv::yuv400_to_rgb(&gray, &mut rgb, w * 3, range, matrix).map_err(conv)?;
        return Ok(rgb);
    }
    let u = plane8(pic, Plane::U, cw, ch);
    let v = plane8(pic, Plane::V, cw, ch);
    let img = YuvPlanarImage {
        y_plane: &y,
        y_stride: w,
        u_plane: &u,
        u_stride: cw,
        v_plane: &v,
        v_stride: cw,
        width: w,
        height: h,
    };
    match pic.pixel_layout() {
        // RGB coded as GBR in 4:4:4 (lossless AVIF).
        PixelLayout::I444 if identity => {
            for (i, px) in rgb.chunks_exact_mut(3).enumerate() {
                px.copy_from_slice(&[v[i], y[i], u[i]]);
            }
        }
        PixelLayout::I444 => {
            yuv::yuv444_to_rgb(&img, &mut rgb, w * 3, range, matrix).map_err(conv)?
        }
        PixelLayout::I422 => {
            yuv::yuv422_to_rgb(&img, &mut rgb, w * 3, range, matrix).map_err(conv)?
        }
        _ => yuv::yuv420_to_rgb(&img, &mut rgb, w * 3, range, matrix).map_err(conv)?,
    }
    Ok(rgb)
}

/// Alpha values from the (monochrome) alpha frame's luma, expanded to full
/// range when the frame is limited-range.
fn alpha_values(pic: &dav1d::Picture) -> Result<Vec<u8>, MediaError> {
    let y = plane8(pic, Plane::Y, pic.width(), pic.height());
    Ok(match range_of(pic) {
        YuvRange::Full => y,
        YuvRange::Limited => y
            .into_iter()
            .map(|a| ((i32::from(a) - 16).clamp(0, 219) * 255 / 219) as u8)
            .collect(),
    })
}
