//! Tunnels through a node link (docs/ARCHITECTURE.md §7c): how a secondary with no network
//! of its own reaches its EST or SCEP server through the main node.
//!
//! On the secondary, iam-nodelink serves a Unix socket that speaks HTTP CONNECT (the
//! [`Gate`]); iamd dials it as it would dial a proxy, and runs its TLS to the EST server
//! end to end through it. Each tunnel is opened over the link (`TunnelOpen`), and its
//! bytes go both ways as `TunnelData` requests, each answered before the next is sent, so
//! a tunnel never holds more than a chunk in flight each way. On the main node, the
//! [`Relay`] dials the endpoint only if `links.tunnel_endpoints` lists it, and carries
//! bytes only: it never sees the secondary's credentials, keys or the TLS inside. A tunnel
//! lives at most `links.long_request_timeout`, ends after `links.request_timeout` without
//! a byte either way, and ends with its link; a link holds at most [`MAX_PER_LINK`], the
//! main node [`MAX_OPEN`].

use crate::config::endpoint;
use crate::error::{Error, ErrorKind, Result};
use crate::link::peer::Peer;
use crate::proto::transport;
use crate::proto::wire::{Request, Response, MAX_TUNNEL_CHUNK};
use crate::sys::lock;
use smol::io::{AsyncReadExt, AsyncWriteExt};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// Tunnels one link may hold open at once.
pub const MAX_PER_LINK: usize = 4;
/// Tunnels the main node holds open at once, on all its links.
pub const MAX_OPEN: usize = 32;
/// The longest CONNECT head iam-nodelink reads.
const MAX_HEAD: usize = 8192;

/// The main node's end: the endpoints it carries bytes to, and its tunnels on all links.
pub struct Relay {
    endpoints: Vec<String>,
    open: AtomicUsize,
    /// Without a byte either way for this long, a tunnel closes (`links.request_timeout`).
    idle: Duration,
    /// The longest a tunnel lives (`links.long_request_timeout`).
    lifetime: Duration,
}

impl Relay {
    pub fn new(config: &crate::config::LinksConfig) -> Arc<Relay> {
        Arc::new(Relay {
            endpoints: config.tunnel_endpoints.clone(),
            open: AtomicUsize::new(0),
            idle: config.request_timeout,
            lifetime: config.long_request_timeout,
        })
    }

    /// Whether this main node carries tunnels at all.
    pub fn enabled(&self) -> bool {
        !self.endpoints.is_empty()
    }
}

