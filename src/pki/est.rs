//! EST client (RFC 7030) over rustls: `/cacerts`, `/simpleenroll` and `/simplereenroll`.
//!
//! The EST server is trusted through an explicitly configured anchor, never the system's
//! roots. Enrollment authenticates by HTTP basic auth or a bootstrap certificate;
//! re-enrollment by the node's current certificate over mutual TLS, its key signing inside
//! the key store. Answers are PKCS#7 certs-only (base64); HTTP refusals become typed errors:
//! 401 `unauthorized`, 400 `invalid_argument`, 202 with Retry-After and 5xx `unavailable`.

use crate::codec::Fingerprint;
use crate::error::{Error, ErrorKind, Result};
use crate::pki::http::{parse_response, split_url, Response};
use crate::pki::signer::CsrSigner;
use crate::pki::tls::ClientAuth;
use crate::secret::Secret;
use rustls::pki_types::{CertificateDer, ServerName};
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Largest EST response read.
pub const MAX_RESPONSE: usize = 1024 * 1024;
/// How long one EST exchange may take by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

pub struct EstClient {
    host: String,
    port: u16,
    /// The path prefix, `/.well-known/est` (with a CA label, if any).
    path: String,
    tls: Arc<rustls::ClientConfig>,
    basic: Option<(String, Secret)>,
    /// A claim token, sent as `Authorization: Bearer` (in place of basic auth).
    bearer: Option<Secret>,
    timeout: Duration,
    /// Straight, or through the link to the main node.
    route: crate::pki::dial::Route,
}

/// What went wrong with an EST exchange, and how long the server asked to wait, if it did.
#[derive(Debug)]
pub struct Refusal {
    pub error: Error,
    pub retry_after: Option<Duration>,
}

fn parse_url(url: &str) -> Result<(String, u16, String)> {
    let (host, port, path) = split_url(url, "https", 443, "EST")?;
    let path = format!("/{}", path.trim_end_matches('/'));
    let path = if path == "/" {
        "/.well-known/est".to_string()
    } else {
        path
    };
    Ok((host, port, path))
}

