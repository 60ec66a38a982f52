//! What the applets share: argument parsing entry, reading secrets, output, exit codes.

use aos_iam::flows::Signer;
use aos_iam::{Error, ErrorKind};
use argh::FromArgs;
use serde_json::json;
use std::io::{IsTerminal, Read};

/// Exit codes, documented in docs/troubleshooting.md. Usage errors are 2, as for most Unix tools.
pub const EXIT_OK: u8 = 0;
pub const EXIT_FAILURE: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_UNAVAILABLE: u8 = 3;
pub const EXIT_UNAUTHORIZED: u8 = 4;
pub const EXIT_WRONG_STATE: u8 = 5;
pub const EXIT_NOT_FOUND: u8 = 6;
pub const EXIT_INVALID: u8 = 7;
pub const EXIT_VALIDATION: u8 = 8;
pub const EXIT_KEY_STORE: u8 = 9;
pub const EXIT_PROTOCOL: u8 = 10;
pub const EXIT_TIMEOUT: u8 = 11;

pub fn exit_code(e: &Error) -> u8 {
    match e.kind {
        ErrorKind::Unavailable => EXIT_UNAVAILABLE,
        ErrorKind::Unauthorized => EXIT_UNAUTHORIZED,
        ErrorKind::WrongState => EXIT_WRONG_STATE,
        ErrorKind::NotFound => EXIT_NOT_FOUND,
        ErrorKind::InvalidArgument => EXIT_INVALID,
        ErrorKind::Validation(_) => EXIT_VALIDATION,
        ErrorKind::KeyStore(_) => EXIT_KEY_STORE,
        ErrorKind::Protocol => EXIT_PROTOCOL,
        ErrorKind::Timeout => EXIT_TIMEOUT,
        ErrorKind::Internal => EXIT_FAILURE,
    }
}

/// argh takes a lone `-` for an unknown flag; as a positional (stdin, by convention) it
/// must follow `--`. An option's value (`--password-file -`) is left as it is.
fn positional_dash<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::with_capacity(args.len() + 1);
    let mut ended = false;
    for (i, a) in args.iter().enumerate() {
        ended |= *a == "--";
        let after_option = i > 0 && args[i - 1].starts_with('-') && args[i - 1].len() > 1;
        if *a == "-" && !ended && !after_option {
            out.push("--");
            ended = true;
        }
        out.push(a);
    }
    out
}

/// argh takes `-v -v`; users type `-vv`. Expand a run of `v`s into separate flags.
pub fn expand_verbose<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut out = Vec::with_capacity(args.len());
    for a in args {
        match a.strip_prefix('-') {
            Some(vs) if vs.len() > 1 && vs.bytes().all(|b| b == b'v') => {
                out.extend(std::iter::repeat_n("-v", vs.len()))
            }
            _ => out.push(*a),
        }
    }
    out
}

/// Parse an applet's arguments; help goes to stdout (exit 0), errors to stderr (exit 2).
/// An applet's own options, before its verb: (name, whether it takes a value).
pub type Globals<'a> = &'a [(&'a str, bool)];

/// Options of the applet given after the verb (`iam-certctl get iam --json`) are moved in
/// front of it, where argh expects them; nothing after `--` moves.
fn hoist<'a>(args: &[&'a str], globals: Globals) -> Vec<&'a str> {
    let takes = |a: &str| globals.iter().find(|(n, _)| *n == a).map(|(_, v)| *v);
    let mut front = Vec::new();
    let mut rest = Vec::new();
    let mut verb_seen = false;
    let mut i = 0;
    while i < args.len() {
        let a = args[i];
        if a == "--" {
            rest.extend_from_slice(&args[i..]);
            break;
        }
        match takes(a) {
            Some(with_value) => {
                let n = if with_value { 2 } else { 1 };
                let end = (i + n).min(args.len());
                if verb_seen {
                    front.extend_from_slice(&args[i..end])
                } else {
                    rest.extend_from_slice(&args[i..end])
                }
                i = end;
                continue;
            }
            None => {
                verb_seen |= !a.starts_with('-');
                rest.push(a);
            }
        }
        i += 1;
    }
    front.extend(rest);
    front
}

