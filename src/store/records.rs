//! What the database stores, as types of its own (docs/ARCHITECTURE.md §8): a change to a
//! wire message never changes a stored record. Each table has a schema version, kept in the
//! database's `schema` table ([`SCHEMA`]); a record's layout changes only with its table's
//! version and a migration (`db::MIGRATIONS`).
//!
//! Records are postcard-encoded, which carries no field names: a field is never added,
//! removed, reordered or retyped without a new version. The golden fixtures under
//! tests/data/db/ hold databases of earlier releases, which this build must open.

use crate::proto::wire::{CpuInfo, InstanceIdent, InstanceKind, NodeInfo, NodeState, PartitionInfo, ServerPermissions};
use crate::secret::Secret;
use crate::store::keystore::KeyId;
use serde::{Deserialize, Serialize};

/// The schema version of each table this build reads and writes. Databases written before
/// versions were recorded (release c48f784 and earlier) are at version 1 in every table.
pub const SCHEMA: &[(&str, u32)] = &[
    ("meta", 1),
    ("pending", 1),
    ("certs", 1),
    ("trash", 1),
    ("instances", 1),
    ("renewals", 1),
    ("nodes", 1),
];

/// The version of `table` this build writes (`None`: no such table in this build).
pub fn current_version(table: &str) -> Option<u32> {
    SCHEMA.iter().find(|(t, _)| *t == table).map(|(_, v)| *v)
}

/// The node's provisioning state (`meta/state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoredState {
    Unprovisioned,
    Provisioning,
    Provisioned,
    Paused,
    Error,
}

impl From<NodeState> for StoredState {
    fn from(s: NodeState) -> Self {
        match s {
            NodeState::Unprovisioned => StoredState::Unprovisioned,
            NodeState::Provisioning => StoredState::Provisioning,
            NodeState::Provisioned => StoredState::Provisioned,
            NodeState::Paused => StoredState::Paused,
            NodeState::Error => StoredState::Error,
        }
    }
}

impl From<StoredState> for NodeState {
    fn from(s: StoredState) -> Self {
        match s {
            StoredState::Unprovisioned => NodeState::Unprovisioned,
            StoredState::Provisioning => NodeState::Provisioning,
            StoredState::Provisioned => NodeState::Provisioned,
            StoredState::Paused => NodeState::Paused,
            StoredState::Error => NodeState::Error,
        }
    }
}

/// A key generated for a certificate type and waiting for its certificate (`pending`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingKey {
    pub cert_type: String,
    pub key_id: KeyId,
    pub created: i64,
}

/// An applied certificate, stored next to its key (`certs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertRecord {
    pub cert_type: String,
    pub key_id: KeyId,
    pub subject: String,
    pub issuer: String,
    pub issuer_der: Vec<u8>,
    pub serial: Vec<u8>,
    pub not_before: i64,
    pub not_after: i64,
    /// Order of application; the newest valid certificate of a type is its current one.
    pub seq: u64,
    /// The intermediate certificates (DER) the chain was validated with, for later checks;
    /// only the leaf is kept in the store.
    pub intermediates: Vec<Vec<u8>>,
}

/// Objects of a store that are to be removed, key pair and certificate (`trash`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TrashEntry {
    pub cert_type: String,
    pub key_id: KeyId,
}

/// A renewal's step (`renewals`, see `daemon::renewal`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Step {
    KeyCreated {
        key_id: KeyId,
        csr: String,
    },
    Obtained {
        key_id: KeyId,
        csr: String,
        chain_pem: String,
    },
}

/// The enrollment state machine (`meta/enrollment`, see `daemon::enroll`). A key of `meta`
/// that builds before enrollment never read: they ignore it, so no table version changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoredEnrollState {
    Unprovisioned,
    Enrolling,
    Provisioned,
    Operational,
    Quarantined,
}

