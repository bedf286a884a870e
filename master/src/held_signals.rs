//! The stop signals blocked while a worker starts: which programs get them blocked, and what
//! happens to a stop signal a worker holds.
//!
//! A stop signal that reaches a worker between its exec and the moment its handlers exist
//! kills it by the default action. So the master starts workers with
//! [`graceful_listener::STOP_SIGNALS`] blocked (see [`crate::spawn`]): such a signal waits,
//! and a worker on graceful-listener unblocks them once its handlers are installed, which
//! delivers it. A program that knows nothing of this would never unblock them, and never
//! stop: [`BlockSignals::Auto`] (the default) blocks them only for programs whose file
//! carries graceful-listener's marker ([`graceful_listener::unblocks_stop_signals_marker`])
//! in its section, found by [`ProgramCheck`] from the ELF section headers.
//!
//! Should a worker that got them blocked still hold one (blocked, not ignored) well after
//! its start, [`HeldStops`] carries out the signal's default action with SIGKILL once the
//! worker has had [`FOREIGN_GRACE`] since its start, and says why.
//!
//! [`SignalMasks`] reads the masks from `/proc/PID/status` (pure parser, I/O apart).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::pure::state::Pid;

/// How long after its start a worker may hold a stop signal (blocked, no handler) before the
/// master takes it for a program that will never handle it.
pub const FOREIGN_GRACE: Duration = Duration::from_secs(3);

/// How often held signals are looked at again.
pub const RECHECK: Duration = Duration::from_millis(50);

/// A process's signal masks, as `/proc/PID/status` shows them for its main thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SignalMasks {
    /// `SigBlk`: blocked.
    pub blocked: u64,
    /// `SigIgn`: ignored.
    pub ignored: u64,
    /// `SigCgt`: caught by a handler.
    pub caught: u64,
}

impl SignalMasks {
    /// Parses the text of `/proc/PID/status`; `None` when a mask line is missing or is not
    /// hexadecimal.
    ///
    /// ```
    /// use einhorn_master::held_signals::SignalMasks;
    /// use nix::sys::signal::Signal;
    ///
    /// let status = "Name:\tapp\nSigBlk:\t0000000000000800\nSigIgn:\t0000000000000000\nSigCgt:\t0000000000000000\n";
    /// let masks = SignalMasks::parse(status).unwrap();
    /// assert!(masks.holds(Signal::SIGUSR2));
    /// assert!(!masks.holds(Signal::SIGTERM));
    /// ```
    pub fn parse(status: &str) -> Option<SignalMasks> {
        let field = |name: &str| {
            status.lines().find_map(|line| {
                let value = line.strip_prefix(name)?.strip_prefix(':')?;
                u64::from_str_radix(value.trim(), 16).ok()
            })
        };
        Some(SignalMasks {
            blocked: field("SigBlk")?,
            ignored: field("SigIgn")?,
            caught: field("SigCgt")?,
        })
    }

    /// Reads the masks of process `pid`.
    ///
    /// # Errors
    /// When the process is gone (or its status cannot be read or parsed).
    pub fn read(pid: Pid) -> std::io::Result<SignalMasks> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        SignalMasks::parse(&text).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("/proc/{pid}/status has no signal masks"),
            )
        })
    }

    /// Whether `signal` is blocked and not ignored: sent now, it would wait (a handler, if
    /// any, runs only once it is unblocked).
    pub fn holds(&self, signal: Signal) -> bool {
        let bit = 1u64 << (signal as u32 - 1);
        self.blocked & bit != 0 && self.ignored & bit == 0
    }
}

/// When workers start with the stop signals blocked (`--block-signals`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum BlockSignals {
    /// When the program file carries graceful-listener's marker: it unblocks them itself.
    #[default]
    Auto,
    /// Always (a wrapper script that execs a graceful-listener program, say).
    Always,
    /// Never: nothing blocked, as Einhorn starts workers.
    Never,
}

/// Decides, per program file, whether its workers start with the stop signals blocked,
/// reading each file once (by device, inode, size and modification time).
#[derive(Debug)]
pub struct ProgramCheck {
    policy: BlockSignals,
    marker: Vec<u8>,
    last: Option<(FileId, bool)>,
}

type FileId = (u64, u64, u64, i64, i64);

impl ProgramCheck {
    /// A check with this policy.
    pub fn new(policy: BlockSignals) -> ProgramCheck {
        ProgramCheck {
            policy,
            marker: graceful_listener::unblocks_stop_signals_marker(),
            last: None,
        }
    }

