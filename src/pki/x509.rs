//! X.509 for the certificate modules: PEM, CSRs and self-signed certificates made with a
//! key that stays in its store, reading certificate fields, and chain validation.
//!
//! Validation is rustls-webpki (signatures, issuer chaining, validity, basic constraints)
//! plus the device-certificate policy webpki leaves to its callers: the leaf must carry the
//! module's EKUs, must not be a CA, must have a sound key and serial, and the root itself
//! must be within its validity period.

use crate::codec::pem::pem_encode;
use crate::config::{Algorithm, Eku};
use crate::error::{Error, Result};
use crate::store::keystore::{KeyId, KeyStore, PublicKey};
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyUsagePurpose, SanType,
    SignatureAlgorithm,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
use x509_parser::prelude::{FromDer, X509Certificate};

/// Most certificates a chain may hold (leaf, intermediates, optionally the root).
pub const MAX_CHAIN_LEN: usize = 16;
/// Most subject attributes, and most name-constraint subtrees, a certificate may carry:
/// name checks grow with their product (x509-limbo nc-dos).
pub const MAX_NAMES: usize = 64;

/// Seconds since the Unix epoch as RFC 3339 (UTC), for humans and JSON.
pub fn rfc3339(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|d| d.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| t.to_string())
}

/// Parse a PEM chain, leaf first. Broken or truncated PEM, a non-certificate section, an
/// empty input or an unparsable certificate are errors that say which.
pub fn parse_chain_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>> {
    let mut chain = Vec::new();
    for (i, item) in CertificateDer::pem_slice_iter(pem.as_bytes()).enumerate() {
        let cert = item.map_err(|e| {
            Error::invalid(format!(
                "certificate {} of the chain: broken PEM: {}",
                i + 1,
                pem_error(&e)
            ))
        })?;
        X509Certificate::from_der(&cert)
            .map_err(|e| Error::invalid(format!("certificate {} of the chain is not valid X.509: {e}", i + 1)))?;
        chain.push(cert);
        if chain.len() > MAX_CHAIN_LEN {
            return Err(Error::invalid(format!(
                "the chain has more than {MAX_CHAIN_LEN} certificates"
            )));
        }
    }
    if chain.is_empty() {
        return Err(Error::invalid(
            "no PEM certificate found (expected -----BEGIN CERTIFICATE-----)",
        ));
    }
    Ok(chain)
}

/// The certificates of a PEM (or DER) file, the file named in every error as `what` PATH:
/// roots, trust anchors, a CA's certificate.
pub fn read_certs(path: &std::path::Path, what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let bytes =
        std::fs::read(path).map_err(|e| Error::unavailable(format!("cannot read {what} {}: {e}", path.display())))?;
    chain_text(&bytes)
        .and_then(|pem| parse_chain_pem(&pem))
        .map_err(|e| e.context(format!("{what} {}", path.display())))
}

/// A PEM error as a person can act on it: the line that is missing or wrong, as text.
fn pem_error(e: &rustls_pki_types::pem::Error) -> String {
    use rustls_pki_types::pem::Error as P;
    match e {
        P::MissingSectionEnd { end_marker } => format!(
            "it ends before its end line -----END {}----- (truncated?)",
            String::from_utf8_lossy(end_marker).trim()
        ),
        P::IllegalSectionStart { line } => {
            format!(
                "a section starts with the malformed line \"{}\"",
                String::from_utf8_lossy(line).trim()
            )
        }
        P::Base64Decode(e) => format!("its base64 does not decode ({e})"),
        e => e.to_string(),
    }
}

/// A chain given as a file's bytes: PEM, or DER certificates one after another (what
/// `openssl x509 -outform der` writes), which are accepted and turned into PEM.
pub fn chain_text(bytes: &[u8]) -> Result<String> {
    if let Ok(text) = std::str::from_utf8(bytes) {
        if text.contains("-----BEGIN") || !bytes.starts_with(&[0x30]) {
            return Ok(text.to_string());
        }
    }
    let mut rest = bytes;
    let mut pem = String::new();
    while !rest.is_empty() {
        let (after, _) = X509Certificate::from_der(rest).map_err(|e| {
            Error::invalid(format!(
                "neither PEM (no -----BEGIN CERTIFICATE----- line) nor DER certificates: {e}"
            ))
        })?;
        let der = &rest[..rest.len() - after.len()];
        pem.push_str(&pem_encode("CERTIFICATE", der));
        rest = after;
    }
    Ok(pem)
}

/// A chain must be given leaf first, each certificate followed by its issuer. When it is
/// not, but its certificates could be put in that order, say so: otherwise the leaf would
/// be taken for a certificate of another key, or the path would not build.
pub fn check_chain_order(chain: &[CertificateDer<'_>]) -> Result<()> {
    let certs: Vec<X509Certificate> = chain
        .iter()
        .map(|c| X509Certificate::from_der(c).map(|(_, c)| c))
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::invalid(format!("a certificate of the chain is not valid X.509: {e}")))?;
    let issued_another = |i: usize| {
        certs
            .iter()
            .enumerate()
            .any(|(j, c)| j != i && c.issuer() == certs[i].subject() && c.subject() != c.issuer())
    };
    if let Some(leaf) = (0..certs.len()).find(|i| !issued_another(*i)) {
        if leaf != 0 && issued_another(0) {
            return Err(Error::invalid(format!(
                "the chain is not in order: certificate {} (\"{}\") is the leaf and must come first, then each issuer",
                leaf + 1,
                certs[leaf].subject()
            )));
        }
    }
    for i in 0..certs.len().saturating_sub(1) {
        if certs[i].issuer() == certs[i + 1].subject() {
            continue;
        }
        if let Some(j) = (i + 2..certs.len()).find(|j| certs[*j].subject() == certs[i].issuer()) {
            return Err(Error::invalid(format!(
                "the chain is not in order: certificate {} (\"{}\") issued certificate {} and must follow it",
                j + 1,
                certs[j].subject(),
                i + 1
            )));
        }
    }
    Ok(())
}

