//! Byte streams that carry frames: reading and writing whole frames, Unix listeners, and
//! the addresses, dialers and listeners of node links (unix, vsock, Xen vchan, TCP, stdio).
//!
//! Frames are read header first; the body is allocated only after [`Header::decode`]
//! has accepted its length. Every kind of link is one boxed [`Stream`], so the layers
//! above (TLS, the link protocol) never know which carries them.

use crate::proto::wire::{FrameError, Header, HEADER_LEN};
use smol::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

fn io_err(e: io::Error) -> FrameError {
    FrameError::Io(e.to_string())
}

/// Read one frame. `Ok(None)` is a clean end of stream between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, limit: u32) -> Result<Option<(Header, Vec<u8>)>, FrameError> {
    let mut head = [0u8; HEADER_LEN];
    match r.read(&mut head[..1]).await.map_err(io_err)? {
        0 => Ok(None),
        _ => read_rest(r, head, limit).await.map(Some),
    }
}

/// Read one frame, waiting as long as it takes for it to begin, but at most `stall` for
/// the rest once its first byte has come: a peer cannot hold a reader with half a frame.
pub async fn read_frame_timed<R: AsyncRead + Unpin>(
    r: &mut R,
    limit: u32,
    stall: std::time::Duration,
) -> Result<Option<(Header, Vec<u8>)>, FrameError> {
    let mut head = [0u8; HEADER_LEN];
    if r.read(&mut head[..1]).await.map_err(io_err)? == 0 {
        return Ok(None);
    }
    smol::future::or(read_rest(r, head, limit), async {
        smol::Timer::after(stall).await;
        Err(FrameError::Stalled(stall.as_secs()))
    })
    .await
    .map(Some)
}

/// The rest of a frame whose first header byte is in `head[0]`.
async fn read_rest<R: AsyncRead + Unpin>(
    r: &mut R,
    mut head: [u8; HEADER_LEN],
    limit: u32,
) -> Result<(Header, Vec<u8>), FrameError> {
    let mut got = 1;
    while got < HEADER_LEN {
        match r.read(&mut head[got..]).await.map_err(io_err)? {
            0 => return Err(FrameError::Truncated),
            n => got += n,
        }
    }
    let header = Header::decode(&head, limit)?;
    let mut body = vec![0u8; header.body_len as usize];
    r.read_exact(&mut body).await.map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => FrameError::Truncated,
        _ => io_err(e),
    })?;
    Ok((header, body))
}

pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, frame: &[u8]) -> Result<(), FrameError> {
    w.write_all(frame).await.map_err(io_err)?;
    w.flush().await.map_err(io_err)
}

/// The blocking twin of [`read_frame`], for the command-line client.
pub fn read_frame_blocking<R: Read>(r: &mut R, limit: u32) -> Result<Option<(Header, Vec<u8>)>, FrameError> {
    let mut head = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        match r.read(&mut head[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(FrameError::Truncated),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_err(e)),
        }
    }
    let header = Header::decode(&head, limit)?;
    let mut body = vec![0u8; header.body_len as usize];
    r.read_exact(&mut body).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => FrameError::Truncated,
        _ => io_err(e),
    })?;
    Ok(Some((header, body)))
}

/// Bind a Unix socket at `path` with `mode` (and group `gid`) already set when it appears.
///
/// The socket is bound under a temporary name, given its mode and group, then renamed
/// into place, so no client ever sees it with the wrong permissions. An existing socket
/// is replaced only if nothing answers on it (a stale one); a live one or a path that is
/// not a socket is an error.
pub fn bind_unix(path: &Path, mode: u32, gid: Option<u32>) -> io::Result<UnixListener> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{} is in use by a running process (another iamd?)", path.display()),
                ));
            }
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket; refusing to replace it", path.display()),
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp)?;
    let placed = (|| {
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
        // A daemon whose own group is the socket's (Group= in its unit) needs no chown,
        // and so no CAP_CHOWN and no chown system call.
        if let Some(gid) = gid.filter(|g| std::fs::metadata(&tmp).map_or(true, |m| m.gid() != *g)) {
            std::os::unix::fs::chown(&tmp, None, Some(gid))?;
        }
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(listener)
}

/// The uid, gid, supplementary groups and pid of the process at the other end of a Unix
/// connection (SO_PEERCRED and SO_PEERGROUPS, both fixed when it connected).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCredentials {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

impl PeerCredentials {
    /// Whether the peer has `gid` as its primary or one of its supplementary groups.
    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }
}

