//! Provisioning a node end to end, by `iam-provision run` and by the single verbs, on a
//! real SoftHSM token and on the software store, judged by independent tools.

mod common;
use common::*;

/// Each applied certificate verifies with openssl against the root (and the chain).
fn assert_certs_verify(node: &Node, certs: &[serde_json::Value], untrusted: Option<&str>) {
    for c in certs {
        openssl_verify_exported(node, c, &node.p("ca.pem"), untrusted.map(|u| node.p(u)).as_deref());
    }
}

/// The key a URL names signs, and the signature verifies with its certificate's key.
fn assert_key_url_signs(node: &Node, cert: &serde_json::Value) {
    let t = cert["type"].as_str().unwrap();
    let key_url = cert["key_url"].as_str().unwrap();
    let pem = node.p(&format!("{t}.issued.pem"));
    node.export_cert(cert["cert_url"].as_str().unwrap(), &pem);
    let d = node.dir.display();
    std::fs::write(node.path("data"), b"signed by a key that never left its store").unwrap();
    let sign = if let Some(path) = key_url.strip_prefix("file://") {
        format!("openssl pkeyutl -sign -inkey {path} -in {d}/digest -out {d}/sig")
    } else {
        format!(
            "OPENSSL_CONF=/dev/null openssl pkeyutl -engine pkcs11 -keyform engine -inkey '{key_url}' -passin pass:{} \
             -sign -in {d}/digest -out {d}/sig",
            node.user_pin().trim()
        )
    };
    let mut cmd = node.cmd_for("sh");
    cmd.arg("-c").arg(format!(
        "set -e; openssl dgst -sha256 -binary {d}/data > {d}/digest; {sign}; \
         openssl x509 -in {pem} -pubkey -noout > {d}/pub.pem; \
         openssl pkeyutl -verify -pubin -inkey {d}/pub.pem -in {d}/digest -sigfile {d}/sig"
    ));
    let out = run(&mut cmd, None).ok();
    assert!(
        out.stdout.contains("Signature Verified Successfully"),
        "{}{}",
        out.stdout,
        out.stderr
    );
}

/// On the token: for every module a private key (sensitive, never extractable, local), its
/// public key and its certificate, all with one ID; nothing else.
fn assert_token_holds_exactly_one_set_per_module(node: &Node) {
    let objs = node.token_objects();
    let labels: Vec<&str> = node.modules.iter().map(|m| m.0).collect();
    assert_eq!(objs.len(), 3 * labels.len(), "{objs:#?}");
    for label in labels {
        let of: Vec<_> = objs.iter().filter(|o| o.1 == label).collect();
        assert_eq!(of.len(), 3, "{label}: {of:#?}");
        let id = &of[0].2;
        assert!(
            !id.is_empty() && of.iter().all(|o| &o.2 == id),
            "{label}: one ID for key pair and certificate: {of:#?}"
        );
        let private = of.iter().find(|o| o.0.starts_with("Private Key")).expect("private key");
        for attr in ["sensitive", "always sensitive", "never extractable", "local"] {
            assert!(
                private.3.contains(attr),
                "{label}: private key access {:?} lacks {attr}",
                private.3
            );
        }
        assert!(
            of.iter().any(|o| o.0.starts_with("Certificate")),
            "{label}: certificate object"
        );
        assert!(
            of.iter().any(|o| o.0.starts_with("Public Key")),
            "{label}: public key object"
        );
    }
}

fn software_key_files_are_private(node: &Node) {
    let out = sh(&format!(
        "find {} -type f -name '*.key' -printf '%m\\n' | sort -u",
        node.p("work/keys")
    ))
    .ok();
    assert_eq!(out.stdout.trim(), "600", "key file modes");
}

