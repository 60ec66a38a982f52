//! A secondary with no network of its own (docs/ARCHITECTURE.md §7c): its iamd and
//! iam-nodelink run in a network namespace with no route at all (`unshare -n`), their
//! sockets on disk their only way out. At first power-on it enrolls by itself over EST
//! (mutual TLS with its bootstrap certificate, end to end) through the tunnel its link to
//! the main node carries, links again in TLS once it has its link identity, and renews by
//! itself the same way. The main node carries bytes only to the endpoints it lists.

mod common;
use aos_iam::proto::wire::{self, FrameKind, Request, Response, Role};
use common::enrollment::*;
use common::est::EstServer;
use common::*;
use std::io::{Read, Write};

fn simpleenrolls(server: &EstServer, op: &str) -> usize {
    server.requests().iter().filter(|r| r.starts_with(op)).count()
}

#[test]
fn a_secondary_without_a_network_enrolls_and_renews_by_itself_through_the_main_node() {
    // First the main node does not list the EST server: the secondary's first attempts
    // are refused by the main node, and its enrollment says so.
    let (mut unit, server) = unit_without_network("tunnel", &["localhost:1"]);
    let est = est_endpoint(&server);
    unit.main.start(false);
    unit.secondaries[0].start(false);

    // The secondary has no route at all: the EST server cannot be reached from where it runs.
    let port = est.rsplit_once(':').unwrap().1;
    let direct = sh(&format!("unshare -n bash -c 'exec 3<>/dev/tcp/127.0.0.1/{port}'"));
    assert_ne!(
        direct.code, 0,
        "a network namespace with no route reached the EST server"
    );

    unit.link_unix(0);
    let s = &unit.secondaries[0];
    let last_error = || {
        enrollment(s).json()["enrollment"]["last_error"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    wait_for(
        || last_error().contains("is not among the endpoints this main node carries tunnels to"),
        "the main node's refusal in the enrollment status",
        s,
    );
    let refused = enrollment(s).json();
    assert_eq!(refused["enrollment"]["state"], "enrolling", "{refused}");
    assert!(
        refused["enrollment"]["last_error"]
            .as_str()
            .unwrap()
            .contains("links.tunnel_endpoints"),
        "{refused}"
    );
    assert_eq!(simpleenrolls(&server, "simpleenroll"), 0);
    // The refused tunnel is in the main node's audit trail.
    let refused_line = format!("audit: TunnelOpen by node \"{}\" over its link: refused, ", s.node_id());
    assert!(unit.main.log().contains(&refused_line), "{}", unit.main.log());
    let link = unit.link_status(0).json();
    assert_eq!(link["state"], "tunnels-only", "{link}");
    assert_eq!(link["tls"], false, "{link}");
    // A link in the clear carries tunnels only: it never registers the node.
    unit.main
        .provision(&["--node", &s.node_id(), "node-info"])
        .fails(6, "no link has registered it");

    // The main node lists it now: the node enrolls through it, end to end.
    unit.main.stop();
    set_endpoints(&mut unit, &[&est]);
    unit.main.start(false);
    let s = &unit.secondaries[0];
    let done = wait_state(s, "operational");
    assert_eq!(
        done["enrollment"]["enrolled"],
        serde_json::json!(["online", "iam"]),
        "{done}"
    );
    // Each module enrolled once, over mutual TLS with the bootstrap certificate (the EST
    // server saw the bootstrap identity itself, so the TLS ran end to end).
    let enrolls: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("simpleenroll"))
        .collect();
    assert_eq!(
        enrolls,
        vec![format!("simpleenroll cn={}", s.node_id()); 2],
        "{enrolls:?}"
    );
    // With its link identity, the node links again, in TLS, and registers.
    let link = unit.wait_link_registered(0);
    assert_eq!(link["tls"], true, "{link}");
    unit.wait_connected(&s.node_id(), true);
    let main_log = unit.main.log();
    assert!(main_log.contains("in the clear, for its tunnels only"), "{main_log}");
    assert!(main_log.contains("tunnel 1 open to"), "{main_log}");
    // Nothing secret in either log: the claim token went inside the TLS.
    for log in [main_log, s.log(), read(s.path("nodelink.log"))] {
        assert!(!log.contains(CLAIM) && !log.contains(PASSWORD), "{log}");
    }

    // Its own renewal, asked for now, re-enrolls through the tunnel of its TLS link.
    let before = s
        .list_certs()
        .into_iter()
        .find(|c| c["type"] == "iam" && c["current"] == true)
        .unwrap();
    let out = s
        .applet("iam-certctl", &["-s", &s.protected(), "--json", "renew", "iam"], None)
        .ok()
        .json();
    assert_ne!(out["serial"], before["serial"], "{out}");
    assert_eq!(simpleenrolls(&server, "simplereenroll"), 1);

    // Off the list again: the renewal is refused by the main node, which says why.
    unit.main.stop();
    set_endpoints(&mut unit, &["localhost:1"]);
    unit.main.start(false);
    unit.wait_connected(&unit.secondaries[0].node_id(), true);
    let s = &unit.secondaries[0];
    s.applet("iam-certctl", &["-s", &s.protected(), "renew", "iam"], None)
        .fails(4, "is not among the endpoints this main node carries tunnels to");
    assert_eq!(simpleenrolls(&server, "simplereenroll"), 1);
}

/// A raw link to the main node's unix listener, in the clear, speaking frames by hand as a
/// rooted secondary (or any process admitted to the link socket) could.
struct RawLink {
    s: std::os::unix::net::UnixStream,
    next: u64,
}

impl RawLink {
    fn open(unit: &Unit, node_id: &str) -> RawLink {
        let s = std::os::unix::net::UnixStream::connect(unit.main.path("run/link.sock")).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
        let mut l = RawLink { s, next: 1 };
        let v = aos_iam::PROTOCOL_VERSION;
        let hello = Request::Hello {
            version: v,
            min_version: v,
            role: Role::NodeLink,
            node_id: node_id.into(),
        };
        l.send(FrameKind::Request, 0, &hello);
        match l.frame() {
            (FrameKind::Response, body) => {
                let r: Response = wire::decode_body(&body).unwrap();
                assert!(matches!(r, Response::Hello { .. }), "{r:?}");
            }
            (k, body) => panic!("hello answered {k:?}: {:?}", wire::decode_body::<aos_iam::Error>(&body)),
        }
        l
    }

    fn send<T: serde::Serialize>(&mut self, kind: FrameKind, id: u64, body: &T) {
        let f = wire::encode_frame(kind, id, body, wire::DEFAULT_BODY_LIMIT).unwrap();
        self.s.write_all(&f).unwrap();
    }

    fn frame(&mut self) -> (FrameKind, Vec<u8>) {
        let (h, body) = aos_iam::proto::transport::read_frame_blocking(&mut self.s, wire::DEFAULT_BODY_LIMIT)
            .unwrap()
            .expect("a frame");
        (h.kind, body)
    }

    /// Send a request and return its answer; the main node's own requests meanwhile (a
    /// tunnel's bytes, its close) are answered `Done` and collected in `seen`.
    fn call(&mut self, r: &Request, seen: &mut Vec<Request>) -> Result<Response, aos_iam::Error> {
        let id = self.next;
        self.next += 1;
        self.send(FrameKind::Request, id, r);
        loop {
            let (h, body) = aos_iam::proto::transport::read_frame_blocking(&mut self.s, wire::DEFAULT_BODY_LIMIT)
                .unwrap()
                .expect("an answer");
            match h.kind {
                FrameKind::Request => {
                    seen.push(wire::decode_request_at(h.version, &body).unwrap());
                    self.send(FrameKind::Response, h.id, &Response::Done);
                }
                FrameKind::Response if h.id == id => return Ok(wire::decode_body(&body).unwrap()),
                FrameKind::Error if h.id == id => return Err(wire::decode_body(&body).unwrap()),
                k => panic!("unexpected {k:?} frame {}", h.id),
            }
        }
    }

    /// Read the main node's requests until `want` holds for one, answering each `Done`.
    fn until(&mut self, seen: &mut Vec<Request>, want: impl Fn(&Request) -> bool) {
        while !seen.iter().any(&want) {
            let (h, body) = aos_iam::proto::transport::read_frame_blocking(&mut self.s, wire::DEFAULT_BODY_LIMIT)
                .unwrap()
                .expect("a request of the main node");
            assert_eq!(h.kind, FrameKind::Request);
            seen.push(wire::decode_request_at(h.version, &body).unwrap());
            self.send(FrameKind::Response, h.id, &Response::Done);
        }
    }
}

#[test]
fn a_link_in_the_clear_carries_tunnels_to_listed_endpoints_only_and_nothing_else() {
    // An endpoint of the main node's list: a TCP server that answers what it reads.
    let echo = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listed = format!("127.0.0.1:{}", echo.local_addr().unwrap().port());
    std::thread::spawn(move || {
        for c in echo.incoming().flatten() {
            std::thread::spawn(move || {
                let mut c = c;
                let mut buf = [0u8; 4096];
                while let Ok(n) = c.read(&mut buf) {
                    if n == 0 || c.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    let mut unit = Unit::new("tunnel-raw", 0);
    unit.main.start(true);
    unit.main.run_flow().ok();
    unit.main.stop();
    set_endpoints(&mut unit, &[&listed]);
    // Idle tunnels close after links.request_timeout.
    unit.main.extra_config.push_str("request_timeout = 2\n");
    unit.main.start(false);
    let mut seen = Vec::new();

    // In the clear, out of provisioning mode: no registration, no other request.
    let mut l = RawLink::open(&unit, "rogue");
    let e = l
        .call(
            &Request::RegisterNode {
                info: link_node_info("rogue"),
            },
            &mut seen,
        )
        .unwrap_err();
    assert_eq!(e.kind, aos_iam::ErrorKind::Unauthorized, "{e:?}");
    assert!(e.message.contains("carries tunnels only"), "{e:?}");
    let e = l.call(&Request::GetAllNodeIds, &mut seen).unwrap_err();
    assert!(e.message.contains("carries tunnels only"), "{e:?}");
    let e = l
        .call(
            &Request::NodeInfoChanged {
                info: link_node_info("rogue"),
            },
            &mut seen,
        )
        .unwrap_err();
    assert!(e.message.contains("carries tunnels only"), "{e:?}");
    unit.main
        .provision(&["--node", "rogue", "node-info"])
        .fails(6, "no link has registered it");

    // Only the endpoints listed: not another port, not another host, not a bad name.
    for (target, why) in [
        (
            "127.0.0.1:22",
            "is not among the endpoints this main node carries tunnels to",
        ),
        ("localhost:1", "is not among the endpoints"),
        ("127.0.0.1", "is not host:port"),
        ("a b:1", "is not a host name or address"),
    ] {
        let e = l
            .call(
                &Request::TunnelOpen {
                    endpoint: target.into(),
                },
                &mut seen,
            )
            .unwrap_err();
        assert!(e.message.contains(why), "{target}: {e:?}");
    }
    // Bytes to a tunnel that was never opened go nowhere.
    let e = l
        .call(
            &Request::TunnelData {
                tunnel: 99,
                data: b"x".to_vec(),
            },
            &mut seen,
        )
        .unwrap_err();
    assert_eq!(e.kind, aos_iam::ErrorKind::NotFound, "{e:?}");

    // A listed endpoint: bytes go there and back.
    let t = match l.call(
        &Request::TunnelOpen {
            endpoint: listed.clone(),
        },
        &mut seen,
    ) {
        Ok(Response::TunnelOpened { tunnel }) => tunnel,
        r => panic!("{r:?}"),
    };
    l.call(
        &Request::TunnelData {
            tunnel: t,
            data: b"ping".to_vec(),
        },
        &mut seen,
    )
    .unwrap();
    l.until(
        &mut seen,
        |r| matches!(r, Request::TunnelData { tunnel, .. } if *tunnel == t),
    );
    let back: Vec<u8> = seen
        .iter()
        .filter_map(|r| match r {
            Request::TunnelData { tunnel, data } if *tunnel == t => Some(data.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(back, b"ping");
    // Four open on one link, not five.
    for _ in 0..3 {
        l.call(
            &Request::TunnelOpen {
                endpoint: listed.clone(),
            },
            &mut seen,
        )
        .unwrap();
    }
    let e = l
        .call(
            &Request::TunnelOpen {
                endpoint: listed.clone(),
            },
            &mut seen,
        )
        .unwrap_err();
    assert!(e.message.contains("4 tunnels open already"), "{e:?}");
    // Idle ones are closed by the main node, which says so, and give their places back.
    l.until(
        &mut seen,
        |r| matches!(r, Request::TunnelClose { tunnel } if *tunnel == t),
    );
    wait_for(
        || unit.main.log().matches("no byte either way for 2 s").count() >= 4,
        "every idle tunnel closed",
        &unit.main,
    );
    l.call(
        &Request::TunnelOpen {
            endpoint: listed.clone(),
        },
        &mut seen,
    )
    .unwrap();
}

/// Under the layer's units: iam-nodelink is Type=notify, and a node that enrolls through its
/// link is linked for tunnels only for as long as the enrollment takes; without READY=1
/// systemd would time the unit out and restart it in the middle of that enrollment. And
/// iamd, root without CAP_DAC_OVERRIDE there, reaches the tunnel socket by the protected
/// socket's group, which iam-nodelink has as its own.
#[test]
fn a_link_for_tunnels_only_is_ready_for_systemd_and_its_socket_is_in_the_protected_group() {
    let (mut unit, _server) = unit_without_network("tunready", &["localhost:1"]);
    let gid = if nix::unistd::geteuid().is_root() {
        4242
    } else {
        nix::unistd::getegid().as_raw()
    };
    unit.secondaries[0].paths_extra = format!("protected_socket_group = {gid}\n");
    unit.main.start(false);
    unit.secondaries[0].start(false);
    let s = &unit.secondaries[0];
    let sock_path = s.path("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(60))).unwrap();
    let mut cmd = unit.nodelink_cmd(0, &unit.link_addr());
    cmd.env("NOTIFY_SOCKET", &sock_path).stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let mut buf = [0u8; 64];
    let n = sock.recv(&mut buf);
    let status = unit.link_status(0).json();
    let _ = child.kill();
    let _ = child.wait();
    let n = n.unwrap_or_else(|e| panic!("no READY=1 from a link for tunnels only ({e}): {status}"));
    assert_eq!(&buf[..n], b"READY=1");
    assert_eq!(status["state"], "tunnels-only", "{status}");
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = std::fs::metadata(s.path("run/tunnel.sock")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(meta.gid(), gid);
}