pub fn peer_credentials(stream: &impl std::os::fd::AsFd) -> io::Result<PeerCredentials> {
    let c =
        nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials).map_err(io::Error::from)?;
    Ok(PeerCredentials {
        pid: c.pid(),
        uid: c.uid(),
        gid: c.gid(),
        groups: peer_groups(stream.as_fd())?,
    })
}

/// Supplementary groups a process may have at the most (NGROUPS_MAX on Linux).
const MAX_GROUPS: usize = 65_536;

/// The peer's supplementary groups as the kernel recorded them at connect (SO_PEERGROUPS,
/// Linux 4.13): unlike /proc/PID/status, they cannot belong to a later process of that pid.
fn peer_groups(fd: std::os::fd::BorrowedFd) -> io::Result<Vec<u32>> {
    use nix::libc;
    use std::os::fd::AsRawFd;
    let size = std::mem::size_of::<libc::gid_t>();
    let mut groups: Vec<libc::gid_t> = vec![0; 32];
    loop {
        let mut len = (groups.len() * size) as libc::socklen_t;
        // SAFETY: the buffer is `len` bytes of initialised gid_t that outlive the call, and
        // the kernel writes at most `len` bytes, setting `len` to what it wrote or needs.
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let n = len as usize / size;
        if rc == 0 {
            groups.truncate(n);
            // Kept for the connection's life: most peers have no supplementary group.
            groups.shrink_to_fit();
            return Ok(groups);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ERANGE) && n > groups.len() && n <= MAX_GROUPS {
            groups.resize(n, 0);
            continue;
        }
        return Err(e);
    }
}

/// `fut`, or a `timeout` error saying `what` did not happen within `limit`. Every step of
/// setting up a link (hello, TLS handshake) is bounded this way.
pub async fn within<T>(
    limit: std::time::Duration,
    what: impl std::fmt::Display,
    fut: impl std::future::Future<Output = crate::error::Result<T>>,
) -> crate::error::Result<T> {
    smol::future::or(fut, async {
        smol::Timer::after(limit).await;
        Err(crate::error::Error::new(
            crate::error::ErrorKind::Timeout,
            format!("{what} within {} s", limit.as_secs()),
        ))
    })
    .await
}

/// A byte stream a node link runs over.
pub trait Stream: smol::io::AsyncRead + smol::io::AsyncWrite + Send + Unpin {}
impl<T: smol::io::AsyncRead + smol::io::AsyncWrite + Send + Unpin> Stream for T {}
pub type BoxStream = Box<dyn Stream>;

/// `VMADDR_CID_ANY`: a vsock listener accepts from every context.
pub const VSOCK_CID_ANY: u32 = u32::MAX;

/// Where a node link is dialed or accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkAddr {
    Unix(std::path::PathBuf),
    Vsock {
        cid: u32,
        port: u32,
    },
    /// Xen vchan (see [`crate::proto::vchan`]): listening, the domain served (by id or by
    /// name) and the xenstore path the ring is published at; dialing, the server's domain
    /// id and that path.
    Vchan {
        domain: crate::proto::vchan::XenDomain,
        path: String,
    },
    /// `host:port` (a name is resolved when dialing).
    Tcp(String),
    /// Standard input and output: the byte pipe of `vchan-socket-proxy`, `socat` or a
    /// virtio-serial port.
    Stdio,
}

