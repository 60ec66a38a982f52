//! The protected socket's trust boundary: processes admitted to it (by uid or group) are
//! trusted to provision, not to speak as the node nor to stall it. Each attack runs as a
//! real process of another uid (setpriv) against the running iamd.

mod common;
use aos_iam::proto::wire::{FrameKind, Request, Response};
use aos_iam::secret::Secret;
use common::attack::*;
use common::*;
use std::io::Write;
use std::time::{Duration, Instant};

/// What the TLS 1.3 client CertificateVerify of a handshake with a SHA-256 transcript signs.
fn certificate_verify_message() -> Vec<u8> {
    [
        vec![b' '; 64],
        b"TLS 1.3, client CertificateVerify\0".to_vec(),
        vec![0x5a; 32],
    ]
    .concat()
}

/// Send `request` as root on `socket`; the answer, or the error's message.
fn ask(socket: &str, request: &Request) -> Result<Response, String> {
    let mut s = connect(socket);
    s.write_all(&frame(request)).unwrap();
    let (h, body) = read_answer(&mut s);
    match h.kind {
        FrameKind::Response => Ok(aos_iam::proto::wire::decode_body(&body).unwrap()),
        _ => Err(aos_iam::proto::wire::decode_body::<aos_iam::Error>(&body)
            .unwrap()
            .message),
    }
}

fn link_serial(node: &Node) -> Vec<u8> {
    match ask(&node.protected(), &Request::GetLinkIdentity).unwrap() {
        Response::LinkIdentity { serial, .. } => serial,
        r => panic!("{r:?}"),
    }
}

#[test]
fn only_the_link_user_has_the_link_key_sign_and_only_a_tls13_certificate_verify() {
    let mut node = Node::new("oracle", Store::Pkcs11);
    node.node_extra = "role = \"secondary\"\n".into();
    node.paths_extra = "protected_socket_mode = \"0666\"\nallowed_uids = [65534, 65533]\n".into();
    node.extra_config = "\n[links]\nconnect = \"unix:/nonexistent\"\nsigner_uids = [65533]\n".into();
    node.start(true);
    node.run_flow().ok();
    let serial = link_serial(&node);
    let sign = |message: Vec<u8>| Request::SignWithLinkIdentity {
        serial: serial.clone(),
        message,
    };

    // The link's user (and root) have a handshake signed...
    assert!(matches!(
        ask(&node.protected(), &sign(certificate_verify_message())),
        Ok(Response::Signature(_))
    ));
    let linker = Attacker::start(65533, &node.protected(), 1, 1, &[sign(certificate_verify_message())]);
    assert_eq!(
        (linker.subscriptions, linker.refused.len()),
        (1, 0),
        "{:?}",
        linker.refused
    );
    // ... another admitted uid has nothing signed, not even a handshake ...
    let other = Attacker::start(65534, &node.protected(), 1, 1, &[sign(certificate_verify_message())]);
    assert_eq!(other.subscriptions, 0);
    other.refused_for("uid 65534 is not the link's user (links.signer_uids)");
    // ... and nobody has anything else signed: a server's CertificateVerify, a CSR, bytes.
    let server_verify = [
        vec![b' '; 64],
        b"TLS 1.3, server CertificateVerify\0".to_vec(),
        vec![1; 32],
    ]
    .concat();
    for message in [server_verify, b"any statement at all".to_vec(), vec![b' '; 130]] {
        let e = ask(&node.protected(), &sign(message)).unwrap_err();
        assert!(e.contains("signs only a TLS 1.3 client CertificateVerify"), "{e}");
    }
    assert!(!node.log().contains("any statement"), "the message is not logged");
}

#[test]
fn the_main_node_signs_nothing_with_its_link_identity() {
    let mut node = Node::new("oracle-main", Store::Pkcs11);
    node.start(true);
    node.run_flow().ok();
    let request = Request::SignWithLinkIdentity {
        serial: link_serial(&node),
        message: certificate_verify_message(),
    };
    let e = ask(&node.protected(), &request).unwrap_err();
    assert!(e.contains("not served on the main node"), "{e}");
}

