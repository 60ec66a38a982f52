//! The flows a client drives through iamd: the whole provisioning of a node, as a factory
//! station's `iam-provision run` does it, the factory half of zero-touch enrollment, the
//! provisioning of a unit through its main node, and a renewal by a signer of the client's
//! (`iam-certctl renew`). Above the PKI and the protocol client, beside the daemon: it
//! chooses who signs, and asks iamd to sign by SCEP where the node must.
//!
//! Start, list the certificate types, then for each: create a key, get its CSR signed,
//! apply the chain; finish. It talks only through the [`Client`], so it works against any
//! iamd, and re-running it after an interruption converges: a node part-way through is
//! resumed from the certificates it has, otherwise StartProvisioning wipes first.
//! [`run_unit`] does the same for every node of a unit through its main node.

use crate::codec::Fingerprint;
use crate::error::{Error, ErrorKind, Result};
use crate::pki::profile::Profile;
use crate::pki::signer::CsrSigner;
use crate::pki::x509;
use crate::proto::client::Client;
use crate::proto::wire::{CertInfo, NodeState};
use crate::secret::Secret;
use std::time::{Duration, Instant};

pub use crate::config::{BOOTSTRAP_DAYS, DEFAULT_DAYS, DEFAULT_SUBJECT};
pub use crate::pki::profile::subject_for;

/// Who gets a node's CSRs signed.
pub enum Signer {
    /// A signer of the client's: a CA's files, a command, an EST server.
    Here(Box<dyn CsrSigner + Sync>),
    /// The node itself, by SCEP (`--scep`): iamd makes the request with the key CreateKey
    /// made, as ScepEnroll; the chain comes back for ApplyCert.
    NodeScep(NodeScep),
}

/// A SCEP server the node enrolls with, and the CA it speaks for.
pub struct NodeScep {
    pub url: String,
    pub ca_fingerprint: Fingerprint,
    /// Empty: none (a RenewalReq by the node's current certificate needs none where the
    /// server does not ask for it).
    pub challenge: Secret,
}

impl Signer {
    /// Sign `csr_pem`, of `node_id`'s key for `cert_type`; the chain PEM, leaf first.
    fn sign(
        &self,
        client: &mut Client,
        node_id: &str,
        cert_type: &str,
        csr_pem: &str,
        password: &Secret,
    ) -> Result<String> {
        match self {
            Signer::Here(signer) => signer.sign(cert_type, csr_pem),
            Signer::NodeScep(s) => client.scep_enroll(
                node_id,
                cert_type,
                csr_pem,
                &s.url,
                &s.ca_fingerprint,
                &s.challenge,
                password,
            ),
        }
    }
}

pub struct RunOptions<'a> {
    pub node_id: &'a str,
    pub password: &'a Secret,
    pub subject_template: &'a str,
    pub deprovision_first: bool,
    /// What a certificate for a node may say, whoever signs it.
    pub profile: &'a Profile,
}

/// One step of the flow, reported as it begins (`done == false`) and ends.
#[derive(Debug, Clone)]
pub struct Step {
    pub name: String,
    pub done: bool,
}

pub fn run(
    client: &mut Client,
    signer: &Signer,
    opts: &RunOptions,
    progress: &mut dyn FnMut(&Step),
) -> Result<Vec<CertInfo>> {
    let node_id = if opts.node_id.is_empty() {
        client.server_node_id.clone()
    } else {
        opts.node_id.to_string()
    };
    let applied = prepare(client, signer, opts, &node_id, progress)?;
    finish(client, opts, &node_id, progress)?;
    Ok(applied)
}

fn step(progress: &mut dyn FnMut(&Step), name: String, f: &mut dyn FnMut() -> Result<()>) -> Result<()> {
    progress(&Step {
        name: name.clone(),
        done: false,
    });
    f().map_err(|e| e.context(&name))?;
    progress(&Step { name, done: true });
    Ok(())
}

