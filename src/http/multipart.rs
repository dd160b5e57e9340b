//! A framing guard in front of `multer` (SPEC §9, bodies).
//!
//! `multer` bounds field *contents* (its `SizeLimit`), but not the framing
//! around them: while it looks for the first boundary, or for the blank line
//! that ends a part's headers, it keeps every byte it has received and
//! searches the whole buffer again on each new chunk. A body whose preamble
//! never reaches a boundary, or whose part headers never end, therefore grows
//! the server's memory without bound, quadratically in CPU.
//!
//! [`Scanner`] follows the same framing as `multer` (the same delimiters, in
//! the same order, with the same transport-padding rule) over the raw body
//! chunks, in constant memory and linear time, and fails the stream as soon
//! as the preamble or a part's headers pass their limit or one part too many
//! begins. `multer` then sees a stream error and the request is answered 400
//! while the client is still sending. Inside a part's data it only looks for
//! the next delimiter, with `memchr`'s substring search, so a large file
//! costs one extra pass over its bytes.

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

/// Why the guard stopped a body.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("the multipart preamble is longer than {0} bytes")]
    PreambleTooLong(usize),
    #[error("a multipart part's headers are longer than {0} bytes")]
    HeadersTooLong(usize),
    #[error("a multipart body may have at most {0} parts")]
    TooManyParts(usize),
    #[error("a multipart boundary is not followed by a line break")]
    Malformed,
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
    /// Spaces and tabs after a boundary (multer's transport padding).
    Padding,
    /// Read the CR after a boundary; LF must follow.
    LineFeed,
    /// A part's headers, up to the blank line.
    Headers,
    /// A part's data, up to `CRLF--boundary`.
    Data,
    /// After the closing delimiter: the epilogue, which multer never reads.
    Done,
}

/// The incremental framing check; see the module docs.
pub struct Scanner {
    limits: FramingLimits,
    stage: Stage,
    /// `--boundary`: the first delimiter.
    first: Seeker,
    /// `CRLF CRLF`: the end of a part's headers.
    blank: Seeker,
    /// `CRLF--boundary`: the end of a part's data.
    delimiter: Seeker,
    /// Bytes used by the preamble or the current part's framing so far.
    used: usize,
    parts: usize,
    failed: Option<FramingError>,
}

impl Scanner {
    pub fn new(boundary: &str, limits: FramingLimits) -> Scanner {
        Scanner {
            limits,
            stage: Stage::Preamble,
            first: Seeker::new(format!("--{boundary}").into_bytes()),
            blank: Seeker::new(b"\r\n\r\n".to_vec()),
            delimiter: Seeker::new(format!("\r\n--{boundary}").into_bytes()),
            used: 0,
            parts: 0,
            failed: None,
        }
    }

    /// Checks the next chunk of the body; after the first error, every
    /// later call returns it again.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), FramingError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let r = self.scan(chunk);
        if let Err(e) = &r {
            self.failed = Some(e.clone());
        }
        r
    }

    fn scan(&mut self, chunk: &[u8]) -> Result<(), FramingError> {
        let limit = self.limits.header_bytes;
        let mut pos = 0;
        while pos < chunk.len() {
            let rest = &chunk[pos..];
            match self.stage {
                Stage::Preamble => match self.first.find(rest) {
                    Some(end) => {
                        if self.used + end - self.first.needle.len() > limit {
                            return Err(FramingError::PreambleTooLong(limit));
                        }
                        pos += end;
                        self.stage = Stage::AfterBoundary;
                    }
                    None => {
                        self.used += rest.len();
                        if self.used - self.first.matched > limit {
                            return Err(FramingError::PreambleTooLong(limit));
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
                                return Err(FramingError::HeadersTooLong(limit));
                            }
                            Stage::Padding
                        }
                        b'\r' => Stage::LineFeed,
                        _ => return Err(FramingError::Malformed),
                    };
                }
                Stage::Closing => {
                    if rest[0] != b'-' {
                        return Err(FramingError::Malformed);
                    }
                    self.stage = Stage::Done;
                    return Ok(());
                }
                Stage::LineFeed => {
                    if rest[0] != b'\n' {
                        return Err(FramingError::Malformed);
                    }
                    pos += 1;
                    self.parts += 1;
                    if self.parts > self.limits.max_parts {
                        return Err(FramingError::TooManyParts(self.limits.max_parts));
                    }
                    self.blank.reset();
                    self.stage = Stage::Headers;
                }
                Stage::Headers => match self.blank.find(rest) {
                    Some(end) => {
                        if self.used + end - self.blank.needle.len() > limit {
                            return Err(FramingError::HeadersTooLong(limit));
                        }
                        pos += end;
                        self.delimiter.reset();
                        self.stage = Stage::Data;
                    }
                    None => {
                        self.used += rest.len();
                        if self.used - self.blank.matched > limit {
                            return Err(FramingError::HeadersTooLong(limit));
                        }
                        return Ok(());
                    }
                },
                Stage::Data => match self.delimiter.find(rest) {
                    Some(end) => {
                        pos += end;
                        self.stage = Stage::AfterBoundary;
                    }
                    None => return Ok(()),
                },
                Stage::Done => return Ok(()),
            }
        }
        Ok(())
    }
}

