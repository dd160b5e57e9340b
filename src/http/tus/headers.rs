//! Parsing and formatting of the tus request/response headers:
//! `Upload-Offset`, `Upload-Length`, `Upload-Metadata`, `Upload-Checksum`
//! and `Upload-Expires`. Pure functions, property-tested below.

use std::collections::BTreeMap;

use base64::{
    engine::general_purpose::{STANDARD, STANDARD_NO_PAD},
    Engine,
};
use chrono::{DateTime, Utc};

/// Longest `Upload-Metadata` accepted, in bytes.
pub const MAX_METADATA_LEN: usize = 8 * 1024;

/// A checksum algorithm of the checksum extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algo {
    Sha1,
    Sha256,
}

impl Algo {
    pub fn name(self) -> &'static str {
        match self {
            Algo::Sha1 => "sha1",
            Algo::Sha256 => "sha256",
        }
    }

    pub fn digest_len(self) -> usize {
        match self {
            Algo::Sha1 => 20,
            Algo::Sha256 => 32,
        }
    }
}

/// The algorithms we offer, for `Tus-Checksum-Algorithm`.
pub const CHECKSUM_ALGORITHMS: &str = "sha1,sha256";

/// A parsed `Upload-Checksum`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checksum {
    pub algo: Algo,
    pub digest: Vec<u8>,
}

/// Why a header was refused; the message goes to the client as a 400.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderError(pub String);

/// Why an `Upload-Checksum` was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChecksumError {
    /// An algorithm we do not offer (tus: 400).
    Unsupported(String),
    Malformed(String),
}

/// `Upload-Offset` / `Upload-Length`: a non-negative decimal integer of ASCII
/// digits only (no sign, no spaces), that fits an `i64`.
pub fn parse_u64(name: &str, raw: &str) -> Result<u64, HeaderError> {
    let bad = || {
        HeaderError(format!(
            "{name} must be a non-negative integer, got {raw:?}"
        ))
    };
    if raw.is_empty() || raw.len() > 19 || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let v: u64 = raw.parse().map_err(|_| bad())?;
    if v > i64::MAX as u64 {
        return Err(bad());
    }
    Ok(v)
}

/// Decodes base64 with or without padding.
fn b64_decode(s: &str) -> Option<Vec<u8>> {
    STANDARD
        .decode(s)
        .ok()
        .or_else(|| STANDARD_NO_PAD.decode(s).ok())
}

/// `Upload-Metadata`: comma-separated `key` or `key base64value` pairs; keys
/// are non-empty, unique, without spaces or commas. Values stay bytes.
pub fn parse_metadata(raw: &str) -> Result<BTreeMap<String, Option<Vec<u8>>>, HeaderError> {
    if raw.len() > MAX_METADATA_LEN {
        return Err(HeaderError(format!(
            "Upload-Metadata is longer than {MAX_METADATA_LEN} bytes"
        )));
    }
    let mut out = BTreeMap::new();
    if raw.trim().is_empty() {
        return Ok(out);
    }
    for pair in raw.split(',') {
        let pair = pair.trim();
        let mut parts = pair.split(' ').filter(|p| !p.is_empty());
        let key = parts
            .next()
            .ok_or_else(|| HeaderError("Upload-Metadata has an empty pair".into()))?;
        if !key.bytes().all(|b| b.is_ascii_graphic() && b != b',') {
            return Err(HeaderError(format!(
                "Upload-Metadata key {key:?} is not valid"
            )));
        }
        let value = match parts.next() {
            None => None,
            Some(v) => Some(b64_decode(v).ok_or_else(|| {
                HeaderError(format!("Upload-Metadata value of {key:?} is not base64"))
            })?),
        };
        if parts.next().is_some() {
            return Err(HeaderError(format!(
                "Upload-Metadata pair for {key:?} has more than a key and a value"
            )));
        }
        if out.insert(key.to_string(), value).is_some() {
            return Err(HeaderError(format!("Upload-Metadata repeats key {key:?}")));
        }
    }
    Ok(out)
}

