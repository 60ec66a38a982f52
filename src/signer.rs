//! How a client gets a CSR signed: a local CA (certificate and key files, as a factory
//! station holds them) or an external command (CSR PEM on stdin, chain PEM on stdout).

use crate::error::{Error, Result};
use crate::x509;
use rcgen::{CertificateSigningRequestParams, IsCa, Issuer, KeyPair, PublicKeyData};
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Largest chain a signing command may print.
pub const MAX_COMMAND_OUTPUT: usize = 1024 * 1024;
/// How long a signing command may run by default.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(300);

pub trait CsrSigner {
    /// Sign `csr_pem` for `cert_type`; returns the chain PEM, leaf first.
    fn sign(&self, cert_type: &str, csr_pem: &str) -> Result<String>;
}

/// A CA whose certificate and PKCS#8 key are files.
pub struct LocalCa {
    cert_pem: String,
    key: KeyPair,
    days: u32,
}

impl LocalCa {
    pub fn load(cert: &Path, key: &Path, days: u32) -> Result<LocalCa> {
        let cert_pem = std::fs::read_to_string(cert)
            .map_err(|e| Error::invalid(format!("CA certificate {}: {e}", cert.display())))?;
        let chain = x509::parse_chain_pem(&cert_pem)
            .map_err(|e| e.context(format!("CA certificate {}", cert.display())))?;
        let key_pem = zeroize::Zeroizing::new(
            std::fs::read_to_string(key)
                .map_err(|e| Error::invalid(format!("CA key {}: {e}", key.display())))?,
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
            return Err(Error::invalid(
                "certificate lifetime must be at least one day",
            ));
        }
        Ok(LocalCa {
            cert_pem,
            key: key_pair,
            days,
        })
    }
}

impl CsrSigner for LocalCa {
    fn sign(&self, _cert_type: &str, csr_pem: &str) -> Result<String> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| {
            Error::invalid(format!(
                "the CSR does not parse or its signature is wrong: {e}"
            ))
        })?;
        let now = time::OffsetDateTime::now_utc();
        csr.params.not_before = now - time::Duration::minutes(5);
        csr.params.not_after = now + time::Duration::days(self.days as i64);
        csr.params.serial_number = Some(x509::random_serial()?);
        csr.params.is_ca = IsCa::ExplicitNoCa;
        csr.params.use_authority_key_identifier_extension = true;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, &self.key)
            .map_err(|e| Error::invalid(format!("the CA certificate: {e}")))?;
        let cert = csr
            .signed_by(&issuer)
            .map_err(|e| Error::internal(format!("signing the CSR: {e}")))?;
        Ok(format!("{}{}", cert.pem(), self.cert_pem))
    }
}

/// A command run through `/bin/sh -c`: CSR PEM on stdin, chain PEM on stdout; a non-zero
/// exit is a refusal and its stderr is shown.
pub struct CommandSigner {
    pub command: String,
    pub timeout: Duration,
}

impl CsrSigner for CommandSigner {
    fn sign(&self, cert_type: &str, csr_pem: &str) -> Result<String> {
        let mut child = Command::new("/bin/sh")
            .arg("-c")
            .arg(&self.command)
            .env("AOS_IAM_CERT_TYPE", cert_type)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::unavailable(format!("cannot run signing command: {e}")))?;
        let mut stdin = child.stdin.take().expect("piped");
        let csr = csr_pem.to_string();
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(csr.as_bytes());
        });
        let mut stdout = child.stdout.take().expect("piped");
        let reader = std::thread::spawn(move || {
            let mut out = Vec::new();
            let r = (&mut stdout)
                .take(MAX_COMMAND_OUTPUT as u64 + 1)
                .read_to_end(&mut out);
            r.map(|_| out)
        });
        let mut stderr = child.stderr.take().expect("piped");
        let err_reader = std::thread::spawn(move || {
            let mut out = Vec::new();
            let _ = (&mut stderr).take(64 * 1024).read_to_end(&mut out);
            out
        });
        let start = Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break s,
                Ok(None) if start.elapsed() > self.timeout => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(Error::new(
                        crate::ErrorKind::Timeout,
                        format!(
                            "signing command ran longer than {} s and was stopped",
                            self.timeout.as_secs()
                        ),
                    ));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => {
                    return Err(Error::internal(format!(
                        "waiting for the signing command: {e}"
                    )))
                }
            }
        };
        let _ = writer.join();
        let out = reader
            .join()
            .map_err(|_| Error::internal("signing command reader failed"))?;
        let err = String::from_utf8_lossy(&err_reader.join().unwrap_or_default())
            .trim()
            .to_string();
        if !status.success() {
            return Err(Error::unauthorized(format!(
                "the signing command refused ({status}){}",
                if err.is_empty() {
                    String::new()
                } else {
                    format!(": {err}")
                }
            )));
        }
        let out =
            out.map_err(|e| Error::internal(format!("reading the signing command's output: {e}")))?;
        if out.len() > MAX_COMMAND_OUTPUT {
            return Err(Error::invalid(format!(
                "the signing command printed more than {MAX_COMMAND_OUTPUT} bytes"
            )));
        }
        String::from_utf8(out).map_err(|_| {
            Error::invalid("the signing command printed something that is not PEM text")
        })
    }
}
