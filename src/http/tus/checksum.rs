//! The checksum extension: the body of a `PATCH` carrying `Upload-Checksum`
//! is hashed while it streams; on a mismatch nothing of it is kept (460).

use sha1::Sha1;
use sha2::{Digest, Sha256};

use super::headers::{Algo, Checksum};

/// A running hash of one request body.
pub enum BodyHasher {
    Sha1(Sha1),
    Sha256(Sha256),
}

impl BodyHasher {
    pub fn new(algo: Algo) -> BodyHasher {
        match algo {
            Algo::Sha1 => BodyHasher::Sha1(Sha1::new()),
            Algo::Sha256 => BodyHasher::Sha256(Sha256::new()),
        }
    }

    pub fn update(&mut self, chunk: &[u8]) {
        match self {
            BodyHasher::Sha1(h) => h.update(chunk),
            BodyHasher::Sha256(h) => h.update(chunk),
        }
    }

    /// True when the body hashes to the client's digest.
    pub fn matches(self, expected: &Checksum) -> bool {
        let got: Vec<u8> = match self {
            BodyHasher::Sha1(h) => h.finalize().to_vec(),
            BodyHasher::Sha256(h) => h.finalize().to_vec(),
        };
        // Not a secret: a plain comparison is fine.
        got == expected.digest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_digests() {
        let c = super::super::headers::parse_checksum("sha1 Kq5sNclPz7QV2+lfQIuc6R7oRu0=").unwrap();
        let mut h = BodyHasher::new(c.algo);
        h.update(b"hello ");
        h.update(b"world");
        assert!(h.matches(&c));
        let c = super::super::headers::parse_checksum(
            "sha256 uU0nuZNNPgilLlLX2n2r+sSE7+N6U4DukIj3rOLvzek=",
        )
        .unwrap();
        let mut h = BodyHasher::new(c.algo);
        h.update(b"hello world");
        assert!(h.matches(&c));
        let mut h = BodyHasher::new(c.algo);
        h.update(b"hello there");
        assert!(!h.matches(&c));
    }
}