fn whole_flow_by_run(store: Store) {
    let mut node = Node::new("run", store);
    make_intermediate(&node, "sub");
    node.start(true);
    let (sub, key, pw) = (node.p("sub.pem"), node.p("sub.key"), node.p("password"));
    let out = node
        .provision(&[
            "--json",
            "run",
            "--ca-cert",
            &sub,
            "--ca-key",
            &key,
            "--password-file",
            &pw,
        ])
        .ok()
        .json();
    assert_eq!(out["ok"], true);
    let certs = out["certificates"].as_array().unwrap().clone();
    assert_eq!(
        certs.iter().map(|c| c["type"].as_str().unwrap()).collect::<Vec<_>>(),
        ["iam", "online"]
    );
    assert!(certs.iter().all(|c| c["current"] == true));

    let status = node.status();
    assert_eq!(status["state"], "provisioned");
    for m in status["modules"].as_array().unwrap() {
        assert_eq!(
            (m["certificates"].as_u64(), m["pending_key"].as_bool()),
            (Some(1), Some(false)),
            "{m}"
        );
    }
    assert!(node.path("work/provisioned").exists(), "marker file for systemd");
    let mode = |p: &str| {
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(node.path(p)).unwrap().permissions()) & 0o777
    };
    assert_eq!(
        mode("work/iam.db") & 0o077,
        0,
        "the database (password verifier) is for root only"
    );
    assert_eq!(mode("work/provisioned"), 0o644, "the marker is readable by all");
    assert_eq!(mode("run/public.sock"), 0o666);
    assert_eq!(mode("run/protected.sock"), 0o660);

    assert_certs_verify(&node, &certs, Some("sub.pem"));
    for c in &certs {
        assert_key_url_signs(&node, c);
    }
    match store {
        Store::Pkcs11 => assert_token_holds_exactly_one_set_per_module(&node),
        Store::Software => software_key_files_are_private(&node),
    }

    // After a restart in normal mode the certificates are served on the public socket.
    assert!(node.stop().success());
    node.start(false);
    let got = node
        .applet("iam-certctl", &["-s", &node.public(), "--json", "get", "iam"], None)
        .ok()
        .json();
    assert_eq!(got["certificate"]["serial"], certs[0]["serial"]);
    assert_eq!(got["certificate"]["current"], true);
    let listed = node.list_certs();
    assert_eq!(listed.len(), 3, "two CA-signed and one self-signed");
    // GetCert by issuer and serial.
    let online = &listed[1];
    let (issuer, serial) = (
        online["issuer_der"].as_str().unwrap(),
        online["serial"].as_str().unwrap(),
    );
    let got = node
        .applet(
            "iam-certctl",
            &[
                "-s",
                &node.public(),
                "--json",
                "get",
                "online",
                "--issuer",
                issuer,
                "--serial",
                serial,
            ],
            None,
        )
        .ok()
        .json();
    assert_eq!(got["certificate"]["cert_url"], online["cert_url"]);
    node.applet(
        "iam-certctl",
        &[
            "-s",
            &node.public(),
            "get",
            "online",
            "--issuer",
            issuer,
            "--serial",
            "01",
        ],
        None,
    )
    .fails(6, "no certificate of type \"online\" matches");
    node.applet(
        "iam-certctl",
        &["-s", &node.public(), "get", "online", "--serial", serial],
        None,
    )
    .fails(7, "give both issuer and serial");
    let text = node
        .applet("iam-certctl", &["-s", &node.protected(), "list"], None)
        .ok()
        .stdout;
    assert!(
        text.contains("iam (current)") && text.contains("diskencryption (current)"),
        "{text}"
    );

    // No secret reached the log, at the most verbose level.
    let log = node.log();
    assert!(
        !log.contains("reconciliation:"),
        "a healthy node has nothing to report: {log}"
    );
    assert!(!log.contains(PASSWORD), "password in the log");
    if store == Store::Pkcs11 {
        assert!(!log.contains(node.user_pin().trim()), "user PIN in the log");
        let mode = std::fs::metadata(node.path("work/user-pin")).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
            0o600
        );
    }
}

#[test]
fn whole_flow_by_run_on_a_pkcs11_token() {
    whole_flow_by_run(Store::Pkcs11);
}

#[test]
fn whole_flow_by_run_on_the_software_store() {
    whole_flow_by_run(Store::Software);
}

