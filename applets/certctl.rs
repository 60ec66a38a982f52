//! iam-certctl: certificates in operation. `list` (protected socket), `get` and `watch`
//! (public).

use crate::common::{self, cert_json, cert_text};
use aos_iam::config::{DEFAULT_PROTECTED_SOCKET, DEFAULT_PUBLIC_SOCKET};
use aos_iam::proto::client::Client;
use aos_iam::Error;
use argh::FromArgs;
use serde_json::json;

/// Inspect the certificates of an aos-iam node.
#[derive(FromArgs)]
struct Args {
    /// iamd socket (default: the protected socket for list, the public one for get)
    #[argh(option, short = 's')]
    socket: Option<String>,
    /// print results as JSON on stdout
    #[argh(switch)]
    json: bool,
    #[argh(subcommand)]
    verb: Verb,
}

// argh takes subcommands by value (no Box); the enum is built once per process.
#[allow(clippy::large_enum_variant)]
#[derive(FromArgs)]
#[argh(subcommand)]
enum Verb {
    Status(Status),
    List(List),
    Get(Get),
    SystemInfo(SystemInfo),
    Subjects(Subjects),
    Permissions(Permissions),
    Watch(Watch),
    Alerts(Alerts),
    Check(Check),
    Renew(Renew),
}

/// Every certificate: chain still valid, key and certificate in the store, days to expiry.
/// Exit 0 ok, 1 warning, 2 critical, 3 unknown (as monitoring plugins do).
#[derive(FromArgs)]
#[argh(subcommand, name = "check")]
struct Check {
    /// the node to check (default: the node iamd runs on)
    #[argh(option)]
    node: Option<String>,
    /// warn when a current certificate expires within this many days (default 30)
    #[argh(option, default = "aos_iam::pki::health::DEFAULT_WARNING_DAYS")]
    warning_days: u32,
    /// critical when it expires within this many days (default 7)
    #[argh(option, default = "aos_iam::pki::health::DEFAULT_CRITICAL_DAYS")]
    critical_days: u32,
    /// iamd's configuration, for the modules' renewal thresholds (this node only; default
    /// /etc/aos-iam/config.toml where it exists): a threshold at least as long as a current
    /// certificate's lifetime is a warning
    #[argh(option, short = 'c')]
    config: Option<String>,
}

common::signing_options! {
    /// Renew TYPE now: a new key in the store, its CSR signed by a local CA, a command, EST or
    /// SCEP, the chain applied (validated as in provisioning). Without a signing option, iamd
    /// runs the module's own renewal ([modules.renew]) now and this waits for its outcome.
    #[argh(subcommand, name = "renew")]
    struct Renew {
        /// certificate type
        #[argh(positional)]
        cert_type: String,
        /// the node to renew on (default: the node iamd runs on; another node through the main node)
        #[argh(option)]
        node: Option<String>,
        /// lifetime of the certificate the local CA issues, in days (default 365)
        #[argh(option, default = "365")]
        days: u32,
    }
}

/// Print each change of the current certificate of TYPE (every type without one), until
/// interrupted: a line each, or a JSON object per line with --json.
#[derive(FromArgs)]
#[argh(subcommand, name = "watch")]
struct Watch {
    /// certificate type (default: every type)
    #[argh(positional)]
    cert_type: Option<String>,
}

/// SubscribeAlerts (protected socket): each alert of this node as it is raised, until
/// interrupted: a certificate crossing its warning or critical threshold, the node
/// quarantined, its id changed. A line each, or with --json the object `[alerts] hook` gets.
#[derive(FromArgs)]
#[argh(subcommand, name = "alerts")]
struct Alerts {}

/// GetSystemInfo: the unit's system id, model and version.
#[derive(FromArgs)]
#[argh(subcommand, name = "system-info")]
struct SystemInfo {}

/// GetSubjects: the unit's subjects, one per line.
#[derive(FromArgs)]
#[argh(subcommand, name = "subjects")]
struct Subjects {
    /// keep printing the subjects each time they change, until interrupted
    #[argh(switch)]
    watch: bool,
}

/// GetPermissions: the instance and permissions a secret grants for SERVER.
#[derive(FromArgs)]
#[argh(subcommand, name = "permissions")]
struct Permissions {
    /// functional server id
    #[argh(positional)]
    server: String,
    /// file holding the secret ("-" or absent: stdin)
    #[argh(option)]
    secret_file: Option<String>,
}

