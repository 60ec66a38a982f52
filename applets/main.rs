//! `aos-iam`: one binary, four applets, chosen by the name it is run as.
//!
//! Multi-call (busybox style) because an embedded image pays for every binary: the four
//! tools share the protocol, the client and the crypto code, and one static binary of
//! them all is smaller than four. `aos-iam APPLET ...` reaches an applet without a link.

mod certctl;
mod common;
mod iamd;
mod nodelink;
mod provision;

use std::path::Path;
use std::process::ExitCode;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Applet {
    Iamd,
    Provision,
    Certctl,
    Nodelink,
}

const APPLETS: [(&str, Applet, &str); 4] = [
    ("iamd", Applet::Iamd, "the per-node identity and access daemon"),
    (
        "iam-provision",
        Applet::Provision,
        "provision a node: step by step, or the whole flow",
    ),
    (
        "iam-certctl",
        Applet::Certctl,
        "certificates in operation: list, get, watch, check, renew",
    ),
    (
        "iam-nodelink",
        Applet::Nodelink,
        "the link between a secondary node and the main node",
    ),
];

/// The applet a program name (a path or a bare name) stands for; `None` for `aos-iam`.
fn applet_for(argv0: &str) -> Result<Option<Applet>, String> {
    let name = Path::new(argv0).file_name().and_then(|n| n.to_str()).unwrap_or(argv0);
    if name == "aos-iam" {
        return Ok(None);
    }
    APPLETS
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, a, _)| Some(*a))
        .ok_or_else(|| format!("unknown applet \"{name}\"; run `aos-iam --list` for the applets"))
}

fn usage() -> String {
    let mut s = String::from("Usage: aos-iam APPLET [ARGS...] | aos-iam --list | aos-iam --version\n\nApplets:\n");
    for (n, _, d) in APPLETS {
        s.push_str(&format!("  {n:<14} {d}\n"));
    }
    s
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let argv0 = args.first().map(String::as_str).unwrap_or("aos-iam");
    let (applet, name, rest) = match applet_for(argv0) {
        Err(e) => {
            eprintln!("aos-iam: {e}");
            return ExitCode::from(common::EXIT_USAGE);
        }
        Ok(Some(a)) => (a, argv0.to_string(), &args[1..]),
        Ok(None) => match args.get(1).map(String::as_str) {
            None | Some("--help") | Some("-h") | Some("help") => {
                print!("{}", usage());
                return if args.len() > 1 {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(common::EXIT_USAGE)
                };
            }
            Some("--list") => {
                for (n, _, _) in APPLETS {
                    println!("{n}");
                }
                return ExitCode::SUCCESS;
            }
            Some("--version") => {
                println!("aos-iam {} (protocol {})", aos_iam::VERSION, aos_iam::PROTOCOL_VERSION);
                return ExitCode::SUCCESS;
            }
            Some(sub) => match applet_for(sub) {
                Ok(Some(a)) => (a, sub.to_string(), &args[2..]),
                _ => {
                    eprintln!("aos-iam: unknown applet \"{sub}\"; run `aos-iam --list` for the applets");
                    return ExitCode::from(common::EXIT_USAGE);
                }
            },
        },
    };
    let name = Path::new(&name)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or(&name)
        .to_string();
    let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
    let code = match applet {
        Applet::Iamd => iamd::main(&name, &rest),
        Applet::Provision => provision::main(&name, &rest),
        Applet::Certctl => certctl::main(&name, &rest),
        Applet::Nodelink => nodelink::main(&name, &rest),
    };
    ExitCode::from(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv0_maps_to_applets() {
        let cases: [(&str, Result<Option<Applet>, ()>); 9] = [
            ("iamd", Ok(Some(Applet::Iamd))),
            ("/usr/bin/iamd", Ok(Some(Applet::Iamd))),
            ("iam-provision", Ok(Some(Applet::Provision))),
            ("./iam-certctl", Ok(Some(Applet::Certctl))),
            ("/usr/sbin/iam-nodelink", Ok(Some(Applet::Nodelink))),
            ("aos-iam", Ok(None)),
            ("/usr/bin/aos-iam", Ok(None)),
            ("iam", Err(())),
            ("/usr/bin/iamd2", Err(())),
        ];
        for (argv0, want) in cases {
            assert_eq!(applet_for(argv0).map_err(|_| ()), want, "{argv0}");
        }
        assert!(applet_for("bogus").unwrap_err().contains("bogus"));
    }
}
