//! What we accept must be what a CA meant (RFC 5280 4.2.1.3): a certificate whose key usage
//! is stated signs certificates only with keyCertSign, critical or not, at every position of
//! the chain. Each chain is generated here and judged by `openssl verify` as well.

mod common;
use aos_iam::config::Eku;
use rcgen::{BasicConstraints, CertificateParams, CustomExtension, DnType, IsCa, Issuer, KeyPair};
use rustls_pki_types::{CertificateDer, UnixTime};

/// The key usage extension a certificate carries, if any: (critical, with keyCertSign).
type Ku = Option<(bool, bool)>;

/// keyUsage (2.5.29.15) as DER: digitalSignature and cRLSign, keyCertSign or not.
fn key_usage((critical, cert_sign): (bool, bool)) -> CustomExtension {
    // Bit 0 digitalSignature (0x80), bit 5 keyCertSign (0x04), bit 6 cRLSign (0x02).
    let bits = 0x80 | 0x02 | if cert_sign { 0x04 } else { 0 };
    let mut e = CustomExtension::from_oid_content(&[2, 5, 29, 15], vec![0x03, 0x02, 0x01, bits]);
    e.set_criticality(critical);
    e
}

fn params(cn: &str, ca: bool, ku: Ku, serial: u8) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    if ca {
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    } else {
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    }
    p.use_authority_key_identifier_extension = true;
    p.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x11, serial]));
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::hours(1);
    p.not_after = now + time::Duration::days(30);
    p.custom_extensions = ku.map(key_usage).into_iter().collect();
    p
}

/// root → intermediate 1 → intermediate 2 → leaf, each with its key usage.
fn chain(kus: [Ku; 4]) -> Vec<CertificateDer<'static>> {
    let keys: Vec<KeyPair> = (0..4).map(|_| KeyPair::generate().unwrap()).collect();
    let names = ["root", "intermediate 1", "intermediate 2", "leaf"];
    let all: Vec<CertificateParams> = (0..4).map(|i| params(names[i], i < 3, kus[i], i as u8)).collect();
    let mut out = vec![CertificateDer::from(
        all[0].self_signed(&keys[0]).unwrap().der().to_vec(),
    )];
    for i in 1..4 {
        let issuer = Issuer::from_params(&all[i - 1], &keys[i - 1]);
        let der = all[i].signed_by(&keys[i], &issuer).unwrap().der().to_vec();
        out.push(CertificateDer::from(der));
    }
    out
}

fn ours(c: &[CertificateDer<'static>]) -> Result<(), aos_iam::Error> {
    let leaf_first = [c[3].clone(), c[2].clone(), c[1].clone()];
    aos_iam::pki::x509::validate_chain(&leaf_first, &c[..1], &[Eku::ClientAuth], UnixTime::now())
}

/// `openssl verify`'s verdict on the same chain, as the independent judge.
fn openssl(c: &[CertificateDer<'static>], dir: &std::path::Path) -> bool {
    let pem = |d: &CertificateDer| aos_iam::codec::pem::pem_encode("CERTIFICATE", d);
    std::fs::write(dir.join("root.pem"), pem(&c[0])).unwrap();
    std::fs::write(dir.join("untrusted.pem"), pem(&c[1]) + &pem(&c[2])).unwrap();
    std::fs::write(dir.join("leaf.pem"), pem(&c[3])).unwrap();
    common::sh(&format!(
        "cd {} && openssl verify -purpose sslclient -CAfile root.pem -untrusted untrusted.pem leaf.pem",
        dir.display()
    ))
    .code
        == 0
}

#[test]
fn a_ca_whose_key_usage_lacks_key_cert_sign_is_refused_at_every_position_critical_or_not() {
    let dir = std::env::temp_dir().join(format!("aos-iam-t-chains-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = Some((true, true));
    // Without key usage at all, and with keyCertSign everywhere: accepted.
    for kus in [[None, None, None, None], [good, good, good, Some((true, false))]] {
        let c = chain(kus);
        assert!(ours(&c).is_ok(), "{kus:?}: {:?}", ours(&c));
        assert!(openssl(&c, &dir), "{kus:?}: openssl refuses it");
    }
    for position in 0..3 {
        for critical in [true, false] {
            for cert_sign in [true, false] {
                let mut kus = [good, good, good, None];
                kus[position] = Some((critical, cert_sign));
                let c = chain(kus);
                let verdict = ours(&c);
                assert_eq!(
                    verdict.is_ok(),
                    cert_sign,
                    "position {position}, critical {critical}: {verdict:?}"
                );
                assert_eq!(
                    openssl(&c, &dir),
                    cert_sign,
                    "openssl, position {position}, critical {critical}"
                );
                if let Err(e) = verdict {
                    assert!(e.message.contains("lacks keyCertSign"), "{e}");
                }
            }
        }
    }
    // A leaf that may sign certificates is refused (our device profile; openssl accepts it).
    let c = chain([good, good, good, Some((true, true))]);
    assert!(ours(&c).is_err());
    assert!(openssl(&c, &dir));
    let _ = std::fs::remove_dir_all(&dir);
}
