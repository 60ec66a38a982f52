//! The factory's profile: what a certificate issued to a node of the unit may say, whoever
//! signs it (a local CA, a signing command, EST, SCEP).
//!
//! What a node asks for in its CSR is never trusted, since a rooted secondary writes its
//! own: its CSR is compared with the profile before it is signed, and the certificate the
//! signer issued is compared again before it is applied. A CSR or certificate with anything
//! more (a usage, a name, a URI, a CA bit, an extension of its own) is refused, naming each
//! difference. The local CA then builds the certificate from what was checked, copying
//! nothing else from the CSR.
//!
//! The default profile, for every certificate type: the subject the factory's template
//! gives; clientAuth, and serverAuth on the main node only; DNS names that are the node's
//! id or begin with it (`{node}`, `{node}.*`); the unit's URI (`urn:aos-iam:unit:…`) on the
//! link identity (`iam`) only. A profile file (`--profile`) replaces these per type and can
//! pin the unit; serverAuth on a secondary needs its type named in the file, and is never
//! given to a secondary's link identity:
//!
//! ```toml
//! link_identity = "iam"
//! unit_id = "unit-7"
//! [types.iam]
//! extended_key_usage = ["clientAuth", "serverAuth"]
//! alt_names = ["{node}.unit.local"]
//! [types.online]
//! extended_key_usage = ["clientAuth"]
//! alt_names = []
//! ```

use crate::config::{unit_uri, Eku};
use crate::error::{Error, Result};
use std::path::Path;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509Certificate};

/// A subject template (`[renew] subject`, `--subject`) for one node's certificate: `{node}`
/// and `{type}` replaced.
pub fn subject_for(template: &str, node_id: &str, cert_type: &str) -> String {
    template.replace("{node}", node_id).replace("{type}", cert_type)
}

const UNIT_URI_PREFIX: &str = "urn:aos-iam:unit:";

/// What a CSR asks for, or a certificate says, about its holder.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The subject as RFC 4514 text, without the blanks after commas.
    pub subject: String,
    /// The subject's common names.
    pub cns: Vec<String>,
    pub dns: Vec<String>,
    pub uris: Vec<String>,
    /// Names of other kinds (IP addresses, e-mail…), as x509-parser prints them.
    pub other_names: Vec<String>,
    /// Extended key usages by name (`serverAuth`), or dotted OID where unnamed.
    pub ekus: Vec<String>,
    pub ca: bool,
    /// Extensions beyond names, usages, basic constraints and key identifiers, by OID.
    pub other_extensions: Vec<String>,
}

impl Claims {
    /// The names it gives its holder as a node: its CNs and DNS names (what
    /// `pki::tls::check_peer` matches a node id against).
    pub fn node_names(&self) -> Vec<String> {
        [&self.cns[..], &self.dns[..]].concat()
    }
}

/// A subject as compared: RFC 4514 text without blanks around its commas; a bare name (a
/// template without `=`, see `x509::parse_subject`) is a CN.
fn subject_text(s: &str) -> String {
    match s.contains('=') {
        true => s.split(',').map(str::trim).collect::<Vec<_>>().join(","),
        false => format!("CN={}", s.trim()),
    }
}

fn claims<'a>(
    subject: &x509_parser::x509::X509Name,
    extensions: impl Iterator<Item = &'a x509_parser::extensions::X509Extension<'a>>,
) -> Claims {
    let mut c = Claims {
        subject: subject_text(&subject.to_string()),
        cns: subject
            .iter_common_name()
            .filter_map(|cn| cn.as_str().ok().map(str::to_string))
            .collect(),
        ..Claims::default()
    };
    for ext in extensions {
        match ext.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(s) => {
                for n in &s.general_names {
                    match n {
                        GeneralName::DNSName(d) => c.dns.push(d.to_string()),
                        GeneralName::URI(u) => c.uris.push(u.to_string()),
                        other => c.other_names.push(other.to_string()),
                    }
                }
            }
            ParsedExtension::ExtendedKeyUsage(e) => {
                let named = [
                    (e.any, "anyExtendedKeyUsage"),
                    (e.server_auth, Eku::ServerAuth.name()),
                    (e.client_auth, Eku::ClientAuth.name()),
                    (e.code_signing, Eku::CodeSigning.name()),
                    (e.email_protection, Eku::EmailProtection.name()),
                    (e.time_stamping, Eku::TimeStamping.name()),
                    (e.ocsp_signing, Eku::OcspSigning.name()),
                ];
                c.ekus
                    .extend(named.iter().filter(|(on, _)| *on).map(|(_, n)| n.to_string()));
                c.ekus.extend(e.other.iter().map(|o| o.to_id_string()));
            }
            ParsedExtension::BasicConstraints(bc) => c.ca |= bc.ca,
            ParsedExtension::KeyUsage(_)
            | ParsedExtension::SubjectKeyIdentifier(_)
            | ParsedExtension::AuthorityKeyIdentifier(_) => {}
            _ => c.other_extensions.push(ext.oid.to_id_string()),
        }
    }
    c
}

