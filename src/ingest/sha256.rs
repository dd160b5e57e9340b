//! A SHA-256 whose running state can be saved and restored, so a resumable
//! upload's whole-file hash survives between requests, processes and nodes
//! (it is stored with the upload's offset) and completion never re-reads the
//! staged data. The hashing is `sha2`'s (hardware-accelerated where the CPU
//! has it), whose 0.11 line can serialize its state; this type adds the
//! length hashed so far, to check the state against an offset.

use sha2_v11::{
    digest::common::hazmat::{SerializableState, SerializedState},
    Digest, Sha256,
};

/// Format tag of [`RunningSha256::to_bytes`].
const VERSION: u8 = 1;

/// A running SHA-256 over a stream of bytes.
#[derive(Clone, Debug, Default)]
pub struct RunningSha256 {
    h: Sha256,
    /// Bytes hashed so far.
    len: u64,
}

impl RunningSha256 {
    pub fn new() -> RunningSha256 {
        RunningSha256::default()
    }

    /// Bytes hashed so far (the offset the state covers).
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn update(&mut self, data: &[u8]) {
        self.len += data.len() as u64;
        self.h.update(data);
    }

    pub fn finish(self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.h.finalize().as_slice());
        out
    }

    /// The digest, as lowercase hex.
    pub fn finish_hex(self) -> String {
        hex::encode(self.finish())
    }

    /// The state as a little over a hundred bytes, to store beside an offset.
    pub fn to_bytes(&self) -> Vec<u8> {
        let state = self.h.serialize();
        let mut v = Vec::with_capacity(9 + state.len());
        v.push(VERSION);
        v.extend_from_slice(&self.len.to_be_bytes());
        v.extend_from_slice(state.as_slice());
        v
    }

    /// Reads [`RunningSha256::to_bytes`]; `None` for anything else.
    pub fn from_bytes(b: &[u8]) -> Option<RunningSha256> {
        if b.len() < 9 || b[0] != VERSION {
            return None;
        }
        let len = u64::from_be_bytes(b[1..9].try_into().ok()?);
        let state = SerializedState::<Sha256>::try_from(&b[9..]).ok()?;
        let h = Sha256::deserialize(&state).ok()?;
        Some(RunningSha256 { h, len })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use sha2::{Digest, Sha256};

    use super::*;

    #[test]
    fn known_answers() {
        assert_eq!(
            RunningSha256::new().finish_hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let mut h = RunningSha256::new();
        h.update(b"abc");
        assert_eq!(
            h.finish_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    proptest! {
        #[test]
        fn equals_sha256_across_saved_splits(
            data in proptest::collection::vec(any::<u8>(), 0..600),
            cuts in proptest::collection::vec(0usize..600, 0..6),
        ) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(data.len())).collect();
            cuts.sort();
            let mut h = RunningSha256::new();
            let mut at = 0;
            for c in cuts {
                h.update(&data[at..c]);
                at = c;
                // Saved and restored at every cut, as between two PATCHes.
                h = RunningSha256::from_bytes(&h.to_bytes()).unwrap();
                prop_assert_eq!(h.len(), at as u64);
            }
            h.update(&data[at..]);
            prop_assert_eq!(h.finish().to_vec(), Sha256::digest(&data).to_vec());
        }
    }

    #[test]
    fn refuses_foreign_bytes() {
        assert!(RunningSha256::from_bytes(&[]).is_none());
        let mut b = RunningSha256::new().to_bytes();
        b[0] = 9;
        assert!(RunningSha256::from_bytes(&b).is_none());
        let mut h = RunningSha256::new();
        h.update(b"xyz");
        let mut b = h.to_bytes();
        b.pop();
        assert!(RunningSha256::from_bytes(&b).is_none());
    }
}
