//! A link whose peer a CRL revokes is dropped at once. A new link is refused at its
//! handshake (the CRLs of `paths.crl` are read at each one); the main node also keeps the
//! chain of each TLS link it serves and, when the CRL files change (looked at on each
//! identity poll, `identity.poll_interval`, and at once on SIGHUP), validates them again
//! and closes those now revoked.

use crate::config::{Config, Eku};
use crate::error::ErrorKind;
use crate::link::peer::Peer;
use crate::pki::x509;
use crate::sys::lock;
use rustls_pki_types::{CertificateDer, UnixTime};
use std::sync::{Arc, Mutex, Weak};
use std::time::SystemTime;

struct Watched {
    node_id: String,
    peer: Weak<Peer>,
    chain: Vec<CertificateDer<'static>>,
}

/// What a CRL file was when last read: modified, length, inode (`None`: unreadable).
type Stamp = Vec<Option<(SystemTime, u64, u64)>>;

#[derive(Default)]
pub struct Revocable {
    links: Mutex<Vec<Watched>>,
    last: Mutex<Option<Stamp>>,
}

impl Revocable {
    /// Keep the chain of a TLS link as long as its peer lives.
    pub fn watch(&self, node_id: &str, peer: &Arc<Peer>, chain: Vec<CertificateDer<'static>>) {
        let mut links = lock(&self.links);
        links.retain(|w| w.peer.upgrade().is_some_and(|p| !p.is_closed()));
        links.push(Watched {
            node_id: node_id.into(),
            peer: Arc::downgrade(peer),
            chain,
        });
    }

    /// When the CRL files changed since the last look (or `force`: SIGHUP), close each
    /// link whose chain a CRL now revokes. Returns how many were closed.
    pub fn recheck(&self, config: &Config, force: bool) -> usize {
        use std::os::unix::fs::MetadataExt;
        let stamp: Stamp = config
            .crl
            .iter()
            .map(|p| {
                std::fs::metadata(p)
                    .ok()
                    .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len(), m.ino()))
            })
            .collect();
        {
            let mut last = lock(&self.last);
            if !force && last.as_ref() == Some(&stamp) {
                return 0;
            }
            *last = Some(stamp);
        }
        let mut links = lock(&self.links);
        links.retain(|w| w.peer.upgrade().is_some_and(|p| !p.is_closed()));
        if links.is_empty() || config.crl.is_empty() {
            return 0;
        }
        let checked = x509::read_crls(&config.crl)
            .and_then(|c| x509::parse_crls(&c))
            .and_then(|c| Ok((c, crate::daemon::certs::read_roots(config)?)));
        let (crls, roots) = match checked {
            Ok(both) => both,
            Err(e) => {
                crate::log_warn!("links are not checked against paths.crl: {e}");
                return 0;
            }
        };
        let mut closed = 0;
        for w in links.iter() {
            let Err(e) = x509::validate_chain_against(&w.chain, &roots, &[Eku::ClientAuth], UnixTime::now(), &crls)
            else {
                continue;
            };
            if !matches!(&e.kind, ErrorKind::Validation(r) if r == "CertRevoked") {
                continue;
            }
            if let Some(p) = w.peer.upgrade() {
                crate::log_notice!(
                    "node \"{}\": its link is closed: its certificate is revoked (paths.crl)",
                    w.node_id
                );
                p.close("its certificate is revoked (paths.crl)");
                closed += 1;
            }
        }
        closed
    }
}
