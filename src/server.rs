//! iamd: the public and protected Unix sockets, and dispatch to the modules.
//!
//! Each connection states its peer (SO_PEERCRED) and opens with a hello. Requests are read
//! one frame at a time and answered concurrently (at most [`MAX_IN_FLIGHT`] per connection),
//! each answer carrying its request's id. Blocking work (PKCS#11, redb, fsync) runs on the
//! blocking thread pool. A frame that breaks the protocol is answered with a typed error and
//! the connection is closed; other connections are not affected.

use crate::broadcast::Broadcast;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::identity::Identity;
use crate::nodes::Nodes;
use crate::peer::Peer;
use crate::permissions::Registry;
use crate::provisioning::Provisioning;
use crate::quota::{Held, Quotas};
use crate::transport::{self, BoxStream, LinkAddr, LinkListener, LinkPeer, PeerCredentials};
use crate::wire::{self, CertInfo, Event, FrameError, FrameKind, NodeInfo, Request, Response, Role};
use smol::{lock::Semaphore, Async, Executor};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;

/// Threads of the blocking pool iamd runs PKCS#11, database and file work on.
pub const BLOCKING_THREADS: usize = 8;
/// Requests answered at once on one connection; the next waits for a free place.
pub const MAX_IN_FLIGHT: usize = 64;
/// Subscribers of one kind of event, and the events each may fall behind before it is dropped.
pub use crate::nodes::{MAX_SUBSCRIBERS, SUBSCRIBER_BACKLOG};

static EXECUTOR: Executor<'static> = Executor::new();

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Socket {
    Public,
    Protected,
}

struct Shared {
    prov: Provisioning,
    body_limit: u32,
    identity: Identity,
    permissions: Registry,
    subjects: Broadcast<Vec<String>>,
    nodes: Nodes,
    provisioning_mode: bool,
    /// CertChanged events: (type, its current certificate).
    certs: Broadcast<(String, Option<CertInfo>)>,
    /// Wakes the renewal scheduler when a current certificate changes.
    certs_changed: (smol::channel::Sender<()>, smol::channel::Receiver<()>),
    /// The current certificate of each type as last reported.
    current_certs: std::sync::Mutex<std::collections::BTreeMap<String, Option<CertKey>>>,
    /// What users who are not admitted may hold on the public socket.
    quotas: Arc<Quotas>,
    /// Wrong passwords, per uid.
    guesses: crate::guesses::Guesses,
}

/// A certificate by its issuer (DER) and serial.
type CertKey = (Vec<u8>, Vec<u8>);

impl Shared {
    /// Report every type whose current certificate differs from the last one reported.
    fn publish_cert_changes(&self) {
        let prov = &self.prov;
        let mut last = self.current_certs.lock().unwrap_or_else(|p| p.into_inner());
        for t in prov.config.modules.iter().map(|m| m.id.clone()) {
            let current = match prov.modules.get_cert(&prov.db, &t, None, None) {
                Ok(c) => Some(c),
                Err(e) if e.kind == crate::error::ErrorKind::NotFound => None,
                Err(e) => {
                    crate::log_warn!("certificate events: {t}: {e}");
                    continue;
                }
            };
            let key = current.as_ref().map(|c| (c.issuer_der.clone(), c.serial.clone()));
            if last.get(&t) != Some(&key) {
                let first = !last.contains_key(&t);
                last.insert(t.clone(), key);
                if !first {
                    self.certs.send((t, current));
                    let _ = self.certs_changed.0.try_send(());
                }
            }
        }
    }
}

/// The sockets iamd made: public, protected, and unix link listeners.
fn remove_sockets(config: &Config) {
    let links = config.links.listen.iter().filter_map(|a| match a {
        LinkAddr::Unix(p) => Some(p),
        _ => None,
    });
    for p in [&config.public_socket, &config.protected_socket]
        .into_iter()
        .chain(links)
    {
        let _ = std::fs::remove_file(p);
    }
}

fn admitted(config: &Config, peer: &PeerCredentials) -> bool {
    peer.uid == 0 || config.allowed_uids.contains(&peer.uid) || config.allowed_gids.iter().any(|g| peer.in_group(*g))
}

