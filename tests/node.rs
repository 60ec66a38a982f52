//! Unit identity from its files (and changes pushed to subscribers), NodeInfo against /proc
//! and statvfs, and pause/resume persisted and refused in the wrong state.

mod common;
use common::*;
use std::sync::mpsc;
use std::time::Duration;

fn hup(node: &Node) {
    let pid = node.iamd.as_ref().unwrap().id() as i32;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGHUP).unwrap();
}

#[test]
fn identity_comes_from_its_files_and_subject_changes_reach_subscribers() {
    let mut node = Node::new("identity", Store::Software);
    let d = node.dir.display().to_string();
    std::fs::write(node.path("system-id"), "unit-0042\n").unwrap();
    std::fs::write(node.path("unit-model"), "aos-box;2.1.0\n").unwrap();
    std::fs::write(node.path("subjects"), "subject-a\nsubject-b\n").unwrap();
    node.extra_config = format!(
        "\n[identity]\nsystem_id_file = \"{d}/system-id\"\nunit_model_file = \"{d}/unit-model\"\nsubjects_file = \"{d}/subjects\"\npoll_interval = 1\n"
    );
    node.start(false);
    let public = node.public();
    let info = node
        .applet("iam-certctl", &["-s", &public, "--json", "system-info"], None)
        .ok()
        .json();
    assert_eq!(
        (
            info["system_id"].as_str(),
            info["unit_model"].as_str(),
            info["version"].as_str()
        ),
        (Some("unit-0042"), Some("aos-box"), Some("2.1.0"))
    );
    let subjects = node
        .applet("iam-certctl", &["-s", &public, "subjects"], None)
        .ok()
        .stdout;
    assert_eq!(subjects.lines().collect::<Vec<_>>(), ["subject-a", "subject-b"]);

    let watch = Watcher::start(&node, "iam-certctl", &["-s", &public, "--json", "subjects", "--watch"]);
    assert_eq!(watch.next()["subjects"], serde_json::json!(["subject-a", "subject-b"]));
    // Picked up by the periodic check...
    std::fs::write(node.path("subjects"), "subject-a\nsubject-c\n").unwrap();
    assert_eq!(watch.next()["subjects"], serde_json::json!(["subject-a", "subject-c"]));
    // ...and by SIGHUP, each change once.
    std::fs::write(node.path("subjects"), "subject-d\n").unwrap();
    hup(&node);
    assert_eq!(watch.next()["subjects"], serde_json::json!(["subject-d"]));
    watch.nothing_for(Duration::from_millis(2500));
    assert!(node.log().contains("subjects changed"), "{}", node.log());

    // A broken unit model file is a clear error.
    std::fs::write(node.path("unit-model"), "no-version\n").unwrap();
    node.applet("iam-certctl", &["-s", &public, "system-info"], None)
        .fails(3, "expected model;version");
}

#[test]
fn system_info_without_configured_files_is_not_found() {
    let mut node = Node::new("noidentity", Store::Software);
    node.start(false);
    node.applet("iam-certctl", &["-s", &node.public(), "system-info"], None)
        .fails(6, "identity.system_id_file is not configured");
    let out = node
        .applet("iam-certctl", &["-s", &node.public(), "--json", "subjects"], None)
        .ok()
        .json();
    assert_eq!(out["subjects"], serde_json::json!([]));
}

#[test]
fn node_info_matches_proc_and_statvfs() {
    let mut node = Node::new("nodeinfo", Store::Software);
    let d = node.dir.display().to_string();
    node.extra_config = format!(
        "\n[node.attributes]\nMainNode = \"\"\nSite = \"line-3\"\n\n[[node.partitions]]\nname = \"root\"\npath = \"/\"\ntypes = [\"system\"]\n\n\
         [[node.partitions]]\nname = \"work\"\npath = \"{d}/work\"\ntypes = [\"storage\", \"state\"]\n"
    );
    node.start(false);
    let info = node.provision(&["--json", "node-info"]).ok().json();
    assert_eq!(info["node_id"], node.node_id());
    assert_eq!(info["state"], "unprovisioned");
    assert_eq!(
        info["attributes"],
        serde_json::json!({"MainNode": "", "Site": "line-3"})
    );

    let cpuinfo = read("/proc/cpuinfo");
    let processors = cpuinfo.lines().filter(|l| l.starts_with("processor")).count() as u64;
    let threads: u64 = info["cpus"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["threads"].as_u64().unwrap())
        .sum();
    assert_eq!(threads, processors, "threads of all CPUs = processors in /proc/cpuinfo");
    if let Some(model) = cpuinfo.lines().find_map(|l| l.strip_prefix("model name")) {
        assert_eq!(
            info["cpus"][0]["model"],
            model.trim_start_matches([' ', '\t', ':']).trim()
        );
    }
    assert_eq!(info["cpus"][0]["architecture"], std::env::consts::ARCH);
    let mem_kib: u64 = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .unwrap()
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    assert_eq!(info["total_ram"], mem_kib * 1024);

    for (i, path) in ["/".to_string(), format!("{d}/work")].iter().enumerate() {
        // stat(1) as the independent judge: total blocks × fundamental block size.
        let out = sh(&format!("stat -f -c '%b %S' {path}")).ok().stdout;
        let v: Vec<u64> = out.split_whitespace().map(|x| x.parse().unwrap()).collect();
        assert_eq!(info["partitions"][i]["total_size"], v[0] * v[1], "{path}");
        assert_eq!(info["partitions"][i]["path"], path.as_str());
    }
    assert_eq!(info["partitions"][1]["types"], serde_json::json!(["storage", "state"]));
    let os = read("/etc/os-release");
    let name = os
        .lines()
        .find_map(|l| l.strip_prefix("NAME="))
        .unwrap()
        .trim_matches('"');
    assert_eq!(info["os_name"], name);
    let nodes = node.provision(&["--json", "nodes"]).ok().json();
    assert_eq!(nodes["nodes"], serde_json::json!([node.node_id()]));
}