impl EstClient {
    pub fn new(
        url: &str,
        anchors: &[CertificateDer<'static>],
        auth: ClientAuth,
        basic: Option<(String, Secret)>,
    ) -> Result<EstClient> {
        Self::checked_with(url, anchors, auth, basic, &[])
    }

    /// [`EstClient::new`], the server's chain also checked with `crls` (the node's
    /// `paths.crl`): a revoked server certificate fails the handshake.
    pub fn checked_with(
        url: &str,
        anchors: &[CertificateDer<'static>],
        auth: ClientAuth,
        basic: Option<(String, Secret)>,
        crls: &[rustls_pki_types::CertificateRevocationListDer<'static>],
    ) -> Result<EstClient> {
        let (host, port, path) = parse_url(url)?;
        Ok(EstClient {
            host,
            port,
            path,
            tls: crate::pki::tls::est_client_config(anchors, auth, crls)?,
            basic,
            bearer: None,
            timeout: DEFAULT_TIMEOUT,
            route: Default::default(),
        })
    }

    /// RFC 7030 §4.1.1 bootstrap, never trust-on-first-use: fetch `/cacerts` over a
    /// provisional TLS session, keep the CA whose SHA-256 fingerprint (of its DER) is the
    /// one an operator checked and configured, and require the server's own certificate
    /// to chain to it. Returns a client that trusts that CA only, and the CA.
    pub fn bootstrap(
        url: &str,
        fingerprint: &Fingerprint,
        auth: ClientAuth,
        basic: Option<(String, Secret)>,
    ) -> Result<(EstClient, CertificateDer<'static>)> {
        let (host, port, path) = parse_url(url)?;
        let (tls, seen) = crate::pki::tls::est_bootstrap_config()?;
        let provisional = EstClient {
            host: host.clone(),
            port,
            path,
            tls,
            basic: None,
            bearer: None,
            timeout: DEFAULT_TIMEOUT,
            route: Default::default(),
        };
        let offered = provisional
            .cacerts()
            .map_err(|r| r.error.context("EST bootstrap: /cacerts"))?;
        let Some(ca) = offered.iter().find(|c| Fingerprint::of(c) == *fingerprint) else {
            return Err(Error::unauthorized(format!(
                "EST bootstrap: no certificate /cacerts of {host} sent has the configured SHA-256 fingerprint {}; \
                 it sent {}; nothing is trusted",
                format_args!("{fingerprint:#}"),
                offered
                    .iter()
                    .map(|c| format!("{:#}", Fingerprint::of(c)))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        };
        let chain = crate::sys::lock(&seen.seen)
            .clone()
            .ok_or_else(|| Error::internal("no server certificate seen"))?;
        let ca = CertificateDer::from(ca.clone());
        crate::pki::tls::verify_server_chain(&chain, &ca, &host).map_err(|e| {
            Error::unauthorized(format!(
                "EST bootstrap: the TLS certificate of {host} does not chain to the CA with the configured fingerprint: {}",
                e.message
            ))
        })?;
        Ok((EstClient::new(url, std::slice::from_ref(&ca), auth, basic)?, ca))
    }

    /// The longest one exchange may take, connection and TLS handshake included (default
    /// [`DEFAULT_TIMEOUT`]).
    pub fn with_timeout(mut self, timeout: Duration) -> EstClient {
        self.timeout = timeout;
        self
    }

    /// Reach the server by `route` (through the link to the main node, for a secondary
    /// with no network of its own).
    pub fn with_route(mut self, route: crate::pki::dial::Route) -> EstClient {
        self.route = route;
        self
    }

    /// Authenticate with a claim token (`Authorization: Bearer`, as libest's token
    /// authentication reads it) instead of basic auth.
    pub fn with_bearer(mut self, token: Secret) -> EstClient {
        self.bearer = Some(token);
        self
    }

    /// `host:port` of the server.
    pub fn authority(&self) -> (&str, u16) {
        (&self.host, self.port)
    }

    /// `/cacerts`: the CA certificates the server distributes.
    pub fn cacerts(&self) -> std::result::Result<Vec<Vec<u8>>, Refusal> {
        let r = self.exchange("GET", "cacerts", None)?;
        self.certs(r, "cacerts")
    }

    /// `/csrattrs` (RFC 7030 §4.5): what the server asks CSRs to carry; none when it
    /// answers 204 or 404 (it has nothing to ask).
    pub fn csrattrs(&self) -> std::result::Result<CsrAttrs, Refusal> {
        let r = self.exchange("GET", "csrattrs", None)?;
        if matches!(r.status, 204 | 404) {
            return Ok(CsrAttrs::default());
        }
        let r = self.accept(r, "csrattrs")?;
        let der = body_der(r.body);
        CsrAttrs::parse(&der).map_err(|error| Refusal {
            error: error.context("the EST answer to /csrattrs"),
            retry_after: None,
        })
    }

    /// `/simpleenroll` (or `/simplereenroll`) with a CSR (DER): the issued certificates.
    pub fn enroll(&self, csr_der: &[u8], reenroll: bool) -> std::result::Result<Vec<Vec<u8>>, Refusal> {
        let op = if reenroll { "simplereenroll" } else { "simpleenroll" };
        // Lines of 64 characters: servers that decode with OpenSSL's line-oriented base64
        // (Cisco libest) read a body without a line break as empty.
        let body = crate::codec::pem::base64_lines(csr_der, 64);
        let r = self.exchange("POST", op, Some(body.into_bytes()))?;
        self.certs(r, op)
    }

    /// A 200 answer, or the refusal its status says.
    fn accept(&self, r: Response, op: &str) -> std::result::Result<Response, Refusal> {
        let refuse = |error: Error| Refusal {
            error,
            retry_after: None,
        };
        match r.status {
            200 => {}
            202 => {
                let after = r.header("retry-after").and_then(|v| v.trim().parse::<u64>().ok());
                return Err(Refusal {
                    error: Error::unavailable(format!(
                        "the EST server accepted /{op} and asks to retry after {} s",
                        after.map_or("an unstated number of".into(), |s| s.to_string())
                    )),
                    retry_after: after.map(Duration::from_secs),
                });
            }
            401 | 403 => {
                return Err(refuse(Error::unauthorized(format!(
                    "the EST server refused the credentials for /{op} ({} {})",
                    r.status, r.reason
                ))))
            }
            400..=499 => {
                return Err(refuse(Error::invalid(format!(
                    "the EST server refused /{op} ({} {}): {}",
                    r.status,
                    r.reason,
                    r.text()
                ))))
            }
            500..=599 => {
                return Err(Refusal {
                    error: Error::unavailable(format!(
                        "the EST server failed /{op} ({} {}): {}",
                        r.status,
                        r.reason,
                        r.text()
                    )),
                    retry_after: r
                        .header("retry-after")
                        .and_then(|v| v.trim().parse().ok())
                        .map(Duration::from_secs),
                })
            }
            s => {
                return Err(refuse(Error::protocol(format!(
                    "the EST server answered /{op} with HTTP {s} {}",
                    r.reason
                ))))
            }
        }
        Ok(r)
    }

    fn certs(&self, r: Response, op: &str) -> std::result::Result<Vec<Vec<u8>>, Refusal> {
        let refuse = |error: Error| Refusal {
            error,
            retry_after: None,
        };
        let r = self.accept(r, op)?;
        let der = body_der(r.body);
        crate::codec::der::pkcs7_certificates(&der).ok_or_else(|| {
            refuse(Error::protocol(format!(
                "the EST answer to /{op} is not a PKCS#7 certs-only structure"
            )))
        })
    }

    fn exchange(&self, method: &str, op: &str, body: Option<Vec<u8>>) -> std::result::Result<Response, Refusal> {
        let refuse = |error: Error| Refusal {
            error,
            retry_after: None,
        };
        let addr = format!("{}:{}", self.host, self.port);
        // One deadline for the whole exchange: connecting, the handshake, the request and
        // every read of the answer, enforced by the connection (`pki::dial::Conn`).
        let stalled = |what: &str| {
            refuse(Error::new(
                ErrorKind::Timeout,
                format!(
                    "the EST server at {addr} {what} within {} s",
                    self.timeout.as_secs_f32()
                ),
            ))
        };
        let server = format!("the EST server at {addr}");
        let conn = crate::pki::dial::dial(&self.route, &addr, &server, self.timeout, true).map_err(refuse)?;
        let name = ServerName::try_from(self.host.clone()).map_err(|_| {
            refuse(Error::invalid(format!(
                "EST host \"{}\" is not a valid name",
                self.host
            )))
        })?;
        let tls_conn = rustls::ClientConnection::new(self.tls.clone(), name)
            .map_err(|e| refuse(Error::internal(format!("TLS: {e}"))))?;
        let mut tls = rustls::StreamOwned::new(tls_conn, conn);
        let mut head = format!(
            "{method} {}/{op} HTTP/1.1\r\nHost: {}:{}\r\nAccept: application/pkcs7-mime\r\nConnection: close\r\n",
            self.path, self.host, self.port
        );
        if let Some(token) = &self.bearer {
            head.push_str(&format!("Authorization: Bearer {}\r\n", token.expose()));
        } else if let Some((user, password)) = &self.basic {
            let pair = zeroize::Zeroizing::new(format!("{user}:{}", password.expose()));
            head.push_str(&format!(
                "Authorization: Basic {}\r\n",
                crate::codec::pem::base64_encode(pair.as_bytes())
            ));
        }
        let head = zeroize::Zeroizing::new(head);
        let tls_error = |e: std::io::Error| {
            if matches!(e.kind(), std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock) {
                return stalled("did not answer");
            }
            let kind = if e.get_ref().is_some_and(|i| i.is::<rustls::Error>()) {
                ErrorKind::Unauthorized
            } else {
                ErrorKind::Unavailable
            };
            refuse(Error::new(kind, format!("TLS with the EST server at {addr}: {e}")))
        };
        let mut request = head.as_bytes().to_vec();
        if let Some(b) = &body {
            request.extend_from_slice(
                format!(
                    "Content-Type: application/pkcs10\r\nContent-Transfer-Encoding: base64\r\nContent-Length: {}\r\n\r\n",
                    b.len()
                )
                .as_bytes(),
            );
            request.extend_from_slice(b);
        } else {
            request.extend_from_slice(b"\r\n");
        }
        let request = zeroize::Zeroizing::new(request);
        tls.write_all(&request).map_err(tls_error)?;
        tls.flush().map_err(tls_error)?;
        let mut raw = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            if tls.sock.deadline() <= std::time::Instant::now() {
                return Err(stalled("did not finish its answer"));
            }
            match tls.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    raw.extend_from_slice(&buf[..n]);
                    if raw.len() > MAX_RESPONSE {
                        return Err(refuse(Error::protocol(format!(
                            "the EST answer to /{op} exceeds {MAX_RESPONSE} bytes"
                        ))));
                    }
                }
                // A server that closes without close_notify: what came is the answer.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => break,
                Err(e)
                    if !raw.is_empty()
                        && matches!(e.kind(), std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock) =>
                {
                    return Err(stalled("did not finish its answer"))
                }
                Err(e) => return Err(tls_error(e)),
            }
        }
        parse_response(&raw).map_err(|e| refuse(e.context(format!("the EST answer to /{op}"))))
    }
}

/// An answer's DER: RFC 7030 bodies are base64 (a server that sends DER as it is is read
/// too); one NUL ending a base64 body is dropped, as Cisco libest counts its C string's
/// terminator in Content-Length and OpenSSL's base64 decoder ignores it.
fn body_der(body: Vec<u8>) -> Vec<u8> {
    use crate::codec::pem::base64_decode;
    let text = body.strip_suffix(&[0]).unwrap_or(&body);
    // Binary DER or BER as it is (whose end-of-contents octets are NULs too) when it is not
    // base64.
    base64_decode(text).unwrap_or(body)
}

/// One item of a `/csrattrs` answer: an OID, or an attribute with its values (DER).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttrOrOid {
    Oid(String),
    Attribute(String, Vec<Vec<u8>>),
}

/// What an EST server asks CSRs to carry (`CsrAttrs ::= SEQUENCE OF AttrOrOID`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CsrAttrs {
    pub items: Vec<AttrOrOid>,
}

/// What [`CsrAttrs::honour`] found: the challengePassword to put in the CSR, and what the
/// CSR will not carry of what the server asked.
#[derive(Debug)]
pub struct Honoured {
    pub challenge: Option<Secret>,
    pub not_honoured: Vec<String>,
}

/// Most items a `/csrattrs` answer may hold.
const MAX_CSR_ATTRS: usize = 64;

const CHALLENGE_PASSWORD: &str = "1.2.840.113549.1.9.7";
const EXTENSION_REQUEST: &str = "1.2.840.113549.1.9.14";
const EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const RSA_ENCRYPTION: &str = "1.2.840.113549.1.1.1";

/// Names of the OIDs a `/csrattrs` answer may hold, for messages.
fn oid_name(oid: &str) -> &'static str {
    match oid {
        CHALLENGE_PASSWORD => "challengePassword",
        EXTENSION_REQUEST => "extensionRequest",
        EC_PUBLIC_KEY => "id-ecPublicKey",
        RSA_ENCRYPTION => "rsaEncryption",
        "1.2.840.10045.3.1.7" => "prime256v1",
        "1.3.132.0.34" => "secp384r1",
        "1.3.132.0.35" => "secp521r1",
        "1.2.840.10045.4.3.2" => "ecdsa-with-SHA256",
        "1.2.840.10045.4.3.3" => "ecdsa-with-SHA384",
        "1.2.840.10045.4.3.4" => "ecdsa-with-SHA512",
        "1.2.840.113549.1.1.11" => "sha256WithRSAEncryption",
        "1.2.840.113549.1.1.12" => "sha384WithRSAEncryption",
        "1.2.840.113549.1.1.13" => "sha512WithRSAEncryption",
        "1.3.101.112" => "Ed25519",
        "2.5.29.17" => "subjectAltName",
        "2.5.29.37" => "extKeyUsage",
        "2.5.29.15" => "keyUsage",
        "2.5.29.19" => "basicConstraints",
        "1.3.6.1.1.1.1.22" => "macAddress",
        "1.2.840.113549.1.9.1" => "emailAddress",
        "2.16.840.1.101.3.4.2.1" => "sha256",
        "2.16.840.1.101.3.4.2.2" => "sha384",
        "2.16.840.1.101.3.4.2.3" => "sha512",
        _ => "",
    }
}

