//! Encodings shared by the key stores, the configuration and the PKI: the few DER
//! structures no chosen crate exposes, base64 and PEM, hex, and a certificate's SHA-256
//! fingerprint as an operator writes it. Depends on nothing but the error type.

pub mod der;
pub mod pem;

/// Lower-case hex, as key ids and serials are shown.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A certificate's SHA-256 fingerprint (of its DER), as an operator checks it out of band
/// and gives it for EST (`--est-ca-fingerprint`) and SCEP (`ca_fingerprint`,
/// `--scep-ca-fingerprint`). Written as 64 hex digits, either case, optionally separated by
/// colons or spaces (`AB:CD:…`, as `openssl x509 -fingerprint -sha256` prints it). Shown as
/// lowercase hex, or with `{:#}` as openssl prints it (in messages, for an operator to compare).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// What [`Fingerprint::parse`] takes, for errors.
    pub const SYNTAX: &'static str = "64 hex digits (a SHA-256), colons allowed";

    /// The fingerprint of a certificate's DER.
    pub fn of(der: &[u8]) -> Fingerprint {
        let digest = ring::digest::digest(&ring::digest::SHA256, der);
        Fingerprint(digest.as_ref().try_into().expect("a SHA-256 is 32 bytes"))
    }

    /// A fingerprint as written (see the type); `None` for anything else.
    pub fn parse(text: &str) -> Option<Fingerprint> {
        let text = text.trim();
        let text = text.strip_prefix("0x").unwrap_or(text);
        let mut bytes = [0u8; 32];
        let mut digits = 0;
        for c in text.chars() {
            let nibble = match c {
                ':' | ' ' => continue,
                c => c.to_digit(16)? as u8,
            };
            let byte = bytes.get_mut(digits / 2)?;
            *byte = *byte << 4 | nibble;
            digits += 1;
        }
        (digits == 64).then_some(Fingerprint(bytes))
    }

    /// A fingerprint `what` gives (an option, a request's field), or an `invalid_argument`
    /// error saying what it must be.
    pub fn parse_given(what: &str, text: &str) -> crate::error::Result<Fingerprint> {
        Fingerprint::parse(text).ok_or_else(|| crate::error::Error::invalid(format!("{what}: {}", Fingerprint::SYNTAX)))
    }
}

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            match (f.alternate(), i) {
                (true, 0) => write!(f, "{b:02X}")?,
                (true, _) => write!(f, ":{b:02X}")?,
                (false, _) => write!(f, "{b:02x}")?,
            }
        }
        Ok(())
    }
}

/// Hex digits (either case, an even number) as bytes; `None` otherwise.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fingerprint_is_64_hex_digits_in_either_case_with_colons_or_spaces() {
        let der = b"a certificate";
        let f = Fingerprint::of(der);
        let lower = f.to_string();
        assert_eq!(lower.len(), 64);
        let colons: String = lower
            .to_ascii_uppercase()
            .as_bytes()
            .chunks(2)
            .map(|p| std::str::from_utf8(p).unwrap())
            .collect::<Vec<_>>()
            .join(":");
        assert_eq!(format!("{f:#}"), colons);
        for written in [
            lower.clone(),
            colons.clone(),
            colons.replace(':', " "),
            format!("0x{lower}"),
            format!(" {lower}\n"),
        ] {
            assert_eq!(Fingerprint::parse(&written), Some(f), "{written}");
        }
        for bad in [
            "",
            "AB:CD",
            &lower[..62],
            &format!("{lower}00"),
            &format!("sha256:{lower}"),
            &format!("g{}", &lower[1..]),
        ] {
            assert_eq!(Fingerprint::parse(bad), None, "{bad}");
        }
    }
}
