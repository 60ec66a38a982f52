//! `[modules.renew]` and `[reconcile]`: how iamd renews a module's certificate by itself
//! (a command, EST or SCEP; when, and how it retries), and how often it reconciles its
//! database with the key stores.

use super::reader::{duration_or, fingerprint, parse_duration, parse_per_mille, seconds, Reader};
use super::ConfigError;
use super::{DEFAULT_COMMAND_TIMEOUT, DEFAULT_SUBJECT};
use crate::codec::Fingerprint;
use std::path::PathBuf;
use std::time::Duration;

/// Reconciliation of the database with the stores (docs/ARCHITECTURE.md §8): at start, then every
/// `interval` (zero: at start only); pending keys older than `pending_max_age` are removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconcileConfig {
    pub interval: Duration,
    pub pending_max_age: Duration,
}

pub const DEFAULT_RECONCILE_INTERVAL: Duration = Duration::from_secs(3600);

pub const DEFAULT_PENDING_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

impl Default for ReconcileConfig {
    fn default() -> Self {
        ReconcileConfig {
            interval: DEFAULT_RECONCILE_INTERVAL,
            pending_max_age: DEFAULT_PENDING_MAX_AGE,
        }
    }
}

/// When a renewal is due: a share of the certificate's lifetime, or a time before expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threshold {
    /// Per mille of the lifetime elapsed (`"80%"` is 800).
    Elapsed(u32),
    BeforeExpiry(Duration),
}

/// Where a renewal gets its certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenewMethod {
    /// A command run with `/bin/sh -c`: CSR PEM on stdin, chain PEM on stdout; exit 75 asks
    /// to retry later (the protocol of `iam-provision run --sign-cmd`).
    Command {
        command: String,
        timeout: Duration,
    },
    Est(EstConfig),
    Scep(ScepSettings),
}

/// A SCEP server (RFC 8894), the CA it speaks for, and how long PENDING is polled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScepSettings {
    /// `http://host[:port]/path` (SCEP is plain HTTP: the CA fingerprint is the trust).
    pub url: String,
    /// SHA-256 of the CA certificate's DER, as checked out of band.
    pub ca_fingerprint: Fingerprint,
    /// The challenge password of a PKCSReq, read from this file when a request is made.
    pub challenge_file: Option<PathBuf>,
    /// A RenewalReq signed by the module's current certificate where the server offers
    /// Renewal (default); otherwise a PKCSReq with the challenge.
    pub renewal: bool,
    pub timeout: Duration,
    pub poll_for: Duration,
    pub poll_every: Duration,
}

impl ScepSettings {
    /// How long one HTTP exchange may take by default.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
    /// How long a PENDING request is polled by default, and how often.
    pub const DEFAULT_POLL_FOR: Duration = Duration::from_secs(300);
    pub const DEFAULT_POLL_EVERY: Duration = Duration::from_secs(10);
}

/// An EST server (RFC 7030) and how to authenticate to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EstConfig {
    /// `https://host[:port]/.well-known/est` (with a CA label, if the server uses one).
    pub url: String,
    /// The server's trust anchor (PEM): the only roots its certificate is checked against.
    pub anchor: PathBuf,
    /// `/simplereenroll` with the module's current certificate over mutual TLS (default);
    /// otherwise `/simpleenroll` with HTTP basic auth.
    pub reenroll: bool,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
}

/// How iamd renews a module's certificate by itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenewPolicy {
    pub method: RenewMethod,
    pub threshold: Threshold,
    /// First delay after a failure; it doubles per failure up to [`MAX_RENEW_RETRY`].
    pub retry: Duration,
    /// Per mille of the time between issue and the threshold by which the renewal may come
    /// earlier, drawn per certificate, so that a fleet does not renew all at once.
    pub jitter: u32,
    /// Subject of the new certificate; `{node}` and `{type}` are replaced.
    pub subject: String,
}

impl RenewPolicy {
    /// When a certificate valid from `start` to `end` (seconds since the epoch) is due.
    pub fn due_at(&self, start: i64, end: i64) -> i64 {
        let end = end.max(start);
        match self.threshold {
            Threshold::Elapsed(per_mille) => start + (end - start) * per_mille as i64 / 1000,
            Threshold::BeforeExpiry(d) => end - d.as_secs() as i64,
        }
    }

    /// Whether the threshold is at least the lifetime of a certificate valid from `start`
    /// to `end`: it is due the moment it is issued, and only the floor between renewals
    /// keeps them apart.
    pub fn outlasts(&self, start: i64, end: i64) -> bool {
        self.due_at(start, end) <= start
    }
}

/// Longest delay between renewal attempts.
pub const MAX_RENEW_RETRY: Duration = Duration::from_secs(24 * 3600);