#[test]
fn pause_and_resume_are_persisted_reported_and_refused_in_the_wrong_state() {
    let mut node = Node::new("pause", Store::Software);
    node.start(true);
    node.provision(&["pause"])
        .fails(5, "PauseNode is refused: the node is unprovisioned");
    node.provision(&["resume"])
        .fails(5, "ResumeNode is refused: the node is unprovisioned");
    node.run_flow().ok();

    let watch = Watcher::start(
        &node,
        "iam-provision",
        &["-s", &node.protected(), "--json", "node-info", "--watch"],
    );
    assert_eq!(watch.next()["state"], "provisioned");
    node.provision(&["pause"]).ok();
    assert_eq!(watch.next()["state"], "paused", "node subscribers see the pause");
    node.provision(&["pause"]).ok();
    assert_eq!(node.provision(&["--json", "node-info"]).ok().json()["state"], "paused");
    drop(watch);

    // Refused while paused, with a clear reason.
    node.provision(&["create-key", "iam", "--password-file", &node.p("password")])
        .fails(5, "the node is paused (ResumeNode first)");
    node.provision(&["apply", "iam", &node.p("ca.pem")]).fails(5, "paused");
    node.provision(&["start", "--password-file", &node.p("password")])
        .fails(5, "the node is paused; deprovision it first");
    node.provision(&["finish", "--password-file", &node.p("password")])
        .fails(5, "paused (ResumeNode first)");
    node.run_flow().fails(5, "already paused");

    // Persisted across a restart.
    node.stop();
    node.start(false);
    assert_eq!(node.provision(&["--json", "node-info"]).ok().json()["state"], "paused");
    assert!(
        node.path("work/provisioned").exists(),
        "a paused node is still provisioned"
    );
    node.provision(&["resume"]).ok();
    node.stop();
    node.start(false);
    assert_eq!(
        node.provision(&["--json", "node-info"]).ok().json()["state"],
        "provisioned"
    );
    node.provision(&["resume"]).ok();
    node.applet("iam-provision", &["-s", &node.public(), "pause"], None)
        .fails(4, "protected socket only");
}

/// A subscriber that stops reading is dropped once its backlog is full; another subscriber
/// keeps receiving every change, in order. Events are made large (a 50 KB subject list) so
/// that the stalled connection's socket buffer fills after a few of them.
#[test]
fn a_stalled_subscriber_is_dropped_without_holding_back_others() {
    use aos_iam::proto::client::Client;
    use aos_iam::proto::wire::{Event, Request};
    let mut node = Node::new("stall", Store::Software);
    let d = node.dir.display().to_string();
    node.extra_config = format!("\n[identity]\nsubjects_file = \"{d}/subjects\"\npoll_interval = 3600\n");
    std::fs::write(node.path("subjects"), "start\n").unwrap();
    node.start(false);

    let mut stalled = Client::connect(node.public().as_ref()).unwrap();
    let stalled_id = stalled.subscribe(Request::SubscribeSubjectsChanged).unwrap();
    let mut active = Client::connect(node.public().as_ref()).unwrap();
    let active_id = active.subscribe(Request::SubscribeSubjectsChanged).unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        while let Ok(Event::SubjectsChanged(s)) = active.next_event(active_id) {
            if tx.send(s[0].clone()).is_err() {
                break;
            }
        }
    });

    let filler = "x".repeat(190);
    let changes = 100;
    for i in 0..changes {
        let mut text = format!("change-{i}\n");
        for j in 0..249 {
            text.push_str(&format!("{j:04}{filler}\n"));
        }
        std::fs::write(node.path("subjects"), text).unwrap();
        hup(&node);
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(20))
                .expect("the active subscriber is not held back"),
            format!("change-{i}")
        );
    }
    assert!(
        node.log().contains("subjects subscriber"),
        "the stalled subscriber was dropped:\n{}",
        node.log()
    );
    // The stalled one reads what was queued for it, then the reason its subscription ended.
    let mut got = 0;
    let err = loop {
        match stalled.next_event(stalled_id) {
            Ok(_) => got += 1,
            Err(e) => break e,
        }
    };
    assert!(got < changes, "it did not get everything ({got})");
    assert!(err.message.contains("fell 64 events behind"), "{err}");
}

