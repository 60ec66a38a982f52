//! Zero-touch enrollment by iamd itself (docs/ARCHITECTURE.md §5b).
//!
//! A node bootstrapped at the factory (a bootstrap key in its token, the manufacturer's
//! certificate for it, the enrollment settings: FinishBootstrap) is `unprovisioned`. Started
//! outside provisioning mode with `[enroll]` configured, iamd takes it through
//!
//! ```text
//!   unprovisioned ──► enrolling ──► provisioned ──► operational
//!                      │  ▲ (retry after a delay)
//!                      ▼  │ release-quarantine
//!                     quarantined
//! ```
//!
//! - `enrolling`: for each CA-signed module in turn, a new key and its CSR (step
//!   `KeyCreated`), the EST server's certificate (`Obtained`, over mutual TLS with the
//!   bootstrap identity), applied exactly as ApplyCert applies it; then the verify step,
//!   a mutual-TLS handshake with the new identity. Every step is committed before the next
//!   begins and resumes after a power cut; a module enrolled stays enrolled, a module that
//!   failed resumes from its step.
//! - a failed attempt waits `retry * 2^failures` (capped, with jitter, at least the
//!   server's Retry-After); after `attempts` failures the node is `quarantined`, persisted
//!   with the reason, until ReleaseQuarantine or a factory reset.
//! - `provisioned`: the new identities are in place and verified; the finish hook runs
//!   and the node becomes `operational` (node state `provisioned`, marker written).
//!
//! The node state of the provisioning state machine follows: `unprovisioned`, then
//! `provisioning` while enrolling, `error` while quarantined, `provisioned` once operational.

use crate::config::EnrollConfig;
use crate::daemon::provisioning::Provisioning;
use crate::error::{Error, Result};
use crate::pki::dial::Route;
use crate::pki::est::{EstClient, EstSigner};
use crate::pki::signer::CsrSigner;
use crate::pki::tls::ClientAuth;
use crate::proto::wire::{EnrollState, EnrollmentStatus, NodeState};
use crate::secret::Secret;
use crate::store::db::{Enrollment, StoredEnrollState};
use crate::store::records::Step;
use crate::sys::now;
use std::time::Duration;

impl From<StoredEnrollState> for EnrollState {
    fn from(s: StoredEnrollState) -> Self {
        match s {
            StoredEnrollState::Unprovisioned => EnrollState::Unprovisioned,
            StoredEnrollState::Enrolling => EnrollState::Enrolling,
            StoredEnrollState::Provisioned => EnrollState::Provisioned,
            StoredEnrollState::Operational => EnrollState::Operational,
            StoredEnrollState::Quarantined => EnrollState::Quarantined,
        }
    }
}

fn step_text(e: &Enrollment) -> String {
    match (&e.state, &e.current) {
        (StoredEnrollState::Enrolling, Some((t, Step::KeyCreated { .. }))) => {
            format!("enroll {t}: key created, certificate to be requested")
        }
        (StoredEnrollState::Enrolling, Some((t, Step::Obtained { .. }))) => {
            format!("enroll {t}: certificate obtained, to be applied")
        }
        (StoredEnrollState::Enrolling, None) if !e.enrolled.is_empty() => {
            format!("enrolled {}", e.enrolled.join(", "))
        }
        (StoredEnrollState::Enrolling, None) => "enrollment begun".into(),
        (StoredEnrollState::Unprovisioned, _) => "bootstrapped, waiting to enroll".into(),
        (StoredEnrollState::Provisioned, _) => "identities verified, finishing".into(),
        (StoredEnrollState::Operational, _) => "done".into(),
        (StoredEnrollState::Quarantined, _) => "quarantined".into(),
    }
}

