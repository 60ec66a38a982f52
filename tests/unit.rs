//! Multi-node units: secondary nodes linked to the main node by iam-nodelink (over unix
//! sockets and over stdio through socat), registered, and provisioned through the main
//! node only; forwarding by node id, many requests in flight on one link, link loss,
//! timeouts, duplicate node ids, hello versions, and the registry across restarts.

mod common;
use aos_iam::proto::wire::{self, FrameKind, Request, Role};
use common::*;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

/// Each secondary's token holds the keys of its own certificates, and each certificate,
/// exported from that token, verifies against the unit's root with openssl.
fn assert_provisioned_on_its_own_token(node: &Node, ca: &str) {
    assert_eq!(node.status()["state"], "provisioned", "{}", node.node_id());
    let objects = node.token_objects();
    for t in ["iam", "online"] {
        assert!(
            objects.iter().any(|o| o.0 == "Private Key" && o.1 == t),
            "{}: no {t} key on its token: {objects:?}",
            node.node_id()
        );
    }
    for c in node.list_certs().iter().filter(|c| c["type"] != "diskencryption") {
        let out = openssl_verify_exported(node, c, ca, None);
        let subject = sh(&format!("openssl x509 -in {out} -noout -subject")).ok().stdout;
        assert!(subject.contains(&node.node_id()), "{subject}");
    }
}

fn linked_unit(name: &str, stdio: bool) -> Unit {
    let mut unit = Unit::new(name, 2);
    unit.start(true);
    for i in 0..2 {
        if stdio {
            unit.link_stdio(i);
        } else {
            unit.link_unix(i);
        }
    }
    for s in &unit.secondaries {
        unit.wait_connected(&s.node_id(), true);
    }
    unit
}

fn provision_whole_unit(unit: &Unit) {
    provision_whole_unit_with(unit, &[]);
}