/// Parse an applet's arguments; `--version` prints the version. `globals` are the applet's
/// own options, which may also follow the verb.
pub fn parse_with<T: FromArgs>(name: &str, args: &[&str], globals: Globals) -> Result<T, u8> {
    if args.first() == Some(&"--version") {
        println!("{name} {} (protocol {})", aos_iam::VERSION, aos_iam::PROTOCOL_VERSION);
        return Err(EXIT_OK);
    }
    parse(name, &hoist(args, globals))
}

pub fn parse<T: FromArgs>(name: &str, args: &[&str]) -> Result<T, u8> {
    T::from_args(&[name], &positional_dash(args)).map_err(|early| {
        if early.status.is_ok() {
            print!("{}", early.output);
            EXIT_OK
        } else {
            eprint!("{}", early.output);
            EXIT_USAGE
        }
    })
}

/// The signer that `--ca-cert`/`--ca-key` or `--sign-cmd` name (exactly one of them).
pub fn signer(
    ca_cert: &Option<String>,
    ca_key: &Option<String>,
    days: u32,
    sign_cmd: &Option<String>,
    sign_timeout: Option<u64>,
) -> Result<Signer, Error> {
    use aos_iam::pki::signer::{CommandSigner, LocalCa, DEFAULT_COMMAND_TIMEOUT};
    Ok(match (ca_cert, ca_key, sign_cmd) {
        (Some(c), Some(k), None) => Signer::Here(Box::new(LocalCa::load(c.as_ref(), k.as_ref(), days)?)),
        (None, None, Some(cmd)) => Signer::Here(Box::new(CommandSigner {
            command: cmd.clone(),
            timeout: sign_timeout
                .map(std::time::Duration::from_secs)
                .unwrap_or(DEFAULT_COMMAND_TIMEOUT),
        })),
        _ => return Err(Error::invalid("give either --ca-cert and --ca-key, or --sign-cmd")),
    })
}

