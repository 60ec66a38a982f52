//! The iamd configuration: `config.toml`, then `config.d/*.toml` merged in sorted order.
//!
//! Tables merge key by key and arrays append, so a drop-in can add a certificate module.
//! Every key is read by hand from the merged tree, remembering which file set it, so that
//! an unknown key, a missing key or a bad value is reported with its file, key and reason.

use crate::codec::Fingerprint;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::{Table, Value};

pub const DEFAULT_CONFIG: &str = "/etc/aos-iam/config.toml";
pub const DEFAULT_WORKING_DIR: &str = "/var/aos/iam";
pub const DEFAULT_PUBLIC_SOCKET: &str = "/run/aos-iam/public.sock";
pub const DEFAULT_PROTECTED_SOCKET: &str = "/run/aos-iam/protected.sock";
pub const DEFAULT_PROTECTED_MODE: u32 = 0o660;
pub const DEFAULT_PUBLIC_MODE: u32 = 0o666;
pub const DEFAULT_MAX_ITEMS: u32 = 2;
/// File name of the database inside the working directory.
pub const DB_FILE: &str = "iam.db";
/// File name of the provisioned marker inside the working directory, unless configured.
pub const MARKER_FILE: &str = "provisioned";
/// File name, beside the provisioned marker, of the marker that the node has left the
/// factory: provisioned, or bootstrapped to enroll itself (enrolling, quarantined or
/// operational). The layer's units choose iamd's mode by the two (docs/ARCHITECTURE.md §8).
pub const DEPLOYED_FILE: &str = "deployed";
/// Forwarded operations get this long for an answer; StartProvisioning, FinishProvisioning
/// and Deprovision (hooks, token initialisation) get the long one.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_LONG_REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(30);
/// Where iam-nodelink reports the state of its link, for `iam-nodelink status`.
pub const DEFAULT_NODELINK_STATUS: &str = "/run/aos-iam-nodelink/status";
/// The module whose certificate and key are a node's TLS identity on links.
pub const DEFAULT_LINK_IDENTITY: &str = "iam";

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

/// A node is the unit's main node (it accepts links and forwards) or a secondary one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Main,
    Secondary,
}

/// When a node link runs inside TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkTls {
    /// TLS once the node is provisioned; in provisioning mode a node without a certificate
    /// may link in the clear (both sides must be in provisioning mode). TCP: always TLS.
    Auto,
    Required,
    /// Never (unix, vsock and stdio links only; refused for TCP).
    Off,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinksConfig {
    /// Main node: where secondary nodes' links are accepted.
    pub listen: Vec<crate::proto::transport::LinkAddr>,
    /// Secondary node: where iam-nodelink dials the main node (overridden by `--connect`).
    pub connect: Option<crate::proto::transport::LinkAddr>,
    pub tls: LinkTls,
    /// The module whose certificate is this node's TLS identity.
    pub identity: String,
    pub request_timeout: Duration,
    pub long_request_timeout: Duration,
    /// Secondary: how often iam-nodelink checks that the main node still answers; a link
    /// that misses one is dialed again (`None`: never). A byte pipe (stdio, vchan) cannot
    /// tell that the iamd at its other end restarted; this does.
    pub keepalive: Option<Duration>,
    pub status_file: PathBuf,
    /// Secondary: the uids besides root that may have iamd sign a TLS handshake with the
    /// link identity (SignWithLinkIdentity): iam-nodelink's own user.
    pub signer_uids: Vec<u32>,
    /// Secondary: the main node's id, which its certificate must name; when unset, the id
    /// the main node states in its hello.
    pub main_node_id: Option<String>,
    /// Main: the listeners that admit only some nodes (and CIDs); the others admit any.
    pub admission: Vec<Admission>,
    /// Secondary: iam-nodelink's tunnel socket. When set, iamd reaches its EST and SCEP
    /// servers (zero-touch enrollment, its own renewals, the verify step) through the link
    /// to the main node, and iam-nodelink serves the socket.
    pub tunnel: Option<PathBuf>,
    /// Main: the `host:port` endpoints a secondary may reach through its link (empty: no
    /// tunnels).
    pub tunnel_endpoints: Vec<String>,
    /// Secondary: where iam-nodelink keeps the CRLs the main node hands it (GetCrl, at each
    /// registration and keepalive), checked with beside `paths.crl` once the file exists:
    /// by iamd at ApplyCert and by iam-nodelink on the main node's chain (`None`: not asked).
    pub main_crl: Option<PathBuf>,
}

/// Who may link on one listener: the node ids that may register there (empty: any) and,
/// for vsock, the CIDs they may come from (empty: any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    pub addr: crate::proto::transport::LinkAddr,
    pub nodes: Vec<String>,
    pub cids: Vec<u32>,
}

impl Default for LinksConfig {
    fn default() -> Self {
        LinksConfig {
            listen: Vec::new(),
            connect: None,
            tls: LinkTls::Auto,
            identity: DEFAULT_LINK_IDENTITY.into(),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            long_request_timeout: DEFAULT_LONG_REQUEST_TIMEOUT,
            keepalive: Some(DEFAULT_KEEPALIVE),
            status_file: PathBuf::from(DEFAULT_NODELINK_STATUS),
            signer_uids: Vec::new(),
            main_node_id: None,
            admission: Vec::new(),
            tunnel: None,
            tunnel_endpoints: Vec::new(),
            main_crl: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    /// The line of `key` in `file` (of its table when the key is missing), when known.
    pub line: Option<usize>,
    pub key: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
        }
        if self.key.is_empty() {
            write!(f, ": {}", self.reason)
        } else {
            write!(f, ": {}: {}", self.key, self.reason)
        }
    }
}

impl std::error::Error for ConfigError {}

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

/// `"90s"`, `"15m"`, `"12h"`, `"30d"` or a number of seconds.
fn parse_duration(s: &str) -> Option<Duration> {
    let (n, unit) = match s.char_indices().last()? {
        (i, c) if c.is_ascii_alphabetic() => (&s[..i], c),
        _ => (s, 's'),
    };
    let n: u64 = n.trim().parse().ok()?;
    let secs = match unit {
        's' => n,
        'm' => n.checked_mul(60)?,
        'h' => n.checked_mul(3600)?,
        'd' => n.checked_mul(86400)?,
        _ => return None,
    };
    Some(Duration::from_secs(secs))
}

/// `"80%"` (or `"12.5%"`) as per mille.
fn parse_per_mille(s: &str) -> Option<u32> {
    let v: f64 = s.strip_suffix('%')?.trim().parse().ok()?;
    (0.0..=100.0).contains(&v).then(|| (v * 10.0).round() as u32)
}

