//! Client connections on the public and protected sockets: admission, quotas and idleness,
//! the hello, requests answered concurrently, and subscriptions.

use super::*;

pub(super) async fn accept_loop(listener: Async<UnixListener>, socket: Socket, shared: Arc<Shared>) {
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
                let permit = quota.and_then(|q| {
                    places.try_acquire_arc().map(|p| (p, q)).ok_or_else(|| {
                        Error::unavailable(format!(
                            "too many connections on the {socket:?} socket (at most {max}); try again later"
                        ))
                    })
                });
                let (permit, quota) = match permit {
                    Ok(p) => p,
                    Err(e) => {
                        // Refused with a clear error rather than left waiting in the backlog.
                        crate::log_info!("{socket:?} socket: refused pid {} uid {}: {e}", peer.pid, peer.uid);
                        EXECUTOR
                            .spawn(async move {
                                let lock = smol::lock::Mutex::new(());
                                let oldest = Wire::new(wire::DEFAULT_BODY_LIMIT).at(crate::MIN_PROTOCOL_VERSION);
                                send_last(&stream, &lock, oldest.error(0, &e)).await;
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
pub(super) struct Client {
    peer: PeerCredentials,
    /// Root or a configured uid or gid: not counted by the quotas, never idled out.
    admitted: bool,
}

/// Input read and thrown away after a protocol error, so that closing with unread data
/// does not reset the connection before the peer has read the error.
pub(super) const DRAIN_LIMIT: usize = 1024 * 1024;
pub(super) const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(1);

/// Send a last error frame and close gracefully: shut down writing, drain what the peer
/// still sends (bounded in bytes and time), then drop the connection.
pub(super) async fn send_last(stream: &Async<UnixStream>, lock: &smol::lock::Mutex<()>, frame: Vec<u8>) {
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
pub(super) static WRITE_TIMEOUT: std::sync::OnceLock<std::time::Duration> = std::sync::OnceLock::new();

/// Write a whole frame; concurrent answers on one connection are serialised by `lock`. A
/// peer that does not read within the write timeout is disconnected (both directions shut),
/// so that every task writing to it ends and nothing queues up for it.
pub(super) async fn send(stream: &Async<UnixStream>, lock: &smol::lock::Mutex<()>, frame: Vec<u8>) -> bool {
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

/// One client connection while it lasts: what every frame it sends is answered with.
struct Conn {
    stream: Arc<Async<UnixStream>>,
    /// Serialises the frames written to the stream.
    lock: Arc<smol::lock::Mutex<()>>,
    socket: Socket,
    shared: Arc<Shared>,
    client: Client,
    /// The version agreed in the hello; until then, refusals every peer can read.
    w: Wire,
    greeted: bool,
    /// Requests the connection may have in flight.
    places: Arc<Semaphore>,
    /// Set when the connection ends, which drops its requests in flight and ends its
    /// subscriptions.
    gone: Arc<Gone>,
    /// Requests in flight and subscriptions held: a connection with none is idle.
    busy: Arc<std::sync::atomic::AtomicUsize>,
}

pub(super) async fn serve(stream: Async<UnixStream>, socket: Socket, shared: Arc<Shared>, client: Client) {
    let peer = &client.peer;
    crate::log_debug!(
        "{socket:?} socket: connection from pid {} uid {} gid {}",
        peer.pid,
        peer.uid,
        peer.gid
    );
    let gone = Arc::new(Gone::default());
    let _set_when_done = SetOnDrop(gone.clone());
    let mut conn = Conn {
        stream: Arc::new(stream),
        lock: Arc::new(smol::lock::Mutex::new(())),
        socket,
        w: Wire::new(shared.body_limit).at(crate::MIN_PROTOCOL_VERSION),
        shared,
        client,
        greeted: false,
        places: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        gone,
        busy: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
    };
    let peer = &conn.client.peer;
    if socket == Socket::Protected && !conn.client.admitted {
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
        Box::pin(send_last(&conn.stream, &conn.lock, conn.w.error(0, &e))).await;
        return;
    }
    let limit = conn.shared.body_limit;
    let stall = conn.shared.prov.config.frame_timeout;
    let idle_limit = conn.shared.quotas.config().idle_timeout;
    loop {
        let mut reader = &*conn.stream;
        // Boxed, as is the answer to each frame below: a connection's task stays small while
        // it waits, which is most of its life.
        let next = Box::pin(transport::read_frame_timed(&mut reader, limit, stall));
        let frame = if conn.greeted && conn.client.admitted {
            next.await
        } else if conn.greeted {
            // A user who is not admitted keeps its place only while it uses it.
            let busy = conn.busy.clone();
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
            let deadline = conn.shared.prov.config.hello_timeout;
            smol::future::or(next, async move {
                smol::Timer::after(deadline).await;
                Err(FrameError::HelloTimeout(deadline.as_secs()))
            })
            .await
        };
        let more = match frame {
            Ok(Some((header, body))) => Box::pin(conn.on_frame(header, body)).await,
            Ok(None) => false,
            Err(e) => {
                Box::pin(conn.refuse(e)).await;
                false
            }
        };
        if !more {
            return;
        }
    }
}

/// One line of the audit trail: who asked what, on which socket, for which node, and how it
/// ended; never what the request carried.
fn audit(op: &str, uid: u32, pid: i32, socket: Socket, node: &str, outcome: &str) {
    crate::log_notice!(
        "audit: {op} by uid {uid} pid {pid} on the {} socket, node \"{}\": {outcome}",
        socket.name(),
        crate::log::escape(node)
    )
}

impl Conn {
    /// A frame that could not be read: refused with its error where the peer can still
    /// read one.
    async fn refuse(&self, e: FrameError) {
        crate::log_warn!("{:?} socket, pid {}: {e}; closing", self.socket, self.client.peer.pid);
        let id = match e {
            FrameError::UnsupportedVersion { id, .. } => id,
            _ => 0,
        };
        if !matches!(e, FrameError::Io(_) | FrameError::Truncated) {
            // A version this side does not speak is refused in the newest it does.
            let w = if self.greeted {
                self.w
            } else {
                self.w.at(crate::PROTOCOL_VERSION)
            };
            send_last(&self.stream, &self.lock, w.error(id, &e.into())).await;
        }
    }

    /// Answer one frame: the hello, a subscription, or a request (in a task of its own).
    /// False when the connection is to close.
    async fn on_frame(&mut self, header: wire::Header, body: Vec<u8>) -> bool {
        let (socket, pid) = (self.socket, self.client.peer.pid);
        // The body may carry a password: zeroed once decoded (the request zeroes its own copy).
        let body = zeroize::Zeroizing::new(body);
        if !self.greeted {
            self.w = self.w.at(header.version);
        }
        let request = match decode_request(header.kind, header.version, &body) {
            Ok(r) => r,
            Err(e) => {
                crate::log_warn!("{socket:?} socket, pid {pid}: {e}; closing");
                // Boxed, as the hello and the subscription are: the drain's buffer would
                // otherwise be allocated with every frame.
                Box::pin(send_last(&self.stream, &self.lock, self.w.error(header.id, &e))).await;
                return false;
            }
        };
        drop(body);
        if !self.greeted {
            return Box::pin(self.hello(header.id, request)).await;
        }
        if matches!(
            request,
            Request::SubscribeSubjectsChanged
                | Request::SubscribeNodeChanged
                | Request::SubscribeCertChanged { .. }
                | Request::SubscribeAlerts
        ) {
            // Audited as requests are: a protected one, and every refusal.
            let uid = self.client.peer.uid;
            let node = &self.shared.prov.config.node_id;
            let audit = |outcome: &str| audit(request.name(), uid, pid, socket, node, outcome);
            if let Err(e) = dispatch::admissible(&request, socket, uid, &self.shared.prov.config) {
                audit(&format!("refused, {}: {e}", e.kind.name()));
                return send(&self.stream, &self.lock, self.w.error(header.id, &e)).await;
            }
            let (shared, client) = (&self.shared, &self.client);
            let held = match client.admitted {
                true => Ok(None),
                false => shared.quotas.subscription(client.peer.uid).map(Some),
            };
            return match held {
                Ok(held) => {
                    if request.is_protected() {
                        audit("subscribed");
                    }
                    let sub = Subscriber {
                        _held: held,
                        _busy: Busy::new(&self.busy),
                        reserved: match client.admitted {
                            true => 0,
                            false => shared.quotas.config().reserved_subscriptions,
                        },
                    };
                    let (stream, lock, gone) = (&self.stream, &self.lock, self.gone.clone());
                    Box::pin(subscribe(
                        &request,
                        (header.id, self.w),
                        stream,
                        lock,
                        shared,
                        gone,
                        sub,
                    ))
                    .await;
                    true
                }
                Err(e) => {
                    audit(&format!("refused, {}: {e}", e.kind.name()));
                    send(&self.stream, &self.lock, self.w.error(header.id, &e)).await
                }
            };
        }
        let permit = self.places.acquire_arc().await;
        let in_flight = Busy::new(&self.busy);
        let (stream, lock, gone, w) = (self.stream.clone(), self.lock.clone(), self.gone.clone(), self.w);
        let op = request.name();
        let uid = self.client.peer.uid;
        // The audit trail: every protected operation, and every refusal of access, once,
        // with who asked and for which node; never what the request carried.
        // (Nothing is copied for it on the way in: the node is looked up when a line is made.)
        let protected = request.is_protected();
        let target = request.target_node().filter(|n| !n.is_empty()).map(str::to_string);
        let own = self.shared.clone();
        let audit = move |outcome: &str| {
            let node = target.as_deref().unwrap_or(&own.prov.config.node_id);
            audit(op, uid, pid, socket, node, outcome)
        };
        // Made here and boxed, so that the task holds a pointer while it waits, not the
        // request's whole state (which would count once per request in flight). A password's
        // attempt is dispatched only in its turn, after the uid's earlier wrong ones.
        let shared = self.shared.clone();
        let answer: Answer = match request.carries_password() {
            true => {
                let g = gone.clone();
                Box::pin(async move {
                    let attempt = async { dispatch(request, socket, uid, shared.clone(), g).await };
                    shared.guesses.attempt(uid, attempt).await
                })
            }
            false => dispatch(request, socket, uid, shared, gone.clone()),
        };
        let fut = async move {
            // A request whose client has gone is dropped: a step already running on a
            // blocking thread completes; one still waiting for the journal lock, or for
            // its turn, never starts.
            let answer = smol::future::or(async { Some(answer.await) }, async {
                gone.wait().await;
                None
            });
            let Some(answer) = answer.await else {
                if protected {
                    audit("dropped, its client has gone");
                }
                return;
            };
            let frame = match answer {
                Ok(resp) => {
                    if protected {
                        audit("done");
                    }
                    w.frame(FrameKind::Response, header.id, &resp)
                        .unwrap_or_else(|e| w.error(header.id, &Error::from(e).context(op)))
                }
                Err(e) => {
                    // (A read on the public socket that finds nothing is no refusal.)
                    if protected || e.kind == crate::error::ErrorKind::Unauthorized {
                        audit(&format!("refused, {}: {e}", e.kind.name()));
                    } else {
                        crate::log_info!("{op} from pid {pid}: {} ({})", e, e.kind.name());
                    }
                    w.error(header.id, &e)
                }
            };
            Box::pin(send(&stream, &lock, frame)).await;
            drop((permit, in_flight));
        };
        EXECUTOR.spawn(fut).detach();
        true
    }

    /// The first frame: a client's hello, answered with the version both sides speak; any
    /// other is refused and the connection closed.
    async fn hello(&mut self, id: u64, request: Request) -> bool {
        let w = self.w;
        let answer = match request {
            Request::Hello {
                version: max,
                min_version,
                role: Role::Client,
                ..
            } => match wire::agree(min_version, max) {
                Ok(version) => {
                    self.greeted = true;
                    self.w = w.at(version);
                    self.w
                        .frame(
                            FrameKind::Response,
                            id,
                            &Response::Hello {
                                version,
                                node_id: self.shared.prov.config.node_id.clone(),
                            },
                        )
                        .expect("hello fits")
                }
                Err(e) => w.error(id, &e),
            },
            Request::Hello { role, .. } => w.error(
                id,
                &Error::protocol(format!(
                    "role {role:?} is not served on this socket; node links use the link listeners"
                )),
            ),
            other => w.error(
                id,
                &Error::protocol(format!("expected Hello first, got {}", other.name())),
            ),
        };
        if !self.greeted {
            send_last(&self.stream, &self.lock, answer).await;
            return false;
        }
        send(&self.stream, &self.lock, answer).await
    }
}

/// Set once, when a connection ends: its requests in flight and its subscriptions wait for
/// it, and a step whose client has gone never starts (see [`provisioning::for_client`]).
/// A few dozen bytes per connection, where a channel used for it took 780.
#[derive(Default)]
pub(super) struct Gone(smol::lock::OnceCell<()>);

impl Gone {
    pub(super) fn is_set(&self) -> bool {
        self.0.is_initialized()
    }

    async fn wait(&self) {
        self.0.wait().await;
    }
}

/// Sets a connection's [`Gone`] however its task ends.
struct SetOnDrop(Arc<Gone>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        let _ = self.0 .0.try_set(());
    }
}

/// One count of a connection's work (a request in flight, a subscription), given back
/// when dropped.
pub(super) struct Busy(Arc<std::sync::atomic::AtomicUsize>);

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
pub(super) struct Subscriber {
    _held: Option<Held>,
    _busy: Busy,
    reserved: usize,
}

/// A subscription: acknowledged with `Subscribed`, then an event frame (with the request's
/// id) per change, until the connection closes or the subscriber falls too far behind.
pub(super) async fn subscribe(
    request: &Request,
    (id, w): (u64, Wire),
    stream: &Arc<Async<UnixStream>>,
    lock: &Arc<smol::lock::Mutex<()>>,
    shared: &Arc<Shared>,
    gone: Arc<Gone>,
    sub: Subscriber,
) {
    let reserved = sub.reserved;
    enum Source {
        Subjects(smol::channel::Receiver<Vec<String>>),
        Nodes(smol::channel::Receiver<NodeInfo>),
        Certs(smol::channel::Receiver<(String, Option<CertInfo>)>, String),
        Alerts(smol::channel::Receiver<crate::proto::wire::Alert>),
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
        Request::SubscribeAlerts => shared
            .prov
            .alerts
            .events
            .subscribe(reserved)
            .map(|(k, rx)| (k, Source::Alerts(rx))),
        _ => shared
            .nodes
            .events
            .subscribe(reserved)
            .map(|(k, rx)| (k, Source::Nodes(rx))),
    };
    let (key, source) = match subscribed {
        Ok(s) => s,
        Err(e) => {
            send(stream, lock, w.error(id, &e)).await;
            return;
        }
    };
    let ack = w.frame(FrameKind::Response, id, &Response::Subscribed).expect("fits");
    if !send(stream, lock, ack).await {
        return;
    }
    crate::log_debug!("{}: subscribed", request.name());
    let (stream, lock, shared) = (stream.clone(), lock.clone(), shared.clone());
    EXECUTOR
        .spawn(async move {
            loop {
                let next = async {
                    match &source {
                        Source::Subjects(rx) => rx.recv().await.map(Event::SubjectsChanged).ok(),
                        Source::Nodes(rx) => rx.recv().await.map(Event::NodeChanged).ok(),
                        Source::Alerts(rx) => rx.recv().await.map(Event::Alert).ok(),
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
                    gone.wait().await;
                    None
                })
                .await;
                match event {
                    Some(Some(e)) => {
                        let frame = w
                            .frame(FrameKind::Event, id, &e)
                            .unwrap_or_else(|e| w.error(id, &Error::from(e)));
                        if !send(&stream, &lock, frame).await {
                            break;
                        }
                    }
                    Some(None) => {
                        let e = Error::unavailable(format!(
                            "subscription ended: the subscriber fell {SUBSCRIBER_BACKLOG} events behind"
                        ));
                        send(&stream, &lock, w.error(id, &e)).await;
                        break;
                    }
                    None => break,
                }
            }
            match &source {
                Source::Subjects(_) => shared.subjects.unsubscribe(key),
                Source::Nodes(_) => shared.nodes.events.unsubscribe(key),
                Source::Certs(..) => shared.certs.unsubscribe(key),
                Source::Alerts(_) => shared.prov.alerts.events.unsubscribe(key),
            }
            drop(sub);
        })
        .detach();
}
