//! How iamd reaches a server outside the node (an EST or SCEP server, the verify step's
//! endpoint): straight over TCP, through an HTTP proxy from the environment, or through
//! the link to the main node (`links.tunnel`, docs/ARCHITECTURE.md §7c) for a secondary
//! with no network of its own. Whatever the route, what runs on the connection (TLS to an
//! EST server above all) runs end to end: a proxy or the main node carries bytes only.

use crate::error::{Error, ErrorKind, Result};
use crate::secret::Secret;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The route to servers outside the node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Route {
    /// Over this node's own network (an HTTP proxy from `HTTPS_PROXY` for EST).
    #[default]
    Direct,
    /// Through iam-nodelink's tunnel socket and the link to the main node, which carries
    /// the bytes to the endpoint if its `links.tunnel_endpoints` lists it.
    Tunnel(PathBuf),
}

impl Route {
    /// The route a node's configuration gives: its link's tunnel, when `links.tunnel` is set.
    pub fn of(config: &crate::config::Config) -> Route {
        config.links.tunnel.clone().map_or(Route::Direct, Route::Tunnel)
    }
}

/// A connection to a server, over TCP or through the tunnel socket, with one deadline for
/// the whole exchange (docs/ARCHITECTURE.md §9). Every read and write is given what is left
/// of it, and fails with `TimedOut` once it has passed: a caller above (rustls, which reads
/// on inside one call until a record is complete) cannot stretch it, whatever the peer
/// trickles.
pub struct Conn {
    stream: Stream,
    deadline: Instant,
}

enum Stream {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

impl Conn {
    fn new(stream: Stream, deadline: Instant) -> Conn {
        Conn { stream, deadline }
    }

    /// When the exchange ends, whatever is still in flight.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// What is left of the deadline as the timeout of the next call, or `TimedOut`.
    fn arm(&self, write: bool) -> std::io::Result<()> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the exchange's deadline has passed",
            ));
        }
        let d = Some(left.max(Duration::from_millis(1)));
        match (&self.stream, write) {
            (Stream::Tcp(s), false) => s.set_read_timeout(d),
            (Stream::Tcp(s), true) => s.set_write_timeout(d),
            (Stream::Unix(s), false) => s.set_read_timeout(d),
            (Stream::Unix(s), true) => s.set_write_timeout(d),
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.arm(false)?;
        match &mut self.stream {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.arm(true)?;
        match &mut self.stream {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.stream {
            Stream::Tcp(s) => s.flush(),
            Stream::Unix(s) => s.flush(),
        }
    }
}

fn timed_out(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock)
}

/// Connect to `addr` (`host:port`) by `route`, within `timeout`, the proxy's or the
/// tunnel's answer included. `server` names the server in errors (`the EST server at
/// est:8443`); `env_proxy` lets `HTTPS_PROXY` apply (EST's CONNECT over TLS). Errors are
/// `timeout`, `unavailable`, or `unauthorized` when a proxy or the main node refuses.
pub fn dial(route: &Route, addr: &str, server: &str, timeout: Duration, env_proxy: bool) -> Result<Conn> {
    let deadline = Instant::now() + timeout;
    let left = || deadline.saturating_duration_since(Instant::now());
    let stalled = |what: String| Error::new(ErrorKind::Timeout, format!("{what} within {} s", timeout.as_secs_f32()));
    match route {
        Route::Tunnel(socket) => {
            let through = format!("iam-nodelink's tunnel at {}", socket.display());
            let s = crate::sys::connect::unix_within(socket, timeout).map_err(|e| {
                Error::unavailable(format!(
                    "cannot reach {server} through the link: {through}: {e} (is iam-nodelink running?)"
                ))
            })?;
            let mut conn = Conn::new(Stream::Unix(s), deadline);
            connect_through(&mut conn, addr, &through, None).map_err(|e| match e.kind {
                ErrorKind::Timeout => stalled(format!("{server} was not reached through the link")),
                _ => e.context(format!("{server} through the link")),
            })?;
            Ok(conn)
        }
        Route::Direct => {
            let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
            let proxy = if env_proxy { Proxy::from_env(host)? } else { None };
            let dial = proxy.as_ref().map_or(addr, |p| p.addr.as_str());
            let tcp = crate::sys::connect::tcp_within(dial, left()).map_err(|e| match () {
                _ if timed_out(&e) => stalled(format!("{server} did not accept the connection")),
                _ if proxy.is_some() => {
                    Error::unavailable(format!("cannot reach the proxy {dial} (HTTPS_PROXY) for {server}: {e}"))
                }
                _ => Error::unavailable(format!("cannot reach {server}: {e}")),
            })?;
            let mut conn = Conn::new(Stream::Tcp(tcp), deadline);
            if let Some(p) = &proxy {
                let through = format!("the proxy {}", p.addr);
                connect_through(&mut conn, addr, &through, p.basic.as_ref()).map_err(|e| match e.kind {
                    ErrorKind::Timeout => stalled(format!("{server} was not reached through the proxy")),
                    _ => e,
                })?;
            }
            Ok(conn)
        }
    }
}

