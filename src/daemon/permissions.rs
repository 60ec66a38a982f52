//! Permission secrets of service and component instances (RegisterInstance, GetPermissions).
//!
//! Each registered instance holds one secret (24 bytes from the OS CSPRNG, base64url: 32
//! characters) and its permissions per functional server. Registering an instance again
//! keeps its secret and replaces its permissions. Lookups compare every secret in constant
//! time. Registrations live in memory, and also in the database when configured to persist.

use crate::config::PermissionsConfig;
use crate::error::{Error, Result};
use crate::proto::wire::{InstanceIdent, ServerPermissions};
use crate::secret::{constant_time_eq, Secret};
use crate::store::db::Db;
use std::sync::Mutex;

/// Random bytes in a secret: 192 bits.
pub const SECRET_BYTES: usize = 24;

#[derive(Clone)]
pub struct Registration {
    pub instance: InstanceIdent,
    pub secret: Secret,
    pub permissions: Vec<ServerPermissions>,
}

pub struct Registry {
    config: PermissionsConfig,
    entries: Mutex<Vec<Registration>>,
}

/// URL-safe base64 without padding (RFC 4648 §5).
fn base64url(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..=c.len() {
            out.push(T[(n >> (18 - 6 * i)) as usize & 63] as char);
        }
    }
    out
}

pub fn new_secret() -> Result<Secret> {
    let mut raw = zeroize::Zeroizing::new([0u8; SECRET_BYTES]);
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), raw.as_mut())
        .map_err(|_| Error::internal("the OS random number generator failed"))?;
    Ok(Secret::new(base64url(raw.as_ref())))
}

/// The database key of an instance.
pub fn instance_key(i: &InstanceIdent) -> String {
    format!("{:?}/{}/{}/{}", i.kind, i.item_id, i.subject_id, i.instance)
}

fn validate(instance: &InstanceIdent, permissions: &[ServerPermissions]) -> Result<()> {
    if instance.item_id.is_empty() {
        return Err(Error::invalid("the instance's item_id is empty"));
    }
    for (i, p) in permissions.iter().enumerate() {
        if p.server.is_empty() {
            return Err(Error::invalid("a functional server id is empty"));
        }
        if permissions[..i].iter().any(|q| q.server == p.server) {
            return Err(Error::invalid(format!(
                "functional server \"{}\" is given twice",
                p.server
            )));
        }
        for (j, (name, _)) in p.entries.iter().enumerate() {
            if p.entries[..j].iter().any(|(n, _)| n == name) {
                return Err(Error::invalid(format!(
                    "permission \"{name}\" of server \"{}\" is given twice",
                    p.server
                )));
            }
        }
    }
    Ok(())
}

impl Registry {
    /// The registry, with the persisted registrations if so configured; if not, any left in
    /// the database from an earlier configuration are removed.
    pub fn open(config: PermissionsConfig, db: &Db) -> Result<Registry> {
        let mut entries = Vec::new();
        if config.persist {
            for (key, stored) in db.instances()? {
                match stored {
                    Ok(r) => entries.push(Registration {
                        instance: (&r.instance).into(),
                        secret: r.secret,
                        permissions: r.permissions.iter().map(Into::into).collect(),
                    }),
                    Err(e) => crate::log_warn!("instance record {key} is corrupt ({e}); dropped"),
                }
            }
        } else {
            db.clear_instances()?;
        }
        Ok(Registry {
            config,
            entries: Mutex::new(entries),
        })
    }

    pub fn register(&self, db: &Db, instance: InstanceIdent, permissions: Vec<ServerPermissions>) -> Result<Secret> {
        validate(&instance, &permissions)?;
        let mut entries = crate::sys::lock(&self.entries);
        let at = entries.iter().position(|r| r.instance == instance);
        if at.is_none() && entries.len() >= self.config.max_instances {
            return Err(Error::invalid(format!(
                "{} instances are registered already, the most allowed (permissions.max_instances)",
                entries.len()
            )));
        }
        let secret = match at {
            Some(i) => entries[i].secret.clone(),
            None => loop {
                let s = new_secret()?;
                if !entries.iter().any(|r| r.secret == s) {
                    break s;
                }
            },
        };
        let reg = Registration {
            instance,
            secret: secret.clone(),
            permissions,
        };
        if self.config.persist {
            let stored = crate::store::records::StoredRegistration {
                instance: (&reg.instance).into(),
                secret: reg.secret.clone(),
                permissions: reg.permissions.iter().map(Into::into).collect(),
            };
            db.put_instance(&instance_key(&reg.instance), &stored)?;
        }
        match at {
            Some(i) => entries[i] = reg,
            None => entries.push(reg),
        }
        Ok(secret)
    }

    pub fn unregister(&self, db: &Db, instance: &InstanceIdent) -> Result<()> {
        let mut entries = crate::sys::lock(&self.entries);
        let at = entries
            .iter()
            .position(|r| r.instance == *instance)
            .ok_or_else(|| Error::not_found(format!("instance {} is not registered", instance_key(instance))))?;
        if self.config.persist {
            db.remove_instance(&instance_key(instance))?;
        }
        entries.remove(at);
        Ok(())
    }

    /// The instance a secret belongs to and its permissions for `server`. Every secret is
    /// compared, in constant time; an unknown secret and an unknown server look the same.
    pub fn get(&self, secret: &Secret, server: &str) -> Result<(InstanceIdent, Vec<(String, String)>)> {
        let entries = crate::sys::lock(&self.entries);
        let mut found = None;
        for r in entries.iter() {
            if constant_time_eq(r.secret.expose().as_bytes(), secret.expose().as_bytes()) {
                found = Some(r);
            }
        }
        found
            .and_then(|r| {
                r.permissions
                    .iter()
                    .find(|p| p.server == server)
                    .map(|p| (r.instance.clone(), p.entries.clone()))
            })
            .ok_or_else(|| Error::not_found("no permissions for this secret and functional server"))
    }

    pub fn len(&self) -> usize {
        crate::sys::lock(&self.entries).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_url_safe_and_long_enough() {
        let s = new_secret().unwrap();
        assert_eq!(s.expose().len(), 32);
        assert!(s
            .expose()
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_ne!(new_secret().unwrap(), s);
        assert_eq!(base64url(b"\xfb\xff"), "-_8");
    }
}
