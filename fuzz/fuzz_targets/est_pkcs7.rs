//! An EST server's answer: the base64 body decoded, the PKCS#7 certs-only structure
//! parsed, and what it held wrapped again; the same bytes as a `/csrattrs` answer, parsed
//! and judged for a module.
#![no_main]
use aos_iam::codec::der;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let raw = aos_iam::codec::pem::base64_decode(data).unwrap_or_else(|| data.to_vec());
    if let Some(certs) = der::pkcs7_certificates(&raw) {
        for c in &certs {
            assert!(c.len() <= raw.len(), "a certificate larger than its container");
        }
        // Re-wrapping what was found must give back the same certificates.
        let again = der::pkcs7_certs_only(&certs);
        assert_eq!(der::pkcs7_certificates(&again).as_deref(), Some(&certs[..]));
    }
    if let Ok(attrs) = aos_iam::pki::est::CsrAttrs::parse(&raw) {
        let config = aos_iam::config::Config::from_sources(&[(
            "fuzz.toml".into(),
            "[node]\nid = \"n\"\n[paths]\nworking_dir = \"/nonexistent\"\n[[modules]]\nid = \"iam\"\nself_signed = true\nstore = \"software\"\n".into(),
        )])
        .unwrap();
        let secret = aos_iam::secret::Secret::new("s".into());
        let _ = attrs.honour(&config.modules[0], Some(&secret), true);
        let _ = attrs.honour(&config.modules[0], None, false);
    }
});
