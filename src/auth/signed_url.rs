//! Signed links. Download links: `/s/{file_id}.{expires}.{sig}` where `sig` is an
//! HMAC-SHA256 over the file id, its owner and the expiry. The owner is not
//! in the URL; it is read from the file row, so a link for a deleted or
//! re-owned file stops working. Any change to any part answers 403.
//!
//! A token is accepted only in exactly the form [`sign`] writes: the id as 32
//! lowercase hex digits, the expiry as plain decimal, the signature as
//! unpadded base64url. Lenient parsers would accept the same link under many
//! spellings (uppercase or braced UUIDs, `+0190…` expiries), which breaks
//! anything that keys on the URL, such as caches, logs and revocation lists.
//!
//! Signed upload URLs and archive links carry a payload instead of a file id
//! ([`sign_payload`]), in the same canonical form, with the [`Purpose`] in
//! the MAC.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD as B64, Engine};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use uuid::Uuid;

fn mac(secret: &[u8], file: Uuid, owner: &str, expires: i64) -> Hmac<Sha256> {
    let mut m = Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
    m.update(b"stowage-signed-url\0");
    m.update(file.as_bytes());
    m.update(owner.as_bytes());
    m.update(b"\0");
    m.update(&expires.to_be_bytes());
    m
}

/// The token part of a signed URL.
pub fn sign(secret: &[u8], file: Uuid, owner: &str, expires: i64) -> String {
    let sig = mac(secret, file, owner, expires).finalize().into_bytes();
    format!("{}.{}.{}", file.simple(), expires, B64.encode(sig))
}

/// Splits a token into its parts without checking the signature; `None`
/// unless the token is in the canonical form [`sign`] writes.
pub fn parse(token: &str) -> Option<(Uuid, i64, Vec<u8>)> {
    let mut it = token.split('.');
    let (id, exp, sig) = (it.next()?, it.next()?, it.next()?);
    if it.next().is_some() {
        return None;
    }
    let pid = Uuid::try_parse(id).ok()?;
    let pexp: i64 = exp.parse().ok()?;
    let psig = B64.decode(sig).ok()?;
    let canonical =
        pid.simple().to_string() == id && pexp.to_string() == exp && B64.encode(&psig) == sig;
    canonical.then_some((pid, pexp, psig))
}

/// Constant-time check of the signature for `owner`.
pub fn check(secret: &[u8], file: Uuid, owner: &str, expires: i64, sig: &[u8]) -> bool {
    mac(secret, file, owner, expires).verify_slice(sig).is_ok()
}

/// What a payload token grants. Part of the MAC, so a token issued for one
/// purpose never works for another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// A single-use upload (`/u/…`); the payload is the upload's id.
    Upload,
    /// A package archive (`/s/archive/…`); the payload names the owner and
    /// the files.
    Archive,
}

impl Purpose {
    fn domain(self) -> &'static [u8] {
        match self {
            Purpose::Upload => b"stowage-signed-upload\0",
            Purpose::Archive => b"stowage-signed-archive\0",
        }
    }
}

fn payload_mac(secret: &[u8], purpose: Purpose, payload: &[u8], expires: i64) -> Hmac<Sha256> {
    let mut m = Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
    m.update(purpose.domain());
    m.update(&(payload.len() as u64).to_be_bytes());
    m.update(payload);
    m.update(&expires.to_be_bytes());
    m
}

/// A token `{payload}.{expires}.{sig}` carrying `payload` (unpadded
/// base64url) signed for `purpose`.
pub fn sign_payload(secret: &[u8], purpose: Purpose, payload: &[u8], expires: i64) -> String {
    let sig = payload_mac(secret, purpose, payload, expires)
        .finalize()
        .into_bytes();
    format!("{}.{}.{}", B64.encode(payload), expires, B64.encode(sig))
}

