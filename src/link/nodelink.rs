//! The secondary node's end of a node link, as `iam-nodelink` runs it.
//!
//! Dials the main node, states this node's id in the hello, registers the node with the
//! NodeInfo of its own iamd, then runs the requests the main node forwards against that
//! iamd's protected socket and sends the answers back; the node's info changes are pushed
//! as they happen. A dropped link is dialed again after an exponential backoff with jitter.
//! The link's state is kept in a status file for `iam-nodelink status`.

use crate::config::{Algorithm, LinkTls};
use crate::error::{Error, ErrorKind, Result};
use crate::link::peer::{self, Peer};
use crate::link::tunnel::Gate;
use crate::proto::client::Client;
use crate::proto::transport::{self, LinkAddr};
use crate::proto::wire::{Event, Request, Response, Role, Wire};
use serde::{Deserialize, Serialize};
use smol::Executor;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub const DEFAULT_RETRY_MIN: Duration = Duration::from_millis(500);
pub const DEFAULT_RETRY_MAX: Duration = Duration::from_secs(30);

static EXECUTOR: Executor<'static> = Executor::new();

#[derive(Clone)]
pub struct Options {
    pub connect: LinkAddr,
    /// The protected socket of this node's iamd.
    pub local_socket: PathBuf,
    pub status_file: PathBuf,
    pub retry_min: Duration,
    pub retry_max: Duration,
    pub body_limit: u32,
    pub hello_timeout: Duration,
    /// How long the rest of a frame may take once it has begun (`limits.frame_timeout`).
    pub frame_timeout: Duration,
    pub request_timeout: Duration,
    pub long_request_timeout: Duration,
    /// How often the main node must answer a keepalive (`None`: never asked).
    pub keepalive: Option<Duration>,
    pub tls: LinkTls,
    /// The unit's root CA, which the main node's certificate must chain to (TLS).
    pub root_ca: Option<PathBuf>,
    /// Certificate revocation lists the main node's chain is checked against (`paths.crl`).
    pub crl: Vec<PathBuf>,
    /// Where the CRLs the main node hands this node are kept (`links.main_crl`), checked
    /// with beside `crl` once written.
    pub main_crl: Option<PathBuf>,
    /// This node's unit (`node.unit_id`): the main node's certificate must carry its URI.
    pub unit_id: String,
    /// The main node this node links to only (`links.main_node_id`), if configured.
    pub main_node_id: Option<String>,
    /// The tunnel socket served to this node's iamd (`links.tunnel`), if configured.
    pub tunnel: Option<PathBuf>,
    /// The tunnel socket's group (`paths.protected_socket_group`): iamd's own.
    pub tunnel_group: Option<u32>,
}

impl Options {
    /// The CRL files the main node's chain is checked with now ([`crate::config::crl_files`]).
    fn crl_files(&self) -> Vec<PathBuf> {
        crate::config::crl_files(&self.crl, self.main_crl.as_deref())
    }
}

/// What `iam-nodelink status` reports, as the running link writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub pid: u32,
    /// `connecting`, `registered`, `retrying` or `stopped`.
    pub state: String,
    pub link: String,
    pub node_id: String,
    pub main_node_id: String,
    pub tls: bool,
    /// Seconds since the Unix epoch when `state` was entered.
    pub since: i64,
    /// Times the node has registered since the link started.
    pub registrations: u64,
    /// Why the last attempt failed, if it did.
    pub last_error: String,
}

impl Status {
    pub fn load(path: &std::path::Path) -> Result<Status> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::unavailable(format!(
                "no link status at {} ({e}): is iam-nodelink running?",
                path.display()
            ))
        })?;
        serde_json::from_str(&text)
            .map_err(|e| Error::internal(format!("{} is not a link status: {e}", path.display())))
    }

    /// Whether the process that wrote the status still runs.
    pub fn is_running(&self) -> bool {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid as i32), None).is_ok()
    }
}

