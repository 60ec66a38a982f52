//! The software key store: PKCS#8 keys and certificates as PEM files, for development.
//!
//! Files live at `DIR/TYPE/ID.key` and `DIR/TYPE/ID.crt`, mode 0600 in 0700 directories,
//! written atomically. Keys are generated with ring (ECDSA only). Not for production: the
//! key is only as safe as the file system.

use super::{parse_hex_id, KeyId, KeyStore, ObjectKind, PublicKey, StoredObject};
use crate::codec::hex;
use crate::codec::pem::pem_encode;
use crate::config::{Algorithm, StoreConfig};
use crate::error::{Error, ErrorKind, Result};
use crate::secret::Secret;
use crate::store::atomic_file;
use rcgen::{PublicKeyData, SigningKey};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

pub struct SoftwareStore {
    dir: PathBuf,
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::new(
        ErrorKind::KeyStore("io".into()),
        format!("software store: {what} {}: {e}", path.display()),
    )
}

impl SoftwareStore {
    pub fn new(dir: PathBuf) -> Self {
        SoftwareStore { dir }
    }

    fn key_path(&self, label: &str, id: &KeyId) -> PathBuf {
        self.dir.join(label).join(format!("{}.key", hex(id)))
    }

    fn cert_path(&self, label: &str, id: &KeyId) -> PathBuf {
        self.dir.join(label).join(format!("{}.crt", hex(id)))
    }

    fn load_key(&self, label: &str, id: &KeyId) -> Result<Option<rcgen::KeyPair>> {
        let path = self.key_path(label, id);
        let pem = match std::fs::read_to_string(&path) {
            Ok(p) => zeroize::Zeroizing::new(p),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error("cannot read", &path, e)),
        };
        let der = PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes())
            .map(zeroize::Zeroizing::new)
            .map_err(|e| {
                Error::new(
                    ErrorKind::KeyStore("format".into()),
                    format!("software store: {} is not a PKCS#8 key: {e}", path.display()),
                )
            })?;
        rcgen::KeyPair::try_from(der.secret_pkcs8_der()).map(Some).map_err(|e| {
            Error::new(
                ErrorKind::KeyStore("format".into()),
                format!("software store: {}: {e}", path.display()),
            )
        })
    }

    fn make_dir(&self, dir: &Path) -> Result<()> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| io_error("cannot create", dir, e))
    }

    fn clear(&self) -> Result<()> {
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error("cannot clear", &self.dir, e)),
        }
        if let Some(parent) = self.dir.parent() {
            let _ = atomic_file::sync_dir(parent);
        }
        Ok(())
    }
}

fn algorithm_of(kp: &rcgen::KeyPair) -> Option<Algorithm> {
    let alg = kp.algorithm();
    if alg == &rcgen::PKCS_ECDSA_P384_SHA384 {
        Some(Algorithm::EcdsaP384)
    } else if alg == &rcgen::PKCS_ECDSA_P256_SHA256 {
        Some(Algorithm::EcdsaP256)
    } else {
        None
    }
}

impl KeyStore for SoftwareStore {
    fn describe(&self) -> String {
        format!("software store {}", self.dir.display())
    }

    fn is(&self, config: &StoreConfig) -> bool {
        matches!(config, StoreConfig::Software { dir } if *dir == self.dir)
    }

    fn take_ownership(&self, _password: &Secret, _ours: &[&str]) -> Result<()> {
        self.clear()?;
        self.make_dir(&self.dir)
    }

    fn algorithms(&self) -> Result<Vec<Algorithm>> {
        Ok(vec![Algorithm::EcdsaP384, Algorithm::EcdsaP256])
    }

    fn wipe(&self, _password: &Secret, _ours: &[&str]) -> Result<()> {
        self.clear()
    }

