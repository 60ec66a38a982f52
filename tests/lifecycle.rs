//! Certificates in operation: renewal on a provisioned node in normal mode, `max_items`
//! rotation, change notifications to subscribers, and `iam-certctl check`.

mod common;
use common::*;

/// CreateKey, sign with the node's openssl CA, ApplyCert: one renewal. Returns the serial.
fn renew(node: &Node, cert_type: &str, n: usize) -> String {
    let (csr, pem) = (node.p(&format!("renew-{n}.csr")), node.p(&format!("renew-{n}.pem")));
    node.provision(&[
        "create-key",
        cert_type,
        "--password-file",
        &node.p("password"),
        "-o",
        &csr,
    ])
    .ok();
    node.openssl_sign(&csr, "ca", &pem);
    let applied = node.provision(&["--json", "apply", cert_type, &pem]).ok().json();
    applied["certificate"]["serial"].as_str().unwrap().to_string()
}

#[test]
fn five_renewals_with_max_items_2_keep_two_certificates_serve_the_newest_and_remove_old_keys() {
    let node = Node::provisioned("rot");
    let watch = Watcher::start(&node, "iam-certctl", &["-s", &node.public(), "--json", "watch", "iam"]);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let key_ids = |node: &Node| -> Vec<String> {
        node.token_objects()
            .into_iter()
            .filter(|o| o.0 == "Private Key" && o.1 == "iam")
            .map(|o| o.2)
            .collect()
    };
    let mut seen_keys: Vec<String> = key_ids(&node);
    for n in 0..5 {
        let serial = renew(&node, "iam", n);
        let ev = watch.next();
        assert_eq!(ev["type"], "iam");
        assert_eq!(ev["current"]["serial"], serial.as_str(), "{ev}");
        let current = node
            .applet("iam-certctl", &["-s", &node.public(), "--json", "get", "iam"], None)
            .ok()
            .json();
        assert_eq!(
            current["certificate"]["serial"],
            serial.as_str(),
            "the newest is served"
        );
        let keys = key_ids(&node);
        assert!(keys.len() <= 2, "renewal {n}: {} iam keys on the token", keys.len());
        let certs: Vec<_> = node
            .token_objects()
            .into_iter()
            .filter(|o| o.0 == "Certificate" && o.1 == "iam")
            .collect();
        assert!(certs.len() <= 2, "renewal {n}: {} iam certificates", certs.len());
        for k in &seen_keys {
            if !keys.contains(k) {
                assert!(
                    !node.token_objects().iter().any(|o| &o.2 == k),
                    "objects of evicted key {k} remain"
                );
            }
        }
        seen_keys = keys;
        assert_eq!(
            node.list_certs().iter().filter(|c| c["type"] == "iam").count(),
            2,
            "renewal {n}"
        );
    }
    // Exactly one event per change: nothing more is waiting.
    watch.nothing_for(std::time::Duration::from_millis(500));
}

#[test]
fn certificate_watch_reports_removal_and_unknown_types_are_refused() {
    let mut node = Node::new("watchrm", Store::Pkcs11);
    node.start(true);
    node.run_flow().ok();
    let watch = Watcher::start(&node, "iam-certctl", &["-s", &node.public(), "--json", "watch"]);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let pw = node.p("password");
    node.provision(&["deprovision", "--password-file", &pw]).ok();
    let mut types = Vec::new();
    for _ in 0..3 {
        let ev = watch.next();
        assert!(ev["current"].is_null(), "{ev}");
        types.push(ev["type"].as_str().unwrap().to_string());
    }
    types.sort();
    assert_eq!(types, ["diskencryption", "iam", "online"]);
    node.applet("iam-certctl", &["-s", &node.public(), "watch", "nope"], None)
        .fails(6, "nope");
}

