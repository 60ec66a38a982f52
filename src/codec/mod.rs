//! Encodings shared by the key stores and the PKI: the few DER structures no chosen crate
//! exposes, base64 and PEM. Depends on nothing but the error type.

pub mod der;
pub mod pem;

/// Lower-case hex, as key ids and serials are shown.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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