impl std::fmt::Display for LinkAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkAddr::Unix(p) => write!(f, "unix:{}", p.display()),
            LinkAddr::Vsock {
                cid: VSOCK_CID_ANY,
                port,
            } => write!(f, "vsock:{port}"),
            LinkAddr::Vsock { cid, port } => write!(f, "vsock:{cid}:{port}"),
            LinkAddr::Vchan { domain, path } => write!(f, "vchan:{domain}:{path}"),
            LinkAddr::Tcp(a) => write!(f, "tcp:{a}"),
            LinkAddr::Stdio => f.write_str("stdio"),
        }
    }
}

fn number<T: std::str::FromStr>(what: &str, s: &str) -> Result<T, String> {
    s.parse().map_err(|_| format!("\"{s}\" is not a valid {what}"))
}

impl LinkAddr {
    /// `unix:PATH`, `vsock:PORT` (any CID), `vchan:DOMAIN:PATH` (a domain id or name) or
    /// `tcp:ADDR:PORT`.
    pub fn parse_listen(s: &str) -> Result<LinkAddr, String> {
        match s.split_once(':') {
            Some(("vsock", port)) => Ok(LinkAddr::Vsock {
                cid: VSOCK_CID_ANY,
                port: number("vsock port", port)?,
            }),
            Some(("vchan", rest)) => {
                let (domain, path) = vchan_parts(s, rest)?;
                Ok(LinkAddr::Vchan {
                    domain: crate::proto::vchan::XenDomain::parse(domain)?,
                    path,
                })
            }
            Some(("unix" | "tcp", _)) => Self::parse_connect(s),
            _ => Err(format!(
                "\"{s}\" is not one of unix:PATH, vsock:PORT, vchan:DOMAIN:PATH, tcp:ADDR:PORT"
            )),
        }
    }

    /// `unix:PATH`, `vsock:CID:PORT`, `vchan:DOMID:PATH`, `tcp:HOST:PORT` or `stdio`.
    pub fn parse_connect(s: &str) -> Result<LinkAddr, String> {
        match s.split_once(':') {
            None if s == "stdio" => Ok(LinkAddr::Stdio),
            Some(("vchan", rest)) => {
                let (domain, path) = vchan_parts(s, rest)?;
                Ok(LinkAddr::Vchan {
                    domain: crate::proto::vchan::XenDomain::Id(number::<u16>("Xen domain id", domain)?.into()),
                    path,
                })
            }
            Some(("unix", path)) if path.starts_with('/') => Ok(LinkAddr::Unix(path.into())),
            Some(("unix", _)) => Err(format!("\"{s}\": a unix link needs an absolute path")),
            Some(("vsock", rest)) => {
                let (cid, port) = rest
                    .split_once(':')
                    .ok_or_else(|| format!("\"{s}\" is not vsock:CID:PORT"))?;
                Ok(LinkAddr::Vsock {
                    cid: number("vsock CID", cid)?,
                    port: number("vsock port", port)?,
                })
            }
            Some(("tcp", rest)) => match rest.rsplit_once(':') {
                Some((host, port)) if !host.is_empty() => {
                    number::<u16>("TCP port", port)?;
                    Ok(LinkAddr::Tcp(rest.into()))
                }
                _ => Err(format!("\"{s}\" is not tcp:HOST:PORT")),
            },
            _ => Err(format!(
                "\"{s}\" is not one of unix:PATH, vsock:CID:PORT, vchan:DOMID:PATH, tcp:HOST:PORT, stdio"
            )),
        }
    }

    pub fn is_tcp(&self) -> bool {
        matches!(self, LinkAddr::Tcp(_))
    }
}

