//! Encodings shared by the key stores and the PKI: the few DER structures no chosen crate
//! exposes, base64 and PEM. Depends on nothing but the error type.

pub mod der;
pub mod pem;

/// Lower-case hex, as key ids and serials are shown.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
