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
        // Formatted once; escaped (a second string) only when it holds a control character.
        let line = match escape(&line[..line.len() - 1]) {
            std::borrow::Cow::Borrowed(_) => line,
            std::borrow::Cow::Owned(escaped) => escaped + "\n",
        };
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
}

/// `text` on one line with every control character written as `\xNN` (or `\n`, `\r`,
/// `\t`): a log line is always one entry at its own priority, whatever a server, a peer or
/// a file put into the text it carries (a line feed and `<0>` would forge another entry).
pub fn escape(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
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

#[cfg(test)]
mod tests {
    #[test]
    fn a_control_character_cannot_start_another_log_entry() {
        assert_eq!(super::escape("plain text"), "plain text");
        assert_eq!(
            super::escape("HTTP/1.1 200 OK\n<0>forged\r\x1b[2J\u{85}"),
            "HTTP/1.1 200 OK\\n<0>forged\\r\\x1b[2J\\x85"
        );
    }
}
