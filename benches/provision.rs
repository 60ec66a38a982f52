//! `make bench`: provisioning 5 ECDSA P-384 modules with `iam-provision run` against iamd on
//! SoftHSM, against a baseline measured in the same run: the same token initialisation and
//! password verifier (PBKDF2 at iamd's iteration count, derived meanwhile), key generations,
//! token and CA signatures, certificate objects and durable redb commits, done directly with
//! cryptoki, ring, rcgen and redb. Also the stripped static binary's size and iamd's idle
//! RSS, and start to ready against a bare process that binds a Unix socket.
//! Figures, not a pass/fail test.

mod common;
use common::*;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, CertificateType, ObjectClass};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MODULES: usize = 5;
/// Durable commits `run` makes: begin provisioning, per module a pending key and an
/// applied certificate, and the final state.
const COMMITS: usize = 2 + 2 * MODULES;

struct TokenKey<'a> {
    session: &'a Session,
    key: cryptoki::object::ObjectHandle,
    point: Vec<u8>,
}

impl rcgen::PublicKeyData for TokenKey<'_> {
    fn der_bytes(&self) -> &[u8] {
        &self.point
    }
    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P384_SHA384
    }
}

impl rcgen::SigningKey for TokenKey<'_> {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        let digest = ring::digest::digest(&ring::digest::SHA384, msg);
        let raw = self
            .session
            .sign(&Mechanism::Ecdsa, self.key, digest.as_ref())
            .map_err(|_| rcgen::Error::RemoteKeyError)?;
        aos_iam::codec::der::ecdsa_signature(&raw).ok_or(rcgen::Error::RemoteKeyError)
    }
}

/// The same work as `run`, done directly.
fn baseline(dir: &Path, ca_pem: &str, ca_key: &rcgen::KeyPair) -> Duration {
    std::env::set_var("SOFTHSM2_CONF", dir.join("softhsm2.conf"));
    let start = Instant::now();
    let ctx = Pkcs11::new(SOFTHSM).unwrap();
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    let slot = ctx
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| !ctx.get_token_info(*s).unwrap().token_initialized())
        .unwrap();
    let so = AuthPin::from("factory-secret");
    // The password verifier iamd stores (PBKDF2-HMAC-SHA256 at its iteration count),
    // derived while the token is initialised, as StartProvisioning does.
    std::thread::scope(|scope| {
        let derivation = scope.spawn(|| {
            let mut out = [0u8; 32];
            let rounds = std::num::NonZeroU32::new(aos_iam::daemon::provisioning::PBKDF2_ITERATIONS).unwrap();
            ring::pbkdf2::derive(
                ring::pbkdf2::PBKDF2_HMAC_SHA256,
                rounds,
                &[7u8; 16],
                b"factory-secret",
                &mut out,
            );
            out
        });
        ctx.init_token(slot, &so, "bench").unwrap();
        derivation.join().unwrap()
    });
    let slot = ctx.get_slots_with_initialized_token().unwrap()[0];
    let user = AuthPin::from("0123456789abcdef0123456789abcdef");
    {
        let s = ctx.open_rw_session(slot).unwrap();
        s.login(UserType::So, Some(&so)).unwrap();
        s.init_pin(&user).unwrap();
    }
    let session = ctx.open_rw_session(slot).unwrap();
    session.login(UserType::User, Some(&user)).unwrap();
    let db = redb::Database::create(dir.join("work/baseline.db")).unwrap();
    let table: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("t");
    let commit = |k: &str| {
        let txn = db.begin_write().unwrap();
        txn.open_table(table).unwrap().insert(k, &[0u8; 200][..]).unwrap();
        txn.commit().unwrap();
    };
    commit("start");
    let issuer = rcgen::Issuer::from_ca_cert_pem(ca_pem, ca_key).unwrap();
    for i in 0..MODULES {
        let id = vec![i as u8; 16];
        let label = format!("m{i}").into_bytes();
        commit(&format!("pending{i}"));
        let public = [
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Id(id.clone()),
            Attribute::Label(label.clone()),
            Attribute::Verify(true),
            Attribute::EcParams(aos_iam::codec::der::P384_PARAMS.to_vec()),
        ];
        let private = [
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
            Attribute::Id(id.clone()),
            Attribute::Label(label.clone()),
        ];
        let (pubk, key) = session
            .generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private)
            .unwrap();
        let point = match session
            .get_attributes(pubk, &[cryptoki::object::AttributeType::EcPoint])
            .unwrap()
            .pop()
        {
            Some(Attribute::EcPoint(p)) => aos_iam::codec::der::ec_point(&p, 97).to_vec(),
            _ => panic!("no EC point"),
        };
        let token_key = TokenKey {
            session: &session,
            key,
            point,
        };
        let mut params = rcgen::CertificateParams::new(vec![format!("m{i}.local")]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("m{i}"));
        let csr = params.serialize_request(&token_key).unwrap();
        let csr = rcgen::CertificateSigningRequestParams::from_der(csr.der()).unwrap();
        let cert = csr.signed_by(&issuer).unwrap();
        let f = aos_iam::pki::x509::fields(cert.der()).unwrap();
        let subject = {
            use x509_parser::prelude::FromDer;
            x509_parser::certificate::X509Certificate::from_der(cert.der())
                .unwrap()
                .1
                .tbs_certificate
                .subject
                .as_raw()
                .to_vec()
        };
        session
            .create_object(&[
                Attribute::Class(ObjectClass::CERTIFICATE),
                Attribute::CertificateType(CertificateType::X_509),
                Attribute::Token(true),
                Attribute::Id(id),
                Attribute::Label(label),
                Attribute::Subject(subject),
                Attribute::Issuer(f.issuer_der),
                Attribute::SerialNumber(aos_iam::codec::der::unsigned_integer(&f.serial)),
                Attribute::Value(cert.der().to_vec()),
            ])
            .unwrap();
        commit(&format!("cert{i}"));
    }
    commit("finish");
    let elapsed = start.elapsed();
    assert_eq!(COMMITS, 2 + 2 * MODULES);
    drop(session);
    drop(ctx);
    elapsed
}