/// `DOMAIN:PATH` of a vchan address: a xenstore path of printable characters, no spaces.
fn vchan_parts<'a>(s: &str, rest: &'a str) -> Result<(&'a str, String), String> {
    match rest.split_once(':') {
        Some((domain, path))
            if !path.is_empty()
                && path.len() <= 200
                && path.bytes().all(|b| b.is_ascii_graphic())
                && !path.ends_with('/')
                && !path.contains("//") =>
        {
            Ok((domain, path.to_string()))
        }
        _ => Err(format!(
            "\"{s}\" is not vchan:DOMAIN:PATH (a xenstore path such as data/aos-iam/node1)"
        )),
    }
}

/// Standard input and output as one stream (blocking reads and writes on their own threads).
struct Duplex<R, W> {
    r: R,
    w: W,
}

impl<R: smol::io::AsyncRead + Unpin, W: Unpin> smol::io::AsyncRead for Duplex<R, W> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.r).poll_read(cx, buf)
    }
}

impl<R: Unpin, W: smol::io::AsyncWrite + Unpin> smol::io::AsyncWrite for Duplex<R, W> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.w).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.w).poll_flush(cx)
    }
    fn poll_close(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.w).poll_close(cx)
    }
}

/// A stream whose first byte was read to tell TLS from a plain frame, given back first.
pub struct Prefixed {
    first: Option<u8>,
    inner: BoxStream,
}

impl Prefixed {
    /// Read the first byte of `inner` (`None` at once if it ends first).
    pub async fn peek(mut inner: BoxStream) -> io::Result<(Option<u8>, Prefixed)> {
        let mut b = [0u8; 1];
        let first = match inner.read(&mut b).await? {
            0 => None,
            _ => Some(b[0]),
        };
        Ok((first, Prefixed { first, inner }))
    }
}

impl smol::io::AsyncRead for Prefixed {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<io::Result<usize>> {
        if let (Some(b), Some(slot)) = (self.first, buf.first_mut()) {
            *slot = b;
            self.first = None;
            return std::task::Poll::Ready(Ok(1));
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl smol::io::AsyncWrite for Prefixed {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_close(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_close(cx)
    }
}

fn vsock_socket() -> io::Result<std::os::fd::OwnedFd> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
    socket(AddressFamily::Vsock, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).map_err(io::Error::from)
}

/// A connected or listening vsock socket, readable and writable like any fd: `File` reads
/// and writes with read(2)/write(2), which is all a stream socket needs.
fn vsock_async(fd: std::os::fd::OwnedFd) -> io::Result<smol::Async<std::fs::File>> {
    smol::Async::new(std::fs::File::from(fd))
}

/// Dial a node link.
pub async fn connect(addr: &LinkAddr) -> io::Result<BoxStream> {
    Ok(match addr {
        LinkAddr::Unix(p) => Box::new(smol::Async::<UnixStream>::connect(p).await?),
        LinkAddr::Tcp(a) => {
            let s = smol::net::TcpStream::connect(a.as_str()).await?;
            s.set_nodelay(true)?;
            Box::new(s)
        }
        LinkAddr::Vsock { cid, port } => {
            let (cid, port) = (*cid, *port);
            let fd = blocking::unblock(move || {
                let fd = vsock_socket()?;
                nix::sys::socket::connect(
                    std::os::fd::AsRawFd::as_raw_fd(&fd),
                    &nix::sys::socket::VsockAddr::new(cid, port),
                )
                .map_err(io::Error::from)?;
                Ok::<_, io::Error>(fd)
            })
            .await?;
            Box::new(vsock_async(fd)?)
        }
        LinkAddr::Vchan { domain, path } => {
            let crate::proto::vchan::XenDomain::Id(server) = *domain else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "a vchan is dialed by domain id",
                ));
            };
            let path = path.clone();
            Box::new(blocking::unblock(move || crate::proto::vchan::connect(server, &path)).await?)
        }
        LinkAddr::Stdio => Box::new(Duplex {
            r: blocking::Unblock::new(std::io::stdin()),
            w: blocking::Unblock::new(std::io::stdout()),
        }),
    })
}

