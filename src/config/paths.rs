//! `[paths]`: the working directory, the sockets and who may use the protected one, the
//! trust anchors and CRLs, the provisioned and deployed markers.

use super::reader::Reader;
use super::ConfigError;
use std::path::{Path, PathBuf};
use toml::{Table, Value};

pub const DEFAULT_WORKING_DIR: &str = "/var/aos/iam";

pub const DEFAULT_PUBLIC_SOCKET: &str = "/run/aos-iam/public.sock";

pub const DEFAULT_PROTECTED_SOCKET: &str = "/run/aos-iam/protected.sock";

pub const DEFAULT_PROTECTED_MODE: u32 = 0o660;

pub const DEFAULT_PUBLIC_MODE: u32 = 0o666;

/// File name of the database inside the working directory.
pub const DB_FILE: &str = "iam.db";

/// File name of the provisioned marker inside the working directory, unless configured.
pub const MARKER_FILE: &str = "provisioned";

/// File name, beside the provisioned marker, of the marker that the node has left the
/// factory: provisioned, or bootstrapped to enroll itself (enrolling, quarantined or
/// operational). The layer's units choose iamd's mode by the two (docs/ARCHITECTURE.md §8).
pub const DEPLOYED_FILE: &str = "deployed";

/// The CRL files checked with: `crl`, and `main_crl` once iam-nodelink has written it.
pub fn crl_files(crl: &[PathBuf], main_crl: Option<&Path>) -> Vec<PathBuf> {
    let mut files = crl.to_vec();
    files.extend(main_crl.filter(|p| p.exists()).map(Path::to_path_buf));
    files
}

fn mode(r: &mut Reader, key: &str, default: u32) -> Result<u32, ConfigError> {
    match r.take(key) {
        None => Ok(default),
        Some(Value::String(s)) => u32::from_str_radix(&s, 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| r.err(key, format!("\"{s}\" is not an octal file mode such as \"0660\""))),
        Some(v) => Err(r.err(
            key,
            format!("must be an octal string such as \"0660\", not {}", v.type_str()),
        )),
    }
}

/// `[paths]` as read.
pub(super) struct Paths {
    pub working_dir: PathBuf,
    pub root_ca: Option<PathBuf>,
    pub crl: Vec<PathBuf>,
    pub public_socket: PathBuf,
    pub protected_socket: PathBuf,
    pub protected_socket_mode: u32,
    pub protected_socket_group: Option<u32>,
    pub allowed_uids: Vec<u32>,
    pub allowed_gids: Vec<u32>,
    pub marker_file: PathBuf,
}

#[inline(never)]
pub(super) fn parse(root: &mut Reader) -> Result<Paths, ConfigError> {
    let mut paths = root
        .sub("paths")?
        .unwrap_or_else(|| root.child("paths".into(), Table::new()));
    let working_dir = paths
        .path("working_dir")?
        .unwrap_or_else(|| PathBuf::from(DEFAULT_WORKING_DIR));
    let root_ca = paths.path("root_ca")?;
    let crl: Vec<PathBuf> = paths
        .strings("crl")?
        .unwrap_or_default()
        .into_iter()
        .map(PathBuf::from)
        .collect();
    let public_socket = paths
        .path("public_socket")?
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PUBLIC_SOCKET));
    let protected_socket = paths
        .path("protected_socket")?
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PROTECTED_SOCKET));
    let protected_socket_mode = mode(&mut paths, "protected_socket_mode", DEFAULT_PROTECTED_MODE)?;
    let protected_socket_group = paths.uint("protected_socket_group", u32::MAX as u64)?.map(|g| g as u32);
    let allowed_uids = paths.uints("allowed_uids")?;
    let allowed_gids = paths.uints("allowed_gids")?;
    let marker_file = paths
        .path("provisioned_marker")?
        .unwrap_or_else(|| working_dir.join(MARKER_FILE));
    paths.finish()?;
    if public_socket == protected_socket {
        return Err(root.err("paths.protected_socket", "must differ from paths.public_socket"));
    }
    Ok(Paths {
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
    })
}

#[cfg(test)]
mod tests {
    use crate::config::testing::*;
    use crate::config::*;

    #[test]
    fn paths_default_under_the_working_dir_and_the_sockets_must_differ() {
        let c =
            load(&["[paths]\nworking_dir = \"/w\"\nprotected_socket_mode = \"0640\"\nallowed_uids = [5]\n"]).unwrap();
        assert_eq!(c.marker_file, std::path::Path::new("/w").join(MARKER_FILE));
        assert_eq!(c.db_path(), std::path::Path::new("/w").join(DB_FILE));
        assert_eq!((c.protected_socket_mode, c.allowed_uids.as_slice()), (0o640, &[5][..]));
        assert_eq!(c.public_socket, std::path::Path::new(DEFAULT_PUBLIC_SOCKET));
        let e = load(&["[paths]\nprotected_socket = \"/run/p.sock\"\npublic_socket = \"/run/p.sock\"\n"]).unwrap_err();
        assert_eq!(
            (e.key.as_str(), e.reason.as_str()),
            ("paths.protected_socket", "must differ from paths.public_socket")
        );
        let e = load(&["[paths]\nallowed_gids = [-1]\n"]).unwrap_err();
        assert_eq!(e.key, "paths.allowed_gids[0]");
    }
}
