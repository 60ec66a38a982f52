//! The main node's link server: admission, TLS or the clear, the hello, registration and
//! node info changes (coalesced and rate-limited), while forwarded requests go the other way.

use super::*;
use crate::sys::lock;

/// Connections a listener admits at once before their hello is done: each may hold a
/// blocking thread for its TLS handshake (the main node signs in its token), and none is
/// authenticated yet, so they are few, and apart from the links already registered.
pub const MAX_ADMITTING: usize = 32;
/// Of those, from one peer: a TCP host, a vsock CID, a local uid. Secondaries dial one link
/// each; a host that opens more is refused at once.
pub const MAX_ADMITTING_PER_PEER: usize = 4;

/// The connections being admitted, in all and by peer.
#[derive(Default)]
struct Admitting {
    by_peer: std::sync::Mutex<std::collections::HashMap<String, usize>>,
    refused: std::sync::atomic::AtomicU64,
}

/// A place among those being admitted, given back when the link is registered or gone.
struct Ticket {
    admitting: Arc<Admitting>,
    peer: String,
}

impl Admitting {
    fn enter(self: &Arc<Self>, from: &LinkPeer) -> std::result::Result<Ticket, String> {
        let peer = match from {
            LinkPeer::Unix(c) => format!("uid {}", c.uid),
            LinkPeer::Tcp(a) => format!("host {}", a.ip()),
            LinkPeer::Vsock { cid, .. } => format!("CID {cid}"),
            LinkPeer::Vchan { domid } => format!("domain {domid}"),
        };
        let mut by_peer = lock(&self.by_peer);
        let total: usize = by_peer.values().sum();
        let mine = by_peer.get(&peer).copied().unwrap_or(0);
        if total >= MAX_ADMITTING {
            return Err(format!("{MAX_ADMITTING} links are being admitted already"));
        }
        if mine >= MAX_ADMITTING_PER_PEER {
            return Err(format!(
                "{peer} has {MAX_ADMITTING_PER_PEER} links being admitted already"
            ));
        }
        *by_peer.entry(peer.clone()).or_default() += 1;
        Ok(Ticket {
            admitting: self.clone(),
            peer,
        })
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut by_peer = lock(&self.admitting.by_peer);
        if let Some(n) = by_peer.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                by_peer.remove(&self.peer);
            }
        }
    }
}

