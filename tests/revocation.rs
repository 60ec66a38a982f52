//! Revocation by CRLs made by `openssl ca -gencrl` (SECURITY.md, "Revocation"): a revoked
//! secondary's link is closed at once and refused at its next handshake, a revoked main
//! node is refused by a secondary, and a certificate revoked before it is applied is
//! refused by ApplyCert. The CA is openssl's, with its own database, as a unit's CA keeps it.

mod common;
use common::*;

/// An openssl CA over the node's `ca.pem`/`ca.key`, with its database and CRL number.
fn openssl_ca_config(node: &Node) -> String {
    let d = node.dir.display();
    std::fs::create_dir_all(node.path("newcerts")).unwrap();
    std::fs::write(node.path("index.txt"), "").unwrap();
    std::fs::write(node.path("crlnumber"), "1000\n").unwrap();
    let cnf = node.p("crl-ca.cnf");
    std::fs::write(
        &cnf,
        format!(
            "[ca]\ndefault_ca = d\n[d]\ndatabase = {d}/index.txt\nnew_certs_dir = {d}/newcerts\nserial = {d}/serial\n\
             crlnumber = {d}/crlnumber\ncertificate = {d}/ca.pem\nprivate_key = {d}/ca.key\ndefault_md = sha256\n\
             default_crl_days = 30\npolicy = p\n[p]\ncommonName = supplied\n"
        ),
    )
    .unwrap();
    cnf
}

/// `openssl ca -gencrl`, the CRL written to each of `to` (`crl.pem` in each node's
/// directory) by rename, as a CRL is installed.
fn publish_crl(cnf: &str, ca: &Node, to: &[&Node]) {
    let out = ca.p("new-crl.pem");
    sh(&format!("openssl ca -config {cnf} -gencrl -out {out} 2>&1")).ok();
    for n in to {
        let tmp = n.p("crl.pem.new");
        std::fs::copy(&out, &tmp).unwrap();
        std::fs::rename(&tmp, n.path("crl.pem")).unwrap();
    }
}

/// The current certificate of `cert_type` exported from the node's token to a file.
fn exported(node: &Node, cert_type: &str) -> String {
    let cert = node
        .list_certs()
        .into_iter()
        .find(|c| c["type"] == cert_type && c["current"] == true)
        .unwrap_or_else(|| panic!("no current {cert_type} certificate on {}", node.node_id()));
    let file = node.p(&format!("{cert_type}.exported.pem"));
    node.export_cert(cert["cert_url"].as_str().unwrap(), &file);
    file
}

fn revoke(cnf: &str, cert: &str) {
    sh(&format!("openssl ca -config {cnf} -revoke {cert} 2>&1")).ok();
}

fn hup(node: &Node) {
    let pid = node.iamd.as_ref().expect("iamd runs").id();
    sh(&format!("kill -HUP {pid}")).ok();
}

#[test]
fn a_revoked_secondary_is_dropped_at_once_and_refused_and_a_revoked_main_node_is_refused() {
    let mut unit = Unit::new("crl", 2);
    let cnf = openssl_ca_config(&unit.main);
    for n in std::iter::once(&mut unit.main).chain(unit.secondaries.iter_mut()) {
        n.paths_extra = format!("crl = [\"{}\"]\n", n.p("crl.pem"));
    }
    let all: Vec<&Node> = std::iter::once(&unit.main).chain(unit.secondaries.iter()).collect();
    publish_crl(&cnf, &unit.main, &all);
    unit.start(true);
    unit.link_all_unix();
    unit.run_all(&["--expect-nodes", "3", "--wait", "20"]).ok();
    let addr = unit.link_addr();
    unit.relink(false, &addr);
    let (s0, s1) = (unit.secondaries[0].node_id(), unit.secondaries[1].node_id());
    for i in 0..2 {
        unit.wait_link_registered(i);
    }
    assert!(unit.main.log().contains("over TLS"), "{}", unit.main.log());

    // s0 is stolen: its link identity is revoked and the CRL installed on the main node.
    revoke(&cnf, &exported(&unit.secondaries[0], "iam"));
    publish_crl(&cnf, &unit.main, &[&unit.main]);
    hup(&unit.main);
    unit.wait_connected(&s0, false);
    wait_for(
        || {
            unit.main.log().contains(&format!(
                "node \"{s0}\": its link is closed: its certificate is revoked (paths.crl)"
            ))
        },
        "the revoked link closed",
        &unit.main,
    );
    // Its iam-nodelink dials again: refused at the handshake, every time.
    wait_for(
        || unit.main.log().contains("Revoked"),
        "the revoked node refused at its handshake",
        &unit.main,
    );
    let info = unit
        .main
        .provision(&["--node", &s0, "--json", "node-info"])
        .fails(3, "is not connected")
        .json();
    assert_eq!(info["connected"], false, "{info}");
    // The other secondary is untouched.
    let info = unit.main.provision(&["--node", &s1, "--json", "node-info"]).ok().json();
    assert_eq!(info["connected"], true, "{info}");

    // The main node's link identity revoked: s1 refuses it at its next handshake.
    revoke(&cnf, &exported(&unit.main, "iam"));
    publish_crl(&cnf, &unit.main, &[&unit.secondaries[1]]);
    unit.kill_link(1);
    unit.link_unix(1);
    wait_for(
        || unit.nodelink_log(1).contains("Revoked"),
        "the secondary refusing a revoked main node",
        &unit.secondaries[1],
    );
    assert_ne!(unit.link_status(1).json()["state"], "registered");
}