/// Everything but FinishProvisioning: (deprovision,) start, and a certificate per type.
fn prepare(
    client: &mut Client,
    signer: &Signer,
    opts: &RunOptions,
    node_id: &str,
    progress: &mut dyn FnMut(&Step),
) -> Result<Vec<CertInfo>> {
    let status = client.status(node_id)?;
    let state = status.state;
    if matches!(state, NodeState::Provisioned | NodeState::Paused) && !opts.deprovision_first {
        return Err(Error::wrong_state(format!(
            "node \"{node_id}\" is already {}; pass --deprovision-first to provision it again",
            state.name()
        )));
    }
    // A node part-way through provisioning (steps done by hand, or a run cut off after a
    // certificate was applied) is resumed: what is applied stays, the rest is done.
    let applied_before: Vec<String> = status
        .modules
        .iter()
        .filter(|m| m.needs_ca && m.certificates > 0)
        .map(|m| m.cert_type.clone())
        .collect();
    let resume = state == NodeState::Provisioning && !applied_before.is_empty() && !opts.deprovision_first;
    if resume {
        if let Some(m) = status.modules.iter().find(|m| !m.needs_ca && m.certificates == 0) {
            return Err(Error::wrong_state(format!(
                "node \"{node_id}\" is part-way through provisioning ({} applied) but its self-signed {} certificate is missing; \
                 pass --deprovision-first to start over",
                applied_before.join(", "),
                m.cert_type
            )));
        }
        progress(&Step {
            name: format!("resuming: {} already applied", applied_before.join(", ")),
            done: true,
        });
    } else {
        if opts.deprovision_first && state != NodeState::Unprovisioned {
            step(progress, "Deprovision".into(), &mut || {
                client.deprovision(node_id, opts.password)
            })?;
        }
        step(progress, "StartProvisioning".into(), &mut || {
            client.start_provisioning(node_id, opts.password)
        })?;
    }
    let mut types = Vec::new();
    step(progress, "GetCertTypes".into(), &mut || {
        types = client.cert_types(node_id)?;
        Ok(())
    })?;
    let mut applied = Vec::new();
    let current: Vec<CertInfo> = match resume {
        true => client.list_certs(node_id)?.into_iter().filter(|c| c.current).collect(),
        false => Vec::new(),
    };
    for t in &types {
        if let Some(c) = current.iter().find(|c| c.cert_type == *t) {
            applied.push(c.clone());
            continue;
        }
        applied.push(certify(client, signer, opts, node_id, t, progress)?);
    }
    Ok(applied)
}

/// One certificate: CreateKey, the CSR signed, ApplyCert, each a step.
fn certify(
    client: &mut Client,
    signer: &Signer,
    opts: &RunOptions,
    node_id: &str,
    t: &str,
    progress: &mut dyn FnMut(&Step),
) -> Result<CertInfo> {
    let mut csr = String::new();
    let subject = subject_for(opts.subject_template, node_id, t);
    step(progress, format!("CreateKey {t}"), &mut || {
        csr = client.create_key(node_id, t, &subject, opts.password)?;
        Ok(())
    })?;
    let mut chain = String::new();
    step(progress, format!("Sign {t}"), &mut || {
        chain = sign_for_node(client, signer, opts.profile, node_id, t, &subject, &csr, opts.password)?;
        Ok(())
    })?;
    let mut cert = None;
    step(progress, format!("ApplyCert {t}"), &mut || {
        cert = Some(client.apply_cert(node_id, t, &chain)?);
        Ok(())
    })?;
    cert.ok_or_else(|| Error::internal("ApplyCert gave nothing"))
}

