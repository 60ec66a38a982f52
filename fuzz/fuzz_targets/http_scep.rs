//! An HTTP answer as EST and SCEP read it (status line, headers, Content-Length or chunked
//! body), then its body as a SCEP GetCACert answer, and the CA (and RA) chosen from what it
//! held for each fingerprint it names: nothing may panic, and a chosen authority is one of
//! the certificates the answer carried.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(r) = aos_iam::pki::http::parse_response(data) else {
        return;
    };
    assert!(r.body.len() <= data.len(), "a body larger than the answer");
    let ct = r.header("content-type").unwrap_or("").to_string();
    let Ok(certs) = aos_iam::pki::scep::ca_certs_of(&ct, &r.body) else {
        return;
    };
    for c in &certs {
        let fp = aos_iam::codec::Fingerprint::of(c);
        if let Ok(a) = aos_iam::pki::scep::Authority::select(&certs, &fp) {
            assert!(certs.contains(&a.recipient), "a recipient the answer did not carry");
        }
    }
});
