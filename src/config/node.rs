//! `[node]`, `[identity]` and `[permissions]`: who the node is (its id and where it comes
//! from, its unit, its role), what it says of itself, and the permission secrets it keeps.

use super::reader::Reader;
use super::ConfigError;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Value;

/// A node is the unit's main node (it accepts links and forwards) or a secondary one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Main,
    Secondary,
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

pub(super) fn valid_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
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

/// `[node]` as read.
pub(super) struct Node {
    pub node_id: String,
    pub node_id_source: String,
    pub node_name: String,
    pub node_type: String,
    pub unit_id: String,
    pub role: Role,
    pub attributes: Vec<(String, String)>,
    pub partitions: Vec<PartitionConfig>,
}

#[inline(never)]
pub(super) fn parse_node(root: &mut Reader, read_id: bool) -> Result<Node, ConfigError> {
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
    Ok(Node {
        node_id,
        node_id_source,
        node_name,
        node_type,
        unit_id,
        role,
        attributes,
        partitions,
    })
}

#[inline(never)]
pub(super) fn parse_identity(root: &mut Reader) -> Result<IdentityConfig, ConfigError> {
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
    Ok(identity)
}

#[inline(never)]
pub(super) fn parse_permissions(root: &mut Reader) -> Result<PermissionsConfig, ConfigError> {
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
    Ok(permissions)
}

#[cfg(test)]
mod tests {
    use crate::config::testing::*;
    use crate::config::*;
    use std::time::Duration;

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
}