#[inline(never)]
pub(super) fn parse_renew(r: &mut Reader) -> Result<RenewPolicy, ConfigError> {
    let method = match r.string("method")?.as_deref() {
        None | Some("command") => {
            if r.table.contains_key("est") {
                return Err(r.err("est", "given, but the method is \"command\""));
            }
            RenewMethod::Command {
                command: r.required_string("command")?,
                timeout: seconds(r, "timeout", 24 * 3600, DEFAULT_COMMAND_TIMEOUT)?,
            }
        }
        Some("est") => {
            for key in ["command", "timeout"] {
                if r.table.contains_key(key) {
                    return Err(r.err(key, "given, but the method is \"est\""));
                }
            }
            let mut e = r
                .sub("est")?
                .ok_or_else(|| r.err("est", "is required with method = \"est\""))?;
            let url = e.required_string("url")?;
            if !url.starts_with("https://") {
                return Err(e.err("url", "must be an https:// URL"));
            }
            let est = EstConfig {
                url,
                anchor: e
                    .path("anchor")?
                    .ok_or_else(|| e.err("anchor", "is required: the EST server's trust anchor"))?,
                reenroll: e.bool("reenroll", true)?,
                username: e.string("username")?,
                password_file: e.path("password_file")?,
            };
            if est.username.is_some() != est.password_file.is_some() {
                return Err(e.err("username", "username and password_file go together"));
            }
            if !est.reenroll && est.username.is_none() {
                return Err(e.err("reenroll", "false needs username and password_file for /simpleenroll"));
            }
            e.finish()?;
            RenewMethod::Est(est)
        }
        Some("scep") => {
            for key in ["command", "timeout", "est"] {
                if r.table.contains_key(key) {
                    return Err(r.err(key, "given, but the method is \"scep\""));
                }
            }
            let mut e = r
                .sub("scep")?
                .ok_or_else(|| r.err("scep", "is required with method = \"scep\""))?;
            let url = e.required_string("url")?;
            if !url.starts_with("http://") {
                return Err(e.err("url", "must be an http:// URL (SCEP's trust is ca_fingerprint)"));
            }
            let ca_fingerprint =
                fingerprint(&mut e, "ca_fingerprint")?.ok_or_else(|| e.err("ca_fingerprint", "is required"))?;
            let scep = ScepSettings {
                url,
                ca_fingerprint,
                challenge_file: e.path("challenge_file")?,
                renewal: e.bool("renewal", true)?,
                timeout: seconds(&mut e, "timeout", 3600, ScepSettings::DEFAULT_TIMEOUT)?,
                poll_for: seconds(&mut e, "poll_for", 24 * 3600, ScepSettings::DEFAULT_POLL_FOR)?,
                poll_every: seconds(&mut e, "poll_every", 3600, ScepSettings::DEFAULT_POLL_EVERY)?,
            };
            if !scep.renewal && scep.challenge_file.is_none() {
                return Err(e.err("renewal", "false needs challenge_file for a PKCSReq"));
            }
            e.finish()?;
            RenewMethod::Scep(scep)
        }
        Some(m) => return Err(r.err("method", format!("\"{m}\" is not one of command, est, scep"))),
    };
    let threshold = match r.string("threshold")? {
        None => Threshold::Elapsed(800),
        Some(t) if t.ends_with('%') => match parse_per_mille(&t) {
            Some(p) if p > 0 && p < 1000 => Threshold::Elapsed(p),
            _ => {
                return Err(r.err(
                    "threshold",
                    format!("\"{t}\" is not a share of the lifetime between 0% and 100%"),
                ))
            }
        },
        Some(t) => Threshold::BeforeExpiry(parse_duration(&t).filter(|d| !d.is_zero()).ok_or_else(|| {
            r.err(
                "threshold",
                format!("\"{t}\" is neither \"80%\" nor a duration such as \"30d\""),
            )
        })?),
    };
    let retry = duration_or(r, "retry", Duration::from_secs(3600))?;
    let jitter = match r.string("jitter")? {
        None => 100,
        Some(j) => parse_per_mille(&j)
            .filter(|p| *p <= 500)
            .ok_or_else(|| r.err("jitter", format!("\"{j}\" is not a share between 0% and 50%")))?,
    };
    if !r.bool("rotate_key", true)? {
        return Err(r.err(
            "rotate_key",
            "false (certifying the same key again) is not supported: every renewal makes a new key",
        ));
    }
    let subject = r.string("subject")?.unwrap_or_else(|| DEFAULT_SUBJECT.to_string());
    Ok(RenewPolicy {
        method,
        threshold,
        retry,
        jitter,
        subject,
    })
}

