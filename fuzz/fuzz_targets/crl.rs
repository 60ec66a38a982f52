//! A CRL as a file of `paths.crl` gives it (PEM or DER), then a chain validated with it as
//! ApplyCert and the links do: nothing may panic, and a CRL that does not name the leaf's
//! issuer never makes a valid chain invalid.
#![no_main]
use libfuzzer_sys::fuzz_target;
use rustls_pki_types::{CertificateDer, UnixTime};
use std::sync::OnceLock;

/// A root and a leaf it issued, made once per fuzzing process.
fn chain() -> &'static (CertificateDer<'static>, CertificateDer<'static>) {
    static CHAIN: OnceLock<(CertificateDer<'static>, CertificateDer<'static>)> = OnceLock::new();
    CHAIN.get_or_init(|| {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name.push(rcgen::DnType::CommonName, "fuzz CA");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let mut leaf = rcgen::CertificateParams::new(vec!["node".to_string()]).unwrap();
        leaf.distinguished_name.push(rcgen::DnType::CommonName, "node");
        leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let leaf_cert = leaf.signed_by(&rcgen::KeyPair::generate().unwrap(), &issuer).unwrap();
        (ca_cert.der().clone(), leaf_cert.der().clone())
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(crls) = aos_iam::pki::x509::crls_in(data, "the CRL") else {
        return;
    };
    let (root, leaf) = chain();
    let ekus = [aos_iam::config::Eku::ClientAuth];
    let result = aos_iam::pki::x509::validate_chain_with_crls(
        std::slice::from_ref(leaf),
        std::slice::from_ref(root),
        &ekus,
        UnixTime::now(),
        &crls,
    );
    // No fuzzed CRL is signed by this process's CA: it cannot revoke the leaf.
    if let Err(e) = &result {
        assert!(
            !e.message.contains("revoked by a CRL"),
            "a CRL this CA did not sign revoked its leaf: {e}"
        );
    }
});
