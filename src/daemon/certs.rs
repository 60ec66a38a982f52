//! Certificate modules: one per certificate type, each with its key store.
//!
//! CreateKey journals the key id before the key exists, so no object is ever made that the
//! database does not know. ApplyCert validates everything before it writes anything, stores
//! the certificate next to its key, commits the record, and only then evicts the oldest
//! certificates beyond `max_items` (through the trash, so eviction survives a power cut).

use crate::codec::hex;
use crate::config::{Config, ModuleConfig};
use crate::error::{Error, Result};
use crate::pki::x509::{self, StoredKey};
use crate::proto::wire::{CertCheck, CertInfo};
use crate::store::db::{CertRecord, Db, PendingKey, Snapshot, TrashEntry};
use crate::store::keystore::{self, KeyId, KeyStore};
use rustls_pki_types::{CertificateDer, UnixTime};
use std::sync::Arc;

pub struct CertModule {
    pub config: ModuleConfig,
    pub store: Arc<dyn KeyStore>,
}

impl CertModule {
    pub fn id(&self) -> &str {
        &self.config.id
    }

    /// Whether the module needs a CA-signed certificate (self-signed ones are made by iamd).
    pub fn needs_ca(&self) -> bool {
        !self.config.self_signed
    }

    /// The subject alternative names its CSRs ask for: DNS names, then URIs.
    fn alt_names(&self) -> Vec<String> {
        [&self.config.alt_names[..], &self.config.uri_names[..]].concat()
    }

    fn stored_key(&self, id: KeyId) -> Result<StoredKey<'_>> {
        let public = self.store.public_key(self.id(), &id)?.ok_or_else(|| {
            Error::not_found(format!(
                "module {}: key {} vanished from {}",
                self.id(),
                hex(&id),
                self.store.describe()
            ))
        })?;
        Ok(StoredKey {
            store: self.store.as_ref(),
            label: self.id(),
            id,
            public,
        })
    }

    fn cert_info(&self, r: &CertRecord, current: bool) -> CertInfo {
        CertInfo {
            cert_type: r.cert_type.clone(),
            issuer: r.issuer.clone(),
            issuer_der: r.issuer_der.clone(),
            serial: r.serial.clone(),
            subject: r.subject.clone(),
            not_before: r.not_before,
            not_after: r.not_after,
            cert_url: self.store.cert_url(self.id(), &r.key_id),
            key_url: self.store.key_url(self.id(), &r.key_id),
            current,
        }
    }
}

use crate::sys::now;

/// Signs with one key of a store (a TLS identity on the main node; PKCS#11 blocks briefly).
struct KeySigner {
    store: Arc<dyn KeyStore>,
    label: String,
    id: KeyId,
    algorithm: crate::config::Algorithm,
}

impl std::fmt::Debug for KeySigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "key {}/{} in {}", self.label, hex(&self.id), self.store.describe())
    }
}

impl crate::pki::tls::IdentitySigner for KeySigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>> {
        self.store.sign(&self.label, &self.id, self.algorithm, message)
    }
}

/// The certificate modules of a node and the stores they share.
pub struct CertModules {
    pub modules: Vec<CertModule>,
}

impl CertModules {
    pub fn open(config: &Config) -> Result<CertModules> {
        let mut stores: Vec<Arc<dyn KeyStore>> = Vec::new();
        let mut modules = Vec::new();
        for m in &config.modules {
            let store = keystore::open(&m.store, &stores).map_err(|e| e.context(format!("module {}", m.id)))?;
            if !stores.iter().any(|s| Arc::ptr_eq(s, &store)) {
                stores.push(store.clone());
            }
            modules.push(CertModule {
                config: m.clone(),
                store,
            });
        }
        Ok(CertModules { modules })
    }

    /// Each distinct store once, in module order.
    pub fn stores(&self) -> Vec<Arc<dyn KeyStore>> {
        self.stores_with_types().into_iter().map(|(s, _)| s).collect()
    }

