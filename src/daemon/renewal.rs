//! Automatic renewal by iamd itself, for modules with a `[modules.renew]` policy.
//!
//! A renewal goes through named steps, each committed before the next begins, so that a
//! renewal interrupted at any point resumes after a restart:
//! - `KeyCreated` — a new key is in the store (journaled as pending) and its CSR is kept;
//!   resumes by asking for the certificate again (if the pending key is gone, the renewal
//!   starts over);
//! - `Obtained` — the signer's chain is kept; resumes by applying it.
//!
//! Applying validates the chain exactly as ApplyCert does. The current certificate stays
//! served until the new one is applied; a failure is retried after a delay that doubles up
//! to a day. Renewals run only on a provisioned node.

use crate::codec::hex;
use crate::config::{RenewMethod, RenewPolicy, MAX_RENEW_RETRY};
use crate::daemon::provisioning::Provisioning;
use crate::error::{Error, Result};
use crate::pki::est::{EstClient, EstSigner};
use crate::pki::signer::{CommandSigner, CsrSigner};
use crate::pki::tls::ClientAuth;
use crate::proto::wire::NodeState;
use crate::store::db::CertRecord;
use crate::store::keystore::KeyId;
use std::time::Duration;

pub use crate::store::records::{Renewal, Step};

impl Step {
    fn name(&self) -> &'static str {
        match self {
            Step::KeyCreated { .. } => "KeyCreated",
            Step::Obtained { .. } => "Obtained",
        }
    }
    fn key_id(&self) -> &KeyId {
        match self {
            Step::KeyCreated { key_id, .. } | Step::Obtained { key_id, .. } => key_id,
        }
    }
}

use crate::sys::now;

/// When a certificate's renewal is due under `policy`: the threshold, brought forward by a
/// jitter that is fixed per certificate (drawn from its serial), so a fleet spreads out.
pub fn due_at(record: &CertRecord, policy: &RenewPolicy) -> i64 {
    let start = record.not_before;
    let threshold = policy.due_at(record.not_before, record.not_after);
    let spread = (threshold - start).max(0) * policy.jitter as i64 / 1000;
    let draw = record
        .serial
        .iter()
        .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(*b as u64));
    let early = if spread > 0 {
        (draw % (spread as u64 + 1)) as i64
    } else {
        0
    };
    threshold - early
}

/// The policy's retry delay doubled `failures` times, at most [`MAX_RENEW_RETRY`].
fn backoff(policy: &RenewPolicy, failures: u32) -> Duration {
    policy
        .retry
        .checked_mul(1u32 << failures.min(20))
        .unwrap_or(MAX_RENEW_RETRY)
        .min(MAX_RENEW_RETRY)
}

fn load(prov: &Provisioning, cert_type: &str) -> Result<Option<Renewal>> {
    Ok(prov
        .db
        .renewals()?
        .into_iter()
        .find(|(t, _)| t == cert_type)
        .map(|(_, r)| r))
}

fn store(prov: &Provisioning, cert_type: &str, r: Option<&Renewal>) -> Result<()> {
    prov.db.set_renewal(cert_type, r)
}

/// The longest floor between two renewals of one module, whatever the threshold: a
/// threshold at least as long as the certificates the CA issues would otherwise renew again
/// at once, without end (seen against Cisco libest: 32 re-enrollments in 3 s). The floor is
/// a tenth of the certificate's lifetime up to this, plus a jitter of up to half of it drawn
/// from its serial, so a fleet spreads out.
pub const FLOOR: Duration = Duration::from_secs(600);

/// When the renewal after `record`, which this process applied by a renewal at `applied_at`,
/// may begin at the earliest. A certificate this process did not renew (provisioned, or
/// renewed before a restart) has no floor: a restart already separates two renewals.
fn floor_after(record: &CertRecord, applied_at: Option<i64>) -> i64 {
    let Some(applied_at) = applied_at else {
        return i64::MIN;
    };
    let lifetime = (record.not_after - record.not_before).max(1);
    let floor = (lifetime / 10).clamp(1, FLOOR.as_secs() as i64);
    let draw = record
        .serial
        .iter()
        .fold(7u64, |h, b| h.wrapping_mul(131).wrapping_add(*b as u64));
    applied_at + floor + (draw % (floor as u64 / 2 + 1)) as i64
}

