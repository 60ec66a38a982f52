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

/// Objects without a label, as SoftHSM keeps them when it is killed while it sets a new
/// object's attributes (seen in `make crash-test`: a certificate with neither label nor id;
/// a private key with its id and no label), are removed when iamd starts.
#[test]
fn objects_without_a_label_left_by_a_cut_creation_are_removed_at_start() {
    let mut node = Node::new("incomplete", Store::Pkcs11);
    node.start(true);
    node.run_flow().ok();
    node.stop();
    let before = node.token_objects();
    sh(&format!(
        "openssl x509 -in {} -outform DER -out {}",
        node.p("ca.pem"),
        node.p("ca.der")
    ))
    .ok();
    let der = node.p("ca.der");
    node.pkcs11_tool(&["--write-object", &der, "--type", "cert"]);
    node.pkcs11_tool(&[
        "--keypairgen",
        "--key-type",
        "EC:prime256v1",
        "--id",
        "0102030405060708090a0b0c0d0e0f10",
    ]);
    assert_eq!(node.token_objects().iter().filter(|o| o.1.is_empty()).count(), 3);
    node.start(false);
    assert!(
        node.log()
            .contains("removed 3 object(s) without a label from PKCS#11 token label \"aos-test\""),
        "{}",
        node.log()
    );
    assert_eq!(node.token_objects(), before, "only that object went");
    node.applet("iam-certctl", &["-s", &node.protected(), "check"], None)
        .ok();
}

/// The directory of a node's SoftHSM token (its only one).
fn token_dir(node: &Node) -> std::path::PathBuf {
    std::fs::read_dir(node.path("tokens"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir())
        .expect("the token's directory")
}

/// The objects SoftHSM keeps when it is killed inside `C_CreateObject` (seen in `make
/// crash-test`; tests/data/softhsm/README.md): it writes a new object's file, then the
/// default attributes of its class one by one (`CKA_TOKEN` false among them), then the
/// template in one transaction. Cut before the transaction: a certificate with every
/// default; cut earlier: one with `CKA_CLASS` and `CKA_PRIVATE` only; cut before the first
/// attribute: a file with no class, which the token calls invalid. iamd's searches for
/// token objects match none of them, so they are looked for as what they are, and all
/// three are removed at the next start.
#[test]
fn objects_softhsm_keeps_when_killed_inside_an_object_creation_are_removed_at_start() {
    use std::os::unix::fs::OpenOptionsExt;
    let mut node = Node::new("cut-create", Store::Pkcs11);
    node.start(true);
    node.run_flow().ok();
    node.stop();
    let before = node.token_objects();
    let token = token_dir(&node);
    let defaults = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/softhsm/cut-certificate.object"
    ))
    .unwrap();
    // The file: a generation counter, then (type, kind, value) per attribute, big-endian
    // u64s; kind 1 a bool byte, 2 a u64, others a u64 length and the bytes.
    let mut early = defaults[..8].to_vec();
    let mut at = 8;
    while at < defaults.len() {
        let word = |i: usize| u64::from_be_bytes(defaults[i..i + 8].try_into().unwrap()) as usize;
        let (kind, start) = (word(at + 8), at);
        at += 16
            + match kind {
                1 => 1,
                2 => 8,
                _ => 8 + word(at + 16),
            };
        if [0, 2].contains(&word(start)) {
            early.extend_from_slice(&defaults[start..at]);
        }
    }
    assert_eq!(early.len(), 8 + 24 + 17, "CKA_CLASS (a u64) and CKA_PRIVATE (a bool)");
    for (name, bytes) in [
        ("0c0ffee0-0000-4000-8000-000000000001", &defaults[..]),
        ("0c0ffee0-0000-4000-8000-000000000002", &early[..]),
        ("0c0ffee0-0000-4000-8000-000000000003", &defaults[..8]),
    ] {
        use std::io::Write;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(token.join(format!("{name}.object")))
            .unwrap()
            .write_all(bytes)
            .unwrap();
        // SoftHSM makes an object's lock file as it first writes the object.
        std::fs::write(token.join(format!("{name}.lock")), "").unwrap();
    }
    node.start(false);
    let log = node.log();
    assert!(
        log.contains("removed 3 object(s) without a label from PKCS#11 token label \"aos-test\""),
        "{log}"
    );
    assert!(!log.contains("start-up recovery: "), "recovery ran whole: {log}");
    assert_eq!(node.token_objects(), before, "those three went, and nothing of iamd's");
    let names: Vec<String> = std::fs::read_dir(&token)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !names.iter().any(|n| n.starts_with("0c0ffee0")),
        "their files are gone: {names:?}"
    );
    let check = node.applet("iam-certctl", &["-s", &node.protected(), "check"], None);
    assert_eq!(check.code, 0, "{}{}", check.stdout, check.stderr);
}

