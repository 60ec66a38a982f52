//! The unit's node registry on the main node, and forwarding over node links.
//!
//! Every node that ever registered is remembered in the database with its last NodeInfo
//! and when it was last seen; a node whose link is up also has its [`Peer`] here. A request
//! for another node goes over that node's link with the timeout its kind allows. A node
//! whose link is down is `unavailable`; a node never seen is `not_found`.

use crate::config::Config;
use crate::daemon::broadcast::Broadcast;
use crate::error::{Error, Result};
use crate::link::peer::Peer;
use crate::proto::wire::{NodeInfo, Request, Response};
use crate::store::db::Db;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Nodes the registry keeps (links up or not).
pub const MAX_NODES: usize = 256;
pub use crate::config::{MAX_SUBSCRIBERS, SUBSCRIBER_BACKLOG};

/// What the registry holds of a node (stored as a `records::NodeRecord`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    pub info: NodeInfo,
    /// Seconds since the Unix epoch when the link was last up.
    pub last_seen: i64,
    /// Order of the changes (not stored): a commit never replaces a newer one.
    pub seq: u64,
}

pub struct Nodes {
    own_id: String,
    request_timeout: Duration,
    long_request_timeout: Duration,
    links: Mutex<BTreeMap<String, Arc<Peer>>>,
    known: Mutex<BTreeMap<String, NodeRecord>>,
    /// Nodes whose info changed since it was last committed (the commits are coalesced).
    unsaved: Mutex<std::collections::BTreeSet<String>>,
    /// Held by a [`Nodes::store`] from taking a node off `unsaved` to its commit: iamd,
    /// stopping, waits for one in flight ([`Nodes::store_unsaved`]).
    storing: Mutex<()>,
    /// The order of the last change given to each record, and of the last one committed.
    next_seq: std::sync::atomic::AtomicU64,
    committed: Mutex<BTreeMap<String, u64>>,
    /// NodeChanged events: this node's state changes and every other node's registration,
    /// disconnection and info change.
    pub events: Broadcast<NodeInfo>,
}

use crate::sys::{lock, now};

impl Nodes {
    /// Load the registry; every node starts disconnected.
    pub fn open(config: &Config, db: &Db) -> Result<Nodes> {
        let mut known = BTreeMap::new();
        for stored in db.nodes()? {
            let mut rec = NodeRecord {
                info: NodeInfo::from(&stored.info),
                last_seen: stored.last_seen,
                seq: 0,
            };
            rec.info.connected = false;
            known.insert(rec.info.node_id.clone(), rec);
        }
        Ok(Nodes {
            own_id: config.node_id.clone(),
            request_timeout: config.links.request_timeout,
            long_request_timeout: config.links.long_request_timeout,
            links: Mutex::new(BTreeMap::new()),
            known: Mutex::new(known),
            unsaved: Default::default(),
            storing: Mutex::new(()),
            next_seq: std::sync::atomic::AtomicU64::new(1),
            committed: Default::default(),
            events: Broadcast::new("node", MAX_SUBSCRIBERS, SUBSCRIBER_BACKLOG),
        })
    }

    /// Whether `node_id` names another node (empty means the node answering).
    pub fn is_other(&self, node_id: &str) -> bool {
        !node_id.is_empty() && node_id != self.own_id
    }

    /// This node first, then every registered node in order.
    /// The links up now.
    pub fn links(&self) -> Vec<Arc<Peer>> {
        lock(&self.links).values().cloned().collect()
    }

    pub fn ids(&self) -> Vec<String> {
        std::iter::once(self.own_id.clone())
            .chain(lock(&self.known).keys().cloned())
            .collect()
    }

    /// The last NodeInfo a node reported, with whether its link is up.
    pub fn info(&self, node_id: &str) -> Result<NodeInfo> {
        lock(&self.known)
            .get(node_id)
            .map(|r| r.info.clone())
            .ok_or_else(|| self.unknown(node_id))
    }

    fn unknown(&self, node_id: &str) -> Error {
        Error::not_found(format!(
            "node \"{node_id}\" is not known (this is node \"{}\"; no link has registered it)",
            self.own_id
        ))
    }

    fn seq(&self) -> u64 {
        self.next_seq.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    }

    /// Commit `rec`, unless a newer change of that node was committed already (commits run
    /// on blocking threads and may finish out of order).
    fn persist(&self, db: &Db, rec: &NodeRecord) -> Result<()> {
        let mut committed = lock(&self.committed);
        if committed.get(&rec.info.node_id).is_some_and(|s| *s > rec.seq) {
            return Ok(());
        }
        db.put_node(&crate::store::records::NodeRecord {
            info: (&rec.info).into(),
            last_seen: rec.last_seen,
        })?;
        committed.insert(rec.info.node_id.clone(), rec.seq);
        Ok(())
    }

    /// A link registers its node. Refused for this node's own id, for a node whose link is
    /// already up, and beyond [`MAX_NODES`]. Blocking (one durable commit).
    pub fn register(&self, db: &Db, mut info: NodeInfo, peer: &Arc<Peer>) -> Result<()> {
        let id = info.node_id.clone();
        if id == self.own_id {
            return Err(Error::invalid(format!(
                "node id \"{id}\" is the main node's own; a secondary needs an id of its own"
            )));
        }
        let mut links = lock(&self.links);
        if links.get(&id).is_some_and(|p| !p.is_closed()) {
            return Err(Error::wrong_state(format!(
                "node \"{id}\" is already connected; a second link claiming its id is refused"
            )));
        }
        let mut known = lock(&self.known);
        if !known.contains_key(&id) && known.len() >= MAX_NODES {
            return Err(Error::unavailable(format!(
                "the registry holds its limit of {MAX_NODES} nodes"
            )));
        }
        info.connected = true;
        let rec = NodeRecord {
            info: info.clone(),
            last_seen: now(),
            seq: self.seq(),
        };
        self.persist(db, &rec)?;
        known.insert(id.clone(), rec);
        links.insert(id, peer.clone());
        drop((known, links));
        self.events.send(info);
        Ok(())
    }

