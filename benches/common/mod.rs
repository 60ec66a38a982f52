//! What the benchmarks share: fresh SoftHSM directories, a CA, stopping iamd, resident
//! memory by mapping, medians.
#![allow(dead_code)]

use aos_iam::proto::wire::{self, FrameKind, NodeInfo, NodeState, Request, Role};
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The aos-iam binary a benchmark drives: `AOS_IAM_BIN`, or the release build.
pub fn binary() -> PathBuf {
    let bin = PathBuf::from(std::env::var("AOS_IAM_BIN").unwrap_or_else(|_| "target/release/aos-iam".into()));
    std::fs::canonicalize(&bin).unwrap_or_else(|e| panic!("{}: {e} (build it first: make bench)", bin.display()))
}

/// A whole number from the environment, or `default`.
pub fn env_number<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// `iam-provision -s DIR/run/protected.sock NODE_ARGS run RUN_ARGS` with the CA in `root`
/// and the password file in `dir`; how long it took. Panics if it fails.
pub fn provision_run(bin: &Path, root: &Path, dir: &Path, node_args: &[&str], run_args: &[&str]) -> Duration {
    let t = std::time::Instant::now();
    let out = std::process::Command::new(bin)
        .args(["iam-provision", "-s"])
        .arg(dir.join("run/protected.sock"))
        .args(node_args)
        .arg("run")
        .args(run_args)
        .arg("--ca-cert")
        .arg(root.join("ca.pem"))
        .arg("--ca-key")
        .arg(root.join("ca.key"))
        .arg("--password-file")
        .arg(dir.join("password"))
        .output()
        .unwrap();
    let elapsed = t.elapsed();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    elapsed
}

pub const SOFTHSM: &str = "/usr/lib/softhsm/libsofthsm2.so";

pub fn fresh_dir(root: &Path, name: &str) -> PathBuf {
    let d = root.join(name);
    let _ = std::fs::remove_dir_all(&d);
    for sub in ["tokens", "work", "run"] {
        std::fs::create_dir_all(d.join(sub)).unwrap();
    }
    std::fs::write(
        d.join("softhsm2.conf"),
        format!(
            "directories.tokendir = {}/tokens\nobjectstore.backend = file\nlog.level = ERROR\n",
            d.display()
        ),
    )
    .unwrap();
    d
}

pub fn make_ca(root: &Path) -> (String, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(rcgen::DnType::CommonName, "bench root");
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    p.key_identifier_method = rcgen::KeyIdMethod::Sha256;
    let cert = p.self_signed(&key).unwrap();
    std::fs::write(root.join("ca.pem"), cert.pem()).unwrap();
    std::fs::write(root.join("ca.key"), key.serialize_pem()).unwrap();
    (cert.pem(), key)
}

pub fn stop(mut child: std::process::Child) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
}

/// Resident memory of a process by mapping, in KiB.
pub struct Rss {
    pub total: u64,
    pub anon: u64,
    pub binary: u64,
    pub module: u64,
}

impl Rss {
    pub fn of(pid: u32, bin: &Path) -> Rss {
        let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
        let bin = bin.display().to_string();
        let (mut r, mut name) = (
            Rss {
                total: 0,
                anon: 0,
                binary: 0,
                module: 0,
            },
            String::new(),
        );
        for line in smaps.lines() {
            let first = line.split_whitespace().next().unwrap_or("");
            if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
                name = line.split_whitespace().nth(5).unwrap_or("").to_string();
            } else if let Some(v) = line.strip_prefix("Rss:") {
                let kib: u64 = v.trim().trim_end_matches("kB").trim().parse().unwrap();
                r.total += kib;
                if name.is_empty() || name.starts_with('[') {
                    r.anon += kib;
                } else if name == bin {
                    r.binary += kib;
                } else if ["libsofthsm2", "libcrypto", "libstdc++", "libgcc_s"]
                    .iter()
                    .any(|l| name.contains(l))
                {
                    r.module += kib;
                }
            }
        }
        r
    }
}

pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A link that says hello and registers a node, then stays idle.
pub fn idle_link(main: &Path, i: usize) -> UnixStream {
    let mut s = UnixStream::connect(main.join("run/link.sock")).unwrap();
    let id = format!("bench-idle-{i}");
    let hello = Request::Hello {
        version: aos_iam::PROTOCOL_VERSION,
        min_version: aos_iam::MIN_PROTOCOL_VERSION,
        role: Role::NodeLink,
        node_id: id.clone(),
    };
    let info = NodeInfo {
        node_id: id.clone(),
        node_type: "secondary".into(),
        name: id,
        state: NodeState::Unprovisioned,
        cpus: vec![],
        total_ram: 0,
        partitions: vec![],
        os_name: "bench".into(),
        os_version: "1".into(),
        attributes: vec![],
        connected: true,
    };
    for (n, r) in [(0, hello), (1, Request::RegisterNode { info })] {
        s.write_all(&wire::encode_frame(FrameKind::Request, n, &r, wire::DEFAULT_BODY_LIMIT).unwrap())
            .unwrap();
        let (h, _) = aos_iam::proto::transport::read_frame_blocking(&mut s, wire::DEFAULT_BODY_LIMIT)
            .unwrap()
            .unwrap();
        assert_eq!(h.kind, FrameKind::Response, "link {i} refused");
    }
    s
}
