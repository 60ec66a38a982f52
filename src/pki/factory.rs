//! The whole provisioning flow a factory station drives, as `iam-provision run` does it.
//!
//! Start, list the certificate types, then for each: create a key, get its CSR signed,
//! apply the chain; finish. It talks only through the [`Client`], so it works against any
//! iamd, and re-running it after an interruption converges: a node part-way through is
//! resumed from the certificates it has, otherwise StartProvisioning wipes first.
//! [`run_unit`] does the same for every node of a unit through its main node.

use crate::error::{Error, ErrorKind, Result};
use crate::pki::signer::CsrSigner;
use crate::proto::client::Client;
use crate::proto::wire::{CertInfo, NodeState};
use crate::secret::Secret;
use std::time::{Duration, Instant};

pub use crate::config::DEFAULT_SUBJECT;

pub struct RunOptions<'a> {
    pub node_id: &'a str,
    pub password: &'a Secret,
    pub subject_template: &'a str,
    pub deprovision_first: bool,
}

/// One step of the flow, reported as it begins (`done == false`) and ends.
#[derive(Debug, Clone)]
pub struct Step {
    pub name: String,
    pub done: bool,
}

pub fn subject_for(template: &str, node_id: &str, cert_type: &str) -> String {
    template.replace("{node}", node_id).replace("{type}", cert_type)
}

pub fn run(
    client: &mut Client,
    signer: &dyn CsrSigner,
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
    signer: &dyn CsrSigner,
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
    signer: &dyn CsrSigner,
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
        chain = signer.sign_on(client, node_id, t, &csr, opts.password)?;
        Ok(())
    })?;
    let mut cert = None;
    step(progress, format!("ApplyCert {t}"), &mut || {
        cert = Some(client.apply_cert(node_id, t, &chain)?);
        Ok(())
    })?;
    cert.ok_or_else(|| Error::internal("ApplyCert gave nothing"))
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
    signer: &dyn CsrSigner,
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
    signer: &dyn CsrSigner,
    node_id: &str,
    cert_type: &str,
    subject: &str,
    password: &Secret,
) -> Result<CertInfo> {
    let csr = client
        .create_key(node_id, cert_type, subject, password)
        .map_err(|e| e.context(format!("CreateKey {cert_type}")))?;
    let chain = signer
        .sign_on(client, node_id, cert_type, &csr, password)
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

/// Wait (at most `wait`) until at least `expect` nodes, the main node included, are
/// connected; returns their ids, the main node's first.
pub fn wait_for_nodes(client: &mut Client, expect: usize, wait: Duration) -> Result<Vec<String>> {
    let deadline = Instant::now() + wait;
    loop {
        let mut connected = Vec::new();
        let mut missing = Vec::new();
        for id in client.node_ids()? {
            if id == client.server_node_id || client.node_info(&id)?.connected {
                connected.push(id);
            } else {
                missing.push(id);
            }
        }
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
/// first), the secondaries in parallel; then FinishProvisioning on each secondary, then on
/// the main node — which is left unfinished, and says why, if any secondary failed.
/// `connect` opens a connection to the main node's protected socket (one per node, so they
/// run in parallel).
///
/// The main node comes first because a secondary that has its certificate links only in
/// TLS: after a cut in the middle of a run, the secondaries can link again only once the
/// main node has its link identity, so the run must not wait for them before that.
pub fn run_unit(
    connect: &(dyn Fn() -> Result<Client> + Sync),
    main_id: &str,
    wait_nodes: &dyn Fn() -> Result<Vec<String>>,
    signer: &(dyn CsrSigner + Sync),
    opts: &RunOptions,
    progress: &(dyn Fn(&str, &Step) + Sync),
) -> Result<Vec<NodeOutcome>> {
    let main_id = main_id.to_string();
    // Per node: the connection that prepared it (FinishProvisioning uses it too), the
    // certificates it got, and whether it was provisioned already.
    type Prepared = Result<(Client, Vec<CertInfo>, bool)>;
    let main = main_id.as_str();
    let prepare_node = |id: &String| -> Prepared {
        let mut client = connect()?;
        // The same command run again after a cut: a secondary that finished then
        // is done, so that the main node can finish now.
        if id != main && !opts.deprovision_first && client.status(id)?.state == NodeState::Provisioned {
            // What a run reports: the current certificates of the types a CA signs.
            let types = client.cert_types(id)?;
            let certs = client
                .list_certs(id)?
                .into_iter()
                .filter(|c| c.current && types.contains(&c.cert_type))
                .collect();
            progress(
                id,
                &Step {
                    name: "already provisioned".into(),
                    done: true,
                },
            );
            return Ok((client, certs, true));
        }
        let certs = prepare(&mut client, signer, opts, id, &mut |s| progress(id, s))?;
        Ok((client, certs, false))
    };
    let with_context = |id: &String, r: Prepared| (id.clone(), r.map_err(|e: Error| e.context(format!("node {id}"))));
    let mut prepared: Vec<(String, Prepared)> = vec![with_context(&main_id, prepare_node(&main_id))];
    if prepared[0].1.is_ok() {
        let nodes = wait_nodes()?;
        let secondaries: Vec<&String> = nodes.iter().filter(|id| *id != main).collect();
        prepared.extend(std::thread::scope(|scope| {
            let handles: Vec<_> = secondaries.iter().map(|id| scope.spawn(|| prepare_node(id))).collect();
            secondaries
                .into_iter()
                .zip(handles)
                .map(|(id, h)| {
                    let r = h
                        .join()
                        .unwrap_or_else(|_| Err(Error::internal("the provisioning thread panicked")));
                    with_context(id, r)
                })
                .collect::<Vec<_>>()
        }));
    }
    let mut outcomes = Vec::new();
    let mut main_prepared = None;
    let mut failed_secondaries = Vec::new();
    for (id, r) in prepared {
        if id == main_id {
            main_prepared = Some(r);
            continue;
        }
        let result = r.and_then(|(mut client, certs, already)| {
            if !already {
                finish(&mut client, opts, &id, &mut |s| progress(&id, s))
                    .map_err(|e| e.context(format!("node {id}")))?;
            }
            Ok(certs)
        });
        if result.is_err() {
            failed_secondaries.push(id.clone());
        }
        outcomes.push(NodeOutcome {
            node_id: id,
            main: false,
            result,
        });
    }
    if let Some(r) = main_prepared {
        let result = r.and_then(|(mut client, certs, _)| {
            if !failed_secondaries.is_empty() {
                return Err(Error::wrong_state(format!(
                    "node {main_id}: not finished, because secondary node(s) {} failed; its certificates are applied and it is still provisioning — run again once they are fixed",
                    failed_secondaries.join(", ")
                )));
            }
            finish(&mut client, opts, &main_id, &mut |s| progress(&main_id, s))
                .map_err(|e| e.context(format!("node {main_id}")))?;
            Ok(certs)
        });
        outcomes.insert(
            0,
            NodeOutcome {
                node_id: main_id,
                main: true,
                result,
            },
        );
    }
    Ok(outcomes)
}
