//! The key ring's record, as the master writes it into the memory file named by
//! [`KEYS_FD`]: a fixed binary layout, checksummed. Pure: bytes in, a [`Record`] or a
//! [`RecordError`] out; the I/O is in [`keyring`](super).
//!
//! # Layout
//! All integers little-endian; [`RECORD_LEN`] bytes in all.
//!
//! | bytes | what |
//! | --- | --- |
//! | 0..8 | [`MAGIC`] |
//! | 8..12 | [`FORMAT`] |
//! | 12..16 | flags: bit 0 set when there is a previous ticket key; no other bit is set |
//! | 16..24 | serial: one more at every rotation |
//! | 24..32 | the rotation period, in seconds (1 to [`MAX_ROTATION_SECS`]) |
//! | 32..64 | the stable secret |
//! | 64..120 | the current ticket key: name (16), secret (32), creation time (8, Unix seconds) |
//! | 120..176 | the previous ticket key, as the current one (zeroes when there is none) |
//! | 176..208 | SHA-256 of bytes 0..176 |
//!
//! A reader that races a rotation's write may see half of each: the checksum tells, and it
//! reads again.

use ring::digest;

use crate::env::KEYS_FD;

/// The first bytes of every record.
pub const MAGIC: [u8; 8] = *b"GLKEYRNG";
/// The layout this crate writes and reads.
pub const FORMAT: u32 = 1;
/// The record's size in bytes.
pub const RECORD_LEN: usize = 208;
/// The longest rotation period a record may carry: 366 days.
pub const MAX_ROTATION_SECS: u64 = 366 * 24 * 60 * 60;

const FLAG_PREVIOUS: u32 = 1;
const CHECKED: usize = RECORD_LEN - 32;

/// One ticket key: a random name (sent in front of every ticket it encrypts, to find the
/// key again), its secret, and when it was made. `Debug` shows the name, never the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct TicketKey {
    name: [u8; 16],
    secret: [u8; 32],
    created: u64,
}

impl std::fmt::Debug for TicketKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TicketKey")
            .field("name", &hex(&self.name))
            .field("created", &self.created)
            .finish_non_exhaustive()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl TicketKey {
    /// A key of this name and secret, made at `created` (Unix seconds).
    pub fn new(name: [u8; 16], secret: [u8; 32], created: u64) -> TicketKey {
        TicketKey {
            name,
            secret,
            created,
        }
    }

    /// The name, sent in clear in front of each ticket.
    pub fn name(&self) -> &[u8; 16] {
        &self.name
    }

    /// The secret.
    pub fn secret(&self) -> &[u8; 32] {
        &self.secret
    }

    /// When it was made, in Unix seconds.
    pub fn created(&self) -> u64 {
        self.created
    }
}

/// The key ring as the master writes it. `Debug` shows no secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Record {
    /// One more at every rotation.
    pub serial: u64,
    /// The rotation period, in seconds: the lifetime of the tickets.
    pub rotation_secs: u64,
    /// The stable secret, never rotated.
    pub stable: [u8; 32],
    /// The key tickets are encrypted with.
    pub current: TicketKey,
    /// The key before it, which still decrypts.
    pub previous: Option<TicketKey>,
}

impl std::fmt::Debug for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Record")
            .field("serial", &self.serial)
            .field("rotation_secs", &self.rotation_secs)
            .field("current", &self.current)
            .field("previous", &self.previous)
            .finish_non_exhaustive()
    }
}

/// Why the bytes behind [`KEYS_FD`] are not a key ring. Every message names the variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// Too short or too long.
    #[error("{KEYS_FD}: the key ring is {len} bytes long, not {RECORD_LEN}")]
    Length {
        /// The length found.
        len: usize,
    },
    /// Not a key ring at all.
    #[error("{KEYS_FD}: not a key ring (no GLKEYRNG magic at its start)")]
    Magic,
    /// A layout this crate does not know.
    #[error("{KEYS_FD}: the key ring is in format {found}; this worker reads format {FORMAT}")]
    Format {
        /// The format found.
        found: u32,
    },
    /// The checksum does not match: a torn read (the master was writing) or a corrupt ring.
    #[error("{KEYS_FD}: the key ring's checksum does not match (read while written, or corrupt)")]
    Checksum,
    /// Flags this crate does not know.
    #[error("{KEYS_FD}: the key ring has unknown flags {flags:#x}")]
    Flags {
        /// The flags found.
        flags: u32,
    },
    /// A rotation period of zero or above [`MAX_ROTATION_SECS`].
    #[error(
        "{KEYS_FD}: the key ring's rotation period {secs}s is not between 1 and {MAX_ROTATION_SECS}"
    )]
    Rotation {
        /// The period found, in seconds.
        secs: u64,
    },
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