/// Exponential backoff with jitter: each delay is drawn from the upper half of a window
/// that doubles from `min` up to `max`.
pub struct Backoff {
    min: Duration,
    max: Duration,
    window: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max: max.max(min),
            window: min,
        }
    }

    pub fn reset(&mut self) {
        self.window = self.min;
    }

    pub fn next_delay(&mut self) -> Duration {
        let mut b = [0u8; 4];
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
        let fraction = u32::from_le_bytes(b) as f64 / u32::MAX as f64;
        let delay = self.window.mul_f64(0.5 + fraction / 2.0);
        self.window = (self.window * 2).min(self.max);
        delay
    }
}

struct Reporter {
    path: PathBuf,
    status: Status,
}

impl Reporter {
    async fn set(&mut self, state: &str, f: impl FnOnce(&mut Status)) {
        self.status.state = state.into();
        self.status.since = time::OffsetDateTime::now_utc().unix_timestamp();
        f(&mut self.status);
        let (path, text) = (self.path.clone(), serde_json::to_vec(&self.status).unwrap_or_default());
        let written = blocking::unblock(move || crate::store::atomic_file::write(&path, &text, 0o644)).await;
        if let Err(e) = written {
            crate::log_warn!("cannot write the link status {}: {e}", self.path.display());
        }
    }
}

/// How long a stopping iam-nodelink gives its link to take the end of the session.
const SHUTDOWN_WITHIN: Duration = Duration::from_secs(1);

/// Run the link until SIGTERM or SIGINT (or, for a stdio link, until the pipe ends).
pub fn run(opts: Options) -> Result<()> {
    let signals = crate::sys::signals::watch()?;
    let mut reporter = Reporter {
        path: opts.status_file.clone(),
        status: Status {
            pid: std::process::id(),
            state: String::new(),
            link: opts.connect.to_string(),
            node_id: String::new(),
            main_node_id: String::new(),
            tls: false,
            since: 0,
            registrations: 0,
            last_error: String::new(),
        },
    };
    let gate = crate::link::tunnel::Gate::new(opts.request_timeout, opts.hello_timeout);
    if let Some(path) = &opts.tunnel {
        gate.listen(path, opts.tunnel_group, &EXECUTOR)?;
        crate::log_info!("serving this node's tunnels through the link at {}", path.display());
    }
    let result = smol::block_on(EXECUTOR.run(async {
        let stop = async {
            let why = signals
                .stop
                .recv()
                .await
                .unwrap_or_else(|_| "signal thread ended".into());
            crate::log_notice!("{why}: stopping");
            Ok(())
        };
        let r = smol::future::or(stop, link_forever(&opts, &gate, &mut reporter)).await;
        let _ = crate::sys::notify::notify("STOPPING=1");
        // The main node reads a clean end of the link (TLS close_notify), not a cut.
        if let Some(link) = gate.link() {
            link.shutdown("iam-nodelink stopped", SHUTDOWN_WITHIN).await;
        }
        let last = r.as_ref().err().map(|e| e.to_string()).unwrap_or_default();
        reporter.set("stopped", |s| s.last_error = last).await;
        r
    }));
    result
}

/// READY=1 to the service manager, once per process: at the first session that registered
/// this node or carries its tunnels.
fn notify_ready(notified: &mut bool) {
    if !*notified {
        *notified = true;
        if let Err(e) = crate::sys::notify::notify("READY=1") {
            crate::log_warn!("cannot notify the service manager: {e}");
        }
    }
}

