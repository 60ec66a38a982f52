//! How a client gets a CSR signed: a local CA (certificate and key files, as a factory
//! station holds them) or an external command (CSR PEM on stdin, chain PEM on stdout); EST's
//! is `pki::est::EstSigner`. A SCEP request is the node's own (`flows::Signer::NodeScep`).

use crate::error::{Error, Result};
use crate::pki::x509;
use rcgen::{CertificateSigningRequestParams, IsCa, Issuer, KeyPair, PublicKeyData};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Largest chain a signing command may print.
pub const MAX_COMMAND_OUTPUT: usize = 1024 * 1024;
pub use crate::config::DEFAULT_COMMAND_TIMEOUT;

pub trait CsrSigner {
    /// Sign `csr_pem` for `cert_type`; returns the chain PEM, leaf first.
    fn sign(&self, cert_type: &str, csr_pem: &str) -> Result<String>;
    /// After a failure: how long the signer asked to wait before trying again, if it said.
    fn retry_after(&self) -> Option<Duration> {
        None
    }
}

/// A CA whose certificate and PKCS#8 key are files.
pub struct LocalCa {
    cert_pem: String,
    key: KeyPair,
    days: u32,
}

impl LocalCa {
    pub fn load(cert: &Path, key: &Path, days: u32) -> Result<LocalCa> {
        let chain = x509::read_certs(cert, "CA certificate")?;
        let key_pem = zeroize::Zeroizing::new(
            std::fs::read_to_string(key).map_err(|e| Error::invalid(format!("CA key {}: {e}", key.display())))?,
        );
        let key_pair = KeyPair::from_pem(&key_pem).map_err(|e| {
            Error::invalid(format!(
                "CA key {}: not a PKCS#8 private key this build can use: {e}",
                key.display()
            ))
        })?;
        if x509::fields(&chain[0])?.public_key != key_pair.der_bytes() {
            return Err(Error::invalid(format!(
                "CA key {} does not belong to the CA certificate {}",
                key.display(),
                cert.display()
            )));
        }
        if days == 0 {
            return Err(Error::invalid("certificate lifetime must be at least one day"));
        }
        Ok(LocalCa {
            // The CA's certificate first (the issuer), then whatever chain the file held.
            cert_pem: chain
                .iter()
                .map(|c| crate::codec::pem::pem_encode("CERTIFICATE", c))
                .collect(),
            key: key_pair,
            days,
        })
    }
}

impl CsrSigner for LocalCa {
    fn sign(&self, _cert_type: &str, csr_pem: &str) -> Result<String> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| Error::invalid(format!("the CSR does not parse or its signature is wrong: {e}")))?;
        // Built from the CSR's subject, names and usages (which the factory compared with its
        // profile before this is called) and nothing else it asks for: no extension, key
        // usage, name constraint or CA bit of its own.
        let asked = std::mem::take(&mut csr.params);
        let now = time::OffsetDateTime::now_utc();
        let p = &mut csr.params;
        p.distinguished_name = asked.distinguished_name;
        p.subject_alt_names = asked.subject_alt_names;
        p.extended_key_usages = asked.extended_key_usages;
        p.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        p.not_before = now - time::Duration::minutes(5);
        p.not_after = now + time::Duration::days(self.days as i64);
        p.serial_number = Some(x509::random_serial()?);
        p.is_ca = IsCa::ExplicitNoCa;
        p.use_authority_key_identifier_extension = true;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, &self.key)
            .map_err(|e| Error::invalid(format!("the CA certificate: {e}")))?;
        let cert = csr
            .signed_by(&issuer)
            .map_err(|e| Error::internal(format!("signing the CSR: {e}")))?;
        Ok(format!("{}{}", cert.pem(), self.cert_pem))
    }
}

/// The exit status by which a signing command says "not now, ask again later"
/// (`EX_TEMPFAIL`); any other non-zero status is a refusal.
pub const EXIT_RETRY_LATER: i32 = 75;

/// A command run through `/bin/sh -c`: CSR PEM on stdin, chain PEM on stdout. Exit 0: the
/// chain is issued; exit 75: retry later (an `unavailable` error); any other status: refused
/// (`unauthorized`), with its stderr shown. Stopped after `timeout`.
pub struct CommandSigner {
    pub command: String,
    pub timeout: Duration,
}

impl CsrSigner for CommandSigner {
    fn sign(&self, cert_type: &str, csr_pem: &str) -> Result<String> {
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c").arg(&self.command).env("AOS_IAM_CERT_TYPE", cert_type);
        let done = crate::sys::command::run(
            cmd,
            "the signing command",
            Some(csr_pem.as_bytes()),
            MAX_COMMAND_OUTPUT,
            self.timeout,
        )?;
        if !done.status.success() {
            let detail = if done.stderr.is_empty() {
                String::new()
            } else {
                format!(": {}", done.stderr)
            };
            if done.status.code() == Some(EXIT_RETRY_LATER) {
                return Err(Error::unavailable(format!(
                    "the signing command asks to retry later (exit {EXIT_RETRY_LATER}){detail}"
                )));
            }
            return Err(Error::unauthorized(format!(
                "the signing command refused ({}){detail}",
                done.status
            )));
        }
        String::from_utf8(done.stdout)
            .map_err(|_| Error::invalid("the signing command printed something that is not PEM text"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_local_ca_copies_no_extension_key_usage_or_ca_bit_from_the_csr() {
        use x509_parser::prelude::{FromDer, X509Certificate};
        let dir = std::env::temp_dir().join(format!("aos-iam-signer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name.push(rcgen::DnType::CommonName, "CA");
        std::fs::write(dir.join("ca.pem"), ca.self_signed(&ca_key).unwrap().pem()).unwrap();
        std::fs::write(dir.join("ca.key"), ca_key.serialize_pem()).unwrap();
        let local = LocalCa::load(&dir.join("ca.pem"), &dir.join("ca.key"), 30).unwrap();

        // A CSR asking to be a CA and to sign certificates (rcgen itself refuses a CSR with an
        // extension it does not know).
        let key = KeyPair::generate().unwrap();
        let mut asked = rcgen::CertificateParams::new(vec!["n1.local".to_string()]).unwrap();
        asked.distinguished_name.push(rcgen::DnType::CommonName, "n1");
        asked.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        asked.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
        asked.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let csr = asked.serialize_request(&key).unwrap().pem().unwrap();

        let chain = local.sign("iam", &csr).unwrap();
        let der = x509::parse_chain_pem(&chain).unwrap()[0].to_vec();
        let (_, c) = X509Certificate::from_der(&der).unwrap();
        assert_eq!(c.subject().to_string(), "CN=n1");
        assert!(!c.is_ca());
        let ku = c.key_usage().unwrap().unwrap().value;
        assert!(ku.digital_signature() && !ku.key_cert_sign());
        assert!(c.extended_key_usage().unwrap().unwrap().value.client_auth);
        let sans = c.subject_alternative_name().unwrap().unwrap().value;
        assert_eq!(sans.general_names.len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