fn parse_renew(r: &mut Reader) -> Result<RenewPolicy, ConfigError> {
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
    let duration = |r: &mut Reader, key: &str, default: Duration| -> Result<Duration, ConfigError> {
        match r.string(key)? {
            None => Ok(default),
            Some(t) => parse_duration(&t).filter(|d| !d.is_zero()).ok_or_else(|| {
                r.err(
                    key,
                    format!("\"{t}\" is not a duration such as \"90s\", \"15m\", \"1h\", \"30d\""),
                )
            }),
        }
    };
    let retry = duration(r, "retry", Duration::from_secs(3600))?;
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

/// How often the identity files are checked for changes by default (SIGHUP checks at once).
pub const DEFAULT_IDENTITY_POLL: Duration = Duration::from_secs(10);
/// Instances that may hold a permission secret at once, by default.
pub const DEFAULT_MAX_INSTANCES: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionConfig {
    pub name: String,
    pub path: PathBuf,
    pub types: Vec<String>,
}

/// Where the unit's identity comes from: files written by the platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityConfig {
    /// One line: the system id.
    pub system_id_file: Option<PathBuf>,
    /// One line: `model;version`.
    pub unit_model_file: Option<PathBuf>,
    /// One subject per line.
    pub subjects_file: Option<PathBuf>,
    pub poll_interval: Duration,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig {
            system_id_file: None,
            unit_model_file: None,
            subjects_file: None,
            poll_interval: DEFAULT_IDENTITY_POLL,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PermissionsConfig {
    /// Keep registrations across iamd restarts (in the database). Off by default: the
    /// service manager registers its instances again when it starts them, and a secret
    /// that outlives its instance is one more credential at rest.
    pub persist: bool,
    pub max_instances: usize,
}

impl Default for PermissionsConfig {
    fn default() -> Self {
        PermissionsConfig {
            persist: false,
            max_instances: DEFAULT_MAX_INSTANCES,
        }
    }
}

/// The URI subject alternative name that binds a link identity to its unit.
pub fn unit_uri(unit_id: &str) -> String {
    format!("urn:aos-iam:unit:{unit_id}")
}

/// How long a signing command (`--sign-cmd`, `[modules.renew] command`) may run by default.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(300);
/// Lifetime, in days, of the certificates a local CA issues unless told otherwise.
pub const DEFAULT_DAYS: u32 = 365;
/// The same for a bootstrap identity: it must outlast the node's time in storage before its
/// first power-on (manufacturer identities commonly live decades); 25 years.
pub const BOOTSTRAP_DAYS: u32 = 9125;
/// Default subject template: `{node}` is the node id, `{type}` the certificate type.
pub const DEFAULT_SUBJECT: &str = "CN={node},OU={type}";
/// Subscribers of one kind of event, and the events each may fall behind before it is dropped.
pub const MAX_SUBSCRIBERS: usize = 256;
pub const SUBSCRIBER_BACKLOG: usize = 64;

/// How long a new connection may take to send its hello by default.
pub const DEFAULT_HELLO_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_FRAME_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;
pub const DEFAULT_CONNECTIONS_PER_UID: usize = 32;
pub const DEFAULT_SUBSCRIPTIONS_PER_UID: usize = 16;
/// Of each kind's subscriber slots, those only admitted peers may take.
pub const DEFAULT_RESERVED_SUBSCRIPTIONS: usize = 64;
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// What one local user who is not admitted to the protected socket may hold on the public
/// socket, so that no such user can starve iamd, its admitted clients or the node link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaConfig {
    /// Connections one such uid may have open at once.
    pub connections_per_uid: usize,
    /// Subscriptions (of every kind together) one such uid may hold at once.
    pub subscriptions_per_uid: usize,
    /// Of each socket's `max_connections`, the places such users together cannot take.
    pub reserved_connections: usize,
    /// Of each event kind's subscriber slots, the ones such users together cannot take.
    pub reserved_subscriptions: usize,
    /// A connection of such a user that neither asks nor subscribes for this long is closed.
    pub idle_timeout: Duration,
}

impl QuotaConfig {
    fn defaults(max_connections: usize) -> Self {
        QuotaConfig {
            connections_per_uid: DEFAULT_CONNECTIONS_PER_UID,
            subscriptions_per_uid: DEFAULT_SUBSCRIPTIONS_PER_UID,
            reserved_connections: max_connections / 8,
            reserved_subscriptions: DEFAULT_RESERVED_SUBSCRIPTIONS,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }
}
/// How long a hook may run by default before it is stopped and its step fails.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hooks {
    pub start: Option<Vec<String>>,
    pub disk_encryption: Option<Vec<String>>,
    pub finish: Option<Vec<String>>,
    pub deprovision: Option<Vec<String>>,
    pub timeout: Duration,
}

/// Alerts (`[alerts]`): when certificates cross their thresholds, and who is told besides the
/// log and `SubscribeAlerts` subscribers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertsConfig {
    pub warning_days: u32,
    pub critical_days: u32,
    /// How often the current certificates are looked at (and at once when they change).
    pub interval: Duration,
    /// Run once per alert, the alert on its stdin as one JSON object (an LED, a diagnostic
    /// agent); within `hooks.timeout`.
    pub hook: Option<Vec<String>>,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            warning_days: 30,
            critical_days: 7,
            interval: Duration::from_secs(3600),
            hook: None,
        }
    }
}