/// GetEnrollmentStatus of this node.
pub fn status(prov: &Provisioning) -> Result<EnrollmentStatus> {
    let snap = prov.db.snapshot()?;
    let max_attempts = prov.config.enroll.as_ref().map_or(0, |e| e.attempts);
    Ok(match snap.enrollment {
        None => EnrollmentStatus {
            node_id: prov.config.node_id.clone(),
            state: EnrollState::NotConfigured,
            step: match prov.config.enroll {
                Some(_) => "not bootstrapped (iam-provision bootstrap)".into(),
                None => "no [enroll] in the configuration".into(),
            },
            attempts: 0,
            max_attempts,
            next_attempt: 0,
            last_error: String::new(),
            reason: String::new(),
            since: 0,
            enrolled: Vec::new(),
        },
        Some(e) => EnrollmentStatus {
            node_id: prov.config.node_id.clone(),
            state: e.state.into(),
            step: step_text(&e),
            attempts: e.failures,
            max_attempts,
            next_attempt: match e.state {
                StoredEnrollState::Enrolling | StoredEnrollState::Unprovisioned => e.next_try,
                _ => 0,
            },
            last_error: e.last_error.clone(),
            reason: e.reason.clone(),
            since: e.since,
            enrolled: e.enrolled.clone(),
        },
    })
}

/// The delay after `failures` failed attempts: `retry * 2^(failures-1)`, capped, less a
/// random share of up to `jitter` per mille.
pub fn backoff(e: &EnrollConfig, failures: u32) -> Duration {
    let base = e
        .retry
        .checked_mul(1u32 << failures.saturating_sub(1).min(20))
        .unwrap_or(e.max_retry)
        .min(e.max_retry);
    let mut r = [0u8; 4];
    let draw = match ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut r) {
        Ok(()) => u32::from_le_bytes(r) % (e.jitter + 1),
        Err(_) => 0,
    };
    base - base * draw / 1000
}

/// What one pass did, for the caller's events.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pass {
    /// The enrollment state changed (node subscribers are told).
    pub transitions: bool,
    /// A certificate was applied (certificate subscribers are told).
    pub applied: bool,
    /// When to look again (seconds since the Unix epoch).
    pub next: i64,
}

/// The longest Retry-After honoured.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// Longest time between passes when nothing is due.
pub const IDLE: i64 = 3600;

/// One pass of the state machine. Blocking (key store, database, EST, hooks).
pub fn run_due(prov: &Provisioning) -> Result<Pass> {
    let mut pass = Pass {
        next: now() + IDLE,
        ..Default::default()
    };
    let Some(cfg) = &prov.config.enroll else {
        return Ok(pass);
    };
    // In provisioning mode the factory is at work: nothing is enrolled behind its back.
    if prov.provisioning_mode {
        return Ok(pass);
    }
    // One transition per pass, so that each is reported before the next begins.
    {
        let Some(mut e) = prov.db.snapshot()?.enrollment else {
            return Ok(pass);
        };
        match e.state {
            StoredEnrollState::Operational => {
                forget_claim_token(cfg);
                Ok(pass)
            }
            StoredEnrollState::Quarantined => Ok(pass),
            StoredEnrollState::Unprovisioned => {
                crate::log_notice!("enrollment: beginning (first power-on)");
                e.state = StoredEnrollState::Enrolling;
                e.since = now();
                e.next_try = now();
                prov.db.set_enrollment(&e, Some(NodeState::Provisioning))?;
                pass.transitions = true;
                pass.next = now();
                Ok(pass)
            }
            StoredEnrollState::Enrolling => {
                if e.next_try > now() {
                    pass.next = e.next_try;
                    return Ok(pass);
                }
                if let Some(reason) = bootstrap_expired(prov, cfg, &e)? {
                    e.failures = e.failures.saturating_add(1);
                    e.last_error = reason.clone();
                    quarantine(prov, &mut e, reason)?;
                    pass.transitions = true;
                    return Ok(pass);
                }
                let mut retry_after = None;
                match attempt(prov, cfg, &mut e, &mut pass, &mut retry_after) {
                    Ok(()) => {
                        crate::log_notice!(
                            "enrollment: {} enrolled and verified; the node is provisioned",
                            e.enrolled.join(", ")
                        );
                        e.state = StoredEnrollState::Provisioned;
                        e.since = now();
                        e.last_error.clear();
                        prov.db.set_enrollment(&e, None)?;
                        pass.transitions = true;
                        pass.next = now();
                        Ok(pass)
                    }
                    Err(err) => {
                        e.failures = e.failures.saturating_add(1);
                        e.last_error = err.to_string();
                        if e.failures >= cfg.attempts {
                            let reason = format!("{} attempt(s) failed; the last: {err}", e.failures);
                            quarantine(prov, &mut e, reason)?;
                            pass.transitions = true;
                            return Ok(pass);
                        }
                        // The server's Retry-After is honoured when longer (up to a day).
                        let delay = backoff(cfg, e.failures).max(retry_after.unwrap_or_default().min(MAX_RETRY_AFTER));
                        e.next_try = now() + delay.as_secs().max(1) as i64;
                        prov.db.set_enrollment(&e, None)?;
                        crate::log_warn!(
                            "enrollment: attempt {} of {} failed: {err}; next attempt in {} s",
                            e.failures,
                            cfg.attempts,
                            delay.as_secs().max(1)
                        );
                        pass.transitions = true;
                        pass.next = e.next_try;
                        Ok(pass)
                    }
                }
            }
            StoredEnrollState::Provisioned => {
                prov.hook_finish()?;
                e.state = StoredEnrollState::Operational;
                e.since = now();
                e.current = None;
                prov.db.set_enrollment(&e, Some(NodeState::Provisioned))?;
                prov.sync_markers()?;
                crate::log_notice!("enrollment: done; the node is operational");
                forget_claim_token(cfg);
                pass.transitions = true;
                Ok(pass)
            }
        }
    }
}