fn config(dir: &Path) -> String {
    let d = dir.display();
    let mut c = format!(
        "[node]\nid = \"bench-node\"\n[paths]\nworking_dir = \"{d}/work\"\nroot_ca = \"{d}/../ca.pem\"\n\
         public_socket = \"{d}/run/public.sock\"\nprotected_socket = \"{d}/run/protected.sock\"\n"
    );
    for i in 0..MODULES {
        c.push_str(&format!(
            "[[modules]]\nid = \"m{i}\"\nalgorithm = \"ecdsa-p384\"\nalt_names = [\"bench-node.m{i}.local\"]\n\
             [modules.pkcs11]\nlibrary = \"{SOFTHSM}\"\ntoken_label = \"bench\"\nuser_pin_file = \"{d}/work/pin\"\n"
        ));
    }
    c
}

fn start_iamd(bin: &Path, dir: &Path, provisioning: bool) -> std::process::Child {
    std::fs::write(dir.join("config.toml"), config(dir)).unwrap();
    let mut cmd = Command::new(bin);
    cmd.arg("iamd")
        .arg("-c")
        .arg(dir.join("config.toml"))
        .env("SOFTHSM2_CONF", dir.join("softhsm2.conf"));
    if provisioning {
        cmd.arg("--provisioning");
    }
    let mut child = cmd.stdin(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let sock = dir.join("run/protected.sock");
    let t = Instant::now();
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(child.try_wait().unwrap().is_none(), "iamd exited");
        assert!(t.elapsed() < Duration::from_secs(20), "iamd did not start");
        std::thread::sleep(Duration::from_millis(5));
    }
    child
}

fn flow(bin: &Path, root: &Path, dir: &Path) -> Duration {
    let iamd = start_iamd(bin, dir, true);
    std::fs::write(dir.join("password"), "factory-secret\n").unwrap();
    let elapsed = provision_run(bin, root, dir, &[], &[]);
    stop(iamd);
    elapsed
}

