//! A streaming ZIP writer for package archives: stored (uncompressed)
//! entries, written one after another without knowing their CRC in advance.
//!
//! Each entry is a local header with general-purpose flag bit 3 set (its CRC
//! and sizes follow the data in a data descriptor), the bytes as they are,
//! then the descriptor. The central directory and end records come last.
//! ZIP64 fields are written exactly where a 32-bit field would overflow:
//! for an entry of 4 GiB or more (zip64 extra field in both headers, 64-bit
//! sizes in its descriptor), for a local header beyond 4 GiB (its offset in
//! the central entry's extra field), and for an archive with more than
//! 65 534 entries or a central directory past 4 GiB (the ZIP64 end record
//! and its locator). Names are UTF-8 (flag bit 11).
//!
//! The writer only produces header bytes and counts; the caller streams the
//! file bytes in between, so memory is bounded by the central directory
//! (one small record per entry), never by the file sizes.

use std::collections::HashSet;

use bytes::{BufMut, Bytes, BytesMut};
use chrono::{DateTime, Datelike, Timelike, Utc};

const LOCAL_SIG: u32 = 0x0403_4b50;
const DESCRIPTOR_SIG: u32 = 0x0807_4b50;
const CENTRAL_SIG: u32 = 0x0201_4b50;
const EOCD_SIG: u32 = 0x0605_4b50;
const EOCD64_SIG: u32 = 0x0606_4b50;
const EOCD64_LOCATOR_SIG: u32 = 0x0706_4b50;
const ZIP64_EXTRA: u16 = 0x0001;
/// Data descriptor follows (bit 3), names are UTF-8 (bit 11).
const FLAGS: u16 = (1 << 3) | (1 << 11);
/// "Stored": no compression.
const STORED: u16 = 0;
const VERSION_PLAIN: u16 = 20;
const VERSION_ZIP64: u16 = 45;
/// "Made by": Unix (3), spec version 4.5.
const MADE_BY: u16 = (3 << 8) | 45;
/// Regular file, rw-r--r--, in the high 16 bits of the external attributes.
const UNIX_FILE_ATTRS: u32 = 0o100644 << 16;
const U32_MAX: u64 = 0xFFFF_FFFF;

/// One entry as the central directory describes it.
struct Central {
    name: String,
    crc: u32,
    size: u64,
    offset: u64,
    dos_time: u16,
    dos_date: u16,
    zip64: bool,
}

/// The entry being written: between [`ZipWriter::start_entry`] and
/// [`ZipWriter::finish_entry`].
struct Open {
    name: String,
    declared: u64,
    offset: u64,
    dos_time: u16,
    dos_date: u16,
    zip64: bool,
}

/// Produces the bytes of a ZIP archive around entries the caller streams.
pub struct ZipWriter {
    /// Bytes produced so far (headers and the caller's data).
    offset: u64,
    entries: Vec<Central>,
    open: Option<Open>,
    /// Sizes and offsets from here on take ZIP64 fields: 4 GiB − 1, lower
    /// only in tests, so real readers can check those fields on small files.
    zip64_from: u64,
}

impl Default for ZipWriter {
    fn default() -> Self {
        ZipWriter {
            offset: 0,
            entries: Vec::new(),
            open: None,
            zip64_from: U32_MAX,
        }
    }
}

/// Errors the writer detects in its caller's use.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ZipError {
    #[error("entry {name:?} was declared as {declared} bytes but had {actual}")]
    SizeMismatch {
        name: String,
        declared: u64,
        actual: u64,
    },
    #[error("an entry is already open")]
    EntryOpen,
    #[error("no entry is open")]
    NoEntry,
}

/// MS-DOS date and time (2-second resolution, years 1980–2107).
fn dos_datetime(t: DateTime<Utc>) -> (u16, u16) {
    let year = t.year().clamp(1980, 2107) as u16;
    let time = ((t.hour() as u16) << 11) | ((t.minute() as u16) << 5) | (t.second() as u16 / 2);
    let date = ((year - 1980) << 9) | ((t.month() as u16) << 5) | t.day() as u16;
    (time, date)
}

impl ZipWriter {
    pub fn new() -> ZipWriter {
        ZipWriter::default()
    }