impl Default for Hooks {
    fn default() -> Self {
        Hooks {
            start: None,
            disk_encryption: None,
            finish: None,
            deprovision: None,
            timeout: DEFAULT_HOOK_TIMEOUT,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Attributes reported in NodeInfo (`[node.attributes]`), in configuration order.
    pub attributes: Vec<(String, String)>,
    /// Partitions reported in NodeInfo with their sizes (`[[node.partitions]]`).
    pub partitions: Vec<PartitionConfig>,
    pub identity: IdentityConfig,
    pub permissions: PermissionsConfig,
    pub node_id: String,
    /// Where the id came from (`node.id`, `dmi:product_serial`, `file:/etc/…`), for messages.
    pub node_id_source: String,
    pub node_name: String,
    pub node_type: String,
    /// The unit this node belongs to (`node.unit_id`): secrets derived for each secondary
    /// from the provisioning password are bound to it.
    pub unit_id: String,
    pub role: Role,
    pub links: LinksConfig,
    pub reconcile: ReconcileConfig,
    pub working_dir: PathBuf,
    pub root_ca: Option<PathBuf>,
    /// Certificate revocation lists (`paths.crl`, PEM or DER files), read at each use: by
    /// ApplyCert and by both ends of a link at each handshake.
    pub crl: Vec<PathBuf>,
    pub public_socket: PathBuf,
    pub protected_socket: PathBuf,
    pub protected_socket_mode: u32,
    pub protected_socket_group: Option<u32>,
    pub allowed_uids: Vec<u32>,
    pub allowed_gids: Vec<u32>,
    pub marker_file: PathBuf,
    pub body_limit: u32,
    /// How long a new connection may take to complete its hello before it is closed.
    pub hello_timeout: Duration,
    /// How long the rest of a frame may take once its first byte has come.
    pub frame_timeout: Duration,
    /// How long a peer that does not read may hold up one write before it is dropped.
    pub write_timeout: Duration,
    /// Connections served at once per socket; more are refused with an error.
    pub max_connections: usize,
    pub quotas: QuotaConfig,
    pub hooks: Hooks,
    pub modules: Vec<ModuleConfig>,
    pub enroll: Option<EnrollConfig>,
    pub alerts: AlertsConfig,
    /// `[scep] allow_des3`: SCEP exchanges fall back to DES3 where a server announces no
    /// AES. Off by default: GetCACaps is plain HTTP, and editing it would be a downgrade.
    pub scep_allow_des3: bool,
}

/// The CRL files checked with: `crl`, and `main_crl` once iam-nodelink has written it.
pub fn crl_files(crl: &[PathBuf], main_crl: Option<&Path>) -> Vec<PathBuf> {
    let mut files = crl.to_vec();
    files.extend(main_crl.filter(|p| p.exists()).map(Path::to_path_buf));
    files
}

impl Config {
    /// The CRL files this node checks with now ([`crl_files`]).
    pub fn crl_files(&self) -> Vec<PathBuf> {
        crl_files(&self.crl, self.links.main_crl.as_deref())
    }

    pub fn db_path(&self) -> PathBuf {
        self.working_dir.join(DB_FILE)
    }
    /// The deployed marker ([`DEPLOYED_FILE`]), beside `marker_file`.
    pub fn deployed_marker(&self) -> PathBuf {
        self.marker_file.with_file_name(DEPLOYED_FILE)
    }
    pub fn module(&self, id: &str) -> Option<&ModuleConfig> {
        self.modules.iter().find(|m| m.id == id)
    }

    /// Load `path` and the `config.d/*.toml` beside it, the node id read from its source.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::load_reading_id(path, true)
    }

    /// The same for a client (iam-nodelink, iam-certctl), which asks iamd for the node id: its
    /// source is checked but not read (DMI serials are for root alone, commands are iamd's to
    /// run); `node_id` is empty.
    pub fn load_for_client(path: &Path) -> Result<Config, ConfigError> {
        Self::load_reading_id(path, false)
    }

    fn load_reading_id(path: &Path, read_id: bool) -> Result<Config, ConfigError> {
        let mut files = vec![path.to_path_buf()];
        let dropin = path.parent().unwrap_or(Path::new(".")).join("config.d");
        if let Ok(entries) = std::fs::read_dir(&dropin) {
            let mut extra: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect();
            extra.sort();
            files.extend(extra);
        }
        let mut sources = Vec::new();
        for f in &files {
            let text = std::fs::read_to_string(f).map_err(|e| ConfigError {
                line: None,
                file: f.display().to_string(),
                key: String::new(),
                reason: format!("cannot read: {e}"),
            })?;
            sources.push((f.display().to_string(), text));
        }
        Self::merged(&sources, read_id)
    }

    /// Parse and merge sources given as (file name, text), in order.
    pub fn from_sources(sources: &[(String, String)]) -> Result<Config, ConfigError> {
        Self::merged(sources, true)
    }

    fn merged(sources: &[(String, String)], read_id: bool) -> Result<Config, ConfigError> {
        let mut merged = Table::new();
        let mut origin = Origins::default();
        for (file, text) in sources {
            let table: Table = text.parse().map_err(|e: toml::de::Error| ConfigError {
                line: e.span().map(|r| line_of(text, r.start)),
                file: file.clone(),
                key: String::new(),
                reason: format!("not valid TOML: {}", e.message()),
            })?;
            let lines = key_lines(text);
            let at = Source { file, lines: &lines };
            merge(&mut merged, table, ("", ""), &at, &mut origin);
        }
        let first = sources.first().map(|s| s.0.clone()).unwrap_or_default();
        let mut root = Reader {
            table: merged,
            path: String::new(),
            origin: &origin,
            default_file: first,
        };
        parse(&mut root, read_id)
    }
}

/// Where each key of the merged tree came from: its file, and its line there.
#[derive(Default)]
struct Origins(BTreeMap<String, (String, Option<usize>)>);

/// One source being merged: its name and the line of each of its keys (its own paths).
struct Source<'a> {
    file: &'a str,
    lines: &'a BTreeMap<String, usize>,
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// The line of every key path of one file (`modules[0].pkcs11.library`), from the spans of
/// toml's parser.
fn key_lines(text: &str) -> BTreeMap<String, usize> {
    use toml::de::{DeTable, DeValue};
    fn walk(text: &str, path: &str, t: &DeTable, out: &mut BTreeMap<String, usize>) {
        for (k, v) in t.iter() {
            let p = join(path, k.get_ref());
            out.insert(p.clone(), line_of(text, k.span().start));
            value(text, &p, v, out);
        }
    }
    fn value(text: &str, path: &str, v: &toml::Spanned<DeValue>, out: &mut BTreeMap<String, usize>) {
        match v.get_ref() {
            DeValue::Table(t) => walk(text, path, t, out),
            DeValue::Array(a) => {
                for (i, item) in a.iter().enumerate() {
                    let p = format!("{path}[{i}]");
                    out.entry(p.clone()).or_insert(line_of(text, item.span().start));
                    value(text, &p, item, out);
                }
            }
            _ => {}
        }
    }
    let mut out = BTreeMap::new();
    if let Ok(t) = DeTable::parse(text) {
        walk(text, "", t.get_ref(), &mut out);
    }
    out
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Merge `from` (one file's table at `local` there) into `into` (at `path` in the merged
/// tree): tables merge key by key, arrays append.
fn merge(into: &mut Table, from: Table, (path, local): (&str, &str), src: &Source, origin: &mut Origins) {
    for (k, v) in from {
        let (p, l) = (join(path, &k), join(local, &k));
        match (into.get_mut(&k), v) {
            (Some(Value::Table(a)), Value::Table(b)) => merge(a, b, (&p, &l), src, origin),
            (Some(Value::Array(a)), Value::Array(b)) => {
                for (i, item) in b.into_iter().enumerate() {
                    mark(&format!("{p}[{}]", a.len()), &format!("{l}[{i}]"), &item, src, origin);
                    a.push(item);
                }
            }
            (_, v) => {
                mark(&p, &l, &v, src, origin);
                into.insert(k, v);
            }
        }
    }
}

fn mark(path: &str, local: &str, v: &Value, src: &Source, origin: &mut Origins) {
    origin
        .0
        .insert(path.to_string(), (src.file.to_string(), src.lines.get(local).copied()));
    match v {
        Value::Table(t) => t
            .iter()
            .for_each(|(k, v)| mark(&join(path, k), &join(local, k), v, src, origin)),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .for_each(|(i, v)| mark(&format!("{path}[{i}]"), &format!("{local}[{i}]"), v, src, origin)),
        _ => {}
    }
}

/// One table of the merged tree, read key by key; what is left at the end is unknown.
struct Reader<'a> {
    table: Table,
    path: String,
    origin: &'a Origins,
    default_file: String,
}

impl<'a> Reader<'a> {
    fn err(&self, key: &str, reason: impl Into<String>) -> ConfigError {
        let key = join(&self.path, key);
        let (file, line) = self
            .origin
            .0
            .get(&key)
            .or_else(|| self.origin.0.get(&self.path))
            .cloned()
            .unwrap_or_else(|| (self.default_file.clone(), None));
        ConfigError {
            file,
            line,
            key,
            reason: reason.into(),
        }
    }

    fn take(&mut self, key: &str) -> Option<Value> {
        self.table.remove(key)
    }

    fn string(&mut self, key: &str) -> Result<Option<String>, ConfigError> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::String(s)) if !s.is_empty() => Ok(Some(s)),
            Some(Value::String(_)) => Err(self.err(key, "must not be empty")),
            Some(v) => Err(self.err(key, format!("must be a string, not {}", v.type_str()))),
        }
    }

    fn required_string(&mut self, key: &str) -> Result<String, ConfigError> {
        self.string(key)?.ok_or_else(|| self.err(key, "is required"))
    }

    fn path(&mut self, key: &str) -> Result<Option<PathBuf>, ConfigError> {
        Ok(self.string(key)?.map(PathBuf::from))
    }

    fn bool(&mut self, key: &str, default: bool) -> Result<bool, ConfigError> {
        Ok(self.opt_bool(key)?.unwrap_or(default))
    }

    /// A boolean whose absence means something of its own.
    fn opt_bool(&mut self, key: &str) -> Result<Option<bool>, ConfigError> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Boolean(b)) => Ok(Some(b)),
            Some(v) => Err(self.err(key, format!("must be true or false, not {}", v.type_str()))),
        }
    }

    fn uint(&mut self, key: &str, max: u64) -> Result<Option<u64>, ConfigError> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Integer(i)) if i >= 0 && (i as u64) <= max => Ok(Some(i as u64)),
            Some(Value::Integer(i)) => Err(self.err(key, format!("{i} is out of range 0..={max}"))),
            Some(v) => Err(self.err(key, format!("must be an integer, not {}", v.type_str()))),
        }
    }

    fn strings(&mut self, key: &str) -> Result<Option<Vec<String>>, ConfigError> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Array(a)) => a
                .into_iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::String(s) => Ok(s),
                    v => Err(self.err(
                        &format!("{key}[{i}]"),
                        format!("must be a string, not {}", v.type_str()),
                    )),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(v) => Err(self.err(key, format!("must be an array of strings, not {}", v.type_str()))),
        }
    }

    fn uints(&mut self, key: &str) -> Result<Vec<u32>, ConfigError> {
        match self.take(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(a)) => a
                .into_iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::Integer(n) if (0..=u32::MAX as i64).contains(&n) => Ok(n as u32),
                    v => Err(self.err(
                        &format!("{key}[{i}]"),
                        format!("must be a non-negative integer, not {v}"),
                    )),
                })
                .collect(),
            Some(v) => Err(self.err(key, format!("must be an array of integers, not {}", v.type_str()))),
        }
    }

    fn sub(&mut self, key: &str) -> Result<Option<Reader<'a>>, ConfigError> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Table(t)) => Ok(Some(self.child(join(&self.path, key), t))),
            Some(v) => Err(self.err(key, format!("must be a table, not {}", v.type_str()))),
        }
    }

    fn child(&self, path: String, table: Table) -> Reader<'a> {
        Reader {
            table,
            path,
            origin: self.origin,
            default_file: self.default_file.clone(),
        }
    }

    fn tables(&mut self, key: &str) -> Result<Vec<Reader<'a>>, ConfigError> {
        match self.take(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(a)) => a
                .into_iter()
                .enumerate()
                .map(|(i, v)| {
                    let p = format!("{}[{i}]", join(&self.path, key));
                    match v {
                        Value::Table(t) => Ok(self.child(p, t)),
                        v => Err(self.err(&format!("{key}[{i}]"), format!("must be a table, not {}", v.type_str()))),
                    }
                })
                .collect(),
            Some(v) => Err(self.err(
                key,
                format!("must be an array of tables ([[{key}]]), not {}", v.type_str()),
            )),
        }
    }

    /// Every key not read so far is unknown.
    fn finish(self) -> Result<(), ConfigError> {
        match self.table.keys().next() {
            Some(k) => Err(self.err(k, "unknown key")),
            None => Ok(()),
        }
    }
}

