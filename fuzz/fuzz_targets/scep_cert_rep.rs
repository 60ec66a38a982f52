//! A SCEP CertRep checked as the client checks it (BER parse, the signer among the RA and CA
//! of a GetCACert answer, the signature, the messageDigest, the transaction and nonce,
//! pkiStatus), against an authority chosen from a GetCACert answer the input also carries:
//! nothing may panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    aos_iam::pki::scep::check_cert_rep_for_fuzzing(data);
});