    fn generate(&self, label: &str, id: &KeyId, algorithm: Algorithm) -> Result<PublicKey> {
        let ring_alg = match algorithm {
            Algorithm::EcdsaP384 => &ring::signature::ECDSA_P384_SHA384_ASN1_SIGNING,
            Algorithm::EcdsaP256 => &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            Algorithm::Rsa2048 => return Err(Error::invalid("the software store makes ECDSA keys only")),
        };
        let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(ring_alg, &ring::rand::SystemRandom::new())
            .map_err(|_| Error::internal("software store: key generation failed"))?;
        let pem = zeroize::Zeroizing::new(pem_encode("PRIVATE KEY", pkcs8.as_ref()));
        let path = self.key_path(label, id);
        self.make_dir(path.parent().expect("key path has a parent"))?;
        atomic_file::write(&path, pem.as_bytes(), 0o600).map_err(|e| io_error("cannot write", &path, e))?;
        let kp = self
            .load_key(label, id)?
            .ok_or_else(|| Error::internal("software store: key vanished after writing"))?;
        Ok(PublicKey {
            algorithm,
            raw: kp.der_bytes().to_vec(),
        })
    }

    fn sign(&self, label: &str, id: &KeyId, _algorithm: Algorithm, message: &[u8]) -> Result<Vec<u8>> {
        let kp = self
            .load_key(label, id)?
            .ok_or_else(|| Error::not_found(format!("{}: no private key {label}/{}", self.describe(), hex(id))))?;
        kp.sign(message)
            .map_err(|e| Error::new(ErrorKind::KeyStore("sign".into()), format!("software store: {e}")))
    }

    fn public_key(&self, label: &str, id: &KeyId) -> Result<Option<PublicKey>> {
        Ok(self.load_key(label, id)?.and_then(|kp| {
            algorithm_of(&kp).map(|algorithm| PublicKey {
                algorithm,
                raw: kp.der_bytes().to_vec(),
            })
        }))
    }

    fn store_certificate(&self, label: &str, id: &KeyId, der: &[u8]) -> Result<()> {
        let path = self.cert_path(label, id);
        self.make_dir(path.parent().expect("cert path has a parent"))?;
        atomic_file::write(&path, pem_encode("CERTIFICATE", der).as_bytes(), 0o600)
            .map_err(|e| io_error("cannot write", &path, e))
    }

    fn certificate(&self, label: &str, id: &KeyId) -> Result<Option<Vec<u8>>> {
        let path = self.cert_path(label, id);
        match std::fs::read(&path) {
            Ok(pem) => CertificateDer::from_pem_slice(&pem)
                .map(|c| Some(c.to_vec()))
                .map_err(|e| Error::new(ErrorKind::KeyStore("format".into()), format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error("cannot read", &path, e)),
        }
    }

    fn remove(&self, label: &str, id: &KeyId) -> Result<()> {
        for path in [self.cert_path(label, id), self.key_path(label, id)] {
            atomic_file::remove(&path).map_err(|e| io_error("cannot remove", &path, e))?;
        }
        Ok(())
    }

    fn objects(&self) -> Result<Vec<StoredObject>> {
        let mut out = Vec::new();
        let Ok(types) = std::fs::read_dir(&self.dir) else {
            return Ok(out);
        };
        for t in types.flatten() {
            let label = t.file_name().to_string_lossy().into_owned();
            let Ok(files) = std::fs::read_dir(t.path()) else {
                continue;
            };
            for f in files.flatten() {
                let name = f.file_name().to_string_lossy().into_owned();
                let Some((stem, ext)) = name.rsplit_once('.') else {
                    continue;
                };
                let (Some(id), Some(kind)) = (
                    parse_hex_id(stem),
                    match ext {
                        "key" => Some(ObjectKind::PrivateKey),
                        "crt" => Some(ObjectKind::Certificate),
                        _ => None,
                    },
                ) else {
                    continue;
                };
                out.push(StoredObject {
                    label: label.clone(),
                    id,
                    kind,
                });
            }
        }
        out.sort();
        Ok(out)
    }

    fn key_url(&self, label: &str, id: &KeyId) -> String {
        format!("file://{}", self.key_path(label, id).display())
    }

    fn cert_url(&self, label: &str, id: &KeyId) -> String {
        format!("file://{}", self.cert_path(label, id).display())
    }
}