fn named(oid: &str) -> String {
    match oid_name(oid) {
        "" => oid.to_string(),
        n => format!("{n} ({oid})"),
    }
}

fn is_key_type(oid: &str) -> bool {
    matches!(oid, EC_PUBLIC_KEY | RSA_ENCRYPTION | "1.3.101.112" | "1.3.101.113")
}
fn is_curve(oid: &str) -> bool {
    matches!(oid, "1.2.840.10045.3.1.7" | "1.3.132.0.34" | "1.3.132.0.35")
}
fn is_hash(oid: &str) -> bool {
    matches!(
        oid,
        "2.16.840.1.101.3.4.2.1" | "2.16.840.1.101.3.4.2.2" | "2.16.840.1.101.3.4.2.3"
    )
}
fn is_signature(oid: &str) -> bool {
    matches!(
        oid,
        "1.2.840.10045.4.3.2"
            | "1.2.840.10045.4.3.3"
            | "1.2.840.10045.4.3.4"
            | "1.2.840.113549.1.1.11"
            | "1.2.840.113549.1.1.12"
            | "1.2.840.113549.1.1.13"
    )
}

/// What a module's CSRs are: key type, curve, signature algorithm, hash (OIDs).
fn module_algorithms(a: crate::config::Algorithm) -> (&'static str, Option<&'static str>, &'static str, &'static str) {
    use crate::config::Algorithm;
    const SHA256: &str = "2.16.840.1.101.3.4.2.1";
    match a {
        Algorithm::EcdsaP384 => (
            EC_PUBLIC_KEY,
            Some("1.3.132.0.34"),
            "1.2.840.10045.4.3.3",
            "2.16.840.1.101.3.4.2.2",
        ),
        Algorithm::EcdsaP256 => (
            EC_PUBLIC_KEY,
            Some("1.2.840.10045.3.1.7"),
            "1.2.840.10045.4.3.2",
            SHA256,
        ),
        Algorithm::Rsa2048 => (RSA_ENCRYPTION, None, "1.2.840.113549.1.1.11", SHA256),
    }
}

