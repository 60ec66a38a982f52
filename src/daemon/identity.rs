//! The unit's identity: system id, unit model and version, and subjects, from files the
//! platform writes. Subjects are cached and compared on each check, so that a change can
//! be pushed to subscribers (on SIGHUP and every poll interval).

use crate::config::IdentityConfig;
use crate::error::{Error, Result};
use std::path::Path;
use std::sync::Mutex;

/// Most subjects, and longest line, read from the subjects file.
pub const MAX_SUBJECTS: usize = 256;
pub const MAX_LINE: usize = 256;

pub struct Identity {
    config: IdentityConfig,
    subjects: Mutex<Vec<String>>,
}

fn read_file(path: &Path, key: &str) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::unavailable(format!("identity.{key} {}: {e}", path.display())))
}

fn first_line(path: &Path, key: &str) -> Result<String> {
    let text = read_file(path, key)?;
    let line = text.lines().next().unwrap_or("").trim().to_string();
    if line.is_empty() || line.len() > MAX_LINE {
        return Err(Error::unavailable(format!(
            "identity.{key} {}: no value on its first line",
            path.display()
        )));
    }
    Ok(line)
}

impl Identity {
    pub fn new(config: IdentityConfig) -> Identity {
        let identity = Identity {
            config,
            subjects: Mutex::new(Vec::new()),
        };
        identity.refresh();
        identity
    }

    /// System id, unit model and version.
    pub fn system_info(&self) -> Result<(String, String, String)> {
        let unconfigured = |k: &str| Error::not_found(format!("identity.{k} is not configured"));
        let id_file = self
            .config
            .system_id_file
            .as_ref()
            .ok_or_else(|| unconfigured("system_id_file"))?;
        let model_file = self
            .config
            .unit_model_file
            .as_ref()
            .ok_or_else(|| unconfigured("unit_model_file"))?;
        let system_id = first_line(id_file, "system_id_file")?;
        let model = first_line(model_file, "unit_model_file")?;
        let (unit_model, version) = model.split_once(';').ok_or_else(|| {
            Error::unavailable(format!(
                "identity.unit_model_file {}: expected model;version",
                model_file.display()
            ))
        })?;
        Ok((system_id, unit_model.trim().to_string(), version.trim().to_string()))
    }

    pub fn subjects(&self) -> Vec<String> {
        crate::sys::lock(&self.subjects).clone()
    }

    fn read_subjects(&self) -> Vec<String> {
        let Some(path) = &self.config.subjects_file else {
            return Vec::new();
        };
        match read_file(path, "subjects_file") {
            Ok(text) => {
                let all: Vec<String> = text
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(str::to_string)
                    .collect();
                if all.len() > MAX_SUBJECTS || all.iter().any(|s| s.len() > MAX_LINE) {
                    crate::log_warn!(
                        "{}: more than {MAX_SUBJECTS} subjects or a line over {MAX_LINE} bytes; the rest is ignored",
                        path.display()
                    );
                }
                all.into_iter()
                    .filter(|s| s.len() <= MAX_LINE)
                    .take(MAX_SUBJECTS)
                    .collect()
            }
            Err(e) if path.exists() => {
                crate::log_warn!("{e}");
                self.subjects()
            }
            Err(_) => Vec::new(),
        }
    }

    /// Read the subjects again; `Some` with the new list if it changed.
    pub fn refresh(&self) -> Option<Vec<String>> {
        let fresh = self.read_subjects();
        let mut cur = crate::sys::lock(&self.subjects);
        (*cur != fresh).then(|| {
            *cur = fresh.clone();
            fresh
        })
    }
}