/// One pass over every module with a renewal policy: start what is due, resume what is in
/// progress. Blocking (key store, database, the signing command). Returns whether any
/// certificate was applied, and the earliest time something is due next.
pub fn run_due(prov: &Provisioning) -> Result<(bool, i64)> {
    let mut applied = false;
    let mut next = now() + 3600;
    if prov.state()? != NodeState::Provisioned {
        return Ok((false, next));
    }
    let mut last = crate::sys::lock(&prov.renewing);
    for m in &prov.config.modules {
        let Some(policy) = &m.renew else { continue };
        let renewal = match begin(prov, &m.id, policy, last.get(&m.id).copied(), false) {
            Ok(Begun::Wait(at)) => {
                next = next.min(at);
                continue;
            }
            Ok(Begun::Go(r)) => r,
            Err(e) => {
                crate::log_error!("renewal of {}: {e}", m.id);
                continue;
            }
        };
        match run(prov, &m.id, policy, renewal) {
            Ok(Some(_)) => {
                last.insert(m.id.clone(), now());
                applied = true;
                next = now();
            }
            Ok(None) => next = now(),
            // Logged where it happened (`run`).
            Err((_, at)) => next = next.min(at),
        }
    }
    Ok((applied, next))
}

/// RenewNow: the module's configured renewal, run now whatever its threshold (a renewal in
/// progress is resumed, its retry delay waived); the answer is the certificate it applied.
/// A failure is kept as the scheduler keeps its own, so the scheduler tries again later.
pub fn renew_now(prov: &Provisioning, node_id: &str, cert_type: &str) -> Result<crate::proto::wire::CertInfo> {
    prov.check_node_id(node_id)?;
    let policy = prov
        .config
        .module(cert_type)
        .ok_or_else(|| Error::not_found(format!("no module \"{cert_type}\"")))?
        .renew
        .as_ref()
        .ok_or_else(|| {
            Error::invalid(format!(
                "module {cert_type} has no [modules.renew] policy: iamd has no renewal of its own to run \
                 (renew it with a signer: iam-certctl renew {cert_type} --ca-cert/--sign-cmd/--est/--scep)"
            ))
        })?;
    let state = prov.state()?;
    if state != NodeState::Provisioned {
        return Err(Error::wrong_state(format!(
            "renewal of {cert_type}: the node is {} and renews only once provisioned",
            state.name()
        )));
    }
    let mut last = crate::sys::lock(&prov.renewing);
    let renewal = match begin(prov, cert_type, policy, None, true)? {
        Begun::Go(r) => r,
        Begun::Wait(_) => return Err(Error::internal("a forced renewal did not start")),
    };
    let cert = match run(prov, cert_type, policy, renewal) {
        Ok(Some(cert)) => cert,
        Ok(None) => {
            return Err(Error::unavailable(format!(
                "renewal of {cert_type}: its new key was gone, so it starts over; ask again"
            )))
        }
        Err((e, at)) => {
            return Err(e.context(format!(
                "renewal of {cert_type} (iamd tries again at {})",
                crate::pki::x509::rfc3339(at)
            )))
        }
    };
    last.insert(cert_type.to_string(), now());
    Ok(cert)
}

enum Begun {
    /// Nothing to do before this time.
    Wait(i64),
    Go(Renewal),
}