#[test]
fn wrong_passwords_from_one_uid_slow_that_uid_only_and_are_dropped_when_it_goes() {
    let mut node = Node::new("guess", Store::Pkcs11);
    node.paths_extra = "protected_socket_mode = \"0666\"\nallowed_uids = [65534]\n".into();
    node.start(true);
    node.run_flow().ok();
    node.stop();
    node.start(false);
    sh(&format!("chmod 0755 {} {}", node.dir.display(), node.p("run"))).ok();

    // 16 connections of one admitted uid, each with a wrong password in flight at once.
    let wrong = Request::CreateKey {
        node_id: String::new(),
        cert_type: "online".into(),
        subject: "CN=guess".into(),
        password: Secret::new("not-the-password".into()),
    };
    let checked = || node.log().matches("a password is checked against the verifier").count();
    let checked_before = checked();
    let guesser = Attacker::start(65534, &node.protected(), 16, 0, &[wrong]);
    assert_eq!(guesser.connections, 16);
    // Its attempts run one at a time, each after a delay that doubles: the sixth wrong one
    // is answered after 8 s, and only then does the seventh start.
    let attempt = |n: u32| format!("wrong provisioning password from uid 65534 (attempt {n} in a row)");
    let start = Instant::now();
    while !node.log().contains(&attempt(6)) {
        assert!(start.elapsed() < Duration::from_secs(60), "{}", node.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !node.log().contains(&attempt(7)),
        "attempts ran beside each other:\n{}",
        node.log()
    );
    // Held back, not only answered late: the seventh has not even been checked.
    assert_eq!(checked() - checked_before, 6, "passwords checked before their turn");

    // While the guesser's attempt waits, another uid is served: GetCert on the public
    // socket, and the right password (a key derivation and a key generation) on the
    // protected one. Both end before the guesser's next attempt is even tried, so neither
    // queued behind it. (How fast they are meanwhile is measured by `make bench`.)
    let mut s = connect(&node.public());
    for _ in 0..50 {
        s.write_all(&frame(&Request::GetCert {
            cert_type: "iam".into(),
            issuer: None,
            serial: None,
        }))
        .unwrap();
        assert_eq!(read_answer(&mut s).0.kind, FrameKind::Response);
    }
    let out = node.provision_stdin(&["create-key", "online"], PASSWORD);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        !node.log().contains(&attempt(7)),
        "another uid's request waited for the guesser's attempt:\n{}",
        node.log()
    );

    // The guesser goes away: its attempts still waiting for their turn are dropped.
    assert_eq!(guesser.finish(), 16, "iamd kept the guesser's connections");
    let start = Instant::now();
    let dropped = |log: String| {
        log.lines()
            .any(|l| l.contains("audit: CreateKey by uid 65534") && l.ends_with("dropped, its client has gone"))
    };
    while !dropped(node.log()) {
        assert!(start.elapsed() < Duration::from_secs(30), "{}", node.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let tried = node.log().matches("wrong provisioning password from uid 65534").count();
    assert!(tried < 16, "{tried} of 16 abandoned attempts were tried");
    assert!(!node.log().contains("not-the-password"));
}

#[test]
fn only_a_password_that_verified_ends_a_run_of_wrong_ones() {
    let mut node = Node::provisioned("guess-reset");
    let create = |cert_type: &str, password: &str| Request::CreateKey {
        node_id: String::new(),
        cert_type: cert_type.into(),
        subject: "CN=guess".into(),
        password: Secret::new(password.into()),
    };
    let attempt = |n: u32| format!("wrong provisioning password from uid 0 (attempt {n} in a row)");
    // Wrong passwords, each followed by a request refused for another reason (a type that
    // does not exist): the refusals in between do not reset the count, so the delay doubles.
    for n in 1..=3 {
        let e = ask(&node.protected(), &create("online", "not-the-password")).unwrap_err();
        assert!(e.contains("password"), "{e}");
        let e = ask(&node.protected(), &create("no-such-type", "not-the-password")).unwrap_err();
        assert!(!e.is_empty());
        assert!(node.log().contains(&attempt(n)), "{}", node.log());
    }
    assert!(node.log().contains(&attempt(3)), "{}", node.log());
    // The right password ends the run: the next wrong one is the first again.
    assert_eq!(node.log().matches(&attempt(1)).count(), 1);
    let out = node.provision_stdin(&["create-key", "online"], PASSWORD);
    assert_eq!(out.code, 0, "{}", out.stderr);
    ask(&node.protected(), &create("online", "not-the-password")).unwrap_err();
    assert_eq!(node.log().matches(&attempt(1)).count(), 2, "{}", node.log());
    assert!(!node.log().contains(&attempt(4)), "{}", node.log());
    node.stop();
}

/// The audit trail: every protected operation and every refusal of access is logged once,
/// with the uid, the pid, the socket, the node and the outcome, and never a secret.
#[test]
fn every_protected_operation_and_every_refusal_is_audited_once_without_a_secret() {
    let mut node = Node::provisioned("audit");
    let me = std::process::id();
    let id = node.node_id();
    let create = |password: &str| Request::CreateKey {
        node_id: String::new(),
        cert_type: "online".into(),
        subject: "CN=audit".into(),
        password: Secret::new(password.into()),
    };
    // (The lines of this run of iamd: the provisioning before it made its own.)
    let audits = |node: &Node, op: &str| -> Vec<String> {
        let log = node.log();
        let run = log.rsplit("serving node").next().unwrap_or("").to_string();
        run.lines()
            .filter(|l| l.contains(&format!("audit: {op} by uid ")))
            .map(String::from)
            .collect()
    };
    // A wrong password (an admitted process): refused, once.
    ask(&node.protected(), &create("guess-4711")).unwrap_err();
    let want = format!("audit: CreateKey by uid 0 pid {me} on the protected socket, node \"{id}\": refused, ");
    wait_for(
        || audits(&node, "CreateKey").len() == 1,
        "the refusal's audit line",
        &node,
    );
    let lines = audits(&node, "CreateKey");
    assert!(lines[0].contains(&want), "{lines:?}");
    // The right one: done, once.
    ask(&node.protected(), &create(PASSWORD)).unwrap();
    wait_for(
        || audits(&node, "CreateKey").len() == 2,
        "the operation's audit line",
        &node,
    );
    assert!(
        audits(&node, "CreateKey")[1].ends_with(&format!("pid {me} on the protected socket, node \"{id}\": done")),
        "{:?}",
        audits(&node, "CreateKey")
    );
    // A protected request on the public socket (a local user's reach): refused, once.
    ask(&node.public(), &Request::ListCerts { node_id: String::new() }).unwrap_err();
    wait_for(
        || audits(&node, "ListCerts").len() == 1,
        "the public refusal's audit line",
        &node,
    );
    assert!(
        audits(&node, "ListCerts")[0].contains("on the public socket")
            && audits(&node, "ListCerts")[0].contains("refused, unauthorized"),
        "{:?}",
        audits(&node, "ListCerts")
    );
    // A read on the public socket that finds nothing is no refusal.
    ask(
        &node.public(),
        &Request::GetCert {
            cert_type: "no-such-type".into(),
            issuer: None,
            serial: None,
        },
    )
    .unwrap_err();
    assert!(audits(&node, "GetCert").is_empty(), "{}", node.log());
    let log = node.log();
    assert!(
        !log.contains("guess-4711") && !log.contains(PASSWORD),
        "a password in the log"
    );
    node.stop();
}

/// A request the main node forwards over a link is audited at both ends: on the main node
/// as its client asked it (that uid and pid, the secondary's node id), on the secondary as
/// iam-nodelink brought it (the link's pid); a forwarded refusal likewise, never a secret.
/// What the secondary asks over its link (its registration) is audited on the main node.
#[test]
fn a_forwarded_operation_and_a_forwarded_refusal_are_audited_on_the_main_node_and_on_the_secondary() {
    let mut unit = Unit::new("audit-fwd", 1);
    unit.start(true);
    unit.link_all_unix();
    let sec = unit.secondaries[0].node_id();
    let link_pid = unit.links[0].as_ref().expect("a link").id();
    let me = std::process::id();
    let create = |password: &str| Request::CreateKey {
        node_id: sec.clone(),
        cert_type: "online".into(),
        subject: "CN=audit".into(),
        password: Secret::new(password.into()),
    };
    let audits = |node: &Node| -> Vec<String> {
        node.log()
            .lines()
            .filter(|l| l.contains("audit: CreateKey by uid "))
            .map(String::from)
            .collect()
    };
    // Provisioning started on the secondary, so that CreateKey is served there.
    unit.main
        .provision(&["--node", &sec, "start", "--password-file", &unit.main.p("password")])
        .ok();
    ask(&unit.main.protected(), &create("guess-4711")).unwrap_err();
    ask(&unit.main.protected(), &create(PASSWORD)).unwrap();
    wait_for(
        || audits(&unit.secondaries[0]).len() == 2,
        "the secondary's audit lines",
        &unit.secondaries[0],
    );
    wait_for(
        || audits(&unit.main).len() == 2,
        "the main node's audit lines",
        &unit.main,
    );
    let (main, secondary) = (audits(&unit.main), audits(&unit.secondaries[0]));
    let on_main = format!("audit: CreateKey by uid 0 pid {me} on the protected socket, node \"{sec}\": ");
    assert!(main[0].contains(&format!("{on_main}refused, ")), "{main:?}");
    assert!(main[1].ends_with(&format!("{on_main}done")), "{main:?}");
    let on_secondary = format!("pid {link_pid} on the protected socket, node \"{sec}\": ");
    assert!(
        secondary[0].contains(&format!("{on_secondary}refused, ")),
        "{secondary:?}"
    );
    assert!(secondary[1].ends_with(&format!("{on_secondary}done")), "{secondary:?}");
    for l in main.iter().chain(&secondary) {
        assert!(!l.contains("guess-4711") && !l.contains(PASSWORD), "{l}");
    }
    // What the secondary asked over its link itself: its registration.
    assert!(
        unit.main
            .log()
            .contains(&format!("audit: RegisterNode by node \"{sec}\" over its link: done")),
        "{}",
        unit.main.log()
    );
}
