//! Upgrades: databases and token directories written by an earlier release (golden fixtures
//! under tests/data/db/, never regenerated) opened by this build, and nodes of the release
//! named in tests/data/UPGRADE_FROM running beside nodes of this build.

mod common;
use common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

fn data(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(p)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// What a fixture directory holds beside its configuration: the files of a node.
const NODE_FILES: &[&str] = &["ca.pem", "ca.key", "node-id", "password"];

// ---- writing fixtures (by hand, with the release's binary) ----------------------------

/// Keep `node`'s files as fixture `name` of `release`: its configuration with the node's
/// directory as `@DIR@`, its work directory (the database) and its token directory.
fn keep(node: &Node, release: &str, name: &str, expected: Value) {
    let out = data(&format!("db/{release}/{name}"));
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    let d = node.dir.display().to_string();
    std::fs::write(out.join("config.toml"), node.config_text().replace(&d, "@DIR@")).unwrap();
    for f in NODE_FILES {
        std::fs::copy(node.path(f), out.join(f)).unwrap();
    }
    copy_dir(&node.path("work"), &out.join("work"));
    copy_dir(&node.path("tokens"), &out.join("tokens"));
    std::fs::write(
        out.join("expected.json"),
        serde_json::to_string_pretty(&expected).unwrap() + "\n",
    )
    .unwrap();
}

/// A root CA that outlives the fixtures (100 years), in place of the harness's one-year CA.
fn long_lived_ca(node: &Node) {
    sh(&format!(
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-384 -nodes -days 36500 \
         -keyout {d}/ca.key -out {d}/ca.pem -subj '/O=aos-iam fixtures/CN=fixture root' \
         -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign",
        d = node.dir.display()
    ))
    .ok();
}

fn certificates(node: &Node) -> Value {
    Value::Array(node.list_certs())
}

#[test]
#[ignore = "writes the golden fixtures of a release: by hand, once, with AOS_IAM_FIXTURE_BIN and AOS_IAM_FIXTURE_RELEASE (tests/data/db/README.md)"]
fn write_fixtures() {
    let bin = PathBuf::from(std::env::var("AOS_IAM_FIXTURE_BIN").expect("AOS_IAM_FIXTURE_BIN"));
    let release = std::env::var("AOS_IAM_FIXTURE_RELEASE").expect("AOS_IAM_FIXTURE_RELEASE");
    let days = ["--days", "36500"];

    // A provisioned single node with two permission registrations.
    let mut node = Node::new("fx-single", Store::Pkcs11);
    node.bin = bin.clone();
    node.extra_config = "\n[permissions]\npersist = true\n".into();
    long_lived_ca(&node);
    node.start(true);
    node.run_flow_with(&days).ok();
    let mut secrets = Vec::new();
    for (item, instance, perm) in [("svc-a", "1", "vis:read=yes"), ("svc-b", "2", "db:role=reader")] {
        let reg = node
            .provision(&[
                "--json",
                "register-instance",
                "--item",
                item,
                "--subject",
                "s",
                "--instance",
                instance,
                "--permission",
                perm,
            ])
            .ok()
            .json();
        let server = perm.split(':').next().unwrap();
        let answer = node
            .applet(
                "iam-certctl",
                &["-s", &node.public(), "--json", "permissions", server],
                Some(reg["secret"].as_str().unwrap()),
            )
            .ok()
            .json();
        secrets.push(json!({ "secret": reg["secret"], "server": server, "answer": answer }));
    }
    node.stop();
    node.start(false);
    let expected = json!({ "certificates": certificates(&node), "permissions": secrets, "status": node.status() });
    node.stop();
    keep(&node, &release, "single", expected);

    // A main node with two registered secondaries (their links now down), and the two.
    let mut unit = Unit::new("fx-unit", 2);
    unit.main.bin = bin.clone();
    long_lived_ca(&unit.main);
    for s in &mut unit.secondaries {
        s.bin = bin.clone();
        for f in ["ca.pem", "ca.key"] {
            std::fs::copy(unit.main.path(f), s.path(f)).unwrap();
        }
    }
    unit.start(true);
    for i in 0..2 {
        unit.link_unix(i);
        unit.wait_link_registered(i);
    }
    unit.run_all(&days).ok();
    let nodes = unit.main.provision(&["--json", "nodes"]).ok().json();
    let mut per_node = Vec::new();
    for s in &unit.secondaries {
        let info = unit
            .main
            .provision(&["--json", "--node", &s.node_id(), "node-info"])
            .ok()
            .json();
        per_node.push(json!({ "node_id": s.node_id(), "certificates": certificates(s), "node_info": info }));
    }
    let expected = json!({ "certificates": certificates(&unit.main), "nodes": nodes, "secondaries": per_node });
    // The links go down first: each disconnection commits the node's latest info.
    for (i, s) in per_node.iter().enumerate() {
        unit.kill_link(i);
        wait_log(
            &unit.main,
            &format!("node \"{}\" disconnected", s["node_id"].as_str().unwrap()),
        );
    }
    unit.main.stop();
    for s in &mut unit.secondaries {
        s.stop();
    }
    keep(&unit.main, &release, "main", expected);
    for (i, (s, e)) in unit.secondaries.iter().zip(per_node).enumerate() {
        keep(s, &release, &format!("secondary{i}"), e);
    }

    // A node whose iam certificate's renewal is in progress: its key is made and its CSR
    // kept (step KeyCreated), and the signing command has refused once.
    let mut node = Node::new("fx-renewing", Store::Pkcs11);
    node.bin = bin;
    long_lived_ca(&node);
    node.modules.rotate_left(1);
    node.extra_config =
        "[modules.renew]\ncommand = \"@RENEW_COMMAND@\"\nthreshold = \"36600d\"\nretry = \"1s\"\njitter = \"0%\"\n"
            .into();
    let refusing = node
        .extra_config
        .replace("@RENEW_COMMAND@", "echo the CA is away >&2; exit 1");
    let template = node.extra_config.clone();
    node.extra_config = refusing;
    node.start(true);
    node.run_flow_with(&days).ok();
    node.stop();
    node.start(false);
    wait_log(&node, "renewal of iam: ");
    wait_log(&node, "trying again in");
    let expected = json!({ "certificates": certificates(&node) });
    node.stop();
    node.extra_config = template;
    keep(&node, &release, "renewing", expected);
}

fn wait_log(node: &Node, text: &str) {
    let start = std::time::Instant::now();
    while !node.log().contains(text) {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "no \"{text}\":\n{}",
            node.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

// ---- opening fixtures with this build ------------------------------------------------

/// The releases whose fixtures are kept: every directory of tests/data/db.
fn releases() -> Vec<String> {
    let mut r: Vec<String> = std::fs::read_dir(data("db"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| data(&format!("db/{n}")).is_dir())
        .collect();
    r.sort();
    assert!(!r.is_empty(), "no fixtures under tests/data/db");
    r
}

/// Fixture `name` of `release` as a fresh node of this build (not started), and what the
/// release saw of it.
fn restore(release: &str, name: &str, renew_command: &str) -> (Node, Value) {
    let from = data(&format!("db/{release}/{name}"));
    let mut node = Node::new(&format!("up-{name}"), Store::Pkcs11);
    let _ = std::fs::remove_dir_all(node.path("tokens"));
    copy_dir(&from.join("tokens"), &node.path("tokens"));
    let _ = std::fs::remove_dir_all(node.path("work"));
    copy_dir(&from.join("work"), &node.path("work"));
    for f in NODE_FILES {
        std::fs::copy(from.join(f), node.path(f)).unwrap();
    }
    // Git keeps no modes: the node's secrets are its own again.
    sh(&format!(
        "chmod 0600 {d}/work/user-pin {d}/work/iam.db {d}/password {d}/ca.key",
        d = node.dir.display()
    ))
    .ok();
    let config = std::fs::read_to_string(from.join("config.toml")).unwrap();
    // The renewal command may name the node's directory as @DIR@ too.
    node.config_override = Some(
        config
            .replace(
                "@RENEW_COMMAND@",
                &renew_command.replace('\\', "\\\\").replace('"', "\\\""),
            )
            .replace("@DIR@", &node.dir.display().to_string()),
    );
    let expected = serde_json::from_str(&std::fs::read_to_string(from.join("expected.json")).unwrap()).unwrap();
    (node, expected)
}

#[test]
fn a_provisioned_node_of_each_earlier_release_serves_its_certificates_and_permissions() {
    for release in releases() {
        let (mut node, expected) = restore(&release, "single", "");
        node.start(false);
        assert_eq!(certificates(&node), expected["certificates"], "release {release}");
        let status = node.status();
        assert_eq!(status, expected["status"], "release {release}");
        for p in expected["permissions"].as_array().unwrap() {
            let got = node
                .applet(
                    "iam-certctl",
                    &[
                        "-s",
                        &node.public(),
                        "--json",
                        "permissions",
                        p["server"].as_str().unwrap(),
                    ],
                    Some(p["secret"].as_str().unwrap()),
                )
                .ok()
                .json();
            assert_eq!(got, p["answer"], "release {release}");
        }
        let check = node.applet("iam-certctl", &["-s", &node.protected(), "check"], None);
        assert_eq!(check.code, 0, "release {release}: {}", check.stdout);
        // Every certificate's key is in the token and signs: the served URIs still work.
        for c in node.list_certs() {
            node.export_cert(c["cert_url"].as_str().unwrap(), &node.p("c.pem"));
            assert!(std::fs::read_to_string(node.path("c.pem"))
                .unwrap()
                .contains("BEGIN CERTIFICATE"));
        }
    }
}

#[test]
fn a_main_node_of_each_earlier_release_keeps_its_secondaries_and_they_link_again() {
    for release in releases() {
        let (main, expected) = restore(&release, "main", "");
        let mut unit = Unit::new("up-unit", 0);
        unit.main = main;
        unit.main.start(false);
        assert_eq!(unit.main.provision(&["--json", "nodes"]).ok().json(), expected["nodes"]);
        assert_eq!(certificates(&unit.main), expected["certificates"], "release {release}");
        let wanted = expected["secondaries"].as_array().unwrap();
        // Listed as they were last seen, now disconnected.
        for s in wanted {
            let id = s["node_id"].as_str().unwrap();
            let mut info = unit.main.provision(&["--json", "--node", id, "node-info"]).ok().json();
            assert_eq!(info["connected"], false, "{info}");
            info["connected"] = true.into();
            assert_eq!(info, s["node_info"], "release {release}");
        }
        for (i, s) in wanted.iter().enumerate() {
            let (mut node, _) = restore(&release, &format!("secondary{i}"), "");
            node.start(false);
            unit.secondaries.push(node);
            unit.links.push(None);
            unit.link_unix(i);
            unit.wait_connected(s["node_id"].as_str().unwrap(), true);
            let over_link = unit
                .main
                .applet(
                    "iam-certctl",
                    &[
                        "-s",
                        &unit.main.protected(),
                        "--json",
                        "list",
                        "--node",
                        s["node_id"].as_str().unwrap(),
                    ],
                    None,
                )
                .ok()
                .json();
            assert_eq!(over_link["certificates"], s["certificates"], "release {release}");
        }
    }
}

#[test]
fn a_renewal_in_progress_under_an_earlier_release_resumes_and_completes() {
    for release in releases() {
        // The CA is back: a signing command that signs the kept CSR.
        let command = "set -e; f=$(mktemp -p @DIR@); cat > $f.csr; openssl x509 -req -in $f.csr -CA @DIR@/ca.pem \
             -CAkey @DIR@/ca.key -days 3650 -copy_extensions copy -out $f.pem 2>$f.err || { cat $f.err >&2; exit 1; }; cat $f.pem";
        let (mut node, expected) = restore(&release, "renewing", command);
        let d = node.dir.display().to_string();
        let old_iam = expected["certificates"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "iam")
            .unwrap()["serial"]
            .clone();
        node.start(false);
        wait_log(&node, "renewal of iam: resuming at step KeyCreated");
        let start = std::time::Instant::now();
        let renewed = loop {
            if let Some(c) = node
                .list_certs()
                .into_iter()
                .find(|c| c["type"] == "iam" && c["current"] == true && c["serial"] != old_iam)
            {
                break c;
            }
            assert!(
                start.elapsed() < std::time::Duration::from_secs(60),
                "not renewed:\n{}",
                node.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        };
        node.export_cert(renewed["cert_url"].as_str().unwrap(), &node.p("renewed.pem"));
        let v = sh(&format!("openssl verify -CAfile {d}/ca.pem {d}/renewed.pem"));
        assert!(v.stdout.contains(": OK"), "{}", v.stdout);
        assert!(!node.log().contains("its new key is gone"), "{}", node.log());
    }
}