/// Enter `quarantined` for `reason`, committed (node state `error`), and say so at error
/// level: nothing more is tried until ReleaseQuarantine or a factory reset.
fn quarantine(prov: &Provisioning, e: &mut Enrollment, reason: String) -> Result<()> {
    e.state = StoredEnrollState::Quarantined;
    e.since = now();
    e.next_try = 0;
    e.reason = reason;
    prov.db.set_enrollment(e, Some(NodeState::Error))?;
    crate::log_error!(
        "enrollment: QUARANTINED: {}; the node keeps serving what it has and enrolls again only after \
         iam-provision release-quarantine or a factory reset",
        e.reason
    );
    prov.alerts.node(
        crate::proto::wire::AlertKind::Quarantined,
        format!("the node is quarantined: {}", e.reason),
    );
    Ok(())
}

/// The EST server and its anchor: those bootstrap stored, else the configuration's.
type Anchors = Vec<rustls::pki_types::CertificateDer<'static>>;

fn server(cfg: &EnrollConfig, e: &Enrollment) -> Result<(String, Anchors)> {
    let url = match (&e.url, &cfg.url) {
        (u, _) if !u.is_empty() => u.clone(),
        (_, Some(u)) => u.clone(),
        _ => {
            return Err(Error::wrong_state(
                "no EST server: neither bootstrap nor [enroll] url gave one",
            ))
        }
    };
    let anchors = if !e.anchor_pem.is_empty() {
        crate::pki::x509::parse_chain_pem(&e.anchor_pem)
            .map_err(|err| err.context("the EST trust anchor stored at bootstrap"))?
    } else {
        match &cfg.anchor {
            Some(p) => crate::pki::x509::read_certs(p, "EST trust anchor")?,
            None => {
                return Err(Error::wrong_state(
                    "no EST trust anchor: neither bootstrap nor [enroll] anchor gave one",
                ))
            }
        }
    };
    Ok((url, anchors))
}

