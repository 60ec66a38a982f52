//! The redb database: node state, the provisioning password verifier, and the journal of
//! pending keys, applied certificates and objects awaiting removal.
//!
//! Every write is one transaction committed with immediate durability before the step is
//! acknowledged. Removals go through the `trash` table first (record moved, objects then
//! deleted, entry then dropped), so a power cut mid-removal is finished at the next start.

use crate::error::{Error, Result};
use crate::proto::wire::NodeState;
use crate::store::keystore::{hex, parse_hex_id, KeyId};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::path::Path;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const PENDING: TableDefinition<&str, &[u8]> = TableDefinition::new("pending");
const CERTS: TableDefinition<&str, &[u8]> = TableDefinition::new("certs");
const TRASH: TableDefinition<&str, &[u8]> = TableDefinition::new("trash");
const INSTANCES: TableDefinition<&str, &[u8]> = TableDefinition::new("instances");
/// Renewals in progress, by certificate type (see `renewal`).
const RENEWALS: TableDefinition<&str, &[u8]> = TableDefinition::new("renewals");
/// Main node: every node that registered over a link, by node id.
const NODES: TableDefinition<&str, &[u8]> = TableDefinition::new("nodes");

const STATE: &str = "state";
const VERIFIER: &str = "password";
const SEQ: &str = "seq";

/// A key generated for a certificate type and waiting for its certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingKey {
    pub cert_type: String,
    pub key_id: KeyId,
    pub created: i64,
}

/// An applied certificate, stored next to its key.
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

/// Objects of a store that are to be removed (key pair and certificate).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TrashEntry {
    pub cert_type: String,
    pub key_id: KeyId,
}

/// Everything the database holds, read in one transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub state: Option<NodeState>,
    pub verifier: Option<Vec<u8>>,
    pub pending: Vec<PendingKey>,
    pub certs: Vec<CertRecord>,
    pub trash: Vec<TrashEntry>,
}

impl Snapshot {
    pub fn state(&self) -> NodeState {
        self.state.unwrap_or(NodeState::Unprovisioned)
    }
}

fn key(cert_type: &str, id: &KeyId) -> String {
    format!("{cert_type}/{}", hex(id))
}

fn enc<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    postcard::to_stdvec(v).map_err(|e| Error::internal(format!("database encode: {e}")))
}

fn dec<T: for<'a> Deserialize<'a>>(table: &str, k: &str, v: &[u8]) -> Result<T> {
    crate::proto::wire::decode_body(v)
        .map_err(|e| Error::internal(format!("database: record {table}/{k} is corrupt: {e}")))
}

pub struct Db {
    db: Database,
}

