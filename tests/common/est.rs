//! An EST test server (RFC 7030) for the tests: HTTPS on the loopback with rustls, its own
//! trust anchor, `/cacerts`, `/simpleenroll` (HTTP basic auth) and `/simplereenroll`
//! (client certificate chained to the unit root), signing CSRs with the node's real CA:
//! by `openssl x509 -req` (rcgen only for lifetimes of seconds, which openssl 3.0 cannot
//! set). A mode makes it answer as a failing server would.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

#[derive(Clone, Debug, PartialEq)]
pub enum Mode {
    Normal,
    /// 400 with a message, whatever the request.
    BadRequest,
    /// 200 with a body that is not PKCS#7.
    Malformed,
    /// 202 with `Retry-After: N`.
    RetryLater(u64),
    /// The headers of a 200, then one byte of body every 200 ms for a minute.
    Trickle,
    /// 503 with `Retry-After: N`.
    Unavailable(u64),
}

/// How a 200 answer's PKCS#7 is made and sent: always by openssl, as real servers do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// `openssl crl2pkcs7` (DER), base64 in lines of 64 (`openssl base64`), with
    /// `Content-Transfer-Encoding: base64`.
    Crl2pkcs7Lines,
    /// The same, base64 on one line (`openssl base64 -A`).
    Crl2pkcs7OneLine,
    /// `openssl cms -sign -stream` by the CA (BER, indefinite lengths, the CA among the
    /// certificates), base64 in lines.
    CmsBer,
    /// The same BER as binary, without `Content-Transfer-Encoding`.
    CmsBerBinary,
}

pub struct EstServer {
    pub url: String,
    /// Whether /cacerts also sends the CA of the server's own TLS certificate.
    pub cacerts_with_anchor: Arc<Mutex<bool>>,
    pub answer: Arc<Mutex<Answer>>,
    /// The server's trust anchor (PEM file); its key is `est-anchor.key` beside it.
    pub anchor: PathBuf,
    /// The server's own TLS certificate (PEM), issued by the anchor at each start.
    pub server_cert_pem: String,
    pub mode: Arc<Mutex<Mode>>,
    /// Lifetime of the certificates it issues, in seconds.
    pub lifetime: Arc<Mutex<i64>>,
    /// One line per request: `simpleenroll user=…` or `simplereenroll cn=…`.
    pub log: Arc<Mutex<Vec<String>>>,
    /// The claim token /simpleenroll by client certificate requires (`Authorization:
    /// Bearer`), if set.
    pub claim_token: Arc<Mutex<Option<String>>>,
    /// Requests received, whatever the mode made of them.
    pub received: Arc<std::sync::atomic::AtomicUsize>,
    /// The DER `/csrattrs` answers (base64 by openssl); `None`: 404.
    pub csrattrs: Arc<Mutex<Option<Vec<u8>>>>,
    /// The challengePassword every CSR must carry (checked by `openssl req -text`), if set.
    pub require_challenge: Arc<Mutex<Option<String>>>,
}

struct Ca {
    dir: PathBuf,
    anchor_der: Vec<u8>,
    cacerts_with_anchor: Arc<Mutex<bool>>,
    answer: Arc<Mutex<Answer>>,
    /// The CA that signs (the unit's root, or its issuing CA), and its key.
    cert_pem: String,
    key: rcgen::KeyPair,
    /// What /cacerts sends: the issuing CA and the root, or the root.
    cacerts: Vec<Vec<u8>>,
    user: String,
    password: String,
    mode: Arc<Mutex<Mode>>,
    lifetime: Arc<Mutex<i64>>,
    log: Arc<Mutex<Vec<String>>>,
    claim_token: Arc<Mutex<Option<String>>>,
    received: Arc<std::sync::atomic::AtomicUsize>,
    csrattrs: Arc<Mutex<Option<Vec<u8>>>>,
    require_challenge: Arc<Mutex<Option<String>>>,
}

