//! Base64 (RFC 4648) and PEM, as certificates, keys and EST bodies carry them.
//!
//! Shared by the key stores and the PKI, so that neither reaches into the other.

/// PEM with 64-column base64, as openssl writes it. The base64 in between is zeroed and
/// the output is allocated once at its final size, so that encoding a private key leaves
/// no copy of it behind but the one returned (which a caller of a key wraps in `Zeroizing`).
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = zeroize::Zeroizing::new(base64_encode(der));
    let lines = b64.len().div_ceil(64);
    let mut out = String::with_capacity(2 * (label.len() + 17) + b64.len() + lines);
    out.push_str(&format!("-----BEGIN {label}-----\n"));
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).expect("base64 is ascii"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Standard base64 (RFC 4648 §4), as PEM and EST bodies carry it.
/// Base64 in lines of `width` characters, each ended by CRLF (RFC 2045 bodies, as
/// line-oriented decoders such as OpenSSL's BIO base64 read them).
pub fn base64_lines(data: &[u8], width: usize) -> String {
    let flat = base64_encode(data);
    let mut out = String::with_capacity(flat.len() + flat.len() / width * 2 + 2);
    for line in flat.as_bytes().chunks(width) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push_str("\r\n");
    }
    out
}

pub fn base64_encode(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decode standard base64, skipping line breaks and other white space (EST bodies are
/// wrapped). `None` for any other character or a wrong length.
pub fn base64_decode(text: &[u8]) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let clean: Vec<u8> = text.iter().copied().filter(|c| !c.is_ascii_whitespace()).collect();
    if !clean.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(clean.len() / 4 * 3);
    for (i, quad) in clean.chunks(4).enumerate() {
        let last = i == clean.len() / 4 - 1;
        let pad = quad.iter().rev().take_while(|c| **c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut n = 0u32;
        for c in &quad[..4 - pad] {
            n = n << 6 | value(*c)?;
        }
        n <<= 6 * pad as u32;
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;

    #[test]
    fn base64_decodes_what_it_encodes_and_refuses_garbage() {
        for i in ["", "f", "fo", "foo", "foob", "fooba", "foobar"] {
            assert_eq!(
                base64_decode(base64_encode(i.as_bytes()).as_bytes()).unwrap(),
                i.as_bytes()
            );
        }
        assert_eq!(base64_decode(b"Zm9v\r\nYmFy\n").unwrap(), b"foobar");
        for bad in [&b"Zm9"[..], b"Zm9v!", b"Z===", b"Zg==Zm9v"] {
            assert!(base64_decode(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn base64_matches_the_rfc_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_encode(i.as_bytes()), o);
        }
    }

    #[test]
    fn pem_round_trips_through_pki_types() {
        let der: Vec<u8> = (0..200u8).collect();
        let pem = pem_encode("CERTIFICATE", &der);
        assert_eq!(
            CertificateDer::from_pem_slice(pem.as_bytes()).unwrap().as_ref(),
            &der[..]
        );
    }
}
