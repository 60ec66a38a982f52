//! The redb database: node state, the provisioning password verifier, and the journal of
//! pending keys, applied certificates and objects awaiting removal.
//!
//! Every write is one transaction committed with immediate durability before the step is
//! acknowledged. Removals go through the `trash` table first (record moved, objects then
//! deleted, entry then dropped), so a power cut mid-removal is finished at the next start.

use crate::codec::hex;
use crate::error::{Error, Result};
use crate::proto::wire::NodeState;
use crate::store::keystore::{parse_hex_id, KeyId};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use std::collections::BTreeMap;
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
/// The schema version of every table, by table name (see `records::SCHEMA`).
const SCHEMA: TableDefinition<&str, u32> = TableDefinition::new("schema");

/// One step of a table's records from schema version `from` to `from + 1`, run inside the
/// transaction that records the new version: it rewrites every record of `table`.
pub struct Migration {
    pub table: &'static str,
    pub from: u32,
    pub rewrite: fn(key: &str, old: &[u8]) -> Result<Vec<u8>>,
}

/// The migrations this build knows. Every table is still at the version the release before
/// versions were recorded wrote, so there are none yet; a layout change adds its step here
/// and its fixtures under tests/data/db/.
pub const MIGRATIONS: &[Migration] = &[];

/// What opening a database found and did about its schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaFound {
    /// A new database: every table at this build's version.
    Created,
    /// Every table at this build's version.
    Current,
    /// Written before versions were recorded (every table at version 1): the versions
    /// are now recorded.
    Unversioned,
    /// Tables migrated: (table, from, to).
    Migrated(Vec<(String, u32, u32)>),
}

const STATE: &str = "state";
const VERIFIER: &str = "password";
const SEQ: &str = "seq";
const ENROLLMENT: &str = "enrollment";
/// The node id the node was provisioned (or bootstrapped) under.
const NODE_ID: &str = "node_id";

pub use crate::store::records::{CertRecord, Enrollment, PendingKey, StoredEnrollState, TrashEntry};

/// Everything the database holds, read in one transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub state: Option<NodeState>,
    pub verifier: Option<Vec<u8>>,
    pub pending: Vec<PendingKey>,
    pub certs: Vec<CertRecord>,
    pub trash: Vec<TrashEntry>,
    /// The enrollment of a bootstrapped node.
    pub enrollment: Option<Enrollment>,
    /// The node id it was provisioned under (`None`: never, or before ids were recorded).
    pub node_id: Option<String>,
}

impl Snapshot {
    pub fn state(&self) -> NodeState {
        self.state.unwrap_or(NodeState::Unprovisioned)
    }
}

fn key(cert_type: &str, id: &KeyId) -> String {
    format!("{cert_type}/{}", hex(id))
}

use crate::store::records::{decode as dec, encode as enc, NodeRecord, Renewal, StoredRegistration, StoredState};

pub struct Db {
    /// `None` once closed ([`Db::close`]).
    db: std::sync::RwLock<Option<Database>>,
}

impl Db {
    fn with<T>(&self, f: impl FnOnce(&Database) -> Result<T>) -> Result<T> {
        let guard = self.db.read().unwrap_or_else(|e| e.into_inner());
        match guard.as_ref() {
            Some(db) => f(db),
            None => Err(Error::unavailable("the database is closed: iamd is stopping")),
        }
    }

    /// Close the database cleanly (iamd is stopping): the next open needs no repair. A
    /// transaction still running finishes first; later calls fail as `unavailable`.
    pub fn close(&self) {
        let db = self.db.write().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(db) = db {
            match db.close() {
                Ok(()) | Err(redb::DatabaseError::TransactionInProgress) => {}
                Err(e) => crate::log_warn!("closing the database: {e}"),
            }
        }
    }

    pub fn open(path: &Path) -> Result<Db> {
        Db::open_with(path, crate::store::records::SCHEMA, MIGRATIONS).map(|(db, _)| db)
    }