fn whole_flow_by_verbs(store: Store) {
    let mut node = Node::new("verbs", store);
    node.start(true);
    node.provision_stdin(&["start"], &format!("{PASSWORD}\n")).ok();
    assert_eq!(node.status()["state"], "provisioning");
    let types = node.provision(&["cert-types"]).ok().stdout;
    assert_eq!(types.lines().collect::<Vec<_>>(), ["iam", "online"]);
    let pw = node.p("password");
    for t in ["iam", "online"] {
        let csr = node.p(&format!("{t}.csr"));
        node.provision(&[
            "create-key",
            t,
            "--subject",
            "CN=unit-7,O=Factory",
            "--password-file",
            &pw,
            "-o",
            &csr,
        ])
        .ok();
        let v = sh(&format!("openssl req -in {csr} -noout -verify -subject -text 2>&1")).ok();
        assert!(
            v.stdout.contains("verify OK") || v.stdout.contains("verification OK"),
            "{}",
            v.stdout
        );
        assert!(v.stdout.contains("CN = unit-7"), "{}", v.stdout);
        assert!(
            v.stdout.contains("TLS Web Client Authentication"),
            "EKU requested in the CSR: {}",
            v.stdout
        );
        let cert = node.p(&format!("{t}.pem"));
        node.openssl_sign(&csr, "ca", &cert);
        let applied = node.provision(&["--json", "apply", t, &cert]).ok().json();
        assert_eq!(applied["certificate"]["type"], t);
        // Applying the same certificate again (a retried step) is harmless.
        node.provision(&["apply", t, &cert]).ok();
    }
    node.provision(&["finish", "--password-file", &pw]).ok();
    let status = node.status();
    assert_eq!(status["state"], "provisioned");
    assert!(status["modules"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["certificates"] == 1));
    let listed = node.list_certs();
    let certs: Vec<_> = listed
        .iter()
        .filter(|c| c["type"] != "diskencryption")
        .cloned()
        .collect();
    assert_certs_verify(&node, &certs, None);
    if store == Store::Pkcs11 {
        assert_token_holds_exactly_one_set_per_module(&node);
    }
    // Deprovision wipes everything.
    node.provision(&["deprovision", "--password-file", &pw]).ok();
    assert_eq!(node.status()["state"], "unprovisioned");
    assert!(!node.path("work/provisioned").exists());
    let listed = node.list_certs();
    assert_eq!(listed.len(), 0);
}

#[test]
fn whole_flow_by_verbs_on_a_pkcs11_token() {
    whole_flow_by_verbs(Store::Pkcs11);
}

#[test]
fn whole_flow_by_verbs_on_the_software_store() {
    whole_flow_by_verbs(Store::Software);
}

#[test]
fn run_signs_through_an_external_command() {
    let mut node = Node::new("cmd", Store::Pkcs11);
    node.start(true);
    let d = node.dir.display();
    let cmd = format!(
        "openssl x509 -req -CA {d}/ca.pem -CAkey {d}/ca.key -days 10 -copy_extensions copy 2>/dev/null && echo \"$AOS_IAM_CERT_TYPE\" >> {d}/signed"
    );
    let out = node
        .provision(&["run", "--sign-cmd", &cmd, "--password-file", &node.p("password")])
        .ok();
    assert!(out.stdout.contains("provisioned"), "{}", out.stdout);
    assert_eq!(read(node.path("signed")).lines().collect::<Vec<_>>(), ["iam", "online"]);

    // A signer that refuses: its exit status and stderr are shown, the node is not provisioned.
    let mut node = Node::new("cmd-refuse", Store::Software);
    node.start(true);
    node.provision(&[
        "run",
        "--sign-cmd",
        "echo 'quota exceeded' >&2; exit 3",
        "--password-file",
        &node.p("password"),
    ])
    .fails(4, "quota exceeded");
    assert_eq!(node.status()["state"], "provisioning");
}

#[test]
fn run_on_a_provisioned_node_is_refused_unless_told_to_deprovision_first() {
    let mut node = Node::new("rerun", Store::Pkcs11);
    node.start(true);
    node.run_flow().ok();
    let first = node.token_objects();
    node.run_flow().fails(5, "already provisioned");
    assert_eq!(node.token_objects(), first, "a refused run changes nothing");
    node.run_flow_with(&["--deprovision-first"]).ok();
    assert_eq!(node.status()["state"], "provisioned");
    assert_token_holds_exactly_one_set_per_module(&node);
    assert_ne!(node.token_objects(), first, "new keys");
}