async fn link_forever(opts: &Options, gate: &Arc<Gate>, reporter: &mut Reporter) -> Result<()> {
    let mut backoff = Backoff::new(opts.retry_min, opts.retry_max);
    let mut notified = false;
    loop {
        reporter.set("connecting", |_| {}).await;
        let mut registered = false;
        let ended = session(opts, gate, reporter, &mut registered, &mut notified).await;
        gate.attach(None);
        let e = match ended {
            Ok(reason) => Error::unavailable(format!("the link to the main node ended: {reason}")),
            Err(e) => e,
        };
        if opts.connect == LinkAddr::Stdio {
            // A pipe cannot be dialed again: whoever runs the pipe restarts the link.
            return Err(e);
        }
        if registered {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        crate::log_warn!("{e}; dialing again in {:.1} s", delay.as_secs_f64());
        let message = e.to_string();
        reporter.set("retrying", |s| s.last_error = message).await;
        smol::Timer::after(delay).await;
    }
}

/// One connection to the local iamd and one link to the main node, until either ends.
/// Returns why the link ended (`Ok`) or why it could not be set up (`Err`).
async fn session(
    opts: &Options,
    gate: &Arc<Gate>,
    reporter: &mut Reporter,
    registered: &mut bool,
    notified: &mut bool,
) -> Result<String> {
    let limit = opts.body_limit;
    let mut local_stream = transport::connect(&LinkAddr::Unix(opts.local_socket.clone()))
        .await
        .map_err(|e| {
            Error::unavailable(format!(
                "cannot connect to the local iamd at {}: {e}",
                opts.local_socket.display()
            ))
        })?;
    // The local iamd is of this build's release, so it speaks this version.
    let local_version = match peer::hello(
        &mut local_stream,
        Role::Client,
        "",
        limit,
        opts.hello_timeout,
        crate::PROTOCOL_VERSION,
    )
    .await
    .map_err(|e| e.context("the local iamd"))?
    {
        peer::Greeting::Agreed { version, .. } => version,
        peer::Greeting::Older { refusal, .. } => {
            return Err(Error::protocol(format!("the local iamd: {refusal}")));
        }
    };
    let (local, local_reader) = Peer::new(
        "the local iamd".into(),
        local_stream,
        Wire::new(limit).at(local_version),
        opts.frame_timeout,
    );
    let local_loop = {
        let local = local.clone();
        async move {
            let l = local.clone();
            let reason = local
                .read_loop(local_reader, |id, r| {
                    let l = l.clone();
                    async move {
                        let e = Error::protocol(format!("{} is not served by iam-nodelink", r.name()));
                        let _ = l.answer(id, Err(e)).await;
                        true
                    }
                })
                .await;
            Ok::<_, Error>(format!("the local iamd closed the connection ({reason})"))
        }
    };
    let local_loop = EXECUTOR.spawn(local_loop);

    let info = match local
        .call(&Request::GetNodeInfo { node_id: String::new() }, opts.request_timeout)
        .await?
    {
        Response::NodeInfo(i) => i,
        r => return Err(Error::protocol(format!("GetNodeInfo answered {r:?}"))),
    };
    let node_id = info.node_id.clone();
    let changes = local
        .subscribe(&Request::SubscribeNodeChanged, opts.request_timeout)
        .await?;

    // A node that has its link identity never links in the clear, whatever happens to its
    // handshakes: an on-path attacker who resets them gets no downgrade.
    let identity = link_identity(opts, &local).await?;
    let (identity, tunnel_only) = match identity {
        Linking::Tls(id) => (Some(id), false),
        Linking::Clear => (None, false),
        Linking::TunnelsOnly(why) => {
            crate::log_notice!("{why}; linking in the clear for this node's tunnels only, until it has one");
            (None, true)
        }
    };
    let use_tls = identity.is_some();
    // Dialled once, and once more offering the main node's version if it is of the release
    // before versions were agreed (it refuses this one outright).
    let mut offer = crate::PROTOCOL_VERSION;
    let (stream, main_cert, main_id, version) = loop {
        let mut stream = transport::connect(&opts.connect)
            .await
            .map_err(|e| Error::unavailable(format!("cannot reach the main node at {}: {e}", opts.connect)))?;
        let mut main_cert = None;
        if let Some(identity) = identity.clone() {
            // The handshake's signature is a blocking call to iamd (rustls signers are
            // synchronous): it runs on a thread of its own, never on this executor's.
            let opts2 = opts.clone();
            let (s, cert) = blocking::unblock(move || smol::block_on(connect_tls(&opts2, stream, identity))).await?;
            stream = s;
            main_cert = Some(cert);
        }
        match peer::hello(&mut stream, Role::NodeLink, &node_id, limit, opts.hello_timeout, offer)
            .await
            .map_err(|e| e.context(format!("the main node at {}", opts.connect)))?
        {
            peer::Greeting::Agreed { node_id, version } => break (stream, main_cert, node_id, version),
            peer::Greeting::Older { version, refusal } if version < offer => {
                crate::log_notice!(
                    "the main node at {} speaks protocol version {version} only ({refusal}); linking again with it",
                    opts.connect
                );
                offer = version;
            }
            peer::Greeting::Older { refusal, .. } => {
                return Err(Error::protocol(format!("the main node at {}: {refusal}", opts.connect)));
            }
        }
    };
    // The certificate must name the main node this node is configured for (or, without
    // one configured, the one it says it is), of this node's unit.
    let expected = opts.main_node_id.as_deref().unwrap_or(&main_id);
    if let Some(chain) = &main_cert {
        crate::pki::tls::check_peer(&chain[0], crate::config::Eku::ServerAuth, expected, &opts.unit_id)
            .map_err(|e| e.context(format!("the main node at {}", opts.connect)))?;
    }
    if expected != main_id {
        return Err(Error::unauthorized(format!(
            "the main node at {} says it is node \"{main_id}\", not \"{expected}\" (links.main_node_id)",
            opts.connect
        )));
    }
    if version < crate::PROTOCOL_VERSION {
        crate::log_notice!("the main node \"{main_id}\" speaks protocol version {version}");
    }
    let (link, link_reader) = Peer::new(
        format!("the main node \"{main_id}\""),
        stream,
        Wire::new(limit).at(version),
        opts.frame_timeout,
    );

    gate.attach(Some(link.clone()));
    let link_loop = {
        let (link, local, node_id, gate) = (link.clone(), local.clone(), node_id.clone(), gate.clone());
        let timeouts = (opts.request_timeout, opts.long_request_timeout);
        async move {
            let l = link.clone();
            let reason = link
                .read_loop(link_reader, move |id, request| {
                    let (link, local, node_id, gate) = (l.clone(), local.clone(), node_id.clone(), gate.clone());
                    EXECUTOR
                        .spawn(async move {
                            let result = match gate.serve(&request).await {
                                Some(r) => r,
                                None if tunnel_only => Err(Error::unauthorized(
                                    "this link carries the node's tunnels only: it has no link identity yet",
                                )),
                                None => run_forwarded(&local, &node_id, request, timeouts).await,
                            };
                            let _ = link.answer(id, result).await;
                        })
                        .detach();
                    async { true }
                })
                .await;
            Ok::<_, Error>(reason)
        }
    };
    let link_loop = EXECUTOR.spawn(link_loop);

    let register_and_push = async {
        if tunnel_only {
            // No registration: tunnels, and the keepalive, until the node has its identity.
            reporter
                .set("tunnels-only", |s| {
                    s.node_id = node_id.clone();
                    s.main_node_id = main_id.clone();
                    s.tls = false;
                    s.last_error.clear();
                })
                .await;
            // Ready too: the link is up and carries what this node needs now (a unit that
            // waited for a registration would be timed out and restarted, cutting the
            // enrollment it carries).
            notify_ready(notified);
            return smol::future::or(until_identity(opts, &local, &changes), keepalive(&link, opts.keepalive)).await;
        }
        match link.call(&Request::RegisterNode { info }, opts.request_timeout).await {
            Ok(Response::Done) => {}
            Ok(r) => return Err(Error::protocol(format!("RegisterNode answered {r:?}"))),
            Err(e) => return Err(e.context("registering with the main node")),
        }
        *registered = true;
        crate::log_notice!(
            "node \"{node_id}\" registered with the main node \"{main_id}\" over {}",
            opts.connect
        );
        let (nid, mid) = (node_id.clone(), main_id.clone());
        reporter
            .set("registered", |s| {
                s.node_id = nid;
                s.main_node_id = mid;
                s.tls = use_tls;
                s.registrations += 1;
                s.last_error.clear();
            })
            .await;
        notify_ready(notified);
        let push = async {
            loop {
                match changes.recv().await {
                    Ok(Ok(Event::NodeChanged(info))) if info.node_id == node_id => {
                        link.call(&Request::NodeInfoChanged { info }, opts.request_timeout)
                            .await
                            .map_err(|e| e.context("reporting the node's info"))?;
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(e.context("the local iamd's node events")),
                    Err(_) => return Err(Error::unavailable("the local iamd's node events ended")),
                }
            }
        };
        let revocation = watch_revocation(opts, &link, &main_id, main_cert.as_deref());
        smol::future::or(push, smol::future::or(keepalive(&link, opts.keepalive), revocation)).await
    };
    let ended = smol::future::or(register_and_push, smol::future::or(link_loop, local_loop)).await;
    link.close("iam-nodelink closed the link");
    local.close("iam-nodelink closed the connection");
    ended
}

/// How often the main node's chain is checked again with the CRLs when no keepalive is set.
const REVOCATION_EVERY: Duration = Duration::from_secs(60);

/// At registration and at every keepalive interval: the main node's CRLs (GetCrl, protocol
/// 7) kept in `links.main_crl` when they changed, then the main node's chain checked with
/// every CRL file this node has: a chain now revoked ends the link (and the next handshake
/// refuses it).
async fn watch_revocation(
    opts: &Options,
    link: &Peer,
    main_id: &str,
    chain: Option<&[rustls_pki_types::CertificateDer<'static>]>,
) -> Result<String> {
    let every = opts.keepalive.unwrap_or(REVOCATION_EVERY);
    loop {
        if let Some(path) = &opts.main_crl {
            if link.version() >= Request::GetCrl.since() {
                match link.call(&Request::GetCrl, opts.request_timeout).await {
                    Ok(Response::Crl { crls }) => {
                        let to = path.clone();
                        let kept = blocking::unblock(move || keep_main_crl(&to, &crls)).await;
                        match kept {
                            Ok(true) => crate::log_notice!(
                                "the main node \"{main_id}\" handed new CRLs: kept in {}",
                                path.display()
                            ),
                            Ok(false) => {}
                            Err(e) => crate::log_warn!("the CRLs the main node \"{main_id}\" handed are not kept: {e}"),
                        }
                    }
                    Ok(r) => return Err(Error::protocol(format!("GetCrl answered {r:?}"))),
                    Err(e) if e.kind == ErrorKind::Unavailable || e.kind == ErrorKind::Timeout => return Err(e),
                    Err(e) => crate::log_warn!("the main node \"{main_id}\" gives no CRLs: {e}"),
                }
            }
        }
        if let Some(chain) = chain {
            let (files, root_ca) = (opts.crl_files(), opts.root_ca.clone());
            let chain = chain.to_vec();
            let checked = blocking::unblock(move || -> Result<()> {
                if files.is_empty() {
                    return Ok(());
                }
                let crls = crate::pki::x509::parse_crls(&crate::pki::x509::read_crls(&files)?)?;
                let root_ca = root_ca.ok_or_else(|| Error::invalid("TLS on the link needs paths.root_ca"))?;
                let roots = crate::pki::x509::read_certs(&root_ca, "root CA")?;
                crate::pki::x509::validate_chain_against(
                    &chain,
                    &roots,
                    &[crate::config::Eku::ServerAuth],
                    rustls_pki_types::UnixTime::now(),
                    &crls,
                )
            })
            .await;
            match checked {
                Err(e) if matches!(&e.kind, ErrorKind::Validation(r) if r == "CertRevoked") => {
                    return Err(Error::unauthorized(format!(
                        "the main node \"{main_id}\"'s certificate is revoked by a CRL: {}",
                        e.message
                    )));
                }
                Err(e) => crate::log_warn!("the main node's chain is not checked with the CRLs now: {e}"),
                Ok(()) => {}
            }
        }
        smol::Timer::after(every).await;
    }
}

/// Write the CRLs the main node handed to `path` (PEM, atomically) if they differ from what
/// it holds; `Ok(true)` if written. CRLs that do not parse are refused and nothing changes.
fn keep_main_crl(path: &std::path::Path, crls: &[Vec<u8>]) -> Result<bool> {
    if crls.is_empty() {
        // The main node checks with no CRL: neither does this node, beyond its own.
        return match std::fs::remove_file(path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::unavailable(format!("cannot remove {}: {e}", path.display()))),
        };
    }
    let ders: Vec<rustls_pki_types::CertificateRevocationListDer<'static>> =
        crls.iter().map(|d| d.clone().into()).collect();
    crate::pki::x509::parse_crls(&ders)?;
    let pem: String = crls
        .iter()
        .map(|d| crate::codec::pem::pem_encode("X509 CRL", d))
        .collect();
    if std::fs::read(path).is_ok_and(|old| old == pem.as_bytes()) {
        return Ok(false);
    }
    crate::store::atomic_file::write(path, pem.as_bytes(), 0o644)
        .map_err(|e| Error::unavailable(format!("cannot write {}: {e}", path.display())))?;
    Ok(true)
}

/// Ask the main node every `every` whether it still answers; the first miss ends the link.
/// Over a byte pipe (stdio, a vchan proxy) nothing else would notice that the iamd at the
/// other end restarted and forgot this link.
async fn keepalive(link: &Peer, every: Option<Duration>) -> Result<String> {
    let Some(every) = every else {
        return std::future::pending().await;
    };
    loop {
        smol::Timer::after(every).await;
        match link.call(&Request::Version, every).await {
            Ok(Response::Version { .. }) => {}
            Ok(r) => return Err(Error::protocol(format!("the keepalive was answered {r:?}"))),
            Err(e) if e.kind == ErrorKind::Timeout => {
                return Err(Error::unavailable(format!(
                    "the main node did not answer a keepalive within {} s: {e}",
                    every.as_secs()
                )))
            }
            // (The link ended while the keepalive waited: say what ended it.)
            Err(e) => return Err(Error::unavailable(format!("the link ended during a keepalive: {e}"))),
        }
    }
}

/// Run one request the main node forwarded, against the local iamd. Only operations aimed
/// at this node by id are run: a forwarded request can never reach anything else.
async fn run_forwarded(
    local: &Peer,
    node_id: &str,
    request: Request,
    timeouts: (Duration, Duration),
) -> Result<Response> {
    match request.target_node() {
        Some(target) if target == node_id => {}
        Some(target) => {
            return Err(Error::not_found(format!(
                "this link serves node \"{node_id}\", not \"{target}\""
            )))
        }
        None => {
            return Err(Error::unauthorized(format!(
                "{} is not forwarded to a secondary node",
                request.name()
            )))
        }
    }
    let timeout = if request.is_long() { timeouts.1 } else { timeouts.0 };
    let op = request.name();
    // Errors say which node they come from, the main node's caller sees many.
    let r = local
        .call(&request, timeout)
        .await
        .map_err(|e| e.context(format!("node \"{node_id}\"")));
    if let Err(e) = &r {
        if !matches!(e.kind, ErrorKind::Unavailable) {
            crate::log_info!("{op} from the main node: {e}");
        }
    }
    r
}

/// This node's link identity as its iamd serves it: its chain (leaf first, with the
/// intermediates it was issued with), key algorithm and serial. An iamd of protocol 4 or
/// older knows only the leaf (GetLinkIdentity).
async fn local_identity(local: &Peer, timeout: Duration) -> Result<LocalIdentity> {
    let algorithm = |name: &str| {
        Algorithm::ALL
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, a)| *a)
            .ok_or_else(|| Error::protocol(format!("unknown key algorithm \"{name}\"")))
    };
    if local.version() >= Request::GetLinkChain.since() {
        return match local.call(&Request::GetLinkChain, timeout).await? {
            Response::LinkChain {
                mut chain,
                algorithm: alg,
                serial,
            } if !chain.is_empty() => Ok(LocalIdentity {
                cert_der: chain.remove(0),
                intermediates: chain,
                algorithm: algorithm(&alg)?,
                serial,
            }),
            r => Err(Error::protocol(format!("GetLinkChain answered {r:?}"))),
        };
    }
    match local.call(&Request::GetLinkIdentity, timeout).await? {
        Response::LinkIdentity {
            cert_der,
            algorithm: alg,
            serial,
        } => Ok(LocalIdentity {
            cert_der,
            intermediates: Vec::new(),
            algorithm: algorithm(&alg)?,
            serial,
        }),
        r => Err(Error::protocol(format!("GetLinkIdentity answered {r:?}"))),
    }
}

