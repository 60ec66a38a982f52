//! `[[modules]]`: the certificate modules, each a certificate type with its key store
//! (software or a PKCS#11 token), algorithm, usages, names and renewal.

use super::links::{LinkTls, LinksConfig};
use super::node::{unit_uri, valid_id, Role};
use super::reader::Reader;
use super::renewal::{parse_renew, RenewPolicy};
use super::ConfigError;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

pub const DEFAULT_MAX_ITEMS: u32 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    EcdsaP384,
    EcdsaP256,
    Rsa2048,
}

impl Algorithm {
    pub const ALL: [(&'static str, Algorithm); 3] = [
        ("ecdsa-p384", Algorithm::EcdsaP384),
        ("ecdsa-p256", Algorithm::EcdsaP256),
        ("rsa-2048", Algorithm::Rsa2048),
    ];
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, a)| *a == self)
            .map(|(n, _)| *n)
            .unwrap_or("?")
    }
}

/// Extended key usages a module may require, by their RFC 5280 names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Eku {
    ServerAuth,
    ClientAuth,
    CodeSigning,
    EmailProtection,
    TimeStamping,
    OcspSigning,
}

impl Eku {
    pub const ALL: [(&'static str, Eku); 6] = [
        ("serverAuth", Eku::ServerAuth),
        ("clientAuth", Eku::ClientAuth),
        ("codeSigning", Eku::CodeSigning),
        ("emailProtection", Eku::EmailProtection),
        ("timeStamping", Eku::TimeStamping),
        ("OCSPSigning", Eku::OcspSigning),
    ];
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, e)| *e == self)
            .map(|(n, _)| *n)
            .unwrap_or("?")
    }
    /// The DER content of the OID (id-kp arc 1.3.6.1.5.5.7.3.N).
    pub fn oid_der(self) -> &'static [u8] {
        match self {
            Eku::ServerAuth => &[0x2b, 6, 1, 5, 5, 7, 3, 1],
            Eku::ClientAuth => &[0x2b, 6, 1, 5, 5, 7, 3, 2],
            Eku::CodeSigning => &[0x2b, 6, 1, 5, 5, 7, 3, 3],
            Eku::EmailProtection => &[0x2b, 6, 1, 5, 5, 7, 3, 4],
            Eku::TimeStamping => &[0x2b, 6, 1, 5, 5, 7, 3, 8],
            Eku::OcspSigning => &[0x2b, 6, 1, 5, 5, 7, 3, 9],
        }
    }
}

/// Which token of a PKCS#11 library a module uses: exactly one way of naming it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TokenSelector {
    Label(String),
    Serial(String),
    SlotId(u64),
    SlotIndex(u64),
}