/// Run iamd until SIGTERM or SIGINT. Returns once the sockets are removed.
pub fn run(config: Config, provisioning_mode: bool) -> Result<()> {
    // Nothing iamd writes (database, keys, PIN files) is for other users; the sockets and
    // the marker are given their modes explicitly.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    // Before any other thread is spawned: TERM and INT stop, HUP re-reads the identity files.
    let signals = crate::signals::watch()?;

    let _ = WRITE_TIMEOUT.set(config.write_timeout);
    // The blocking pool (PKCS#11, redb, fsync) would grow to 500 threads under a flood of
    // requests; the token serialises its calls anyway, so a few threads serve as fast and
    // keep memory bounded on a small node. The operator's setting wins.
    if std::env::var_os("BLOCKING_MAX_THREADS").is_none() {
        std::env::set_var("BLOCKING_MAX_THREADS", BLOCKING_THREADS.to_string());
    }
    match crate::certs::refused_roots(&config) {
        Ok(refused) => {
            for e in refused {
                crate::log_warn!("root CA refused and not used: {e}");
            }
        }
        Err(e) => crate::log_error!("{e}"),
    }
    let prov = Provisioning::open(config.clone(), provisioning_mode)?;
    prov.recover()?;
    let permissions = Registry::open(config.permissions.clone(), &prov.db)?;
    let nodes = Nodes::open(&config, &prov.db)?;
    let shared = Arc::new(Shared {
        prov,
        body_limit: config.body_limit,
        identity: Identity::new(config.identity.clone()),
        permissions,
        subjects: Broadcast::new("subjects", MAX_SUBSCRIBERS, SUBSCRIBER_BACKLOG),
        nodes,
        provisioning_mode,
        certs: Broadcast::new("certificate", MAX_SUBSCRIBERS, SUBSCRIBER_BACKLOG),
        certs_changed: smol::channel::bounded(1),
        current_certs: Default::default(),
        quotas: Quotas::new(config.quotas.clone(), config.max_connections),
        guesses: Default::default(),
    });
    shared.publish_cert_changes();

    let bind = |path: &PathBuf, mode: u32, gid: Option<u32>| -> Result<Async<UnixListener>> {
        let l = transport::bind_unix(path, mode, gid)
            .map_err(|e| Error::unavailable(format!("cannot listen on {}: {e}", path.display())))?;
        Async::new(l).map_err(|e| Error::internal(format!("{}: {e}", path.display())))
    };
    let public = bind(&config.public_socket, crate::config::DEFAULT_PUBLIC_MODE, None)?;
    let protected = match bind(
        &config.protected_socket,
        config.protected_socket_mode,
        config.protected_socket_group,
    ) {
        Ok(p) => p,
        Err(e) => {
            let _ = std::fs::remove_file(&config.public_socket);
            return Err(e);
        }
    };
    let mut link_listeners = Vec::new();
    for addr in &config.links.listen {
        match LinkListener::bind(addr, config.protected_socket_mode, config.protected_socket_group) {
            Ok(l) => link_listeners.push((addr.clone(), l)),
            Err(e) => {
                remove_sockets(&config);
                return Err(Error::unavailable(format!(
                    "cannot listen for node links on {addr}: {e}"
                )));
            }
        }
    }

    let state = shared.prov.state()?;
    crate::log_notice!(
        "iamd {} serving node \"{}\" ({}){} on {} and {}",
        crate::VERSION,
        config.node_id,
        state.name(),
        if provisioning_mode { " in provisioning mode" } else { "" },
        config.public_socket.display(),
        config.protected_socket.display()
    );
    if let Err(e) = crate::notify::notify("READY=1") {
        crate::log_warn!("cannot notify the service manager: {e}");
    }

    let why = smol::block_on(EXECUTOR.run(async {
        let a = EXECUTOR.spawn(accept_loop(public, Socket::Public, shared.clone()));
        let b = EXECUTOR.spawn(accept_loop(protected, Socket::Protected, shared.clone()));
        let c = EXECUTOR.spawn(watch_identity(shared.clone(), signals.reload));
        let d = EXECUTOR.spawn(reconcile_periodically(shared.clone()));
        let e = EXECUTOR.spawn(renew_when_due(shared.clone()));
        let links: Vec<_> = link_listeners
            .into_iter()
            .map(|(addr, l)| EXECUTOR.spawn(accept_links(addr, l, shared.clone())))
            .collect();
        let why = signals
            .stop
            .recv()
            .await
            .unwrap_or_else(|_| "signal thread ended".into());
        drop((a, b, c, d, e, links));
        why
    }));
    let _ = crate::notify::notify("STOPPING=1");
    crate::log_notice!("{why}: stopping");
    remove_sockets(&config);
    Ok(())
}

/// Reconcile the database with the stores every `reconcile.interval` (the start-up pass
/// ran before the sockets opened).
async fn reconcile_periodically(shared: Arc<Shared>) {
    let interval = shared.prov.config.reconcile.interval;
    if interval.is_zero() {
        return;
    }
    loop {
        smol::Timer::after(interval).await;
        let s = shared.clone();
        match blocking::unblock(move || s.prov.reconcile()).await {
            Ok(report) if !report.is_empty() => shared.publish_cert_changes(),
            Ok(_) => {}
            Err(e) => crate::log_error!("reconciliation: {e}"),
        }
    }
}

/// Longest sleep of the renewal scheduler (a certificate applied meanwhile wakes it at once).
const RENEW_POLL_MAX: std::time::Duration = std::time::Duration::from_secs(60);

/// Renew the certificates of modules with a `[modules.renew]` policy when they are due, and
/// resume renewals a restart interrupted.
async fn renew_when_due(shared: Arc<Shared>) {
    if shared.prov.config.modules.iter().all(|m| m.renew.is_none()) {
        return;
    }
    loop {
        let s = shared.clone();
        let wait = match blocking::unblock(move || crate::renewal::run_due(&s.prov)).await {
            Ok((applied, next)) => {
                if applied {
                    shared.publish_cert_changes();
                }
                let now = time::OffsetDateTime::now_utc().unix_timestamp();
                std::time::Duration::from_secs((next - now).clamp(1, RENEW_POLL_MAX.as_secs() as i64) as u64)
            }
            Err(e) => {
                crate::log_error!("renewal: {e}");
                RENEW_POLL_MAX
            }
        };
        let changed = shared.certs_changed.1.clone();
        smol::future::or(
            async {
                smol::Timer::after(wait).await;
            },
            async {
                let _ = changed.recv().await;
            },
        )
        .await;
    }
}