    /// Each store once, with the certificate types of the modules on it (the labels of
    /// what iamd makes there).
    pub fn stores_with_types(&self) -> Vec<(Arc<dyn KeyStore>, Vec<&str>)> {
        let mut out: Vec<(Arc<dyn KeyStore>, Vec<&str>)> = Vec::new();
        for m in &self.modules {
            match out.iter_mut().find(|(s, _)| Arc::ptr_eq(s, &m.store)) {
                Some((_, types)) => types.push(m.id()),
                None => out.push((m.store.clone(), vec![m.id()])),
            }
        }
        out
    }

    /// Refuse a module whose algorithm its store cannot do, naming what the store offers
    /// (`iamd --check-config` and iamd's start): ATECC608-class secure elements make P-256
    /// keys only, and a token without RSA would fail only at CreateKey. Each store is asked
    /// once; one that cannot be asked now (a token not plugged in) is passed over, and its
    /// reason is returned for the caller to show.
    pub fn check_algorithms(&self) -> Result<Vec<String>> {
        let mut unknown = Vec::new();
        for store in self.stores() {
            let offered = match store.algorithms() {
                Ok(offered) => offered,
                Err(e) => {
                    unknown.push(format!(
                        "cannot ask {} which algorithms it offers now: {e}",
                        store.describe()
                    ));
                    continue;
                }
            };
            let lacking = self
                .modules
                .iter()
                .filter(|m| Arc::ptr_eq(&m.store, &store))
                .find(|m| !offered.contains(&m.config.algorithm));
            if let Some(m) = lacking {
                let names: Vec<_> = offered.iter().map(|a| a.name()).collect();
                return Err(Error::invalid(format!(
                    "module {}: {} cannot make {} keys; it offers {}",
                    m.id(),
                    store.describe(),
                    m.config.algorithm.name(),
                    match names.is_empty() {
                        true => "none that aos-iam uses".to_string(),
                        false => names.join(", "),
                    }
                )));
            }
        }
        Ok(unknown)
    }

    pub fn get(&self, cert_type: &str) -> Result<&CertModule> {
        self.modules.iter().find(|m| m.id() == cert_type).ok_or_else(|| {
            let known: Vec<_> = self.modules.iter().map(|m| m.id()).collect();
            Error::not_found(format!(
                "unknown certificate type \"{cert_type}\" (this node has: {})",
                known.join(", ")
            ))
        })
    }

    /// GetCertTypes: the modules that need a CA, in configuration order.
    pub fn cert_types(&self) -> Vec<String> {
        self.modules
            .iter()
            .filter(|m| m.needs_ca())
            .map(|m| m.id().to_string())
            .collect()
    }

    /// Remove the objects of every trash entry, then forget the entries.
    pub fn empty_trash(&self, db: &Db, entries: &[TrashEntry]) -> Result<()> {
        for e in entries {
            match self.modules.iter().find(|m| m.id() == e.cert_type) {
                Some(m) => m.store.remove(&e.cert_type, &e.key_id)?,
                None => crate::log_warn!(
                    "trash entry {}/{} names no configured module; dropped",
                    e.cert_type,
                    hex(&e.key_id)
                ),
            }
            db.forget_trash(e)?;
        }
        Ok(())
    }

    /// CreateKey: a new key pair in the module's store and a CSR for it (a challengePassword,
    /// where a server wants one, is added only as the CSR is sent: [`Self::csr_with_challenge`]).
    pub fn create_key(&self, db: &Db, cert_type: &str, subject: &str) -> Result<(KeyId, String)> {
        let m = self.get(cert_type)?;
        x509::parse_subject(subject)?;
        let id = keystore::new_key_id()?;
        let trashed = db.add_pending(&PendingKey {
            cert_type: cert_type.into(),
            key_id: id,
            created: now(),
        })?;
        self.empty_trash(db, &trashed)?;
        let public = m
            .store
            .generate(cert_type, &id, m.config.algorithm)
            .map_err(|e| e.context(format!("module {cert_type}")))?;
        let key = StoredKey {
            store: m.store.as_ref(),
            label: m.id(),
            id,
            public,
        };
        let csr = x509::build_csr(&key, subject, &m.alt_names(), &m.config.extended_key_usage)?;
        Ok((id, csr))
    }

