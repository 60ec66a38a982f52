//! Fan-out of events to subscribers, each with a bounded backlog.
//!
//! A subscriber that stops reading fills its backlog; the next event drops it (its stream
//! ends) instead of holding back the others or growing without bound.

use crate::error::{Error, Result};
use smol::channel::{Receiver, Sender};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

pub struct Broadcast<T> {
    name: &'static str,
    limit: usize,
    backlog: usize,
    next: AtomicU64,
    subscribers: Mutex<Vec<(u64, Sender<T>)>>,
}

impl<T: Clone> Broadcast<T> {
    /// At most `limit` subscribers, each at most `backlog` events behind.
    pub fn new(name: &'static str, limit: usize, backlog: usize) -> Self {
        Broadcast {
            name,
            limit,
            backlog,
            next: AtomicU64::new(1),
            subscribers: Mutex::new(Vec::new()),
        }
    }

    /// A new subscriber, provided `reserved` slots stay free after it: 0 for admitted
    /// peers, `limits.reserved_subscriptions` for users who are not admitted.
    pub fn subscribe(&self, reserved: usize) -> Result<(u64, Receiver<T>)> {
        let mut subs = crate::sys::lock(&self.subscribers);
        subs.retain(|(_, s)| !s.is_closed());
        if subs.len() >= self.limit {
            return Err(Error::unavailable(format!(
                "{} subscriptions are at their limit of {}",
                self.name, self.limit
            )));
        }
        if subs.len() + reserved >= self.limit {
            return Err(Error::unavailable(format!(
                "{} subscriptions open to users not admitted are taken ({} of {}; \
                 limits.reserved_subscriptions = {reserved} are kept for admitted clients)",
                self.name,
                self.limit - reserved,
                self.limit
            )));
        }
        // Unbounded, with the backlog counted at each send: a bounded channel allocates its
        // whole backlog up front (14 KB per certificate subscriber), an unbounded one only
        // for the events a subscriber has not read yet.
        let (tx, rx) = smol::channel::unbounded();
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        subs.push((id, tx));
        Ok((id, rx))
    }

    pub fn unsubscribe(&self, id: u64) {
        crate::sys::lock(&self.subscribers).retain(|(i, _)| *i != id);
    }

    /// Deliver to every subscriber; those whose backlog is full are dropped.
    pub fn send(&self, event: T) {
        crate::sys::lock(&self.subscribers).retain(|(id, tx)| {
            if tx.len() >= self.backlog && !tx.is_closed() {
                crate::log_warn!(
                    "{} subscriber {id} is {} events behind; dropped",
                    self.name,
                    self.backlog
                );
                return false;
            }
            tx.try_send(event.clone()).is_ok()
        });
    }

    pub fn len(&self) -> usize {
        crate::sys::lock(&self.subscribers).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stalled_subscriber_is_dropped_and_others_keep_receiving() {
        let b = Broadcast::new("test", 2, 2);
        let (_, stalled) = b.subscribe(1).unwrap();
        assert!(b.subscribe(1).is_err(), "the reserved slot");
        let (_, reader) = b.subscribe(0).unwrap();
        assert!(b.subscribe(0).is_err(), "limit");
        for i in 0..3 {
            b.send(i);
            assert_eq!(reader.try_recv().unwrap(), i);
        }
        assert_eq!(b.len(), 1, "the stalled one is gone");
        assert_eq!((stalled.try_recv(), stalled.try_recv()), (Ok(0), Ok(1)));
        assert!(stalled.try_recv().is_err() && stalled.is_closed());
        drop(reader);
        b.send(9);
        assert!(b.is_empty());
    }
}