fn argv(r: &mut Reader, key: &str) -> Result<Option<Vec<String>>, ConfigError> {
    let v = r.strings(key)?;
    if v.as_ref().is_some_and(|a| a.is_empty() || a[0].is_empty()) {
        return Err(r.err(
            key,
            "must name a command: a non-empty array whose first item is the program",
        ));
    }
    Ok(v)
}

fn valid_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn mode(r: &mut Reader, key: &str, default: u32) -> Result<u32, ConfigError> {
    match r.take(key) {
        None => Ok(default),
        Some(Value::String(s)) => u32::from_str_radix(&s, 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| r.err(key, format!("\"{s}\" is not an octal file mode such as \"0660\""))),
        Some(v) => Err(r.err(
            key,
            format!("must be an octal string such as \"0660\", not {}", v.type_str()),
        )),
    }
}

/// The node's id: `node.id` as given, or read from `node.id_file` or the first of
/// `node.id_source` that gives one (a string or a list of them), or by default from the
/// hardware ([`hwid::DEFAULT_SOURCES`]); with the source it came from, for messages.
fn node_id(node: &mut Reader, read_id: bool) -> Result<(String, String), ConfigError> {
    use crate::sys::hwid::{self, IdSource};
    let sources = match node.take("id_source") {
        None => None,
        Some(Value::String(s)) => Some(vec![s]),
        Some(Value::Array(a)) if !a.is_empty() => Some(
            a.into_iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s),
                    v => Err(node.err("id_source", format!("must list strings, not {}", v.type_str()))),
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
        Some(_) => return Err(node.err("id_source", "must be a source or a non-empty list of sources")),
    };
    let (id, file) = (node.string("id")?, node.path("id_file")?);
    if [id.is_some(), file.is_some(), sources.is_some()]
        .iter()
        .filter(|g| **g)
        .count()
        > 1
    {
        return Err(node.err("id_source", "give one of node.id, node.id_file and node.id_source"));
    }
    if let Some(id) = id {
        return Ok((id, "node.id".into()));
    }
    let defaulted = file.is_none() && sources.is_none();
    let (key, names) = match (file, sources) {
        (Some(f), _) => ("id_file", vec![format!("file:{}", f.display())]),
        (None, Some(s)) => ("id_source", s),
        (None, None) => ("id_source", hwid::DEFAULT_SOURCES.map(str::to_string).to_vec()),
    };
    let parsed = names
        .iter()
        .map(|s| IdSource::parse(s).map_err(|e| node.err(key, e)))
        .collect::<Result<Vec<_>, _>>()?;
    if !read_id {
        return Ok((String::new(), "not read by this program".into()));
    }
    match hwid::first(&parsed, Path::new(hwid::ROOT)) {
        Ok((id, from)) => Ok((id, from.to_string())),
        Err(why) if defaulted => Err(node.err(
            key,
            format!(
                "no hardware id found ({why}); name the node's id source (node.id_source: machine-id, \
                 file:PATH or command:PROGRAM for a node without one)"
            ),
        )),
        Err(why) => Err(node.err(key, format!("no node id: {why}"))),
    }
}