/// The renewal of a module to run now, resumed or begun (its new key made and committed);
/// or when it is due. `force` begins it whatever the threshold and the floor.
fn begin(
    prov: &Provisioning,
    cert_type: &str,
    policy: &RenewPolicy,
    applied_at: Option<i64>,
    force: bool,
) -> Result<Begun> {
    let t = now();
    Ok(Begun::Go(match load(prov, cert_type)? {
        Some(r) if r.next_try > t && !force => return Ok(Begun::Wait(r.next_try)),
        Some(r) => {
            crate::log_info!("renewal of {cert_type}: resuming at step {}", r.step.name());
            r
        }
        None => {
            let snap = prov.db.snapshot()?;
            let Some(current) = prov.modules.current(&snap, cert_type) else {
                if force {
                    return Err(Error::wrong_state(format!(
                        "module {cert_type} has no certificate to renew"
                    )));
                }
                return Ok(Begun::Wait(t + 3600));
            };
            let due = due_at(current, policy).max(floor_after(current, applied_at));
            if due > t && !force {
                return Ok(Begun::Wait(due));
            }
            crate::log_notice!(
                "renewal of {cert_type}: {} (certificate {} expires {})",
                if force { "asked for now" } else { "due" },
                hex(&current.serial),
                crate::pki::x509::rfc3339(current.not_after)
            );
            let subject = crate::pki::profile::subject_for(&policy.subject, &prov.config.node_id, cert_type);
            let (key_id, csr) = prov.with_journal(|| prov.modules.create_key(&prov.db, cert_type, &subject))?;
            let r = Renewal {
                step: Step::KeyCreated { key_id, csr },
                failures: 0,
                next_try: t,
                last_error: String::new(),
            };
            store(prov, cert_type, Some(&r))?;
            r
        }
    }))
}

/// Take a begun renewal to its end: the certificate applied, `None` when its key was gone
/// (it starts over), or the error, logged here, and when it is tried again (kept).
fn run(
    prov: &Provisioning,
    cert_type: &str,
    policy: &RenewPolicy,
    mut renewal: Renewal,
) -> std::result::Result<Option<crate::proto::wire::CertInfo>, (Error, i64)> {
    // The database failed: the renewal stays as it was committed, tried again later.
    let kept = |e: Error| {
        crate::log_error!("renewal of {cert_type}: {e}");
        (e, now() + backoff(policy, 0).as_secs() as i64)
    };
    // The renewal's key must still be pending (a provisioning step or reconciliation may
    // have removed it); if not, start over.
    let pending = prov
        .db
        .snapshot()
        .map_err(kept)?
        .pending
        .iter()
        .any(|p| p.cert_type == cert_type && p.key_id == *renewal.step.key_id());
    if !pending {
        crate::log_warn!("renewal of {cert_type}: its new key is gone; starting over");
        store(prov, cert_type, None).map_err(kept)?;
        return Ok(None);
    }
    let mut retry_after = None;
    match advance(prov, cert_type, policy, &mut renewal, &mut retry_after) {
        Ok(cert) => {
            store(prov, cert_type, None).map_err(kept)?;
            Ok(Some(cert))
        }
        Err(e) => {
            // The server's Retry-After, when longer than our own delay, is honoured.
            let delay = backoff(policy, renewal.failures).max(retry_after.unwrap_or_default().min(MAX_RENEW_RETRY));
            renewal.failures = renewal.failures.saturating_add(1);
            renewal.next_try = now() + delay.as_secs() as i64;
            renewal.last_error = e.to_string();
            store(prov, cert_type, Some(&renewal)).map_err(kept)?;
            crate::log_warn!(
                "renewal of {cert_type}: {e}; trying again in {} s (step {})",
                delay.as_secs(),
                renewal.step.name()
            );
            Err((e, renewal.next_try))
        }
    }
}

