//! The reader of `multipart/form-data` upload bodies (RFC 7578; SPEC §9,
//! bodies).
//!
//! One pass over the received chunks does both jobs a multipart body needs:
//!
//! * **the framing, bounded.** The preamble before the first boundary and
//!   each part's headers (up to their blank line) may use
//!   [`FramingLimits::header_bytes`], and at most
//!   [`FramingLimits::max_parts`] parts may begin. Searches carry their
//!   partial match from one chunk to the next ([`Seeker`]) instead of
//!   buffering, so memory stays constant and time linear whatever the client
//!   sends, and an over-long preamble or header block fails while the client
//!   is still sending. General multipart parsers keep every byte received
//!   while they look for a boundary or for the end of the headers and search
//!   the whole buffer again on each new chunk, which is why this one exists;
//! * **the part data, zero-copy.** Inside a part only the next delimiter
//!   (`CRLF--boundary`) is looked for, with `memchr`'s substring search, and
//!   the data handed out are slices of the received chunks themselves. The
//!   only bytes ever copied are the few at a chunk's end that begin like a
//!   delimiter and turn out not to be one (always a prefix of the delimiter,
//!   so they are copied from it).
//!
//! The framing rules are those of the common parsers (the body is checked
//! against `multer` in this module's tests): text before the first
//! `--boundary` is a preamble; after a boundary, `--` ends the body and
//! anything after it (the epilogue) is not read; otherwise spaces and tabs
//! (transport padding) then CRLF; the part's headers begin after that CRLF
//! and end at the first CRLF CRLF; the part's data end at the next
//! `CRLF--boundary`. A body that ends before its closing delimiter is
//! incomplete.

use std::{borrow::Cow, collections::VecDeque};

use bytes::Bytes;
use futures::{Stream, StreamExt};

/// What the framing may use; see `config::Limits`.
#[derive(Clone, Copy, Debug)]
pub struct FramingLimits {
    /// The preamble and each part's headers (up to their blank line), bytes.
    pub header_bytes: usize,
    /// Parts in one body.
    pub max_parts: usize,
}

/// Why a body was refused. Every one is the client's fault but
/// [`FormError::Body`], a failure to read the body at all (the connection
/// ended, the body stalled); all answer 400.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FormError {
    #[error("the multipart preamble is longer than {0} bytes")]
    PreambleTooLong(usize),
    #[error("a multipart part's headers are longer than {0} bytes")]
    HeadersTooLong(usize),
    #[error("a multipart body may have at most {0} parts")]
    TooManyParts(usize),
    #[error("a multipart boundary is not followed by a line break")]
    Malformed,
    #[error("a multipart part's headers are malformed")]
    BadHeaders,
    #[error("the multipart body ended before its closing boundary")]
    Incomplete,
    #[error("could not read the request body: {0}")]
    Body(String),
}

/// Longest boundary taken (RFC 2046 allows 70 characters; some clients
/// exceed it).
pub const MAX_BOUNDARY: usize = 200;

/// The boundary of a `multipart/form-data` Content-Type, or why there is
/// none to use.
pub fn parse_boundary(content_type: &str) -> Result<String, &'static str> {
    const NOT_FORM: &str = "expected a multipart/form-data body with a boundary";
    let m: mime::Mime = content_type.parse().map_err(|_| NOT_FORM)?;
    if m.type_() != mime::MULTIPART || m.subtype() != mime::FORM_DATA {
        return Err(NOT_FORM);
    }
    let b = m.get_param(mime::BOUNDARY).ok_or(NOT_FORM)?.as_str();
    // (`mime` refuses an empty one.)
    if b.len() > MAX_BOUNDARY {
        return Err("the multipart boundary is longer than 200 characters");
    }
    // A delimiter with a line break in it could never be told from data.
    if b.bytes().any(|c| c == b'\r' || c == b'\n') {
        return Err("the multipart boundary holds a line break");
    }
    Ok(b.to_string())
}

/// A part's name and file name, from its `Content-Disposition`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Part {
    pub name: Option<String>,
    pub file_name: Option<String>,
}

/// A substring search over a stream: carries a partial match of `needle`
/// from one chunk to the next (Knuth–Morris–Pratt state), and leaves the
/// search inside each chunk to `memchr`.
struct Seeker {
    needle: Vec<u8>,
    /// KMP failure function: `fail[i]` is the length of the longest proper
    /// prefix of `needle[..=i]` that is also its suffix.
    fail: Vec<usize>,
    /// Length of the needle prefix that ends the data seen so far.
    matched: usize,
}

