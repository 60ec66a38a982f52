//! The few DER encodings the key stores need and no chosen crate exposes.
//!
//! ECDSA-Sig-Value from a token's raw r‖s, PKCS#1 RSAPublicKey from modulus and exponent,
//! the OCTET STRING around `CKA_EC_POINT`, and the named-curve parameters; and the reading
//! of a PKCS#7 certs-only structure (RFC 2315/5652), which EST answers with.

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

/// An OBJECT IDENTIFIER's content as dotted text (`1.2.840.113549.1.9.7`); `None` when
/// it is not a valid encoding.
pub fn oid_text(content: &[u8]) -> Option<String> {
    let mut arcs: Vec<u64> = Vec::new();
    let mut v: u64 = 0;
    if content.is_empty() || *content.last()? & 0x80 != 0 {
        return None;
    }
    for (i, b) in content.iter().enumerate() {
        // A leading 0x80 is not minimal.
        if v == 0 && *b == 0x80 && (i == 0 || content[i - 1] & 0x80 == 0) {
            return None;
        }
        v = v.checked_mul(128)?.checked_add((b & 0x7f) as u64)?;
        if b & 0x80 == 0 {
            if arcs.is_empty() {
                let first = (v / 40).min(2);
                arcs.push(first);
                arcs.push(v - first * 40);
            } else {
                arcs.push(v);
            }
            v = 0;
        }
    }
    Some(arcs.iter().map(|a| a.to_string()).collect::<Vec<_>>().join("."))
}

/// One DER TLV and what follows it.
pub struct Tlv<'a> {
    pub tag: u8,
    pub content: &'a [u8],
    /// The whole TLV, header included.
    pub whole: &'a [u8],
    pub rest: &'a [u8],
}

/// Read one TLV: definite lengths only, at most four length bytes, and never past the
/// input; `None` otherwise.
pub fn read_tlv(input: &[u8]) -> Option<Tlv<'_>> {
    let tag = *input.first()?;
    let first = *input.get(1)?;
    let (len, head) = if first < 0x80 {
        (first as usize, 2)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 {
            return None;
        }
        let bytes = input.get(2..2 + n)?;
        (bytes.iter().fold(0usize, |l, b| l << 8 | *b as usize), 2 + n)
    };
    let end = head.checked_add(len)?;
    Some(Tlv {
        tag,
        content: input.get(head..end)?,
        whole: &input[..end],
        rest: &input[end..],
    })
}

/// A TLV with tag `tag`: its content and what follows.
fn expect(tag: u8, input: &[u8]) -> Option<(&[u8], &[u8])> {
    let t = read_tlv(input)?;
    (t.tag == tag).then_some((t.content, t.rest))
}

/// `pkcs7-signedData` (1.2.840.113549.1.7.2), DER content bytes.
const SIGNED_DATA_OID: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02];
/// Most certificates a certs-only structure may carry.
pub const MAX_PKCS7_CERTS: usize = 16;

/// Deepest nesting of indefinite lengths followed in a BER structure.
const MAX_BER_DEPTH: usize = 16;

/// Read one BER TLV: a definite length as [`read_tlv`] does, or an indefinite one (`0x80`,
/// constructed only) whose content runs to its end-of-contents octets, nested TLVs skipped
/// on the way. `content` excludes the end-of-contents octets; `whole` includes them.
pub fn read_ber(input: &[u8]) -> Option<Tlv<'_>> {
    read_ber_at(input, 0)
}

fn read_ber_at(input: &[u8], depth: usize) -> Option<Tlv<'_>> {
    let tag = *input.first()?;
    if tag & 0x1f == 0x1f {
        return None; // high tag numbers: not in the structures read here
    }
    if *input.get(1)? != 0x80 {
        return read_tlv(input);
    }
    if tag & 0x20 == 0 || depth >= MAX_BER_DEPTH {
        return None;
    }
    let mut at = 2;
    loop {
        let rest = input.get(at..)?;
        if rest.starts_with(&[0, 0]) {
            return Some(Tlv {
                tag,
                content: &input[2..at],
                whole: &input[..at + 2],
                rest: &input[at + 2..],
            });
        }
        let child = read_ber_at(rest, depth + 1)?;
        at += child.whole.len();
    }
}

/// A BER TLV with tag `tag`: its content and what follows.
fn expect_ber(tag: u8, input: &[u8]) -> Option<(&[u8], &[u8])> {
    let t = read_ber(input)?;
    (t.tag == tag).then_some((t.content, t.rest))
}

