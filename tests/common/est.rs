//! An EST test server (RFC 7030) for the tests: HTTPS on the loopback with rustls, its own
//! trust anchor, `/cacerts`, `/simpleenroll` (HTTP basic auth) and `/simplereenroll`
//! (client certificate chained to the unit root), signing CSRs with the node's real CA
//! (rcgen). A mode makes it answer as a failing server would.

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
}

pub struct EstServer {
    pub url: String,
    /// The server's trust anchor (PEM file).
    pub anchor: PathBuf,
    pub mode: Arc<Mutex<Mode>>,
    /// Lifetime of the certificates it issues, in seconds.
    pub lifetime: Arc<Mutex<i64>>,
    /// One line per request: `simpleenroll user=…` or `simplereenroll cn=…`.
    pub log: Arc<Mutex<Vec<String>>>,
}

struct Ca {
    cert_pem: String,
    key: rcgen::KeyPair,
    user: String,
    password: String,
    mode: Arc<Mutex<Mode>>,
    lifetime: Arc<Mutex<i64>>,
    log: Arc<Mutex<Vec<String>>>,
}

impl EstServer {
    /// Serve in `dir`, issuing with the CA `ca.pem`/`ca.key` there; re-enrollment clients
    /// must chain to that CA too.
    pub fn start(dir: &Path, user: &str, password: &str) -> EstServer {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let anchor_key = rcgen::KeyPair::generate().unwrap();
        let mut anchor_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        anchor_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "EST test anchor");
        anchor_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let anchor_cert = anchor_params.self_signed(&anchor_key).unwrap();
        let anchor = dir.join("est-anchor.pem");
        std::fs::write(&anchor, anchor_cert.pem()).unwrap();
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
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = EstServer {
            url: format!("https://localhost:{port}/.well-known/est"),
            anchor,
            mode: Arc::new(Mutex::new(Mode::Normal)),
            lifetime: Arc::new(Mutex::new(30 * 86400)),
            log: Arc::new(Mutex::new(Vec::new())),
        };
        let ca = Arc::new(Ca {
            cert_pem: unit_ca,
            key: rcgen::KeyPair::from_pem(&std::fs::read_to_string(dir.join("ca.key")).unwrap()).unwrap(),
            user: user.into(),
            password: password.into(),
            mode: server.mode.clone(),
            lifetime: server.lifetime.clone(),
            log: server.log.clone(),
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

    pub fn set_mode(&self, m: Mode) {
        *self.mode.lock().unwrap() = m;
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
        let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
        let op = path.rsplit('/').next().unwrap_or("").to_string();
        match self.mode.lock().unwrap().clone() {
            Mode::BadRequest => return Some(http("400 Bad Request", "", b"the CSR is not acceptable")),
            Mode::Malformed => return Some(http("200 OK", "Content-Transfer-Encoding: base64\r\n", b"bm90IHBrY3M3")),
            Mode::RetryLater(n) => return Some(http("202 Accepted", &format!("Retry-After: {n}\r\n"), b"")),
            Mode::Normal => {}
        }
        let p7 = |certs: &[Vec<u8>]| {
            http(
                "200 OK",
                "Content-Type: application/pkcs7-mime; smime-type=certs-only\r\nContent-Transfer-Encoding: base64\r\n",
                aos_iam::codec::pem::base64_encode(&aos_iam::codec::der::pkcs7_certs_only(certs)).as_bytes(),
            )
        };
        match op.as_str() {
            "cacerts" => {
                let ca = CertificateDer::from_pem_slice(self.cert_pem.as_bytes())
                    .unwrap()
                    .to_vec();
                Some(p7(&[ca]))
            }
            "simpleenroll" => {
                let auth = head
                    .lines()
                    .find_map(|l| l.strip_prefix("Authorization: Basic "))
                    .and_then(|b| aos_iam::codec::pem::base64_decode(b.as_bytes()))
                    .map(|b| String::from_utf8_lossy(&b).to_string());
                // A bootstrap certificate (chained to the unit CA, checked by the TLS layer)
                // or the right basic-auth credentials.
                let who = match (auth, peer_cn(tls)) {
                    (Some(a), _) if a == format!("{}:{}", self.user, self.password) => format!("user={}", self.user),
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

    /// Sign a base64 CSR with the unit CA: a leaf valid for the configured lifetime.
    fn issue(&self, body: &[u8]) -> Result<Vec<u8>, String> {
        let der = aos_iam::codec::pem::base64_decode(body).ok_or("the body is not base64")?;
        let csr = rustls::pki_types::CertificateSigningRequestDer::from(der);
        let mut params = rcgen::CertificateSigningRequestParams::from_der(&csr).map_err(|e| format!("bad CSR: {e}"))?;
        let now = time::OffsetDateTime::now_utc();
        params.params.not_before = now - time::Duration::seconds(10);
        params.params.not_after = now + time::Duration::seconds(*self.lifetime.lock().unwrap());
        params.params.serial_number = Some(aos_iam::pki::x509::random_serial().unwrap());
        params.params.use_authority_key_identifier_extension = true;
        let issuer = rcgen::Issuer::from_ca_cert_pem(&self.cert_pem, &self.key).unwrap();
        Ok(params.signed_by(&issuer).map_err(|e| e.to_string())?.der().to_vec())
    }
}
