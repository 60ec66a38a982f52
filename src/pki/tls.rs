//! TLS with the node's PKI (rustls, ring provider), on node links and to EST servers. On a
//! link, a node's identity is the current certificate of its link identity module, and its
//! private key signs inside the key store.
//!
//! Both ends verify the other's chain against the configured root; the main node (server)
//! must carry serverAuth and the secondary (client) clientAuth, and each certificate must
//! name its node (its CN or a DNS name equal to the node id stated in the hello), so a
//! node with a valid certificate cannot speak for another node. Host names are not
//! checked: nodes are named by id, not by DNS.

use crate::config::{Algorithm, Eku};
use crate::error::{Error, ErrorKind, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::{CertifiedKey, SigningKey, SingleCertAndKey};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::sync::Arc;
use x509_parser::prelude::{FromDer, GeneralName, ParsedExtension, X509Certificate};

/// Signs a TLS handshake message with a node's identity key, wherever that key lives.
pub trait IdentitySigner: Send + Sync + std::fmt::Debug {
    /// The signature over `message` as TLS wants it (DER ECDSA-Sig-Value).
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>>;
}

/// A node's TLS identity: its certificate and the signer of its key.
#[derive(Debug, Clone)]
pub struct Identity {
    pub cert_der: Vec<u8>,
    /// Certificates between the leaf and its root, sent after it (a manufacturer chain).
    pub intermediates: Vec<Vec<u8>>,
    pub algorithm: Algorithm,
    pub signer: Arc<dyn IdentitySigner>,
}

fn scheme(algorithm: Algorithm) -> Result<SignatureScheme> {
    match algorithm {
        Algorithm::EcdsaP384 => Ok(SignatureScheme::ECDSA_NISTP384_SHA384),
        Algorithm::EcdsaP256 => Ok(SignatureScheme::ECDSA_NISTP256_SHA256),
        // The stores sign RSA with PKCS#1 v1.5, which TLS 1.3 does not allow for handshakes.
        Algorithm::Rsa2048 => Err(Error::invalid(
            "a link identity needs an ECDSA key (ecdsa-p384 or ecdsa-p256); rsa-2048 cannot sign TLS 1.3 handshakes here",
        )),
    }
}

#[derive(Debug)]
struct StoreKey {
    scheme: SignatureScheme,
    signer: Arc<dyn IdentitySigner>,
}

impl SigningKey for StoreKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn rustls::sign::Signer>> {
        offered.contains(&self.scheme).then(|| {
            Box::new(StoreSigner {
                scheme: self.scheme,
                signer: self.signer.clone(),
            }) as Box<dyn rustls::sign::Signer>
        })
    }

    fn algorithm(&self) -> rustls::SignatureAlgorithm {
        rustls::SignatureAlgorithm::ECDSA
    }
}

#[derive(Debug)]
struct StoreSigner {
    scheme: SignatureScheme,
    signer: Arc<dyn IdentitySigner>,
}

impl rustls::sign::Signer for StoreSigner {
    fn sign(&self, message: &[u8]) -> std::result::Result<Vec<u8>, rustls::Error> {
        self.signer.sign(message).map_err(|e| {
            crate::log_error!("signing the TLS handshake: {e}");
            rustls::Error::General(format!("the identity key could not sign: {}", e.kind.name()))
        })
    }

    fn scheme(&self) -> SignatureScheme {
        self.scheme
    }
}

/// The suites the links and EST servers need, and nothing more: TLS 1.3's AES-GCM suites
/// (TLS_AES_128_GCM_SHA256 is mandatory to implement) and TLS 1.2's ECDHE AES-GCM ones
/// (cargo feature `tls12`); the mandatory P-256 group, P-384 and X25519. ChaCha20-Poly1305
/// is left out: every TLS 1.3 peer has AES-128-GCM.
static SUITES: &[rustls::SupportedCipherSuite] = {
    use rustls::crypto::ring::cipher_suite as c;
    &[
        c::TLS13_AES_256_GCM_SHA384,
        c::TLS13_AES_128_GCM_SHA256,
        #[cfg(feature = "tls12")]
        c::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        #[cfg(feature = "tls12")]
        c::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        #[cfg(feature = "tls12")]
        c::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        #[cfg(feature = "tls12")]
        c::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    ]
};