    /// `csr_pem` of the pending key `key_id` with a challengePassword added, signed again by
    /// that key: made as the CSR is sent, never kept.
    pub fn csr_with_challenge(
        &self,
        cert_type: &str,
        key_id: KeyId,
        csr_pem: &str,
        challenge: &crate::secret::Secret,
    ) -> Result<String> {
        use rustls_pki_types::pem::PemObject;
        let m = self.get(cert_type)?;
        let key = m.stored_key(key_id)?;
        let csr = rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
            .map_err(|e| Error::invalid(format!("the CSR is not PEM: {e}")))?;
        let der = x509::csr_with_challenge(&key, csr.as_ref(), challenge)?;
        Ok(crate::codec::pem::pem_encode("CERTIFICATE REQUEST", &der))
    }

    /// ApplyCert: validate, store, record, then evict beyond `max_items`.
    pub fn apply(&self, db: &Db, config: &Config, cert_type: &str, chain_pem: &str) -> Result<CertInfo> {
        let m = self.get(cert_type)?;
        let chain = x509::parse_chain_pem(chain_pem)?;
        x509::check_chain_order(&chain)?;
        let leaf = x509::fields(&chain[0])?;
        let snap = db.snapshot()?;

        // Applying a certificate that is already applied (a retry after a lost answer) is done.
        if let Some(r) = snap
            .certs
            .iter()
            .find(|r| r.cert_type == cert_type && r.serial == leaf.serial && r.issuer_der == leaf.issuer_der)
        {
            let current = self.current(&snap, cert_type).is_some_and(|c| c.key_id == r.key_id);
            return Ok(m.cert_info(r, current));
        }

        let mut key_id = None;
        for p in snap.pending.iter().filter(|p| p.cert_type == cert_type) {
            if m.store
                .public_key(cert_type, &p.key_id)?
                .is_some_and(|k| k.raw == leaf.public_key)
            {
                key_id = Some(p.key_id);
                break;
            }
        }
        let key_id = key_id.ok_or_else(|| {
            Error::validation(
                "KeyMismatch",
                format!("module {cert_type}: the certificate's public key matches no pending key (create a key first; is it a certificate for another key?)"),
            )
        })?;

        if !m.config.skip_validation {
            let roots = module_roots(config, &m.config)?;
            let at = x509::issued_at(&chain, UnixTime::now());
            let crls = x509::read_crls(&config.crl_files())?;
            x509::validate_chain_with_crls(&chain, &roots, &m.config.extended_key_usage, at, &crls)
                .map_err(|e| e.context(format!("module {cert_type}")))?;
        }
        x509::refuse_ekus(&chain[0], &m.config.forbidden_ekus).map_err(|e| e.context(format!("module {cert_type}")))?;

        m.store
            .store_certificate(cert_type, &key_id, &chain[0])
            .map_err(|e| e.context(format!("module {cert_type}")))?;
        let record = CertRecord {
            cert_type: cert_type.into(),
            key_id,
            subject: leaf.subject,
            issuer: leaf.issuer,
            issuer_der: leaf.issuer_der,
            serial: leaf.serial,
            not_before: leaf.not_before,
            not_after: leaf.not_after,
            seq: 0,
            intermediates: chain[1..].iter().map(|c| c.to_vec()).collect(),
        };
        let mut of_type: Vec<&CertRecord> = snap.certs.iter().filter(|r| r.cert_type == cert_type).collect();
        of_type.sort_by_key(|r| r.seq);
        let excess = (of_type.len() + 1).saturating_sub(m.config.max_items as usize);
        let evict: Vec<CertRecord> = of_type.into_iter().take(excess).cloned().collect();
        let trashed = db.apply(&record, &evict)?;
        self.empty_trash(db, &trashed)?;
        let snap = db.snapshot()?;
        let applied = snap
            .certs
            .iter()
            .find(|r| r.cert_type == cert_type && r.key_id == key_id)
            .ok_or_else(|| Error::internal("applied record not found"))?;
        let current = self.current(&snap, cert_type).is_some_and(|c| c.key_id == key_id);
        Ok(m.cert_info(applied, current))
    }

