//! ApplyCert's checks: the PEM chain parsed, each certificate's fields read, and the chain
//! validated against roots parsed from the same input.
//!
//! Input: roots PEM, a NUL byte, chain PEM (leaf first).
#![no_main]
use aos_iam::config::Eku;
use aos_iam::pki::x509;
use aos_iam_fuzz::CHAIN_SEPARATOR;
use libfuzzer_sys::fuzz_target;
use rustls_pki_types::UnixTime;

fuzz_target!(|data: &[u8]| {
    let (roots, chain) = match data.iter().position(|&b| b == CHAIN_SEPARATOR) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&[][..], data),
    };
    let (Ok(roots), Ok(chain)) = (std::str::from_utf8(roots), std::str::from_utf8(chain)) else {
        return;
    };
    let Ok(chain) = x509::parse_chain_pem(chain) else {
        return;
    };
    for c in &chain {
        x509::fields(c).expect("a certificate that parsed has fields");
    }
    let roots = x509::parse_chain_pem(roots).unwrap_or_default();
    // The validator's clock: fixed, so that a run is repeatable.
    let at = UnixTime::since_unix_epoch(std::time::Duration::from_secs(1_790_000_000));
    let _ = x509::validate_chain(&chain, &roots, &[Eku::ClientAuth], at);
    let _ = x509::validate_chain(&chain, &roots, &[], at);
});