    /// Open (or create) the database at `path` and bring its schema to `schema`: a table
    /// at an older version is migrated by `migrations`, all tables in one durable
    /// transaction (nothing is changed unless all of it commits); a table at a newer
    /// version, or one this build does not know, is refused with both versions named and
    /// nothing changed.
    pub fn open_with(path: &Path, schema: &[(&str, u32)], migrations: &[Migration]) -> Result<(Db, SchemaFound)> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::internal(format!("cannot create {}: {e}", dir.display())))?;
        }
        let in_use = |e: redb::DatabaseError| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => Error::unavailable(format!(
                "database {} is in use by another process (another iamd?)",
                path.display()
            )),
            e => Error::internal(format!("cannot open database {}: {e}", path.display())),
        };
        // A database of a newer release is refused before it is opened for writing, which
        // could change its file.
        // (One not closed cleanly, after a crash or a stop, cannot be read so without its
        // repair: that one is checked once opened, before anything is written.)
        if path.exists() {
            match redb::ReadOnlyDatabase::open(path) {
                Ok(db) => {
                    let txn = db.begin_read()?;
                    if let Some(v) = read_versions(&txn)? {
                        refuse_newer(path, &v, schema)?;
                    }
                }
                Err(e @ redb::DatabaseError::DatabaseAlreadyOpen) => return Err(in_use(e)),
                Err(_) => {}
            }
        }
        let db = Database::create(path).map_err(in_use)?;
        let found = {
            let txn = db.begin_read()?;
            read_versions(&txn)?
        };
        let unversioned = found.as_ref().is_some_and(|v| v.is_empty());
        let versions = versions_in_effect(found.as_ref(), schema);
        refuse_newer(path, &versions, schema)?;
        let mut steps = Vec::new();
        let mut migrated = Vec::new();
        for (table, want) in schema {
            if let Some(&have) = versions.get(*table) {
                for from in have..*want {
                    let m = migrations
                        .iter()
                        .find(|m| m.table == *table && m.from == from)
                        .ok_or_else(|| {
                            Error::internal(format!("no migration of table {table} from schema version {from}"))
                        })?;
                    steps.push(m);
                }
                if have < *want {
                    migrated.push((table.to_string(), have, *want));
                }
            }
        }
        let outcome = if found.is_none() {
            SchemaFound::Created
        } else if !migrated.is_empty() {
            SchemaFound::Migrated(migrated)
        } else if unversioned {
            SchemaFound::Unversioned
        } else if schema.iter().all(|(t, _)| versions.contains_key(*t)) {
            SchemaFound::Current
        } else {
            // A table this build has and the database does not record yet: recorded now.
            SchemaFound::Migrated(Vec::new())
        };
        if outcome != SchemaFound::Current {
            let mut txn = db.begin_write()?;
            txn.set_durability(Durability::Immediate)
                .map_err(|e| Error::internal(format!("database: {e}")))?;
            for m in &steps {
                let mut table = txn.open_table(TableDefinition::<&str, &[u8]>::new(m.table))?;
                let mut rewritten = Vec::new();
                for item in table.iter()? {
                    let (k, v) = item?;
                    rewritten.push((k.value().to_string(), (m.rewrite)(k.value(), v.value())?));
                }
                for (k, v) in rewritten {
                    table.insert(k.as_str(), v.as_slice())?;
                }
            }
            {
                let mut t = txn.open_table(SCHEMA)?;
                for (table, version) in schema {
                    t.insert(*table, *version)?;
                }
            }
            // Every table exists from here on.
            for def in [META, PENDING, CERTS, TRASH, INSTANCES, RENEWALS, NODES] {
                txn.open_table(def)?;
            }
            txn.commit()?;
        }
        match &outcome {
            SchemaFound::Unversioned => crate::log_notice!(
                "database {}: written before schema versions were recorded; every table is at version 1, now recorded",
                path.display()
            ),
            SchemaFound::Migrated(m) => {
                for (t, from, to) in m {
                    crate::log_notice!(
                        "database {}: table {t} migrated from schema version {from} to {to}",
                        path.display()
                    );
                }
            }
            _ => {}
        }
        Ok((
            Db {
                db: std::sync::RwLock::new(Some(db)),
            },
            outcome,
        ))
    }

    /// One durable transaction with every table open.
    fn write(&self, f: impl FnOnce(&mut Tables) -> Result<()>) -> Result<()> {
        let mut txn = self.with(|db| Ok(db.begin_write()?))?;
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
        let txn = self.with(|db| Ok(db.begin_read()?))?;
        let mut s = Snapshot::default();
        let meta = txn.open_table(META)?;
        if let Some(v) = meta.get(STATE)? {
            s.state = Some(dec::<StoredState>("meta", STATE, v.value())?.into());
        }
        if let Some(v) = meta.get(VERIFIER)? {
            s.verifier = Some(v.value().to_vec());
        }
        if let Some(v) = meta.get(ENROLLMENT)? {
            s.enrollment = Some(dec("meta", ENROLLMENT, v.value())?);
        }
        if let Some(v) = meta.get(NODE_ID)? {
            s.node_id = Some(String::from_utf8_lossy(v.value()).into_owned());
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

    /// Record the enrollment's progress, and the node state that goes with it, in one commit.
    pub fn set_enrollment(&self, e: &Enrollment, state: Option<NodeState>) -> Result<()> {
        let v = enc(e)?;
        self.write(|t| {
            t.meta.insert(ENROLLMENT, v.as_slice())?;
            match state {
                Some(s) => t.set_state(s),
                None => Ok(()),
            }
        })
    }

    /// Provisioning begins under `node_id`: every store was just wiped, so every record
    /// goes too.
    pub fn begin_provisioning(&self, verifier: &[u8], node_id: &str) -> Result<()> {
        self.write(|t| {
            t.clear()?;
            t.meta.insert(VERIFIER, verifier)?;
            t.meta.insert(NODE_ID, node_id.as_bytes())?;
            t.set_state(NodeState::Provisioning)
        })
    }

    /// Record the node id of a node provisioned before ids were recorded.
    pub fn record_node_id(&self, node_id: &str) -> Result<()> {
        self.write(|t| {
            t.meta.insert(NODE_ID, node_id.as_bytes())?;
            Ok(())
        })
    }

    /// Deprovisioned: every store was wiped, the records, the verifier and the id go.
    pub fn reset(&self) -> Result<()> {
        self.write(|t| {
            t.clear()?;
            t.meta.remove(VERIFIER)?;
            t.meta.remove(NODE_ID)?;
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

    /// Persisted permission registrations by key; a record that does not decode is given
    /// as its error (the registry drops it).
    pub fn instances(&self) -> Result<Vec<(String, Result<StoredRegistration>)>> {
        Ok(self
            .read_all(INSTANCES)?
            .into_iter()
            .map(|(k, v)| {
                let r = dec("instances", &k, &v);
                (k, r)
            })
            .collect())
    }

    pub fn put_instance(&self, key: &str, reg: &StoredRegistration) -> Result<()> {
        let value = zeroize::Zeroizing::new(enc(reg)?);
        self.write_table(INSTANCES, |t| {
            t.insert(key, value.as_slice())?;
            Ok(())
        })
    }

    pub fn remove_instance(&self, key: &str) -> Result<()> {
        self.write_table(INSTANCES, |t| {
            t.remove(key)?;
            Ok(())
        })
    }

    /// Forget every registered instance. Committed only when there is one to forget: every
    /// start of an iamd that does not persist them calls this, and a durable commit there
    /// would delay its listening by an fdatasync.
    pub fn clear_instances(&self) -> Result<()> {
        if self.read_all(INSTANCES)?.is_empty() {
            return Ok(());
        }
        self.write_table(INSTANCES, |t| {
            t.retain(|_, _| false)?;
            Ok(())
        })
    }

    /// Renewals in progress, by certificate type.
    pub fn renewals(&self) -> Result<Vec<(String, Renewal)>> {
        self.read_all(RENEWALS)?
            .into_iter()
            .map(|(k, v)| Ok((k.clone(), dec("renewals", &k, &v)?)))
            .collect()
    }

    /// Record a renewal's step (`None`: the renewal is over).
    pub fn set_renewal(&self, cert_type: &str, renewal: Option<&Renewal>) -> Result<()> {
        let value = renewal.map(enc).transpose()?;
        self.write_table(RENEWALS, |t| {
            match &value {
                Some(v) => t.insert(cert_type, v.as_slice())?,
                None => t.remove(cert_type)?,
            };
            Ok(())
        })
    }

    /// The node registry of the main node.
    pub fn nodes(&self) -> Result<Vec<NodeRecord>> {
        self.read_all(NODES)?
            .into_iter()
            .map(|(k, v)| dec("nodes", &k, &v))
            .collect()
    }

    pub fn delete_nodes(&self, node_ids: &[String]) -> Result<()> {
        self.write_table(NODES, |t| {
            for id in node_ids {
                t.remove(id.as_str())?;
            }
            Ok(())
        })
    }

    pub fn put_node(&self, rec: &NodeRecord) -> Result<()> {
        let value = enc(rec)?;
        self.write_table(NODES, |t| {
            t.insert(rec.info.node_id.as_str(), value.as_slice())?;
            Ok(())
        })
    }

    /// Every entry of a table that lives beside the provisioning tables.
    fn read_all(&self, def: TableDefinition<&str, &[u8]>) -> Result<Vec<(String, Vec<u8>)>> {
        let txn = self.with(|db| Ok(db.begin_read()?))?;
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
        let mut txn = self.with(|db| Ok(db.begin_write()?))?;
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

/// The schema versions recorded in a database: `None` for a new (empty) one, an empty map
/// for one written before versions were recorded (every table at version 1).
fn read_versions(txn: &redb::ReadTransaction) -> Result<Option<BTreeMap<String, u32>>> {
    match txn.open_table(SCHEMA) {
        Ok(t) => {
            let mut v = BTreeMap::new();
            for item in t.iter()? {
                let (k, n) = item?;
                v.insert(k.value().to_string(), n.value());
            }
            Ok(Some(v))
        }
        Err(redb::TableError::TableDoesNotExist(_)) => match txn.open_table(META) {
            Ok(_) => Ok(Some(BTreeMap::new())),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(e.into()),
        },
        Err(e) => Err(e.into()),
    }
}

/// The version of each table as `read_versions` found them: none for a new database, and
/// for one written before versions were recorded, every table of `schema` at 1.
fn versions_in_effect(found: Option<&BTreeMap<String, u32>>, schema: &[(&str, u32)]) -> BTreeMap<String, u32> {
    match found {
        Some(v) if !v.is_empty() => v.clone(),
        Some(_) => schema.iter().map(|(t, _)| (t.to_string(), 1)).collect(),
        None => BTreeMap::new(),
    }
}

fn refuse_newer(path: &Path, versions: &BTreeMap<String, u32>, schema: &[(&str, u32)]) -> Result<()> {
    for (table, have) in versions {
        match schema.iter().find(|(t, _)| t == table) {
            Some((_, want)) if have <= want => {}
            found => {
                let reads = match found {
                    Some((_, want)) => format!("reads table {table} up to schema version {want}"),
                    None => format!("has no table {table}"),
                };
                return Err(Error::wrong_state(format!(
                    "database {}: table {table} is at schema version {have}, written by a newer release; \
                     this build (aos-iam {}) {reads}. Nothing was changed: run that release again, \
                     or restore the database it had before the upgrade",
                    path.display(),
                    crate::VERSION
                )));
            }
        }
    }
    Ok(())
}

/// The schema versions of the database at `path`, read without changing it (for
/// `iamd --check-config`): one line.
pub fn schema_report(path: &Path) -> Result<String> {
    if !path.exists() {
        return Ok(format!(
            "database {}: not created yet (this build writes {})",
            path.display(),
            describe(crate::store::records::SCHEMA.iter().map(|(t, v)| (t.to_string(), *v)))
        ));
    }
    let db = match redb::ReadOnlyDatabase::open(path) {
        Ok(db) => db,
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
            return Ok(format!(
                "database {}: in use by a running iamd (its schema was checked when it started)",
                path.display()
            ))
        }
        Err(redb::DatabaseError::RepairAborted) => {
            return Ok(format!(
                "database {}: not closed cleanly; iamd repairs it and checks its schema at start",
                path.display()
            ))
        }
        Err(e) => return Err(Error::internal(format!("cannot open database {}: {e}", path.display()))),
    };
    let txn = db.begin_read()?;
    let recorded = read_versions(&txn)?.unwrap_or_default();
    let versions = versions_in_effect(Some(&recorded), crate::store::records::SCHEMA);
    let recorded = !recorded.is_empty();
    refuse_newer(path, &versions, crate::store::records::SCHEMA)?;
    let behind = crate::store::records::SCHEMA
        .iter()
        .any(|(t, want)| versions.get(*t).is_some_and(|have| have < want));
    Ok(format!(
        "database {}: schema {}{}",
        path.display(),
        describe(versions.into_iter()),
        match (recorded, behind) {
            (false, _) => " (written before versions were recorded; iamd records them at start)",
            (true, true) => " (older than this build's; iamd migrates it at start)",
            (true, false) => "",
        }
    ))
}

fn describe(versions: impl Iterator<Item = (String, u32)>) -> String {
    versions.map(|(t, v)| format!("{t} {v}")).collect::<Vec<_>>().join(", ")
}

struct Tables<'t> {
    meta: redb::Table<'t, &'static str, &'static [u8]>,
    pending: redb::Table<'t, &'static str, &'static [u8]>,
    certs: redb::Table<'t, &'static str, &'static [u8]>,
    trash: redb::Table<'t, &'static str, &'static [u8]>,
}

impl Tables<'_> {
    fn set_state(&mut self, state: NodeState) -> Result<()> {
        self.meta.insert(STATE, enc(&StoredState::from(state))?.as_slice())?;
        Ok(())
    }

    fn clear(&mut self) -> Result<()> {
        self.meta.remove(ENROLLMENT)?;
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

    fn versions_of(path: &std::path::Path) -> BTreeMap<String, u32> {
        let db = Database::create(path).unwrap();
        let txn = db.begin_read().unwrap();
        read_versions(&txn).unwrap().unwrap()
    }

    #[test]
    fn a_new_database_records_this_builds_schema() {
        let (db, dir) = tmp_db("schema-new");
        drop(db);
        let v = versions_of(&dir.join("iam.db"));
        let want: BTreeMap<String, u32> = crate::store::records::SCHEMA
            .iter()
            .map(|(t, v)| (t.to_string(), *v))
            .collect();
        assert_eq!(v, want);
        let (_, found) = Db::open_with(&dir.join("iam.db"), crate::store::records::SCHEMA, MIGRATIONS).unwrap();
        assert_eq!(found, SchemaFound::Current);
        let report = schema_report(&dir.join("iam.db")).unwrap();
        assert!(
            report.contains("meta 1") && report.contains("nodes 1") && !report.contains('('),
            "{report}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn upper(_: &str, old: &[u8]) -> Result<Vec<u8>> {
        let s: String = dec("nodes", "", old)?;
        enc(&s.to_uppercase())
    }

    fn refuse(k: &str, _: &[u8]) -> Result<Vec<u8>> {
        if k == "b" {
            return Err(Error::internal("record b cannot be migrated"));
        }
        enc(&"migrated".to_string())
    }

    /// A database whose table `nodes` holds two strings, written at schema version 1.
    fn v1_db(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("aos-iam-db-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (db, _) = Db::open_with(&dir.join("iam.db"), &[("meta", 1), ("nodes", 1)], &[]).unwrap();
        db.write_table(NODES, |t| {
            t.insert("a", enc(&"alpha".to_string())?.as_slice())?;
            t.insert("b", enc(&"beta".to_string())?.as_slice())?;
            Ok(())
        })
        .unwrap();
        dir
    }

    fn strings(db: &Db) -> Vec<(String, String)> {
        db.read_all(NODES)
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k.clone(), dec::<String>("nodes", &k, &v).unwrap()))
            .collect()
    }

    #[test]
    fn an_older_table_is_migrated_in_one_durable_transaction() {
        let dir = v1_db("migrate");
        let path = dir.join("iam.db");
        let step = [Migration {
            table: "nodes",
            from: 1,
            rewrite: upper,
        }];
        let (db, found) = Db::open_with(&path, &[("meta", 1), ("nodes", 2)], &step).unwrap();
        assert_eq!(found, SchemaFound::Migrated(vec![("nodes".into(), 1, 2)]));
        assert_eq!(
            strings(&db),
            [("a".into(), "ALPHA".into()), ("b".into(), "BETA".into())]
        );
        drop(db);
        assert_eq!(versions_of(&path)["nodes"], 2);
        let (db, found) = Db::open_with(&path, &[("meta", 1), ("nodes", 2)], &step).unwrap();
        assert_eq!(found, SchemaFound::Current, "migrated once");
        assert_eq!(strings(&db)[0].1, "ALPHA");
        drop(db);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_migration_that_fails_part_way_changes_nothing() {
        let dir = v1_db("migrate-fail");
        let path = dir.join("iam.db");
        let step = [Migration {
            table: "nodes",
            from: 1,
            rewrite: refuse,
        }];
        let e = Db::open_with(&path, &[("meta", 1), ("nodes", 2)], &step).err().unwrap();
        assert!(e.message.contains("record b cannot be migrated"), "{e}");
        assert_eq!(versions_of(&path)["nodes"], 1);
        let (db, _) = Db::open_with(&path, &[("meta", 1), ("nodes", 1)], &[]).unwrap();
        assert_eq!(
            strings(&db),
            [("a".into(), "alpha".into()), ("b".into(), "beta".into())]
        );
        drop(db);
        // A step this build does not have is an error too, and changes nothing.
        let e = Db::open_with(&path, &[("meta", 1), ("nodes", 3)], &step).err().unwrap();
        assert!(
            e.message.contains("no migration of table nodes from schema version"),
            "{e}"
        );
        assert_eq!(versions_of(&path)["nodes"], 1);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_database_of_a_newer_release_is_refused_naming_both_versions_and_left_alone() {
        let dir = v1_db("newer");
        let path = dir.join("iam.db");
        let (db, _) = Db::open_with(
            &path,
            &[("meta", 1), ("nodes", 5)],
            &[
                Migration {
                    table: "nodes",
                    from: 1,
                    rewrite: upper,
                },
                Migration {
                    table: "nodes",
                    from: 2,
                    rewrite: upper,
                },
                Migration {
                    table: "nodes",
                    from: 3,
                    rewrite: upper,
                },
                Migration {
                    table: "nodes",
                    from: 4,
                    rewrite: upper,
                },
            ],
        )
        .unwrap();
        drop(db);
        let before = std::fs::read(&path).unwrap();
        let e = Db::open_with(&path, &[("meta", 1), ("nodes", 2)], &[]).err().unwrap();
        assert!(
            e.message.contains("table nodes is at schema version 5") && e.message.contains("up to schema version 2"),
            "{e}"
        );
        assert!(std::fs::read(&path).unwrap() == before, "the file was changed");
        let e = schema_report(&path).unwrap_err();
        assert!(e.message.contains("schema version 5"), "{e}");
        // A table this build does not know is refused the same way.
        let e = Db::open_with(&path, &[("meta", 1)], &[]).err().unwrap();
        assert!(e.message.contains("has no table nodes"), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
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
        db.begin_provisioning(b"v", "n0").unwrap();
        assert_eq!(db.snapshot().unwrap().node_id.as_deref(), Some("n0"));
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
        assert_eq!(db.snapshot().unwrap().node_id, None);
        let s = db.snapshot().unwrap();
        assert!(s.certs.is_empty() && s.trash.is_empty() && s.verifier.is_none());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
