//! iam-provision: the provisioning client for factory scripts.
//!
//! Each verb is one operation of the protected socket; `run` is the whole flow. Passwords
//! come from `--password-file` or stdin, never from the command line.

use crate::common::{self, cert_json, cert_text};
use aos_iam::config::DEFAULT_PROTECTED_SOCKET;
use aos_iam::flows::{self, RunOptions, Signer, DEFAULT_SUBJECT};
use aos_iam::proto::client::Client;
use aos_iam::Error;
use argh::FromArgs;
use serde_json::json;
use std::io::{IsTerminal, Read, Write};
use std::time::Duration;

/// Provision an aos-iam node through its protected socket.
#[derive(FromArgs)]
struct Args {
    /// iamd's protected socket (default /run/aos-iam/protected.sock)
    #[argh(option, short = 's')]
    socket: Option<String>,
    /// the node to act on (default: the node iamd runs on); `run` also takes "all"
    #[argh(option)]
    node: Option<String>,
    /// print results as JSON on stdout
    #[argh(switch)]
    json: bool,
    #[argh(subcommand)]
    verb: Verb,
}

// Parsed once per process; `run` carries every option of the flow (argh cannot box it).
#[allow(clippy::large_enum_variant)]
#[derive(FromArgs)]
#[argh(subcommand)]
enum Verb {
    Start(Start),
    CertTypes(CertTypes),
    CreateKey(CreateKey),
    Apply(Apply),
    Finish(Finish),
    Deprovision(Deprovision),
    Status(Status),
    Run(Run),
    Bootstrap(Bootstrap),
    ReleaseQuarantine(ReleaseQuarantine),
    Pause(Pause),
    Resume(Resume),
    NodeInfo(NodeInfoVerb),
    Nodes(Nodes),
    ForgetNode(ForgetNode),
    RegisterInstance(RegisterInstance),
    UnregisterInstance(UnregisterInstance),
}

/// PauseNode: a provisioned node is paused (persisted) until resumed.
#[derive(FromArgs)]
#[argh(subcommand, name = "pause")]
struct Pause {}

/// ForgetNode, on the main node: NODE leaves the node registry, and its link, if up, is
/// closed (with [[links.listener]] nodes, a node not listed cannot register again).
#[derive(FromArgs)]
#[argh(subcommand, name = "forget-node")]
struct ForgetNode {
    /// the node to forget
    #[argh(positional)]
    node: String,
}

/// ResumeNode: a paused node is provisioned again.
#[derive(FromArgs)]
#[argh(subcommand, name = "resume")]
struct Resume {}

/// NodeInfo: id, type, state, CPUs, RAM, partitions, OS, attributes.
#[derive(FromArgs)]
#[argh(subcommand, name = "node-info")]
struct NodeInfoVerb {
    /// keep printing the node's info each time it changes, until interrupted
    #[argh(switch)]
    watch: bool,
}

/// GetAllNodeIds: the nodes of the unit.
#[derive(FromArgs)]
#[argh(subcommand, name = "nodes")]
struct Nodes {}

/// RegisterInstance: a permission secret for an instance (printed on stdout).
#[derive(FromArgs)]
#[argh(subcommand, name = "register-instance")]
struct RegisterInstance {
    #[argh(option)]
    /// item (service or component) id
    item: String,
    #[argh(option)]
    /// subject id
    subject: String,
    #[argh(option)]
    /// instance number
    instance: u64,
    #[argh(option, default = "String::from(\"service\")")]
    /// service (default) or component
    r#type: String,
    #[argh(option)]
    /// a permission, SERVER:NAME=VALUE (repeatable)
    permission: Vec<String>,
}

/// UnregisterInstance: revoke an instance's permission secret.
#[derive(FromArgs)]
#[argh(subcommand, name = "unregister-instance")]
struct UnregisterInstance {
    #[argh(option)]
    /// item (service or component) id
    item: String,
    #[argh(option)]
    /// subject id
    subject: String,
    #[argh(option)]
    /// instance number
    instance: u64,
    #[argh(option, default = "String::from(\"service\")")]
    /// service (default) or component
    r#type: String,
}

