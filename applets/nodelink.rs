//! iam-nodelink: the secondary node's link to the main node.
//!
//! Without a verb it runs the link (until SIGTERM, or until a stdio pipe ends); `status`
//! prints the state the running link reports. Settings come from the iamd configuration
//! (`[links]`, the protected socket); the flags override them.

use crate::common;
use aos_iam::config::DEFAULT_NODELINK_STATUS;
use aos_iam::link::nodelink::{self, Options, Status};
use aos_iam::proto::transport::LinkAddr;
use aos_iam::Error;
use argh::FromArgs;
use serde_json::json;
use std::path::PathBuf;
use std::time::Duration;

/// Link this secondary node to the main node, or report the link's state.
#[derive(FromArgs)]
struct Args {
    /// iamd configuration (default /etc/aos-iam/config.toml, if it exists)
    #[argh(option, short = 'c')]
    config: Option<String>,
    /// the main node: unix:PATH, vsock:CID:PORT, vchan:DOMID:PATH, tcp:HOST:PORT or stdio
    /// (default: links.connect)
    #[argh(option)]
    connect: Option<String>,
    /// the local iamd's protected socket (default: paths.protected_socket)
    #[argh(option, short = 's')]
    socket: Option<String>,
    /// where the link's state is written (default: links.status_file, /run/aos-iam-nodelink/status)
    #[argh(option)]
    status_file: Option<String>,
    /// first delay before dialing again, in milliseconds (default 500)
    #[argh(option)]
    retry_min_ms: Option<u64>,
    /// longest delay before dialing again, in seconds (default 30)
    #[argh(option)]
    retry_max: Option<u64>,
    /// more log output (-v info, -vv debug)
    #[argh(switch, short = 'v')]
    verbose: u8,
    /// print the status as JSON (with `status`)
    #[argh(switch)]
    json: bool,
    #[argh(subcommand)]
    verb: Option<Verb>,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum Verb {
    Status(StatusVerb),
}

/// The state of the running link: registered, connecting, retrying or stopped.
#[derive(FromArgs)]
#[argh(subcommand, name = "status")]
struct StatusVerb {}

pub fn main(name: &str, args: &[&str]) -> u8 {
    let expanded = common::expand_verbose(args);
    let globals: common::Globals = &[
        ("-c", true),
        ("--config", true),
        ("--connect", true),
        ("-s", true),
        ("--socket", true),
        ("--status-file", true),
        ("--retry-min-ms", true),
        ("--retry-max", true),
        ("-v", false),
        ("--verbose", false),
        ("--json", false),
    ];
    let args: Args = match common::parse_with(name, &expanded, globals) {
        Ok(a) => a,
        Err(code) => return code,
    };
    aos_iam::log::set_verbosity(args.verbose);
    match run(&args) {
        Ok(code) => code,
        Err(e) => common::fail(name, &e, args.json),
    }
}

fn run(args: &Args) -> Result<u8, Error> {
    let config = common::load_config(args.config.as_deref())?;
    let status_file = args
        .status_file
        .as_ref()
        .map(PathBuf::from)
        .or_else(|| config.as_ref().map(|c| c.links.status_file.clone()))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_NODELINK_STATUS));
    if let Some(Verb::Status(_)) = &args.verb {
        return status(args, &status_file);
    }
    let defaults = aos_iam::config::LinksConfig::default();
    let links = config.as_ref().map(|c| &c.links).unwrap_or(&defaults);
    let connect = match &args.connect {
        Some(a) => LinkAddr::parse_connect(a).map_err(|e| Error::invalid(format!("--connect {e}")))?,
        None => links.connect.clone().ok_or_else(|| {
            Error::invalid("no main node to dial: give --connect, or links.connect in the configuration")
        })?,
    };
    let local_socket = args
        .socket
        .as_ref()
        .map(PathBuf::from)
        .or_else(|| config.as_ref().map(|c| c.protected_socket.clone()))
        .unwrap_or_else(|| PathBuf::from(aos_iam::config::DEFAULT_PROTECTED_SOCKET));
    let opts = Options {
        connect,
        local_socket,
        status_file,
        retry_min: args
            .retry_min_ms
            .map(Duration::from_millis)
            .unwrap_or(nodelink::DEFAULT_RETRY_MIN),
        retry_max: args
            .retry_max
            .map(Duration::from_secs)
            .unwrap_or(nodelink::DEFAULT_RETRY_MAX),
        body_limit: config
            .as_ref()
            .map_or(aos_iam::proto::wire::DEFAULT_BODY_LIMIT, |c| c.body_limit),
        hello_timeout: config
            .as_ref()
            .map_or(aos_iam::config::DEFAULT_HELLO_TIMEOUT, |c| c.hello_timeout),
        frame_timeout: config
            .as_ref()
            .map_or(aos_iam::config::DEFAULT_FRAME_TIMEOUT, |c| c.frame_timeout),
        request_timeout: links.request_timeout,
        long_request_timeout: links.long_request_timeout,
        keepalive: links.keepalive,
        tls: links.tls,
        root_ca: config.as_ref().and_then(|c| c.root_ca.clone()),
        crl: config.as_ref().map(|c| c.crl.clone()).unwrap_or_default(),
        main_crl: config.as_ref().and_then(|c| c.links.main_crl.clone()),
        unit_id: config.as_ref().map(|c| c.unit_id.clone()).unwrap_or_default(),
        main_node_id: links.main_node_id.clone(),
        tunnel: links.tunnel.clone(),
        tunnel_group: config.as_ref().and_then(|c| c.protected_socket_group),
    };
    nodelink::run(opts)?;
    Ok(0)
}

fn status(args: &Args, path: &std::path::Path) -> Result<u8, Error> {
    let mut s = Status::load(path)?;
    if s.state != "stopped" && !s.is_running() {
        s.state = "stopped".into();
        s.last_error = format!("iam-nodelink (pid {}) is not running", s.pid);
    }
    let up = s.state == "registered";
    if args.json {
        let mut v = serde_json::to_value(&s).map_err(|e| Error::internal(e.to_string()))?;
        v["ok"] = json!(up);
        v["since"] = json!(common::rfc3339(s.since));
        println!("{v}");
    } else {
        println!(
            "link:  {}\nstate: {} since {}",
            s.link,
            s.state,
            common::rfc3339(s.since)
        );
        if up {
            println!(
                "node \"{}\" registered with the main node \"{}\"{}",
                s.node_id,
                s.main_node_id,
                if s.tls { " (TLS)" } else { " (no TLS)" }
            );
        }
        if !s.last_error.is_empty() {
            println!("last error: {}", s.last_error);
        }
    }
    Ok(if up { 0 } else { 3 })
}