    /// Bytes produced so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The local header of an entry of `size` bytes named `name` (already
    /// made Zip-safe and unique by [`Names`]). The caller then streams
    /// exactly `size` bytes and calls [`ZipWriter::finish_entry`].
    pub fn start_entry(
        &mut self,
        name: &str,
        size: u64,
        modified: DateTime<Utc>,
    ) -> Result<Bytes, ZipError> {
        if self.open.is_some() {
            return Err(ZipError::EntryOpen);
        }
        let zip64 = size >= self.zip64_from;
        let (dos_time, dos_date) = dos_datetime(modified);
        let mut b = BytesMut::with_capacity(30 + name.len() + 20);
        b.put_u32_le(LOCAL_SIG);
        b.put_u16_le(if zip64 { VERSION_ZIP64 } else { VERSION_PLAIN });
        b.put_u16_le(FLAGS);
        b.put_u16_le(STORED);
        b.put_u16_le(dos_time);
        b.put_u16_le(dos_date);
        // CRC and sizes are in the data descriptor.
        b.put_u32_le(0);
        let size32 = if zip64 { U32_MAX as u32 } else { 0 };
        b.put_u32_le(size32);
        b.put_u32_le(size32);
        b.put_u16_le(name.len() as u16);
        b.put_u16_le(if zip64 { 20 } else { 0 });
        b.put_slice(name.as_bytes());
        if zip64 {
            b.put_u16_le(ZIP64_EXTRA);
            b.put_u16_le(16);
            b.put_u64_le(0);
            b.put_u64_le(0);
        }
        self.open = Some(Open {
            name: name.to_string(),
            declared: size,
            offset: self.offset,
            dos_time,
            dos_date,
            zip64,
        });
        self.offset += b.len() as u64;
        Ok(b.freeze())
    }

    /// The data descriptor of the open entry, after its `written` bytes
    /// with checksum `crc` (CRC-32 of those bytes).
    pub fn finish_entry(&mut self, crc: u32, written: u64) -> Result<Bytes, ZipError> {
        let open = self.open.take().ok_or(ZipError::NoEntry)?;
        self.offset += written;
        if written != open.declared {
            return Err(ZipError::SizeMismatch {
                name: open.name,
                declared: open.declared,
                actual: written,
            });
        }
        let mut b = BytesMut::with_capacity(24);
        b.put_u32_le(DESCRIPTOR_SIG);
        b.put_u32_le(crc);
        if open.zip64 {
            b.put_u64_le(written);
            b.put_u64_le(written);
        } else {
            b.put_u32_le(written as u32);
            b.put_u32_le(written as u32);
        }
        self.offset += b.len() as u64;
        self.entries.push(Central {
            name: open.name,
            crc,
            size: written,
            offset: open.offset,
            dos_time: open.dos_time,
            dos_date: open.dos_date,
            zip64: open.zip64,
        });
        Ok(b.freeze())
    }

    /// The central directory and end records; the archive is complete after
    /// these bytes.
    pub fn finish(mut self) -> Result<Bytes, ZipError> {
        if self.open.is_some() {
            return Err(ZipError::EntryOpen);
        }
        let cd_start = self.offset;
        let mut b = BytesMut::new();
        for e in &self.entries {
            let big_size = e.zip64;
            let big_offset = e.offset >= self.zip64_from;
            let mut extra = BytesMut::new();
            if big_size {
                extra.put_u64_le(e.size);
                extra.put_u64_le(e.size);
            }
            if big_offset {
                extra.put_u64_le(e.offset);
            }
            let needs64 = big_size || big_offset;
            b.put_u32_le(CENTRAL_SIG);
            b.put_u16_le(MADE_BY);
            b.put_u16_le(if needs64 {
                VERSION_ZIP64
            } else {
                VERSION_PLAIN
            });
            b.put_u16_le(FLAGS);
            b.put_u16_le(STORED);
            b.put_u16_le(e.dos_time);
            b.put_u16_le(e.dos_date);
            b.put_u32_le(e.crc);
            let size32 = if big_size {
                U32_MAX as u32
            } else {
                e.size as u32
            };
            b.put_u32_le(size32);
            b.put_u32_le(size32);
            b.put_u16_le(e.name.len() as u16);
            b.put_u16_le(if needs64 { extra.len() as u16 + 4 } else { 0 });
            b.put_u16_le(0); // comment
            b.put_u16_le(0); // disk number
            b.put_u16_le(0); // internal attributes
            b.put_u32_le(UNIX_FILE_ATTRS);
            b.put_u32_le(if big_offset {
                U32_MAX as u32
            } else {
                e.offset as u32
            });
            b.put_slice(e.name.as_bytes());
            if needs64 {
                b.put_u16_le(ZIP64_EXTRA);
                b.put_u16_le(extra.len() as u16);
                b.put_slice(&extra);
            }
        }
        let cd_size = b.len() as u64;
        let count = self.entries.len() as u64;
        let needs64 = count >= 0xFFFF || cd_start >= self.zip64_from || cd_size >= self.zip64_from;
        if needs64 {
            let eocd64_at = cd_start + cd_size;
            b.put_u32_le(EOCD64_SIG);
            b.put_u64_le(44); // size of the rest of this record
            b.put_u16_le(MADE_BY);
            b.put_u16_le(VERSION_ZIP64);
            b.put_u32_le(0); // this disk
            b.put_u32_le(0); // disk with the central directory
            b.put_u64_le(count);
            b.put_u64_le(count);
            b.put_u64_le(cd_size);
            b.put_u64_le(cd_start);
            b.put_u32_le(EOCD64_LOCATOR_SIG);
            b.put_u32_le(0);
            b.put_u64_le(eocd64_at);
            b.put_u32_le(1); // total disks
        }
        b.put_u32_le(EOCD_SIG);
        b.put_u16_le(0);
        b.put_u16_le(0);
        let count16 = if needs64 { 0xFFFF } else { count as u16 };
        b.put_u16_le(count16);
        b.put_u16_le(count16);
        b.put_u32_le(if needs64 {
            U32_MAX as u32
        } else {
            cd_size as u32
        });
        b.put_u32_le(if needs64 {
            U32_MAX as u32
        } else {
            cd_start as u32
        });
        b.put_u16_le(0); // comment length
        self.offset += b.len() as u64;
        Ok(b.freeze())
    }
}

