//! The provisioning state machine (docs/ARCHITECTURE.md §5): unprovisioned → provisioning → provisioned.
//!
//! Each step is journaled in the database before it is acknowledged, and every step can be
//! repeated: StartProvisioning wipes and begins again, CreateKey replaces a pending key,
//! ApplyCert of an applied certificate is a no-op. So a factory script that is cut off at any
//! point converges by running again. Wrong passwords are answered after a growing delay per uid (see [`crate::daemon::guesses`]).

use crate::config::Config;
use crate::daemon::certs::CertModules;
use crate::error::{Error, Result};
use crate::proto::wire::{CertInfo, ModuleStatus, NodeInfo, NodeState, ProvisioningStatus};
use crate::secret::Secret;
use crate::store::db::Db;
use std::num::NonZeroU32;
use std::process::Command;
use std::sync::Mutex;

/// PBKDF2-HMAC-SHA256 iterations for a new password verifier (OWASP's 2023 guidance). The
/// count is stored beside each verifier, so raising it here applies to the next one made
/// while older verifiers still check.
pub const PBKDF2_ITERATIONS: u32 = 600_000;
/// Bytes of a hook's stdout read (and discarded: hooks report through their exit status).
const HOOK_OUTPUT_LIMIT: usize = 64 * 1024;

fn pbkdf2(password: &Secret, salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut out = [0u8; 32];
    let n = NonZeroU32::new(iterations).unwrap_or(NonZeroU32::MIN);
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        n,
        salt,
        password.expose().as_bytes(),
        &mut out,
    );
    out
}

/// `iterations u32 LE | salt 16 | hash 32`.
fn make_verifier(password: &Secret) -> Result<Vec<u8>> {
    let mut salt = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut salt)
        .map_err(|_| Error::internal("the OS random number generator failed"))?;
    let mut v = PBKDF2_ITERATIONS.to_le_bytes().to_vec();
    v.extend_from_slice(&salt);
    v.extend_from_slice(&pbkdf2(password, &salt, PBKDF2_ITERATIONS));
    Ok(v)
}

fn check_verifier(verifier: &[u8], password: &Secret) -> bool {
    if verifier.len() != 4 + 16 + 32 {
        return false;
    }
    let iterations = u32::from_le_bytes(verifier[..4].try_into().expect("4 bytes"));
    let hash = pbkdf2(password, &verifier[4..20], iterations);
    crate::secret::constant_time_eq(&hash, &verifier[20..])
}

thread_local! {
    /// While a blocking thread serves a client's request: set once that client has gone.
    static CLIENT: std::cell::RefCell<Option<std::sync::Arc<super::connections::Gone>>> =
        const { std::cell::RefCell::new(None) };
}

/// Run `f` (a client's request, on a blocking thread) for a client whose connection sets
/// `gone` when it goes: a step that takes the journal lock after that does nothing.
pub(super) fn for_client<T>(gone: std::sync::Arc<super::connections::Gone>, f: impl FnOnce() -> T) -> T {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            CLIENT.with(|c| *c.borrow_mut() = None);
        }
    }
    CLIENT.with(|c| *c.borrow_mut() = Some(gone));
    let _reset = Reset;
    f()
}

pub struct Provisioning {
    pub config: Config,
    pub provisioning_mode: bool,
    pub db: Db,
    pub modules: CertModules,
    /// Serialises the operations that change state.
    lock: Mutex<()>,
    /// Held while an ApplyCert runs (under `lock`): status and listing wait for it, so a
    /// factory script killed during ApplyCert and run again never reads the state from
    /// before a certificate the dropped request is still applying.
    applying: Mutex<()>,
    /// The last password that passed the verifier, as an HMAC under a key that lives only
    /// in this process, with the verifier it passed: a repeated check (one per CreateKey)
    /// then costs one HMAC instead of a PBKDF2 derivation.
    remembered: Mutex<Option<(Vec<u8>, ring::hmac::Tag)>>,
    remember_key: ring::hmac::Key,
    /// What the last reconciliation found, so that standing findings are logged once.
    reported: Mutex<std::collections::BTreeSet<String>>,
    /// Set once the start-up recovery (trash, reconciliation) has run: iamd listens before
    /// it, and every step that takes the journal lock waits for it.
    recovered: (Mutex<bool>, std::sync::Condvar),
    /// Held while a renewal runs (the scheduler's pass, or RenewNow), so that one module's
    /// renewal is never run twice at once; and when each module's last renewal was applied
    /// by this process (the floor between renewals, `renewal::FLOOR`).
    pub(crate) renewing: Mutex<std::collections::BTreeMap<String, i64>>,
    /// Set when the node's id is not the one it was provisioned under: why iamd does not
    /// serve the node's identity (see [`Provisioning::serving_identity`]). Cleared by
    /// Deprovision, after which the node is provisioned under its present id.
    id_changed: Mutex<Option<String>>,
    /// Alerts: logged once, to subscribers, and to `[alerts] hook`.
    pub alerts: super::alerts::Alerts,
}