/// The CSR a node's CreateKey gave, signed by `signer`, with what a node may not have
/// refused on both sides of the signer (whatever signed it: a local CA, a command, EST,
/// SCEP): a CSR that goes beyond the factory's `profile` (its subject not the template's,
/// a usage, name, URI or extension more), or that names another node of the unit (its CN
/// or a DNS name), as a rooted secondary would ask, is not signed; a certificate issued
/// with such a usage, name or URI is not returned.
#[allow(clippy::too_many_arguments)]
fn sign_for_node(
    client: &mut Client,
    signer: &Signer,
    profile: &Profile,
    node_id: &str,
    cert_type: &str,
    subject: &str,
    csr: &str,
    password: &Secret,
) -> Result<String> {
    use crate::pki::profile::{cert_claims, csr_claims};
    use rustls_pki_types::pem::PemObject;
    let unit_nodes = client.node_ids()?;
    let main = node_id == client.server_node_id;
    let csr_der = rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(csr.as_bytes())
        .map_err(|e| Error::invalid(format!("the CSR of {cert_type} is not PEM: {e}")))?;
    let asked = format!("the {cert_type} CSR");
    let wanted = csr_claims(csr_der.as_ref())?;
    x509::refuse_other_nodes(&asked, &wanted.node_names(), node_id, &unit_nodes)?;
    profile.check(&asked, &wanted, node_id, main, cert_type, Some(subject))?;
    let chain = signer.sign(client, node_id, cert_type, csr, password)?;
    let issued = format!("the {cert_type} certificate the signer issued");
    let mut said = cert_claims(x509::parse_chain_pem(&chain)?[0].as_ref())?;
    x509::refuse_other_nodes(&issued, &said.node_names(), node_id, &unit_nodes)?;
    // The CA's own extensions (policies, CRL distribution points…) are its business.
    said.other_extensions.clear();
    profile.check(&issued, &said, node_id, main, cert_type, None)?;
    Ok(chain)
}

/// What the factory half of zero-touch enrollment installs besides the bootstrap identity.
pub struct BootstrapOptions<'a> {
    /// The module of the bootstrap identity (`[enroll] bootstrap` of the node).
    pub bootstrap_type: &'a str,
    /// The EST server and its trust anchor (PEM) the node enrolls with on site; empty:
    /// those of the node's `[enroll]`.
    pub est_url: &'a str,
    pub anchor_pem: &'a str,
    /// Empty: none.
    pub claim_token: &'a Secret,
}

/// `iam-provision bootstrap`: start, the bootstrap key and its manufacturer certificate
/// signed by the factory CA, then FinishBootstrap; the node is left `unprovisioned`, ready
/// to ship. Run again after an interruption, a node whose bootstrap certificate is applied
/// is only finished.
pub fn bootstrap(
    client: &mut Client,
    signer: &Signer,
    opts: &RunOptions,
    b: &BootstrapOptions,
    progress: &mut dyn FnMut(&Step),
) -> Result<CertInfo> {
    let node_id = if opts.node_id.is_empty() {
        client.server_node_id.clone()
    } else {
        opts.node_id.to_string()
    };
    let status = client.status(&node_id)?;
    let state = status.state;
    if matches!(state, NodeState::Provisioned | NodeState::Paused | NodeState::Error) && !opts.deprovision_first {
        return Err(Error::wrong_state(format!(
            "node \"{node_id}\" is {}; pass --deprovision-first to bootstrap it again",
            state.name()
        )));
    }
    let applied = state == NodeState::Provisioning
        && status
            .modules
            .iter()
            .any(|m| m.cert_type == b.bootstrap_type && m.certificates > 0);
    let cert = if applied && !opts.deprovision_first {
        progress(&Step {
            name: format!("resuming: {} already applied", b.bootstrap_type),
            done: true,
        });
        client
            .list_certs(&node_id)?
            .into_iter()
            .find(|c| c.cert_type == b.bootstrap_type && c.current)
            .ok_or_else(|| Error::internal("the applied bootstrap certificate is not listed"))?
    } else {
        if opts.deprovision_first && state != NodeState::Unprovisioned {
            step(progress, "Deprovision".into(), &mut || {
                client.deprovision(&node_id, opts.password)
            })?;
        }
        step(progress, "StartProvisioning".into(), &mut || {
            client.start_provisioning(&node_id, opts.password)
        })?;
        certify(client, signer, opts, &node_id, b.bootstrap_type, progress)?
    };
    step(progress, "FinishBootstrap".into(), &mut || {
        client.finish_bootstrap(&node_id, opts.password, b.est_url, b.anchor_pem, b.claim_token)
    })?;
    Ok(cert)
}

fn finish(client: &mut Client, opts: &RunOptions, node_id: &str, progress: &mut dyn FnMut(&Step)) -> Result<()> {
    step(progress, "FinishProvisioning".into(), &mut || {
        client.finish_provisioning(node_id, opts.password)
    })
}

