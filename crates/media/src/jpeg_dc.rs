//! DC-only decoding of baseline JPEGs: the 1/8 "shrink on load" fast path.
//!
//! Owns the one decoder in this crate that is written here rather than borrowed. A
//! thumbnail of a camera photo needs at most 1/8 of its resolution, and at 1/8 scale
//! each 8×8 block contributes exactly its DC coefficient (the block average), which is
//! what libjpeg's scaled IDCT computes too. So for baseline (sequential Huffman, 8-bit)
//! files this module entropy-decodes the scan but only *keeps* DC values: AC
//! coefficients are skipped with one table lookup each, and no IDCT, upsampling of
//! full-size planes or full-size colour conversion happens at all. That roughly halves
//! the cost of a 12-megapixel thumbnail compared with a general decoder.
//!
//! Scope is deliberately narrow; anything else returns [`DcError::NotApplicable`] and
//! the caller uses the general decoder: progressive, arithmetic, lossless or 12-bit
//! files, multi-scan baseline files, RGB/CMYK colour (Adobe transform 0, 4 channels),
//! DNL-defined heights. Malformed data in scope is an error, never a panic: every
//! index is checked, and consuming bits past the end of the data is reported as
//! truncation.

/// Why the fast path did not produce an image.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum DcError {
    /// Valid or not, this file is outside the fast path's scope: use another decoder.
    NotApplicable,
    /// The file is corrupt or truncated.
    Corrupt(&'static str),
}

type Result<T> = std::result::Result<T, DcError>;

/// A 1/8-scale decode: `ceil(width/8) × ceil(height/8)` pixels, RGB8.
pub(crate) struct DcImage {
    pub width: u32,
    pub height: u32,
    pub rgb: Vec<u8>,
}

const LUT_BITS: u32 = 9;

struct Huffman {
    /// Indexed by the next `LUT_BITS` bits: `(code length, symbol)`, length 0 when the
    /// code is longer than `LUT_BITS`.
    lut: Vec<(u8, u8)>,
    /// Canonical decoding for long codes: for each length 1..=16, the largest code
    /// (-1 if none), and the index into `symbols` of its first code minus that code.
    maxcode: [i32; 17],
    valoffset: [i32; 17],
    symbols: Vec<u8>,
    /// For AC tables: indexed like `lut`, `bits to skip | coefficient step << 8` for a
    /// short code plus its magnitude bits (step 0 = end of block); 0 for long codes.
    ac_skip: Vec<u16>,
}

impl Huffman {
    fn new(counts: &[u8; 16], symbols: &[u8]) -> Result<Huffman> {
        let mut lut = vec![(0u8, 0u8); 1 << LUT_BITS];
        let mut maxcode = [-1i32; 17];
        let mut valoffset = [0i32; 17];
        let mut code: u32 = 0;
        let mut k: usize = 0;
        for len in 1..=16u32 {
            let n = usize::from(counts[len as usize - 1]);
            if n > 0 {
                valoffset[len as usize] = k as i32 - code as i32;
                for _ in 0..n {
                    if code >= (1 << len) {
                        return Err(DcError::Corrupt("bad Huffman table"));
                    }
                    let sym = *symbols
                        .get(k)
                        .ok_or(DcError::Corrupt("bad Huffman table"))?;
                    if len <= LUT_BITS {
                        let shift = LUT_BITS - len;
                        let start = (code << shift) as usize;
                        for e in &mut lut[start..start + (1 << shift)] {
                            *e = (len as u8, sym);
                        }
                    }
                    code += 1;
                    k += 1;
                }
                maxcode[len as usize] = code as i32 - 1;
            }
            code <<= 1;
        }
        let ac_skip = lut
            .iter()
            .map(|&(len, rs)| {
                if len == 0 {
                    return 0;
                }
                let (r, s) = (u16::from(rs >> 4), u16::from(rs & 15));
                let step = match (r, s) {
                    (15, 0) => 16,
                    (_, 0) => 0,
                    _ => r + 1,
                };
                (u16::from(len) + s) | (step << 8)
            })
            .collect();
        Ok(Huffman {
            lut,
            maxcode,
            valoffset,
            symbols: symbols[..k].to_vec(),
            ac_skip,
        })
    }
}