fn parse(root: &mut Reader, read_id: bool) -> Result<Config, ConfigError> {
    let mut node = root.sub("node")?.ok_or_else(|| root.err("node", "is required"))?;
    let (node_id, node_id_source) = node_id(&mut node, read_id)?;
    if node_id.len() > crate::proto::wire::MAX_NAME_LEN {
        return Err(node.err("id", format!("longer than {} bytes", crate::proto::wire::MAX_NAME_LEN)));
    }
    let node_name = node.string("name")?.unwrap_or_else(|| node_id.clone());
    let node_type = node.string("type")?.unwrap_or_else(|| "main".into());
    let unit_id = node.string("unit_id")?.unwrap_or_default();
    if unit_id.len() > crate::proto::wire::MAX_NAME_LEN
        || !unit_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return Err(node.err(
            "unit_id",
            format!(
                "must be at most {} letters, digits, dots, dashes and underscores",
                crate::proto::wire::MAX_NAME_LEN
            ),
        ));
    }
    let role = match node.string("role")?.as_deref() {
        None | Some("main") => Role::Main,
        Some("secondary") => Role::Secondary,
        Some(r) => return Err(node.err("role", format!("\"{r}\" is not one of main, secondary"))),
    };
    let mut attributes = Vec::new();
    if let Some(mut a) = node.sub("attributes")? {
        let keys: Vec<String> = a.table.keys().cloned().collect();
        for k in keys {
            // Values may be empty: `MainNode = ""` is an attribute by its name alone.
            match a.take(&k) {
                Some(Value::String(v)) => attributes.push((k, v)),
                Some(v) => return Err(a.err(&k, format!("must be a string, not {}", v.type_str()))),
                None => {}
            }
        }
        a.finish()?;
    }
    let mut partitions = Vec::new();
    for mut p in node.tables("partitions")? {
        let name = p.required_string("name")?;
        let path = p.path("path")?.ok_or_else(|| p.err("path", "is required"))?;
        let types = p.strings("types")?.unwrap_or_default();
        p.finish()?;
        partitions.push(PartitionConfig { name, path, types });
    }
    node.finish()?;

    let identity = match root.sub("identity")? {
        Some(mut i) => {
            let identity = IdentityConfig {
                system_id_file: i.path("system_id_file")?,
                unit_model_file: i.path("unit_model_file")?,
                subjects_file: i.path("subjects_file")?,
                poll_interval: match i.uint("poll_interval", 3600)? {
                    Some(0) => return Err(i.err("poll_interval", "must be at least 1 second")),
                    Some(t) => Duration::from_secs(t),
                    None => DEFAULT_IDENTITY_POLL,
                },
            };
            i.finish()?;
            identity
        }
        None => IdentityConfig::default(),
    };

    let permissions = match root.sub("permissions")? {
        Some(mut p) => {
            let c = PermissionsConfig {
                persist: p.bool("persist", false)?,
                max_instances: p
                    .uint("max_instances", 1 << 20)?
                    .map(|n| n as usize)
                    .unwrap_or(DEFAULT_MAX_INSTANCES),
            };
            p.finish()?;
            c
        }
        None => PermissionsConfig::default(),
    };

    let mut paths = root
        .sub("paths")?
        .unwrap_or_else(|| root.child("paths".into(), Table::new()));
    let working_dir = paths
        .path("working_dir")?
        .unwrap_or_else(|| PathBuf::from(DEFAULT_WORKING_DIR));
    let root_ca = paths.path("root_ca")?;
    let crl: Vec<PathBuf> = paths
        .strings("crl")?
        .unwrap_or_default()
        .into_iter()
        .map(PathBuf::from)
        .collect();
    let public_socket = paths
        .path("public_socket")?
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PUBLIC_SOCKET));
    let protected_socket = paths
        .path("protected_socket")?
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PROTECTED_SOCKET));
    let protected_socket_mode = mode(&mut paths, "protected_socket_mode", DEFAULT_PROTECTED_MODE)?;
    let protected_socket_group = paths.uint("protected_socket_group", u32::MAX as u64)?.map(|g| g as u32);
    let allowed_uids = paths.uints("allowed_uids")?;
    let allowed_gids = paths.uints("allowed_gids")?;
    let marker_file = paths
        .path("provisioned_marker")?
        .unwrap_or_else(|| working_dir.join(MARKER_FILE));
    paths.finish()?;
    if public_socket == protected_socket {
        return Err(root.err("paths.protected_socket", "must differ from paths.public_socket"));
    }

    let mut l = root
        .sub("limits")?
        .unwrap_or_else(|| root.child("limits".into(), Table::new()));
    let body_limit = l
        .uint("body_limit", 16 * 1024 * 1024)?
        .map(|b| b as u32)
        .unwrap_or(crate::proto::wire::DEFAULT_BODY_LIMIT);
    if body_limit < 4096 {
        return Err(l.err("body_limit", "must be at least 4096 bytes"));
    }
    let hello_timeout = seconds(&mut l, "hello_timeout", 3600, DEFAULT_HELLO_TIMEOUT)?;
    let frame_timeout = seconds(&mut l, "frame_timeout", 3600, DEFAULT_FRAME_TIMEOUT)?;
    let write_timeout = seconds(&mut l, "write_timeout", 3600, DEFAULT_WRITE_TIMEOUT)?;
    let max_connections = match l.uint("max_connections", 65536)? {
        Some(0) => return Err(l.err("max_connections", "must be at least 1")),
        Some(n) => n as usize,
        None => DEFAULT_MAX_CONNECTIONS,
    };
    let mut quotas = QuotaConfig::defaults(max_connections);
    for (key, value) in [
        ("connections_per_uid", &mut quotas.connections_per_uid),
        ("subscriptions_per_uid", &mut quotas.subscriptions_per_uid),
    ] {
        match l.uint(key, 65536)? {
            Some(0) => return Err(l.err(key, "must be at least 1")),
            Some(n) => *value = n as usize,
            None => {}
        }
    }
    if let Some(n) = l.uint("reserved_connections", 65536)? {
        if n as usize >= max_connections {
            return Err(l.err(
                "reserved_connections",
                format!("must be less than max_connections ({max_connections})"),
            ));
        }
        quotas.reserved_connections = n as usize;
    }
    let subscribers = MAX_SUBSCRIBERS;
    if let Some(n) = l.uint("reserved_subscriptions", 65536)? {
        if n as usize >= subscribers {
            return Err(l.err(
                "reserved_subscriptions",
                format!("must be less than the {subscribers} subscribers of each kind"),
            ));
        }
        quotas.reserved_subscriptions = n as usize;
    }
    quotas.idle_timeout = seconds(&mut l, "idle_timeout", 24 * 3600, DEFAULT_IDLE_TIMEOUT)?;
    l.finish()?;

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

    let scep_allow_des3 = match root.sub("scep")? {
        Some(mut s) => {
            let allow = s.bool("allow_des3", false)?;
            s.finish()?;
            allow
        }
        None => false,
    };

    let links = match root.sub("links")? {
        Some(l) => parse_links(l, role)?,
        None => LinksConfig::default(),
    };

    let hooks = match root.sub("hooks")? {
        Some(mut h) => {
            let hooks = Hooks {
                start: argv(&mut h, "start")?,
                disk_encryption: argv(&mut h, "disk_encryption")?,
                finish: argv(&mut h, "finish")?,
                deprovision: argv(&mut h, "deprovision")?,
                timeout: match h.uint("timeout", 24 * 3600)? {
                    Some(0) => return Err(h.err("timeout", "must be at least 1 second")),
                    Some(t) => Duration::from_secs(t),
                    None => DEFAULT_HOOK_TIMEOUT,
                },
            };
            h.finish()?;
            hooks
        }
        None => Hooks::default(),
    };

    let alerts = match root.sub("alerts")? {
        Some(mut a) => {
            let d = AlertsConfig::default();
            let warning_days = a.uint("warning_days", 3650)?.map_or(d.warning_days, |n| n as u32);
            let critical_days = a.uint("critical_days", 3650)?.map_or(d.critical_days, |n| n as u32);
            if critical_days > warning_days {
                return Err(a.err(
                    "critical_days",
                    format!("must not exceed warning_days ({warning_days})"),
                ));
            }
            let alerts = AlertsConfig {
                warning_days,
                critical_days,
                interval: seconds(&mut a, "interval", 24 * 3600, d.interval)?,
                hook: argv(&mut a, "hook")?,
            };
            a.finish()?;
            alerts
        }
        None => AlertsConfig::default(),
    };

    let mut modules: Vec<ModuleConfig> = Vec::new();
    let mut token_pins: BTreeMap<(PathBuf, TokenSelector), (PathBuf, bool)> = BTreeMap::new();
    for mut m in root.tables("modules")? {
        let module = parse_module(&mut m, &working_dir)?;
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
            m.uri_names.push(unit_uri(&unit_id));
        }
        if role == Role::Secondary {
            m.extended_key_usage.retain(|e| *e != Eku::ServerAuth);
            m.forbidden_ekus.push(Eku::ServerAuth);
        }
    }
    let enroll = match root.sub("enroll")? {
        Some(mut e) => {
            let c = parse_enroll(&mut e, &working_dir, &modules)?;
            e.finish()?;
            Some(c)
        }
        None => None,
    };
    root.table.remove("node");
    let rest = std::mem::take(&mut root.table);
    root.child(String::new(), rest).finish()?;

    Ok(Config {
        node_id,
        node_id_source,
        node_name,
        node_type,
        unit_id,
        role,
        links,
        reconcile,
        working_dir,
        root_ca,
        crl,
        public_socket,
        protected_socket,
        protected_socket_mode,
        protected_socket_group,
        allowed_uids,
        allowed_gids,
        marker_file,
        body_limit,
        hello_timeout,
        frame_timeout,
        write_timeout,
        max_connections,
        quotas,
        hooks,
        modules,
        attributes,
        partitions,
        identity,
        permissions,
        enroll,
        scep_allow_des3,
        alerts,
    })
}