/// A verb that gets CSRs signed (`iam-provision run`/`bootstrap`, `iam-certctl renew`): its
/// own fields, then the signing options, declared here once: the provisioning password,
/// a local CA (`--ca-cert`/`--ca-key`; `--days` is the verb's own), a command
/// (`--sign-cmd`), an EST server (`--est` and its companions), a SCEP server (`--scep` and
/// its companions), the subject template and the factory's profile. [`options_signer`]
/// reads them.
macro_rules! signing_options {
    ($(#[$meta:meta])* struct $name:ident { $($own:tt)* }) => {
        #[derive(argh::FromArgs)]
        $(#[$meta])*
        struct $name {
            $($own)*
            /// file holding the provisioning password ("-" or absent: stdin)
            #[argh(option)]
            password_file: Option<String>,
            /// CA certificate (PEM) that signs the CSRs (with --ca-key)
            #[argh(option)]
            ca_cert: Option<String>,
            /// CA private key (PKCS#8 PEM)
            #[argh(option)]
            ca_key: Option<String>,
            /// command that signs: CSR PEM on stdin, chain PEM on stdout; exit 75 = retry
            /// later, any other non-zero exit = refused
            #[argh(option)]
            sign_cmd: Option<String>,
            /// seconds the signing command may run (default 300)
            #[argh(option)]
            sign_timeout: Option<u64>,
            /// sign through this EST server (https://host[:port]/.well-known/est): /simpleenroll
            #[argh(option)]
            est: Option<String>,
            /// the EST server's trust anchor (PEM); or --est-ca-fingerprint
            #[argh(option)]
            est_anchor: Option<String>,
            /// SHA-256 (hex) of the EST CA, checked out of band: trust what /cacerts sends only if it matches
            #[argh(option)]
            est_ca_fingerprint: Option<String>,
            /// EST HTTP basic auth user (with --est-password-file)
            #[argh(option)]
            est_user: Option<String>,
            /// file holding the EST password
            #[argh(option)]
            est_password_file: Option<String>,
            /// certificate (PEM) for EST mutual TLS: the factory's, or a bootstrap one (with --est-key)
            #[argh(option)]
            est_cert: Option<String>,
            /// that certificate's private key (PKCS#8 PEM)
            #[argh(option)]
            est_key: Option<String>,
            /// get the CSRs signed by this SCEP server (http://host[:port]/path); the node makes the requests
            #[argh(option)]
            scep: Option<String>,
            /// SHA-256 (hex) of the SCEP CA certificate, checked out of band (with --scep)
            #[argh(option)]
            scep_ca_fingerprint: Option<String>,
            /// file holding the SCEP challenge password (with --scep); renewing without it: a
            /// RenewalReq by the current certificate
            #[argh(option)]
            challenge_file: Option<String>,
            /// subject template; {node} and {type} are replaced (default "CN={node},OU={type}")
            #[argh(option)]
            subject: Option<String>,
            /// the factory's profile (TOML): the usages and names each type may have (default:
            /// clientAuth, serverAuth but on a secondary's iam, DNS names {node} and {node}.*)
            #[argh(option)]
            profile: Option<String>,
        }

        impl $name {
            /// The options that choose the signer, for [`options_signer`].
            fn signing(&self) -> $crate::common::SigningOptions<'_> {
                $crate::common::SigningOptions {
                    ca_cert: &self.ca_cert,
                    ca_key: &self.ca_key,
                    sign_cmd: &self.sign_cmd,
                    sign_timeout: self.sign_timeout,
                    est: $crate::common::EstArgs {
                        url: self.est.as_deref(),
                        anchor: &self.est_anchor,
                        fingerprint: &self.est_ca_fingerprint,
                        user: &self.est_user,
                        password_file: &self.est_password_file,
                        cert: &self.est_cert,
                        key: &self.est_key,
                    },
                    scep: self.scep.as_deref(),
                    scep_ca_fingerprint: &self.scep_ca_fingerprint,
                    challenge_file: &self.challenge_file,
                }
            }
        }
    };
}
pub(crate) use signing_options;

/// The options of [`signing_options!`] that choose the signer.
pub struct SigningOptions<'a> {
    pub ca_cert: &'a Option<String>,
    pub ca_key: &'a Option<String>,
    pub sign_cmd: &'a Option<String>,
    pub sign_timeout: Option<u64>,
    pub est: EstArgs<'a>,
    pub scep: Option<&'a str>,
    pub scep_ca_fingerprint: &'a Option<String>,
    pub challenge_file: &'a Option<String>,
}

impl SigningOptions<'_> {
    /// Whether any of them is given (`iam-certctl renew` without one runs the module's own
    /// renewal; with a stray one, [`options_signer`] says what it goes with).
    pub fn any(&self) -> bool {
        let e = &self.est;
        [
            self.ca_cert,
            self.ca_key,
            self.sign_cmd,
            self.scep_ca_fingerprint,
            self.challenge_file,
        ]
        .iter()
        .any(|o| o.is_some())
            || [e.anchor, e.fingerprint, e.user, e.password_file, e.cert, e.key]
                .iter()
                .any(|o| o.is_some())
            || self.sign_timeout.is_some()
            || e.url.is_some()
            || self.scep.is_some()
    }
}

/// The `--est*` options of a command that signs through an EST server (`url`: `--est`).
pub struct EstArgs<'a> {
    pub url: Option<&'a str>,
    pub anchor: &'a Option<String>,
    pub fingerprint: &'a Option<String>,
    pub user: &'a Option<String>,
    pub password_file: &'a Option<String>,
    pub cert: &'a Option<String>,
    pub key: &'a Option<String>,
}

