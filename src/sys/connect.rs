//! Connections made within a deadline: a blocking connect can otherwise wait without end
//! (a Unix listener whose backlog is full, a name server or host that does not answer).

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// A Unix socket connected within `limit` (a listener whose backlog is full makes a
/// blocking connect wait without end).
pub fn unix_within(path: &Path, limit: std::time::Duration) -> std::io::Result<UnixStream> {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    use std::os::fd::AsRawFd;
    let deadline = std::time::Instant::now() + limit;
    let addr = UnixAddr::new(path).map_err(std::io::Error::from)?;
    loop {
        let fd = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(std::io::Error::from)?;
        match connect(fd.as_raw_fd(), &addr) {
            Ok(()) => {
                let stream = UnixStream::from(fd);
                stream.set_nonblocking(false)?;
                return Ok(stream);
            }
            // A full backlog: try again until the deadline.
            Err(nix::errno::Errno::EAGAIN) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            Err(nix::errno::Errno::EAGAIN) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("not accepted within {} s", limit.as_secs()),
                ))
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Connect to `addr` (host:port), trying each address it resolves to, all within
/// `timeout`: the name's resolution included (it runs on a thread of its own, left behind
/// if the resolver outlasts the deadline), and each address given what is left.
pub fn tcp_within(addr: &str, timeout: Duration) -> std::io::Result<std::net::TcpStream> {
    use std::io::{Error as IoError, ErrorKind as IoKind};
    use std::net::ToSocketAddrs;
    let deadline = Instant::now() + timeout;
    let addrs: Vec<std::net::SocketAddr> = match addr.parse::<std::net::SocketAddr>() {
        Ok(a) => vec![a],
        Err(_) => {
            let (tx, rx) = std::sync::mpsc::channel();
            let name = addr.to_string();
            std::thread::Builder::new().name("resolve".into()).spawn(move || {
                let _ = tx.send(name.to_socket_addrs().map(|a| a.collect::<Vec<_>>()));
            })?;
            match rx.recv_timeout(timeout) {
                Ok(r) => r?,
                Err(_) => {
                    return Err(IoError::new(
                        IoKind::TimedOut,
                        format!("resolving {addr} took longer than {} s", timeout.as_secs_f32()),
                    ))
                }
            }
        }
    };
    let mut last = IoError::new(IoKind::NotFound, "no address");
    for a in addrs {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(IoError::new(
                IoKind::TimedOut,
                format!("no time was left to try {a}, an address of {addr}"),
            ));
        }
        match std::net::TcpStream::connect_timeout(&a, left) {
            Ok(s) => {
                // A TLS handshake is small writes each waiting for an answer: without
                // this, Nagle's algorithm holds them for the peer's delayed ACK.
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}