/// Accept links on one listener: each connection is admitted (a place among those being
/// admitted, its first byte, TLS, the hello, each within `limits.hello_timeout`) before it
/// takes one of the [`crate::daemon::nodes::MAX_NODES`] places of registered links, so
/// connections that send nothing, or a flood of handshakes, never keep a secondary out.
pub(super) async fn accept_links(addr: LinkAddr, listener: LinkListener, shared: Arc<Shared>) {
    let places = Arc::new(Semaphore::new(crate::daemon::nodes::MAX_NODES));
    let admitting = Arc::new(Admitting::default());
    loop {
        match listener.accept().await {
            Ok((stream, from)) => {
                let ticket = match admitting.enter(&from) {
                    Ok(t) => t,
                    Err(why) => {
                        // Logged at the first refusal and every thousandth after it.
                        let n = admitting.refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if n % 1000 == 0 {
                            crate::log_warn!("link listener {addr}: refused {from}: {why} ({} refused so far)", n + 1);
                        }
                        drop(stream);
                        continue;
                    }
                };
                let shared = shared.clone();
                let addr = addr.clone();
                let places = places.clone();
                EXECUTOR
                    .spawn(async move {
                        serve_link(stream, &addr, from, shared, ticket, places).await;
                    })
                    .detach();
            }
            Err(e) => {
                crate::log_error!("accept on the link listener {addr}: {e}");
                smol::Timer::after(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// Whether a link may run in the clear on this main node now (docs/ARCHITECTURE.md §7): never over TCP;
/// with `tls = "auto"` only while the main node is in provisioning mode.
pub(super) fn plaintext_allowed(shared: &Shared, addr: &LinkAddr) -> std::result::Result<(), String> {
    use crate::config::LinkTls;
    match shared.prov.config.links.tls {
        _ if addr.is_tcp() => Err("links over TCP always use TLS".into()),
        LinkTls::Off => Ok(()),
        LinkTls::Auto if shared.provisioning_mode => Ok(()),
        LinkTls::Auto => Err("links use TLS once the main node is out of provisioning mode".into()),
        LinkTls::Required => Err("links.tls is \"required\"".into()),
    }
}

/// Whether a link that may not run in the clear may still do so to carry tunnels only
/// (docs/ARCHITECTURE.md §7c): a secondary enrolling through the main node has no link
/// identity yet. Only where tunnels are configured, `links.tls` is `auto`, and never over
/// TCP: a node that reaches the main node over TCP has a network of its own.
pub(super) fn tunnels_in_the_clear(shared: &Shared, addr: &LinkAddr) -> bool {
    shared.relay.enabled() && !addr.is_tcp() && shared.prov.config.links.tls == crate::config::LinkTls::Auto
}

/// The first byte of a TLS handshake record.
pub(super) const TLS_HANDSHAKE: u8 = 0x16;

/// A TLS record in the clear: a fatal `unexpected_message` alert.
const FATAL_UNEXPECTED_MESSAGE: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x0a];

/// The kind of TLS record whose first byte this is when it cannot begin a link (a
/// connection's first record is a handshake or a frame's magic): the connection begins in
/// the middle of a TLS session.
fn tls_record_in_mid_stream(first: u8) -> Option<&'static str> {
    match first {
        0x14 => Some("change_cipher_spec"),
        0x15 => Some("alert"),
        0x17 => Some("application_data"),
        _ => None,
    }
}

/// The TLS handshake of a link, as the main node: its identity from its link identity
/// module, the peer's certificate required and verified. Returns the stream and the peer's
/// chain, leaf first.
pub(super) async fn accept_tls(
    stream: BoxStream,
    shared: &Arc<Shared>,
) -> Result<(BoxStream, Vec<rustls_pki_types::CertificateDer<'static>>)> {
    let s = shared.clone();
    let config = blocking::unblock(move || {
        s.prov.serving_identity()?;
        let (_, _, identity) = s.prov.modules.identity(&s.prov.db, &s.prov.config.links.identity)?;
        let roots = crate::daemon::certs::read_roots(&s.prov.config)?;
        crate::pki::tls::server_config(&identity, &roots, &s.prov.config.crl)
    })
    .await?;
    let handshake = futures_rustls::TlsAcceptor::from(config).accept(stream);
    let limit = shared.prov.config.hello_timeout;
    // The handshake's signature is a PKCS#11 call (rustls signers are synchronous): the
    // handshake runs on a blocking thread, never on the executor that serves the sockets.
    let tls = blocking::unblock(move || {
        smol::block_on(transport::within(limit, "no TLS handshake", async {
            handshake.await.map_err(|e| Error::unauthorized(e.to_string()))
        }))
    })
    .await?;
    let chain = crate::pki::tls::peer_chain(tls.get_ref().1)?;
    Ok((Box::new(tls), chain))
}

/// Read the link's hello (within the hello timeout) and answer it. Returns the node id the
/// secondary states and the protocol version agreed; a refusal comes with the version to
/// write it in (the hello frame's, so that an older secondary can read why).
pub(super) async fn link_hello(
    stream: &mut BoxStream,
    shared: &Shared,
    admission: Option<&crate::config::Admission>,
) -> std::result::Result<(String, u8), (Error, u8)> {
    let limit = shared.body_limit;
    let deadline = shared.prov.config.hello_timeout;
    let oldest = crate::MIN_PROTOCOL_VERSION;
    let frame = transport::within(deadline, "no hello", async {
        transport::read_frame(stream, limit).await.map_err(Error::from)
    })
    .await
    .map_err(|e| (e, oldest))?;
    let (header, body) = frame.ok_or_else(|| (Error::unavailable("closed before its hello"), oldest))?;
    let v = header.version;
    match decode_request(header.kind, header.version, &body).map_err(|e| (e, v))? {
        Request::Hello {
            version: max,
            min_version,
            role: Role::NodeLink,
            node_id,
        } if !node_id.is_empty() => {
            let version = wire::agree(min_version, max).map_err(|e| (e, v))?;
            if let Some(a) = admission.filter(|a| !a.nodes.is_empty() && !a.nodes.contains(&node_id)) {
                return Err((
                    Error::unauthorized(format!(
                        "node \"{node_id}\" is not admitted on this link listener (links.listener nodes: {})",
                        a.nodes.join(", ")
                    )),
                    v,
                ));
            }
            let answer = Response::Hello {
                version,
                node_id: shared.prov.config.node_id.clone(),
            };
            let frame = Wire::new(limit)
                .at(version)
                .frame(FrameKind::Response, header.id, &answer)
                .map_err(|e| (e.into(), v))?;
            transport::write_frame(stream, &frame)
                .await
                .map_err(|e| (e.into(), v))?;
            Ok((node_id, version))
        }
        Request::Hello {
            role: Role::NodeLink, ..
        } => Err((Error::protocol("a node link's hello must name its node"), v)),
        Request::Hello { role, .. } => Err((
            Error::protocol(format!("role {role:?} is not served on a link listener")),
            v,
        )),
        other => Err((
            Error::protocol(format!("expected Hello first, got {}", other.name())),
            v,
        )),
    }
}

/// One node link: admission, hello, then RegisterNode and the node's info changes from the
/// secondary, while forwarded requests go the other way (see [`Nodes::forward`]).
async fn serve_link(
    mut stream: BoxStream,
    addr: &LinkAddr,
    from: LinkPeer,
    shared: Arc<Shared>,
    ticket: Ticket,
    places: Arc<Semaphore>,
) {
    let limit = shared.body_limit;
    // Refusals before the hello are written in the oldest version spoken: every peer reads it.
    let refuse = |e: Error| wire::error_frame_at(crate::MIN_PROTOCOL_VERSION, 0, &e, limit);
    if let LinkPeer::Unix(peer) = &from {
        if !admitted(&shared.prov.config, peer) {
            crate::log_warn!("link listener {addr}: refused {from}");
            let e = Error::unauthorized(format!(
                "uid {} gid {} is not allowed on the link listener",
                peer.uid, peer.gid
            ));
            let _ = transport::write_frame(&mut stream, &refuse(e)).await;
            return;
        }
    }
    let admission = shared.prov.config.links.admission.iter().find(|a| a.addr == *addr);
    if let (Some(a), LinkPeer::Vsock { cid, .. }) = (admission, &from) {
        if !a.cids.is_empty() && !a.cids.contains(cid) {
            crate::log_warn!("link listener {addr}: refused {from}: CID {cid} is not admitted");
            let e = Error::unauthorized(format!("CID {cid} is not admitted on this link listener"));
            let _ = transport::write_frame(&mut stream, &refuse(e)).await;
            return;
        }
    }
    // A TLS ClientHello starts with a handshake record (0x16); a frame with its magic. A
    // peer that sends nothing is closed after the hello timeout.
    let first_byte = async {
        transport::Prefixed::peek(stream)
            .await
            .map_err(|e| Error::unavailable(e.to_string()))
    };
    let (first, prefixed) = match transport::within(shared.prov.config.hello_timeout, "no first byte", first_byte).await
    {
        Ok(p) => p,
        Err(e) => {
            crate::log_warn!("link listener {addr}, {from}: {e}; closing");
            return;
        }
    };
    let mut stream: BoxStream = Box::new(prefixed);
    if let Some(kind) = first.and_then(tls_record_in_mid_stream) {
        // A byte pipe that reconnects without telling its ends (vchan-socket-proxy opens a
        // new connection onto the same vchan session when this end closed the last one)
        // delivers the rest of a TLS session to a fresh accept. Nothing here can resume it:
        // a fatal alert ends the secondary's session at once, so it dials again now rather
        // than after its keepalive.
        crate::log_warn!(
            "link listener {addr}, {from}: the connection begins in the middle of a TLS session (a {kind} \
             record, not a handshake): the byte pipe reconnected onto a link that was already running; \
             closing it so that the secondary dials again"
        );
        let _ = smol::io::AsyncWriteExt::write_all(&mut stream, &FATAL_UNEXPECTED_MESSAGE).await;
        return;
    }
    let mut peer_cert = None;
    // A link in the clear out of provisioning mode, from a secondary that has no link
    // identity yet: it may carry that node's tunnels (to enroll) and nothing else.
    let mut tunnel_only = false;
    if first == Some(TLS_HANDSHAKE) {
        match accept_tls(stream, &shared).await {
            Ok((s, chain)) => {
                stream = s;
                peer_cert = Some(chain);
            }
            Err(e) => {
                crate::log_warn!("link listener {addr}, {from}: TLS: {e}; closing");
                return;
            }
        }
    } else if let Err(why) = plaintext_allowed(&shared, addr) {
        if tunnels_in_the_clear(&shared, addr) {
            tunnel_only = true;
        } else {
            crate::log_warn!("link listener {addr}: refused {from}: {why}");
            let e = Error::unauthorized(format!("this link must use TLS: {why}"));
            let _ = transport::write_frame(&mut stream, &refuse(e)).await;
            return;
        }
    }
    let (node_id, version) = match link_hello(&mut stream, &shared, admission).await {
        Ok(agreed) => agreed,
        Err((e, version)) => {
            crate::log_warn!("link listener {addr}, {from}: {e}; closing");
            let _ = transport::write_frame(&mut stream, &wire::error_frame_at(version, 0, &e, limit)).await;
            return;
        }
    };
    let wire = Wire::new(limit).at(version);
    let refuse = |e: Error| wire.error(0, &e);
    if let Some(chain) = &peer_cert {
        if let Err(e) = crate::pki::tls::check_peer(
            &chain[0],
            crate::config::Eku::ClientAuth,
            &node_id,
            &shared.prov.config.unit_id,
        ) {
            crate::log_warn!("link listener {addr}, {from}: {e}; closing");
            let _ = transport::write_frame(&mut stream, &refuse(e)).await;
            return;
        }
    }
    // Admitted: its place among those being admitted goes back, and it takes one of the
    // registered links'.
    drop(ticket);
    let Some(_place) = places.try_acquire_arc() else {
        let e = Error::unavailable(format!(
            "this link listener serves {} links already",
            crate::daemon::nodes::MAX_NODES
        ));
        crate::log_warn!("link listener {addr}, {from}: {e}; closing");
        let _ = transport::write_frame(&mut stream, &refuse(e)).await;
        return;
    };
    crate::log_info!(
        "link listener {addr}: node \"{node_id}\" linked from {from}{}, protocol version {version}",
        match (&peer_cert, tunnel_only) {
            (Some(_), _) => " over TLS",
            (None, true) => " in the clear, for its tunnels only",
            (None, false) => "",
        }
    );
    let (peer, reader) = Peer::new(
        format!("node \"{node_id}\""),
        stream,
        wire,
        shared.prov.config.frame_timeout,
    );
    if let Some(chain) = peer_cert {
        shared.revocable.watch(&node_id, &peer, chain);
    }
    let registered = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let changes: Arc<std::sync::Mutex<InfoChanges>> = Default::default();
    // The link's tunnels, all closed when it ends.
    let tunnels = crate::link::tunnel::LinkTunnels::new(shared.relay.clone(), &node_id);
    let reason = peer
        .read_loop(reader, |id, request| {
            let (shared, peer, registered, node_id, changes, tunnels) = (
                shared.clone(),
                peer.clone(),
                registered.clone(),
                node_id.clone(),
                changes.clone(),
                tunnels.clone(),
            );
            async move {
                if request.is_tunnel() {
                    // Tunnel requests wait on the endpoint: served beside the link's other
                    // requests (a tunnel sends its next chunk once this one is answered).
                    EXECUTOR
                        .spawn(async move {
                            let result = tunnels.serve(&peer, &request, &EXECUTOR).await;
                            let result = result.unwrap_or_else(|| Err(Error::internal("not a tunnel request")));
                            if let Err(e) = &result {
                                crate::log_warn!("node \"{node_id}\": {}: {e}", request.name());
                            }
                            audit_link(&node_id, request.name(), audited(&request), &result);
                            let _ = peer.answer(id, result).await;
                        })
                        .detach();
                    return true;
                }
                let (op, always) = (request.name(), audited(&request));
                let result = link_request(&shared, &peer, &registered, tunnel_only, &node_id, &changes, request).await;
                if let Err(e) = &result {
                    crate::log_warn!("node \"{node_id}\": {e}");
                }
                audit_link(&node_id, op, always, &result);
                let _ = peer.answer(id, result).await;
                // A link that could not register its node has nothing more to do.
                tunnel_only || registered.load(std::sync::atomic::Ordering::SeqCst)
            }
        })
        .await;
    drop(tunnels);
    if registered.load(std::sync::atomic::Ordering::SeqCst) {
        let (s, p, id) = (shared.clone(), peer.clone(), node_id.clone());
        // The disconnection commits the registry's record, the last change included.
        blocking::unblock(move || s.nodes.disconnected(&s.prov.db, &id, &p)).await;
        crate::log_notice!("node \"{node_id}\" disconnected: {reason}");
    }
}

/// A registered link's node info changes commit at most once per this interval; the
/// changes in between are coalesced into the latest.
pub const NODE_INFO_COMMIT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);
/// NodeInfoChanged a link may send in one second; beyond it the link is closed as flooding.
pub const NODE_INFO_MAX_PER_SECOND: u32 = 50;

/// The node info changes of one link: the rate it sends them at, and whether a commit of
/// the latest is due.
#[derive(Default)]
pub(super) struct InfoChanges {
    window: Option<std::time::Instant>,
    in_window: u32,
    flushing: bool,
    last_commit: Option<std::time::Instant>,
}

/// NodeInfoChanged on a registered link: refused (and the link closed) past the rate limit;
/// otherwise served and announced at once, and committed now or, when a commit was made
/// less than [`NODE_INFO_COMMIT_INTERVAL`] ago, once that has passed (the latest wins).
pub(super) fn info_changed(
    shared: &Arc<Shared>,
    peer: &Arc<Peer>,
    changes: &Arc<std::sync::Mutex<InfoChanges>>,
    node_id: &str,
    info: NodeInfo,
) -> Result<Response> {
    let now = std::time::Instant::now();
    let wait = {
        let mut c = crate::sys::lock(changes);
        if c.window
            .is_none_or(|w| now.duration_since(w) >= std::time::Duration::from_secs(1))
        {
            c.window = Some(now);
            c.in_window = 0;
        }
        c.in_window += 1;
        if c.in_window > NODE_INFO_MAX_PER_SECOND {
            peer.close("flooding: too many NodeInfoChanged");
            return Err(Error::unavailable(format!(
                "more than {NODE_INFO_MAX_PER_SECOND} NodeInfoChanged in a second; the link is closed"
            )));
        }
        shared.nodes.update(info, peer)?;
        if c.flushing {
            return Ok(Response::Done);
        }
        c.flushing = true;
        c.last_commit.map_or(std::time::Duration::ZERO, |t| {
            (t + NODE_INFO_COMMIT_INTERVAL).saturating_duration_since(now)
        })
    };
    let (shared, changes, id) = (shared.clone(), changes.clone(), node_id.to_string());
    EXECUTOR
        .spawn(async move {
            smol::Timer::after(wait).await;
            {
                let mut c = crate::sys::lock(&changes);
                c.flushing = false;
                c.last_commit = Some(std::time::Instant::now());
            }
            let s = shared.clone();
            let node = id.clone();
            if let Err(e) = blocking::unblock(move || s.nodes.store(&s.prov.db, &node)).await {
                crate::log_warn!("node \"{id}\": {e}");
            }
        })
        .detach();
    Ok(Response::Done)
}

/// The link requests always in the audit trail: a secondary's registration, the CRLs it
/// fetches, each tunnel it opens. (Its keepalives, info changes and tunnel bytes, when
/// served, would drown the rest; their refusals are audited.)
fn audited(request: &Request) -> bool {
    matches!(
        request,
        Request::RegisterNode { .. } | Request::GetCrl | Request::TunnelOpen { .. }
    )
}

/// The audit trail of what a secondary asks over its link: `op` when `always`, and every
/// refusal, once, never what the request carried.
fn audit_link(node_id: &str, op: &str, always: bool, result: &Result<Response>) {
    let outcome = match result {
        Ok(_) if !always => return,
        Ok(_) => "done".to_string(),
        Err(e) => format!("refused, {}: {e}", e.kind.name()),
    };
    crate::log_notice!(
        "audit: {op} by node \"{}\" over its link: {outcome}",
        crate::log::escape(node_id)
    );
}

/// A request from a secondary node over its link.
pub(super) async fn link_request(
    shared: &Arc<Shared>,
    peer: &Arc<Peer>,
    registered: &std::sync::atomic::AtomicBool,
    tunnel_only: bool,
    node_id: &str,
    changes: &Arc<std::sync::Mutex<InfoChanges>>,
    request: Request,
) -> Result<Response> {
    use std::sync::atomic::Ordering;
    if tunnel_only && !matches!(request, Request::Version) {
        return Err(Error::unauthorized(format!(
            "{}: a link in the clear carries tunnels only once the main node is out of provisioning mode; \
             the node links in TLS once it has its link identity",
            request.name()
        )));
    }
    let info = match request {
        Request::RegisterNode { info } | Request::NodeInfoChanged { info } if info.node_id != node_id => {
            return Err(Error::invalid(format!(
                "the link said it is node \"{node_id}\" but reports node \"{}\"",
                info.node_id
            )))
        }
        Request::RegisterNode { info } if !registered.load(Ordering::SeqCst) => {
            let (s, p) = (shared.clone(), peer.clone());
            blocking::unblock(move || s.nodes.register(&s.prov.db, info, &p)).await?;
            registered.store(true, Ordering::SeqCst);
            crate::log_notice!("node \"{node_id}\" registered");
            return Ok(Response::Done);
        }
        Request::RegisterNode { .. } => return Err(Error::wrong_state("the node is already registered on this link")),
        Request::NodeInfoChanged { .. } if !registered.load(Ordering::SeqCst) => {
            return Err(Error::wrong_state("RegisterNode must come first on a node link"))
        }
        Request::NodeInfoChanged { info } => info,
        // The CRLs this node checks with, for the secondary to check with too: read at each
        // ask, as every check here reads them.
        Request::GetCrl if registered.load(Ordering::SeqCst) => {
            let paths = shared.prov.config.crl.clone();
            let crls = blocking::unblock(move || crate::pki::x509::read_crls(&paths)).await?;
            return Ok(Response::Crl {
                crls: crls.iter().map(|c| c.to_vec()).collect(),
            });
        }
        // The secondary's keepalive: this iamd still knows the link.
        Request::Version if tunnel_only || registered.load(Ordering::SeqCst) => {
            return Ok(Response::Version {
                version: crate::VERSION.into(),
                protocol: crate::PROTOCOL_VERSION,
            })
        }
        other => {
            return Err(Error::protocol(format!(
                "{} is not served on a node link",
                other.name()
            )))
        }
    };
    info_changed(shared, peer, changes, node_id, info)
}