impl CsrAttrs {
    /// Parse the DER of a `/csrattrs` answer; anything else is a `protocol` error.
    pub fn parse(der: &[u8]) -> Result<CsrAttrs> {
        use crate::codec::der::{oid_text, read_tlv};
        let bad = |why: &str| Error::protocol(format!("not a CsrAttrs structure: {why}"));
        let top = read_tlv(der)
            .filter(|t| t.tag == 0x30 && t.rest.is_empty())
            .ok_or_else(|| bad("no SEQUENCE"))?;
        let mut items = Vec::new();
        let mut rest = top.content;
        while !rest.is_empty() {
            if items.len() == MAX_CSR_ATTRS {
                return Err(bad(&format!("more than {MAX_CSR_ATTRS} items")));
            }
            let t = read_tlv(rest).ok_or_else(|| bad("a truncated item"))?;
            rest = t.rest;
            match t.tag {
                0x06 => items.push(AttrOrOid::Oid(oid_text(t.content).ok_or_else(|| bad("a bad OID"))?)),
                0x30 => {
                    let ty = read_tlv(t.content)
                        .filter(|x| x.tag == 0x06)
                        .ok_or_else(|| bad("an attribute without its type"))?;
                    let oid = oid_text(ty.content).ok_or_else(|| bad("a bad OID"))?;
                    let set = read_tlv(ty.rest)
                        .filter(|x| x.tag == 0x31 && x.rest.is_empty())
                        .ok_or_else(|| bad("an attribute without its values"))?;
                    let mut values = Vec::new();
                    let mut v = set.content;
                    while !v.is_empty() {
                        let x = read_tlv(v).ok_or_else(|| bad("a truncated value"))?;
                        values.push(x.whole.to_vec());
                        v = x.rest;
                    }
                    items.push(AttrOrOid::Attribute(oid, values));
                }
                tag => return Err(bad(&format!("an item with tag {tag:#04x}"))),
            }
        }
        Ok(CsrAttrs { items })
    }