/// The fields of a certificate that iamd records and reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFields {
    pub subject: String,
    pub issuer: String,
    pub issuer_der: Vec<u8>,
    pub serial: Vec<u8>,
    pub not_before: i64,
    pub not_after: i64,
    /// subjectPublicKey bits: the EC point or PKCS#1 RSAPublicKey.
    pub public_key: Vec<u8>,
}

pub fn fields(der: &[u8]) -> Result<CertFields> {
    let (_, c) = X509Certificate::from_der(der).map_err(|e| Error::invalid(format!("certificate: {e}")))?;
    let tbs = &c.tbs_certificate;
    let serial = tbs.raw_serial();
    let serial = &serial[serial
        .iter()
        .take_while(|b| **b == 0)
        .count()
        .min(serial.len().saturating_sub(1))..];
    Ok(CertFields {
        subject: tbs.subject.to_string(),
        issuer: tbs.issuer.to_string(),
        issuer_der: tbs.issuer.as_raw().to_vec(),
        serial: serial.to_vec(),
        not_before: tbs.validity.not_before.timestamp(),
        not_after: tbs.validity.not_after.timestamp(),
        public_key: tbs.subject_pki.subject_public_key.data.to_vec(),
    })
}

pub fn signature_algorithm(alg: Algorithm) -> &'static SignatureAlgorithm {
    match alg {
        Algorithm::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
        Algorithm::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        Algorithm::Rsa2048 => &rcgen::PKCS_RSA_SHA256,
    }
}

/// A key that signs inside its store, for rcgen.
pub struct StoredKey<'a> {
    pub store: &'a dyn KeyStore,
    pub label: &'a str,
    pub id: KeyId,
    pub public: PublicKey,
}

impl rcgen::PublicKeyData for StoredKey<'_> {
    fn der_bytes(&self) -> &[u8] {
        &self.public.raw
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        signature_algorithm(self.public.algorithm)
    }
}

impl rcgen::SigningKey for StoredKey<'_> {
    fn sign(&self, msg: &[u8]) -> std::result::Result<Vec<u8>, rcgen::Error> {
        self.store
            .sign(self.label, &self.id, self.public.algorithm, msg)
            .map_err(|e| {
                crate::log_error!("signing with {}: {e}", self.store.describe());
                rcgen::Error::RemoteKeyError
            })
    }
}

/// Parse a subject: `CN=a,O=b,OU=c,C=DE,ST=…,L=…` or, without any `=`, a bare common name.
pub fn parse_subject(subject: &str) -> Result<DistinguishedName> {
    let mut dn = DistinguishedName::new();
    if !subject.contains('=') {
        if subject.trim().is_empty() {
            return Err(Error::invalid("the subject is empty"));
        }
        dn.push(DnType::CommonName, subject.trim());
        return Ok(dn);
    }
    for part in subject.split(',') {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| Error::invalid(format!("subject part \"{part}\" is not KEY=value")))?;
        let ty = match k.trim() {
            "CN" => DnType::CommonName,
            "O" => DnType::OrganizationName,
            "OU" => DnType::OrganizationalUnitName,
            "C" => DnType::CountryName,
            "ST" => DnType::StateOrProvinceName,
            "L" => DnType::LocalityName,
            other => {
                return Err(Error::invalid(format!(
                    "subject attribute \"{other}\" is not one of CN, O, OU, C, ST, L"
                )))
            }
        };
        if v.trim().is_empty() {
            return Err(Error::invalid(format!("subject attribute {} is empty", k.trim())));
        }
        dn.push(ty, v.trim());
    }
    Ok(dn)
}

fn eku_purpose(e: Eku) -> ExtendedKeyUsagePurpose {
    match e {
        Eku::ServerAuth => ExtendedKeyUsagePurpose::ServerAuth,
        Eku::ClientAuth => ExtendedKeyUsagePurpose::ClientAuth,
        Eku::CodeSigning => ExtendedKeyUsagePurpose::CodeSigning,
        Eku::EmailProtection => ExtendedKeyUsagePurpose::EmailProtection,
        Eku::TimeStamping => ExtendedKeyUsagePurpose::TimeStamping,
        Eku::OcspSigning => ExtendedKeyUsagePurpose::OcspSigning,
    }
}

