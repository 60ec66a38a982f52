//! Per-uid quotas for local users who are not admitted to the protected socket.
//!
//! The public socket is open to every local user. Each such user (by uid) may hold a bounded
//! number of connections and subscriptions, and all of them together leave a reserve of
//! connection places and subscriber slots that only admitted peers (root, the configured
//! uids and gids: the service manager, iam-nodelink) can take. So one unprivileged process
//! cannot starve iamd's admitted clients or the node link. Admitted peers are not counted.

use crate::config::QuotaConfig;
use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Connection,
    Subscription,
}

#[derive(Default)]
struct Counts {
    connections: BTreeMap<u32, usize>,
    subscriptions: BTreeMap<u32, usize>,
    /// Connections of all users who are not admitted, together.
    unadmitted_connections: usize,
}

pub struct Quotas {
    config: QuotaConfig,
    max_connections: usize,
    counts: Mutex<Counts>,
}

/// A place held under a quota, given back when dropped.
pub struct Held {
    quotas: Arc<Quotas>,
    uid: u32,
    kind: Kind,
}

impl Quotas {
    pub fn new(config: QuotaConfig, max_connections: usize) -> Arc<Quotas> {
        Arc::new(Quotas {
            config,
            max_connections,
            counts: Mutex::new(Counts::default()),
        })
    }

    pub fn config(&self) -> &QuotaConfig {
        &self.config
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        crate::sys::lock(&self.counts)
    }

    /// A connection of `uid`, who is not admitted, on the public socket.
    pub fn connection(self: &Arc<Self>, uid: u32) -> Result<Held> {
        let mut c = self.counts();
        let mine = c.connections.get(&uid).copied().unwrap_or(0);
        if mine >= self.config.connections_per_uid {
            return Err(Error::unavailable(format!(
                "uid {uid} has {mine} connections open, its limit (limits.connections_per_uid = {})",
                self.config.connections_per_uid
            )));
        }
        let open = self.max_connections - self.config.reserved_connections;
        if c.unadmitted_connections >= open {
            return Err(Error::unavailable(format!(
                "the public socket's places for users not admitted are taken ({open} of {}; \
                 limits.reserved_connections = {} are kept for admitted clients)",
                self.max_connections, self.config.reserved_connections
            )));
        }
        c.unadmitted_connections += 1;
        *c.connections.entry(uid).or_insert(0) += 1;
        Ok(self.held(uid, Kind::Connection))
    }

    /// A subscription of `uid`, who is not admitted.
    pub fn subscription(self: &Arc<Self>, uid: u32) -> Result<Held> {
        let mut c = self.counts();
        let mine = c.subscriptions.get(&uid).copied().unwrap_or(0);
        if mine >= self.config.subscriptions_per_uid {
            return Err(Error::unavailable(format!(
                "uid {uid} holds {mine} subscriptions, its limit (limits.subscriptions_per_uid = {})",
                self.config.subscriptions_per_uid
            )));
        }
        *c.subscriptions.entry(uid).or_insert(0) += 1;
        Ok(self.held(uid, Kind::Subscription))
    }

    fn held(self: &Arc<Self>, uid: u32, kind: Kind) -> Held {
        Held {
            quotas: self.clone(),
            uid,
            kind,
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut c = self.quotas.counts();
        let map = match self.kind {
            Kind::Connection => {
                c.unadmitted_connections -= 1;
                &mut c.connections
            }
            Kind::Subscription => &mut c.subscriptions,
        };
        if let Some(n) = map.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.uid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quotas() -> Arc<Quotas> {
        let c = crate::config::QuotaConfig {
            connections_per_uid: 2,
            subscriptions_per_uid: 1,
            reserved_connections: 1,
            reserved_subscriptions: 0,
            idle_timeout: std::time::Duration::from_secs(1),
        };
        Quotas::new(c, 4)
    }

    #[test]
    fn each_uid_has_its_own_quota_and_the_reserve_is_kept() {
        let q = quotas();
        let a1 = q.connection(1).unwrap();
        let _a2 = q.connection(1).unwrap();
        let e = q.connection(1).err().unwrap();
        assert!(e.message.contains("limits.connections_per_uid = 2"), "{e}");
        let _b1 = q.connection(2).unwrap();
        // Three of four places are taken by users not admitted; the fourth is reserved.
        let e = q.connection(3).err().unwrap();
        assert!(e.message.contains("limits.reserved_connections = 1"), "{e}");
        drop(a1);
        let _c1 = q.connection(3).unwrap();
        let s = q.subscription(1).unwrap();
        assert!(q.subscription(1).is_err());
        let _other = q.subscription(2).unwrap();
        drop(s);
        let _again = q.subscription(1).unwrap();
    }
}
