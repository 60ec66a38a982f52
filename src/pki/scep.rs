#![cfg_attr(not(feature = "scep"), allow(dead_code, unused_imports))]
//! SCEP client (RFC 8894): GetCACaps, GetCACert, PKCSReq or RenewalReq, CertPoll.
//!
//! SCEP runs over plain HTTP; what makes it safe is the CA certificate's SHA-256
//! fingerprint, checked out of band and configured: the CA GetCACert returns must have it,
//! an RA beside it must be signed by it, and every answer must be signed by one of them.
//! A request is CMS SignedData signed by the module's key inside its store, carrying an
//! EnvelopedData encrypted to the RA (or CA) with the strongest cipher GetCACaps announces.
//! The answer (CertRep) has its signature, transaction id and nonces checked; its
//! EnvelopedData is encrypted to the request's signer certificate and decrypted inside the
//! store (RSA keys: an EC key cannot be the recipient of RSA key transport, and key
//! agreement recipients are not read). The issued chain is returned leaf first, with the
//! CA GetCACert returned behind it, for the caller to validate and apply as ApplyCert does.

use crate::codec::der::{self, read_tlv, tlv};
use crate::codec::Fingerprint;
use crate::config::Algorithm;
use crate::error::{Error, ErrorKind, Result};
use crate::pki::http::{parse_response, Response};
use crate::pki::x509::StoredKey;
use crate::secret::Secret;
use std::io::{Read, Write};
use std::time::{Duration, Instant};
use x509_parser::prelude::FromDer;

/// Largest SCEP answer read.
pub const MAX_RESPONSE: usize = 1024 * 1024;

// Object identifiers, as dotted text (encoded by `oid`).
const DATA: &str = "1.2.840.113549.1.7.1";
const SIGNED_DATA: &str = "1.2.840.113549.1.7.2";
const ENVELOPED_DATA: &str = "1.2.840.113549.1.7.3";
const CONTENT_TYPE: &str = "1.2.840.113549.1.9.3";
const MESSAGE_DIGEST: &str = "1.2.840.113549.1.9.4";
const SIGNING_TIME: &str = "1.2.840.113549.1.9.5";
const RSA_ENCRYPTION: &str = "1.2.840.113549.1.1.1";
const SHA1: &str = "1.3.14.3.2.26";
const SHA256: &str = "2.16.840.1.101.3.4.2.1";
const SHA512: &str = "2.16.840.1.101.3.4.2.3";
const ECDSA_SHA256: &str = "1.2.840.10045.4.3.2";
const AES128_CBC: &str = "2.16.840.1.101.3.4.1.2";
const AES256_CBC: &str = "2.16.840.1.101.3.4.1.42";
const DES_EDE3_CBC: &str = "1.2.840.113549.3.7";
const DES_CBC: &str = "1.3.14.3.2.7";
const MESSAGE_TYPE: &str = "2.16.840.1.113733.1.9.2";
const PKI_STATUS: &str = "2.16.840.1.113733.1.9.3";
const FAIL_INFO: &str = "2.16.840.1.113733.1.9.4";
const SENDER_NONCE: &str = "2.16.840.1.113733.1.9.5";
const RECIPIENT_NONCE: &str = "2.16.840.1.113733.1.9.6";
const TRANSACTION_ID: &str = "2.16.840.1.113733.1.9.7";
const FAIL_INFO_TEXT: &str = "1.3.6.1.5.5.7.24.1";

/// An OBJECT IDENTIFIER, DER-encoded with its tag.
fn oid(dotted: &str) -> Vec<u8> {
    let arcs: Vec<u64> = dotted.split('.').map(|a| a.parse().unwrap_or(0)).collect();
    let mut content = Vec::new();
    let mut push = |mut v: u64| {
        let mut bytes = vec![(v & 0x7f) as u8];
        v >>= 7;
        while v > 0 {
            bytes.push(0x80 | (v & 0x7f) as u8);
            v >>= 7;
        }
        bytes.reverse();
        content.extend(bytes);
    };
    push(arcs[0] * 40 + arcs.get(1).copied().unwrap_or(0));
    arcs.iter().skip(2).for_each(|a| push(*a));
    tlv(0x06, &content)
}

fn seq(parts: &[Vec<u8>]) -> Vec<u8> {
    tlv(0x30, &parts.concat())
}

/// A DER SET OF: its elements sorted by their encodings.
fn set_of(mut parts: Vec<Vec<u8>>) -> Vec<u8> {
    parts.sort();
    tlv(0x31, &parts.concat())
}

fn algorithm_id(dotted: &str, params: Option<Vec<u8>>) -> Vec<u8> {
    seq(&[oid(dotted), params.unwrap_or_default()])
}

fn attribute(dotted: &str, value: Vec<u8>) -> Vec<u8> {
    seq(&[oid(dotted), tlv(0x31, &value)])
}

fn printable(s: &str) -> Vec<u8> {
    tlv(0x13, s.as_bytes())
}

fn random<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .map_err(|_| Error::internal("the OS random number generator failed"))?;
    Ok(b)
}

/// A malformed SCEP structure: a protocol error naming what.
fn malformed(what: &str) -> Error {
    Error::protocol(format!("the SCEP answer is malformed: {what}"))
}

/// The SCEP message types this client sends and reads (RFC 8894 §3.2.1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    CertRep,
    RenewalReq,
    PkcsReq,
    CertPoll,
}

impl MessageType {
    fn code(self) -> &'static str {
        match self {
            MessageType::CertRep => "3",
            MessageType::RenewalReq => "17",
            MessageType::PkcsReq => "19",
            MessageType::CertPoll => "20",
        }
    }
}

/// What GetCACaps announced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caps {
    pub aes: bool,
    pub des3: bool,
    pub sha256: bool,
    pub sha512: bool,
    pub post: bool,
    pub renewal: bool,
    /// SCEPStandard: AES, SHA-256 and POST, all three (RFC 8894 §3.5.2).
    pub standard: bool,
}

impl Caps {
    pub fn parse(text: &str) -> Caps {
        let mut c = Caps::default();
        for line in text.lines().map(|l| l.trim().to_ascii_lowercase()) {
            match line.as_str() {
                "aes" => c.aes = true,
                "des3" => c.des3 = true,
                "sha-256" => c.sha256 = true,
                "sha-512" => c.sha512 = true,
                "postpkioperation" => c.post = true,
                "renewal" => c.renewal = true,
                "scepstandard" => c.standard = true,
                _ => {}
            }
        }
        if c.standard {
            c.aes = true;
            c.sha256 = true;
            c.post = true;
        }
        c
    }