/// A secondary's link identity: what it presents in TLS, and the serial its key signs by.
#[derive(Clone)]
struct LocalIdentity {
    cert_der: Vec<u8>,
    intermediates: Vec<Vec<u8>>,
    algorithm: Algorithm,
    serial: Vec<u8>,
}

/// How a session links: in TLS with the node's link identity, or in the clear.
enum Linking {
    Tls(LocalIdentity),
    /// In provisioning mode, before the node has its link identity.
    Clear,
    /// Out of provisioning mode without a link identity, where the node reaches its
    /// servers through the link (`links.tunnel`): for its tunnels only (why, for the log).
    TunnelsOnly(String),
}

/// Whether this link runs inside TLS (docs/ARCHITECTURE.md §7): `required` and TCP always, `off` never;
/// `auto` once the node has a certificate for its link identity, and in the clear before
/// that — which both ends accept only while in provisioning mode, or for the node's
/// tunnels only (§7c).
async fn link_identity(opts: &Options, local: &Peer) -> Result<Linking> {
    let must = opts.tls == LinkTls::Required || opts.connect.is_tcp();
    if opts.tls == LinkTls::Off && !must {
        return Ok(Linking::Clear);
    }
    match local_identity(local, opts.request_timeout).await {
        Ok(id) => Ok(Linking::Tls(id)),
        Err(e) if e.kind == ErrorKind::NotFound && !must => {
            let status = match local
                .call(
                    &Request::GetProvisioningStatus { node_id: String::new() },
                    opts.request_timeout,
                )
                .await?
            {
                Response::Status(s) => s,
                r => return Err(Error::protocol(format!("GetProvisioningStatus answered {r:?}"))),
            };
            if status.provisioning_mode {
                return Ok(Linking::Clear);
            }
            if opts.tunnel.is_some() {
                return Ok(Linking::TunnelsOnly(e.message));
            }
            Err(Error::unavailable(format!(
                "{}; out of provisioning mode the link must use TLS",
                e.message
            )))
        }
        Err(e) => Err(e.context("the link must use TLS")),
    }
}