    /// A registered link reports new info for its node: served and announced at once; it
    /// reaches the database with the next [`Nodes::store`] (the caller coalesces those).
    pub fn update(&self, mut info: NodeInfo, peer: &Arc<Peer>) -> Result<()> {
        let id = info.node_id.clone();
        if !lock(&self.links).get(&id).is_some_and(|p| Arc::ptr_eq(p, peer)) {
            return Err(Error::unauthorized(format!(
                "this link has not registered node \"{id}\" and cannot report for it"
            )));
        }
        info.connected = true;
        let rec = NodeRecord {
            info: info.clone(),
            last_seen: now(),
            seq: self.seq(),
        };
        {
            let mut known = lock(&self.known);
            known.insert(id.clone(), rec);
            lock(&self.unsaved).insert(id);
        }
        self.events.send(info);
        Ok(())
    }

    /// Commit every node info change not committed yet (iamd is stopping).
    pub fn store_unsaved(&self, db: &Db) {
        // A commit in flight took its node off the set: it ends first.
        drop(lock(&self.storing));
        let ids = std::mem::take(&mut *lock(&self.unsaved));
        for id in ids {
            if let Err(e) = self.store(db, &id) {
                crate::log_warn!("node \"{id}\": its last info is not stored: {e}");
            }
        }
    }

    /// Commit what the registry holds of `node_id` now. Blocking (one durable commit).
    pub fn store(&self, db: &Db, node_id: &str) -> Result<()> {
        // Taken off the unsaved set while the record is read, both under the registry's
        // lock (as `update` adds to it): a change made after this is left for a later commit.
        let _storing = lock(&self.storing);
        let rec = {
            let known = lock(&self.known);
            lock(&self.unsaved).remove(node_id);
            known.get(node_id).cloned()
        };
        let Some(rec) = rec else {
            return Ok(());
        };
        self.persist(db, &rec)?;
        crate::log_debug!("node \"{node_id}\": its info is stored");
        Ok(())
    }

    /// A link ended: its node is disconnected (if this was still its link).
    pub fn disconnected(&self, db: &Db, node_id: &str, peer: &Arc<Peer>) {
        {
            let mut links = lock(&self.links);
            if !links.get(node_id).is_some_and(|p| Arc::ptr_eq(p, peer)) {
                return;
            }
            links.remove(node_id);
        }
        let rec = {
            let mut known = lock(&self.known);
            let Some(rec) = known.get_mut(node_id) else { return };
            rec.info.connected = false;
            rec.last_seen = now();
            rec.seq = self.seq();
            lock(&self.unsaved).remove(node_id);
            rec.clone()
        };
        if let Err(e) = self.persist(db, &rec) {
            crate::log_warn!("node \"{node_id}\": cannot record its disconnection: {e}");
        }
        self.events.send(rec.info);
    }

    /// ForgetNode: `node_id` leaves the registry (durably first); its link, if up, is
    /// closed, so a node that is not allowed back (`[[links.listener]] nodes`) stays out.
    pub fn forget(&self, db: &Db, node_id: &str) -> Result<()> {
        if !self.is_other(node_id) {
            return Err(Error::invalid("ForgetNode: name a secondary node, not this one"));
        }
        if !lock(&self.known).contains_key(node_id) {
            return Err(self.unknown(node_id));
        }
        db.delete_nodes(&[node_id.to_string()])?;
        let rec = lock(&self.known).remove(node_id);
        if let Some(peer) = lock(&self.links).remove(node_id) {
            peer.close("the node was forgotten (ForgetNode)");
        }
        if let Some(mut rec) = rec {
            rec.info.connected = false;
            self.events.send(rec.info);
        }
        crate::log_notice!("node \"{node_id}\" forgotten");
        Ok(())
    }

    /// After the main node's own deprovisioning: every node whose link is down leaves the
    /// registry (those linked now stay, and are known again as they are).
    pub fn forget_disconnected(&self, db: &Db) -> Result<()> {
        let links = lock(&self.links);
        let gone: Vec<String> = lock(&self.known)
            .keys()
            .filter(|id| links.get(*id).is_none_or(|p| p.is_closed()))
            .cloned()
            .collect();
        drop(links);
        db.delete_nodes(&gone)?;
        let mut known = lock(&self.known);
        for id in &gone {
            known.remove(id);
        }
        Ok(())
    }

    /// Send a request over `node_id`'s link and wait for its answer.
    pub async fn forward(&self, node_id: &str, request: Request) -> Result<Response> {
        let peer = lock(&self.links).get(node_id).cloned();
        let Some(peer) = peer else {
            return Err(match lock(&self.known).get(node_id) {
                Some(rec) => Error::unavailable(format!(
                    "node \"{node_id}\" is not connected (last seen {})",
                    crate::pki::x509::rfc3339(rec.last_seen)
                )),
                None => self.unknown(node_id),
            });
        };
        let timeout = if request.is_long() {
            self.long_request_timeout
        } else {
            self.request_timeout
        };
        crate::log_debug!("{} for node \"{node_id}\": forwarded", request.name());
        peer.call(&request, timeout).await
    }
}