    /// A self-signed certificate for a module that is configured so.
    pub fn make_self_signed(&self, db: &Db, m: &CertModule, subject: &str) -> Result<()> {
        let id = keystore::new_key_id()?;
        let trashed = db.add_pending(&PendingKey {
            cert_type: m.id().into(),
            key_id: id,
            created: now(),
        })?;
        self.empty_trash(db, &trashed)?;
        m.store.generate(m.id(), &id, m.config.algorithm)?;
        let key = m.stored_key(id)?;
        let der = x509::self_signed(
            &key,
            subject,
            &m.alt_names(),
            &m.config.extended_key_usage,
            m.config.self_signed_days,
        )?;
        m.store.store_certificate(m.id(), &id, &der)?;
        let f = x509::fields(&der)?;
        let record = CertRecord {
            cert_type: m.id().into(),
            key_id: id,
            subject: f.subject,
            issuer: f.issuer,
            issuer_der: f.issuer_der,
            serial: f.serial,
            not_before: f.not_before,
            not_after: f.not_after,
            seq: 0,
            intermediates: vec![],
        };
        let trashed = db.apply(&record, &[])?;
        self.empty_trash(db, &trashed)
    }

    /// Compare the database with the stores: records whose objects are missing (findings),
    /// and objects of our certificate types that no record names (orphans, by type and id).
    /// Records without objects (findings), objects of our types without records (orphans),
    /// and the stores that hold what object creations cut off left (`ObjectKind::Incomplete`,
    /// see `KeyStore::remove_incomplete`).
    #[allow(clippy::type_complexity)]
    pub fn audit(&self, snap: &Snapshot) -> (Vec<String>, Vec<(String, KeyId)>, Vec<Arc<dyn KeyStore>>) {
        use crate::store::keystore::ObjectKind;
        let mut findings = Vec::new();
        let mut orphans: Vec<(String, KeyId)> = Vec::new();
        let mut listed = Vec::new();
        for store in self.stores() {
            match store.objects() {
                Ok(objects) => listed.push((store, objects)),
                Err(e) => findings.push(format!("cannot list {}: {e}", store.describe())),
            }
        }
        let objects_of = |m: &CertModule| listed.iter().find(|(s, _)| Arc::ptr_eq(s, &m.store)).map(|(_, o)| o);
        for r in &snap.certs {
            let Ok(m) = self.get(&r.cert_type) else {
                findings.push(format!(
                    "certificate record {}/{} names no configured module",
                    r.cert_type,
                    hex(&r.key_id)
                ));
                continue;
            };
            let Some(objects) = objects_of(m) else {
                continue;
            };
            for (kind, name) in [
                (ObjectKind::PrivateKey, "private key"),
                (ObjectKind::Certificate, "certificate"),
            ] {
                if !objects
                    .iter()
                    .any(|o| o.label == r.cert_type && o.id == r.key_id && o.kind == kind)
                {
                    findings.push(format!(
                        "certificate record {}/{}: its {name} is missing from {}",
                        r.cert_type,
                        hex(&r.key_id),
                        m.store.describe()
                    ));
                }
            }
        }
        for (store, objects) in &listed {
            for o in objects {
                let ours = self
                    .modules
                    .iter()
                    .any(|m| m.id() == o.label && Arc::ptr_eq(&m.store, store));
                let recorded = snap.certs.iter().any(|r| r.cert_type == o.label && r.key_id == o.id)
                    || snap.pending.iter().any(|p| p.cert_type == o.label && p.key_id == o.id);
                if ours && !recorded && !orphans.iter().any(|(l, id)| *l == o.label && *id == o.id) {
                    orphans.push((o.label.clone(), o.id));
                }
            }
        }
        let incomplete = listed
            .iter()
            .filter(|(_, objects)| objects.iter().any(|o| o.kind == ObjectKind::Incomplete))
            .map(|(store, _)| store.clone())
            .collect();
        (findings, orphans, incomplete)
    }