/// The signer a policy names. An EST re-enrollment authenticates with the module's current
/// certificate, its key signing in the store.
fn signer(prov: &Provisioning, cert_type: &str, policy: &RenewPolicy) -> Result<Box<dyn CsrSigner>> {
    Ok(match &policy.method {
        RenewMethod::Command { command, timeout } => Box::new(CommandSigner {
            command: command.clone(),
            timeout: *timeout,
        }),
        RenewMethod::Est(est) => {
            let anchors = crate::pki::x509::read_certs(&est.anchor, "EST trust anchor")?;
            let basic = match (&est.username, &est.password_file) {
                (Some(u), Some(f)) => {
                    let text = zeroize::Zeroizing::new(
                        std::fs::read_to_string(f)
                            .map_err(|e| Error::unavailable(format!("EST password file {}: {e}", f.display())))?,
                    );
                    Some((
                        u.clone(),
                        crate::secret::Secret::new(text.trim_end_matches('\n').to_string()),
                    ))
                }
                _ => None,
            };
            let auth = if est.reenroll {
                let (_, _, identity) = prov.with_journal(|| prov.modules.identity(&prov.db, cert_type))?;
                ClientAuth::Identity(identity)
            } else {
                ClientAuth::None
            };
            Box::new(EstSigner {
                client: EstClient::checked_with(
                    &est.url,
                    &anchors,
                    auth,
                    basic,
                    &crate::pki::x509::read_crls(&prov.config.crl_files())?,
                )?
                .with_route(crate::pki::dial::Route::of(&prov.config)),
                reenroll: est.reenroll,
                retry_after: Default::default(),
            })
        }
        RenewMethod::Scep(_) => return Err(Error::internal("SCEP renewals are not made by a CSR signer")),
    })
}

/// The chain for a renewal's CSR: by SCEP inside the key store, or by the policy's signer.
fn obtain(
    prov: &Provisioning,
    cert_type: &str,
    policy: &RenewPolicy,
    csr: &str,
    retry_after: &mut Option<Duration>,
) -> Result<String> {
    if let RenewMethod::Scep(scep) = &policy.method {
        let config = crate::pki::scep::ScepConfig::from_settings(
            scep,
            crate::pki::dial::Route::of(&prov.config),
            crate::pki::x509::read_crls(&prov.config.crl_files())?,
            prov.config.scep_allow_des3,
        )?;
        return prov
            .modules
            .scep_enroll(&prov.db, cert_type, csr, &config, scep.renewal);
    }
    let signer = signer(prov, cert_type, policy)?;
    signer
        .sign(cert_type, csr)
        .inspect_err(|_| *retry_after = signer.retry_after())
}

/// Take the renewal through its remaining steps, committing each.
fn advance(
    prov: &Provisioning,
    cert_type: &str,
    policy: &RenewPolicy,
    renewal: &mut Renewal,
    retry_after: &mut Option<Duration>,
) -> Result<crate::proto::wire::CertInfo> {
    if let Step::KeyCreated { key_id, csr } = &renewal.step {
        let chain_pem = obtain(prov, cert_type, policy, csr, retry_after)?;
        renewal.step = Step::Obtained {
            key_id: *key_id,
            csr: csr.clone(),
            chain_pem,
        };
        store(prov, cert_type, Some(renewal))?;
    }
    let Step::Obtained { key_id, csr, chain_pem } = &renewal.step else {
        return Err(Error::internal("renewal step out of order"));
    };
    match prov.with_journal(|| prov.modules.apply(&prov.db, &prov.config, cert_type, chain_pem)) {
        Ok(cert) => {
            crate::log_notice!(
                "renewal of {cert_type}: certificate {} applied, valid until {}",
                hex(&cert.serial),
                crate::pki::x509::rfc3339(cert.not_after)
            );
            let lifetime = cert.not_after - cert.not_before;
            if policy.outlasts(cert.not_before, cert.not_after) {
                crate::log_warn!(
                    "renewal of {cert_type}: the threshold is at least the lifetime of the certificate just issued \
                     ({lifetime} s): it is due again at once, and only the floor between renewals (a tenth of the \
                     lifetime, at most {} s, and a jitter) keeps renewals apart; shorten [modules.renew] threshold \
                     or ask the CA for longer certificates",
                    FLOOR.as_secs()
                );
            }
            Ok(cert)
        }
        Err(e) => {
            // The chain was refused: ask for a certificate again next time.
            renewal.step = Step::KeyCreated {
                key_id: *key_id,
                csr: csr.clone(),
            };
            Err(e.context("the new certificate was refused"))
        }
    }
}
