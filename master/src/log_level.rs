//! The master's log level, changed while it runs (`quieter`, `louder`) and kept across a
//! re-exec.
//!
//! The master library installs no logger: the program that does (the `einhorn-master`
//! binary, or an application running a [self-hosted](crate::self_hosted) master) registers a
//! [`LevelControl`] with [`set_control`], and the master calls it. Without one, `quieter` and
//! `louder` are answered but change nothing, and the log says so.

use std::sync::OnceLock;

use tracing::level_filters::LevelFilter;

use crate::pure::verbosity::level;

/// Sets the level of the logger that the master's `tracing` events go to.
pub type LevelControl = Box<dyn Fn(LevelFilter) + Send + Sync>;

static CONTROL: OnceLock<LevelControl> = OnceLock::new();

/// Registers the control of the process's logger (once; later calls are ignored).
///
/// ```
/// use tracing::level_filters::LevelFilter;
/// use tracing_subscriber::{prelude::*, reload};
///
/// let (filter, handle) = reload::Layer::new(LevelFilter::INFO);
/// let _ = tracing_subscriber::registry().with(filter).with(tracing_subscriber::fmt::layer()).try_init();
/// einhorn_master::log_level::set_control(Box::new(move |level| {
///     let _ = handle.modify(|filter| *filter = level);
/// }));
/// ```
pub fn set_control(control: LevelControl) {
    let _ = CONTROL.set(control);
}

/// Applies `offset` (steps from `info`) to the registered logger; `false` when there is none.
pub fn apply(offset: i8) -> bool {
    match CONTROL.get() {
        Some(control) => {
            control(level(offset));
            true
        }
        None => false,
    }
}