fn provision_whole_unit_with(unit: &Unit, extra: &[&str]) {
    let mut args = vec!["--expect-nodes", "3", "--wait", "20"];
    args.extend_from_slice(extra);
    let out = unit.run_all(&args).ok().json();
    let nodes = out["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3, "{out}");
    assert_eq!(nodes[0]["node"], unit.main.node_id().as_str());
    assert_eq!(nodes[0]["main"], true);
    for n in nodes {
        assert_eq!(n["ok"], true, "{n}");
        assert_eq!(n["certificates"].as_array().unwrap().len(), 2, "{n}");
    }
    let ca = unit.main.p("ca.pem");
    assert_provisioned_on_its_own_token(&unit.main, &ca);
    for s in &unit.secondaries {
        assert_provisioned_on_its_own_token(s, &ca);
    }
}

#[test]
fn a_unit_linked_by_unix_sockets_is_provisioned_through_the_main_node_only() {
    let unit = linked_unit("ux", false);
    let ids = unit.main.provision(&["--json", "nodes"]).ok().json();
    let mut expect = vec![unit.main.node_id()];
    expect.extend(unit.secondaries.iter().map(Node::node_id));
    expect[1..].sort();
    assert_eq!(ids["nodes"], serde_json::json!(expect));
    let status = unit.link_status(0).ok().json();
    assert_eq!(status["state"], "registered");
    assert_eq!(status["node_id"], unit.secondaries[0].node_id().as_str());
    assert_eq!(status["main_node_id"], unit.main.node_id().as_str());
    provision_whole_unit(&unit);
    // The main node answers for a secondary as the secondary itself does.
    let s0 = unit.secondaries[0].node_id();
    let via_main = unit.main.provision(&["--node", &s0, "--json", "status"]).ok().json();
    assert_eq!(via_main, unit.secondaries[0].status());
    let info = unit.main.provision(&["--node", &s0, "--json", "node-info"]).ok().json();
    assert_eq!(info["state"], "provisioned");
    assert_eq!(info["connected"], true);
    // Pause and resume reach the secondary through its link; its new state comes back.
    unit.main.provision(&["--node", &s0, "pause"]).ok();
    assert_eq!(unit.secondaries[0].status()["state"], "paused");
    let start = Instant::now();
    while unit.main.provision(&["--node", &s0, "--json", "node-info"]).ok().json()["state"] != "paused" {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the main node never saw the pause"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    unit.main.provision(&["--node", &s0, "resume"]).ok();
    assert_eq!(unit.secondaries[0].status()["state"], "provisioned");
}

#[test]
fn a_unit_linked_over_stdio_through_socat_is_provisioned_through_the_main_node() {
    let unit = linked_unit("stdio", true);
    provision_whole_unit(&unit);
}

/// Run `f` on `n` threads at once and collect what each returns.
fn in_parallel<T: Send>(n: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    std::thread::scope(|s| {
        let f = &f;
        let hs: Vec<_> = (0..n).map(|i| s.spawn(move || f(i))).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn fifty_requests_in_flight_to_one_node_each_get_their_own_answer() {
    let unit = linked_unit("many", false);
    let ids: Vec<String> = unit.secondaries.iter().map(Node::node_id).collect();
    let pw = unit.main.p("password");
    unit.main
        .provision(&["--node", &ids[0], "start", "--password-file", &pw])
        .ok();
    // 50 at once to the first secondary: CreateKey (both types) and GetCertTypes, with
    // status and node info for the second one mixed in.
    let answers = in_parallel(50, |i| {
        let out = match i % 5 {
            0 | 1 => {
                let t = if i % 5 == 0 { "iam" } else { "online" };
                unit.main
                    .provision(&["--node", &ids[0], "--json", "create-key", t, "--password-file", &pw])
            }
            2 => unit.main.provision(&["--node", &ids[0], "--json", "cert-types"]),
            3 => unit.main.provision(&["--node", &ids[1], "--json", "status"]),
            _ => unit.main.provision(&["--node", &ids[1], "--json", "node-info"]),
        };
        (i, out.ok().json())
    });
    for (i, v) in answers {
        match i % 5 {
            0 | 1 => {
                let t = if i % 5 == 0 { "iam" } else { "online" };
                assert_eq!(v["type"], t, "{v}");
                let csr = unit.main.p(&format!("csr-{i}.pem"));
                std::fs::write(&csr, v["csr"].as_str().unwrap()).unwrap();
                let subject = sh(&format!("openssl req -in {csr} -noout -verify -subject 2>&1"))
                    .ok()
                    .stdout;
                assert!(
                    subject.contains(&format!("CN = {}", ids[0])) && subject.contains(&format!("OU = {t}")),
                    "{subject}"
                );
            }
            2 => assert_eq!(v["types"], serde_json::json!(["iam", "online"]), "{v}"),
            3 => assert_eq!(
                (v["node"].as_str(), v["state"].as_str()),
                (Some(ids[1].as_str()), Some("unprovisioned")),
                "{v}"
            ),
            _ => assert_eq!(v["node_id"], ids[1].as_str(), "{v}"),
        }
    }
}

#[test]
fn a_second_link_claiming_a_connected_node_id_is_refused() {
    let mut unit = linked_unit("dup", false);
    let s0 = unit.secondaries[0].node_id();
    let mut twin = unit.nodelink_cmd_with_status(0, &unit.link_addr(), "run/twin.status");
    let twin_status = unit.secondaries[0].p("run/twin.status");
    let mut twin = twin
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        let s = std::fs::read_to_string(&twin_status).unwrap_or_default();
        if s.contains("already connected") {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the twin link was not refused: {s}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = twin.kill();
    let _ = twin.wait();
    // Between attempts it is retrying, or connecting again; never registered.
    assert!(!status.contains("\"registered\""), "{status}");
    assert!(
        status.contains(&format!("node \\\"{s0}\\\" is already connected")),
        "{status}"
    );
    // The first link is untouched.
    assert_eq!(unit.link_status(0).ok().json()["state"], "registered");
    unit.main.provision(&["--node", &s0, "status"]).ok();
    unit.kill_link(1);
}

/// A secondary whose start hook signals that it runs, then takes `seconds`.
fn slow_start_hook(node: &mut Node, seconds: u32) {
    node.extra_config = format!(
        "\n[hooks]\nstart = [\"sh\", \"-c\", \"touch {}; sleep {seconds}\"]\n",
        node.p("hook-started")
    );
}

fn wait_for_file(path: &std::path::Path) {
    let start = Instant::now();
    while !path.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{} did not appear",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A unit of one secondary linked over unix, whose StartProvisioning, sent through the main
/// node, is in flight: its start hook runs for 20 s. Returns the unit, the secondary's id
/// and the pending `iam-provision` call.
fn unit_with_a_request_in_flight(name: &str) -> (Unit, String, std::thread::JoinHandle<Out>) {
    let mut unit = Unit::new(name, 1);
    slow_start_hook(&mut unit.secondaries[0], 20);
    unit.start(true);
    unit.link_unix(0);
    let s0 = unit.secondaries[0].node_id();
    unit.wait_connected(&s0, true);
    let mut start = unit.main.cmd();
    start
        .args([
            "iam-provision",
            "-s",
            &unit.main.protected(),
            "--node",
            &s0,
            "start",
            "--password-file",
        ])
        .arg(unit.main.path("password"));
    let pending = std::thread::spawn(move || run(&mut start, None));
    wait_for_file(&unit.secondaries[0].path("hook-started"));
    (unit, s0, pending)
}

#[test]
fn a_dropped_link_fails_the_requests_in_flight_at_once_naming_the_node() {
    let (mut unit, s0, pending) = unit_with_a_request_in_flight("drop");
    let cut = Instant::now();
    unit.kill_link(0);
    let out = pending.join().unwrap();
    let waited = cut.elapsed();
    out.fails(3, &format!("node \"{s0}\": link lost"));
    assert!(
        waited < Duration::from_secs(10),
        "the request failed only after {waited:?}, not when the link dropped"
    );
    unit.wait_connected(&s0, false);
    unit.main
        .provision(&["--node", &s0, "status"])
        .fails(3, &format!("node \"{s0}\" is not connected"));
    unit.main
        .provision(&["--node", "node-nowhere", "status"])
        .fails(6, "node \"node-nowhere\" is not known");
    // The link process comes back: it registers the node again.
    unit.link_unix(0);
    unit.wait_connected(&s0, true);
    assert_eq!(unit.wait_link_registered(0)["registrations"], 1);
}

#[test]
fn a_secondary_iamd_killed_during_a_request_is_unavailable_naming_the_node() {
    let (mut unit, s0, pending) = unit_with_a_request_in_flight("kill");
    let cut = Instant::now();
    unit.secondaries[0].kill9();
    let out = pending.join().unwrap();
    assert!(
        cut.elapsed() < Duration::from_secs(10),
        "answered only after {:?}",
        cut.elapsed()
    );
    let all = format!("{}{}", out.stdout, out.stderr);
    assert_eq!(out.code, 3, "{all}");
    assert!(all.contains(&s0), "the error names the node: {all}");
    // iamd comes back: the link serves the node again.
    unit.secondaries[0].extra_config.clear();
    unit.secondaries[0].start(true);
    let start = Instant::now();
    while unit.main.provision(&["--node", &s0, "cert-types"]).code != 0 {
        assert!(start.elapsed() < Duration::from_secs(20), "the node did not come back");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_forwarded_request_that_gets_no_answer_in_time_fails_with_timeout() {
    let mut unit = Unit::new("slow", 1);
    unit.main.extra_config.push_str("long_request_timeout = 1\n");
    slow_start_hook(&mut unit.secondaries[0], 6);
    unit.start(true);
    unit.link_unix(0);
    let s0 = unit.secondaries[0].node_id();
    unit.wait_connected(&s0, true);
    let pw = unit.main.p("password");
    unit.main
        .provision(&["--node", &s0, "start", "--password-file", &pw])
        .fails(11, &format!("node \"{s0}\": no answer to StartProvisioning within 1 s"));
    // The link itself stays up; quick requests still go through.
    unit.main.provision(&["--node", &s0, "cert-types"]).ok();
}

/// Send raw frames to the main node's link listener and read the one answer.
fn link_exchange(unit: &Unit, frames: &[Vec<u8>]) -> aos_iam::Error {
    let mut s = std::os::unix::net::UnixStream::connect(unit.main.path("run/link.sock")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    for f in frames {
        s.write_all(f).unwrap();
    }
    loop {
        let (h, body) = aos_iam::proto::transport::read_frame_blocking(&mut s, wire::DEFAULT_BODY_LIMIT)
            .unwrap()
            .expect("an answer");
        if h.kind == FrameKind::Error {
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest);
            return wire::decode_body(&body).unwrap();
        }
    }
}

fn frame(id: u64, r: &Request) -> Vec<u8> {
    wire::encode_frame(FrameKind::Request, id, r, wire::DEFAULT_BODY_LIMIT).unwrap()
}

fn link_hello(version: u8, role: Role, node_id: &str) -> Vec<u8> {
    frame(
        0,
        &Request::Hello {
            version,
            min_version: version,
            role,
            node_id: node_id.into(),
        },
    )
}

#[test]
fn garbage_and_oversized_frames_on_a_link_listener_are_refused_while_other_links_work() {
    let unit = linked_unit("garbage", false);
    let s0 = unit.secondaries[0].node_id();
    // Garbage instead of a frame.
    let e = link_exchange(&unit, &[b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()]);
    assert!(e.message.contains("bad frame magic"), "{e:?}");
    // A header announcing a 4 GiB body: refused before anything is read or allocated.
    let mut huge = link_hello(1, Role::NodeLink, "n9");
    huge[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
    let e = link_exchange(&unit, &[huge[..wire::HEADER_LEN].to_vec()]);
    assert!(e.message.contains("exceeds the limit"), "{e:?}");
    // After a good hello and registration, a broken frame closes that link only.
    let e = link_exchange(&unit, &[registered_as("n9"), vec![vec![0xff; 40]]].concat());
    assert!(e.message.contains("bad frame magic"), "{e:?}");
    unit.wait_connected("n9", false);
    // The real links keep working.
    unit.main.provision(&["--node", &s0, "cert-types"]).ok();
    assert_eq!(unit.link_status(0).ok().json()["state"], "registered");
}

/// A link's first frames: its hello and its registration as node `id`.
fn registered_as(id: &str) -> Vec<Vec<u8>> {
    vec![
        link_hello(1, Role::NodeLink, id),
        frame(
            1,
            &Request::RegisterNode {
                info: link_node_info(id),
            },
        ),
    ]
}

#[test]
fn link_hellos_with_other_versions_roles_or_ids_are_refused_clearly() {
    let mut unit = Unit::new("hello", 0);
    unit.main.start(true);
    let (newest, beyond) = (aos_iam::PROTOCOL_VERSION, aos_iam::PROTOCOL_VERSION + 1);
    let spoken = format!("versions 1 to {newest}");
    let mut unknown = link_hello(1, Role::NodeLink, "n2");
    unknown[4] = beyond;
    let e = link_exchange(&unit, &[unknown]);
    assert!(
        e.message.contains(&format!("version {beyond}")) && e.message.contains(&spoken),
        "{e:?}"
    );
    let e = link_exchange(&unit, &[link_hello(beyond + 1, Role::NodeLink, "n2")]);
    assert!(
        e.message.contains(&format!("versions {0} to {0}", beyond + 1)) && e.message.contains(&spoken),
        "{e:?}"
    );
    let e = link_exchange(&unit, &[link_hello(1, Role::Client, "")]);
    assert!(
        e.message.contains("role Client is not served on a link listener"),
        "{e:?}"
    );
    let e = link_exchange(&unit, &[frame(1, &Request::Version)]);
    assert!(e.message.contains("expected Hello first"), "{e:?}");

    let mut info = unit.main.provision(&["--json", "node-info"]).ok().json();
    let own = info["node_id"].as_str().unwrap().to_string();
    let node_info = link_node_info;
    let e = link_exchange(
        &unit,
        &[
            link_hello(1, Role::NodeLink, &own),
            frame(1, &Request::RegisterNode { info: node_info(&own) }),
        ],
    );
    assert!(e.message.contains("is the main node's own"), "{e:?}");
    let e = link_exchange(
        &unit,
        &[
            link_hello(1, Role::NodeLink, "n2"),
            frame(1, &Request::RegisterNode { info: node_info("n3") }),
        ],
    );
    assert!(
        e.message.contains("said it is node \"n2\" but reports node \"n3\""),
        "{e:?}"
    );
    let e = link_exchange(
        &unit,
        &[
            link_hello(1, Role::NodeLink, "n2"),
            frame(1, &Request::NodeInfoChanged { info: node_info("n2") }),
        ],
    );
    assert!(e.message.contains("RegisterNode must come first"), "{e:?}");
    // None of that registered anything.
    info = unit.main.provision(&["--json", "nodes"]).ok().json();
    assert_eq!(info["nodes"], serde_json::json!([own]));
    // Link-only requests are refused on the protected socket.
    let mut c = aos_iam::proto::client::Client::connect(&unit.main.path("run/protected.sock")).unwrap();
    let e = c.call(Request::RegisterNode { info: node_info("n9") }).unwrap_err();
    assert!(e.message.contains("RegisterNode is served on node links only"), "{e:?}");
}

#[test]
fn node_changes_reach_subscribers_and_the_registry_survives_restarts_of_either_side() {
    let mut unit = Unit::new("reg", 1);
    unit.start(true);
    let s0 = unit.secondaries[0].node_id();
    let watch = Watcher::start(
        &unit.main,
        "iam-provision",
        &["-s", &unit.main.protected(), "--json", "node-info", "--watch"],
    );
    assert_eq!(watch.next()["node_id"], unit.main.node_id().as_str());
    unit.link_unix(0);
    let ev = watch.next();
    assert_eq!(
        (ev["node_id"].as_str(), ev["connected"].as_bool()),
        (Some(s0.as_str()), Some(true))
    );
    // A state change on the secondary (forwarded) reaches the main node's subscribers.
    let pw = unit.main.p("password");
    unit.main
        .provision(&["--node", &s0, "start", "--password-file", &pw])
        .ok();
    let ev = watch.next();
    assert_eq!(
        (ev["node_id"].as_str(), ev["state"].as_str()),
        (Some(s0.as_str()), Some("provisioning"))
    );
    unit.kill_link(0);
    let ev = watch.next();
    assert_eq!(
        (ev["node_id"].as_str(), ev["connected"].as_bool()),
        (Some(s0.as_str()), Some(false))
    );
    drop(watch);

    // The main node restarts: the node is still known (disconnected), with its last info.
    unit.main.stop();
    unit.main.start(true);
    let info = unit
        .main
        .provision(&["--node", &s0, "--json", "node-info"])
        .fails(3, "is not connected")
        .json();
    assert_eq!(
        (info["connected"].as_bool(), info["state"].as_str()),
        (Some(false), Some("provisioning"))
    );

    // The link comes back, and when the main node goes away and returns, it dials again.
    unit.link_unix(0);
    unit.wait_connected(&s0, true);
    unit.main.stop();
    let start = Instant::now();
    while unit.link_status(0).json()["state"] != "retrying" {
        assert!(start.elapsed() < Duration::from_secs(20), "the link did not notice");
        std::thread::sleep(Duration::from_millis(50));
    }
    unit.main.start(true);
    unit.wait_connected(&s0, true);
    let status = unit.wait_link_registered(0);
    assert_eq!(status["registrations"], 2, "{status}");
}

#[test]
fn links_in_the_clear_are_refused_once_the_main_node_is_out_of_provisioning_mode() {
    let mut unit = Unit::new("clear", 1);
    unit.main.start(false);
    unit.secondaries[0].start(true);
    unit.link_unix(0);
    let start = Instant::now();
    let status = loop {
        let s = unit.link_status(0);
        if s.stdout.contains("must use TLS") {
            break s.json();
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "not refused: {}{}",
            s.stdout,
            s.stderr
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_ne!(status["state"], "registered", "{status}");
    assert_eq!(
        unit.main.provision(&["--json", "nodes"]).ok().json()["nodes"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn iam_nodelink_notifies_readiness_once_registered_and_status_says_when_it_stopped() {
    let mut unit = Unit::new("ready", 1);
    unit.start(true);
    let s = &unit.secondaries[0];
    let sock_path = s.path("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut cmd = unit.nodelink_cmd(0, &unit.link_addr());
    cmd.env("NOTIFY_SOCKET", &sock_path).stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let mut buf = [0u8; 64];
    let n = sock.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"READY=1");
    assert_eq!(unit.link_status(0).ok().json()["state"], "registered");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(child.wait().unwrap().success());
    let n = sock.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"STOPPING=1");
    let out = unit.link_status(0).fails(3, "\"stopped\"");
    assert_eq!(out.json()["ok"], false);
    unit.wait_connected(&s.node_id(), false);
}

/// A free TCP port on the loopback.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A unit first provisioned over unix links (in the clear, in provisioning mode), with a
/// TCP link listener on the main node as well.
fn provisioned_unit_with_tcp(name: &str) -> (Unit, String) {
    let mut unit = Unit::new(name, 2);
    let port = free_port();
    unit.main.extra_config = format!(
        "\n[links]\nlisten = [\"unix:{}\", \"tcp:127.0.0.1:{port}\"]\n",
        unit.main.p("run/link.sock")
    );
    unit.start(true);
    unit.link_all_unix();
    provision_whole_unit(&unit);
    (unit, format!("tcp:127.0.0.1:{port}"))
}

#[test]
fn a_unit_linked_by_tcp_with_mutual_tls_is_provisioned_again_through_the_main_node() {
    let (mut unit, tcp) = provisioned_unit_with_tcp("tcp");
    // In operation: links over TCP, TLS with each node's key signing inside its token.
    unit.relink(false, &tcp);
    for i in 0..2 {
        let st = unit.link_status(i).ok().json();
        assert_eq!(
            (st["state"].as_str(), st["tls"].as_bool()),
            (Some("registered"), Some(true)),
            "{st}"
        );
    }
    assert!(unit.main.log().contains("over TLS"), "{}", unit.main.log());
    // Renewal in operation, as the cloud does it: through the main node, for a secondary.
    let s1 = unit.secondaries[1].node_id();
    let (ca, key, pw) = (unit.main.p("ca.pem"), unit.main.p("ca.key"), unit.main.p("password"));
    let renewed = unit
        .main
        .applet(
            "iam-certctl",
            &[
                "-s",
                &unit.main.protected(),
                "--json",
                "renew",
                "online",
                "--node",
                &s1,
                "--ca-cert",
                &ca,
                "--ca-key",
                &key,
                "--password-file",
                &pw,
            ],
            None,
        )
        .ok()
        .json();
    let serial = renewed["certificate"]["serial"].as_str().unwrap();
    let on_s1 = unit.secondaries[1].list_certs();
    assert!(
        on_s1
            .iter()
            .any(|c| c["type"] == "online" && c["serial"] == serial && c["current"] == true),
        "{on_s1:?}"
    );
    // The factory provisions the whole unit again, through the main node over those links.
    unit.relink(true, &tcp);
    let before: Vec<String> = unit
        .secondaries
        .iter()
        .map(|s| s.list_certs()[0]["serial"].to_string())
        .collect();
    provision_whole_unit_with(&unit, &["--deprovision-first"]);
    let after: Vec<String> = unit
        .secondaries
        .iter()
        .map(|s| s.list_certs()[0]["serial"].to_string())
        .collect();
    assert_ne!(before, after, "new certificates on the secondaries");
    // And the new identities link again.
    unit.relink(false, &tcp);
    assert_eq!(unit.link_status(1).ok().json()["tls"], true);
}

#[test]
fn a_link_in_the_clear_over_tcp_is_refused() {
    let (mut unit, tcp) = provisioned_unit_with_tcp("tcpclear");
    unit.kill_link(0);
    let s = &unit.secondaries[0];
    // A client that speaks frames straight away over TCP is refused, naming why.
    let mut c = std::net::TcpStream::connect(tcp.trim_start_matches("tcp:")).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c.write_all(&link_hello(1, Role::NodeLink, &s.node_id())).unwrap();
    let (h, body) = aos_iam::proto::transport::read_frame_blocking(&mut c, wire::DEFAULT_BODY_LIMIT)
        .unwrap()
        .unwrap();
    assert_eq!(h.kind, FrameKind::Error);
    let e: aos_iam::Error = wire::decode_body(&body).unwrap();
    assert!(e.message.contains("links over TCP always use TLS"), "{e:?}");
}

/// gnutls-cli against the main node's TCP link listener (`priority`: its cipher priority
/// string); returns its combined output and whether the TLS handshake completed.
fn gnutls_handshake(
    unit: &Unit,
    tcp: &str,
    cert: &str,
    key: &str,
    env: &[(&str, &str)],
    priority: &str,
) -> (String, bool) {
    let (host, port) = tcp.trim_start_matches("tcp:").rsplit_once(':').unwrap();
    let mut cmd = unit.secondaries[0].cmd_for("timeout");
    cmd.args(["20", "gnutls-cli", "--provider", SOFTHSM, "--x509cafile"])
        .arg(unit.main.path("ca.pem"))
        .args([
            "--priority",
            priority,
            "--verify-hostname",
            &unit.main.node_id(),
            "--x509certfile",
            cert,
            "--x509keyfile",
            key,
            "-p",
            port,
            host,
        ]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = run(&mut cmd, Some(""));
    let text = format!("{}{}", out.stdout, out.stderr);
    let done = text.contains("Handshake was completed");
    (text, done)
}

#[test]
fn gnutls_completes_mutual_tls_with_a_node_key_in_its_token_and_another_root_is_refused() {
    let (mut unit, tcp) = provisioned_unit_with_tcp("gnutls");
    unit.relink(false, &tcp);
    // The secondary's own identity: its certificate from the token, its key by PKCS#11 URL.
    let s = &unit.secondaries[0];
    let iam = s.list_certs().into_iter().find(|c| c["type"] == "iam").unwrap();
    let cert = s.p("iam-link.pem");
    s.export_cert(iam["cert_url"].as_str().unwrap(), &cert);
    let key_url = iam["key_url"].as_str().unwrap().to_string();
    let pin = s.user_pin();
    let pin = [("GNUTLS_PIN", pin.trim())];
    let (text, done) = gnutls_handshake(&unit, &tcp, &cert, &key_url, &pin, "NORMAL");
    assert!(
        done && !text.contains("alert"),
        "gnutls-cli did not complete the handshake:\n{text}"
    );
    assert!(text.contains("(TLS1.3-X.509)") && text.contains("-GCM)"), "{text}");
    // The provider has TLS 1.3's AES-GCM suites only: a client that offers nothing else
    // (ChaCha20-Poly1305) is refused; AES-128-GCM alone (the suite every TLS 1.3 peer has)
    // is served.
    let (text, done) = gnutls_handshake(
        &unit,
        &tcp,
        &cert,
        &key_url,
        &pin,
        "NORMAL:-CIPHER-ALL:+CHACHA20-POLY1305",
    );
    assert!(!done, "a ChaCha20-only client completed the handshake:\n{text}");
    let (text, done) = gnutls_handshake(&unit, &tcp, &cert, &key_url, &pin, "NORMAL:-CIPHER-ALL:+AES-128-GCM");
    assert!(done && text.contains("(AES-128-GCM)"), "{text}");

    // A client certificate from another root is refused by the main node.
    s.make_ca("other");
    let d = s.dir.display();
    sh(&format!(
        "openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout {d}/rogue.key -out {d}/rogue.csr \
         -subj '/CN={id}' -addext extendedKeyUsage=clientAuth && \
         openssl x509 -req -in {d}/rogue.csr -CA {d}/other.pem -CAkey {d}/other.key -days 30 -copy_extensions copy -out {d}/rogue.pem",
        id = s.node_id()
    ))
    .ok();
    // (With TLS 1.3 the client sees its side complete before the server checks its
    // certificate; the server's answer is the alert.)
    let (text, _) = gnutls_handshake(&unit, &tcp, &s.p("rogue.pem"), &s.p("rogue.key"), &[], "NORMAL");
    assert!(
        text.contains("CA is unknown"),
        "a client of another root got through:\n{text}"
    );
    // The main node logs the refusal once its side of the handshake has failed, which may
    // be after the client has seen the alert.
    let start = Instant::now();
    while !unit.main.log().contains("TLS:") {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the main node did not report the refusal:\n{}",
            unit.main.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The real links are unaffected.
    assert_eq!(unit.link_status(0).ok().json()["state"], "registered");
}

#[test]
fn a_failing_secondary_is_reported_and_the_main_node_is_left_unfinished_saying_why() {
    let mut unit = Unit::new("fail", 2);
    unit.secondaries[1].extra_config = "\n[hooks]\nstart = [\"sh\", \"-c\", \"echo no disk >&2; exit 3\"]\n".into();
    unit.start(true);
    unit.link_all_unix();
    let out = unit.run_all(&["--expect-nodes", "3", "--wait", "20"]);
    assert_ne!(out.code, 0);
    let v = out.json();
    assert_eq!(v["ok"], false, "{v}");
    let by_node = |id: &str| {
        v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node"] == id)
            .unwrap()
            .clone()
    };
    let (s0, s1) = (unit.secondaries[0].node_id(), unit.secondaries[1].node_id());
    assert_eq!(by_node(&s0)["ok"], true, "{v}");
    let failed = by_node(&s1);
    assert_eq!(failed["ok"], false);
    let msg = failed["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains(&format!("node {s1}")) && msg.contains("StartProvisioning"),
        "{msg}"
    );
    let main = by_node(&unit.main.node_id());
    assert_eq!(main["ok"], false);
    let msg = main["error"]["message"].as_str().unwrap();
    assert!(msg.contains("not finished") && msg.contains(&s1), "{msg}");
    assert_eq!(unit.secondaries[0].status()["state"], "provisioned");
    assert_eq!(unit.main.status()["state"], "provisioning");
    // Text output names every node and what became of it.
    let text = unit.main.provision(&[
        "--node",
        "all",
        "run",
        "--ca-cert",
        &unit.main.p("ca.pem"),
        "--ca-key",
        &unit.main.p("ca.key"),
        "--password-file",
        &unit.main.p("password"),
        "--deprovision-first",
    ]);
    assert!(text.stdout.contains(&format!("node {s1} FAILED")), "{}", text.stdout);
    assert!(
        text.stdout.contains(&format!("node {s0} provisioned")),
        "{}",
        text.stdout
    );
    assert!(
        text.stderr.contains("1 of 3 nodes failed") || text.stderr.contains("2 of 3 nodes failed"),
        "{}",
        text.stderr
    );
}

/// A main node that starts unprovisioned takes any password and has no identity a
/// secondary waits for: the secondaries linked already are provisioned alongside it, up to
/// FinishProvisioning, while the main node's own StartProvisioning is still running (its
/// start hook waits for a file the test writes only once the secondary is provisioned).
#[test]
fn secondaries_linked_already_are_provisioned_alongside_an_unprovisioned_main_node() {
    let mut unit = Unit::new("overlap", 1);
    let hook = format!(
        "\n[hooks]\nstart = [\"sh\", \"-c\", \"touch {}; while [ ! -e {} ]; do sleep 0.05; done\"]\n",
        unit.main.p("hook-started"),
        unit.main.p("go-on")
    );
    unit.main.extra_config.push_str(&hook);
    unit.start(true);
    unit.link_unix(0);
    let s0 = unit.secondaries[0].node_id();
    unit.wait_connected(&s0, true);
    let mut cmd = unit.main.cmd();
    cmd.arg("iam-provision").args(["-s", &unit.main.protected()]).args(
        unit.main
            .run_flow_args(Some("all"), &["--expect-nodes", "2", "--wait", "20"]),
    );
    let run_all = std::thread::spawn(move || run(&mut cmd, None));
    wait_for_file(&unit.main.path("hook-started"));
    let secondary = &unit.secondaries[0];
    wait_for(
        || secondary.status()["state"] == "provisioned",
        "the secondary provisioned",
        &unit.main,
    );
    assert_eq!(
        unit.main.status()["state"],
        "unprovisioned",
        "the main node's hook still runs"
    );
    std::fs::write(unit.main.path("go-on"), "").unwrap();
    let out = run_all.join().unwrap().ok().json();
    assert_eq!(out["ok"], true, "{out}");
    assert_eq!(unit.main.status()["state"], "provisioned");
    let ca = unit.main.p("ca.pem");
    assert_provisioned_on_its_own_token(&unit.main, &ca);
    assert_provisioned_on_its_own_token(secondary, &ca);
}

/// A main node with a verifier checks the password before any secondary is touched: a
/// wrong one fails the run on the main node and leaves an unprovisioned secondary as it
/// was (no verifier made from the wrong password); the right one then provisions both.
#[test]
fn a_wrong_password_refused_by_the_main_node_leaves_the_secondaries_untouched() {
    let mut unit = Unit::new("gate", 1);
    unit.start(true);
    unit.link_unix(0);
    let s0 = unit.secondaries[0].node_id();
    unit.wait_connected(&s0, true);
    unit.main
        .provision(&["start", "--password-file", &unit.main.p("password")])
        .ok();
    assert_eq!(unit.main.status()["state"], "provisioning");
    std::fs::write(unit.main.path("wrong-password"), "not the password\n").unwrap();
    let mut args = unit
        .main
        .run_flow_args(Some("all"), &["--expect-nodes", "2", "--wait", "20"]);
    let at = args.iter().position(|a| a == "--password-file").unwrap();
    args[at + 1] = unit.main.p("wrong-password");
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = unit.main.provision(&refs);
    assert_ne!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let v = out.json();
    assert_eq!(
        v["nodes"].as_array().unwrap().len(),
        1,
        "only the main node was tried: {v}"
    );
    assert_eq!(v["nodes"][0]["error"]["kind"], "unauthorized", "{v}");
    assert_eq!(unit.secondaries[0].status()["state"], "unprovisioned");
    let out = unit.run_all(&["--expect-nodes", "2", "--wait", "20"]).ok().json();
    assert_eq!(out["ok"], true, "{out}");
    assert_eq!(unit.secondaries[0].status()["state"], "provisioned");
}

#[test]
fn waiting_for_nodes_that_never_link_times_out_naming_who_is_there() {
    let mut unit = Unit::new("wait", 1);
    unit.start(true);
    unit.link_unix(0);
    unit.wait_connected(&unit.secondaries[0].node_id(), true);
    let out = unit
        .run_all(&["--expect-nodes", "3", "--wait", "1"])
        .fails(11, "2 of 3 nodes connected after 1 s");
    // The secondary linked already was provisioned alongside the (unprovisioned) main
    // node, and the error says so; the main node is left provisioning.
    let s0 = unit.secondaries[0].node_id();
    let all = format!("{}{}", out.stdout, out.stderr);
    assert!(
        all.contains(&format!(
            "meanwhile, alongside the main node (left provisioning): {s0} provisioned"
        )),
        "{all}"
    );
    assert_eq!(unit.secondaries[0].status()["state"], "provisioned");
    assert_eq!(unit.main.status()["state"], "provisioning");
}

#[test]
fn a_vsock_link_listener_is_bound_beside_the_others_and_a_taken_port_is_a_clear_error() {
    // vsock has no loopback on this machine: the listener is bound and held, and the links
    // themselves are exercised over the same stream interface by the unix and TCP tests.
    let port = 20000 + (std::process::id() % 20000);
    let mut unit = Unit::new("vsock", 0);
    unit.main.extra_config = format!(
        "\n[links]\nlisten = [\"unix:{}\", \"vsock:{port}\"]\n",
        unit.main.p("run/link.sock")
    );
    unit.main.start(true);
    let mut other = Node::new("vsock-other", Store::Pkcs11);
    other.extra_config = format!("\n[links]\nlisten = [\"vsock:{port}\"]\n");
    other.write_config();
    other
        .applet("iamd", &["-c", &other.p("config.toml")], None)
        .fails(3, &format!("cannot listen for node links on vsock:{port}"));
    assert!(
        !other.path("run/public.sock").exists(),
        "a failed start leaves no sockets behind"
    );
}

#[test]
fn off_xen_a_vchan_listener_and_a_vchan_dial_are_clear_errors_that_name_what_is_missing() {
    // The native vchan transport runs under real Xen in `make qemu-test` (the xen scenario);
    // here, on a machine without Xen, both ends must say why they cannot, and change nothing.
    if std::path::Path::new("/dev/xen/evtchn").exists() {
        eprintln!("skipped: this machine is a Xen domain");
        return;
    }
    let mut unit = Unit::new("vchan-off", 1);
    unit.main.extra_config = "\n[links]\nlisten = [\"vchan:sec1:data/aos-iam/sec1\"]\n".into();
    unit.main.write_config();
    unit.main
        .applet("iamd", &["-c", &unit.main.p("config.toml")], None)
        .fails(
        3,
        "cannot listen for node links on vchan:sec1:data/aos-iam/sec1: /dev/xen/evtchn: No such file or directory: \
             a Xen domain with the xen-evtchn, xen-gntalloc and xen-gntdev modules is needed",
    );
    assert!(
        !unit.main.path("run/public.sock").exists(),
        "a failed start leaves no sockets behind"
    );
    // A malformed vchan address is a configuration error at its key.
    unit.main.extra_config = "\n[links]\nlisten = [\"vchan:sec1:\"]\n".into();
    unit.main.write_config();
    unit.main
        .applet("iamd", &["-c", &unit.main.p("config.toml")], None)
        .fails(1, "links.listen[0]: \"vchan:sec1:\" is not vchan:DOMAIN:PATH");
    // A secondary dialing a vchan: its link retries and its status says why.
    unit.main.extra_config = String::new();
    unit.start(true);
    unit.link_over(0, "vchan:0:data/aos-iam/node1");
    let start = Instant::now();
    let status = loop {
        // (status exits 3 while the link is not registered; its JSON says why)
        let s = unit.link_status(0).json();
        if s["state"] == "retrying" {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "never retrying: {}",
            unit.nodelink_log(0)
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let err = status["last_error"].as_str().unwrap_or_default();
    assert!(err.contains("/dev/xen/xenbus: No such file or directory"), "{status}");
    let nodes = unit.main.provision(&["--json", "nodes"]).ok().json();
    assert_eq!(
        nodes["nodes"],
        serde_json::json!([unit.main.node_id()]),
        "no node linked"
    );
}

#[test]
#[ignore = "needs vsock loopback (CID 1), which this machine lacks; `make qemu-test` links over vsock between VMs"]
fn a_secondary_links_over_vsock_end_to_end() {
    let port = 40000 + (std::process::id() % 20000);
    let mut unit = Unit::new("vsock-e2e", 0);
    unit.main.extra_config = format!("\n[links]\nlisten = [\"vsock:{port}\"]\n");
    unit.main.start(true);
    let mut s = Node::new("vsock-s0", Store::Pkcs11);
    s.node_extra = "role = \"secondary\"\n".into();
    s.start(true);
    unit.secondaries.push(s);
    unit.links.push(None);
    let cmd = unit.nodelink_cmd(0, &format!("vsock:1:{port}"));
    let log = std::fs::File::create(unit.secondaries[0].path("nodelink.log")).unwrap();
    unit.links[0] = Some({ cmd }.stderr(log).spawn().unwrap());
    unit.wait_connected(&unit.secondaries[0].node_id(), true);
}

/// A byte pipe that outlives the main node's iamd, as a virtio-serial port or a vchan does:
/// iam-nodelink's stdin and stdout stay open while the relay dials the main node's link
/// socket again, silently, whenever its side ends.
fn relay_forever(main_link: std::path::PathBuf, mut child: std::process::Child) -> std::process::Child {
    use std::os::unix::net::UnixStream;
    use std::sync::{Arc, Mutex};
    let mut to_link = child.stdout.take().unwrap();
    let from_link = Arc::new(Mutex::new(child.stdin.take().unwrap()));
    let current: Arc<Mutex<Option<UnixStream>>> = Arc::new(Mutex::new(None));
    let (cur, out) = (current.clone(), from_link.clone());
    std::thread::spawn(move || loop {
        let Ok(s) = UnixStream::connect(&main_link) else {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        *cur.lock().unwrap() = Some(s.try_clone().unwrap());
        let mut s = s;
        let mut buf = [0u8; 4096];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 || out.lock().unwrap().write_all(&buf[..n]).is_err() {
                break;
            }
        }
        *cur.lock().unwrap() = None;
    });
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = to_link.read(&mut buf) {
            if n == 0 {
                return;
            }
            // Bytes written while the far side is being dialed again are lost, as on a port.
            if let Some(s) = current.lock().unwrap().as_mut() {
                let _ = s.write_all(&buf[..n]);
            }
        }
    });
    child
}

/// iam-nodelink of secondary `i` over stdio, its pipe joined to the main node's link
/// socket by [`relay_forever`].
fn stdio_link_over_relay(unit: &Unit, i: usize) -> std::process::Child {
    let mut cmd = unit.nodelink_cmd(i, "stdio");
    let log = std::fs::File::create(unit.secondaries[i].path("nodelink.log")).unwrap();
    let child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    relay_forever(unit.main.path("run/link.sock"), child)
}

/// Wait up to `secs` for secondary `i`'s link process to end.
#[track_caller]
fn wait_exit(link: &mut std::process::Child, secs: u64, unit: &Unit, i: usize) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(st) = link.try_wait().unwrap() {
            return st;
        }
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "the link did not end within {secs} s: {}",
            unit.nodelink_log(i)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_tls_link_that_a_byte_pipe_reopens_in_mid_session_is_ended_at_once_not_left_to_its_keepalive() {
    // vchan-socket-proxy, when the main node closes its end, opens a new connection onto the
    // same vchan session at once: the secondary's next TLS record arrives at a fresh accept.
    let mut unit = Unit::new("midstream", 1);
    // The keepalive's ping is the next record; its timeout (10 s) is not what ends the link.
    unit.secondaries[0].extra_config = "\n[links]\nkeepalive = 10\n".into();
    unit.start(true);
    unit.link_all_unix();
    unit.run_all(&["--expect-nodes", "2", "--wait", "20"]).ok();
    let addr = unit.link_addr();
    unit.relink(false, &addr);
    unit.kill_link(0);
    let s0 = unit.secondaries[0].node_id();
    unit.wait_connected(&s0, false);
    let mut link = stdio_link_over_relay(&unit, 0);
    unit.wait_connected(&s0, true);
    assert!(unit.link_status(0).ok().json()["tls"] == true);
    // The main node closes the link (forget-node); the pipe reconnects in mid-session.
    unit.main.provision(&["forget-node", &s0]).ok();
    assert!(!wait_exit(&mut link, 30, &unit, 0).success());
    assert!(
        unit.main
            .log()
            .contains("the connection begins in the middle of a TLS session (a application_data record"),
        "{}",
        unit.main.log()
    );
    // It ended on the main node's alert, not on an unanswered keepalive.
    let log = unit.nodelink_log(0);
    assert!(!log.contains("did not answer a keepalive"), "{log}");
    assert!(log.contains("the link ended during a keepalive"), "{log}");
    assert!(log.contains("cannot decrypt peer's message"), "{log}");
}

#[test]
fn a_byte_pipe_link_notices_by_its_keepalive_that_the_main_iamd_restarted() {
    let mut unit = Unit::new("keepalive", 2);
    unit.secondaries[0].extra_config = "\n[links]\nkeepalive = 1\n".into();
    unit.secondaries[1].extra_config = "\n[links]\nkeepalive = 0\n".into();
    unit.start(true);
    let mut links: Vec<std::process::Child> = (0..2).map(|i| stdio_link_over_relay(&unit, i)).collect();
    for s in &unit.secondaries {
        unit.wait_connected(&s.node_id(), true);
    }
    // The main node's iamd restarts; the pipes stay open and say nothing.
    unit.main.stop();
    unit.main.start(true);
    // With a keepalive the link ends (a stdio link exits for its runner to restart it)…
    assert!(!wait_exit(&mut links[0], 15, &unit, 0).success());
    // Either the keepalive went unanswered (sent while the pipe's far end was being dialled
    // again), or it reached the new iamd, which refuses a connection that never said hello:
    // the link ends on whichever comes first, both because of the keepalive.
    let log = unit.nodelink_log(0);
    assert!(
        log.contains("did not answer a keepalive within 1 s") || log.contains("expected Hello first, got Version"),
        "{log}"
    );
    // …without one, the link goes on believing it is registered, and the main node does not
    // know it: what the keepalive is for.
    assert!(links[1].try_wait().unwrap().is_none(), "{}", unit.nodelink_log(1));
    let s1 = unit.secondaries[1].node_id();
    assert_eq!(
        unit.main
            .provision(&["--node", &s1, "--json", "node-info"])
            .fails(3, "is not connected")
            .json()["connected"],
        false
    );
    let _ = links[1].kill();
    let _ = links[1].wait();
}

#[test]
fn a_secondary_with_its_certificate_waits_in_tls_for_a_main_node_that_has_none_yet() {
    // As after a power cut in the middle of whole-unit provisioning: the secondaries got
    // their certificates, the main node lost its own.
    let mut unit = linked_unit("clear", false);
    provision_whole_unit(&unit);
    let pw = unit.main.p("password");
    unit.main.provision(&["deprovision", "--password-file", &pw]).ok();
    unit.main.stop();
    unit.main.start(true);
    for i in 0..unit.secondaries.len() {
        let start = Instant::now();
        while !unit.nodelink_log(i).contains("never links in the clear") {
            assert!(start.elapsed() < Duration::from_secs(20), "{}", unit.nodelink_log(i));
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_ne!(unit.link_status(i).json()["state"], "registered");
    }
    // The same command provisions the main node first; the secondaries then link in TLS and
    // count as done.
    let out = unit.run_all(&["--expect-nodes", "3", "--wait", "20"]).ok().json();
    for n in out["nodes"].as_array().unwrap() {
        assert_eq!(n["ok"], true, "{n}");
        assert_eq!(n["certificates"].as_array().unwrap().len(), 2, "{n}");
    }
    assert_converged(&unit.main);
    for (i, s) in unit.secondaries.iter().enumerate() {
        unit.wait_connected(&s.node_id(), true);
        assert_eq!(unit.wait_link_registered(i)["tls"], true);
        assert!(!unit.nodelink_log(i).contains("in the clear this once"));
    }
    let _ = &mut unit;
}

/// A relay between a secondary and the main node's link socket that resets the first
/// `resets` TLS handshakes; it counts the connections that began in TLS and in the clear,
/// and records every byte it carries (both ways).
struct ResettingRelay {
    path: std::path::PathBuf,
    tls: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    clear: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    bytes: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

/// Copy `from` to `to`, recording what passes into `log`.
fn copy_recorded(mut from: UnixStream, mut to: UnixStream, log: std::sync::Arc<std::sync::Mutex<Vec<u8>>>) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 || to.write_all(&buf[..n]).is_err() {
            break;
        }
        log.lock().unwrap().extend_from_slice(&buf[..n]);
    }
    let _ = to.shutdown(std::net::Shutdown::Both);
}

impl ResettingRelay {
    /// `pass_clear`: carry links in the clear too (recording them) instead of dropping them.
    fn start(unit: &Unit, resets: usize, pass_clear: bool) -> ResettingRelay {
        use std::sync::atomic::Ordering::SeqCst;
        let path = unit.main.path("run/relay.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let target = unit.main.path("run/link.sock");
        let (tls, clear, bytes) = (Default::default(), Default::default(), Default::default());
        let relay = ResettingRelay {
            path,
            tls: std::sync::Arc::clone(&tls),
            clear: std::sync::Arc::clone(&clear),
            bytes: std::sync::Arc::clone(&bytes),
        };
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(mut client) = client else { return };
                let mut first = [0u8; 1];
                if client.read_exact(&mut first).is_err() {
                    continue;
                }
                if first[0] != 0x16 {
                    clear.fetch_add(1, SeqCst);
                    if !pass_clear {
                        continue;
                    }
                } else if tls.fetch_add(1, SeqCst) < resets {
                    continue; // dropped: the handshake is cut
                }
                let mut server = UnixStream::connect(&target).unwrap();
                server.write_all(&first).unwrap();
                bytes.lock().unwrap().push(first[0]);
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (b1, b2) = (std::sync::Arc::clone(&bytes), std::sync::Arc::clone(&bytes));
                std::thread::spawn(move || copy_recorded(c2, s2, b1));
                std::thread::spawn(move || copy_recorded(server, client, b2));
            }
        });
        relay
    }
}

#[test]
fn a_relay_that_resets_tls_handshakes_never_gets_a_secondary_with_a_certificate_to_speak_in_the_clear() {
    use std::sync::atomic::Ordering::SeqCst;
    let mut unit = linked_unit("downgrade", false);
    provision_whole_unit(&unit);
    // Both nodes stay in provisioning mode, where the main node would accept the clear.
    let relay = ResettingRelay::start(&unit, 4, false);
    unit.kill_link(0);
    let cmd = unit.nodelink_cmd(0, &format!("unix:{}", relay.path.display()));
    let log = std::fs::File::create(unit.secondaries[0].path("nodelink.log")).unwrap();
    let mut link = cmd_spawn(cmd, log);
    let start = Instant::now();
    while unit.link_status(0).json()["tls"] != true || unit.link_status(0).json()["state"] != "registered" {
        assert!(start.elapsed() < Duration::from_secs(30), "{}", unit.nodelink_log(0));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(relay.tls.load(SeqCst) > 4, "the handshakes were reset and tried again");
    assert_eq!(relay.clear.load(SeqCst), 0, "{}", unit.nodelink_log(0));
    let _ = link.kill();
    let _ = link.wait();
}

fn cmd_spawn(mut cmd: std::process::Command, log: std::fs::File) -> std::process::Child {
    cmd.stdin(std::process::Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}

#[test]
fn a_link_peer_that_stalls_in_the_middle_of_a_frame_is_dropped_and_other_links_go_on() {
    let mut unit = Unit::new("stall", 1);
    unit.main.extra_config.push_str("\n[limits]\nframe_timeout = 1\n");
    unit.start(true);
    unit.link_unix(0);
    let s0 = unit.secondaries[0].node_id();
    unit.wait_connected(&s0, true);
    let start = Instant::now();
    let half = frame(2, &Request::Version)[..7].to_vec();
    let e = link_exchange(&unit, &[registered_as("n9"), vec![half]].concat());
    assert!(e.message.contains("not finished within 1 s"), "{e:?}");
    assert_eq!(e.kind, aos_iam::ErrorKind::Timeout);
    assert!(start.elapsed() < Duration::from_secs(10), "{:?}", start.elapsed());
    unit.wait_connected("n9", false);
    unit.main.provision(&["--node", &s0, "cert-types"]).ok();
}

#[test]
fn each_secondary_gets_a_secret_of_its_own_and_the_password_never_crosses_a_link() {
    let mut unit = Unit::new("secret", 2);
    unit.main.node_extra = "unit_id = \"unit-7\"\n".into();
    unit.start(true);
    // The first secondary links through a relay that records the bytes; in provisioning
    // mode, before it has a certificate, the link is in the clear.
    let relay = ResettingRelay::start(&unit, 0, true);
    let cmd = unit.nodelink_cmd(0, &format!("unix:{}", relay.path.display()));
    let log = std::fs::File::create(unit.secondaries[0].path("nodelink.log")).unwrap();
    let mut link = cmd_spawn(cmd, log);
    unit.link_unix(1);
    for s in &unit.secondaries {
        unit.wait_connected(&s.node_id(), true);
    }
    provision_whole_unit(&unit);

    let recorded = relay.bytes.lock().unwrap().clone();
    let contains = |needle: &[u8]| recorded.windows(needle.len()).any(|w| w == needle);
    let password = aos_iam::secret::Secret::new(PASSWORD.into());
    let secret = |node: &Node| aos_iam::secret::node_secret(&password, "unit-7", &node.node_id());
    assert!(!contains(PASSWORD.as_bytes()), "the password crossed the link");
    assert!(
        contains(secret(&unit.secondaries[0]).expose().as_bytes()),
        "what crossed is the node's own secret"
    );

    // Each token's SO PIN is its node's secret: the password, or another node's secret, is
    // refused by the token and by iamd alike.
    let so_login = |node: &Node, pin: &str| node.so_login(pin);
    assert_eq!(so_login(&unit.main, PASSWORD), 0);
    let (s0, s1) = (&unit.secondaries[0], &unit.secondaries[1]);
    assert_ne!(secret(s0), secret(s1));
    for (node, other) in [(s0, s1), (s1, s0)] {
        assert_eq!(so_login(node, secret(node).expose()), 0);
        assert_ne!(so_login(node, PASSWORD), 0);
        assert_ne!(so_login(node, secret(other).expose()), 0);
        node.provision_stdin(&["finish"], PASSWORD).fails(4, "wrong password");
        node.provision_stdin(&["finish"], secret(node).expose()).ok();
    }
    let _ = link.kill();
    let _ = link.wait();
}

#[test]
fn iam_nodelink_as_its_own_user_links_in_tls_and_reads_no_pin_database_or_token() {
    require_root();
    // The layer's arrangement with test ids: the protected socket in group 4990, which
    // admits; iam-nodelink as uid 4991, in that group, the only signer besides root.
    // The main node's link socket (a vchan proxy's, on a real unit) admits that group too.
    let mut unit = Unit::new("least", 1);
    let admit = "protected_socket_group = 4990\nallowed_gids = [4990]\n";
    unit.main.paths_extra = admit.into();
    unit.secondaries[0].paths_extra = admit.into();
    unit.secondaries[0].extra_config = "\n[links]\nsigner_uids = [4991]\n".into();
    unit.start(true);
    sh(&format!("chmod 0755 {d} {d}/run", d = unit.main.dir.display())).ok();
    let s = &unit.secondaries[0];
    let own = s.path("link-user");
    std::fs::create_dir_all(&own).unwrap();
    let copy = own.join("aos-iam");
    std::fs::copy(bin(), &copy).unwrap();
    sh(&format!(
        "chmod 0755 {d} {d}/run && chmod 0644 {d}/config.toml {d}/node-id {d}/ca.pem && chown 4991:4991 {o} && chmod 0755 {o}/aos-iam",
        d = s.dir.display(),
        o = own.display()
    ))
    .ok();
    let status = own.join("status");
    let spawn = |unit: &Unit| {
        let s = &unit.secondaries[0];
        let mut c = std::process::Command::new("setpriv");
        c.args(["--reuid=4991", "--regid=4991", "--groups=4990", "--"])
            .arg(&copy)
            .args([
                "iam-nodelink",
                "-c",
                &s.p("config.toml"),
                "--connect",
                &unit.link_addr(),
            ])
            .arg("--status-file")
            .arg(&status)
            .args(["--retry-min-ms", "100", "--retry-max", "1", "-vv"]);
        let log = std::fs::File::create(s.path("nodelink.log")).unwrap();
        cmd_spawn(c, log)
    };
    let mut link = spawn(&unit);
    unit.wait_connected(&unit.secondaries[0].node_id(), true);
    let out = unit.run_all(&["--expect-nodes", "2", "--wait", "20"]).ok().json();
    assert_eq!(out["ok"], true, "{out}");

    // Out of provisioning mode the link runs in TLS, its handshake signed by iamd for uid 4991.
    let _ = link.kill();
    let _ = link.wait();
    unit.main.stop();
    unit.main.start(false);
    let mut link = spawn(&unit);
    let start = Instant::now();
    let tls = || {
        let out = unit.secondaries[0].applet(
            "iam-nodelink",
            &["--status-file", &status.display().to_string(), "--json", "status"],
            None,
        );
        out.code == 0 && out.json()["tls"] == true && out.json()["state"] == "registered"
    };
    while !tls() {
        assert!(start.elapsed() < Duration::from_secs(30), "{}", unit.nodelink_log(0));
        std::thread::sleep(Duration::from_millis(50));
    }
    // That user reads none of what the node's identity rests on.
    let s = &unit.secondaries[0];
    let token = std::fs::read_dir(s.path("tokens"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let as_link_user = |args: &[&str], path: &std::path::Path| {
        run(
            std::process::Command::new("setpriv")
                .args(["--reuid=4991", "--regid=4991", "--groups=4990", "--"])
                .args(args)
                .arg(path),
            None,
        )
    };
    for (args, path) in [
        (&["cat"][..], s.path("work/user-pin")),
        (&["cat"][..], s.path("work/iam.db")),
        (&["ls", "-l"][..], token.clone()),
    ] {
        let out = as_link_user(args, &path);
        assert_ne!(out.code, 0, "uid 4991 read {}: {}", path.display(), out.stdout);
    }
    let _ = link.kill();
    let _ = link.wait();
}

/// A main node that is not the unit's: its own token, the fleet's CA, a link listener.
/// `node_id`: node names repeat across a fleet, so an impostor may well have the main's.
fn impostor_main(name: &str, node_id: &str, unit_id: &str, iam_ekus: &'static str, ca_from: &Node) -> Node {
    let mut n = Node::new(name, Store::Pkcs11);
    std::fs::write(n.path("node-id"), format!("{node_id}\n")).unwrap();
    for f in ["ca.pem", "ca.key"] {
        std::fs::copy(ca_from.path(f), n.path(f)).unwrap();
    }
    n.node_extra = format!("unit_id = \"{unit_id}\"\n");
    n.modules[0].2 = iam_ekus;
    n.extra_config = format!("\n[links]\nlisten = [\"unix:{}\"]\n", n.p("run/link.sock"));
    n.start(true);
    n.run_flow().ok();
    n
}

#[test]
fn a_secondarys_certificate_another_units_main_node_and_an_unpinned_main_are_refused_as_main() {
    let mut unit = Unit::new("pin", 1);
    unit.main.node_extra = "unit_id = \"unit-a\"\n".into();
    unit.secondaries[0].node_extra.push_str("unit_id = \"unit-a\"\n");
    unit.secondaries[0].extra_config = "\n[links]\nmain_node_id = \"node-pin-main\"\n".into();
    unit.start(true);
    unit.link_unix(0);
    unit.wait_connected("node-pin-s0", true);
    let out = unit.run_all(&["--expect-nodes", "2", "--wait", "20"]).ok().json();
    assert_eq!(out["ok"], true, "{out}");

    // Link identities carry the unit; a secondary's has no serverAuth.
    let text = |node: &Node| {
        let url = node.list_certs().into_iter().find(|c| c["type"] == "iam").unwrap()["cert_url"]
            .as_str()
            .unwrap()
            .to_string();
        node.export_cert(&url, &node.p("iam-now.pem"));
        sh(&format!("openssl x509 -in {} -noout -text", node.p("iam-now.pem")))
            .ok()
            .stdout
    };
    let (main_text, s0_text) = (text(&unit.main), text(&unit.secondaries[0]));
    for t in [&main_text, &s0_text] {
        assert!(t.contains("URI:urn:aos-iam:unit:unit-a"), "{t}");
    }
    assert!(main_text.contains("TLS Web Server Authentication"), "{main_text}");
    assert!(!s0_text.contains("TLS Web Server Authentication"), "{s0_text}");

    // Each impostor, dialed by the secondary, is refused after its handshake.
    let impostors = [
        (
            impostor_main(
                "pin-unit-b",
                "node-pin-main",
                "unit-b",
                r#"["clientAuth", "serverAuth"]"#,
                &unit.main,
            ),
            "is not of unit \"unit-a\"",
        ),
        (
            impostor_main("pin-as-sec", "node-pin-main", "unit-a", r#"["clientAuth"]"#, &unit.main),
            "invalid peer certificate: InvalidPurpose",
        ),
        (
            impostor_main(
                "pin-other",
                "node-pin-other",
                "unit-a",
                r#"["clientAuth", "serverAuth"]"#,
                &unit.main,
            ),
            "does not name node \"node-pin-main\"",
        ),
    ];
    for (impostor, why) in &impostors {
        unit.kill_link(0);
        let _ = std::fs::remove_file(unit.secondaries[0].path("nodelink.log"));
        let cmd = unit.nodelink_cmd(0, &format!("unix:{}", impostor.p("run/link.sock")));
        let log = std::fs::File::create(unit.secondaries[0].path("nodelink.log")).unwrap();
        let mut link = cmd_spawn(cmd, log);
        let start = Instant::now();
        while !unit.nodelink_log(0).contains(why) {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "expected {why:?}:\n{}",
                unit.nodelink_log(0)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            !unit.nodelink_log(0).contains("registered with"),
            "{}",
            unit.nodelink_log(0)
        );
        let _ = link.kill();
        let _ = link.wait();
    }

    // A certificate with serverAuth for a secondary's link identity is refused by its iamd.
    let s0 = &unit.secondaries[0];
    let secret = aos_iam::secret::node_secret(&aos_iam::secret::Secret::new(PASSWORD.into()), "unit-a", &s0.node_id());
    let csr = s0.provision_stdin(&["create-key", "iam"], secret.expose()).ok().stdout;
    let with_server_auth = rcgen_sign(s0, &csr, |p| {
        p.extended_key_usages.push(rcgen::ExtendedKeyUsagePurpose::ServerAuth)
    });
    std::fs::write(s0.path("server-auth.pem"), with_server_auth).unwrap();
    s0.provision(&["apply", "iam", &s0.p("server-auth.pem")])
        .fails(8, "ForbiddenEku");
}

#[test]
fn a_listener_with_an_admission_list_admits_its_nodes_only_and_forget_node_removes_one() {
    let mut unit = Unit::new("admit", 2);
    let only = unit.main.p("run/only-s0.sock");
    unit.main.extra_config.push_str(&format!(
        "[[links.listener]]\naddress = \"unix:{only}\"\nnodes = [\"node-admit-s0\"]\n"
    ));
    unit.start(true);
    let (s0, s1) = (unit.secondaries[0].node_id(), unit.secondaries[1].node_id());

    // s1 on the restricted listener is refused; s0 links there, s1 on the open one.
    let cmd = unit.nodelink_cmd(1, &format!("unix:{only}"));
    let log = std::fs::File::create(unit.secondaries[1].path("nodelink.log")).unwrap();
    let mut refused = cmd_spawn(cmd, log);
    let start = Instant::now();
    while !unit.nodelink_log(1).contains("is not admitted on this link listener") {
        assert!(start.elapsed() < Duration::from_secs(20), "{}", unit.nodelink_log(1));
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = refused.kill();
    let _ = refused.wait();
    let ids = unit.main.provision(&["--json", "nodes"]).ok().json().to_string();
    assert!(!ids.contains(&s1), "a refused node is not registered: {ids}");
    let cmd = unit.nodelink_cmd(0, &format!("unix:{only}"));
    let log = std::fs::File::create(unit.secondaries[0].path("nodelink.log")).unwrap();
    let mut s0_link = cmd_spawn(cmd, log);
    unit.link_unix(1);
    unit.wait_connected(&s0, true);
    unit.wait_connected(&s1, true);

    // forget-node closes the link of a connected node and removes it (an admitted node
    // then dials again and registers anew); a node that is gone is not found.
    unit.main.provision(&["forget-node", &s0]).ok();
    assert!(unit.main.log().contains(&format!("node \"{s0}\" forgotten")));
    let start = Instant::now();
    while unit.nodelink_log(0).matches("registered with the main node").count() < 2 {
        assert!(start.elapsed() < Duration::from_secs(20), "{}", unit.nodelink_log(0));
        std::thread::sleep(Duration::from_millis(50));
    }
    unit.main
        .provision(&["forget-node", "node-never"])
        .fails(6, "is not known");
    unit.main
        .provision(&["forget-node", &unit.main.node_id()])
        .fails(7, "not this one");
    let _ = s0_link.kill();
    let _ = s0_link.wait();
    unit.wait_connected(&s1, true);

    // The main node's own deprovisioning forgets the nodes whose links are down.
    unit.kill_link(1);
    unit.wait_connected(&s1, false);
    let pw = unit.main.p("password");
    unit.main.provision(&["start", "--password-file", &pw]).ok();
    unit.main.provision(&["deprovision", "--password-file", &pw]).ok();
    unit.main
        .provision(&["--node", &s1, "node-info"])
        .fails(6, "is not known");
    unit.main.stop();
    unit.main.start(true);
    unit.main
        .provision(&["--node", &s1, "node-info"])
        .fails(6, "is not known");
}

#[test]
fn a_flooding_link_is_coalesced_then_closed_and_commits_stay_few() {
    let mut unit = Unit::new("flood", 0);
    unit.start(true);
    let mut s = UnixStream::connect(unit.main.path("run/link.sock")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    for f in registered_as("n-flood") {
        s.write_all(&f).unwrap();
    }
    // A burst within the rate: answered at once, committed at most once a second, the
    // latest kept.
    for i in 0..40u64 {
        let mut info = link_node_info("n-flood");
        info.total_ram = 1000 + i;
        s.write_all(&frame(10 + i, &Request::NodeInfoChanged { info })).unwrap();
    }
    let mut answered = 0;
    while answered < 41 {
        let (h, _) = aos_iam::proto::transport::read_frame_blocking(&mut s, wire::DEFAULT_BODY_LIMIT)
            .unwrap()
            .expect("an answer");
        assert_eq!(h.kind, FrameKind::Response);
        answered += 1;
    }
    let start = Instant::now();
    // (node-info exits 3 once the flooding link is closed: known, its link down.)
    let total_ram = || {
        let out = unit.main.provision(&["--node", "n-flood", "--json", "node-info"]);
        assert!(out.code == 0 || out.code == 3, "{}{}", out.stdout, out.stderr);
        out.json()["total_ram"].clone()
    };
    while total_ram() != 1039 {
        assert!(start.elapsed() < Duration::from_secs(20), "{}", unit.main.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let stored = unit.main.log().matches("node \"n-flood\": its info is stored").count();
    assert!(stored <= 3, "{stored} commits for 40 changes");

    // Past the rate, the link is closed with an error naming the limit.
    let flood: Vec<u8> = (0..200u64)
        .flat_map(|i| {
            frame(
                100 + i,
                &Request::NodeInfoChanged {
                    info: link_node_info("n-flood"),
                },
            )
        })
        .collect();
    let _ = s.write_all(&flood);
    let mut closed_why = None;
    while let Ok(Some((h, body))) = aos_iam::proto::transport::read_frame_blocking(&mut s, wire::DEFAULT_BODY_LIMIT) {
        if h.kind == FrameKind::Error {
            let e: aos_iam::Error = wire::decode_body(&body).unwrap();
            closed_why.get_or_insert(e.message);
        }
    }
    let why = closed_why.expect("an error before the link closed");
    assert!(why.contains("more than 50 NodeInfoChanged in a second"), "{why}");
    unit.wait_connected("n-flood", false);
    let stored = unit.main.log().matches("node \"n-flood\": its info is stored").count();
    assert!(stored <= 6, "{stored} commits for 240 changes");
}

#[test]
fn a_node_info_change_still_waiting_for_its_commit_is_committed_when_iamd_stops() {
    let mut unit = Unit::new("unsaved", 0);
    unit.start(true);
    let mut s = UnixStream::connect(unit.main.path("run/link.sock")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    for f in registered_as("n-unsaved") {
        s.write_all(&f).unwrap();
    }
    // Two changes at once: the first is committed, the second waits its turn (commits are
    // at most one a second) ...
    for (i, ram) in [(10u64, 1001u64), (11, 1002)] {
        let mut info = link_node_info("n-unsaved");
        info.total_ram = ram;
        s.write_all(&frame(i, &Request::NodeInfoChanged { info })).unwrap();
    }
    // Until the link's registration is served, the node is not known yet.
    let ram = |u: &Unit| {
        let out = u.main.provision(&["--node", "n-unsaved", "--json", "node-info"]);
        match out.code {
            // (3: known, its link down, as after the restart below.)
            0 | 3 => out.json()["total_ram"].clone(),
            _ => {
                assert!(
                    out.stdout.contains("no link has registered it"),
                    "{}{}",
                    out.stdout,
                    out.stderr
                );
                serde_json::Value::Null
            }
        }
    };
    let start = Instant::now();
    while ram(&unit) != 1002 {
        assert!(start.elapsed() < Duration::from_secs(20), "{}", unit.main.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    // ... and iamd is stopped meanwhile, the link still up: the change is not lost.
    unit.main.stop();
    drop(s);
    unit.main.start(true);
    assert_eq!(ram(&unit), 1002, "{}", unit.main.log());
}

/// A TCP connection to `port` on 127.0.0.1 from the loopback address `from` (another host,
/// as the listener sees it), that sends nothing.
fn silent_connection(from: std::net::Ipv4Addr, port: u16) -> std::os::fd::OwnedFd {
    use nix::sys::socket::{bind, connect, socket, AddressFamily, SockFlag, SockType, SockaddrIn};
    let fd = socket(AddressFamily::Inet, SockType::Stream, SockFlag::empty(), None).unwrap();
    let [a, b, c, d] = from.octets();
    bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::new(a, b, c, d, 0)).unwrap();
    connect(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrIn::new(127, 0, 0, 1, port),
    )
    .unwrap();
    fd
}

#[test]
fn silent_connections_from_another_host_never_keep_a_secondary_off_the_link_listener() {
    let (mut unit, tcp) = provisioned_unit_with_tcp("silent");
    unit.relink(false, &tcp);
    let port: u16 = tcp.rsplit_once(':').unwrap().1.parse().unwrap();
    let s0 = unit.secondaries[0].node_id();
    unit.kill_link(0);
    unit.wait_connected(&s0, false);
    // 300 connections from another host that send nothing, held open.
    let attacker = std::net::Ipv4Addr::new(127, 0, 0, 2);
    let silent: Vec<_> = (0..300).map(|_| silent_connection(attacker, port)).collect();
    // The main node refuses all but a few at once, naming the limit.
    let start = Instant::now();
    while !unit
        .main
        .log()
        .contains("host 127.0.0.2 has 4 links being admitted already")
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no refusal logged:\n{}",
            unit.main.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The secondary links again while they are still open.
    unit.link_over(0, &tcp);
    unit.wait_connected(&s0, true);
    assert_eq!(unit.wait_link_registered(0)["tls"], true);
    // The few admitted are closed once the hello timeout passes without a byte.
    let start = Instant::now();
    while !unit.main.log().contains("tcp 127.0.0.2") || !unit.main.log().contains("no first byte within") {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "silent connections were never closed:\n{}",
            unit.main.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(silent);
    unit.main.provision(&["--node", &s0, "cert-types"]).ok();
}

#[test]
fn a_registered_link_that_never_reads_its_answers_is_closed_and_forget_node_ends_it() {
    let mut unit = Unit::new("stuck", 0);
    // A frame not taken within 2 s closes the link.
    unit.main.extra_config.push_str("[limits]\nframe_timeout = 2\n");
    unit.main.start(true);
    let stuck = |unit: &Unit, id: &str| {
        let mut s = std::os::unix::net::UnixStream::connect(unit.main.path("run/link.sock")).unwrap();
        for f in registered_as(id) {
            s.write_all(&f).unwrap();
        }
        unit.wait_connected(id, true);
        // Keepalives, their answers never read, until the main node stops taking them.
        s.set_write_timeout(Some(Duration::from_secs(1))).unwrap();
        let keepalive = frame(7, &Request::Version);
        let mut sent = 0usize;
        while s.write_all(&keepalive).is_ok() {
            sent += 1;
            assert!(sent < 10_000_000, "the main node never stopped reading");
        }
        s
    };
    // Left alone, it is closed once an answer is not taken within the frame timeout.
    let _a = stuck(&unit, "n-slow");
    wait_for(
        || unit.main.log().contains("node \"n-slow\" disconnected"),
        "the link that does not read closed",
        &unit.main,
    );
    assert!(
        unit.main.log().contains("the other end does not read"),
        "{}",
        unit.main.log()
    );
    // ForgetNode ends such a link at once, whatever it was writing.
    unit.main.extra_config = unit
        .main
        .extra_config
        .replace("frame_timeout = 2", "frame_timeout = 3600");
    unit.main.stop();
    unit.main.start(true);
    let _b = stuck(&unit, "n-stuck");
    unit.main.provision(&["forget-node", "n-stuck"]).ok();
    wait_for(
        || {
            unit.main
                .log()
                .contains("node \"n-stuck\" disconnected: the node was forgotten")
        },
        "the forgotten link ended",
        &unit.main,
    );
    // The main node serves the others meanwhile.
    unit.main.provision(&["--json", "node-info"]).ok();
}