/// A node bootstrapped for enrollment, and how far its enrollment has come.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrollment {
    pub state: StoredEnrollState,
    /// The EST server and its trust anchor (PEM) given at bootstrap (empty: the
    /// configuration's `[enroll]`).
    pub url: String,
    pub anchor_pem: String,
    /// The certificate type being enrolled and its step, if one is under way.
    pub current: Option<(String, Step)>,
    /// The types enrolled (certificate applied) so far.
    pub enrolled: Vec<String>,
    /// Failed attempts since enrollment began or was released.
    pub failures: u32,
    /// Not before this time (seconds since the Unix epoch).
    pub next_try: i64,
    pub last_error: String,
    /// Why the node is quarantined.
    pub reason: String,
    /// When the state was entered.
    pub since: i64,
}

/// A renewal in progress (`renewals`, by certificate type).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Renewal {
    pub step: Step,
    /// Failures so far; the next delay is `retry * 2^failures` (bounded).
    pub failures: u32,
    /// Not before this time (seconds since the Unix epoch).
    pub next_try: i64,
    pub last_error: String,
}

/// What the main node keeps of a registered node (`nodes`, by node id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub info: StoredNodeInfo,
    /// Seconds since the Unix epoch when the link was last up.
    pub last_seen: i64,
}