    /// The content cipher a request uses: AES before 3DES, and 3DES only where the node's
    /// policy allows it (`[scep] allow_des3`): GetCACaps goes over plain HTTP, so anyone on
    /// the path can strike AES from it, and by default that makes the exchange fail rather
    /// than fall back. A server that announces neither is refused: single DES, the RFC's
    /// fallback, is not offered.
    fn cipher(&self, allow_des3: bool) -> Result<Cipher> {
        if self.aes {
            Ok(Cipher::Aes128)
        } else if self.des3 && allow_des3 {
            Ok(Cipher::Des3)
        } else if self.des3 {
            Err(Error::invalid(
                "the SCEP server announces DES3 but not AES (GetCACaps); this node uses DES3 only with \
                 `[scep] allow_des3 = true` (an answer on the path may have struck AES out)",
            ))
        } else {
            Err(Error::invalid(
                "the SCEP server announces neither AES nor DES3 (GetCACaps); single DES is not used",
            ))
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cipher {
    Aes128,
    Aes256,
    Des3,
    /// Single DES: read in answers only (micromdm's scepserver encrypts its CertRep so,
    /// whatever the request used). What it protects is the issued certificate, which is
    /// public; the answer's integrity is its RA/CA signature. Never used for requests.
    Des,
}

impl Cipher {
    fn from_oid(dotted: &str) -> Option<Cipher> {
        match dotted {
            AES128_CBC => Some(Cipher::Aes128),
            AES256_CBC => Some(Cipher::Aes256),
            DES_EDE3_CBC => Some(Cipher::Des3),
            DES_CBC => Some(Cipher::Des),
            _ => None,
        }
    }
    fn oid(self) -> &'static str {
        match self {
            Cipher::Aes128 => AES128_CBC,
            Cipher::Aes256 => AES256_CBC,
            Cipher::Des3 => DES_EDE3_CBC,
            Cipher::Des => DES_CBC,
        }
    }
    fn key_len(self) -> usize {
        match self {
            Cipher::Aes128 => 16,
            Cipher::Aes256 => 32,
            Cipher::Des3 => 24,
            Cipher::Des => 8,
        }
    }
    fn iv_len(self) -> usize {
        match self {
            Cipher::Des3 | Cipher::Des => 8,
            _ => 16,
        }
    }

    #[cfg(feature = "scep")]
    fn encrypt(self, key: &[u8], iv: &[u8], data: &[u8]) -> Result<Vec<u8>> {
        use cbc::cipher::{block_padding::Pkcs7, BlockEncryptMut, KeyIvInit};
        let bad = |_| Error::internal("content cipher key or IV of the wrong length");
        Ok(match self {
            Cipher::Aes128 => cbc::Encryptor::<aes::Aes128>::new_from_slices(key, iv)
                .map_err(bad)?
                .encrypt_padded_vec_mut::<Pkcs7>(data),
            Cipher::Aes256 => cbc::Encryptor::<aes::Aes256>::new_from_slices(key, iv)
                .map_err(bad)?
                .encrypt_padded_vec_mut::<Pkcs7>(data),
            Cipher::Des3 => cbc::Encryptor::<des::TdesEde3>::new_from_slices(key, iv)
                .map_err(bad)?
                .encrypt_padded_vec_mut::<Pkcs7>(data),
            Cipher::Des => return Err(Error::internal("single DES is never used to encrypt")),
        })
    }

    #[cfg(feature = "scep")]
    fn decrypt(self, key: &[u8], iv: &[u8], data: &[u8]) -> Result<Vec<u8>> {
        use cbc::cipher::{block_padding::Pkcs7, BlockDecryptMut, KeyIvInit};
        let bad = |_| malformed("its content key or IV has the wrong length");
        let unpad = |_| malformed("its encrypted content does not decrypt (bad padding)");
        match self {
            Cipher::Aes128 => cbc::Decryptor::<aes::Aes128>::new_from_slices(key, iv)
                .map_err(bad)?
                .decrypt_padded_vec_mut::<Pkcs7>(data)
                .map_err(unpad),
            Cipher::Aes256 => cbc::Decryptor::<aes::Aes256>::new_from_slices(key, iv)
                .map_err(bad)?
                .decrypt_padded_vec_mut::<Pkcs7>(data)
                .map_err(unpad),
            Cipher::Des3 => cbc::Decryptor::<des::TdesEde3>::new_from_slices(key, iv)
                .map_err(bad)?
                .decrypt_padded_vec_mut::<Pkcs7>(data)
                .map_err(unpad),
            Cipher::Des => cbc::Decryptor::<des::Des>::new_from_slices(key, iv)
                .map_err(bad)?
                .decrypt_padded_vec_mut::<Pkcs7>(data)
                .map_err(unpad),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Digest {
    Sha1,
    Sha256,
    Sha512,
}

impl Digest {
    fn from_oid(dotted: &str) -> Option<Digest> {
        match dotted {
            SHA1 => Some(Digest::Sha1),
            SHA256 => Some(Digest::Sha256),
            SHA512 => Some(Digest::Sha512),
            _ => None,
        }
    }
    fn oid(self) -> &'static str {
        match self {
            Digest::Sha1 => SHA1,
            Digest::Sha256 => SHA256,
            Digest::Sha512 => SHA512,
        }
    }
    fn digest(self, data: &[u8]) -> Vec<u8> {
        let alg = match self {
            Digest::Sha1 => &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
            Digest::Sha256 => &ring::digest::SHA256,
            Digest::Sha512 => &ring::digest::SHA512,
        };
        ring::digest::digest(alg, data).as_ref().to_vec()
    }
}

/// The CA (and RA) a SCEP server speaks for, as GetCACert returned them and the configured
/// fingerprint accepted them.
#[derive(Debug, Clone)]
pub struct Authority {
    /// The CA certificate whose fingerprint was configured, then any other CA certificate
    /// sent (its chain), DER.
    pub ca: Vec<Vec<u8>>,
    /// The certificate requests are encrypted to: the RA if there is one, else the CA.
    pub recipient: Vec<u8>,
    /// Every certificate an answer may be signed by: the recipient and the CA.
    signers: Vec<Vec<u8>>,
}

/// id-kp-cmcRA (RFC 6402): the certificate of a registration authority.
const CMC_RA: &str = "1.3.6.1.5.5.7.3.28";
/// Microsoft's Certificate Request Agent, on the RA certificates of NDES.
const MS_REQUEST_AGENT: &str = "1.3.6.1.4.1.311.20.2.1";

fn is_ca(der: &[u8]) -> bool {
    x509_parser::certificate::X509Certificate::from_der(der)
        .ok()
        .and_then(|(_, c)| c.basic_constraints().ok().flatten().map(|b| b.value.ca))
        .unwrap_or(false)
}

/// The certificate's issuer and serial, as IssuerAndSerialNumber (DER), and its public key
/// (algorithm OID, subjectPublicKey bits).
struct CertKey {
    issuer_and_serial: Vec<u8>,
    key_algorithm: String,
    curve: Option<String>,
    public_key: Vec<u8>,
    subject: Vec<u8>,
}

fn cert_key(der: &[u8]) -> Result<CertKey> {
    let (_, c) = x509_parser::certificate::X509Certificate::from_der(der)
        .map_err(|e| Error::invalid(format!("certificate: {e}")))?;
    let tbs = &c.tbs_certificate;
    let spki = &tbs.subject_pki;
    Ok(CertKey {
        issuer_and_serial: seq(&[tbs.issuer.as_raw().to_vec(), tlv(0x02, tbs.raw_serial())]),
        key_algorithm: spki.algorithm.algorithm.to_id_string(),
        curve: spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .map(|o| o.to_id_string()),
        public_key: spki.subject_public_key.data.to_vec(),
        subject: tbs.subject.as_raw().to_vec(),
    })
}

/// The certificates of a GetCACert answer with this Content-Type and body: a PKCS#7 of
/// certificates (RA and CA), or one certificate. The body says which, whatever the
/// Content-Type claims; the Content-Type is named when it is neither.
pub fn ca_certs_of(content_type: &str, body: &[u8]) -> Result<Vec<Vec<u8>>> {
    let ct = content_type.to_ascii_lowercase();
    if let Some(certs) = der::pkcs7_certificates(body) {
        return Ok(certs);
    }
    if read_tlv(body).is_some_and(|t| t.rest.is_empty() && t.tag == 0x30) && cert_key(body).is_ok() {
        return Ok(vec![body.to_vec()]);
    }
    Err(Error::protocol(format!(
        "the SCEP server's GetCACert answer ({}) is neither a certificate nor a PKCS#7 of certificates",
        crate::log::escape(&ct)
    )))
}

impl Authority {
    /// With CRLs given, the RA (the recipient, when it is not the CA itself) must not be
    /// revoked by one the CA signed: a revoked RA would read the request and its challenge.
    pub fn check_revocation(&self, crls: &[rustls_pki_types::CertificateRevocationListDer<'static>]) -> Result<()> {
        let ca = &self.ca[0];
        if crls.is_empty() || self.recipient == *ca {
            return Ok(());
        }
        let parsed = crate::pki::x509::parse_crls(crls)?;
        let ra = rustls_pki_types::CertificateDer::from(self.recipient.as_slice());
        let root = rustls_pki_types::CertificateDer::from(ca.as_slice());
        match crate::pki::x509::validate_chain_against(
            std::slice::from_ref(&ra),
            std::slice::from_ref(&root),
            &[],
            rustls_pki_types::UnixTime::now(),
            &parsed,
        ) {
            Err(e) if matches!(&e.kind, crate::error::ErrorKind::Validation(r) if r == "CertRevoked") => {
                Err(Error::validation(
                    "CertRevoked",
                    "the SCEP server's RA certificate is revoked by a CRL of paths.crl",
                ))
            }
            // Its signature, marking and validity were checked by select.
            _ => Ok(()),
        }
    }

    /// Choose from GetCACert's certificates: the CA whose SHA-256 fingerprint is `want`; an
    /// RA beside it must be issued and signed by it.
    pub fn select(certs: &[Vec<u8>], want: &Fingerprint) -> Result<Authority> {
        let ca = certs.iter().find(|c| Fingerprint::of(c) == *want).ok_or_else(|| {
            Error::validation(
                "UnknownIssuer",
                format!(
                    "no certificate from the SCEP server's GetCACert has the configured CA fingerprint {want:#} \
                     (it sent {})",
                    certs
                        .iter()
                        .map(|c| format!("{:#}", Fingerprint::of(c)))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })?;
        let (_, ca_cert) = x509_parser::certificate::X509Certificate::from_der(ca)
            .map_err(|e| Error::invalid(format!("the SCEP CA certificate: {e}")))?;
        let mut chain = vec![ca.clone()];
        // An RA must be one: signed by the pinned CA, marked as an RA (id-kp-cmcRA, or the
        // Certificate Request Agent of Microsoft's NDES), within its validity. Any other
        // certificate the CA issued (a device's, over plain HTTP anyone's) would otherwise
        // read the request, its challenge password with it, and sign forged answers.
        let mut ras: Vec<(Vec<u8>, bool)> = Vec::new();
        for c in certs.iter().filter(|c| *c != ca) {
            if is_ca(c) {
                chain.push(c.clone());
                continue;
            }
            let (_, ra) = x509_parser::certificate::X509Certificate::from_der(c)
                .map_err(|e| Error::invalid(format!("the SCEP RA certificate: {e}")))?;
            let name = crate::log::escape(&ra.subject().to_string()).into_owned();
            if ra.verify_signature(Some(ca_cert.public_key())).is_err() {
                return Err(Error::validation(
                    "BadSignature",
                    format!("the SCEP server's RA certificate \"{name}\" is not signed by the CA of the configured fingerprint"),
                ));
            }
            let marked = ra.extended_key_usage().ok().flatten().is_some_and(|e| {
                e.value
                    .other
                    .iter()
                    .any(|o| matches!(o.to_id_string().as_str(), CMC_RA | MS_REQUEST_AGENT))
            });
            if !marked {
                return Err(Error::validation(
                    "NotAnRa",
                    format!(
                        "the SCEP server's GetCACert carries \"{name}\", issued by the CA but not an RA: an RA \
                         certificate must carry the extended key usage id-kp-cmcRA ({CMC_RA})"
                    ),
                ));
            }
            if !ra.validity().is_valid() {
                return Err(Error::validation(
                    "CertExpired",
                    format!("the SCEP server's RA certificate \"{name}\" is outside its validity"),
                ));
            }
            let usage = ra.key_usage().ok().flatten().map(|k| k.value);
            ras.push((c.clone(), usage.is_none_or(|k| k.key_encipherment())));
        }
        // The request is encrypted to an RA that may decipher keys; answers may be signed by
        // any RA of the CA, or the CA.
        let recipient = match ras.iter().find(|(_, enciphers)| *enciphers) {
            Some((c, _)) => c.clone(),
            None if ras.is_empty() => ca.clone(),
            None => {
                return Err(Error::validation(
                    "NotAnRa",
                    "no RA certificate of the SCEP server allows keyEncipherment, so none can receive the request",
                ))
            }
        };
        let mut signers: Vec<Vec<u8>> = ras.into_iter().map(|(c, _)| c).collect();
        signers.push(ca.clone());
        Ok(Authority {
            ca: chain,
            recipient,
            signers,
        })
    }
}

/// A server's SCEP endpoint, `http://host[:port]/path`.
pub struct ScepClient {
    host: String,
    port: u16,
    path: String,
    timeout: Duration,
    route: crate::pki::dial::Route,
}

fn parse_url(url: &str) -> Result<(String, u16, String)> {
    let (host, port, path) = crate::pki::http::split_url(url, "http", 80, "SCEP")?;
    let path = match path.trim_end_matches('/') {
        "" => "/cgi-bin/pkiclient.exe".to_string(),
        p => format!("/{p}"),
    };
    Ok((host, port, path))
}

/// `application/x-www-form-urlencoded` escaping of a query value.
fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl ScepClient {
    pub fn new(url: &str) -> Result<ScepClient> {
        let (host, port, path) = parse_url(url)?;
        Ok(ScepClient {
            host,
            port,
            path,
            timeout: crate::config::ScepSettings::DEFAULT_TIMEOUT,
            route: Default::default(),
        })
    }

    pub fn with_timeout(mut self, timeout: Duration) -> ScepClient {
        self.timeout = timeout;
        self
    }

    /// Reach the server by `route` (through the link to the main node, for a secondary
    /// with no network of its own).
    pub fn with_route(mut self, route: crate::pki::dial::Route) -> ScepClient {
        self.route = route;
        self
    }

    pub fn authority(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    pub fn caps(&self) -> Result<Caps> {
        let r = self.exchange("GET", "GetCACaps", None, None)?;
        let r = self.accept(r, "GetCACaps")?;
        Ok(Caps::parse(&String::from_utf8_lossy(&r.body)))
    }

    /// GetCACert: one DER certificate (`application/x-x509-ca-cert`) or a PKCS#7 certs-only
    /// of RA and CA (`application/x-x509-ca-ra-cert`).
    pub fn ca_certs(&self) -> Result<Vec<Vec<u8>>> {
        let r = self.exchange("GET", "GetCACert", None, None)?;
        let r = self.accept(r, "GetCACert")?;
        ca_certs_of(r.header("content-type").unwrap_or(""), &r.body)
    }

    /// PKIOperation: the message by POST when the server announced it, else by GET.
    fn pki_operation(&self, caps: &Caps, message: &[u8]) -> Result<Vec<u8>> {
        let r = if caps.post {
            self.exchange("POST", "PKIOperation", None, Some(message))?
        } else {
            let b64 = crate::codec::pem::base64_encode(message);
            self.exchange("GET", "PKIOperation", Some(&url_escape(&b64)), None)?
        };
        Ok(self.accept(r, "PKIOperation")?.body)
    }

    fn accept(&self, r: Response, op: &str) -> Result<Response> {
        match r.status {
            200 => Ok(r),
            s @ 500..=599 => Err(Error::unavailable(format!(
                "the SCEP server at {} answered {op} with {s} {}",
                self.authority(),
                r.reason
            ))),
            s => Err(Error::unauthorized(format!(
                "the SCEP server at {} refused {op}: {s} {}",
                self.authority(),
                r.reason
            ))),
        }
    }

    fn exchange(&self, method: &str, op: &str, message: Option<&str>, body: Option<&[u8]>) -> Result<Response> {
        let addr = self.authority();
        let stalled = |what: &str| {
            Error::new(
                ErrorKind::Timeout,
                format!(
                    "the SCEP server at {addr} {what} within {} s",
                    self.timeout.as_secs_f32()
                ),
            )
        };
        let server = format!("the SCEP server at {addr}");
        let mut tcp = crate::pki::dial::dial(&self.route, &addr, &server, self.timeout, false)?;
        let mut target = format!("{}?operation={op}", self.path);
        if let Some(m) = message {
            target.push_str("&message=");
            target.push_str(m);
        }
        let mut request = format!(
            "{method} {target} HTTP/1.1\r\nHost: {}:{}\r\nConnection: close\r\n",
            self.host, self.port
        )
        .into_bytes();
        match body {
            Some(b) => {
                request.extend_from_slice(
                    format!(
                        "Content-Type: application/x-pki-message\r\nContent-Length: {}\r\n\r\n",
                        b.len()
                    )
                    .as_bytes(),
                );
                request.extend_from_slice(b);
            }
            None => request.extend_from_slice(b"\r\n"),
        }
        let io_error = |e: std::io::Error| {
            if matches!(e.kind(), std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock) {
                stalled("did not answer")
            } else {
                Error::unavailable(format!("the SCEP server at {addr} went away during {op}: {e}"))
            }
        };
        tcp.write_all(&request).map_err(io_error)?;
        let mut raw = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            if tcp.deadline() <= Instant::now() {
                return Err(stalled("did not finish its answer"));
            }
            match tcp.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    raw.extend_from_slice(&buf[..n]);
                    if raw.len() > MAX_RESPONSE {
                        return Err(Error::protocol(format!(
                            "the SCEP answer to {op} exceeds {MAX_RESPONSE} bytes"
                        )));
                    }
                }
                Err(e) => return Err(io_error(e)),
            }
        }
        if raw.is_empty() {
            return Err(Error::unavailable(format!(
                "the SCEP server at {addr} closed the connection without answering {op}"
            )));
        }
        parse_response(&raw).map_err(|e| e.context(format!("the SCEP answer to {op}")))
    }
}

/// The signer of a request: the key in its store, and the certificate the request carries
/// for it (a transient self-signed one, or the current certificate for a RenewalReq).
pub struct RequestSigner<'a> {
    pub key: &'a StoredKey<'a>,
    pub cert: Vec<u8>,
    /// The certificates between `cert` and the CA's root (a RenewalReq by a certificate an
    /// issuing CA signed), carried beside it so that the server can build its chain.
    pub intermediates: Vec<Vec<u8>>,
}

/// One SCEP request built, with what its answer must match.
struct Sent {
    transaction_id: String,
    sender_nonce: [u8; 16],
}

/// The SignedData of a request around `content` (DER), signed in the store.
#[cfg(feature = "scep")]
fn signed_request(
    signer: &RequestSigner,
    authority: &Authority,
    cipher: Cipher,
    message_type: MessageType,
    transaction_id: &str,
    content: &[u8],
) -> Result<(Vec<u8>, Sent)> {
    // The store signs SHA-256 digests (RSA: CKM_SHA256_RSA_PKCS; P-256: SHA-256, then
    // CKM_ECDSA), so the content digest is SHA-256 too whatever else the server announces.
    let digest = Digest::Sha256;
    let algorithm = signer.key.public.algorithm;
    let signature_algorithm = match algorithm {
        Algorithm::Rsa2048 => algorithm_id(RSA_ENCRYPTION, Some(vec![0x05, 0x00])),
        Algorithm::EcdsaP256 => algorithm_id(ECDSA_SHA256, None),
        Algorithm::EcdsaP384 => {
            return Err(Error::invalid(
                "SCEP requests are signed with SHA-256: a P-384 key (signing SHA-384) cannot make one",
            ))
        }
    };
    // pkcsPKIEnvelope: the content encrypted to the RA/CA.
    let cek = zeroize::Zeroizing::new(random::<32>()?[..cipher.key_len()].to_vec());
    let iv = random::<16>()?[..cipher.iv_len()].to_vec();
    let encrypted = cipher.encrypt(&cek, &iv, content)?;
    let recipient = cert_key(&authority.recipient)?;
    if recipient.key_algorithm != RSA_ENCRYPTION {
        return Err(Error::invalid(format!(
            "the SCEP server's RA/CA key is {} and not RSA: encrypting to it (key agreement) is not supported",
            recipient.key_algorithm
        )));
    }
    let encrypted_key = rsa_encrypt(&recipient.public_key, &cek)?;
    let enveloped = seq(&[
        tlv(0x02, &[0]),
        tlv(
            0x31,
            &seq(&[
                tlv(0x02, &[0]),
                recipient.issuer_and_serial.clone(),
                algorithm_id(RSA_ENCRYPTION, Some(vec![0x05, 0x00])),
                tlv(0x04, &encrypted_key),
            ]),
        ),
        seq(&[
            oid(DATA),
            algorithm_id(cipher.oid(), Some(tlv(0x04, &iv))),
            tlv(0x80, &encrypted),
        ]),
    ]);
    let envelope = seq(&[oid(ENVELOPED_DATA), tlv(0xa0, &enveloped)]);
    // signedAttrs, signed by the key in its store.
    let sender_nonce = random::<16>()?;
    let own = cert_key(&signer.cert)?;
    let attrs = set_of(vec![
        attribute(CONTENT_TYPE, oid(DATA)),
        attribute(MESSAGE_DIGEST, tlv(0x04, &digest.digest(&envelope))),
        attribute(SIGNING_TIME, utc_time(crate::sys::now())),
        attribute(MESSAGE_TYPE, printable(message_type.code())),
        attribute(TRANSACTION_ID, printable(transaction_id)),
        attribute(SENDER_NONCE, tlv(0x04, &sender_nonce)),
    ]);
    let signature = signer
        .key
        .store
        .sign(signer.key.label, &signer.key.id, algorithm, &attrs)?;
    let digest_oid = digest.oid();
    let mut signed_attrs = attrs.clone();
    signed_attrs[0] = 0xa0; // [0] IMPLICIT
    let signer_info = seq(&[
        tlv(0x02, &[1]),
        own.issuer_and_serial,
        algorithm_id(digest_oid, None),
        signed_attrs,
        signature_algorithm,
        tlv(0x04, &signature),
    ]);
    let signed_data = seq(&[
        tlv(0x02, &[1]),
        tlv(0x31, &algorithm_id(digest_oid, None)),
        seq(&[oid(DATA), tlv(0xa0, &tlv(0x04, &envelope))]),
        tlv(0xa0, &[signer.cert.clone(), signer.intermediates.concat()].concat()),
        tlv(0x31, &signer_info),
    ]);
    Ok((
        seq(&[oid(SIGNED_DATA), tlv(0xa0, &signed_data)]),
        Sent {
            transaction_id: transaction_id.to_string(),
            sender_nonce,
        },
    ))
}

fn utc_time(t: i64) -> Vec<u8> {
    let dt = time::OffsetDateTime::from_unix_timestamp(t).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let text = format!(
        "{:02}{:02}{:02}{:02}{:02}{:02}Z",
        dt.year() % 100,
        dt.month() as u8,
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second()
    );
    tlv(0x17, text.as_bytes())
}

/// RSAES-PKCS1-v1_5 encryption of `data` to a PKCS#1 RSAPublicKey.
#[cfg(feature = "scep")]
fn rsa_encrypt(rsa_public_key: &[u8], data: &[u8]) -> Result<Vec<u8>> {
    use rsa::pkcs1::DecodeRsaPublicKey;
    let key = rsa::RsaPublicKey::from_pkcs1_der(rsa_public_key)
        .map_err(|e| Error::invalid(format!("the SCEP RA/CA RSA key: {e}")))?;
    key.encrypt(&mut rand_core::OsRng, rsa::Pkcs1v15Encrypt, data)
        .map_err(|e| Error::internal(format!("encrypting to the SCEP RA/CA: {e}")))
}

/// A CertRep, its signature checked.
#[derive(Debug)]
pub enum Answer {
    /// The decrypted content: a certs-only PKCS#7 (DER).
    Success(Vec<u8>),
    Pending,
    Failure {
        fail_info: Option<u8>,
        text: String,
    },
}

/// The failInfo names of RFC 8894 §3.2.1.4.
pub fn fail_info_name(code: u8) -> &'static str {
    match code {
        0 => "badAlg",
        1 => "badMessageCheck",
        2 => "badRequest",
        3 => "badTime",
        4 => "badCertId",
        _ => "unknown failInfo",
    }
}

struct Attrs<'a> {
    items: Vec<(String, &'a [u8])>,
}

impl<'a> Attrs<'a> {
    fn parse(mut set: &'a [u8]) -> Result<Attrs<'a>> {
        let mut items = Vec::new();
        while !set.is_empty() {
            let a = read_tlv(set).ok_or_else(|| malformed("a signed attribute"))?;
            let o = read_tlv(a.content)
                .filter(|t| t.tag == 0x06)
                .ok_or_else(|| malformed("an attribute type"))?;
            let values = read_tlv(o.rest)
                .filter(|t| t.tag == 0x31)
                .ok_or_else(|| malformed("attribute values"))?;
            let value = read_tlv(values.content).ok_or_else(|| malformed("an attribute value"))?;
            items.push((
                der::oid_text(o.content).ok_or_else(|| malformed("an OID"))?,
                value.whole,
            ));
            set = a.rest;
        }
        Ok(Attrs { items })
    }
    fn get(&self, dotted: &str) -> Option<&'a [u8]> {
        self.items.iter().find(|(o, _)| o == dotted).map(|(_, v)| *v)
    }
    /// A string attribute's text (PrintableString, UTF8String, IA5String).
    fn text(&self, dotted: &str) -> Option<String> {
        let t = read_tlv(self.get(dotted)?)?;
        matches!(t.tag, 0x13 | 0x0c | 0x16).then(|| String::from_utf8_lossy(t.content).into_owned())
    }
    fn octets(&self, dotted: &str) -> Option<&'a [u8]> {
        let t = read_tlv(self.get(dotted)?)?;
        (t.tag == 0x04).then_some(t.content)
    }
}

fn verify_signature(cert: &[u8], digest: Digest, signature_oid: &str, message: &[u8], signature: &[u8]) -> Result<()> {
    use ring::signature as sig;
    let key = cert_key(cert)?;
    let alg: &dyn sig::VerificationAlgorithm = match (key.key_algorithm.as_str(), digest, signature_oid) {
        (RSA_ENCRYPTION, Digest::Sha1, _) => &sig::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY,
        (RSA_ENCRYPTION, Digest::Sha256, _) => &sig::RSA_PKCS1_2048_8192_SHA256,
        (RSA_ENCRYPTION, Digest::Sha512, _) => &sig::RSA_PKCS1_2048_8192_SHA512,
        ("1.2.840.10045.2.1", Digest::Sha256, _) if key.curve.as_deref() == Some("1.2.840.10045.3.1.7") => {
            &sig::ECDSA_P256_SHA256_ASN1
        }
        ("1.2.840.10045.2.1", Digest::Sha256, _) => &sig::ECDSA_P384_SHA256_ASN1,
        (k, d, s) => {
            return Err(Error::invalid(format!(
                "the SCEP answer is signed with {s} ({d:?}) by a {k} key: not an algorithm this client checks"
            )))
        }
    };
    sig::UnparsedPublicKey::new(alg, &key.public_key)
        .verify(message, signature)
        .map_err(|_| {
            Error::validation(
                "BadSignature",
                "the SCEP answer's signature does not verify with the RA/CA certificate",
            )
        })
}

/// Read and check a CertRep: signed by the RA or CA, for this transaction and nonce, and
/// the content of a SUCCESS decrypted with the signer's key.
#[cfg(feature = "scep")]
fn read_cert_rep(raw: &[u8], authority: &Authority, sent: &Sent, signer: &RequestSigner) -> Result<Answer> {
    Ok(match check_cert_rep(raw, authority, sent)? {
        Answer::Success(envelope) => Answer::Success(decrypt_envelope(&envelope, signer)?),
        other => other,
    })
}

/// For the fuzz target `scep_cert_rep`: `input` is a u16 (big-endian) length, then a
/// GetCACert answer (PKCS#7 certs-only) of that length, then a CertRep. The authority is
/// chosen from the first as a client would (each certificate's fingerprint in turn) and
/// the CertRep checked against it for a fixed transaction: nothing may panic.
#[doc(hidden)]
#[cfg(feature = "scep")]
pub fn check_cert_rep_for_fuzzing(input: &[u8]) {
    let Some((len, rest)) = input.split_first_chunk::<2>() else {
        return;
    };
    let n = usize::from(u16::from_be_bytes(*len)).min(rest.len());
    let (ca_certs, cert_rep) = rest.split_at(n);
    let Ok(certs) = ca_certs_of("application/x-x509-ca-ra-cert", ca_certs) else {
        return;
    };
    let sent = Sent {
        transaction_id: "0123456789ABCDEF".into(),
        sender_nonce: [7; 16],
    };
    for c in &certs {
        if let Ok(authority) = Authority::select(&certs, &Fingerprint::of(c)) {
            let _ = check_cert_rep(cert_rep, &authority, &sent);
        }
    }
}

/// [`read_cert_rep`] up to the decryption: a SUCCESS carries the still-encrypted envelope.
#[cfg(feature = "scep")]
fn check_cert_rep(raw: &[u8], authority: &Authority, sent: &Sent) -> Result<Answer> {
    let ci = der::read_ber(raw)
        .filter(|t| t.tag == 0x30)
        .ok_or_else(|| malformed("not a ContentInfo"))?;
    let o = read_tlv(ci.content)
        .filter(|t| t.tag == 0x06)
        .ok_or_else(|| malformed("no content type"))?;
    if der::oid_text(o.content).as_deref() != Some(SIGNED_DATA) {
        return Err(malformed("not a SignedData"));
    }
    let explicit = der::read_ber(o.rest)
        .filter(|t| t.tag == 0xa0)
        .ok_or_else(|| malformed("no content"))?;
    let sd = der::read_ber(explicit.content)
        .filter(|t| t.tag == 0x30)
        .ok_or_else(|| malformed("no SignedData"))?;
    let version = read_tlv(sd.content)
        .filter(|t| t.tag == 0x02)
        .ok_or_else(|| malformed("no version"))?;
    let digests = der::read_ber(version.rest)
        .filter(|t| t.tag == 0x31)
        .ok_or_else(|| malformed("no digest algorithms"))?;
    let encap = der::read_ber(digests.rest)
        .filter(|t| t.tag == 0x30)
        .ok_or_else(|| malformed("no content info"))?;
    // The encapsulated content: absent for PENDING and FAILURE.
    let eoid = read_tlv(encap.content)
        .filter(|t| t.tag == 0x06)
        .ok_or_else(|| malformed("no content type"))?;
    let econtent = match der::read_ber(eoid.rest) {
        Some(t) if t.tag == 0xa0 => Some(octet_string(t.content)?),
        _ => None,
    };
    let mut rest = encap.rest;
    // certificates [0] and crls [1], skipped: the signer must be the RA or CA of GetCACert.
    while let Some(t) = der::read_ber(rest).filter(|t| t.tag == 0xa0 || t.tag == 0xa1) {
        rest = t.rest;
    }
    let infos = der::read_ber(rest)
        .filter(|t| t.tag == 0x31)
        .ok_or_else(|| malformed("no signer infos"))?;
    let info = read_tlv(infos.content)
        .filter(|t| t.tag == 0x30)
        .ok_or_else(|| malformed("no signer info"))?;
    let v = read_tlv(info.content)
        .filter(|t| t.tag == 0x02)
        .ok_or_else(|| malformed("no signer version"))?;
    let sid = read_tlv(v.rest).ok_or_else(|| malformed("no signer id"))?;
    let signer_cert = authority
        .signers
        .iter()
        .find(|c| match sid.tag {
            0x30 => cert_key(c).is_ok_and(|k| k.issuer_and_serial == sid.whole),
            // [0] subjectKeyIdentifier
            0x80 => x509_parser::certificate::X509Certificate::from_der(c).is_ok_and(|(_, x)| {
                x.iter_extensions().any(|e| match e.parsed_extension() {
                    x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(k) => k.0 == sid.content,
                    _ => false,
                })
            }),
            _ => false,
        })
        .ok_or_else(|| {
            Error::validation(
                "UnknownIssuer",
                "the SCEP answer is not signed by the RA or CA whose certificates GetCACert returned",
            )
        })?;
    let dalg = read_tlv(sid.rest)
        .filter(|t| t.tag == 0x30)
        .ok_or_else(|| malformed("no digest algorithm"))?;
    let digest_oid = read_tlv(dalg.content)
        .and_then(|t| der::oid_text(t.content))
        .unwrap_or_default();
    let digest = Digest::from_oid(&digest_oid).ok_or_else(|| {
        Error::invalid(format!(
            "the SCEP answer uses the digest {digest_oid}, which this client does not check"
        ))
    })?;
    let signed = read_tlv(dalg.rest)
        .filter(|t| t.tag == 0xa0)
        .ok_or_else(|| malformed("no signed attributes"))?;
    let salg = read_tlv(signed.rest)
        .filter(|t| t.tag == 0x30)
        .ok_or_else(|| malformed("no signature algorithm"))?;
    let signature_oid = read_tlv(salg.content)
        .and_then(|t| der::oid_text(t.content))
        .unwrap_or_default();
    let signature = read_tlv(salg.rest)
        .filter(|t| t.tag == 0x04)
        .ok_or_else(|| malformed("no signature"))?;
    let mut message = signed.whole.to_vec();
    message[0] = 0x31;
    verify_signature(signer_cert, digest, &signature_oid, &message, signature.content)?;
    let attrs = Attrs::parse(signed.content)?;
    let md = attrs
        .octets(MESSAGE_DIGEST)
        .ok_or_else(|| malformed("no messageDigest"))?;
    if md != digest.digest(econtent.as_deref().unwrap_or_default()) {
        return Err(Error::validation(
            "BadSignature",
            "the SCEP answer's content does not match its signed digest",
        ));
    }
    if attrs.text(MESSAGE_TYPE).as_deref() != Some(MessageType::CertRep.code()) {
        return Err(malformed("its messageType is not CertRep (3)"));
    }
    if attrs.text(TRANSACTION_ID).as_deref() != Some(sent.transaction_id.as_str()) {
        return Err(Error::protocol(
            "the SCEP answer is for another transaction (its transactionID is not the request's)",
        ));
    }
    if attrs.octets(RECIPIENT_NONCE) != Some(&sent.sender_nonce[..]) {
        return Err(Error::protocol(
            "the SCEP answer's recipientNonce is not the request's senderNonce (a replayed or stale answer)",
        ));
    }
    match attrs.text(PKI_STATUS).as_deref() {
        Some("0") => Ok(Answer::Success(
            econtent.ok_or_else(|| malformed("a SUCCESS without content"))?,
        )),
        Some("3") => Ok(Answer::Pending),
        Some("2") => Ok(Answer::Failure {
            fail_info: attrs.text(FAIL_INFO).and_then(|t| t.parse().ok()),
            text: attrs.text(FAIL_INFO_TEXT).unwrap_or_default(),
        }),
        other => Err(malformed(&format!("its pkiStatus is {other:?}"))),
    }
}

/// The content of an OCTET STRING, primitive or constructed (BER).
fn octet_string(input: &[u8]) -> Result<Vec<u8>> {
    let t = der::read_ber(input).ok_or_else(|| malformed("content that is not an OCTET STRING"))?;
    match t.tag {
        0x04 => Ok(t.content.to_vec()),
        0x24 => {
            let mut out = Vec::new();
            let mut rest = t.content;
            while !rest.is_empty() {
                let c = der::read_ber(rest)
                    .filter(|c| c.tag == 0x04)
                    .ok_or_else(|| malformed("a broken OCTET STRING"))?;
                out.extend_from_slice(c.content);
                rest = c.rest;
            }
            Ok(out)
        }
        _ => Err(malformed("content that is not an OCTET STRING")),
    }
}

/// pkcsPKIEnvelope of a CertRep, encrypted to the request's signer: its content key is
/// decrypted inside the store.
#[cfg(feature = "scep")]
fn decrypt_envelope(envelope: &[u8], signer: &RequestSigner) -> Result<Vec<u8>> {
    let ci = der::read_ber(envelope)
        .filter(|t| t.tag == 0x30)
        .ok_or_else(|| malformed("the envelope"))?;
    let o = read_tlv(ci.content)
        .filter(|t| t.tag == 0x06)
        .ok_or_else(|| malformed("the envelope's type"))?;
    if der::oid_text(o.content).as_deref() != Some(ENVELOPED_DATA) {
        return Err(malformed("the content is not EnvelopedData"));
    }
    let explicit = der::read_ber(o.rest)
        .filter(|t| t.tag == 0xa0)
        .ok_or_else(|| malformed("the envelope"))?;
    let ed = der::read_ber(explicit.content)
        .filter(|t| t.tag == 0x30)
        .ok_or_else(|| malformed("EnvelopedData"))?;
    let v = read_tlv(ed.content)
        .filter(|t| t.tag == 0x02)
        .ok_or_else(|| malformed("EnvelopedData version"))?;
    let mut after_version = v.rest;
    if let Some(t) = der::read_ber(after_version).filter(|t| t.tag == 0xa0) {
        after_version = t.rest; // originatorInfo
    }
    let recipients = der::read_ber(after_version)
        .filter(|t| t.tag == 0x31)
        .ok_or_else(|| malformed("recipient infos"))?;
    let own = cert_key(&signer.cert)?;
    let mut rest = recipients.content;
    let mut encrypted_key = None;
    while !rest.is_empty() {
        let ri = read_tlv(rest).ok_or_else(|| malformed("a recipient info"))?;
        rest = ri.rest;
        if ri.tag != 0x30 {
            continue; // kari [1], kekri [2], pwri [3], ori [4]: not for an RSA key
        }
        let rv = read_tlv(ri.content).ok_or_else(|| malformed("a recipient version"))?;
        let rid = read_tlv(rv.rest).ok_or_else(|| malformed("a recipient id"))?;
        let ours = match rid.tag {
            0x30 => rid.whole == own.issuer_and_serial.as_slice(),
            _ => true, // subjectKeyIdentifier of a transient certificate: one recipient
        };
        if !ours {
            continue;
        }
        let kalg = read_tlv(rid.rest)
            .filter(|t| t.tag == 0x30)
            .ok_or_else(|| malformed("key algorithm"))?;
        let kalg_oid = read_tlv(kalg.content)
            .and_then(|t| der::oid_text(t.content))
            .unwrap_or_default();
        if kalg_oid != RSA_ENCRYPTION {
            return Err(Error::invalid(format!(
                "the SCEP answer's content key is wrapped with {kalg_oid}, not rsaEncryption"
            )));
        }
        let ek = read_tlv(kalg.rest)
            .filter(|t| t.tag == 0x04)
            .ok_or_else(|| malformed("encrypted key"))?;
        encrypted_key = Some(ek.content);
    }
    let encrypted_key = encrypted_key.ok_or_else(|| {
        Error::invalid(match signer.key.public.algorithm {
            Algorithm::Rsa2048 => "the SCEP answer is not encrypted to the request's signer certificate".to_string(),
            a => format!(
                "the SCEP answer has no RSA recipient for this {} key: decrypting an answer for an EC key \
                 (key agreement) is not supported",
                a.name()
            ),
        })
    })?;
    let eci = der::read_ber(recipients.rest)
        .filter(|t| t.tag == 0x30)
        .ok_or_else(|| malformed("encrypted content info"))?;
    let ct = read_tlv(eci.content)
        .filter(|t| t.tag == 0x06)
        .ok_or_else(|| malformed("content type"))?;
    let calg = read_tlv(ct.rest)
        .filter(|t| t.tag == 0x30)
        .ok_or_else(|| malformed("content cipher"))?;
    let calg_oid_t = read_tlv(calg.content)
        .filter(|t| t.tag == 0x06)
        .ok_or_else(|| malformed("content cipher"))?;
    let calg_oid = der::oid_text(calg_oid_t.content).unwrap_or_default();
    let cipher = Cipher::from_oid(&calg_oid).ok_or_else(|| {
        Error::invalid(format!(
            "the SCEP answer is encrypted with {calg_oid}; this client reads AES-CBC, DES-EDE3-CBC and DES-CBC"
        ))
    })?;
    let iv = read_tlv(calg_oid_t.rest)
        .filter(|t| t.tag == 0x04)
        .ok_or_else(|| malformed("the IV"))?;
    let data = der::read_ber(calg.rest).ok_or_else(|| malformed("no encrypted content"))?;
    let data = match data.tag {
        0x80 => data.content.to_vec(),
        0xa0 => {
            let mut out = Vec::new();
            let mut rest = data.content;
            while !rest.is_empty() {
                let c = der::read_ber(rest)
                    .filter(|c| c.tag == 0x04)
                    .ok_or_else(|| malformed("encrypted content"))?;
                out.extend_from_slice(c.content);
                rest = c.rest;
            }
            out
        }
        _ => return Err(malformed("encrypted content")),
    };
    // From here on every failure is one and the same error (RFC 3218 §2.3.2): a content key
    // that does not unwrap, or unwraps to the wrong length, is replaced by a random one, and
    // the content must then open to certificates. A server that tells the cases apart by
    // the error (bad RSA padding, a key of the wrong length, bad CBC padding, content that
    // is not PKCS#7) would have a decryption oracle on the node's RSA key.
    let unwrapped = signer
        .key
        .store
        .decrypt(signer.key.label, &signer.key.id, encrypted_key)
        .ok()
        .filter(|k| k.len() == cipher.key_len());
    let cek = zeroize::Zeroizing::new(match unwrapped {
        Some(k) => k,
        None => {
            let mut k = vec![0u8; cipher.key_len()];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut k)
                .map_err(|_| Error::internal("no random bytes"))?;
            k
        }
    });
    cipher
        .decrypt(&cek, iv.content, &data)
        .ok()
        .filter(|content| der::pkcs7_certificates(content).is_some())
        .ok_or_else(|| {
            Error::invalid(
                "the SCEP answer's envelope does not open to certificates for this request's key \
                 (its content key or content does not decrypt, or is not a PKCS#7 of certificates)",
            )
        })
}

/// The transaction id of a request for `public_key`: the hex SHA-256 of the key (RFC 8894
/// §3.2.1.1), the same on every attempt and after a restart.
pub fn transaction_id(public_key: &[u8]) -> String {
    crate::codec::hex(ring::digest::digest(&ring::digest::SHA256, public_key).as_ref()).to_ascii_uppercase()
}

/// How a SCEP enrollment is configured: the server, its CA, the challenge, and polling.
pub struct ScepConfig {
    pub url: String,
    /// Straight, or through the link to the main node.
    pub route: crate::pki::dial::Route,
    pub ca_fingerprint: Fingerprint,
    pub challenge: Option<Secret>,
    pub timeout: Duration,
    pub poll_for: Duration,
    pub poll_every: Duration,
    /// The node's CRLs (`paths.crl`): an RA certificate one of them revokes is refused.
    pub crls: Vec<rustls_pki_types::CertificateRevocationListDer<'static>>,
    /// `[scep] allow_des3`: a server announcing DES3 but not AES is used, not refused.
    pub allow_des3: bool,
}

/// Enroll `csr_der` for `key`: PKCSReq (or RenewalReq when `current` is given and the
/// server offers Renewal), then CertPoll while PENDING, up to `poll_for`. Returns the chain
/// PEM, leaf first, with the CA behind it.
#[cfg(feature = "scep")]
pub fn enroll(
    config: &ScepConfig,
    key: &StoredKey,
    csr_der: &[u8],
    current: Option<&CurrentIdentity>,
) -> Result<String> {
    let client = ScepClient::new(&config.url)?
        .with_timeout(config.timeout)
        .with_route(config.route.clone());
    let caps = client.caps()?;
    // Chosen once, before anything is made or sent: a server the policy refuses changes nothing.
    let cipher = caps.cipher(config.allow_des3)?;
    let authority = Authority::select(&client.ca_certs()?, &config.ca_fingerprint)?;
    authority.check_revocation(&config.crls)?;
    let (_, csr) = x509_parser::certification_request::X509CertificationRequest::from_der(csr_der)
        .map_err(|e| Error::invalid(format!("the CSR: {e}")))?;
    let info = &csr.certification_request_info;
    if info.subject_pki.subject_public_key.data.as_ref() != key.public.raw.as_slice() {
        return Err(Error::validation(
            "KeyMismatch",
            "the CSR is not for the module's key in the store",
        ));
    }
    let subject = info.subject.as_raw().to_vec();
    let txid = transaction_id(&key.public.raw);
    // The request's signer: the current certificate for a RenewalReq, else a transient
    // self-signed certificate of the new key (RFC 8894 §2.3).
    let (message_type, signer_key, signer_cert, intermediates) = match current {
        Some(c) if caps.renewal && c.key.public.algorithm == Algorithm::Rsa2048 => {
            (MessageType::RenewalReq, c.key, c.cert.clone(), c.intermediates.clone())
        }
        _ => (
            MessageType::PkcsReq,
            key,
            transient_certificate(key, csr_der)?,
            Vec::new(),
        ),
    };
    let signer = RequestSigner {
        key: signer_key,
        cert: signer_cert,
        intermediates,
    };
    // The challenge password goes in the CSR (RFC 8894 §2.2), which is signed again for it.
    let with_challenge = match &config.challenge {
        Some(c) => Some(crate::pki::x509::csr_with_challenge(key, csr_der, c)?),
        None if message_type == MessageType::PkcsReq => {
            return Err(Error::invalid(
                "a SCEP PKCSReq needs a challenge password (the server offers no Renewal, or there is no current certificate)",
            ))
        }
        None => None,
    };
    let request_csr = with_challenge.as_deref().unwrap_or(csr_der);
    if !caps.sha256 {
        crate::log_warn!(
            "the SCEP server at {} does not announce SHA-256 (GetCACaps); the request is signed with it all the same",
            client.authority()
        );
    }
    let (message, mut sent) = signed_request(&signer, &authority, cipher, message_type, &txid, request_csr)?;
    let mut answer = read_cert_rep(&client.pki_operation(&caps, &message)?, &authority, &sent, &signer)?;
    let started = Instant::now();
    let ca_subject = cert_key(&authority.ca[0])?.subject;
    while matches!(answer, Answer::Pending) {
        if started.elapsed() + config.poll_every > config.poll_for {
            return Err(Error::unavailable(format!(
                "the SCEP server at {} still has the request (transaction {txid}) PENDING after {} s",
                client.authority(),
                started.elapsed().as_secs()
            )));
        }
        crate::log_info!(
            "SCEP request {txid} is PENDING at {}; polling again in {} s",
            client.authority(),
            config.poll_every.as_secs()
        );
        std::thread::sleep(config.poll_every);
        // CertPoll's content: IssuerAndSubject (RFC 8894 §3.3.3).
        let poll = seq(&[ca_subject.clone(), subject.clone()]);
        let (message, s) = signed_request(&signer, &authority, cipher, MessageType::CertPoll, &txid, &poll)?;
        sent = s;
        answer = read_cert_rep(&client.pki_operation(&caps, &message)?, &authority, &sent, &signer)?;
    }
    match answer {
        Answer::Success(certs_only) => {
            // (decrypt_envelope opened it to certificates.)
            let certs = der::pkcs7_certificates(&certs_only)
                .ok_or_else(|| malformed("its decrypted content is not a PKCS#7 of certificates"))?;
            let mut all = certs.clone();
            for ca in &authority.ca {
                if !all.contains(ca) {
                    all.push(ca.clone());
                }
            }
            crate::pki::est::chain_pem(&all, csr_der)
        }
        Answer::Failure { fail_info, text } => {
            let name = fail_info.map_or("no failInfo", fail_info_name);
            let detail = if text.is_empty() {
                String::new()
            } else {
                format!(": {text}")
            };
            let message = format!(
                "the SCEP server at {} refused the {} (FAILURE, {name}{}){detail}",
                client.authority(),
                match message_type {
                    MessageType::RenewalReq => "RenewalReq",
                    _ => "PKCSReq",
                },
                fail_info.map(|c| format!(" {c}")).unwrap_or_default()
            );
            Err(match fail_info {
                Some(0) | Some(3) => Error::invalid(message),
                _ => Error::unauthorized(message),
            })
        }
        Answer::Pending => unreachable!("polled until not pending"),
    }
}

/// Without the cargo feature `scep` (its CMS and cipher crates left out), every SCEP
/// request is refused so.
#[cfg(not(feature = "scep"))]
pub fn enroll(_: &ScepConfig, _: &StoredKey, _: &[u8], _: Option<&CurrentIdentity>) -> Result<String> {
    Err(Error::invalid(
        "this build of aos-iam has no SCEP client: it was built without the cargo feature \"scep\"",
    ))
}

/// A transient self-signed certificate of the key, with the CSR's subject, for the request's
/// SignedData and as the recipient of the answer.
fn transient_certificate(key: &StoredKey, csr_der: &[u8]) -> Result<Vec<u8>> {
    let csr = rustls::pki_types::CertificateSigningRequestDer::from(csr_der.to_vec());
    let mut params = rcgen::CertificateSigningRequestParams::from_der(&csr)
        .map_err(|e| Error::invalid(format!("the CSR does not parse or its signature is wrong: {e}")))?
        .params;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + time::Duration::days(1);
    params.serial_number = Some(crate::pki::x509::random_serial()?);
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    let cert = params
        .self_signed(key)
        .map_err(|e| Error::internal(format!("self-signing the SCEP signer certificate: {e}")))?;
    Ok(cert.der().to_vec())
}

/// The current certificate of a module and its key, which sign a RenewalReq.
pub struct CurrentIdentity<'a> {
    pub key: &'a StoredKey<'a>,
    pub cert: Vec<u8>,
    /// The intermediates it was issued with (leaf first order, the root left out).
    pub intermediates: Vec<Vec<u8>>,
}

