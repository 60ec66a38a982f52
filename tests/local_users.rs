//! The public socket's trust boundary: a local user who is not admitted attacks the running
//! iamd by holding connections and subscriptions, and by sitting idle. Each attacker is a
//! real process running as another uid (setpriv), so the quotas are iamd's own view of it.

mod common;
use aos_iam::proto::wire::{FrameKind, Request};
use common::attack::*;
use common::*;
use std::io::Write;
use std::process::Command;
use std::time::Duration;

#[test]
fn an_unprivileged_user_cannot_starve_the_node_link_root_or_get_cert() {
    let mut unit = Unit::new("quota", 1);
    unit.start(true);
    let sec = &unit.secondaries[0];
    sh(&format!("chmod 0755 {} {}", sec.dir.display(), sec.p("run"))).ok();
    let public = sec.public();

    // One uid: 32 connections (limits.connections_per_uid), 16 subscriptions of its own.
    let greedy = Attacker::start(65534, &public, 40, 3, &[Request::SubscribeNodeChanged]);
    assert_eq!(greedy.connections, 32, "{:?}", greedy.refused);
    greedy.refused_for("limits.connections_per_uid = 32");
    assert_eq!(greedy.subscriptions, 16);
    greedy.refused_for("limits.subscriptions_per_uid = 16");

    // More uids together fill what users not admitted may take (256 - 64 reserved)...
    let mut crowd = vec![greedy];
    for uid in 65000..65011 {
        let a = Attacker::start(uid, &public, 2, 8, &[Request::SubscribeNodeChanged]);
        assert_eq!(a.subscriptions, 16, "uid {uid}: {:?}", a.refused);
        crowd.push(a);
    }
    // ... and the next one is refused, naming the reserve.
    let late = Attacker::start(65011, &public, 1, 1, &[Request::SubscribeNodeChanged]);
    assert_eq!((late.connections, late.subscriptions), (1, 0));
    late.refused_for("limits.reserved_subscriptions = 64");

    // The node link still subscribes (on the protected socket) and links ...
    unit.link_unix(0);
    unit.wait_connected("node-quota-s0", true);
    // ... root still subscribes on the public socket ...
    let mut root = connect(&public);
    root.write_all(&frame(&Request::SubscribeNodeChanged)).unwrap();
    let (h, body) = read_answer(&mut root);
    assert_eq!(h.kind, FrameKind::Response, "{}", String::from_utf8_lossy(&body));
    // ... and GetCert is answered, every time. (How fast, against an idle daemon, is
    // measured by `make bench`.)
    let mut s = connect(&public);
    for _ in 0..50 {
        s.write_all(&frame(&Request::GetCert {
            cert_type: "iam".into(),
            issuer: None,
            serial: None,
        }))
        .unwrap();
        // The secondary has no certificate yet: its answer is not_found, from its database.
        let (h, body) = read_answer(&mut s);
        assert_eq!(h.kind, FrameKind::Error);
        let e: aos_iam::Error = aos_iam::proto::wire::decode_body(&body).unwrap();
        assert_eq!(e.kind, aos_iam::error::ErrorKind::NotFound, "{e:?}");
    }
    drop((crowd, late));
}

#[test]
fn an_idle_connection_of_a_user_not_admitted_is_closed_and_one_that_subscribes_is_kept() {
    let mut node = Node::new("idle-out", Store::Software);
    node.extra_config = "\n[limits]\nidle_timeout = 2\n".into();
    node.start(false);
    sh(&format!("chmod 0755 {} {}", node.dir.display(), node.p("run"))).ok();
    let public = node.public();
    let mut admitted = connect(&public);
    let subscriber = Attacker::start(
        65534,
        &public,
        1,
        1,
        &[Request::SubscribeCertChanged {
            cert_type: String::new(),
        }],
    );
    assert_eq!(subscriber.subscriptions, 1, "{:?}", subscriber.refused);

    // The idle one: its hello, then nothing. iamd closes it with an error naming the limit.
    let script = format!(
        "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.connect({public:?})\ns.sendall(bytes.fromhex({:?}))\n\
         d=b''\nwhile True:\n    c=s.recv(4096)\n    if not c: break\n    d+=c\nprint(''.join(chr(b) for b in d if 32<=b<127))\n",
        hex(&hello_frame())
    );
    let idle = run(
        Command::new("setpriv").args([
            "--reuid=65533",
            "--regid=65533",
            "--clear-groups",
            "--",
            "/usr/bin/python3",
            "-c",
            &script,
        ]),
        None,
    )
    .ok();
    assert!(idle.stdout.contains("limits.idle_timeout"), "{}", idle.stdout);

    // Another idle period later, the subscriber and the admitted client are still served.
    std::thread::sleep(Duration::from_secs(3));
    admitted.write_all(&frame(&Request::Version)).unwrap();
    assert_eq!(read_answer(&mut admitted).0.kind, FrameKind::Response);
    assert_eq!(subscriber.finish(), 1, "the subscribing connection was closed");
}

#[test]
fn the_subscriptions_of_a_connection_that_closes_give_their_places_back() {
    let mut node = Node::new("sub-back", Store::Software);
    node.start(false);
    sh(&format!("chmod 0755 {} {}", node.dir.display(), node.p("run"))).ok();
    let public = node.public();
    let subscribe = [Request::SubscribeNodeChanged];
    let first = Attacker::start(65534, &public, 16, 1, &subscribe);
    assert_eq!(first.subscriptions, 16, "{:?}", first.refused);
    let more = Attacker::start(65534, &public, 1, 1, &subscribe);
    assert_eq!(more.subscriptions, 0);
    more.refused_for("limits.subscriptions_per_uid = 16");
    drop((first, more));
    // No node changes while they were held: the subscriptions end, and their places come
    // back, only because their connections closed.
    wait_for(
        || Attacker::start(65534, &public, 16, 1, &subscribe).subscriptions == 16,
        "the places of a closed connection's subscriptions given back",
        &node,
    );
}
