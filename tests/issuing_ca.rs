//! PKIs as deployed: nodes issued by an issuing CA under the unit's root (one or two
//! intermediates deep), never by the root itself. Each node keeps the chain it was issued
//! and presents it wherever it authenticates; the links of such a unit come up in TLS in
//! normal mode over unix sockets and TCP, judged by gnutls-cli as well as by aos-iam's own
//! ends; a chain whose issuing CA is missing or expired is refused naming that certificate.

mod common;
use common::*;
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A unit of a main node and two secondaries, each node's certificates signed by `issuers`
/// (the last one signs; each under the one before, the first under the root `ca`), every
/// node holding only the root in `paths.root_ca`; the main node listens on unix and TCP.
fn unit_issued_by(name: &str, issuers: &[&str]) -> (Unit, String) {
    let mut unit = Unit::new(name, 2);
    let port = free_port();
    unit.main.extra_config = format!(
        "\n[links]\nlisten = [\"unix:{}\", \"tcp:127.0.0.1:{port}\"]\n",
        unit.main.p("run/link.sock")
    );
    let mut parent = "ca";
    for (i, issuer) in issuers.iter().enumerate() {
        let pathlen = (i + 1 == issuers.len()).then_some(0);
        make_ca_under(&unit.main, issuer, parent, pathlen);
        parent = issuer;
    }
    unit.main.signing_ca = parent.to_string();
    unit.start(true);
    unit.link_all_unix();
    let out = unit.run_all(&["--expect-nodes", "3", "--wait", "20"]).ok().json();
    for n in out["nodes"].as_array().unwrap() {
        assert_eq!(n["ok"], true, "{n}");
    }
    (unit, format!("tcp:127.0.0.1:{port}"))
}

/// Restart every iamd in normal mode and link each secondary over `connect` again, each
/// link in TLS.
fn relink(unit: &mut Unit, connect: &str) {
    unit.relink(false, connect);
    for i in 0..unit.secondaries.len() {
        let st = unit.wait_link_registered(i);
        assert_eq!(st["tls"], true, "{st}");
    }
}

/// Each node's certificates, exported from its token, verify with openssl against the root
/// alone, given the issuing CAs as untrusted intermediates.
fn assert_issued_through(unit: &Unit, issuers: &str) {
    for node in std::iter::once(&unit.main).chain(&unit.secondaries) {
        for c in node.list_certs().iter().filter(|c| c["type"] != "diskencryption") {
            let out = openssl_verify_exported(node, c, &unit.main.p("ca.pem"), Some(issuers));
            let issuer = sh(&format!("openssl x509 -in {out} -noout -issuer")).ok().stdout;
            assert!(!issuer.contains("CN = ca\n"), "signed by the root: {issuer}");
        }
    }
}