/// The signer a verb's signing options name (`--scep` and its companions, `--est` and its
/// companions, `--ca-cert`/`--ca-key` with `days`, `--sign-cmd` with `--sign-timeout`):
/// exactly one way, or an error before anything is done. For `iam-provision run`/`bootstrap`
/// and `iam-certctl renew`.
pub fn options_signer(o: &SigningOptions, days: u32) -> Result<Signer, Error> {
    match o.scep {
        Some(url) => scep_signer(
            url,
            o.scep_ca_fingerprint,
            o.challenge_file,
            o.est.url.is_some() || o.ca_cert.is_some() || o.ca_key.is_some() || o.sign_cmd.is_some(),
        ),
        None if o.scep_ca_fingerprint.is_some() || o.challenge_file.is_some() => Err(Error::invalid(
            "--scep-ca-fingerprint and --challenge-file go with --scep",
        )),
        None => signer_for(&o.est, o.ca_cert, o.ca_key, days, o.sign_cmd, o.sign_timeout),
    }
}

/// The factory's profile `--profile` names, or the default one.
pub fn load_profile(path: &Option<String>) -> Result<aos_iam::pki::profile::Profile, Error> {
    match path {
        Some(p) => aos_iam::pki::profile::Profile::load(std::path::Path::new(p)),
        None => Ok(aos_iam::pki::profile::Profile::default()),
    }
}

/// The one signer a command's options name: `--est` (with `est`), or `--ca-cert`/`--ca-key`,
/// or `--sign-cmd`; more than one way is refused before anything is done.
pub fn signer_for(
    est: &EstArgs,
    ca_cert: &Option<String>,
    ca_key: &Option<String>,
    days: u32,
    sign_cmd: &Option<String>,
    sign_timeout: Option<u64>,
) -> Result<Signer, Error> {
    match est.url {
        Some(_) if ca_cert.is_some() || ca_key.is_some() || sign_cmd.is_some() => Err(Error::invalid(
            "give one way of signing: --est, --ca-cert/--ca-key or --sign-cmd",
        )),
        Some(url) => est_signer(url, est),
        None => signer(ca_cert, ca_key, days, sign_cmd, sign_timeout),
    }
}

/// The SCEP signer `--scep` names: the node makes the request (ScepEnroll) with its key.
pub fn scep_signer(
    url: &str,
    fingerprint: &Option<String>,
    challenge_file: &Option<String>,
    another_way: bool,
) -> Result<Signer, Error> {
    if another_way {
        return Err(Error::invalid(
            "give one way of signing: --scep, --est, --ca-cert/--ca-key or --sign-cmd",
        ));
    }
    if !url.starts_with("http://") {
        return Err(Error::invalid(format!(
            "--scep {url}: an http:// URL (SCEP's trust is --scep-ca-fingerprint)"
        )));
    }
    let fingerprint = fingerprint.as_deref().ok_or_else(|| {
        Error::invalid(
            "--scep needs --scep-ca-fingerprint: the SHA-256 of the SCEP CA's certificate, checked out of band",
        )
    })?;
    let fingerprint = aos_iam::codec::Fingerprint::parse_given("--scep-ca-fingerprint", fingerprint)?;
    let challenge = match challenge_file {
        Some(f) => aos_iam::pki::scep::read_challenge(f.as_ref())?,
        None => aos_iam::secret::Secret::new(String::new()),
    };
    Ok(Signer::NodeScep(aos_iam::flows::NodeScep {
        url: url.to_string(),
        ca_fingerprint: fingerprint,
        challenge,
    }))
}

