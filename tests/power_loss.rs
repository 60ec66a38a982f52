//! Power loss inside `iam-provision run`: iamd is killed with SIGKILL at a chosen point
//! (by a hook or by the signing command, so the point is exact), restarted, and the same
//! command is run again. The node must end provisioned with exactly the expected token
//! objects and database records, and no orphans.

mod common;
use common::*;

/// A command that SIGKILLs iamd when the file `kill-at` names `$1`, once.
fn write_killer(node: &Node) {
    let d = node.dir.display();
    std::fs::write(
        node.path("killer.sh"),
        format!(
            "if [ \"$(cat {d}/kill-at 2>/dev/null)\" = \"$1\" ]; then rm -f {d}/kill-at; kill -9 $(cat {d}/iamd.pid); sleep 5; fi\n"
        ),
    )
    .unwrap();
    // The signing command: kill first if asked, then sign with openssl.
    std::fs::write(
        node.path("sign.sh"),
        format!(
            "sh {d}/killer.sh sign-$AOS_IAM_CERT_TYPE\n\
             exec openssl x509 -req -CA {d}/ca.pem -CAkey {d}/ca.key -days 30 -copy_extensions copy 2>/dev/null\n"
        ),
    )
    .unwrap();
}

fn run_flow(node: &Node) -> Out {
    let sign = format!("sh {}", node.p("sign.sh"));
    node.provision(&[
        "--json",
        "run",
        "--sign-cmd",
        &sign,
        "--password-file",
        &node.p("password"),
    ])
}

fn kill_at(point: &str) {
    let mut node = Node::new(&format!("kill-{point}"), Store::Pkcs11);
    let killer = node.p("killer.sh");
    node.extra_config = format!(
        "\n[hooks]\ndisk_encryption = [\"sh\", \"{killer}\", \"disk-encryption\"]\nfinish = [\"sh\", \"{killer}\", \"finish\"]\n"
    );
    write_killer(&node);
    std::fs::write(node.path("kill-at"), point).unwrap();
    node.start(true);
    let first = run_flow(&node);
    assert_eq!(
        first.code, 3,
        "the run is cut off by the kill: {}{}",
        first.stdout, first.stderr
    );
    assert!(!node.path("kill-at").exists(), "the kill happened at {point}");
    node.reap();

    node.start(true);
    run_flow(&node).ok();
    assert_converged(&node);
    // And it stays so across a restart in normal mode.
    node.stop();
    node.start(false);
    assert_converged(&node);
}

#[test]
fn killed_after_start_provisioning_converges() {
    kill_at("disk-encryption");
}

#[test]
fn killed_between_create_key_and_apply_cert_converges() {
    kill_at("sign-iam");
}

#[test]
fn killed_between_two_modules_converges() {
    kill_at("sign-online");
}

#[test]
fn killed_after_the_last_apply_cert_converges() {
    kill_at("finish");
}

/// Single verbs: a key created, iamd killed, restarted; CreateKey again replaces the
/// pending key (its objects are removed) and the flow finishes with nothing left over.
#[test]
fn repeated_create_key_after_a_kill_leaves_no_orphan() {
    let mut node = Node::new("kill-verbs", Store::Pkcs11);
    write_killer(&node);
    node.start(true);
    let pw = node.p("password");
    node.provision(&["start", "--password-file", &pw]).ok();
    node.provision(&["create-key", "iam", "--password-file", &pw, "-o", &node.p("old.csr")])
        .ok();
    node.kill9();
    node.start(true);
    assert_eq!(node.status()["modules"][0]["pending_key"], true);
    for t in ["iam", "online"] {
        let csr = node.p(&format!("{t}.csr"));
        node.provision(&["create-key", t, "--password-file", &pw, "-o", &csr])
            .ok();
        node.openssl_sign(&csr, "ca", &node.p(&format!("{t}.pem")));
        node.provision(&["apply", t, &node.p(&format!("{t}.pem"))]).ok();
    }
    // The certificate for the replaced key no longer applies: its key is gone.
    node.openssl_sign(&node.p("old.csr"), "ca", &node.p("old.pem"));
    node.provision(&["apply", "iam", &node.p("old.pem")])
        .fails(8, "KeyMismatch");
    node.provision(&["finish", "--password-file", &pw]).ok();
    assert_converged(&node);
}

/// Objects changed behind iamd's back are reconciled when it starts: a key no record names
/// is removed, a record whose certificate object was deleted is reported.
#[test]
fn objects_changed_behind_iamds_back_are_reconciled_at_start() {
    let mut node = Node::new("audit", Store::Pkcs11);
    node.start(true);
    node.run_flow().ok();
    node.stop();
    node.plant_key("iam", "0102030405060708090a0b0c0d0e0f10");
    let online_id = node
        .token_objects()
        .into_iter()
        .find(|o| o.1 == "online" && o.0.starts_with("Certificate"))
        .unwrap()
        .2;
    node.pkcs11_tool(&["--delete-object", "--type", "cert", "--id", &online_id]);
    node.start(false);
    let log = node.log();
    assert!(
        log.contains("removed objects iam/0102030405060708090a0b0c0d0e0f10 from PKCS#11 token label \"aos-test\": no database record names them"),
        "{log}"
    );
    assert!(!node
        .token_objects()
        .iter()
        .any(|o| o.2 == "0102030405060708090a0b0c0d0e0f10"));
    assert!(
        log.contains(&format!(
            "certificate record online/{online_id}: its certificate is missing"
        )),
        "{log}"
    );
    assert!(
        !log.contains("reconciliation: certificate record iam/"),
        "intact records are not reported: {log}"
    );
}
