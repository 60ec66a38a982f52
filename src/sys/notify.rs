//! The systemd readiness protocol: one datagram to `$NOTIFY_SOCKET`.
//!
//! Written by hand (a dozen lines) rather than pulling in a crate. Abstract socket names
//! (a leading `@`) are supported, as systemd uses them.

use std::io;
use std::os::unix::net::UnixDatagram;

/// Send `state` (e.g. `READY=1`) if iamd runs under a service manager; otherwise do nothing.
pub fn notify(state: &str) -> io::Result<()> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(());
    };
    let sock = UnixDatagram::unbound()?;
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        sock.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        sock.send_to(state.as_bytes(), &path)?;
    }
    Ok(())
}
