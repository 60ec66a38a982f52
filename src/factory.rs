//! The whole provisioning flow a factory station drives, as `iam-provision run` does it.
//!
//! Start, list the certificate types, then for each: create a key, get its CSR signed,
//! apply the chain; finish. It talks only through the [`Client`], so it works against any
//! iamd, and re-running it after an interruption converges (StartProvisioning wipes first).

use crate::client::Client;
use crate::error::{Error, Result};
use crate::secret::Secret;
use crate::signer::CsrSigner;
use crate::wire::{CertInfo, NodeState};

/// Default subject template: `{node}` is the node id, `{type}` the certificate type.
pub const DEFAULT_SUBJECT: &str = "CN={node},OU={type}";

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
    let mut step = |name: String, f: &mut dyn FnMut() -> Result<()>| -> Result<()> {
        progress(&Step {
            name: name.clone(),
            done: false,
        });
        f().map_err(|e| e.context(&name))?;
        progress(&Step { name, done: true });
        Ok(())
    };

    let state = client.status(&node_id)?.state;
    if matches!(state, NodeState::Provisioned | NodeState::Paused) {
        if !opts.deprovision_first {
            return Err(Error::wrong_state(format!(
                "node \"{node_id}\" is already {}; pass --deprovision-first to provision it again",
                state.name()
            )));
        }
        step("Deprovision".into(), &mut || {
            client.deprovision(&node_id, opts.password)
        })?;
    }
    step("StartProvisioning".into(), &mut || {
        client.start_provisioning(&node_id, opts.password)
    })?;
    let mut types = Vec::new();
    step("GetCertTypes".into(), &mut || {
        types = client.cert_types(&node_id)?;
        Ok(())
    })?;
    let mut applied = Vec::new();
    for t in &types {
        let mut csr = String::new();
        let subject = subject_for(opts.subject_template, &node_id, t);
        step(format!("CreateKey {t}"), &mut || {
            csr = client.create_key(&node_id, t, &subject, opts.password)?;
            Ok(())
        })?;
        let mut chain = String::new();
        step(format!("Sign {t}"), &mut || {
            chain = signer.sign(t, &csr)?;
            Ok(())
        })?;
        step(format!("ApplyCert {t}"), &mut || {
            applied.push(client.apply_cert(&node_id, t, &chain)?);
            Ok(())
        })?;
    }
    step("FinishProvisioning".into(), &mut || {
        client.finish_provisioning(&node_id, opts.password)
    })?;
    Ok(applied)
}