/// Once the node is operational its claim token has served: it is removed (and looked for
/// again at each later pass, should a cut have come between the commit and the removal).
fn forget_claim_token(cfg: &EnrollConfig) {
    match std::fs::remove_file(&cfg.claim_token_file) {
        Ok(()) => crate::log_info!(
            "enrollment: the claim token {} has served and is removed",
            cfg.claim_token_file.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => crate::log_warn!(
            "enrollment: cannot remove the claim token {}: {e}",
            cfg.claim_token_file.display()
        ),
    }
}

/// The EST client of this attempt: mutual TLS with the bootstrap identity, and the claim
/// token or basic auth where configured.
fn client(prov: &Provisioning, cfg: &EnrollConfig, e: &Enrollment) -> Result<EstClient> {
    let (url, anchors) = server(cfg, e)?;
    let (_, _, identity) = prov
        .with_journal(|| prov.modules.identity(&prov.db, &cfg.bootstrap))
        .map_err(|err| err.context("the bootstrap identity"))?;
    let basic = match (&cfg.username, &cfg.password_file) {
        (Some(u), Some(f)) => Some((u.clone(), read_secret(f, "EST password file")?)),
        _ => None,
    };
    let crls = crate::pki::x509::read_crls(&prov.config.crl_files())?;
    let mut client = EstClient::checked_with(&url, &anchors, ClientAuth::Identity(identity), basic, &crls)?
        .with_timeout(cfg.timeout)
        .with_route(crate::pki::dial::Route::of(&prov.config));
    if cfg.claim_token_file.exists() {
        let token = read_secret(&cfg.claim_token_file, "claim token file")?;
        let token = match cfg.claim_token_base64 {
            true => Secret::new(crate::codec::pem::base64_encode(token.expose().as_bytes())),
            false => token,
        };
        client = client.with_bearer(token);
    }
    Ok(client)
}

/// The attempt's EST signer, made on first use (one client for every module of the attempt).
fn est_signer<'s>(
    est: &'s mut Option<EstSigner>,
    prov: &Provisioning,
    cfg: &EnrollConfig,
    e: &Enrollment,
) -> Result<&'s EstSigner> {
    if est.is_none() {
        *est = Some(EstSigner {
            client: client(prov, cfg, e)?,
            reenroll: false,
            retry_after: Default::default(),
        });
    }
    Ok(est.as_ref().expect("made above"))
}

/// With `method = "scep"`: the SCEP server, its CA fingerprint, and the claim token as the
/// challenge password (required: SCEP has no other way to authenticate a first request).
fn scep_config(
    prov: &Provisioning,
    cfg: &EnrollConfig,
    e: &Enrollment,
) -> Result<Option<crate::pki::scep::ScepConfig>> {
    let Some(fingerprint) = &cfg.scep_fingerprint else {
        return Ok(None);
    };
    let url = match (&e.url, &cfg.url) {
        (u, _) if !u.is_empty() => u.clone(),
        (_, Some(u)) => u.clone(),
        _ => {
            return Err(Error::wrong_state(
                "no SCEP server: neither bootstrap nor [enroll] url gave one",
            ))
        }
    };
    if !cfg.claim_token_file.exists() {
        return Err(Error::wrong_state(format!(
            "SCEP enrollment needs the claim token (its challenge password) in {}; bootstrap gave none",
            cfg.claim_token_file.display()
        )));
    }
    Ok(Some(crate::pki::scep::ScepConfig {
        url,
        route: crate::pki::dial::Route::of(&prov.config),
        ca_fingerprint: *fingerprint,
        challenge: Some(read_secret(&cfg.claim_token_file, "claim token file")?),
        timeout: cfg.timeout,
        poll_for: crate::config::ScepSettings::DEFAULT_POLL_FOR,
        poll_every: crate::config::ScepSettings::DEFAULT_POLL_EVERY,
        crls: crate::pki::x509::read_crls(&prov.config.crl_files())?,
        allow_des3: prov.config.scep_allow_des3,
    }))
}

/// The challengePassword a server's /csrattrs may ask for: the claim token, else the EST
/// password.
fn challenge_secret(cfg: &EnrollConfig) -> Result<Option<Secret>> {
    if cfg.claim_token_file.exists() {
        return read_secret(&cfg.claim_token_file, "claim token file").map(Some);
    }
    match &cfg.password_file {
        Some(f) => read_secret(f, "EST password file").map(Some),
        None => Ok(None),
    }
}

fn read_secret(path: &std::path::Path, what: &str) -> Result<Secret> {
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path).map_err(|e| Error::unavailable(format!("{what} {}: {e}", path.display())))?,
    );
    Ok(Secret::new(text.trim_end_matches(['\n', '\r']).to_string()))
}

