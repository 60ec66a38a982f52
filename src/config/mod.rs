//! The iamd configuration: `config.toml`, then `config.d/*.toml` merged in sorted order.
//!
//! Tables merge key by key and arrays append, so a drop-in can add a certificate module.
//! Every key is read by hand from the merged tree ([`reader`]), remembering which file and
//! line set it, so that an unknown key, a missing key or a bad value is reported with its
//! file, line, key and reason. Each section is read in a file of its own: [`node`] (with
//! `[identity]`, `[permissions]`), [`paths`], [`limits`], [`links`], [`modules`],
//! [`renewal`] (with `[reconcile]`), [`enrollment`] (with `[scep]`), [`hooks`] (with
//! `[alerts]`); this file reads them in order into one [`Config`].
//!
//! The section parsers are `#[inline(never)]`: inlined into one function, as the compiler
//! chose, the split made the stripped static binary about 6 KB larger (`make size`); out of
//! line it is smaller than the single `parse` it replaced.

mod enrollment;
mod hooks;
mod limits;
mod links;
mod modules;
mod node;
mod paths;
mod reader;
mod renewal;

pub use enrollment::*;
pub use hooks::*;
pub use limits::*;
pub use links::*;
pub use modules::*;
pub use node::*;
pub use paths::*;
pub use renewal::*;

use reader::{key_lines, line_of, merge, Origins, Reader, Source};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Table;

pub const DEFAULT_CONFIG: &str = "/etc/aos-iam/config.toml";

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

/// How long a signing command (`--sign-cmd`, `[modules.renew] command`) may run by default.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(300);

/// Lifetime, in days, of the certificates a local CA issues unless told otherwise.
pub const DEFAULT_DAYS: u32 = 365;

/// The same for a bootstrap identity: it must outlast the node's time in storage before its
/// first power-on (manufacturer identities commonly live decades); 25 years.
pub const BOOTSTRAP_DAYS: u32 = 9125;

/// Default subject template: `{node}` is the node id, `{type}` the certificate type.
pub const DEFAULT_SUBJECT: &str = "CN={node},OU={type}";

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

fn parse(root: &mut Reader, read_id: bool) -> Result<Config, ConfigError> {
    let node::Node {
        node_id,
        node_id_source,
        node_name,
        node_type,
        unit_id,
        role,
        attributes,
        partitions,
    } = node::parse_node(root, read_id)?;
    let identity = node::parse_identity(root)?;
    let permissions = node::parse_permissions(root)?;
    let paths::Paths {
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
    } = paths::parse(root)?;
    let limits::Limits {
        body_limit,
        hello_timeout,
        frame_timeout,
        write_timeout,
        max_connections,
        quotas,
    } = limits::parse(root)?;
    let reconcile = renewal::parse_reconcile(root)?;
    let scep_allow_des3 = enrollment::parse_scep_policy(root)?;
    let links = links::parse(root, role)?;
    let hooks = hooks::parse_hooks(root)?;
    let alerts = hooks::parse_alerts(root)?;
    let modules = modules::parse_all(root, &working_dir, &root_ca, &links, role, &unit_id)?;
    let enroll = enrollment::parse(root, &working_dir, &modules)?;
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

#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    pub const BASE: &str = r#"
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

    pub fn load(extra: &[&str]) -> Result<Config, ConfigError> {
        let mut s = vec![("config.toml".to_string(), BASE.to_string())];
        for (i, e) in extra.iter().enumerate() {
            s.push((format!("config.d/{i}.toml"), e.to_string()));
        }
        Config::from_sources(&s)
    }
}

#[cfg(test)]
mod tests {
    use crate::config::testing::*;
    use crate::config::*;
    use std::time::Duration;

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
}
