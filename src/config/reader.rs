//! The hand parser: the merged tree of `config.toml` and its drop-ins, read key by key,
//! remembering which file and line set each key, so that an unknown key, a missing key or
//! a bad value is reported with its file, line, key and reason. The sections read their
//! tables with a [`Reader`].

use super::ConfigError;
use crate::codec::Fingerprint;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;
use toml::{Table, Value};

/// `"80%"` (or `"12.5%"`) as per mille.
#[inline(never)]
pub(super) fn parse_per_mille(s: &str) -> Option<u32> {
    let v: f64 = s.strip_suffix('%')?.trim().parse().ok()?;
    (0.0..=100.0).contains(&v).then(|| (v * 10.0).round() as u32)
}

/// Where each key of the merged tree came from: its file, and its line there.
#[derive(Default)]
pub(super) struct Origins(BTreeMap<String, (String, Option<usize>)>);

/// One source being merged: its name and the line of each of its keys (its own paths).
pub(super) struct Source<'a> {
    pub(super) file: &'a str,
    pub(super) lines: &'a BTreeMap<String, usize>,
}

/// The 1-based line of byte `offset` in `text`.
pub(super) fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// The line of every key path of one file (`modules[0].pkcs11.library`), from the spans of
/// toml's parser.
pub(super) fn key_lines(text: &str) -> BTreeMap<String, usize> {
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
pub(super) fn merge(into: &mut Table, from: Table, (path, local): (&str, &str), src: &Source, origin: &mut Origins) {
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
pub(super) struct Reader<'a> {
    pub(super) table: Table,
    pub(super) path: String,
    pub(super) origin: &'a Origins,
    pub(super) default_file: String,
}

impl<'a> Reader<'a> {
    pub(super) fn err(&self, key: &str, reason: impl Into<String>) -> ConfigError {
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

    pub(super) fn take(&mut self, key: &str) -> Option<Value> {
        self.table.remove(key)
    }

    pub(super) fn string(&mut self, key: &str) -> Result<Option<String>, ConfigError> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::String(s)) if !s.is_empty() => Ok(Some(s)),
            Some(Value::String(_)) => Err(self.err(key, "must not be empty")),
            Some(v) => Err(self.err(key, format!("must be a string, not {}", v.type_str()))),
        }
    }

    pub(super) fn required_string(&mut self, key: &str) -> Result<String, ConfigError> {
        self.string(key)?.ok_or_else(|| self.err(key, "is required"))
    }

    pub(super) fn path(&mut self, key: &str) -> Result<Option<PathBuf>, ConfigError> {
        Ok(self.string(key)?.map(PathBuf::from))
    }

    pub(super) fn bool(&mut self, key: &str, default: bool) -> Result<bool, ConfigError> {
        Ok(self.opt_bool(key)?.unwrap_or(default))
    }

    /// A boolean whose absence means something of its own.
    pub(super) fn opt_bool(&mut self, key: &str) -> Result<Option<bool>, ConfigError> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Boolean(b)) => Ok(Some(b)),
            Some(v) => Err(self.err(key, format!("must be true or false, not {}", v.type_str()))),
        }
    }

    pub(super) fn uint(&mut self, key: &str, max: u64) -> Result<Option<u64>, ConfigError> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Integer(i)) if i >= 0 && (i as u64) <= max => Ok(Some(i as u64)),
            Some(Value::Integer(i)) => Err(self.err(key, format!("{i} is out of range 0..={max}"))),
            Some(v) => Err(self.err(key, format!("must be an integer, not {}", v.type_str()))),
        }
    }

    pub(super) fn strings(&mut self, key: &str) -> Result<Option<Vec<String>>, ConfigError> {
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

    pub(super) fn uints(&mut self, key: &str) -> Result<Vec<u32>, ConfigError> {
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

    pub(super) fn sub(&mut self, key: &str) -> Result<Option<Reader<'a>>, ConfigError> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Table(t)) => Ok(Some(self.child(join(&self.path, key), t))),
            Some(v) => Err(self.err(key, format!("must be a table, not {}", v.type_str()))),
        }
    }

    pub(super) fn child(&self, path: String, table: Table) -> Reader<'a> {
        Reader {
            table,
            path,
            origin: self.origin,
            default_file: self.default_file.clone(),
        }
    }

    pub(super) fn tables(&mut self, key: &str) -> Result<Vec<Reader<'a>>, ConfigError> {
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
    pub(super) fn finish(self) -> Result<(), ConfigError> {
        match self.table.keys().next() {
            Some(k) => Err(self.err(k, "unknown key")),
            None => Ok(()),
        }
    }
}

pub(super) fn argv(r: &mut Reader, key: &str) -> Result<Option<Vec<String>>, ConfigError> {
    let v = r.strings(key)?;
    if v.as_ref().is_some_and(|a| a.is_empty() || a[0].is_empty()) {
        return Err(r.err(
            key,
            "must name a command: a non-empty array whose first item is the program",
        ));
    }
    Ok(v)
}

/// Whole seconds, at least one and at most `max`; `default` when absent.
pub(super) fn seconds(r: &mut Reader, key: &str, max: u64, default: Duration) -> Result<Duration, ConfigError> {
    match r.uint(key, max)? {
        Some(0) => Err(r.err(key, "must be at least 1 second")),
        Some(t) => Ok(Duration::from_secs(t)),
        None => Ok(default),
    }
}

/// A duration such as "90s", "15m", "1h", "30d"; `default` when absent.
pub(super) fn duration_or(r: &mut Reader, key: &str, default: Duration) -> Result<Duration, ConfigError> {
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

/// `"90s"`, `"15m"`, `"12h"`, `"30d"` or a number of seconds.
#[inline(never)]
pub(super) fn parse_duration(s: &str) -> Option<Duration> {
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

/// A certificate's SHA-256 fingerprint, if `key` is there.
pub(super) fn fingerprint(r: &mut Reader, key: &str) -> Result<Option<Fingerprint>, ConfigError> {
    match r.string(key)? {
        Some(text) => Fingerprint::parse(&text)
            .map(Some)
            .ok_or_else(|| r.err(key, format!("must be {}", Fingerprint::SYNTAX))),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::testing::*;
    use crate::config::*;

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
    fn syntax_errors_name_the_file() {
        let e = load(&["[node\n"]).unwrap_err();
        assert_eq!(e.file, "config.d/0.toml");
        assert!(e.reason.contains("TOML"));
    }
}