/// Subject alternative names: DNS names, and URIs (a name with a colon, which no DNS name
/// has: the unit's URI of a link identity).
fn leaf_params(subject: &str, alt_names: &[String], ekus: &[Eku]) -> Result<CertificateParams> {
    let mut params = CertificateParams::default();
    params.distinguished_name = parse_subject(subject)?;
    for n in alt_names {
        let bad = || Error::invalid(format!("alternative name \"{n}\" is not a valid DNS name or URI"));
        let san = match n.contains(':') {
            true => SanType::URI(n.clone().try_into().map_err(|_| bad())?),
            false => SanType::DnsName(n.clone().try_into().map_err(|_| bad())?),
        };
        params.subject_alt_names.push(san);
    }
    params.extended_key_usages = ekus.iter().map(|e| eku_purpose(*e)).collect();
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_identifier_method = KeyIdMethod::Sha256;
    Ok(params)
}

/// The subjectPublicKey bits of a CSR (DER).
pub fn csr_public_key(csr_der: &[u8]) -> Result<Vec<u8>> {
    let (_, csr) = x509_parser::certification_request::X509CertificationRequest::from_der(csr_der)
        .map_err(|e| Error::invalid(format!("the CSR: {e}")))?;
    Ok(csr
        .certification_request_info
        .subject_pki
        .subject_public_key
        .data
        .to_vec())
}

/// The issuing CAs of `leaf` found among `candidates`, leaf's issuer first, up to the root
/// (left out) or the first issuer not among them: how a chain is completed from an EST
/// server's `/cacerts` when its answer to an enrollment carries the leaf alone.
pub fn issuers_of(leaf: &[u8], candidates: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let name = |der: &[u8]| {
        X509Certificate::from_der(der)
            .ok()
            .map(|(_, c)| (c.subject().as_raw().to_vec(), c.issuer().as_raw().to_vec()))
    };
    let mut out: Vec<Vec<u8>> = Vec::new();
    let Some((_, mut issuer)) = name(leaf) else {
        return out;
    };
    while out.len() < candidates.len() {
        let next = candidates.iter().find(|c| {
            name(c).is_some_and(|(subject, its_issuer)| subject == issuer && subject != its_issuer) && !out.contains(c)
        });
        let Some(next) = next else { break };
        issuer = name(next).map(|(_, i)| i).unwrap_or_default();
        out.push(next.clone());
    }
    out
}

pub fn is_self_issued(der: &[u8]) -> bool {
    X509Certificate::from_der(der).is_ok_and(|(_, c)| c.subject().as_raw() == c.issuer().as_raw())
}

/// Refuse what is for `node_id` but names another node of its unit (`unit_nodes`, the
/// node itself may be among them): a rooted secondary asking for the main node's name, or
/// another secondary's, would otherwise be accepted as that node on the links.
pub fn refuse_other_nodes(what: &str, names: &[String], node_id: &str, unit_nodes: &[String]) -> Result<()> {
    let others: Vec<&String> = names
        .iter()
        .filter(|n| *n != node_id && unit_nodes.contains(n))
        .collect();
    if others.is_empty() {
        return Ok(());
    }
    Err(policy(
        "NamesAnotherNode",
        format!(
            "{what} for node \"{node_id}\" names another node of the unit: {}",
            others.iter().map(|n| format!("\"{n}\"")).collect::<Vec<_>>().join(", ")
        ),
    ))
}

/// The CSR (DER) again with a challengePassword attribute (PKCS #9), signed again by its
/// key in the store: what a SCEP PKCSReq carries, and an EST CSR whose server's /csrattrs
/// asks for one, made as it is sent.
pub fn csr_with_challenge(key: &StoredKey, csr_der: &[u8], challenge: &crate::secret::Secret) -> Result<Vec<u8>> {
    let csr = rustls_pki_types::CertificateSigningRequestDer::from(csr_der.to_vec());
    let params = rcgen::CertificateSigningRequestParams::from_der(&csr)
        .map_err(|e| Error::invalid(format!("the CSR does not parse or its signature is wrong: {e}")))?
        .params;
    let attrs = vec![rcgen::Attribute {
        oid: &[1, 2, 840, 113549, 1, 9, 7],
        values: crate::codec::der::tlv(0x31, &crate::codec::der::tlv(0x0c, challenge.expose().as_bytes())),
    }];
    let csr = params
        .serialize_request_with_attributes(key, attrs)
        .map_err(|e| Error::internal(format!("building the CSR with {}: {e}", key.store.describe())))?;
    Ok(csr.der().to_vec())
}

/// A PEM CSR for the key, signed inside its store (a challengePassword is added only as a
/// CSR is sent, by [`csr_with_challenge`]: a CSR that is kept never holds one).
pub fn build_csr(key: &StoredKey, subject: &str, alt_names: &[String], ekus: &[Eku]) -> Result<String> {
    let params = leaf_params(subject, alt_names, ekus)?;
    let csr = params
        .serialize_request(key)
        .map_err(|e| Error::internal(format!("building the CSR with {}: {e}", key.store.describe())))?;
    csr.pem().map_err(|e| Error::internal(format!("encoding the CSR: {e}")))
}

/// A self-signed certificate for the key, valid `days` from now.
pub fn self_signed(key: &StoredKey, subject: &str, alt_names: &[String], ekus: &[Eku], days: u32) -> Result<Vec<u8>> {
    let mut params = leaf_params(subject, alt_names, ekus)?;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + time::Duration::days(days as i64);
    params.serial_number = Some(random_serial()?);
    let cert = params
        .self_signed(key)
        .map_err(|e| Error::internal(format!("self-signing with {}: {e}", key.store.describe())))?;
    Ok(cert.der().to_vec())
}

