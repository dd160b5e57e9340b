//! AWS Signature Version 4 for the few S3 requests this crate sends itself
//! (the multipart calls of [`super::multipart`]): header authorization, the
//! payload either hashed (small XML bodies) or `UNSIGNED-PAYLOAD` (parts
//! streamed from the spool, whose hash would need a second pass).

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// The payload hash S3 accepts for a body that is not hashed.
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";

/// Access key pair and region a request is signed for.
#[derive(Clone)]
pub struct Signer {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub region: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("access_key_id", &self.access_key_id)
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

/// The headers a signed request must carry, besides `Host` (which the HTTP
/// client sets from the URL, as signed here).
pub struct Signed {
    pub authorization: String,
    pub amz_date: String,
    pub content_sha256: String,
}

/// Hex sha256 of a small body, as `x-amz-content-sha256` wants it.
pub fn payload_hash(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

/// Percent-encodes `s` the way SigV4 wants: everything but the unreserved
/// characters (`A-Z a-z 0-9 - _ . ~`), and `/` too unless `keep_slash`.
pub fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b'/' if keep_slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The query string as signed, and as sent: pairs encoded, sorted, joined.
pub fn canonical_query(query: &[(&str, &str)]) -> String {
    let mut q: Vec<(String, String)> = query
        .iter()
        .map(|(k, v)| (uri_encode(k, false), uri_encode(v, false)))
        .collect();
    q.sort();
    q.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

fn hmac_sha256(key: &[u8], data: &str) -> Vec<u8> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    m.update(data.as_bytes());
    m.finalize().into_bytes().to_vec()
}

impl Signer {
    /// Signs a request for `method` on `host` (as sent in `Host`), with the
    /// already-encoded `path` and [`canonical_query`], at time `now`, for a
    /// body whose hash is `content_sha256`.
    pub fn sign(
        &self,
        method: &str,
        host: &str,
        path: &str,
        canonical_query: &str,
        content_sha256: &str,
        now: DateTime<Utc>,
    ) -> Signed {
        let amz_date = now.format("%Y%m%dT%H%M%SZ").to_string();
        let date = &amz_date[..8];
        let signed_headers = "host;x-amz-content-sha256;x-amz-date";
        let canonical = format!(
            "{method}\n{path}\n{canonical_query}\nhost:{host}\nx-amz-content-sha256:{content_sha256}\nx-amz-date:{amz_date}\n\n{signed_headers}\n{content_sha256}"
        );
        let scope = format!("{date}/{}/s3/aws4_request", self.region);
        let to_sign = format!(
            "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
            payload_hash(canonical.as_bytes())
        );
        let k_date = hmac_sha256(format!("AWS4{}", self.secret_access_key).as_bytes(), date);
        let k_region = hmac_sha256(&k_date, &self.region);
        let k_service = hmac_sha256(&k_region, "s3");
        let k_signing = hmac_sha256(&k_service, "aws4_request");
        let signature = hex::encode(hmac_sha256(&k_signing, &to_sign));
        Signed {
            authorization: format!(
                "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
                self.access_key_id
            ),
            amz_date,
            content_sha256: content_sha256.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The "GET Bucket (List Objects)" example of the S3 SigV4
    /// documentation, which signs exactly the headers this signer signs:
    /// its published signature.
    #[test]
    fn matches_the_documented_example() {
        let s = Signer {
            access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
            region: "us-east-1".into(),
        };
        let now = DateTime::parse_from_rfc3339("2013-05-24T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let signed = s.sign(
            "GET",
            "examplebucket.s3.amazonaws.com",
            "/",
            &canonical_query(&[("prefix", "J"), ("max-keys", "2")]),
            &payload_hash(b""),
            now,
        );
        assert_eq!(
            signed.authorization,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
             SignedHeaders=host;x-amz-content-sha256;x-amz-date, \
             Signature=34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"
        );
        assert_eq!(signed.amz_date, "20130524T000000Z");
    }

    #[test]
    fn encodes_like_sigv4() {
        assert_eq!(uri_encode("a b/c~d+é", true), "a%20b/c~d%2B%C3%A9");
        assert_eq!(uri_encode("a/b=", false), "a%2Fb%3D");
    }
}
