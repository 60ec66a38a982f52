//! `[enroll]` and `[scep]`: zero-touch enrollment by iamd itself (EST or SCEP, the
//! bootstrap identity, retries and quarantine), and the node's SCEP policy.

use super::modules::ModuleConfig;
use super::reader::{duration_or, fingerprint, parse_per_mille, Reader};
use super::ConfigError;
use crate::codec::Fingerprint;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Zero-touch enrollment (`[enroll]`): at first power-on a bootstrapped node enrolls every
/// CA-signed module over EST with its bootstrap identity (see `daemon::enroll`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollConfig {
    /// The module that holds the bootstrap (manufacturer) identity.
    pub bootstrap: String,
    /// The EST server and its trust anchor, unless bootstrap stored others.
    pub url: Option<String>,
    pub anchor: Option<PathBuf>,
    /// Where bootstrap writes the claim token (sent as `Authorization: Bearer`), if one is given.
    pub claim_token_file: PathBuf,
    /// The token sent base64-encoded (`claim_token_encoding = "base64"`), as Cisco libest's
    /// server decodes it; as it is by default (RFC 6750).
    pub claim_token_base64: bool,
    /// HTTP basic auth on /simpleenroll besides the bootstrap certificate, if configured.
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    /// Attempts before quarantine; the first delay, doubling up to `max_retry`; the share of
    /// each delay drawn at random (per mille) so that a fleet spreads out.
    pub attempts: u32,
    pub retry: Duration,
    pub max_retry: Duration,
    pub jitter: u32,
    /// The longest one EST exchange may take.
    pub timeout: Duration,
    /// `host:port` of the verify step's mutual-TLS handshake (`None`: the EST server's).
    pub verify: Option<String>,
    /// The module whose new identity the verify step presents (default: the first
    /// enrolled module).
    pub verify_module: Option<String>,
    /// `[enroll] csrattrs = "strict"`: what a CSR cannot carry of what the server's
    /// /csrattrs asks refuses the attempt; `"lenient"` (default): it is logged and the CSR
    /// goes without it, for the server to judge (RFC 7030 §4.5).
    pub strict_csrattrs: bool,
    /// `method = "scep"`: enroll by SCEP (RFC 8894) instead of EST, trusting the CA with
    /// this SHA-256 fingerprint; the claim token is the challenge password.
    pub scep_fingerprint: Option<Fingerprint>,
}

impl EnrollConfig {
    /// The modules enrollment gives a certificate, in configuration order: every CA-signed
    /// one but the bootstrap.
    pub fn enrolled_modules<'c>(&'c self, modules: &'c [ModuleConfig]) -> impl Iterator<Item = &'c str> + 'c {
        modules
            .iter()
            .filter(move |m| m.id != self.bootstrap && !m.self_signed)
            .map(|m| m.id.as_str())
    }
}

#[inline(never)]
pub(super) fn parse(
    root: &mut Reader,
    working_dir: &Path,
    modules: &[ModuleConfig],
) -> Result<Option<EnrollConfig>, ConfigError> {
    let enroll = match root.sub("enroll")? {
        Some(mut e) => {
            let c = parse_enroll(&mut e, working_dir, modules)?;
            e.finish()?;
            Some(c)
        }
        None => None,
    };
    Ok(enroll)
}

/// `[scep] allow_des3`.
#[inline(never)]
pub(super) fn parse_scep_policy(root: &mut Reader) -> Result<bool, ConfigError> {
    let scep_allow_des3 = match root.sub("scep")? {
        Some(mut s) => {
            let allow = s.bool("allow_des3", false)?;
            s.finish()?;
            allow
        }
        None => false,
    };
    Ok(scep_allow_des3)
}