    /// What a CSR of `module` can carry of what the server asks: the challengePassword to add
    /// (`challenge`), and what cannot be honoured, each named: a challengePassword with no
    /// secret, another key type, curve or signature algorithm than the module's, an extension
    /// it does not make, an attribute aos-iam does not know. With `strict`, anything not
    /// honoured refuses the CSR before it is made; otherwise the caller says what was not
    /// (RFC 7030 §4.5: the server decides whether it matters).
    pub fn honour(
        &self,
        module: &crate::config::ModuleConfig,
        challenge: Option<&Secret>,
        strict: bool,
    ) -> Result<Honoured> {
        let mut missing: Vec<String> = Vec::new();
        use crate::codec::der::{oid_text, read_tlv};
        let (key, curve, sig, hash) = module_algorithms(module.algorithm);
        let (mut keys, mut curves, mut sigs, mut hashes) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut password = None;
        let oid_of = |v: &[u8]| read_tlv(v).filter(|t| t.tag == 0x06).and_then(|t| oid_text(t.content));
        for item in &self.items {
            let (oid, values) = match item {
                AttrOrOid::Oid(o) => (o.as_str(), &[][..]),
                AttrOrOid::Attribute(o, v) => (o.as_str(), &v[..]),
            };
            match oid {
                CHALLENGE_PASSWORD => match challenge {
                    Some(c) => password = Some(c.clone()),
                    None => {
                        missing.push("a challengePassword, and no claim token or EST password is configured".into())
                    }
                },
                o if is_key_type(o) => {
                    keys.push(o.to_string());
                    // id-ecPublicKey with its curves as values (RFC 7030 §4.5.2).
                    curves.extend(values.iter().filter_map(|v| oid_of(v)));
                }
                o if is_curve(o) => curves.push(o.to_string()),
                o if is_signature(o) => sigs.push(o.to_string()),
                o if is_hash(o) => hashes.push(o.to_string()),
                EXTENSION_REQUEST => {
                    for v in values {
                        // An extension's OID, or Extension(s) as templates: their OIDs.
                        let mut wanted = Vec::new();
                        if let Some(o) = oid_of(v) {
                            wanted.push(o);
                        } else if let Some(t) = read_tlv(v).filter(|t| t.tag == 0x30) {
                            match oid_of(t.content) {
                                Some(o) => wanted.push(o),
                                None => {
                                    let mut r = t.content;
                                    while let Some(e) = read_tlv(r) {
                                        wanted.extend(oid_of(e.content));
                                        r = e.rest;
                                    }
                                }
                            }
                        }
                        if wanted.is_empty() {
                            missing.push("an extension request it cannot read".into());
                        }
                        for e in wanted {
                            match e.as_str() {
                                "2.5.29.15" | "2.5.29.19" => {}
                                "2.5.29.37" if !module.extended_key_usage.is_empty() => {}
                                "2.5.29.17" if !module.alt_names.is_empty() || !module.uri_names.is_empty() => {}
                                "2.5.29.37" | "2.5.29.17" => {
                                    missing.push(format!("the extension {}, and the module configures none", named(&e)))
                                }
                                _ => missing.push(format!("the extension {}", named(&e))),
                            }
                        }
                    }
                }
                o => missing.push(format!("the attribute {}", named(o))),
            }
        }
        if !keys.is_empty() && !keys.iter().any(|k| k == key) {
            missing.push(format!(
                "{} keys (it makes {} keys: change the module's algorithm)",
                keys.iter().map(|k| named(k)).collect::<Vec<_>>().join(" or "),
                module.algorithm.name()
            ));
        }
        if !curves.is_empty() && curve.is_none_or(|c| !curves.iter().any(|x| x == c)) {
            missing.push(format!(
                "keys on {} (it makes {} keys: change the module's algorithm)",
                curves.iter().map(|k| named(k)).collect::<Vec<_>>().join(" or "),
                module.algorithm.name()
            ));
        }
        if !sigs.is_empty() && !sigs.iter().any(|x| x == sig) {
            missing.push(format!(
                "signatures by {} (its CSRs are signed with {})",
                sigs.iter().map(|k| named(k)).collect::<Vec<_>>().join(" or "),
                named(sig)
            ));
        }
        if !hashes.is_empty() && !hashes.iter().any(|x| x == hash) {
            missing.push(format!(
                "signatures with {} (its CSRs are signed with {})",
                hashes.iter().map(|k| named(k)).collect::<Vec<_>>().join(" or "),
                named(hash)
            ));
        }
        if strict && !missing.is_empty() {
            return Err(Error::invalid(format!(
                "the EST server asks CSRs of module {} for {}, which it cannot give",
                module.id,
                missing.join("; and for ")
            )));
        }
        Ok(Honoured {
            challenge: password,
            not_honoured: missing,
        })
    }
}

