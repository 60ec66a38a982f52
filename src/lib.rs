//! aos-iam: the identity and access manager of a multi-node embedded unit.
//!
//! All behaviour lives in this library; the `aos-iam` binary (applets/) only parses
//! arguments, calls [`proto::client`] or [`daemon`], and prints. Data flows one way:
//! applets → client → wire → daemon → modules → key stores and database. The folders are
//! the layers: `proto` (wire, transport, client), `daemon` (iamd and its modules), `link`
//! (node links), `pki` (certificates), `store` (keys, database, files), `sys` (the OS);
//! docs/ARCHITECTURE.md §2 has one line per file.

pub mod codec;
pub mod config;
pub mod daemon;
pub mod error;
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