/// How long from spawn until `READY=1` reaches `NOTIFY_SOCKET`, until the public socket
/// accepts a connection, and until iamd's start-up recovery is done (the key stores opened
/// and reconciled: where an eager start would only then listen; the bare process: when it
/// accepts), for one start of `cmd`.
fn start_to_ready(mut cmd: Command, dir: &Path, socket: &Path) -> (Duration, Duration, Duration) {
    let notify = dir.join("notify.sock");
    let _ = std::fs::remove_file(&notify);
    let _ = std::fs::remove_file(socket);
    let listener = std::os::unix::net::UnixDatagram::bind(&notify).unwrap();
    listener.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let t = Instant::now();
    let mut child = cmd
        .env("NOTIFY_SOCKET", &notify)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr).lines().map_while(|l| l.ok()) {
            if line.contains("start-up recovery done") {
                let _ = tx.send(t.elapsed());
            }
        }
    });
    let mut accepting = None;
    let mut ready = None;
    listener.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 512];
    while accepting.is_none() || ready.is_none() {
        assert!(t.elapsed() < Duration::from_secs(20), "no start");
        if accepting.is_none() && std::os::unix::net::UnixStream::connect(socket).is_ok() {
            accepting = Some(t.elapsed());
        }
        if let Ok(n) = listener.recv(&mut buf) {
            if String::from_utf8_lossy(&buf[..n]).lines().any(|l| l == "READY=1") {
                ready = Some(t.elapsed());
            }
        }
        std::hint::spin_loop();
    }
    let bare = cmd.get_args().next().is_none();
    let recovered = match bare {
        true => accepting.unwrap(),
        false => rx.recv_timeout(Duration::from_secs(20)).expect("no start-up recovery"),
    };
    stop(child.try_wait().unwrap().map_or(child, |_| panic!("exited")));
    (ready.unwrap(), accepting.unwrap(), recovered)
}