/// The peer signatures checked: ECDSA (P-256, P-384), Ed25519, RSA PKCS#1 and PSS, as the
/// ring provider's own table has them (built here so that its default suites stay out).
static SIGNATURES: WebPkiSupportedAlgorithms = {
    use webpki::ring as w;
    WebPkiSupportedAlgorithms {
        all: &[
            w::ECDSA_P256_SHA256,
            w::ECDSA_P256_SHA384,
            w::ECDSA_P384_SHA256,
            w::ECDSA_P384_SHA384,
            w::ED25519,
            w::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
            w::RSA_PSS_2048_8192_SHA384_LEGACY_KEY,
            w::RSA_PSS_2048_8192_SHA512_LEGACY_KEY,
            w::RSA_PKCS1_2048_8192_SHA256,
            w::RSA_PKCS1_2048_8192_SHA384,
            w::RSA_PKCS1_2048_8192_SHA512,
            w::RSA_PKCS1_2048_8192_SHA256_ABSENT_PARAMS,
            w::RSA_PKCS1_2048_8192_SHA384_ABSENT_PARAMS,
            w::RSA_PKCS1_2048_8192_SHA512_ABSENT_PARAMS,
        ],
        mapping: &[
            (
                SignatureScheme::ECDSA_NISTP384_SHA384,
                &[w::ECDSA_P384_SHA384, w::ECDSA_P256_SHA384],
            ),
            (
                SignatureScheme::ECDSA_NISTP256_SHA256,
                &[w::ECDSA_P256_SHA256, w::ECDSA_P384_SHA256],
            ),
            (SignatureScheme::ED25519, &[w::ED25519]),
            (
                SignatureScheme::RSA_PSS_SHA512,
                &[w::RSA_PSS_2048_8192_SHA512_LEGACY_KEY],
            ),
            (
                SignatureScheme::RSA_PSS_SHA384,
                &[w::RSA_PSS_2048_8192_SHA384_LEGACY_KEY],
            ),
            (
                SignatureScheme::RSA_PSS_SHA256,
                &[w::RSA_PSS_2048_8192_SHA256_LEGACY_KEY],
            ),
            (SignatureScheme::RSA_PKCS1_SHA512, &[w::RSA_PKCS1_2048_8192_SHA512]),
            (SignatureScheme::RSA_PKCS1_SHA384, &[w::RSA_PKCS1_2048_8192_SHA384]),
            (SignatureScheme::RSA_PKCS1_SHA256, &[w::RSA_PKCS1_2048_8192_SHA256]),
        ],
    }
};

#[derive(Debug)]
struct SystemRandom;

impl rustls::crypto::SecureRandom for SystemRandom {
    fn fill(&self, buf: &mut [u8]) -> std::result::Result<(), rustls::crypto::GetRandomFailed> {
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), buf)
            .map_err(|_| rustls::crypto::GetRandomFailed)
    }
}

#[derive(Debug)]
struct FileKeys;

impl rustls::crypto::KeyProvider for FileKeys {
    fn load_private_key(
        &self,
        key: rustls::pki_types::PrivateKeyDer<'static>,
    ) -> std::result::Result<Arc<dyn rustls::sign::SigningKey>, rustls::Error> {
        rustls::crypto::ring::sign::any_supported_type(&key)
    }
}

fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring::kx_group;
    Arc::new(CryptoProvider {
        cipher_suites: SUITES.to_vec(),
        kx_groups: vec![kx_group::X25519, kx_group::SECP256R1, kx_group::SECP384R1],
        signature_verification_algorithms: SIGNATURES,
        secure_random: &SystemRandom,
        key_provider: &FileKeys,
    })
}