/// A listener for node links.
pub enum LinkListener {
    Unix(smol::Async<UnixListener>),
    Tcp(smol::Async<std::net::TcpListener>),
    Vsock(smol::Async<std::fs::File>),
    Vchan(crate::proto::vchan::VchanListener),
}

/// Who is at the other end of an accepted link, for logs and admission.
#[derive(Debug, Clone)]
pub enum LinkPeer {
    Unix(PeerCredentials),
    Tcp(std::net::SocketAddr),
    Vsock {
        cid: u32,
        port: u32,
    },
    /// The Xen domain the listener granted its page to: only it can map it.
    Vchan {
        domid: u32,
    },
}

impl std::fmt::Display for LinkPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkPeer::Unix(c) => write!(f, "pid {} uid {} gid {}", c.pid, c.uid, c.gid),
            LinkPeer::Tcp(a) => write!(f, "tcp {a}"),
            LinkPeer::Vsock { cid, port } => write!(f, "vsock cid {cid} port {port}"),
            LinkPeer::Vchan { domid } => write!(f, "Xen domain {domid}"),
        }
    }
}

impl LinkListener {
    /// Listen on `addr`; a unix listener gets `mode` and `gid` as [`bind_unix`] gives them.
    pub fn bind(addr: &LinkAddr, mode: u32, gid: Option<u32>) -> io::Result<LinkListener> {
        Ok(match addr {
            LinkAddr::Unix(p) => LinkListener::Unix(smol::Async::new(bind_unix(p, mode, gid)?)?),
            LinkAddr::Tcp(a) => LinkListener::Tcp(smol::Async::new(std::net::TcpListener::bind(a.as_str())?)?),
            LinkAddr::Vsock { cid, port } => {
                use std::os::fd::AsRawFd;
                let fd = vsock_socket()?;
                nix::sys::socket::bind(fd.as_raw_fd(), &nix::sys::socket::VsockAddr::new(*cid, *port))
                    .map_err(io::Error::from)?;
                nix::sys::socket::listen(&fd, nix::sys::socket::Backlog::new(64).map_err(io::Error::from)?)
                    .map_err(io::Error::from)?;
                LinkListener::Vsock(vsock_async(fd)?)
            }
            LinkAddr::Vchan { domain, path } => {
                LinkListener::Vchan(crate::proto::vchan::VchanListener::bind(domain.clone(), path.clone())?)
            }
            LinkAddr::Stdio => {
                return Err(io::Error::new(io::ErrorKind::InvalidInput, "stdio is not a listener"));
            }
        })
    }

