//! Writes the seed corpora for every fuzz target into DIR/TARGET/: frames of every request
//! type (the tests' requests), the configurations the tests and the Yocto layer use, a
//! valid chain with its root, CSR subjects, an EST PKCS#7 answer, SCEP's HTTP answers and
//! CRLs.
//!
//! Usage: seeds DIR

use std::path::Path;

use aos_iam::proto::wire::{self, FrameKind, Response, DEFAULT_BODY_LIMIT};
use aos_iam_fuzz::{CHAIN_SEPARATOR, FLAG_HELLO, FLAG_PROTECTED};

#[path = "../../tests/common/samples.rs"]
mod samples;

fn write(dir: &Path, target: &str, name: &str, bytes: &[u8]) {
    let d = dir.join(target);
    std::fs::create_dir_all(&d).expect("seed directory");
    std::fs::write(d.join(name), bytes).expect("seed file");
}

fn main() {
    let dir = std::env::args().nth(1).expect("usage: seeds DIR");
    let dir = Path::new(&dir);

    for (i, r) in samples::requests().iter().enumerate() {
        let frame = wire::encode_frame(FrameKind::Request, i as u64 + 2, r, DEFAULT_BODY_LIMIT).unwrap();
        write(dir, "frame_decode", &format!("request-{i:02}-{}", r.name()), &frame);
        for flags in [FLAG_HELLO, FLAG_HELLO | FLAG_PROTECTED] {
            let mut input = vec![flags];
            input.extend_from_slice(&frame);
            write(dir, "frame_server", &format!("{flags}-{i:02}-{}", r.name()), &input);
        }
        write(
            dir,
            "frame_server",
            &format!("0-{i:02}-{}", r.name()),
            &[&[0][..], &frame].concat(),
        );
    }
    let responses = [
        Response::Done,
        Response::NodeIds(vec!["node-main".into(), "node-sec1".into()]),
        Response::NodeInfo(samples::node_info()),
    ];
    for (i, r) in responses.iter().enumerate() {
        let frame = wire::encode_frame(FrameKind::Response, 1, r, DEFAULT_BODY_LIMIT).unwrap();
        write(dir, "frame_decode", &format!("response-{i}"), &frame);
    }

    let layer = include_str!("../../meta-aos-iam/recipes-security/aos-iam/files/config.toml")
        .replace("@NODE_TYPE@", "main")
        .replace("@NODE_NAME@", "node")
        .replace("@PKCS11_LIBRARY@", "/usr/lib/softhsm/libsofthsm2.so")
        .replace("@TOKEN_LABEL@", "aos");
    write(dir, "config", "layer.toml", layer.as_bytes());
    let rich = "[node]\nid_file = \"/etc/node-id\"\nrole = \"secondary\"\n[paths]\nworking_dir = \"/var/aos/iam\"\n\
        root_ca = \"/etc/ca.pem\"\n[links]\nconnect = \"vsock:2:8089\"\ntls = \"required\"\n\
        [limits]\nframe_timeout = 5\nwrite_timeout = 5\nmax_connections = 10\n[reconcile]\ninterval = 60\n\
        [permissions]\npersist = true\nmax_instances = 100\n[identity]\nsubjects_file = \"/etc/subjects\"\n\
        [hooks]\nfinish = [\"sh\", \"-c\", \"true\"]\n\
        [[modules]]\nid = \"iam\"\nalgorithm = \"ecdsa-p384\"\nextended_key_usage = [\"clientAuth\", \"serverAuth\"]\n\
        [modules.pkcs11]\nlibrary = \"/usr/lib/softhsm/libsofthsm2.so\"\ntoken_label = \"aos\"\n\
        [modules.renew]\nmethod = \"est\"\nthreshold = \"50%\"\nretry = \"1s\"\njitter = \"0%\"\n\
        [modules.renew.est]\nurl = \"https://est.example:8443/.well-known/est\"\nanchor = \"/etc/est.pem\"\n";
    write(dir, "config", "rich.toml", rich.as_bytes());

    // A root, an intermediate and a clientAuth leaf, as a CA hands them out.
    let root_key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.distinguished_name.push(rcgen::DnType::CommonName, "fuzz root");
    let root = p.self_signed(&root_key).unwrap();
    let root_issuer = rcgen::Issuer::new(p, &root_key);
    let int_key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "fuzz intermediate");
    let int = p.signed_by(&int_key, &root_issuer).unwrap();
    let int_issuer = rcgen::Issuer::new(p, &int_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(vec!["node-main".to_string()]).unwrap();
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    p.distinguished_name.push(rcgen::DnType::CommonName, "node-main");
    let leaf = p.signed_by(&leaf_key, &int_issuer).unwrap();
    let chain = format!("{}{}", leaf.pem(), int.pem());
    let mut input = root.pem().into_bytes();
    input.push(CHAIN_SEPARATOR);
    input.extend_from_slice(chain.as_bytes());
    write(dir, "chain", "leaf-intermediate", &input);
    write(dir, "chain", "leaf-only", leaf.pem().as_bytes());

    for (i, s) in [
        "CN=node-main,OU=iam\nnode-main\nnode-main.local",
        "node-main",
        "CN=a,O=b,OU=c,C=DE,ST=x,L=y",
    ]
    .iter()
    .enumerate()
    {
        write(dir, "csr", &format!("subject-{i}"), s.as_bytes());
    }

    let certs = vec![leaf.der().to_vec(), int.der().to_vec()];
    let p7 = aos_iam::codec::der::pkcs7_certs_only(&certs);
    write(dir, "est_pkcs7", "certs-only.der", &p7);
    write(
        dir,
        "est_pkcs7",
        "certs-only.b64",
        aos_iam::codec::pem::base64_encode(&p7).as_bytes(),
    );

    // HTTP answers as a SCEP server gives them: GetCACert with an RA and its CA (by
    // Content-Length), one CA certificate (chunked), and a refusal.
    let mut ra_ca = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-x509-ca-ra-cert\r\n".to_vec();
    ra_ca.extend_from_slice(format!("Content-Length: {}\r\n\r\n", p7.len()).as_bytes());
    ra_ca.extend_from_slice(&p7);
    write(dir, "http_scep", "getcacert-ra.http", &ra_ca);
    let one = int.der().to_vec();
    let mut chunked =
        b"HTTP/1.1 200 OK\r\nContent-Type: application/x-x509-ca-cert\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    chunked.extend_from_slice(format!("{:x}\r\n", one.len()).as_bytes());
    chunked.extend_from_slice(&one);
    chunked.extend_from_slice(b"\r\n0\r\n\r\n");
    write(dir, "http_scep", "getcacert-ca.http", &chunked);
    // A CertRep after its GetCACert (u16 length first): a SignedData whose signer infos the
    // fuzzer grows from a certs-only one.
    let mut cert_rep = (p7.len() as u16).to_be_bytes().to_vec();
    cert_rep.extend_from_slice(&p7);
    cert_rep.extend_from_slice(&p7);
    write(dir, "scep_cert_rep", "getcacert-then-signeddata.der", &cert_rep);
    // The other domain of a vchan: the server's first byte, then rewrites, reads and writes.
    write(
        dir,
        "vchan_ring",
        "server.bin",
        &[0, 1, 0, 4, 2, 0, 2, 0, 4, 0, 0xff, 0xff, 0xff, 0x7f, 1, 0, 4],
    );
    write(
        dir,
        "vchan_ring",
        "client.bin",
        &[
            1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 10, 0, 11, 0, 2, 1, 0, 0, 2, 0, 4, 1, 0, 4,
        ],
    );
    // CRLs as `openssl ca -gencrl` and rcgen make them: one revoking a serial, PEM and DER.
    let crl_key = rcgen::KeyPair::generate().unwrap();
    let mut crl_ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    crl_ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    crl_ca.distinguished_name.push(rcgen::DnType::CommonName, "seed CA");
    let crl_issuer = rcgen::Issuer::new(crl_ca, crl_key);
    let crl = rcgen::CertificateRevocationListParams {
        this_update: rcgen::date_time_ymd(2026, 1, 1),
        next_update: rcgen::date_time_ymd(2027, 1, 1),
        crl_number: rcgen::SerialNumber::from(1000u64),
        issuing_distribution_point: None,
        revoked_certs: vec![rcgen::RevokedCertParams {
            serial_number: rcgen::SerialNumber::from_slice(&[0x42, 7, 7, 7]),
            revocation_time: rcgen::date_time_ymd(2026, 6, 1),
            reason_code: Some(rcgen::RevocationReason::KeyCompromise),
            invalidity_date: None,
        }],
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    }
    .signed_by(&crl_issuer)
    .unwrap();
    write(dir, "crl", "revoked.der", crl.der());
    write(dir, "crl", "revoked.pem", crl.pem().unwrap().as_bytes());
    write(
        dir,
        "http_scep",
        "refused.http",
        b"HTTP/1.1 403 Forbidden\r\nContent-Length: 6\r\n\r\nno way",
    );
}
