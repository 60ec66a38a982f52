//! A software TPM 2.0 as the node's token: swtpm behind tpm2-abrmd (a resource manager on a
//! private D-Bus session, as a real TPM has /dev/tpmrm0) and the tpm2-pkcs11 module. The real
//! binary provisions a node whose keys (P-256, P-384, RSA-2048) are made in the TPM,
//! renews one, and provisions it again (a token tpm2-pkcs11 cannot initialise twice, emptied
//! under its SO PIN); and keeps working when the TPM's resource manager is restarted under
//! it. Judges: openssl verify on the certificates p11tool exports, and
//! pkcs11-tool for the token's objects (OpenSSL's pkcs11 engine cannot use tpm2-pkcs11 keys
//! on Debian 12).

mod common;
use common::tpm::{Tpm, TPM2_PKCS11};
use common::*;

/// A node whose modules all live in the TPM's token.
fn tpm_node(name: &str) -> (Node, Tpm) {
    tpm_node_with(name, None)
}

/// The same, its resource manager keeping at most `max_transients` objects per client.
fn tpm_node_with(name: &str, max_transients: Option<u32>) -> (Node, Tpm) {
    let mut node = Node::new(name, Store::Pkcs11);
    let tpm = Tpm::start_with(&node.dir, max_transients);
    node.env = tpm.env.clone();
    let d = node.dir.display();
    let store = format!(
        "[modules.pkcs11]\nlibrary = \"{TPM2_PKCS11}\"\nslot_index = 0\ninit_label = \"aos-tpm\"\nuser_pin_file = \"{d}/work/user-pin\"\n"
    );
    let mut c = format!(
        "[node]\nid_file = \"{d}/node-id\"\n[paths]\nworking_dir = \"{d}/work\"\nroot_ca = \"{d}/ca.pem\"\n\
         public_socket = \"{d}/run/public.sock\"\nprotected_socket = \"{d}/run/protected.sock\"\n"
    );
    for (id, alg, eku, self_signed) in [
        ("iam", "ecdsa-p384", r#"["clientAuth", "serverAuth"]"#, false),
        ("online", "ecdsa-p256", r#"["clientAuth"]"#, false),
        ("offline", "rsa-2048", r#"["clientAuth"]"#, false),
        ("diskencryption", "ecdsa-p256", "[]", true),
    ] {
        c.push_str(&format!(
            "\n[[modules]]\nid = \"{id}\"\nalgorithm = \"{alg}\"\nextended_key_usage = {eku}\nself_signed = {self_signed}\nmax_items = 2\n{store}"
        ));
    }
    node.config_override = Some(c);
    (node, tpm)
}

/// The objects on the TPM's token, by class, as pkcs11-tool lists them.
fn objects(node: &Node) -> Vec<String> {
    let pin = node.user_pin();
    let out = run(
        node.cmd_for("pkcs11-tool").args([
            "--module",
            TPM2_PKCS11,
            "--slot-index",
            "0",
            "--login",
            "--pin",
            pin.trim(),
            "-O",
        ]),
        None,
    )
    .ok();
    out.stdout
        .lines()
        .filter(|l| l.contains(" Object;"))
        .map(String::from)
        .collect()
}

/// Each current certificate, exported by p11tool from its URL, verifies with openssl.
fn verifies(node: &Node) {
    for c in node.list_certs() {
        let t = c["type"].as_str().unwrap();
        let out = node.p(&format!("{t}.pem"));
        let o = run(
            node.cmd_for("p11tool")
                .args(["--provider", TPM2_PKCS11, "--export", c["cert_url"].as_str().unwrap()]),
            None,
        )
        .ok();
        std::fs::write(&out, o.stdout).unwrap();
        let root = if t == "diskencryption" {
            out.clone()
        } else {
            node.p("ca.pem")
        };
        sh(&format!("openssl verify -CAfile {root} {out}")).ok();
    }
}

#[test]
fn a_node_is_provisioned_renewed_and_provisioned_again_in_a_software_tpm() {
    let (mut node, _tpm) = tpm_node("tpm");
    node.start(true);
    node.run_flow().ok();
    let status = node.status();
    assert_eq!(status["state"], "provisioned", "{status}");
    node.applet("iam-certctl", &["-s", &node.protected(), "check"], None)
        .ok();
    verifies(&node);
    // Three objects per certificate (key pair and certificate), nothing else.
    assert_eq!(objects(&node).len(), 3 * 4, "{:#?}", objects(&node));

    // A renewal of the RSA key: a new key in the TPM, the old one kept (max_items 2).
    node.renew_with_ca("offline", None).ok();
    assert_eq!(node.list_certs().iter().filter(|c| c["type"] == "offline").count(), 2);
    assert_eq!(objects(&node).len(), 3 * 5);
    verifies(&node);

    // Provisioned again: tpm2-pkcs11 cannot initialise the token twice, so it is emptied
    // under its SO PIN, and only the new objects are there.
    node.run_flow_with(&["--deprovision-first"]).ok();
    assert!(
        node.log()
            .contains("cannot be initialised again; emptying it under its SO PIN"),
        "{}",
        node.log()
    );
    assert_eq!(objects(&node).len(), 3 * 4, "{:#?}", objects(&node));
    verifies(&node);
    // And it serves the same after a restart out of provisioning mode.
    node.stop();
    node.start(false);
    node.applet("iam-certctl", &["-s", &node.protected(), "check"], None)
        .ok();
}

#[test]
fn a_resource_manager_restarted_under_a_running_iamd_is_used_again() {
    let (mut node, mut tpm) = tpm_node("tpm-away");
    node.start(true);
    node.run_flow().ok();
    node.stop();
    node.start(false);
    let check = |n: &Node| n.applet("iam-certctl", &["-s", &n.protected(), "--json", "check"], None);
    assert_eq!(check(&node).code, 0);
    let renew = |n: &Node| n.renew_with_ca("online", None);
    // The TPM goes out of reach (its resource manager stops): what needs it fails, saying so.
    tpm.stop_manager();
    renew(&node).fails(9, "module online");
    // It is back: used again without a restart of iamd.
    tpm.start_manager();
    let start = std::time::Instant::now();
    loop {
        let out = renew(&node);
        if out.code == 0 {
            break;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "{}\n{}",
            out.stderr,
            node.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    assert_eq!(check(&node).code, 0);
    assert!(
        node.log().contains("the token failed as a device; the PKCS#11 library"),
        "{}",
        node.log()
    );
}

#[test]
#[cfg(feature = "scep")]
fn an_rsa_key_in_the_tpm_is_enrolled_by_scep_its_answer_decrypted_in_the_tpm() {
    // Debian's scepserver in a private network (tests/common/scep.rs), the TPM with it.
    common::scep::private_network();
    let (mut node, _tpm) = tpm_node("tpm-scep");
    let server = common::scep::ScepServer::start(&node.dir, &[]);
    // Only the RSA module is CA-signed: the server issues for RSA keys alone.
    let c = node.config_override.take().unwrap();
    let keep: Vec<&str> = c
        .split("\n[[modules]]")
        .filter(|part| !part.contains("id = \"iam\"") && !part.contains("id = \"online\""))
        .collect();
    node.config_override = Some(keep.join("\n[[modules]]"));
    common::scep::trust(&node, &server.ca_pem());
    std::fs::write(node.path("challenge"), format!("{}\n", common::scep::CHALLENGE)).unwrap();
    node.start(true);
    let out = common::scep::scep_run(&node, &server.url, &server.fingerprint(), "challenge").ok();
    assert_eq!(out.json()["ok"], true, "{}", out.stdout);
    assert_eq!(node.status()["state"], "provisioned");
    verifies(&node);
    let issuer = node.list_certs().into_iter().find(|c| c["type"] == "offline").unwrap()["issuer"].clone();
    assert!(issuer.as_str().unwrap().contains("scep test CA"), "{issuer}");
}

#[test]
fn a_resource_manager_keeping_three_objects_per_client_as_the_kernels_does_takes_every_key() {
    // Issue 29: through the kernel's resource manager (/dev/tpmrm0) a client keeps at most
    // three transient objects loaded; tpm2-pkcs11 keeps every key it has used loaded until
    // the session logs out. tpm2-abrmd with --max-transients=3 holds a client to the same.
    let (mut node, _tpm) = tpm_node_with("tpm-rm3", Some(3));
    node.start(true);
    node.run_flow().ok();
    assert_eq!(objects(&node).len(), 3 * 4, "{:#?}", objects(&node));
    verifies(&node);
    node.stop();
    // In operation: every key signs (a certificate each for the TLS-like uses), one after
    // another on the same iamd, then a renewal makes a fifth key.
    node.start(false);
    for t in ["offline", "iam", "online"] {
        node.renew_with_ca(t, None).ok();
    }
    assert_eq!(objects(&node).len(), 3 * 7, "{:#?}", objects(&node));
    verifies(&node);
    node.stop();
    node.start(false);
    node.applet("iam-certctl", &["-s", &node.protected(), "check"], None)
        .ok();
}