/// StartProvisioning: take ownership of the key stores with the password.
#[derive(FromArgs)]
#[argh(subcommand, name = "start")]
struct Start {
    /// file holding the provisioning password ("-" or absent: stdin)
    #[argh(option)]
    password_file: Option<String>,
}

/// GetCertTypes: the certificate types that need a CA-signed certificate.
#[derive(FromArgs)]
#[argh(subcommand, name = "cert-types")]
struct CertTypes {}

/// CreateKey: a new key for TYPE in its key store; prints the CSR (PEM).
#[derive(FromArgs)]
#[argh(subcommand, name = "create-key")]
struct CreateKey {
    /// certificate type
    #[argh(positional)]
    cert_type: String,
    /// subject, e.g. "CN=node0,O=Unit" (default "CN={node},OU={type}")
    #[argh(option)]
    subject: Option<String>,
    /// file holding the provisioning password ("-" or absent: stdin)
    #[argh(option)]
    password_file: Option<String>,
    /// write the CSR to this file instead of stdout
    #[argh(option, short = 'o')]
    output: Option<String>,
}

/// ApplyCert: apply a CA-signed chain (PEM, leaf first) for TYPE.
#[derive(FromArgs)]
#[argh(subcommand, name = "apply")]
struct Apply {
    /// certificate type
    #[argh(positional)]
    cert_type: String,
    /// chain file, or "-" for stdin
    #[argh(positional)]
    chain: String,
}

/// FinishProvisioning: mark the node provisioned.
#[derive(FromArgs)]
#[argh(subcommand, name = "finish")]
struct Finish {
    /// file holding the provisioning password ("-" or absent: stdin)
    #[argh(option)]
    password_file: Option<String>,
}

/// Deprovision: wipe keys and certificates; the node becomes unprovisioned.
#[derive(FromArgs)]
#[argh(subcommand, name = "deprovision")]
struct Deprovision {
    /// file holding the provisioning password ("-" or absent: stdin)
    #[argh(option)]
    password_file: Option<String>,
}

/// The node's provisioning state and its certificate modules.
#[derive(FromArgs)]
#[argh(subcommand, name = "status")]
struct Status {}