/// Put the issued certificates in chain order: the one whose key is the CSR's first.
pub fn chain_pem(certs: &[Vec<u8>], csr_der: &[u8]) -> Result<String> {
    use x509_parser::prelude::FromDer;
    let (_, csr) = x509_parser::certification_request::X509CertificationRequest::from_der(csr_der)
        .map_err(|e| Error::invalid(format!("the CSR: {e}")))?;
    let key = csr
        .certification_request_info
        .subject_pki
        .subject_public_key
        .data
        .to_vec();
    let mut ordered: Vec<&Vec<u8>> = certs.iter().collect();
    let leaf = ordered
        .iter()
        .position(|c| crate::pki::x509::fields(c).is_ok_and(|f| f.public_key == key))
        .ok_or_else(|| Error::validation("KeyMismatch", "no certificate in the EST answer is for the CSR's key"))?;
    let leaf = ordered.remove(leaf);
    Ok(std::iter::once(leaf)
        .chain(ordered)
        .map(|c| crate::codec::pem::pem_encode("CERTIFICATE", c))
        .collect())
}

/// Signs CSRs by EST enrollment (`/simpleenroll`) or re-enrollment (`/simplereenroll`).
pub struct EstSigner {
    pub client: EstClient,
    pub reenroll: bool,
    /// What the server last asked to wait, for the caller's retry schedule.
    pub retry_after: Mutex<Option<Duration>>,
}