/// The certificates (DER) of a PKCS#7 SignedData, as EST servers send them: certs-only
/// ("degenerate") or signed, in DER or BER (indefinite lengths, as `openssl cms -stream`
/// writes). Each certificate is returned as it was sent.
pub fn pkcs7_certificates(der: &[u8]) -> Option<Vec<Vec<u8>>> {
    let (content_info, rest) = expect_ber(0x30, der)?;
    if !rest.is_empty() {
        return None;
    }
    let (oid, after_oid) = expect(0x06, content_info)?;
    if oid != SIGNED_DATA_OID {
        return None;
    }
    let (explicit, _) = expect_ber(0xa0, after_oid)?;
    let (signed_data, _) = expect_ber(0x30, explicit)?;
    let (_, rest) = expect(0x02, signed_data)?; // version
    let (_, rest) = expect_ber(0x31, rest)?; // digestAlgorithms
    let (_, rest) = expect_ber(0x30, rest)?; // encapContentInfo
    let (mut certs, _) = expect_ber(0xa0, rest)?; // [0] IMPLICIT certificates
    let mut out = Vec::new();
    while !certs.is_empty() {
        let t = read_ber(certs)?;
        if t.tag == 0x30 {
            // A certificate is DER in any PKCS#7 (it is signed as such).
            read_tlv(t.whole)?;
            out.push(t.whole.to_vec());
            if out.len() > MAX_PKCS7_CERTS {
                return None;
            }
        }
        certs = t.rest;
    }
    (!out.is_empty()).then_some(out)
}

/// A PKCS#7 certs-only structure carrying `certs` (for tests and EST servers).
pub fn pkcs7_certs_only(certs: &[Vec<u8>]) -> Vec<u8> {
    let mut set = Vec::new();
    certs.iter().for_each(|c| set.extend_from_slice(c));
    let signed = [
        tlv(0x02, &[1]),
        tlv(0x31, &[]),
        tlv(
            0x30,
            &tlv(0x06, &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01]),
        ),
        tlv(0xa0, &set),
        tlv(0x31, &[]),
    ]
    .concat();
    tlv(
        0x30,
        &[tlv(0x06, SIGNED_DATA_OID), tlv(0xa0, &tlv(0x30, &signed))].concat(),
    )
}

#[cfg(test)]
mod tests {

    #[test]
    fn oids_read_as_dotted_text_and_bad_encodings_are_refused() {
        use super::oid_text;
        assert_eq!(
            oid_text(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x07]).as_deref(),
            Some("1.2.840.113549.1.9.7")
        );
        assert_eq!(oid_text(&[0x55, 0x1d, 0x25]).as_deref(), Some("2.5.29.37"));
        assert_eq!(
            oid_text(&[0x2b, 0x81, 0x04, 0x00, 0x22]).as_deref(),
            Some("1.3.132.0.34")
        );
        assert_eq!(oid_text(&[]), None, "empty");
        assert_eq!(oid_text(&[0x2a, 0x86]), None, "ends inside an arc");
        assert_eq!(oid_text(&[0x2a, 0x80, 0x01]), None, "a leading 0x80 is not minimal");
        assert_eq!(oid_text(&[0xff; 12]), None, "an arc beyond 64 bits");
    }

    #[test]
    fn ber_indefinite_lengths_are_followed_and_malformed_ones_refused() {
        // SEQUENCE (indefinite) { INTEGER 1, SEQUENCE (indefinite) { NULL } }, then a byte.
        let ber = [
            0x30, 0x80, 0x02, 0x01, 0x01, 0x30, 0x80, 0x05, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff,
        ];
        let t = read_ber(&ber).unwrap();
        assert_eq!(t.tag, 0x30);
        assert_eq!(t.content, &ber[2..11]);
        assert_eq!(t.rest, &[0xff]);
        assert!(read_ber(&ber[..12]).is_none(), "no end-of-contents");
        assert!(
            read_ber(&[0x04, 0x80, 0x00, 0x00]).is_none(),
            "primitive with an indefinite length"
        );
        let deep: Vec<u8> = std::iter::repeat_n([0x30u8, 0x80], 40)
            .flatten()
            .chain(std::iter::repeat_n(0u8, 80))
            .collect();
        assert!(read_ber(&deep).is_none(), "nesting beyond the limit");
        assert_eq!(
            read_ber(&[0x02, 0x01, 0x05]).unwrap().content,
            &[5],
            "definite as before"
        );
    }

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

    #[test]
    fn pkcs7_certs_only_round_trips_and_garbage_is_refused() {
        let certs = vec![tlv(0x30, &[1, 2, 3]), tlv(0x30, &[4; 300])];
        let p7 = pkcs7_certs_only(&certs);
        assert_eq!(pkcs7_certificates(&p7).unwrap(), certs);
        assert!(pkcs7_certificates(&p7[..p7.len() - 1]).is_none());
        assert!(pkcs7_certificates(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]).is_none());
        assert!(pkcs7_certificates(b"not der").is_none());
        assert!(pkcs7_certificates(&pkcs7_certs_only(&[])).is_none());
        let mut trailing = p7.clone();
        trailing.push(0);
        assert!(pkcs7_certificates(&trailing).is_none());
    }
}
