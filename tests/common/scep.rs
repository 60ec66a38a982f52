//! Debian's independent SCEP server (`scepserver`, micromdm 2.1.0, written in Go), run
//! for a test with a throwaway RSA CA. It listens on every address and has no option to
//! bind one, so each test that runs it first moves its own thread into a private network
//! namespace with only a loopback: the server, iamd and the clients the test starts are
//! all inside it, and nothing is reachable from outside.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const CHALLENGE: &str = "scep-challenge-2f7d";
pub const PORT: u16 = 8080;

/// Move the calling thread (a test's own) into a new network namespace with `lo` up;
/// everything it starts from now on is in there.
pub fn private_network() {
    super::require_root();
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
    let up = Command::new("ip").args(["link", "set", "lo", "up"]).status().unwrap();
    assert!(up.success(), "ip link set lo up");
}

/// `iam-provision --json run --scep URL --scep-ca-fingerprint FP --challenge-file F`, F the
/// node's file `challenge`.
pub fn scep_run(node: &super::Node, url: &str, fingerprint: &str, challenge: &str) -> super::Out {
    let (pw, ch) = (node.p("password"), node.p(challenge));
    node.provision(&[
        "--json",
        "run",
        "--password-file",
        &pw,
        "--scep",
        url,
        "--scep-ca-fingerprint",
        fingerprint,
        "--challenge-file",
        &ch,
    ])
}

/// Make `ca` (PEM) one of the node's roots, beside its own CA.
pub fn trust(node: &super::Node, ca: &Path) {
    let mut roots = super::read(node.path("ca.pem"));
    roots.push_str(&super::read(ca));
    std::fs::write(node.path("ca.pem"), roots).unwrap();
}

pub struct ScepServer {
    pub depot: PathBuf,
    pub url: String,
    log: PathBuf,
    child: Option<Child>,
    args: Vec<String>,
}

