//! Connection IDs that name the worker that owns the connection, and can be checked with a
//! key every generation shares.
//!
//! A connection ID is 16 bytes: an 8-byte random nonce, then the owner's 4-byte tag and 4
//! zero bytes, XORed with a pad that only holders of the key can compute
//! (HMAC-SHA256(key, nonce)). Anyone with the key reads the owner of any ID (so every worker
//! can route a datagram to its owner), nobody without it can link two IDs of one connection
//! or forge one that validates (a random ID passes with odds of 2^-32). Pure: no I/O.

use ring::hmac;

/// The length of every connection ID this server issues.
pub(crate) const CID_LEN: usize = 16;
const NONCE_LEN: usize = 8;

/// Which worker owns a connection: random per worker process, never zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Tag(pub(crate) u32);

impl std::fmt::Display for Tag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

/// The shared key that seals and opens connection IDs.
pub(crate) struct CidKey(hmac::Key);

impl std::fmt::Debug for CidKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CidKey")
    }
}

impl CidKey {
    pub(crate) fn new(secret: &[u8; 32]) -> CidKey {
        CidKey(hmac::Key::new(hmac::HMAC_SHA256, secret))
    }

    fn pad(&self, nonce: &[u8]) -> [u8; 8] {
        let mac = hmac::sign(&self.0, nonce);
        let mut pad = [0u8; 8];
        pad.copy_from_slice(&mac.as_ref()[..8]);
        pad
    }

    /// The connection ID for `owner` with this nonce.
    pub(crate) fn seal(&self, owner: Tag, nonce: [u8; NONCE_LEN]) -> [u8; CID_LEN] {
        let pad = self.pad(&nonce);
        let mut cid = [0u8; CID_LEN];
        cid[..NONCE_LEN].copy_from_slice(&nonce);
        let mut plain = [0u8; 8];
        plain[..4].copy_from_slice(&owner.0.to_be_bytes());
        for (i, byte) in plain.iter().enumerate() {
            cid[NONCE_LEN + i] = byte ^ pad[i];
        }
        cid
    }

    /// The owner of `cid`, if it is one of ours (sealed with this key).
    pub(crate) fn owner(&self, cid: &[u8]) -> Option<Tag> {
        if cid.len() != CID_LEN {
            return None;
        }
        let pad = self.pad(&cid[..NONCE_LEN]);
        let mut plain = [0u8; 8];
        for (i, byte) in plain.iter_mut().enumerate() {
            *byte = cid[NONCE_LEN + i] ^ pad[i];
        }
        if plain[4..] != [0, 0, 0, 0] {
            return None;
        }
        let tag = u32::from_be_bytes(plain[..4].try_into().expect("4 bytes"));
        (tag != 0).then_some(Tag(tag))
    }
}

/// quinn's connection-ID generator for one worker: every ID it makes names this worker.
pub(crate) struct TaggedCids {
    pub(crate) key: std::sync::Arc<CidKey>,
    pub(crate) me: Tag,
}

impl quinn::ConnectionIdGenerator for TaggedCids {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        let mut nonce = [0u8; NONCE_LEN];
        random(&mut nonce);
        quinn::ConnectionId::new(&self.key.seal(self.me, nonce))
    }

    fn validate(&self, cid: &quinn::ConnectionId) -> Result<(), quinn_proto::InvalidCid> {
        self.key.owner(cid).map(drop).ok_or(quinn_proto::InvalidCid)
    }

    fn cid_len(&self) -> usize {
        CID_LEN
    }

    fn cid_lifetime(&self) -> Option<std::time::Duration> {
        None
    }
}

/// Fills `out` from the system's random source.
pub(crate) fn random(out: &mut [u8]) {
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), out)
        .expect("the system's random source works");
}

/// A fresh tag for this worker process.
pub(crate) fn new_tag() -> Tag {
    loop {
        let mut bytes = [0u8; 4];
        random(&mut bytes);
        let tag = u32::from_be_bytes(bytes);
        if tag != 0 {
            return Tag(tag);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(byte: u8) -> CidKey {
        CidKey::new(&[byte; 32])
    }

    proptest! {
        #[test]
        fn a_sealed_id_names_its_owner(tag in 1u32.., nonce in any::<[u8; 8]>()) {
            let cid = key(1).seal(Tag(tag), nonce);
            prop_assert_eq!(key(1).owner(&cid), Some(Tag(tag)));
        }

        #[test]
        fn another_key_does_not_read_it(tag in 1u32.., nonce in any::<[u8; 8]>()) {
            let cid = key(1).seal(Tag(tag), nonce);
            // 2^-32 odds of a false positive per case: never in a test run.
            prop_assert_eq!(key(2).owner(&cid), None);
        }

        #[test]
        fn a_flipped_bit_is_refused(tag in 1u32.., nonce in any::<[u8; 8]>(), bit in 0usize..128) {
            let mut cid = key(1).seal(Tag(tag), nonce);
            cid[bit / 8] ^= 1 << (bit % 8);
            // A flipped nonce bit changes the whole pad; a flipped tag bit names another
            // worker, which is still a valid ID: only the check bytes and nonce are refused.
            if !(64..96).contains(&bit) {
                prop_assert_eq!(key(1).owner(&cid), None);
            }
        }

        #[test]
        fn any_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            let _ = key(1).owner(&bytes);
        }
    }

    #[test]
    fn two_ids_of_one_owner_share_no_visible_bytes_but_the_nonce_is_random() {
        let key = key(7);
        let a = key.seal(Tag(42), [1; 8]);
        let b = key.seal(Tag(42), [2; 8]);
        assert_ne!(a[8..], b[8..], "the tag is not visible in clear");
        assert_eq!(key.owner(&a), key.owner(&b));
    }

    #[test]
    fn wrong_lengths_and_tag_zero_are_not_ours() {
        let key = key(3);
        assert_eq!(key.owner(&[0; 8]), None);
        assert_eq!(key.owner(&[0; 17]), None);
        let zero = key.seal(Tag(0), [9; 8]);
        assert_eq!(key.owner(&zero), None, "tag 0 is never issued");
    }

    #[test]
    fn the_generator_issues_ids_that_validate() {
        use quinn::ConnectionIdGenerator;
        let mut cids = TaggedCids {
            key: std::sync::Arc::new(key(5)),
            me: Tag(0xdead_beef),
        };
        for _ in 0..100 {
            let cid = cids.generate_cid();
            assert_eq!(cid.len(), CID_LEN);
            assert!(cids.validate(&cid).is_ok());
            assert_eq!(cids.key.owner(&cid), Some(Tag(0xdead_beef)));
        }
    }
}
