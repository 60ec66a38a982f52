#![allow(dead_code)]
//! One request of every type, as the tests send them: the fuzz seed corpora and the
//! decoding allocation test start from these (included by path from `fuzz/` too).

use aos_iam::error::{Error, ErrorKind};
use aos_iam::proto::wire::{
    CertCheck, CertInfo, CpuInfo, EnrollState, EnrollmentStatus, Event, InstanceIdent, InstanceKind, ModuleStatus,
    NodeInfo, NodeState, PartitionInfo, ProvisioningStatus, Request, Response, Role, ServerPermissions,
};
use aos_iam::secret::Secret;

pub fn node_info() -> NodeInfo {
    NodeInfo {
        node_id: "node-sec1".into(),
        node_type: "secondary".into(),
        name: "second node".into(),
        state: NodeState::Unprovisioned,
        cpus: vec![CpuInfo {
            model: "QEMU Virtual CPU".into(),
            cores: 2,
            threads: 2,
            architecture: "x86_64".into(),
        }],
        total_ram: 256 << 20,
        partitions: vec![PartitionInfo {
            name: "storages".into(),
            types: vec!["storages".into(), "state".into()],
            path: "/var/aos".into(),
            total_size: 1 << 30,
        }],
        os_name: "Linux".into(),
        os_version: "6.1".into(),
        attributes: vec![("MainNode".into(), String::new())],
        connected: true,
    }
}

pub fn requests() -> Vec<Request> {
    let node = || "node-main".to_string();
    let secret = || Secret::new("factory-secret".into());
    let instance = InstanceIdent {
        item_id: "service1".into(),
        subject_id: "subject1".into(),
        instance: 0,
        kind: InstanceKind::Service,
    };
    vec![
        Request::Hello {
            version: aos_iam::PROTOCOL_VERSION,
            min_version: aos_iam::MIN_PROTOCOL_VERSION,
            role: Role::Client,
            node_id: String::new(),
        },
        Request::Hello {
            version: aos_iam::PROTOCOL_VERSION,
            min_version: aos_iam::MIN_PROTOCOL_VERSION,
            role: Role::NodeLink,
            node_id: "node-sec1".into(),
        },
        Request::Version,
        Request::GetNodeInfo { node_id: node() },
        Request::GetAllNodeIds,
        Request::GetCert {
            cert_type: "iam".into(),
            issuer: Some(vec![0x30, 0x10, 0x31, 0x0e]),
            serial: Some(vec![1, 2, 3, 4]),
        },
        Request::ListCerts { node_id: node() },
        Request::GetProvisioningStatus { node_id: node() },
        Request::GetCertTypes { node_id: node() },
        Request::StartProvisioning {
            node_id: node(),
            password: secret(),
        },
        Request::CreateKey {
            node_id: node(),
            cert_type: "online".into(),
            subject: "CN=node-main,OU=online".into(),
            password: secret(),
        },
        Request::ApplyCert {
            node_id: node(),
            cert_type: "online".into(),
            chain_pem: "-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n".into(),
        },
        Request::FinishProvisioning {
            node_id: node(),
            password: secret(),
        },
        Request::Deprovision {
            node_id: node(),
            password: secret(),
        },
        Request::RegisterInstance {
            instance: instance.clone(),
            permissions: vec![ServerPermissions {
                server: "vis".into(),
                entries: vec![("*".into(), "rw".into())],
            }],
        },
        Request::UnregisterInstance {
            instance: instance.clone(),
        },
        Request::GetPermissions {
            secret: Secret::new("0123456789abcdef".into()),
            functional_server_id: "vis".into(),
        },
        Request::GetSystemInfo,
        Request::GetSubjects,
        Request::SubscribeSubjectsChanged,
        Request::SubscribeNodeChanged,
        Request::SubscribeCertChanged {
            cert_type: "iam".into(),
        },
        Request::PauseNode { node_id: node() },
        Request::ResumeNode { node_id: node() },
        Request::CheckCerts { node_id: node() },
        Request::GetLinkIdentity,
        Request::SignWithLinkIdentity {
            serial: vec![1, 2, 3],
            message: vec![0; 64],
        },
        Request::RegisterNode { info: node_info() },
        Request::NodeInfoChanged { info: node_info() },
        Request::ForgetNode { node_id: node() },
        Request::FinishBootstrap {
            node_id: node(),
            password: secret(),
            est_url: "https://est.example:8443/.well-known/est".into(),
            anchor_pem: "-----BEGIN CERTIFICATE-----\nMA==\n-----END CERTIFICATE-----\n".into(),
            claim_token: Secret::new("claim-1234".into()),
        },
        Request::ReleaseQuarantine {
            node_id: node(),
            password: secret(),
        },
        Request::GetEnrollmentStatus { node_id: node() },
        Request::ScepEnroll {
            node_id: node(),
            cert_type: "online".into(),
            csr_pem: "-----BEGIN CERTIFICATE REQUEST-----\nMA==\n-----END CERTIFICATE REQUEST-----\n".into(),
            url: "http://scep.example:8080/scep".into(),
            ca_fingerprint: "ab".repeat(32),
            challenge: Secret::new("scep-challenge".into()),
            password: secret(),
        },
        Request::GetLinkChain,
        Request::RenewNow {
            node_id: node(),
            cert_type: "online".into(),
        },
        Request::TunnelOpen {
            endpoint: "est.example:8443".into(),
        },
        Request::TunnelData {
            tunnel: 3,
            data: vec![0x16, 0x03, 0x01, 0x00, 0x05],
        },
        Request::TunnelClose { tunnel: 3 },
        Request::GetCrl,
        Request::SubscribeAlerts,
    ]
}