/// The EST signer `--est` names: /simpleenroll, by basic auth or a bootstrap certificate.
pub fn est_signer(url: &str, v: &EstArgs) -> Result<Signer, Error> {
    use aos_iam::pki::tls::ClientAuth;
    use rustls_pki_types::pem::PemObject;
    let anchors = match (v.anchor, v.fingerprint) {
        (Some(anchor), None) => Some(aos_iam::pki::x509::read_certs(anchor.as_ref(), "--est-anchor")?),
        (None, Some(_)) => None,
        (Some(_), Some(_)) => {
            return Err(Error::invalid(
                "give the EST server's trust either as --est-anchor or as --est-ca-fingerprint",
            ))
        }
        (None, None) => {
            return Err(Error::invalid(
                "--est needs --est-anchor (the EST server's trust anchor) or --est-ca-fingerprint \
                 (the SHA-256 of its CA, checked out of band, for a /cacerts bootstrap)",
            ))
        }
    };
    let basic = match (v.user, v.password_file) {
        (Some(u), Some(_)) => Some((u.clone(), read_secret(v.password_file.as_deref(), "EST password")?)),
        (None, None) => None,
        _ => return Err(Error::invalid("--est-user and --est-password-file go together")),
    };
    let auth = match (v.cert, v.key) {
        (Some(c), Some(k)) => {
            let chain = aos_iam::pki::x509::read_certs(c.as_ref(), "--est-cert")?;
            let key = rustls_pki_types::PrivateKeyDer::from_pem_file(k)
                .map_err(|e| Error::invalid(format!("--est-key {k}: {e}")))?;
            ClientAuth::Files(chain, key)
        }
        (None, None) => ClientAuth::None,
        _ => return Err(Error::invalid("--est-cert and --est-key go together")),
    };
    let client = match (anchors, v.fingerprint) {
        (Some(anchors), _) => aos_iam::pki::est::EstClient::new(url, &anchors, auth, basic)?,
        (None, Some(f)) => {
            let fingerprint = aos_iam::codec::Fingerprint::parse_given("--est-ca-fingerprint", f)?;
            aos_iam::pki::est::EstClient::bootstrap(url, &fingerprint, auth, basic)?.0
        }
        (None, None) => unreachable!("refused above"),
    };
    Ok(Signer::Here(Box::new(aos_iam::pki::est::EstSigner {
        client,
        reenroll: false,
        retry_after: Default::default(),
    })))
}

/// An error as JSON: `{"kind", "reason", "message"}`.
pub fn error_json(e: &Error) -> serde_json::Value {
    let reason = match &e.kind {
        ErrorKind::KeyStore(r) | ErrorKind::Validation(r) => Some(r.clone()),
        _ => None,
    };
    json!({"kind": e.kind.name(), "reason": reason, "message": e.message})
}

/// iamd's configuration at `path`, or at the default path where it exists (`None` if not);
/// the node id is iamd's to read, and is left empty.
pub fn load_config(path: Option<&str>) -> Result<Option<aos_iam::config::Config>, Error> {
    use aos_iam::config::DEFAULT_CONFIG;
    let path = match path {
        Some(p) => std::path::PathBuf::from(p),
        None if std::path::Path::new(DEFAULT_CONFIG).exists() => std::path::PathBuf::from(DEFAULT_CONFIG),
        None => return Ok(None),
    };
    aos_iam::config::Config::load_for_client(&path)
        .map(Some)
        .map_err(|e| Error::invalid(format!("configuration: {e}")))
}

/// Report an error as text on stderr, or as a JSON object on stdout with `--json`.
pub fn fail(name: &str, e: &Error, json: bool) -> u8 {
    if json {
        println!("{}", json!({"ok": false, "error": error_json(e)}));
    } else {
        eprintln!("{name}: {e}");
    }
    exit_code(e)
}

/// One line typed on the terminal with echo off (restored whatever happens), as passwd does.
fn read_from_terminal(what: &str) -> Result<zeroize::Zeroizing<String>, Error> {
    use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg};
    use std::io::BufRead;
    use std::os::fd::AsFd;
    let stdin = std::io::stdin();
    let fail = |e: &dyn std::fmt::Display| Error::invalid(format!("reading the {what} from the terminal: {e}"));
    let saved = tcgetattr(stdin.as_fd()).map_err(|e| fail(&e))?;
    let mut quiet = saved.clone();
    quiet.local_flags.remove(LocalFlags::ECHO);
    quiet.local_flags.insert(LocalFlags::ECHONL);
    tcsetattr(stdin.as_fd(), SetArg::TCSAFLUSH, &quiet).map_err(|e| fail(&e))?;
    eprint!("{what}: ");
    let mut line = zeroize::Zeroizing::new(String::new());
    let read = stdin.lock().read_line(&mut line);
    let restored = tcsetattr(stdin.as_fd(), SetArg::TCSAFLUSH, &saved);
    read.map_err(|e| fail(&e))?;
    restored.map_err(|e| fail(&e))?;
    Ok(line)
}