#[test]
fn a_certificate_revoked_before_it_is_applied_is_refused_and_the_current_one_stays() {
    let mut node = Node::new("crl-apply", Store::Pkcs11);
    let cnf = openssl_ca_config(&node);
    node.paths_extra = format!("crl = [\"{}\"]\n", node.p("crl.pem"));
    publish_crl(&cnf, &node, &[&node]);
    node.start(true);
    node.run_flow().ok();
    node.stop();
    node.start(false);
    let before = read(exported(&node, "iam"));

    // A CA that issues, then revokes what it issued before the node applies it.
    let d = node.dir.display();
    std::fs::write(node.path("serial"), "2000\n").unwrap();
    let sign_then_revoke = format!(
        "set -e; f=$(mktemp -p {d}); cat > $f.csr; \
         openssl x509 -req -in $f.csr -CA {d}/ca.pem -CAkey {d}/ca.key -days 30 -copy_extensions copy -out $f.pem 2>/dev/null; \
         openssl ca -config {cnf} -revoke $f.pem >/dev/null 2>&1; \
         openssl ca -config {cnf} -gencrl -out {d}/crl.pem >/dev/null 2>&1; cat $f.pem"
    );
    let pw = node.p("password");
    let socket = node.protected();
    let out = node
        .applet(
            "iam-certctl",
            &[
                "-s",
                &socket,
                "renew",
                "iam",
                "--sign-cmd",
                &sign_then_revoke,
                "--password-file",
                &pw,
            ],
            None,
        )
        .fails(8, "CertRevoked");
    assert!(out.stderr.contains("revoked by a CRL of paths.crl"), "{}", out.stderr);
    assert_eq!(read(exported(&node, "iam")), before, "the current certificate stays");

    // A CRL file that is not a CRL: every apply is refused, naming it (fail closed).
    std::fs::write(
        node.path("crl.pem"),
        "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n",
    )
    .unwrap();
    node.applet(
        "iam-certctl",
        &[
            "-s",
            &socket,
            "renew",
            "iam",
            "--ca-cert",
            &node.p("ca.pem"),
            "--ca-key",
            &node.p("ca.key"),
            "--password-file",
            &pw,
        ],
        None,
    )
    .fails(8, "not a CRL this node can use");
    let check = node.applet("iamd", &["--check-config", "-c", &node.p("config.toml")], None);
    assert_eq!(check.code, 1, "{}{}", check.stdout, check.stderr);
    assert!(check.stderr.contains("paths.crl"), "{}", check.stderr);
}

#[test]
fn the_main_node_hands_its_crls_to_a_secondary_which_then_drops_and_refuses_a_revoked_main_node() {
    let mut unit = Unit::new("crl-hand", 2);
    let cnf = openssl_ca_config(&unit.main);
    unit.main.paths_extra = format!("crl = [\"{}\"]\n", unit.main.p("crl.pem"));
    // The secondaries have no CRL of their own: s0 keeps what the main node hands it (and
    // checks it every second), s1 is not asked to.
    let kept = unit.secondaries[0].path("main.crl");
    unit.secondaries[0].extra_config = format!("\n[links]\nmain_crl = \"{}\"\nkeepalive = 1\n", kept.display());
    publish_crl(&cnf, &unit.main, &[&unit.main]);
    unit.start(true);
    unit.link_all_unix();
    unit.run_all(&["--expect-nodes", "3", "--wait", "20"]).ok();
    let addr = unit.link_addr();
    unit.relink(false, &addr);
    for i in 0..2 {
        assert_eq!(unit.wait_link_registered(i)["tls"], true);
    }
    // Handed at registration: the main node's CRL, as openssl reads it.
    wait_for(|| kept.exists(), "the CRL handed to s0", &unit.secondaries[0]);
    let same = |a: &str, b: &str| {
        let text = |f: &str| sh(&format!("openssl crl -in {f} -noout -text")).ok().stdout;
        text(a) == text(b)
    };
    assert!(same(&kept.display().to_string(), &unit.main.p("crl.pem")));
    assert!(!unit.secondaries[1].path("main.crl").exists());

    // The main node's link identity is revoked, on the main node alone: s0 learns it at its
    // next look and drops the live link; s1, not handed CRLs, keeps its link.
    revoke(&cnf, &exported(&unit.main, "iam"));
    publish_crl(&cnf, &unit.main, &[&unit.main]);
    wait_for(
        || unit.nodelink_log(0).contains("certificate is revoked by a CRL"),
        "s0 dropping the revoked main node's link",
        &unit.secondaries[0],
    );
    assert!(
        same(&kept.display().to_string(), &unit.main.p("crl.pem")),
        "the new CRL kept"
    );
    // Its next handshakes refuse the main node's certificate.
    wait_for(
        || unit.nodelink_log(0).contains("Revoked"),
        "s0 refusing the revoked main node at its handshake",
        &unit.secondaries[0],
    );
    assert_ne!(unit.link_status(0).json()["state"], "registered");
    assert_eq!(unit.link_status(1).json()["state"], "registered");
}