impl Db {
    pub fn open(path: &Path) -> Result<Db> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::internal(format!("cannot create {}: {e}", dir.display())))?;
        }
        let db = Database::create(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => Error::unavailable(format!(
                "database {} is in use by another process (another iamd?)",
                path.display()
            )),
            e => Error::internal(format!("cannot open database {}: {e}", path.display())),
        })?;
        let this = Db { db };
        this.write(|_| Ok(()))?;
        Ok(this)
    }

    /// One durable transaction with every table open.
    fn write(&self, f: impl FnOnce(&mut Tables) -> Result<()>) -> Result<()> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| Error::internal(format!("database: {e}")))?;
        {
            let mut t = Tables {
                meta: txn.open_table(META)?,
                pending: txn.open_table(PENDING)?,
                certs: txn.open_table(CERTS)?,
                trash: txn.open_table(TRASH)?,
            };
            f(&mut t)?;
        }
        txn.commit()?;
        Ok(())
    }

    pub fn snapshot(&self) -> Result<Snapshot> {
        let txn = self.db.begin_read()?;
        let mut s = Snapshot::default();
        let meta = txn.open_table(META)?;
        if let Some(v) = meta.get(STATE)? {
            s.state = Some(dec("meta", STATE, v.value())?);
        }
        if let Some(v) = meta.get(VERIFIER)? {
            s.verifier = Some(v.value().to_vec());
        }
        for item in txn.open_table(PENDING)?.iter()? {
            let (k, v) = item?;
            s.pending.push(dec("pending", k.value(), v.value())?);
        }
        for item in txn.open_table(CERTS)?.iter()? {
            let (k, v) = item?;
            s.certs.push(dec("certs", k.value(), v.value())?);
        }
        for item in txn.open_table(TRASH)?.iter()? {
            let (k, v) = item?;
            s.trash.push(dec("trash", k.value(), v.value())?);
        }
        s.certs.sort_by_key(|c| c.seq);
        Ok(s)
    }

    pub fn set_state(&self, state: NodeState) -> Result<()> {
        self.write(|t| t.set_state(state))
    }

    /// Provisioning begins: every store was just wiped, so every record goes too.
    pub fn begin_provisioning(&self, verifier: &[u8]) -> Result<()> {
        self.write(|t| {
            t.clear()?;
            t.meta.insert(VERIFIER, verifier)?;
            t.set_state(NodeState::Provisioning)
        })
    }

    /// Deprovisioned: every store was wiped, the records and the verifier go.
    pub fn reset(&self) -> Result<()> {
        self.write(|t| {
            t.clear()?;
            t.meta.remove(VERIFIER)?;
            t.set_state(NodeState::Unprovisioned)
        })
    }

    /// Journal a key before it is generated. A key still pending for the type is replaced:
    /// its record moves to the trash.
    pub fn add_pending(&self, p: &PendingKey) -> Result<Vec<TrashEntry>> {
        let mut trashed = Vec::new();
        self.write(|t| {
            let old: Vec<PendingKey> = t.pending_of(&p.cert_type)?;
            for o in old {
                t.pending.remove(key(&o.cert_type, &o.key_id).as_str())?;
                trashed.push(t.move_to_trash(&o.cert_type, &o.key_id)?);
            }
            t.pending
                .insert(key(&p.cert_type, &p.key_id).as_str(), enc(p)?.as_slice())?;
            Ok(())
        })?;
        Ok(trashed)
    }

    /// Record an applied certificate: the pending key becomes a certificate record, and the
    /// records in `evict` move to the trash, all in one commit.
    pub fn apply(&self, record: &CertRecord, evict: &[CertRecord]) -> Result<Vec<TrashEntry>> {
        let mut trashed = Vec::new();
        self.write(|t| {
            let k = key(&record.cert_type, &record.key_id);
            t.pending.remove(k.as_str())?;
            let seq = t.next_seq()?;
            let mut record = record.clone();
            record.seq = seq;
            t.certs.insert(k.as_str(), enc(&record)?.as_slice())?;
            for e in evict {
                t.certs.remove(key(&e.cert_type, &e.key_id).as_str())?;
                trashed.push(t.move_to_trash(&e.cert_type, &e.key_id)?);
            }
            Ok(())
        })?;
        Ok(trashed)
    }

    /// Pending keys or certificate records to be removed: each record moves to the trash in
    /// one commit (its objects are removed by the caller, then the entries forgotten).
    pub fn discard(&self, items: &[(String, KeyId)]) -> Result<Vec<TrashEntry>> {
        let mut trashed = Vec::new();
        self.write(|t| {
            for (cert_type, id) in items {
                let k = key(cert_type, id);
                t.pending.remove(k.as_str())?;
                t.certs.remove(k.as_str())?;
                trashed.push(t.move_to_trash(cert_type, id)?);
            }
            Ok(())
        })?;
        Ok(trashed)
    }

    /// Persisted permission registrations: (key, encoded registration).
    pub fn instances(&self) -> Result<Vec<(String, Vec<u8>)>> {
        self.read_all(INSTANCES)
    }

    pub fn put_instance(&self, key: &str, value: &[u8]) -> Result<()> {
        self.write_table(INSTANCES, |t| {
            t.insert(key, value)?;
            Ok(())
        })
    }

    pub fn remove_instance(&self, key: &str) -> Result<()> {
        self.write_table(INSTANCES, |t| {
            t.remove(key)?;
            Ok(())
        })
    }

    pub fn clear_instances(&self) -> Result<()> {
        self.write_table(INSTANCES, |t| {
            t.retain(|_, _| false)?;
            Ok(())
        })
    }

    /// Renewals in progress: (certificate type, encoded state).
    pub fn renewals(&self) -> Result<Vec<(String, Vec<u8>)>> {
        self.read_all(RENEWALS)
    }

    /// Record a renewal's step (`None`: the renewal is over).
    pub fn set_renewal(&self, cert_type: &str, value: Option<&[u8]>) -> Result<()> {
        self.write_table(RENEWALS, |t| {
            match value {
                Some(v) => t.insert(cert_type, v)?,
                None => t.remove(cert_type)?,
            };
            Ok(())
        })
    }

    /// The node registry of the main node: (node id, encoded record).
    pub fn nodes(&self) -> Result<Vec<(String, Vec<u8>)>> {
        self.read_all(NODES)
    }

    pub fn delete_nodes(&self, node_ids: &[String]) -> Result<()> {
        self.write_table(NODES, |t| {
            for id in node_ids {
                t.remove(id.as_str())?;
            }
            Ok(())
        })
    }

    pub fn put_node(&self, node_id: &str, value: &[u8]) -> Result<()> {
        self.write_table(NODES, |t| {
            t.insert(node_id, value)?;
            Ok(())
        })
    }

    /// Every entry of a table that lives beside the provisioning tables.
    fn read_all(&self, def: TableDefinition<&str, &[u8]>) -> Result<Vec<(String, Vec<u8>)>> {
        let txn = self.db.begin_read()?;
        let table = match txn.open_table(def) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::new();
        for item in table.iter()? {
            let (k, v) = item?;
            out.push((k.value().to_string(), v.value().to_vec()));
        }
        Ok(out)
    }

    fn write_table(
        &self,
        def: TableDefinition<&str, &[u8]>,
        f: impl FnOnce(&mut redb::Table<&str, &[u8]>) -> Result<()>,
    ) -> Result<()> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| Error::internal(format!("database: {e}")))?;
        {
            let mut t = txn.open_table(def)?;
            f(&mut t)?;
        }
        txn.commit()?;
        Ok(())
    }

    /// The objects of a trash entry are gone from their store: forget the entry.
    pub fn forget_trash(&self, e: &TrashEntry) -> Result<()> {
        self.write(|t| {
            t.trash.remove(key(&e.cert_type, &e.key_id).as_str())?;
            Ok(())
        })
    }
}