/// Renew one certificate of a provisioned node: a new key and its CSR, signed by `signer`,
/// applied (validated exactly as in provisioning). The old certificate stays current until
/// the new one is applied; beyond `max_items`, the oldest goes.
pub fn renew(
    client: &mut Client,
    signer: &Signer,
    profile: &Profile,
    node_id: &str,
    cert_type: &str,
    subject: &str,
    password: &Secret,
) -> Result<CertInfo> {
    let csr = client
        .create_key(node_id, cert_type, subject, password)
        .map_err(|e| e.context(format!("CreateKey {cert_type}")))?;
    let chain = sign_for_node(client, signer, profile, node_id, cert_type, subject, &csr, password)
        .map_err(|e| e.context(format!("Sign {cert_type}")))?;
    client
        .apply_cert(node_id, cert_type, &chain)
        .map_err(|e| e.context(format!("ApplyCert {cert_type}")))
}

/// How one node of a whole-unit run ended.
#[derive(Debug)]
pub struct NodeOutcome {
    pub node_id: String,
    pub main: bool,
    pub result: Result<Vec<CertInfo>>,
}

/// The nodes the main node knows: those connected now (the main node's id first) and those
/// known but not connected.
pub fn connected_nodes(client: &mut Client) -> Result<(Vec<String>, Vec<String>)> {
    let mut connected = Vec::new();
    let mut missing = Vec::new();
    for id in client.node_ids()? {
        if id == client.server_node_id || client.node_info(&id)?.connected {
            connected.push(id);
        } else {
            missing.push(id);
        }
    }
    Ok((connected, missing))
}

/// Wait (at most `wait`) until at least `expect` nodes, the main node included, are
/// connected; returns their ids, the main node's first.
pub fn wait_for_nodes(client: &mut Client, expect: usize, wait: Duration) -> Result<Vec<String>> {
    let deadline = Instant::now() + wait;
    loop {
        let (connected, missing) = connected_nodes(client)?;
        if connected.len() >= expect {
            return Ok(connected);
        }
        if Instant::now() >= deadline {
            let also = if missing.is_empty() {
                String::new()
            } else {
                format!("; known but not connected: {}", missing.join(", "))
            };
            return Err(Error::new(
                ErrorKind::Timeout,
                format!(
                    "{} of {expect} nodes connected after {} s ({}){also}",
                    connected.len(),
                    wait.as_secs(),
                    connected.join(", ")
                ),
            ));
        }
        std::thread::sleep(UNIT_POLL);
    }
}

/// How often [`wait_for_nodes`] looks again.
const UNIT_POLL: Duration = Duration::from_millis(200);