    /// Reconciliation (docs/ARCHITECTURE.md §8), by this policy: objects of our types that no record
    /// names are removed; pending keys older than `pending_max_age` seconds are removed; a
    /// certificate that no longer validates is removed only if it is not the current one of
    /// its type (so the only certificate of a type is never deleted); records whose objects
    /// are missing are reported and kept, so `check` keeps showing them until a renewal.
    /// Returns what was found and done, one line each. The caller holds the journal lock.
    /// Pending keys in `keep` (those of renewals in progress, which resume with them) are
    /// kept whatever their age.
    pub fn reconcile(&self, db: &Db, config: &Config, pending_max_age: i64, keep: &[KeyId]) -> Result<Vec<String>> {
        let snap = db.snapshot()?;
        let (mut report, orphans, incomplete) = self.audit(&snap);
        // One that cannot be removed is a finding: the rest of the pass still runs.
        for store in incomplete {
            match store.remove_incomplete() {
                Ok(0) => {}
                Ok(n) => report.push(format!(
                    "removed {n} object(s) without a label from {}: left by an object creation cut off",
                    store.describe()
                )),
                Err(e) => report.push(format!("cannot remove objects without a label: {e}")),
            }
        }
        for (label, id) in orphans {
            let Ok(m) = self.get(&label) else { continue };
            m.store.remove(&label, &id)?;
            report.push(format!(
                "removed objects {label}/{} from {}: no database record names them",
                hex(&id),
                m.store.describe()
            ));
        }
        let at = now();
        let mut discard = Vec::new();
        for p in snap
            .pending
            .iter()
            .filter(|p| at - p.created > pending_max_age && !keep.contains(&p.key_id))
        {
            report.push(format!(
                "removed pending key {}/{}: no certificate came for it in {} s",
                p.cert_type,
                hex(&p.key_id),
                at - p.created
            ));
            discard.push((p.cert_type.clone(), p.key_id));
        }
        {
            for m in self
                .modules
                .iter()
                .filter(|m| !m.config.self_signed && !m.config.skip_validation)
            {
                let Ok(roots) = module_roots(config, &m.config) else {
                    continue;
                };
                let current = self.current(&snap, m.id()).map(|c| c.key_id);
                for r in snap
                    .certs
                    .iter()
                    .filter(|r| r.cert_type == m.id() && Some(r.key_id) != current)
                {
                    let Some(der) = m.store.certificate(m.id(), &r.key_id)? else {
                        continue;
                    };
                    let chain: Vec<CertificateDer> = std::iter::once(der)
                        .chain(r.intermediates.iter().cloned())
                        .map(CertificateDer::from)
                        .collect();
                    if let Err(e) = x509::validate_chain(&chain, &roots, &m.config.extended_key_usage, UnixTime::now())
                    {
                        report.push(format!(
                            "removed certificate {}/{} (not current): it no longer validates: {e}",
                            r.cert_type,
                            hex(&r.key_id)
                        ));
                        discard.push((r.cert_type.clone(), r.key_id));
                    }
                }
            }
        }
        if !discard.is_empty() {
            let trashed = db.discard(&discard)?;
            self.empty_trash(db, &trashed)?;
        }
        Ok(report)
    }