/// The error a guarded body stream yields: the body's own, or the guard's.
#[derive(Debug, thiserror::Error)]
pub enum GuardedError {
    #[error("could not read the request body: {0}")]
    Body(#[source] axum::Error),
    #[error(transparent)]
    Framing(#[from] FramingError),
}

/// Wraps a request body's data stream in a [`Scanner`].
pub fn guard<S>(
    body: S,
    boundary: &str,
    limits: FramingLimits,
) -> impl Stream<Item = Result<Bytes, GuardedError>> + Send + 'static
where
    S: Stream<Item = Result<Bytes, axum::Error>> + Send + 'static,
{
    let mut scanner = Scanner::new(boundary, limits);
    body.map(move |chunk| {
        let chunk = chunk.map_err(GuardedError::Body)?;
        scanner.feed(&chunk)?;
        Ok(chunk)
    })
}

/// The guard's verdict inside a `multer` error, if that is what it is.
pub fn framing_error(e: &multer::Error) -> Option<&FramingError> {
    match e {
        multer::Error::StreamReadFailed(inner) => match inner.downcast_ref::<GuardedError>() {
            Some(GuardedError::Framing(f)) => Some(f),
            _ => None,
        },
        _ => None,
    }
}

/// A client-facing description of a `multer` error (its own `Display`
/// leaves out the cause of a failed stream).
pub fn describe(e: &multer::Error) -> String {
    if let Some(f) = framing_error(e) {
        return f.to_string();
    }
    match e {
        multer::Error::FieldSizeExceeded { limit, field_name } => format!(
            "form field {:?} is longer than {limit} bytes",
            field_name.as_deref().unwrap_or("")
        ),
        other => format!("malformed multipart body: {other}"),
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

    /// Feeds `data` in pieces cut at `cuts`; the error, if any.
    fn scan_in_pieces(
        data: &[u8],
        cuts: &[usize],
        limits: FramingLimits,
    ) -> Result<(), FramingError> {
        let mut s = Scanner::new("XyZ", limits);
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
        cuts.sort_unstable();
        let mut last = 0;
        for c in cuts.into_iter().chain([data.len()]) {
            s.feed(&data[last..c])?;
            last = c;
        }
        Ok(())
    }

    /// Parses with multer, as the upload handler does, behind the guard.
    fn multer_parts(
        data: Vec<u8>,
        cuts: &[usize],
        limits: FramingLimits,
    ) -> Result<Vec<(String, Vec<u8>)>, String> {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
        cuts.sort_unstable();
        let mut pieces = Vec::new();
        let mut last = 0;
        for c in cuts.into_iter().chain([data.len()]) {
            pieces.push(Ok::<_, axum::Error>(Bytes::copy_from_slice(&data[last..c])));
            last = c;
        }
        let stream = guard(futures::stream::iter(pieces), "XyZ", limits);
        futures::executor::block_on(async move {
            let mut form = multer::Multipart::new(stream, "XyZ");
            let mut out = Vec::new();
            while let Some(f) = form.next_field().await.map_err(|e| describe(&e))? {
                let name = f.name().unwrap_or("").to_string();
                let bytes = f.bytes().await.map_err(|e| describe(&e))?;
                out.push((name, bytes.to_vec()));
            }
            Ok(out)
        })
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
    fn a_valid_body_passes() {
        let b = body(
            "XyZ",
            &[("file_type", b"image"), ("file", b"\x89PNG\r\n--Xy data")],
        );
        assert_eq!(scan_in_pieces(&b, &[], LIMITS), Ok(()));
        let parts = multer_parts(b, &[], LIMITS).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[1].1, b"\x89PNG\r\n--Xy data");
    }

    #[test]
    fn a_preamble_without_boundary_fails_at_the_limit() {
        let mut s = Scanner::new("XyZ", LIMITS);
        let chunk = [b'a'; 100];
        assert!(s.feed(&chunk).is_ok());
        assert!(s.feed(&chunk).is_ok());
        assert_eq!(s.feed(&chunk), Err(FramingError::PreambleTooLong(256)));
        assert_eq!(
            s.feed(b"--XyZ\r\n"),
            Err(FramingError::PreambleTooLong(256))
        );
    }

    #[test]
    fn headers_that_never_end_fail_at_the_limit() {
        let mut s = Scanner::new("XyZ", LIMITS);
        s.feed(b"--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\nX: ")
            .unwrap();
        let r = (0..10).try_for_each(|_| s.feed(&[b'h'; 50]));
        assert_eq!(r, Err(FramingError::HeadersTooLong(256)));
    }

    #[test]
    fn one_part_too_many_fails_when_it_begins() {
        let parts: Vec<(&str, &[u8])> = (0..5).map(|_| ("x", &b"1"[..])).collect();
        let b = body("XyZ", &parts);
        assert_eq!(
            scan_in_pieces(&b, &[], LIMITS),
            Err(FramingError::TooManyParts(4))
        );
        let err = multer_parts(b, &[], LIMITS).unwrap_err();
        assert!(err.contains("at most 4 parts"), "{err}");
        assert!(scan_in_pieces(&body("XyZ", &parts[..4]), &[], LIMITS).is_ok());
    }

    #[test]
    fn a_boundary_followed_by_junk_is_malformed() {
        assert_eq!(
            scan_in_pieces(b"--XyZx\r\n", &[], LIMITS),
            Err(FramingError::Malformed)
        );
        assert_eq!(
            scan_in_pieces(b"--XyZ-x", &[], LIMITS),
            Err(FramingError::Malformed)
        );
        // Transport padding is allowed, as multer allows it.
        assert!(scan_in_pieces(b"--XyZ \t\r\nA: b\r\n\r\nd\r\n--XyZ--", &[], LIMITS).is_ok());
    }

    #[test]
    fn a_blank_line_right_after_the_boundary_does_not_end_the_headers() {
        // multer looks for the blank line after the boundary's own CRLF, so
        // "--B\r\n\r\n" opens headers that are still running.
        let mut s = Scanner::new("XyZ", LIMITS);
        s.feed(b"--XyZ\r\n\r\n").unwrap();
        let r = (0..10).try_for_each(|_| s.feed(&[b'h'; 50]));
        assert_eq!(r, Err(FramingError::HeadersTooLong(256)));
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
        fn valid_bodies_pass_unchanged_in_any_chunking(
            datas in proptest::collection::vec(field_data(), 1..5),
            cuts in proptest::collection::vec(any::<usize>(), 0..12),
        ) {
            let names = ["a", "b", "c", "d"];
            let parts: Vec<(&str, &[u8])> = datas.iter().enumerate().map(|(i, d)| (names[i], d.as_slice())).collect();
            let b = body("XyZ", &parts);
            prop_assert_eq!(scan_in_pieces(&b, &cuts, LIMITS), Ok(()));
            let got = multer_parts(b, &cuts, LIMITS).unwrap();
            prop_assert_eq!(got.len(), datas.len());
            for ((_, g), d) in got.iter().zip(&datas) {
                prop_assert_eq!(g, d);
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
                FramingError::HeadersTooLong(LIMITS.header_bytes)
            } else {
                FramingError::PreambleTooLong(LIMITS.header_bytes)
            };
            prop_assert_eq!(scan_in_pieces(&b, &cuts, LIMITS), Err(expected));
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
