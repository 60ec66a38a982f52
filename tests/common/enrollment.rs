//! Zero-touch enrollment for the tests (tests/enroll.rs, tests/crash.rs): a node with a
//! factory CA (openssl), a bootstrap module and `[enroll]`, bootstrapped by the real
//! `iam-provision bootstrap`, and an EST test server that trusts the factory CA.

use super::est::EstServer;
use super::*;
use std::time::{Duration, Instant};

pub const EST_USER: &str = "node-enroll";
pub const EST_PASSWORD: &str = "est-secret";
pub const CLAIM: &str = "claim-7f3a9c";

/// The bootstrap module and the `[enroll]` section: `enroll`'s keys, and the defaults of
/// these tests for those it does not give (3 attempts, 1 s doubling to 2 s, no jitter).
pub fn enroll_config(node: &Node, enroll: &str) -> String {
    let d = node.dir.display();
    let mut keys = enroll.to_string();
    for (k, v) in [
        ("attempts", "3"),
        ("retry", "\"1s\""),
        ("max_retry", "\"2s\""),
        ("jitter", "\"0%\""),
        ("timeout", "\"10s\""),
    ] {
        if !enroll.lines().any(|l| l.starts_with(&format!("{k} ="))) {
            keys.push_str(&format!("{k} = {v}\n"));
        }
    }
    format!(
        "\n[[modules]]\nid = \"bootstrap\"\nalgorithm = \"ecdsa-p256\"\nextended_key_usage = [\"clientAuth\"]\n\
         root_ca = \"{d}/factory-ca.pem\"\n\
         [modules.pkcs11]\nlibrary = \"{SOFTHSM}\"\ntoken_label = \"{TOKEN}\"\nuser_pin_file = \"{d}/work/user-pin\"\n\
         \n[enroll]\n{keys}"
    )
}

/// A node with a factory CA and an EST server that trusts it, not yet bootstrapped.
pub fn site(name: &str, enroll: &str) -> (Node, EstServer) {
    site_with(name, enroll, true)
}

/// The same; the EST server trusts bootstrap certificates of the factory CA or not.
pub fn site_with(name: &str, enroll: &str, trust_factory: bool) -> (Node, EstServer) {
    let mut node = Node::new(name, Store::Pkcs11);
    if trust_factory {
        node.make_ca("factory-ca");
    }
    let server = EstServer::start(&node.dir, EST_USER, EST_PASSWORD);
    if !trust_factory {
        node.make_ca("factory-ca");
    }
    node.extra_config = enroll_config(&node, enroll);
    (node, server)
}

/// `iam-provision --json bootstrap` with the factory CA and `extra` options.
pub fn bootstrap(node: &Node, extra: &[&str]) -> Out {
    let (pw, ca, key) = (node.p("password"), node.p("factory-ca.pem"), node.p("factory-ca.key"));
    let mut args = vec![
        "--json",
        "bootstrap",
        "--password-file",
        &pw,
        "--ca-cert",
        &ca,
        "--ca-key",
        &key,
    ];
    args.extend_from_slice(extra);
    node.provision(&args)
}

/// Bootstrap at the factory with the EST server's URL and anchor (and the claim token),
/// then stop: the node is ready to ship. Returns what `bootstrap` printed.
pub fn factory(node: &mut Node, server: &EstServer, claim: Option<&str>) -> serde_json::Value {
    node.start(true);
    let anchor = server.anchor.display().to_string();
    let mut extra = vec!["--enroll-url", &server.url, "--enroll-anchor", &anchor];
    let token_file = node.p("claim-token.txt");
    if let Some(c) = claim {
        std::fs::write(&token_file, format!("{c}\n")).unwrap();
        extra.extend(["--claim-token-file", &token_file]);
    }
    let out = bootstrap(node, &extra).ok().json();
    assert_eq!(out["state"], "unprovisioned", "{out}");
    assert_eq!(node.status()["state"], "unprovisioned");
    node.stop();
    out
}

pub fn enrollment(node: &Node) -> Out {
    node.applet("iam-certctl", &["-s", &node.protected(), "--json", "status"], None)
}

/// Wait until the enrollment is in `state` (quarantined exits 2), and return its status.
#[track_caller]
pub fn wait_state(node: &Node, state: &str) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let out = enrollment(node);
        let j = out.json();
        if j["enrollment"]["state"] == state {
            assert_eq!(out.code, if state == "quarantined" { 2 } else { 0 }, "{j}");
            return j;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "enrollment never reached {state}: {j}\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Tunnels (tests/tunnel.rs, benches/tunnel.rs): `host:port` of an EST server's URL.
pub fn est_endpoint(server: &EstServer) -> String {
    let rest = server.url.strip_prefix("https://").unwrap();
    rest.split('/').next().unwrap().to_string()
}

/// A unit of a main node, provisioned and in normal mode, carrying tunnels to `endpoints`,
/// and one secondary without a network, bootstrapped at the factory for zero-touch
/// enrollment through its link, with its EST re-enrollment configured for `iam`.
pub fn unit_without_network(name: &str, endpoints: &[&str]) -> (Unit, EstServer) {
    enrollment_unit(name, endpoints, true)
}

/// The same unit; its secondary reaches the EST server through its link (without a network
/// of its own), or directly.
pub fn enrollment_unit(name: &str, endpoints: &[&str], through_link: bool) -> (Unit, EstServer) {
    let mut unit = Unit::new(name, 1);
    unit.main.start(true);
    unit.main.run_flow().ok();
    unit.main.stop();
    set_endpoints(&mut unit, endpoints);

    let s = &mut unit.secondaries[0];
    s.make_ca("factory-ca");
    let server = EstServer::start(&s.dir, EST_USER, EST_PASSWORD);
    server.set_claim_token(Some(CLAIM));
    s.extra_config = reenrolling_iam(s, &server, "attempts = 30\n");
    if through_link {
        s.extra_config
            .push_str(&format!("\n[links]\ntunnel = \"{}\"\n", s.p("run/tunnel.sock")));
    }
    factory(s, &server, Some(CLAIM));
    s.netns = through_link;
    (unit, server)
}

pub fn set_endpoints(unit: &mut Unit, endpoints: &[&str]) {
    let list: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    unit.main.extra_config = format!(
        "\n[links]\nlisten = [\"unix:{}\"]\ntunnel_endpoints = [{}]\n",
        unit.main.p("run/link.sock"),
        list.join(", ")
    );
}

/// Zero-touch enrollment (`enroll`'s keys) against `server`, and `iam`'s renewal by EST
/// re-enrollment with its token key there; `iam` is made the last module, so that its
/// renewal settings follow it.
pub fn reenrolling_iam(node: &mut Node, server: &EstServer, enroll: &str) -> String {
    node.modules.rotate_left(1);
    assert_eq!(node.modules.last().unwrap().0, "iam");
    format!(
        "[modules.renew]\nmethod = \"est\"\nthreshold = \"90%\"\nretry = \"1s\"\njitter = \"0%\"\n\
         [modules.renew.est]\nurl = \"{}\"\nanchor = \"{}\"\n{}",
        server.url,
        server.anchor.display(),
        enroll_config(node, enroll),
    )
}