fn wait_listening(port: u16) {
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "scepserver did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl ScepServer {
    /// A CA made by `scepserver ca -init` in `dir/depot`, and the server on [`PORT`]
    /// (`-allowrenew 0`: the same subject may be issued again, as renewals need).
    pub fn start(dir: &Path, extra: &[&str]) -> ScepServer {
        let depot = dir.join("depot");
        let out = Command::new("scepserver")
            .args(["ca", "-init", "-depot"])
            .arg(&depot)
            .args([
                "-keySize",
                "2048",
                "-organization",
                "aos-iam tests",
                "-organizational_unit",
                "scep test CA",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "scepserver ca -init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut args: Vec<String> = vec![
            "-depot".into(),
            depot.display().to_string(),
            "-port".into(),
            PORT.to_string(),
        ];
        args.extend([
            "-challenge".into(),
            CHALLENGE.into(),
            "-allowrenew".into(),
            "0".into(),
            "-debug".into(),
        ]);
        args.extend(extra.iter().map(|a| a.to_string()));
        let mut s = ScepServer {
            url: format!("http://127.0.0.1:{PORT}/scep"),
            log: dir.join("scepserver.log"),
            depot,
            child: None,
            args,
        };
        s.run();
        s
    }

    fn run(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        self.child = Some(
            Command::new("scepserver")
                .args(&self.args)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
        wait_listening(PORT);
    }

    pub fn ca_pem(&self) -> PathBuf {
        self.depot.join("ca.pem")
    }

    /// SHA-256 of the CA certificate's DER, as `openssl x509 -fingerprint` prints it.
    pub fn fingerprint(&self) -> String {
        let out = super::sh(&format!(
            "openssl x509 -in {} -noout -fingerprint -sha256",
            self.ca_pem().display()
        ))
        .ok();
        out.stdout.trim().rsplit('=').next().unwrap().to_string()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for ScepServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A TCP relay in front of the server that passes `pass` connections through, then
/// accepts the next one, reads its request and closes it unanswered: a server that goes
/// away in the middle of a transaction. Returns its URL.
pub fn vanishing_relay(port: u16, to: u16, pass: usize) -> String {
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    std::thread::spawn(move || {
        for (n, conn) in listener.incoming().enumerate() {
            let Ok(mut client) = conn else { continue };
            if n >= pass {
                let mut buf = [0u8; 4096];
                let _ = client.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = client.read(&mut buf);
                drop(client);
                continue;
            }
            let mut server = std::net::TcpStream::connect(("127.0.0.1", to)).unwrap();
            let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c2, &mut server);
                let _ = server.shutdown(std::net::Shutdown::Write);
            });
            let _ = std::io::copy(&mut s2, &mut client);
            let _ = client.flush();
            let _ = client.shutdown(std::net::Shutdown::Both);
        }
    });
    format!("http://127.0.0.1:{port}/scep")
}

/// What the PENDING server saw of one request: its messageType, transactionID, and whether
/// `openssl cms -verify` accepted its signature.
#[derive(Debug, Clone)]
pub struct Seen {
    pub message_type: String,
    pub transaction_id: String,
    pub verified: bool,
    /// The request envelope's content cipher, as `openssl cms -cmsout -print` names it.
    pub cipher: String,
}

/// A SCEP server of our own, for what `scepserver` cannot show: it answers PENDING (this
/// many times, then issues), and can speak through an RA. What it does with a request is
/// done by openssl: `cms -verify` checks its signature and takes out the envelope and the
/// signer's certificate, `cms -decrypt` opens the envelope with the RA's (or CA's) key,
/// `req -verify` checks the CSR, `x509 -req` issues, `crl2pkcs7` and `cms -encrypt`
/// envelope the answer to the request's signer. Only the CertRep's SignedData around it
/// (its SCEP attributes, which openssl's CLI cannot set) is made here, signed with ring.
pub struct PendingServer {
    pub url: String,
    pub ca_pem: PathBuf,
    pub seen: std::sync::Arc<std::sync::Mutex<Vec<Seen>>>,
}

fn oid_of(content: &[u8]) -> String {
    aos_iam::codec::der::oid_text(content).unwrap_or_default()
}

/// The signed attributes of a SignerInfo of a SCEP request: (OID, value TLV).
fn request_attrs(msg: &[u8]) -> Vec<(String, Vec<u8>)> {
    use aos_iam::codec::der::read_tlv;
    let ci = read_tlv(msg).unwrap();
    let o = read_tlv(ci.content).unwrap();
    let explicit = read_tlv(o.rest).unwrap();
    let sd = read_tlv(explicit.content).unwrap();
    let mut rest = sd.content;
    let mut last = None;
    while !rest.is_empty() {
        let t = read_tlv(rest).unwrap();
        rest = t.rest;
        last = Some(t);
    }
    let infos = last.unwrap(); // signerInfos, the last field
    let info = read_tlv(infos.content).unwrap();
    let v = read_tlv(info.content).unwrap();
    let sid = read_tlv(v.rest).unwrap();
    let dalg = read_tlv(sid.rest).unwrap();
    let signed = read_tlv(dalg.rest).unwrap();
    assert_eq!(signed.tag, 0xa0);
    let mut attrs = Vec::new();
    let mut set = signed.content;
    while !set.is_empty() {
        let a = read_tlv(set).unwrap();
        let o = read_tlv(a.content).unwrap();
        let values = read_tlv(o.rest).unwrap();
        attrs.push((oid_of(o.content), read_tlv(values.content).unwrap().whole.to_vec()));
        set = a.rest;
    }
    attrs
}

fn oid_der(dotted: &str) -> Vec<u8> {
    let arcs: Vec<u64> = dotted.split('.').map(|a| a.parse().unwrap()).collect();
    let mut out = Vec::new();
    let mut push = |mut v: u64| {
        let mut b = vec![(v & 0x7f) as u8];
        v >>= 7;
        while v > 0 {
            b.push(0x80 | (v & 0x7f) as u8);
            v >>= 7;
        }
        b.reverse();
        out.extend(b);
    };
    push(arcs[0] * 40 + arcs[1]);
    arcs[2..].iter().for_each(|a| push(*a));
    aos_iam::codec::der::tlv(0x06, &out)
}

fn ossl(args: &str) {
    super::sh(&format!("openssl {args}")).ok();
}

/// An RA certificate as RFC 8894 §2.1 has it: marked id-kp-cmcRA, able to sign and to
/// receive the request's content key.
pub const RA_EXT: &str = "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n\
                          extendedKeyUsage=1.3.6.1.5.5.7.3.28\n";

impl PendingServer {
    /// `pending`: how many answers are PENDING before one issues (`usize::MAX`: never);
    /// `ra`: GetCACert sends an RA (id-kp-cmcRA) and the CA, and the RA signs and decrypts.
    pub fn start(dir: &Path, port: u16, pending: usize, ra: bool) -> PendingServer {
        Self::start_with(
            dir,
            port,
            pending,
            ra.then_some(RA_EXT),
            "POSTPKIOperation\nSHA-256\nAES\nSCEPStandard\n",
        )
    }

    /// The same, announcing `caps` in GetCACaps. Without POSTPKIOperation, PKIOperation
    /// comes by GET, the message base64 and URL-escaped in the query (and a POST is refused).
    /// `ra`: the extensions (openssl's extfile) of an RA certificate the CA issues, which
    /// GetCACert sends beside the CA, and which signs and decrypts.
    pub fn start_with(dir: &Path, port: u16, pending: usize, ra: Option<&str>, caps: &'static str) -> PendingServer {
        use aos_iam::codec::der::tlv;
        let d = dir.display();
        ossl(&format!(
            "req -x509 -newkey rsa:2048 -nodes -days 30 -keyout {d}/pending-ca.key -out {d}/pending-ca.pem \
             -subj '/O=aos-iam tests/CN=pending CA' -addext basicConstraints=critical,CA:TRUE \
             -addext keyUsage=critical,keyCertSign,cRLSign"
        ));
        let ca_pem = dir.join("pending-ca.pem");
        let pem_der = |p: &Path| aos_iam::pki::x509::parse_chain_pem(&super::read(p)).unwrap()[0].to_vec();
        let ca_der = pem_der(&ca_pem);
        let (signer_name, get_ca_cert) = if let Some(ext) = ra {
            std::fs::write(dir.join("ra.ext"), ext).unwrap();
            ossl(&format!(
                "req -new -newkey rsa:2048 -nodes -keyout {d}/pending-ra.key -out {d}/pending-ra.csr -subj '/O=aos-iam tests/CN=pending RA'"
            ));
            ossl(&format!(
                "x509 -req -in {d}/pending-ra.csr -CA {d}/pending-ca.pem -CAkey {d}/pending-ca.key -days 30 \
                 -set_serial 7 -extfile {d}/ra.ext -out {d}/pending-ra.pem"
            ));
            ossl(&format!(
                "crl2pkcs7 -nocrl -certfile {d}/pending-ra.pem -certfile {d}/pending-ca.pem -outform DER -out {d}/getcacert.der"
            ));
            (
                "pending-ra",
                (
                    "application/x-x509-ca-ra-cert",
                    std::fs::read(dir.join("getcacert.der")).unwrap(),
                ),
            )
        } else {
            ("pending-ca", ("application/x-x509-ca-cert", ca_der.clone()))
        };
        let signer_pem = dir.join(format!("{signer_name}.pem"));
        let signer_key = dir.join(format!("{signer_name}.key"));
        let key_der = aos_iam::codec::pem::base64_decode(
            super::read(&signer_key)
                .lines()
                .filter(|l| !l.starts_with("-----"))
                .collect::<String>()
                .as_bytes(),
        )
        .unwrap();
        let signer = ring::signature::RsaKeyPair::from_pkcs8(&key_der).unwrap();
        let (issuer, serial) = {
            use x509_parser::prelude::FromDer;
            let der = pem_der(&signer_pem);
            let (_, c) = x509_parser::certificate::X509Certificate::from_der(&der).unwrap();
            (
                c.tbs_certificate.issuer.as_raw().to_vec(),
                c.tbs_certificate.raw_serial().to_vec(),
            )
        };
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        let dir = dir.to_path_buf();
        std::thread::spawn(move || {
            let d = dir.display().to_string();
            let mut answered = 0usize;
            for (n, conn) in listener.incoming().enumerate() {
                let Ok(mut c) = conn else { continue };
                let mut raw = Vec::new();
                let mut buf = [0u8; 8192];
                // The head, then as much body as Content-Length says.
                let (head, body) = loop {
                    let k = c.read(&mut buf).unwrap_or(0);
                    if k == 0 {
                        break (String::new(), Vec::new());
                    }
                    raw.extend_from_slice(&buf[..k]);
                    if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&raw[..end]).to_string();
                        let len: usize = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse().unwrap())
                            })
                            .unwrap_or(0);
                        while raw.len() < end + 4 + len {
                            let k = c.read(&mut buf).unwrap();
                            raw.extend_from_slice(&buf[..k]);
                        }
                        break (head, raw[end + 4..end + 4 + len].to_vec());
                    }
                };
                let (ctype, answer): (&str, Vec<u8>) = if head.contains("operation=GetCACaps") {
                    ("text/plain", caps.as_bytes().to_vec())
                } else if head.contains("operation=GetCACert") {
                    (get_ca_cert.0, get_ca_cert.1.clone())
                } else {
                    let body = if caps.contains("POSTPKIOperation") {
                        body
                    } else {
                        assert!(
                            head.starts_with("GET "),
                            "a POST to a server that did not announce it: {head}"
                        );
                        let query = head.split_whitespace().nth(1).unwrap();
                        let message = query.split("message=").nth(1).unwrap();
                        let mut unescaped = Vec::new();
                        let b = message.as_bytes();
                        let mut i = 0;
                        while i < b.len() {
                            if b[i] == b'%' {
                                unescaped.push(u8::from_str_radix(&message[i + 1..i + 3], 16).unwrap());
                                i += 3;
                            } else {
                                unescaped.push(b[i]);
                                i += 1;
                            }
                        }
                        aos_iam::codec::pem::base64_decode(&unescaped).unwrap()
                    };
                    std::fs::write(dir.join(format!("req-{n}.der")), &body).unwrap();
                    let verified = Command::new("sh")
                        .arg("-c")
                        .arg(format!(
                            "openssl cms -verify -binary -inform DER -noverify -in {d}/req-{n}.der -out {d}/env-{n}.der \
                             -signer {d}/signer-{n}.pem"
                        ))
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status()
                        .unwrap()
                        .success();
                    let attrs = request_attrs(&body);
                    let get = |o: &str| {
                        attrs
                            .iter()
                            .find(|(a, _)| a == o)
                            .map(|(_, v)| v.clone())
                            .unwrap_or_default()
                    };
                    let text = |v: Vec<u8>| {
                        String::from_utf8_lossy(aos_iam::codec::der::read_tlv(&v).map_or(&[][..], |t| t.content))
                            .to_string()
                    };
                    let message_type = text(get("2.16.840.1.113733.1.9.2"));
                    if message_type == "19" || message_type == "17" {
                        // The CSR, by openssl, with the RA's (or CA's) key; kept for CertPoll.
                        ossl(&format!(
                            "cms -decrypt -binary -inform DER -in {d}/env-{n}.der -recip {} -inkey {} -out {d}/csr.der",
                            signer_pem.display(),
                            signer_key.display()
                        ));
                        ossl(&format!("req -verify -inform DER -in {d}/csr.der -out {d}/csr.pem"));
                        std::fs::copy(dir.join(format!("signer-{n}.pem")), dir.join("requester.pem")).unwrap();
                    }
                    let txid = get("2.16.840.1.113733.1.9.7");
                    let nonce = get("2.16.840.1.113733.1.9.5");
                    let printed = Command::new("openssl")
                        .args(["cms", "-cmsout", "-print", "-inform", "DER", "-in"])
                        .arg(dir.join(format!("env-{n}.der")))
                        .output()
                        .unwrap();
                    let printed = String::from_utf8_lossy(&printed.stdout).to_string();
                    let cipher = ["aes-128-cbc", "aes-256-cbc", "des-ede3-cbc"]
                        .into_iter()
                        .find(|c| printed.contains(c))
                        .unwrap_or("?")
                        .to_string();
                    seen2.lock().unwrap().push(Seen {
                        message_type,
                        transaction_id: text(txid.clone()),
                        verified,
                        cipher,
                    });
                    answered += 1;
                    // SUCCESS: issued by the CA, in a certs-only PKCS#7 enveloped to the requester.
                    let content = (answered > pending).then(|| {
                        ossl(&format!(
                            "x509 -req -in {d}/csr.pem -CA {d}/pending-ca.pem -CAkey {d}/pending-ca.key -days 30 \
                             -set_serial {} -copy_extensions copy -out {d}/issued.pem",
                            100 + n
                        ));
                        ossl(&format!("crl2pkcs7 -nocrl -certfile {d}/issued.pem -outform DER -out {d}/issued.p7"));
                        ossl(&format!(
                            "cms -encrypt -binary -aes-128-cbc -in {d}/issued.p7 -outform DER -out {d}/answer-env.der {d}/requester.pem"
                        ));
                        std::fs::read(dir.join("answer-env.der")).unwrap()
                    });
                    let attr = |o: &str, v: Vec<u8>| tlv(0x30, &[oid_der(o), tlv(0x31, &v)].concat());
                    let digest = ring::digest::digest(&ring::digest::SHA256, content.as_deref().unwrap_or_default());
                    let status: &[u8] = if content.is_some() { b"0" } else { b"3" };
                    let mut set = [
                        attr("1.2.840.113549.1.9.3", oid_der("1.2.840.113549.1.7.1")),
                        attr("1.2.840.113549.1.9.4", tlv(0x04, digest.as_ref())),
                        attr("2.16.840.1.113733.1.9.2", tlv(0x13, b"3")),
                        attr("2.16.840.1.113733.1.9.3", tlv(0x13, status)),
                        attr("2.16.840.1.113733.1.9.7", txid),
                        attr("2.16.840.1.113733.1.9.5", tlv(0x04, &[9u8; 16])),
                        attr("2.16.840.1.113733.1.9.6", nonce),
                    ];
                    set.sort();
                    let signed = tlv(0x31, &set.concat());
                    let mut sig = vec![0u8; signer.public().modulus_len()];
                    signer
                        .sign(
                            &ring::signature::RSA_PKCS1_SHA256,
                            &ring::rand::SystemRandom::new(),
                            &signed,
                            &mut sig,
                        )
                        .unwrap();
                    let mut implicit = signed.clone();
                    implicit[0] = 0xa0;
                    let sha256 = tlv(0x30, &oid_der("2.16.840.1.101.3.4.2.1"));
                    let info = tlv(
                        0x30,
                        &[
                            tlv(0x02, &[1]),
                            tlv(0x30, &[issuer.clone(), tlv(0x02, &serial)].concat()),
                            sha256.clone(),
                            implicit,
                            tlv(0x30, &[oid_der("1.2.840.113549.1.1.1"), vec![5, 0]].concat()),
                            tlv(0x04, &sig),
                        ]
                        .concat(),
                    );
                    let encap = match &content {
                        Some(c) => tlv(
                            0x30,
                            &[oid_der("1.2.840.113549.1.7.1"), tlv(0xa0, &tlv(0x04, c))].concat(),
                        ),
                        None => tlv(0x30, &oid_der("1.2.840.113549.1.7.1")),
                    };
                    let sd = tlv(
                        0x30,
                        &[tlv(0x02, &[1]), tlv(0x31, &sha256), encap, tlv(0x31, &info)].concat(),
                    );
                    (
                        "application/x-pki-message",
                        tlv(0x30, &[oid_der("1.2.840.113549.1.7.2"), tlv(0xa0, &sd)].concat()),
                    )
                };
                let _ = c.write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        answer.len()
                    )
                    .as_bytes(),
                );
                let _ = c.write_all(&answer);
            }
        });
        PendingServer {
            url: format!("http://127.0.0.1:{port}/scep"),
            ca_pem,
            seen,
        }
    }

    /// SHA-256 of its CA certificate's DER, hex.
    pub fn fingerprint(&self) -> String {
        let der = aos_iam::pki::x509::parse_chain_pem(&super::read(&self.ca_pem)).unwrap()[0].to_vec();
        aos_iam::codec::hex(ring::digest::digest(&ring::digest::SHA256, &der).as_ref())
    }
}