pub fn cert_info() -> CertInfo {
    CertInfo {
        cert_type: "iam".into(),
        issuer: "CN=Unit Root".into(),
        issuer_der: vec![0x30, 0x15, 0x31, 0x13],
        serial: vec![0x01, 0xa2],
        subject: "CN=node-main, OU=iam".into(),
        not_before: 1_764_547_200,
        not_after: 1_796_083_200,
        cert_url: "pkcs11:token=aos;object=iam;id=%01%02;type=cert".into(),
        key_url: "pkcs11:token=aos;object=iam;id=%01%02;type=private".into(),
        current: true,
    }
}

/// One response of every type.
pub fn responses() -> Vec<Response> {
    let instance = InstanceIdent {
        item_id: "service1".into(),
        subject_id: "subject1".into(),
        instance: 3,
        kind: InstanceKind::Component,
    };
    vec![
        Response::Hello {
            version: 1,
            node_id: "node-main".into(),
        },
        Response::Version {
            version: "0.1.0".into(),
            protocol: 1,
        },
        Response::NodeInfo(node_info()),
        Response::NodeIds(vec!["node-main".into(), "node-sec1".into()]),
        Response::Cert(cert_info()),
        Response::Certs(vec![cert_info()]),
        Response::Status(ProvisioningStatus {
            node_id: "node-main".into(),
            state: NodeState::Provisioned,
            provisioning_mode: false,
            modules: vec![ModuleStatus {
                cert_type: "iam".into(),
                needs_ca: true,
                pending_key: false,
                certificates: 1,
            }],
        }),
        Response::CertTypes(vec!["iam".into(), "online".into()]),
        Response::Csr {
            pem: "-----BEGIN CERTIFICATE REQUEST-----\nMAA=\n-----END CERTIFICATE REQUEST-----\n".into(),
        },
        Response::Applied(cert_info()),
        Response::Done,
        Response::Secret(Secret::new("hvdV_ncivtZYAghfBy4wLEcqtUpNu5Zj".into())),
        Response::Permissions {
            instance,
            entries: vec![("read".into(), "yes".into())],
        },
        Response::SystemInfo {
            system_id: "unit-0001".into(),
            unit_model: "model-a;1.0".into(),
            version: "0.1.0".into(),
        },
        Response::Subjects(vec!["subject1".into()]),
        Response::Subscribed,
        Response::LinkIdentity {
            cert_der: vec![0x30, 0x82, 0x01, 0x00],
            algorithm: "ecdsa-p384".into(),
            serial: vec![7],
        },
        Response::Signature(vec![0x30, 0x44, 0x02, 0x20]),
        Response::CertChecks(vec![CertCheck {
            info: cert_info(),
            chain_error: String::new(),
            key_present: true,
            cert_present: true,
        }]),
        Response::Enrollment(EnrollmentStatus {
            node_id: "node-main".into(),
            state: EnrollState::Quarantined,
            step: "enroll online: certificate requested".into(),
            attempts: 5,
            max_attempts: 5,
            next_attempt: 0,
            last_error: "EST server est.example:8443: connection refused".into(),
            reason: "5 attempts failed".into(),
            since: 1_790_000_000,
            enrolled: vec!["iam".into()],
        }),
        Response::Chain {
            pem: "-----BEGIN CERTIFICATE-----\nMA==\n-----END CERTIFICATE-----\n".into(),
        },
        Response::LinkChain {
            chain: vec![vec![0x30, 0x82, 0x01, 0x00], vec![0x30, 0x82, 0x02, 0x00]],
            algorithm: "ecdsa-p256".into(),
            serial: vec![7],
        },
        Response::TunnelOpened { tunnel: 3 },
        Response::Crl {
            crls: vec![vec![0x30, 0x82, 0x01, 0x10], vec![0x30, 0x81, 0x90]],
        },
    ]
}

/// One event of every type.
pub fn events() -> Vec<Event> {
    vec![
        Event::SubjectsChanged(vec!["subject1".into()]),
        Event::NodeChanged(node_info()),
        Event::CertChanged {
            cert_type: "iam".into(),
            current: Some(cert_info()),
        },
        Event::CertChanged {
            cert_type: "online".into(),
            current: None,
        },
        Event::Alert(aos_iam::proto::wire::Alert {
            kind: aos_iam::proto::wire::AlertKind::CertWarning,
            node_id: "node-main".into(),
            cert_type: "iam".into(),
            serial: vec![0x01, 0xa2],
            not_after: 1_796_083_200,
            message: "the iam certificate 01a2 expires in 29 day(s) (warning threshold: 30 days)".into(),
        }),
        Event::Alert(aos_iam::proto::wire::Alert {
            kind: aos_iam::proto::wire::AlertKind::Quarantined,
            node_id: "node-main".into(),
            cert_type: String::new(),
            serial: vec![],
            not_after: 0,
            message: "the node is quarantined: enrollment failed 6 times".into(),
        }),
    ]
}

/// One error of every kind.
pub fn errors() -> Vec<Error> {
    [
        ErrorKind::NotFound,
        ErrorKind::InvalidArgument,
        ErrorKind::WrongState,
        ErrorKind::Unauthorized,
        ErrorKind::Timeout,
        ErrorKind::Unavailable,
        ErrorKind::KeyStore("CKR_PIN_INCORRECT".into()),
        ErrorKind::Validation("UnknownIssuer".into()),
        ErrorKind::Protocol,
        ErrorKind::Internal,
    ]
    .into_iter()
    .map(|kind| Error::new(kind, "what went wrong"))
    .collect()
}