#[test]
fn a_unit_issued_by_an_issuing_ca_links_in_tls_over_unix_and_tcp() {
    let (mut unit, tcp) = unit_issued_by("issuing", &["issuing"]);
    assert_issued_through(&unit, &unit.main.p("issuing.pem"));
    let unix = unit.link_addr();
    relink(&mut unit, &unix);
    assert!(unit.main.log().contains("over TLS"), "{}", unit.main.log());
    relink(&mut unit, &tcp);
    // The main node answers for a secondary through its TLS link.
    let s1 = unit.secondaries[1].node_id();
    let via_main = unit.main.provision(&["--node", &s1, "--json", "status"]).ok().json();
    assert_eq!(via_main["state"], "provisioned", "{via_main}");
    // An independent client, gnutls-cli, checks the main node's chain against the root
    // alone: the main node presents its issuing CA beside its leaf.
    let (host, port) = tcp.trim_start_matches("tcp:").rsplit_once(':').unwrap();
    let s = &unit.secondaries[0];
    let iam = s.list_certs().into_iter().find(|c| c["type"] == "iam").unwrap();
    let leaf = s.p("iam-link.pem");
    s.export_cert(iam["cert_url"].as_str().unwrap(), &leaf);
    // The secondary's leaf and its issuing CA, its key in its token by PKCS#11 URL.
    let chain = s.p("iam-link-chain.pem");
    std::fs::write(&chain, read(&leaf) + &read(unit.main.path("issuing.pem"))).unwrap();
    let handshake = |cert: &str| {
        let mut cmd = s.cmd_for("timeout");
        cmd.args(["20", "gnutls-cli", "--provider", SOFTHSM, "--x509cafile"])
            .arg(unit.main.path("ca.pem"))
            .args(["--verify-hostname", &unit.main.node_id(), "--x509certfile", cert])
            .args(["--x509keyfile", iam["key_url"].as_str().unwrap(), "-p", port, host])
            .env("GNUTLS_PIN", s.user_pin().trim());
        let out = run(&mut cmd, Some(""));
        format!("{}{}", out.stdout, out.stderr)
    };
    let text = handshake(&chain);
    assert!(
        text.contains("Handshake was completed") && !text.contains("alert"),
        "gnutls-cli with the whole chain:\n{text}"
    );
    // The same leaf without its issuing CA is refused by the main node, which names the
    // certificate that is missing.
    let text = handshake(&leaf);
    assert!(text.contains("alert") || text.contains("Error"), "{text}");
    let start = Instant::now();
    while !unit.main.log().contains("the secondary's chain is refused: the issuer") {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the main node did not name the missing issuing CA:\n{}",
            unit.main.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(unit.main.log().contains("CN=issuing"), "{}", unit.main.log());
    // The real links are unaffected.
    assert_eq!(unit.link_status(0).ok().json()["state"], "registered");
}

/// Wait until `log()` has `text`; panic with it after 30 s.
#[track_caller]
fn wait_for_log(what: &str, log: impl Fn() -> String, text: &str) -> String {
    let start = std::time::Instant::now();
    loop {
        let l = log();
        if l.contains(text) {
            return l;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "{what}: no \"{text}\" in:\n{l}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn a_stopped_end_closes_its_tls_session_so_the_other_reads_a_clean_end_not_a_cut() {
    let (mut unit, _) = unit_issued_by("close-notify", &["issuing"]);
    let unix = unit.link_addr();
    relink(&mut unit, &unix);
    // iam-nodelink stopped by its service manager: the main node reads TLS close_notify.
    assert!(unit.stop_link(0).success());
    let id = unit.secondaries[0].node_id();
    let log = wait_for_log("main node", || unit.main.log(), &format!("node \"{id}\" disconnected:"));
    assert!(
        log.contains(&format!("node \"{id}\" disconnected: connection closed")),
        "{log}"
    );
    assert!(!log.contains("close_notify"), "{log}");
    // The main iamd stopped: the other secondary's link reads the same.
    unit.main.stop();
    let log = wait_for_log(
        "node link 1",
        || unit.nodelink_log(1),
        "the link to the main node ended",
    );
    assert!(
        log.contains("the link to the main node ended: connection closed"),
        "{log}"
    );
    assert!(!log.contains("close_notify"), "{log}");
}

#[test]
fn a_unit_issued_two_intermediates_below_the_root_links_in_tls() {
    let (mut unit, _) = unit_issued_by("issuing2", &["policy", "issuing"]);
    let both = unit.main.p("issuing-chain.pem");
    assert_issued_through(&unit, &both);
    let unix = unit.link_addr();
    relink(&mut unit, &unix);
    for i in 0..2 {
        let id = unit.secondaries[i].node_id();
        let info = unit.main.provision(&["--node", &id, "--json", "node-info"]).ok().json();
        assert_eq!(info["connected"], true, "{info}");
    }
}

#[test]
fn a_chain_whose_issuing_ca_is_missing_or_expired_is_refused_naming_it() {
    let mut node = Node::new("issuing-apply", Store::Pkcs11);
    make_intermediate(&node, "issuing");
    node.start(true);
    node.provision(&["start", "--password-file", &node.p("password")]).ok();
    let csr = node.p("online.csr");
    let out = node
        .provision(&[
            "create-key",
            "online",
            "--password-file",
            &node.p("password"),
            "-o",
            &csr,
        ])
        .ok();
    assert!(read(&csr).contains("CERTIFICATE REQUEST"), "{}", out.stdout);
    // The leaf alone, its issuing CA left out.
    let leaf = node.p("online.pem");
    node.openssl_sign(&csr, "issuing", &leaf);
    let refused = node.provision(&["apply", "online", &leaf]).fails(8, "UnknownIssuer");
    assert!(
        refused.stderr.contains("the issuer \"O=aos-iam tests, CN=issuing\""),
        "{}",
        refused.stderr
    );
    assert!(online_certs(&node).is_empty(), "a refused apply changed nothing");
    // An expired issuing CA: its chain is refused naming it.
    let root_key = rcgen::KeyPair::from_pem(&read(node.path("ca.key"))).unwrap();
    let root = rcgen::Issuer::from_ca_cert_pem(&read(node.path("ca.pem")), &root_key).unwrap();
    let old_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name
        .push(rcgen::DnType::OrganizationName, "aos-iam tests");
    p.distinguished_name.push(rcgen::DnType::CommonName, "expired issuing");
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    p.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    p.use_authority_key_identifier_extension = true;
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::days(30);
    p.not_after = now - time::Duration::days(1);
    let old = p.signed_by(&old_key, &root).unwrap();
    let old_issuer = rcgen::Issuer::new(p, &old_key);
    let mut leaf_params = rcgen::CertificateSigningRequestParams::from_pem(&read(&csr)).unwrap();
    leaf_params.params.not_before = now - time::Duration::days(2);
    leaf_params.params.not_after = now + time::Duration::days(30);
    leaf_params.params.use_authority_key_identifier_extension = true;
    let leaf_cert = leaf_params.signed_by(&old_issuer).unwrap();
    let chain = node.p("online-expired-chain.pem");
    std::fs::write(&chain, leaf_cert.pem() + &old.pem()).unwrap();
    let refused = node.provision(&["apply", "online", &chain]).fails(8, "CertExpired");
    assert!(
        refused
            .stderr
            .contains("CN=expired issuing, O=aos-iam tests\" expired at"),
        "{}",
        refused.stderr
    );
    assert!(online_certs(&node).is_empty(), "a refused apply changed nothing");
    // The same leaf with its issuing CA is applied.
    let good = node.p("online-chain.pem");
    std::fs::write(&good, read(&leaf) + &read(node.path("issuing.pem"))).unwrap();
    node.provision(&["apply", "online", &good]).ok();
    assert_eq!(online_certs(&node).len(), 1);
}

fn online_certs(node: &Node) -> Vec<serde_json::Value> {
    node.list_certs()
        .into_iter()
        .filter(|c| c["type"] == "online")
        .collect()
}

#[test]
fn a_node_enrolls_and_reenrolls_over_est_through_an_issuing_ca() {
    use common::enrollment::*;
    let mut node = Node::new("est-issuing", Store::Pkcs11);
    // root → issuing; the root's key is not used after this, and the node trusts the root alone.
    make_ca_under(&node, "issuing", "ca", Some(0));
    node.make_ca("factory-ca");
    let server = common::est::EstServer::start(&node.dir, EST_USER, EST_PASSWORD);
    server.set_claim_token(Some(CLAIM));
    std::fs::remove_file(node.path("ca.key")).unwrap();
    node.extra_config = reenrolling_iam(&mut node, &server, "attempts = 10\n");
    factory(&mut node, &server, Some(CLAIM));
    node.start(false);
    // The EST server answers with the leaf alone; the node completes each chain from
    // /cacerts, so that it validates against the root alone and is applied.
    let s = wait_state(&node, "operational");
    assert_eq!(s["enrollment"]["enrolled"], serde_json::json!(["online", "iam"]), "{s}");
    let root = node.p("ca.pem");
    for c in node
        .list_certs()
        .iter()
        .filter(|c| c["type"] == "iam" || c["type"] == "online")
    {
        assert!(c["issuer"].as_str().unwrap().contains("CN=issuing"), "{c}");
        openssl_verify_exported(&node, c, &root, Some(&node.p("issuing.pem")));
    }
    // Re-enrollment over mutual TLS with the current certificate presents the issuing CA
    // (the EST server trusts the root alone), and completes its chain the same way.
    let out = node
        .applet(
            "iam-certctl",
            &["-s", &node.protected(), "--json", "renew", "iam"],
            None,
        )
        .ok()
        .json();
    assert!(out.to_string().contains("CN=issuing"), "{out}");
    assert_eq!(
        server
            .requests()
            .iter()
            .filter(|r| r.starts_with("simplereenroll"))
            .count(),
        1,
        "{:?}",
        server.requests()
    );
}
