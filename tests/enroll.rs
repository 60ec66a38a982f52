//! Zero-touch enrollment end to end: a node bootstrapped at the factory (`iam-provision
//! bootstrap`: a bootstrap key in its SoftHSM token, its manufacturer certificate signed by
//! an openssl factory CA) is started as at first power-on and enrolls itself over EST with
//! mutual TLS against the EST test server (tests/common/est.rs, its answers made by
//! openssl); the verify step; retries, Retry-After, quarantine and its release; power cuts.

mod common;
use common::enrollment::*;
use common::est::{EstServer, Mode};
use common::*;
use std::time::{Duration, Instant};

/// Every certificate the node lists verifies with openssl against the root of its module.
fn openssl_verifies(node: &Node) {
    for c in node.list_certs() {
        let t = c["type"].as_str().unwrap();
        let out = node.p(&format!("{t}.pem"));
        node.export_cert(c["cert_url"].as_str().unwrap(), &out);
        let root = match t {
            "bootstrap" => node.p("factory-ca.pem"),
            "diskencryption" => out.clone(),
            _ => node.p("ca.pem"),
        };
        sh(&format!("openssl verify -CAfile {root} {out}")).ok();
    }
}

#[test]
fn a_bootstrapped_node_enrolls_itself_at_first_power_on_and_becomes_operational() {
    let (mut node, server) = site("enroll", "attempts = 10\n");
    server.set_claim_token(Some(CLAIM));
    let out = factory(&mut node, &server, Some(CLAIM));
    // Ready to ship: unprovisioned, the bootstrap identity chained to the factory CA (checked
    // by openssl below), the claim token for iamd alone.
    assert_eq!(out["bootstrap"]["type"], "bootstrap", "{out}");
    // A bootstrap identity outlasts any time in storage: 25 years unless told otherwise.
    let not_after = time::OffsetDateTime::parse(
        out["bootstrap"]["not_after"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert!(
        not_after > time::OffsetDateTime::now_utc() + time::Duration::days(24 * 365),
        "{out}"
    );
    let mode = std::fs::metadata(node.path("work/claim-token")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );

    // First power-on; the EST server is busy at first, so that a watcher is in place before
    // the enrollment goes on.
    server.set_mode(Mode::Unavailable(1));
    node.start(false);
    let watcher = Watcher::start(
        &node,
        "iam-provision",
        &["-s", &node.protected(), "--json", "node-info", "--watch"],
    );
    let first = watcher.next();
    // The first attempt is refused (503), and the node waits to try again.
    let start = Instant::now();
    let s = loop {
        let s = wait_state(&node, "enrolling");
        if s["enrollment"]["attempts"].as_u64().unwrap() >= 1 {
            break s;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "{s}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(s["enrollment"]["last_error"].as_str().unwrap().contains("503"), "{s}");
    server.set_mode(Mode::Normal);
    let s = wait_state(&node, "operational");
    assert_eq!(s["node_state"], "provisioned", "{s}");
    assert_eq!(s["enrollment"]["enrolled"], serde_json::json!(["iam", "online"]), "{s}");
    // The claim token has served: it does not stay on the node.
    wait_for(
        || !node.path("work/claim-token").exists(),
        "the claim token removed",
        &node,
    );
    // Node subscribers saw the transitions, as the EnrollmentState attribute.
    let mut seen = vec![first["attributes"]["EnrollmentState"]
        .as_str()
        .unwrap_or("")
        .to_string()];
    while seen.last().map(String::as_str) != Some("operational") {
        seen.push(
            watcher.next()["attributes"]["EnrollmentState"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let at = |s: &str| seen.iter().position(|x| x == s);
    assert!(
        at("provisioned").is_some() && at("provisioned") < at("operational"),
        "{seen:?}"
    );

    // Each module enrolled once, over mutual TLS with the bootstrap certificate, with the
    // claim token; everything verifies with openssl; the token holds exactly its objects.
    let bootstrap_cn = format!("cn={}", node.node_id());
    let enrolls: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("simpleenroll"))
        .collect();
    assert_eq!(enrolls, vec![format!("simpleenroll {bootstrap_cn}"); 2], "{enrolls:?}");
    openssl_verifies(&node);
    assert_converged(&node);
    node.applet(
        "iam-certctl",
        &[
            "-s",
            &node.protected(),
            "check",
            "--warning-days",
            "7",
            "--critical-days",
            "2",
        ],
        None,
    )
    .ok();
    // Nothing secret in the log.
    let log = node.log();
    assert!(!log.contains(CLAIM) && !log.contains(PASSWORD), "{log}");

    // A restart does nothing more.
    node.stop();
    node.start(false);
    wait_state(&node, "operational");
    assert_eq!(
        server
            .requests()
            .iter()
            .filter(|r| r.starts_with("simpleenroll"))
            .count(),
        2
    );
}

#[test]
fn a_wrong_claim_token_quarantines_the_node_which_keeps_serving_until_released() {
    let (mut node, server) = site("claim", "");
    server.set_claim_token(Some(CLAIM));
    factory(&mut node, &server, Some("not-the-claim"));
    // The alert hook (issue 29) is told, for a status LED or a diagnostic agent.
    let alerts = node.p("alerts.jsonl");
    node.extra_config.push_str(&format!(
        "\n[alerts]\nhook = [\"/bin/sh\", \"-c\", \"cat >> {alerts}\"]\n"
    ));
    node.start(false);
    let s = wait_state(&node, "quarantined");
    assert_eq!(s["node_state"], "error", "{s}");
    wait_for(
        || std::fs::read_to_string(&alerts).is_ok_and(|a| a.contains("\"alert\":\"quarantined\"")),
        "the quarantine alert",
        &node,
    );
    let alert: serde_json::Value = serde_json::from_str(read(&alerts).lines().next().unwrap()).unwrap();
    assert!(
        alert["message"].as_str().unwrap().contains("3 attempt(s) failed"),
        "{alert}"
    );
    assert_eq!(s["enrollment"]["attempts"], 3, "{s}");
    let reason = s["enrollment"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("3 attempt(s) failed") && reason.contains("401"),
        "{reason}"
    );
    // The refusal names the settings that decide what the node presented.
    assert!(
        reason.contains("claim_token_encoding = \"as-is\"") && reason.contains("\"base64\""),
        "{reason}"
    );
    assert!(node.log().contains("QUARANTINED"), "{}", node.log());
    assert!(!node.log().contains("not-the-claim"), "the token stays out of the log");
    // Monitoring says CRITICAL; the node still serves what it has.
    node.applet("iam-certctl", &["-s", &node.protected(), "check"], None)
        .fails(2, "IAM CRITICAL - node quarantined, 2 certificate(s)");
    node.applet(
        "iam-certctl",
        &["-s", &node.public(), "--json", "get", "diskencryption"],
        None,
    )
    .ok();
    // Nothing was applied for the modules it could not enroll.
    assert!(node
        .list_certs()
        .iter()
        .all(|c| c["type"] != "iam" && c["type"] != "online"));
    // Quarantine is persisted: a restart does not try again.
    let refused = server.requests().len();
    node.stop();
    node.start(false);
    wait_state(&node, "quarantined");
    assert_eq!(server.requests().len(), refused, "a quarantined node does not enroll");

    // Released with a wrong password: refused, still quarantined.
    std::fs::write(node.path("wrong"), "wrong\n").unwrap();
    node.provision(&["release-quarantine", "--password-file", &node.p("wrong")])
        .fails(4, "wrong password");
    wait_state(&node, "quarantined");
    // The operator puts the right token in place and releases it: it enrolls.
    std::fs::write(node.path("work/claim-token"), CLAIM).unwrap();
    node.provision(&["release-quarantine", "--password-file", &node.p("password")])
        .ok();
    let s = wait_state(&node, "operational");
    assert_eq!(s["enrollment"]["reason"], "", "{s}");
    assert_converged(&node);
    // Released again: there is nothing to release.
    node.provision(&["release-quarantine", "--password-file", &node.p("password")])
        .fails(5, "not quarantined");
    node.stop();

    // A server that decodes the token as base64, as Cisco libest does: with
    // claim_token_encoding = "base64" the node enrolls.
    let (mut node, server) = site("claim-b64", "claim_token_encoding = \"base64\"\n");
    server.set_claim_token(Some(&format!("b64:{CLAIM}")));
    factory(&mut node, &server, Some(CLAIM));
    node.start(false);
    wait_state(&node, "operational");
}

#[test]
fn a_bootstrap_certificate_of_another_ca_is_refused_at_the_factory_and_by_the_server() {
    // Signed by a CA that is not the module's root: ApplyCert refuses it, nothing ships.
    let (mut node, server) = site("foreign", "");
    node.make_ca("other-ca");
    node.start(true);
    let (pw, ca, key) = (node.p("password"), node.p("other-ca.pem"), node.p("other-ca.key"));
    let anchor = server.anchor.display().to_string();
    node.provision(&[
        "bootstrap",
        "--password-file",
        &pw,
        "--ca-cert",
        &ca,
        "--ca-key",
        &key,
        "--enroll-url",
        &server.url,
        "--enroll-anchor",
        &anchor,
    ])
    .fails(8, "module bootstrap");
    let s = node.status();
    assert_eq!(s["state"], "provisioning", "not bootstrapped: {s}");
    assert_eq!(enrollment(&node).ok().json()["enrollment"]["state"], "not-configured");
    node.stop();

    // A factory CA the EST server does not trust: the TLS handshake is refused, retried,
    // and the node quarantined.
    let (mut node, server) = site_with("untrusted", "", false);
    factory(&mut node, &server, None);
    node.start(false);
    let s = wait_state(&node, "quarantined");
    let err = s["enrollment"]["last_error"].as_str().unwrap();
    assert!(
        err.contains("enroll iam") && err.contains("TLS with the EST server"),
        "{err}"
    );
    assert!(
        server.requests().iter().all(|r| !r.starts_with("simpleenroll cn=")),
        "{:?}",
        server.requests()
    );
}

#[test]
fn an_issued_certificate_that_does_not_chain_to_the_roots_is_refused_and_retried() {
    let (mut node, server) = site("badchain", "");
    factory(&mut node, &server, None);
    // The node's root is now another CA: what the EST server issues does not chain to it.
    // (The server read its CA at its start; iamd reads its roots at each use.)
    node.make_ca("other-ca");
    std::fs::copy(node.path("other-ca.pem"), node.path("ca.pem")).unwrap();
    node.start(false);
    let s = wait_state(&node, "quarantined");
    let err = s["enrollment"]["last_error"].as_str().unwrap();
    assert!(
        err.contains("the issued certificate was refused") && err.contains("module iam"),
        "{err}"
    );
    assert!(node.list_certs().iter().all(|c| c["type"] != "iam"));
    // Each attempt asked again with the same key (kept pending while the node waits).
    let asked = server
        .requests()
        .iter()
        .filter(|r| r.starts_with("simpleenroll"))
        .count();
    assert_eq!(asked, 3, "{:?}", server.requests());
}

/// Bootstrap `node` for an EST server at `port` of the loopback (with `server`'s anchor),
/// start it as at first power-on, and return the error it is quarantined with.
fn quarantined_by_a_server_at(node: &mut Node, server: &EstServer, port: u16) -> String {
    let url = format!("https://localhost:{port}/.well-known/est");
    node.start(true);
    let anchor = server.anchor.display().to_string();
    bootstrap(node, &["--enroll-url", &url, "--enroll-anchor", &anchor]).ok();
    node.stop();
    node.start(false);
    let s = wait_state(node, "quarantined");
    s["enrollment"]["last_error"].as_str().unwrap().to_string()
}

#[test]
fn a_server_that_is_down_stalls_or_asks_to_retry_later_is_waited_for() {
    // Down: nothing listens on the bootstrap URL's port; the node retries, then quarantines.
    let (mut node, server) = site("down", "");
    let port = EstServer::free_port();
    let err = quarantined_by_a_server_at(&mut node, &server, port);
    let err = err.as_str();
    assert!(
        err.contains(&format!("cannot reach the EST server at localhost:{port}")),
        "{err}"
    );
    // The server comes up at that address; released, the node enrolls.
    let _up = EstServer::start_at(&node.dir, EST_USER, EST_PASSWORD, port);
    node.provision(&["release-quarantine", "--password-file", &node.p("password")])
        .ok();
    wait_state(&node, "operational");
    assert_converged(&node);
    node.stop();
    drop(server);

    // 503 with Retry-After: the next attempt waits at least that long.
    let (mut node, server) = site("busy", "");
    factory(&mut node, &server, None);
    server.set_mode(Mode::Unavailable(120));
    node.start(false);
    let start = Instant::now();
    let s = loop {
        let s = wait_state(&node, "enrolling");
        if s["enrollment"]["attempts"] == 1 {
            break s;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "{s}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(s["enrollment"]["last_error"].as_str().unwrap().contains("503"), "{s}");
    let next = s["enrollment"]["next_attempt"].as_str().unwrap();
    let next = time::OffsetDateTime::parse(next, &time::format_description::well_known::Rfc3339)
        .unwrap()
        .unix_timestamp();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    // Its own delay would be 1 s (max_retry 2 s): the server's 120 s is what it waits.
    assert!(next - now >= 100, "{s}");
    node.stop();

    // A server that stalls mid-answer: the attempt times out, iamd keeps serving meanwhile.
    let (mut node, server) = site("stall", "timeout = \"3s\"\n");
    factory(&mut node, &server, None);
    server.set_mode(Mode::Trickle);
    node.start(false);
    // While an exchange is stalled, certificates are served.
    node.applet("iam-certctl", &["-s", &node.public(), "get", "diskencryption"], None)
        .ok();
    let s = wait_state(&node, "quarantined");
    let err = s["enrollment"]["last_error"].as_str().unwrap();
    assert!(err.contains("within 3 s"), "{err}");
}

#[test]
fn a_verify_endpoint_that_does_not_check_the_new_identity_fails_the_verify_step() {
    // openssl s_server without -verify never asks for a client certificate: the verify step
    // cannot pass there.
    let (mut node, server) = site("verify", "");
    let port = EstServer::free_port();
    let d = node.dir.display().to_string();
    sh(&format!(
        "cd {d} && openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout vs.key -out vs.csr -subj /CN=localhost && \
         printf 'subjectAltName=DNS:localhost\\n' > vs.ext && \
         openssl x509 -req -in vs.csr -CA est-anchor.pem -CAkey est-anchor.key -days 2 -extfile vs.ext -out vs.pem"
    ))
    .ok();
    node.extra_config = enroll_config(&node, &format!("verify = \"localhost:{port}\"\n"));
    factory(&mut node, &server, None);
    let mut s_server = std::process::Command::new("openssl")
        .args([
            "s_server",
            "-quiet",
            "-accept",
            &port.to_string(),
            "-cert",
            "vs.pem",
            "-key",
            "vs.key",
        ])
        .current_dir(&node.dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    node.start(false);
    let s = wait_state(&node, "quarantined");
    let err = s["enrollment"]["last_error"].as_str().unwrap();
    assert!(err.contains("did not ask for a client certificate"), "{err}");
    // The modules were enrolled; only the verify step failed.
    assert_eq!(s["enrollment"]["enrolled"], serde_json::json!(["iam", "online"]), "{s}");
    let _ = s_server.kill();
    let _ = s_server.wait();

    // openssl s_server that requires a client certificate of the unit CA: the step passes.
    let mut s_server = std::process::Command::new("openssl")
        .args([
            "s_server",
            "-quiet",
            "-accept",
            &port.to_string(),
            "-cert",
            "vs.pem",
            "-key",
            "vs.key",
            "-Verify",
            "2",
            "-CAfile",
            "ca.pem",
            "-verify_return_error",
        ])
        .current_dir(&node.dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    node.provision(&["release-quarantine", "--password-file", &node.p("password")])
        .ok();
    wait_state(&node, "operational");
    let _ = s_server.kill();
    let _ = s_server.wait();
}

#[test]
fn iamd_killed_during_enrollment_resumes_and_converges() {
    let (mut node, server) = site("enrollkill", "");
    factory(&mut node, &server, None);
    // Killed while an EST answer trickles in (the key made, the certificate asked for).
    server.set_mode(Mode::Trickle);
    node.start(false);
    let start = Instant::now();
    // /csrattrs, then /simpleenroll: the key is made and its CSR sent.
    while !node.status()["modules"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["pending_key"] == true)
        || server.received.load(std::sync::atomic::Ordering::SeqCst) < 2
    {
        assert!(start.elapsed() < Duration::from_secs(30), "{}", node.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    node.kill9();
    server.set_mode(Mode::Normal);
    node.start(false);
    wait_state(&node, "operational");
    assert_converged(&node);
}

/// `/csrattrs` as `openssl asn1parse -genconf` makes it: the items of `attrs` (sections
/// follow).
fn csrattrs(items: &str, sections: &str) -> String {
    format!("asn1 = SEQUENCE:attrs\n[attrs]\n{items}\n{sections}")
}

#[test]
fn what_csrattrs_asks_is_put_in_the_csrs_or_refused_naming_it() {
    // challengePassword, EC keys on P-384 or P-256, an extension request for the key usages:
    // each CSR carries the claim token as its challengePassword (checked by openssl req).
    let (mut node, server) = site("csrattrs", "");
    server.set_claim_token(Some(CLAIM));
    factory(&mut node, &server, Some(CLAIM));
    server.set_csrattrs(Some(&csrattrs(
        "cp = OID:1.2.840.113549.1.9.7\nec = SEQUENCE:ecattr\ner = SEQUENCE:extreq\nsig = OID:1.2.840.10045.4.3.3\nsig2 = OID:1.2.840.10045.4.3.2",
        "[ecattr]\ntype = OID:1.2.840.10045.2.1\nvalues = SET:curves\n[curves]\nc1 = OID:1.3.132.0.34\nc2 = OID:1.2.840.10045.3.1.7\n\
         [extreq]\ntype = OID:1.2.840.113549.1.9.14\nvalues = SET:exts\n[exts]\ne1 = OID:2.5.29.37\ne2 = OID:2.5.29.15\n",
    )));
    server.require_challenge(Some(CLAIM));
    node.start(false);
    wait_state(&node, "operational");
    let log = server.requests();
    assert_eq!(
        log.iter().filter(|l| *l == "challengePassword ok").count(),
        2,
        "{log:?}"
    );
    assert!(
        !node.log().contains(CLAIM),
        "the challengePassword stays out of the log"
    );
    node.stop();

    // Keys the modules do not make, with csrattrs = "strict": refused before a key is made
    // or a CSR sent.
    let (mut node, server) = site("csrattrs-curve", "csrattrs = \"strict\"\n");
    factory(&mut node, &server, None);
    server.set_csrattrs(Some(&csrattrs("k = OID:1.2.840.10045.2.1\nc = OID:1.3.132.0.35", "")));
    node.start(false);
    let s = wait_state(&node, "quarantined");
    let err = s["enrollment"]["last_error"].as_str().unwrap();
    assert!(
        err.contains("asks CSRs of module iam for keys on secp521r1 (1.3.132.0.35)") && err.contains("ecdsa-p384"),
        "{err}"
    );
    assert!(
        server.requests().iter().all(|r| !r.starts_with("simpleenroll")),
        "{:?}",
        server.requests()
    );
    let st = node.status();
    assert!(
        st["modules"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["pending_key"] == false),
        "{st}"
    );
    node.stop();

    // An attribute aos-iam cannot give (macAddress), and a challengePassword with no secret
    // to put in it: each refused, naming it.
    for (name, items, want) in [
        (
            "csrattrs-mac",
            "m = OID:1.3.6.1.1.1.1.22",
            "the attribute macAddress (1.3.6.1.1.1.1.22)",
        ),
        (
            "csrattrs-cp",
            "cp = OID:1.2.840.113549.1.9.7",
            "a challengePassword, and no claim token or EST password is configured",
        ),
    ] {
        let (mut node, server) = site(name, "csrattrs = \"strict\"\n");
        factory(&mut node, &server, None);
        server.set_csrattrs(Some(&csrattrs(items, "")));
        node.start(false);
        let s = wait_state(&node, "quarantined");
        let err = s["enrollment"]["last_error"].as_str().unwrap();
        assert!(err.contains(want), "{err}");
        node.stop();
    }

    // By default (lenient), what cannot be given is logged and the CSRs go without it, as
    // Cisco libest's example server expects (it lists macAddress, emailAddress, secp384r1
    // and sha384, and enforces them only with --enforce-csr).
    let (mut node, server) = site("csrattrs-lenient", "");
    factory(&mut node, &server, None);
    server.set_csrattrs(Some(&csrattrs(
        "m = OID:1.3.6.1.1.1.1.22\ne = OID:1.2.840.113549.1.9.1\nc = OID:1.3.132.0.34\nh = OID:2.16.840.1.101.3.4.2.2",
        "",
    )));
    node.start(false);
    wait_state(&node, "operational");
    let log = node.log();
    assert!(
        log.contains("enrollment of online: the EST server's /csrattrs asks for the attribute macAddress (1.3.6.1.1.1.1.22); the CSR goes without it")
            && log.contains("keys on secp384r1"),
        "{log}"
    );
}

#[test]
fn the_main_node_reports_a_secondarys_enrollment_status() {
    let mut unit = Unit::new("enroll-unit", 1);
    unit.start(true);
    unit.link_unix(0);
    let s0 = unit.secondaries[0].node_id();
    unit.wait_connected(&s0, true);
    let main = &unit.main;
    let out = main
        .applet(
            "iam-certctl",
            &["-s", &main.protected(), "--json", "status", "--node", &s0],
            None,
        )
        .ok()
        .json();
    assert_eq!(out["node_id"], s0.as_str(), "{out}");
    assert_eq!(out["enrollment"]["state"], "not-configured", "{out}");
    assert_eq!(out["enrollment"]["step"], "no [enroll] in the configuration", "{out}");
    // A node the main node does not know is named.
    main.applet(
        "iam-certctl",
        &["-s", &main.protected(), "status", "--node", "node-nowhere"],
        None,
    )
    .fails(6, "node \"node-nowhere\" is not known");
}

#[test]
fn enrollment_by_http_basic_auth_beside_the_bootstrap_certificate_and_a_factory_reset_of_a_quarantined_node() {
    // Basic auth configured (no claim token): /simpleenroll carries it, over mutual TLS.
    let (mut node, server) = site("basic", "");
    std::fs::write(node.path("est-password"), format!("{EST_PASSWORD}\n")).unwrap();
    let extra = format!(
        "username = \"{EST_USER}\"\npassword_file = \"{}\"\n",
        node.p("est-password")
    );
    node.extra_config = enroll_config(&node, &extra);
    factory(&mut node, &server, None);
    node.start(false);
    wait_state(&node, "operational");
    let enrolls: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("simpleenroll"))
        .collect();
    assert_eq!(enrolls, vec![format!("simpleenroll user={EST_USER}"); 2], "{enrolls:?}");
    assert!(
        !node.log().contains(EST_PASSWORD),
        "the EST password stays out of the log"
    );
    node.stop();

    // A quarantined node is reset at the factory: Deprovision empties it, and it can be
    // bootstrapped again.
    let (mut node, server) = site("reset", "");
    server.set_claim_token(Some(CLAIM));
    factory(&mut node, &server, None);
    node.start(false);
    wait_state(&node, "quarantined");
    node.stop();
    node.start(true);
    node.provision(&["deprovision", "--password-file", &node.p("password")])
        .ok();
    assert_eq!(enrollment(&node).ok().json()["enrollment"]["state"], "not-configured");
    assert_eq!(node.status()["state"], "unprovisioned");
    node.stop();
    factory(&mut node, &server, Some(CLAIM));
    node.start(false);
    wait_state(&node, "operational");
    assert_converged(&node);
}

#[test]
fn run_bootstrap_signs_the_bootstrap_certificate_through_a_sign_command() {
    // The factory CA as a command (openssl x509 -req), through `run --bootstrap`.
    let (mut node, server) = site("runboot", "");
    node.start(true);
    let cmd = format!(
        "openssl x509 -req -CA {d}/factory-ca.pem -CAkey {d}/factory-ca.key -days 30 -copy_extensions copy 2>/dev/null",
        d = node.dir.display()
    );
    let (pw, anchor) = (node.p("password"), server.anchor.display().to_string());
    let out = node
        .provision(&[
            "--json",
            "run",
            "--bootstrap",
            "--sign-cmd",
            &cmd,
            "--password-file",
            &pw,
            "--enroll-url",
            &server.url,
            "--enroll-anchor",
            &anchor,
        ])
        .ok()
        .json();
    assert_eq!(out["state"], "unprovisioned", "{out}");
    assert!(
        out["bootstrap"]["issuer"].as_str().unwrap().contains("factory-ca"),
        "{out}"
    );
    // The enrollment options go with --bootstrap only.
    node.provision(&[
        "run",
        "--sign-cmd",
        &cmd,
        "--password-file",
        &pw,
        "--enroll-url",
        &server.url,
    ])
    .fails(7, "go with --bootstrap");
    node.stop();
    node.start(false);
    wait_state(&node, "operational");
    assert_converged(&node);
}

/// Every step an enrollment can be cut at, seeded into the database of an enrolled node:
/// a certificate applied but not yet recorded as enrolled (the step still `Obtained` or
/// `KeyCreated` for its key), and a step whose key is gone. Each converges without a
/// second certificate for a module that has one.
#[test]
fn every_persisted_enrollment_step_converges_without_a_second_certificate() {
    use aos_iam::store::db::{Db, StoredEnrollState};
    use aos_iam::store::records::Step;
    let (mut node, server) = site("enroll-seed", "");
    factory(&mut node, &server, None);
    node.start(false);
    wait_state(&node, "operational");
    node.stop();
    let enrolls = || {
        server
            .requests()
            .iter()
            .filter(|r| r.starts_with("simpleenroll"))
            .count()
    };
    let asked = enrolls();
    let db_path = node.path("work/iam.db");
    let iam_key = {
        let db = Db::open(&db_path).unwrap();
        db.snapshot()
            .unwrap()
            .certs
            .iter()
            .find(|c| c.cert_type == "iam")
            .unwrap()
            .key_id
    };
    for (step, new_certificate) in [
        (
            Step::Obtained {
                key_id: iam_key,
                csr: String::new(),
                chain_pem: "applied already".into(),
            },
            false,
        ),
        (
            Step::KeyCreated {
                key_id: iam_key,
                csr: String::new(),
            },
            false,
        ),
        (
            Step::KeyCreated {
                key_id: *b"seeded-enroll-01",
                csr: String::new(),
            },
            true,
        ),
    ] {
        {
            let db = Db::open(&db_path).unwrap();
            let mut e = db.snapshot().unwrap().enrollment.unwrap();
            e.state = StoredEnrollState::Enrolling;
            e.current = Some(("iam".into(), step));
            e.enrolled.retain(|t| t != "iam");
            e.next_try = 0;
            db.set_enrollment(&e, Some(aos_iam::proto::wire::NodeState::Provisioning))
                .unwrap();
        }
        node.start(false);
        wait_state(&node, "operational");
        // A key that is gone makes a new one and asks again (max_items 2 keeps both);
        // an applied certificate is recognised and nothing is asked.
        let want = if new_certificate { 2 } else { 1 };
        assert_store_matches(&node, &[("iam", want)]);
        assert_eq!(enrolls(), asked + new_certificate as usize, "{:?}", server.requests());
        node.stop();
    }
}

#[test]
fn a_bootstrap_certificate_that_expired_in_storage_quarantines_the_node_naming_it() {
    let (mut node, server) = site("expired-boot", "");
    server.set_claim_token(Some(CLAIM));
    // The factory CA issues a bootstrap certificate that lives 20 s (openssl ca).
    let cmd = openssl_ca_command(&node, "factory-ca", 20);
    node.start(true);
    std::fs::write(node.path("claim-token.txt"), format!("{CLAIM}\n")).unwrap();
    let (pw, anchor, token) = (
        node.p("password"),
        server.anchor.display().to_string(),
        node.p("claim-token.txt"),
    );
    let out = node
        .provision(&[
            "--json",
            "bootstrap",
            "--sign-cmd",
            &cmd,
            "--password-file",
            &pw,
            "--enroll-url",
            &server.url,
            "--enroll-anchor",
            &anchor,
            "--claim-token-file",
            &token,
        ])
        .ok()
        .json();
    node.stop();
    // In storage until it has expired.
    let not_after = time::OffsetDateTime::parse(
        out["bootstrap"]["not_after"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    while time::OffsetDateTime::now_utc() <= not_after + time::Duration::seconds(1) {
        std::thread::sleep(Duration::from_millis(200));
    }
    // First power-on: quarantined at once, the reason naming the bootstrap certificate; the
    // EST server never asked.
    node.start(false);
    let s = wait_state(&node, "quarantined");
    let reason = s["enrollment"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("the bootstrap certificate of module bootstrap") && reason.contains("expired at"),
        "{reason}"
    );
    assert_eq!(s["enrollment"]["attempts"], 1, "{s}");
    assert!(server.requests().is_empty(), "{:?}", server.requests());
    node.applet("iam-certctl", &["-s", &node.protected(), "check"], None)
        .fails(2, "quarantined");
}

/// Whether systemd would start `unit` (a file of the layer) on a node whose iamd keeps its
/// markers in `dir`: its `ConditionPathExists=` lines, with the layer's `/var/aos/iam` read
/// as `dir`, as systemd evaluates them (plain ones all hold, and one of the triggering `|`
/// ones if there are any).
fn unit_starts(unit: &str, dir: &std::path::Path) -> bool {
    let path = format!(
        "{}/meta-aos-iam/recipes-security/aos-iam/files/{unit}",
        env!("CARGO_MANIFEST_DIR")
    );
    let (mut all, mut any, mut triggering) = (true, false, false);
    for line in read(&path).lines() {
        let Some(v) = line.strip_prefix("ConditionPathExists=") else {
            continue;
        };
        let (trig, v) = v.strip_prefix('|').map_or((false, v), |v| (true, v));
        let (neg, v) = v.strip_prefix('!').map_or((false, v), |v| (true, v));
        let file = v
            .strip_prefix("/var/aos/iam/")
            .unwrap_or_else(|| panic!("{unit}: {line}"));
        let holds = dir.join(file).exists() != neg;
        if trig {
            triggering = true;
            any |= holds;
        } else {
            all &= holds;
        }
    }
    all && (!triggering || any)
}

/// The one unit of the layer that starts on this node now: `iamd` or `iamd --provisioning`.
#[track_caller]
fn mode_at_boot(node: &Node) -> &'static str {
    let work = node.path("work");
    match (
        unit_starts("iamd.service", &work),
        unit_starts("iamd-provisioning.service", &work),
    ) {
        (true, false) => "normal",
        (false, true) => "provisioning",
        both => panic!("units that start: {both:?} (iamd, iamd-provisioning)"),
    }
}

#[test]
fn every_state_leaves_the_markers_that_boot_the_layers_units_into_its_mode() {
    let (mut node, server) = site("boots", "");
    server.set_claim_token(Some(CLAIM));
    // A factory node, fresh and mid-provisioning: provisioning mode.
    assert_eq!(mode_at_boot(&node), "provisioning");
    node.start(true);
    node.provision(&["start", "--password-file", &node.p("password")]).ok();
    node.stop();
    assert_eq!(mode_at_boot(&node), "provisioning");
    // Bootstrapped at the factory, waiting in storage: iamd, which enrolls it.
    factory(&mut node, &server, None);
    assert_eq!(mode_at_boot(&node), "normal");
    // Without its claim token the server refuses it: quarantined, still iamd (it serves
    // what it has, and ReleaseQuarantine or Deprovision are asked of it there).
    node.start(false);
    wait_state(&node, "quarantined");
    assert_eq!(mode_at_boot(&node), "normal");
    // The factory reset of a deployed node, asked of iamd in normal mode.
    node.provision(&["deprovision", "--password-file", &node.p("password")])
        .ok();
    assert_eq!(node.status()["state"], "unprovisioned");
    assert_eq!(mode_at_boot(&node), "provisioning");
    node.stop();
    // Bootstrapped again with its token: enrolling, then operational, iamd throughout.
    factory(&mut node, &server, Some(CLAIM));
    assert_eq!(mode_at_boot(&node), "normal");
    node.start(false);
    wait_state(&node, "operational");
    assert_eq!(mode_at_boot(&node), "normal");
    assert!(node.path("work/provisioned").exists() && node.path("work/deployed").exists());
    // The markers follow the committed state even when removed by hand.
    node.stop();
    std::fs::remove_file(node.path("work/deployed")).unwrap();
    node.start(false);
    assert!(node.path("work/deployed").exists());
    assert_converged(&node);
}

/// A server that trickles one TLS record a byte at a time, each byte well inside the
/// exchange's timeout: rustls reads on inside one call until the record is complete, so
/// only a deadline enforced at every read ends the exchange (16 KiB at one byte a second is
/// four and a half hours; issue 28 saw days at 59 s a byte). The attempt must end at its
/// deadline, and the node be quarantined.
#[test]
fn an_est_server_trickling_one_tls_record_is_cut_at_the_exchanges_deadline() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let (mut node, server) = site("trickle-record", "attempts = 1\ntimeout = \"3s\"\n");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let trickled = std::sync::Arc::new(AtomicUsize::new(0));
    let count = trickled.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let count = count.clone();
            std::thread::spawn(move || {
                use std::io::Write;
                // A handshake record of 16 KiB announced, then its body a byte a second.
                if conn.write_all(&[0x16, 0x03, 0x03, 0x40, 0x00]).is_err() {
                    return;
                }
                loop {
                    std::thread::sleep(Duration::from_secs(1));
                    if conn.write_all(&[0]).is_err() {
                        return;
                    }
                    count.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
    });
    let err = quarantined_by_a_server_at(&mut node, &server, port);
    assert!(err.contains("within 3 s"), "{err}");
    assert!(trickled.load(Ordering::SeqCst) >= 2, "the server never trickled: {err}");
}

/// Every CSR block (PEM) in the files under `dir`, decoded.
fn csrs_in_files(dir: &std::path::Path) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        for block in text.split("-----BEGIN CERTIFICATE REQUEST-----").skip(1) {
            let b64: String = block
                .split("-----END")
                .next()
                .unwrap()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '+' || *c == '/' || *c == '=')
                .collect();
            if let Some(der) = aos_iam::codec::pem::base64_decode(b64.as_bytes()) {
                out.push(der);
            }
        }
    }
    out
}

/// A server's /csrattrs asks for a challengePassword: the claim token goes into each CSR as
/// it is sent, never into the CSR kept in the enrollment record (the database), where it
/// would sit until the module is applied. Resumed from the record after a restart, the CSR
/// gets it again as it is sent.
#[test]
fn the_challenge_a_csr_carries_is_added_as_it_is_sent_and_never_kept_in_the_database() {
    let (mut node, server) = site("csr-secret", "attempts = 100\n");
    server.set_claim_token(Some(CLAIM));
    factory(&mut node, &server, Some(CLAIM));
    server.set_csrattrs(Some(&csrattrs("cp = OID:1.2.840.113549.1.9.7", "")));
    server.require_challenge(Some(CLAIM));
    // The server takes the CSR and asks to come back later: the step stays "key created",
    // its CSR in the record.
    server.set_mode(Mode::Unavailable(1));
    node.start(false);
    wait_for(
        || enrollment(&node).json()["enrollment"]["attempts"].as_u64() >= Some(1),
        "a first attempt",
        &node,
    );
    node.stop();
    let kept = csrs_in_files(&node.path("work"));
    assert!(!kept.is_empty(), "no CSR in the enrollment record");
    for der in &kept {
        assert!(
            !der.windows(CLAIM.len()).any(|w| w == CLAIM.as_bytes()),
            "the claim token is in a CSR kept on disk"
        );
    }
    // Resumed: the same key, the challenge added again as the CSR is sent.
    server.set_mode(Mode::Normal);
    node.start(false);
    wait_state(&node, "operational");
    assert_eq!(
        server
            .requests()
            .iter()
            .filter(|r| *r == "challengePassword ok")
            .count(),
        2,
        "{:?}",
        server.requests()
    );
}