/// Every persisted provisioning state, reached by the real steps and then cut off by
/// kill -9 (after each acknowledged step), plus journal debris seeded straight into the
/// database — a pending key whose key never reached the token, a trash entry whose objects
/// are gone and one whose objects are still there: after a restart the same `run`
/// converges.
#[test]
fn every_persisted_provisioning_state_converges() {
    let steps: &[&[&str]] = &[
        &["start"],
        &["create-key", "iam"],
        &["apply", "iam"],
        &["create-key", "online"],
        &["apply", "online"],
        &["finish"],
    ];
    for cut in 0..=steps.len() {
        let mut node = Node::new(&format!("state-{cut}"), Store::Pkcs11);
        node.start(true);
        let pw = node.p("password");
        for step in &steps[..cut] {
            match step[0] {
                "start" | "finish" => {
                    node.provision(&[step[0], "--password-file", &pw]).ok();
                }
                "create-key" => {
                    let csr = node.p(&format!("{}.csr", step[1]));
                    node.provision(&["create-key", step[1], "--password-file", &pw, "-o", &csr])
                        .ok();
                    node.openssl_sign(&csr, "ca", &node.p(&format!("{}.pem", step[1])));
                }
                _ => {
                    node.provision(&["apply", step[1], &node.p(&format!("{}.pem", step[1]))])
                        .ok();
                }
            }
        }
        node.kill9();
        if cut < steps.len() {
            seed_debris(&node);
        }
        node.start(true);
        let again = node.run_flow();
        if cut == steps.len() {
            assert_eq!(
                again.json()["error"]["kind"],
                "wrong_state",
                "a provisioned node refuses run: {}",
                again.stdout
            );
        } else {
            again.ok();
        }
        assert_converged(&node);
        node.stop();
        node.start(false);
        assert_converged(&node);
    }
}

/// Straight into the database (iamd stopped): a pending `online` key that never reached
/// the token, and two trash entries for `iam` — one whose objects are gone, one whose key
/// pair is still on the token (once the token is initialised).
fn seed_debris(node: &Node) {
    use aos_iam::store::db::{Db, PendingKey};
    let db = Db::open(&node.path("work/iam.db")).unwrap();
    let absent = *b"seeded-absent-01";
    let present = *b"seeded-present-1";
    db.add_pending(&PendingKey {
        cert_type: "online".into(),
        key_id: absent,
        created: 0,
    })
    .unwrap();
    db.discard(&[("iam".to_string(), *b"seeded-trash-gon"), ("iam".to_string(), present)])
        .unwrap();
    drop(db);
    // Before StartProvisioning the token is not initialised: nothing can be on it.
    if node.path("work/user-pin").exists() {
        let hex: String = present.iter().map(|b| format!("{b:02x}")).collect();
        node.plant_key("iam", &hex);
    }
}

/// Renewal records seeded straight into the database of a provisioned node whose
/// certificates are not due: a renewal at `KeyCreated` and one at `Obtained` whose new key
/// is not on the token (nor pending). iamd drops each and starts over when due; the token
/// and the served certificates are unchanged, and the record is gone.
#[test]
fn every_persisted_renewal_step_without_its_key_is_dropped_and_changes_nothing() {
    use aos_iam::daemon::renewal::{Renewal, Step};
    use aos_iam::store::db::Db;
    let mut node = Node::new("renew-seed", Store::Pkcs11);
    node.modules.rotate_left(1);
    node.extra_config =
        "[modules.renew]\ncommand = \"false\"\nthreshold = \"50%\"\nretry = \"1s\"\njitter = \"0%\"\n".into();
    node.start(true);
    node.run_flow().ok();
    node.stop();
    let before = node.token_objects();
    for step in [
        Step::KeyCreated {
            key_id: *b"seeded-renewal-1",
            csr: "-----BEGIN CERTIFICATE REQUEST-----\nMAA=\n-----END CERTIFICATE REQUEST-----\n".into(),
        },
        Step::Obtained {
            key_id: *b"seeded-renewal-2",
            csr: String::new(),
            chain_pem: "not a chain".into(),
        },
    ] {
        let db = Db::open(&node.path("work/iam.db")).unwrap();
        let r = Renewal {
            step,
            failures: 0,
            next_try: 0,
            last_error: String::new(),
        };
        db.set_renewal("iam", Some(&r)).unwrap();
        drop(db);
        node.start(false);
        let start = std::time::Instant::now();
        while !node.log().contains("its new key is gone; starting over") {
            assert!(start.elapsed() < std::time::Duration::from_secs(20), "{}", node.log());
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert_converged(&node);
        node.stop();
        std::fs::write(node.path("iamd.log"), "").unwrap();
        let db = Db::open(&node.path("work/iam.db")).unwrap();
        assert!(db.renewals().unwrap().is_empty(), "the renewal record is gone");
        drop(db);
        assert_eq!(node.token_objects(), before, "the token is unchanged");
    }
}

/// A token SoftHSM cannot initialise again: an object file without its lock file (iamd
/// killed while SoftHSM created the two) makes C_InitToken fail with CKR_DEVICE_ERROR after
/// it logged the SO in, and leaves the SO logged in. The store empties the token under its
/// SO PIN instead, logging the SO in again with the password, and the run converges.
#[test]
fn a_token_softhsm_fails_to_initialise_again_is_emptied_and_the_run_converges() {
    let mut node = Node::new("reinit-fails", Store::Pkcs11);
    write_killer(&node);
    std::fs::write(node.path("kill-at"), "sign-iam").unwrap();
    node.start(true);
    assert_eq!(run_flow(&node).code, 3);
    node.reap();
    let token = token_dir(&node);
    // An object file without its lock file: SoftHSM killed between creating the two.
    let object = std::fs::read_dir(&token)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "object") && !p.ends_with("token.object"))
        .expect("an object of the killed run");
    std::fs::remove_file(object.with_extension("lock")).unwrap();
    node.start(true);
    let out = run_flow(&node);
    assert_eq!(out.code, 0, "{}{}\n{}", out.stdout, out.stderr, node.log());
    assert!(node.log().contains("emptying it under its SO PIN"), "{}", node.log());
    assert_converged(&node);
}

