//! The operating system's side: systemd readiness, signals, external commands, the node's
//! hardware id, connections within a deadline.

pub mod command;
pub mod connect;
pub mod hwid;

/// Seconds since the Unix epoch, as the database records times.
pub fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Lock a mutex whose holder may have panicked: the data it guards stays consistent
/// (every holder leaves it whole before anything that can panic), so a poisoned lock is
/// taken as it is rather than spreading the panic.
pub fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
pub mod notify;
pub mod signals;
