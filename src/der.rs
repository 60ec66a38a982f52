//! The few DER encodings the key stores need and no chosen crate exposes.
//!
//! ECDSA-Sig-Value from a token's raw r‖s, PKCS#1 RSAPublicKey from modulus and exponent,
//! the OCTET STRING around `CKA_EC_POINT`, and the named-curve parameters.

/// `id-ecPublicKey` parameters: the named curve OIDs, DER-encoded with their tag.
pub const P256_PARAMS: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
pub const P384_PARAMS: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];

fn push_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

pub fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    push_len(&mut out, content.len());
    out.extend_from_slice(content);
    out
}

/// A non-negative INTEGER from big-endian magnitude bytes.
pub fn unsigned_integer(magnitude: &[u8]) -> Vec<u8> {
    let trimmed = &magnitude[magnitude
        .iter()
        .take_while(|b| **b == 0)
        .count()
        .min(magnitude.len().saturating_sub(1))..];
    let mut content = Vec::with_capacity(trimmed.len() + 1);
    if trimmed.first().is_some_and(|b| b & 0x80 != 0) {
        content.push(0);
    }
    content.extend_from_slice(trimmed);
    if content.is_empty() {
        content.push(0);
    }
    tlv(0x02, &content)
}

/// ECDSA-Sig-Value (SEQUENCE of r and s) from the raw r‖s a PKCS#11 token returns.
pub fn ecdsa_signature(raw: &[u8]) -> Option<Vec<u8>> {
    if raw.is_empty() || !raw.len().is_multiple_of(2) {
        return None;
    }
    let (r, s) = raw.split_at(raw.len() / 2);
    let mut seq = unsigned_integer(r);
    seq.extend(unsigned_integer(s));
    Some(tlv(0x30, &seq))
}

/// PKCS#1 RSAPublicKey from modulus and public exponent.
pub fn rsa_public_key(modulus: &[u8], exponent: &[u8]) -> Vec<u8> {
    let mut seq = unsigned_integer(modulus);
    seq.extend(unsigned_integer(exponent));
    tlv(0x30, &seq)
}

/// The uncompressed EC point of `CKA_EC_POINT`, which most tokens (SoftHSM included) wrap
/// in a DER OCTET STRING and a few return bare. `point_len` (65 for P-256, 97 for P-384)
/// tells the two apart: a bare point's second byte could pass for a length.
pub fn ec_point(v: &[u8], point_len: usize) -> &[u8] {
    if v.len() == point_len {
        return v;
    }
    unwrap_octet_string(v)
}

/// The content of a DER OCTET STRING, or the input itself if it is not one.
pub fn unwrap_octet_string(v: &[u8]) -> &[u8] {
    if v.len() < 2 || v[0] != 0x04 {
        return v;
    }
    let (len, start) = match v[1] {
        l if l < 0x80 => (l as usize, 2),
        0x81 if v.len() > 2 => (v[2] as usize, 3),
        0x82 if v.len() > 3 => (((v[2] as usize) << 8) | v[3] as usize, 4),
        _ => return v,
    };
    if start + len == v.len() {
        &v[start..]
    } else {
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_are_minimal_and_positive() {
        assert_eq!(unsigned_integer(&[0, 0, 5]), [2, 1, 5]);
        assert_eq!(unsigned_integer(&[0x80]), [2, 2, 0, 0x80]);
        assert_eq!(unsigned_integer(&[0, 0]), [2, 1, 0]);
    }

    #[test]
    fn ecdsa_signature_wraps_r_and_s() {
        let sig = ecdsa_signature(&[0, 1, 0x80, 2]).unwrap();
        // r = 0x0001 → 02 01 01; s = 0x8002 → 02 03 00 80 02
        assert_eq!(sig, [0x30, 8, 2, 1, 1, 2, 3, 0, 0x80, 2]);
        assert!(ecdsa_signature(&[1, 2, 3]).is_none());
    }

    #[test]
    fn long_lengths_are_encoded() {
        let v = tlv(0x04, &[0u8; 300]);
        assert_eq!(&v[..4], &[0x04, 0x82, 0x01, 0x2c]);
        assert_eq!(unwrap_octet_string(&v).len(), 300);
        assert_eq!(unwrap_octet_string(&[0x04, 3, 1, 2, 3]), [1, 2, 3]);
        let mut bare = vec![0x04, 63];
        bare.extend([7u8; 63]);
        assert_eq!(
            ec_point(&bare, 65),
            &bare[..],
            "a bare point whose x starts like a length stays"
        );
        let wrapped = tlv(0x04, &bare);
        assert_eq!(ec_point(&wrapped, 65), &bare[..]);
    }
}
