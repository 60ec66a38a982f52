//! One request of every type, as the tests send them: the fuzz seed corpora and the
//! decoding allocation test start from these (included by path from `fuzz/` too).

use aos_iam::proto::wire::{
    CpuInfo, InstanceIdent, InstanceKind, NodeInfo, NodeState, PartitionInfo, Request, Role, ServerPermissions,
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
            role: Role::Client,
            node_id: String::new(),
        },
        Request::Hello {
            version: aos_iam::PROTOCOL_VERSION,
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
    ]
}
