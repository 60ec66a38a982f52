//! Requests dispatched to the modules: the socket they may come on, forwarding to other
//! nodes, and the answer of each operation (on a blocking thread).

use super::*;

/// A request's answer, as a future that holds only what it waits for.
pub(super) type Answer = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response>> + Send>>;

/// The answer to `request`: refused here, forwarded to another node, or served on a blocking
/// thread. Not an `async fn`, whose state would hold every branch's state (the
/// link's, the request beside the closure that holds it too) for every request in flight.
/// `gone` is set when the client goes (see [`provisioning::for_client`]).
pub(super) fn dispatch(
    request: Request,
    socket: Socket,
    uid: u32,
    shared: Arc<Shared>,
    gone: Arc<connections::Gone>,
) -> Answer {
    if let Err(e) =
        admissible(&request, socket, uid, &shared.prov.config).and_then(|()| names_its_node(&request, &shared))
    {
        return Box::pin(std::future::ready(Err(e)));
    }
    // Another node's request: its info from the registry, everything else over its link.
    match (&request, request.target_node()) {
        (Request::GetNodeInfo { node_id }, _) if shared.nodes.is_other(node_id) => {
            return Box::pin(std::future::ready(shared.nodes.info(node_id).map(Response::NodeInfo)))
        }
        (_, Some(node_id)) if shared.nodes.is_other(node_id) => {
            let node_id = node_id.to_string();
            let mut request = request;
            // A secondary is given its own secret, never the unit's password.
            if let Some(password) = request.password_mut() {
                *password = crate::secret::node_secret(password, &shared.prov.config.unit_id, &node_id);
            }
            return Box::pin(async move { shared.nodes.forward(&node_id, request).await });
        }
        _ => {}
    }
    // Started here, not when polled: a password's attempt, which must wait for its turn
    // first, is dispatched only in its turn (see `Conn::on_frame`).
    Box::pin(blocking::unblock(move || {
        provisioning::for_client(gone, || handle(&shared, request))
    }))
}

/// On the main node, a certificate applied to a node of the unit (itself, or a secondary
/// through its link) must not name another node of the unit: whatever signed it, a
/// secondary holding the main node's name, or another secondary's, would be accepted as
/// that node on the links.
fn names_its_node(request: &Request, shared: &Shared) -> Result<()> {
    let Request::ApplyCert { node_id, chain_pem, .. } = request else {
        return Ok(());
    };
    if shared.prov.config.role != crate::config::Role::Main {
        return Ok(());
    }
    let leaf = crate::pki::x509::parse_chain_pem(chain_pem).and_then(|c| crate::pki::profile::cert_claims(&c[0]));
    let Ok(names) = leaf.map(|c| c.node_names()) else {
        // The node itself refuses it, naming why.
        return Ok(());
    };
    let target = match node_id.is_empty() {
        true => shared.prov.config.node_id.as_str(),
        false => node_id.as_str(),
    };
    crate::pki::x509::refuse_other_nodes("the certificate", &names, target, &shared.nodes.ids())
}

/// Whether `request` may be asked on `socket` by `uid` at all.
pub(super) fn admissible(request: &Request, socket: Socket, uid: u32, config: &Config) -> Result<()> {
    if request.is_protected() && socket != Socket::Protected {
        return Err(Error::unauthorized(format!(
            "{} is served on the protected socket only",
            request.name()
        )));
    }
    if let Request::SignWithLinkIdentity { message, .. } = request {
        may_sign_for_link(config, uid, message)?;
    }
    if request.is_link_only() {
        return Err(Error::protocol(format!(
            "{} is served on node links only",
            request.name()
        )));
    }
    Ok(())
}