/// The options of a flow that gets CSRs signed (`run`, `bootstrap`), declared once.
macro_rules! signing_flow {
    // With the options of the enrollment settings bootstrap installs.
    (enroll $(#[$meta:meta])* struct $name:ident { $($extra:tt)* }) => {
        signing_flow! {
            $(#[$meta])*
            struct $name {
                /// the module of the bootstrap identity (default "bootstrap")
                #[argh(option, default = "String::from(\"bootstrap\")")]
                bootstrap_type: String,
                /// the EST server the node enrolls with on site (default: its [enroll] url)
                #[argh(option)]
                enroll_url: Option<String>,
                /// that server's trust anchor, PEM (default: the node's [enroll] anchor)
                #[argh(option)]
                enroll_anchor: Option<String>,
                /// file holding the claim token the node presents when it enrolls
                #[argh(option)]
                claim_token_file: Option<String>,
                $($extra)*
            }
        }
    };
    ($(#[$meta:meta])* struct $name:ident { $($extra:tt)* }) => {
        common::signing_options! {
            $(#[$meta])*
            struct $name {
                /// lifetime of certificates the local CA issues, in days (default 365; a
                /// bootstrap identity: 9125, 25 years, to outlast any time in storage)
                #[argh(option)]
                days: Option<u32>,
                /// deprovision a provisioned node first instead of refusing
                #[argh(switch)]
                deprovision_first: bool,
                $($extra)*
            }
        }
    };
}

signing_flow! {
    enroll
    /// The whole flow: start, create each key, get it signed, apply, finish (with
    /// --bootstrap: the factory half of enrollment, as `bootstrap` does it).
    #[argh(subcommand, name = "run")]
    struct Run {
    /// with --node all: wait until this many nodes (the main one included) are connected
    /// (default: those connected now)
    #[argh(option)]
    expect_nodes: Option<usize>,
    /// with --node all: seconds to wait for --expect-nodes (default 300)
    #[argh(option, default = "300")]
    wait: u64,
        /// only bootstrap the node for zero-touch enrollment (see `bootstrap`)
        #[argh(switch)]
        bootstrap: bool,
    }
}

signing_flow! {
    enroll
    /// The factory half of zero-touch enrollment: start, the bootstrap key and its
    /// manufacturer certificate signed by the factory CA (--ca-cert/--ca-key, --sign-cmd or
    /// --est), the enrollment settings; the node is left unprovisioned, ready to ship.
    #[argh(subcommand, name = "bootstrap")]
    struct Bootstrap {
    }
}

/// ReleaseQuarantine: a quarantined node tries to enroll again.
#[derive(FromArgs)]
#[argh(subcommand, name = "release-quarantine")]
struct ReleaseQuarantine {
    /// file holding the provisioning password ("-" or absent: stdin)
    #[argh(option)]
    password_file: Option<String>,
}

pub fn main(name: &str, args: &[&str]) -> u8 {
    let args: Args = match common::parse_with(
        name,
        args,
        &[("-s", true), ("--socket", true), ("--node", true), ("--json", false)],
    ) {
        Ok(a) => a,
        Err(code) => return code,
    };
    match run(&args) {
        Ok(code) => code,
        Err(e) => common::fail(name, &e, args.json),
    }
}

fn connect(args: &Args) -> Result<Client, Error> {
    Client::connect(std::path::Path::new(
        args.socket.as_deref().unwrap_or(DEFAULT_PROTECTED_SOCKET),
    ))
}

fn ok_json(v: serde_json::Value) {
    let mut v = v;
    v["ok"] = json!(true);
    println!("{v}");
}

fn run(args: &Args) -> Result<u8, Error> {
    let node = args.node.clone().unwrap_or_default();
    let password = |file: &Option<String>| common::read_secret(file.as_deref(), "provisioning password");
    match &args.verb {
        Verb::Start(v) => {
            let pw = password(&v.password_file)?;
            let mut c = connect(args)?;
            c.start_provisioning(&node, &pw)?;
            done(args, "provisioning started");
        }
        Verb::CertTypes(_) => {
            let types = connect(args)?.cert_types(&node)?;
            if args.json {
                ok_json(json!({ "types": types }));
            } else {
                types.iter().for_each(|t| println!("{t}"));
            }
        }
        Verb::CreateKey(v) => {
            let pw = password(&v.password_file)?;
            let mut c = connect(args)?;
            let node_id = if node.is_empty() {
                c.server_node_id.clone()
            } else {
                node.clone()
            };
            let subject = flows::subject_for(v.subject.as_deref().unwrap_or(DEFAULT_SUBJECT), &node_id, &v.cert_type);
            let csr = c.create_key(&node, &v.cert_type, &subject, &pw)?;
            if let Some(out) = &v.output {
                std::fs::write(out, &csr).map_err(|e| Error::internal(format!("writing {out}: {e}")))?;
            }
            if args.json {
                ok_json(json!({ "type": v.cert_type, "csr": csr }));
            } else if v.output.is_none() {
                print!("{csr}");
            }
        }
        Verb::Apply(v) => {
            let mut bytes = Vec::new();
            if v.chain == "-" {
                std::io::stdin()
                    .read_to_end(&mut bytes)
                    .map_err(|e| Error::invalid(format!("reading the chain from stdin: {e}")))?;
            } else {
                bytes = std::fs::read(&v.chain).map_err(|e| Error::invalid(format!("chain file {}: {e}", v.chain)))?;
            }
            let pem =
                aos_iam::pki::x509::chain_text(&bytes).map_err(|e| e.context(format!("chain file {}", v.chain)))?;
            let cert = connect(args)?.apply_cert(&node, &v.cert_type, &pem)?;
            if args.json {
                ok_json(json!({ "certificate": cert_json(&cert) }));
            } else {
                print!("{}", cert_text(&cert));
            }
        }
        Verb::Finish(v) => {
            let pw = password(&v.password_file)?;
            connect(args)?.finish_provisioning(&node, &pw)?;
            done(args, "provisioning finished");
        }
        Verb::Deprovision(v) => {
            let pw = password(&v.password_file)?;
            connect(args)?.deprovision(&node, &pw)?;
            done(args, "node deprovisioned");
        }
        Verb::Status(_) => {
            let s = connect(args)?.status(&node)?;
            if args.json {
                let modules: Vec<_> = s
                    .modules
                    .iter()
                    .map(|m| json!({"type": m.cert_type, "needs_ca": m.needs_ca, "pending_key": m.pending_key, "certificates": m.certificates}))
                    .collect();
                ok_json(
                    json!({"node": s.node_id, "state": s.state.name(), "provisioning_mode": s.provisioning_mode, "modules": modules}),
                );
            } else {
                println!(
                    "node:  {}\nstate: {}{}",
                    s.node_id,
                    s.state.name(),
                    if s.provisioning_mode {
                        " (provisioning mode)"
                    } else {
                        ""
                    }
                );
                for m in &s.modules {
                    println!(
                        "  {:<16} {} certificate(s){}{}",
                        m.cert_type,
                        m.certificates,
                        if m.pending_key { ", key pending" } else { "" },
                        if m.needs_ca { "" } else { ", self-signed" }
                    );
                }
            }
        }
        Verb::Run(v) if v.bootstrap => {
            if v.expect_nodes.is_some() || node == "all" {
                return Err(Error::invalid(
                    "--bootstrap is for one node: each node is bootstrapped on its own",
                ));
            }
            let f = bootstrap_of!(v);
            return bootstrap_flow(args, &f, &node);
        }
        Verb::Run(v) => {
            if v.enroll_url.is_some() || v.enroll_anchor.is_some() || v.claim_token_file.is_some() {
                return Err(Error::invalid(
                    "--enroll-url, --enroll-anchor and --claim-token-file go with --bootstrap",
                ));
            }
            return run_flow(args, v, &node);
        }
        Verb::Bootstrap(v) => {
            let f = bootstrap_of!(v);
            if node == "all" {
                return Err(Error::invalid(
                    "bootstrap is for one node: each node is bootstrapped on its own",
                ));
            }
            return bootstrap_flow(args, &f, &node);
        }
        Verb::ReleaseQuarantine(v) => {
            let pw = password(&v.password_file)?;
            connect(args)?.release_quarantine(&node, &pw)?;
            done(args, "quarantine released: the node enrolls again");
        }
        Verb::Pause(_) => {
            connect(args)?.pause(&node)?;
            done(args, "node paused");
        }
        Verb::Resume(_) => {
            connect(args)?.resume(&node)?;
            done(args, "node resumed");
        }
        Verb::ForgetNode(v) => {
            connect(args)?.forget_node(&v.node)?;
            done(args, &format!("node {} forgotten", v.node));
        }
        Verb::NodeInfo(v) => {
            let mut c = connect(args)?;
            let show = |n: &aos_iam::proto::wire::NodeInfo| {
                if args.json {
                    let mut j = common::node_json(n);
                    j["ok"] = json!(true);
                    println!("{j}");
                } else {
                    print!("{}", common::node_text(n));
                }
            };
            let info = c.node_info(&node)?;
            show(&info);
            if !v.watch && !info.connected {
                // Known to the main node, its link down: printed as last seen, and exit 3
                // (unavailable), as a forwarded request to it would end.
                eprintln!("node \"{}\" is not connected", info.node_id);
                return Ok(3);
            }
            if v.watch {
                let id = c.subscribe(aos_iam::proto::wire::Request::SubscribeNodeChanged)?;
                loop {
                    if let aos_iam::proto::wire::Event::NodeChanged(n) = c.next_event(id)? {
                        if node.is_empty() || n.node_id == node {
                            show(&n);
                        }
                    }
                }
            }
        }
        Verb::Nodes(_) => {
            let ids = connect(args)?.node_ids()?;
            if args.json {
                ok_json(json!({ "nodes": ids }));
            } else {
                ids.iter().for_each(|i| println!("{i}"));
            }
        }
        Verb::RegisterInstance(v) => {
            let instance = common::instance(&v.item, &v.subject, v.instance, &v.r#type)?;
            let permissions = common::parse_permissions(&v.permission)?;
            let secret = connect(args)?.register_instance(instance, permissions)?;
            if args.json {
                ok_json(json!({ "secret": secret.expose() }));
            } else {
                println!("{}", secret.expose());
            }
        }
        Verb::UnregisterInstance(v) => {
            let instance = common::instance(&v.item, &v.subject, v.instance, &v.r#type)?;
            connect(args)?.unregister_instance(instance)?;
            done(args, "instance unregistered");
        }
    }
    Ok(0)
}

fn done(args: &Args, what: &str) {
    if args.json {
        ok_json(json!({}));
    } else {
        println!("{what}");
    }
}

/// The bootstrap flow a verb's options (`run --bootstrap`, `bootstrap`) describe.
macro_rules! bootstrap_of {
    ($v:expr) => {{
        let v = $v;
        BootstrapFlow {
            signer: common::options_signer(&v.signing(), v.days.unwrap_or(aos_iam::flows::BOOTSTRAP_DAYS))?,
            password_file: &v.password_file,
            subject: &v.subject,
            profile: common::load_profile(&v.profile)?,
            deprovision_first: v.deprovision_first,
            bootstrap_type: &v.bootstrap_type,
            enroll_url: &v.enroll_url,
            enroll_anchor: &v.enroll_anchor,
            claim_token_file: &v.claim_token_file,
        }
    }};
}
use bootstrap_of;

struct BootstrapFlow<'a> {
    signer: Signer,
    password_file: &'a Option<String>,
    subject: &'a Option<String>,
    profile: aos_iam::pki::profile::Profile,
    deprovision_first: bool,
    bootstrap_type: &'a str,
    enroll_url: &'a Option<String>,
    enroll_anchor: &'a Option<String>,
    claim_token_file: &'a Option<String>,
}

/// A step of a flow on stderr, when it is a terminal: `NAME ...` as it begins, ` ok` when done.
fn print_step(tty: bool, s: &flows::Step) {
    if tty {
        let mut e = std::io::stderr().lock();
        if s.done {
            let _ = writeln!(e, " ok");
        } else {
            let _ = write!(e, "{} ...", s.name);
        }
    }
}

fn bootstrap_flow(args: &Args, f: &BootstrapFlow, node: &str) -> Result<u8, Error> {
    let anchor_pem = match f.enroll_anchor {
        Some(path) => {
            let bytes = std::fs::read(path).map_err(|e| Error::invalid(format!("--enroll-anchor {path}: {e}")))?;
            aos_iam::pki::x509::chain_text(&bytes).map_err(|e| e.context(format!("--enroll-anchor {path}")))?
        }
        None => String::new(),
    };
    let claim_token = match f.claim_token_file {
        Some(path) => common::read_secret(Some(path), "claim token")?,
        None => aos_iam::secret::Secret::new(String::new()),
    };
    if f.claim_token_file.is_some() && claim_token.is_empty() {
        return Err(Error::invalid("--claim-token-file: the claim token is empty"));
    }
    let pw = common::read_secret(f.password_file.as_deref(), "provisioning password")?;
    let mut client = connect(args)?;
    let tty = std::io::stderr().is_terminal();
    let mut progress = |s: &flows::Step| print_step(tty, s);
    let opts = RunOptions {
        node_id: node,
        password: &pw,
        subject_template: f.subject.as_deref().unwrap_or(DEFAULT_SUBJECT),
        deprovision_first: f.deprovision_first,
        profile: &f.profile,
    };
    let b = flows::BootstrapOptions {
        bootstrap_type: f.bootstrap_type,
        est_url: f.enroll_url.as_deref().unwrap_or(""),
        anchor_pem: &anchor_pem,
        claim_token: &claim_token,
    };
    let result = flows::bootstrap(&mut client, &f.signer, &opts, &b, &mut progress);
    if tty && result.is_err() {
        eprintln!(" failed");
    }
    let cert = result?;
    let node_id = if node.is_empty() {
        client.server_node_id.clone()
    } else {
        node.to_string()
    };
    if args.json {
        ok_json(json!({"node": node_id, "state": "unprovisioned", "bootstrap": cert_json(&cert)}));
    } else {
        println!("node {node_id} bootstrapped: it enrolls itself at first power-on");
        print!("{}", cert_text(&cert));
    }
    Ok(0)
}

fn run_flow(args: &Args, v: &Run, node: &str) -> Result<u8, Error> {
    let signer = common::options_signer(&v.signing(), v.days.unwrap_or(aos_iam::flows::DEFAULT_DAYS))?;
    let pw = common::read_secret(v.password_file.as_deref(), "provisioning password")?;
    if node == "all" {
        return run_unit(args, v, &signer, &pw);
    }
    if v.expect_nodes.is_some() {
        return Err(Error::invalid("--expect-nodes goes with --node all"));
    }
    let mut client = connect(args)?;
    let tty = std::io::stderr().is_terminal();
    let mut progress = |s: &flows::Step| print_step(tty, s);
    let profile = common::load_profile(&v.profile)?;
    let opts = RunOptions {
        node_id: node,
        password: &pw,
        subject_template: v.subject.as_deref().unwrap_or(DEFAULT_SUBJECT),
        deprovision_first: v.deprovision_first,
        profile: &profile,
    };
    let result = flows::run(&mut client, &signer, &opts, &mut progress);
    if tty && result.is_err() {
        eprintln!(" failed");
    }
    let certs = result?;
    let node_id = if node.is_empty() {
        client.server_node_id.clone()
    } else {
        node.to_string()
    };
    if args.json {
        ok_json(json!({"node": node_id, "certificates": certs.iter().map(cert_json).collect::<Vec<_>>()}));
    } else {
        println!("node {node_id} provisioned");
        for c in &certs {
            print!("{}", cert_text(c));
        }
    }
    Ok(0)
}

/// `run --node all`: every node of the unit through the main node, a result per node.
fn run_unit(args: &Args, v: &Run, signer: &Signer, pw: &aos_iam::secret::Secret) -> Result<u8, Error> {
    let client = connect(args)?;
    let expect = match v.expect_nodes {
        Some(0) => return Err(Error::invalid("--expect-nodes must be at least 1")),
        Some(n) => n,
        None => 1,
    };
    let main_id = client.server_node_id.clone();
    drop(client);
    let wait_nodes = || flows::wait_for_nodes(&mut connect(args)?, expect, Duration::from_secs(v.wait));
    let tty = std::io::stderr().is_terminal();
    let progress = |node: &str, s: &flows::Step| {
        if tty && s.done {
            eprintln!("{node}: {} ok", s.name);
        }
    };
    let profile = common::load_profile(&v.profile)?;
    let opts = RunOptions {
        node_id: "",
        password: pw,
        subject_template: v.subject.as_deref().unwrap_or(DEFAULT_SUBJECT),
        deprovision_first: v.deprovision_first,
        profile: &profile,
    };
    let outcomes = flows::run_unit(&|| connect(args), &main_id, &wait_nodes, signer, &opts, &progress)?;
    let first_error = outcomes.iter().find_map(|o| o.result.as_ref().err()).cloned();
    if args.json {
        let per_node: Vec<_> = outcomes
            .iter()
            .map(|o| match &o.result {
                Ok(certs) => json!({"node": o.node_id, "main": o.main, "ok": true,
                    "certificates": certs.iter().map(cert_json).collect::<Vec<_>>()}),
                Err(e) => json!({"node": o.node_id, "main": o.main, "ok": false, "error": common::error_json(e)}),
            })
            .collect();
        let mut out = json!({ "nodes": per_node });
        out["ok"] = json!(first_error.is_none());
        if let Some(e) = &first_error {
            out["error"] = common::error_json(e);
        }
        println!("{out}");
    } else {
        for o in &outcomes {
            match &o.result {
                Ok(certs) => {
                    println!("node {} provisioned{}", o.node_id, if o.main { " (main)" } else { "" });
                    certs.iter().for_each(|c| print!("{}", cert_text(c)));
                }
                Err(e) => println!("node {} FAILED: {e}", o.node_id),
            }
        }
    }
    match first_error {
        // The JSON already carries every node's error; the text names each failed node.
        Some(e) if args.json => Ok(common::exit_code(&e)),
        Some(e) => {
            eprintln!(
                "iam-provision: {} of {} nodes failed",
                outcomes.iter().filter(|o| o.result.is_err()).count(),
                outcomes.len()
            );
            Ok(common::exit_code(&e))
        }
        None => Ok(0),
    }
}
