//! `make bench`, the trust boundaries under attack: GetCert's p50 and p99 on the public
//! socket of an idle node (the baseline, measured in the same run), while 12 local users who
//! are not admitted hold every connection and subscription their quotas leave them, and
//! while an admitted uid guesses the provisioning password on 16 connections at once.
//! Figures as ratios against the baseline; not pass/fail (the tests assert that the
//! requests are served at all). Needs root: the attackers run as other uids (setpriv).
//! Then the link listener flooded (issue 28, item 2): how long a secondary takes to link and
//! register while 300 connections to the main node's TCP link port send nothing, against
//! the same with none, in the same run. `cargo bench --bench attack -- link-flood` runs that
//! part alone; `AOS_IAM_UNDER_TEST=PATH` drives another build (one that speaks this protocol).

#[path = "../tests/common/mod.rs"]
mod harness;
use aos_iam::proto::wire::{FrameKind, Request};
use aos_iam::secret::Secret;
use harness::attack::*;
use harness::*;
use std::io::Write;
use std::time::{Duration, Instant};

const ROUNDS: usize = 5;
const CALLS: usize = 400;

/// GetCert round trips on one connection: (p50, p99) in microseconds, the medians over
/// [`ROUNDS`] rounds of [`CALLS`].
fn get_cert_latency(socket: &str) -> (u128, u128) {
    let request = frame(&Request::GetCert {
        cert_type: "iam".into(),
        issuer: None,
        serial: None,
    });
    let mut p50s = Vec::new();
    let mut p99s = Vec::new();
    for _ in 0..ROUNDS {
        let mut s = connect(socket);
        let mut times: Vec<u128> = (0..CALLS)
            .map(|_| {
                let t = Instant::now();
                s.write_all(&request).unwrap();
                let (h, _) = read_answer(&mut s);
                assert_eq!(h.kind, FrameKind::Response);
                t.elapsed().as_micros()
            })
            .collect();
        times.sort_unstable();
        p50s.push(times[CALLS / 2]);
        p99s.push(times[CALLS * 99 / 100]);
    }
    p50s.sort_unstable();
    p99s.sort_unstable();
    (p50s[ROUNDS / 2], p99s[ROUNDS / 2])
}

fn report(what: &str, (p50, p99): (u128, u128), (b50, b99): (u128, u128)) {
    println!(
        "{what:<44} p50 {p50:>6} us ({:.2}x)   p99 {p99:>6} us ({:.2}x)",
        p50 as f64 / b50 as f64,
        p99 as f64 / b99 as f64
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    require_root();
    // `-- link-flood`: that part alone.
    if std::env::args().any(|a| a == "link-flood") {
        link_listener_flood();
        return;
    }
    let mut node = Node::new("bench-attack", Store::Pkcs11);
    node.paths_extra = "protected_socket_mode = \"0666\"\nallowed_uids = [65534]\n".into();
    node.start(true);
    node.run_flow().ok();
    node.stop();
    node.start(false);
    sh(&format!("chmod 0755 {} {}", node.dir.display(), node.p("run"))).ok();
    let public = node.public();

    let idle = get_cert_latency(&public);
    report("idle (the baseline)", idle, idle);

    // 12 uids not admitted, each with what its quotas allow: 192 of the 256 subscriptions.
    let mut crowd = vec![Attacker::start(65534, &public, 32, 1, &[Request::SubscribeNodeChanged])];
    for uid in 65000..65011 {
        crowd.push(Attacker::start(uid, &public, 2, 8, &[Request::SubscribeNodeChanged]));
    }
    let held: usize = crowd.iter().map(|a| a.connections).sum();
    report(
        &format!("12 users holding {held} connections"),
        get_cert_latency(&public),
        idle,
    );
    drop(crowd);

    // An admitted uid guessing on 16 connections, in its steady state (attempt 5 onwards).
    let wrong = Request::CreateKey {
        node_id: String::new(),
        cert_type: "online".into(),
        subject: "CN=guess".into(),
        password: Secret::new("not-the-password".into()),
    };
    let guesser = Attacker::start(65534, &node.protected(), 16, 0, &[wrong]);
    let start = Instant::now();
    while !node
        .log()
        .contains("wrong provisioning password from uid 65534 (attempt 5 in a row)")
    {
        assert!(start.elapsed() < Duration::from_secs(60), "{}", node.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    report(
        "an admitted uid guessing on 16 connections",
        get_cert_latency(&public),
        idle,
    );
    drop(guesser);
    node.stop();
    link_listener_flood();
}

/// Median of [`ROUNDS`] times a secondary's iam-nodelink takes from its start to its node
/// shown connected on the main node.
fn relink_time(unit: &mut Unit) -> Duration {
    let id = unit.secondaries[0].node_id();
    let mut times = Vec::new();
    for _ in 0..ROUNDS {
        unit.kill_link(0);
        unit.wait_connected(&id, false);
        let start = Instant::now();
        unit.link_unix(0);
        unit.wait_connected(&id, true);
        times.push(start.elapsed());
    }
    times.sort_unstable();
    times[ROUNDS / 2]
}

fn link_listener_flood() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut unit = Unit::new("bench-flood", 1);
    unit.main.extra_config = format!(
        "\n[links]\nlisten = [\"unix:{}\", \"tcp:127.0.0.1:{port}\"]\n",
        unit.main.p("run/link.sock")
    );
    unit.start(true);
    unit.link_all_unix();
    let idle = relink_time(&mut unit);
    // Anyone who reaches the port: connections that never send a byte, held open.
    let silent: Vec<std::net::TcpStream> = (0..300)
        .filter_map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).ok())
        .collect();
    let flooded = relink_time(&mut unit);
    println!(
        "secondary linked and registered, idle (the baseline)   {:>6} ms",
        idle.as_millis()
    );
    println!(
        "the same while {} silent TCP connections were opened {:>6} ms ({:.2}x)",
        silent.len(),
        flooded.as_millis(),
        flooded.as_secs_f64() / idle.as_secs_f64()
    );
}
