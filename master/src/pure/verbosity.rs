//! Log levels as the master counts them: steps from `info` (`-q` and `quieter` take one away,
//! `-v` and `louder` add one), and their names. Which logger the level reaches is the
//! shell's business ([`log_level`](crate::log_level)).

use tracing::level_filters::LevelFilter;

/// The level `offset` steps from `info`: `-1` warn, `-2` error, `-3` off, `1` debug, `2`
/// trace (as `-q` and `-v` count).
///
/// ```
/// use einhorn_master::pure::verbosity::level;
/// use tracing::level_filters::LevelFilter;
/// assert_eq!(level(0), LevelFilter::INFO);
/// assert_eq!(level(-1), LevelFilter::WARN);
/// assert_eq!(level(9), LevelFilter::TRACE);
/// ```
pub fn level(offset: i8) -> LevelFilter {
    match offset {
        i8::MIN..=-3 => LevelFilter::OFF,
        -2 => LevelFilter::ERROR,
        -1 => LevelFilter::WARN,
        0 => LevelFilter::INFO,
        1 => LevelFilter::DEBUG,
        2..=i8::MAX => LevelFilter::TRACE,
    }
}

/// The name of the level `offset` steps from `info` (`warn`, `off`, ...).
///
/// ```
/// assert_eq!(einhorn_master::pure::verbosity::level_name(-3), "off");
/// ```
pub fn level_name(offset: i8) -> String {
    level(offset).to_string().to_lowercase()
}
