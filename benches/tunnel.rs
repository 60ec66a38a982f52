//! `make bench`, a secondary's own EST re-enrollment (`RenewNow`: a new key in its SoftHSM
//! token, `/simplereenroll` over mutual TLS, the chain validated and applied) through the
//! tunnel of its link to the main node, against the same secondary setup reaching the EST
//! server directly (the baseline, measured in the same run, rounds interleaved). Both
//! secondaries enrolled by themselves at first power-on first. Figures, not pass/fail.
//! Needs root (the secondary without a network runs under `unshare -n`).

#[path = "../tests/common/mod.rs"]
mod harness;
use aos_iam::proto::client::Client;
use aos_iam::proto::wire::{Request, Response};
use harness::enrollment::*;
use harness::*;
use std::time::Instant;

const ROUNDS: usize = 31;

fn renew_now(node: &Node) -> u128 {
    let mut c = Client::connect(&node.path("run/protected.sock")).unwrap();
    let t = Instant::now();
    match c.call(Request::RenewNow {
        node_id: String::new(),
        cert_type: "iam".into(),
    }) {
        Ok(Response::Applied(_)) => {}
        r => panic!("RenewNow answered {r:?}"),
    }
    t.elapsed().as_micros()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let mut units = Vec::new();
    for (name, through_link) in [("bench-direct", false), ("bench-tunnel", true)] {
        let (mut unit, server) = enrollment_unit(name, &[], through_link);
        let est = est_endpoint(&server);
        set_endpoints(&mut unit, &[&est]);
        unit.main.start(false);
        unit.secondaries[0].start(false);
        unit.link_unix(0);
        wait_state(&unit.secondaries[0], "operational");
        units.push((unit, server));
    }
    let mut times = [Vec::new(), Vec::new()];
    for _ in 0..ROUNDS {
        for (i, (unit, _)) in units.iter().enumerate() {
            times[i].push(renew_now(&unit.secondaries[0]));
        }
    }
    for t in &mut times {
        t.sort_unstable();
    }
    let p50 = |t: &Vec<u128>| t[t.len() / 2];
    let (direct, tunnel) = (p50(&times[0]), p50(&times[1]));
    println!("EST re-enrollment (RenewNow), {ROUNDS} rounds each, p50:");
    println!("  direct                                   {:>8} us (1.00x)", direct);
    println!(
        "  through the main node's tunnel           {:>8} us ({:.2}x)",
        tunnel,
        tunnel as f64 / direct as f64
    );
}
