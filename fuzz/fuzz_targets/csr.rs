//! CreateKey's inputs: a subject (and alternative names) made into a CSR signed by a real
//! key in the software store; whatever is accepted must come out as a CSR that parses and
//! carries the subject's common name.
//!
//! Input: the subject, then one alternative name per line.
#![no_main]
use std::sync::OnceLock;

use aos_iam::config::{Algorithm, Eku};
use aos_iam::pki::x509::{self, StoredKey};
use aos_iam::store::keystore::{software::SoftwareStore, KeyStore};
use libfuzzer_sys::fuzz_target;
use x509_parser::prelude::FromDer;

struct Key {
    store: SoftwareStore,
    id: aos_iam::store::keystore::KeyId,
    public: aos_iam::store::keystore::PublicKey,
}

fn key() -> &'static Key {
    static KEY: OnceLock<Key> = OnceLock::new();
    KEY.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("aos-iam-fuzz-csr-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = SoftwareStore::new(dir);
        let id = aos_iam::store::keystore::new_key_id().unwrap();
        let public = store
            .generate("fuzz", &id, Algorithm::EcdsaP256)
            .expect("a software key");
        Key { store, id, public }
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut lines = text.split('\n');
    let subject = lines.next().unwrap_or("");
    let alt: Vec<String> = lines.map(str::to_string).collect();
    let k = key();
    let stored = StoredKey {
        store: &k.store,
        label: "fuzz",
        id: k.id.clone(),
        public: k.public.clone(),
    };
    let dn = x509::parse_subject(subject);
    match x509::build_csr(&stored, subject, &alt, &[Eku::ClientAuth]) {
        Ok(pem) => {
            assert!(dn.is_ok(), "a CSR was built for a subject that does not parse");
            let der = pem_body(&pem);
            let (_, csr) =
                x509_parser::certification_request::X509CertificationRequest::from_der(&der).expect("our CSR parses");
            csr.verify_signature().expect("our CSR's signature verifies");
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});

fn pem_body(pem: &str) -> Vec<u8> {
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    aos_iam::codec::pem::base64_decode(b64.as_bytes()).expect("our PEM is base64")
}