impl fmt::Display for TokenSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenSelector::Label(l) => write!(f, "token label \"{l}\""),
            TokenSelector::Serial(s) => write!(f, "token serial \"{s}\""),
            TokenSelector::SlotId(i) => write!(f, "slot id {i}"),
            TokenSelector::SlotIndex(i) => write!(f, "slot index {i}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pkcs11Config {
    pub library: PathBuf,
    pub token: TokenSelector,
    /// Label given to the token when iamd initialises it (the selector's label if it has one).
    pub init_label: String,
    pub user_pin_file: PathBuf,
    /// `shared = true`: a token iamd does not own (others' keys on it, or a secure element's
    /// factory identity). iamd never initialises it nor sets its PINs; `user_pin_file` is
    /// the user PIN it is given, and iamd touches only the objects it made.
    pub shared: bool,
    /// `release_objects`: log out and close the session after each operation, so that the
    /// module unloads what it loaded into the token (`None`: for tpm2-pkcs11 only).
    pub release_objects: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    Pkcs11(Pkcs11Config),
    Software { dir: PathBuf },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleConfig {
    /// The certificate type this module serves (`iam`, `online`, `offline`…).
    pub id: String,
    pub store: StoreConfig,
    pub algorithm: Algorithm,
    pub max_items: u32,
    pub extended_key_usage: Vec<Eku>,
    pub alt_names: Vec<String>,
    /// URI subject alternative names asked for in its CSRs: the unit's URI for the link
    /// identity of a node with `node.unit_id` (see [`unit_uri`]).
    pub uri_names: Vec<String>,
    /// Usages its certificates must not carry: serverAuth for a secondary's link identity,
    /// which could otherwise pose as the main node.
    pub forbidden_ekus: Vec<Eku>,
    pub self_signed: bool,
    pub skip_validation: bool,
    /// Days a self-signed certificate is valid.
    pub self_signed_days: u32,
    /// Automatic renewal by iamd itself (`[modules.renew]`), if configured.
    pub renew: Option<RenewPolicy>,
    /// The roots its chains must validate against, when not `paths.root_ca` (the factory
    /// CA of a bootstrap identity).
    pub root_ca: Option<PathBuf>,
}

/// Every `[[modules]]`, checked against each other and against the node: one user PIN file
/// and one answer to `shared` per token, a root CA where a module validates, a link
/// identity that exists where links use TLS; the link identity gets the unit's URI, and a
/// secondary's never serverAuth.
#[inline(never)]
pub(super) fn parse_all(
    root: &mut Reader,
    working_dir: &Path,
    root_ca: &Option<PathBuf>,
    links: &LinksConfig,
    role: Role,
    unit_id: &str,
) -> Result<Vec<ModuleConfig>, ConfigError> {
    let mut modules: Vec<ModuleConfig> = Vec::new();
    let mut token_pins: BTreeMap<(PathBuf, TokenSelector), (PathBuf, bool)> = BTreeMap::new();
    for mut m in root.tables("modules")? {
        let module = parse_module(&mut m, working_dir)?;
        if modules.iter().any(|o| o.id == module.id) {
            return Err(m.err("id", format!("module \"{}\" is defined twice", module.id)));
        }
        if let StoreConfig::Pkcs11(p) = &module.store {
            let key = (p.library.clone(), p.token.clone());
            match token_pins.get(&key) {
                Some((pin, _)) if *pin != p.user_pin_file => {
                    return Err(m.err(
                        "pkcs11.user_pin_file",
                        format!("modules on the same token ({}) must share one user PIN file", p.token),
                    ))
                }
                Some((_, shared)) if *shared != p.shared => {
                    return Err(m.err(
                        "pkcs11.shared",
                        format!(
                            "modules on the same token ({}) must agree whether it is shared",
                            p.token
                        ),
                    ))
                }
                _ => {
                    token_pins.insert(key, (p.user_pin_file.clone(), p.shared));
                }
            }
        }
        m.finish()?;
        modules.push(module);
    }
    if modules.is_empty() {
        return Err(root.err("modules", "at least one certificate module ([[modules]]) is required"));
    }
    if root_ca.is_none()
        && modules
            .iter()
            .any(|m| !m.self_signed && !m.skip_validation && m.root_ca.is_none())
    {
        return Err(root.err(
            "paths.root_ca",
            "is required when a module validates CA-signed certificates",
        ));
    }
    let links_used = !links.listen.is_empty() || links.connect.is_some();
    if links_used && links.tls != LinkTls::Off && !modules.iter().any(|m| m.id == links.identity) {
        return Err(root.err(
            "links.identity",
            format!(
                "\"{}\" names no certificate module; TLS on links needs one for the node's identity",
                links.identity
            ),
        ));
    }
    // The link identity is bound to the unit, and a secondary's cannot serve as a main
    // node's: it asks for no serverAuth and refuses a certificate that carries it.
    if let Some(m) = modules.iter_mut().find(|m| m.id == links.identity) {
        if !unit_id.is_empty() {
            m.uri_names.push(unit_uri(unit_id));
        }
        if role == Role::Secondary {
            m.extended_key_usage.retain(|e| *e != Eku::ServerAuth);
            m.forbidden_ekus.push(Eku::ServerAuth);
        }
    }
    Ok(modules)
}

#[inline(never)]
fn parse_module(m: &mut Reader, working_dir: &Path) -> Result<ModuleConfig, ConfigError> {
    let id = m.required_string("id")?;
    if !valid_id(&id) {
        return Err(m.err("id", format!("\"{id}\" must be 1-64 letters, digits, '-' or '_'")));
    }
    let algorithm = match m.string("algorithm")? {
        None => Algorithm::EcdsaP384,
        Some(a) => Algorithm::ALL
            .iter()
            .find(|(n, _)| *n == a)
            .map(|(_, a)| *a)
            .ok_or_else(|| {
                m.err(
                    "algorithm",
                    format!("\"{a}\" is not one of ecdsa-p384, ecdsa-p256, rsa-2048"),
                )
            })?,
    };
    let max_items = m
        .uint("max_items", 1000)?
        .map(|v| v as u32)
        .unwrap_or(DEFAULT_MAX_ITEMS);
    if max_items == 0 {
        return Err(m.err("max_items", "must be at least 1"));
    }
    let mut extended_key_usage = Vec::new();
    for (i, name) in m
        .strings("extended_key_usage")?
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        let eku = Eku::ALL
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, e)| *e)
            .ok_or_else(|| {
                let names: Vec<_> = Eku::ALL.iter().map(|(n, _)| *n).collect();
                m.err(
                    &format!("extended_key_usage[{i}]"),
                    format!("\"{name}\" is not one of {}", names.join(", ")),
                )
            })?;
        if !extended_key_usage.contains(&eku) {
            extended_key_usage.push(eku);
        }
    }
    let alt_names = m.strings("alt_names")?.unwrap_or_default();
    if let Some((i, _)) = alt_names
        .iter()
        .enumerate()
        .find(|(_, n)| n.is_empty() || n.len() > 253)
    {
        return Err(m.err(&format!("alt_names[{i}]"), "must be a DNS name of 1-253 characters"));
    }
    let self_signed = m.bool("self_signed", false)?;
    let skip_validation = m.bool("skip_validation", false)?;
    let self_signed_days = m.uint("self_signed_days", 36500)?.map(|d| d as u32).unwrap_or(3650);
    let root_ca = m.path("root_ca")?;
    let renew = match m.sub("renew")? {
        Some(mut r) => {
            let p = parse_renew(&mut r)?;
            r.finish()?;
            Some(p)
        }
        None => None,
    };
    if renew.is_some() && self_signed {
        return Err(m.err("renew", "a self-signed module is not renewed through a CA"));
    }
    let store_name = m.string("store")?.unwrap_or_else(|| "pkcs11".into());
    let store = match store_name.as_str() {
        "pkcs11" => {
            if m.table.contains_key("software") {
                return Err(m.err("software", "given, but the module's store is \"pkcs11\""));
            }
            let mut p = m
                .sub("pkcs11")?
                .ok_or_else(|| m.err("pkcs11", "is required for store = \"pkcs11\""))?;
            let library = p.path("library")?.ok_or_else(|| p.err("library", "is required"))?;
            let mut chosen = Vec::new();
            if let Some(l) = p.string("token_label")? {
                chosen.push(TokenSelector::Label(l));
            }
            if let Some(s) = p.string("token_serial")? {
                chosen.push(TokenSelector::Serial(s));
            }
            if let Some(i) = p.uint("slot_id", u64::MAX >> 1)? {
                chosen.push(TokenSelector::SlotId(i));
            }
            if let Some(i) = p.uint("slot_index", 1 << 16)? {
                chosen.push(TokenSelector::SlotIndex(i));
            }
            if chosen.len() != 1 {
                return Err(p.err(
                    "token_label",
                    format!(
                        "name the token exactly one way (token_label, token_serial, slot_id or slot_index); {} given",
                        chosen.len()
                    ),
                ));
            }
            let token = chosen.remove(0);
            let asked_label = p.string("init_label")?;
            let label_given = asked_label.is_some();
            let init_label = match (&token, asked_label) {
                (TokenSelector::Label(l), None) => l.clone(),
                (TokenSelector::Label(_), Some(_)) => {
                    return Err(p.err(
                        "init_label",
                        "only for tokens chosen by serial or slot; the label is token_label",
                    ))
                }
                (_, l) => l.unwrap_or_else(|| "aos-iam".into()),
            };
            if init_label.len() > 32 {
                return Err(p.err("token_label", "a PKCS#11 token label has at most 32 bytes"));
            }
            let user_pin_file = p
                .path("user_pin_file")?
                .ok_or_else(|| p.err("user_pin_file", "is required"))?;
            let shared = p.bool("shared", false)?;
            let release_objects = p.opt_bool("release_objects")?;
            if shared && label_given {
                return Err(p.err("init_label", "iamd never initialises a shared token"));
            }
            p.finish()?;
            StoreConfig::Pkcs11(Pkcs11Config {
                library,
                token,
                init_label,
                user_pin_file,
                shared,
                release_objects,
            })
        }
        "software" => {
            if m.table.contains_key("pkcs11") {
                return Err(m.err("pkcs11", "given, but the module's store is \"software\""));
            }
            let dir = match m.sub("software")? {
                Some(mut s) => {
                    let d = s.path("dir")?;
                    s.finish()?;
                    d
                }
                None => None,
            };
            if algorithm == Algorithm::Rsa2048 {
                return Err(m.err(
                    "algorithm",
                    "rsa-2048 needs store = \"pkcs11\"; the software store makes ECDSA keys only",
                ));
            }
            StoreConfig::Software {
                dir: dir.unwrap_or_else(|| working_dir.join("keys")),
            }
        }
        other => return Err(m.err("store", format!("\"{other}\" is not one of pkcs11, software"))),
    };
    Ok(ModuleConfig {
        id,
        store,
        algorithm,
        max_items,
        extended_key_usage,
        alt_names,
        uri_names: Vec::new(),
        forbidden_ekus: Vec::new(),
        self_signed,
        skip_validation,
        self_signed_days,
        renew,
        root_ca,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::testing::*;
    use crate::config::*;

    #[test]
    fn token_named_twice_is_an_error() {
        let e = load(&["[[modules]]\nid = \"p\"\n[modules.pkcs11]\nlibrary = \"/l\"\nuser_pin_file = \"/p\"\ntoken_label = \"a\"\nslot_id = 3\n"])
            .unwrap_err();
        assert!(e.reason.contains("2 given"), "{e}");
    }

    #[test]
    fn modules_sharing_a_token_share_the_pin_file() {
        let e = load(&["[[modules]]\nid = \"p\"\n[modules.pkcs11]\nlibrary = \"/usr/lib/softhsm/libsofthsm2.so\"\ntoken_label = \"aos\"\nuser_pin_file = \"/other\"\n"])
            .unwrap_err();
        assert_eq!(e.key, "modules[1].pkcs11.user_pin_file");
        // A shared token: iamd never initialises it, and its modules agree that it is shared.
        let shared = "[[modules]]\nid = \"p\"\n[modules.pkcs11]\nlibrary = \"/usr/lib/softhsm/libsofthsm2.so\"\ntoken_label = \"aos\"\nuser_pin_file = \"/tmp/w/pin\"\nshared = true\n";
        let e = load(&[shared]).unwrap_err();
        assert_eq!(e.key, "modules[1].pkcs11.shared", "{e}");
        let serial = shared.replace("token_label = \"aos\"", "token_serial = \"7\"\ninit_label = \"x\"");
        let e = load(&[&serial]).unwrap_err();
        assert_eq!(e.key, "modules[1].pkcs11.init_label", "{e}");
        let c = load(&[&serial.replace("init_label = \"x\"\n", "")]).unwrap();
        assert!(matches!(&c.modules[1].store, StoreConfig::Pkcs11(p) if p.shared));
    }

    #[test]
    fn software_store_refuses_rsa() {
        let e = load(&["[[modules]]\nid = \"r\"\nstore = \"software\"\nalgorithm = \"rsa-2048\"\n"]).unwrap_err();
        assert!(e.reason.contains("pkcs11"), "{e}");
    }

    #[test]
    fn bad_values_name_the_reason() {
        let e = load(&["[[modules]]\nid = \"x\"\nstore = \"software\"\nalgorithm = \"ecdsa-p521\"\n"]).unwrap_err();
        assert_eq!(e.key, "modules[1].algorithm");
        assert!(e.reason.contains("ecdsa-p521"));
        let e = load(&["[[modules]]\nid = \"x\"\nstore = \"software\"\nmax_items = \"3\"\n"]).unwrap_err();
        assert!(e.reason.contains("integer"), "{e}");
        let e = load(&["[[modules]]\nid = \"iam\"\nstore = \"software\"\n"]).unwrap_err();
        assert!(e.reason.contains("defined twice"), "{e}");
        let e = load(&["[[modules]]\nid = \"x\"\nstore = \"software\"\nextended_key_usage = [\"serverauth\"]\n"])
            .unwrap_err();
        assert_eq!(e.key, "modules[1].extended_key_usage[0]");
        let e = load(&["[paths]\nprotected_socket_mode = \"999\"\n"]).unwrap_err();
        assert_eq!(e.key, "paths.protected_socket_mode");
        let e = load(&["[hooks]\nstart = []\n"]).unwrap_err();
        assert_eq!(e.key, "hooks.start");
    }
}