/// Formats metadata back into the header form (`HEAD` answers it).
pub fn format_metadata(meta: &BTreeMap<String, Option<Vec<u8>>>) -> String {
    meta.iter()
        .map(|(k, v)| match v {
            Some(v) => format!("{k} {}", STANDARD.encode(v)),
            None => k.clone(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Metadata as stored in `tus_uploads.metadata`: a JSON object of key to
/// base64 value (or null).
pub fn metadata_to_json(meta: &BTreeMap<String, Option<Vec<u8>>>) -> String {
    let m: BTreeMap<&str, Option<String>> = meta
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_ref().map(|v| STANDARD.encode(v))))
        .collect();
    serde_json::to_string(&m).unwrap_or_else(|_| "{}".into())
}

/// Reads the stored form back; unreadable text counts as empty.
pub fn metadata_from_json(s: &str) -> BTreeMap<String, Option<Vec<u8>>> {
    let m: BTreeMap<String, Option<String>> = serde_json::from_str(s).unwrap_or_default();
    m.into_iter()
        .map(|(k, v)| (k, v.and_then(|v| STANDARD.decode(v).ok())))
        .collect()
}

/// `Upload-Checksum: <algorithm> <base64 digest>`.
pub fn parse_checksum(raw: &str) -> Result<Checksum, ChecksumError> {
    let mut parts = raw.trim().split(' ').filter(|p| !p.is_empty());
    let (Some(name), Some(digest), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(ChecksumError::Malformed(
            "Upload-Checksum must be \"<algorithm> <base64 digest>\"".into(),
        ));
    };
    let algo = match name.to_ascii_lowercase().as_str() {
        "sha1" => Algo::Sha1,
        "sha256" => Algo::Sha256,
        other => {
            return Err(ChecksumError::Unsupported(format!(
                "checksum algorithm {other:?} is not supported; use one of {CHECKSUM_ALGORITHMS}"
            )))
        }
    };
    let digest = b64_decode(digest)
        .ok_or_else(|| ChecksumError::Malformed("Upload-Checksum digest is not base64".into()))?;
    if digest.len() != algo.digest_len() {
        return Err(ChecksumError::Malformed(format!(
            "a {} digest is {} bytes, got {}",
            algo.name(),
            algo.digest_len(),
            digest.len()
        )));
    }
    Ok(Checksum { algo, digest })
}

/// RFC 7231 IMF-fixdate, as `Upload-Expires` wants.
pub fn http_date(t: DateTime<Utc>) -> String {
    t.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn offsets() {
        assert_eq!(parse_u64("Upload-Offset", "0"), Ok(0));
        assert_eq!(parse_u64("Upload-Offset", "1048576"), Ok(1048576));
        for bad in [
            "",
            "-1",
            "+1",
            " 1",
            "1.0",
            "0x10",
            "99999999999999999999",
            "9223372036854775808",
        ] {
            assert!(parse_u64("Upload-Offset", bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_u64("Upload-Length", "9223372036854775807"),
            Ok(i64::MAX as u64)
        );
    }

    #[test]
    fn metadata_examples() {
        let m = parse_metadata("filename d29ybGRfZG9taW5hdGlvbl9wbGFuLnBkZg==,is_confidential")
            .unwrap();
        assert_eq!(
            m["filename"].as_deref(),
            Some(&b"world_domination_plan.pdf"[..])
        );
        assert_eq!(m["is_confidential"], None);
        assert!(parse_metadata("").unwrap().is_empty());
        // Unpadded base64 is accepted.
        assert_eq!(
            parse_metadata("a YQ").unwrap()["a"].as_deref(),
            Some(&b"a"[..])
        );
        for bad in [
            "a !!!",
            "a YQ==,a YQ==",
            ",",
            "a YQ== YQ==",
            "k\u{e9}y YQ==",
        ] {
            assert!(parse_metadata(bad).is_err(), "{bad:?}");
        }
        assert!(parse_metadata(&"k YQ==,".repeat(2000)).is_err());
    }

    #[test]
    fn checksum_examples() {
        let c = parse_checksum("sha1 Kq5sNclPz7QV2+lfQIuc6R7oRu0=").unwrap();
        assert_eq!(c.algo, Algo::Sha1);
        assert_eq!(c.digest.len(), 20);
        assert!(matches!(
            parse_checksum("md5 1B2M2Y8AsgTpgAmY7PhCfg=="),
            Err(ChecksumError::Unsupported(_))
        ));
        assert!(matches!(
            parse_checksum("sha256 Kq5sNclPz7QV2+lfQIuc6R7oRu0="),
            Err(ChecksumError::Malformed(_))
        ));
        assert!(matches!(
            parse_checksum("sha1"),
            Err(ChecksumError::Malformed(_))
        ));
        assert!(matches!(
            parse_checksum("sha1 ***"),
            Err(ChecksumError::Malformed(_))
        ));
    }

    #[test]
    fn http_dates() {
        let t = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        assert_eq!(http_date(t), "Tue, 14 Nov 2023 22:13:20 GMT");
    }

    fn key() -> impl Strategy<Value = String> {
        "[!-+--~]{1,20}"
    }

    proptest! {
        #[test]
        // An empty value and no value are the same on the wire, so values
        // are generated non-empty.
        fn metadata_round_trips(m in proptest::collection::btree_map(key(), proptest::option::of(proptest::collection::vec(any::<u8>(), 1..64)), 0..8)) {
            let header = format_metadata(&m);
            prop_assert_eq!(&parse_metadata(&header).unwrap(), &m);
            prop_assert_eq!(&metadata_from_json(&metadata_to_json(&m)), &m);
        }

        #[test]
        fn metadata_never_panics(s in "\\PC{0,200}") {
            let _ = parse_metadata(&s);
        }

        #[test]
        fn offsets_round_trip(n in 0u64..=i64::MAX as u64) {
            prop_assert_eq!(parse_u64("Upload-Offset", &n.to_string()), Ok(n));
        }

        #[test]
        fn offsets_refuse_non_digits(s in "[^0-9]{1,5}[0-9]{0,5}") {
            prop_assert!(parse_u64("Upload-Offset", &s).is_err());
        }

        #[test]
        fn checksums_round_trip(d in proptest::collection::vec(any::<u8>(), 32), sha1 in any::<bool>()) {
            let (name, d) = if sha1 { ("sha1", d[..20].to_vec()) } else { ("sha256", d) };
            let c = parse_checksum(&format!("{name} {}", STANDARD.encode(&d))).unwrap();
            prop_assert_eq!(c.algo.name(), name);
            prop_assert_eq!(c.digest, d);
        }

        #[test]
        fn checksums_never_panic(s in "\\PC{0,100}") {
            let _ = parse_checksum(&s);
        }
    }
}