/// Check the identity files on SIGHUP and every poll interval; push changed subjects.
async fn watch_identity(shared: Arc<Shared>, reload: smol::channel::Receiver<()>) {
    let interval = shared.prov.config.identity.poll_interval;
    loop {
        // A closed channel (the signal thread has ended) means no more HUPs: the timer alone.
        let hup = smol::future::or(
            async {
                match reload.recv().await {
                    Ok(()) => true,
                    Err(_) => smol::future::pending().await,
                }
            },
            async {
                smol::Timer::after(interval).await;
                false
            },
        )
        .await;
        let s = shared.clone();
        if let Some(subjects) = blocking::unblock(move || s.identity.refresh()).await {
            crate::log_notice!(
                "subjects changed ({} now){}",
                subjects.len(),
                if hup { " on SIGHUP" } else { "" }
            );
            shared.subjects.send(subjects);
        }
    }
}

async fn accept_loop(listener: Async<UnixListener>, socket: Socket, shared: Arc<Shared>) {
    let max = shared.prov.config.max_connections;
    let places = Arc::new(Semaphore::new(max));
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let peer = match transport::peer_credentials(stream.get_ref()) {
                    Ok(p) => p,
                    Err(e) => {
                        crate::log_warn!("{socket:?} socket: cannot read peer credentials: {e}");
                        continue;
                    }
                };
                let admitted = admitted(&shared.prov.config, &peer);
                // Users who are not admitted are counted per uid and leave a reserve of
                // places to admitted ones (the protected socket refuses them after this).
                let quota = match (admitted, socket) {
                    (false, Socket::Public) => shared.quotas.connection(peer.uid).map(Some),
                    _ => Ok(None),
                };
                let permit = match quota {
                    Err(e) => Err(e),
                    Ok(q) => places.try_acquire_arc().map(|p| (p, q)).ok_or_else(|| {
                        Error::unavailable(format!(
                            "too many connections on the {socket:?} socket (at most {max}); try again later"
                        ))
                    }),
                };
                let (permit, quota) = match permit {
                    Ok(p) => p,
                    Err(e) => {
                        // Refused with a clear error rather than left waiting in the backlog.
                        crate::log_info!("{socket:?} socket: refused pid {} uid {}: {e}", peer.pid, peer.uid);
                        EXECUTOR
                            .spawn(async move {
                                let lock = smol::lock::Mutex::new(());
                                send_last(&stream, &lock, wire::error_frame(0, &e, wire::DEFAULT_BODY_LIMIT)).await;
                            })
                            .detach();
                        continue;
                    }
                };
                let shared = shared.clone();
                let fut = async move {
                    serve(stream, socket, shared, Client { peer, admitted }).await;
                    drop((permit, quota));
                };
                EXECUTOR.spawn(fut).detach();
            }
            Err(e) => {
                crate::log_error!("accept on the {socket:?} socket: {e}");
                smol::Timer::after(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// Who is at the other end of a connection.
struct Client {
    peer: PeerCredentials,
    /// Root or a configured uid or gid: not counted by the quotas, never idled out.
    admitted: bool,
}

/// Input read and thrown away after a protocol error, so that closing with unread data
/// does not reset the connection before the peer has read the error.
const DRAIN_LIMIT: usize = 1024 * 1024;
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(1);

/// Send a last error frame and close gracefully: shut down writing, drain what the peer
/// still sends (bounded in bytes and time), then drop the connection.
async fn send_last(stream: &Async<UnixStream>, lock: &smol::lock::Mutex<()>, frame: Vec<u8>) {
    use smol::io::AsyncReadExt;
    if !send(stream, lock, frame).await {
        return;
    }
    let _ = stream.get_ref().shutdown(std::net::Shutdown::Write);
    let drain = async {
        let mut buf = [0u8; 4096];
        let mut total = 0;
        while total < DRAIN_LIMIT {
            match (&mut &*stream).read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    };
    smol::future::or(drain, async {
        smol::Timer::after(DRAIN_TIME).await;
    })
    .await;
}

/// How long one frame may take to write before the peer counts as not reading; set once
/// from the configuration at start.
static WRITE_TIMEOUT: std::sync::OnceLock<std::time::Duration> = std::sync::OnceLock::new();

/// Write a whole frame; concurrent answers on one connection are serialised by `lock`. A
/// peer that does not read within the write timeout is disconnected (both directions shut),
/// so that every task writing to it ends and nothing queues up for it.
async fn send(stream: &Async<UnixStream>, lock: &smol::lock::Mutex<()>, frame: Vec<u8>) -> bool {
    let _g = lock.lock().await;
    let limit = *WRITE_TIMEOUT.get_or_init(|| crate::config::DEFAULT_WRITE_TIMEOUT);
    let written = smol::future::or(
        async { Some(transport::write_frame(&mut &*stream, &frame).await) },
        async {
            smol::Timer::after(limit).await;
            None
        },
    )
    .await;
    match written {
        Some(r) => r.is_ok(),
        None => {
            crate::log_warn!(
                "a client did not read an answer within {} s; disconnected",
                limit.as_secs()
            );
            let _ = stream.get_ref().shutdown(std::net::Shutdown::Both);
            false
        }
    }
}

async fn serve(stream: Async<UnixStream>, socket: Socket, shared: Arc<Shared>, client: Client) {
    let stream = Arc::new(stream);
    let lock = Arc::new(smol::lock::Mutex::new(()));
    let limit = shared.body_limit;
    let peer = &client.peer;
    crate::log_debug!(
        "{socket:?} socket: connection from pid {} uid {} gid {}",
        peer.pid,
        peer.uid,
        peer.gid
    );
    if socket == Socket::Protected && !client.admitted {
        crate::log_warn!(
            "protected socket: refused pid {} uid {} gid {}",
            peer.pid,
            peer.uid,
            peer.gid
        );
        let e = Error::unauthorized(format!(
            "uid {} gid {} is not allowed on the protected socket",
            peer.uid, peer.gid
        ));
        Box::pin(send_last(&stream, &lock, wire::error_frame(0, &e, limit))).await;
        return;
    }

    let mut greeted = false;
    let places = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    // Dropped when this connection ends, which ends its subscriptions.
    let (_open, closed) = smol::channel::bounded::<()>(1);
    let stall = shared.prov.config.frame_timeout;
    // Requests in flight and subscriptions held: a connection with none is idle.
    let busy = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let idle_limit = shared.quotas.config().idle_timeout;
    loop {
        let mut reader = &*stream;
        // Boxed, as are the other awaits below: a connection's task stays small while it waits.
        let next = Box::pin(transport::read_frame_timed(&mut reader, limit, stall));
        let frame = if greeted && client.admitted {
            next.await
        } else if greeted {
            // A user who is not admitted keeps its place only while it uses it.
            let busy = busy.clone();
            smol::future::or(next, async move {
                loop {
                    smol::Timer::after(idle_limit).await;
                    if busy.load(std::sync::atomic::Ordering::SeqCst) == 0 {
                        return Err(FrameError::Idle(idle_limit.as_secs()));
                    }
                }
            })
            .await
        } else {
            // A peer that does not complete its hello in time loses its place.
            let deadline = shared.prov.config.hello_timeout;
            smol::future::or(next, async move {
                smol::Timer::after(deadline).await;
                Err(FrameError::HelloTimeout(deadline.as_secs()))
            })
            .await
        };
        let (header, body) = match frame {
            Ok(Some(f)) => f,
            Ok(None) => return,
            Err(e) => {
                crate::log_warn!("{socket:?} socket, pid {}: {e}; closing", peer.pid);
                let id = match e {
                    FrameError::UnsupportedVersion { id, .. } => id,
                    _ => 0,
                };
                if !matches!(e, FrameError::Io(_) | FrameError::Truncated) {
                    Box::pin(send_last(&stream, &lock, wire::error_frame(id, &e.into(), limit))).await;
                }
                return;
            }
        };
        // The body may carry a password: zeroed once decoded (the request zeroes its own copy).
        let body = zeroize::Zeroizing::new(body);
        let request = match decode_request(header.kind, &body) {
            Ok(r) => r,
            Err(e) => {
                crate::log_warn!("{socket:?} socket, pid {}: {e}; closing", peer.pid);
                Box::pin(send_last(&stream, &lock, wire::error_frame(header.id, &e, limit))).await;
                return;
            }
        };
        if !greeted {
            let answer = match request {
                Request::Hello {
                    version,
                    role: Role::Client,
                    ..
                } if version == crate::PROTOCOL_VERSION => {
                    greeted = true;
                    wire::encode_frame(
                        FrameKind::Response,
                        header.id,
                        &Response::Hello {
                            version: crate::PROTOCOL_VERSION,
                            node_id: shared.prov.config.node_id.clone(),
                        },
                        limit,
                    )
                    .expect("hello fits")
                }
                Request::Hello {
                    version,
                    role: Role::Client,
                    ..
                } => wire::error_frame(
                    header.id,
                    &Error::protocol(format!(
                        "protocol version {version} is not supported; this iamd speaks version {}",
                        crate::PROTOCOL_VERSION
                    )),
                    limit,
                ),
                Request::Hello { role, .. } => wire::error_frame(
                    header.id,
                    &Error::protocol(format!(
                        "role {role:?} is not served on this socket; node links use the link listeners"
                    )),
                    limit,
                ),
                other => wire::error_frame(
                    header.id,
                    &Error::protocol(format!("expected Hello first, got {}", other.name())),
                    limit,
                ),
            };
            if !greeted {
                Box::pin(send_last(&stream, &lock, answer)).await;
                return;
            }
            if !Box::pin(send(&stream, &lock, answer)).await {
                return;
            }
            continue;
        }
        if matches!(
            request,
            Request::SubscribeSubjectsChanged | Request::SubscribeNodeChanged | Request::SubscribeCertChanged { .. }
        ) {
            let held = match client.admitted {
                true => Ok(None),
                false => shared.quotas.subscription(peer.uid).map(Some),
            };
            match held {
                Ok(held) => {
                    let sub = Subscriber {
                        _held: held,
                        _busy: Busy::new(&busy),
                        reserved: match client.admitted {
                            true => 0,
                            false => shared.quotas.config().reserved_subscriptions,
                        },
                    };
                    Box::pin(subscribe(
                        &request,
                        header.id,
                        &stream,
                        &lock,
                        &shared,
                        closed.clone(),
                        sub,
                    ))
                    .await;
                }
                Err(e) => {
                    crate::log_info!("{} from pid {}: {e}", request.name(), peer.pid);
                    if !Box::pin(send(&stream, &lock, wire::error_frame(header.id, &e, limit))).await {
                        return;
                    }
                }
            }
            continue;
        }
        let permit = places.acquire_arc().await;
        let in_flight = Busy::new(&busy);
        let (stream, lock, shared, pid, uid) = (stream.clone(), lock.clone(), shared.clone(), peer.pid, peer.uid);
        let gone = closed.clone();
        let fut = async move {
            let op = request.name();
            let answer = async {
                match request.carries_password() {
                    true => {
                        shared
                            .guesses
                            .attempt(uid, dispatch(request, socket, uid, shared.clone()))
                            .await
                    }
                    false => dispatch(request, socket, uid, shared.clone()).await,
                }
            };
            // A request whose client has gone is dropped (a step already running on a
            // blocking thread completes; one waiting for its turn never starts).
            let answer = smol::future::or(async { Some(answer.await) }, async {
                let _ = gone.recv().await;
                None
            });
            let Some(answer) = answer.await else {
                crate::log_info!("{op} from pid {pid}: dropped, its client has gone");
                return;
            };
            let frame = match answer {
                Ok(resp) => wire::encode_frame(FrameKind::Response, header.id, &resp, limit)
                    .unwrap_or_else(|e| wire::error_frame(header.id, &Error::from(e).context(op), limit)),
                Err(e) => {
                    crate::log_info!("{op} from pid {pid}: {} ({})", e, e.kind.name());
                    wire::error_frame(header.id, &e, limit)
                }
            };
            send(&stream, &lock, frame).await;
            drop((permit, in_flight));
        };
        EXECUTOR.spawn(fut).detach();
    }
}

/// One count of a connection's work (a request in flight, a subscription), given back
/// when dropped.
struct Busy(Arc<std::sync::atomic::AtomicUsize>);

impl Busy {
    fn new(count: &Arc<std::sync::atomic::AtomicUsize>) -> Busy {
        count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Busy(count.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// What a subscription holds while it lasts: its place under the subscriber's quota, and
/// its count against the connection's idleness; and the slots it must leave free.
struct Subscriber {
    _held: Option<Held>,
    _busy: Busy,
    reserved: usize,
}

/// A subscription: acknowledged with `Subscribed`, then an event frame (with the request's
/// id) per change, until the connection closes or the subscriber falls too far behind.
async fn subscribe(
    request: &Request,
    id: u64,
    stream: &Arc<Async<UnixStream>>,
    lock: &Arc<smol::lock::Mutex<()>>,
    shared: &Arc<Shared>,
    closed: smol::channel::Receiver<()>,
    sub: Subscriber,
) {
    let reserved = sub.reserved;
    let limit = shared.body_limit;
    enum Source {
        Subjects(smol::channel::Receiver<Vec<String>>),
        Nodes(smol::channel::Receiver<NodeInfo>),
        Certs(smol::channel::Receiver<(String, Option<CertInfo>)>, String),
    }
    let subscribed = match request {
        Request::SubscribeSubjectsChanged => shared
            .subjects
            .subscribe(reserved)
            .map(|(k, rx)| (k, Source::Subjects(rx))),
        Request::SubscribeCertChanged { cert_type } => match shared.prov.modules.get(cert_type) {
            _ if cert_type.is_empty() => shared
                .certs
                .subscribe(reserved)
                .map(|(k, rx)| (k, Source::Certs(rx, String::new()))),
            Ok(_) => shared
                .certs
                .subscribe(reserved)
                .map(|(k, rx)| (k, Source::Certs(rx, cert_type.clone()))),
            Err(e) => Err(e),
        },
        _ => shared
            .nodes
            .events
            .subscribe(reserved)
            .map(|(k, rx)| (k, Source::Nodes(rx))),
    };
    let (key, source) = match subscribed {
        Ok(s) => s,
        Err(e) => {
            send(stream, lock, wire::error_frame(id, &e, limit)).await;
            return;
        }
    };
    let ack = wire::encode_frame(FrameKind::Response, id, &Response::Subscribed, limit).expect("fits");
    if !send(stream, lock, ack).await {
        return;
    }
    let (stream, lock, shared) = (stream.clone(), lock.clone(), shared.clone());
    EXECUTOR
        .spawn(async move {
            loop {
                let next = async {
                    match &source {
                        Source::Subjects(rx) => rx.recv().await.map(Event::SubjectsChanged).ok(),
                        Source::Nodes(rx) => rx.recv().await.map(Event::NodeChanged).ok(),
                        Source::Certs(rx, only) => loop {
                            match rx.recv().await {
                                Ok((cert_type, current)) if only.is_empty() || *only == cert_type => {
                                    break Some(Event::CertChanged { cert_type, current })
                                }
                                Ok(_) => continue,
                                Err(_) => break None,
                            }
                        },
                    }
                };
                let event = smol::future::or(async { Some(next.await) }, async {
                    let _ = closed.recv().await;
                    None
                })
                .await;
                match event {
                    Some(Some(e)) => {
                        let frame = wire::encode_frame(FrameKind::Event, id, &e, limit)
                            .unwrap_or_else(|e| wire::error_frame(id, &Error::from(e), limit));
                        if !send(&stream, &lock, frame).await {
                            break;
                        }
                    }
                    Some(None) => {
                        let e = Error::unavailable(format!(
                            "subscription ended: the subscriber fell {SUBSCRIBER_BACKLOG} events behind"
                        ));
                        send(&stream, &lock, wire::error_frame(id, &e, limit)).await;
                        break;
                    }
                    None => break,
                }
            }
            match &source {
                Source::Subjects(_) => shared.subjects.unsubscribe(key),
                Source::Nodes(_) => shared.nodes.events.unsubscribe(key),
                Source::Certs(..) => shared.certs.unsubscribe(key),
            }
            drop(sub);
        })
        .detach();
}

fn decode_request(kind: FrameKind, body: &[u8]) -> Result<Request> {
    if kind != FrameKind::Request {
        return Err(Error::protocol(format!("expected a request frame, got {kind:?}")));
    }
    wire::decode_request(body)
}

async fn dispatch(request: Request, socket: Socket, uid: u32, shared: Arc<Shared>) -> Result<Response> {
    if request.is_protected() && socket != Socket::Protected {
        return Err(Error::unauthorized(format!(
            "{} is served on the protected socket only",
            request.name()
        )));
    }
    if let Request::SignWithLinkIdentity { message, .. } = &request {
        may_sign_for_link(&shared.prov.config, uid, message)?;
    }
    if request.is_link_only() {
        return Err(Error::protocol(format!(
            "{} is served on node links only",
            request.name()
        )));
    }
    // Another node's request: its info from the registry, everything else over its link.
    match (&request, request.target_node()) {
        (Request::GetNodeInfo { node_id }, _) if shared.nodes.is_other(node_id) => {
            return shared.nodes.info(node_id).map(Response::NodeInfo)
        }
        (_, Some(node_id)) if shared.nodes.is_other(node_id) => {
            let node_id = node_id.to_string();
            let mut request = request;
            // A secondary is given its own secret, never the unit's password.
            if let Some(password) = request.password_mut() {
                *password = crate::secret::node_secret(password, &shared.prov.config.unit_id, &node_id);
            }
            return shared.nodes.forward(&node_id, request).await;
        }
        _ => {}
    }
    blocking::unblock(move || handle(&shared, request)).await
}

/// SignWithLinkIdentity is no signing oracle: it is served only on a secondary node (the
/// main node makes no links), only to root and `links.signer_uids` (iam-nodelink), and only
/// for what a TLS 1.3 client CertificateVerify signs.
fn may_sign_for_link(config: &Config, uid: u32, message: &[u8]) -> Result<()> {
    if config.role != crate::config::Role::Secondary {
        return Err(Error::unauthorized(
            "SignWithLinkIdentity is not served on the main node: it makes no links",
        ));
    }
    if uid != 0 && !config.links.signer_uids.contains(&uid) {
        return Err(Error::unauthorized(format!(
            "SignWithLinkIdentity: uid {uid} is not the link's user (links.signer_uids)"
        )));
    }
    if !crate::tls::is_client_certificate_verify(message) {
        return Err(Error::unauthorized(
            "SignWithLinkIdentity signs only a TLS 1.3 client CertificateVerify",
        ));
    }
    Ok(())
}

/// Answer one request (on a blocking thread).
fn handle(shared: &Shared, request: Request) -> Result<Response> {
    let prov = &shared.prov;
    let op = request.name();
    let changes_node = request.changes_node_state();
    let changes_certs = request.changes_certs();
    let r = match request {
        Request::Hello { .. } => Err(Error::protocol("Hello was already exchanged")),
        Request::Version => Ok(Response::Version {
            version: crate::VERSION.into(),
            protocol: crate::PROTOCOL_VERSION,
        }),
        Request::GetNodeInfo { node_id } => prov.node_info(&node_id).map(Response::NodeInfo),
        Request::GetAllNodeIds => Ok(Response::NodeIds(shared.nodes.ids())),
        Request::GetCert {
            cert_type,
            issuer,
            serial,
        } => prov
            .modules
            .get_cert(&prov.db, &cert_type, issuer.as_deref(), serial.as_deref())
            .map(Response::Cert),
        Request::ListCerts { node_id } => prov.list_certs(&node_id).map(Response::Certs),
        Request::CheckCerts { node_id } => prov.check_certs(&node_id).map(Response::CertChecks),
        Request::GetProvisioningStatus { node_id } => prov.status(&node_id).map(Response::Status),
        Request::GetCertTypes { node_id } => prov.cert_types(&node_id).map(Response::CertTypes),
        Request::StartProvisioning { node_id, password } => prov.start(&node_id, &password).map(|_| Response::Done),
        Request::CreateKey {
            node_id,
            cert_type,
            subject,
            password,
        } => prov
            .create_key(&node_id, &cert_type, &subject, &password)
            .map(|pem| Response::Csr { pem }),
        Request::ApplyCert {
            node_id,
            cert_type,
            chain_pem,
        } => prov.apply(&node_id, &cert_type, &chain_pem).map(Response::Applied),
        Request::FinishProvisioning { node_id, password } => prov.finish(&node_id, &password).map(|_| Response::Done),
        Request::Deprovision { node_id, password } => prov.deprovision(&node_id, &password).and_then(|_| {
            // The main node starts over: nodes whose links are down are forgotten.
            shared.nodes.forget_disconnected(&prov.db).map(|_| Response::Done)
        }),
        Request::PauseNode { node_id } => prov.pause(&node_id).map(|_| Response::Done),
        Request::ResumeNode { node_id } => prov.resume(&node_id).map(|_| Response::Done),
        Request::RegisterInstance { instance, permissions } => shared
            .permissions
            .register(&prov.db, instance, permissions)
            .map(Response::Secret),
        Request::UnregisterInstance { instance } => shared
            .permissions
            .unregister(&prov.db, &instance)
            .map(|_| Response::Done),
        Request::GetPermissions {
            secret,
            functional_server_id,
        } => shared
            .permissions
            .get(&secret, &functional_server_id)
            .map(|(instance, entries)| Response::Permissions { instance, entries }),
        Request::GetSystemInfo => {
            shared
                .identity
                .system_info()
                .map(|(system_id, unit_model, version)| Response::SystemInfo {
                    system_id,
                    unit_model,
                    version,
                })
        }
        Request::GetSubjects => Ok(Response::Subjects(shared.identity.subjects())),
        Request::SubscribeSubjectsChanged | Request::SubscribeNodeChanged | Request::SubscribeCertChanged { .. } => {
            Err(Error::internal("subscriptions are served by the connection"))
        }
        Request::RegisterNode { .. } | Request::NodeInfoChanged { .. } => {
            Err(Error::internal("node links are served by the link listeners"))
        }
        Request::ForgetNode { node_id } => shared.nodes.forget(&prov.db, &node_id).map(|_| Response::Done),
        Request::GetLinkIdentity => {
            prov.modules
                .identity(&prov.db, &prov.config.links.identity)
                .map(|(cert_der, serial, id)| Response::LinkIdentity {
                    cert_der,
                    algorithm: id.algorithm.name().into(),
                    serial,
                })
        }
        Request::SignWithLinkIdentity { serial, message } => prov
            .modules
            .sign_with(&prov.db, &prov.config.links.identity, &serial, &message)
            .map(Response::Signature),
    };
    if r.is_ok() {
        crate::log_info!("{op}: done");
        if changes_certs {
            shared.publish_cert_changes();
        }
        if changes_node {
            match prov.node_info("") {
                Ok(info) => shared.nodes.events.send(info),
                Err(e) => crate::log_warn!("node info for subscribers: {e}"),
            }
        }
    }
    r
}

async fn accept_links(addr: LinkAddr, listener: LinkListener, shared: Arc<Shared>) {
    let places = Arc::new(Semaphore::new(crate::nodes::MAX_NODES));
    loop {
        let permit = places.acquire_arc().await;
        match listener.accept().await {
            Ok((stream, from)) => {
                let shared = shared.clone();
                let addr = addr.clone();
                EXECUTOR
                    .spawn(async move {
                        serve_link(stream, &addr, from, shared).await;
                        drop(permit);
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
fn plaintext_allowed(shared: &Shared, addr: &LinkAddr) -> std::result::Result<(), String> {
    use crate::config::LinkTls;
    match shared.prov.config.links.tls {
        _ if addr.is_tcp() => Err("links over TCP always use TLS".into()),
        LinkTls::Off => Ok(()),
        LinkTls::Auto if shared.provisioning_mode => Ok(()),
        LinkTls::Auto => Err("links use TLS once the main node is out of provisioning mode".into()),
        LinkTls::Required => Err("links.tls is \"required\"".into()),
    }
}

/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

/// The TLS handshake of a link, as the main node: its identity from its link identity
/// module, the peer's certificate required and verified. Returns the stream and the peer's
/// certificate (DER).
async fn accept_tls(stream: BoxStream, shared: &Arc<Shared>) -> Result<(BoxStream, Vec<u8>)> {
    let s = shared.clone();
    let config = blocking::unblock(move || {
        let (_, _, identity) = s.prov.modules.identity(&s.prov.db, &s.prov.config.links.identity)?;
        let roots = crate::certs::read_roots(&s.prov.config)?;
        crate::tls::server_config(&identity, &roots)
    })
    .await?;
    let handshake = futures_rustls::TlsAcceptor::from(config).accept(stream);
    let tls = transport::within(shared.prov.config.hello_timeout, "no TLS handshake", async {
        handshake.await.map_err(|e| Error::unauthorized(e.to_string()))
    })
    .await?;
    let cert = crate::tls::peer_leaf(tls.get_ref().1)?;
    Ok((Box::new(tls), cert))
}

/// Read the link's hello (within the hello timeout) and answer it. Returns the node id the
/// secondary states.
async fn link_hello(
    stream: &mut BoxStream,
    shared: &Shared,
    admission: Option<&crate::config::Admission>,
) -> Result<String> {
    let limit = shared.body_limit;
    let deadline = shared.prov.config.hello_timeout;
    let frame = transport::within(deadline, "no hello", async {
        transport::read_frame(stream, limit).await.map_err(Error::from)
    })
    .await?;
    let (header, body) = frame.ok_or_else(|| Error::unavailable("closed before its hello"))?;
    match decode_request(header.kind, &body)? {
        Request::Hello {
            version,
            role: Role::NodeLink,
            node_id,
        } if version == crate::PROTOCOL_VERSION && !node_id.is_empty() => {
            if let Some(a) = admission.filter(|a| !a.nodes.is_empty() && !a.nodes.contains(&node_id)) {
                return Err(Error::unauthorized(format!(
                    "node \"{node_id}\" is not admitted on this link listener (links.listener nodes: {})",
                    a.nodes.join(", ")
                )));
            }
            let answer = Response::Hello {
                version: crate::PROTOCOL_VERSION,
                node_id: shared.prov.config.node_id.clone(),
            };
            let frame = wire::encode_frame(FrameKind::Response, header.id, &answer, limit)?;
            transport::write_frame(stream, &frame).await?;
            Ok(node_id)
        }
        Request::Hello {
            version,
            role: Role::NodeLink,
            ..
        } if version != crate::PROTOCOL_VERSION => Err(Error::protocol(format!(
            "protocol version {version} is not supported; this iamd speaks version {}",
            crate::PROTOCOL_VERSION
        ))),
        Request::Hello {
            role: Role::NodeLink, ..
        } => Err(Error::protocol("a node link's hello must name its node")),
        Request::Hello { role, .. } => Err(Error::protocol(format!(
            "role {role:?} is not served on a link listener"
        ))),
        other => Err(Error::protocol(format!("expected Hello first, got {}", other.name()))),
    }
}

/// One node link: admission, hello, then RegisterNode and the node's info changes from the
/// secondary, while forwarded requests go the other way (see [`Nodes::forward`]).
async fn serve_link(mut stream: BoxStream, addr: &LinkAddr, from: LinkPeer, shared: Arc<Shared>) {
    let limit = shared.body_limit;
    let refuse = |e: Error| wire::error_frame(0, &e, limit);
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
    // A TLS ClientHello starts with a handshake record (0x16); a frame with its magic.
    let (first, prefixed) = match transport::Prefixed::peek(stream).await {
        Ok(p) => p,
        Err(e) => {
            crate::log_warn!("link listener {addr}, {from}: {e}");
            return;
        }
    };
    let mut stream: BoxStream = Box::new(prefixed);
    let mut peer_cert = None;
    if first == Some(TLS_HANDSHAKE) {
        match accept_tls(stream, &shared).await {
            Ok((s, cert)) => {
                stream = s;
                peer_cert = Some(cert);
            }
            Err(e) => {
                crate::log_warn!("link listener {addr}, {from}: TLS: {e}; closing");
                return;
            }
        }
    } else if let Err(why) = plaintext_allowed(&shared, addr) {
        crate::log_warn!("link listener {addr}: refused {from}: {why}");
        let e = Error::unauthorized(format!("this link must use TLS: {why}"));
        let _ = transport::write_frame(&mut stream, &refuse(e)).await;
        return;
    }
    let node_id = match link_hello(&mut stream, &shared, admission).await {
        Ok(id) => id,
        Err(e) => {
            crate::log_warn!("link listener {addr}, {from}: {e}; closing");
            let _ = transport::write_frame(&mut stream, &refuse(e)).await;
            return;
        }
    };
    if let Some(cert) = &peer_cert {
        if let Err(e) = crate::tls::check_peer(
            cert,
            crate::config::Eku::ClientAuth,
            &node_id,
            &shared.prov.config.unit_id,
        ) {
            crate::log_warn!("link listener {addr}, {from}: {e}; closing");
            let _ = transport::write_frame(&mut stream, &refuse(e)).await;
            return;
        }
    }
    crate::log_info!(
        "link listener {addr}: node \"{node_id}\" linked from {from}{}",
        if peer_cert.is_some() { " over TLS" } else { "" }
    );
    let (peer, reader) = Peer::new(
        format!("node \"{node_id}\""),
        stream,
        limit,
        shared.prov.config.frame_timeout,
    );
    let registered = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let changes: Arc<std::sync::Mutex<InfoChanges>> = Default::default();
    let reason = peer
        .read_loop(reader, |id, request| {
            let (shared, peer, registered, node_id, changes) = (
                shared.clone(),
                peer.clone(),
                registered.clone(),
                node_id.clone(),
                changes.clone(),
            );
            async move {
                let result = link_request(&shared, &peer, &registered, &node_id, &changes, request).await;
                if let Err(e) = &result {
                    crate::log_warn!("node \"{node_id}\": {e}");
                }
                let _ = peer.answer(id, result).await;
                // A link that could not register its node has nothing more to do.
                registered.load(std::sync::atomic::Ordering::SeqCst)
            }
        })
        .await;
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
struct InfoChanges {
    window: Option<std::time::Instant>,
    in_window: u32,
    flushing: bool,
    last_commit: Option<std::time::Instant>,
}

fn lock_changes(c: &std::sync::Mutex<InfoChanges>) -> std::sync::MutexGuard<'_, InfoChanges> {
    c.lock().unwrap_or_else(|p| p.into_inner())
}

/// NodeInfoChanged on a registered link: refused (and the link closed) past the rate limit;
/// otherwise served and announced at once, and committed now or, when a commit was made
/// less than [`NODE_INFO_COMMIT_INTERVAL`] ago, once that has passed (the latest wins).
fn info_changed(
    shared: &Arc<Shared>,
    peer: &Arc<Peer>,
    changes: &Arc<std::sync::Mutex<InfoChanges>>,
    node_id: &str,
    info: NodeInfo,
) -> Result<Response> {
    let now = std::time::Instant::now();
    let wait = {
        let mut c = lock_changes(changes);
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
                let mut c = lock_changes(&changes);
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

/// A request from a secondary node over its link.
async fn link_request(
    shared: &Arc<Shared>,
    peer: &Arc<Peer>,
    registered: &std::sync::atomic::AtomicBool,
    node_id: &str,
    changes: &Arc<std::sync::Mutex<InfoChanges>>,
    request: Request,
) -> Result<Response> {
    use std::sync::atomic::Ordering;
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
        // The secondary's keepalive: this iamd still knows the link.
        Request::Version if registered.load(Ordering::SeqCst) => {
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