impl Seeker {
    fn new(needle: Vec<u8>) -> Seeker {
        assert!(
            needle.len() >= 2,
            "needles are delimiters of 2 bytes or more"
        );
        let mut fail = vec![0; needle.len()];
        let mut k = 0;
        for i in 1..needle.len() {
            while k > 0 && needle[i] != needle[k] {
                k = fail[k - 1];
            }
            if needle[i] == needle[k] {
                k += 1;
            }
            fail[i] = k;
        }
        Seeker {
            needle,
            fail,
            matched: 0,
        }
    }

    fn reset(&mut self) {
        self.matched = 0;
    }

    fn step(&self, mut state: usize, b: u8) -> usize {
        while state > 0 && self.needle[state] != b {
            state = self.fail[state - 1];
        }
        if self.needle[state] == b {
            state += 1;
        }
        state
    }

    /// Feeds `data`; on the first match in the stream, returns the index in
    /// `data` just past it (the needle may have begun in earlier data).
    fn find(&mut self, data: &[u8]) -> Option<usize> {
        let n = self.needle.len();
        // A match that began in earlier data ends within the first n-1
        // bytes; it starts before any match wholly inside `data`.
        let head = data.len().min(n - 1);
        let mut state = self.matched;
        if state > 0 {
            for (i, &b) in data[..head].iter().enumerate() {
                state = self.step(state, b);
                if state == n {
                    self.matched = 0;
                    return Some(i + 1);
                }
            }
        }
        if let Some(p) = memchr::memmem::find(data, &self.needle) {
            self.matched = 0;
            return Some(p + n);
        }
        // No match: the partial match at the end lies in the last n-1 bytes.
        self.matched = if data.len() > head || self.matched == 0 {
            let tail = &data[data.len().saturating_sub(n - 1)..];
            tail.iter().fold(0, |s, &b| self.step(s, b))
        } else {
            state
        };
        None
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Before the first `--boundary`.
    Preamble,
    /// Just after a `--boundary`: `--` closes the body, else padding + CRLF.
    AfterBoundary,
    /// Read one `-` after a boundary; a second one closes the body.
    Closing,
    /// Spaces and tabs after a boundary (transport padding).
    Padding,
    /// Read the CR after a boundary; LF must follow.
    LineFeed,
    /// A part's headers, up to the blank line.
    Headers,
    /// A part's data, up to `CRLF--boundary`.
    Data,
    /// After the closing delimiter: the epilogue, which is never read.
    Done,
}

/// What the framing found next in the input.
enum Event {
    /// A part's headers ended: its data follow.
    Part(Part),
    /// Some of the current part's data.
    Data(Bytes),
    /// The current part's data ended.
    PartEnd,
}

/// Headers a part may have (more are malformed).
const MAX_PART_HEADERS: usize = 32;

/// Reads a multipart body part by part; see the module docs.
///
/// [`FormReader::next_part`] moves to the next part (skipping what is left
/// of the current one), [`FormReader::chunk`] hands out the current part's
/// data. After the first error every call returns it again.
pub struct FormReader<S> {
    body: S,
    limits: FramingLimits,
    stage: Stage,
    /// `--boundary`: the first delimiter.
    first: Seeker,
    /// `CRLF CRLF`: the end of a part's headers.
    blank: Seeker,
    /// `CRLF--boundary`: the end of a part's data.
    delimiter: Seeker,
    /// The part of the last received chunk not yet looked at.
    rest: Bytes,
    /// Found but not yet handed out (at most three: see [`Self::data`]).
    events: VecDeque<Event>,
    /// The current part's header bytes (bounded by the limit).
    head: Vec<u8>,
    /// Bytes used by the preamble or the current part's framing so far.
    used: usize,
    parts: usize,
    /// Whether [`Self::chunk`] has data to give: a part began and has not
    /// ended.
    in_part: bool,
    failed: Option<FormError>,
}

impl<S, E> FormReader<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    pub fn new(body: S, boundary: &str, limits: FramingLimits) -> FormReader<S> {
        FormReader {
            body,
            limits,
            stage: Stage::Preamble,
            first: Seeker::new(format!("--{boundary}").into_bytes()),
            blank: Seeker::new(b"\r\n\r\n".to_vec()),
            delimiter: Seeker::new(format!("\r\n--{boundary}").into_bytes()),
            rest: Bytes::new(),
            events: VecDeque::new(),
            head: Vec::new(),
            used: 0,
            parts: 0,
            in_part: false,
            failed: None,
        }
    }