#[test]
fn run_shows_a_line_per_step_on_a_terminal_and_nothing_extra_otherwise() {
    let mut node = Node::new("tty", Store::Software);
    node.start(true);
    let cmd = format!(
        "{} iam-provision -s {} run --ca-cert {} --ca-key {} --password-file {}",
        bin().display(),
        node.protected(),
        node.p("ca.pem"),
        node.p("ca.key"),
        node.p("password")
    );
    // util-linux `script` gives the command a terminal.
    let out = sh(&format!("script -qec '{cmd}' /dev/null")).ok();
    for step in [
        "StartProvisioning ... ok",
        "GetCertTypes ... ok",
        "CreateKey iam ... ok",
        "Sign iam ... ok",
        "ApplyCert online ... ok",
        "FinishProvisioning ... ok",
    ] {
        assert!(out.stdout.contains(step), "{step:?} in:\n{}", out.stdout);
    }
    // Without a terminal: no progress lines, just the result.
    let out = node
        .provision(&[
            "run",
            "--deprovision-first",
            "--ca-cert",
            &node.p("ca.pem"),
            "--ca-key",
            &node.p("ca.key"),
            "--password-file",
            &node.p("password"),
        ])
        .ok();
    assert!(!out.stderr.contains("..."), "{}", out.stderr);
    assert!(
        out.stdout.starts_with(&format!("node {} provisioned", node.node_id())),
        "{}",
        out.stdout
    );
}

#[test]
fn run_on_a_node_provisioned_part_way_by_hand_resumes_and_keeps_what_was_applied() {
    let mut node = Node::new("resume", Store::Pkcs11);
    node.start(true);
    let pw = node.p("password");
    node.provision(&["start", "--password-file", &pw]).ok();
    let csr = node.p("iam.csr");
    node.provision(&["create-key", "iam", "--password-file", &pw, "-o", &csr])
        .ok();
    node.openssl_sign(&csr, "ca", &node.p("iam.pem"));
    let by_hand = node
        .provision(&["--json", "apply", "iam", &node.p("iam.pem")])
        .ok()
        .json();

    let out = node.run_flow().ok().json();
    let certs = out["certificates"].as_array().unwrap();
    let iam = certs.iter().find(|c| c["type"] == "iam").unwrap();
    assert_eq!(
        iam["serial"], by_hand["certificate"]["serial"],
        "the applied certificate stays"
    );
    assert!(certs.iter().any(|c| c["type"] == "online"), "{out}");
    assert_eq!(node.status()["state"], "provisioned");
    assert_eq!(node.list_certs().iter().filter(|c| c["type"] == "iam").count(), 1);
}

#[test]
fn the_disk_encryption_hook_encrypts_with_the_password_it_reads_on_stdin_never_from_argv_or_environment() {
    let mut node = Node::new("diskenc", Store::Software);
    let d = node.dir.display().to_string();
    // The hook encrypts a disk image with the password on its stdin (openssl's `-pass
    // stdin`, as `cryptsetup --key-file -` would read it), and records what else it saw.
    std::fs::write(node.path("disk.img"), "the data partition\n").unwrap();
    std::fs::write(
        node.path("encrypt.sh"),
        format!(
            "echo \"$0 $*\" > {d}/hook-argv; env > {d}/hook-env\n\
             exec openssl enc -aes-256-cbc -pbkdf2 -pass stdin -in {d}/disk.img -out {d}/disk.enc\n"
        ),
    )
    .unwrap();
    node.extra_config =
        format!("\n[hooks]\ndisk_encryption = [\"sh\", \"{d}/encrypt.sh\", \"--device\", \"{d}/disk.img\"]\n");
    node.start(true);
    node.provision(&["start", "--password-file", &node.p("password")]).ok();
    // Decrypted with the factory's password, the image is the data.
    let plain = sh(&format!(
        "openssl enc -d -aes-256-cbc -pbkdf2 -pass 'pass:{PASSWORD}' -in {d}/disk.enc"
    ))
    .ok();
    assert_eq!(plain.stdout, "the data partition\n");
    // A wrong password does not decrypt it: the key is the password, not something else.
    let wrong = sh(&format!(
        "openssl enc -d -aes-256-cbc -pbkdf2 -pass pass:nope -in {d}/disk.enc"
    ));
    assert_ne!(wrong.stdout, "the data partition\n");
    for seen in ["hook-argv", "hook-env"] {
        assert!(!read(node.path(seen)).contains(PASSWORD), "{seen} holds the password");
    }
    assert!(read(node.path("hook-argv")).contains("--device"));
    assert!(!node.log().contains(PASSWORD), "{}", node.log());
}
