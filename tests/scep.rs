#![cfg(feature = "scep")]
//! SCEP (RFC 8894) end to end against Debian's independent SCEP server (`scepserver`,
//! micromdm), in a private network namespace per test (tests/common/scep.rs): keys in a
//! SoftHSM token, the requests signed and the answers decrypted there, every issued
//! certificate judged by `openssl verify` against the server's CA and matched to the key
//! the token holds.

mod common;
use common::scep::{private_network, scep_run, trust, vanishing_relay, ScepServer, CHALLENGE};
use common::*;

/// `[modules.renew]` by SCEP from `url`, due at once for a certificate of one day.
fn scep_renewal(url: &str, fingerprint: &str, challenge: &str, extra: &str) -> String {
    format!(
        "[modules.renew]\nmethod = \"scep\"\nthreshold = \"2d\"\nretry = \"1h\"\njitter = \"0%\"\n\
         [modules.renew.scep]\nurl = \"{url}\"\nca_fingerprint = \"{fingerprint}\"\nchallenge_file = \"{challenge}\"\n{extra}"
    )
}

/// A node whose CA-signed modules get their certificates by SCEP: `rsa` (RSA-2048, the
/// key type that server issues for) and, if `p256`, a P-256 one too. The server's CA is
/// one of its roots.
fn scep_node(name: &str, p256: bool) -> (Node, ScepServer) {
    let mut node = Node::new(name, Store::Pkcs11);
    let server = ScepServer::start(&node.dir, &[]);
    node.modules = vec![
        ("rsa", "rsa-2048", r#"["clientAuth"]"#, false, 2),
        ("diskencryption", "ecdsa-p384", "[]", true, 1),
    ];
    if p256 {
        node.modules
            .insert(1, ("ec", "ecdsa-p256", r#"["clientAuth"]"#, false, 2));
    }
    trust(&node, &server.ca_pem());
    std::fs::write(node.path("challenge"), format!("{CHALLENGE}\n")).unwrap();
    std::fs::write(node.path("wrong-challenge"), "not-the-challenge\n").unwrap();
    (node, server)
}

/// Every current certificate of `cert_type` exported from the token and verified by
/// openssl against the SCEP CA; and the token's public key for it is the certificate's.
fn verify_issued(node: &Node, server: &ScepServer, cert_type: &str) -> String {
    let cert = node
        .list_certs()
        .into_iter()
        .find(|c| c["type"] == cert_type && c["current"] == true)
        .unwrap_or_else(|| panic!("no current {cert_type} certificate"));
    let out = node.p(&format!("{cert_type}.pem"));
    node.export_cert(cert["cert_url"].as_str().unwrap(), &out);
    let v = sh(&format!("openssl verify -CAfile {} {out}", server.ca_pem().display())).ok();
    assert!(v.stdout.contains(": OK"), "{}", v.stdout);
    // The key the certificate names is the one the token holds under that label.
    let from_cert = sh(&format!(
        "openssl x509 -in {out} -noout -pubkey | openssl pkey -pubin -outform DER | sha256sum"
    ))
    .ok();
    let url = cert["key_url"].as_str().unwrap().replace("type=private", "type=public");
    let pubkey = run(
        node.cmd_for("p11tool").env("GNUTLS_PIN", node.user_pin().trim()).args([
            "--provider",
            SOFTHSM,
            "--export-pubkey",
            &url,
        ]),
        None,
    )
    .ok();
    std::fs::write(node.path("token-pub.pem"), pubkey.stdout).unwrap();
    let from_token = sh(&format!(
        "openssl pkey -pubin -in {} -outform DER | sha256sum",
        node.p("token-pub.pem")
    ))
    .ok();
    assert_eq!(
        from_cert.stdout, from_token.stdout,
        "the certificate is not for the token's key"
    );
    cert["serial"].as_str().unwrap().to_string()
}

#[test]
fn an_rsa_key_in_softhsm_is_enrolled_by_iam_provision_run_through_the_scep_server() {
    private_network();
    let (mut node, server) = scep_node("scep-run", false);
    node.start(true);
    let out = scep_run(&node, &server.url, &server.fingerprint(), "challenge").ok();
    assert_eq!(out.json()["ok"], true, "{}", out.stdout);
    assert_eq!(node.status()["state"], "provisioned");
    verify_issued(&node, &server, "rsa");
    // The server's own log: our PKCSReq parsed, its envelope decrypted with the challenge.
    let log = server.log();
    assert!(log.contains("scep_message_type=\"PKCSReq (19)\""), "{log}");
    assert!(log.contains("has_challenge=true"), "{log}");
    // The challenge never reaches iamd's log.
    assert!(!node.log().contains(CHALLENGE));
}

/// A node provisioned by SCEP, then restarted out of provisioning mode.
fn provisioned_by_scep(name: &str) -> (Node, ScepServer) {
    provisioned_by_scep_renewing(name, false)
}

/// The same; `renews`: its `rsa` module renews with that server (`[modules.renew.scep]`,
/// due two days before expiry, so not at once).
fn provisioned_by_scep_renewing(name: &str, renews: bool) -> (Node, ScepServer) {
    let (mut node, server) = scep_node(name, false);
    if renews {
        node.modules.rotate_left(1);
        node.extra_config = scep_renewal(&server.url, &server.fingerprint(), &node.p("challenge"), "");
    }
    node.start(true);
    scep_run(&node, &server.url, &server.fingerprint(), "challenge").ok();
    node.stop();
    node.start(false);
    (node, server)
}

fn current_serial(node: &Node, cert_type: &str) -> Option<String> {
    node.list_certs()
        .into_iter()
        .find(|c| c["type"] == cert_type && c["current"] == true)
        .map(|c| c["serial"].as_str().unwrap().to_string())
}

/// `iam-certctl --json renew rsa --scep … [--challenge-file F]`.
fn certctl_renew(node: &Node, server: &ScepServer, challenge: Option<&str>) -> Out {
    let (sock, pw, fp) = (node.protected(), node.p("password"), server.fingerprint());
    let mut args = vec![
        "-s",
        &sock,
        "--json",
        "renew",
        "rsa",
        "--password-file",
        &pw,
        "--scep",
        &server.url,
        "--scep-ca-fingerprint",
        &fp,
    ];
    let file = challenge.map(|c| node.p(c));
    if let Some(f) = &file {
        args.extend(["--challenge-file", f]);
    }
    node.applet("iam-certctl", &args, None)
}

#[test]
fn iam_certctl_renew_by_scep_sends_a_renewal_req_signed_by_the_current_certificate() {
    private_network();
    // The module renews with this server: a RenewalReq to it may be answered to its
    // current key.
    let (node, server) = provisioned_by_scep_renewing("scep-renew", true);
    let before = verify_issued(&node, &server, "rsa");
    // A SCEP option without --scep is refused, not taken for the module's own renewal.
    let (sock, pw, fp) = (node.protected(), node.p("password"), server.fingerprint());
    let stray = [
        "-s",
        &sock,
        "renew",
        "rsa",
        "--password-file",
        &pw,
        "--scep-ca-fingerprint",
        &fp,
    ];
    let out = node.applet("iam-certctl", &stray, None);
    assert_eq!(out.code, 7, "{}", out.stderr);
    assert!(out.stderr.contains("go with --scep"), "{}", out.stderr);
    assert_eq!(current_serial(&node, "rsa").unwrap(), before);
    // This server checks the challenge on a RenewalReq too: without one it is refused
    // (its log: "failed to sign CSR" err="invalid challenge"), and nothing changes.
    let out = certctl_renew(&node, &server, None);
    let m = out.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(m.contains("refused the RenewalReq (FAILURE, badRequest 2)"), "{m}");
    assert!(server.log().contains("invalid challenge"), "{}", server.log());
    assert_eq!(current_serial(&node, "rsa").unwrap(), before);
    let out = certctl_renew(&node, &server, Some("challenge")).ok();
    assert_eq!(out.json()["ok"], true, "{}", out.stdout);
    let after = verify_issued(&node, &server, "rsa");
    assert_ne!(before, after, "a new certificate is current");
    assert_eq!(
        server.log().matches("scep_message_type=\"RenewalReq (17)\"").count(),
        2,
        "{}",
        server.log()
    );
}

/// ScepEnroll to a server the module does not renew with (a URL and CA fingerprint of the
/// caller's choosing): a RenewalReq would have iamd decrypt that server's answers with the
/// module's current, operational key (a Bleichenbacher oracle). It gets a PKCSReq instead,
/// signed by the fresh pending key, whose answers only that key opens.
#[test]
fn scep_enroll_to_a_server_the_module_does_not_renew_with_never_uses_the_current_key() {
    private_network();
    let (node, server) = provisioned_by_scep("scep-oracle");
    let before = verify_issued(&node, &server, "rsa");
    let out = certctl_renew(&node, &server, Some("challenge")).ok();
    assert_eq!(out.json()["ok"], true, "{}", out.stdout);
    assert_ne!(verify_issued(&node, &server, "rsa"), before);
    let log = server.log();
    assert!(!log.contains("RenewalReq (17)"), "{log}");
    // Provisioning, then this renewal: two PKCSReqs, the server offering Renewal.
    assert_eq!(log.matches("scep_message_type=\"PKCSReq (19)\"").count(), 2, "{log}");
}

#[test]
fn iamd_renews_by_itself_with_method_scep() {
    private_network();
    let (mut node, server) = scep_node("scep-auto", false);
    node.modules.rotate_left(1);
    // Provisioned by the node's local CA for one day: due at once under a threshold of two
    // days before expiry; the SCEP server's certificate (365 days) is not due again.
    node.extra_config = scep_renewal(&server.url, &server.fingerprint(), &node.p("challenge"), "");
    node.start(true);
    node.run_flow_with(&["--days", "1"]).ok();
    node.stop();
    node.start(false);
    wait_for(
        || node.log().contains("renewal of rsa: certificate"),
        "the renewal",
        &node,
    );
    verify_issued(&node, &server, "rsa");
    assert!(server.log().contains("RenewalReq (17)"), "{}", server.log());
    assert!(!node.log().contains(CHALLENGE));
}

#[test]
fn a_p256_key_is_refused_by_this_server_with_bad_request_and_nothing_is_applied() {
    private_network();
    let (mut node, server) = scep_node("scep-p256", true);
    node.start(true);
    let out = scep_run(&node, &server.url, &server.fingerprint(), "challenge");
    let e = &out.json()["error"];
    assert_eq!(e["kind"], "unauthorized", "{}", out.stdout);
    let m = e["message"].as_str().unwrap();
    assert!(m.contains("Sign ec") && m.contains("FAILURE, badRequest 2"), "{m}");
    // The RSA module before it was issued; the refused one has no certificate.
    let status = node.status();
    let ec = status["modules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["type"] == "ec")
        .unwrap()
        .clone();
    assert_eq!(ec["certificates"], 0, "{status}");
    assert!(
        server.log().contains("signature algorithm") || server.log().contains("SignatureAlgorithm"),
        "{}",
        server.log()
    );
}

#[test]
fn the_wrong_challenge_is_refused_and_changes_nothing() {
    private_network();
    let (mut node, server) = scep_node("scep-challenge", false);
    node.start(true);
    let out = scep_run(&node, &server.url, &server.fingerprint(), "wrong-challenge");
    let m = out.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(m.contains("FAILURE, badRequest"), "{m}");
    assert!(node.list_certs().iter().all(|c| c["type"] != "rsa"), "nothing applied");
    assert!(!node.log().contains("not-the-challenge"));
    // The right one then enrolls the same node.
    let out = scep_run(&node, &server.url, &server.fingerprint(), "challenge").ok();
    assert_eq!(out.json()["ok"], true, "{}", out.stdout);
}

#[test]
fn a_wrong_ca_fingerprint_is_refused_before_anything_is_sent() {
    private_network();
    let (mut node, server) = scep_node("scep-fp", false);
    node.start(true);
    let out = scep_run(&node, &server.url, &"ab".repeat(32), "challenge");
    let e = &out.json()["error"];
    assert_eq!(e["kind"], "validation", "{}", out.stdout);
    assert!(
        e["message"].as_str().unwrap().contains("configured CA fingerprint"),
        "{e}"
    );
    assert!(!server.log().contains("PKIOperation"), "no request reached the server");
}

#[test]
fn a_server_that_goes_away_mid_transaction_is_unavailable_and_nothing_changes() {
    private_network();
    let (mut node, server) = scep_node("scep-gone", false);
    node.start(true);
    // GetCACaps and GetCACert pass; the PKIOperation's connection is closed unanswered.
    let relay = vanishing_relay(8081, common::scep::PORT, 2);
    let out = scep_run(&node, &relay, &server.fingerprint(), "challenge");
    let e = &out.json()["error"];
    assert_eq!(e["kind"], "unavailable", "{}", out.stdout);
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("without answering PKIOperation"),
        "{e}"
    );
    assert!(node.list_certs().iter().all(|c| c["type"] != "rsa"));
    // Run again against the server itself: the node converges.
    let out = scep_run(&node, &server.url, &server.fingerprint(), "challenge").ok();
    assert_eq!(out.json()["ok"], true, "{}", out.stdout);
    verify_issued(&node, &server, "rsa");
}

/// A node provisioned by its local CA for one day, whose `rsa` module iamd renews at once
/// by SCEP from a [`common::scep::PendingServer`] (polled every second, for 3 s at most);
/// the pending CA is one of its roots. Returns the node, running, the server, and the
/// serial of the certificate before the renewal.
fn pending_renewal(name: &str, pending: usize, ra: bool) -> (Node, common::scep::PendingServer, String) {
    pending_renewal_with(name, pending, ra.then_some(common::scep::RA_EXT))
}

/// The same, the RA certificate (if any) with these extensions.
fn pending_renewal_with(name: &str, pending: usize, ra: Option<&str>) -> (Node, common::scep::PendingServer, String) {
    pending_renewal_then(name, pending, ra, |_| {})
}

/// The same, `before_operation` done to the node between its provisioning and its start in
/// operation (where it renews).
fn pending_renewal_then(
    name: &str,
    pending: usize,
    ra: Option<&str>,
    before_operation: impl FnOnce(&mut Node),
) -> (Node, common::scep::PendingServer, String) {
    let mut node = Node::new(name, Store::Pkcs11);
    let caps = "POSTPKIOperation\nSHA-256\nAES\nSCEPStandard\n";
    let server = common::scep::PendingServer::start_with(&node.dir, 8082, pending, ra, caps);
    node.modules = vec![
        ("diskencryption", "ecdsa-p384", "[]", true, 1),
        ("rsa", "rsa-2048", r#"["clientAuth"]"#, false, 2),
    ];
    trust(&node, &server.ca_pem);
    std::fs::write(node.path("challenge"), format!("{CHALLENGE}\n")).unwrap();
    let polling = "poll_every = 1\npoll_for = 3\n";
    node.extra_config = scep_renewal(&server.url, &server.fingerprint(), &node.p("challenge"), polling);
    node.start(true);
    node.run_flow_with(&["--days", "1"]).ok();
    let before = current_serial(&node, "rsa").unwrap();
    node.stop();
    before_operation(&mut node);
    node.start(false);
    (node, server, before)
}

#[test]
fn a_pending_request_is_polled_with_cert_poll_within_its_bound_and_nothing_changes() {
    // scepserver never answers PENDING: a server of ours does (tests/common/scep.rs), and
    // openssl judges the signature of every request it gets.
    private_network();
    let (node, server, before) = pending_renewal("scep-pending", usize::MAX, false);
    wait_for(
        || node.log().contains("still has the request"),
        "giving up on PENDING",
        &node,
    );
    let seen = server.seen.lock().unwrap().clone();
    assert_eq!(
        seen[0].message_type, "19",
        "a PKCSReq first (no Renewal offered): {seen:?}"
    );
    assert!(
        seen.len() >= 3 && seen[1..].iter().all(|s| s.message_type == "20"),
        "then CertPolls: {seen:?}"
    );
    assert!(
        seen.iter().all(|s| s.verified),
        "openssl cms -verify accepts every request: {seen:?}"
    );
    assert!(
        seen.iter().all(|s| s.transaction_id == seen[0].transaction_id),
        "one transaction: {seen:?}"
    );
    // Polling stopped at its bound (3 s, every second); the current certificate stays.
    assert!(seen.len() <= 5, "{seen:?}");
    assert_eq!(current_serial(&node, "rsa").unwrap(), before);
    assert!(node.log().contains("PENDING after"), "{}", node.log());
}

#[test]
fn a_request_pending_twice_is_issued_through_an_ra_and_applied() {
    // GetCACert: RA and CA; the RA decrypts the request and signs the answers; the CA
    // issues on the second CertPoll, enveloped by openssl to the request's signer.
    private_network();
    let (node, server, before) = pending_renewal("scep-ra", 2, true);
    wait_for(
        || node.log().contains("renewal of rsa: certificate"),
        "the renewal applied",
        &node,
    );
    let seen = server.seen.lock().unwrap().clone();
    let types: Vec<&str> = seen.iter().map(|s| s.message_type.as_str()).collect();
    assert_eq!(
        types,
        ["19", "20", "20"],
        "PKCSReq, then CertPoll until issued: {seen:?}"
    );
    assert!(seen.iter().all(|s| s.verified), "{seen:?}");
    let after = current_serial(&node, "rsa").unwrap();
    assert_ne!(after, before);
    let cert = node
        .list_certs()
        .into_iter()
        .find(|c| c["serial"] == after.as_str())
        .unwrap();
    let out = node.p("issued.pem");
    node.export_cert(cert["cert_url"].as_str().unwrap(), &out);
    let v = sh(&format!("openssl verify -CAfile {} {out}", server.ca_pem.display())).ok();
    assert!(v.stdout.contains(": OK"), "{}", v.stdout);
}

/// GetCACert with a certificate the CA issued that is not an RA (a device's: over plain
/// HTTP anyone can put one there): taken for the RA, it would receive the request (the
/// challenge password, a claim token in zero-touch enrollment) and sign forged answers. It
/// is refused before anything is sent.
#[test]
fn a_device_certificate_of_the_ca_posing_as_its_ra_is_refused_before_any_request() {
    private_network();
    let device = "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n\
                  extendedKeyUsage=clientAuth\n";
    let (node, server, before) = pending_renewal_with("scep-not-ra", 0, Some(device));
    wait_for(
        || node.log().contains("not an RA"),
        "the renewal refusing the RA",
        &node,
    );
    assert!(node.log().contains("id-kp-cmcRA"), "{}", node.log());
    assert!(
        server.seen.lock().unwrap().is_empty(),
        "a request was sent to a server whose RA is no RA"
    );
    assert_eq!(current_serial(&node, "rsa").unwrap(), before);
    assert!(!node.log().contains(CHALLENGE));
}

/// An RA the CA has revoked (its CRL, made by `openssl ca -gencrl`, given to the node as a
/// file of paths.crl) would read the request and its challenge: it is refused before
/// anything is sent.
#[test]
fn an_ra_that_a_crl_of_the_node_revokes_is_refused_before_any_request() {
    private_network();
    let (node, server, before) = pending_renewal_then("scep-ra-revoked", 2, Some(common::scep::RA_EXT), |node| {
        let crl = openssl_crl_revoking(
            &node.dir,
            "ra",
            &node.path("pending-ca.pem"),
            &node.path("pending-ca.key"),
            &[&node.path("pending-ra.pem")],
        );
        node.paths_extra = format!("crl = [\"{}\"]\n", crl.display());
    });
    wait_for(
        || node.log().contains("RA certificate is revoked by a CRL"),
        "the renewal refusing the revoked RA",
        &node,
    );
    assert!(
        server.seen.lock().unwrap().is_empty(),
        "a request was sent to a revoked RA"
    );
    assert_eq!(current_serial(&node, "rsa").unwrap(), before);
    assert!(!node.log().contains(CHALLENGE));
}

/// A node bootstrapped at the factory for zero-touch enrollment by SCEP (`[enroll] method =
/// "scep"`), its claim token `claim` being the challenge; stopped, ready to ship.
fn bootstrapped_for_scep(name: &str, claim: &str) -> (Node, ScepServer) {
    let (mut node, server) = scep_node(name, false);
    node.make_ca("factory-ca");
    node.extra_config = common::enrollment::enroll_config(
        &node,
        &format!(
            "method = \"scep\"\nurl = \"{}\"\nca_fingerprint = \"{}\"\n",
            server.url,
            server.fingerprint()
        ),
    );
    node.start(true);
    std::fs::write(node.path("claim"), format!("{claim}\n")).unwrap();
    let claim_file = node.p("claim");
    let out = common::enrollment::bootstrap(&node, &["--claim-token-file", &claim_file]).ok();
    assert_eq!(out.json()["state"], "unprovisioned", "{}", out.stdout);
    node.stop();
    (node, server)
}

#[test]
fn zero_touch_enrollment_by_scep_presents_the_claim_token_as_the_challenge() {
    private_network();
    let (mut node, server) = bootstrapped_for_scep("scep-zt", CHALLENGE);
    node.start(false);
    let status = common::enrollment::wait_state(&node, "operational");
    assert_eq!(status["enrollment"]["enrolled"], serde_json::json!(["rsa"]), "{status}");
    verify_issued(&node, &server, "rsa");
    let log = server.log();
    assert!(
        log.contains("PKCSReq (19)") && log.contains("has_challenge=true"),
        "{log}"
    );
    assert!(node.log().contains("verify step is skipped"), "{}", node.log());
    assert!(!node.log().contains(CHALLENGE));
}

#[test]
fn a_claim_token_the_scep_server_refuses_quarantines_the_node() {
    private_network();
    let (mut node, server) = bootstrapped_for_scep("scep-zt-bad", "not-the-challenge");
    node.start(false);
    let status = common::enrollment::wait_state(&node, "quarantined");
    let err = status["enrollment"]["last_error"].as_str().unwrap();
    assert!(err.contains("FAILURE, badRequest"), "{status}");
    assert!(node.list_certs().iter().all(|c| c["type"] != "rsa"));
    assert!(server.log().contains("invalid challenge"), "{}", server.log());
}

#[test]
fn a_server_without_aes_is_refused_unless_des3_is_allowed_then_gets_des3_envelopes_by_get() {
    // Issue 28, item 11: GetCACaps is plain HTTP, so anyone on the path can strike AES from
    // it. A node uses DES3 only where its configuration says `[scep] allow_des3 = true`.
    private_network();
    let mut refused = Node::new("scep-no-des3", Store::Pkcs11);
    // An old server (or an edited answer): DES3 and SHA-256, no AES, no POSTPKIOperation; it
    // issues at once.
    let server = common::scep::PendingServer::start_with(&refused.dir, 8082, 0, None, "DES3\nSHA-256\nRenewal\n");
    let modules = vec![
        ("rsa", "rsa-2048", r#"["clientAuth"]"#, false, 2),
        ("diskencryption", "ecdsa-p384", "[]", true, 1),
    ];
    refused.modules = modules.clone();
    trust(&refused, &server.ca_pem);
    std::fs::write(refused.path("challenge"), format!("{CHALLENGE}\n")).unwrap();
    refused.start(true);
    let out = scep_run(&refused, &server.url, &server.fingerprint(), "challenge");
    let all = format!("{}{}", out.stdout, out.stderr);
    assert_ne!(out.code, 0, "{all}");
    assert!(
        all.contains("announces DES3 but not AES") && all.contains("allow_des3 = true"),
        "{all}"
    );
    assert!(server.seen.lock().unwrap().is_empty(), "a request was sent");
    assert!(refused.list_certs().iter().all(|c| c["type"] != "rsa"));

    let mut node = Node::new("scep-des3", Store::Pkcs11);
    node.modules = modules;
    node.extra_config = "\n[scep]\nallow_des3 = true\n".into();
    trust(&node, &server.ca_pem);
    std::fs::write(node.path("challenge"), format!("{CHALLENGE}\n")).unwrap();
    node.start(true);
    let out = scep_run(&node, &server.url, &server.fingerprint(), "challenge").ok();
    assert_eq!(out.json()["ok"], true, "{}", out.stdout);
    let seen = server.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(
        (seen[0].cipher.as_str(), seen[0].verified),
        ("des-ede3-cbc", true),
        "{seen:?}"
    );
    // Where AES is offered (the other tests' servers), AES it is.
    let mut other = Node::new("scep-aes", Store::Pkcs11);
    let aes = common::scep::PendingServer::start(&other.dir, 8083, 0, false);
    other.modules = node.modules.clone();
    trust(&other, &aes.ca_pem);
    std::fs::write(other.path("challenge"), format!("{CHALLENGE}\n")).unwrap();
    other.start(true);
    scep_run(&other, &aes.url, &aes.fingerprint(), "challenge").ok();
    assert_eq!(aes.seen.lock().unwrap()[0].cipher, "aes-128-cbc");
}

#[test]
fn a_whole_unit_is_provisioned_by_scep_each_node_making_its_own_requests() {
    // `iam-provision --node all run --scep`: the main node forwards ScepEnroll over the link
    // and the secondary's iamd makes the request with its own key, in its own token.
    private_network();
    let mut unit = common::Unit::new("scep-unit", 1);
    let server = ScepServer::start(&unit.main.dir, &[]);
    for n in std::iter::once(&mut unit.main).chain(unit.secondaries.iter_mut()) {
        n.modules = vec![
            ("iam", "rsa-2048", r#"["clientAuth"]"#, false, 2),
            ("diskencryption", "ecdsa-p384", "[]", true, 1),
        ];
        trust(n, &server.ca_pem());
    }
    std::fs::write(unit.main.path("challenge"), format!("{CHALLENGE}\n")).unwrap();
    unit.start(true);
    unit.link_unix(0);
    unit.wait_connected(&unit.secondaries[0].node_id(), true);
    let (pw, ch, fp) = (unit.main.p("password"), unit.main.p("challenge"), server.fingerprint());
    let out = unit.main.provision(&[
        "--node",
        "all",
        "--json",
        "run",
        "--password-file",
        &pw,
        "--scep",
        &server.url,
        "--scep-ca-fingerprint",
        &fp,
        "--challenge-file",
        &ch,
    ]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    for n in std::iter::once(&unit.main).chain(unit.secondaries.iter()) {
        assert_eq!(n.status()["state"], "provisioned");
        verify_issued(n, &server, "iam");
        assert!(n.log().contains("ScepEnroll: done"), "{}", n.log());
    }
    assert_eq!(server.log().matches("PKCSReq (19)").count(), 2, "{}", server.log());
}

#[test]
fn server_text_with_a_line_feed_cannot_forge_a_line_of_iamds_log() {
    // Issue 28, item 9: a plain-HTTP SCEP server (or anyone on its path) answers with a bare
    // line feed in its status line, followed by what would read as another log entry.
    let mut node = Node::new("scep-forge", Store::Pkcs11);
    node.modules = vec![("rsa", "rsa-2048", r#"["clientAuth"]"#, false, 2)];
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten().take(4) {
            let mut s = stream;
            let mut buf = [0u8; 4096];
            let _ = std::io::Read::read(&mut s, &mut buf);
            let _ = std::io::Write::write_all(
                &mut s,
                b"HTTP/1.1 503 Busy\n<2>iamd: FORGED the node is compromised\r\nContent-Length: 0\r\n\r\n",
            );
        }
    });
    std::fs::write(node.path("challenge"), format!("{CHALLENGE}\n")).unwrap();
    node.start(true);
    let url = format!("http://127.0.0.1:{port}/scep");
    let out = scep_run(&node, &url, &"ab".repeat(32), "challenge");
    assert_ne!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let log = node.log();
    assert!(
        !log.lines().any(|l| l.starts_with("<2>iamd: FORGED")),
        "a forged line reached the log:\n{log}"
    );
    assert!(
        log.contains("\\n<2>iamd: FORGED"),
        "the server's text is escaped in the log:\n{log}"
    );
}
