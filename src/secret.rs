//! A string that is a secret: a password, PIN or permission secret.
//!
//! It is zeroed when dropped, and its `Debug` never shows it, so a secret that ends up
//! in a log line or an error message by mistake shows as `<redacted>`.

use serde::{Deserialize, Serialize};
use std::fmt;
use zeroize::Zeroizing;

#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    pub fn new(s: String) -> Self {
        Secret(Zeroizing::new(s))
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Read a secret from a file or stdin content: the first line, without its newline.
    pub fn from_text(text: Zeroizing<String>) -> Self {
        let line = text.lines().next().unwrap_or("");
        Secret::new(line.to_string())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The secret a secondary node of a unit is given in place of the provisioning password:
/// HKDF-SHA256 (RFC 5869) of the password, salted with the unit id and bound to the node
/// id, as 64 hex digits. It becomes that node's SO PIN and the base of its verifier, so one
/// node's secret (or its verifier, brute-forced) tells nothing about another node's, nor
/// about the password, which never leaves the main node.
pub fn node_secret(password: &Secret, unit_id: &str, node_id: &str) -> Secret {
    struct Len;
    impl ring::hkdf::KeyType for Len {
        fn len(&self) -> usize {
            32
        }
    }
    let salt = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, format!("aos-iam unit {unit_id}").as_bytes());
    let prk = salt.extract(password.expose().as_bytes());
    let mut out = Zeroizing::new([0u8; 32]);
    let info = [b"aos-iam node secret ".as_slice(), node_id.as_bytes()];
    prk.expand(&info, Len)
        .and_then(|okm| okm.fill(&mut out[..]))
        .expect("32 bytes is within HKDF-SHA256's output limit");
    // Into a buffer of its final size, so that no partial copy is left behind.
    let mut hex = String::with_capacity(64);
    for b in out.iter() {
        hex.push(char::from_digit((b >> 4) as u32, 16).expect("a nibble"));
        hex.push(char::from_digit((b & 15) as u32, 16).expect("a nibble"));
    }
    Secret::new(hex)
}

/// Compare two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_node_of_each_unit_gets_its_own_secret() {
        let pw = Secret::new("factory-secret".into());
        let a = node_secret(&pw, "unit-1", "node-a");
        assert_eq!(a.expose().len(), 64);
        assert_eq!(a, node_secret(&pw, "unit-1", "node-a"), "deterministic");
        assert_ne!(a, node_secret(&pw, "unit-1", "node-b"));
        assert_ne!(a, node_secret(&pw, "unit-2", "node-a"));
        assert_ne!(a, node_secret(&Secret::new("other".into()), "unit-1", "node-a"));
        assert!(!a.expose().contains("factory"));
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let s = Secret::new("hunter2".into());
        assert_eq!(format!("{s:?}"), "<redacted>");
    }

    #[test]
    fn from_text_takes_the_first_line() {
        let s = Secret::from_text(Zeroizing::new("pw\nrest\n".into()));
        assert_eq!(s.expose(), "pw");
    }

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
