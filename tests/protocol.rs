//! The sockets under hostile or wrong input: garbage frames, a frame claiming a 4 GiB body,
//! other protocol versions, requests before the hello, protected operations on the public
//! socket, and peers whose uid the protected socket does not admit.

mod common;
use aos_iam::proto::wire::{self, FrameKind, Request, Role, HEADER_LEN, MAGIC};
use common::*;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

/// Read one frame from a raw stream; `None` at end of stream.
fn read_frame(s: &mut UnixStream) -> Option<(wire::Header, Vec<u8>)> {
    aos_iam::proto::transport::read_frame_blocking(s, wire::DEFAULT_BODY_LIMIT).expect("well-formed answer")
}

fn expect_error_then_close(s: &mut UnixStream, text: &str) -> aos_iam::Error {
    let (h, body) = read_frame(s).expect("an error frame");
    assert_eq!(h.kind, FrameKind::Error);
    let e: aos_iam::Error = wire::decode_body(&body).unwrap();
    assert!(e.message.contains(text), "{text:?} not in {e:?}");
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "the connection is closed after a protocol error");
    e
}

fn hello_frame(id: u64, version: u8) -> Vec<u8> {
    wire::encode_frame(
        FrameKind::Request,
        id,
        &Request::Hello {
            version,
            min_version: version,
            role: Role::Client,
            node_id: String::new(),
        },
        1 << 16,
    )
    .unwrap()
}

fn hello(s: &mut UnixStream) {
    let f = hello_frame(1, 1);
    s.write_all(&f).unwrap();
    let (h, _) = read_frame(s).unwrap();
    assert_eq!(h.kind, FrameKind::Response);
}

fn still_serving(node: &Node) {
    node.applet("iam-certctl", &["-s", &node.public(), "get", "diskencryption"], None)
        .fails(6, "no certificate");
    assert_eq!(node.status()["state"], "unprovisioned");
}