/// A positive 16-byte serial from the OS CSPRNG.
pub fn random_serial() -> Result<rcgen::SerialNumber> {
    let mut s = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut s)
        .map_err(|_| Error::internal("the OS random number generator failed"))?;
    s[0] = (s[0] & 0x7f) | 0x01;
    Ok(rcgen::SerialNumber::from_slice(&s))
}

/// Requires, on every certificate that has an EKU extension (leaf and intermediates),
/// each EKU the module requires; the leaf check in [`validate_chain`] makes the
/// extension itself mandatory on the leaf.
struct EkuPolicy<'a>(&'a [Eku]);

impl webpki::ExtendedKeyUsageValidator for EkuPolicy<'_> {
    fn validate(&self, iter: webpki::KeyPurposeIdIter<'_, '_>) -> std::result::Result<(), webpki::Error> {
        let mut present = Vec::new();
        for id in iter {
            present.push(id?);
        }
        if present.is_empty() {
            return Ok(());
        }
        for eku in self.0 {
            let want = webpki::KeyPurposeId::new(eku.oid_der());
            if !present.contains(&want) {
                #[allow(deprecated)] // the Context variant cannot be built outside webpki
                return Err(webpki::Error::RequiredEkuNotFound);
            }
        }
        Ok(())
    }
}

/// The variant name of a webpki error (`CertExpired { .. }` → `CertExpired`).
fn webpki_reason(e: &webpki::Error) -> String {
    let d = format!("{e:?}");
    d.split(|c: char| !c.is_alphanumeric())
        .next()
        .unwrap_or("Unknown")
        .to_string()
}

fn policy(reason: &str, message: impl Into<String>) -> Error {
    Error::validation(reason, message)
}

/// How far ahead of this node's clock a CA's clock may run: a certificate just issued with
/// notBefore = the CA's "now" is still applied when that instant is at most this far ahead.
/// A secondary without a network keeps the time its RTC gave it at boot (truncated to the
/// second), so a CA that does not backdate (openssl ca, libest) is often a second ahead.
pub const ISSUED_CLOCK_SKEW_SECS: i64 = 300;