/// A certificate's SHA-256 fingerprint, if `key` is there.
fn fingerprint(r: &mut Reader, key: &str) -> Result<Option<Fingerprint>, ConfigError> {
    match r.string(key)? {
        Some(text) => Fingerprint::parse(&text)
            .map(Some)
            .ok_or_else(|| r.err(key, format!("must be {}", Fingerprint::SYNTAX))),
        None => Ok(None),
    }
}

fn duration_or(r: &mut Reader, key: &str, default: Duration) -> Result<Duration, ConfigError> {
    match r.string(key)? {
        None => Ok(default),
        Some(t) => parse_duration(&t).filter(|d| !d.is_zero()).ok_or_else(|| {
            r.err(
                key,
                format!("\"{t}\" is not a duration such as \"90s\", \"15m\", \"1h\", \"30d\""),
            )
        }),
    }
}

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

fn seconds(r: &mut Reader, key: &str, max: u64, default: Duration) -> Result<Duration, ConfigError> {
    match r.uint(key, max)? {
        Some(0) => Err(r.err(key, "must be at least 1 second")),
        Some(t) => Ok(Duration::from_secs(t)),
        None => Ok(default),
    }
}

fn parse_links(mut l: Reader, role: Role) -> Result<LinksConfig, ConfigError> {
    use crate::proto::transport::LinkAddr;
    let mut listen = Vec::new();
    for (i, a) in l.strings("listen")?.unwrap_or_default().into_iter().enumerate() {
        let key = format!("listen[{i}]");
        let addr = LinkAddr::parse_listen(&a).map_err(|e| l.err(&key, e))?;
        if listen.contains(&addr) {
            return Err(l.err(&key, format!("\"{a}\" is listed twice")));
        }
        listen.push(addr);
    }
    // Listeners with an admission list: `[[links.listener]]` with its address, the node
    // ids that may register on it and, for vsock, the CIDs they may come from.
    let mut admission = Vec::new();
    for mut t in l.tables("listener")? {
        let a = t.string("address")?.ok_or_else(|| t.err("address", "is required"))?;
        let addr = LinkAddr::parse_listen(&a).map_err(|e| t.err("address", e))?;
        if listen.contains(&addr) {
            return Err(t.err("address", format!("\"{a}\" is listed twice")));
        }
        let nodes = t.strings("nodes")?.unwrap_or_default();
        let cids = t.uints("cids")?;
        if !cids.is_empty() && !matches!(addr, LinkAddr::Vsock { .. }) {
            return Err(t.err("cids", "only a vsock listener has peers by CID"));
        }
        t.finish()?;
        listen.push(addr.clone());
        admission.push(Admission { addr, nodes, cids });
    }
    if role == Role::Secondary && !listen.is_empty() {
        return Err(l.err(
            "listen",
            "only the main node accepts links (node.role is \"secondary\")",
        ));
    }
    let connect = match l.string("connect")? {
        Some(a) => Some(LinkAddr::parse_connect(&a).map_err(|e| l.err("connect", e))?),
        None => None,
    };
    if role == Role::Main && connect.is_some() {
        return Err(l.err(
            "connect",
            "only a secondary node dials the main node (node.role is \"main\")",
        ));
    }
    let tls = match l.string("tls")?.as_deref() {
        None | Some("auto") => LinkTls::Auto,
        Some("required") => LinkTls::Required,
        Some("off") => LinkTls::Off,
        Some(t) => return Err(l.err("tls", format!("\"{t}\" is not one of auto, required, off"))),
    };
    if tls == LinkTls::Off && listen.iter().chain(connect.iter()).any(LinkAddr::is_tcp) {
        return Err(l.err("tls", "\"off\" is refused: links over TCP always use TLS"));
    }
    let tunnel = l.path("tunnel")?;
    if tunnel.is_some() && role == Role::Main {
        return Err(l.err(
            "tunnel",
            "only a secondary node reaches its servers through a link (node.role is \"main\")",
        ));
    }
    let main_crl = l.path("main_crl")?;
    if main_crl.is_some() && role == Role::Main {
        return Err(l.err(
            "main_crl",
            "only a secondary node is handed the main node's CRLs (node.role is \"main\")",
        ));
    }
    let mut tunnel_endpoints = Vec::new();
    for (i, e) in l
        .strings("tunnel_endpoints")?
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        let key = format!("tunnel_endpoints[{i}]");
        if role == Role::Secondary {
            return Err(l.err(&key, "only the main node carries tunnels (node.role is \"secondary\")"));
        }
        let endpoint = endpoint(&e).map_err(|why| l.err(&key, why))?;
        if tunnel_endpoints.contains(&endpoint) {
            return Err(l.err(&key, format!("\"{e}\" is listed twice")));
        }
        tunnel_endpoints.push(endpoint);
    }
    let c = LinksConfig {
        listen,
        connect,
        tls,
        identity: l.string("identity")?.unwrap_or_else(|| DEFAULT_LINK_IDENTITY.into()),
        request_timeout: seconds(&mut l, "request_timeout", 24 * 3600, DEFAULT_REQUEST_TIMEOUT)?,
        long_request_timeout: seconds(&mut l, "long_request_timeout", 24 * 3600, DEFAULT_LONG_REQUEST_TIMEOUT)?,
        // 0 turns the keepalive off.
        keepalive: match l.uint("keepalive", 3600)? {
            Some(0) => None,
            Some(t) => Some(Duration::from_secs(t)),
            None => Some(DEFAULT_KEEPALIVE),
        },
        status_file: l
            .path("status_file")?
            .unwrap_or_else(|| PathBuf::from(DEFAULT_NODELINK_STATUS)),
        signer_uids: l.uints("signer_uids")?,
        main_node_id: l.string("main_node_id")?,
        admission,
        tunnel,
        tunnel_endpoints,
        main_crl,
    };
    l.finish()?;
    Ok(c)
}

/// An endpoint as `links.tunnel_endpoints` and TunnelOpen name it: `host:port`, the host in
/// lower case (an IPv6 address in brackets), the port 1 to 65535.
pub fn endpoint(text: &str) -> std::result::Result<String, String> {
    let t = text.trim();
    let Some((host, port)) = t.rsplit_once(':') else {
        return Err(format!("\"{t}\" is not host:port"));
    };
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => return Err(format!("\"{t}\": the port must be 1 to 65535")),
    }
    let bracketed = host.starts_with('[') && host.ends_with(']') && host.len() > 2;
    let name_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_');
    let ipv6 = bracketed && host[1..host.len() - 1].parse::<std::net::Ipv6Addr>().is_ok();
    if !(name_ok || ipv6) {
        return Err(format!("\"{t}\": \"{host}\" is not a host name or address"));
    }
    Ok(format!("{}:{port}", host.to_ascii_lowercase()))
}

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
    use super::*;

    const BASE: &str = r#"