/// A link for tunnels only ends once the node has its link identity (its enrollment
/// applied it), so that it links again in TLS and registers.
async fn until_identity(
    opts: &Options,
    local: &Peer,
    changes: &smol::channel::Receiver<Result<Event>>,
) -> Result<String> {
    loop {
        match changes.recv().await {
            Ok(Ok(Event::NodeChanged(_))) => {}
            Ok(Ok(_)) => continue,
            Ok(Err(e)) => return Err(e.context("the local iamd's node events")),
            Err(_) => return Err(Error::unavailable("the local iamd's node events ended")),
        }
        if local_identity(local, opts.request_timeout).await.is_ok() {
            return Ok("the node has its link identity now: linking again in TLS".into());
        }
    }
}

/// The TLS handshake as a secondary node: its key signs through its iamd. A main node that
/// closes the connection instead of answering is `unavailable` (it has no identity to
/// answer with); any other failure, a certificate that does not verify above all, is
/// `unauthorized`.
async fn connect_tls(
    opts: &Options,
    stream: transport::BoxStream,
    local: LocalIdentity,
) -> Result<(transport::BoxStream, Vec<rustls_pki_types::CertificateDer<'static>>)> {
    let root_ca = opts
        .root_ca
        .as_ref()
        .ok_or_else(|| Error::invalid("TLS on the link needs paths.root_ca in the configuration"))?;
    let roots = crate::pki::x509::read_certs(root_ca, "root CA")?;
    let identity = crate::pki::tls::Identity {
        cert_der: local.cert_der,
        intermediates: local.intermediates,
        algorithm: local.algorithm,
        signer: Arc::new(LocalSigner {
            socket: opts.local_socket.clone(),
            serial: local.serial,
            client: std::sync::Mutex::new(None),
        }),
    };
    let config = crate::pki::tls::client_config(&identity, &roots, &opts.crl_files())?;
    let handshake = futures_rustls::TlsConnector::from(config).connect(crate::pki::tls::main_server_name(), stream);
    let what = format!("no TLS handshake with {}", opts.connect);
    let tls = transport::within(opts.hello_timeout, what, async {
        handshake.await.map_err(|e| {
            use std::io::ErrorKind as Io;
            match e.kind() {
                Io::ConnectionReset | Io::UnexpectedEof | Io::BrokenPipe | Io::ConnectionAborted => {
                    Error::unavailable(format!(
                        "TLS with the main node at {}: it closed the connection during the handshake ({e}); \
                         this node has its link identity and never links in the clear: if the main node \
                         has none yet, provision the main node first",
                        opts.connect
                    ))
                }
                _ => Error::unauthorized(format!("TLS with the main node at {}: {e}", opts.connect)),
            }
        })
    })
    .await?;
    let chain = crate::pki::tls::peer_chain(tls.get_ref().1)?;
    Ok((Box::new(tls), chain))
}