impl EstServer {
    /// Serve in `dir`, issuing with the CA `ca.pem`/`ca.key` there (or with the issuing CA
    /// `issuing.pem`/`issuing.key` under it, if there is one); re-enrollment clients must
    /// chain to `ca.pem` too.
    pub fn start(dir: &Path, user: &str, password: &str) -> EstServer {
        Self::start_at(dir, user, password, 0)
    }

    /// A free port of the loopback (nothing listens on it once this returns).
    pub fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }

    /// [`EstServer::start`] on `port` (0: any). Client certificates must chain to the CA
    /// `ca.pem` in `dir`, or to `factory-ca.pem` there if there is one (bootstrap
    /// certificates); the anchor's key is left in `est-anchor.key` for other test servers.
    pub fn start_at(dir: &Path, user: &str, password: &str, port: u16) -> EstServer {
        let _ = rustls::crypto::ring::default_provider().install_default();
        // The anchor of a server started before in `dir` is kept: a server that comes back
        // is the same server.
        let anchor = dir.join("est-anchor.pem");
        let anchor_key_file = dir.join("est-anchor.key");
        let anchor_key = match std::fs::read_to_string(&anchor_key_file) {
            Ok(pem) => rcgen::KeyPair::from_pem(&pem).unwrap(),
            Err(_) => rcgen::KeyPair::generate().unwrap(),
        };
        let mut anchor_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        anchor_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "EST test anchor");
        anchor_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        // Made again with the same name and key, it is the same trust anchor.
        let anchor_cert = anchor_params.self_signed(&anchor_key).unwrap();
        if !anchor_key_file.exists() {
            std::fs::write(&anchor, anchor_cert.pem()).unwrap();
            std::fs::write(&anchor_key_file, anchor_key.serialize_pem()).unwrap();
        }
        let server_key = rcgen::KeyPair::generate().unwrap();
        let mut server_params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        server_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "localhost");
        let issuer = rcgen::Issuer::from_params(&anchor_params, &anchor_key);
        let server_cert = server_params.signed_by(&server_key, &issuer).unwrap();

        let unit_ca = std::fs::read_to_string(dir.join("ca.pem")).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(unit_ca.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        if let Ok(factory) = std::fs::read_to_string(dir.join("factory-ca.pem")) {
            for c in CertificateDer::pem_slice_iter(factory.as_bytes()) {
                roots.add(c.unwrap()).unwrap();
            }
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
            .allow_unauthenticated()
            .build()
            .unwrap();
        let config = Arc::new(
            rustls::ServerConfig::builder()
                .with_client_cert_verifier(verifier)
                .with_single_cert(
                    vec![server_cert.der().clone(), anchor_cert.der().clone()],
                    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der())),
                )
                .unwrap(),
        );
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = EstServer {
            url: format!("https://localhost:{port}/.well-known/est"),
            anchor,
            server_cert_pem: server_cert.pem(),
            answer: Arc::new(Mutex::new(Answer::Crl2pkcs7Lines)),
            cacerts_with_anchor: Arc::new(Mutex::new(false)),
            mode: Arc::new(Mutex::new(Mode::Normal)),
            lifetime: Arc::new(Mutex::new(30 * 86400)),
            log: Arc::new(Mutex::new(Vec::new())),
            claim_token: Arc::new(Mutex::new(None)),
            received: Default::default(),
            csrattrs: Default::default(),
            require_challenge: Default::default(),
        };
        // With an issuing CA in `dir` (`issuing.pem`/`.key`, under `ca.pem`), it signs, as in
        // every real PKI, and answers an enrollment with the leaf alone, as Cisco libest
        // does: the node completes the chain from /cacerts.
        let der = |pem: &str| CertificateDer::from_pem_slice(pem.as_bytes()).unwrap().to_vec();
        let (cert_pem, key_file, cacerts) = match std::fs::read_to_string(dir.join("issuing.pem")) {
            Ok(issuing) => (issuing.clone(), "issuing.key", vec![der(&issuing), der(&unit_ca)]),
            Err(_) => (unit_ca.clone(), "ca.key", vec![der(&unit_ca)]),
        };
        let ca = Arc::new(Ca {
            dir: dir.to_path_buf(),
            anchor_der: anchor_cert.der().to_vec(),
            cacerts_with_anchor: server.cacerts_with_anchor.clone(),
            answer: server.answer.clone(),
            cert_pem,
            key: rcgen::KeyPair::from_pem(&std::fs::read_to_string(dir.join(key_file)).unwrap()).unwrap(),
            cacerts,
            user: user.into(),
            password: password.into(),
            mode: server.mode.clone(),
            lifetime: server.lifetime.clone(),
            log: server.log.clone(),
            claim_token: server.claim_token.clone(),
            received: server.received.clone(),
            csrattrs: server.csrattrs.clone(),
            require_challenge: server.require_challenge.clone(),
        });
        std::thread::spawn(move || {
            for tcp in listener.incoming().flatten() {
                let (config, ca) = (config.clone(), ca.clone());
                std::thread::spawn(move || {
                    let _ = tcp.set_read_timeout(Some(std::time::Duration::from_secs(20)));
                    let Ok(conn) = rustls::ServerConnection::new(config) else {
                        return;
                    };
                    let mut tls = rustls::StreamOwned::new(conn, tcp);
                    if let Some(answer) = ca.serve(&mut tls) {
                        let _ = tls.write_all(&answer);
                        let _ = tls.flush();
                        tls.conn.send_close_notify();
                        let _ = tls.flush();
                    }
                });
            }
        });
        server
    }

    pub fn set_answer(&self, a: Answer) {
        *self.answer.lock().unwrap() = a;
    }

    pub fn set_mode(&self, m: Mode) {
        *self.mode.lock().unwrap() = m;
    }

    pub fn set_claim_token(&self, t: Option<&str>) {
        *self.claim_token.lock().unwrap() = t.map(String::from);
    }

    pub fn requests(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

/// The CN of the client certificate the TLS layer verified, if the client sent one.
fn peer_cn(tls: &rustls::StreamOwned<rustls::ServerConnection, std::net::TcpStream>) -> Option<String> {
    use x509_parser::prelude::FromDer;
    let peer = tls.conn.peer_certificates()?.first()?.clone();
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&peer).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?.to_string();
    Some(cn)
}