impl EstSigner {
    /// An answer of the leaf alone, as many EST servers send it (Cisco libest among them),
    /// completed with its issuing CAs from `/cacerts` (RFC 7030 §4.1.3): a PKI that issues
    /// through an intermediate gets a chain that validates against the root alone. A root
    /// is never added; an answer of more than the leaf is left as it is.
    fn complete(&self, mut certs: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
        if certs.len() != 1 || crate::pki::x509::is_self_issued(&certs[0]) {
            return certs;
        }
        match self.client.cacerts() {
            Ok(cacerts) => {
                let issuers = crate::pki::x509::issuers_of(&certs[0], &cacerts);
                certs.extend(issuers);
            }
            Err(r) => crate::log_info!(
                "EST: the answer holds the leaf alone and /cacerts could not be read to complete its chain: {}",
                r.error
            ),
        }
        certs
    }
}

impl CsrSigner for EstSigner {
    fn sign(&self, _cert_type: &str, csr_pem: &str) -> Result<String> {
        use rustls::pki_types::pem::PemObject;
        let csr = rustls::pki_types::CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
            .map_err(|e| Error::invalid(format!("the CSR is not PEM: {e}")))?;
        match self.client.enroll(csr.as_ref(), self.reenroll) {
            Ok(certs) => chain_pem(&self.complete(certs), csr.as_ref()),
            Err(r) => {
                *crate::sys::lock(&self.retry_after) = r.retry_after;
                Err(r.error)
            }
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        *crate::sys::lock(&self.retry_after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn module(algorithm: crate::config::Algorithm) -> crate::config::ModuleConfig {
        crate::config::ModuleConfig {
            id: "iam".into(),
            store: crate::config::StoreConfig::Software {
                dir: "/nonexistent".into(),
            },
            algorithm,
            max_items: 1,
            extended_key_usage: vec![crate::config::Eku::ClientAuth],
            alt_names: Vec::new(),
            uri_names: Vec::new(),
            forbidden_ekus: Vec::new(),
            self_signed: false,
            skip_validation: false,
            self_signed_days: 1,
            renew: None,
            root_ca: None,
        }
    }

    #[test]
    fn csrattrs_parse_and_are_honoured_or_refused_naming_what() {
        use crate::codec::der::tlv;
        use crate::config::Algorithm;
        let oid = |c: &[u8]| tlv(0x06, c);
        let cp = oid(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x07]);
        let ec = oid(&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01]);
        let p384 = oid(&[0x2b, 0x81, 0x04, 0x00, 0x22]);
        let san = oid(&[0x55, 0x1d, 0x11]);
        let ext_req = |v: &[u8]| {
            tlv(
                0x30,
                &[
                    oid(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x0e]),
                    tlv(0x31, v),
                ]
                .concat(),
            )
        };
        let ec_attr = tlv(0x30, &[ec.clone(), tlv(0x31, &p384)].concat());
        let der = tlv(0x30, &[cp.clone(), ec_attr, ext_req(&san)].concat());
        let a = CsrAttrs::parse(&der).unwrap();
        assert_eq!(a.items.len(), 3);
        let secret = Secret::new("t".into());
        // SAN asked, none configured: refused naming it.
        let e = a
            .honour(&module(Algorithm::EcdsaP384), Some(&secret), true)
            .unwrap_err();
        assert!(e.message.contains("subjectAltName (2.5.29.17)"), "{e}");
        let mut m = module(Algorithm::EcdsaP384);
        m.alt_names = vec!["node.local".into()];
        assert_eq!(
            a.honour(&m, Some(&secret), true)
                .unwrap()
                .challenge
                .map(|s| s.expose().to_string()),
            Some("t".into())
        );
        m.algorithm = Algorithm::EcdsaP256;
        let e = a.honour(&m, Some(&secret), true).unwrap_err();
        assert!(
            e.message.contains("keys on secp384r1") && e.message.contains("ecdsa-p256"),
            "{e}"
        );
        m.algorithm = Algorithm::Rsa2048;
        let e = a.honour(&m, Some(&secret), true).unwrap_err();
        assert!(
            e.message.contains("id-ecPublicKey") && e.message.contains("rsa-2048"),
            "{e}"
        );
        // Not a CsrAttrs: refused as a protocol error, whatever the bytes.
        for bad in [
            &b""[..],
            &[0x31, 0x00],
            &[0x30, 0x05, 0x06, 0x01],
            &[0x30, 0x02, 0x02, 0x00],
            &tlv(0x30, &[der.clone(), vec![0]].concat()),
        ] {
            let e = CsrAttrs::parse(bad).unwrap_err();
            assert_eq!(e.kind, ErrorKind::Protocol, "{bad:02x?}: {e}");
        }
    }

    #[test]
    fn urls_name_host_port_and_path() {
        assert_eq!(
            parse_url("https://est.example:8443/.well-known/est").unwrap(),
            ("est.example".into(), 8443, "/.well-known/est".into())
        );
        assert_eq!(
            parse_url("https://est.example").unwrap(),
            ("est.example".into(), 443, "/.well-known/est".into())
        );
        assert!(parse_url("http://est.example").is_err());
        assert!(parse_url("https://:1/").is_err());
    }
}