/// One of the main node's [`MAX_OPEN`] places, given back when its tunnel ends.
struct Place(Arc<Relay>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// An open tunnel on the main node: the connection to the endpoint, and the task that
/// carries what the endpoint sends back over the link (cancelled when dropped).
struct Open {
    tcp: smol::net::TcpStream,
    last: Arc<AtomicU64>,
    _reader: smol::Task<()>,
    _place: Place,
}

/// The tunnels of one link on the main node; dropped with the link, closing them all.
pub struct LinkTunnels {
    relay: Arc<Relay>,
    node: String,
    next: AtomicU64,
    open: Mutex<HashMap<u64, Open>>,
    started: Instant,
}

impl LinkTunnels {
    pub fn new(relay: Arc<Relay>, node: &str) -> Arc<LinkTunnels> {
        Arc::new(LinkTunnels {
            relay,
            node: node.to_string(),
            next: AtomicU64::new(1),
            open: Mutex::new(HashMap::new()),
            started: Instant::now(),
        })
    }

    fn now(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// A tunnel request from the secondary on `peer`; `None` for any other request.
    pub async fn serve(
        self: &Arc<Self>,
        peer: &Arc<Peer>,
        request: &Request,
        executor: &'static smol::Executor<'static>,
    ) -> Option<Result<Response>> {
        Some(match request {
            Request::TunnelOpen { endpoint } => self
                .open(peer, endpoint, executor)
                .await
                .map(|tunnel| Response::TunnelOpened { tunnel }),
            Request::TunnelData { tunnel, data } => self.data(*tunnel, data).await.map(|_| Response::Done),
            Request::TunnelClose { tunnel } => {
                if lock(&self.open).remove(tunnel).is_some() {
                    crate::log_info!("node \"{}\": tunnel {tunnel} closed by the node", self.node);
                }
                Ok(Response::Done)
            }
            _ => return None,
        })
    }

    async fn open(
        self: &Arc<Self>,
        peer: &Arc<Peer>,
        asked: &str,
        executor: &'static smol::Executor<'static>,
    ) -> Result<u64> {
        let relay = &self.relay;
        if !relay.enabled() {
            return Err(Error::unauthorized(
                "this main node carries no tunnels (links.tunnel_endpoints is empty)",
            ));
        }
        let target = endpoint(asked).map_err(|why| Error::invalid(format!("TunnelOpen: {why}")))?;
        if !relay.endpoints.contains(&target) {
            return Err(Error::unauthorized(format!(
                "{target} is not among the endpoints this main node carries tunnels to (links.tunnel_endpoints: {})",
                relay.endpoints.join(", ")
            )));
        }
        if lock(&self.open).len() >= MAX_PER_LINK {
            return Err(Error::unavailable(format!(
                "this link has {MAX_PER_LINK} tunnels open already"
            )));
        }
        if relay.open.fetch_add(1, Ordering::SeqCst) >= MAX_OPEN {
            relay.open.fetch_sub(1, Ordering::SeqCst);
            return Err(Error::unavailable(format!(
                "the main node has {MAX_OPEN} tunnels open already"
            )));
        }
        let place = Place(relay.clone());
        let what = format!("{target} did not accept the connection");
        let tcp = transport::within(relay.idle, what, async {
            smol::net::TcpStream::connect(target.as_str())
                .await
                .map_err(|e| Error::unavailable(format!("the main node cannot reach {target}: {e}")))
        })
        .await?;
        // Each chunk goes out as it comes, as it would from the secondary itself.
        let _ = tcp.set_nodelay(true);
        let tunnel = self.next.fetch_add(1, Ordering::Relaxed);
        let last = Arc::new(AtomicU64::new(self.now()));
        let reader = executor.spawn(carry_back(
            Arc::downgrade(self),
            peer.clone(),
            tunnel,
            tcp.clone(),
            last.clone(),
        ));
        let open = Open {
            tcp,
            last,
            _reader: reader,
            _place: place,
        };
        let mut map = lock(&self.open);
        if map.len() >= MAX_PER_LINK {
            return Err(Error::unavailable(format!(
                "this link has {MAX_PER_LINK} tunnels open already"
            )));
        }
        map.insert(tunnel, open);
        crate::log_info!("node \"{}\": tunnel {tunnel} open to {target}", self.node);
        Ok(tunnel)
    }

    /// Bytes from the secondary, written to the endpoint within the idle timeout.
    async fn data(&self, tunnel: u64, data: &[u8]) -> Result<()> {
        let (mut tcp, last) = {
            let map = lock(&self.open);
            let open = map
                .get(&tunnel)
                .ok_or_else(|| Error::not_found(format!("no tunnel {tunnel} on this link")))?;
            (open.tcp.clone(), open.last.clone())
        };
        last.store(self.now(), Ordering::Relaxed);
        let what = format!("the endpoint of tunnel {tunnel} took no bytes");
        let written = transport::within(self.relay.idle, what, async {
            tcp.write_all(data)
                .await
                .map_err(|e| Error::unavailable(format!("tunnel {tunnel}: {e}")))
        })
        .await;
        if written.is_err() {
            lock(&self.open).remove(&tunnel);
        }
        written
    }
}

/// What the endpoint of `tunnel` sends, carried to the secondary a chunk at a time, until
/// either end closes, the tunnel is idle too long or has lived its longest.
async fn carry_back(
    tunnels: Weak<LinkTunnels>,
    peer: Arc<Peer>,
    tunnel: u64,
    mut tcp: smol::net::TcpStream,
    last: Arc<AtomicU64>,
) {
    let Some((relay, node, started)) = tunnels.upgrade().map(|t| (t.relay.clone(), t.node.clone(), t.now())) else {
        return;
    };
    let chunk = MAX_TUNNEL_CHUNK.min(peer_chunk(&peer));
    let mut buf = vec![0u8; chunk];
    let born = Instant::now();
    let why = loop {
        let Some(left) = relay.lifetime.checked_sub(born.elapsed()).filter(|d| !d.is_zero()) else {
            break format!("it lived its longest ({} s)", relay.lifetime.as_secs());
        };
        let read = smol::future::or(async { Some(tcp.read(&mut buf).await) }, async {
            smol::Timer::after(relay.idle.min(left)).await;
            None
        })
        .await;
        let n = match read {
            Some(Ok(0)) => break "the endpoint closed the connection".to_string(),
            Some(Ok(n)) => n,
            Some(Err(e)) => break format!("the endpoint: {e}"),
            None => {
                // Bytes went the other way meanwhile: the tunnel is not idle.
                let now = tunnels.upgrade().map_or(started, |t| t.now());
                if now.saturating_sub(last.load(Ordering::Relaxed)) < relay.idle.as_millis() as u64 {
                    continue;
                }
                break format!("no byte either way for {} s", relay.idle.as_secs());
            }
        };
        if let Some(t) = tunnels.upgrade() {
            last.store(t.now(), Ordering::Relaxed);
        }
        let data = buf[..n].to_vec();
        match peer.call(&Request::TunnelData { tunnel, data }, relay.idle).await {
            Ok(Response::Done) => {}
            Ok(r) => break format!("the node answered TunnelData with {r:?}"),
            Err(e) => break e.to_string(),
        }
    };
    if let Some(t) = tunnels.upgrade() {
        // Its place goes back first. Removing the entry drops this task's handle: detached,
        // so that the task goes on to say goodbye.
        let open = lock(&t.open).remove(&tunnel);
        if let Some(Open { _reader, .. }) = open {
            _reader.detach();
        }
    }
    crate::log_info!("node \"{node}\": tunnel {tunnel} closed: {why}");
    let _ = peer.call(&Request::TunnelClose { tunnel }, relay.idle).await;
}

/// The largest chunk a frame of this link carries, its header and fields aside.
fn peer_chunk(peer: &Peer) -> usize {
    (peer.body_limit() as usize).saturating_sub(64).max(1024)
}

/// The secondary's end: iam-nodelink's tunnel socket, and the tunnels open over its
/// current link.
pub struct Gate {
    link: Mutex<Option<Arc<Peer>>>,
    routes: Mutex<HashMap<u64, smol::channel::Sender<Vec<u8>>>>,
    /// How long the main node may take to answer (`links.request_timeout`).
    timeout: Duration,
    /// How long a client of the socket may take to send its CONNECT.
    hello_timeout: Duration,
}

impl Gate {
    pub fn new(timeout: Duration, hello_timeout: Duration) -> Arc<Gate> {
        Arc::new(Gate {
            link: Mutex::new(None),
            routes: Mutex::new(HashMap::new()),
            timeout,
            hello_timeout,
        })
    }

    /// The link tunnels go over now, if any.
    pub fn link(&self) -> Option<Arc<Peer>> {
        lock(&self.link).clone()
    }

    /// The link tunnels now go over (`None`: no link, they are refused).
    pub fn attach(&self, link: Option<Arc<Peer>>) {
        *lock(&self.link) = link;
        // The tunnels of the link before are gone with it.
        lock(&self.routes).clear();
    }

    /// A tunnel request from the main node; `None` for any other request.
    pub async fn serve(&self, request: &Request) -> Option<Result<Response>> {
        Some(match request {
            Request::TunnelData { tunnel, data } => {
                let route = lock(&self.routes).get(tunnel).cloned();
                match route {
                    Some(tx) => match tx.send(data.clone()).await {
                        Ok(()) => Ok(Response::Done),
                        Err(_) => Err(Error::not_found(format!("tunnel {tunnel} is closed"))),
                    },
                    None => Err(Error::not_found(format!("no tunnel {tunnel} on this link"))),
                }
            }
            Request::TunnelClose { tunnel } => {
                lock(&self.routes).remove(tunnel);
                Ok(Response::Done)
            }
            Request::TunnelOpen { .. } => Err(Error::unauthorized(
                "a secondary node opens no tunnels for the main node",
            )),
            _ => return None,
        })
    }

    /// Serve the tunnel socket at `path` until the process ends: mode 0600, or 0660 in
    /// `group` where one is given (the protected socket's: iamd runs as root without
    /// CAP_DAC_OVERRIDE under the layer's unit, and reaches the socket by that group).
    pub fn listen(
        self: &Arc<Self>,
        path: &Path,
        group: Option<u32>,
        executor: &'static smol::Executor<'static>,
    ) -> Result<()> {
        let mode = if group.is_some() { 0o660 } else { 0o600 };
        let listener = crate::proto::transport::bind_unix(path, mode, group)
            .and_then(smol::net::unix::UnixListener::try_from)
            .map_err(|e| Error::unavailable(format!("cannot serve the tunnel socket {}: {e}", path.display())))?;
        let (gate, path) = (self.clone(), path.to_path_buf());
        executor
            .spawn(async move {
                loop {
                    match listener.accept().await {
                        Ok((s, _)) => {
                            let gate = gate.clone();
                            executor.spawn(async move { gate.client(s).await }).detach();
                        }
                        Err(e) => {
                            crate::log_error!("accept on the tunnel socket {}: {e}", path.display());
                            smol::Timer::after(Duration::from_millis(100)).await;
                        }
                    }
                }
            })
            .detach();
        Ok(())
    }

    /// One client of the tunnel socket: its CONNECT, the tunnel over the link, then bytes
    /// both ways until either end closes.
    async fn client(&self, mut s: smol::net::unix::UnixStream) {
        let head = transport::within(self.hello_timeout, "no CONNECT", read_head(&mut s)).await;
        let target = match head.and_then(|h| connect_target(&h)) {
            Ok(t) => t,
            Err(e) => return answer(&mut s, 400, &e.message).await,
        };
        let link = lock(&self.link).clone();
        let Some(link) = link.filter(|l| !l.is_closed()) else {
            return answer(&mut s, 503, "no link to the main node").await;
        };
        let since = Request::TunnelOpen {
            endpoint: String::new(),
        }
        .since();
        if link.version() < since {
            let why = format!(
                "the main node speaks protocol version {}; tunnels need version {since}",
                link.version()
            );
            return answer(&mut s, 501, &why).await;
        }
        let tunnel = match link
            .call(
                &Request::TunnelOpen {
                    endpoint: target.clone(),
                },
                self.timeout,
            )
            .await
        {
            Ok(Response::TunnelOpened { tunnel }) => tunnel,
            Ok(r) => return answer(&mut s, 502, &format!("TunnelOpen answered {r:?}")).await,
            Err(e) => {
                crate::log_warn!("the tunnel to {target}: {e}");
                let status = match e.kind {
                    ErrorKind::Unauthorized => 403,
                    ErrorKind::Timeout => 504,
                    ErrorKind::Unavailable => 503,
                    _ => 502,
                };
                return answer(&mut s, status, &e.message).await;
            }
        };
        let (tx, rx) = smol::channel::bounded::<Vec<u8>>(1);
        lock(&self.routes).insert(tunnel, tx);
        if s.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .await
            .is_err()
        {
            lock(&self.routes).remove(&tunnel);
            let _ = link.call(&Request::TunnelClose { tunnel }, self.timeout).await;
            return;
        }
        let chunk = MAX_TUNNEL_CHUNK.min(peer_chunk(&link));
        let mut up_stream = s.clone();
        let up = async {
            let mut buf = vec![0u8; chunk];
            loop {
                let n = match up_stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let data = buf[..n].to_vec();
                if link
                    .call(&Request::TunnelData { tunnel, data }, self.timeout)
                    .await
                    .is_err()
                {
                    break;
                }
            }
            let _ = link.call(&Request::TunnelClose { tunnel }, self.timeout).await;
        };
        let down = async {
            while let Ok(data) = rx.recv().await {
                if s.write_all(&data).await.is_err() {
                    break;
                }
            }
        };
        smol::future::or(up, down).await;
        lock(&self.routes).remove(&tunnel);
    }
}

/// The head of a CONNECT request, up to its blank line.
async fn read_head(s: &mut smol::net::unix::UnixStream) -> Result<Vec<u8>> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte).await {
            Ok(0) => return Err(Error::invalid("the connection closed before its CONNECT")),
            Ok(_) => head.push(byte[0]),
            Err(e) => return Err(Error::unavailable(e.to_string())),
        }
        if head.len() > MAX_HEAD {
            return Err(Error::invalid(format!("a CONNECT head longer than {MAX_HEAD} bytes")));
        }
    }
    Ok(head)
}