struct Tables<'t> {
    meta: redb::Table<'t, &'static str, &'static [u8]>,
    pending: redb::Table<'t, &'static str, &'static [u8]>,
    certs: redb::Table<'t, &'static str, &'static [u8]>,
    trash: redb::Table<'t, &'static str, &'static [u8]>,
}

impl Tables<'_> {
    fn set_state(&mut self, state: NodeState) -> Result<()> {
        self.meta.insert(STATE, enc(&state)?.as_slice())?;
        Ok(())
    }

    fn clear(&mut self) -> Result<()> {
        self.pending.retain(|_, _| false)?;
        self.certs.retain(|_, _| false)?;
        self.trash.retain(|_, _| false)?;
        Ok(())
    }

    fn pending_of(&self, cert_type: &str) -> Result<Vec<PendingKey>> {
        let mut out = Vec::new();
        for item in self.pending.iter()? {
            let (k, v) = item?;
            let p: PendingKey = dec("pending", k.value(), v.value())?;
            if p.cert_type == cert_type {
                out.push(p);
            }
        }
        Ok(out)
    }

    fn move_to_trash(&mut self, cert_type: &str, id: &KeyId) -> Result<TrashEntry> {
        let e = TrashEntry {
            cert_type: cert_type.to_string(),
            key_id: *id,
        };
        self.trash.insert(key(cert_type, id).as_str(), enc(&e)?.as_slice())?;
        Ok(e)
    }

    fn next_seq(&mut self) -> Result<u64> {
        let cur = match self.meta.get(SEQ)? {
            Some(v) => dec::<u64>("meta", SEQ, v.value())?,
            None => 0,
        };
        self.meta.insert(SEQ, enc(&(cur + 1))?.as_slice())?;
        Ok(cur + 1)
    }
}

/// Parse a `type/hexid` journal key (for reports).
pub fn parse_key(k: &str) -> Option<(String, KeyId)> {
    let (t, id) = k.rsplit_once('/')?;
    Some((t.to_string(), parse_hex_id(id)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp_db(name: &str) -> (Db, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("aos-iam-db-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        (Db::open(&dir.join("iam.db")).unwrap(), dir)
    }

    fn record(t: &str, id: u8) -> CertRecord {
        CertRecord {
            cert_type: t.into(),
            key_id: [id; 16],
            subject: "CN=x".into(),
            issuer: "CN=ca".into(),
            issuer_der: vec![],
            serial: vec![id],
            not_before: 0,
            not_after: 1,
            seq: 0,
            intermediates: vec![],
        }
    }

    #[test]
    fn a_new_database_is_unprovisioned() {
        let (db, dir) = tmp_db("new");
        assert_eq!(db.snapshot().unwrap().state(), NodeState::Unprovisioned);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn pending_key_replaced_goes_to_trash_and_apply_evicts() {
        let (db, dir) = tmp_db("journal");
        db.begin_provisioning(b"v").unwrap();
        let p1 = PendingKey {
            cert_type: "iam".into(),
            key_id: [1; 16],
            created: 0,
        };
        assert!(db.add_pending(&p1).unwrap().is_empty());
        let p2 = PendingKey {
            key_id: [2; 16],
            ..p1.clone()
        };
        let trashed = db.add_pending(&p2).unwrap();
        assert_eq!(
            trashed,
            vec![TrashEntry {
                cert_type: "iam".into(),
                key_id: [1; 16]
            }]
        );
        db.forget_trash(&trashed[0]).unwrap();
        db.apply(&record("iam", 2), &[]).unwrap();
        db.apply(&record("iam", 3), &[record("iam", 2)]).unwrap();
        let s = db.snapshot().unwrap();
        assert!(s.pending.is_empty());
        assert_eq!(s.certs.len(), 1);
        assert_eq!(s.certs[0].key_id, [3; 16]);
        assert_eq!(s.trash.len(), 1);
        assert_eq!(s.state(), NodeState::Provisioning);
        drop(db);
        let db = Db::open(&dir.join("iam.db")).unwrap();
        assert_eq!(db.snapshot().unwrap(), s, "survives reopening");
        db.reset().unwrap();
        let s = db.snapshot().unwrap();
        assert!(s.certs.is_empty() && s.trash.is_empty() && s.verifier.is_none());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
