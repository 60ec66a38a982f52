//! The power-loss harness (`make crash-test RUNS=N`): kill -9 at random moments — of iamd,
//! of iam-provision, of iam-nodelink — during single-node provisioning, whole-unit
//! provisioning, renewals and zero-touch enrollment, on SoftHSM; then restart what was killed, run the same
//! command again, and check the state: provisioned, exactly the token objects the records
//! name (no orphan key, no lost certificate), and a database that opens cleanly (iamd
//! restarted out of provisioning mode serves the same). `RUNS` (default 5) per kind;
//! `CRASH_SEED` replays a sequence. Ignored by plain `cargo test`: `make crash-test` runs it.

mod common;
use common::*;
use std::process::Child;
use std::time::{Duration, Instant};

struct Rng(u64);
impl Rng {
    fn new(kind: &str) -> Rng {
        let seed = std::env::var("CRASH_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("crash-test {kind}: CRASH_SEED={seed}");
        Rng(seed | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// A moment in `0..window`.
    fn moment(&mut self, window: Duration) -> Duration {
        window.mul_f64((self.next() % 10_000) as f64 / 10_000.0)
    }
    fn pick(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn runs() -> usize {
    std::env::var("RUNS").ok().and_then(|s| s.parse().ok()).unwrap_or(5)
}

/// Wait for a background applet; its exit code (None: killed by a signal).
fn finish(child: Child) -> Option<i32> {
    child.wait_with_output().unwrap().status.code()
}

/// The cut: after `at`, kill -9 iamd (restarted then, in provisioning mode or not) or the
/// client; returns the client's exit code (None: killed).
fn cut(node: &mut Node, mut client: Child, at: Duration, kill_iamd: bool, provisioning: bool) -> Option<i32> {
    std::thread::sleep(at);
    if kill_iamd {
        node.kill9();
    } else {
        let _ = client.kill();
    }
    let first = finish(client);
    if kill_iamd {
        node.start(provisioning);
    }
    first
}

/// The run's outcome per node is fine if the node is provisioned now, whether by this run
/// or by the one that was cut off (a provisioned node refuses `run`: wrong_state).
#[track_caller]
fn assert_rerun_converged(out: &Out, nodes: &[&Node]) {
    for n in nodes {
        let st = n.status();
        assert_eq!(st["state"], "provisioned", "{st}\nre-run: {}{}", out.stdout, out.stderr);
    }
    if out.code != 0 {
        let v = out.json();
        let errors: Vec<&serde_json::Value> = match v["nodes"].as_array() {
            Some(ns) => ns.iter().filter(|n| n["ok"] == false).map(|n| &n["error"]).collect(),
            None => vec![&v["error"]],
        };
        for e in errors {
            assert_eq!(
                e["kind"], "wrong_state",
                "only 'already provisioned' may fail the re-run: {v}"
            );
        }
    }
}

fn summary(kind: &str, lines: &[String]) {
    eprintln!("crash-test {kind}: {} runs", lines.len());
    for l in lines {
        eprintln!("  {l}");
    }
}

#[test]
#[ignore = "random kill -9 runs: `make crash-test` runs them (and `make test` a few)"]
fn iamd_killed_at_random_during_single_node_provisioning() {
    single_node("iamd");
}

#[test]
#[ignore = "random kill -9 runs: `make crash-test` runs them (and `make test` a few)"]
fn iam_provision_killed_at_random_during_single_node_provisioning() {
    single_node("iam-provision");
}

fn single_node(victim: &str) {
    let mut rng = Rng::new(victim);
    // A clean run's duration is the window the kills are drawn from.
    let window = {
        let mut n = Node::new("crash-window", Store::Pkcs11);
        n.start(true);
        let t = Instant::now();
        n.run_flow().ok();
        t.elapsed()
    };
    let mut lines = Vec::new();
    for run in 0..runs() {
        let mut node = Node::new(&format!("crash-{victim}-{run}"), Store::Pkcs11);
        node.start(true);
        let mut args = vec!["-s".to_string(), node.protected()];
        args.extend(node.run_flow_args(None, &[]));
        let client = node.spawn_applet("iam-provision", &args);
        let at = rng.moment(window);
        let first = cut(&mut node, client, at, victim == "iamd", true);
        let again = node.run_flow();
        assert_rerun_converged(&again, &[&node]);
        assert_converged(&node);
        node.stop();
        node.start(false);
        assert_converged(&node);
        lines.push(format!(
            "run {run}: {victim} killed at {} ms of {} ms (first run exit {first:?}): converged",
            at.as_millis(),
            window.as_millis()
        ));
    }
    summary(&format!("single node, {victim}"), &lines);
}

#[test]
#[ignore = "random kill -9 runs: `make crash-test` runs them (and `make test` a few)"]
fn a_process_of_the_unit_killed_at_random_during_whole_unit_provisioning() {
    let mut rng = Rng::new("unit");
    let start_unit = |name: &str| {
        let mut unit = Unit::new(name, 2);
        unit.start(true);
        unit.link_all_unix();
        unit
    };
    let all = ["--expect-nodes", "3", "--wait", "30"];
    let window = {
        let unit = start_unit("crash-uw");
        let t = Instant::now();
        unit.run_all(&all).ok();
        t.elapsed()
    };
    let victims = ["main iamd", "secondary iamd", "iam-nodelink", "iam-provision"];
    let mut lines = Vec::new();
    for run in 0..runs() {
        let mut unit = start_unit(&format!("crash-u{run}"));
        let victim = victims[rng.pick(victims.len())];
        let which = rng.pick(2);
        let mut args = vec!["-s".to_string(), unit.main.protected()];
        args.extend(unit.main.run_flow_args(Some("all"), &all));
        let mut client = unit.main.spawn_applet("iam-provision", &args);
        let at = rng.moment(window);
        std::thread::sleep(at);
        match victim {
            "main iamd" => unit.main.kill9(),
            "secondary iamd" => unit.secondaries[which].kill9(),
            "iam-nodelink" => unit.kill_link(which),
            _ => {
                let _ = client.kill();
            }
        }
        let first = finish(client);
        match victim {
            "main iamd" => unit.main.start(true),
            "secondary iamd" => unit.secondaries[which].start(true),
            "iam-nodelink" => unit.link_unix(which),
            _ => {}
        }
        let again = unit.run_all(&all);
        let nodes: Vec<&Node> = std::iter::once(&unit.main).chain(unit.secondaries.iter()).collect();
        assert_rerun_converged(&again, &nodes);
        for n in &nodes {
            assert_converged(n);
        }
        unit.main.stop();
        unit.main.start(false);
        assert_converged(&unit.main);
        lines.push(format!(
            "run {run}: {victim}{} killed at {} ms of {} ms (first run exit {first:?}): every node converged",
            if victim.contains("secondary") || victim == "iam-nodelink" {
                format!(" #{which}")
            } else {
                String::new()
            },
            at.as_millis(),
            window.as_millis()
        ));
    }
    summary("whole unit", &lines);
}

#[test]
#[ignore = "random kill -9 runs: `make crash-test` runs them (and `make test` a few)"]
fn iamd_or_iam_certctl_killed_at_random_during_a_renewal() {
    let mut rng = Rng::new("renewal");
    let renew_args = |node: &Node| -> Vec<String> {
        let mut a: Vec<String> = ["-s", &node.protected(), "--json", "renew", "iam", "--ca-cert"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        a.extend([node.p("ca.pem"), "--ca-key".into(), node.p("ca.key")]);
        a.extend(["--password-file".into(), node.p("password")]);
        a
    };
    let window = {
        let node = Node::provisioned("crash-rw");
        let t = Instant::now();
        let out = node.spawn_applet("iam-certctl", &renew_args(&node));
        assert_eq!(finish(out), Some(0));
        t.elapsed()
    };
    let mut lines = Vec::new();
    for run in 0..runs() {
        let mut node = Node::provisioned(&format!("crash-r{run}"));
        let victim = if rng.pick(2) == 0 { "iamd" } else { "iam-certctl" };
        let client = node.spawn_applet("iam-certctl", &renew_args(&node));
        let at = rng.moment(window);
        let first = cut(&mut node, client, at, victim == "iamd", false);
        let again = node.spawn_applet("iam-certctl", &renew_args(&node));
        assert_eq!(finish(again), Some(0), "the renewal run again succeeds");
        // max_items 2 for iam: the first certificate and a renewed one, whether the cut-off
        // renewal had finished or not; nothing pending, nothing orphaned.
        assert_store_matches(&node, &[("iam", 2)]);
        node.stop();
        node.start(false);
        assert_store_matches(&node, &[("iam", 2)]);
        lines.push(format!(
            "run {run}: {victim} killed at {} ms of {} ms (first renewal exit {first:?}): converged",
            at.as_millis(),
            window.as_millis()
        ));
    }
    summary("renewal", &lines);
}

#[test]
#[ignore = "random kill -9 runs: `make crash-test` runs them (and `make test` a few)"]
fn iamd_killed_at_random_during_zero_touch_enrollment() {
    use common::enrollment::*;
    let mut rng = Rng::new("enrollment");
    // A clean enrollment's duration, from the first power-on to operational.
    let window = {
        let (mut node, server) = site("crash-ew", "");
        factory(&mut node, &server, None);
        let t = Instant::now();
        node.start(false);
        wait_state(&node, "operational");
        t.elapsed()
    };
    let mut lines = Vec::new();
    for run in 0..runs() {
        let (mut node, server) = site(&format!("crash-e{run}"), "attempts = 20\n");
        factory(&mut node, &server, None);
        // Up to three power cuts in one enrollment, each at a random moment.
        let cuts = 1 + rng.pick(3);
        let mut at = Vec::new();
        for _ in 0..cuts {
            node.start(false);
            let t = rng.moment(window);
            std::thread::sleep(t);
            node.kill9();
            at.push(t.as_millis());
        }
        node.start(false);
        let s = wait_state(&node, "operational");
        assert_eq!(s["enrollment"]["enrolled"], serde_json::json!(["iam", "online"]), "{s}");
        assert_converged(&node);
        node.stop();
        node.start(false);
        assert_converged(&node);
        lines.push(format!(
            "run {run}: iamd killed at {at:?} ms of {} ms, then restarted: converged",
            window.as_millis()
        ));
        drop(server);
    }
    summary("enrollment", &lines);
}
