//! aos-iam: the identity and access manager of a multi-node embedded unit.
//!
//! All behaviour lives in this library; the `aos-iam` binary (applets/) only parses
//! arguments, calls [`flows`], [`proto::client`] or [`daemon`], and prints. The folders are
//! layers, each importing only from those below it (docs/ARCHITECTURE.md, "Layers";
//! `make check-imports`), lowest first: `error`, `secret`, `log` and `codec`; `sys` (the
//! OS); `proto` (wire, transports, client); `config`; `store` (keys, database, files);
//! `pki` (certificates, TLS, EST, SCEP); `link` (node links); then, beside each other,
//! `daemon` (iamd and its modules) and `flows` (what a client drives through iamd).

pub mod codec;
pub mod config;
pub mod daemon;
pub mod error;
pub mod flows;
pub mod link;
pub mod log;
pub mod pki;
pub mod proto;
pub mod secret;
pub mod store;
pub mod sys;

pub use error::{Error, ErrorKind};

/// The newest protocol version this build speaks: in its hello, and in the header of every
/// frame to a peer that speaks it too (docs/ARCHITECTURE.md §3, versions).
pub const PROTOCOL_VERSION: u8 = 8;
/// The oldest protocol version this build still speaks, with a peer one release older.
pub const MIN_PROTOCOL_VERSION: u8 = 1;

/// Version of this build, as reported by `Version` and `--version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
