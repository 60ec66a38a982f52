//! EST (RFC 7030) end to end against the EST test server of tests/common/est.rs, which
//! signs with the node's real CA: enrollment by basic auth (`iam-certctl renew --est`),
//! re-enrollment by iamd over mutual TLS with the token key, `/cacerts`, and the refusals.

mod common;
use common::est::{Answer, EstServer, Mode};
use common::*;

const EST_USER: &str = "node-enroll";
const EST_PASSWORD: &str = "est-secret";

fn provisioned(name: &str, configure: impl FnOnce(&mut Node)) -> Node {
    let mut node = Node::new(name, Store::Pkcs11);
    configure(&mut node);
    node.start(true);
    node.run_flow().ok();
    node.stop();
    node.start(false);
    std::fs::write(node.path("est-password"), format!("{EST_PASSWORD}\n")).unwrap();
    node
}

/// `iam-certctl renew iam --est URL --est-anchor ANCHOR AUTH...`
fn est_renew_with(node: &Node, url: &str, anchor: &str, auth: &[&str]) -> Out {
    let (sock, pw) = (node.protected(), node.p("password"));
    let mut args = vec![
        "-s",
        &sock,
        "--json",
        "renew",
        "iam",
        "--password-file",
        &pw,
        "--est",
        url,
        "--est-anchor",
        anchor,
    ];
    args.extend_from_slice(auth);
    node.applet("iam-certctl", &args, None)
}

/// Enrollment by basic auth with the password in `password_file`.
fn est_renew(node: &Node, url: &str, password_file: &str, anchor: &str) -> Out {
    est_renew_with(
        node,
        url,
        anchor,
        &["--est-user", EST_USER, "--est-password-file", password_file],
    )
}