/// The node's enrollment: state, step, attempts, next attempt, last error (protected socket).
/// Exit 0, or 2 when the node is quarantined.
#[derive(FromArgs)]
#[argh(subcommand, name = "status")]
struct Status {
    /// the node (default: the node iamd runs on; on the main node, any of its secondaries)
    #[argh(option)]
    node: Option<String>,
}

/// Every certificate: type, serial, issuer, expiry, URLs, and which one is current.
#[derive(FromArgs)]
#[argh(subcommand, name = "list")]
struct List {
    /// the node to list (default: the node iamd runs on)
    #[argh(option)]
    node: Option<String>,
}

/// The current certificate of TYPE (or the one with --issuer and --serial).
#[derive(FromArgs)]
#[argh(subcommand, name = "get")]
struct Get {
    /// certificate type
    #[argh(positional)]
    cert_type: String,
    /// issuer DN, DER in hex (with --serial)
    #[argh(option)]
    issuer: Option<String>,
    /// serial number in hex (with --issuer)
    #[argh(option)]
    serial: Option<String>,
}

pub fn main(name: &str, args: &[&str]) -> u8 {
    let args: Args = match common::parse_with(name, args, &[("-s", true), ("--socket", true), ("--json", false)]) {
        Ok(a) => a,
        Err(code) => return code,
    };
    match run(&args) {
        Ok(code) => code,
        // A check that could not run is UNKNOWN (3), as monitoring plugins say it.
        Err(e) if matches!(args.verb, Verb::Check(_)) => {
            // On stdout too, where a monitoring system reads a plugin's status line.
            if args.json {
                println!(
                    "{}",
                    json!({"ok": false, "status": "UNKNOWN", "error": common::error_json(&e)})
                );
            } else {
                println!("IAM UNKNOWN - {e}");
                eprintln!("{name}: {e}");
            }
            3
        }
        Err(e) => common::fail(name, &e, args.json),
    }
}