/// An HTTP proxy for EST, from `HTTPS_PROXY` (or `https_proxy`): `[http://][user:password@]host:port`.
/// `NO_PROXY` (or `no_proxy`) lists hosts, domain suffixes or `*` that are reached directly.
struct Proxy {
    addr: String,
    basic: Option<Secret>,
}

impl Proxy {
    fn from_env(host: &str) -> Result<Option<Proxy>> {
        let var = |n: &str| std::env::var(n).ok().filter(|v| !v.trim().is_empty());
        let Some(url) = var("HTTPS_PROXY").or_else(|| var("https_proxy")) else {
            return Ok(None);
        };
        let no_proxy = var("NO_PROXY").or_else(|| var("no_proxy")).unwrap_or_default();
        let host_l = host.to_ascii_lowercase();
        for entry in no_proxy
            .split(',')
            .map(|e| e.trim().trim_start_matches('.').to_ascii_lowercase())
        {
            if entry == "*" || (!entry.is_empty() && (host_l == entry || host_l.ends_with(&format!(".{entry}")))) {
                return Ok(None);
            }
        }
        let rest = url.trim().trim_end_matches('/');
        let rest = match rest.split_once("://") {
            Some(("http", r)) => r,
            Some((scheme, _)) => {
                return Err(Error::invalid(format!(
                    "HTTPS_PROXY: a proxy reached by {scheme}:// is not supported (only http://)"
                )))
            }
            None => rest,
        };
        let (basic, hostport) = match rest.rsplit_once('@') {
            Some((userinfo, hp)) => (Some(Secret::new(userinfo.to_string())), hp),
            None => (None, rest),
        };
        let addr = if hostport.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) {
            hostport.to_string()
        } else {
            format!("{hostport}:80")
        };
        Ok(Some(Proxy { addr, basic }))
    }
}

/// How every refusal of a proxy or of the main node to carry a tunnel is worded.
const REFUSED_THE_TUNNEL: &str = " refused the tunnel to ";

/// Whether `e` is a refusal on the way to the server (a proxy's, or the main node's for an
/// endpoint it does not list), not one of the server itself.
pub fn refused_on_the_way(e: &Error) -> bool {
    e.message.contains(REFUSED_THE_TUNNEL)
}

/// Longest answer to a CONNECT.
const MAX_CONNECT_ANSWER: usize = 8192;

/// Ask `through` (an HTTP proxy, or iam-nodelink's tunnel socket, which speaks the same
/// CONNECT) for a tunnel to `target` (`host:port`) on `conn`; what follows runs through it.
/// Nothing past the answer's blank line is read.
fn connect_through(conn: &mut Conn, target: &str, through: &str, basic: Option<&Secret>) -> Result<()> {
    let mut head = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some(b) = basic {
        head.push_str(&format!(
            "Proxy-Authorization: Basic {}\r\n",
            crate::codec::pem::base64_encode(b.expose().as_bytes())
        ));
    }
    head.push_str("\r\n");
    let head = zeroize::Zeroizing::new(head);
    let io = |e: std::io::Error| {
        let kind = if timed_out(&e) {
            ErrorKind::Timeout
        } else {
            ErrorKind::Unavailable
        };
        Error::new(kind, format!("{through}: {e}"))
    };
    conn.write_all(head.as_bytes()).map_err(io)?;
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while !answer.ends_with(b"\r\n\r\n") {
        match conn.read(&mut byte) {
            Ok(0) => return Err(Error::unavailable(format!("{through} closed the connection"))),
            Ok(_) => answer.push(byte[0]),
            Err(e) if timed_out(&e) => return Err(Error::new(ErrorKind::Timeout, format!("{through} did not answer"))),
            Err(e) => return Err(io(e)),
        }
        if answer.len() > MAX_CONNECT_ANSWER {
            return Err(Error::protocol(format!("{through} sent an answer too long")));
        }
    }
    let first = String::from_utf8_lossy(&answer);
    let status_line = crate::log::escape(first.lines().next().unwrap_or("")).into_owned();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok());
    match status {
        Some(200..=299) => Ok(()),
        // 407 as RFC 9110 has it; tinyproxy answers 401.
        Some(401 | 407) => Err(Error::unauthorized(format!(
            "{through}{REFUSED_THE_TUNNEL}{target}: {status_line} (credentials in HTTPS_PROXY)"
        ))),
        // iam-nodelink: the main node refuses the endpoint (not on its list).
        Some(403) => Err(Error::unauthorized(format!(
            "{through}{REFUSED_THE_TUNNEL}{target}: {status_line}"
        ))),
        _ => Err(Error::unavailable(format!(
            "{through}{REFUSED_THE_TUNNEL}{target}: {status_line}"
        ))),
    }
}