    /// The current certificate of a type: the newest that is valid now, else the newest.
    pub fn current<'s>(&self, snap: &'s Snapshot, cert_type: &str) -> Option<&'s CertRecord> {
        let t = now();
        let of_type = || snap.certs.iter().filter(move |r| r.cert_type == cert_type);
        of_type()
            .filter(|r| r.not_before <= t && t <= r.not_after)
            .max_by_key(|r| r.seq)
            .or_else(|| of_type().max_by_key(|r| r.seq))
    }

    /// The current certificate of `cert_type` (DER), its serial and its key: a node's TLS
    /// identity on links. Not found while the type has no certificate.
    pub fn identity(&self, db: &Db, cert_type: &str) -> Result<(Vec<u8>, Vec<u8>, crate::pki::tls::Identity)> {
        let m = self.get(cert_type)?;
        let snap = db.snapshot()?;
        let r = self.current(&snap, cert_type).ok_or_else(|| {
            Error::not_found(format!(
                "module {cert_type} has no certificate yet to serve as the link identity"
            ))
        })?;
        let der = m.store.certificate(m.id(), &r.key_id)?.ok_or_else(|| {
            Error::not_found(format!(
                "module {cert_type}: the certificate of key {} is missing from {}",
                hex(&r.key_id),
                m.store.describe()
            ))
        })?;
        let signer = Arc::new(KeySigner {
            store: m.store.clone(),
            label: m.id().to_string(),
            id: r.key_id,
            algorithm: m.config.algorithm,
        });
        let identity = crate::pki::tls::Identity {
            cert_der: der.clone(),
            intermediates: r.intermediates.clone(),
            algorithm: m.config.algorithm,
            signer,
        };
        Ok((der, r.serial.clone(), identity))
    }

    /// Get the CSR of a pending key of `cert_type` signed by SCEP: the request is signed and
    /// its answer decrypted by that key in its store (or, for a RenewalReq, by the key of
    /// the module's current certificate). Returns the chain PEM for [`CertModules::apply`].
    pub fn scep_enroll(
        &self,
        db: &Db,
        cert_type: &str,
        csr_pem: &str,
        config: &crate::pki::scep::ScepConfig,
        renewal: bool,
    ) -> Result<String> {
        use rustls_pki_types::pem::PemObject;
        let m = self.get(cert_type)?;
        let csr = rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
            .map_err(|e| Error::invalid(format!("the CSR is not PEM: {e}")))?;
        let csr_key = crate::pki::x509::csr_public_key(csr.as_ref())?;
        let snap = db.snapshot()?;
        // The key must be one this module made and still waits for a certificate for.
        let mut key = None;
        for p in snap.pending.iter().filter(|p| p.cert_type == cert_type) {
            if let Ok(k) = m.stored_key(p.key_id) {
                if k.public.raw == csr_key {
                    key = Some(k);
                    break;
                }
            }
        }
        let key = key.ok_or_else(|| {
            Error::wrong_state(format!(
                "module {cert_type} has no pending key for this CSR: CreateKey first (SCEP signs with that key)"
            ))
        })?;
        let current = match (renewal, self.current(&snap, cert_type)) {
            (true, Some(r)) => match (m.stored_key(r.key_id), m.store.certificate(m.id(), &r.key_id)?) {
                // The issuing CAs between the certificate and its root, never a root itself:
                // Debian's scepserver takes a root carried beside the signer for the
                // recipient of its answer, and fails (a panic, the connection closed).
                (Ok(k), Some(der)) => Some((
                    k,
                    der,
                    r.intermediates
                        .iter()
                        .filter(|c| !crate::pki::x509::is_self_issued(c))
                        .cloned()
                        .collect::<Vec<_>>(),
                )),
                _ => None,
            },
            _ => None,
        };
        let current_identity = current
            .as_ref()
            .map(|(k, der, intermediates)| crate::pki::scep::CurrentIdentity {
                key: k,
                cert: der.clone(),
                intermediates: intermediates.clone(),
            });
        crate::pki::scep::enroll(config, &key, csr.as_ref(), current_identity.as_ref())
    }

    /// Sign with the key of the `cert_type` certificate whose serial is `serial`.
    pub fn sign_with(&self, db: &Db, cert_type: &str, serial: &[u8], message: &[u8]) -> Result<Vec<u8>> {
        let m = self.get(cert_type)?;
        let snap = db.snapshot()?;
        let r = snap
            .certs
            .iter()
            .find(|r| r.cert_type == cert_type && r.serial == serial)
            .ok_or_else(|| Error::not_found(format!("module {cert_type} has no certificate with that serial")))?;
        m.store.sign(m.id(), &r.key_id, m.config.algorithm, message)
    }

    /// GetCert: by issuer and serial, or the current one.
    pub fn get_cert(&self, db: &Db, cert_type: &str, issuer: Option<&[u8]>, serial: Option<&[u8]>) -> Result<CertInfo> {
        let m = self.get(cert_type)?;
        let snap = db.snapshot()?;
        let current = self.current(&snap, cert_type);
        let found = match (issuer, serial) {
            (Some(i), Some(s)) => {
                let s = &s[s.iter().take_while(|b| **b == 0).count().min(s.len().saturating_sub(1))..];
                snap.certs
                    .iter()
                    .find(|r| r.cert_type == cert_type && r.issuer_der == i && r.serial == s)
            }
            (None, None) => current,
            _ => return Err(Error::invalid("give both issuer and serial, or neither")),
        };
        let r = found.ok_or_else(|| Error::not_found(format!("no certificate of type \"{cert_type}\" matches")))?;
        Ok(m.cert_info(r, current.is_some_and(|c| c.key_id == r.key_id)))
    }

    /// Every certificate checked as it stands now: its chain against the root (validity
    /// included; self-signed modules: their period only), and its objects in the store.
    pub fn check(&self, db: &Db, config: &Config) -> Result<Vec<CertCheck>> {
        let snap = db.snapshot()?;
        let at = now();
        let mut out = Vec::new();
        for m in &self.modules {
            let roots = module_roots(config, &m.config);
            let current = self.current(&snap, m.id()).map(|c| c.key_id);
            for r in snap.certs.iter().filter(|r| r.cert_type == m.id()) {
                let key_present = m.store.public_key(m.id(), &r.key_id)?.is_some();
                let der = m.store.certificate(m.id(), &r.key_id)?;
                let chain_error = match (&der, &roots) {
                    (None, _) => "the certificate object is missing from the store".to_string(),
                    (Some(_), _) if m.config.self_signed || m.config.skip_validation => {
                        if at < r.not_before || at > r.not_after {
                            "outside its validity period".to_string()
                        } else {
                            String::new()
                        }
                    }
                    (Some(_), Err(e)) => e.to_string(),
                    (Some(leaf), Ok(roots)) => {
                        let chain: Vec<CertificateDer> = std::iter::once(leaf.clone())
                            .chain(r.intermediates.iter().cloned())
                            .map(CertificateDer::from)
                            .collect();
                        match x509::validate_chain(&chain, roots, &m.config.extended_key_usage, UnixTime::now()) {
                            Ok(()) => String::new(),
                            Err(e) => e.to_string(),
                        }
                    }
                };
                out.push(CertCheck {
                    info: m.cert_info(r, current == Some(r.key_id)),
                    chain_error,
                    key_present,
                    cert_present: der.is_some(),
                });
            }
        }
        Ok(out)
    }

    /// Every applied certificate, by type in configuration order, oldest first.
    pub fn list(&self, db: &Db) -> Result<Vec<CertInfo>> {
        let snap = db.snapshot()?;
        let mut out = Vec::new();
        for m in &self.modules {
            let current = self.current(&snap, m.id()).map(|c| c.key_id);
            for r in snap.certs.iter().filter(|r| r.cert_type == m.id()) {
                out.push(m.cert_info(r, current == Some(r.key_id)));
            }
        }
        Ok(out)
    }
}