/// SignWithLinkIdentity is no signing oracle: it is served only on a secondary node (the
/// main node makes no links), only to root and `links.signer_uids` (iam-nodelink), and only
/// for what a TLS 1.3 client CertificateVerify signs.
pub(super) fn may_sign_for_link(config: &Config, uid: u32, message: &[u8]) -> Result<()> {
    if config.role != crate::config::Role::Secondary {
        return Err(Error::unauthorized(
            "SignWithLinkIdentity is not served on the main node: it makes no links",
        ));
    }
    if uid != 0 && !config.links.signer_uids.contains(&uid) {
        return Err(Error::unauthorized(format!(
            "SignWithLinkIdentity: uid {uid} is not the link's user (links.signer_uids)"
        )));
    }
    if !crate::pki::tls::is_client_certificate_verify(message) {
        return Err(Error::unauthorized(
            "SignWithLinkIdentity signs only a TLS 1.3 client CertificateVerify",
        ));
    }
    Ok(())
}

/// Answer one request (on a blocking thread).
pub(super) fn handle(shared: &Shared, request: Request) -> Result<Response> {
    let prov = &shared.prov;
    let op = request.name();
    if request.serves_identity() {
        prov.serving_identity()?;
    }
    let changes_node = request.changes_node_state();
    let changes_certs = request.changes_certs();
    let r = match request {
        Request::Hello { .. } => Err(Error::protocol("Hello was already exchanged")),
        Request::Version => Ok(Response::Version {
            version: crate::VERSION.into(),
            protocol: crate::PROTOCOL_VERSION,
        }),
        Request::GetNodeInfo { node_id } => prov.node_info(&node_id).map(Response::NodeInfo),
        Request::GetAllNodeIds => Ok(Response::NodeIds(shared.nodes.ids())),
        Request::GetCert {
            cert_type,
            issuer,
            serial,
        } => prov
            .modules
            .get_cert(&prov.db, &cert_type, issuer.as_deref(), serial.as_deref())
            .map(Response::Cert),
        Request::ListCerts { node_id } => prov.list_certs(&node_id).map(Response::Certs),
        Request::CheckCerts { node_id } => prov.check_certs(&node_id).map(Response::CertChecks),
        Request::GetProvisioningStatus { node_id } => prov.status(&node_id).map(Response::Status),
        Request::GetCertTypes { node_id } => prov.cert_types(&node_id).map(Response::CertTypes),
        Request::StartProvisioning { node_id, password } => prov.start(&node_id, &password).map(|_| Response::Done),
        Request::CreateKey {
            node_id,
            cert_type,
            subject,
            password,
        } => prov
            .create_key(&node_id, &cert_type, &subject, &password)
            .map(|pem| Response::Csr { pem }),
        Request::ApplyCert {
            node_id,
            cert_type,
            chain_pem,
        } => prov.apply(&node_id, &cert_type, &chain_pem).map(Response::Applied),
        Request::FinishProvisioning { node_id, password } => prov.finish(&node_id, &password).map(|_| Response::Done),
        Request::Deprovision { node_id, password } => prov.deprovision(&node_id, &password).and_then(|_| {
            // The main node starts over: nodes whose links are down are forgotten.
            shared.nodes.forget_disconnected(&prov.db).map(|_| Response::Done)
        }),
        Request::FinishBootstrap {
            node_id,
            password,
            est_url,
            anchor_pem,
            claim_token,
        } => prov
            .finish_bootstrap(&node_id, &password, &est_url, &anchor_pem, &claim_token)
            .map(|_| Response::Done),
        Request::ReleaseQuarantine { node_id, password } => prov.release_quarantine(&node_id, &password).map(|_| {
            let _ = shared.enroll_wake.0.try_send(());
            Response::Done
        }),
        Request::GetEnrollmentStatus { node_id } => {
            prov.check_node_id(&node_id)?;
            crate::daemon::enroll::status(prov).map(Response::Enrollment)
        }
        Request::ScepEnroll {
            node_id,
            cert_type,
            csr_pem,
            url,
            ca_fingerprint,
            challenge,
            password,
        } => {
            let ca_fingerprint = crate::codec::Fingerprint::parse_given("the SCEP CA fingerprint", &ca_fingerprint)?;
            let config = crate::pki::scep::ScepConfig {
                url,
                route: crate::pki::dial::Route::of(&prov.config),
                ca_fingerprint,
                challenge: (!challenge.expose().is_empty()).then_some(challenge),
                timeout: crate::config::ScepSettings::DEFAULT_TIMEOUT,
                poll_for: crate::config::ScepSettings::DEFAULT_POLL_FOR,
                poll_every: crate::config::ScepSettings::DEFAULT_POLL_EVERY,
                crls: crate::pki::x509::read_crls(&prov.config.crl_files())?,
                allow_des3: prov.config.scep_allow_des3,
            };
            prov.scep_enroll(&node_id, &cert_type, &csr_pem, &config, &password)
                .map(|pem| Response::Chain { pem })
        }
        Request::PauseNode { node_id } => prov.pause(&node_id).map(|_| Response::Done),
        Request::ResumeNode { node_id } => prov.resume(&node_id).map(|_| Response::Done),
        Request::RegisterInstance { instance, permissions } => shared
            .permissions
            .register(&prov.db, instance, permissions)
            .map(Response::Secret),
        Request::UnregisterInstance { instance } => shared
            .permissions
            .unregister(&prov.db, &instance)
            .map(|_| Response::Done),
        Request::GetPermissions {
            secret,
            functional_server_id,
        } => shared
            .permissions
            .get(&secret, &functional_server_id)
            .map(|(instance, entries)| Response::Permissions { instance, entries }),
        Request::GetSystemInfo => {
            shared
                .identity
                .system_info()
                .map(|(system_id, unit_model, version)| Response::SystemInfo {
                    system_id,
                    unit_model,
                    version,
                })
        }
        Request::GetSubjects => Ok(Response::Subjects(shared.identity.subjects())),
        Request::SubscribeSubjectsChanged
        | Request::SubscribeNodeChanged
        | Request::SubscribeCertChanged { .. }
        | Request::SubscribeAlerts => Err(Error::internal("subscriptions are served by the connection")),
        Request::RegisterNode { .. }
        | Request::NodeInfoChanged { .. }
        | Request::TunnelOpen { .. }
        | Request::TunnelData { .. }
        | Request::TunnelClose { .. }
        | Request::GetCrl => Err(Error::internal("node links are served by the link listeners")),
        Request::ForgetNode { node_id } => shared.nodes.forget(&prov.db, &node_id).map(|_| Response::Done),
        Request::GetLinkIdentity => {
            prov.modules
                .identity(&prov.db, &prov.config.links.identity)
                .map(|(cert_der, serial, id)| Response::LinkIdentity {
                    cert_der,
                    algorithm: id.algorithm.name().into(),
                    serial,
                })
        }
        Request::GetLinkChain => {
            prov.modules
                .identity(&prov.db, &prov.config.links.identity)
                .map(|(cert_der, serial, id)| Response::LinkChain {
                    chain: std::iter::once(cert_der).chain(id.intermediates).collect(),
                    algorithm: id.algorithm.name().into(),
                    serial,
                })
        }
        Request::RenewNow { node_id, cert_type } => {
            crate::daemon::renewal::renew_now(prov, &node_id, &cert_type).map(Response::Applied)
        }
        Request::SignWithLinkIdentity { serial, message } => prov
            .modules
            .sign_with(&prov.db, &prov.config.links.identity, &serial, &message)
            .map(Response::Signature),
    };
    if r.is_ok() {
        crate::log_info!("{op}: done");
        if changes_certs {
            shared.publish_cert_changes();
        }
        if changes_node {
            match prov.node_info("") {
                Ok(info) => shared.nodes.events.send(info),
                Err(e) => crate::log_warn!("node info for subscribers: {e}"),
            }
        }
    }
    r
}