fn key_at(bytes: &[u8], at: usize) -> TicketKey {
    let mut name = [0u8; 16];
    let mut secret = [0u8; 32];
    name.copy_from_slice(&bytes[at..at + 16]);
    secret.copy_from_slice(&bytes[at + 16..at + 48]);
    TicketKey {
        name,
        secret,
        created: u64_at(bytes, at + 48),
    }
}

fn put_key(out: &mut [u8], at: usize, key: &TicketKey) {
    out[at..at + 16].copy_from_slice(&key.name);
    out[at + 16..at + 48].copy_from_slice(&key.secret);
    out[at + 48..at + 56].copy_from_slice(&key.created.to_le_bytes());
}

impl Record {
    /// The record's bytes, checksum included.
    pub fn encode(&self) -> [u8; RECORD_LEN] {
        let mut out = [0u8; RECORD_LEN];
        out[0..8].copy_from_slice(&MAGIC);
        out[8..12].copy_from_slice(&FORMAT.to_le_bytes());
        let flags = if self.previous.is_some() {
            FLAG_PREVIOUS
        } else {
            0
        };
        out[12..16].copy_from_slice(&flags.to_le_bytes());
        out[16..24].copy_from_slice(&self.serial.to_le_bytes());
        out[24..32].copy_from_slice(&self.rotation_secs.to_le_bytes());
        out[32..64].copy_from_slice(&self.stable);
        put_key(&mut out, 64, &self.current);
        if let Some(previous) = &self.previous {
            put_key(&mut out, 120, previous);
        }
        let sum = digest::digest(&digest::SHA256, &out[..CHECKED]);
        out[CHECKED..].copy_from_slice(sum.as_ref());
        out
    }

    /// Reads a record. Never panics: every input is a record or a [`RecordError`].
    ///
    /// # Errors
    /// A [`RecordError`] saying what is wrong, checked in this order: the length, the
    /// magic, the format, the checksum, the flags, the rotation period.
    ///
    /// ```
    /// use graceful_listener::keyring::{Record, RecordError, TicketKey};
    ///
    /// let record = Record {
    ///     serial: 1,
    ///     rotation_secs: 3600,
    ///     stable: [7; 32],
    ///     current: TicketKey::new([1; 16], [2; 32], 1_700_000_000),
    ///     previous: None,
    /// };
    /// let mut bytes = record.encode();
    /// assert_eq!(Record::parse(&bytes), Ok(record));
    /// bytes[40] ^= 1;
    /// let err = Record::parse(&bytes).unwrap_err();
    /// assert_eq!(err, RecordError::Checksum);
    /// assert!(err.to_string().starts_with("EINHORN_KEYS_FD: "), "{err}");
    /// ```
    pub fn parse(bytes: &[u8]) -> Result<Record, RecordError> {
        if bytes.len() != RECORD_LEN {
            return Err(RecordError::Length { len: bytes.len() });
        }
        if bytes[0..8] != MAGIC {
            return Err(RecordError::Magic);
        }
        let format = u32_at(bytes, 8);
        if format != FORMAT {
            return Err(RecordError::Format { found: format });
        }
        let sum = digest::digest(&digest::SHA256, &bytes[..CHECKED]);
        // Not secret (anyone who can read the ring can compute it): a plain comparison.
        if sum.as_ref() != &bytes[CHECKED..] {
            return Err(RecordError::Checksum);
        }
        let flags = u32_at(bytes, 12);
        if flags & !FLAG_PREVIOUS != 0 {
            return Err(RecordError::Flags { flags });
        }
        let rotation_secs = u64_at(bytes, 24);
        if !(1..=MAX_ROTATION_SECS).contains(&rotation_secs) {
            return Err(RecordError::Rotation {
                secs: rotation_secs,
            });
        }
        let mut stable = [0u8; 32];
        stable.copy_from_slice(&bytes[32..64]);
        Ok(Record {
            serial: u64_at(bytes, 16),
            rotation_secs,
            stable,
            current: key_at(bytes, 64),
            previous: (flags & FLAG_PREVIOUS != 0).then(|| key_at(bytes, 120)),
        })
    }

    /// The record after a rotation to `fresh` (a new random key): the current key becomes
    /// the previous one, the one before it is forgotten, the serial goes up by one.
    pub fn rotated(&self, fresh: TicketKey) -> Record {
        Record {
            serial: self.serial.wrapping_add(1),
            rotation_secs: self.rotation_secs,
            stable: self.stable,
            current: fresh,
            previous: Some(self.current.clone()),
        }
    }