    /// Whether workers running `program` (as the spawn will look it up) start with the stop
    /// signals blocked: whether its file has graceful-listener's marker in its section (see
    /// [`elf_section`]). A file that cannot be read, or is not ELF, gets them unblocked.
    ///
    /// ```
    /// use einhorn_master::held_signals::{BlockSignals, ProgramCheck};
    ///
    /// let mut check = ProgramCheck::new(BlockSignals::Auto);
    /// assert!(!check.blocks("sh".as_ref()), "sh knows nothing of graceful-listener");
    /// assert!(ProgramCheck::new(BlockSignals::Always).blocks("sh".as_ref()));
    /// ```
    pub fn blocks(&mut self, program: &std::ffi::OsStr) -> bool {
        match self.policy {
            BlockSignals::Always => return true,
            BlockSignals::Never => return false,
            BlockSignals::Auto => {}
        }
        let Ok(path) = crate::exec::check_program(program) else {
            return false;
        };
        let Ok(meta) = std::fs::metadata(&path) else {
            return false;
        };
        use std::os::unix::fs::MetadataExt;
        let id = (
            meta.dev(),
            meta.ino(),
            meta.size(),
            meta.mtime(),
            meta.mtime_nsec(),
        );
        if let Some((last, blocks)) = self.last
            && last == id
        {
            return blocks;
        }
        let blocks = std::fs::File::open(&path).is_ok_and(|file| {
            elf_section(&file, graceful_listener::UNBLOCKS_STOP_SIGNALS_SECTION)
                .is_some_and(|content| content.starts_with(&self.marker))
        });
        tracing::debug!(
            "{}: {} graceful-listener's marker; workers start with the stop signals {}",
            path.display(),
            if blocks { "carries" } else { "does not carry" },
            if blocks { "blocked" } else { "unblocked" },
        );
        self.last = Some((id, blocks));
        blocks
    }
}

/// The content of the section named `name` of the 64-bit little-endian ELF file `file`, read
/// from its section headers (a few small reads, however large the program); `None` when the
/// file is not such an ELF file, has no such section, or the section is above 64 KiB (this
/// reads markers, not code).
///
/// ```
/// use einhorn_master::held_signals::elf_section;
///
/// // A dynamically linked program names its loader in a small section.
/// let sh = std::fs::File::open("/bin/sh").unwrap();
/// assert!(elf_section(&sh, ".interp").is_some_and(|loader| loader.starts_with(b"/lib")));
/// assert!(elf_section(&sh, "graceful_listener_stop_signals").is_none());
/// ```
pub fn elf_section(file: &std::fs::File, name: &str) -> Option<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let read = |offset: u64, len: usize| -> Option<Vec<u8>> {
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, offset).ok()?;
        Some(buf)
    };
    let u16_at =
        |b: &[u8], at: usize| Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?));
    let u32_at =
        |b: &[u8], at: usize| Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?));
    let u64_at =
        |b: &[u8], at: usize| Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?));
    let header = read(0, 64)?;
    // ELF magic, 64-bit, little-endian.
    if header[..4] != *b"\x7fELF" || header[4] != 2 || header[5] != 1 {
        return None;
    }
    let table = u64_at(&header, 0x28)?;
    let entry = usize::from(u16_at(&header, 0x3A)?);
    let count = usize::from(u16_at(&header, 0x3C)?);
    let names_index = usize::from(u16_at(&header, 0x3E)?);
    // Bounded: a real program has a few dozen sections.
    if entry < 64 || count == 0 || count > 4096 || names_index >= count {
        return None;
    }
    let headers = read(table, entry * count)?;
    let section = |i: usize| {
        let h = headers.get(i * entry..(i + 1) * entry)?;
        Some((u32_at(h, 0)?, u64_at(h, 24)?, u64_at(h, 32)?))
    };
    let (_, names_at, names_len) = section(names_index)?;
    if names_len > 1 << 20 {
        return None;
    }
    let names = read(names_at, usize::try_from(names_len).ok()?)?;
    (0..count).find_map(|i| {
        let (name_at, offset, size) = section(i)?;
        let rest = names.get(usize::try_from(name_at).ok()?..)?;
        let end = rest.iter().position(|&b| b == 0)?;
        if rest[..end] != *name.as_bytes() || size > 1 << 16 {
            return None;
        }
        read(offset, usize::try_from(size).ok()?)
    })
}

/// What [`HeldStops::check`] found for one worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Still held, within the grace: look again later.
    Waiting,
    /// Handled or gone: nothing more to do.
    Released,
    /// Held past the grace: the program never handles it.
    Foreign,
}

