//! `[limits]`: frame sizes, the timeouts of a connection, and what a local user who is not
//! admitted may hold (quotas).

use super::reader::{seconds, Reader};
use super::ConfigError;
use std::time::Duration;
use toml::Table;

/// Subscribers of one kind of event, and the events each may fall behind before it is dropped.
pub const MAX_SUBSCRIBERS: usize = 256;

pub const SUBSCRIBER_BACKLOG: usize = 64;

/// How long a new connection may take to send its hello by default.
pub const DEFAULT_HELLO_TIMEOUT: Duration = Duration::from_secs(10);

pub const DEFAULT_FRAME_TIMEOUT: Duration = Duration::from_secs(10);

pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

pub const DEFAULT_MAX_CONNECTIONS: usize = 256;

pub const DEFAULT_CONNECTIONS_PER_UID: usize = 32;

pub const DEFAULT_SUBSCRIPTIONS_PER_UID: usize = 16;

/// Of each kind's subscriber slots, those only admitted peers may take.
pub const DEFAULT_RESERVED_SUBSCRIPTIONS: usize = 64;

pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// What one local user who is not admitted to the protected socket may hold on the public
/// socket, so that no such user can starve iamd, its admitted clients or the node link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaConfig {
    /// Connections one such uid may have open at once.
    pub connections_per_uid: usize,
    /// Subscriptions (of every kind together) one such uid may hold at once.
    pub subscriptions_per_uid: usize,
    /// Of each socket's `max_connections`, the places such users together cannot take.
    pub reserved_connections: usize,
    /// Of each event kind's subscriber slots, the ones such users together cannot take.
    pub reserved_subscriptions: usize,
    /// A connection of such a user that neither asks nor subscribes for this long is closed.
    pub idle_timeout: Duration,
}

impl QuotaConfig {
    fn defaults(max_connections: usize) -> Self {
        QuotaConfig {
            connections_per_uid: DEFAULT_CONNECTIONS_PER_UID,
            subscriptions_per_uid: DEFAULT_SUBSCRIPTIONS_PER_UID,
            reserved_connections: max_connections / 8,
            reserved_subscriptions: DEFAULT_RESERVED_SUBSCRIPTIONS,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }
}

/// `[limits]` as read.
pub(super) struct Limits {
    pub body_limit: u32,
    pub hello_timeout: Duration,
    pub frame_timeout: Duration,
    pub write_timeout: Duration,
    pub max_connections: usize,
    pub quotas: QuotaConfig,
}

#[inline(never)]
pub(super) fn parse(root: &mut Reader) -> Result<Limits, ConfigError> {
    let mut l = root
        .sub("limits")?
        .unwrap_or_else(|| root.child("limits".into(), Table::new()));
    let body_limit = l
        .uint("body_limit", 16 * 1024 * 1024)?
        .map(|b| b as u32)
        .unwrap_or(crate::proto::wire::DEFAULT_BODY_LIMIT);
    if body_limit < 4096 {
        return Err(l.err("body_limit", "must be at least 4096 bytes"));
    }
    let hello_timeout = seconds(&mut l, "hello_timeout", 3600, DEFAULT_HELLO_TIMEOUT)?;
    let frame_timeout = seconds(&mut l, "frame_timeout", 3600, DEFAULT_FRAME_TIMEOUT)?;
    let write_timeout = seconds(&mut l, "write_timeout", 3600, DEFAULT_WRITE_TIMEOUT)?;
    let max_connections = match l.uint("max_connections", 65536)? {
        Some(0) => return Err(l.err("max_connections", "must be at least 1")),
        Some(n) => n as usize,
        None => DEFAULT_MAX_CONNECTIONS,
    };
    let mut quotas = QuotaConfig::defaults(max_connections);
    for (key, value) in [
        ("connections_per_uid", &mut quotas.connections_per_uid),
        ("subscriptions_per_uid", &mut quotas.subscriptions_per_uid),
    ] {
        match l.uint(key, 65536)? {
            Some(0) => return Err(l.err(key, "must be at least 1")),
            Some(n) => *value = n as usize,
            None => {}
        }
    }
    if let Some(n) = l.uint("reserved_connections", 65536)? {
        if n as usize >= max_connections {
            return Err(l.err(
                "reserved_connections",
                format!("must be less than max_connections ({max_connections})"),
            ));
        }
        quotas.reserved_connections = n as usize;
    }
    let subscribers = MAX_SUBSCRIBERS;
    if let Some(n) = l.uint("reserved_subscriptions", 65536)? {
        if n as usize >= subscribers {
            return Err(l.err(
                "reserved_subscriptions",
                format!("must be less than the {subscribers} subscribers of each kind"),
            ));
        }
        quotas.reserved_subscriptions = n as usize;
    }
    quotas.idle_timeout = seconds(&mut l, "idle_timeout", 24 * 3600, DEFAULT_IDLE_TIMEOUT)?;
    l.finish()?;
    Ok(Limits {
        body_limit,
        hello_timeout,
        frame_timeout,
        write_timeout,
        max_connections,
        quotas,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::testing::*;
    use crate::config::*;
    use std::time::Duration;

    #[test]
    fn limits_have_defaults_and_reserved_places_stay_below_the_whole() {
        let c = load(&[]).unwrap();
        assert_eq!(
            (c.max_connections, c.hello_timeout),
            (DEFAULT_MAX_CONNECTIONS, DEFAULT_HELLO_TIMEOUT)
        );
        assert_eq!(c.quotas, QuotaConfig::defaults(DEFAULT_MAX_CONNECTIONS));
        let c = load(&["[limits]\nmax_connections = 16\nframe_timeout = 3\n"]).unwrap();
        assert_eq!(
            (c.quotas.reserved_connections, c.frame_timeout),
            (2, Duration::from_secs(3))
        );
        for (text, key, reason) in [
            ("[limits]\nbody_limit = 100\n", "limits.body_limit", "at least 4096"),
            (
                "[limits]\nmax_connections = 8\nreserved_connections = 8\n",
                "limits.reserved_connections",
                "less than max_connections",
            ),
            (
                "[limits]\nreserved_subscriptions = 256\n",
                "limits.reserved_subscriptions",
                "256 subscribers",
            ),
            (
                "[limits]\nhello_timeout = 0\n",
                "limits.hello_timeout",
                "at least 1 second",
            ),
        ] {
            let e = load(&[text]).unwrap_err();
            assert_eq!(e.key, key, "{text}");
            assert!(e.reason.contains(reason), "{text}: {e}");
        }
    }
}