fn certified_key(identity: &Identity) -> Result<Arc<CertifiedKey>> {
    let key = StoreKey {
        scheme: scheme(identity.algorithm)?,
        signer: identity.signer.clone(),
    };
    let chain = std::iter::once(&identity.cert_der)
        .chain(&identity.intermediates)
        .map(|c| CertificateDer::from(c.clone()))
        .collect();
    Ok(Arc::new(CertifiedKey::new(chain, Arc::new(key))))
}

fn tls_error(what: &str, e: rustls::Error) -> Error {
    Error::internal(format!("{what}: {e}"))
}

/// TLS 1.3, and 1.2 for peers that have nothing newer (EST servers; cargo feature `tls12`).
#[cfg(feature = "tls12")]
static VERSIONS: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];
#[cfg(not(feature = "tls12"))]
static VERSIONS: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
/// Node links: both ends are aos-iam, so TLS 1.3 only. The secondary's key signs through
/// its iamd, which signs nothing but what a TLS 1.3 client CertificateVerify is.
static LINK_VERSIONS: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

fn versions() -> &'static [&'static rustls::SupportedProtocolVersion] {
    VERSIONS
}

/// What a TLS 1.3 client signs in its CertificateVerify (RFC 8446 4.4.3): 64 spaces, the
/// context string, a zero byte, then the transcript hash (SHA-256 or SHA-384).
const CLIENT_VERIFY_CONTEXT: &[u8] = b"TLS 1.3, client CertificateVerify\0";

/// Whether `message` is exactly what a TLS 1.3 client CertificateVerify signs, and so no
/// other statement (a server's handshake, a CSR, a document) can be had signed as one.
pub fn is_client_certificate_verify(message: &[u8]) -> bool {
    let Some(rest) = message.strip_prefix(&[b' '; 64]) else {
        return false;
    };
    let Some(hash) = rest.strip_prefix(CLIENT_VERIFY_CONTEXT) else {
        return false;
    };
    matches!(hash.len(), 32 | 48)
}

/// The main node's side: its identity, and a client certificate required from every peer.
pub fn server_config(
    identity: &Identity,
    roots: &[CertificateDer<'static>],
    crls: &[std::path::PathBuf],
) -> Result<Arc<rustls::ServerConfig>> {
    let provider = provider();
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store
            .add(r.clone())
            .map_err(|e| Error::validation("BadRoot", format!("root CA for links: {e}")))?;
    }
    let crl_ders = crate::pki::x509::read_crls(crls)?;
    let mut builder = WebPkiClientVerifier::builder_with_provider(Arc::new(store), provider.clone());
    if !crl_ders.is_empty() {
        builder = builder.with_crls(crl_ders).allow_unknown_revocation_status();
    }
    let inner = builder
        .build()
        .map_err(|e| Error::internal(format!("TLS client verifier: {e}")))?;
    let verifier = Arc::new(NodeClientVerifier {
        inner,
        roots: roots.to_vec(),
    });
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(LINK_VERSIONS)
        .map_err(|e| tls_error("TLS server", e))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(SingleCertAndKey::from(certified_key(identity)?)));
    Ok(Arc::new(config))
}