/// Signs with this node's identity key by asking its iamd (SignWithLinkIdentity): the key
/// never leaves the store. Blocking, like every rustls signer; iamd answers from its own
/// process, so the wait is one local round trip.
struct LocalSigner {
    socket: PathBuf,
    serial: Vec<u8>,
    client: std::sync::Mutex<Option<Client>>,
}

impl std::fmt::Debug for LocalSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "link identity key through {}", self.socket.display())
    }
}

impl crate::pki::tls::IdentitySigner for LocalSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>> {
        let mut guard = crate::sys::lock(&self.client);
        if guard.is_none() {
            *guard = Some(Client::connect(&self.socket)?);
        }
        let client = guard.as_mut().expect("connected above");
        let answer = client.call(Request::SignWithLinkIdentity {
            serial: self.serial.clone(),
            message: message.to_vec(),
        });
        match answer {
            Ok(Response::Signature(s)) => Ok(s),
            Ok(r) => Err(Error::protocol(format!("SignWithLinkIdentity answered {r:?}"))),
            Err(e) => {
                *guard = None;
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crls_handed_that_do_not_parse_change_nothing_and_none_handed_removes_the_kept_file() {
        let dir = std::env::temp_dir().join(format!("aos-iam-main-crl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("main.crl");
        std::fs::write(&path, "what was kept\n").unwrap();
        let e = keep_main_crl(&path, &[vec![0x30, 0x03, 0x02, 0x01, 0x01]]).unwrap_err();
        assert!(e.message.contains("CRL"), "{e}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "what was kept\n");
        assert!(keep_main_crl(&path, &[]).unwrap(), "removed");
        assert!(!path.exists());
        assert!(!keep_main_crl(&path, &[]).unwrap(), "nothing to remove");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