/// What a CSR (DER) asks for.
pub fn csr_claims(csr_der: &[u8]) -> Result<Claims> {
    let (_, csr) = x509_parser::certification_request::X509CertificationRequest::from_der(csr_der)
        .map_err(|e| Error::invalid(format!("the CSR: {e}")))?;
    let requested = csr
        .certification_request_info
        .iter_attributes()
        .filter_map(|a| match a.parsed_attribute() {
            x509_parser::cri_attributes::ParsedCriAttribute::ExtensionRequest(r) => Some(r.extensions.iter()),
            _ => None,
        });
    Ok(claims(&csr.certification_request_info.subject, requested.flatten()))
}

/// What a certificate (DER) says.
pub fn cert_claims(der: &[u8]) -> Result<Claims> {
    let (_, c) = X509Certificate::from_der(der).map_err(|e| Error::invalid(format!("the certificate: {e}")))?;
    Ok(claims(c.subject(), c.extensions().iter()))
}

/// What one certificate type may carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeProfile {
    pub ekus: Vec<Eku>,
    /// DNS names, `{node}` replaced by the node id; a trailing `.*` admits any labels after.
    pub alt_names: Vec<String>,
}

impl Default for TypeProfile {
    fn default() -> TypeProfile {
        TypeProfile {
            ekus: vec![Eku::ClientAuth, Eku::ServerAuth],
            alt_names: vec!["{node}".into(), "{node}.*".into()],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// The type that is a node's identity on the links: the only one with the unit's URI,
    /// and without serverAuth on a secondary.
    pub link_identity: String,
    /// The unit whose URI a link identity may carry; `None`: any one unit URI.
    pub unit_id: Option<String>,
    pub types: Vec<(String, TypeProfile)>,
    /// For types the file does not name.
    pub default: TypeProfile,
}

impl Default for Profile {
    fn default() -> Profile {
        Profile {
            link_identity: "iam".into(),
            unit_id: None,
            types: Vec::new(),
            default: TypeProfile::default(),
        }
    }
}

fn name_matches(pattern: &str, node_id: &str, name: &str) -> bool {
    let pattern = pattern.replace("{node}", node_id).to_ascii_lowercase();
    let name = name.to_ascii_lowercase();
    match pattern.strip_suffix(".*") {
        Some(head) => name
            .strip_prefix(head)
            .is_some_and(|rest| rest.len() > 1 && rest.starts_with('.')),
        None => name == pattern,
    }
}

impl Profile {
    /// A profile file (TOML; see the module's documentation).
    pub fn load(path: &Path) -> Result<Profile> {
        let bad = |m: String| Error::invalid(format!("the profile {}: {m}", path.display()));
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| bad(e.message().to_string()))?;
        let mut p = Profile::default();
        let type_profile = |key: &str, v: &toml::Value| -> Result<TypeProfile> {
            let t = v.as_table().ok_or_else(|| bad(format!("{key} is not a table")))?;
            let mut out = TypeProfile::default();
            for (k, v) in t {
                let strings = || -> Result<Vec<String>> {
                    v.as_array()
                        .and_then(|a| a.iter().map(|s| s.as_str().map(str::to_string)).collect())
                        .ok_or_else(|| bad(format!("{key}.{k} is not a list of strings")))
                };
                match k.as_str() {
                    "extended_key_usage" => {
                        out.ekus = strings()?
                            .iter()
                            .map(|n| {
                                Eku::ALL
                                    .iter()
                                    .find(|(name, _)| name == n)
                                    .map(|(_, e)| *e)
                                    .ok_or_else(|| bad(format!("{key}.{k}: \"{n}\" is not a usage iamd knows")))
                            })
                            .collect::<Result<_>>()?
                    }
                    "alt_names" => out.alt_names = strings()?,
                    other => return Err(bad(format!("{key}.{other} is not a setting of a type"))),
                }
            }
            Ok(out)
        };
        for (k, v) in &table {
            match (k.as_str(), v) {
                ("link_identity", toml::Value::String(s)) => p.link_identity = s.clone(),
                ("unit_id", toml::Value::String(s)) => p.unit_id = Some(s.clone()),
                ("default", v) => p.default = type_profile("default", v)?,
                ("types", toml::Value::Table(t)) => {
                    for (name, v) in t {
                        p.types.push((name.clone(), type_profile(&format!("types.{name}"), v)?));
                    }
                }
                (other, _) => {
                    return Err(bad(format!(
                        "\"{other}\" is not a profile setting, or has the wrong type"
                    )))
                }
            }
        }
        Ok(p)
    }

    fn of(&self, cert_type: &str) -> &TypeProfile {
        self.types
            .iter()
            .find(|(t, _)| t == cert_type)
            .map(|(_, p)| p)
            .unwrap_or(&self.default)
    }

    /// Refuse `claims` (of `what`: a CSR, or the certificate a signer issued) where they go
    /// beyond what the profile lets `node_id` have for `cert_type`; `subject`, when given,
    /// is the one the factory's template gives.
    pub fn check(
        &self,
        what: &str,
        claims: &Claims,
        node_id: &str,
        main: bool,
        cert_type: &str,
        subject: Option<&str>,
    ) -> Result<()> {
        let t = self.of(cert_type);
        let link = cert_type == self.link_identity;
        // serverAuth on a secondary would let it state itself the main node to a secondary
        // that pins neither the main node nor the unit: only where the profile file grants it
        // to that type by name, and never on the link identity.
        let named = self.types.iter().any(|(n, _)| n == cert_type);
        let server_auth_refused = !main && (link || !named);
        let mut more = Vec::new();
        if let Some(s) = subject.map(subject_text).filter(|s| *s != claims.subject) {
            more.push(format!("the subject \"{}\" (the factory's is \"{s}\")", claims.subject));
        }
        for e in &claims.ekus {
            let allowed = t.ekus.iter().any(|a| a.name() == e);
            if !allowed || (e == Eku::ServerAuth.name() && server_auth_refused) {
                more.push(format!("the usage {e}"));
            }
        }
        for d in claims
            .dns
            .iter()
            .filter(|d| !t.alt_names.iter().any(|p| name_matches(p, node_id, d)))
        {
            more.push(format!("the DNS name \"{d}\""));
        }
        for (i, u) in claims.uris.iter().enumerate() {
            let unit = u.strip_prefix(UNIT_URI_PREFIX);
            let allowed = link
                && i == 0
                && match &self.unit_id {
                    Some(id) => *u == unit_uri(id),
                    None => unit.is_some_and(|id| !id.is_empty()),
                };
            if !allowed {
                more.push(format!("the URI \"{u}\""));
            }
        }
        more.extend(claims.other_names.iter().map(|n| format!("the name {n}")));
        if claims.ca {
            more.push("a CA's basic constraints".into());
        }
        more.extend(claims.other_extensions.iter().map(|o| format!("the extension {o}")));
        if more.is_empty() {
            return Ok(());
        }
        Err(Error::validation(
            "BeyondProfile",
            format!(
                "{what} for node \"{node_id}\" goes beyond the factory's profile of {cert_type}{}: {}",
                if link && !main {
                    " (a secondary's link identity)"
                } else {
                    ""
                },
                more.join(", ")
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_the_node_or_begin_with_it() {
        assert!(name_matches("{node}", "n1", "N1"));
        assert!(name_matches("{node}.*", "n1", "n1.unit.local"));
        assert!(!name_matches("{node}.*", "n1", "n1"));
        assert!(!name_matches("{node}.*", "n1", "n10.local"));
        assert!(!name_matches("{node}.*", "n1", "n1."));
        assert!(name_matches("gw.local", "n1", "gw.local"));
    }

    #[test]
    fn a_secondary_gets_no_server_auth_on_its_link_identity_nor_a_uri_elsewhere() {
        let p = Profile::default();
        let c = Claims {
            subject: "CN=s1,OU=iam".into(),
            ekus: vec!["clientAuth".into(), "serverAuth".into()],
            uris: vec![unit_uri("u")],
            ..Claims::default()
        };
        assert!(p.check("x", &c, "main", true, "iam", Some("CN=s1, OU=iam")).is_ok());
        let e = p.check("the iam CSR", &c, "s1", false, "iam", None).unwrap_err();
        assert!(
            e.message.contains("the usage serverAuth") && !e.message.contains("URI"),
            "{e}"
        );
        let client_only = Claims {
            ekus: vec!["clientAuth".into()],
            ..c.clone()
        };
        let e = p.check("x", &client_only, "s1", false, "online", None).unwrap_err();
        assert!(
            e.message.contains("the URI \"urn:aos-iam:unit:u\"") && !e.message.contains("usage"),
            "{e}"
        );
        // serverAuth on a secondary's other type: only where a profile file names it.
        let e = p.check("x", &c, "s1", false, "online", None).unwrap_err();
        assert!(e.message.contains("the usage serverAuth"), "{e}");
        let named = Profile {
            types: vec![("online".into(), TypeProfile::default())],
            ..Profile::default()
        };
        let no_uri = Claims {
            uris: Vec::new(),
            ..c.clone()
        };
        assert!(named.check("x", &no_uri, "s1", false, "online", None).is_ok());
        assert!(named.check("x", &no_uri, "s1", false, "iam", None).is_err());
        let e = p.check("x", &c, "s1", true, "online", None).unwrap_err();
        assert!(e.message.contains("the URI \"urn:aos-iam:unit:u\""), "{e}");
        let pinned = Profile {
            unit_id: Some("v".into()),
            ..Profile::default()
        };
        assert!(pinned.check("x", &c, "m", true, "iam", None).is_err());
    }
}