/// A secondary node's side: its identity, and the main node's chain checked against the
/// root with serverAuth (no host name: see the module comment).
pub fn client_config(
    identity: &Identity,
    roots: &[CertificateDer<'static>],
    crls: &[std::path::PathBuf],
) -> Result<Arc<rustls::ClientConfig>> {
    let provider = provider();
    let anchors = roots
        .iter()
        .map(|r| {
            webpki::anchor_from_trusted_cert(r)
                .map(|a| a.to_owned())
                .map_err(|e| Error::validation("BadRoot", format!("root CA for links: {e:?}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let verifier = NodeServerVerifier {
        anchors,
        crls: crate::pki::x509::parse_crls(&crate::pki::x509::read_crls(crls)?)?,
        roots: roots.to_vec(),
        algorithms: provider.signature_verification_algorithms,
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(LINK_VERSIONS)
        .map_err(|e| tls_error("TLS client", e))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(SingleCertAndKey::from(certified_key(identity)?)));
    config.enable_sni = false;
    Ok(Arc::new(config))
}

/// How a TLS client authenticates to a server other than a node (an EST server).
pub enum ClientAuth {
    None,
    /// The node's certificate, its key signing inside the key store.
    Identity(Identity),
    /// A bootstrap certificate chain and its key from files.
    Files(Vec<CertificateDer<'static>>, rustls::pki_types::PrivateKeyDer<'static>),
}

/// A client of an EST server: the server verified against `anchors` (and its host name),
/// this side authenticated as `auth` says.
pub fn est_client_config(
    anchors: &[CertificateDer<'static>],
    auth: ClientAuth,
    crls: &[rustls_pki_types::CertificateRevocationListDer<'static>],
) -> Result<Arc<rustls::ClientConfig>> {
    let provider = provider();
    let mut store = rustls::RootCertStore::empty();
    for a in anchors {
        store
            .add(a.clone())
            .map_err(|e| Error::validation("BadRoot", format!("EST trust anchor: {e}")))?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions())
        .map_err(|e| tls_error("TLS client", e))?;
    // The server's chain is checked with the node's CRLs where one covers its issuer.
    let builder = if crls.is_empty() {
        builder.with_root_certificates(store)
    } else {
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider)
            .with_crls(crls.to_vec())
            .allow_unknown_revocation_status()
            .build()
            .map_err(|e| Error::internal(format!("TLS server verifier: {e}")))?;
        builder.with_webpki_verifier(verifier)
    };
    let config = match auth {
        ClientAuth::None => builder.with_no_client_auth(),
        ClientAuth::Identity(id) => {
            builder.with_client_cert_resolver(Arc::new(SingleCertAndKey::from(certified_key(&id)?)))
        }
        ClientAuth::Files(chain, key) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| Error::invalid(format!("the bootstrap certificate and key: {e}")))?,
    };
    Ok(Arc::new(config))
}

/// The handshake-signature checks of a server certificate verifier: the provider's, over
/// `self.algorithms` (both verifiers below judge the certificate their own way, and the
/// signatures the same way).
macro_rules! handshake_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.algorithms.supported_schemes()
        }
    };
}

/// The server's certificate chain as a [`Provisional`] verifier saw it.
pub type SeenChain = (CertificateDer<'static>, Vec<CertificateDer<'static>>);

/// RFC 7030 §4.1.1 bootstrap: a verifier that lets the handshake through without judging
/// the server's certificate yet (its handshake signatures are still checked, so the server
/// holds the key of the certificate it sent), and keeps that chain for the check made once
/// `/cacerts` has named the CA. Nothing but `/cacerts` is ever asked over such a session.
#[derive(Debug)]
pub struct Provisional {
    pub seen: std::sync::Mutex<Option<SeenChain>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Provisional {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        *crate::sys::lock(&self.seen) = Some((
            end_entity.clone().into_owned(),
            intermediates.iter().map(|c| c.clone().into_owned()).collect(),
        ));
        Ok(ServerCertVerified::assertion())
    }

    handshake_signatures!();
}

/// A client for the provisional `/cacerts` of a bootstrap, and the verifier that keeps the
/// server's chain.
pub fn est_bootstrap_config() -> Result<(Arc<rustls::ClientConfig>, Arc<Provisional>)> {
    let provider = provider();
    let verifier = Arc::new(Provisional {
        seen: Default::default(),
        algorithms: provider.signature_verification_algorithms,
    });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions())
        .map_err(|e| tls_error("TLS client", e))?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    Ok((Arc::new(config), verifier))
}

/// Whether `chain` (as a server sent it) is a TLS server certificate for `host` issued
/// under `anchor`, now.
pub fn verify_server_chain(chain: &SeenChain, anchor: &CertificateDer<'_>, host: &str) -> Result<()> {
    let bad = |e: String| Error::validation("UnknownIssuer", e);
    let ta = webpki::anchor_from_trusted_cert(anchor).map_err(|e| bad(format!("the CA from /cacerts: {e:?}")))?;
    let cert = webpki::EndEntityCert::try_from(&chain.0).map_err(|e| bad(format!("{e:?}")))?;
    let now = UnixTime::now();
    cert.verify_for_usage(
        SIGNATURES.all,
        &[ta],
        &chain.1,
        now,
        webpki::KeyUsage::server_auth(),
        None,
        None,
    )
    .map_err(|e| bad(format!("{e:?}")))?;
    let name = ServerName::try_from(host).map_err(|_| Error::invalid(format!("\"{host}\" is not a valid name")))?;
    cert.verify_is_valid_for_subject_name(&name)
        .map_err(|e| Error::validation("NotValidForName", format!("not for \"{host}\": {e:?}")))?;
    Ok(())
}

/// The name a secondary gives the main node in its ClientHello; never checked (SNI is off).
pub fn main_server_name() -> ServerName<'static> {
    ServerName::try_from("aos-iam-main").expect("a valid DNS name")
}