    pub async fn accept(&self) -> io::Result<(BoxStream, LinkPeer)> {
        match self {
            LinkListener::Unix(l) => {
                let (s, _) = l.accept().await?;
                let peer = peer_credentials(s.get_ref())?;
                Ok((Box::new(s), LinkPeer::Unix(peer)))
            }
            LinkListener::Tcp(l) => {
                let (s, a) = l.accept().await?;
                s.get_ref().set_nodelay(true)?;
                Ok((Box::new(s), LinkPeer::Tcp(a)))
            }
            LinkListener::Vsock(l) => {
                use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
                let fd = l
                    .read_with(|f| {
                        nix::sys::socket::accept4(f.as_raw_fd(), nix::sys::socket::SockFlag::SOCK_CLOEXEC)
                            .map_err(io::Error::from)
                    })
                    .await?;
                // SAFETY: accept4 just returned this descriptor; nothing else owns it.
                let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                let addr: nix::sys::socket::VsockAddr =
                    nix::sys::socket::getpeername(fd.as_raw_fd()).map_err(io::Error::from)?;
                Ok((
                    Box::new(vsock_async(fd)?),
                    LinkPeer::Vsock {
                        cid: addr.cid(),
                        port: addr.port(),
                    },
                ))
            }
            LinkListener::Vchan(l) => {
                let (s, domid) = l.accept().await?;
                Ok((Box::new(s), LinkPeer::Vchan { domid }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::wire::{encode_frame, FrameKind, Request, DEFAULT_BODY_LIMIT};

    #[test]
    fn link_addresses_parse_and_print_back() {
        for s in [
            "unix:/run/aos-iam/link.sock",
            "vsock:5000",
            "tcp:0.0.0.0:8089",
            "tcp:[::1]:8089",
            "vchan:3:data/aos-iam/node1",
            "vchan:sec-1:data/aos-iam/node1",
        ] {
            assert_eq!(LinkAddr::parse_listen(s).unwrap().to_string(), s);
        }
        for s in [
            "unix:/x/l.sock",
            "vsock:2:5000",
            "tcp:main.local:8089",
            "stdio",
            "vchan:0:/local/domain/0/data/aos-iam/node1",
            "vchan:0:data/aos-iam/node1",
        ] {
            assert_eq!(LinkAddr::parse_connect(s).unwrap().to_string(), s);
        }
        for bad in [
            "",
            "stdio",
            "vsock:x",
            "tcp:8089",
            "unix:rel/path",
            "udp:1:2",
            "tcp:h:99999",
            "vchan:3",
            "vchan:3:",
            "vchan:3:a b",
            "vchan:3:data/",
            "vchan:3:data//x",
            "vchan:9x:data/x",
            "vchan:99999:data/x",
        ] {
            assert!(LinkAddr::parse_listen(bad).is_err(), "{bad}");
        }
        // The server is dialed by its id: a domU cannot look other domains' names up.
        for bad in ["vsock:5000", "tcp::1", "unix:", "pipe", "vchan:dom0:data/x", "vchan:0"] {
            assert!(LinkAddr::parse_connect(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn reads_back_what_was_written() {
        let frame = encode_frame(FrameKind::Request, 3, &Request::Version, DEFAULT_BODY_LIMIT).unwrap();
        let mut two = frame.clone();
        two.extend_from_slice(&frame);
        let mut r = &two[..];
        let (h, body) = read_frame_blocking(&mut r, DEFAULT_BODY_LIMIT).unwrap().unwrap();
        assert_eq!(h.id, 3);
        assert_eq!(
            crate::proto::wire::decode_body::<Request>(&body).unwrap(),
            Request::Version
        );
        assert!(read_frame_blocking(&mut r, DEFAULT_BODY_LIMIT).unwrap().is_some());
        assert!(read_frame_blocking(&mut r, DEFAULT_BODY_LIMIT).unwrap().is_none());
    }

    #[test]
    fn a_stream_ending_inside_a_frame_is_truncated() {
        let frame = encode_frame(FrameKind::Request, 3, &Request::Version, DEFAULT_BODY_LIMIT).unwrap();
        for cut in [5, HEADER_LEN] {
            let mut r = &frame[..cut];
            assert_eq!(
                read_frame_blocking(&mut r, DEFAULT_BODY_LIMIT),
                Err(FrameError::Truncated)
            );
        }
        let mut r = &frame[..];
        let got = smol::block_on(read_frame(&mut r, DEFAULT_BODY_LIMIT)).unwrap().unwrap();
        assert_eq!(got.0.id, 3);
    }

    #[test]
    fn bind_replaces_a_stale_socket_but_not_a_live_one_or_a_file() {
        let dir = std::env::temp_dir().join(format!("aos-iam-bind-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let live = bind_unix(&path, 0o600, None).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(
            bind_unix(&path, 0o600, None).unwrap_err().kind(),
            io::ErrorKind::AddrInUse
        );
        drop(live);
        let again = bind_unix(&path, 0o666, None).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o666);
        drop(again);
        let file = dir.join("plain");
        std::fs::write(&file, b"keep me").unwrap();
        assert_eq!(
            bind_unix(&file, 0o600, None).unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
        assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