/// Why the bootstrap identity can never authenticate again, if it cannot: its certificate
/// has expired (a node that waited in storage longer than it lives). Checked before each
/// attempt that still needs it (EST, a module left to enroll), so such a node is
/// quarantined at once with that reason rather than after its attempts fail in TLS.
fn bootstrap_expired(prov: &Provisioning, cfg: &EnrollConfig, e: &Enrollment) -> Result<Option<String>> {
    let left = cfg
        .enrolled_modules(&prov.config.modules)
        .any(|t| !e.enrolled.iter().any(|d| d == t));
    if cfg.scep_fingerprint.is_some() || !left {
        return Ok(None);
    }
    let snap = prov.db.snapshot()?;
    let Some(r) = prov.modules.current(&snap, &cfg.bootstrap) else {
        return Ok(None);
    };
    if now() <= r.not_after {
        return Ok(None);
    }
    Ok(Some(format!(
        "the bootstrap certificate of module {} (serial {}, subject {}) expired at {}: this node can no longer \
         authenticate to enroll; a factory reset and a new bootstrap identity (iam-provision bootstrap) are needed",
        cfg.bootstrap,
        crate::codec::hex(&r.serial),
        r.subject,
        crate::pki::x509::rfc3339(r.not_after)
    )))
}

/// One attempt: every module not yet enrolled, then the verify step.
fn attempt(
    prov: &Provisioning,
    cfg: &EnrollConfig,
    e: &mut Enrollment,
    pass: &mut Pass,
    retry_after: &mut Option<Duration>,
) -> Result<()> {
    let todo: Vec<String> = cfg
        .enrolled_modules(&prov.config.modules)
        .filter(|t| !e.enrolled.iter().any(|d| d == t))
        .map(String::from)
        .collect();
    let mut est = None;
    for t in todo {
        enroll_module(prov, cfg, e, &t, &mut est, pass, retry_after)
            .map_err(|err| unauthorized_hint(cfg, err).context(format!("enroll {t}")))?;
    }
    verify(prov, cfg, e)
}

/// An EST server's refusal (HTTP 401/403) during enrollment, with the settings that decide
/// what this node presents: the claim token and its encoding, basic auth, the bootstrap
/// identity (libest's token auth, for one, decodes the token as base64).
fn unauthorized_hint(cfg: &EnrollConfig, err: Error) -> Error {
    if err.kind != crate::ErrorKind::Unauthorized
        || cfg.scep_fingerprint.is_some()
        || crate::pki::dial::refused_on_the_way(&err)
    {
        return err;
    }
    let token = match (cfg.claim_token_file.exists(), cfg.claim_token_base64) {
        (false, _) => format!("no claim token ({} does not exist)", cfg.claim_token_file.display()),
        (true, false) => format!(
            "the claim token of {} sent as is ([enroll] claim_token_encoding = \"as-is\"; a server that decodes \
             base64 tokens, as Cisco libest does, wants \"base64\")",
            cfg.claim_token_file.display()
        ),
        (true, true) => format!(
            "the claim token of {} sent base64-encoded ([enroll] claim_token_encoding = \"base64\")",
            cfg.claim_token_file.display()
        ),
    };
    let basic = match &cfg.username {
        Some(u) => format!("basic auth as \"{u}\" ([enroll] username, password_file)"),
        None => "no basic auth ([enroll] username, password_file)".into(),
    };
    let message = format!(
        "{}; this node presented {token}, {basic}, and the bootstrap identity of module {} over mutual TLS: \
         check these settings against what the EST server expects",
        err.message, cfg.bootstrap
    );
    Error::new(err.kind, message)
}