fn run(args: &Args) -> Result<u8, Error> {
    let socket = |default: &str| args.socket.clone().unwrap_or_else(|| default.to_string());
    match &args.verb {
        Verb::Status(v) => {
            let node = v.node.as_deref().unwrap_or("");
            let mut client = Client::connect(socket(DEFAULT_PROTECTED_SOCKET).as_ref())?;
            let st = client.enrollment_status(node)?;
            let node_state = client.status(node)?.state;
            let at = |t: i64| match t {
                0 => String::new(),
                t => aos_iam::pki::x509::rfc3339(t),
            };
            if args.json {
                println!(
                    "{}",
                    json!({"ok": true, "node_id": st.node_id, "node_state": node_state.name(),
                        "enrollment": {"state": st.state.name(), "step": st.step, "attempts": st.attempts,
                        "max_attempts": st.max_attempts, "next_attempt": at(st.next_attempt),
                        "last_error": st.last_error, "reason": st.reason, "since": at(st.since),
                        "enrolled": st.enrolled}})
                );
            } else {
                println!("node:         {}", st.node_id);
                println!("node state:   {}", node_state.name());
                println!("enrollment:   {}", st.state.name());
                println!("step:         {}", st.step);
                if st.max_attempts > 0 {
                    println!("attempts:     {} failed of {}", st.attempts, st.max_attempts);
                }
                if st.next_attempt > 0 {
                    println!("next attempt: {}", at(st.next_attempt));
                }
                if !st.enrolled.is_empty() {
                    println!("enrolled:     {}", st.enrolled.join(", "));
                }
                if st.since > 0 {
                    println!("since:        {}", at(st.since));
                }
                if !st.last_error.is_empty() {
                    println!("last error:   {}", st.last_error);
                }
                if !st.reason.is_empty() {
                    println!("QUARANTINED:  {}", st.reason);
                }
            }
            return Ok(if st.state == aos_iam::proto::wire::EnrollState::Quarantined {
                2
            } else {
                0
            });
        }
        Verb::List(l) => {
            let certs = Client::connect(socket(DEFAULT_PROTECTED_SOCKET).as_ref())?
                .list_certs(l.node.as_deref().unwrap_or(""))?;
            if args.json {
                println!(
                    "{}",
                    json!({"ok": true, "certificates": certs.iter().map(cert_json).collect::<Vec<_>>()})
                );
            } else if certs.is_empty() {
                println!("no certificates");
            } else {
                certs.iter().for_each(|c| print!("{}", cert_text(c)));
            }
        }
        Verb::SystemInfo(_) => {
            let (id, model, version) = Client::connect(socket(DEFAULT_PUBLIC_SOCKET).as_ref())?.system_info()?;
            if args.json {
                println!(
                    "{}",
                    json!({"ok": true, "system_id": id, "unit_model": model, "version": version})
                );
            } else {
                println!("system id:  {id}\nunit model: {model}\nversion:    {version}");
            }
        }
        Verb::Subjects(v) => {
            let mut c = Client::connect(socket(DEFAULT_PUBLIC_SOCKET).as_ref())?;
            let show = |subjects: &[String]| {
                if args.json {
                    println!("{}", json!({"ok": true, "subjects": subjects}));
                } else {
                    subjects.iter().for_each(|s| println!("{s}"));
                }
            };
            // Subscribe first, so that no change between the two calls is missed.
            let id = if v.watch {
                Some(c.subscribe(aos_iam::proto::wire::Request::SubscribeSubjectsChanged)?)
            } else {
                None
            };
            show(&c.subjects()?);
            if let Some(id) = id {
                loop {
                    if let aos_iam::proto::wire::Event::SubjectsChanged(s) = c.next_event(id)? {
                        if !args.json {
                            println!("--");
                        }
                        show(&s);
                    }
                }
            }
        }
        Verb::Permissions(v) => {
            let secret = common::read_secret(v.secret_file.as_deref(), "permission secret")?;
            let (instance, entries) =
                Client::connect(socket(DEFAULT_PUBLIC_SOCKET).as_ref())?.permissions(&secret, &v.server)?;
            let kind = match instance.kind {
                aos_iam::proto::wire::InstanceKind::Service => "service",
                aos_iam::proto::wire::InstanceKind::Component => "component",
            };
            if args.json {
                let perms: serde_json::Map<_, _> = entries.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
                println!(
                    "{}",
                    json!({"ok": true, "instance": {"item": instance.item_id, "subject": instance.subject_id, "instance": instance.instance, "type": kind}, "permissions": perms})
                );
            } else {
                println!(
                    "instance: {kind} {} subject {} #{}",
                    instance.item_id, instance.subject_id, instance.instance
                );
                entries.iter().for_each(|(k, v)| println!("{k}={v}"));
            }
        }
        Verb::Check(v) => {
            let mut client = Client::connect(socket(DEFAULT_PROTECTED_SOCKET).as_ref())?;
            let checks = client.check_certs(v.node.as_deref().unwrap_or(""))?;
            // A quarantined node is CRITICAL whatever its certificates say (an iamd too old
            // to enroll has nothing to say).
            let quarantine = match client.enrollment_status(v.node.as_deref().unwrap_or("")) {
                Ok(s) if s.state == aos_iam::proto::wire::EnrollState::Quarantined => Some(s.reason),
                Ok(_) => None,
                Err(e) if e.kind == aos_iam::ErrorKind::Protocol => None,
                Err(e) => return Err(e),
            };
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            // The renewal policies of this node's modules, from its configuration.
            let config = match &v.node {
                Some(_) => None,
                None => common::load_config(v.config.as_deref())?,
            };
            let policy = |t: &str| config.as_ref().and_then(|c| c.module(t)).and_then(|m| m.renew.as_ref());
            let rated: Vec<_> = checks
                .iter()
                .map(|c| {
                    let mut r = aos_iam::pki::health::rate(c, now, v.warning_days, v.critical_days);
                    aos_iam::pki::health::rate_renewal(c, &mut r, policy(&c.info.cert_type));
                    (c, r)
                })
                .collect();
            let worst = rated
                .iter()
                .map(|(_, r)| r.level)
                .max()
                .unwrap_or(aos_iam::pki::health::Level::Ok);
            let worst = match quarantine {
                Some(_) => aos_iam::pki::health::Level::Critical,
                None => worst,
            };
            if args.json {
                let certs: Vec<_> = rated
                    .iter()
                    .map(|(c, r)| {
                        json!({"type": c.info.cert_type, "serial": common::hex(&c.info.serial), "current": c.info.current,
                            "status": r.level.name(), "reason": r.reason, "days_left": r.days_left,
                            "chain_error": c.chain_error, "key_present": c.key_present, "cert_present": c.cert_present})
                    })
                    .collect();
                println!(
                    "{}",
                    json!({"ok": worst == aos_iam::pki::health::Level::Ok, "status": worst.name(), "certificates": certs,
                        "quarantined": quarantine})
                );
            } else {
                let bad = rated
                    .iter()
                    .filter(|(_, r)| r.level == worst && worst != aos_iam::pki::health::Level::Ok)
                    .count();
                println!(
                    "IAM {} - {}{} certificate(s){}",
                    worst.name(),
                    if quarantine.is_some() { "node quarantined, " } else { "" },
                    rated.len(),
                    if bad > 0 {
                        format!(", {bad} {}", worst.name().to_lowercase())
                    } else {
                        String::new()
                    }
                );
                if let Some(reason) = &quarantine {
                    println!("CRITICAL  the node is quarantined: {reason}");
                }
                for (c, r) in &rated {
                    println!(
                        "{:<9} {} {}: {}",
                        r.level.name(),
                        c.info.cert_type,
                        common::hex(&c.info.serial),
                        r.reason
                    );
                }
            }
            return Ok(worst.exit_code());
        }
        Verb::Renew(v) if !v.signing().any() => {
            let mut c = Client::connect(socket(DEFAULT_PROTECTED_SOCKET).as_ref())?;
            let node = v.node.clone().unwrap_or_else(|| c.server_node_id.clone());
            let cert = c.renew_now(&node, &v.cert_type)?;
            if args.json {
                println!("{}", json!({"ok": true, "certificate": cert_json(&cert)}));
            } else {
                print!("{}", cert_text(&cert));
            }
        }
        Verb::Renew(v) => {
            let signer = common::options_signer(&v.signing(), v.days)?;
            let pw = common::read_secret(v.password_file.as_deref(), "provisioning password")?;
            let mut c = Client::connect(socket(DEFAULT_PROTECTED_SOCKET).as_ref())?;
            let node = v.node.clone().unwrap_or_else(|| c.server_node_id.clone());
            let template = v.subject.as_deref().unwrap_or(aos_iam::flows::DEFAULT_SUBJECT);
            let subject = aos_iam::flows::subject_for(template, &node, &v.cert_type);
            let profile = common::load_profile(&v.profile)?;
            let cert = aos_iam::flows::renew(&mut c, &signer, &profile, &node, &v.cert_type, &subject, &pw)?;
            if args.json {
                println!("{}", json!({"ok": true, "certificate": cert_json(&cert)}));
            } else {
                print!("{}", cert_text(&cert));
            }
        }
        Verb::Watch(w) => {
            let mut c = Client::connect(socket(DEFAULT_PUBLIC_SOCKET).as_ref())?;
            let id = c.subscribe(aos_iam::proto::wire::Request::SubscribeCertChanged {
                cert_type: w.cert_type.clone().unwrap_or_default(),
            })?;
            if !args.json {
                eprintln!("watching; interrupt to stop");
            }
            loop {
                if let aos_iam::proto::wire::Event::CertChanged { cert_type, current } = c.next_event(id)? {
                    match (&current, args.json) {
                        (_, true) => println!(
                            "{}",
                            json!({"ok": true, "type": cert_type, "current": current.as_ref().map(cert_json)})
                        ),
                        (Some(cert), false) => println!(
                            "{cert_type}: serial {} subject \"{}\" not after {}",
                            common::hex(&cert.serial),
                            cert.subject,
                            common::rfc3339(cert.not_after)
                        ),
                        (None, false) => println!("{cert_type}: no current certificate"),
                    }
                    use std::io::Write;
                    let _ = std::io::stdout().flush();
                }
            }
        }
        Verb::Alerts(_) => {
            let mut c = Client::connect(socket(DEFAULT_PROTECTED_SOCKET).as_ref())?;
            let id = c.subscribe(aos_iam::proto::wire::Request::SubscribeAlerts)?;
            if !args.json {
                eprintln!("watching alerts; interrupt to stop");
            }
            loop {
                if let aos_iam::proto::wire::Event::Alert(a) = c.next_event(id)? {
                    match args.json {
                        true => print!("{}", aos_iam::daemon::alerts::json(&a)),
                        false => println!("{}: {}", a.kind.name(), a.message),
                    }
                    use std::io::Write;
                    let _ = std::io::stdout().flush();
                }
            }
        }
        Verb::Get(g) => {
            let issuer = g
                .issuer
                .as_deref()
                .map(|s| common::parse_hex("--issuer", s))
                .transpose()?;
            let serial = g
                .serial
                .as_deref()
                .map(|s| common::parse_hex("--serial", s))
                .transpose()?;
            let c = Client::connect(socket(DEFAULT_PUBLIC_SOCKET).as_ref())?.cert(&g.cert_type, issuer, serial)?;
            if args.json {
                println!("{}", json!({"ok": true, "certificate": cert_json(&c)}));
            } else {
                print!("{}", cert_text(&c));
            }
        }
    }
    Ok(0)
}
