//! iam-certctl: certificates in operation. `list` (protected socket), `get` and `watch`
//! (public).

use crate::common::{self, cert_json, cert_text};
use aos_iam::client::Client;
use aos_iam::config::{DEFAULT_PROTECTED_SOCKET, DEFAULT_PUBLIC_SOCKET};
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

#[derive(FromArgs)]
#[argh(subcommand)]
enum Verb {
    List(List),
    Get(Get),
    SystemInfo(SystemInfo),
    Subjects(Subjects),
    Permissions(Permissions),
    Watch(Watch),
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
    let args: Args = match common::parse(name, args) {
        Ok(a) => a,
        Err(code) => return code,
    };
    match run(&args) {
        Ok(()) => 0,
        Err(e) => common::fail(name, &e, args.json),
    }
}

fn run(args: &Args) -> Result<(), Error> {
    let socket = |default: &str| args.socket.clone().unwrap_or_else(|| default.to_string());
    match &args.verb {
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
                Some(c.subscribe(aos_iam::wire::Request::SubscribeSubjectsChanged)?)
            } else {
                None
            };
            show(&c.subjects()?);
            if let Some(id) = id {
                loop {
                    if let aos_iam::wire::Event::SubjectsChanged(s) = c.next_event(id)? {
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
                aos_iam::wire::InstanceKind::Service => "service",
                aos_iam::wire::InstanceKind::Component => "component",
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
        Verb::Watch(w) => {
            let mut c = Client::connect(socket(DEFAULT_PUBLIC_SOCKET).as_ref())?;
            let id = c.subscribe(aos_iam::wire::Request::SubscribeCertChanged {
                cert_type: w.cert_type.clone().unwrap_or_default(),
            })?;
            if !args.json {
                eprintln!("watching; interrupt to stop");
            }
            loop {
                if let aos_iam::wire::Event::CertChanged { cert_type, current } = c.next_event(id)? {
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
    Ok(())
}