#[allow(clippy::too_many_arguments)]
fn enroll_module(
    prov: &Provisioning,
    cfg: &EnrollConfig,
    e: &mut Enrollment,
    cert_type: &str,
    est: &mut Option<EstSigner>,
    pass: &mut Pass,
    retry_after: &mut Option<Duration>,
) -> Result<()> {
    // The step under way, if it is this module's and its key is still pending.
    let mut step = match e.current.take() {
        Some((t, s)) if t == cert_type => Some(s),
        _ => None,
    };
    if let Some(s) = &step {
        let key_id = match s {
            Step::KeyCreated { key_id, .. } | Step::Obtained { key_id, .. } => *key_id,
        };
        let snap = prov.db.snapshot()?;
        let pending = snap
            .pending
            .iter()
            .any(|p| p.cert_type == cert_type && p.key_id == key_id);
        // Applied, and cut off before that was recorded here: the module is enrolled.
        if snap
            .certs
            .iter()
            .any(|c| c.cert_type == cert_type && c.key_id == key_id)
        {
            crate::log_info!("enrollment of {cert_type}: its certificate was applied before the restart");
            e.enrolled.push(cert_type.to_string());
            prov.db.set_enrollment(e, None)?;
            pass.applied = true;
            return Ok(());
        }
        if !pending {
            crate::log_warn!("enrollment of {cert_type}: its new key is gone; making another");
            step = None;
        }
    }
    let scep = scep_config(prov, cfg, e)?;
    // The challengePassword /csrattrs asked for, when the key is made in this pass (None: a
    // step resumed from the database, for which /csrattrs is asked again). It is added to
    // the CSR only as the CSR is sent: the CSR kept in the enrollment record never holds it.
    let mut asked_now: Option<Option<Secret>> = None;
    let step = match step {
        Some(s) => s,
        None if scep.is_some() => {
            // SCEP: the challenge goes into the CSR with each request (pki::scep).
            let subject = format!("CN={},OU={cert_type}", prov.config.node_id);
            let (key_id, csr) = prov.with_journal(|| prov.modules.create_key(&prov.db, cert_type, &subject))?;
            let s = Step::KeyCreated { key_id, csr };
            e.current = Some((cert_type.to_string(), s.clone()));
            prov.db.set_enrollment(e, None)?;
            s
        }
        None => {
            // What the server asks CSRs to carry (/csrattrs), honoured or refused before a
            // key is made.
            let signer = est_signer(est, prov, cfg, e)?;
            let challenge = asked_challenge(prov, cfg, signer, cert_type, retry_after, true)?;
            let subject = format!("CN={},OU={cert_type}", prov.config.node_id);
            let (key_id, csr) = prov.with_journal(|| prov.modules.create_key(&prov.db, cert_type, &subject))?;
            asked_now = Some(challenge);
            let s = Step::KeyCreated { key_id, csr };
            e.current = Some((cert_type.to_string(), s.clone()));
            prov.db.set_enrollment(e, None)?;
            s
        }
    };
    // What is kept of this attempt, whatever fails below.
    e.current = Some((cert_type.to_string(), step.clone()));
    let (key_id, csr, chain_pem) = match step {
        Step::KeyCreated { key_id, csr } => {
            let chain_pem = match &scep {
                Some(config) => prov.modules.scep_enroll(&prov.db, cert_type, &csr, config, false)?,
                None => {
                    let signer = est_signer(est, prov, cfg, e)?;
                    let challenge = match asked_now.take() {
                        Some(c) => c,
                        None => asked_challenge(prov, cfg, signer, cert_type, retry_after, false)?,
                    };
                    let sent = match &challenge {
                        Some(c) => prov.modules.csr_with_challenge(cert_type, key_id, &csr, c)?,
                        None => csr.clone(),
                    };
                    signer
                        .sign(cert_type, &sent)
                        .inspect_err(|_| *retry_after = signer.retry_after())?
                }
            };
            e.current = Some((
                cert_type.to_string(),
                Step::Obtained {
                    key_id,
                    csr: csr.clone(),
                    chain_pem: chain_pem.clone(),
                },
            ));
            prov.db.set_enrollment(e, None)?;
            (key_id, csr, chain_pem)
        }
        Step::Obtained { key_id, csr, chain_pem } => (key_id, csr, chain_pem),
    };
    match prov.with_journal(|| prov.modules.apply(&prov.db, &prov.config, cert_type, &chain_pem)) {
        Ok(cert) => {
            crate::log_notice!(
                "enrollment of {cert_type}: certificate {} applied, valid until {}",
                crate::codec::hex(&cert.serial),
                crate::pki::x509::rfc3339(cert.not_after)
            );
            e.current = None;
            e.enrolled.push(cert_type.to_string());
            prov.db.set_enrollment(e, None)?;
            pass.applied = true;
            Ok(())
        }
        Err(err) => {
            // The certificate was refused: the same key asks for another next time.
            e.current = Some((cert_type.to_string(), Step::KeyCreated { key_id, csr }));
            prov.db.set_enrollment(e, None)?;
            Err(err.context("the issued certificate was refused"))
        }
    }
}