/// Decides what to do about a held stop signal. Pure.
///
/// ```
/// use std::time::{Duration, Instant};
/// use einhorn_master::held_signals::{FOREIGN_GRACE, SignalMasks, Verdict, verdict};
/// use nix::sys::signal::Signal;
///
/// let held = SignalMasks { blocked: 1 << 11, ..Default::default() };
/// let start = Instant::now();
/// assert_eq!(verdict(Some(held), Signal::SIGUSR2, start, start), Verdict::Waiting);
/// assert_eq!(verdict(Some(held), Signal::SIGUSR2, start, start + FOREIGN_GRACE), Verdict::Foreign);
/// assert_eq!(verdict(None, Signal::SIGUSR2, start, start), Verdict::Released);
/// ```
pub fn verdict(
    masks: Option<SignalMasks>,
    signal: Signal,
    spawned_at: Instant,
    now: Instant,
) -> Verdict {
    match masks {
        Some(masks) if masks.holds(signal) => {
            if now >= spawned_at + FOREIGN_GRACE {
                Verdict::Foreign
            } else {
                Verdict::Waiting
            }
        }
        _ => Verdict::Released,
    }
}

/// The stop signals sent to workers that hold them; see the [module documentation](self).
#[derive(Debug, Default)]
pub struct HeldStops {
    started: HashMap<Pid, Instant>,
    held: HashMap<Pid, Signal>,
    warned: bool,
}

impl HeldStops {
    /// Worker `pid` was started at `at` with the stop signals blocked.
    pub fn started(&mut self, pid: Pid, at: Instant) {
        self.started.insert(pid, at);
    }

    /// Worker `pid` was reaped.
    pub fn exited(&mut self, pid: Pid) {
        self.started.remove(&pid);
        self.held.remove(&pid);
    }

    /// A stop signal was just sent to `pid`: watch it if the worker holds it.
    pub fn sent(&mut self, pid: Pid, signal: Signal) {
        if !self.started.contains_key(&pid) || !graceful_listener::STOP_SIGNALS.contains(&signal) {
            return;
        }
        if SignalMasks::read(pid).is_ok_and(|m| m.holds(signal)) {
            self.held.insert(pid, signal);
        }
    }

    /// When to look again, if anything is held.
    pub fn next_check(&self, now: Instant) -> Option<Instant> {
        (!self.held.is_empty()).then(|| now + RECHECK)
    }

    /// Looks at every held signal; returns the workers to end with SIGKILL (the default
    /// action of the signal they never handle), logging why.
    pub fn check(&mut self, now: Instant) -> Vec<Pid> {
        let mut foreign = Vec::new();
        self.held.retain(|&pid, &mut signal| {
            let spawned_at = self.started.get(&pid).copied().unwrap_or(now);
            match verdict(SignalMasks::read(pid).ok(), signal, spawned_at, now) {
                Verdict::Waiting => true,
                Verdict::Released => false,
                Verdict::Foreign => {
                    foreign.push((pid, signal));
                    false
                }
            }
        });
        for &(pid, signal) in &foreign {
            if !self.warned {
                self.warned = true;
                tracing::warn!(
                    "worker {pid} still keeps {} blocked {}s after its start: it does not \
                     unblock the stop signals as graceful-listener workers do once their \
                     handlers are installed; ending it with SIGKILL, as the signal's default \
                     action would (start the master with --block-signals never to give such \
                     programs the signals unblocked)",
                    signal.as_str(),
                    FOREIGN_GRACE.as_secs_f64()
                );
            } else {
                tracing::info!(
                    "worker {pid} still keeps {} blocked; ending it with SIGKILL",
                    signal.as_str()
                );
            }
        }
        foreign.into_iter().map(|(pid, _)| pid).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_parse_from_a_real_status_and_bits_name_signals() {
        let text = std::fs::read_to_string("/proc/self/status").unwrap();
        let masks = SignalMasks::parse(&text).unwrap();
        assert_eq!(masks, SignalMasks::read(std::process::id() as Pid).unwrap());
        let masks = SignalMasks {
            blocked: 1 << (Signal::SIGTERM as u32 - 1),
            ..Default::default()
        };
        assert!(masks.holds(Signal::SIGTERM));
        assert!(!masks.holds(Signal::SIGUSR2));
        let ignored = SignalMasks {
            ignored: masks.blocked,
            ..masks
        };
        assert!(!ignored.holds(Signal::SIGTERM), "ignored: nothing waits");
        assert_eq!(
            SignalMasks::parse("SigBlk:\tzz\nSigIgn:\t0\nSigCgt:\t0\n"),
            None
        );
        assert_eq!(SignalMasks::parse("Name: x\n"), None);
    }
}
