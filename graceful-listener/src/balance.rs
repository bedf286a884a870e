//! Spreading connections by load across the workers that share a socket.
//!
//! Every worker of a master waits for connections on the same listening socket, and the
//! kernel wakes all of them for each one: the first awake takes it, and often the next ones
//! too, so 32 connections opened at once land 31 on one worker and 1 on the other about as
//! often as 16 on each. Keep-alive clients then stay where they landed, and the crowded
//! worker answers them late while its sibling idles: the tail latency of N workers of one
//! thread each is far worse than that of one process with N threads, which steals work
//! between them.
//!
//! `einhorn-master --balance` gives its workers a table in shared memory ([`LOAD_FD`]): each worker
//! publishes there how many connections it holds, and a worker that holds clearly more than
//! its least loaded sibling does not accept for a moment, so that the sibling takes the next
//! connection. The kernel wakes a waiting worker once per new connection (edge-triggered),
//! so a sibling that already found the queue empty would not look again: the worker holding
//! back says so in the table, and its siblings, which refresh their entries every
//! [`REFRESH`], then accept directly. Two rules keep the socket served:
//! - the least loaded worker never waits, and a worker whose entry has not been refreshed for
//!   [`STALE_AFTER`] (stopped, stalled, gone, draining) does not count;
//! - a wait lasts [`MAX_WAIT`] at most, after which the worker accepts anyway.
//!
//! Without the variable (the master's default, the real Einhorn, systemd, a worker on its
//! own) nothing changes: one relaxed load per accept. It is off by default because on a
//! machine whose load generator shares the cores, an even deal measured slower than a
//! lopsided one (the book's "Sizing" chapter has the figures).

use std::os::fd::RawFd;
use std::ptr::NonNull;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

pub use crate::env::LOAD_FD;

/// Entries in the table: a worker's entry is its `EINHORN_CHILD_INDEX` modulo this.
pub const SLOTS: usize = 64;

/// The word after the entries: when a worker last held back for a sibling (its siblings
/// then accept without waiting for the kernel's next wake-up).
const HELP_WANTED: usize = SLOTS * 2;

/// The table's size in bytes: two words per entry (connections, and when it was last
/// refreshed), and one word: when a worker last held back for a sibling.
pub const TABLE_BYTES: usize = (SLOTS * 2 + 1) * std::mem::size_of::<u64>();

/// An entry not refreshed for this long does not count: its worker is stopped, stalled,
/// draining or gone. Workers refresh theirs every [`REFRESH`].
pub const STALE_AFTER: Duration = Duration::from_millis(50);

/// How often a worker refreshes its entry while it waits for connections, and looks whether
/// a sibling holds back for it.
pub const REFRESH: Duration = Duration::from_millis(10);

/// The longest a worker holds back from accepting before it accepts anyway.
pub const MAX_WAIT: Duration = Duration::from_millis(50);

/// How often a held-back worker looks at the table again.
pub const RECHECK: Duration = Duration::from_millis(2);

/// Whether a worker holding `mine` connections should let a sibling holding `least` (the
/// fewest of all fresh siblings) take the next one: clearly more, by at least 2 and by a
/// quarter.
///
/// ```
/// use graceful_listener::balance::should_yield;
/// assert!(should_yield(31, 1));
/// assert!(should_yield(10, 8) == false);
/// assert!(should_yield(3, 0));
/// assert!(!should_yield(1, 0));
/// ```
pub fn should_yield(mine: u64, least: u64) -> bool {
    mine >= least + 2 && mine * 4 > least * 5
}

/// The shared table, mapped.
struct Table {
    words: NonNull<AtomicU64>,
    slot: usize,
}

// SAFETY: the mapping is shared memory accessed only through atomics, and lives for the
// process (never unmapped).
unsafe impl Send for Table {}
// SAFETY: as above.
unsafe impl Sync for Table {}

impl Table {
    fn word(&self, i: usize) -> &AtomicU64 {
        debug_assert!(i <= HELP_WANTED);
        // SAFETY: `i` is within the mapping of TABLE_BYTES, which is never unmapped, and
        // u64 atomics are valid for any bit pattern.
        unsafe { &*self.words.as_ptr().add(i) }
    }

    fn publish(&self, connections: u64, now_us: u64) {
        self.word(self.slot * 2)
            .store(connections, Ordering::Relaxed);
        self.word(self.slot * 2 + 1)
            .store(now_us, Ordering::Release);
    }

    /// The fewest connections of the fresh entries other than ours.
    fn least_other(&self, now_us: u64) -> Option<u64> {
        let stale = STALE_AFTER.as_micros() as u64;
        (0..SLOTS)
            .filter(|&s| s != self.slot)
            .filter_map(|s| {
                let at = self.word(s * 2 + 1).load(Ordering::Acquire);
                (at != 0 && now_us.saturating_sub(at) <= stale)
                    .then(|| self.word(s * 2).load(Ordering::Relaxed))
            })
            .min()
    }
}

/// Microseconds on the system-wide monotonic clock (the same in every process).
fn now_us() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(1, |t| {
        (t.tv_sec() as u64) * 1_000_000 + (t.tv_nsec() as u64) / 1000
    })
}

/// This worker's table, if its master gave it one (read once).
fn table() -> Option<&'static Table> {
    static TABLE: OnceLock<Option<Table>> = OnceLock::new();
    TABLE.get_or_init(open_from_env).as_ref()
}