#[inline(never)]
pub(super) fn parse_reconcile(root: &mut Reader) -> Result<ReconcileConfig, ConfigError> {
    let reconcile = match root.sub("reconcile")? {
        Some(mut r) => {
            let c = ReconcileConfig {
                interval: r
                    .uint("interval", 30 * 24 * 3600)?
                    .map(Duration::from_secs)
                    .unwrap_or(DEFAULT_RECONCILE_INTERVAL),
                pending_max_age: seconds(&mut r, "pending_max_age", 365 * 24 * 3600, DEFAULT_PENDING_MAX_AGE)?,
            };
            r.finish()?;
            c
        }
        None => ReconcileConfig::default(),
    };
    Ok(reconcile)
}

#[cfg(test)]
mod tests {
    use crate::config::reader::parse_duration;
    use crate::config::testing::*;
    use crate::config::*;
    use std::time::Duration;

    #[test]
    fn renewal_policies_are_read_and_checked() {
        let c = load(&["[[modules]]\nid = \"r\"\nstore = \"software\"\n[modules.renew]\ncommand = \"sign\"\nthreshold = \"30d\"\nretry = \"15m\"\njitter = \"5%\"\n"]).unwrap();
        let p = c.module("r").unwrap().renew.clone().unwrap();
        assert_eq!(p.threshold, Threshold::BeforeExpiry(Duration::from_secs(30 * 86400)));
        assert_eq!((p.retry, p.jitter), (Duration::from_secs(900), 50));
        let c =
            load(&["[[modules]]\nid = \"r\"\nstore = \"software\"\n[modules.renew]\ncommand = \"sign\"\n"]).unwrap();
        assert_eq!(
            c.module("r").unwrap().renew.as_ref().unwrap().threshold,
            Threshold::Elapsed(800)
        );
        for (renew, key, reason) in [
            ("threshold = \"120%\"", "threshold", "between 0% and 100%"),
            ("threshold = \"soon\"", "threshold", "neither"),
            ("retry = \"0s\"", "retry", "not a duration"),
            ("jitter = \"80%\"", "jitter", "between 0% and 50%"),
            ("rotate_key = false", "rotate_key", "not supported"),
            ("method = \"est\"", "command", "given, but the method is \"est\""),
        ] {
            let text = format!(
                "[[modules]]\nid = \"r\"\nstore = \"software\"\n[modules.renew]\ncommand = \"sign\"\n{renew}\n"
            );
            let e = load(&[&text]).unwrap_err();
            assert_eq!(e.key, format!("modules[1].renew.{key}"), "{renew}: {e}");
            assert!(e.reason.contains(reason), "{renew}: {e}");
        }
        assert!(parse_duration("12h") == Some(Duration::from_secs(43200)) && parse_duration("x").is_none());
        let c = load(&["[[modules]]\nid = \"r\"\nstore = \"software\"\n[modules.renew]\nmethod = \"est\"\n[modules.renew.est]\nurl = \"https://est:8443/.well-known/est\"\nanchor = \"/a.pem\"\n"]).unwrap();
        assert!(matches!(&c.module("r").unwrap().renew.as_ref().unwrap().method, RenewMethod::Est(e) if e.reenroll));
        let e = load(&["[[modules]]\nid = \"r\"\nstore = \"software\"\n[modules.renew]\nmethod = \"est\"\n[modules.renew.est]\nurl = \"http://est\"\nanchor = \"/a.pem\"\n"]).unwrap_err();
        assert_eq!(e.key, "modules[1].renew.est.url");
        let fp = "3B:1F".to_string() + &":AA".repeat(30);
        let scep = |body: &str| {
            load(&[&format!(
                "[[modules]]\nid = \"r\"\nstore = \"software\"\n[modules.renew]\nmethod = \"scep\"\n[modules.renew.scep]\n{body}"
            )])
        };
        let c = scep(&format!(
            "url = \"http://scep:8080/scep\"\nca_fingerprint = \"{fp}\"\npoll_every = 5\n"
        ))
        .unwrap();
        assert!(matches!(&c.module("r").unwrap().renew.as_ref().unwrap().method,
            RenewMethod::Scep(s) if s.renewal && s.poll_every == Duration::from_secs(5) && s.poll_for == Duration::from_secs(300)));
        for (body, key, reason) in [
            (
                format!("url = \"https://scep\"\nca_fingerprint = \"{fp}\"\n"),
                "url",
                "http://",
            ),
            (
                "url = \"http://scep\"\nca_fingerprint = \"ab:cd\"\n".to_string(),
                "ca_fingerprint",
                "SHA-256",
            ),
            ("url = \"http://scep\"\n".to_string(), "ca_fingerprint", "required"),
            (
                format!("url = \"http://scep\"\nca_fingerprint = \"{fp}\"\nrenewal = false\n"),
                "renewal",
                "challenge_file",
            ),
        ] {
            let e = scep(&body).unwrap_err();
            assert_eq!(e.key, format!("modules[1].renew.scep.{key}"), "{body}: {e}");
            assert!(e.reason.contains(reason), "{body}: {e}");
        }
    }
}