/// `node` configured to take its id from `sources` (TOML) instead of its node-id file.
fn with_id_source(node: &mut Node, sources: &str) {
    let line = format!("id_file = \"{}\"\n", node.p("node-id"));
    let config = node.config_text();
    assert!(config.contains(&line));
    node.config_override = Some(config.replace(&line, &format!("id_source = {sources}\n")));
}

#[test]
fn a_node_provisioned_under_a_hardware_id_refuses_to_serve_its_identity_under_another_until_provisioned_again() {
    // Issue 29: the id from a source (here a command printing a serial, after a DMI field
    // this machine does not have), normalised; recorded at provisioning; another id at a
    // later start is refused, loudly, until the node is provisioned again.
    let mut node = Node::new("hwid", Store::Pkcs11);
    let serial = node.path("serial");
    std::fs::write(&serial, "SER-1234\0\n").unwrap();
    let alerts = node.p("alerts.jsonl");
    node.extra_config = format!("\n[alerts]\nhook = [\"/bin/sh\", \"-c\", \"cat >> {alerts}\"]\n");
    with_id_source(
        &mut node,
        &format!("[\"dmi:board_serial\", \"command:/bin/cat {}\"]", serial.display()),
    );
    node.start(true);
    node.run_flow().ok();
    let iam = node.list_certs().into_iter().find(|c| c["type"] == "iam").unwrap();
    assert_eq!(iam["subject"], "CN=SER-1234, OU=iam", "{iam}");
    node.stop();

    // The same state on hardware with another serial.
    std::fs::write(&serial, "SER-9999\n").unwrap();
    node.start(false);
    let log = node.log();
    let changed = "the node id is now \"SER-9999\" (from command:/bin/cat";
    assert!(
        log.contains(changed) && log.contains("provisioned as \"SER-1234\""),
        "{log}"
    );
    // Someone is told (issue 29: the alert hook).
    wait_for(
        || std::fs::read_to_string(&alerts).is_ok_and(|a| a.contains("\"alert\":\"id_changed\"")),
        "the id_changed alert",
        &node,
    );
    let alert: serde_json::Value = serde_json::from_str(read(&alerts).lines().next().unwrap()).unwrap();
    assert!(alert["message"].as_str().unwrap().contains(changed), "{alert}");
    let check = node.applet("iam-certctl", &["-s", &node.protected(), "check"], None);
    assert_eq!(check.code, 2, "{}{}", check.stdout, check.stderr);
    assert!(
        check.stdout.contains("CRITICAL") && check.stdout.contains(changed),
        "{}",
        check.stdout
    );
    let get = node.applet("iam-certctl", &["-s", &node.public(), "get", "iam"], None);
    assert_ne!(get.code, 0);
    assert!(get.stderr.contains(changed), "{}", get.stderr);
    let pw = node.p("password");
    let out = node.provision(&["create-key", "iam", "--password-file", &pw, "-o", &node.p("x.csr")]);
    assert!(out.code != 0 && out.stderr.contains(changed), "{}", out.stderr);
    assert!(!node.path("x.csr").exists());
    // What it is and what it was are still told.
    assert_eq!(node.status()["state"], "provisioned");
    node.stop();

    // Back on its own hardware, it serves again.
    std::fs::write(&serial, "SER-1234\n").unwrap();
    node.start(false);
    node.applet("iam-certctl", &["-s", &node.protected(), "check"], None)
        .ok();
    node.stop();

    // A placeholder is no serial: the configuration is refused, naming it.
    std::fs::write(&serial, "To be filled by O.E.M.\n").unwrap();
    node.write_config();
    let check = node.applet("iamd", &["--check-config", "-c", &node.p("config.toml")], None);
    assert_eq!(check.code, 1, "{}{}", check.stdout, check.stderr);
    assert!(
        check.stderr.contains("node.id_source") && check.stderr.contains("placeholder"),
        "{}",
        check.stderr
    );

    // Provisioned again under the new id, it serves that one.
    std::fs::write(&serial, "SER-9999\n").unwrap();
    node.start(true);
    node.provision(&["deprovision", "--password-file", &pw]).ok();
    node.run_flow().ok();
    let iam = node.list_certs().into_iter().find(|c| c["type"] == "iam").unwrap();
    assert_eq!(iam["subject"], "CN=SER-9999, OU=iam", "{iam}");
    // Without a restart, what was held off under the other id runs again: a certificate of
    // three days is alerted.
    let short = node.renew_with_ca("iam", Some("3")).ok().json()["certificate"]["serial"].clone();
    wait_for(
        || {
            std::fs::read_to_string(&alerts).is_ok_and(|a| {
                a.lines()
                    .any(|l| l.contains("\"certificate_critical\"") && l.contains(short.as_str().unwrap()))
            })
        },
        "the critical alert of the certificate renewed under the new id",
        &node,
    );
}