/// MSB-first bit reader over entropy-coded data: removes stuffed zero bytes, stops at
/// markers, and counts zero bits it had to invent past a marker or the end of data.
struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
    acc: u64,
    nbits: u32,
    /// A marker (or the end of data) was reached; only zero bits follow.
    stopped: bool,
    /// How many of the bits in `acc` are invented zeros (they sit at the low end).
    phantom: u32,
}

impl<'a> Bits<'a> {
    fn new(data: &'a [u8], pos: usize) -> Self {
        Bits {
            data,
            pos,
            acc: 0,
            nbits: 0,
            stopped: false,
            phantom: 0,
        }
    }

    /// Ensures at least 32 bits are buffered.
    #[inline(always)]
    fn refill(&mut self) {
        if self.nbits >= 32 {
            return;
        }
        // Fast path: four bytes without 0xFF need no unstuffing or marker checks.
        if !self.stopped {
            if let Some(b) = self.data.get(self.pos..self.pos + 4) {
                let w = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
                let inv = !w;
                if inv.wrapping_sub(0x0101_0101) & !inv & 0x8080_8080 == 0 {
                    self.acc |= u64::from(w) << (32 - self.nbits);
                    self.nbits += 32;
                    self.pos += 4;
                    return;
                }
            }
        }
        while self.nbits <= 56 {
            let mut byte = 0u8;
            if !self.stopped {
                match self.data.get(self.pos) {
                    Some(0xFF) => match self.data.get(self.pos + 1) {
                        Some(0x00) => {
                            byte = 0xFF;
                            self.pos += 2;
                        }
                        _ => self.stopped = true,
                    },
                    Some(&b) => {
                        byte = b;
                        self.pos += 1;
                    }
                    None => self.stopped = true,
                }
            }
            if self.stopped {
                self.phantom += 8;
            }
            self.acc |= u64::from(byte) << (56 - self.nbits);
            self.nbits += 8;
        }
    }

    #[inline(always)]
    fn peek(&self, n: u32) -> u32 {
        (self.acc >> (64 - n)) as u32
    }

    #[inline(always)]
    fn consume(&mut self, n: u32) {
        self.acc <<= n;
        self.nbits -= n;
    }

    /// Reads `n` (1..=16) bits as a signed JPEG magnitude value.
    #[inline(always)]
    fn receive_extend(&mut self, n: u32) -> i32 {
        let v = self.peek(n) as i32;
        self.consume(n);
        if v < (1 << (n - 1)) {
            v - (1 << n) + 1
        } else {
            v
        }
    }

    /// Decodes one Huffman symbol; needs `refill` first.
    #[inline(always)]
    fn symbol(&mut self, h: &Huffman) -> Result<u8> {
        let (len, sym) = h.lut[self.peek(LUT_BITS) as usize];
        if len != 0 {
            self.consume(u32::from(len));
            return Ok(sym);
        }
        let code16 = self.peek(16) as i32;
        let mut len = LUT_BITS as usize + 1;
        while len <= 16 && (code16 >> (16 - len)) > h.maxcode[len] {
            len += 1;
        }
        if len > 16 {
            return Err(DcError::Corrupt("invalid Huffman code"));
        }
        let code = code16 >> (16 - len);
        let idx = usize::try_from(code + h.valoffset[len])
            .map_err(|_| DcError::Corrupt("invalid Huffman code"))?;
        let sym = *h
            .symbols
            .get(idx)
            .ok_or(DcError::Corrupt("invalid Huffman code"))?;
        self.consume(len as u32);
        Ok(sym)
    }

    /// True when decoding has used bits that do not exist in the file.
    fn overran(&self) -> bool {
        self.nbits < self.phantom
    }

    /// Handles a restart marker: byte-align, expect RSTn, reset.
    fn restart(&mut self) -> Result<()> {
        if self.overran() {
            return Err(DcError::Corrupt("truncated JPEG data"));
        }
        self.acc = 0;
        self.nbits = 0;
        self.phantom = 0;
        self.stopped = false;
        while self.data.get(self.pos) == Some(&0xFF) && self.data.get(self.pos + 1) == Some(&0xFF) {
            self.pos += 1;
        }
        match (self.data.get(self.pos), self.data.get(self.pos + 1)) {
            (Some(0xFF), Some(0xD0..=0xD7)) => {
                self.pos += 2;
                Ok(())
            }
            (None, _) | (_, None) => Err(DcError::Corrupt("truncated JPEG data")),
            _ => Err(DcError::Corrupt("missing restart marker")),
        }
    }
}

