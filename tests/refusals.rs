//! Bad input gets a precise, typed error (and its documented exit code) and changes nothing:
//! wrong passwords, steps in the wrong mode or state, unknown types, and every kind of
//! certificate ApplyCert must refuse.

mod common;
use common::*;
use std::time::{Duration, Instant};

/// What a refused step must leave exactly as it was.
fn observable(node: &Node) -> (serde_json::Value, Vec<(String, String, String, String)>) {
    let objects = if node.store == Store::Pkcs11 && node.path("work/user-pin").exists() {
        node.token_objects()
    } else {
        Vec::new()
    };
    (node.status(), objects)
}

#[test]
fn wrong_password_is_refused_after_a_growing_delay_and_changes_nothing() {
    let mut node = Node::new("pw", Store::Pkcs11);
    node.start(true);
    node.provision_stdin(&["start"], PASSWORD).ok();
    let before = observable(&node);
    let mut delays = Vec::new();
    for _ in 0..2 {
        let t = Instant::now();
        node.provision_stdin(&["--json", "start"], "not-the-password\n")
            .fails(4, "wrong password");
        delays.push(t.elapsed());
    }
    assert!(
        delays[0] >= Duration::from_millis(250),
        "first refusal waited {:?}",
        delays[0]
    );
    assert!(
        delays[1] >= Duration::from_millis(500),
        "second refusal waited {:?}",
        delays[1]
    );
    node.provision_stdin(&["finish"], "nope\n").fails(4, "wrong password");
    node.provision_stdin(&["create-key", "iam"], "nope\n")
        .fails(4, "wrong password");
    let out = node
        .provision_stdin(&["--json", "deprovision"], "nope\n")
        .fails(4, "wrong password");
    assert_eq!(out.json()["error"]["kind"], "unauthorized");
    assert_eq!(observable(&node), before);

    // After deprovisioning, the token still belongs to the old password (its SO PIN):
    // another password cannot take it over.
    node.provision_stdin(&["deprovision"], PASSWORD).ok();
    node.provision_stdin(&["start"], "another-password\n")
        .fails(4, "CKR_PIN_INCORRECT");
    assert_eq!(node.status()["state"], "unprovisioned");
    node.provision_stdin(&["start"], PASSWORD).ok();
    assert!(!node.log().contains("not-the-password") && !node.log().contains("another-password"));
}

#[test]
fn provisioning_steps_outside_provisioning_mode_are_refused() {
    let mut node = Node::new("mode", Store::Pkcs11);
    node.start(false);
    let before = observable(&node);
    node.provision_stdin(&["start"], PASSWORD)
        .fails(5, "not in provisioning mode");
    node.provision_stdin(&["create-key", "iam"], PASSWORD)
        .fails(5, "the node is unprovisioned");
    node.provision_stdin(&["finish"], PASSWORD)
        .fails(5, "not in provisioning mode");
    node.provision_stdin(&["deprovision"], PASSWORD)
        .fails(5, "never provisioned or bootstrapped; there is nothing to reset");
    node.provision(&["apply", "iam", &node.p("ca.pem")])
        .fails(5, "unprovisioned");
    assert_eq!(observable(&node), before);
    assert!(!node.path("work/user-pin").exists(), "the token was not touched");
}

#[test]
fn steps_in_the_wrong_state_are_refused() {
    let mut node = Node::new("state", Store::Software);
    node.start(true);
    node.provision_stdin(&["finish"], PASSWORD)
        .fails(5, "start provisioning first");
    node.provision_stdin(&["start"], PASSWORD).ok();
    node.provision_stdin(&["finish"], PASSWORD)
        .fails(5, "no certificate applied yet for iam, online");
    assert_eq!(node.status()["state"], "provisioning");
}

#[test]
fn unknown_certificate_type_is_not_found() {
    let mut node = Node::new("type", Store::Software);
    node.start(true);
    node.provision_stdin(&["start"], PASSWORD).ok();
    let before = observable(&node);
    node.provision_stdin(&["create-key", "bogus"], PASSWORD)
        .fails(6, "unknown certificate type \"bogus\"");
    node.provision(&["apply", "bogus", &node.p("ca.pem")])
        .fails(6, "this node has: iam, online, diskencryption");
    node.applet("iam-certctl", &["-s", &node.public(), "get", "bogus"], None)
        .fails(6, "unknown certificate type");
    assert_eq!(observable(&node), before);
}