/// The payload and expiry of a token [`sign_payload`] wrote for `purpose`,
/// when it is in exactly that form and its signature holds; the caller
/// checks the expiry.
pub fn open_payload(secret: &[u8], purpose: Purpose, token: &str) -> Option<(Vec<u8>, i64)> {
    let mut it = token.split('.');
    let (p, exp, sig) = (it.next()?, it.next()?, it.next()?);
    if it.next().is_some() {
        return None;
    }
    let payload = B64.decode(p).ok()?;
    let pexp: i64 = exp.parse().ok()?;
    let psig = B64.decode(sig).ok()?;
    let canonical =
        B64.encode(&payload) == p && pexp.to_string() == exp && B64.encode(&psig) == sig;
    if !canonical {
        return None;
    }
    payload_mac(secret, purpose, &payload, pexp)
        .verify_slice(&psig)
        .ok()?;
    Some((payload, pexp))
}

#[cfg(test)]
mod tests {
    #[test]
    fn payload_tokens_hold_only_as_issued_and_for_their_purpose() {
        let t = sign_payload(b"k", Purpose::Upload, b"abc", 1_900_000_000);
        assert_eq!(
            open_payload(b"k", Purpose::Upload, &t),
            Some((b"abc".to_vec(), 1_900_000_000))
        );
        assert_eq!(open_payload(b"k", Purpose::Archive, &t), None);
        assert_eq!(open_payload(b"other", Purpose::Upload, &t), None);
        let (p, rest) = t.split_once('.').unwrap();
        let (exp, sig) = rest.split_once('.').unwrap();
        for altered in [
            format!("{p}.{}.{sig}", 1_900_000_001),
            format!("{p}.0{exp}.{sig}"),
            format!("{p}=.{exp}.{sig}"),
            format!("{}.{exp}.{sig}", B64.encode(b"abd")),
            format!("{p}.{exp}.{sig}="),
            format!("{t}.x"),
            format!("{}.{exp}.{sig}", p.to_uppercase()),
        ] {
            assert_eq!(
                open_payload(b"k", Purpose::Upload, &altered),
                None,
                "{altered}"
            );
        }
    }

    use super::*;

    #[test]
    fn tamper_is_detected() {
        let id = Uuid::new_v4();
        let t = sign(b"k", id, "alice", 1_900_000_000);
        let (pid, exp, sig) = parse(&t).unwrap();
        assert_eq!(pid, id);
        assert!(check(b"k", id, "alice", exp, &sig));
        assert!(!check(b"k", id, "bob", exp, &sig));
        assert!(!check(b"k", id, "alice", exp + 1, &sig));
        assert!(!check(b"other", id, "alice", exp, &sig));
        assert!(parse("nope").is_none());
        assert!(parse(&format!("{t}.x")).is_none());
    }

    #[test]
    fn only_the_issued_form_parses() {
        let id = Uuid::new_v4();
        let exp = 1_900_000_000_i64;
        let t = sign(b"k", id, "alice", exp);
        let (_, _, sig_bytes) = parse(&t).unwrap();
        let sig = B64.encode(&sig_bytes);
        let simple = id.simple().to_string();
        let altered = [
            format!("{}.{exp}.{sig}", simple.to_uppercase()),
            format!("{}.{exp}.{sig}", id.hyphenated()),
            format!("{{{}}}.{exp}.{sig}", id.hyphenated()),
            format!("{}.{exp}.{sig}", id.urn()),
            format!("{simple}.+{exp}.{sig}"),
            format!("{simple}.0{exp}.{sig}"),
            format!("{simple}. {exp}.{sig}"),
            format!("{simple}.{exp}.{sig}="),
            format!(
                "{simple}.{exp}.{}",
                base64::engine::general_purpose::URL_SAFE.encode(&sig_bytes)
            ),
            format!("{simple}.{exp}.{}", trailing_bits_set(&sig)),
        ];
        for a in &altered {
            assert_ne!(a, &t);
            assert!(parse(a).is_none(), "{a} was accepted");
        }
        assert!(parse(&t).is_some());
    }

    /// The same signature bytes, spelled with the unused low bits of the last
    /// character set (43 characters carry 258 bits for 256).
    fn trailing_bits_set(sig: &str) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let last = *sig.as_bytes().last().unwrap();
        let idx = ALPHABET.iter().position(|&c| c == last).unwrap();
        let mut out = sig[..sig.len() - 1].to_string();
        out.push(ALPHABET[(idx & !3) | 1] as char);
        out
    }
}