    /// When the current key is due to be rotated, in Unix seconds.
    pub fn due(&self) -> u64 {
        self.current.created.saturating_add(self.rotation_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record(previous: bool) -> Record {
        Record {
            serial: 42,
            rotation_secs: 21_600,
            stable: [9; 32],
            current: TicketKey::new([1; 16], [2; 32], 1_800_000_000),
            previous: previous.then(|| TicketKey::new([3; 16], [4; 32], 1_799_978_400)),
        }
    }

    /// `bytes` with its checksum made right again (to reach the checks after it).
    fn resealed(mut bytes: [u8; RECORD_LEN]) -> [u8; RECORD_LEN] {
        let sum = digest::digest(&digest::SHA256, &bytes[..CHECKED]);
        bytes[CHECKED..].copy_from_slice(sum.as_ref());
        bytes
    }

    #[test]
    fn a_record_round_trips_with_and_without_a_previous_key() {
        for previous in [false, true] {
            let r = record(previous);
            assert_eq!(Record::parse(&r.encode()), Ok(r));
        }
    }

    #[test]
    fn a_rotation_keeps_the_current_key_as_previous() {
        let r = record(true);
        let next = r.rotated(TicketKey::new([5; 16], [6; 32], r.due()));
        assert_eq!(next.serial, 43);
        assert_eq!(next.previous.as_ref(), Some(&r.current));
        assert_eq!(next.stable, r.stable);
        assert_eq!(next.due(), r.due() + r.rotation_secs);
    }

    #[test]
    fn each_check_names_what_is_wrong() {
        let good = record(true).encode();
        let mut bytes = good;
        bytes[0] = b'X';
        assert_eq!(Record::parse(&bytes), Err(RecordError::Magic));
        let mut bytes = good;
        bytes[8..12].copy_from_slice(&2u32.to_le_bytes());
        assert_eq!(Record::parse(&bytes), Err(RecordError::Format { found: 2 }));
        let mut bytes = good;
        bytes[100] ^= 0x80;
        assert_eq!(Record::parse(&bytes), Err(RecordError::Checksum));
        let mut bytes = good;
        bytes[12..16].copy_from_slice(&3u32.to_le_bytes());
        assert_eq!(
            Record::parse(&resealed(bytes)),
            Err(RecordError::Flags { flags: 3 })
        );
        for secs in [0, MAX_ROTATION_SECS + 1, u64::MAX] {
            let mut bytes = good;
            bytes[24..32].copy_from_slice(&secs.to_le_bytes());
            assert_eq!(
                Record::parse(&resealed(bytes)),
                Err(RecordError::Rotation { secs })
            );
        }
        assert_eq!(Record::parse(&[]), Err(RecordError::Length { len: 0 }));
        assert_eq!(
            Record::parse(&[good.as_slice(), &[0]].concat()),
            Err(RecordError::Length { len: 209 })
        );
        // Every message names the variable.
        for err in [
            RecordError::Magic,
            RecordError::Checksum,
            RecordError::Length { len: 1 },
            RecordError::Format { found: 0 },
            RecordError::Flags { flags: 2 },
            RecordError::Rotation { secs: 0 },
        ] {
            assert!(err.to_string().starts_with("EINHORN_KEYS_FD: "), "{err}");
        }
    }

    #[test]
    fn debug_shows_no_secret() {
        let text = format!("{:?}", record(true));
        assert!(!text.contains("9, 9") && !text.contains("[2, 2"), "{text}");
        assert!(text.contains("01010101"), "the key's name is shown: {text}");
    }

    /// A torn read: the first `cut` bytes of one record, the rest of another.
    #[test]
    fn every_torn_read_of_a_rotation_is_detected() {
        let before = record(true);
        let after = before.rotated(TicketKey::new([5; 16], [6; 32], before.due()));
        let (a, b) = (before.encode(), after.encode());
        for cut in 1..RECORD_LEN {
            let mut torn = a;
            torn[cut..].copy_from_slice(&b[cut..]);
            let parsed = Record::parse(&torn);
            // Where the two records agree up to the cut, the read is one of them.
            assert!(
                parsed == Err(RecordError::Checksum)
                    || parsed == Ok(before.clone())
                    || parsed == Ok(after.clone()),
                "cut at {cut}: {parsed:?}"
            );
        }
    }

    proptest! {
        #[test]
        fn any_bytes_are_a_record_or_an_error_never_a_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..400)
        ) {
            let _ = Record::parse(&bytes);
        }

        #[test]
        fn any_single_byte_change_is_refused(at in 0..RECORD_LEN, flip in 1u8..) {
            let mut bytes = record(true).encode();
            bytes[at] ^= flip;
            prop_assert!(Record::parse(&bytes).is_err());
        }

        #[test]
        fn any_record_round_trips(
            serial in any::<u64>(),
            secs in 1..=MAX_ROTATION_SECS,
            stable in any::<[u8; 32]>(),
            name in any::<[u8; 16]>(),
            created in any::<u64>(),
            previous in any::<bool>(),
        ) {
            let r = Record {
                serial,
                rotation_secs: secs,
                stable,
                current: TicketKey::new(name, stable, created),
                previous: previous.then(|| TicketKey::new([0; 16], [1; 32], created / 2)),
            };
            prop_assert_eq!(Record::parse(&r.encode()), Ok(r));
        }
    }
}