/// Provision every node of a unit through the main node: the main node up to its last
/// certificate; then, once `wait_nodes` returns the connected nodes (the main node's id
/// first), the secondaries in parallel, each up to its FinishProvisioning; then the main
/// node's FinishProvisioning — left undone, saying why, if any secondary failed.
/// `connect` opens a connection to the main node's protected socket (one per node, so they
/// run in parallel).
///
/// The main node comes first because a secondary that has its certificate links only in
/// TLS: after a cut in the middle of a run, the secondaries can link again only once the
/// main node has its link identity, so the run must not wait for them before that. And a
/// main node that has a verifier checks the password before any secondary is touched.
/// When the main node starts unprovisioned (it takes any password then) and nothing is
/// deprovisioned first, the secondaries connected already are provisioned alongside it,
/// so every core works from the start; those that connect later (one waiting in TLS for
/// the main node's identity among them) once the main node has its certificates.
pub fn run_unit(
    connect: &(dyn Fn() -> Result<Client> + Sync),
    main_id: &str,
    wait_nodes: &dyn Fn() -> Result<Vec<String>>,
    signer: &Signer,
    opts: &RunOptions,
    progress: &(dyn Fn(&str, &Step) + Sync),
) -> Result<Vec<NodeOutcome>> {
    let main = main_id;
    fn in_node(id: &str) -> impl Fn(Error) -> Error + '_ {
        move |e| e.context(format!("node {id}"))
    }
    // The main node up to its last certificate: its connection (FinishProvisioning uses
    // it too) and the certificates it got.
    let prepare_main = || -> Result<(Client, Vec<CertInfo>)> {
        let mut client = connect()?;
        let certs = prepare(&mut client, signer, opts, main, &mut |s| progress(main, s))?;
        Ok((client, certs))
    };
    // A secondary, finished too: its certificates.
    let secondary = |id: &str| -> Result<Vec<CertInfo>> {
        let mut client = connect()?;
        // The same command run again after a cut: a secondary that finished then is done,
        // so that the main node can finish now.
        if !opts.deprovision_first && client.status(id)?.state == NodeState::Provisioned {
            // What a run reports: the current certificates of the types a CA signs.
            let types = client.cert_types(id)?;
            let certs = client
                .list_certs(id)?
                .into_iter()
                .filter(|c| c.current && types.contains(&c.cert_type))
                .collect();
            let step = Step {
                name: "already provisioned".into(),
                done: true,
            };
            progress(id, &step);
            return Ok(certs);
        }
        let certs = prepare(&mut client, signer, opts, id, &mut |s| progress(id, s))?;
        finish(&mut client, opts, id, &mut |s| progress(id, s))?;
        Ok(certs)
    };
    let early: Vec<String> = {
        let mut client = connect()?;
        if !opts.deprovision_first && client.status(main)?.state == NodeState::Unprovisioned {
            connected_nodes(&mut client)?
                .0
                .into_iter()
                .filter(|id| id != main)
                .collect()
        } else {
            Vec::new()
        }
    };
    let secondary = &secondary;
    let (main_prepared, secondaries) = std::thread::scope(|scope| {
        let start = |id: String| {
            let h = scope.spawn({
                let id = id.clone();
                move || secondary(&id)
            });
            (id, h)
        };
        let mut started: Vec<_> = early.into_iter().map(start).collect();
        let main_prepared = prepare_main().map_err(in_node(main));
        // The others once the main node has its certificates; those started already are
        // joined whatever happens.
        let waited = match &main_prepared {
            Ok(_) => wait_nodes().map(|nodes| {
                let late: Vec<String> = nodes
                    .into_iter()
                    .filter(|id| id != main && !started.iter().any(|(s, _)| s == id))
                    .collect();
                started.extend(late.into_iter().map(start));
            }),
            Err(_) => Ok(()),
        };
        let secondaries: Vec<NodeOutcome> = started
            .into_iter()
            .map(|(id, h)| {
                let result = h
                    .join()
                    .unwrap_or_else(|_| Err(Error::internal("the provisioning thread panicked")))
                    .map_err(in_node(&id));
                NodeOutcome {
                    node_id: id,
                    main: false,
                    result,
                }
            })
            .collect();
        match waited {
            Ok(()) => Ok((main_prepared, secondaries)),
            // Those provisioned alongside the main node meanwhile are named: the run's one
            // error must not hide that they changed.
            Err(mut e) if !secondaries.is_empty() => {
                let done: Vec<String> = secondaries
                    .iter()
                    .map(|o| match &o.result {
                        Ok(_) => format!("{} provisioned", o.node_id),
                        Err(err) => format!("{} failed ({err})", o.node_id),
                    })
                    .collect();
                e.message = format!(
                    "{}; meanwhile, alongside the main node (left provisioning): {}",
                    e.message,
                    done.join(", ")
                );
                Err(e)
            }
            Err(e) => Err(e),
        }
    })?;
    let failed: Vec<&str> = secondaries
        .iter()
        .filter(|o| o.result.is_err())
        .map(|o| o.node_id.as_str())
        .collect();
    let main_result = main_prepared.and_then(|(mut client, certs)| {
        if !failed.is_empty() {
            return Err(Error::wrong_state(format!(
                "node {main}: not finished, because secondary node(s) {} failed; its certificates are applied and it is still provisioning — run again once they are fixed",
                failed.join(", ")
            )));
        }
        finish(&mut client, opts, main, &mut |s| progress(main, s)).map_err(in_node(main))?;
        Ok(certs)
    });
    let mut outcomes = vec![NodeOutcome {
        node_id: main.to_string(),
        main: true,
        result: main_result,
    }];
    outcomes.extend(secondaries);
    Ok(outcomes)
}
