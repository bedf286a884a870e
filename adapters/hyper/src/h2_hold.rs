//! Holding back the client's answer to h2's shutdown PING, so that the streams racing the
//! first GOAWAY are served.
//!
//! A graceful HTTP/2 shutdown (RFC 9113 section 6.8) sends GOAWAY with the highest stream id,
//! waits "at least one round trip" for streams already on their way, then sends the final
//! GOAWAY with the last stream it processed; any stream after that is refused. The `h2` crate
//! measures the round trip with a PING and sends the final GOAWAY on its ACK. But clients
//! send a PING ACK ahead of request frames they had already queued (the `h2` client does), so
//! those requests arrive after the final GOAWAY and fail: the client's pool saw no GOAWAY
//! when it sent them, and does not retry a refused stream.
//!
//! So once the connection drains, [`PongHold`] takes that one frame (a PING with the ACK flag
//! and h2's shutdown payload) out of what the server reads, and gives it back after a grace:
//! the final GOAWAY then comes after every request the client sent before it learned of the
//! first one. Everything else passes through untouched, in order.
//!
//! It is a pure filter over the bytes read, tested on its own; [`crate::io`] runs it.

use crate::h2_frames::{FLAG_ACK, FrameCursor, FrameHeader, HEADER_LEN, TYPE_PING};
/// The payload of the PING `h2` sends to measure the shutdown's round trip
/// (`h2::frame::Ping::SHUTDOWN`).
const SHUTDOWN_PAYLOAD: [u8; 8] = [0x0b, 0x7b, 0xa2, 0xf0, 0x8b, 0x9b, 0xfe, 0x54];
/// A PING frame, header and payload.
const PING_FRAME_LEN: usize = HEADER_LEN + 8;

/// Follows the frames of an HTTP/2 connection as the server reads them, and once armed
/// removes the shutdown PING ACK, to hand back later.
#[derive(Debug, Clone)]
pub(crate) struct PongHold {
    /// Where the frames are; its header, once armed, is withheld until its type is known.
    frames: FrameCursor,
    /// How many bytes of the current header passed before the filter was armed.
    header_passed: usize,
    /// Withhold headers until their type is known, and take the shutdown PING ACK.
    armed: bool,
    /// A PING ACK being taken: its bytes so far.
    taking: Option<Vec<u8>>,
    /// The shutdown PING ACK, taken out until released.
    held: Vec<u8>,
    released: bool,
    /// The shutdown PING ACK was taken: the client answered the PING.
    answered: bool,
}

impl PongHold {
    /// A filter for a connection seen from its first byte (the client preface).
    pub(crate) fn new() -> PongHold {
        PongHold {
            frames: FrameCursor::after_preface(),
            header_passed: 0,
            armed: false,
            taking: None,
            held: Vec::new(),
            released: false,
            answered: false,
        }
    }

    /// From now on, take the shutdown PING ACK out (call it before h2 sends its PING).
    pub(crate) fn arm(&mut self) {
        if !self.armed && !self.released {
            self.armed = true;
            // A header half passed already goes on passing.
            self.header_passed = self.frames.header_len;
        }
    }

    /// Whether the filter is armed.
    pub(crate) fn is_armed(&self) -> bool {
        self.armed
    }

    /// Whether the shutdown PING ACK is held, waiting for [`PongHold::release`].
    #[cfg(test)]
    pub(crate) fn is_holding(&self) -> bool {
        !self.held.is_empty()
    }

    /// Lets the held frame go, and stops filtering: the bytes to deliver next, before
    /// anything newly read.
    pub(crate) fn release(&mut self) -> Vec<u8> {
        self.released = true;
        self.armed = false;
        std::mem::take(&mut self.held)
    }

    /// Whether the hold is over (released once): nothing more is taken.
    pub(crate) fn is_released(&self) -> bool {
        self.released
    }

    /// Whether the client has answered the shutdown PING (its ACK was taken).
    pub(crate) fn is_answered(&self) -> bool {
        self.answered
    }

    /// Follows frames through `bytes`, which pass unchanged: the filter is not armed.
    pub(crate) fn observe(&mut self, bytes: &[u8]) {
        self.frames.feed(bytes, |_| {});
    }

