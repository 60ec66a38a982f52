//! Certificates in operation: renewal on a provisioned node in normal mode, `max_items`
//! rotation, change notifications to subscribers, and `iam-certctl check`.

mod common;
use common::*;

/// A node provisioned by `run`, then restarted out of provisioning mode.
fn provisioned(name: &str) -> Node {
    let mut node = Node::new(name, Store::Pkcs11);
    node.start(true);
    node.run_flow().ok();
    node.stop();
    node.start(false);
    node
}

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
    let node = provisioned("rot");
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