#[derive(Debug)]
struct NodeServerVerifier {
    anchors: Vec<rustls::pki_types::TrustAnchor<'static>>,
    crls: Vec<webpki::CertRevocationList<'static>>,
    /// The same roots as DER, to say which certificate a refused chain fails at.
    roots: Vec<CertificateDer<'static>>,
    algorithms: WebPkiSupportedAlgorithms,
}

/// Log, once per refusal, which certificate of a peer's chain is at fault (an issuing CA
/// left out, an intermediate expired): rustls' error names only the kind.
fn explain_refusal(
    whose: &str,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    roots: &[CertificateDer<'_>],
    now: UnixTime,
) {
    if let Some(why) = crate::pki::x509::explain_path(end_entity, intermediates, roots, now.as_secs() as i64) {
        crate::log_warn!("TLS: {whose} chain is refused: {why}");
    }
}

/// The main node's check of a secondary's chain: rustls-webpki's, with the certificate at
/// fault named in the log when it refuses.
#[derive(Debug)]
struct NodeClientVerifier {
    inner: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    roots: Vec<CertificateDer<'static>>,
}

impl rustls::server::danger::ClientCertVerifier for NodeClientVerifier {
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> std::result::Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)
            .inspect_err(|_| explain_refusal("the secondary's", end_entity, intermediates, &self.roots, now))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

impl ServerCertVerifier for NodeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let cert = webpki::EndEntityCert::try_from(end_entity).map_err(|e| rustls::Error::General(format!("{e:?}")))?;
        let crls: Vec<&webpki::CertRevocationList> = self.crls.iter().collect();
        cert.verify_for_usage(
            self.algorithms.all,
            &self.anchors,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            crate::pki::x509::revocation(&crls),
            None,
        )
        .map_err(|e| {
            explain_refusal("the main node's", end_entity, intermediates, &self.roots, now);
            rustls::Error::InvalidCertificate(webpki_error(e))
        })?;
        Ok(ServerCertVerified::assertion())
    }

    handshake_signatures!();
}

fn webpki_error(e: webpki::Error) -> rustls::CertificateError {
    use rustls::CertificateError as C;
    match e {
        webpki::Error::UnknownIssuer => C::UnknownIssuer,
        webpki::Error::CertExpired { .. } => C::Expired,
        webpki::Error::CertNotValidYet { .. } => C::NotValidYet,
        webpki::Error::InvalidSignatureForPublicKey => C::BadSignature,
        webpki::Error::CertRevoked => C::Revoked,
        // The usage this end requires is missing (a secondary's certificate has no serverAuth).
        #[allow(deprecated)]
        webpki::Error::RequiredEkuNotFound | webpki::Error::RequiredEkuNotFoundContext(_) => C::InvalidPurpose,
        e => C::Other(rustls::OtherError(Arc::new(Error::validation(
            "BadCertificate",
            format!("{e:?}"),
        )))),
    }
}