#[inline(never)]
fn parse_enroll(e: &mut Reader, working_dir: &Path, modules: &[ModuleConfig]) -> Result<EnrollConfig, ConfigError> {
    let bootstrap = e.string("bootstrap")?.unwrap_or_else(|| "bootstrap".into());
    let Some(b) = modules.iter().find(|m| m.id == bootstrap) else {
        return Err(e.err(
            "bootstrap",
            format!("\"{bootstrap}\" names no module; the bootstrap identity needs one"),
        ));
    };
    if b.self_signed || b.renew.is_some() {
        return Err(e.err(
            "bootstrap",
            format!(
                "module \"{bootstrap}\" holds the factory's certificate: it can be neither self-signed nor renewed"
            ),
        ));
    }
    if !modules.iter().any(|m| m.id != bootstrap && !m.self_signed) {
        return Err(e.err("bootstrap", "no other module needs a CA: there is nothing to enroll"));
    }
    let scep = match e.string("method")?.as_deref() {
        None | Some("est") => false,
        Some("scep") => true,
        Some(v) => return Err(e.err("method", format!("\"{v}\" is not one of est, scep"))),
    };
    let url = e.string("url")?;
    if let Some(u) = &url {
        match scep {
            false if !u.starts_with("https://") => return Err(e.err("url", "must be an https:// URL")),
            true if !u.starts_with("http://") => {
                return Err(e.err(
                    "url",
                    "must be an http:// URL with method = \"scep\" (its trust is ca_fingerprint)",
                ))
            }
            _ => {}
        }
    }
    let scep_fingerprint = match (scep, fingerprint(e, "ca_fingerprint")?) {
        (true, Some(f)) => Some(f),
        (true, None) => return Err(e.err("ca_fingerprint", "is required with method = \"scep\"")),
        (false, Some(_)) => return Err(e.err("ca_fingerprint", "goes with method = \"scep\"")),
        (false, None) => None,
    };
    let anchor = e.path("anchor")?;
    let claim_token_file = e
        .path("claim_token_file")?
        .unwrap_or_else(|| working_dir.join("claim-token"));
    let claim_token_base64 = match e.string("claim_token_encoding")?.as_deref() {
        None | Some("as-is") => false,
        Some("base64") => true,
        Some(v) => return Err(e.err("claim_token_encoding", format!("\"{v}\" is not one of as-is, base64"))),
    };
    let username = e.string("username")?;
    let password_file = e.path("password_file")?;
    if username.is_some() != password_file.is_some() {
        return Err(e.err("username", "username and password_file go together"));
    }
    let attempts = e.uint("attempts", 1000)?.map(|v| v as u32).unwrap_or(5);
    if attempts == 0 {
        return Err(e.err("attempts", "must be at least 1"));
    }
    let retry = duration_or(e, "retry", Duration::from_secs(30))?;
    let max_retry = duration_or(e, "max_retry", Duration::from_secs(3600))?;
    if max_retry < retry {
        return Err(e.err("max_retry", "must not be shorter than retry"));
    }
    let jitter = match e.string("jitter")? {
        None => 200,
        Some(j) => parse_per_mille(&j)
            .filter(|p| *p <= 500)
            .ok_or_else(|| e.err("jitter", format!("\"{j}\" is not a share between 0% and 50%")))?,
    };
    let timeout = duration_or(e, "timeout", Duration::from_secs(60))?;
    let verify = e.string("verify")?;
    if let Some(v) = &verify {
        if v.rsplit_once(':')
            .and_then(|(h, p)| (!h.is_empty()).then(|| p.parse::<u16>().ok()))
            .flatten()
            .is_none()
        {
            return Err(e.err("verify", format!("\"{v}\" is not host:port")));
        }
    }
    let strict_csrattrs = match e.string("csrattrs")?.as_deref() {
        None | Some("lenient") => false,
        Some("strict") => true,
        Some(v) => return Err(e.err("csrattrs", format!("\"{v}\" is not one of lenient, strict"))),
    };
    let verify_module = e.string("verify_module")?;
    if let Some(v) = &verify_module {
        if *v == bootstrap || !modules.iter().any(|m| m.id == *v && !m.self_signed) {
            return Err(e.err("verify_module", format!("\"{v}\" names no module that is enrolled")));
        }
    }
    Ok(EnrollConfig {
        bootstrap,
        url,
        anchor,
        claim_token_file,
        claim_token_base64,
        username,
        password_file,
        attempts,
        retry,
        max_retry,
        jitter,
        timeout,
        verify,
        verify_module,
        strict_csrattrs,
        scep_fingerprint,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::testing::*;

    #[test]
    fn enrollment_by_scep_needs_an_http_url_and_a_ca_fingerprint() {
        let fp = "ab".repeat(32);
        let enroll = |body: &str| {
            load(&[&format!(
                "[[modules]]\nid = \"bootstrap\"\nstore = \"software\"\n[enroll]\n{body}"
            )])
        };
        let c = enroll(&format!(
            "method = \"scep\"\nurl = \"http://scep:8080/scep\"\nca_fingerprint = \"{fp}\"\n"
        ))
        .unwrap();
        assert_eq!(
            c.enroll.unwrap().scep_fingerprint.map(|f| f.to_string()),
            Some(fp.clone())
        );
        for (body, key, reason) in [
            (
                format!("method = \"scep\"\nurl = \"https://scep\"\nca_fingerprint = \"{fp}\"\n"),
                "url",
                "http://",
            ),
            (
                "method = \"scep\"\nurl = \"http://scep\"\n".to_string(),
                "ca_fingerprint",
                "required",
            ),
            (
                "method = \"scep\"\nca_fingerprint = \"12\"\n".to_string(),
                "ca_fingerprint",
                "SHA-256",
            ),
            (
                format!("url = \"https://est\"\nca_fingerprint = \"{fp}\"\n"),
                "ca_fingerprint",
                "method = \"scep\"",
            ),
            ("method = \"cmp\"\n".to_string(), "method", "not one of est, scep"),
        ] {
            let e = enroll(&body).unwrap_err();
            assert_eq!(e.key, format!("enroll.{key}"), "{body}: {e}");
            assert!(e.reason.contains(reason), "{body}: {e}");
        }
    }
}