/// A node's last reported NodeInfo.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredNodeInfo {
    pub node_id: String,
    pub node_type: String,
    pub name: String,
    pub state: StoredState,
    pub cpus: Vec<StoredCpu>,
    pub total_ram: u64,
    pub partitions: Vec<StoredPartition>,
    pub os_name: String,
    pub os_version: String,
    pub attributes: Vec<(String, String)>,
    /// Whether the link was up when this was written (ignored when read: every node starts
    /// disconnected).
    pub connected: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredCpu {
    pub model: String,
    pub cores: u32,
    pub threads: u32,
    pub architecture: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredPartition {
    pub name: String,
    pub types: Vec<String>,
    pub path: String,
    pub total_size: u64,
}

impl From<&NodeInfo> for StoredNodeInfo {
    fn from(i: &NodeInfo) -> Self {
        StoredNodeInfo {
            node_id: i.node_id.clone(),
            node_type: i.node_type.clone(),
            name: i.name.clone(),
            state: i.state.into(),
            cpus: i
                .cpus
                .iter()
                .map(|c| StoredCpu {
                    model: c.model.clone(),
                    cores: c.cores,
                    threads: c.threads,
                    architecture: c.architecture.clone(),
                })
                .collect(),
            total_ram: i.total_ram,
            partitions: i
                .partitions
                .iter()
                .map(|p| StoredPartition {
                    name: p.name.clone(),
                    types: p.types.clone(),
                    path: p.path.clone(),
                    total_size: p.total_size,
                })
                .collect(),
            os_name: i.os_name.clone(),
            os_version: i.os_version.clone(),
            attributes: i.attributes.clone(),
            connected: i.connected,
        }
    }
}

impl From<&StoredNodeInfo> for NodeInfo {
    fn from(i: &StoredNodeInfo) -> Self {
        NodeInfo {
            node_id: i.node_id.clone(),
            node_type: i.node_type.clone(),
            name: i.name.clone(),
            state: i.state.into(),
            cpus: i
                .cpus
                .iter()
                .map(|c| CpuInfo {
                    model: c.model.clone(),
                    cores: c.cores,
                    threads: c.threads,
                    architecture: c.architecture.clone(),
                })
                .collect(),
            total_ram: i.total_ram,
            partitions: i
                .partitions
                .iter()
                .map(|p| PartitionInfo {
                    name: p.name.clone(),
                    types: p.types.clone(),
                    path: p.path.clone(),
                    total_size: p.total_size,
                })
                .collect(),
            os_name: i.os_name.clone(),
            os_version: i.os_version.clone(),
            attributes: i.attributes.clone(),
            connected: i.connected,
        }
    }
}

/// A persisted permission registration (`instances`).
#[derive(Clone, Serialize, Deserialize)]
pub struct StoredRegistration {
    pub instance: StoredInstance,
    pub secret: Secret,
    pub permissions: Vec<StoredPermissions>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredInstance {
    pub item_id: String,
    pub subject_id: String,
    pub instance: u64,
    pub kind: StoredKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoredKind {
    Service,
    Component,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredPermissions {
    pub server: String,
    pub entries: Vec<(String, String)>,
}

impl From<&InstanceIdent> for StoredInstance {
    fn from(i: &InstanceIdent) -> Self {
        StoredInstance {
            item_id: i.item_id.clone(),
            subject_id: i.subject_id.clone(),
            instance: i.instance,
            kind: match i.kind {
                InstanceKind::Service => StoredKind::Service,
                InstanceKind::Component => StoredKind::Component,
            },
        }
    }
}

impl From<&StoredInstance> for InstanceIdent {
    fn from(i: &StoredInstance) -> Self {
        InstanceIdent {
            item_id: i.item_id.clone(),
            subject_id: i.subject_id.clone(),
            instance: i.instance,
            kind: match i.kind {
                StoredKind::Service => InstanceKind::Service,
                StoredKind::Component => InstanceKind::Component,
            },
        }
    }
}

impl From<&ServerPermissions> for StoredPermissions {
    fn from(p: &ServerPermissions) -> Self {
        StoredPermissions {
            server: p.server.clone(),
            entries: p.entries.clone(),
        }
    }
}

impl From<&StoredPermissions> for ServerPermissions {
    fn from(p: &StoredPermissions) -> Self {
        ServerPermissions {
            server: p.server.clone(),
            entries: p.entries.clone(),
        }
    }
}

/// Encode a record.
pub fn encode<T: Serialize>(v: &T) -> crate::error::Result<Vec<u8>> {
    postcard::to_stdvec(v).map_err(|e| crate::error::Error::internal(format!("database encode: {e}")))
}

/// Decode a record exactly (every byte used); the error names the table and key.
pub fn decode<T: for<'a> Deserialize<'a>>(table: &str, key: &str, v: &[u8]) -> crate::error::Result<T> {
    crate::proto::wire::decode_body(v)
        .map_err(|e| crate::error::Error::internal(format!("database: record {table}/{key} is corrupt: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stored layouts are those of release c48f784, byte for byte (its wire structs).
    #[test]
    fn records_encode_as_the_release_before_versions_did() {
        let info = NodeInfo {
            node_id: "n".into(),
            node_type: "t".into(),
            name: "x".into(),
            state: NodeState::Paused,
            cpus: vec![CpuInfo {
                model: "m".into(),
                cores: 2,
                threads: 4,
                architecture: "a".into(),
            }],
            total_ram: 300,
            partitions: vec![PartitionInfo {
                name: "p".into(),
                types: vec!["s".into()],
                path: "/".into(),
                total_size: 5,
            }],
            os_name: "o".into(),
            os_version: "v".into(),
            attributes: vec![("k".into(), "v".into())],
            connected: true,
        };
        let stored = StoredNodeInfo::from(&info);
        assert_eq!(encode(&stored).unwrap(), postcard::to_stdvec(&info).unwrap());
        assert_eq!(NodeInfo::from(&stored), info);
        for s in [
            NodeState::Unprovisioned,
            NodeState::Provisioning,
            NodeState::Provisioned,
            NodeState::Paused,
            NodeState::Error,
        ] {
            assert_eq!(encode(&StoredState::from(s)).unwrap(), postcard::to_stdvec(&s).unwrap());
        }
        let ident = InstanceIdent {
            item_id: "i".into(),
            subject_id: "s".into(),
            instance: 7,
            kind: InstanceKind::Component,
        };
        let perms = ServerPermissions {
            server: "vis".into(),
            entries: vec![("r".into(), "w".into())],
        };
        assert_eq!(
            encode(&StoredInstance::from(&ident)).unwrap(),
            postcard::to_stdvec(&ident).unwrap()
        );
        assert_eq!(
            encode(&StoredPermissions::from(&perms)).unwrap(),
            postcard::to_stdvec(&perms).unwrap()
        );
    }
}