/// `CONNECT host:port HTTP/1.1`: the target, as an endpoint.
fn connect_target(head: &[u8]) -> Result<String> {
    let text = String::from_utf8_lossy(head);
    let line = text.lines().next().unwrap_or("");
    let mut parts = line.split(' ');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("CONNECT"), Some(target), Some(v), None) if v.starts_with("HTTP/1.") => {
            endpoint(target).map_err(Error::invalid)
        }
        _ => Err(Error::invalid(format!(
            "expected \"CONNECT host:port HTTP/1.1\", got \"{}\"",
            crate::log::escape(line)
        ))),
    }
}

/// A refusal to a client of the tunnel socket: the status and why, on one line.
async fn answer(s: &mut smol::net::unix::UnixStream, status: u16, why: &str) {
    let why: String = why
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(400)
        .collect();
    let _ = s.write_all(format!("HTTP/1.1 {status} {why}\r\n\r\n").as_bytes()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connect_head_names_one_endpoint() {
        assert_eq!(
            connect_target(b"CONNECT est.example:8443 HTTP/1.1\r\nHost: x\r\n\r\n").unwrap(),
            "est.example:8443"
        );
        for bad in [
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            b"CONNECT est HTTP/1.1\r\n\r\n",
            b"CONNECT est:1 HTTP/1.1 x\r\n\r\n",
            b"CONNECT est:1 SSH\r\n\r\n",
        ] {
            assert_eq!(connect_target(bad).unwrap_err().kind, ErrorKind::InvalidArgument);
        }
    }
}