/// The chain the other end presented in the handshake, leaf first (never empty).
pub fn peer_chain(state: &rustls::CommonState) -> Result<Vec<CertificateDer<'static>>> {
    state
        .peer_certificates()
        .filter(|c| !c.is_empty())
        .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
        .ok_or_else(|| Error::unauthorized("the other end presented no certificate"))
}

/// The certificate the other end presented in the handshake (its leaf, DER).
pub fn peer_leaf(state: &rustls::CommonState) -> Result<Vec<u8>> {
    Ok(peer_chain(state)?.swap_remove(0).to_vec())
}

/// After the handshake (and the hello): the peer's certificate carries `eku`, names
/// `node_id` in its CN or a DNS subject alternative name, and, where the node belongs to a
/// unit (`unit_id` not empty), carries that unit's URI ([`crate::config::unit_uri`]): so a
/// node of another unit, whose names may repeat across a fleet, is refused.
pub fn check_peer(cert_der: &[u8], eku: Eku, node_id: &str, unit_id: &str) -> Result<()> {
    let (_, cert) = X509Certificate::from_der(cert_der)
        .map_err(|e| Error::validation("BadCertificate", format!("the peer's certificate: {e}")))?;
    let mut has_eku = false;
    let mut dns = Vec::new();
    let mut uris = Vec::new();
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::ExtendedKeyUsage(u) => has_eku = crate::pki::x509::has_eku(u, eku),
            ParsedExtension::SubjectAlternativeName(san) => {
                for n in &san.general_names {
                    match n {
                        GeneralName::DNSName(d) => dns.push(d.to_string()),
                        GeneralName::URI(u) => uris.push(u.to_string()),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    if !has_eku {
        return Err(Error::validation(
            "RequiredEkuNotFound",
            format!("the peer's certificate lacks the {} extended key usage", eku.name()),
        ));
    }
    let cns: Vec<String> = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_string))
        .collect();
    if !cns.iter().chain(dns.iter()).any(|n| n == node_id) {
        return Err(Error::new(
            ErrorKind::Unauthorized,
            format!(
                "the peer's certificate (subject {}) does not name node \"{node_id}\" in its CN or DNS names",
                cert.subject()
            ),
        ));
    }
    let unit = crate::config::unit_uri(unit_id);
    if !unit_id.is_empty() && !uris.contains(&unit) {
        return Err(Error::unauthorized(format!(
            "the peer's certificate (subject {}) is not of unit \"{unit_id}\" (no URI {unit})",
            cert.subject()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_tls13_client_certificate_verify_counts_as_one() {
        let mut m = vec![b' '; 64];
        m.extend_from_slice(CLIENT_VERIFY_CONTEXT);
        for (len, ok) in [(32, true), (48, true), (31, false), (33, false), (64, false)] {
            let mut x = m.clone();
            x.extend(std::iter::repeat_n(7u8, len));
            assert_eq!(is_client_certificate_verify(&x), ok, "hash of {len} bytes");
        }
        let server = [
            vec![b' '; 64],
            b"TLS 1.3, server CertificateVerify\0".to_vec(),
            vec![1; 32],
        ]
        .concat();
        assert!(!is_client_certificate_verify(&server));
        assert!(!is_client_certificate_verify(&[b' '; 64 + 34 + 32]));
    }

    fn cert(cn: &str, dns: &[&str], eku: rcgen::ExtendedKeyUsagePurpose) -> Vec<u8> {
        let mut p = rcgen::CertificateParams::new(dns.iter().map(|d| d.to_string()).collect::<Vec<_>>()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.extended_key_usages = vec![eku];
        let key = rcgen::KeyPair::generate().unwrap();
        p.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn a_peer_certificate_must_carry_the_usage_and_name_its_node() {
        use rcgen::ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
        let c = cert("n1", &[], ClientAuth);
        assert!(check_peer(&c, Eku::ClientAuth, "n1", "").is_ok());
        let e = check_peer(&c, Eku::ClientAuth, "n2", "").unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unauthorized);
        assert!(e.message.contains("does not name node \"n2\""), "{e}");
        let e = check_peer(&c, Eku::ServerAuth, "n1", "").unwrap_err();
        assert_eq!(e.kind, ErrorKind::Validation("RequiredEkuNotFound".into()));
        let by_dns = cert("something else", &["n3"], ServerAuth);
        assert!(check_peer(&by_dns, Eku::ServerAuth, "n3", "").is_ok());
    }

    #[test]
    fn rsa_cannot_be_a_link_identity() {
        assert!(scheme(Algorithm::Rsa2048).is_err());
        assert_eq!(
            scheme(Algorithm::EcdsaP384).unwrap(),
            SignatureScheme::ECDSA_NISTP384_SHA384
        );
    }
}

/// Presents one identity and records whether the server asked for a client certificate.
#[derive(Debug)]
struct Asked {
    key: Arc<CertifiedKey>,
    asked: std::sync::atomic::AtomicBool,
}

impl rustls::client::ResolvesClientCert for Asked {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.asked.store(true, std::sync::atomic::Ordering::SeqCst);
        Some(self.key.clone())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

/// The enrollment's verify step: a mutual-TLS handshake with `identity` to `host:port`,
/// the server checked against `anchors`. It passes only if the server asked for a client
/// certificate and did not refuse this one (an alert at any point, during the handshake or
/// after it, as a TLS 1.3 server sends it, fails the step).
pub fn verify_client_identity(
    host: &str,
    port: u16,
    anchors: &[CertificateDer<'static>],
    identity: &Identity,
    timeout: std::time::Duration,
    route: &crate::pki::dial::Route,
) -> Result<()> {
    use std::io::Read;
    let addr = format!("{host}:{port}");
    let mut store = rustls::RootCertStore::empty();
    for a in anchors {
        store
            .add(a.clone())
            .map_err(|e| Error::validation("BadRoot", format!("verify step trust anchor: {e}")))?;
    }
    let resolver = Arc::new(Asked {
        key: certified_key(identity)?,
        asked: Default::default(),
    });
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions())
        .map_err(|e| tls_error("TLS client", e))?
        .with_root_certificates(store)
        .with_client_cert_resolver(resolver.clone());
    let name = ServerName::try_from(host.to_string())
        .map_err(|_| Error::invalid(format!("verify step: \"{host}\" is not a valid host name")))?;
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| tls_error("TLS client", e))?;
    // One deadline for the step, enforced at every read and write by the connection.
    let mut tcp = crate::pki::dial::dial(route, &addr, &format!("verify step: {addr}"), timeout, false)?;
    let failed = |e: std::io::Error| {
        let kind = match e.kind() {
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => ErrorKind::Timeout,
            _ if e.get_ref().is_some_and(|i| i.is::<rustls::Error>()) => ErrorKind::Unauthorized,
            _ => ErrorKind::Unavailable,
        };
        Error::new(kind, format!("verify step: mutual TLS with {addr}: {e}"))
    };
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).map_err(failed)?;
    }
    if !resolver.asked.load(std::sync::atomic::Ordering::SeqCst) {
        return Err(Error::validation(
            "NotVerified",
            format!("verify step: {addr} did not ask for a client certificate, so it cannot verify the new identity"),
        ));
    }
    // The server's verdict on the certificate may come after the client's Finished (TLS
    // 1.3): say goodbye and read until the server closes, an alert failing the step.
    conn.send_close_notify();
    let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
    let mut sink = [0u8; 512];
    loop {
        match tls.read(&mut sink) {
            Ok(0) => return Ok(()),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(failed(e)),
        }
    }
}