fn rss_kib(pid: u32) -> u64 {
    let s = read(format!("/proc/{pid}/status"));
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn garbage_frames_are_refused_and_other_clients_keep_working() {
    let mut node = Node::new("garbage", Store::Software);
    node.start(true);
    for sock in [node.public(), node.protected()] {
        let mut s = UnixStream::connect(&sock).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let e = expect_error_then_close(&mut s, "bad frame magic");
        assert_eq!(e.kind, aos_iam::ErrorKind::Protocol);
    }
    // A valid header whose body is not a request.
    let mut s = UnixStream::connect(node.protected()).unwrap();
    hello(&mut s);
    let mut frame = wire::Header::new(FrameKind::Request, 9, 3).encode().to_vec();
    frame.extend_from_slice(&[0xff, 0xff, 0xff]);
    s.write_all(&frame).unwrap();
    expect_error_then_close(&mut s, "malformed frame body");
    // A request with trailing bytes.
    let mut s = UnixStream::connect(node.protected()).unwrap();
    hello(&mut s);
    let mut body = postcard::to_stdvec(&Request::Version).unwrap();
    body.push(0);
    let mut frame = wire::Header::new(FrameKind::Request, 9, body.len() as u32)
        .encode()
        .to_vec();
    frame.extend_from_slice(&body);
    s.write_all(&frame).unwrap();
    expect_error_then_close(&mut s, "trailing bytes");
    still_serving(&node);
}

#[test]
fn a_frame_claiming_a_4_gib_body_is_refused_before_allocation() {
    let mut node = Node::new("huge", Store::Software);
    node.start(true);
    let pid = node.iamd.as_ref().unwrap().id();
    let before = rss_kib(pid);
    let mut s = UnixStream::connect(node.protected()).unwrap();
    let mut h = [0u8; HEADER_LEN];
    h[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    h[4] = aos_iam::PROTOCOL_VERSION;
    h[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
    s.write_all(&h).unwrap();
    expect_error_then_close(&mut s, "4294967295 bytes exceeds the limit of 65536 bytes");
    assert!(
        rss_kib(pid) < before + 16 * 1024,
        "no large allocation: {before} KiB → {} KiB",
        rss_kib(pid)
    );
    still_serving(&node);
}

#[test]
fn other_protocol_versions_are_refused_naming_both() {
    let mut node = Node::new("version", Store::Software);
    node.start(true);
    // In the frame header.
    let mut s = UnixStream::connect(node.public()).unwrap();
    let (newest, beyond) = (aos_iam::PROTOCOL_VERSION, aos_iam::PROTOCOL_VERSION + 1);
    let mut f = hello_frame(5, 1);
    f[4] = beyond;
    s.write_all(&f).unwrap();
    let (h, body) = read_frame(&mut s).unwrap();
    assert_eq!(
        (h.kind, h.id, h.version),
        (FrameKind::Error, 5, aos_iam::PROTOCOL_VERSION)
    );
    let e: aos_iam::Error = wire::decode_body(&body).unwrap();
    assert!(
        e.message.contains(&format!("version {beyond}")) && e.message.contains(&format!("versions 1 to {newest}")),
        "{e:?}"
    );
    // In the hello: a range that does not meet this side's.
    let mut s = UnixStream::connect(node.public()).unwrap();
    let f = hello_frame(1, beyond);
    s.write_all(&f).unwrap();
    let e = expect_error_then_close(
        &mut s,
        &format!("the other end speaks protocol versions {beyond} to {beyond}"),
    );
    assert!(
        e.message.contains(&format!("this side speaks versions 1 to {newest}")),
        "{e:?}"
    );
    // A client of the release before (version 1: its own hello, in a version 1 frame) is
    // answered in version 1, and served in it.
    let mut s = UnixStream::connect(node.public()).unwrap();
    let v1_hello = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/wire/v1/request-00-Hello.hex"
    ))
    .unwrap();
    let v1_hello = aos_iam::codec::unhex(v1_hello.trim()).unwrap();
    s.write_all(&v1_hello).unwrap();
    let (h, body) = read_frame(&mut s).unwrap();
    assert_eq!((h.kind, h.version), (FrameKind::Response, 1));
    assert!(matches!(
        wire::decode_body::<wire::Response>(&body).unwrap(),
        wire::Response::Hello { version: 1, .. }
    ));
    s.write_all(&wire::encode_frame_at(1, FrameKind::Request, 2, &Request::Version, 1 << 16).unwrap())
        .unwrap();
    let (h, _) = read_frame(&mut s).unwrap();
    assert_eq!((h.kind, h.id, h.version), (FrameKind::Response, 2, 1));
    // A client of version 2 (the release before enrollment) is served in version 2.
    let mut s = UnixStream::connect(node.public()).unwrap();
    s.write_all(
        &wire::encode_frame(
            FrameKind::Request,
            1,
            &Request::Hello {
                version: 2,
                min_version: 1,
                role: Role::Client,
                node_id: String::new(),
            },
            1 << 16,
        )
        .unwrap(),
    )
    .unwrap();
    let (h, body) = read_frame(&mut s).unwrap();
    assert_eq!((h.kind, h.version), (FrameKind::Response, 2));
    assert!(matches!(
        wire::decode_body::<wire::Response>(&body).unwrap(),
        wire::Response::Hello { version: 2, .. }
    ));
    still_serving(&node);
}

#[test]
fn requests_before_the_hello_are_refused() {
    let mut node = Node::new("nohello", Store::Software);
    node.start(true);
    let mut s = UnixStream::connect(node.public()).unwrap();
    s.write_all(&wire::encode_frame(FrameKind::Request, 1, &Request::Version, 1 << 16).unwrap())
        .unwrap();
    expect_error_then_close(&mut s, "expected Hello first, got Version");
}

#[test]
fn many_requests_in_flight_on_one_connection_are_answered_by_id() {
    let mut node = Node::new("inflight", Store::Software);
    node.start(true);
    let mut s = UnixStream::connect(node.protected()).unwrap();
    hello(&mut s);
    let mut all = Vec::new();
    for id in 100..140u64 {
        let r = if id % 2 == 0 {
            Request::Version
        } else {
            Request::GetCertTypes { node_id: String::new() }
        };
        all.extend(wire::encode_frame(FrameKind::Request, id, &r, 1 << 16).unwrap());
    }
    s.write_all(&all).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 100..140 {
        let (h, body) = read_frame(&mut s).unwrap();
        let r: wire::Response = wire::decode_body(&body).unwrap();
        match r {
            wire::Response::Version { .. } => assert_eq!(h.id % 2, 0),
            wire::Response::CertTypes(t) => {
                assert_eq!((h.id % 2, t), (1, vec!["iam".to_string(), "online".to_string()]))
            }
            other => panic!("{other:?}"),
        }
        seen.insert(h.id);
    }
    assert_eq!(seen.len(), 40, "every request answered once");
}

#[test]
fn protected_operations_are_refused_on_the_public_socket() {
    let mut node = Node::new("public", Store::Software);
    node.start(true);
    let public = node.public();
    node.applet("iam-provision", &["-s", &public, "status"], None)
        .fails(4, "served on the protected socket only");
    node.applet("iam-provision", &["-s", &public, "start"], Some(PASSWORD))
        .fails(4, "protected socket only");
    assert_eq!(node.status()["state"], "unprovisioned");
}

#[test]
fn the_protected_socket_admits_root_and_configured_ids_only() {
    require_root();
    // With the default mode the file system already keeps other users out.
    let mut node = Node::new("uid", Store::Software);
    node.start(true);
    sh(&format!("chmod 0755 {}", node.p("run"))).ok();
    as_nobody(&node, &["iam-provision", "-s", &node.protected(), "status"]).fails(3, "Permission denied");
    node.stop();

    // With the socket open to all, SO_PEERCRED decides.
    let cfg = node
        .config_text()
        .replace("[paths]\n", "[paths]\nprotected_socket_mode = \"0666\"\n");
    start_with_config(&mut node, &cfg);
    as_nobody(&node, &["iam-provision", "-s", &node.protected(), "status"])
        .fails(4, "uid 65534 gid 65534 is not allowed");
    as_nobody(&node, &["iam-provision", "-s", &node.protected(), "cert-types"]).fails(4, "not allowed");
    assert_eq!(node.status()["state"], "unprovisioned");
    // The public socket serves everyone.
    as_nobody(&node, &["iam-certctl", "-s", &node.public(), "get", "iam"]).fails(6, "no certificate");
    node.stop();

    let cfg = cfg.replace("[paths]\n", "[paths]\nallowed_uids = [65534]\n");
    start_with_config(&mut node, &cfg);
    as_nobody(&node, &["iam-provision", "-s", &node.protected(), "status"]).ok();
}

#[test]
fn a_supplementary_group_in_allowed_gids_admits_and_its_absence_refuses() {
    require_root();
    let mut node = Node::new("groups", Store::Software);
    let cfg = node.config_text().replace(
        "[paths]\n",
        "[paths]\nprotected_socket_mode = \"0666\"\nallowed_gids = [4242]\n",
    );
    start_with_config(&mut node, &cfg);
    let status = ["iam-provision", "-s", &node.protected(), "status"];
    // Primary group 65534, the allowed group only as a supplementary one.
    as_user(&node, 65534, 65534, &[4242], &status).ok();
    as_user(&node, 65534, 4242, &[], &status).ok();
    as_user(&node, 65534, 65534, &[4243, 65534], &status).fails(4, "uid 65534 gid 65534 is not allowed");
}

/// Start iamd with a hand-edited configuration (the harness would regenerate it).
fn start_with_config(node: &mut Node, cfg: &str) {
    let mut cmd = node.cmd();
    cmd.args(["iamd", "-c", &node.p("custom.toml"), "--provisioning"]);
    std::fs::write(node.path("custom.toml"), cfg).unwrap();
    let child = cmd
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..500 {
        if UnixStream::connect(node.protected()).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    node.iamd = Some(child);
    sh(&format!("chmod 0755 {}", node.p("run"))).ok();
}

#[test]
fn a_connection_that_does_not_say_hello_in_time_is_closed() {
    let mut node = Node::new("idle", Store::Software);
    node.extra_config = "\n[limits]\nhello_timeout = 1\n".into();
    node.start(true);
    let mut s = UnixStream::connect(node.public()).unwrap();
    s.write_all(&hello_frame(1, 1)[..10]).unwrap(); // half a header, then silence
    let t = std::time::Instant::now();
    let e = expect_error_then_close(&mut s, "no hello within 1 s");
    assert_eq!(e.kind, aos_iam::ErrorKind::Timeout);
    assert!(t.elapsed() < std::time::Duration::from_secs(10));
    // A client that greets in time is served, however long it then stays.
    let mut s = UnixStream::connect(node.public()).unwrap();
    hello(&mut s);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    s.write_all(&wire::encode_frame(FrameKind::Request, 2, &Request::Version, 1 << 16).unwrap())
        .unwrap();
    let (h, _) = read_frame(&mut s).unwrap();
    assert_eq!((h.kind, h.id), (FrameKind::Response, 2));
}