fn main() {
    // Re-run as the baseline of a start: a bare process that binds a Unix socket, says
    // READY=1 and waits.
    if let Ok(path) = std::env::var("AOS_IAM_BENCH_BIND") {
        let _l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        if let Ok(n) = std::env::var("NOTIFY_SOCKET") {
            let s = std::os::unix::net::UnixDatagram::unbound().unwrap();
            let _ = s.send_to(b"READY=1", n);
        }
        std::thread::sleep(Duration::from_secs(60));
        return;
    }
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let bin = binary();
    // PBKDF2 is most of both sides, and its time on a shared 2-core machine varies by a
    // third from round to round: 15 rounds keep the median ratio within a few hundredths.
    let rounds: usize = env_number("BENCH_ROUNDS", 15);
    let root = std::env::temp_dir().join(format!("aos-iam-bench-{}", std::process::id()));
    std::fs::create_dir_all(&root).unwrap();
    let (ca_pem, ca_key) = make_ca(&root);

    let (mut base, mut ours) = (Vec::new(), Vec::new());
    for round in 0..=rounds {
        // Alternate the order so that neither side always runs on a warmer cache.
        let (b, o) = if round % 2 == 0 {
            let b = baseline(&fresh_dir(&root, "b"), &ca_pem, &ca_key);
            (b, flow(&bin, &root, &fresh_dir(&root, "o")))
        } else {
            let o = flow(&bin, &root, &fresh_dir(&root, "o"));
            (baseline(&fresh_dir(&root, "b"), &ca_pem, &ca_key), o)
        };
        if round > 0 {
            base.push(b);
            ours.push(o);
        }
    }
    let (b, o) = (median(base.clone()), median(ours.clone()));
    println!("provisioning {MODULES} ECDSA P-384 modules on SoftHSM, median of {rounds} rounds (1 warm-up):");
    println!(
        "  baseline (cryptoki + ring PBKDF2 + rcgen + redb, {COMMITS} durable commits): {:8.1} ms",
        ms(b)
    );
    println!(
        "  iam-provision run against iamd:                                        {:8.1} ms",
        ms(o)
    );
    // Each round's pair ran back to back, so its ratio is the least affected by drift.
    let mut paired: Vec<f64> = base
        .iter()
        .zip(&ours)
        .map(|(b, o)| o.as_secs_f64() / b.as_secs_f64())
        .collect();
    paired.sort_by(f64::total_cmp);
    println!(
        "  ratio run / baseline: {:.2} (target <= 1.10); median of the rounds' own ratios {:.2}",
        o.as_secs_f64() / b.as_secs_f64(),
        paired[paired.len() / 2]
    );
    println!(
        "  per round, baseline: {:?} ms",
        base.iter().map(|d| ms(*d).round()).collect::<Vec<_>>()
    );
    println!(
        "  per round, run:      {:?} ms",
        ours.iter().map(|d| ms(*d).round()).collect::<Vec<_>>()
    );

    // Idle RSS of iamd in normal mode on the provisioned node, with what it is made of.
    let dir = root.join("o");
    let iamd = start_iamd(&bin, &dir, false);
    std::thread::sleep(Duration::from_millis(500));
    let rss = Rss::of(iamd.id(), &bin);
    stop(iamd);
    println!(
        "iamd idle RSS (normal mode, provisioned, {MODULES} modules on SoftHSM): {:.2} MiB (target <= 4 MiB)\n  \
         of which: anonymous {:.2} MiB, aos-iam binary {:.2} MiB, the PKCS#11 module and the libraries only it loads \
         (libsofthsm2, libcrypto, libstdc++, libgcc_s) {:.2} MiB, libc/libm/ld.so {:.2} MiB",
        mib(rss.total),
        mib(rss.anon),
        mib(rss.binary),
        mib(rss.module),
        mib(rss.total - rss.anon - rss.binary - rss.module)
    );

    // Start to ready, normal mode on the provisioned node, against a bare process that binds
    // a Unix socket, both measured here: READY=1 received, and the socket accepting.
    std::fs::write(dir.join("config.toml"), config(&dir)).unwrap();
    let (mut bare, mut ours) = (Vec::new(), Vec::new());
    let sock = dir.join("run/public.sock");
    for _ in 0..15 {
        let mut b = Command::new(std::env::current_exe().unwrap());
        b.env("AOS_IAM_BENCH_BIND", &sock);
        bare.push(start_to_ready(b, &dir, &sock));
        let mut c = Command::new(&bin);
        c.arg("iamd")
            .arg("-c")
            .arg(dir.join("config.toml"))
            .arg("-v")
            .env("SOFTHSM2_CONF", dir.join("softhsm2.conf"));
        ours.push(start_to_ready(c, &dir, &sock));
    }
    type Start = (Duration, Duration, Duration);
    let med = |v: &[Start], f: fn(&Start) -> Duration| median(v.iter().map(f).collect());
    let (br, ba) = (med(&bare, |x| x.0), med(&bare, |x| x.1));
    let (or, oa, orec) = (med(&ours, |x| x.0), med(&ours, |x| x.1), med(&ours, |x| x.2));
    println!("start to ready, normal mode, provisioned, {MODULES} modules on SoftHSM (median of 15):");
    println!(
        "  a bare process binding a Unix socket: READY=1 {:6.1} ms, accepting {:6.1} ms",
        ms(br),
        ms(ba)
    );
    println!(
        "  iamd:                                 READY=1 {:6.1} ms, accepting {:6.1} ms ({:.1}x and {:.1}x the bare process)",
        ms(or),
        ms(oa),
        or.as_secs_f64() / br.as_secs_f64(),
        oa.as_secs_f64() / ba.as_secs_f64()
    );
    println!(
        "  iamd, the stores opened and reconciled (where an eager start would accept): {:6.1} ms ({:.1}x the bare process; accepting is {:.2}x this)",
        ms(orec),
        orec.as_secs_f64() / ba.as_secs_f64(),
        oa.as_secs_f64() / orec.as_secs_f64()
    );

    if let Ok(stripped) = std::env::var("AOS_IAM_STATIC_STRIPPED") {
        let size = std::fs::metadata(&stripped).map(|m| m.len()).unwrap_or(0);
        println!(
            "static binary, stripped: {:.2} MiB ({size} bytes, target <= 3 MiB)",
            size as f64 / 1048576.0
        );
    }
    let _ = std::fs::remove_dir_all(&root);
}