#[derive(Clone, Copy, Default)]
struct Component {
    id: u8,
    h: usize,
    v: usize,
    tq: usize,
}

fn be16(data: &[u8], at: usize) -> Result<usize> {
    match data.get(at..at + 2) {
        Some(b) => Ok(usize::from(u16::from_be_bytes([b[0], b[1]]))),
        None => Err(DcError::Corrupt("truncated JPEG header")),
    }
}

/// Decodes `data` (a whole JPEG file) at 1/8 scale.
pub(crate) fn decode(data: &[u8]) -> Result<DcImage> {
    if data.get(..2) != Some(&[0xFF, 0xD8]) {
        return Err(DcError::Corrupt("not a JPEG"));
    }
    let mut pos = 2;
    let mut qdc = [None::<u16>; 4];
    let mut dc_tables: [Option<Huffman>; 4] = Default::default();
    let mut ac_tables: [Option<Huffman>; 4] = Default::default();
    let mut frame: Option<(usize, usize, Vec<Component>)> = None;
    let mut restart_interval = 0usize;
    let mut adobe_transform: Option<u8> = None;
    loop {
        // Find the next marker, tolerating fill bytes.
        if data.get(pos) != Some(&0xFF) {
            return Err(DcError::Corrupt("expected a JPEG marker"));
        }
        while data.get(pos) == Some(&0xFF) {
            pos += 1;
        }
        let marker = *data
            .get(pos)
            .ok_or(DcError::Corrupt("truncated JPEG header"))?;
        pos += 1;
        match marker {
            0xD8 | 0x01 | 0xD0..=0xD7 => continue,
            0xD9 => return Err(DcError::Corrupt("no image data")),
            _ => {}
        }
        let len = be16(data, pos)?;
        if len < 2 {
            return Err(DcError::Corrupt("bad segment length"));
        }
        let seg = data
            .get(pos + 2..pos + len)
            .ok_or(DcError::Corrupt("truncated JPEG header"))?;
        pos += len;
        match marker {
            0xC0 | 0xC1 => {
                if frame.is_some() {
                    return Err(DcError::NotApplicable);
                }
                if seg.len() < 6 || seg[0] != 8 {
                    return Err(DcError::NotApplicable);
                }
                let height = usize::from(u16::from_be_bytes([seg[1], seg[2]]));
                let width = usize::from(u16::from_be_bytes([seg[3], seg[4]]));
                let n = usize::from(seg[5]);
                if height == 0 || width == 0 || !(n == 1 || n == 3) || seg.len() < 6 + 3 * n {
                    return Err(DcError::NotApplicable);
                }
                let mut comps = Vec::with_capacity(n);
                for c in seg[6..6 + 3 * n].chunks_exact(3) {
                    let (h, v) = (usize::from(c[1] >> 4), usize::from(c[1] & 15));
                    if !(1..=4).contains(&h) || !(1..=4).contains(&v) || c[2] > 3 {
                        return Err(DcError::Corrupt("bad frame header"));
                    }
                    comps.push(Component {
                        id: c[0],
                        h,
                        v,
                        tq: usize::from(c[2]),
                    });
                }
                if n == 1 {
                    // A single component is never interleaved: one block per MCU.
                    comps[0].h = 1;
                    comps[0].v = 1;
                }
                frame = Some((width, height, comps));
            }
            0xC2..=0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF => {
                return Err(DcError::NotApplicable)
            }
            0xC4 => {
                let mut s = seg;
                while !s.is_empty() {
                    if s.len() < 17 {
                        return Err(DcError::Corrupt("bad Huffman table"));
                    }
                    let (class, id) = (s[0] >> 4, usize::from(s[0] & 15));
                    let counts: [u8; 16] = s[1..17].try_into().expect("16 bytes");
                    let total: usize = counts.iter().map(|&c| usize::from(c)).sum();
                    let symbols = s
                        .get(17..17 + total)
                        .ok_or(DcError::Corrupt("bad Huffman table"))?;
                    if class > 1 || id > 3 || total > 256 {
                        return Err(DcError::Corrupt("bad Huffman table"));
                    }
                    let table = Huffman::new(&counts, symbols)?;
                    if class == 0 {
                        dc_tables[id] = Some(table);
                    } else {
                        ac_tables[id] = Some(table);
                    }
                    s = &s[17 + total..];
                }
            }
            0xDB => {
                let mut s = seg;
                while !s.is_empty() {
                    let (pq, tq) = (s[0] >> 4, usize::from(s[0] & 15));
                    let size = if pq == 0 { 64 } else { 128 };
                    if tq > 3 || pq > 1 || s.len() < 1 + size {
                        return Err(DcError::Corrupt("bad quantisation table"));
                    }
                    qdc[tq] = Some(if pq == 0 {
                        u16::from(s[1])
                    } else {
                        u16::from_be_bytes([s[1], s[2]])
                    });
                    s = &s[1 + size..];
                }
            }
            0xDD => restart_interval = be16(seg, 0)?,
            0xEE if seg.len() >= 12 && seg.starts_with(b"Adobe") => {
                adobe_transform = Some(seg[11]);
            }
            0xDA => {
                let (width, height, comps) = frame
                    .take()
                    .ok_or(DcError::Corrupt("scan before frame header"))?;
                let ns = usize::from(*seg.first().ok_or(DcError::Corrupt("bad scan header"))?);
                if ns != comps.len() || seg.len() < 1 + 2 * ns + 3 {
                    // Several scans for one image: not handled here.
                    return Err(DcError::NotApplicable);
                }
                if comps.len() == 3
                    && (adobe_transform == Some(0) || comps.iter().map(|c| c.id).eq(*b"RGB"))
                {
                    return Err(DcError::NotApplicable);
                }
                let mut order = Vec::with_capacity(ns);
                for sc in seg[1..1 + 2 * ns].chunks_exact(2) {
                    let idx = comps
                        .iter()
                        .position(|c| c.id == sc[0])
                        .ok_or(DcError::Corrupt("scan names an unknown component"))?;
                    let (td, ta) = (usize::from(sc[1] >> 4), usize::from(sc[1] & 15));
                    if td > 3 || ta > 3 {
                        return Err(DcError::Corrupt("bad scan header"));
                    }
                    order.push((idx, td, ta));
                }
                return decode_scan(
                    data,
                    pos,
                    width,
                    height,
                    &comps,
                    &order,
                    &qdc,
                    &dc_tables,
                    &ac_tables,
                    restart_interval,
                );
            }
            _ => {}
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn decode_scan(
    data: &[u8],
    pos: usize,
    width: usize,
    height: usize,
    comps: &[Component],
    order: &[(usize, usize, usize)],
    qdc: &[Option<u16>; 4],
    dc_tables: &[Option<Huffman>; 4],
    ac_tables: &[Option<Huffman>; 4],
    restart_interval: usize,
) -> Result<DcImage> {
    let hmax = comps.iter().map(|c| c.h).max().unwrap_or(1);
    let vmax = comps.iter().map(|c| c.v).max().unwrap_or(1);
    let mcux = width.div_ceil(8 * hmax);
    let mcuy = height.div_ceil(8 * vmax);

    struct Plane<'t> {
        stride: usize,
        h: usize,
        v: usize,
        q: i32,
        dc: &'t Huffman,
        ac: &'t Huffman,
        pred: i32,
        px: Vec<u8>,
    }
    let mut planes = Vec::with_capacity(order.len());
    for &(idx, td, ta) in order {
        let c = comps[idx];
        let stride = mcux * c.h;
        planes.push(Plane {
            stride,
            h: c.h,
            v: c.v,
            q: i32::from(qdc[c.tq].ok_or(DcError::Corrupt("missing quantisation table"))?),
            dc: dc_tables[td]
                .as_ref()
                .ok_or(DcError::Corrupt("missing Huffman table"))?,
            ac: ac_tables[ta]
                .as_ref()
                .ok_or(DcError::Corrupt("missing Huffman table"))?,
            pred: 0,
            px: vec![0u8; stride * mcuy * c.v],
        });
    }

    let mut bits = Bits::new(data, pos);
    let mut mcus_left = restart_interval;
    for my in 0..mcuy {
        for mx in 0..mcux {
            if restart_interval > 0 {
                if mcus_left == 0 {
                    bits.restart()?;
                    for p in &mut planes {
                        p.pred = 0;
                    }
                    mcus_left = restart_interval;
                }
                mcus_left -= 1;
            }
            for p in &mut planes {
                for by in 0..p.v {
                    for bx in 0..p.h {
                        // DC: difference from the previous block of this component.
                        bits.refill();
                        let s = u32::from(bits.symbol(p.dc)?);
                        if s > 11 {
                            return Err(DcError::Corrupt("bad DC magnitude"));
                        }
                        if s > 0 {
                            p.pred = p.pred.wrapping_add(bits.receive_extend(s));
                        }
                        // AC: decoded only to be skipped.
                        let mut k = 1;
                        while k < 64 {
                            bits.refill();
                            // Short code: code and magnitude bits skipped in one go.
                            let e = p.ac.ac_skip[bits.peek(LUT_BITS) as usize];
                            if e != 0 {
                                bits.consume(u32::from(e & 0xFF));
                                match usize::from(e >> 8) {
                                    0 => break,
                                    step => k += step,
                                }
                                continue;
                            }
                            let rs = bits.symbol(p.ac)?;
                            let (r, s) = (usize::from(rs >> 4), u32::from(rs & 15));
                            if s == 0 {
                                if r != 15 {
                                    break; // end of block
                                }
                                k += 16;
                            } else {
                                bits.consume(s);
                                k += r + 1;
                            }
                        }
                        if k > 64 {
                            return Err(DcError::Corrupt("bad AC run"));
                        }
                        // 1×1 inverse DCT: the block average, level-shifted.
                        let v = (p.pred.wrapping_mul(p.q) + 4).div_euclid(8) + 128;
                        let at = (my * p.v + by) * p.stride + mx * p.h + bx;
                        p.px[at] = v.clamp(0, 255) as u8;
                    }
                }
            }
        }
        if bits.overran() {
            return Err(DcError::Corrupt("truncated JPEG data"));
        }
    }

    let (ow, oh) = (width.div_ceil(8), height.div_ceil(8));
    let mut rgb = vec![0u8; ow * oh * 3];
    if planes.len() == 1 {
        let p = &planes[0];
        for (y, row) in rgb.chunks_exact_mut(ow * 3).enumerate() {
            let src = &p.px[y * p.stride..y * p.stride + ow];
            for (d, &l) in row.chunks_exact_mut(3).zip(src) {
                d.copy_from_slice(&[l, l, l]);
            }
        }
    } else {
        // Planes in frame order: Y, Cb, Cr. Chroma is replicated to the luma grid.
        let mut by_frame: Vec<&Plane> = vec![&planes[0]; 3];
        for (p, &(idx, _, _)) in planes.iter().zip(order) {
            by_frame[idx] = p;
        }
        let (py, pb, pr) = (by_frame[0], by_frame[1], by_frame[2]);
        let xmap = |p: &Plane| -> Vec<usize> { (0..ow).map(|x| x * p.h / hmax).collect() };
        let (xy, xb, xr) = (xmap(py), xmap(pb), xmap(pr));
        for (y, row) in rgb.chunks_exact_mut(ow * 3).enumerate() {
            let ry = &py.px[(y * py.v / vmax) * py.stride..];
            let rb = &pb.px[(y * pb.v / vmax) * pb.stride..];
            let rr = &pr.px[(y * pr.v / vmax) * pr.stride..];
            for (x, d) in row.chunks_exact_mut(3).enumerate() {
                let l = i32::from(ry[xy[x]]) << 16;
                let cb = i32::from(rb[xb[x]]) - 128;
                let cr = i32::from(rr[xr[x]]) - 128;
                // JFIF YCbCr -> RGB, 16-bit fixed point.
                let r = (l + 91_881 * cr + 32_768) >> 16;
                let g = (l - 22_554 * cb - 46_802 * cr + 32_768) >> 16;
                let b = (l + 116_130 * cb + 32_768) >> 16;
                d[0] = r.clamp(0, 255) as u8;
                d[1] = g.clamp(0, 255) as u8;
                d[2] = b.clamp(0, 255) as u8;
            }
        }
    }
    Ok(DcImage {
        width: ow as u32,
        height: oh as u32,
        rgb,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::image::codecs::jpeg::JpegEncoder;
    use ::image::{GrayImage, Luma, Rgb, RgbImage};

    fn smooth_rgb(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            let t = ((x as f32 / 37.0).sin() * 40.0) as i32;
            Rgb([
                (x * 255 / w) as u8,
                (128 + t).clamp(0, 255) as u8,
                (y * 255 / h) as u8,
            ])
        })
    }

    /// jpeg-decoder at 1/8 scale computes the same block averages.
    fn reference(bytes: &[u8]) -> (u16, u16, Vec<u8>, jpeg_decoder::PixelFormat) {
        let mut d = jpeg_decoder::Decoder::new(bytes);
        let (w, h) = d.scale(1, 1).unwrap();
        let px = d.decode().unwrap();
        (w, h, px, d.info().unwrap().pixel_format)
    }

    #[test]
    fn grayscale_matches_reference_exactly() {
        let img = GrayImage::from_fn(1000, 700, |x, y| Luma([((x ^ y) & 0xFF) as u8]));
        let mut bytes = Vec::new();
        JpegEncoder::new_with_quality(&mut bytes, 85)
            .encode_image(&img)
            .unwrap();
        let dc = decode(&bytes).unwrap();
        let (w, h, px, fmt) = reference(&bytes);
        assert_eq!(fmt, jpeg_decoder::PixelFormat::L8);
        assert_eq!((dc.width, dc.height), (u32::from(w), u32::from(h)));
        assert_eq!((dc.width, dc.height), (125, 88));
        for (i, &l) in px.iter().enumerate() {
            let ours = dc.rgb[i * 3];
            assert!(ours.abs_diff(l) <= 1, "pixel {i}: {ours} vs {l}");
        }
    }

    #[test]
    fn colour_is_close_to_reference() {
        let img = smooth_rgb(1203, 797); // not multiples of the MCU size
        let mut bytes = Vec::new();
        JpegEncoder::new_with_quality(&mut bytes, 90)
            .encode_image(&img)
            .unwrap();
        let dc = decode(&bytes).unwrap();
        let (w, h, px, _) = reference(&bytes);
        assert_eq!((dc.width, dc.height), (u32::from(w), u32::from(h)));
        assert_eq!((dc.width, dc.height), (151, 100));
        let total: u64 = px
            .iter()
            .zip(&dc.rgb)
            .map(|(&a, &b)| u64::from(a.abs_diff(b)))
            .sum();
        let mean = total as f64 / px.len() as f64;
        assert!(mean < 3.0, "mean abs diff {mean}");
    }

    #[test]
    fn truncation_and_corruption_are_errors_not_panics() {
        let img = smooth_rgb(640, 480);
        let mut bytes = Vec::new();
        JpegEncoder::new_with_quality(&mut bytes, 90)
            .encode_image(&img)
            .unwrap();
        assert!(decode(&bytes).is_ok());
        for cut in [3, 20, 100, 300, bytes.len() / 2, bytes.len() - 200] {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut seed = 0x1234_5678_9abc_def1u64;
        for _ in 0..300 {
            let mut b = bytes.clone();
            for _ in 0..4 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let at = (seed % b.len() as u64) as usize;
                b[at] = (seed >> 32) as u8;
            }
            let _ = decode(&b); // must return, whatever it returns
        }
    }

    #[test]
    fn huffman_long_codes_decode() {
        // One code of each length 1..=16 (the last of length 16 is all ones but one).
        let counts = [1u8; 16];
        let symbols: Vec<u8> = (0..16).collect();
        let h = Huffman::new(&counts, &symbols).unwrap();
        // Codes: 0, 10, 110, ..., 1111111111111110 (length 16).
        for len in 1..=16u32 {
            let code: u64 = ((1u64 << len) - 2) << (64 - len);
            let mut bits = Bits::new(&[], 0);
            bits.acc = code;
            bits.nbits = 64;
            assert_eq!(bits.symbol(&h).unwrap(), (len - 1) as u8);
            assert_eq!(bits.nbits, 64 - len);
        }
        let mut bits = Bits::new(&[], 0);
        bits.acc = u64::MAX;
        bits.nbits = 64;
        assert!(bits.symbol(&h).is_err());
    }

    #[test]
    fn bit_reader_unstuffs_and_stops_at_markers() {
        let data = [0x12, 0xFF, 0x00, 0x34, 0xFF, 0xD9];
        let mut bits = Bits::new(&data, 0);
        bits.refill();
        assert_eq!(bits.peek(24), 0x12FF34);
        bits.consume(24);
        assert!(!bits.overran());
        bits.consume(1);
        assert!(bits.overran());
    }

    #[test]
    fn out_of_scope_files_are_not_applicable() {
        assert_eq!(
            decode(b"\xFF\xD8\xFF\xC2\x00\x02").err(),
            Some(DcError::NotApplicable)
        );
        assert!(matches!(decode(b"GIF89a"), Err(DcError::Corrupt(_))));
    }
}