/// The roots a module's chains validate against: its own `root_ca` (a bootstrap identity's
/// factory CA), else the node's.
pub fn module_roots(config: &Config, m: &ModuleConfig) -> Result<Vec<CertificateDer<'static>>> {
    match &m.root_ca {
        Some(path) => x509::read_certs(path, &format!("root CA of module {}", m.id)),
        None => read_roots(config),
    }
}

/// The configured root CA certificates (one, or a bundle), read at each use so that a
/// replaced file takes effect.
pub fn read_roots(config: &Config) -> Result<Vec<CertificateDer<'static>>> {
    let path = config
        .root_ca
        .as_ref()
        .ok_or_else(|| Error::wrong_state("no root CA is configured (paths.root_ca)"))?;
    x509::read_certs(path, "root CA")
}

/// The configured roots that cannot be trust anchors now, each with its reason; empty when
/// no root file is there yet (a node that is given its root later, whose apply then says so).
pub fn refused_roots(config: &Config) -> Result<Vec<Error>> {
    if !config.root_ca.as_ref().is_some_and(|p| p.exists()) {
        return Ok(Vec::new());
    }
    let roots = read_roots(config)?;
    let refused = x509::refused_roots(&roots, UnixTime::now());
    if !roots.is_empty() && refused.len() == roots.len() {
        return Err(Error::validation(
            "NoUsableRoot",
            format!(
                "no usable root is configured: {}",
                refused.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; ")
            ),
        ));
    }
    Ok(refused)
}