fn certctl(node: &Node, args: &[&str]) -> Out {
    let mut all = vec!["-s".to_string(), node.protected()];
    all.extend(args.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    node.applet("iam-certctl", &refs, None)
}

fn renew_local_ca(node: &Node, cert_type: &str, days: &str) -> Out {
    node.renew_with_ca(cert_type, Some(days))
}

#[test]
fn check_rates_expiry_and_a_tampered_token_like_a_monitoring_plugin() {
    let node = Node::provisioned("check");
    let out = certctl(&node, &["check"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.starts_with("IAM OK - 3 certificate(s)"), "{}", out.stdout);

    // A renewal that brings a short-lived certificate: warning, then critical.
    let renewed = renew_local_ca(&node, "online", "20").ok().json();
    assert_eq!(renewed["certificate"]["current"], true);
    let out = certctl(&node, &["check"]);
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(
        out.stdout.contains("WARNING   online") && out.stdout.contains("expires in "),
        "{}",
        out.stdout
    );
    assert_eq!(certctl(&node, &["check", "--warning-days", "10"]).code, 0);
    let out = certctl(&node, &["--json", "check", "--critical-days", "25"]);
    assert_eq!(out.code, 2);
    assert_eq!(out.json()["status"], "CRITICAL");

    // The current certificate object is deleted behind iamd's back.
    let id_hex = node
        .token_objects()
        .into_iter()
        .find(|o| o.0 == "Certificate" && o.1 == "iam")
        .unwrap()
        .2;
    node.pkcs11_tool(&["--delete-object", "--type", "cert", "--id", &id_hex]);
    let out = certctl(
        &node,
        &["--json", "check", "--warning-days", "1", "--critical-days", "1"],
    );
    assert_eq!(out.code, 2, "{}", out.stdout);
    let v = out.json();
    let broken = v["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "iam")
        .unwrap()
        .clone();
    assert_eq!(broken["cert_present"], false, "{v}");
    assert!(
        broken["reason"]
            .as_str()
            .unwrap()
            .contains("certificate object is missing"),
        "{broken}"
    );

    // iamd unreachable: UNKNOWN.
    node.applet("iam-certctl", &["-s", "/nonexistent.sock", "check"], None)
        .fails(3, "is iamd running?");
}

#[test]
fn renew_with_a_signing_command_that_refuses_or_asks_to_retry_changes_nothing() {
    let node = Node::provisioned("renewcmd");
    let before = node.list_certs();
    let pw = node.p("password");
    certctl(
        &node,
        &[
            "renew",
            "iam",
            "--sign-cmd",
            "echo busy >&2; exit 75",
            "--password-file",
            &pw,
        ],
    )
    .fails(3, "asks to retry later (exit 75): busy");
    certctl(
        &node,
        &[
            "renew",
            "iam",
            "--sign-cmd",
            "echo no >&2; exit 1",
            "--password-file",
            &pw,
        ],
    )
    .fails(4, "the signing command refused");
    let after = node.list_certs();
    assert_eq!(before, after, "no certificate changed");
    // A command that issues: the renewal goes through.
    let cmd = format!(
        "cat > {d}/cmd.csr && openssl x509 -req -in {d}/cmd.csr -CA {d}/ca.pem -CAkey {d}/ca.key -days 30 -copy_extensions copy 2>/dev/null",
        d = node.dir.display()
    );
    let out = certctl(
        &node,
        &["--json", "renew", "iam", "--sign-cmd", &cmd, "--password-file", &pw],
    )
    .ok()
    .json();
    assert_eq!(out["certificate"]["current"], true);
    assert_eq!(node.list_certs().iter().filter(|c| c["type"] == "iam").count(), 2);
}

#[test]
fn reconciliation_removes_orphans_and_stale_pending_keys_and_reports_missing_objects() {
    let mut node = Node::new("recon", Store::Pkcs11);
    node.extra_config = "\n[reconcile]\ninterval = 1\npending_max_age = 2\n".into();
    node.start(true);
    node.run_flow().ok();
    node.stop();
    // An orphan key pair of our type, planted while iamd is down (SoftHSM shows a running
    // iamd the objects another process creates only once it opens the token again).
    let orphan = "0a0b0c0d0e0f10111213141516171819";
    node.plant_key("iam", orphan);
    assert!(node.token_objects().iter().any(|o| o.2 == orphan));
    node.start(false);
    // The current online certificate object goes behind iamd's back.
    let online = node.list_certs().into_iter().find(|c| c["type"] == "online").unwrap();
    let online_id = node
        .token_objects()
        .into_iter()
        .find(|o| o.0 == "Certificate" && o.1 == "online")
        .unwrap()
        .2;
    node.pkcs11_tool(&["--delete-object", "--type", "cert", "--id", &online_id]);
    // A key whose certificate never comes.
    let pw = node.p("password");
    node.provision(&["create-key", "iam", "--password-file", &pw, "-o", &node.p("stale.csr")])
        .ok();
    assert_eq!(node.status()["modules"][0]["pending_key"], true);

    let start = std::time::Instant::now();
    loop {
        let objects = node.token_objects();
        let keys_of_iam = objects.iter().filter(|o| o.0 == "Private Key" && o.1 == "iam").count();
        if !objects.iter().any(|o| o.2 == orphan)
            && keys_of_iam == 1
            && node.status()["modules"][0]["pending_key"] == false
        {
            break;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(20),
            "not reconciled: {objects:?}\n{}",
            node.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let log = node.log();
    assert!(log.contains(&format!("removed objects iam/{orphan}")), "{log}");
    assert!(log.contains("removed pending key iam/"), "{log}");
    let missing = format!("certificate record online/{online_id}: its certificate is missing");
    assert!(log.contains(&missing), "{log}");
    assert_eq!(
        log.matches(&missing).count(),
        1,
        "a standing finding is logged once:\n{log}"
    );
    // The record whose object went is kept (check shows it) and the only key of online stays.
    assert!(node.list_certs().iter().any(|c| c["serial"] == online["serial"]));
    assert!(node
        .token_objects()
        .iter()
        .any(|o| o.0 == "Private Key" && o.1 == "online"));
}

/// The node's root CA `ca` as an openssl CA issuing for `seconds` (see
/// [`openssl_ca_command`]).
fn short_lived_ca(node: &Node, seconds: u32) -> String {
    openssl_ca_command(node, "ca", seconds)
}

/// Provision `node` with its iam module renewed by iamd through `command` at `threshold`
/// (iam last, so that `[modules.renew]` belongs to it), then start it in normal mode.
fn provisioned_renewing(node: &mut Node, command: &str, threshold: &str) {
    node.modules.rotate_left(1);
    assert_eq!(node.modules.last().unwrap().0, "iam");
    node.extra_config = format!(
        "[modules.renew]\ncommand = \"{}\"\nthreshold = \"{threshold}\"\nretry = \"1s\"\njitter = \"0%\"\n",
        command.replace('\\', "\\\\").replace('"', "\\\"")
    );
    node.start(true);
    node.run_flow().ok();
    node.stop();
    node.start(false);
}

fn current_iam(node: &Node) -> serde_json::Value {
    node.list_certs()
        .into_iter()
        .find(|c| c["type"] == "iam" && c["current"] == true)
        .unwrap()
}

fn wait_for_new_iam(node: &Node, old_serial: &str, within: u64) -> serde_json::Value {
    let start = std::time::Instant::now();
    loop {
        let c = current_iam(node);
        if c["serial"] != old_serial {
            return c;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(within),
            "no renewal within {within} s:\n{}",
            node.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}

#[test]
fn a_short_lived_certificate_is_renewed_by_iamd_and_a_renewal_killed_midway_completes_after_restart() {
    let mut node = Node::new("auto", Store::Pkcs11);
    let cmd = short_lived_ca(&node, 20);
    provisioned_renewing(&mut node, &cmd, "50%");
    // A certificate that lives 30 s: renewed when half of it is gone.
    let pw = node.p("password");
    let short = certctl(
        &node,
        &["--json", "renew", "iam", "--sign-cmd", &cmd, "--password-file", &pw],
    )
    .ok()
    .json();
    let first = short["certificate"]["serial"].as_str().unwrap().to_string();
    let renewed = wait_for_new_iam(&node, &first, 40);
    assert!(node.log().contains("renewal of iam: certificate"), "{}", node.log());
    let out = node.p("renewed.pem");
    node.export_cert(renewed["cert_url"].as_str().unwrap(), &out);
    assert!(sh(&format!("openssl verify -CAfile {} {out}", node.p("ca.pem")))
        .stdout
        .contains(": OK"));

    // The next renewal is killed while the CA is signing; the old certificate stays served.
    let second = renewed["serial"].as_str().unwrap().to_string();
    std::fs::write(node.path("slow"), "").unwrap();
    let start = std::time::Instant::now();
    while !node.path("signing").exists() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(40),
            "the renewal never began:\n{}",
            node.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    node.kill9();
    std::fs::remove_file(node.path("slow")).unwrap();
    // The CA holds the resumed renewal until the old certificate has been seen served.
    std::fs::write(node.path("hold"), "").unwrap();
    node.start(false);
    let served = current_iam(&node);
    assert_eq!(
        served["serial"],
        second.as_str(),
        "the old certificate is served until the new one is applied"
    );
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let not_after = time::OffsetDateTime::parse(
        served["not_after"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap()
    .unix_timestamp();
    assert!(not_after > now, "the served certificate is still valid");
    std::fs::remove_file(node.path("hold")).unwrap();
    wait_for_new_iam(&node, &second, 30);
    assert!(
        node.log().contains("renewal of iam: resuming at step KeyCreated"),
        "{}",
        node.log()
    );
    // max_items = 2: the token holds two iam certificates and their keys, no more.
    let objects = node.token_objects();
    assert_eq!(
        objects.iter().filter(|o| o.0 == "Private Key" && o.1 == "iam").count(),
        2,
        "{objects:?}"
    );
}

#[test]
fn a_renewal_waiting_for_its_ca_keeps_its_key_past_pending_max_age() {
    let mut node = Node::new("renew-wait", Store::Pkcs11);
    node.modules.rotate_left(1);
    let cmd = short_lived_ca(&node, 3600);
    // The CA refuses while `away` exists; stale pending keys go after 1 s, checked every 1 s.
    let d = node.dir.display().to_string();
    let gated = format!("if [ -e {d}/away ]; then echo the CA is away >&2; exit 1; fi; {cmd}");
    node.extra_config = format!(
        "[modules.renew]\ncommand = \"{}\"\nthreshold = \"36500d\"\nretry = \"1s\"\njitter = \"0%\"\n\
         \n[reconcile]\ninterval = 1\npending_max_age = 1\n",
        gated.replace('\\', "\\\\").replace('"', "\\\"")
    );
    std::fs::write(node.path("away"), "").unwrap();
    node.start(true);
    node.run_flow().ok();
    let first = node.list_certs().into_iter().find(|c| c["type"] == "iam").unwrap()["serial"].clone();
    node.stop();
    node.start(false);
    // Refused three times (after 1 s, then 2 s): the renewal's key is 3 s old, past its
    // pending_max_age; then two more reconciliation passes.
    let start = std::time::Instant::now();
    while !node.log().contains("trying again in 4 s") {
        assert!(start.elapsed() < std::time::Duration::from_secs(60), "{}", node.log());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let passes = |log: &str| log.matches("reconciliation: pass done").count();
    let seen = passes(&node.log());
    while passes(&node.log()) < seen + 2 {
        assert!(start.elapsed() < std::time::Duration::from_secs(60), "{}", node.log());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(!node.log().contains("removed pending key iam/"), "{}", node.log());
    std::fs::remove_file(node.path("away")).unwrap();
    let start = std::time::Instant::now();
    loop {
        let current = node
            .list_certs()
            .into_iter()
            .find(|c| c["type"] == "iam" && c["current"] == true)
            .unwrap();
        if current["serial"] != first {
            break;
        }
        assert!(start.elapsed() < std::time::Duration::from_secs(60), "{}", node.log());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(!node.log().contains("its new key is gone"), "{}", node.log());
}

#[test]
fn renew_without_a_signer_runs_the_configured_renewal_now_and_waits_for_its_outcome() {
    let mut node = Node::new("renew-now", Store::Pkcs11);
    let ca = short_lived_ca(&node, 3600);
    let gated = format!(
        "if [ -e {d}/away ]; then echo the CA is away >&2; exit 1; fi; {ca}",
        d = node.dir.display()
    );
    // Not due for years: only RenewNow renews it.
    provisioned_renewing(&mut node, &gated, "10%");
    let before = current_iam(&node);
    let renewed = certctl(&node, &["--json", "renew", "iam"]).ok().json();
    let serial = renewed["certificate"]["serial"].as_str().unwrap();
    assert_ne!(serial, before["serial"].as_str().unwrap());
    assert_eq!(
        current_iam(&node)["serial"],
        serial,
        "the renewed certificate is served"
    );
    assert!(node.log().contains("renewal of iam: asked for now"), "{}", node.log());
    // Its issuer is the configured signer: the openssl CA's database holds it.
    assert!(read(node.path("index.txt")).lines().count() >= 1);
    // The CA refuses: the outcome is the refusal, and the current certificate stays.
    std::fs::write(node.path("away"), "").unwrap();
    certctl(&node, &["renew", "iam"]).fails(4, "the CA is away");
    assert_eq!(current_iam(&node)["serial"], serial);
    // A module without a policy: nothing to run, said so.
    certctl(&node, &["renew", "online"]).fails(7, "[modules.renew]");
    // Back: the renewal kept by the failure is resumed now.
    std::fs::remove_file(node.path("away")).unwrap();
    let again = certctl(&node, &["--json", "renew", "iam"]).ok().json();
    assert_ne!(again["certificate"]["serial"].as_str().unwrap(), serial);
}

#[test]
fn a_threshold_longer_than_the_certificates_never_renews_back_to_back() {
    let mut node = Node::new("floor", Store::Pkcs11);
    // Certificates of an hour, renewed when 36500 days are left: always due.
    let cmd = short_lived_ca(&node, 3600);
    provisioned_renewing(&mut node, &cmd, "36500d");
    let applied = |log: &str| log.matches("renewal of iam: certificate").count();
    let start = std::time::Instant::now();
    while applied(&node.log()) < 1 {
        assert!(start.elapsed() < std::time::Duration::from_secs(60), "{}", node.log());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let log = node.log();
    assert!(
        log.contains("the threshold is at least the lifetime of the certificate just issued"),
        "{log}"
    );
    // The scheduler's next pass after the one that renewed (a second after it) finds the
    // certificate due again, and does not renew it: the floor is a tenth of the hour, and
    // more. Its end is the second "next pass" line after the renewal.
    let passes_after = |log: &str| {
        let at = log.find("renewal of iam: certificate").unwrap();
        log[at..].matches("renewal: next pass in").count()
    };
    while passes_after(&node.log()) < 2 {
        assert!(start.elapsed() < std::time::Duration::from_secs(60), "{}", node.log());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(applied(&node.log()), 1, "{}", node.log());
    // `check` says it too, from the module's policy in iamd's configuration (the
    // certificate of an hour is critical anyway: it expires within the critical window).
    let cfg = node.p("config.toml");
    let out = node.applet("iam-certctl", &["-s", &node.protected(), "check", "-c", &cfg], None);
    assert_eq!(out.code, 2, "{}", out.stdout);
    assert!(
        out.stdout.contains("its renewal threshold is at least its lifetime ("),
        "{}",
        out.stdout
    );
    // With a week's warning window and no critical one, the note alone is a warning.
    let out = node.applet(
        "iam-certctl",
        &[
            "-s",
            &node.protected(),
            "--json",
            "check",
            "-c",
            &cfg,
            "--warning-days",
            "0",
            "--critical-days",
            "0",
        ],
        None,
    );
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert_eq!(out.json()["status"], "WARNING", "{}", out.stdout);
}

/// Objects on the node's token that are not of its modules' types: another application's.
fn others_objects(node: &Node) -> Vec<(String, String, String)> {
    let mut theirs: Vec<_> = node
        .token_objects()
        .into_iter()
        .filter(|o| !node.modules.iter().any(|m| m.0 == o.1))
        .map(|(kind, label, id, _)| (kind, label, id))
        .collect();
    theirs.sort();
    theirs
}

#[test]
fn a_token_shared_with_others_keeps_their_objects_through_provisioning_renewal_reconciliation_and_deprovision() {
    // Issue 29: a token iamd does not own (`shared = true`): its owner initialised it and
    // gives iamd the user PIN; another application's key and certificate live on it.
    let mut node = Node::new("shared-tok", Store::Pkcs11);
    node.extra_config = "\n[reconcile]\ninterval = 1\npending_max_age = 3600\n".into();
    let pin_line = format!("user_pin_file = \"{}\"\n", node.p("work/user-pin"));
    let config = node.config_text();
    assert!(config.contains(&pin_line));
    node.config_override = Some(config.replace(&pin_line, &format!("{pin_line}shared = true\n")));
    std::fs::create_dir_all(node.path("work")).unwrap();
    let pin_file = node.path("work/user-pin");
    let give_pin = |pin: &str| {
        std::fs::write(&pin_file, format!("{pin}\n")).unwrap();
        sh(&format!("chmod 0600 {}", pin_file.display())).ok();
    };
    give_pin("4711-user");
    run(
        node.cmd_for("softhsm2-util").args([
            "--init-token",
            "--free",
            "--label",
            TOKEN,
            "--so-pin",
            "owner-so-pin",
            "--pin",
            "4711-user",
        ]),
        None,
    )
    .ok();
    node.plant_key("factory-identity", "01");
    sh(&format!(
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout {d}/f.key \
         -subj /CN=factory -days 30 -outform DER -out {d}/f.der",
        d = node.dir.display()
    ))
    .ok();
    let der = node.p("f.der");
    node.pkcs11_tool(&[
        "--write-object",
        &der,
        "--type",
        "cert",
        "--label",
        "factory-identity",
        "--id",
        "01",
    ]);
    // A certificate with neither label nor id, as another application may leave one.
    node.pkcs11_tool(&["--write-object", &der, "--type", "cert"]);
    let theirs = others_objects(&node);
    assert_eq!(theirs.len(), 4, "{theirs:?}");

    // A wrong user PIN: StartProvisioning fails, naming the login, and nothing changes.
    give_pin("wrong-pin");
    node.start(true);
    let out = node.run_flow();
    let all = format!("{}{}", out.stdout, out.stderr);
    assert!(
        out.code != 0 && all.contains("CKR_PIN_INCORRECT: the token does not take the user PIN of"),
        "{all}"
    );
    assert!(!all.contains("wrong-pin") && !all.contains("unauthorized"), "{all}");
    give_pin("4711-user");
    assert_eq!(others_objects(&node), theirs);
    assert_eq!(node.status()["state"], "unprovisioned", "{}", node.status());

    node.run_flow().ok();
    assert_eq!(others_objects(&node), theirs, "provisioning touched another's objects");
    assert_eq!(
        read(node.path("work/user-pin")),
        "4711-user\n",
        "iamd set its own user PIN"
    );
    node.stop();

    // Reconciliation: an orphan of ours is removed, the others stay.
    let orphan = "0a0b0c0d0e0f10111213141516171819";
    node.plant_key("iam", orphan);
    node.start(false);
    wait_for(
        || !node.token_objects().iter().any(|o| o.2 == orphan),
        "the orphan removed",
        &node,
    );
    assert_eq!(
        others_objects(&node),
        theirs,
        "reconciliation touched another's objects"
    );

    // Renewal.
    renew_local_ca(&node, "iam", "30").ok();
    assert_eq!(others_objects(&node), theirs, "renewal touched another's objects");

    // Deprovision: ours go, theirs and the given PIN stay; the owner's SO PIN still works
    // (it sets the user PIN).
    node.provision(&["deprovision", "--password-file", &node.p("password")])
        .ok();
    assert_eq!(others_objects(&node), theirs, "deprovision touched another's objects");
    let ours: Vec<_> = node
        .token_objects()
        .into_iter()
        .filter(|o| node.modules.iter().any(|m| m.0 == o.1))
        .collect();
    assert!(ours.is_empty(), "{ours:?}");
    assert_eq!(read(node.path("work/user-pin")), "4711-user\n");
    assert_eq!(node.so_login("owner-so-pin"), 0);
}

#[test]
fn certificates_crossing_their_thresholds_are_alerted_once_each_to_the_log_subscribers_and_the_hook() {
    // Issue 29: alerts that reach someone, at 30 and 7 days (the defaults).
    let mut node = Node::new("alerts", Store::Pkcs11);
    node.extra_config = format!(
        "\n[alerts]\nhook = [\"/bin/sh\", \"-c\", \"cat >> {}\"]\n",
        node.p("alerts.jsonl")
    );
    node.start(true);
    node.run_flow().ok();
    node.stop();
    node.start(false);
    let watch = Watcher::start(&node, "iam-certctl", &["-s", &node.protected(), "--json", "alerts"]);
    wait_for(
        || node.log().contains("SubscribeAlerts: subscribed"),
        "the alert subscription",
        &node,
    );
    // The public socket does not serve them.
    let public = node.applet("iam-certctl", &["-s", &node.public(), "alerts"], None);
    assert!(
        public.code != 0 && public.stderr.contains("protected socket only"),
        "{}",
        public.stderr
    );
    // Both are in the audit trail.
    let log = node.log();
    assert!(
        log.contains("audit: SubscribeAlerts by uid 0 pid ")
            && log.contains("on the protected socket, node \"node-alerts\": subscribed"),
        "{log}"
    );
    assert!(
        log.contains("on the public socket, node \"node-alerts\": refused, unauthorized"),
        "{log}"
    );
    let hooked = |node: &Node| -> Vec<serde_json::Value> {
        std::fs::read_to_string(node.path("alerts.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };

    // 20 days left: a warning; 3 days left (renewed): a critical alert for the new one.
    let warned = renew_local_ca(&node, "iam", "20").ok().json()["certificate"]["serial"].clone();
    let a = watch.next();
    assert_eq!(
        (a["alert"].as_str(), &a["serial"]),
        (Some("certificate_warning"), &warned),
        "{a}"
    );
    assert!(
        a["message"]
            .as_str()
            .unwrap()
            .contains(" day(s) (warning threshold: 30 days)"),
        "{a}"
    );
    let critical = renew_local_ca(&node, "iam", "3").ok().json()["certificate"]["serial"].clone();
    let a = watch.next();
    assert_eq!(
        (a["alert"].as_str(), &a["serial"]),
        (Some("certificate_critical"), &critical),
        "{a}"
    );
    wait_for(|| hooked(&node).len() == 2, "the hook run twice", &node);
    let h = hooked(&node);
    assert_eq!(
        (h[0]["alert"].as_str(), &h[0]["serial"]),
        (Some("certificate_warning"), &warned)
    );
    assert_eq!(
        (h[1]["alert"].as_str(), &h[1]["serial"]),
        (Some("certificate_critical"), &critical)
    );
    assert_eq!(h[1]["node_id"], node.node_id());
    assert_eq!(h[1]["cert_type"], "iam");
    let log = node.log();
    assert_eq!(log.matches("alert certificate_critical: ").count(), 1, "{log}");
    // Once per threshold: another look (a renewal of another type wakes it) raises nothing.
    renew_local_ca(&node, "online", "365").ok();
    watch.nothing_for(std::time::Duration::from_secs(2));
    assert_eq!(hooked(&node).len(), 2);
}