/// Longest entry name kept, in bytes (the header field is 16 bits; unzip
/// tools and file systems want far less).
const MAX_NAME_BYTES: usize = 255;

/// Makes a file name safe to extract anywhere: no `/` or `\` (so no
/// directories and no absolute paths), no `:` (drive letters, NTFS
/// streams), no control characters, no `..`, no leading or trailing dots
/// or spaces (hidden files, names Windows cannot hold); never empty.
pub fn zip_safe_name(raw: &str) -> String {
    let mut s: String = raw
        .chars()
        .map(|c| {
            if c == '/' || c == '\\' || c == ':' || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    while s.contains("..") {
        s = s.replace("..", ".");
    }
    let trimmed = s.trim_matches(|c: char| c == '.' || c.is_whitespace());
    let mut name = if trimmed.is_empty() {
        "file".to_string()
    } else {
        trimmed.to_string()
    };
    if name.len() > MAX_NAME_BYTES {
        let mut cut = MAX_NAME_BYTES;
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        name.truncate(cut);
    }
    name
}

/// Gives each entry a unique name: the second `a.png` becomes `a (2).png`,
/// the third `a (3).png`, and so on. Compared without case, as Windows and
/// macOS file systems do, so extraction never overwrites an entry.
#[derive(Default)]
pub struct Names {
    seen: HashSet<String>,
}

impl Names {
    pub fn new() -> Names {
        Names::default()
    }

    /// The Zip-safe, unique name for `raw`.
    pub fn unique(&mut self, raw: &str) -> String {
        let base = zip_safe_name(raw);
        if self.seen.insert(base.to_lowercase()) {
            return base;
        }
        let (stem, ext) = match base.rsplit_once('.') {
            Some((s, e)) if !s.is_empty() => (s.to_string(), format!(".{e}")),
            _ => (base.clone(), String::new()),
        };
        for n in 2.. {
            let candidate = format!("{stem} ({n}){ext}");
            if self.seen.insert(candidate.to_lowercase()) {
                return candidate;
            }
        }
        unreachable!("some suffix is free")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-24T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_le_bytes([b[at], b[at + 1]])
    }
    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }
    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    /// A whole archive in memory, for the small cases.
    fn archive(files: &[(&str, &[u8])]) -> Vec<u8> {
        archive_by(ZipWriter::new(), files)
    }

    /// [`archive`] written by `z`.
    fn archive_by(mut z: ZipWriter, files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, data) in files {
            out.extend_from_slice(&z.start_entry(name, data.len() as u64, t0()).unwrap());
            out.extend_from_slice(data);
            out.extend_from_slice(
                &z.finish_entry(crc32fast::hash(data), data.len() as u64)
                    .unwrap(),
            );
        }
        out.extend_from_slice(&z.finish().unwrap());
        out
    }

    #[test]
    fn a_small_archive_has_its_records_where_readers_look() {
        let z = archive(&[("a.txt", b"hello"), ("b.txt", b"")]);
        assert_eq!(u32_at(&z, 0), LOCAL_SIG);
        let eocd = z.len() - 22;
        assert_eq!(u32_at(&z, eocd), EOCD_SIG);
        assert_eq!(u16_at(&z, eocd + 10), 2);
        let cd_size = u32_at(&z, eocd + 12) as usize;
        let cd_start = u32_at(&z, eocd + 16) as usize;
        assert_eq!(cd_start + cd_size, eocd);
        assert_eq!(u32_at(&z, cd_start), CENTRAL_SIG);
        assert_eq!(u32_at(&z, cd_start + 16), crc32fast::hash(b"hello"));
        assert_eq!(u32_at(&z, cd_start + 24), 5);
    }

    #[test]
    fn a_size_that_does_not_match_is_refused() {
        let mut z = ZipWriter::new();
        z.start_entry("a", 10, t0()).unwrap();
        assert!(matches!(
            z.finish_entry(0, 9),
            Err(ZipError::SizeMismatch { .. })
        ));
    }

    /// CRC-32 of `mib` MiB of zeros without feeding them all: CRCs of
    /// consecutive pieces combine.
    fn crc_of_zeros(mib: u64) -> u32 {
        let mut piece = crc32fast::Hasher::new();
        piece.update(&vec![0u8; 1 << 20]);
        let mut total = crc32fast::Hasher::new();
        let mut left = mib;
        while left > 0 {
            if left & 1 == 1 {
                total.combine(&piece);
            }
            let p = piece.clone();
            piece.combine(&p);
            left >>= 1;
        }
        total.finalize()
    }

    #[test]
    fn crc_of_zeros_matches_feeding_them() {
        let mut h = crc32fast::Hasher::new();
        h.update(&vec![0u8; 5 << 20]);
        assert_eq!(crc_of_zeros(5), h.finalize());
    }

    /// A 5 GiB entry of zeros, never held or written: the writer only
    /// counts the bytes the caller streams.
    #[test]
    fn entries_over_4_gib_use_zip64() {
        let size: u64 = 5 * 1024 * 1024 * 1024;
        let crc = crc_of_zeros(size >> 20);
        let mut z = ZipWriter::new();
        let local = z.start_entry("zeros.bin", size, t0()).unwrap();
        assert_eq!(u16_at(&local, 4), VERSION_ZIP64);
        assert_eq!(u32_at(&local, 22), U32_MAX as u32);
        assert_eq!(u16_at(&local, 28), 20);
        assert_eq!(u16_at(&local, 30 + 9), ZIP64_EXTRA);
        let desc = z.finish_entry(crc, size).unwrap();
        assert_eq!(desc.len(), 24);
        assert_eq!(u64_at(&desc, 8), size);
        // A second, small entry starts beyond 4 GiB: its offset goes to the
        // zip64 extra field.
        let second_at = z.offset();
        z.start_entry("small.txt", 2, t0()).unwrap();
        z.finish_entry(crc32fast::hash(b"hi"), 2).unwrap();
        let cd_start = z.offset();
        let tail = z.finish().unwrap();
        // Central entry 1: sizes in the extra field.
        assert_eq!(u32_at(&tail, 0), CENTRAL_SIG);
        assert_eq!(u32_at(&tail, 20), U32_MAX as u32);
        let name1 = u16_at(&tail, 28) as usize;
        let extra1 = u16_at(&tail, 30) as usize;
        assert_eq!(extra1, 20);
        assert_eq!(u64_at(&tail, 46 + name1 + 4), size);
        // Central entry 2: offset in the extra field.
        let e2 = 46 + name1 + extra1;
        assert_eq!(u32_at(&tail, e2), CENTRAL_SIG);
        assert_eq!(u32_at(&tail, e2 + 42), U32_MAX as u32);
        let name2 = u16_at(&tail, e2 + 28) as usize;
        assert_eq!(u16_at(&tail, e2 + 30), 12);
        assert_eq!(u64_at(&tail, e2 + 46 + name2 + 4), second_at);
        // ZIP64 end record and locator before the classic one.
        let eocd = tail.len() - 22;
        let locator = eocd - 20;
        let eocd64 = locator - 56;
        assert_eq!(u32_at(&tail, eocd64), EOCD64_SIG);
        assert_eq!(u64_at(&tail, eocd64 + 48), cd_start);
        assert_eq!(u32_at(&tail, locator), EOCD64_LOCATOR_SIG);
        assert_eq!(u64_at(&tail, locator + 8), cd_start + eocd64 as u64);
        assert_eq!(u32_at(&tail, eocd + 16), U32_MAX as u32);
    }

    #[test]
    fn more_than_65534_entries_use_the_zip64_end_record() {
        let mut z = ZipWriter::new();
        for i in 0..70_000u32 {
            z.start_entry(&format!("{i}"), 0, t0()).unwrap();
            z.finish_entry(0, 0).unwrap();
        }
        let tail = z.finish().unwrap();
        let eocd = tail.len() - 22;
        assert_eq!(u16_at(&tail, eocd + 10), 0xFFFF);
        let eocd64 = eocd - 20 - 56;
        assert_eq!(u32_at(&tail, eocd64), EOCD64_SIG);
        assert_eq!(u64_at(&tail, eocd64 + 32), 70_000);
    }

    /// Python's `zipfile` reads back an archive whose every size, offset
    /// and end record took the ZIP64 form (the threshold lowered to 0), and
    /// one in the plain form, with the same bytes and names.
    #[test]
    fn python_reads_plain_and_zip64_archives() {
        let files: [(&str, Vec<u8>); 3] = [
            ("a.txt", b"hello".to_vec()),
            ("ünï (2).bin", (0..=255u8).cycle().take(70_000).collect()),
            ("empty", Vec::new()),
        ];
        for threshold in [U32_MAX, 0] {
            let z = ZipWriter {
                zip64_from: threshold,
                ..ZipWriter::default()
            };
            let entries: Vec<(&str, &[u8])> = files.iter().map(|(n, d)| (*n, &d[..])).collect();
            let out = archive_by(z, &entries);
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("t.zip");
            std::fs::write(&path, &out).unwrap();
            let script = "import sys, zipfile, hashlib, json\n\
                with zipfile.ZipFile(sys.argv[1]) as z:\n\
                \tassert z.testzip() is None\n\
                \tprint(json.dumps([[i.filename, i.file_size, hashlib.sha256(z.read(i)).hexdigest()] for i in z.infolist()]))";
            let o = std::process::Command::new("python3")
                .arg("-c")
                .arg(script)
                .arg(&path)
                .output()
                .expect("python3 runs");
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            let got: Vec<(String, u64, String)> = serde_json::from_slice(&o.stdout).unwrap();
            let want: Vec<(String, u64, String)> = files
                .iter()
                .map(|(n, d)| {
                    use sha2::Digest;
                    (
                        n.to_string(),
                        d.len() as u64,
                        hex::encode(sha2::Sha256::digest(d)),
                    )
                })
                .collect();
            assert_eq!(got, want, "threshold {threshold}");
        }
    }

    #[test]
    fn names_are_made_safe() {
        assert_eq!(zip_safe_name("../../etc/passwd"), "_._etc_passwd");
        assert_eq!(zip_safe_name("C:\\Windows\\x.dll"), "C__Windows_x.dll");
        assert_eq!(zip_safe_name("/abs"), "_abs");
        assert_eq!(zip_safe_name(".."), "file");
        assert_eq!(zip_safe_name(""), "file");
        assert_eq!(zip_safe_name("a\nb\u{0}.png"), "a_b_.png");
        assert_eq!(zip_safe_name(" .hidden. "), "hidden");
        assert_eq!(zip_safe_name("ünï código.mp4"), "ünï código.mp4");
        for raw in ["a/../b", "..\\..", "x....y", "...", "a:b"] {
            let n = zip_safe_name(raw);
            assert!(
                !n.contains('/') && !n.contains('\\') && !n.contains("..") && !n.contains(':'),
                "{raw} → {n}"
            );
        }
        assert!(zip_safe_name(&"é".repeat(300)).len() <= MAX_NAME_BYTES);
    }

    #[test]
    fn duplicates_are_numbered() {
        let mut n = Names::new();
        assert_eq!(n.unique("a.png"), "a.png");
        assert_eq!(n.unique("a.png"), "a (2).png");
        assert_eq!(n.unique("A.PNG"), "A (3).PNG");
        assert_eq!(n.unique("a (2).png"), "a (2) (2).png");
        assert_eq!(n.unique("README"), "README");
        assert_eq!(n.unique("readme"), "readme (2)");
    }
}