[node]
id = "node0"
[paths]
working_dir = "/tmp/w"
root_ca = "/tmp/root.pem"
[[modules]]
id = "iam"
store = "pkcs11"
extended_key_usage = ["clientAuth", "serverAuth"]
[modules.pkcs11]
library = "/usr/lib/softhsm/libsofthsm2.so"
token_label = "aos"
user_pin_file = "/tmp/w/pin"
"#;

    fn load(extra: &[&str]) -> Result<Config, ConfigError> {
        let mut s = vec![("config.toml".to_string(), BASE.to_string())];
        for (i, e) in extra.iter().enumerate() {
            s.push((format!("config.d/{i}.toml"), e.to_string()));
        }
        Config::from_sources(&s)
    }

    #[test]
    fn the_node_id_comes_from_one_source_normalised_or_the_configuration_says_why_not() {
        let with =
            |node: &str| Config::from_sources(&[("config.toml".to_string(), BASE.replace("id = \"node0\"\n", node))]);
        let file = std::env::temp_dir().join(format!("aos-iam-node-id-{}", std::process::id()));
        // A device tree's serial-number ends with a NUL.
        std::fs::write(&file, b"SN-0042\0").unwrap();
        let c = with(&format!("id_file = \"{}\"\n", file.display())).unwrap();
        assert_eq!(
            (c.node_id.as_str(), c.node_id_source.clone()),
            ("SN-0042", format!("file:{}", file.display()))
        );
        let c = with(&format!(
            "id_source = [\"dmi:board_serial\", \"file:{}\"]\n",
            file.display()
        ))
        .unwrap();
        assert_eq!(c.node_id, "SN-0042");
        std::fs::write(&file, b"00000000\n").unwrap();
        let e = with(&format!("id_source = \"file:{}\"\n", file.display())).unwrap_err();
        assert_eq!(e.key, "node.id_source");
        assert!(e.to_string().contains("placeholder"), "{e}");
        std::fs::remove_file(&file).unwrap();
        for (node, why) in [
            ("id_source = \"serial\"\n", "is not an id source"),
            ("id_source = []\n", "non-empty list"),
            ("id_source = [3]\n", "must list strings"),
        ] {
            let e = with(node).unwrap_err();
            assert!(e.key == "node.id_source" && e.to_string().contains(why), "{node}: {e}");
        }
        // A client does not read it (iamd does): the source is checked, not run.
        let failing = BASE.replace("id = \"node0\"\n", "id_source = \"command:/bin/false\"\n");
        assert!(Config::from_sources(&[("c".into(), failing.clone())]).is_err());
        let c = Config::merged(&[("c".into(), failing)], false).unwrap();
        assert!(c.node_id.is_empty());
        // Nothing named: the hardware's, never machine-id unless named.
        if !Path::new("/sys/class/dmi/id").exists() && !Path::new("/proc/device-tree").exists() {
            let e = with("").unwrap_err();
            assert!(e.to_string().contains("no hardware id found"), "{e}");
            assert!(!e.to_string().contains("machine-id:"), "{e}");
        }
    }

    #[test]
    fn trust_settings_parse_and_bad_ones_name_their_key() {
        let c = load(&[
            "[node]\nunit_id = \"unit-7\"\n[limits]\nconnections_per_uid = 4\nidle_timeout = 9\n",
            "[links]\nsigner_uids = [991]\n[[links.listener]]\naddress = \"vsock:8089\"\nnodes = [\"n1\"]\ncids = [4]\n",
        ])
        .unwrap();
        assert_eq!(c.unit_id, "unit-7");
        assert_eq!(c.quotas.connections_per_uid, 4);
        assert_eq!(c.quotas.idle_timeout, Duration::from_secs(9));
        assert_eq!(c.quotas.reserved_connections, DEFAULT_MAX_CONNECTIONS / 8);
        assert_eq!(c.links.signer_uids, [991]);
        assert!(!c.scep_allow_des3);
        assert!(load(&["[scep]\nallow_des3 = true\n"]).unwrap().scep_allow_des3);
        assert_eq!(c.links.admission[0].cids, [4]);
        assert!(c.links.listen.contains(&c.links.admission[0].addr));
        // The link identity carries the unit; on a main node it keeps serverAuth.
        let iam = c.module("iam").unwrap();
        assert_eq!(iam.uri_names, [unit_uri("unit-7")]);
        assert!(iam.forbidden_ekus.is_empty());
        for (text, key) in [
            ("[node]\nunit_id = \"a/b\"\n", "node.unit_id"),
            ("[limits]\nreserved_connections = 256\n", "limits.reserved_connections"),
            ("[limits]\nsubscriptions_per_uid = 0\n", "limits.subscriptions_per_uid"),
            ("[[links.listener]]\naddress = \"unix:/x\"\ncids = [3]\n", "cids"),
            ("[[links.listener]]\nnodes = []\n", "address"),
            ("[scep]\nallow_des3 = \"yes\"\n", "scep.allow_des3"),
            ("[node]\nid_source = \"machine-id\"\n", "node.id_source"),
            ("[scep]\nallow_des = true\n", "scep.allow_des"),
        ] {
            let e = load(&[text]).unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn base_config_parses_with_defaults() {
        let c = load(&[]).unwrap();
        assert_eq!(c.node_id, "node0");
        assert_eq!(c.public_socket, PathBuf::from(DEFAULT_PUBLIC_SOCKET));
        assert_eq!(c.protected_socket_mode, 0o660);
        assert_eq!(c.modules[0].algorithm, Algorithm::EcdsaP384);
        assert_eq!(c.modules[0].max_items, DEFAULT_MAX_ITEMS);
        assert_eq!(c.marker_file, PathBuf::from("/tmp/w/provisioned"));
    }

    #[test]
    fn dropins_merge_tables_and_append_arrays() {
        let c = load(&[
            "[node]\nname = \"main node\"\n",
            "[[modules]]\nid = \"sm\"\nstore = \"software\"\nalgorithm = \"ecdsa-p256\"\n",
        ])
        .unwrap();
        assert_eq!(c.node_name, "main node");
        assert_eq!(c.node_id, "node0");
        assert_eq!(
            c.modules.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
            ["iam", "sm"]
        );
        assert_eq!(
            c.modules[1].store,
            StoreConfig::Software {
                dir: PathBuf::from("/tmp/w/keys")
            }
        );
    }

    #[test]
    fn endpoints_are_host_and_port_in_one_form() {
        assert_eq!(endpoint("EST.Example:8443").unwrap(), "est.example:8443");
        assert_eq!(endpoint(" 127.0.0.1:443 ").unwrap(), "127.0.0.1:443");
        assert_eq!(endpoint("[::1]:8443").unwrap(), "[::1]:8443");
        for bad in [
            "est",
            "est:0",
            "est:70000",
            ":443",
            "a b:1",
            "[zz]:1",
            "est:443/x",
            "user@est:443",
        ] {
            assert!(endpoint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn links_are_read_for_the_role_and_checked() {
        let c = load(&[
            "[links]\nlisten = [\"unix:/run/l.sock\", \"vsock:5000\", \"tcp:0.0.0.0:8089\"]\nrequest_timeout = 5\n",
        ])
        .unwrap();
        assert_eq!(c.role, Role::Main);
        assert_eq!(c.links.listen.len(), 3);
        assert_eq!(c.links.request_timeout, Duration::from_secs(5));
        assert_eq!(c.links.long_request_timeout, DEFAULT_LONG_REQUEST_TIMEOUT);
        assert_eq!(c.links.tls, LinkTls::Auto);
        assert_eq!(c.links.keepalive, Some(DEFAULT_KEEPALIVE));
        let k = |v: &str| {
            load(&[&format!(
                "[node]\nrole = \"secondary\"\n[links]\nconnect = \"stdio\"\nkeepalive = {v}\n"
            )])
        };
        assert_eq!(k("5").unwrap().links.keepalive, Some(Duration::from_secs(5)));
        assert_eq!(k("0").unwrap().links.keepalive, None);
        assert!(k("-1").is_err());
        let c = load(&["[links]\ntunnel_endpoints = [\"EST.example:443\", \"[::1]:8443\"]\n"]).unwrap();
        assert_eq!(c.links.tunnel_endpoints, ["est.example:443", "[::1]:8443"]);
        let c = load(&["[node]\nrole = \"secondary\"\n[links]\ntunnel = \"/run/t.sock\"\n"]).unwrap();
        assert_eq!(c.links.tunnel, Some(PathBuf::from("/run/t.sock")));
        let c =
            load(&["[node]\nrole = \"secondary\"\n[links]\nconnect = \"vsock:2:5000\"\ntls = \"required\"\n"]).unwrap();
        assert_eq!(c.role, Role::Secondary);
        assert_eq!(
            c.links.connect,
            Some(crate::proto::transport::LinkAddr::Vsock { cid: 2, port: 5000 })
        );
        for (text, key, reason) in [
            (
                "[node]\nrole = \"secondary\"\n[links]\nlisten = [\"vsock:1\"]\n",
                "links.listen",
                "only the main node",
            ),
            (
                "[links]\nconnect = \"stdio\"\n",
                "links.connect",
                "only a secondary node",
            ),
            (
                "[links]\nlisten = [\"tcp:0.0.0.0:1\"]\ntls = \"off\"\n",
                "links.tls",
                "always use TLS",
            ),
            ("[links]\nlisten = [\"udp:1\"]\n", "links.listen[0]", "is not one of"),
            (
                "[links]\nlisten = [\"vsock:1\", \"vsock:1\"]\n",
                "links.listen[1]",
                "listed twice",
            ),
            (
                "[links]\nlisten = [\"vsock:1\"]\nidentity = \"nope\"\n",
                "links.identity",
                "names no certificate module",
            ),
            (
                "[links]\nrequest_timeout = 0\n",
                "links.request_timeout",
                "at least 1 second",
            ),
            ("[node]\nrole = \"leader\"\n", "node.role", "not one of main, secondary"),
            (
                "[links]\ntunnel = \"/run/t.sock\"\n",
                "links.tunnel",
                "only a secondary node",
            ),
            (
                "[node]\nrole = \"secondary\"\n[links]\ntunnel_endpoints = [\"est:443\"]\n",
                "links.tunnel_endpoints[0]",
                "only the main node carries tunnels",
            ),
            (
                "[links]\ntunnel_endpoints = [\"est:443\", \"EST:443\"]\n",
                "links.tunnel_endpoints[1]",
                "listed twice",
            ),
            (
                "[links]\ntunnel_endpoints = [\"https://est:443\"]\n",
                "links.tunnel_endpoints[0]",
                "is not a host name",
            ),
        ] {
            let e = load(&[text]).unwrap_err();
            assert_eq!(e.key, key, "{text}: {e}");
            assert!(e.reason.contains(reason), "{text}: {e}");
        }
    }

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

    #[test]
    fn unknown_key_names_file_and_key() {
        let e = load(&["[[modules]]\nid = \"x\"\nstore = \"software\"\ncolour = \"red\"\n"]).unwrap_err();
        assert_eq!(e.file, "config.d/0.toml");
        assert_eq!(e.key, "modules[1].colour");
        assert_eq!(e.reason, "unknown key");
        let e = load(&["[paths]\nsocket = \"/x\"\n"]).unwrap_err();
        assert_eq!((e.file.as_str(), e.key.as_str()), ("config.d/0.toml", "paths.socket"));
        let e = load(&["top = 1\n"]).unwrap_err();
        assert_eq!(e.key, "top");
    }

    #[test]
    fn errors_name_the_line_in_the_file_that_set_the_key() {
        // An unknown key in a drop-in's second [[modules]]: its own line there.
        let e = load(&["[node]\nname = \"n\"\n\n[[modules]]\nid = \"x\"\nstore = \"software\"\ncolour = \"red\"\n"])
            .unwrap_err();
        assert_eq!(
            (e.file.as_str(), e.line, e.key.as_str()),
            ("config.d/0.toml", Some(7), "modules[1].colour")
        );
        assert_eq!(e.to_string(), "config.d/0.toml:7: modules[1].colour: unknown key");
        // A bad value: the line of its key.
        let e = load(&["\n[limits]\nidle_timeout = 0\n"]).unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (Some(3), "limits.idle_timeout"));
        // A key that is missing: the line of the table it is missing from.
        let e = load(&["\n\n[[modules]]\nstore = \"software\"\n"]).unwrap_err();
        assert_eq!(
            (e.file.as_str(), e.line, e.key.as_str()),
            ("config.d/0.toml", Some(3), "modules[1].id")
        );
        // Not TOML at all: the line of the fault.
        let e = load(&["[node]\nname = \"n\"\nthis is not toml\n"]).unwrap_err();
        assert_eq!((e.file.as_str(), e.line), ("config.d/0.toml", Some(3)), "{e}");
        // The main file's keys keep their own lines.
        let text = format!("{BASE}\n[permissions]\nbogus = 1\n");
        let e = Config::from_sources(&[("c.toml".into(), text.clone())]).unwrap_err();
        assert_eq!(
            (e.line, e.key.as_str()),
            (Some(text.lines().count()), "permissions.bogus"),
            "{e}"
        );
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

    #[test]
    fn missing_keys_are_errors() {
        let e = Config::from_sources(&[(
            "c.toml".into(),
            "[[modules]]\nid = \"a\"\nstore = \"software\"\n".into(),
        )])
        .unwrap_err();
        assert_eq!(
            (e.file.as_str(), e.key.as_str(), e.reason.as_str()),
            ("c.toml", "node", "is required")
        );
        let e = load(&["[[modules]]\nid = \"p\"\n[modules.pkcs11]\nlibrary = \"/l\"\nuser_pin_file = \"/p\"\n"])
            .unwrap_err();
        assert_eq!(e.key, "modules[1].pkcs11.token_label");
        assert!(e.reason.contains("exactly one"), "{e}");
    }

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
    fn identity_permissions_attributes_and_partitions_parse() {
        let c = load(&[
            "[node.attributes]\nMainNode = \"\"\n[[node.partitions]]\nname = \"var\"\npath = \"/var\"\n\
                        [identity]\nsubjects_file = \"/s\"\npoll_interval = 3\n[permissions]\npersist = true\n",
        ])
        .unwrap();
        assert_eq!(c.attributes, [("MainNode".to_string(), String::new())]);
        assert_eq!(c.partitions[0].path, PathBuf::from("/var"));
        assert_eq!(c.identity.poll_interval, Duration::from_secs(3));
        assert_eq!(
            (c.permissions.persist, c.permissions.max_instances),
            (true, DEFAULT_MAX_INSTANCES)
        );
        let e = load(&["[identity]\npoll_interval = 0\n"]).unwrap_err();
        assert_eq!(e.key, "identity.poll_interval");
        let e = load(&["[node.attributes]\nx = 1\n"]).unwrap_err();
        assert_eq!(
            (e.key.as_str(), e.file.as_str()),
            ("node.attributes.x", "config.d/0.toml")
        );
        let e = load(&["[[node.partitions]]\nname = \"p\"\n"]).unwrap_err();
        assert_eq!(e.key, "node.partitions[0].path");
        let e = load(&["[permissions]\nkeep = true\n"]).unwrap_err();
        assert_eq!(e.reason, "unknown key");
    }

    #[test]
    fn syntax_errors_name_the_file() {
        let e = load(&["[node\n"]).unwrap_err();
        assert_eq!(e.file, "config.d/0.toml");
        assert!(e.reason.contains("TOML"));
    }
}