fn http(status: &str, headers: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

impl Ca {
    fn serve(&self, tls: &mut rustls::StreamOwned<rustls::ServerConnection, std::net::TcpStream>) -> Option<Vec<u8>> {
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        let head_end = loop {
            let n = tls.read(&mut buf).ok()?;
            if n == 0 {
                return None;
            }
            raw.extend_from_slice(&buf[..n]);
            if let Some(p) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break p;
            }
        };
        let head = String::from_utf8_lossy(&raw[..head_end]).to_string();
        let len: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap_or(0))
            })
            .unwrap_or(0);
        while raw.len() < head_end + 4 + len {
            let n = tls.read(&mut buf).ok()?;
            if n == 0 {
                break;
            }
            raw.extend_from_slice(&buf[..n]);
        }
        let body = raw[head_end + 4..].to_vec();
        self.received.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
        let op = path.rsplit('/').next().unwrap_or("").to_string();
        // The failing modes are for the exchanges that carry a CSR or certificates: /csrattrs
        // (asked first by an enrollment) answers normally, so that a stall comes once the
        // key is made.
        let mode = match (self.mode.lock().unwrap().clone(), op.as_str()) {
            (_, "csrattrs") => Mode::Normal,
            (m, _) => m,
        };
        match mode {
            Mode::BadRequest => return Some(http("400 Bad Request", "", b"the CSR is not acceptable")),
            Mode::Malformed => return Some(http("200 OK", "Content-Transfer-Encoding: base64\r\n", b"bm90IHBrY3M3")),
            Mode::RetryLater(n) => return Some(http("202 Accepted", &format!("Retry-After: {n}\r\n"), b"")),
            Mode::Unavailable(n) => {
                return Some(http(
                    "503 Service Unavailable",
                    &format!("Retry-After: {n}\r\n"),
                    b"the CA is busy",
                ))
            }
            Mode::Trickle => {
                let _ = tls.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n");
                let _ = tls.flush();
                for _ in 0..300 {
                    std::thread::sleep(std::time::Duration::from_millis(200));
                    if tls.write_all(b"M").and_then(|()| tls.flush()).is_err() {
                        break;
                    }
                }
                return None;
            }
            Mode::Normal => {}
        }
        let p7 = |certs: &[Vec<u8>]| self.pkcs7_answer(certs);
        match op.as_str() {
            "cacerts" => {
                let mut certs = self.cacerts.clone();
                if *self.cacerts_with_anchor.lock().unwrap() {
                    certs.push(self.anchor_der.clone());
                }
                Some(p7(&certs))
            }
            "csrattrs" => {
                self.log.lock().unwrap().push("csrattrs".into());
                let Some(der) = self.csrattrs.lock().unwrap().clone() else {
                    return Some(http("404 Not Found", "", b""));
                };
                let b64 = openssl(&["base64"], &der);
                Some(http(
                    "200 OK",
                    "Content-Type: application/csrattrs\r\nContent-Transfer-Encoding: base64\r\n",
                    &b64,
                ))
            }
            "simpleenroll" => {
                let auth = head
                    .lines()
                    .find_map(|l| l.strip_prefix("Authorization: Basic "))
                    .and_then(|b| aos_iam::codec::pem::base64_decode(b.as_bytes()))
                    .map(|b| String::from_utf8_lossy(&b).to_string());
                // A bootstrap certificate (chained to the unit CA, checked by the TLS layer)
                // or the right basic-auth credentials.
                let bearer = head
                    .lines()
                    .find_map(|l| l.strip_prefix("Authorization: Bearer "))
                    .map(|t| t.trim().to_string());
                // A token "b64:T" is expected base64-encoded, as Cisco libest decodes it.
                let token = self
                    .claim_token
                    .lock()
                    .unwrap()
                    .clone()
                    .map(|t| match t.strip_prefix("b64:") {
                        Some(t) => aos_iam::codec::pem::base64_encode(t.as_bytes()),
                        None => t,
                    });
                let who = match (auth, peer_cn(tls)) {
                    (Some(a), _) if a == format!("{}:{}", self.user, self.password) => format!("user={}", self.user),
                    (None, Some(_)) if token.is_some() && bearer != token => {
                        self.log
                            .lock()
                            .unwrap()
                            .push("simpleenroll refused: claim token".into());
                        return Some(http(
                            "401 Unauthorized",
                            "WWW-Authenticate: Bearer realm=\"est\"\r\n",
                            b"wrong or missing claim token",
                        ));
                    }
                    (None, Some(cn)) => format!("cn={cn}"),
                    _ => {
                        return Some(http(
                            "401 Unauthorized",
                            "WWW-Authenticate: Basic realm=\"est\"\r\n",
                            b"",
                        ))
                    }
                };
                self.log.lock().unwrap().push(format!("simpleenroll {who}"));
                Some(
                    self.issue(&body)
                        .map_or_else(|e| http("400 Bad Request", "", e.as_bytes()), |c| p7(&[c])),
                )
            }
            "simplereenroll" => {
                let Some(cn) = peer_cn(tls) else {
                    return Some(http(
                        "401 Unauthorized",
                        "",
                        b"re-enrollment needs a client certificate",
                    ));
                };
                self.log.lock().unwrap().push(format!("simplereenroll cn={cn}"));
                Some(
                    self.issue(&body)
                        .map_or_else(|e| http("400 Bad Request", "", e.as_bytes()), |c| p7(&[c])),
                )
            }
            _ => Some(http("404 Not Found", "", b"")),
        }
    }

    /// A 200 answer carrying `certs`, made by openssl as [`Answer`] says.
    fn pkcs7_answer(&self, certs: &[Vec<u8>]) -> Vec<u8> {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let d = self.dir.join(format!("est-answer-{n}"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("certs.pem"), pem_of(certs)).unwrap();
        std::fs::write(d.join("ca.key"), self.key.serialize_pem()).unwrap();
        std::fs::write(d.join("ca.pem"), &self.cert_pem).unwrap();
        let answer = *self.answer.lock().unwrap();
        let make = match answer {
            Answer::Crl2pkcs7Lines | Answer::Crl2pkcs7OneLine => {
                "openssl crl2pkcs7 -nocrl -certfile certs.pem -outform DER -out p7"
            }
            // The signer's own certificate is in the answer anyway (for /cacerts, all of it).
            Answer::CmsBer | Answer::CmsBerBinary if pem_of(certs).trim() == self.cert_pem.trim() => {
                "printf x > data && openssl cms -sign -in data -signer ca.pem -inkey ca.key \
                 -nodetach -stream -outform DER -out p7"
            }
            Answer::CmsBer | Answer::CmsBerBinary => {
                "printf x > data && openssl cms -sign -in data -signer ca.pem -inkey ca.key \
                 -certfile certs.pem -nodetach -stream -outform DER -out p7"
            }
        };
        let encode = match answer {
            Answer::Crl2pkcs7OneLine => "openssl base64 -A -in p7 -out body",
            Answer::CmsBerBinary => "cp p7 body",
            _ => "openssl base64 -in p7 -out body",
        };
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("cd {} && {make} && {encode}", d.display()))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let body = std::fs::read(d.join("body")).unwrap();
        if matches!(answer, Answer::CmsBer | Answer::CmsBerBinary) {
            let p7 = std::fs::read(d.join("p7")).unwrap();
            assert_eq!(p7[1], 0x80, "openssl cms -stream writes indefinite lengths");
        }
        let _ = std::fs::remove_dir_all(&d);
        let cte = match answer {
            Answer::CmsBerBinary => "",
            _ => "Content-Transfer-Encoding: base64\r\n",
        };
        http(
            "200 OK",
            &format!("Content-Type: application/pkcs7-mime; smime-type=certs-only\r\n{cte}"),
            &body,
        )
    }

    /// Sign a base64 CSR with the unit CA: a leaf valid for the configured lifetime. The
    /// body is decoded as Cisco libest does, with OpenSSL's line-oriented base64: a body
    /// without a line break reads as nothing.
    fn issue(&self, body: &[u8]) -> Result<Vec<u8>, String> {
        let der = openssl_base64_decode(body);
        if der.is_empty() {
            return Err("Problem reading DER encoded certificate request".into());
        }
        // The CSR's signature and, if one is required, its challengePassword, by openssl.
        let text = openssl(&["req", "-inform", "DER", "-noout", "-verify", "-text"], &der);
        let text = String::from_utf8_lossy(&text);
        if !text.contains("Certificate Request:") {
            return Err("the CSR does not verify (openssl req -verify)".into());
        }
        if let Some(want) = self.require_challenge.lock().unwrap().clone() {
            let got = text
                .lines()
                .find_map(|l| l.trim().strip_prefix("challengePassword"))
                .map(|v| v.trim().trim_start_matches(':').trim().to_string());
            if got.as_deref() != Some(want.as_str()) {
                self.log
                    .lock()
                    .unwrap()
                    .push("simpleenroll refused: challengePassword".into());
                return Err("the CSR lacks the challengePassword asked for".into());
            }
            self.log.lock().unwrap().push("challengePassword ok".into());
        }
        let lifetime = *self.lifetime.lock().unwrap();
        if lifetime % 86400 == 0 {
            return self.openssl_issue(&der, lifetime / 86400);
        }
        // Lifetimes in seconds (renewal tests), which openssl 3.0's x509 cannot set: rcgen.
        let csr = rustls::pki_types::CertificateSigningRequestDer::from(der);
        let mut params = rcgen::CertificateSigningRequestParams::from_der(&csr).map_err(|e| format!("bad CSR: {e}"))?;
        let now = time::OffsetDateTime::now_utc();
        params.params.not_before = now - time::Duration::seconds(10);
        params.params.not_after = now + time::Duration::seconds(lifetime);
        params.params.serial_number = Some(aos_iam::pki::x509::random_serial().unwrap());
        params.params.use_authority_key_identifier_extension = true;
        let issuer = rcgen::Issuer::from_ca_cert_pem(&self.cert_pem, &self.key).unwrap();
        Ok(params.signed_by(&issuer).map_err(|e| e.to_string())?.der().to_vec())
    }

    /// Issue for `days` as a CA does with openssl: `openssl x509 -req`, the CSR's extensions
    /// copied, a random serial.
    fn openssl_issue(&self, csr_der: &[u8], days: i64) -> Result<Vec<u8>, String> {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let d = self.dir.join(format!("est-issue-{n}"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("csr.pem"),
            aos_iam::codec::pem::pem_encode("CERTIFICATE REQUEST", csr_der),
        )
        .unwrap();
        std::fs::write(d.join("ca.key"), self.key.serialize_pem()).unwrap();
        std::fs::write(d.join("ca.pem"), &self.cert_pem).unwrap();
        let serial = aos_iam::codec::hex(&aos_iam::pki::x509::random_serial().unwrap().to_bytes());
        let out = std::process::Command::new("openssl")
            .args([
                "x509",
                "-req",
                "-in",
                "csr.pem",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-copy_extensions",
                "copy",
            ])
            .args([
                "-days",
                &days.to_string(),
                "-set_serial",
                &format!("0x{serial}"),
                "-outform",
                "DER",
                "-out",
                "cert.der",
            ])
            .current_dir(&d)
            .output()
            .unwrap();
        let cert = std::fs::read(d.join("cert.der"));
        let _ = std::fs::remove_dir_all(&d);
        match (out.status.success(), cert) {
            (true, Ok(c)) => Ok(c),
            _ => Err(format!(
                "openssl x509 -req: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )),
        }
    }
}

/// `openssl ARGS` with `input` on stdin: its stdout (empty when it fails).
pub fn openssl(args: &[&str], input: &[u8]) -> Vec<u8> {
    let mut child = std::process::Command::new("openssl")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let feed = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    let _ = feed.join();
    if out.status.success() {
        out.stdout
    } else {
        Vec::new()
    }
}

impl EstServer {
    /// Answer `/csrattrs` with the DER openssl makes of `genconf` (`openssl asn1parse
    /// -genconf`), or 404 for `None`.
    pub fn set_csrattrs(&self, genconf: Option<&str>) {
        let der = genconf.map(|conf| {
            let f = std::env::temp_dir().join(format!("csrattrs-{}-{:p}.cnf", std::process::id(), self));
            std::fs::write(&f, conf).unwrap();
            let out = std::process::Command::new("openssl")
                .args(["asn1parse", "-genconf"])
                .arg(&f)
                .args(["-noout", "-out", "/dev/stdout"])
                .output()
                .unwrap();
            let _ = std::fs::remove_file(&f);
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            out.stdout
        });
        *self.csrattrs.lock().unwrap() = der;
    }

    pub fn require_challenge(&self, v: Option<&str>) {
        *self.require_challenge.lock().unwrap() = v.map(String::from);
    }
}

/// `openssl base64 -d` (line mode, as libest's BIO base64 reads request bodies).
pub fn openssl_base64_decode(body: &[u8]) -> Vec<u8> {
    let mut child = std::process::Command::new("openssl")
        .args(["base64", "-d"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(body).unwrap();
    child.wait_with_output().unwrap().stdout
}

fn pem_of(certs: &[Vec<u8>]) -> String {
    certs
        .iter()
        .map(|c| aos_iam::codec::pem::pem_encode("CERTIFICATE", c))
        .collect()
}