fn apply_refusals(store: Store) {
    let mut node = Node::new("apply", store);
    node.make_ca("other");
    node.start(true);
    node.provision_stdin(&["start"], PASSWORD).ok();
    let csr_file = node.p("iam.csr");
    node.provision(&[
        "create-key",
        "iam",
        "--password-file",
        &node.p("password"),
        "-o",
        &csr_file,
    ])
    .ok();
    let csr = read(&csr_file);
    let before = observable(&node);
    let d = node.dir.display();

    // A certificate for another key.
    sh(&format!("openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-384 -nodes -keyout {d}/x.key -subj /CN=x -out {d}/x.csr 2>/dev/null")).ok();
    node.openssl_sign(&node.p("x.csr"), "ca", &node.p("x.pem"));
    node.provision(&["apply", "iam", &node.p("x.pem")])
        .fails(8, "KeyMismatch");

    // Our key, signed by a CA that chains to another root.
    node.openssl_sign(&csr_file, "other", &node.p("other.pem.issued"));
    node.provision(&["apply", "iam", &node.p("other.pem.issued")])
        .fails(8, "UnknownIssuer");

    // Expired.
    let expired = rcgen_sign(&node, &csr, |p| {
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::days(10);
        p.not_after = now - time::Duration::days(1);
    });
    std::fs::write(node.path("expired.pem"), &expired).unwrap();
    node.provision(&["apply", "iam", &node.p("expired.pem")])
        .fails(8, "CertExpired");

    // Dated an hour ahead: a CA whose clock is that far off is not merely skewed.
    let ahead = rcgen_sign(&node, &csr, |p| {
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now + time::Duration::hours(1);
    });
    std::fs::write(node.path("ahead.pem"), &ahead).unwrap();
    node.provision(&["apply", "iam", &node.p("ahead.pem")])
        .fails(8, "CertNotValidYet");

    // Without the EKU the module requires.
    let no_eku = rcgen_sign(&node, &csr, |p| p.extended_key_usages.clear());
    std::fs::write(node.path("no-eku.pem"), &no_eku).unwrap();
    node.provision(&["--json", "apply", "iam", &node.p("no-eku.pem")])
        .fails(8, "RequiredEkuNotFound");

    // Truncated PEM, and text that is no PEM at all.
    // The one that will apply comes from a CA whose clock runs a minute ahead of ours
    // (notBefore = its "now", as openssl ca and libest do): within the skew allowed.
    let good = rcgen_sign(&node, &csr, |p| {
        p.not_before = time::OffsetDateTime::now_utc() + time::Duration::minutes(1);
    });
    std::fs::write(node.path("truncated.pem"), &good[..good.len() / 2]).unwrap();
    let out = node
        .provision(&["apply", "iam", &node.p("truncated.pem")])
        .fails(7, "it ends before its end line -----END CERTIFICATE-----");
    assert!(!out.stderr.contains("[45, 45"), "the marker as bytes: {}", out.stderr);
    std::fs::write(node.path("garbage.der"), [0x30, 0x82, 0x01]).unwrap();
    node.provision(&["apply", "iam", &node.p("garbage.der")])
        .fails(7, "neither PEM");

    // An intermediate given before the leaf it issued: the order is named.
    make_intermediate(&node, "sub");
    node.openssl_sign(&csr_file, "sub", &node.p("by-sub.pem"));
    std::fs::write(
        node.path("reversed.pem"),
        read(node.path("sub.pem")) + &read(node.path("by-sub.pem")),
    )
    .unwrap();
    node.provision(&["apply", "iam", &node.p("reversed.pem")])
        .fails(7, "the chain is not in order: certificate 2");
    node.provision_stdin(&["apply", "iam", "-"], "hello\n")
        .fails(7, "no PEM certificate");

    assert_eq!(observable(&node), before, "refused applies changed nothing");

    // The pending key is intact: the right certificate still applies, given as DER, though
    // its notBefore is a minute ahead of this node's clock.
    std::fs::write(node.path("good.pem"), &good).unwrap();
    sh(&format!("openssl x509 -in {d}/good.pem -outform der -out {d}/good.der")).ok();
    node.provision(&["apply", "iam", &node.p("good.der")]).ok();
    assert_eq!(node.status()["modules"][0]["certificates"], 1);
}

#[test]
fn refused_certificates_change_nothing_on_a_pkcs11_token() {
    apply_refusals(Store::Pkcs11);
}

#[test]
fn refused_certificates_change_nothing_on_the_software_store() {
    apply_refusals(Store::Software);
}

#[test]
fn provisioning_requires_a_password_from_a_file_or_stdin_never_argv() {
    let mut node = Node::new("argv", Store::Software);
    node.start(true);
    node.provision(&["start", "--password", PASSWORD])
        .fails(2, "Unrecognized argument");
    node.provision_stdin(&["start"], "\n").fails(7, "password is empty");
    node.provision(&["start", "--password-file", "/nonexistent"])
        .fails(7, "/nonexistent");
    assert_eq!(node.status()["state"], "unprovisioned");
}