    /// The next part, once its headers are read; `None` after the closing
    /// delimiter. What is left of the current part is read and dropped.
    pub async fn next_part(&mut self) -> Result<Option<Part>, FormError> {
        loop {
            match self.next_event().await? {
                Some(Event::Part(p)) => return Ok(Some(p)),
                Some(Event::Data(_) | Event::PartEnd) => {}
                None => return Ok(None),
            }
        }
    }

    /// The current part's next data; `None` at its end (and before the
    /// first part). Empty chunks are never handed out.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, FormError> {
        if !self.in_part {
            return Ok(None);
        }
        match self.next_event().await? {
            Some(Event::Data(b)) => Ok(Some(b)),
            Some(Event::PartEnd) => Ok(None),
            // A part's data always end with PartEnd before anything else.
            Some(Event::Part(_)) | None => {
                debug_assert!(false, "a part began or the body ended inside a part");
                Ok(None)
            }
        }
    }

    /// Reads the rest of the body, up to its closing delimiter or its first
    /// error, and drops it.
    pub async fn drain(&mut self) {
        while let Ok(Some(_)) = self.next_part().await {}
    }

    /// The next event, reading input as needed; `None` after the closing
    /// delimiter.
    async fn next_event(&mut self) -> Result<Option<Event>, FormError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let r = self.find_event().await;
        match &r {
            Ok(Some(Event::Part(_))) => self.in_part = true,
            Ok(Some(Event::PartEnd)) => self.in_part = false,
            Err(e) => self.failed = Some(e.clone()),
            _ => {}
        }
        r
    }

    async fn find_event(&mut self) -> Result<Option<Event>, FormError> {
        loop {
            if let Some(e) = self.events.pop_front() {
                return Ok(Some(e));
            }
            if self.stage == Stage::Done {
                return Ok(None);
            }
            if self.rest.is_empty() {
                self.rest = match self.body.next().await {
                    Some(Ok(chunk)) => chunk,
                    Some(Err(e)) => return Err(FormError::Body(e.to_string())),
                    None => return Err(FormError::Incomplete),
                };
                continue;
            }
            if self.stage == Stage::Data {
                self.data();
            } else {
                self.framing()?;
            }
        }
    }

    /// Looks at `rest` inside a part's data: queues the data up to the next
    /// delimiter (or all that cannot begin one) and, if the delimiter is
    /// there, the part's end.
    ///
    /// The data seen so far may end with the first `k` bytes of the
    /// delimiter (`delimiter.matched`): they were held back, and are handed
    /// out once the following input shows them to be data. Being a prefix of
    /// the delimiter, they are copied from it, not kept.
    fn data(&mut self) {
        let chunk = std::mem::take(&mut self.rest);
        let needle_len = self.delimiter.needle.len();
        let held = self.delimiter.matched;
        // (bytes of the delimiter's prefix, then bytes of `chunk`) that are
        // data, and where the delimiter ends in `chunk` if it is there.
        let (from_held, from_chunk, end) = match self.delimiter.find(&chunk) {
            // The delimiter began in the held-back bytes: only the bytes
            // before it are data.
            Some(end) if end < needle_len => (held + end - needle_len, 0, Some(end)),
            Some(end) => (held, end - needle_len, Some(end)),
            None => {
                // Of the held bytes and this chunk, all but the new partial
                // match are data.
                let data = held + chunk.len() - self.delimiter.matched;
                (data.min(held), data.saturating_sub(held), None)
            }
        };
        if from_held > 0 {
            let bytes = Bytes::copy_from_slice(&self.delimiter.needle[..from_held]);
            self.events.push_back(Event::Data(bytes));
        }
        if from_chunk > 0 {
            self.events
                .push_back(Event::Data(chunk.slice(..from_chunk)));
        }
        if let Some(end) = end {
            self.events.push_back(Event::PartEnd);
            self.rest = chunk.slice(end..);
            self.stage = Stage::AfterBoundary;
        }
    }

    /// Looks at `rest` outside a part's data, until the next part begins,
    /// the body ends or the input is used up.
    fn framing(&mut self) -> Result<(), FormError> {
        let limit = self.limits.header_bytes;
        let chunk = std::mem::take(&mut self.rest);
        let mut pos = 0;
        while pos < chunk.len() {
            let rest = &chunk[pos..];
            match self.stage {
                Stage::Preamble => match self.first.find(rest) {
                    Some(end) => {
                        if self.used + end - self.first.needle.len() > limit {
                            return Err(FormError::PreambleTooLong(limit));
                        }
                        pos += end;
                        self.stage = Stage::AfterBoundary;
                    }
                    None => {
                        self.used += rest.len();
                        if self.used - self.first.matched > limit {
                            return Err(FormError::PreambleTooLong(limit));
                        }
                        return Ok(());
                    }
                },
                Stage::AfterBoundary | Stage::Padding => {
                    let b = rest[0];
                    pos += 1;
                    if self.stage == Stage::AfterBoundary {
                        self.used = 0;
                    }
                    self.stage = match b {
                        b'-' if self.stage == Stage::AfterBoundary => Stage::Closing,
                        b' ' | b'\t' => {
                            self.used += 1;
                            if self.used > limit {
                                return Err(FormError::HeadersTooLong(limit));
                            }
                            Stage::Padding
                        }
                        b'\r' => Stage::LineFeed,
                        _ => return Err(FormError::Malformed),
                    };
                }
                Stage::Closing => {
                    if rest[0] != b'-' {
                        return Err(FormError::Malformed);
                    }
                    self.stage = Stage::Done;
                    return Ok(());
                }
                Stage::LineFeed => {
                    if rest[0] != b'\n' {
                        return Err(FormError::Malformed);
                    }
                    pos += 1;
                    self.parts += 1;
                    if self.parts > self.limits.max_parts {
                        return Err(FormError::TooManyParts(self.limits.max_parts));
                    }
                    self.blank.reset();
                    self.head.clear();
                    self.stage = Stage::Headers;
                }
                Stage::Headers => match self.blank.find(rest) {
                    Some(end) => {
                        if self.used + end - self.blank.needle.len() > limit {
                            return Err(FormError::HeadersTooLong(limit));
                        }
                        self.head.extend_from_slice(&rest[..end]);
                        let part = parse_part_headers(&self.head)?;
                        self.delimiter.reset();
                        self.stage = Stage::Data;
                        self.rest = chunk.slice(pos + end..);
                        self.events.push_back(Event::Part(part));
                        return Ok(());
                    }
                    None => {
                        self.used += rest.len();
                        if self.used - self.blank.matched > limit {
                            return Err(FormError::HeadersTooLong(limit));
                        }
                        self.head.extend_from_slice(rest);
                        return Ok(());
                    }
                },
                Stage::Data | Stage::Done => {
                    self.rest = chunk.slice(pos..);
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

/// A part's header block, ending with its blank line, to its [`Part`].
fn parse_part_headers(block: &[u8]) -> Result<Part, FormError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_PART_HEADERS];
    match httparse::parse_headers(block, &mut headers) {
        Ok(httparse::Status::Complete((_, headers))) => Ok(headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-disposition"))
            .map(|h| parse_disposition(h.value))
            .unwrap_or_default()),
        _ => Err(FormError::BadHeaders),
    }
}

/// `name` and `filename` of a `Content-Disposition: form-data; …` value.
/// Parameter names are case-insensitive; a value is a quoted string (with
/// backslash escapes) or a bare token. `filename*` is not read: RFC 7578
/// §4.2 rules it out for forms, and browsers percent-encode instead.
/// Bytes that are not UTF-8 are replaced, not refused.
fn parse_disposition(value: &[u8]) -> Part {
    let mut part = Part::default();
    let mut s = value;
    // Skip the disposition type ("form-data").
    match memchr::memchr(b';', s) {
        Some(i) => s = &s[i + 1..],
        None => return part,
    }
    while !s.is_empty() {
        let eq = memchr::memchr2(b'=', b';', s).unwrap_or(s.len());
        let key = s[..eq].trim_ascii();
        if eq == s.len() || s[eq] == b';' {
            // A parameter without a value.
            s = &s[(eq + 1).min(s.len())..];
            continue;
        }
        let (val, rest) = param_value(s[eq + 1..].trim_ascii_start());
        s = rest;
        let val = String::from_utf8_lossy(&val).into_owned();
        if key.eq_ignore_ascii_case(b"name") {
            part.name.get_or_insert(val);
        } else if key.eq_ignore_ascii_case(b"filename") {
            part.file_name.get_or_insert(val);
        }
    }
    part
}

/// One parameter value at the start of `s`, and what follows its `;`.
fn param_value(s: &[u8]) -> (Cow<'_, [u8]>, &[u8]) {
    let after =
        |rest: &'_ [u8]| -> usize { memchr::memchr(b';', rest).map_or(rest.len(), |i| i + 1) };
    if let Some(quoted) = s.strip_prefix(b"\"") {
        let mut out = Vec::new();
        let mut i = 0;
        while i < quoted.len() {
            match quoted[i] {
                b'"' => {
                    let rest = &quoted[i + 1..];
                    return (Cow::Owned(out), &rest[after(rest)..]);
                }
                b'\\' if i + 1 < quoted.len() => {
                    out.push(quoted[i + 1]);
                    i += 2;
                }
                b => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        // No closing quote: the rest is the value.
        (Cow::Owned(out), &[])
    } else {
        let end = memchr::memchr(b';', s).unwrap_or(s.len());
        (Cow::Borrowed(s[..end].trim_ascii_end()), &s[after(s)..])
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMITS: FramingLimits = FramingLimits {
        header_bytes: 256,
        max_parts: 4,
    };

    fn body(boundary: &str, parts: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = b"preamble text\r\n".to_vec();
        for (name, data) in parts {
            b.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
            b.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
            );
            b.extend_from_slice(data);
            b.extend_from_slice(b"\r\n");
        }
        b.extend_from_slice(format!("--{boundary}--\r\nepilogue").as_bytes());
        b
    }

    /// `data` as body chunks cut at `cuts` (taken modulo its length).
    fn pieces(data: &[u8], cuts: &[usize]) -> Vec<Bytes> {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
        cuts.sort_unstable();
        let mut out = Vec::new();
        let mut last = 0;
        for c in cuts.into_iter().chain([data.len()]) {
            out.push(Bytes::copy_from_slice(&data[last..c]));
            last = c;
        }
        out
    }

    type Chunks = futures::stream::Iter<std::vec::IntoIter<Result<Bytes, std::io::Error>>>;

    fn reader(chunks: Vec<Bytes>, limits: FramingLimits) -> FormReader<Chunks> {
        let items: Vec<Result<Bytes, std::io::Error>> = chunks.into_iter().map(Ok).collect();
        FormReader::new(futures::stream::iter(items), "XyZ", limits)
    }

    /// Every part and its data, read with [`FormReader`].
    fn read_parts(
        chunks: Vec<Bytes>,
        limits: FramingLimits,
    ) -> Result<Vec<(Part, Vec<u8>)>, FormError> {
        let mut form = reader(chunks, limits);
        futures::executor::block_on(async move {
            let mut out = Vec::new();
            while let Some(p) = form.next_part().await? {
                let mut data = Vec::new();
                while let Some(c) = form.chunk().await? {
                    assert!(!c.is_empty(), "an empty chunk was handed out");
                    data.extend_from_slice(&c);
                }
                out.push((p, data));
            }
            Ok(out)
        })
    }

    /// The same body read by `multer`, a general parser, as the oracle.
    fn multer_parts(chunks: Vec<Bytes>) -> Vec<(String, Vec<u8>)> {
        let items: Vec<Result<Bytes, std::io::Error>> = chunks.into_iter().map(Ok).collect();
        futures::executor::block_on(async move {
            let mut form = multer::Multipart::new(futures::stream::iter(items), "XyZ");
            let mut out = Vec::new();
            while let Some(f) = form.next_field().await.unwrap() {
                let name = f.name().unwrap_or("").to_string();
                out.push((name, f.bytes().await.unwrap().to_vec()));
            }
            out
        })
    }

    fn framing_of(data: &[u8], cuts: &[usize], limits: FramingLimits) -> Result<(), FormError> {
        read_parts(pieces(data, cuts), limits).map(|_| ())
    }

    #[test]
    fn seeker_finds_matches_across_chunks() {
        let mut s = Seeker::new(b"abab".to_vec());
        assert_eq!(s.find(b"xxaba"), None);
        assert_eq!(s.matched, 3);
        assert_eq!(s.find(b"b"), Some(1));
        s.reset();
        assert_eq!(s.find(b"aba"), None);
        assert_eq!(s.find(b"aba"), None);
        assert_eq!(s.find(b"b"), Some(1));
    }

    #[test]
    fn a_valid_body_reads_whole() {
        let b = body(
            "XyZ",
            &[("file_type", b"image"), ("file", b"\x89PNG\r\n--Xy data")],
        );
        let parts = read_parts(pieces(&b, &[]), LIMITS).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].0.name.as_deref(), Some("file_type"));
        assert_eq!(parts[0].1, b"image");
        assert_eq!(parts[1].1, b"\x89PNG\r\n--Xy data");
    }

    #[test]
    fn part_data_are_slices_of_the_received_chunks() {
        let data = vec![b'd'; 1 << 20];
        let b = Bytes::from(body("XyZ", &[("file", &data)]));
        let range = b.as_ptr() as usize..b.as_ptr() as usize + b.len();
        let mut form = reader(vec![b.clone()], LIMITS);
        futures::executor::block_on(async {
            form.next_part().await.unwrap().unwrap();
            let c = form.chunk().await.unwrap().unwrap();
            assert_eq!(c.len(), data.len());
            assert!(
                range.contains(&(c.as_ptr() as usize)),
                "the data were copied"
            );
            assert_eq!(form.chunk().await.unwrap(), None);
            assert_eq!(form.next_part().await.unwrap(), None);
        });
    }

    #[test]
    fn held_back_bytes_that_are_data_are_handed_out() {
        // Each chunk ends with the start of a delimiter that the next one
        // shows to be data.
        let b = body("XyZ", &[("file", b"ab\r\n--Xyc\r\n--q\r")]);
        let at = |s: &[u8]| memchr::memmem::find(&b, s).unwrap();
        let cuts = [at(b"Xyc") + 2, at(b"q") - 1, at(b"q") + 2];
        let parts = read_parts(pieces(&b, &cuts), LIMITS).unwrap();
        assert_eq!(parts[0].1, b"ab\r\n--Xyc\r\n--q\r");
    }

    #[test]
    fn a_preamble_without_boundary_fails_at_the_limit() {
        let r = framing_of(&[b'a'; 300], &[100, 200], LIMITS);
        assert_eq!(r, Err(FormError::PreambleTooLong(256)));
        let mut fine = vec![b'a'; 250];
        fine.extend_from_slice(b"--XyZ--");
        assert_eq!(framing_of(&fine, &[100], LIMITS), Ok(()));
    }

    #[test]
    fn headers_that_never_end_fail_at_the_limit() {
        let mut b = b"--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\nX: ".to_vec();
        b.extend_from_slice(&[b'h'; 500]);
        let r = framing_of(&b, &[60, 120, 300], LIMITS);
        assert_eq!(r, Err(FormError::HeadersTooLong(256)));
    }

    #[test]
    fn one_part_too_many_fails_when_it_begins() {
        let parts: Vec<(&str, &[u8])> = (0..5).map(|_| ("x", &b"1"[..])).collect();
        let b = body("XyZ", &parts);
        assert_eq!(framing_of(&b, &[], LIMITS), Err(FormError::TooManyParts(4)));
        assert!(framing_of(&body("XyZ", &parts[..4]), &[], LIMITS).is_ok());
    }

    #[test]
    fn a_boundary_followed_by_junk_is_malformed() {
        assert_eq!(
            framing_of(b"--XyZx\r\n", &[], LIMITS),
            Err(FormError::Malformed)
        );
        assert_eq!(
            framing_of(b"--XyZ-x", &[], LIMITS),
            Err(FormError::Malformed)
        );
        // Transport padding is allowed.
        assert!(framing_of(b"--XyZ \t\r\nA: b\r\n\r\nd\r\n--XyZ--", &[], LIMITS).is_ok());
    }

    #[test]
    fn a_blank_line_right_after_the_boundary_does_not_end_the_headers() {
        // The blank line is looked for after the boundary's own CRLF, so
        // "--B\r\n\r\n" opens headers that are still running.
        let mut b = b"--XyZ\r\n\r\n".to_vec();
        b.extend_from_slice(&[b'h'; 500]);
        assert_eq!(
            framing_of(&b, &[9, 100], LIMITS),
            Err(FormError::HeadersTooLong(256))
        );
    }

    #[test]
    fn a_body_cut_short_is_incomplete_and_the_epilogue_is_never_read() {
        let b = body("XyZ", &[("file", b"data")]);
        let cut = b.len() - "--\r\nepilogue".len() - 4;
        assert_eq!(
            framing_of(&b[..cut], &[], LIMITS),
            Err(FormError::Incomplete)
        );
        // After the closing delimiter nothing more is read: a failing
        // stream there is never polled.
        let items = vec![
            Ok(Bytes::from(body("XyZ", &[("file", b"data")]))),
            Err(std::io::Error::other("never read")),
        ];
        let mut form = FormReader::new(futures::stream::iter(items), "XyZ", LIMITS);
        futures::executor::block_on(async {
            assert!(form.next_part().await.unwrap().is_some());
            assert_eq!(form.next_part().await.unwrap(), None);
            assert_eq!(form.next_part().await.unwrap(), None);
        });
    }

    #[test]
    fn a_failing_body_is_reported_and_the_error_sticks() {
        let items = vec![
            Ok(Bytes::from_static(
                b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nab",
            )),
            Err(std::io::Error::other("connection reset")),
        ];
        let mut form = FormReader::new(futures::stream::iter(items), "XyZ", LIMITS);
        futures::executor::block_on(async {
            form.next_part().await.unwrap().unwrap();
            assert_eq!(form.chunk().await.unwrap().as_deref(), Some(&b"ab"[..]));
            let e = form.chunk().await.unwrap_err();
            assert_eq!(e, FormError::Body("connection reset".into()));
            assert_eq!(form.next_part().await.unwrap_err(), e);
        });
    }

    #[test]
    fn malformed_part_headers_are_refused() {
        let b = b"--XyZ\r\nno colon here\r\n\r\nd\r\n--XyZ--";
        assert_eq!(framing_of(b, &[], LIMITS), Err(FormError::BadHeaders));
    }

    #[test]
    fn content_disposition_parameters() {
        let p = |v: &str| parse_disposition(v.as_bytes());
        let both = |n: &str, f: Option<&str>| Part {
            name: Some(n.into()),
            file_name: f.map(Into::into),
        };
        assert_eq!(
            p(r#"form-data; name="file"; filename="a b.png""#),
            both("file", Some("a b.png"))
        );
        assert_eq!(
            p(r#"form-data; filename="x.png"; name="file""#),
            both("file", Some("x.png"))
        );
        assert_eq!(
            p(r#"form-data; NAME=tags; FileName = "q\"uote;d.txt""#),
            both("tags", Some("q\"uote;d.txt"))
        );
        assert_eq!(
            p("form-data; name=\"你好\"; filename=\"file.txt\""),
            both("你好", Some("file.txt"))
        );
        assert_eq!(p(r#"form-data; name="a"; name="b""#), both("a", None));
        assert_eq!(
            p(r#"form-data; xname="a"; name="b"; flag"#),
            both("b", None)
        );
        assert_eq!(
            p(r#"form-data; name="unterminated"#),
            both("unterminated", None)
        );
        assert_eq!(p("form-data"), Part::default());
        let latin1 = parse_disposition(b"form-data; name=\"file\"; filename=\"caf\xe9.txt\"");
        assert_eq!(latin1.file_name.as_deref(), Some("caf\u{fffd}.txt"));
    }

    #[test]
    fn boundaries() {
        let b = |ct: &str| parse_boundary(ct);
        assert_eq!(b("multipart/form-data; boundary=AbC").as_deref(), Ok("AbC"));
        assert_eq!(
            b("Multipart/Form-Data; boundary=\"a b\"").as_deref(),
            Ok("a b")
        );
        let not_form = Err("expected a multipart/form-data body with a boundary");
        assert_eq!(b("multipart/mixed; boundary=AbC"), not_form);
        assert_eq!(b("text/plain; boundary=AbC"), not_form);
        assert_eq!(b("multipart/form-data"), not_form);
        assert_eq!(b("multipart/form-data; boundary=\"\""), not_form);
        let long = format!("multipart/form-data; boundary={}", "x".repeat(201));
        assert_eq!(
            b(&long),
            Err("the multipart boundary is longer than 200 characters")
        );
        let fits = format!("multipart/form-data; boundary={}", "x".repeat(200));
        assert!(b(&fits).is_ok());
    }

    fn field_data() -> impl Strategy<Value = Vec<u8>> {
        // Bytes biased towards the delimiters' own characters.
        proptest::collection::vec(
            prop_oneof![
                Just(b'\r'),
                Just(b'\n'),
                Just(b'-'),
                Just(b'X'),
                Just(b'y'),
                Just(b'Z'),
                any::<u8>()
            ],
            0..300,
        )
        .prop_filter("data must not contain the delimiter", |d| {
            memchr::memmem::find(d, b"\r\n--XyZ").is_none()
        })
    }

    proptest! {
        #[test]
        fn valid_bodies_read_as_multer_reads_them_in_any_chunking(
            datas in proptest::collection::vec(field_data(), 1..5),
            cuts in proptest::collection::vec(any::<usize>(), 0..12),
        ) {
            let names = ["a", "b", "c", "d"];
            let parts: Vec<(&str, &[u8])> = datas.iter().enumerate().map(|(i, d)| (names[i], d.as_slice())).collect();
            let b = body("XyZ", &parts);
            let got = read_parts(pieces(&b, &cuts), LIMITS).unwrap();
            let oracle = multer_parts(pieces(&b, &cuts));
            prop_assert_eq!(got.len(), datas.len());
            prop_assert_eq!(oracle.len(), datas.len());
            for (((p, g), d), (on, od)) in got.iter().zip(&datas).zip(&oracle) {
                prop_assert_eq!(g, d);
                prop_assert_eq!(od, d);
                prop_assert_eq!(p.name.as_deref().unwrap_or(""), on.as_str());
            }
        }

        #[test]
        fn long_preambles_and_headers_fail_in_any_chunking(
            extra in 1usize..200,
            in_headers in any::<bool>(),
            cuts in proptest::collection::vec(any::<usize>(), 0..12),
        ) {
            let filler = vec![b'p'; LIMITS.header_bytes + extra];
            let b = if in_headers {
                let mut b = b"--XyZ\r\nX-Long: ".to_vec();
                b.extend_from_slice(&filler);
                b.extend_from_slice(b"\r\n\r\ndata\r\n--XyZ--");
                b
            } else {
                let mut b = filler.clone();
                b.extend_from_slice(b"\r\n--XyZ\r\nA: b\r\n\r\nd\r\n--XyZ--");
                b
            };
            let expected = if in_headers {
                FormError::HeadersTooLong(LIMITS.header_bytes)
            } else {
                FormError::PreambleTooLong(LIMITS.header_bytes)
            };
            prop_assert_eq!(framing_of(&b, &cuts, LIMITS), Err(expected));
        }

        #[test]
        fn any_input_ends_in_parts_or_an_error_within_bounded_memory(
            data in proptest::collection::vec(prop_oneof![
                Just(b'\r'), Just(b'\n'), Just(b'-'), Just(b'X'), Just(b'y'), Just(b'Z'),
                Just(b':'), Just(b' '), any::<u8>()
            ], 0..600),
            cuts in proptest::collection::vec(any::<usize>(), 0..12),
        ) {
            let mut form = reader(pieces(&data, &cuts), LIMITS);
            futures::executor::block_on(async {
                while let Ok(Some(_)) = form.next_part().await {
                    while let Ok(Some(_)) = form.chunk().await {}
                    assert!(form.head.len() <= LIMITS.header_bytes + 4);
                }
                assert!(form.head.len() <= LIMITS.header_bytes + 4);
                assert!(form.events.len() <= 3);
            });
        }

        #[test]
        fn the_seeker_agrees_with_a_whole_buffer_search(
            hay in proptest::collection::vec(prop_oneof![Just(b'a'), Just(b'b')], 0..60),
            cuts in proptest::collection::vec(any::<usize>(), 0..8),
        ) {
            let needle = b"abaab".to_vec();
            let expected = memchr::memmem::find(&hay, &needle).map(|p| p + needle.len());
            let mut s = Seeker::new(needle);
            let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (hay.len() + 1)).collect();
            cuts.sort_unstable();
            let mut last = 0;
            let mut found = None;
            for c in cuts.into_iter().chain([hay.len()]) {
                if let Some(end) = s.find(&hay[last..c]) {
                    found = Some(last + end);
                    break;
                }
                last = c;
            }
            prop_assert_eq!(found, expected);
        }
    }
}