/// What the EST server's /csrattrs asks CSRs of `cert_type` to carry, honoured or refused
/// (`[enroll] csrattrs`): the challengePassword to add as a CSR is sent, if it asks for one.
/// What cannot be given is logged where `warn` (when the key is made, not again for each
/// later attempt with the same key).
fn asked_challenge(
    prov: &Provisioning,
    cfg: &EnrollConfig,
    signer: &EstSigner,
    cert_type: &str,
    retry_after: &mut Option<Duration>,
    warn: bool,
) -> Result<Option<Secret>> {
    let attrs = signer.client.csrattrs().map_err(|r| {
        *retry_after = r.retry_after;
        r.error
    })?;
    if attrs.items.is_empty() {
        return Ok(None);
    }
    let module = prov.modules.get(cert_type)?;
    let h = attrs.honour(&module.config, challenge_secret(cfg)?.as_ref(), cfg.strict_csrattrs)?;
    if warn {
        for what in &h.not_honoured {
            crate::log_warn!(
                "enrollment of {cert_type}: the EST server's /csrattrs asks for {what}; \
                 the CSR goes without it ([enroll] csrattrs = \"strict\" refuses instead)"
            );
        }
    }
    Ok(h.challenge)
}

/// The verify step: the new identity is accepted by a server that checks it.
fn verify(prov: &Provisioning, cfg: &EnrollConfig, e: &Enrollment) -> Result<()> {
    let module = match &cfg.verify_module {
        Some(m) => m.clone(),
        None => cfg
            .enrolled_modules(&prov.config.modules)
            .next()
            .ok_or_else(|| Error::internal("no module is enrolled"))?
            .to_string(),
    };
    if cfg.scep_fingerprint.is_some() {
        // SCEP has no TLS server of its own: the verify step needs an endpoint and its anchor.
        let Some(v) = &cfg.verify else {
            crate::log_info!("enrollment: no verify endpoint is configured for SCEP; the verify step is skipped");
            return Ok(());
        };
        let anchors = if !e.anchor_pem.is_empty() {
            crate::pki::x509::parse_chain_pem(&e.anchor_pem)?
        } else {
            match &cfg.anchor {
                Some(p) => crate::pki::x509::read_certs(p, "verify endpoint trust anchor")?,
                None => {
                    return Err(Error::wrong_state(
                        "verify with method = \"scep\" needs [enroll] anchor",
                    ))
                }
            }
        };
        let (h, p) = v
            .rsplit_once(':')
            .ok_or_else(|| Error::invalid("verify is not host:port"))?;
        let port = p.parse().map_err(|_| Error::invalid("verify: bad port"))?;
        let (_, _, identity) = prov.with_journal(|| prov.modules.identity(&prov.db, &module))?;
        crate::pki::tls::verify_client_identity(h, port, &anchors, &identity, cfg.timeout, &Route::of(&prov.config))
            .map_err(|err| err.context(format!("the new {module} identity")))?;
        crate::log_info!("enrollment: verify step passed: {v} accepted the new {module} identity");
        return Ok(());
    }
    let (url, anchors) = server(cfg, e)?;
    let (host, port) = match &cfg.verify {
        Some(v) => {
            let (h, p) = v
                .rsplit_once(':')
                .ok_or_else(|| Error::invalid("verify is not host:port"))?;
            (
                h.trim_start_matches('[').trim_end_matches(']').to_string(),
                p.parse().map_err(|_| Error::invalid("verify: bad port"))?,
            )
        }
        None => {
            let c = EstClient::new(&url, &anchors, ClientAuth::None, None)?;
            let (h, p) = c.authority();
            (h.to_string(), p)
        }
    };
    let (_, _, identity) = prov.with_journal(|| prov.modules.identity(&prov.db, &module))?;
    crate::pki::tls::verify_client_identity(&host, port, &anchors, &identity, cfg.timeout, &Route::of(&prov.config))
        .map_err(|err| err.context(format!("the new {module} identity")))?;
    crate::log_info!("enrollment: verify step passed: {host}:{port} accepted the new {module} identity");
    Ok(())
}