/// A token SoftHSM was killed inside `C_InitToken` for (seen in `make crash-test`;
/// tests/data/softhsm/README.md): its token.object holds the label only, and
/// `C_GetTokenInfo` fails for its slot. The store passes that slot over, says so, and
/// initialises the free slot; the run converges, and the next start finds the token.
#[test]
fn a_token_cut_off_in_its_initialisation_is_passed_over_and_the_run_converges() {
    let mut node = Node::new("cut-init", Store::Pkcs11);
    let broken = node.path("tokens").join("0c0ffee0-0000-4000-8000-00000000000a");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/softhsm/cut-token.object"),
        broken.join("token.object"),
    )
    .unwrap();
    std::fs::write(broken.join("token.lock"), "").unwrap();
    std::fs::write(broken.join("generation"), [0u8, 0, 0, 0, 0, 0, 0, 1]).unwrap();
    node.start(true);
    node.run_flow().ok();
    let log = node.log();
    assert!(
        log.contains("slot 0 cannot be read (PKCS#11 token label \"aos-test\": read token info: C_GetTokenInfo returned CKR_GENERAL_ERROR")
            && log.contains("); initialising slot 1 instead"),
        "{log}"
    );
    assert_converged(&node);
    node.stop();
    node.start(false);
    assert_converged(&node);
}

/// A step whose client goes while it waits for the step in progress is dropped before it
/// starts: iam-certctl renew killed during its CreateKey, and run again, must not have the
/// late CreateKey replace the new run's pending key (seen in `make crash-test`). Here the
/// step in progress is a StartProvisioning held in its start hook, and the late step a
/// CreateKey that would otherwise make a key on the token it has just initialised.
#[test]
fn a_step_whose_client_has_gone_while_it_waited_never_starts() {
    let mut node = Node::new("gone-waiting", Store::Pkcs11);
    let d = node.dir.display().to_string();
    std::fs::write(
        node.path("hold.sh"),
        format!("[ -e {d}/hold ] || exit 0\ntouch {d}/held\nwhile [ -e {d}/hold ]; do sleep 0.05; done\n"),
    )
    .unwrap();
    node.extra_config = format!("\n[hooks]\nstart = [\"sh\", \"{d}/hold.sh\"]\n");
    node.start(true);
    let pw = node.p("password");
    node.provision(&["start", "--password-file", &pw]).ok();
    // A second StartProvisioning holds the journal in its start hook.
    std::fs::write(node.path("hold"), "").unwrap();
    let args = |v: &[&str]| -> Vec<String> {
        let mut a = vec!["-s".to_string(), node.protected()];
        a.extend(v.iter().map(|s| s.to_string()));
        a
    };
    let start = node.spawn_applet("iam-provision", &args(&["start", "--password-file", &pw]));
    wait_for(
        || node.path("held").exists(),
        "the start hook holding the journal",
        &node,
    );
    // A CreateKey waits behind it; its client is killed.
    let mut create = node.spawn_applet("iam-provision", &args(&["create-key", "iam", "--password-file", &pw]));
    wait_for(
        || node.log().contains("a step waits for the one in progress"),
        "CreateKey waiting for the journal",
        &node,
    );
    create.kill().unwrap();
    create.wait().unwrap();
    wait_for(
        || {
            node.log()
                .lines()
                .any(|l| l.contains("audit: CreateKey by uid") && l.ends_with("dropped, its client has gone"))
        },
        "iamd seeing the client gone",
        &node,
    );
    std::fs::remove_file(node.path("hold")).unwrap();
    let out = start.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Nothing was made for iam on the token the StartProvisioning initialised (which holds
    // the self-signed module it made itself).
    let objects = node.token_objects();
    assert!(
        objects.iter().all(|o| o.1 == "diskencryption"),
        "{objects:?}\n{}",
        node.log()
    );
    assert!(!node.log().contains("CreateKey: done"), "{}", node.log());
}
