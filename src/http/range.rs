//! `Range: bytes=…` parsing (RFC 9110 §14). One range is served as 206;
//! several ranges are answered with the whole representation (allowed by the
//! RFC, and what most static servers do), a syntactically invalid header is
//! ignored, and a valid but unsatisfiable one is a 416.

/// The outcome of looking at a `Range` header for a body of `len` bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum RangeOutcome {
    /// Serve everything (no header, invalid syntax, or several ranges).
    Full,
    /// Serve bytes `start..end` (end exclusive).
    Partial { start: u64, end: u64 },
    /// Nothing of the body is in the requested range.
    Unsatisfiable,
}

pub fn parse_range(header: Option<&str>, len: u64) -> RangeOutcome {
    let Some(h) = header else {
        return RangeOutcome::Full;
    };
    let Some(spec) = h.trim().strip_prefix("bytes=") else {
        return RangeOutcome::Full;
    };
    let specs: Vec<&str> = spec.split(',').map(str::trim).collect();
    if specs.len() != 1 {
        return RangeOutcome::Full;
    }
    let Some((a, b)) = specs[0].split_once('-') else {
        return RangeOutcome::Full;
    };
    let num = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
            None
        } else {
            s.parse().ok()
        }
    };
    match (a.trim(), b.trim()) {
        ("", suffix) => match num(suffix) {
            Some(0) => RangeOutcome::Unsatisfiable,
            Some(_) if len == 0 => RangeOutcome::Unsatisfiable,
            Some(n) => RangeOutcome::Partial {
                start: len.saturating_sub(n),
                end: len,
            },
            None => RangeOutcome::Full,
        },
        (first, "") => match num(first) {
            Some(s) if s < len => RangeOutcome::Partial { start: s, end: len },
            Some(_) => RangeOutcome::Unsatisfiable,
            None => RangeOutcome::Full,
        },
        (first, last) => match (num(first), num(last)) {
            (Some(s), Some(e)) if s <= e => {
                if s >= len {
                    RangeOutcome::Unsatisfiable
                } else {
                    RangeOutcome::Partial {
                        start: s,
                        end: e.saturating_add(1).min(len),
                    }
                }
            }
            _ => RangeOutcome::Full,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use RangeOutcome::*;

    #[test]
    fn common_forms() {
        assert_eq!(parse_range(None, 100), Full);
        assert_eq!(
            parse_range(Some("bytes=0-9"), 100),
            Partial { start: 0, end: 10 }
        );
        assert_eq!(
            parse_range(Some("bytes=90-"), 100),
            Partial {
                start: 90,
                end: 100
            }
        );
        assert_eq!(
            parse_range(Some("bytes=-10"), 100),
            Partial {
                start: 90,
                end: 100
            }
        );
        assert_eq!(
            parse_range(Some("bytes=-500"), 100),
            Partial { start: 0, end: 100 }
        );
        assert_eq!(
            parse_range(Some("bytes=50-5000"), 100),
            Partial {
                start: 50,
                end: 100
            }
        );
        assert_eq!(parse_range(Some("bytes=100-"), 100), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=200-300"), 100), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=-0"), 100), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=0-0"), 0), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=5-1"), 100), Full);
        assert_eq!(parse_range(Some("bytes=0-1,5-6"), 100), Full);
        assert_eq!(parse_range(Some("items=0-1"), 100), Full);
        assert_eq!(parse_range(Some("bytes=+1-2"), 100), Full);
        assert_eq!(parse_range(Some("bytes=x"), 100), Full);
    }

    proptest! {
        #[test]
        fn partial_ranges_are_inside_the_body(h in "bytes=[0-9-]{0,12}", len in 0u64..10_000) {
            if let Partial { start, end } = parse_range(Some(&h), len) {
                prop_assert!(start < end);
                prop_assert!(end <= len);
            }
        }

        #[test]
        fn never_panics(h in ".{0,40}", len in any::<u64>()) {
            let _ = parse_range(Some(&h), len);
        }
    }
}
