//! The relay's frame: one datagram a worker read from the shared socket and hands to its
//! owner, with what the owner's QUIC endpoint needs to know of its arrival (the client's
//! address, the local address it was sent to, its ECN bits). Pure: no I/O.
//!
//! | bytes | field |
//! | --- | --- |
//! | 0 | format version, [`VERSION`] |
//! | 1 | ECN: 0 none, 1 ECT(0), 2 ECT(1), 3 CE |
//! | 2 | source family: 4 or 6 |
//! | 3..19 | source address (IPv4 in the first 4 bytes) |
//! | 19..21 | source port, big-endian |
//! | 21 | local address family: 0 unknown, 4 or 6 |
//! | 22..38 | local address |
//! | 38.. | the datagram |

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use quinn::udp::EcnCodepoint;

/// The frame format's version.
pub(crate) const VERSION: u8 = 1;
/// The header's length.
pub(crate) const HEADER_LEN: usize = 38;

/// How a datagram arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Arrival {
    /// The client's address.
    pub(crate) from: SocketAddr,
    /// The local address it was sent to, when known.
    pub(crate) to: Option<IpAddr>,
    /// Its ECN bits.
    pub(crate) ecn: Option<EcnCodepoint>,
}

/// Why a frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FrameError {
    #[error("relay frame of {0} bytes is shorter than its {HEADER_LEN}-byte header")]
    Short(usize),
    #[error("relay frame of version {0}, not {VERSION}")]
    Version(u8),
    #[error("relay frame with ECN value {0}, not 0 to 3")]
    Ecn(u8),
    #[error("relay frame with address family {0}, not 4 or 6")]
    Family(u8),
}

/// Appends the frame for `datagram` to `out` (cleared first).
pub(crate) fn encode(arrival: &Arrival, datagram: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.reserve(HEADER_LEN + datagram.len());
    out.push(VERSION);
    out.push(match arrival.ecn {
        None => 0,
        Some(EcnCodepoint::Ect0) => 1,
        Some(EcnCodepoint::Ect1) => 2,
        Some(EcnCodepoint::Ce) => 3,
    });
    put_ip(out, Some(arrival.from.ip()));
    out.extend_from_slice(&arrival.from.port().to_be_bytes());
    put_ip(out, arrival.to);
    out.extend_from_slice(datagram);
}

fn put_ip(out: &mut Vec<u8>, ip: Option<IpAddr>) {
    let mut bytes = [0u8; 16];
    let family = match ip {
        None => 0,
        Some(IpAddr::V4(v4)) => {
            bytes[..4].copy_from_slice(&v4.octets());
            4
        }
        Some(IpAddr::V6(v6)) => {
            bytes.copy_from_slice(&v6.octets());
            6
        }
    };
    out.push(family);
    out.extend_from_slice(&bytes);
}

fn get_ip(family: u8, bytes: &[u8]) -> Result<Option<IpAddr>, FrameError> {
    match family {
        0 => Ok(None),
        4 => Ok(Some(IpAddr::V4(Ipv4Addr::from(
            <[u8; 4]>::try_from(&bytes[..4]).expect("4 bytes"),
        )))),
        6 => Ok(Some(IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(bytes).expect("16 bytes"),
        )))),
        other => Err(FrameError::Family(other)),
    }
}

/// Reads a frame: how the datagram arrived, and the datagram.
pub(crate) fn decode(frame: &[u8]) -> Result<(Arrival, &[u8]), FrameError> {
    if frame.len() < HEADER_LEN {
        return Err(FrameError::Short(frame.len()));
    }
    if frame[0] != VERSION {
        return Err(FrameError::Version(frame[0]));
    }
    let ecn = match frame[1] {
        0 => None,
        1 => Some(EcnCodepoint::Ect0),
        2 => Some(EcnCodepoint::Ect1),
        3 => Some(EcnCodepoint::Ce),
        other => return Err(FrameError::Ecn(other)),
    };
    let from_ip = match frame[2] {
        0 => return Err(FrameError::Family(0)),
        family => get_ip(family, &frame[3..19])?.expect("a family was given"),
    };
    let port = u16::from_be_bytes([frame[19], frame[20]]);
    let to = get_ip(frame[21], &frame[22..38])?;
    Ok((
        Arrival {
            from: SocketAddr::new(from_ip, port),
            to,
            ecn,
        },
        &frame[HEADER_LEN..],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arrival() -> impl Strategy<Value = Arrival> {
        let ip = prop_oneof![
            any::<[u8; 4]>().prop_map(|b| IpAddr::V4(b.into())),
            any::<[u8; 16]>().prop_map(|b| IpAddr::V6(b.into())),
        ];
        let ecn = prop_oneof![
            Just(None),
            Just(Some(EcnCodepoint::Ect0)),
            Just(Some(EcnCodepoint::Ect1)),
            Just(Some(EcnCodepoint::Ce)),
        ];
        (ip.clone(), any::<u16>(), proptest::option::of(ip), ecn).prop_map(|(ip, port, to, ecn)| {
            Arrival {
                from: SocketAddr::new(ip, port),
                to,
                ecn,
            }
        })
    }

    proptest! {
        #[test]
        fn every_arrival_round_trips(arrival in arrival(), datagram in proptest::collection::vec(any::<u8>(), 0..1500)) {
            let mut frame = Vec::new();
            encode(&arrival, &datagram, &mut frame);
            let (decoded, payload) = decode(&frame).unwrap();
            prop_assert_eq!(decoded, arrival);
            prop_assert_eq!(payload, &datagram[..]);
        }

        #[test]
        fn any_bytes_decode_or_are_refused_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = decode(&bytes);
        }
    }

    #[test]
    fn each_fault_is_named() {
        let mut frame = Vec::new();
        let arrival = Arrival {
            from: "127.0.0.1:4433".parse().unwrap(),
            to: None,
            ecn: None,
        };
        encode(&arrival, b"quic", &mut frame);
        assert_eq!(decode(&frame[..10]), Err(FrameError::Short(10)));
        let mut bad = frame.clone();
        bad[0] = 2;
        assert_eq!(decode(&bad), Err(FrameError::Version(2)));
        let mut bad = frame.clone();
        bad[1] = 4;
        assert_eq!(decode(&bad), Err(FrameError::Ecn(4)));
        let mut bad = frame.clone();
        bad[2] = 0;
        assert_eq!(decode(&bad), Err(FrameError::Family(0)));
        let mut bad = frame;
        bad[21] = 5;
        assert_eq!(decode(&bad), Err(FrameError::Family(5)));
    }
}