#[test]
fn a_failing_or_hanging_hook_fails_its_step_and_changes_nothing() {
    let mut node = Node::new("hooks", Store::Pkcs11);
    let d = node.dir.display().to_string();
    node.extra_config = format!(
        "\n[hooks]\ntimeout = 1\nstart = [\"sh\", \"-c\", \"echo \\\"$AOS_IAM_NODE_ID\\\" > {d}/hook-saw; echo 'TPM not ready' >&2; exit 4\"]\n"
    );
    node.start(true);
    node.provision_stdin(&["start"], PASSWORD)
        .fails(3, "start hook sh failed (exit status: 4): TPM not ready");
    assert_eq!(
        read(node.path("hook-saw")).trim(),
        node.node_id(),
        "hooks see the node id"
    );
    assert_eq!(node.status()["state"], "unprovisioned");
    assert!(!node.path("work/user-pin").exists(), "the token was not touched");
    node.stop();

    node.extra_config = "\n[hooks]\ntimeout = 1\nfinish = [\"sleep\", \"30\"]\n".into();
    node.start(true);
    node.run_flow()
        .fails(11, "finish hook sleep ran longer than 1 s and was stopped");
    assert_eq!(
        node.status()["state"],
        "provisioning",
        "FinishProvisioning did not happen"
    );
    assert!(!node.path("work/provisioned").exists());
}

#[test]
fn a_root_the_profile_refuses_is_named_at_check_config_at_start_and_in_the_apply_error() {
    let mut node = Node::new("badroot", Store::Software);
    let d = node.dir.display().to_string();
    // A root whose basic constraints are not critical (RFC 5280 4.2.1.9).
    sh(&format!(
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-384 -nodes -days 365 \
         -keyout {d}/weak.key -out {d}/weak.pem -subj '/O=aos-iam tests/CN=weak' \
         -addext basicConstraints=CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign"
    ))
    .ok();
    let (good, weak) = (read(node.path("ca.pem")), read(node.path("weak.pem")));
    node.write_config();
    let check = |node: &Node| {
        run(
            node.cmd()
                .args(["iamd", "-c", &node.p("config.toml"), "--check-config"]),
            None,
        )
    };

    // Only the refused root: the configuration is not usable, and says why.
    std::fs::write(node.path("ca.pem"), &weak).unwrap();
    let out = check(&node);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("no usable root is configured"), "{}", out.stderr);
    assert!(
        out.stderr.contains("CN=weak") && out.stderr.contains("basic constraints must be critical"),
        "{}",
        out.stderr
    );

    // Beside a good root: valid, with a warning naming the refused one; iamd logs it at start.
    std::fs::write(node.path("ca.pem"), format!("{good}{weak}")).unwrap();
    let out = check(&node).ok();
    assert!(
        out.stderr.contains("warning: root CA refused and not used") && out.stderr.contains("CN=weak"),
        "{}",
        out.stderr
    );
    node.start(true);
    assert!(
        node.log().contains("root CA refused and not used") && node.log().contains("CN=weak"),
        "{}",
        node.log()
    );

    // Apply with the refused root alone: the error says that no usable root is configured.
    node.provision_stdin(&["start"], PASSWORD).ok();
    let csr = node.p("iam.csr");
    node.provision(&["create-key", "iam", "--password-file", &node.p("password"), "-o", &csr])
        .ok();
    node.openssl_sign(&csr, "weak", &node.p("iam.pem"));
    std::fs::write(node.path("ca.pem"), &weak).unwrap();
    node.provision(&["apply", "iam", &node.p("iam.pem")])
        .fails(8, "no usable root is configured");
}

#[test]
fn a_module_whose_algorithm_the_token_lacks_is_refused_at_check_config_and_at_start_naming_what_it_offers() {
    // Issue 29: a token without RSA (SoftHSM told to offer EC key generation and ECDSA
    // only, as a secure element of the ATECC608 class offers P-256 alone).
    let mut node = Node::new("mechs", Store::Pkcs11);
    node.modules = vec![
        ("iam", "ecdsa-p384", r#"["clientAuth", "serverAuth"]"#, false, 2),
        ("rsa", "rsa-2048", r#"["clientAuth"]"#, false, 2),
        ("diskencryption", "ecdsa-p256", "[]", true, 1),
    ];
    let conf = node.path("softhsm2.conf");
    let mut text = read(&conf);
    text.push_str("slots.mechanisms = CKM_EC_KEY_PAIR_GEN,CKM_ECDSA\n");
    std::fs::write(&conf, text).unwrap();
    node.write_config();
    let refusal =
        "module rsa: PKCS#11 token label \"aos-test\" cannot make rsa-2048 keys; it offers ecdsa-p384, ecdsa-p256";
    let check = node.applet("iamd", &["--check-config", "-c", &node.p("config.toml")], None);
    assert_eq!(check.code, 1, "{}{}", check.stdout, check.stderr);
    assert!(check.stderr.contains(refusal), "{}", check.stderr);

    // iamd itself stops at its start, before it listens, and says why.
    let mut iamd = node
        .daemon_cmd()
        .args(["iamd", "-c", &node.p("config.toml"), "--provisioning"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = iamd.try_wait().unwrap() {
            break s;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "iamd did not stop");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(iamd.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(!status.success() && err.contains(refusal), "{status}: {err}");
    assert!(!node.path("run/protected.sock").exists());

    // What the token offers is enough for the other modules: the node provisions.
    node.modules.retain(|m| m.0 != "rsa");
    node.start(true);
    node.run_flow().ok();
    assert_eq!(node.list_certs().len(), 2, "{:?}", node.list_certs());
}
