//! Following the frames of an HTTP/2 connection through the bytes that pass, without parsing
//! their payloads: where each frame starts, and its header (RFC 9113 section 4.1). Pure: the
//! IO ([`crate::io`]) feeds it what it reads and writes; [`crate::h2_hold`] and
//! [`crate::h2_calm`] act on the headers.

/// The client connection preface that precedes the first frame a server reads (RFC 9113
/// section 3.4).
pub(crate) const PREFACE_LEN: usize = 24;
/// A frame header: length (24 bits), type, flags, stream id (32 bits).
pub(crate) const HEADER_LEN: usize = 9;

/// Frame types this crate looks at.
pub(crate) const TYPE_HEADERS: u8 = 0x1;
pub(crate) const TYPE_SETTINGS: u8 = 0x4;
pub(crate) const TYPE_PING: u8 = 0x6;
pub(crate) const TYPE_GOAWAY: u8 = 0x7;
/// The ACK flag of SETTINGS and PING.
pub(crate) const FLAG_ACK: u8 = 0x1;

/// A frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FrameHeader {
    /// The payload's length.
    pub(crate) len: usize,
    pub(crate) kind: u8,
    pub(crate) flags: u8,
    /// The stream id, without the reserved bit.
    pub(crate) stream: u32,
}

impl FrameHeader {
    pub(crate) fn parse(bytes: &[u8; HEADER_LEN]) -> FrameHeader {
        FrameHeader {
            len: u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize,
            kind: bytes[3],
            flags: bytes[4],
            stream: u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]) & 0x7fff_ffff,
        }
    }

    /// A PING or SETTINGS that is not an ACK: one the receiver must answer.
    pub(crate) fn asks_an_answer(&self) -> bool {
        matches!(self.kind, TYPE_PING | TYPE_SETTINGS) && self.flags & FLAG_ACK == 0
    }
}

/// Where a stream of frames is: inside a payload (or the preface) to pass over, or in a
/// header being read.
#[derive(Debug, Clone)]
pub(crate) struct FrameCursor {
    /// Bytes to pass over before the next frame header: the preface, or a payload.
    pub(crate) skip: usize,
    /// The header being read.
    pub(crate) header: [u8; HEADER_LEN],
    pub(crate) header_len: usize,
}

impl FrameCursor {
    /// For what a server reads: the client preface first.
    pub(crate) fn after_preface() -> FrameCursor {
        FrameCursor {
            skip: PREFACE_LEN,
            header: [0; HEADER_LEN],
            header_len: 0,
        }
    }

    /// For what a server writes: a frame at once.
    pub(crate) fn at_frame_start() -> FrameCursor {
        FrameCursor {
            skip: 0,
            ..FrameCursor::after_preface()
        }
    }

    /// Whether the bytes so far end exactly where a frame does: a frame of one's own may go
    /// in here.
    pub(crate) fn at_boundary(&self) -> bool {
        self.skip == 0 && self.header_len == 0
    }

    /// Follows `bytes`, calling `on_header` with each frame header completed in them.
    pub(crate) fn feed(&mut self, bytes: &[u8], mut on_header: impl FnMut(FrameHeader)) {
        let mut i = 0;
        while i < bytes.len() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len() - i);
                self.skip -= n;
                i += n;
                continue;
            }
            let n = (HEADER_LEN - self.header_len).min(bytes.len() - i);
            self.header[self.header_len..self.header_len + n].copy_from_slice(&bytes[i..i + n]);
            self.header_len += n;
            i += n;
            if self.header_len == HEADER_LEN {
                self.header_len = 0;
                let header = FrameHeader::parse(&self.header);
                self.skip = header.len;
                on_header(header);
            }
        }
    }
}

/// A frame: its header, then `payload`.
pub(crate) fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut frame = Vec::with_capacity(HEADER_LEN + payload.len());
    frame.extend_from_slice(&len.to_be_bytes()[1..]);
    frame.extend_from_slice(&[kind, flags]);
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_found_in_any_chunking_and_boundaries_known() {
        let mut input = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        let frames = [
            frame(TYPE_SETTINGS, 0, 0, &[0; 6]),
            frame(TYPE_HEADERS, 0x5, 1, b"\x82\x86\x84"),
            frame(TYPE_PING, FLAG_ACK, 0, &[7; 8]),
            frame(TYPE_HEADERS, 0x5, 0x8000_0003, b""),
        ];
        for f in &frames {
            input.extend_from_slice(f);
        }
        for chunk in 1..=input.len() {
            let mut cursor = FrameCursor::after_preface();
            let mut seen = Vec::new();
            for piece in input.chunks(chunk) {
                cursor.feed(piece, |h| seen.push(h));
            }
            assert!(cursor.at_boundary(), "chunk {chunk}");
            let kinds: Vec<(u8, u32, usize)> =
                seen.iter().map(|h| (h.kind, h.stream, h.len)).collect();
            assert_eq!(
                kinds,
                [
                    (TYPE_SETTINGS, 0, 6),
                    (TYPE_HEADERS, 1, 3),
                    (TYPE_PING, 0, 8),
                    (TYPE_HEADERS, 3, 0)
                ],
                "chunk {chunk}: the reserved bit is not part of the stream id"
            );
            assert_eq!(
                seen.iter()
                    .map(FrameHeader::asks_an_answer)
                    .collect::<Vec<_>>(),
                [true, false, false, false]
            );
        }
        let mut cursor = FrameCursor::at_frame_start();
        cursor.feed(&frames[0][..5], |_| {});
        assert!(!cursor.at_boundary(), "in a header");
        cursor.feed(&frames[0][5..12], |_| {});
        assert!(!cursor.at_boundary(), "in a payload");
        cursor.feed(&frames[0][12..], |_| {});
        assert!(cursor.at_boundary());
    }
}
