//! Where a QUIC datagram is going: its destination connection ID, read from the first
//! packet's header (RFC 9000 §17), and so which worker it belongs to. Pure: no I/O.

use crate::cid::{CID_LEN, CidKey, Tag};

/// The destination connection ID of the first packet in `datagram`: after the version in a
/// long header (its length is written), right after the first byte in a short header (its
/// length is ours, [`CID_LEN`]). `None` for a datagram too short to hold one.
pub(crate) fn destination_cid(datagram: &[u8]) -> Option<&[u8]> {
    let first = *datagram.first()?;
    if first & 0x80 != 0 {
        let len = usize::from(*datagram.get(5)?);
        if len > 20 {
            return None;
        }
        datagram.get(6..6 + len)
    } else {
        datagram.get(1..1 + CID_LEN)
    }
}

/// Who should read a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// This worker: its own connection, or an ID that is nobody's (a client's first Initial,
    /// garbage), which this worker's endpoint answers (a Retry) or drops.
    Mine,
    /// Another worker, sibling or other generation, named by the ID.
    Owner(Tag),
}

/// Routes `datagram` for the worker `me`.
pub(crate) fn route(key: &CidKey, me: Tag, datagram: &[u8]) -> Route {
    match destination_cid(datagram).and_then(|cid| key.owner(cid)) {
        Some(owner) if owner != me => Route::Owner(owner),
        _ => Route::Mine,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn long_header(dcid: &[u8]) -> Vec<u8> {
        let mut packet = vec![0xc0, 0, 0, 0, 1, dcid.len() as u8];
        packet.extend_from_slice(dcid);
        packet.extend_from_slice(&[8, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0]);
        packet
    }

    fn short_header(dcid: &[u8]) -> Vec<u8> {
        let mut packet = vec![0x40];
        packet.extend_from_slice(dcid);
        packet.extend_from_slice(&[0xaa; 30]);
        packet
    }

    #[test]
    fn reads_the_destination_of_both_header_forms() {
        let cid = [7u8; CID_LEN];
        assert_eq!(destination_cid(&long_header(&cid)), Some(&cid[..]));
        assert_eq!(
            destination_cid(&long_header(&[1, 2, 3])),
            Some(&[1, 2, 3][..])
        );
        assert_eq!(destination_cid(&short_header(&cid)), Some(&cid[..]));
        assert_eq!(destination_cid(&[]), None);
        assert_eq!(destination_cid(&[0x40, 1, 2]), None);
        assert_eq!(destination_cid(&[0xc0, 0, 0, 0, 1, 21]), None);
        assert_eq!(destination_cid(&[0xc0, 0, 0, 0, 1, 4, 1]), None);
    }

    #[test]
    fn routes_to_the_owner_named_in_the_id() {
        let key = CidKey::new(&[9; 32]);
        let (me, other) = (Tag(1), Tag(2));
        let theirs = key.seal(other, [3; 8]);
        let mine = key.seal(me, [4; 8]);
        assert_eq!(route(&key, me, &short_header(&theirs)), Route::Owner(other));
        assert_eq!(route(&key, me, &long_header(&theirs)), Route::Owner(other));
        assert_eq!(route(&key, me, &short_header(&mine)), Route::Mine);
        // A client's first Initial: an ID of its own choosing, nobody's.
        assert_eq!(route(&key, me, &long_header(&[5; 8])), Route::Mine);
        // Another key's IDs are nobody's.
        let foreign = CidKey::new(&[1; 32]).seal(other, [3; 8]);
        assert_eq!(route(&key, me, &short_header(&foreign)), Route::Mine);
    }

    proptest! {
        #[test]
        fn any_datagram_routes_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let key = CidKey::new(&[9; 32]);
            let _ = route(&key, Tag(1), &bytes);
        }
    }
}