/// The time at which to validate a chain just issued to this node at `now`: `now`, or the
/// latest notBefore of the chain when it is ahead of `now` by no more than
/// [`ISSUED_CLOCK_SKEW_SECS`]. Whatever is valid at that instant and not expired at `now`
/// is what the CA meant to issue; a certificate dated further ahead is still refused.
pub fn issued_at(chain: &[CertificateDer<'_>], now: UnixTime) -> UnixTime {
    let at = now.as_secs() as i64;
    let latest = chain
        .iter()
        .filter_map(|c| X509Certificate::from_der(c).ok())
        .map(|(_, c)| c.validity().not_before.timestamp())
        .max()
        .unwrap_or(at);
    match latest > at && latest - at <= ISSUED_CLOCK_SKEW_SECS {
        true => UnixTime::since_unix_epoch(std::time::Duration::from_secs(latest as u64)),
        false => now,
    }
}

/// Validate `chain` (leaf first; copies of a root in it are ignored) against `roots` at
/// `time`, requiring `ekus` in the leaf. Only a chain that passes may be applied.
///
/// Roots that are expired or break the profile are not used as anchors; if none is left,
/// the reason the last one was refused is the error.
pub fn validate_chain(
    chain: &[CertificateDer<'_>],
    roots: &[CertificateDer<'_>],
    ekus: &[Eku],
    time: UnixTime,
) -> Result<()> {
    validate_chain_against(chain, roots, ekus, time, &[])
}

/// Certificate revocation lists read from files (`paths.crl`): each file PEM (`X509 CRL`
/// sections) or one DER CRL, each parsed here so that a broken one is named now; its
/// signature is checked against the issuer it names when a chain through it is validated.
pub fn read_crls(paths: &[std::path::PathBuf]) -> Result<Vec<CertificateRevocationListDer<'static>>> {
    let mut out = Vec::new();
    for path in paths {
        let what = format!("the CRL {}", path.display());
        let bytes = std::fs::read(path).map_err(|e| Error::unavailable(format!("cannot read {what}: {e}")))?;
        out.extend(crls_in(&bytes, &what)?);
    }
    Ok(out)
}

/// The CRLs of one file's bytes (`what` names it in errors): PEM `X509 CRL` sections, or
/// one DER CRL.
pub fn crls_in(bytes: &[u8], what: &str) -> Result<Vec<CertificateRevocationListDer<'static>>> {
    use rustls_pki_types::pem::{PemObject, SectionKind};
    let ders: Vec<Vec<u8>> = match bytes.trim_ascii_start().starts_with(b"-----") {
        true => <(SectionKind, Vec<u8>)>::pem_slice_iter(bytes)
            .filter_map(|r| match r {
                Ok((SectionKind::Crl, der)) => Some(Ok(der)),
                Ok(_) => None,
                Err(e) => Some(Err(Error::invalid(format!("{what}: {}", pem_error(&e))))),
            })
            .collect::<Result<_>>()?,
        false => vec![bytes.to_vec()],
    };
    if ders.is_empty() {
        return Err(Error::invalid(format!("{what}: no X509 CRL section")));
    }
    ders.into_iter()
        .map(|der| {
            webpki::BorrowedCertRevocationList::from_der(&der).map_err(|e| {
                policy(
                    &webpki_reason(&e),
                    format!("{what}: not a CRL this node can use: {e:?}"),
                )
            })?;
            Ok(CertificateRevocationListDer::from(der))
        })
        .collect()
}

/// CRLs as rustls-webpki uses them.
pub fn parse_crls(ders: &[CertificateRevocationListDer<'_>]) -> Result<Vec<webpki::CertRevocationList<'static>>> {
    ders.iter()
        .map(|d| {
            webpki::OwnedCertRevocationList::from_der(d)
                .map(Into::into)
                .map_err(|e| policy(&webpki_reason(&e), format!("a CRL: {e:?}")))
        })
        .collect()
}

/// The revocation options every chain is checked with where CRLs are configured: the whole
/// chain; an issuer no CRL covers is not refused for that; a CRL past its nextUpdate still
/// counts (a stale list still names what it revoked, and a unit without a network may not
/// get a fresh one in time).
pub fn revocation<'a>(crls: &'a [&'a webpki::CertRevocationList<'a>]) -> Option<webpki::RevocationOptions<'a>> {
    let builder = webpki::RevocationOptionsBuilder::new(crls).ok()?;
    Some(
        builder
            .with_depth(webpki::RevocationCheckDepth::Chain)
            .with_status_policy(webpki::UnknownStatusPolicy::Allow)
            .with_expiration_policy(webpki::ExpirationPolicy::Ignore)
            .build(),
    )
}

/// [`validate_chain`], and no certificate of the path revoked by one of `crls`.
pub fn validate_chain_with_crls(
    chain: &[CertificateDer<'_>],
    roots: &[CertificateDer<'_>],
    ekus: &[Eku],
    time: UnixTime,
    crls: &[CertificateRevocationListDer<'_>],
) -> Result<()> {
    validate_chain_against(chain, roots, ekus, time, &parse_crls(crls)?)
}

/// [`validate_chain_with_crls`] with CRLs parsed already (by [`parse_crls`]): for checking
/// many chains against the same lists.
pub fn validate_chain_against(
    chain: &[CertificateDer<'_>],
    roots: &[CertificateDer<'_>],
    ekus: &[Eku],
    time: UnixTime,
    crls: &[webpki::CertRevocationList<'_>],
) -> Result<()> {
    let crl_refs: Vec<&webpki::CertRevocationList> = crls.iter().collect();
    let leaf = chain.first().ok_or_else(|| Error::invalid("empty chain"))?;
    let at = time.as_secs() as i64;
    let mut anchors = Vec::new();
    let mut refused = Vec::new();
    for root in roots {
        match usable_root(root, at) {
            Ok(a) => anchors.push(a),
            Err(e) => refused.push(e.to_string()),
        }
    }
    if anchors.is_empty() {
        return Err(match refused.is_empty() {
            true => policy("NoRoot", "no root certificate is configured"),
            false => policy(
                "NoUsableRoot",
                format!("no usable root is configured: {}", refused.join("; ")),
            ),
        });
    }

    let ee = webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| policy(&webpki_reason(&e), format!("the leaf certificate: {e}")))?;
    let intermediates: Vec<CertificateDer> = chain[1..]
        .iter()
        .filter(|c| !roots.iter().any(|r| r.as_ref() == c.as_ref()))
        .cloned()
        .collect();
    let path = ee
        .verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &intermediates,
            time,
            EkuPolicy(ekus),
            revocation(&crl_refs),
            None,
        )
        .map_err(|e| {
            let also = match refused.is_empty() {
                true => String::new(),
                false => format!(" (roots refused and not used: {})", refused.join("; ")),
            };
            let why = match e {
                webpki::Error::CertRevoked => {
                    Some("a certificate of the chain is revoked by a CRL of paths.crl".into())
                }
                _ => explain_path(leaf, &intermediates, roots, at),
            }
            .map(|w| format!(": {w}"))
            .unwrap_or_default();
            policy(
                &webpki_reason(&e),
                format!("the chain does not validate against the configured root: {e}{why}{also}"),
            )
        })?;

    check_leaf(leaf, ekus)?;
    for ica in path.intermediate_certificates() {
        check_intermediate(&ica.der())?;
    }
    Ok(())
}

/// A configured root as a trust anchor, or why it cannot be one.
/// Why no path leads from `leaf` to one of `roots`, in words that name the certificate at
/// fault: the first one on the way up (by issuer name, from the certificates given) that is
/// outside its validity at `at`, or the issuer that is neither given nor a root (an issuing
/// CA left out of the chain). `None` when the walk finds neither.
pub fn explain_path(
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    roots: &[CertificateDer<'_>],
    at: i64,
) -> Option<String> {
    let parsed: Vec<X509Certificate> = intermediates
        .iter()
        .filter_map(|c| X509Certificate::from_der(c).ok().map(|(_, c)| c))
        .collect();
    let root_subjects: Vec<Vec<u8>> = roots
        .iter()
        .filter_map(|c| {
            X509Certificate::from_der(c)
                .ok()
                .map(|(_, c)| c.subject().as_raw().to_vec())
        })
        .collect();
    let (_, mut cert) = X509Certificate::from_der(leaf).ok()?;
    for _ in 0..=MAX_CHAIN_LEN {
        let (from, to) = (
            cert.validity().not_before.timestamp(),
            cert.validity().not_after.timestamp(),
        );
        if at > to {
            return Some(format!("certificate \"{}\" expired at {}", cert.subject(), rfc3339(to)));
        }
        if at < from {
            return Some(format!(
                "certificate \"{}\" is not valid before {}",
                cert.subject(),
                rfc3339(from)
            ));
        }
        if root_subjects.iter().any(|r| r.as_slice() == cert.issuer().as_raw()) {
            return None;
        }
        let next = parsed.iter().find(|c| {
            c.subject().as_raw() == cert.issuer().as_raw() && c.subject().as_raw() != cert.subject().as_raw()
        });
        match next {
            Some(c) => cert = c.clone(),
            None => {
                return Some(format!(
                    "the issuer \"{}\" of \"{}\" is neither among the certificates presented nor a configured root \
                     (an issuing CA left out of the chain?)",
                    cert.issuer(),
                    cert.subject()
                ))
            }
        }
    }
    None
}

fn usable_root<'a>(root: &'a CertificateDer<'_>, at: i64) -> Result<rustls_pki_types::TrustAnchor<'a>> {
    check_root(root, at)?;
    webpki::anchor_from_trusted_cert(root)
        .map_err(|e| policy(&webpki_reason(&e), format!("a root cannot be a trust anchor: {e}")))
}

/// The configured roots that cannot serve as trust anchors at `time`, each with its reason
/// (for `iamd --check-config` and iamd's start, so that a refused root is never silent).
pub fn refused_roots(roots: &[CertificateDer<'_>], time: UnixTime) -> Vec<Error> {
    let at = time.as_secs() as i64;
    roots.iter().filter_map(|r| usable_root(r, at).err()).collect()
}

fn parse<'a>(der: &'a [u8], what: &str) -> Result<X509Certificate<'a>> {
    X509Certificate::from_der(der)
        .map(|(_, c)| c)
        .map_err(|e| policy("BadDer", format!("{what}: {e}")))
}

/// Exact bit length of a big-endian unsigned integer.
fn bit_len(magnitude: &[u8]) -> usize {
    let m = &magnitude[magnitude.iter().take_while(|b| **b == 0).count()..];
    m.first()
        .map_or(0, |b| (m.len() - 1) * 8 + (8 - b.leading_zeros() as usize))
}

/// Checks every certificate of a path must pass, whatever its place.
fn check_common(c: &X509Certificate, what: &str) -> Result<()> {
    use x509_parser::extensions::ParsedExtension as P;
    use x509_parser::public_key::PublicKey as Pk;
    for ext in c.extensions() {
        match ext.parsed_extension() {
            P::ParseError { error } => {
                return Err(policy(
                    "MalformedExtension",
                    format!("{what}: extension {} does not parse: {error}", ext.oid),
                ))
            }
            P::AuthorityKeyIdentifier(_) if ext.critical => {
                return Err(policy(
                    "CriticalKeyIdentifier",
                    format!("{what}: the authority key identifier is marked critical"),
                ))
            }
            P::SubjectKeyIdentifier(_) if ext.critical => {
                return Err(policy(
                    "CriticalKeyIdentifier",
                    format!("{what}: the subject key identifier is marked critical"),
                ))
            }
            P::PolicyConstraints(_) if !ext.critical => {
                return Err(policy(
                    "NonCriticalPolicyConstraints",
                    format!("{what}: policy constraints must be critical"),
                ))
            }
            P::NameConstraints(nc) => {
                let n = nc.permitted_subtrees.as_ref().map_or(0, Vec::len)
                    + nc.excluded_subtrees.as_ref().map_or(0, Vec::len);
                if n > MAX_NAMES {
                    return Err(policy(
                        "TooManyNames",
                        format!("{what}: {n} name constraints (at most {MAX_NAMES})"),
                    ));
                }
            }
            _ => {}
        }
    }
    let names = c.subject().iter_attributes().count();
    if names > MAX_NAMES {
        return Err(policy(
            "TooManyNames",
            format!("{what}: {names} subject attributes (at most {MAX_NAMES})"),
        ));
    }
    match c.public_key().parsed() {
        Ok(Pk::EC(_)) => {
            let curve = c
                .public_key()
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok());
            let allowed = [
                x509_parser::oid_registry::OID_EC_P256,
                x509_parser::oid_registry::OID_NIST_EC_P384,
                x509_parser::oid_registry::OID_NIST_EC_P521,
            ];
            if !curve.is_some_and(|o| allowed.contains(&o)) {
                return Err(policy(
                    "WeakOrForbiddenKey",
                    format!("{what}: the EC key is not on a named curve P-256, P-384 or P-521"),
                ));
            }
        }
        Ok(Pk::RSA(rsa)) => {
            let bits = bit_len(rsa.modulus);
            if bits < 2048 || !bits.is_multiple_of(8) {
                return Err(policy(
                    "WeakOrForbiddenKey",
                    format!("{what}: the RSA key has {bits} bits (at least 2048, a multiple of 8)"),
                ));
            }
        }
        Ok(_) => {
            return Err(policy(
                "WeakOrForbiddenKey",
                format!("{what}: the key type is not EC or RSA"),
            ))
        }
        Err(e) => return Err(policy("BadDer", format!("{what}: the public key: {e}"))),
    }
    Ok(())
}

fn check_serial(c: &X509Certificate, what: &str) -> Result<()> {
    let serial = c.tbs_certificate.raw_serial();
    let zero = serial.iter().all(|b| *b == 0);
    let negative = serial.first().is_some_and(|b| b & 0x80 != 0);
    let long = serial.len() > 21 || (serial.len() == 21 && serial[0] != 0);
    if zero || negative || long {
        return Err(policy(
            "BadSerialNumber",
            format!("{what}: the serial number is zero, negative or longer than 20 bytes"),
        ));
    }
    Ok(())
}

fn has_aki(c: &X509Certificate) -> bool {
    matches!(
        c.get_extension_unique(&x509_parser::oid_registry::OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER),
        Ok(Some(_))
    )
}

fn ski<'a>(c: &'a X509Certificate) -> Option<&'a [u8]> {
    c.extensions().iter().find_map(|e| match e.parsed_extension() {
        x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0),
        _ => None,
    })
}

/// A root must be a CA in the RFC 5280 sense, within its validity, and not restricted to
/// purposes (no EKU); an unknown critical extension makes it unusable.
fn check_root(der: &[u8], at: i64) -> Result<()> {
    use x509_parser::extensions::ParsedExtension as P;
    let c = parse(der, "a root certificate")?;
    let what = format!("the root \"{}\"", c.subject());
    let v = &c.tbs_certificate.validity;
    if at > v.not_after.timestamp() {
        return Err(policy("RootExpired", format!("{what} expired at {}", v.not_after)));
    }
    if at < v.not_before.timestamp() {
        return Err(policy(
            "RootNotValidYet",
            format!("{what} is not valid before {}", v.not_before),
        ));
    }
    check_common(&c, &what)?;
    if c.subject().iter_attributes().next().is_none() {
        return Err(policy("EmptySubject", "a root has an empty subject"));
    }
    let mut ca = false;
    for ext in c.extensions() {
        match ext.parsed_extension() {
            P::BasicConstraints(bc) if !ext.critical => {
                return Err(policy(
                    "NonCriticalBasicConstraints",
                    format!("{what}: basic constraints must be critical"),
                ))
            }
            P::BasicConstraints(bc) => ca = bc.ca,
            P::KeyUsage(ku) if !ku.key_cert_sign() => {
                return Err(policy(
                    "InconsistentCaExtensions",
                    format!("{what}: a CA whose key usage lacks keyCertSign"),
                ))
            }
            P::ExtendedKeyUsage(_) => {
                return Err(policy(
                    "RootHasEku",
                    format!("{what}: a root must not carry an extended key usage"),
                ))
            }
            P::UnsupportedExtension { .. } if ext.critical => {
                return Err(policy(
                    "UnknownCriticalExtension",
                    format!("{what}: unknown critical extension {}", ext.oid),
                ))
            }
            P::AuthorityKeyIdentifier(aki) => {
                if aki.authority_cert_issuer.is_some()
                    || aki.authority_cert_serial.is_some()
                    || aki.key_identifier.is_none()
                {
                    return Err(policy(
                        "BadAuthorityKeyIdentifier",
                        format!("{what}: its authority key identifier must hold a key identifier only"),
                    ));
                }
                if c.subject() == c.issuer() && aki.key_identifier.as_ref().map(|k| k.0) != ski(&c) {
                    return Err(policy(
                        "BadAuthorityKeyIdentifier",
                        format!("{what}: its authority key identifier differs from its subject key identifier"),
                    ));
                }
            }
            _ => {}
        }
    }
    if !ca {
        return Err(policy(
            "RootNotCa",
            format!("{what}: no basic constraints with cA=true"),
        ));
    }
    if ski(&c).is_none() {
        return Err(policy(
            "MissingKeyIdentifier",
            format!("{what}: no subject key identifier"),
        ));
    }
    Ok(())
}

fn check_intermediate(der: &[u8]) -> Result<()> {
    let c = parse(der, "an intermediate")?;
    let what = format!("the intermediate \"{}\"", c.subject());
    check_common(&c, &what)?;
    check_serial(&c, &what)?;
    if c.subject().iter_attributes().next().is_none() {
        return Err(policy("EmptySubject", "an intermediate has an empty subject"));
    }
    if !has_aki(&c) || ski(&c).is_none() {
        return Err(policy(
            "MissingKeyIdentifier",
            format!("{what}: authority and subject key identifiers are required"),
        ));
    }
    // RFC 5280 4.2.1.3: a key that signs certificates must have keyCertSign when its key
    // usage is stated, critical or not (webpki does not check it).
    for ext in c.extensions() {
        if let x509_parser::extensions::ParsedExtension::KeyUsage(ku) = ext.parsed_extension() {
            if !ku.key_cert_sign() {
                return Err(policy(
                    "IntermediateWithoutKeyCertSign",
                    format!("{what}: a CA whose key usage lacks keyCertSign"),
                ));
            }
        }
    }
    Ok(())
}

/// Whether an extended key usage extension lists `e`.
pub fn has_eku(u: &x509_parser::extensions::ExtendedKeyUsage, e: Eku) -> bool {
    match e {
        Eku::ServerAuth => u.server_auth,
        Eku::ClientAuth => u.client_auth,
        Eku::CodeSigning => u.code_signing,
        Eku::EmailProtection => u.email_protection,
        Eku::TimeStamping => u.time_stamping,
        Eku::OcspSigning => u.ocsp_signing,
    }
}

/// Refuse a leaf that carries one of `forbidden` (a secondary's link identity with
/// serverAuth could pose as the main node).
pub fn refuse_ekus(der: &[u8], forbidden: &[Eku]) -> Result<()> {
    if forbidden.is_empty() {
        return Ok(());
    }
    let c = parse(der, "the leaf")?;
    let Ok(Some(ext)) = c.extended_key_usage() else {
        return Ok(());
    };
    let u = &ext.value;
    for e in forbidden {
        let has = has_eku(u, *e);
        if has || u.any {
            return Err(policy(
                "ForbiddenEku",
                format!(
                    "the leaf carries {}, which a secondary node's link identity must not (it could pose as the main node)",
                    if has { e.name() } else { "anyExtendedKeyUsage" }
                ),
            ));
        }
    }
    Ok(())
}

/// The device-certificate policy on the leaf, beyond what webpki checks.
fn check_leaf(der: &[u8], ekus: &[Eku]) -> Result<()> {
    use x509_parser::extensions::ParsedExtension as P;
    let c = parse(der, "the leaf")?;
    let what = "the leaf";
    check_common(&c, what)?;
    check_serial(&c, what)?;
    if !has_aki(&c) {
        return Err(policy(
            "MissingKeyIdentifier",
            "the leaf has no authority key identifier",
        ));
    }
    let mut leaf_ekus = None;
    for ext in c.extensions() {
        match ext.parsed_extension() {
            P::BasicConstraints(bc) if bc.ca => {
                return Err(policy(
                    "LeafIsCa",
                    "the leaf is a CA certificate (basicConstraints cA=true)",
                ))
            }
            P::KeyUsage(ku) if ku.key_cert_sign() => {
                return Err(policy(
                    "LeafCanSignCertificates",
                    "the leaf's key usage allows keyCertSign",
                ))
            }
            P::ExtendedKeyUsage(_) if ext.critical => {
                return Err(policy(
                    "CriticalEku",
                    "the leaf's extended key usage is marked critical",
                ))
            }
            P::ExtendedKeyUsage(e) if e.any => {
                return Err(policy(
                    "AnyEku",
                    "the leaf allows any extended key usage (anyExtendedKeyUsage)",
                ))
            }
            P::ExtendedKeyUsage(e) => leaf_ekus = Some(e.clone()),
            _ => {}
        }
    }
    if !ekus.is_empty() {
        let Some(have) = leaf_ekus else {
            let names: Vec<_> = ekus.iter().map(|e| e.name()).collect();
            return Err(policy(
                "RequiredEkuNotFound",
                format!(
                    "the leaf has no extended key usage; the module requires {}",
                    names.join(", ")
                ),
            ));
        };
        for e in ekus {
            let ok = has_eku(&have, *e);
            if !ok {
                return Err(policy(
                    "RequiredEkuNotFound",
                    format!("the leaf lacks the extended key usage {}", e.name()),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broken_pem_is_an_error() {
        assert!(parse_chain_pem("").unwrap_err().message.contains("no PEM certificate"));
        let e = parse_chain_pem("-----BEGIN CERTIFICATE-----\nMIIB\n").unwrap_err();
        assert!(e.message.contains("broken PEM"), "{e}");
        let e = parse_chain_pem(&pem_encode("CERTIFICATE", b"not der")).unwrap_err();
        assert!(e.message.contains("not valid X.509"), "{e}");
    }

    #[test]
    fn bit_length_is_exact() {
        assert_eq!(bit_len(&[0, 0x80, 0]), 16);
        assert_eq!(bit_len(&[0x01, 0]), 9);
        assert_eq!(bit_len(&[0]), 0);
    }

    #[test]
    fn a_chain_is_validated_at_its_not_before_only_within_the_skew() {
        let key = rcgen::KeyPair::generate().unwrap();
        let dated = |ahead: i64| {
            let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            p.not_before = time::OffsetDateTime::from_unix_timestamp(1_000_000 + ahead).unwrap();
            vec![CertificateDer::from(p.self_signed(&key).unwrap().der().to_vec())]
        };
        let now = UnixTime::since_unix_epoch(std::time::Duration::from_secs(1_000_000));
        let at = |ahead| issued_at(&dated(ahead), now).as_secs();
        assert_eq!(at(-60), 1_000_000);
        assert_eq!(at(1), 1_000_001);
        assert_eq!(at(ISSUED_CLOCK_SKEW_SECS), 1_000_000 + ISSUED_CLOCK_SKEW_SECS as u64);
        assert_eq!(at(ISSUED_CLOCK_SKEW_SECS + 1), 1_000_000);
    }

    #[test]
    fn subjects_parse() {
        assert!(parse_subject("node0").is_ok());
        assert!(parse_subject("CN=a,O=b").is_ok());
        assert!(parse_subject("XX=a").is_err());
        assert!(parse_subject("CN=").is_err());
        assert!(parse_subject(" ").is_err());
    }
}
