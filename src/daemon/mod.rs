//! iamd: the daemon, and the modules it serves from (provisioning, certificates, renewal,
//! nodes, permissions, identity).
//!
//! [`run`] opens the database and the stores, binds the sockets and link listeners, and runs
//! the executor: `connections` serves the public and protected sockets (admission, quotas,
//! hello, requests in flight, subscriptions), `dispatch` answers each request from the
//! modules (blocking work on the blocking pool), `links` is the main node's link server, and
//! `tasks` the background work (reconciliation, renewal, identity files).

pub mod alerts;
mod connections;
mod dispatch;
mod links;
mod tasks;

pub mod broadcast;
pub mod certs;
pub mod enroll;
pub mod guesses;
pub mod identity;
pub mod node_info;
pub mod nodes;
pub mod permissions;
pub mod provisioning;
pub mod quota;
pub mod renewal;
pub mod revocation;

use crate::config::Config;
use crate::daemon::broadcast::Broadcast;
use crate::daemon::identity::Identity;
use crate::daemon::nodes::Nodes;
use crate::daemon::permissions::Registry;
use crate::daemon::provisioning::Provisioning;
use crate::daemon::quota::{Held, Quotas};
use crate::error::{Error, Result};
use crate::link::peer::Peer;
use crate::proto::transport::{self, BoxStream, LinkAddr, LinkListener, LinkPeer, PeerCredentials};
use crate::proto::wire::{self, CertInfo, Event, FrameError, FrameKind, NodeInfo, Request, Response, Role, Wire};
use smol::{lock::Semaphore, Async, Executor};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;

/// Threads of the blocking pool iamd runs PKCS#11, database and file work on.
pub const BLOCKING_THREADS: usize = 8;
/// Requests answered at once on one connection; the next waits for a free place.
pub const MAX_IN_FLIGHT: usize = 64;
/// Subscribers of one kind of event, and the events each may fall behind before it is dropped.
pub use crate::daemon::nodes::{MAX_SUBSCRIBERS, SUBSCRIBER_BACKLOG};

static EXECUTOR: Executor<'static> = Executor::new();

use connections::*;
use dispatch::*;
use links::*;
use tasks::*;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Socket {
    Public,
    Protected,
}

impl Socket {
    fn name(self) -> &'static str {
        match self {
            Socket::Public => "public",
            Socket::Protected => "protected",
        }
    }
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
    /// The same, for the alerts' look at the certificates.
    alerts_wake: (smol::channel::Sender<()>, smol::channel::Receiver<()>),
    /// The current certificate of each type as last reported.
    current_certs: std::sync::Mutex<std::collections::BTreeMap<String, Option<CertKey>>>,
    /// What users who are not admitted may hold on the public socket.
    quotas: Arc<Quotas>,
    /// Wrong passwords, per uid.
    guesses: crate::daemon::guesses::Guesses,
    /// Wakes the enrollment task (a quarantine released).
    enroll_wake: (smol::channel::Sender<()>, smol::channel::Receiver<()>),
    /// Main node: the tunnels it carries for its secondaries (docs/ARCHITECTURE.md §7c).
    relay: Arc<crate::link::tunnel::Relay>,
    /// Main node: its TLS links, closed when a CRL revokes their peer.
    revocable: crate::daemon::revocation::Revocable,
}

/// A certificate by its issuer (DER) and serial.
type CertKey = (Vec<u8>, Vec<u8>);

impl Shared {
    /// Report every type whose current certificate differs from the last one reported.
    fn publish_cert_changes(&self) {
        let prov = &self.prov;
        let mut last = crate::sys::lock(&self.current_certs);
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
                    let _ = self.alerts_wake.0.try_send(());
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
    let signals = crate::sys::signals::watch()?;

    let _ = WRITE_TIMEOUT.set(config.write_timeout);
    // The blocking pool (PKCS#11, redb, fsync) would grow to 500 threads under a flood of
    // requests; the token serialises its calls anyway, so a few threads serve as fast and
    // keep memory bounded on a small node. The operator's setting wins.
    if std::env::var_os("BLOCKING_MAX_THREADS").is_none() {
        std::env::set_var("BLOCKING_MAX_THREADS", BLOCKING_THREADS.to_string());
    }
    match crate::daemon::certs::refused_roots(&config) {
        Ok(refused) => {
            for e in refused {
                crate::log_warn!("root CA refused and not used: {e}");
            }
        }
        Err(e) => crate::log_error!("{e}"),
    }
    let prov = Provisioning::open(config.clone(), provisioning_mode)?;
    // A module whose algorithm its token cannot do is refused now, not at CreateKey.
    for e in prov.modules.check_algorithms()? {
        crate::log_notice!("{e}");
    }
    prov.recover_marker()?;
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
        alerts_wake: smol::channel::bounded(1),
        current_certs: Default::default(),
        quotas: Quotas::new(config.quotas.clone(), config.max_connections),
        guesses: Default::default(),
        enroll_wake: smol::channel::bounded(1),
        relay: crate::link::tunnel::Relay::new(&config.links),
        revocable: Default::default(),
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
    if let Err(e) = crate::sys::notify::notify("READY=1") {
        crate::log_warn!("cannot notify the service manager: {e}");
    }

    // The key stores are opened and reconciled once iamd listens; steps that need them
    // wait for it (Provisioning::journal), Version and reads of the database do not.
    let recovering = shared.clone();
    let recovered = blocking::unblock(move || recovering.prov.recover());
    let why = smol::block_on(EXECUTOR.run(async {
        let r = EXECUTOR.spawn(recovered);
        let a = EXECUTOR.spawn(accept_loop(public, Socket::Public, shared.clone()));
        let b = EXECUTOR.spawn(accept_loop(protected, Socket::Protected, shared.clone()));
        let c = EXECUTOR.spawn(watch_identity(shared.clone(), signals.reload));
        let d = EXECUTOR.spawn(reconcile_periodically(shared.clone()));
        let e = EXECUTOR.spawn(renew_when_due(shared.clone()));
        let f = EXECUTOR.spawn(enroll_when_due(shared.clone()));
        let g = EXECUTOR.spawn(alert_when_due(shared.clone()));
        let links: Vec<_> = link_listeners
            .into_iter()
            .map(|(addr, l)| EXECUTOR.spawn(accept_links(addr, l, shared.clone())))
            .collect();
        let why = signals
            .stop
            .recv()
            .await
            .unwrap_or_else(|_| "signal thread ended".into());
        // Each secondary reads a clean end of its link (TLS close_notify), not a cut.
        let ending: Vec<_> = shared
            .nodes
            .links()
            .into_iter()
            .map(|l| EXECUTOR.spawn(async move { l.shutdown("iamd stopped", std::time::Duration::from_secs(1)).await }))
            .collect();
        for t in ending {
            t.await;
        }
        drop((r, a, b, c, d, e, f, g, links));
        why
    }));
    let _ = crate::sys::notify::notify("STOPPING=1");
    crate::log_notice!("{why}: stopping");
    shared.nodes.store_unsaved(&shared.prov.db);
    shared.prov.db.close();
    remove_sockets(&config);
    Ok(())
}

fn decode_request(kind: FrameKind, version: u8, body: &[u8]) -> Result<Request> {
    if kind != FrameKind::Request {
        return Err(Error::protocol(format!("expected a request frame, got {kind:?}")));
    }
    wire::decode_request_at(version, body)
}
