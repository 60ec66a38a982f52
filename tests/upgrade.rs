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
        // Its node id is recorded now (earlier releases did not), once.
        let recorded = format!("recorded the node id \"{}\"", node.node_id());
        assert_eq!(
            node.log().matches(&recorded).count(),
            1,
            "release {release}: {}",
            node.log()
        );
        node.stop();
        node.start(false);
        assert_eq!(
            node.log().matches(&recorded).count(),
            1,
            "release {release}: recorded again"
        );
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
            let mut info = unit
                .main
                .provision(&["--json", "--node", id, "node-info"])
                .fails(3, "is not connected")
                .json();
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

// ---- nodes of the release named in tests/data/UPGRADE_FROM beside nodes of this build ----

/// The binary of the release named in tests/data/UPGRADE_FROM, built once from this
/// repository's history into target/upgrade-from/COMMIT (kept for the next run).
fn old_binary() -> PathBuf {
    static BUILT: std::sync::Mutex<Option<PathBuf>> = std::sync::Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(b) = built.as_ref() {
        return b.clone();
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let commit = std::fs::read_to_string(data("UPGRADE_FROM")).unwrap();
    let commit = commit
        .lines()
        .find(|l| !l.starts_with('#') && !l.trim().is_empty())
        .unwrap()
        .trim()
        .to_string();
    let cache = repo.join("target/upgrade-from").join(&commit);
    let bin = cache.join("aos-iam");
    if !bin.exists() {
        let src = cache.join("src");
        let _ = std::fs::remove_dir_all(&src);
        std::fs::create_dir_all(&src).unwrap();
        let out = sh(&format!(
            "cd {r} && git cat-file -e {commit}^{{commit}} 2>&1 && git archive {commit} | tar -x -C {s}",
            r = repo.display(),
            s = src.display()
        ));
        assert_eq!(
            out.code, 0,
            "tests/data/UPGRADE_FROM names {commit}, which this clone's history does not have \
             (a shallow clone? fetch it): {}{}",
            out.stdout, out.stderr
        );
        let started = std::time::Instant::now();
        let out = sh(&format!(
            "cd {s} && CARGO_TARGET_DIR={t} cargo build --locked --quiet 2>&1",
            s = src.display(),
            t = repo.join("target/upgrade-from/target").display()
        ));
        assert_eq!(out.code, 0, "building release {commit}: {}", out.stdout);
        std::fs::copy(repo.join("target/upgrade-from/target/debug/aos-iam"), &bin).unwrap();
        eprintln!("built release {commit} in {:?}", started.elapsed());
    }
    *built = Some(bin.clone());
    bin
}

fn served_and_checked(node: &Node, what: &str) {
    let certs = node.list_certs();
    assert_eq!(
        certs.iter().filter(|c| c["current"] == true).count(),
        3,
        "{what}: {certs:?}"
    );
    let check = node.applet("iam-certctl", &["-s", &node.protected(), "check"], None);
    assert_eq!(check.code, 0, "{what}: {}", check.stdout);
    assert!(check.stdout.starts_with("IAM OK"), "{what}: {}", check.stdout);
}

/// Renew `cert_type` of `node_id` (empty: the node asked) through `via` with its local CA;
/// the new certificate's serial.
fn renew_through(via: &Node, node_id: &str, cert_type: &str) -> String {
    let mut args = vec![
        "-s".to_string(),
        via.protected(),
        "--json".into(),
        "renew".into(),
        cert_type.into(),
        "--ca-cert".into(),
        via.p("ca.pem"),
        "--ca-key".into(),
        via.p("ca.key"),
        "--password-file".into(),
        via.p("password"),
    ];
    if !node_id.is_empty() {
        args.extend(["--node".into(), node_id.into()]);
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = via.applet("iam-certctl", &refs, None).ok().json();
    out["certificate"]["serial"].as_str().unwrap().to_string()
}

#[test]
fn a_single_node_provisioned_by_the_previous_release_keeps_working_under_this_one() {
    let old = old_binary();
    let mut node = Node::new("upg-single", Store::Pkcs11);
    node.bin = old.clone();
    node.start(true);
    node.run_flow().ok();
    node.stop();
    node.start(false);
    served_and_checked(&node, "under the old release");
    let before = node.list_certs();
    node.stop();

    node.bin = bin();
    node.start(false);
    assert_eq!(node.list_certs(), before, "the same certificates, served the same way");
    served_and_checked(&node, "under this release");
    let serial = renew_through(&node, "", "iam");
    let current = node
        .list_certs()
        .into_iter()
        .find(|c| c["type"] == "iam" && c["current"] == true)
        .unwrap();
    assert_eq!(current["serial"], serial.as_str());
}

/// A unit of a main node and one secondary provisioned by the old release, its link up.
fn old_unit(name: &str, old: &Path) -> Unit {
    let mut unit = Unit::new(name, 1);
    unit.main.bin = old.to_path_buf();
    unit.secondaries[0].bin = old.to_path_buf();
    unit.start(true);
    unit.link_unix(0);
    unit.wait_link_registered(0);
    unit.run_all(&[]).ok();
    unit.kill_link(0);
    unit.main.stop();
    unit.secondaries[0].stop();
    unit.main.start(false);
    unit.secondaries[0].start(false);
    unit.link_unix(0);
    let id = unit.secondaries[0].node_id();
    unit.wait_connected(&id, true);
    unit
}

/// Through the main node: the secondary's certificates, its check, a renewal.
fn unit_works(unit: &Unit, what: &str) {
    let id = unit.secondaries[0].node_id();
    served_and_checked(&unit.main, what);
    served_and_checked(&unit.secondaries[0], what);
    let listed = unit
        .main
        .applet(
            "iam-certctl",
            &["-s", &unit.main.protected(), "--json", "list", "--node", &id],
            None,
        )
        .ok()
        .json();
    let current = listed["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["current"] == true)
        .count();
    assert_eq!(current, 3, "{what}: {listed}");
    let serial = renew_through(&unit.main, &id, "online");
    let current = unit.secondaries[0]
        .list_certs()
        .into_iter()
        .find(|c| c["type"] == "online" && c["current"] == true)
        .unwrap();
    assert_eq!(
        current["serial"],
        serial.as_str(),
        "{what}: renewed through the main node"
    );
}

fn restart_main_as(unit: &mut Unit, bin: &Path) {
    unit.main.stop();
    unit.main.bin = bin.to_path_buf();
    unit.main.start(false);
    let id = unit.secondaries[0].node_id();
    unit.wait_connected(&id, true);
}

fn restart_secondary_as(unit: &mut Unit, bin: &Path) {
    unit.kill_link(0);
    unit.secondaries[0].stop();
    unit.secondaries[0].bin = bin.to_path_buf();
    unit.secondaries[0].start(false);
    unit.link_unix(0);
    let id = unit.secondaries[0].node_id();
    unit.wait_connected(&id, true);
}

#[test]
fn a_unit_is_upgraded_main_node_first_then_the_secondary() {
    let old = old_binary();
    let mut unit = old_unit("upg-mf", &old);
    unit_works(&unit, "all of the old release");

    // A new main node serves the old secondary in protocol version 1.
    restart_main_as(&mut unit, &bin());
    assert!(unit.main.log().contains("protocol version 1"), "{}", unit.main.log());
    unit_works(&unit, "new main, old secondary");

    // Both new: the link speaks this version.
    restart_secondary_as(&mut unit, &bin());
    let v = format!("protocol version {}", aos_iam::PROTOCOL_VERSION);
    assert!(unit.main.log().lines().last_linked(&v), "{}", unit.main.log());
    unit_works(&unit, "both new");
}

#[test]
fn a_unit_is_upgraded_secondary_first_then_the_main_node() {
    let old = old_binary();
    let mut unit = old_unit("upg-sf", &old);

    // A new secondary links to the old main node: refused in version 2, it links in 1.
    restart_secondary_as(&mut unit, &bin());
    assert!(
        unit.nodelink_log(0).contains("speaks protocol version 1 only"),
        "{}",
        unit.nodelink_log(0)
    );
    unit_works(&unit, "old main, new secondary");

    restart_main_as(&mut unit, &bin());
    unit_works(&unit, "both new");
}

trait LastLinked {
    fn last_linked(self, version: &str) -> bool;
}

impl<'a, I: DoubleEndedIterator<Item = &'a str>> LastLinked for I {
    /// Whether the last "linked from" line names `version`.
    fn last_linked(mut self, version: &str) -> bool {
        self.rfind(|l| l.contains(" linked from "))
            .is_some_and(|l| l.contains(version))
    }
}

// ---- configuration and schema checks ---------------------------------------------------

/// `iamd --check-config` on `config` (with `@DIR@` as the node's directory).
fn check_config(node: &Node, config: &str) -> Out {
    let path = node.path("check.toml");
    std::fs::write(&path, config.replace("@DIR@", &node.dir.display().to_string())).unwrap();
    node.applet("iamd", &["-c", &path.display().to_string(), "--check-config"], None)
}

#[test]
fn every_configuration_an_earlier_release_accepted_is_accepted_without_warnings() {
    let node = Node::new("up-config", Store::Pkcs11);
    let mut seen = 0;
    for release in std::fs::read_dir(data("config")).unwrap() {
        for file in std::fs::read_dir(release.unwrap().path()).unwrap() {
            let file = file.unwrap().path();
            let out = check_config(&node, &std::fs::read_to_string(&file).unwrap());
            assert_eq!(out.code, 0, "{}: {}{}", file.display(), out.stdout, out.stderr);
            assert!(!out.stderr.contains("warning"), "{}: {}", file.display(), out.stderr);
            seen += 1;
        }
    }
    assert!(seen >= 2);
}

#[test]
fn check_config_reports_the_schema_of_the_database_it_would_open() {
    let (mut node, _) = restore("c48f784", "single", "");
    let config = node.config_text();
    let out = check_config(&node, &config);
    assert_eq!(out.code, 0, "{}", out.stderr);
    // The release before stopped without closing its database: it is repaired at start.
    assert!(
        out.stdout.contains("written before versions were recorded") || out.stdout.contains("not closed cleanly"),
        "{}",
        out.stdout
    );
    node.start(false);
    let out = check_config(&node, &config);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("in use by a running iamd"), "{}", out.stdout);
    node.stop();
    let out = check_config(&node, &config);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("database "))
        .unwrap()
        .to_string();
    // This build closes its database when it stops: the versions it recorded are read.
    assert!(
        line.contains("certs 1") && line.contains("nodes 1") && !line.contains('('),
        "{line}"
    );
    let fresh = Node::new("up-config-fresh", Store::Pkcs11);
    let out = check_config(&fresh, &fresh.config_text());
    assert!(out.stdout.contains("not created yet"), "{}", out.stdout);
}

#[test]
fn iamd_refuses_a_database_of_a_newer_release_naming_both_versions_and_changes_nothing() {
    let (node, _) = restore("c48f784", "single", "");
    // What a later release would leave: the nodes table at schema version 2.
    let db = node.path("work/iam.db");
    let mut newer: Vec<(&str, u32)> = aos_iam::store::records::SCHEMA.to_vec();
    newer.retain(|(t, _)| *t != "nodes");
    newer.push(("nodes", 2));
    fn same(_: &str, v: &[u8]) -> aos_iam::error::Result<Vec<u8>> {
        Ok(v.to_vec())
    }
    let step = [aos_iam::store::db::Migration {
        table: "nodes",
        from: 1,
        rewrite: same,
    }];
    drop(aos_iam::store::db::Db::open_with(&db, &newer, &step).unwrap());
    let before = std::fs::read(&db).unwrap();
    node.write_config();
    let out = sh(&format!(
        "SOFTHSM2_CONF={} timeout 60 {} iamd -c {} 2>&1",
        node.p("softhsm2.conf"),
        node.bin.display(),
        node.p("config.toml")
    ));
    assert_eq!(out.code, 5, "wrong_state: {}", out.stdout);
    assert!(
        out.stdout.contains("table nodes is at schema version 2")
            && out.stdout.contains("up to schema version 1")
            && out.stdout.contains("Nothing was changed"),
        "{}",
        out.stdout
    );
    assert!(std::fs::read(&db).unwrap() == before, "the database file was changed");
    let out = check_config(&node, &node.config_text());
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(out.stderr.contains("schema version 2"), "{}", out.stderr);
}