/// Read a secret from a file (`-`: stdin up to end of file) or, with no file, from stdin:
/// one line with echo off on a terminal, up to end of file from a pipe. Never argv.
pub fn read_secret(file: Option<&str>, what: &str) -> Result<aos_iam::secret::Secret, Error> {
    let mut text = zeroize::Zeroizing::new(String::new());
    match file {
        Some(path) if path != "-" => {
            *text = std::fs::read_to_string(path).map_err(|e| Error::invalid(format!("{what} file {path}: {e}")))?;
        }
        None if std::io::stdin().is_terminal() => text = read_from_terminal(what)?,
        _ => {
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| Error::invalid(format!("reading the {what} from stdin: {e}")))?;
        }
    }
    let s = aos_iam::secret::Secret::from_text(text);
    if s.is_empty() {
        return Err(Error::invalid(format!("the {what} is empty")));
    }
    Ok(s)
}

pub fn instance(
    item: &str,
    subject: &str,
    instance: u64,
    kind: &str,
) -> Result<aos_iam::proto::wire::InstanceIdent, Error> {
    let kind = match kind {
        "service" => aos_iam::proto::wire::InstanceKind::Service,
        "component" => aos_iam::proto::wire::InstanceKind::Component,
        other => return Err(Error::invalid(format!("--type {other}: expected service or component"))),
    };
    Ok(aos_iam::proto::wire::InstanceIdent {
        item_id: item.into(),
        subject_id: subject.into(),
        instance,
        kind,
    })
}

/// `SERVER:NAME=VALUE` options, grouped by server in the order given.
pub fn parse_permissions(items: &[String]) -> Result<Vec<aos_iam::proto::wire::ServerPermissions>, Error> {
    let mut out: Vec<aos_iam::proto::wire::ServerPermissions> = Vec::new();
    for item in items {
        let (server, rest) = item
            .split_once(':')
            .ok_or_else(|| Error::invalid(format!("--permission {item}: expected SERVER:NAME=VALUE")))?;
        let (name, value) = rest
            .split_once('=')
            .ok_or_else(|| Error::invalid(format!("--permission {item}: expected SERVER:NAME=VALUE")))?;
        let entry = (name.to_string(), value.to_string());
        match out.iter_mut().find(|p| p.server == server) {
            Some(p) => p.entries.push(entry),
            None => out.push(aos_iam::proto::wire::ServerPermissions {
                server: server.into(),
                entries: vec![entry],
            }),
        }
    }
    Ok(out)
}

pub use aos_iam::codec::hex;

pub fn parse_hex(what: &str, s: &str) -> Result<Vec<u8>, Error> {
    let s = s.trim_start_matches("0x").replace(':', "");
    aos_iam::codec::unhex(&s)
        .filter(|b| !b.is_empty())
        .ok_or_else(|| Error::invalid(format!("{what} must be hex bytes")))
}

pub use aos_iam::pki::x509::rfc3339;

pub fn cert_json(c: &aos_iam::proto::wire::CertInfo) -> serde_json::Value {
    json!({
        "type": c.cert_type,
        "subject": c.subject,
        "issuer": c.issuer,
        "issuer_der": hex(&c.issuer_der),
        "serial": hex(&c.serial),
        "not_before": rfc3339(c.not_before),
        "not_after": rfc3339(c.not_after),
        "cert_url": c.cert_url,
        "key_url": c.key_url,
        "current": c.current,
    })
}