/// Whether the node's id is the one it was provisioned under: `None` when it is (or the node
/// has no identity yet), else the refusal that says what changed and what to do. A node
/// provisioned before ids were recorded has its present id recorded now.
fn id_changed(config: &Config, db: &Db) -> Result<Option<String>> {
    let snap = db.snapshot()?;
    match snap.node_id {
        Some(recorded) if recorded != config.node_id => Ok(Some(format!(
            "the node id is now \"{}\" (from {}), but the node was provisioned as \"{recorded}\": its \
             certificates name that node. Start it on the hardware it was provisioned on (or give it \
             that id), or provision it again: deprovision it, then provision it",
            config.node_id, config.node_id_source
        ))),
        Some(_) => Ok(None),
        // Provisioned or bootstrapped (a password set) by a release that did not record it.
        None if snap.verifier.is_some() => {
            db.record_node_id(&config.node_id)?;
            crate::log_notice!(
                "recorded the node id \"{}\" (from {}) as the one this node was provisioned under",
                config.node_id,
                config.node_id_source
            );
            Ok(None)
        }
        None => Ok(None),
    }
}

impl Provisioning {
    pub fn open(config: Config, provisioning_mode: bool) -> Result<Provisioning> {
        let db = Db::open(&config.db_path())?;
        let id_changed = id_changed(&config, &db)?;
        let alerts = super::alerts::Alerts::new(&config);
        if let Some(why) = &id_changed {
            alerts.node(
                crate::proto::wire::AlertKind::IdChanged,
                format!("{why}; the node's identity is not served"),
            );
        }
        let modules = CertModules::open(&config)?;
        let remember_key = ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &ring::rand::SystemRandom::new())
            .map_err(|_| Error::internal("the OS random number generator failed"))?;
        Ok(Provisioning {
            config,
            provisioning_mode,
            db,
            modules,
            lock: Mutex::new(()),
            applying: Mutex::new(()),
            remembered: Mutex::new(None),
            remember_key,
            reported: Mutex::new(Default::default()),
            recovered: (Mutex::new(false), std::sync::Condvar::new()),
            renewing: Mutex::new(Default::default()),
            id_changed: Mutex::new(id_changed),
            alerts,
        })
    }

    /// Refused while the node's id is not the one it was provisioned under: its certificates,
    /// its keys' use, renewal and enrollment would all speak for another node.
    pub fn serving_identity(&self) -> Result<()> {
        match self.id_changed() {
            Some(why) => Err(Error::wrong_state(why)),
            None => Ok(()),
        }
    }

    /// Why the node's identity is not served, if it is not.
    pub fn id_changed(&self) -> Option<String> {
        crate::sys::lock(&self.id_changed).clone()
    }

    /// The journal lock, once the start-up recovery has run. A client's step whose client
    /// has gone while it waited (see [`for_client`]) gets an error instead and changes
    /// nothing: a CreateKey of a killed `iam-certctl renew` must not replace the pending key
    /// of the run that came after it.
    fn journal(&self) -> Result<std::sync::MutexGuard<'_, ()>> {
        let (done, cv) = &self.recovered;
        let mut d = crate::sys::lock(done);
        while !*d {
            d = cv.wait(d).unwrap_or_else(|e| e.into_inner());
        }
        drop(d);
        let journal = match self.lock.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {
                crate::log_debug!("a step waits for the one in progress");
                crate::sys::lock(&self.lock)
            }
        };
        if CLIENT.with(|c| c.borrow().as_ref().is_some_and(|g| g.is_set())) {
            return Err(Error::unavailable("not started: its client has gone"));
        }
        Ok(journal)
    }

    /// What needs no key store, before iamd listens: the marker files follow the state.
    pub fn recover_marker(&self) -> Result<()> {
        self.sync_markers()
    }

    /// The two marker files, as the committed state has them: `provisioned` while the node
    /// is provisioned (or paused); `deployed` while it is provisioned or bootstrapped to
    /// enroll itself (an enrollment record: unprovisioned, enrolling, quarantined,
    /// operational). The layer's units run `iamd` when either exists and `iamd
    /// --provisioning` when neither does, so every state boots into its mode.
    pub(crate) fn sync_markers(&self) -> Result<()> {
        let snap = self.db.snapshot()?;
        let provisioned = matches!(snap.state(), NodeState::Provisioned | NodeState::Paused);
        let deployed = provisioned || snap.enrollment.is_some();
        for (path, want) in [
            (&self.config.marker_file, provisioned),
            (&self.config.deployed_marker(), deployed),
        ] {
            match (want, path.exists()) {
                (true, false) => crate::store::atomic_file::write(path, self.config.node_id.as_bytes(), 0o644)
                    .map_err(|e| Error::internal(format!("cannot write {}: {e}", path.display())))?,
                (false, true) => crate::store::atomic_file::remove(path)
                    .map_err(|e| Error::internal(format!("cannot remove {}: {e}", path.display())))?,
                _ => {}
            }
        }
        Ok(())
    }

    /// Finish what a power cut interrupted, once iamd listens: objects in the trash are
    /// removed, and the stores are reconciled with the database. Steps that take the
    /// journal lock wait until this has run (whatever it found).
    pub fn recover(&self) {
        if let Err(e) = self.recover_stores() {
            crate::log_error!("start-up recovery: {e}");
        }
        let (done, cv) = &self.recovered;
        *crate::sys::lock(done) = true;
        cv.notify_all();
        crate::log_info!("start-up recovery done");
    }

    fn recover_stores(&self) -> Result<()> {
        let journal = crate::sys::lock(&self.lock);
        let snap = self.db.snapshot()?;
        if !snap.trash.is_empty() {
            crate::log_notice!(
                "removing {} object set(s) left from an interrupted step",
                snap.trash.len()
            );
        }
        // A store that cannot be reached now (a token not initialised or not plugged in) must
        // not keep iamd down: the entries stay, and the next start removes them.
        if let Err(e) = self.modules.empty_trash(&self.db, &snap.trash) {
            crate::log_warn!(
                "objects left from an interrupted step cannot be removed now: {e}; kept for the next start"
            );
        }
        self.reconcile_locked(journal)?;
        Ok(())
    }

    /// Run `f` holding the journal lock, as every step that writes keys or records does.
    pub fn with_journal<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let _g = self.journal()?;
        f()
    }

    /// Reconcile the database with the stores (see [`CertModules::reconcile`]) while the
    /// node has keys: provisioning, provisioned or paused, or bootstrapped for enrollment.
    /// Every finding is logged.
    pub fn reconcile(&self) -> Result<Vec<String>> {
        self.reconcile_locked(self.journal()?)
    }

    fn reconcile_locked(&self, _g: std::sync::MutexGuard<'_, ()>) -> Result<Vec<String>> {
        let snap = self.db.snapshot()?;
        if !matches!(
            snap.state(),
            NodeState::Provisioning | NodeState::Provisioned | NodeState::Paused
        ) && snap.enrollment.is_none()
        {
            return Ok(Vec::new());
        }
        let key_of = |s: &crate::store::records::Step| match s {
            crate::store::records::Step::KeyCreated { key_id, .. }
            | crate::store::records::Step::Obtained { key_id, .. } => *key_id,
        };
        // A renewal waiting for its CA keeps its key and CSR, however long it waits; so
        // does an enrollment waiting for its next attempt.
        let renewing: Vec<_> = self
            .db
            .renewals()?
            .iter()
            .map(|(_, r)| key_of(&r.step))
            .chain(
                snap.enrollment
                    .iter()
                    .filter_map(|e| e.current.as_ref().map(|(_, s)| key_of(s))),
            )
            .collect();
        let report = self.modules.reconcile(
            &self.db,
            &self.config,
            self.config.reconcile.pending_max_age.as_secs() as i64,
            &renewing,
        )?;
        // A finding that stands is logged once, not at every pass.
        let mut last = crate::sys::lock(&self.reported);
        for line in report.iter().filter(|l| !last.contains(*l)) {
            crate::log_warn!("reconciliation: {line}");
        }
        *last = report.iter().cloned().collect();
        Ok(report)
    }

    pub fn state(&self) -> Result<NodeState> {
        Ok(self.db.snapshot()?.state())
    }

    pub fn check_node_id(&self, node_id: &str) -> Result<()> {
        self.check_node(node_id)
    }

    fn check_node(&self, node_id: &str) -> Result<()> {
        if node_id.is_empty() || node_id == self.config.node_id {
            Ok(())
        } else {
            Err(Error::not_found(format!(
                "node \"{node_id}\" is not known (this is node \"{}\")",
                self.config.node_id
            )))
        }
    }

    fn require_mode(&self, op: &str) -> Result<()> {
        if self.provisioning_mode {
            Ok(())
        } else {
            Err(Error::wrong_state(format!(
                "{op} is refused: iamd is not in provisioning mode (start it with --provisioning)"
            )))
        }
    }

    /// Check a password against the verifier; `Ok(false)` when there is no verifier yet.
    fn verify(&self, password: &Secret) -> Result<bool> {
        let Some(verifier) = self.db.snapshot()?.verifier else {
            return Ok(false);
        };
        let tag = ring::hmac::sign(&self.remember_key, password.expose().as_bytes());
        let mut remembered = crate::sys::lock(&self.remembered);
        let known = remembered
            .as_ref()
            .is_some_and(|(v, t)| *v == verifier && crate::secret::constant_time_eq(t.as_ref(), tag.as_ref()));
        if !known {
            crate::log_debug!("a password is checked against the verifier");
        }
        if known || check_verifier(&verifier, password) {
            *remembered = Some((verifier, tag));
            return Ok(true);
        }
        Err(Error::unauthorized("wrong password"))
    }

    /// Store the new verifier for `password`, remembering it as verified.
    fn set_password(&self, password: &Secret, verifier: Vec<u8>) -> Result<()> {
        self.db.begin_provisioning(&verifier, &self.config.node_id)?;
        let tag = ring::hmac::sign(&self.remember_key, password.expose().as_bytes());
        *crate::sys::lock(&self.remembered) = Some((verifier, tag));
        Ok(())
    }

    /// Run a configured hook; a failure names the hook and its exit status.
    fn hook(&self, name: &str, argv: &Option<Vec<String>>) -> Result<()> {
        self.hook_with(name, argv, None)
    }

    /// Run a hook; `secret`, if given, is its standard input (exactly its bytes, no line
    /// end), never an argument or a variable, which other users can read in /proc.
    fn hook_with(&self, name: &str, argv: &Option<Vec<String>>, secret: Option<&Secret>) -> Result<()> {
        let Some(argv) = argv else { return Ok(()) };
        crate::log_info!("running {name} hook {}", argv[0]);
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]).env("AOS_IAM_NODE_ID", &self.config.node_id);
        let what = format!("{name} hook {}", argv[0]);
        let input = secret.map(|s| s.expose().as_bytes());
        let done = crate::sys::command::run(cmd, &what, input, HOOK_OUTPUT_LIMIT, self.config.hooks.timeout)?;
        if done.status.success() {
            return Ok(());
        }
        Err(Error::unavailable(format!(
            "{what} failed ({}): {}",
            done.status, done.stderr
        )))
    }

    /// The finish hook, as FinishProvisioning runs it (enrollment's last step).
    pub(crate) fn hook_finish(&self) -> Result<()> {
        self.hook("finish", &self.config.hooks.finish)
    }

    pub fn start(&self, node_id: &str, password: &Secret) -> Result<()> {
        self.check_node(node_id)?;
        self.require_mode("StartProvisioning")?;
        if password.is_empty() {
            return Err(Error::invalid("the password must not be empty"));
        }
        let _g = self.journal()?;
        let state = self.state()?;
        if matches!(state, NodeState::Provisioned | NodeState::Paused) {
            return Err(Error::wrong_state(format!(
                "the node is {}; deprovision it first",
                state.name()
            )));
        }
        self.verify(password)?;
        self.hook("start", &self.config.hooks.start)?;
        // The verifier's key derivation does not depend on the tokens: derive it on another
        // thread while the tokens are initialised.
        let verifier = std::thread::scope(|scope| {
            let derivation = scope.spawn(|| make_verifier(password));
            for (store, types) in self.modules.stores_with_types() {
                store.take_ownership(password, &types)?;
            }
            derivation
                .join()
                .map_err(|_| Error::internal("password derivation failed"))?
        })?;
        self.set_password(password, verifier)?;
        for m in self.modules.modules.iter().filter(|m| m.config.self_signed) {
            let subject = format!("CN={},OU={}", self.config.node_id, m.id());
            self.modules
                .make_self_signed(&self.db, m, &subject)
                .map_err(|e| e.context(format!("module {}", m.id())))?;
        }
        // The password encrypts the disk (on a secondary, the secret derived for it).
        self.hook_with("disk encryption", &self.config.hooks.disk_encryption, Some(password))?;
        self.sync_markers()?;
        crate::log_notice!("provisioning started");
        Ok(())
    }

    /// CreateKey and ApplyCert are allowed while provisioning, and on a provisioned node
    /// (renewal); never on an unprovisioned or paused one.
    fn require_keys_allowed(&self, op: &str) -> Result<()> {
        match self.state()? {
            NodeState::Provisioning if self.provisioning_mode => Ok(()),
            NodeState::Provisioned => Ok(()),
            NodeState::Provisioning => Err(Error::wrong_state(format!(
                "{op}: provisioning is in progress; iamd must run with --provisioning"
            ))),
            NodeState::Paused => Err(Error::wrong_state(format!(
                "{op} is refused: the node is paused (ResumeNode first)"
            ))),
            s => Err(Error::wrong_state(format!("{op} is refused: the node is {}", s.name()))),
        }
    }

    pub fn create_key(&self, node_id: &str, cert_type: &str, subject: &str, password: &Secret) -> Result<String> {
        self.check_node(node_id)?;
        self.require_keys_allowed("CreateKey")?;
        self.modules.get(cert_type)?;
        // The key derivation of a wrong password holds no lock that other steps need.
        if !self.verify(password)? {
            return Err(Error::wrong_state("CreateKey: no provisioning password is set"));
        }
        let _g = self.journal()?;
        self.require_keys_allowed("CreateKey")?;
        self.modules
            .create_key(&self.db, cert_type, subject)
            .map(|(_, csr)| csr)
    }

    /// ScepEnroll: the CSR of a pending key signed by a SCEP server, the node itself making
    /// the request with that key: a RenewalReq signed by the module's current certificate
    /// when it has one and the server offers Renewal, else a PKCSReq. Holds no lock while it
    /// talks to the server.
    pub fn scep_enroll(
        &self,
        node_id: &str,
        cert_type: &str,
        csr_pem: &str,
        config: &crate::pki::scep::ScepConfig,
        password: &Secret,
    ) -> Result<String> {
        self.check_node(node_id)?;
        self.require_keys_allowed("ScepEnroll")?;
        self.modules.get(cert_type)?;
        if !self.verify(password)? {
            return Err(Error::wrong_state("ScepEnroll: no provisioning password is set"));
        }
        // A RenewalReq is signed with the module's current key, and the CA's answer is
        // encrypted to it: iamd decrypts with an operational key. Only for the SCEP CA the
        // module's own renewal names (`[modules.renew.scep]`): at a URL and fingerprint of
        // the caller's choosing that would be a decryption oracle on the node's key. Any
        // other server gets a PKCSReq, signed and answered with the fresh pending key.
        let renewal = self
            .config
            .module(cert_type)
            .and_then(|m| m.renew.as_ref())
            .is_some_and(|p| match &p.method {
                crate::config::RenewMethod::Scep(s) => {
                    s.renewal && s.url == config.url && s.ca_fingerprint == config.ca_fingerprint
                }
                _ => false,
            });
        self.modules.scep_enroll(&self.db, cert_type, csr_pem, config, renewal)
    }

    pub fn apply(&self, node_id: &str, cert_type: &str, chain_pem: &str) -> Result<CertInfo> {
        self.check_node(node_id)?;
        let _g = self.journal()?;
        let _a = crate::sys::lock(&self.applying);
        self.require_keys_allowed("ApplyCert")?;
        self.modules.apply(&self.db, &self.config, cert_type, chain_pem)
    }

    pub fn finish(&self, node_id: &str, password: &Secret) -> Result<()> {
        self.check_node(node_id)?;
        self.require_mode("FinishProvisioning")?;
        let _g = self.journal()?;
        let snap = self.db.snapshot()?;
        match snap.state() {
            NodeState::Provisioning => {}
            NodeState::Provisioned => {
                self.verify(password)?;
                return Ok(());
            }
            NodeState::Paused => {
                return Err(Error::wrong_state(
                    "FinishProvisioning: the node is paused (ResumeNode first)",
                ))
            }
            s => {
                return Err(Error::wrong_state(format!(
                    "FinishProvisioning: the node is {}; start provisioning first",
                    s.name()
                )))
            }
        }
        self.verify(password)?;
        let missing: Vec<&str> = self
            .modules
            .modules
            .iter()
            .filter(|m| !snap.certs.iter().any(|c| c.cert_type == m.id()))
            .map(|m| m.id())
            .collect();
        if !missing.is_empty() {
            return Err(Error::wrong_state(format!(
                "FinishProvisioning: no certificate applied yet for {}",
                missing.join(", ")
            )));
        }
        self.hook("finish", &self.config.hooks.finish)?;
        self.db.set_state(NodeState::Provisioned)?;
        self.sync_markers()?;
        crate::log_notice!("provisioning finished");
        Ok(())
    }

    /// Deprovision: the factory reset, in either mode (a deployed node, operational or
    /// quarantined, runs iamd in normal mode; the password is the gate). Its markers go
    /// with its state, so its next start is in provisioning mode.
    pub fn deprovision(&self, node_id: &str, password: &Secret) -> Result<()> {
        self.check_node(node_id)?;
        let _g = self.journal()?;
        if !self.provisioning_mode && self.db.snapshot()?.verifier.is_none() {
            return Err(Error::wrong_state(
                "Deprovision: the node was never provisioned or bootstrapped; there is nothing to reset",
            ));
        }
        self.verify(password)?;
        self.hook("deprovision", &self.config.hooks.deprovision)?;
        for (store, types) in self.modules.stores_with_types() {
            store.wipe(password, &types)?;
        }
        self.db.reset()?;
        *crate::sys::lock(&self.id_changed) = None;
        self.sync_markers()?;
        crate::log_notice!(
            "node deprovisioned{}",
            match self.provisioning_mode {
                true => "",
                false => ": iamd serves it unprovisioned until it is started in provisioning mode",
            }
        );
        Ok(())
    }

    /// FinishBootstrap: the factory half of enrollment is done. The bootstrap identity and the
    /// self-signed certificates are in place, no enrolled module has a certificate yet; the
    /// enrollment settings are stored, the claim token written for iamd alone, and the node is
    /// `unprovisioned`, ready to ship.
    pub fn finish_bootstrap(
        &self,
        node_id: &str,
        password: &Secret,
        est_url: &str,
        anchor_pem: &str,
        claim_token: &Secret,
    ) -> Result<()> {
        self.check_node(node_id)?;
        self.require_mode("FinishBootstrap")?;
        let Some(cfg) = &self.config.enroll else {
            return Err(Error::wrong_state(
                "FinishBootstrap: iamd has no [enroll] in its configuration; this node is provisioned by the factory flow",
            ));
        };
        let _g = self.journal()?;
        let snap = self.db.snapshot()?;
        if snap.state() != NodeState::Provisioning {
            return Err(Error::wrong_state(format!(
                "FinishBootstrap: the node is {}; start provisioning first",
                snap.state().name()
            )));
        }
        self.verify(password)?;
        if self.modules.current(&snap, &cfg.bootstrap).is_none() {
            return Err(Error::wrong_state(format!(
                "FinishBootstrap: module {} has no bootstrap certificate yet (CreateKey and ApplyCert it first)",
                cfg.bootstrap
            )));
        }
        let enrolled: Vec<&str> = cfg
            .enrolled_modules(&self.config.modules)
            .filter(|t| snap.certs.iter().any(|c| c.cert_type == *t))
            .collect();
        if !enrolled.is_empty() {
            return Err(Error::wrong_state(format!(
                "FinishBootstrap: {} already ha{} a certificate; a bootstrapped node gets its own on site (Deprovision to start over)",
                enrolled.join(", "),
                if enrolled.len() == 1 { "s" } else { "ve" }
            )));
        }
        let scep = cfg.scep_fingerprint.is_some();
        if !est_url.is_empty() && scep {
            crate::pki::scep::ScepClient::new(est_url).map_err(|e| e.context("FinishBootstrap: the SCEP URL"))?;
        } else if !est_url.is_empty() {
            crate::pki::est::EstClient::new(est_url, &[], crate::pki::tls::ClientAuth::None, None)
                .map_err(|e| e.context("FinishBootstrap: the EST URL"))?;
        } else if cfg.url.is_none() {
            return Err(Error::invalid(
                "FinishBootstrap: no EST URL given, and [enroll] url is not configured",
            ));
        }
        if !anchor_pem.is_empty() {
            crate::pki::x509::parse_chain_pem(anchor_pem)
                .map_err(|e| e.context("FinishBootstrap: the EST trust anchor"))?;
        } else if cfg.anchor.is_none() && !scep {
            // (SCEP's trust is [enroll] ca_fingerprint; an anchor serves only its verify step.)
            return Err(Error::invalid(
                "FinishBootstrap: no EST trust anchor given, and [enroll] anchor is not configured",
            ));
        }
        let token_file = &cfg.claim_token_file;
        if claim_token.is_empty() {
            crate::store::atomic_file::remove(token_file)
                .map_err(|e| Error::internal(format!("cannot remove {}: {e}", token_file.display())))?;
        } else {
            crate::store::atomic_file::write(token_file, claim_token.expose().as_bytes(), 0o600).map_err(|e| {
                Error::internal(format!(
                    "cannot write the claim token file {}: {e}",
                    token_file.display()
                ))
            })?;
        }
        let e = crate::store::db::Enrollment {
            state: crate::store::db::StoredEnrollState::Unprovisioned,
            url: est_url.to_string(),
            anchor_pem: anchor_pem.to_string(),
            current: None,
            enrolled: Vec::new(),
            failures: 0,
            next_try: 0,
            last_error: String::new(),
            reason: String::new(),
            since: crate::sys::now(),
        };
        self.db.set_enrollment(&e, Some(NodeState::Unprovisioned))?;
        self.sync_markers()?;
        crate::log_notice!("bootstrapped: the node enrolls itself at its next start outside provisioning mode");
        Ok(())
    }

    /// ReleaseQuarantine: a quarantined node tries to enroll again, its attempts counted anew.
    pub fn release_quarantine(&self, node_id: &str, password: &Secret) -> Result<()> {
        self.check_node(node_id)?;
        self.verify_quarantine_password(password)?;
        let _g = self.journal()?;
        let snap = self.db.snapshot()?;
        let Some(mut e) = snap.enrollment else {
            return Err(Error::wrong_state(
                "ReleaseQuarantine: the node was not bootstrapped for enrollment",
            ));
        };
        if e.state != crate::store::db::StoredEnrollState::Quarantined {
            return Err(Error::wrong_state(format!(
                "ReleaseQuarantine: the node is not quarantined (it is {})",
                crate::proto::wire::EnrollState::from(e.state).name()
            )));
        }
        crate::log_notice!("enrollment: released from quarantine ({}); enrolling again", e.reason);
        e.state = crate::store::db::StoredEnrollState::Enrolling;
        e.failures = 0;
        e.next_try = crate::sys::now();
        e.reason.clear();
        e.since = crate::sys::now();
        self.db.set_enrollment(&e, Some(NodeState::Provisioning))
    }

    fn verify_quarantine_password(&self, password: &Secret) -> Result<()> {
        if self.verify(password)? {
            Ok(())
        } else {
            Err(Error::wrong_state("ReleaseQuarantine: no provisioning password is set"))
        }
    }

    /// PauseNode: a provisioned node is paused (persisted); pausing a paused node is done.
    pub fn pause(&self, node_id: &str) -> Result<()> {
        self.set_paused(node_id, true)
    }

    /// ResumeNode: a paused node is provisioned again; resuming a provisioned node is done.
    pub fn resume(&self, node_id: &str) -> Result<()> {
        self.set_paused(node_id, false)
    }

    fn set_paused(&self, node_id: &str, pause: bool) -> Result<()> {
        self.check_node(node_id)?;
        let _g = self.journal()?;
        let (op, from, to) = if pause {
            ("PauseNode", NodeState::Provisioned, NodeState::Paused)
        } else {
            ("ResumeNode", NodeState::Paused, NodeState::Provisioned)
        };
        match self.state()? {
            s if s == to => Ok(()),
            s if s == from => {
                self.db.set_state(to)?;
                crate::log_notice!("node {}", if pause { "paused" } else { "resumed" });
                Ok(())
            }
            s => Err(Error::wrong_state(format!(
                "{op} is refused: the node is {} (only a {} node can be)",
                s.name(),
                from.name()
            ))),
        }
    }

    /// NodeInfo of this node.
    pub fn node_info(&self, node_id: &str) -> Result<NodeInfo> {
        self.check_node(node_id)?;
        let (os_name, os_version) = crate::daemon::node_info::os();
        Ok(NodeInfo {
            node_id: self.config.node_id.clone(),
            node_type: self.config.node_type.clone(),
            name: self.config.node_name.clone(),
            state: self.state()?,
            cpus: crate::daemon::node_info::cpus(),
            total_ram: crate::daemon::node_info::total_ram(),
            partitions: crate::daemon::node_info::partitions(&self.config.partitions),
            os_name,
            os_version,
            attributes: {
                let mut a = self.config.attributes.clone();
                if let Some(e) = self.db.snapshot()?.enrollment {
                    a.push((
                        crate::proto::wire::EnrollState::ATTRIBUTE.into(),
                        crate::proto::wire::EnrollState::from(e.state).name().into(),
                    ));
                }
                a
            },
            connected: true,
        })
    }

    /// The status, once an ApplyCert running (one whose client has gone included) is done,
    /// so that a rerun of the factory script does not apply its certificate again. Longer
    /// steps (hooks) are not waited for: iam-nodelink asks the status while one runs.
    pub fn status(&self, node_id: &str) -> Result<ProvisioningStatus> {
        self.check_node(node_id)?;
        drop(crate::sys::lock(&self.applying));
        let snap = self.db.snapshot()?;
        Ok(ProvisioningStatus {
            node_id: self.config.node_id.clone(),
            state: snap.state(),
            provisioning_mode: self.provisioning_mode,
            modules: self
                .modules
                .modules
                .iter()
                .map(|m| ModuleStatus {
                    cert_type: m.id().to_string(),
                    needs_ca: m.needs_ca(),
                    pending_key: snap.pending.iter().any(|p| p.cert_type == m.id()),
                    certificates: snap.certs.iter().filter(|c| c.cert_type == m.id()).count() as u32,
                })
                .collect(),
        })
    }

    pub fn cert_types(&self, node_id: &str) -> Result<Vec<String>> {
        self.check_node(node_id)?;
        Ok(self.modules.cert_types())
    }

    pub fn check_certs(&self, node_id: &str) -> Result<Vec<crate::proto::wire::CertCheck>> {
        self.check_node(node_id)?;
        let mut checks = self.modules.check(&self.db, &self.config)?;
        // Every certificate names the node it was provisioned as: none is this node's.
        if let Some(why) = &self.id_changed() {
            for c in &mut checks {
                c.chain_error = match c.chain_error.is_empty() {
                    true => why.clone(),
                    false => format!("{why}; {}", c.chain_error),
                };
            }
        }
        Ok(checks)
    }

    /// The certificates, once an ApplyCert running is done (see [`Provisioning::status`]).
    pub fn list_certs(&self, node_id: &str) -> Result<Vec<CertInfo>> {
        self.check_node(node_id)?;
        drop(crate::sys::lock(&self.applying));
        self.modules.list(&self.db)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifier_accepts_the_password_only() {
        let v = make_verifier(&Secret::new("right".into())).unwrap();
        assert!(check_verifier(&v, &Secret::new("right".into())));
        assert!(!check_verifier(&v, &Secret::new("wrong".into())));
        assert!(!check_verifier(&v[1..], &Secret::new("right".into())));
    }
}