fn open_from_env() -> Option<Table> {
    let fd: RawFd = std::env::var(LOAD_FD).ok()?.parse().ok()?;
    let index: usize = std::env::var(crate::env::CHILD_INDEX).ok()?.parse().ok()?;
    match map(fd) {
        Ok(words) => Some(Table {
            words,
            slot: index % SLOTS,
        }),
        Err(e) => {
            tracing::warn!(error = %e, fd, "{LOAD_FD}: cannot map the load table; not balancing");
            None
        }
    }
}

fn map(fd: RawFd) -> nix::Result<NonNull<AtomicU64>> {
    use nix::sys::mman::{MapFlags, ProtFlags, mmap};
    // SAFETY: the fd is the master's table, inherited for this purpose and used by nothing
    // else in this process; it is borrowed for the call only (the mapping outlives it).
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let len = std::num::NonZeroUsize::new(TABLE_BYTES).expect("non-zero");
    // SAFETY: a fresh shared mapping of the whole table, never unmapped; only atomics touch it.
    let ptr = unsafe {
        mmap(
            None,
            len,
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            MapFlags::MAP_SHARED,
            fd,
            0,
        )
    }?;
    Ok(ptr.cast())
}

/// Set once this worker stops accepting: it publishes nothing more.
static WITHDRAWN: AtomicBool = AtomicBool::new(false);

/// Set when an accept loop of ours takes part ([`take_part`]): a host that accepts on its own
/// (actix-web's accept thread) never holds back nor refreshes an entry, so it publishes none.
static TAKES_PART: AtomicBool = AtomicBool::new(false);

/// Publishes this worker's `connections` (its accept loop does, and its connections as they
/// open and close). A no-op without a table, and once withdrawn.
#[inline]
pub fn publish(connections: usize) {
    if TAKES_PART.load(Ordering::Relaxed)
        && !WITHDRAWN.load(Ordering::Relaxed)
        && let Some(table) = table()
    {
        table.publish(connections as u64, now_us());
    }
}

/// Takes this worker out of the table for good: it no longer accepts, and its siblings stop
/// comparing themselves with it (a draining worker's few connections would otherwise make
/// them hold back for a worker that takes none).
pub fn withdraw() {
    if let Some(table) = table() {
        WITHDRAWN.store(true, Ordering::Relaxed);
        table.publish(0, 0);
    }
}

/// Publishes `connections` and says whether to let a sibling take the next connection (and
/// if so, tells the siblings to look at the socket).
#[inline]
pub fn publish_and_should_wait(connections: usize) -> bool {
    let Some(table) = table() else { return false };
    if WITHDRAWN.load(Ordering::Relaxed) {
        return false;
    }
    let now = now_us();
    table.publish(connections as u64, now);
    let wait = table
        .least_other(now)
        .is_some_and(|least| should_yield(connections as u64, least));
    if wait {
        table.word(HELP_WANTED).store(now, Ordering::Release);
    }
    wait
}

/// Whether a sibling held back from accepting within the last [`STALE_AFTER`]: this worker
/// should look at the socket itself rather than wait for the kernel to wake it.
pub fn help_wanted() -> bool {
    table().is_some_and(|table| {
        let at = table.word(HELP_WANTED).load(Ordering::Acquire);
        at != 0 && now_us().saturating_sub(at) <= STALE_AFTER.as_micros() as u64
    })
}

/// Called by an accept loop: whether this worker has a table to balance with, in which case
/// it takes part from then on (its connections are published).
pub fn take_part() -> bool {
    let enabled = table().is_some();
    if enabled && !TAKES_PART.load(Ordering::Relaxed) {
        TAKES_PART.store(true, Ordering::Relaxed);
    }
    enabled
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch_table(slot: usize) -> (Vec<AtomicU64>, Table) {
        let mut words: Vec<AtomicU64> = (0..=HELP_WANTED).map(|_| AtomicU64::new(0)).collect();
        let ptr = NonNull::new(words.as_mut_ptr()).unwrap();
        (words, Table { words: ptr, slot })
    }

    #[test]
    fn the_least_loaded_fresh_sibling_is_the_one_compared_with() {
        let (_words, me) = scratch_table(0);
        let sibling = |slot| Table {
            words: me.words,
            slot,
        };
        let now = 10_000_000;
        assert_eq!(me.least_other(now), None, "alone: nothing to compare with");
        sibling(1).publish(5, now - 1_000);
        sibling(2).publish(1, now - 1_000);
        me.publish(9, now);
        assert_eq!(me.least_other(now), Some(1));
        // Stale (stopped, stalled, gone) and withdrawn entries do not count.
        sibling(2).publish(1, now - STALE_AFTER.as_micros() as u64 - 1);
        assert_eq!(me.least_other(now), Some(5));
        sibling(1).publish(0, 0);
        assert_eq!(me.least_other(now), None);
    }

    #[test]
    fn only_clearly_more_yields() {
        for least in 0..200u64 {
            for mine in 0..200u64 {
                let yields = should_yield(mine, least);
                // Never the least loaded worker, never for a difference of one.
                if mine <= least + 1 {
                    assert!(!yields, "{mine} vs {least}");
                }
                if yields {
                    assert!(mine as f64 > least as f64 * 1.25, "{mine} vs {least}");
                }
            }
        }
    }
}