pub fn node_json(n: &aos_iam::proto::wire::NodeInfo) -> serde_json::Value {
    json!({
        "node_id": n.node_id,
        "node_type": n.node_type,
        "name": n.name,
        "state": n.state.name(),
        "connected": n.connected,
        "cpus": n.cpus.iter().map(|c| json!({"model": c.model, "cores": c.cores, "threads": c.threads, "architecture": c.architecture})).collect::<Vec<_>>(),
        "total_ram": n.total_ram,
        "partitions": n.partitions.iter().map(|p| json!({"name": p.name, "types": p.types, "path": p.path, "total_size": p.total_size})).collect::<Vec<_>>(),
        "os_name": n.os_name,
        "os_version": n.os_version,
        "attributes": n.attributes.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
    })
}

pub fn node_text(n: &aos_iam::proto::wire::NodeInfo) -> String {
    let mut t = format!(
        "node:       {}\nname:       {}\ntype:       {}\nstate:      {}{}\nos:         {} {}\nram:        {} bytes\n",
        n.node_id,
        n.name,
        n.node_type,
        n.state.name(),
        if n.connected { "" } else { " (not connected)" },
        n.os_name,
        n.os_version,
        n.total_ram
    );
    for c in &n.cpus {
        t.push_str(&format!(
            "cpu:        {} ({} cores, {} threads, {})\n",
            c.model, c.cores, c.threads, c.architecture
        ));
    }
    for p in &n.partitions {
        t.push_str(&format!(
            "partition:  {} {} {} bytes [{}]\n",
            p.name,
            p.path,
            p.total_size,
            p.types.join(",")
        ));
    }
    for (k, v) in &n.attributes {
        t.push_str(&format!("attribute:  {k}={v}\n"));
    }
    t
}

pub fn cert_text(c: &aos_iam::proto::wire::CertInfo) -> String {
    format!(
        "{}{}\n  subject:   {}\n  issuer:    {}\n  serial:    {}\n  not after: {}\n  cert:      {}\n  key:       {}\n",
        c.cert_type,
        if c.current { " (current)" } else { "" },
        c.subject,
        c.issuer,
        hex(&c.serial),
        rfc3339(c.not_after),
        c.cert_url,
        c.key_url
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_after_the_verb_move_in_front_of_it() {
        let g: Globals = &[("-s", true), ("--json", false), ("--node", true)];
        assert_eq!(
            hoist(&["get", "iam", "--json", "-s", "x"], g),
            ["--json", "-s", "x", "get", "iam"]
        );
        assert_eq!(hoist(&["-s", "x", "get", "iam"], g), ["-s", "x", "get", "iam"]);
        assert_eq!(
            hoist(&["--node", "n", "run", "--json"], g),
            ["--json", "--node", "n", "run"]
        );
        assert_eq!(
            hoist(&["apply", "iam", "--", "--json"], g),
            ["apply", "iam", "--", "--json"]
        );
        assert_eq!(hoist(&["get", "-s"], g), ["-s", "get"]);
    }

    #[test]
    fn a_lone_dash_is_a_positional_unless_it_is_an_option_value() {
        assert_eq!(positional_dash(&["apply", "iam", "-"]), ["apply", "iam", "--", "-"]);
        assert_eq!(
            positional_dash(&["start", "--password-file", "-"]),
            ["start", "--password-file", "-"]
        );
        assert_eq!(positional_dash(&["apply", "--", "-"]), ["apply", "--", "-"]);
    }

    #[test]
    fn every_error_kind_has_its_exit_code() {
        let codes: Vec<u8> = [
            ErrorKind::NotFound,
            ErrorKind::InvalidArgument,
            ErrorKind::WrongState,
            ErrorKind::Unauthorized,
            ErrorKind::Timeout,
            ErrorKind::Unavailable,
            ErrorKind::KeyStore("x".into()),
            ErrorKind::Validation("x".into()),
            ErrorKind::Protocol,
            ErrorKind::Internal,
        ]
        .into_iter()
        .map(|k| exit_code(&Error::new(k, "")))
        .collect();
        let mut unique = codes.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), codes.len(), "distinct codes: {codes:?}");
        assert!(!codes.contains(&EXIT_USAGE) && !codes.contains(&EXIT_OK));
    }
}