fn iam_serials(node: &Node) -> Vec<String> {
    node.list_certs()
        .into_iter()
        .filter(|c| c["type"] == "iam")
        .map(|c| c["serial"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn est_enrollment_by_basic_auth_then_reenrollment_by_iamd_with_its_token_key() {
    let mut est = None;
    let node = provisioned("est", |n| {
        // iam last, so that [modules.renew] belongs to it; the server is started first to
        // know its URL.
        n.modules.rotate_left(1);
        let server = EstServer::start(&n.dir, EST_USER, EST_PASSWORD);
        n.extra_config = format!(
            "[modules.renew]\nmethod = \"est\"\nthreshold = \"50%\"\nretry = \"1s\"\njitter = \"0%\"\n\
             [modules.renew.est]\nurl = \"{}\"\nanchor = \"{}\"\n",
            server.url,
            server.anchor.display()
        );
        est = Some(server);
    });
    let server = est.unwrap();
    // /cacerts through the library's client: the unit CA.
    let anchors = aos_iam::pki::x509::parse_chain_pem(&read(&server.anchor)).unwrap();
    let client =
        aos_iam::pki::est::EstClient::new(&server.url, &anchors, aos_iam::pki::tls::ClientAuth::None, None).unwrap();
    let cas = client.cacerts().unwrap();
    assert_eq!(
        aos_iam::codec::pem::pem_encode("CERTIFICATE", &cas[0]).trim(),
        read(node.path("ca.pem")).trim()
    );

    // Enrollment: a certificate that lives 30 s, so that iamd renews it soon.
    *server.lifetime.lock().unwrap() = 20;
    let out = est_renew(
        &node,
        &server.url,
        &node.p("est-password"),
        &server.anchor.display().to_string(),
    )
    .ok()
    .json();
    let enrolled = out["certificate"]["serial"].as_str().unwrap().to_string();
    assert_eq!(server.requests(), [format!("simpleenroll user={EST_USER}")]);
    // Re-enrollment by iamd itself, authenticated by that certificate over mutual TLS.
    *server.lifetime.lock().unwrap() = 30 * 86400;
    let start = std::time::Instant::now();
    while !server.requests().iter().any(|r| r.starts_with("simplereenroll"))
        || iam_serials(&node).last() == Some(&enrolled)
    {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(40),
            "no re-enrollment:\n{}",
            node.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    assert!(
        server
            .requests()
            .contains(&format!("simplereenroll cn={}", node.node_id())),
        "{:?}",
        server.requests()
    );
    let current = node
        .list_certs()
        .into_iter()
        .find(|c| c["type"] == "iam" && c["current"] == true)
        .unwrap();
    assert_ne!(current["serial"], enrolled.as_str());
    let pem = node.p("reenrolled.pem");
    node.export_cert(current["cert_url"].as_str().unwrap(), &pem);
    assert!(sh(&format!("openssl verify -CAfile {} {pem}", node.p("ca.pem")))
        .stdout
        .contains(": OK"));
}

#[test]
fn est_refusals_are_typed_and_change_no_certificate() {
    let mut est = None;
    let node = provisioned("estbad", |n| {
        est = Some(EstServer::start(&n.dir, EST_USER, EST_PASSWORD))
    });
    let server = est.unwrap();
    let anchor = server.anchor.display().to_string();
    let before = iam_serials(&node);
    std::fs::write(node.path("wrong-password"), "nope\n").unwrap();
    est_renew(&node, &server.url, &node.p("wrong-password"), &anchor).fails(
        4,
        "the EST server refused the credentials for /simpleenroll (401 Unauthorized)",
    );
    server.set_mode(Mode::BadRequest);
    est_renew(&node, &server.url, &node.p("est-password"), &anchor)
        .fails(7, "refused /simpleenroll (400 Bad Request): the CSR is not acceptable");
    server.set_mode(Mode::Malformed);
    est_renew(&node, &server.url, &node.p("est-password"), &anchor).fails(10, "not a PKCS#7 certs-only structure");
    server.set_mode(Mode::RetryLater(7));
    est_renew(&node, &server.url, &node.p("est-password"), &anchor).fails(3, "asks to retry after 7 s");
    server.set_mode(Mode::Normal);
    // The wrong trust anchor: the node's own CA did not sign the EST server's certificate.
    est_renew(&node, &server.url, &node.p("est-password"), &node.p("ca.pem")).fails(4, "TLS with the EST server");
    // Credentials in the URL are refused, and never shown.
    let with_userinfo = server
        .url
        .replace("https://", &format!("https://{EST_USER}:{EST_PASSWORD}@"));
    let out = est_renew(&node, &with_userinfo, &node.p("est-password"), &anchor)
        .fails(7, "credentials in a URL are not accepted");
    let all = format!("{}{}", out.stdout, out.stderr);
    assert!(!all.contains(EST_PASSWORD), "{all}");
    assert_eq!(iam_serials(&node), before, "no certificate changed");
    assert!(server.requests().is_empty(), "{:?}", server.requests());
    // The EST password never reaches iamd's log.
    assert!(!node.log().contains(EST_PASSWORD));
}

#[test]
fn est_enrollment_with_a_bootstrap_certificate_from_files() {
    let mut est = None;
    let node = provisioned("estboot", |n| {
        est = Some(EstServer::start(&n.dir, EST_USER, EST_PASSWORD))
    });
    let server = est.unwrap();
    let d = node.dir.display();
    sh(&format!(
        "openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout {d}/boot.key -out {d}/boot.csr \
         -subj '/CN=factory-bootstrap' -addext extendedKeyUsage=clientAuth && \
         openssl x509 -req -in {d}/boot.csr -CA {d}/ca.pem -CAkey {d}/ca.key -days 30 -copy_extensions copy -out {d}/boot.pem"
    ))
    .ok();
    let anchor = server.anchor.display().to_string();
    let (cert, key) = (node.p("boot.pem"), node.p("boot.key"));
    let out = est_renew_with(&node, &server.url, &anchor, &["--est-cert", &cert, "--est-key", &key])
        .ok()
        .json();
    assert_eq!(out["certificate"]["current"], true);
    assert_eq!(server.requests(), ["simpleenroll cn=factory-bootstrap"]);
}

#[test]
fn answers_made_by_openssl_in_der_or_ber_base64_in_lines_on_one_line_or_binary_are_applied() {
    let node = provisioned("est-forms", |_| {});
    let server = EstServer::start(&node.dir, EST_USER, EST_PASSWORD);
    // The server reads request bodies as libest does (OpenSSL line-mode base64): one long
    // line reads as nothing, lines of 64 as the CSR.
    let csr = b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef".repeat(4);
    let flat = aos_iam::codec::pem::base64_encode(&csr);
    assert!(common::est::openssl_base64_decode(flat.as_bytes()).is_empty());
    let lines = aos_iam::codec::pem::base64_lines(&csr, 64);
    assert_eq!(common::est::openssl_base64_decode(lines.as_bytes()), csr);

    let anchor = server.anchor.display().to_string();
    let mut serials = iam_serials(&node);
    for answer in [
        Answer::Crl2pkcs7Lines,
        Answer::Crl2pkcs7OneLine,
        Answer::CmsBer,
        Answer::CmsBerBinary,
    ] {
        server.set_answer(answer);
        let out = est_renew(&node, &server.url, &node.p("est-password"), &anchor);
        assert_eq!(out.code, 0, "{answer:?}: {}{}", out.stdout, out.stderr);
        let serial = out.json()["certificate"]["serial"].as_str().unwrap().to_string();
        assert!(!serials.contains(&serial), "{answer:?}: a new certificate");
        serials.push(serial.clone());
        let current = node
            .list_certs()
            .into_iter()
            .find(|c| c["type"] == "iam" && c["current"] == true)
            .unwrap();
        assert_eq!(current["serial"], serial.as_str(), "{answer:?}");
        node.export_cert(current["cert_url"].as_str().unwrap(), &node.p("enrolled.pem"));
        let v = sh(&format!(
            "openssl verify -CAfile {} {}",
            node.p("ca.pem"),
            node.p("enrolled.pem")
        ));
        assert!(v.stdout.contains(": OK"), "{answer:?}: {}", v.stdout);
    }
    // /cacerts in BER too.
    server.set_answer(Answer::CmsBer);
    let anchors = aos_iam::pki::x509::parse_chain_pem(&read(&server.anchor)).unwrap();
    let client =
        aos_iam::pki::est::EstClient::new(&server.url, &anchors, aos_iam::pki::tls::ClientAuth::None, None).unwrap();
    let cas = client.cacerts().unwrap();
    assert!(cas
        .iter()
        .any(|c| aos_iam::codec::pem::pem_encode("CERTIFICATE", c).trim() == read(node.path("ca.pem")).trim()));
}

#[test]
fn a_server_that_stalls_or_trickles_fails_the_exchange_as_a_timeout() {
    let node = Node::new("est-stall", Store::Software);
    let anchors_for = |server: &EstServer| aos_iam::pki::x509::parse_chain_pem(&read(&server.anchor)).unwrap();
    // Accepts the connection, then says nothing: no TLS handshake ever.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let held = std::thread::spawn(move || silent.accept().map(|(s, _)| s));
    let server = EstServer::start(&node.dir, EST_USER, EST_PASSWORD);
    let client = aos_iam::pki::est::EstClient::new(
        &format!("https://localhost:{port}/.well-known/est"),
        &anchors_for(&server),
        aos_iam::pki::tls::ClientAuth::None,
        None,
    )
    .unwrap()
    .with_timeout(std::time::Duration::from_secs(2));
    let e = client.cacerts().unwrap_err().error;
    assert_eq!(e.kind, aos_iam::ErrorKind::Timeout, "{e}");
    assert!(e.message.contains("did not answer within 2 s"), "{e}");
    drop(held);

    // Answers its headers, then a byte every 200 ms: the deadline holds for the whole answer.
    server.set_mode(Mode::Trickle);
    let client = aos_iam::pki::est::EstClient::new(
        &server.url,
        &anchors_for(&server),
        aos_iam::pki::tls::ClientAuth::None,
        None,
    )
    .unwrap()
    .with_timeout(std::time::Duration::from_secs(2));
    let e = client.cacerts().unwrap_err().error;
    assert_eq!(e.kind, aos_iam::ErrorKind::Timeout, "{e}");
    assert!(e.message.contains("did not finish its answer within 2 s"), "{e}");
}

/// tinyproxy (Debian's) on a free port, allowing CONNECT to `port` only, with basic auth.
struct Tinyproxy {
    child: std::process::Child,
    port: u16,
    log: std::path::PathBuf,
}

impl Tinyproxy {
    fn start(dir: &std::path::Path, port: u16) -> Tinyproxy {
        let own = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let proxy_port = own.local_addr().unwrap().port();
        drop(own);
        let conf = dir.join("tinyproxy.conf");
        std::fs::write(
            &conf,
            format!(
                "Port {proxy_port}\nListen 127.0.0.1\nTimeout 30\nLogLevel Connect\nMaxClients 16\n\
                 ConnectPort {port}\nBasicAuth proxyuser proxypass\n"
            ),
        )
        .unwrap();
        let log = dir.join("tinyproxy.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = std::process::Command::new("tinyproxy")
            .args(["-d", "-c"])
            .arg(&conf)
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("tinyproxy (Debian package tinyproxy; scripts/deps.sh test installs it)");
        let start = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", proxy_port)).is_err() {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(20),
                "tinyproxy did not listen"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Tinyproxy {
            child,
            port: proxy_port,
            log,
        }
    }
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn est_goes_through_the_https_proxy_with_connect_and_no_proxy_bypasses_it() {
    let node = provisioned("est-proxy", |_| {});
    let server = EstServer::start(&node.dir, EST_USER, EST_PASSWORD);
    let est_port: u16 = server
        .url
        .split(':')
        .nth(2)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let proxy = Tinyproxy::start(&node.dir, est_port);
    let renew = |env: &[(&str, String)]| {
        let mut c = node.cmd();
        c.env_remove("HTTPS_PROXY")
            .env_remove("https_proxy")
            .env_remove("NO_PROXY")
            .env_remove("no_proxy");
        for (k, v) in env {
            c.env(k, v);
        }
        let out = c
            .args([
                "iam-certctl",
                "-s",
                &node.protected(),
                "--json",
                "renew",
                "iam",
                "--password-file",
            ])
            .arg(node.path("password"))
            .args(["--est", &server.url, "--est-anchor"])
            .arg(&server.anchor)
            .args(["--est-user", EST_USER, "--est-password-file"])
            .arg(node.path("est-password"))
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let via = |userinfo: &str| vec![("HTTPS_PROXY", format!("http://{userinfo}127.0.0.1:{}", proxy.port))];

    // Through the proxy, with its credentials: the tunnel is in its log.
    let (code, out) = renew(&via("proxyuser:proxypass@"));
    assert_eq!(code, 0, "{out}");
    let log = std::fs::read_to_string(&proxy.log).unwrap();
    assert!(log.contains(&format!("localhost:{est_port}")), "{log}");
    assert_eq!(server.requests().len(), 1);
    // Wrong proxy credentials: unauthorized, naming the proxy; nothing reached the server.
    let (code, out) = renew(&via("proxyuser:wrong@"));
    assert_eq!(code, 4, "{out}");
    assert!(
        out.contains("refused the tunnel") && out.contains("Unauthorized"),
        "{out}"
    );
    assert!(!out.contains("wrong"), "the proxy password is not in the error: {out}");
    assert_eq!(server.requests().len(), 1);
    // NO_PROXY: straight to the server, even with a proxy that cannot be reached.
    let mut env = vec![("HTTPS_PROXY", "http://127.0.0.1:1".to_string())];
    let (code, out) = renew(&env);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("cannot reach the proxy 127.0.0.1:1"), "{out}");
    env.push(("NO_PROXY", "example.org,localhost".into()));
    let (code, out) = renew(&env);
    assert_eq!(code, 0, "{out}");
    assert_eq!(server.requests().len(), 2);
}

#[test]
fn the_factory_flow_signs_every_module_through_an_est_server() {
    let mut node = Node::new("est-run", Store::Pkcs11);
    node.start(true);
    std::fs::write(node.path("est-password"), format!("{EST_PASSWORD}\n")).unwrap();
    let server = EstServer::start(&node.dir, EST_USER, EST_PASSWORD);
    let anchor = server.anchor.display().to_string();
    let (pw, estpw) = (node.p("password"), node.p("est-password"));
    let run = |extra: &[&str]| {
        let mut args = vec![
            "--json",
            "run",
            "--password-file",
            &pw,
            "--est",
            &server.url,
            "--est-anchor",
            &anchor,
        ];
        args.extend_from_slice(extra);
        node.provision(&args)
    };
    // Two ways of signing at once are refused before anything is done.
    let out = run(&[
        "--est-user",
        EST_USER,
        "--est-password-file",
        &estpw,
        "--sign-cmd",
        "cat",
    ]);
    assert_eq!(out.code, 7, "{}", out.stdout);
    assert!(out.stdout.contains("give one way of signing"), "{}", out.stdout);
    assert_eq!(node.status()["state"], "unprovisioned");
    // Wrong EST credentials: unauthorized, and the node is not provisioned.
    std::fs::write(node.path("wrong"), "nope\n").unwrap();
    let wrong = node.p("wrong");
    let out = run(&["--est-user", EST_USER, "--est-password-file", &wrong]);
    assert_eq!(out.code, 4, "{}", out.stdout);
    assert_ne!(node.status()["state"], "provisioned");

    run(&[
        "--est-user",
        EST_USER,
        "--est-password-file",
        &estpw,
        "--deprovision-first",
    ])
    .ok();
    assert_eq!(node.status()["state"], "provisioned");
    // iam and online came from the EST server (diskencryption is self-signed).
    assert_eq!(
        server.requests(),
        [
            format!("simpleenroll user={EST_USER}"),
            format!("simpleenroll user={EST_USER}")
        ]
    );
    for c in node.list_certs().into_iter().filter(|c| c["type"] != "diskencryption") {
        node.export_cert(c["cert_url"].as_str().unwrap(), &node.p("c.pem"));
        let v = sh(&format!(
            "openssl verify -CAfile {} {}",
            node.p("ca.pem"),
            node.p("c.pem")
        ));
        assert!(v.stdout.contains(": OK"), "{}: {}", c["type"], v.stdout);
    }
}

#[test]
fn a_cacerts_bootstrap_trusts_only_the_ca_with_the_configured_fingerprint() {
    let node = provisioned("est-boot", |_| {});
    let server = EstServer::start(&node.dir, EST_USER, EST_PASSWORD);
    *server.cacerts_with_anchor.lock().unwrap() = true;
    let fingerprint = |pem: &std::path::Path| {
        let out = sh(&format!(
            "openssl x509 -in {} -noout -fingerprint -sha256",
            pem.display()
        ));
        out.stdout.trim().rsplit('=').next().unwrap().to_string()
    };
    let (sock, pw, estpw) = (node.protected(), node.p("password"), node.p("est-password"));
    let renew = |trust: &[&str]| {
        let mut args = vec![
            "-s",
            &sock,
            "--json",
            "renew",
            "iam",
            "--password-file",
            &pw,
            "--est",
            &server.url,
        ];
        args.extend_from_slice(trust);
        args.extend_from_slice(&["--est-user", EST_USER, "--est-password-file", &estpw]);
        node.applet("iam-certctl", &args, None)
    };
    let before = iam_serials(&node);

    // The fingerprint of a CA /cacerts does not send: refused, nothing asked of the server.
    let other = ["00"; 32].join(":");
    let out = renew(&["--est-ca-fingerprint", &other]);
    assert_eq!(out.code, 4, "{}", out.stdout);
    assert!(
        out.stdout.contains("has the configured SHA-256 fingerprint"),
        "{}",
        out.stdout
    );
    // The unit CA is sent, but the server's TLS certificate does not chain to it: refused.
    let unit_ca = fingerprint(&node.path("ca.pem"));
    let out = renew(&["--est-ca-fingerprint", &unit_ca]);
    assert_eq!(out.code, 4, "{}", out.stdout);
    assert!(
        out.stdout
            .contains("does not chain to the CA with the configured fingerprint"),
        "{}",
        out.stdout
    );
    // Both ways of trust at once, or a fingerprint that is not one: invalid.
    let anchor = server.anchor.display().to_string();
    renew(&["--est-anchor", &anchor, "--est-ca-fingerprint", &unit_ca]).fails(7, "either as --est-anchor");
    renew(&["--est-ca-fingerprint", "AB:CD"]).fails(7, "64 hex digits");
    assert!(server.requests().is_empty(), "{:?}", server.requests());
    assert_eq!(iam_serials(&node), before);

    // The CA of the server's certificate, checked out of band: enrolled.
    let out = renew(&["--est-ca-fingerprint", &fingerprint(&server.anchor)]);
    assert_eq!(out.code, 0, "{}", out.stdout);
    assert_eq!(server.requests(), [format!("simpleenroll user={EST_USER}")]);
}

/// An EST server that speaks nothing newer than TLS 1.2 (OpenSSL, through socat, in front
/// of the EST test server): the enrollment is made over TLS 1.2 with an ECDHE AES-GCM suite
/// (cargo feature `tls12`, on by default).
#[test]
fn an_est_server_that_has_only_tls_1_2_is_enrolled_with() {
    let node = provisioned("est-tls12", |_| {});
    let server = EstServer::start(&node.dir, EST_USER, EST_PASSWORD);
    let d = node.dir.display();
    sh(&format!(
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj '/CN=TLS 1.2 front CA' \
           -keyout {d}/front-ca.key -out {d}/front-ca.pem 2>/dev/null && \
         openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj '/CN=localhost' \
           -addext subjectAltName=DNS:localhost -addext extendedKeyUsage=serverAuth \
           -keyout {d}/front.key -out {d}/front.csr 2>/dev/null && \
         openssl x509 -req -in {d}/front.csr -CA {d}/front-ca.pem -CAkey {d}/front-ca.key -days 2 \
           -copy_extensions copy -out {d}/front.pem 2>/dev/null"
    ))
    .ok();
    let port = EstServer::free_port();
    let backend = server
        .url
        .trim_start_matches("https://localhost:")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let log = node.path("socat.log");
    let mut front = std::process::Command::new("socat")
        .args(["-d", "-d"])
        .arg(format!(
            "OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,cert={d}/front.pem,key={d}/front.key,verify=0,max-version=TLS1.2"
        ))
        .arg(format!("OPENSSL:127.0.0.1:{backend},verify=0"))
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_for(
        || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        "socat listening",
        &node,
    );
    let before = iam_serials(&node);
    let url = format!("https://localhost:{port}/.well-known/est");
    let out = est_renew(&node, &url, &node.p("est-password"), &node.p("front-ca.pem"));
    let _ = front.kill();
    let _ = front.wait();
    let text = read(&log);
    assert_eq!(out.code, 0, "{}{}\n{text}", out.stdout, out.stderr);
    assert_ne!(iam_serials(&node), before, "a new certificate was applied");
    // OpenSSL names the suite it agreed on: a TLS 1.2 ECDHE AES-GCM one.
    assert!(
        text.lines()
            .any(|l| l.contains("SSL connection using ECDHE-") && l.contains("GCM")),
        "{text}"
    );
}

#[test]
fn an_est_server_whose_certificate_a_crl_of_the_node_revokes_is_refused_at_its_handshake() {
    let mut est = None;
    let mut node = provisioned("estcrl", |n| {
        n.modules.rotate_left(1);
        let server = EstServer::start(&n.dir, EST_USER, EST_PASSWORD);
        n.extra_config = format!(
            "[modules.renew]\nmethod = \"est\"\nthreshold = \"1%\"\n[modules.renew.est]\nurl = \"{}\"\nanchor = \"{}\"\n\
             reenroll = false\nusername = \"{EST_USER}\"\npassword_file = \"{}\"\n",
            server.url,
            server.anchor.display(),
            n.p("est-password")
        );
        est = Some(server);
    });
    let server = est.unwrap();
    let (sock, pw) = (node.protected(), node.p("password"));
    let renew = |node: &Node| {
        node.applet(
            "iam-certctl",
            &["-s", &sock, "--json", "renew", "iam", "--password-file", &pw],
            None,
        )
    };
    renew(&node).ok();
    let before = iam_serials(&node);

    // The EST server's own certificate revoked by its CA (openssl ca), the CRL given to the
    // node as a file of paths.crl.
    std::fs::write(node.path("est-server.pem"), &server.server_cert_pem).unwrap();
    let crl = openssl_crl_revoking(
        &node.dir,
        "est",
        &node.path("est-anchor.pem"),
        &node.path("est-anchor.key"),
        &[&node.path("est-server.pem")],
    );
    node.stop();
    node.paths_extra = format!("crl = [\"{}\"]\n", crl.display());
    node.start(false);
    let requests = server.requests().len();
    renew(&node).fails(4, "Revoked");
    assert_eq!(
        server.requests().len(),
        requests,
        "nothing was sent to the revoked server"
    );
    assert_eq!(iam_serials(&node), before, "no certificate changed");
}
