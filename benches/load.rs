//! `make load`: iamd under load for `LOAD_SECONDS` (default 60): 1 000 concurrent clients
//! doing GetCert on the public socket, 100 subscribers to certificate changes, and 64 node
//! links held open, on a provisioned main node with a SoftHSM token. Reports requests,
//! failures, p50/p99 latency and iamd's RSS; a report, not a pass/fail test.

mod common;
use aos_iam::proto::wire::{self, FrameKind, Request, Role};
use common::*;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CLIENTS: usize = 1000;
const SUBSCRIBERS: usize = 100;
const LINKS: usize = 64;

fn config(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "[node]\nid = \"load-main\"\n[paths]\nworking_dir = \"{d}/work\"\nroot_ca = \"{d}/../ca.pem\"\n\
         public_socket = \"{d}/run/public.sock\"\nprotected_socket = \"{d}/run/protected.sock\"\n\
         [limits]\nmax_connections = 2048\n[links]\ntls = \"off\"\nlisten = [\"unix:{d}/run/link.sock\"]\n\
         [[modules]]\nid = \"iam\"\nextended_key_usage = [\"clientAuth\", \"serverAuth\"]\n[modules.pkcs11]\n\
         library = \"{SOFTHSM}\"\ntoken_label = \"load\"\nuser_pin_file = \"{d}/work/pin\"\n"
    )
}

fn connect(path: &Path) -> UnixStream {
    let mut s = UnixStream::connect(path).unwrap();
    let hello = Request::Hello {
        version: aos_iam::PROTOCOL_VERSION,
        min_version: aos_iam::MIN_PROTOCOL_VERSION,
        role: Role::Client,
        node_id: String::new(),
    };
    s.write_all(&wire::encode_frame(FrameKind::Request, 1, &hello, wire::DEFAULT_BODY_LIMIT).unwrap())
        .unwrap();
    aos_iam::proto::transport::read_frame_blocking(&mut s, wire::DEFAULT_BODY_LIMIT)
        .unwrap()
        .unwrap();
    s
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let bin = binary();
    let seconds: u64 = std::env::var("LOAD_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let root = std::env::temp_dir().join(format!("aos-iam-load-{}", std::process::id()));
    std::fs::create_dir_all(&root).unwrap();
    make_ca(&root);
    let dir = fresh_dir(&root, "main");
    std::fs::write(dir.join("config.toml"), config(&dir)).unwrap();
    std::fs::write(dir.join("password"), "factory-secret\n").unwrap();
    let iamd_cmd = |provisioning: bool| {
        let mut c = Command::new(&bin);
        c.args(["iamd", "-c"])
            .arg(dir.join("config.toml"))
            .env("SOFTHSM2_CONF", dir.join("softhsm2.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if provisioning {
            c.arg("--provisioning");
        }
        let child = c.spawn().unwrap();
        let t = Instant::now();
        while UnixStream::connect(dir.join("run/public.sock")).is_err() {
            assert!(t.elapsed() < Duration::from_secs(20), "iamd did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        child
    };
    let iamd = iamd_cmd(true);
    provision_run(&bin, &root, &dir, &[], &[]);
    stop(iamd);
    let iamd = iamd_cmd(false);
    let pid = iamd.id();
    let idle_rss = Rss::of(pid, &bin);

    let links: Vec<UnixStream> = (0..LINKS).map(|i| idle_link(&dir, i)).collect();
    let public = dir.join("run/public.sock");
    let subscribers: Vec<UnixStream> = (0..SUBSCRIBERS)
        .map(|_| {
            let mut s = connect(&public);
            let r = Request::SubscribeCertChanged {
                cert_type: "iam".into(),
            };
            s.write_all(&wire::encode_frame(FrameKind::Request, 2, &r, wire::DEFAULT_BODY_LIMIT).unwrap())
                .unwrap();
            aos_iam::proto::transport::read_frame_blocking(&mut s, wire::DEFAULT_BODY_LIMIT)
                .unwrap()
                .unwrap();
            s
        })
        .collect();

    let deadline = Instant::now() + Duration::from_secs(seconds);
    let failures = Arc::new(AtomicU64::new(0));
    let peak = Arc::new(AtomicU64::new(0));
    let peak_anon = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (peak, peak_anon, bin) = (peak.clone(), peak_anon.clone(), bin.clone());
        std::thread::spawn(move || {
            while Instant::now() < deadline {
                let r = Rss::of(pid, &bin);
                peak.fetch_max(r.total, Ordering::Relaxed);
                peak_anon.fetch_max(r.anon, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(500));
            }
        })
    };
    let started = Instant::now();
    let threads: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (public, failures) = (public.clone(), failures.clone());
            std::thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(move || {
                    let mut lat = Vec::new();
                    let mut s = connect(&public);
                    let mut id = 2u64;
                    let get = Request::GetCert {
                        cert_type: "iam".into(),
                        issuer: None,
                        serial: None,
                    };
                    while Instant::now() < deadline {
                        let t = Instant::now();
                        let ok = s
                            .write_all(
                                &wire::encode_frame(FrameKind::Request, id, &get, wire::DEFAULT_BODY_LIMIT).unwrap(),
                            )
                            .is_ok()
                            && matches!(
                                aos_iam::proto::transport::read_frame_blocking(&mut s, wire::DEFAULT_BODY_LIMIT),
                                Ok(Some((h, _))) if h.kind == FrameKind::Response && h.id == id
                            );
                        lat.push(t.elapsed());
                        if !ok {
                            failures.fetch_add(1, Ordering::Relaxed);
                            s = connect(&public);
                        }
                        id += 1;
                    }
                    lat
                })
                .unwrap()
        })
        .collect();
    let mut all: Vec<Duration> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    let elapsed = started.elapsed();
    sampler.join().unwrap();
    all.sort();
    let pct = |p: f64| all[((all.len() as f64 - 1.0) * p).round() as usize];
    let end_rss = Rss::of(pid, &bin);
    println!(
        "load for {seconds} s: {CLIENTS} clients doing GetCert on the public socket, {SUBSCRIBERS} subscribers, {LINKS} node links"
    );
    println!(
        "  requests {} ({:.0}/s), failed {}",
        all.len(),
        all.len() as f64 / elapsed.as_secs_f64(),
        failures.load(Ordering::Relaxed)
    );
    println!(
        "  latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(pct(0.5)),
        ms(pct(0.99)),
        ms(*all.last().unwrap())
    );
    println!(
        "  iamd RSS: idle {:.2} MiB, peak under load {:.2} MiB, after {:.2} MiB (target <= 16 MiB)",
        mib(idle_rss.total),
        mib(peak.load(Ordering::Relaxed)),
        mib(end_rss.total)
    );
    // What is iamd's own (heap, stacks) and what is shared file pages: the binary, and the
    // PKCS#11 module with OpenSSL and libstdc++ under it.
    println!(
        "  of which anonymous (iamd's heap and stacks): idle {:.2} MiB, peak {:.2} MiB; the binary {:.2} MiB, \
         the PKCS#11 module and its libraries {:.2} MiB, the rest (libc...) {:.2} MiB (idle)",
        mib(idle_rss.anon),
        mib(peak_anon.load(Ordering::Relaxed)),
        mib(idle_rss.binary),
        mib(idle_rss.module),
        mib(idle_rss.total - idle_rss.anon - idle_rss.binary - idle_rss.module)
    );
    drop((links, subscribers));
    stop(iamd);
    let _ = std::fs::remove_dir_all(&root);
}
