//! Logging to stderr with sd-daemon priority prefixes (`<3>` error … `<7>` debug).
//!
//! journald reads the prefix as the priority; on a terminal it is still readable. The level
//! is set once at start (`-v` raises it). Nothing logged here may contain a secret: callers
//! log names, ids and error messages, which never carry one.

use std::sync::atomic::{AtomicU8, Ordering};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Level {
    Error = 3,
    Warning = 4,
    Notice = 5,
    Info = 6,
    Debug = 7,
}

static MAX_LEVEL: AtomicU8 = AtomicU8::new(Level::Notice as u8);

/// Level from the count of `-v` flags: none → notice, 1 → info, 2 or more → debug.
pub fn set_verbosity(v: u8) {
    let level = match v {
        0 => Level::Notice,
        1 => Level::Info,
        _ => Level::Debug,
    };
    MAX_LEVEL.store(level as u8, Ordering::Relaxed);
}

pub fn enabled(level: Level) -> bool {
    level as u8 <= MAX_LEVEL.load(Ordering::Relaxed)
}

pub fn write(level: Level, args: std::fmt::Arguments) {
    if enabled(level) {
        use std::io::Write;
        let line = format!("<{}>{}\n", level as u8, args);
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
}

#[macro_export]
macro_rules! log_error { ($($t:tt)*) => { $crate::log::write($crate::log::Level::Error, format_args!($($t)*)) } }
#[macro_export]
macro_rules! log_warn { ($($t:tt)*) => { $crate::log::write($crate::log::Level::Warning, format_args!($($t)*)) } }
#[macro_export]
macro_rules! log_notice { ($($t:tt)*) => { $crate::log::write($crate::log::Level::Notice, format_args!($($t)*)) } }
#[macro_export]
macro_rules! log_info { ($($t:tt)*) => { $crate::log::write($crate::log::Level::Info, format_args!($($t)*)) } }
#[macro_export]
macro_rules! log_debug { ($($t:tt)*) => { $crate::log::write($crate::log::Level::Debug, format_args!($($t)*)) } }
