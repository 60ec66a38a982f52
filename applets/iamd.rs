//! iamd: the per-node daemon. Parses its flags, loads the configuration, runs the server.

use crate::common;
use aos_iam::config::{Config, DEFAULT_CONFIG};
use argh::FromArgs;

/// The aos-iam daemon: serves certificates and provisioning on the node's Unix sockets.
#[derive(FromArgs)]
struct Args {
    /// configuration file (default /etc/aos-iam/config.toml; config.d/*.toml beside it is merged)
    #[argh(option, short = 'c')]
    config: Option<String>,
    /// serve the provisioning operations (factory mode)
    #[argh(switch)]
    provisioning: bool,
    /// validate the configuration and exit: 0 valid, 1 not
    #[argh(switch)]
    check_config: bool,
    /// more log output (-v info, -vv debug)
    #[argh(switch, short = 'v')]
    verbose: u8,
    /// print the version and exit
    #[argh(switch)]
    version: bool,
}

pub fn main(name: &str, args: &[&str]) -> u8 {
    let args: Args = match common::parse(name, &common::expand_verbose(args)) {
        Ok(a) => a,
        Err(code) => return code,
    };
    if args.version {
        println!("{name} {} (protocol {})", aos_iam::VERSION, aos_iam::PROTOCOL_VERSION);
        return 0;
    }
    aos_iam::log::set_verbosity(args.verbose);
    let path = args.config.unwrap_or_else(|| DEFAULT_CONFIG.to_string());
    let config = match Config::load(std::path::Path::new(&path)) {
        Ok(c) => c,
        Err(e) => {
            if args.check_config {
                eprintln!("{name}: {e}");
            } else {
                aos_iam::log_error!("configuration: {e}");
            }
            return 1;
        }
    };
    if args.check_config {
        // A root the chain profile refuses would be dropped silently at every apply.
        match aos_iam::daemon::certs::refused_roots(&config) {
            Ok(refused) => {
                for e in &refused {
                    eprintln!("{name}: warning: root CA refused and not used: {e}");
                }
            }
            Err(e) => {
                eprintln!("{name}: {e}");
                return 1;
            }
        }
        // A CRL that cannot be read refuses every apply and every link handshake.
        if let Err(e) = aos_iam::pki::x509::read_crls(&config.crl) {
            eprintln!("{name}: paths.crl: {e}");
            return 1;
        }
        // A key store this build cannot load would stop iamd at its start.
        for m in &config.modules {
            if let aos_iam::config::StoreConfig::Pkcs11(p) = &m.store {
                if let Err(e) = aos_iam::store::keystore::pkcs11::loadable(p) {
                    eprintln!("{name}: module {}: {e}", m.id);
                    return 1;
                }
            }
        }
        // A module whose algorithm its token cannot do would fail only at CreateKey.
        match aos_iam::daemon::certs::CertModules::open(&config).and_then(|m| m.check_algorithms()) {
            Ok(unknown) => {
                for e in unknown {
                    eprintln!("{name}: warning: {e}");
                }
            }
            Err(e) => {
                eprintln!("{name}: {e}");
                return 1;
            }
        }
        println!("{path}: valid ({} certificate modules)", config.modules.len());
        println!("node id \"{}\" (from {})", config.node_id, config.node_id_source);
        // The state it would open: a database of a newer release is refused here too.
        match aos_iam::store::db::schema_report(&config.db_path()) {
            Ok(line) => println!("{line}"),
            Err(e) => {
                eprintln!("{name}: {e}");
                return 1;
            }
        }
        return 0;
    }
    match aos_iam::daemon::run(config, args.provisioning) {
        Ok(()) => 0,
        Err(e) => {
            aos_iam::log_error!("{e}");
            common::exit_code(&e)
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn repeated_v_is_expanded() {
        assert_eq!(
            super::common::expand_verbose(&["-vv", "-c", "x", "-v"]),
            ["-v", "-v", "-c", "x", "-v"]
        );
        assert_eq!(
            super::common::expand_verbose(&["--verbose", "-vx"]),
            ["--verbose", "-vx"]
        );
    }
}
