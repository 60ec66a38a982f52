//! Where private keys and their certificates live: one trait, two implementations.
//!
//! `pkcs11` keeps keys inside a token (HSM, TPM, SoftHSM) where they are generated and
//! never leave; `software` keeps them as 0600 files, for development. Every method is
//! blocking: callers run them on a blocking thread, never on the executor.

pub mod pkcs11;
pub mod software;

use crate::config::{Algorithm, StoreConfig};
use crate::error::{Error, Result};
use crate::secret::Secret;
use std::sync::Arc;

/// A key's `CKA_ID` (or file name): random, so two keys of one type never collide.
pub type KeyId = [u8; 16];

pub fn new_key_id() -> Result<KeyId> {
    let mut id = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id)
        .map_err(|_| Error::internal("the OS random number generator failed"))?;
    Ok(id)
}

pub fn parse_hex_id(s: &str) -> Option<KeyId> {
    if s.len() != 32 {
        return None;
    }
    let mut id = [0u8; 16];
    for (i, b) in id.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(id)
}

/// A public key as X.509 carries it in subjectPublicKey: the uncompressed EC point, or
/// the PKCS#1 RSAPublicKey.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    pub algorithm: Algorithm,
    pub raw: Vec<u8>,
}

/// What a store holds, as listed for checks and tests.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct StoredObject {
    pub label: String,
    pub id: KeyId,
    pub kind: ObjectKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ObjectKind {
    PrivateKey,
    PublicKey,
    Certificate,
    /// What an object creation cut off left: see `KeyStore::remove_incomplete`.
    Incomplete,
}

pub trait KeyStore: Send + Sync {
    /// For messages: which token or directory this is.
    fn describe(&self) -> String;
    /// Whether two module configurations name this same store.
    fn is(&self, config: &StoreConfig) -> bool;
    /// Take ownership with the provisioning password, wiping everything the store held; on
    /// a token shared with others, only the objects labelled with one of `ours` (the
    /// certificate types of this node's modules on it).
    fn take_ownership(&self, password: &Secret, ours: &[&str]) -> Result<()>;
    /// Wipe everything (deprovisioning), or on a shared token what `ours` labels; the
    /// password is checked where the store can.
    fn wipe(&self, password: &Secret, ours: &[&str]) -> Result<()>;
    /// Generate a key pair inside the store under `label` (the certificate type) and `id`.
    fn generate(&self, label: &str, id: &KeyId, algorithm: Algorithm) -> Result<PublicKey>;
    /// Sign `message` with the key; the signature is encoded as X.509 and TLS want it.
    fn sign(&self, label: &str, id: &KeyId, algorithm: Algorithm, message: &[u8]) -> Result<Vec<u8>>;
    /// Decrypt an RSAES-PKCS1-v1_5 `ciphertext` with the RSA key, inside the store (SCEP
    /// answers carry their content key so). Stores and keys that cannot decrypt say so.
    fn decrypt(&self, label: &str, id: &KeyId, ciphertext: &[u8]) -> Result<Vec<u8>> {
        let _ = (label, id, ciphertext);
        Err(crate::error::Error::invalid(format!(
            "{}: its keys cannot decrypt",
            self.describe()
        )))
    }
    /// The key's public half, or `None` if there is no such key.
    fn public_key(&self, label: &str, id: &KeyId) -> Result<Option<PublicKey>>;
    /// Store a certificate (DER) next to its key, replacing one stored before for that key.
    fn store_certificate(&self, label: &str, id: &KeyId, der: &[u8]) -> Result<()>;
    /// The certificate stored for a key, if any.
    fn certificate(&self, label: &str, id: &KeyId) -> Result<Option<Vec<u8>>>;
    /// Remove a key pair and its certificate. Removing what is not there is not an error.
    fn remove(&self, label: &str, id: &KeyId) -> Result<()>;
    fn objects(&self) -> Result<Vec<StoredObject>>;
    /// Remove what object creations cut off left behind (listed as `ObjectKind::Incomplete`):
    /// a token killed in the middle of creating an object can keep one (SoftHSM writes a
    /// new object's default attributes one by one, `CKA_TOKEN` false among them, before
    /// its template). Returns how many were removed.
    fn remove_incomplete(&self) -> Result<usize> {
        Ok(0)
    }
    fn key_url(&self, label: &str, id: &KeyId) -> String;
    fn cert_url(&self, label: &str, id: &KeyId) -> String;
    /// The algorithms whose keys this store can make and use, as it says itself (a token's
    /// mechanisms and key sizes). An error when it cannot be asked now (no token).
    fn algorithms(&self) -> Result<Vec<Algorithm>>;
}

/// Open the store a module configuration names, sharing one instance between modules
/// that name the same token or directory.
pub fn open(config: &StoreConfig, existing: &[Arc<dyn KeyStore>]) -> Result<Arc<dyn KeyStore>> {
    if let Some(s) = existing.iter().find(|s| s.is(config)) {
        return Ok(s.clone());
    }
    Ok(match config {
        StoreConfig::Pkcs11(p) => Arc::new(pkcs11::Pkcs11Store::new(p.clone())?),
        StoreConfig::Software { dir } => Arc::new(software::SoftwareStore::new(dir.clone())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_ids_round_trip() {
        let id = new_key_id().unwrap();
        assert_eq!(parse_hex_id(&crate::codec::hex(&id)), Some(id));
        assert_eq!(parse_hex_id("zz"), None);
        assert_ne!(new_key_id().unwrap(), id);
    }
}