    /// Filters `bytes`, appending what passes to `out`. A header whose frame type is not
    /// known yet is withheld until it is, and a PING ACK is taken out.
    pub(crate) fn filter(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        if !self.armed {
            self.observe(bytes);
            out.extend_from_slice(bytes);
            return;
        }
        let mut i = 0;
        while i < bytes.len() {
            if let Some(frame) = &mut self.taking {
                let n = (PING_FRAME_LEN - frame.len()).min(bytes.len() - i);
                frame.extend_from_slice(&bytes[i..i + n]);
                i += n;
                if frame.len() == PING_FRAME_LEN {
                    let frame = self.taking.take().expect("taking");
                    if frame[HEADER_LEN..] != SHUTDOWN_PAYLOAD {
                        // Someone else's PING ACK (a keep-alive): it goes on, in place.
                        out.extend_from_slice(&frame);
                    } else {
                        self.held.extend_from_slice(&frame);
                        self.answered = true;
                    }
                }
                continue;
            }
            let frames = &mut self.frames;
            if frames.skip > 0 {
                let n = frames.skip.min(bytes.len() - i);
                out.extend_from_slice(&bytes[i..i + n]);
                frames.skip -= n;
                i += n;
                continue;
            }
            // Partly passed already if the filter was armed in the middle of this header.
            let passed = self.header_passed;
            let n = (HEADER_LEN - frames.header_len).min(bytes.len() - i);
            frames.header[frames.header_len..frames.header_len + n]
                .copy_from_slice(&bytes[i..i + n]);
            frames.header_len += n;
            i += n;
            if frames.header_len < HEADER_LEN {
                continue;
            }
            frames.header_len = 0;
            self.header_passed = 0;
            let header = frames.header;
            if passed == 0 && is_ping_ack(&FrameHeader::parse(&header)) {
                self.taking = Some(header.to_vec());
            } else {
                out.extend_from_slice(&header[passed..]);
                frames.skip = FrameHeader::parse(&header).len;
            }
        }
    }
}

fn is_ping_ack(header: &FrameHeader) -> bool {
    header.kind == TYPE_PING && header.flags & FLAG_ACK != 0 && header.len == 8
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::h2_frames::frame;

    const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn headers(stream: u32) -> Vec<u8> {
        frame(0x1, 0x4 | 0x1, stream, b"\x82\x86\x84")
    }

    fn pong(payload: [u8; 8]) -> Vec<u8> {
        frame(TYPE_PING, FLAG_ACK, 0, &payload)
    }

    /// Feeds `input` in chunks of `chunk` bytes; returns what passed.
    fn feed(hold: &mut PongHold, input: &[u8], chunk: usize) -> Vec<u8> {
        let mut passed = Vec::new();
        for piece in input.chunks(chunk) {
            hold.filter(piece, &mut passed);
        }
        passed
    }

    #[test]
    fn unarmed_everything_passes_in_any_chunking() {
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[0; 6])); // SETTINGS
        input.extend(headers(1));
        input.extend(pong(SHUTDOWN_PAYLOAD));
        input.extend(headers(3));
        for chunk in 1..=input.len() {
            let mut hold = PongHold::new();
            assert_eq!(feed(&mut hold, &input, chunk), input, "chunk {chunk}");
            assert!(!hold.is_holding());
        }
    }

    #[test]
    fn armed_the_shutdown_pong_is_taken_out_and_given_back_on_release() {
        let mut input = PREFACE.to_vec();
        input.extend(headers(1));
        input.extend(headers(3));
        let pong_at = input.len();
        input.extend(pong(SHUTDOWN_PAYLOAD));
        input.extend(headers(5));
        input.extend(frame(0x0, 0x1, 5, b"body"));
        let mut without_pong = input[..pong_at].to_vec();
        without_pong.extend_from_slice(&input[pong_at + PING_FRAME_LEN..]);
        // Armed at every point of the stream, fed in many chunk sizes.
        for arm in 0..=input.len() {
            for chunk in [1, 2, 3, 5, 8, 13, 64] {
                let mut hold = PongHold::new();
                let mut passed = feed(&mut hold, &input[..arm], chunk);
                hold.arm();
                passed.extend(feed(&mut hold, &input[arm..], chunk));
                if arm <= pong_at {
                    assert_eq!(passed, without_pong, "armed at {arm}, chunk {chunk}");
                    assert!(hold.is_holding(), "armed at {arm}, chunk {chunk}");
                    assert!(hold.is_answered());
                    assert_eq!(hold.release(), pong(SHUTDOWN_PAYLOAD));
                } else {
                    // Armed once the PONG had begun to pass: it passes whole.
                    assert_eq!(passed, input, "armed at {arm}, chunk {chunk}");
                    assert!(!hold.is_holding());
                }
                let after = headers(7);
                assert_eq!(
                    feed(&mut hold, &after, chunk),
                    after,
                    "released: passes again"
                );
            }
        }
    }

    #[test]
    fn other_pongs_pass_in_place() {
        let mut hold = PongHold::new();
        let mut input = PREFACE.to_vec();
        assert_eq!(feed(&mut hold, &input, 4), input);
        hold.arm();
        input = pong([1, 2, 3, 4, 5, 6, 7, 8]);
        input.extend(headers(1));
        assert_eq!(
            feed(&mut hold, &input, 3),
            input,
            "a keep-alive PING ACK is not held"
        );
        assert!(!hold.is_holding());
        assert!(
            !hold.is_answered(),
            "nor is it the answer to the shutdown PING"
        );
        // A PING (not an ACK) passes straight through.
        let ping = frame(TYPE_PING, 0, 0, &SHUTDOWN_PAYLOAD);
        assert_eq!(feed(&mut hold, &ping, 2), ping);
    }
}
