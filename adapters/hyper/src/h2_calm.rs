//! A budget for the HTTP/2 frames a client can make the server answer: PING and SETTINGS.
//!
//! Each one costs the server a frame in reply (a PING ACK, a SETTINGS ACK), and `h2` answers
//! every one that comes: a client that floods PINGs as fast as it reads the answers gets
//! millions answered a second, each costing a wake-up, a write and a little CPU, at no cost
//! of its own. Honest clients send a handful: SETTINGS at the start and now and then, PINGs
//! to keep a connection alive or to measure the round trip (hyper's adaptive window, gRPC's
//! BDP estimate: a few a second at most). So each connection gets a bucket of
//! [`CONTROL_BURST`] answers, refilled at [`CONTROL_PER_SECOND`]; a client that empties it
//! gets a GOAWAY with `ENHANCE_YOUR_CALM` and is closed, as nginx, Go's `net/http` and Envoy
//! close clients that flood control frames.
//!
//! `h2` has no setting for this (its budgets cover DATA frames and resets, not PING or
//! SETTINGS), so the count is taken here, on the frame headers the IO reads.

use std::time::{Duration, Instant};

use crate::h2_frames::{TYPE_GOAWAY, frame};

/// How many PING and SETTINGS frames (not ACKs) a connection may send at once.
pub(crate) const CONTROL_BURST: u32 = 1000;
/// How many more it may send each second, on average, once the burst is spent.
pub(crate) const CONTROL_PER_SECOND: u32 = 100;

/// `ENHANCE_YOUR_CALM` (RFC 9113 section 7).
const ENHANCE_YOUR_CALM: u32 = 0xb;
/// The GOAWAY's debug data: said to the client's developers.
const WHY: &[u8] = b"too many PING or SETTINGS frames";

/// One connection's budget of answered control frames: a token bucket.
#[derive(Debug, Clone)]
pub(crate) struct ControlBudget {
    tokens: u32,
    /// The time up to which tokens have been earned.
    earned_to: Instant,
}

impl ControlBudget {
    pub(crate) fn new(now: Instant) -> ControlBudget {
        ControlBudget {
            tokens: CONTROL_BURST,
            earned_to: now,
        }
    }

    /// Spends a token for a frame that asks an answer, received `now`; `false` when the
    /// bucket is empty: the client is flooding.
    pub(crate) fn spend(&mut self, now: Instant) -> bool {
        let every = Duration::from_secs(1) / CONTROL_PER_SECOND;
        let elapsed = now.saturating_duration_since(self.earned_to);
        let earned = (elapsed.as_nanos() / every.as_nanos()).min(u128::from(CONTROL_BURST)) as u32;
        if earned > 0 {
            self.tokens = (self.tokens + earned).min(CONTROL_BURST);
            // A full bucket earns nothing more: what it would have earned is not banked.
            self.earned_to = if self.tokens == CONTROL_BURST {
                now
            } else {
                self.earned_to + every * earned
            };
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

/// The GOAWAY a flooding client gets: `ENHANCE_YOUR_CALM`, naming `last_stream` (the highest
/// stream the client opened) as the last one that may have been processed.
pub(crate) fn goaway_calm(last_stream: u32) -> Vec<u8> {
    let mut payload = Vec::with_capacity(8 + WHY.len());
    payload.extend_from_slice(&(last_stream & 0x7fff_ffff).to_be_bytes());
    payload.extend_from_slice(&ENHANCE_YOUR_CALM.to_be_bytes());
    payload.extend_from_slice(WHY);
    frame(TYPE_GOAWAY, 0, 0, &payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate_then_no_more() {
        let t0 = Instant::now();
        let mut budget = ControlBudget::new(t0);
        for i in 0..CONTROL_BURST {
            assert!(budget.spend(t0), "frame {i} of the burst");
        }
        assert!(!budget.spend(t0), "the burst is spent");
        // One token per 10 ms comes back.
        let every = Duration::from_secs(1) / CONTROL_PER_SECOND;
        assert!(budget.spend(t0 + every));
        assert!(!budget.spend(t0 + every + every / 2));
        assert!(budget.spend(t0 + every * 2));
        // A client at the rate is never refused, for as long as it keeps to it.
        let mut now = t0 + every * 2;
        for _ in 0..10 * CONTROL_PER_SECOND {
            now += every;
            assert!(budget.spend(now));
        }
        // A quiet while fills the bucket again, no more.
        now += Duration::from_secs(3600);
        for _ in 0..CONTROL_BURST {
            assert!(budget.spend(now));
        }
        assert!(!budget.spend(now));
    }

    #[test]
    fn the_goaway_says_enhance_your_calm_and_the_last_stream() {
        let goaway = goaway_calm(7);
        assert_eq!(&goaway[3..5], &[TYPE_GOAWAY, 0]);
        assert_eq!(&goaway[5..9], &[0, 0, 0, 0], "on stream 0");
        assert_eq!(&goaway[9..13], &7u32.to_be_bytes());
        assert_eq!(&goaway[13..17], &ENHANCE_YOUR_CALM.to_be_bytes());
        assert_eq!(&goaway[17..], WHY);
        assert_eq!(
            u32::from_be_bytes([0, goaway[0], goaway[1], goaway[2]]) as usize,
            8 + WHY.len()
        );
    }
}