impl ScepConfig {
    /// The configuration a module's `[modules.renew.scep]` names, its challenge read now.
    pub fn from_settings(
        s: &crate::config::ScepSettings,
        route: crate::pki::dial::Route,
        crls: Vec<rustls_pki_types::CertificateRevocationListDer<'static>>,
        allow_des3: bool,
    ) -> Result<ScepConfig> {
        let challenge = match &s.challenge_file {
            Some(f) => Some(read_challenge(f)?),
            None => None,
        };
        Ok(ScepConfig {
            url: s.url.clone(),
            route,
            ca_fingerprint: s.ca_fingerprint,
            challenge,
            timeout: s.timeout,
            poll_for: s.poll_for,
            poll_every: s.poll_every,
            crls,
            allow_des3,
        })
    }
}

/// A challenge password file: its first line.
pub fn read_challenge(path: &std::path::Path) -> Result<Secret> {
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path)
            .map_err(|e| Error::unavailable(format!("SCEP challenge file {}: {e}", path.display())))?,
    );
    let challenge = Secret::from_text(text);
    if challenge.is_empty() {
        return Err(Error::invalid(format!(
            "SCEP challenge file {} is empty",
            path.display()
        )));
    }
    Ok(challenge)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oids_encode_as_der() {
        assert_eq!(
            oid(DATA),
            [0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01]
        );
        assert_eq!(
            oid(SHA256),
            [0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01]
        );
        for o in [MESSAGE_TYPE, FAIL_INFO_TEXT, AES256_CBC, DES_EDE3_CBC] {
            let encoded = oid(o);
            let t = read_tlv(&encoded).unwrap();
            assert_eq!(der::oid_text(t.content).unwrap(), o);
        }
    }

    #[test]
    fn caps_choose_aes_before_des3_and_sha256_before_sha1() {
        let c = Caps::parse("Renewal\nSHA-1\nSHA-256\nAES\nDES3\nSCEPStandard\nPOSTPKIOperation\n");
        assert!(c.renewal && c.post);
        assert_eq!(c.cipher(true).unwrap(), Cipher::Aes128);
        let old = Caps::parse("DES3\r\nSHA-1\r\n");
        assert_eq!(old.cipher(true).unwrap(), Cipher::Des3);
        assert!(old.cipher(false).unwrap_err().message.contains("allow_des3"));
        assert_eq!(c.cipher(false).unwrap(), Cipher::Aes128);
        assert!(!old.post);
        assert!(Caps::parse("SHA-1\n")
            .cipher(true)
            .unwrap_err()
            .message
            .contains("neither AES nor DES3"));
    }

    #[test]
    #[cfg(feature = "scep")]
    fn content_ciphers_round_trip_and_bad_padding_is_refused() {
        for c in [Cipher::Aes128, Cipher::Aes256, Cipher::Des3] {
            let key = vec![7u8; c.key_len()];
            let iv = vec![1u8; c.iv_len()];
            let ct = c.encrypt(&key, &iv, b"a CSR's DER").unwrap();
            assert_eq!(c.decrypt(&key, &iv, &ct).unwrap(), b"a CSR's DER");
            let mut cut = ct.clone();
            cut.pop();
            assert!(c.decrypt(&key, &iv, &cut).is_err());
        }
    }

    #[test]
    fn urls_name_host_port_and_path() {
        assert_eq!(
            parse_url("http://ca.example:8080/scep").unwrap(),
            ("ca.example".into(), 8080, "/scep".into())
        );
        assert_eq!(
            parse_url("http://ndes.example").unwrap(),
            ("ndes.example".into(), 80, "/cgi-bin/pkiclient.exe".into())
        );
        assert!(parse_url("https://x/scep").is_err());
        assert!(parse_url("http://:80/x").is_err());
        assert_eq!(url_escape("a+b/c="), "a%2Bb%2Fc%3D");
    }

    #[test]
    fn a_ca_none_of_the_certificates_has_is_an_unknown_issuer() {
        let e = Authority::select(&[], &Fingerprint::parse(&"00".repeat(32)).unwrap()).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Validation("UnknownIssuer".into()));
    }
}
