//! aos-iam: the identity and access manager of a multi-node embedded unit.
//!
//! All behaviour lives in this library; the `aos-iam` binary (applets/) only parses
//! arguments, calls [`client`] or [`server`], and prints. Data flows one way:
//! applets → client → wire → server → modules → keystore/db.

pub mod atomic_file;
pub mod broadcast;
pub mod certs;
pub mod client;
pub mod command;
pub mod config;
pub mod db;
pub mod der;
pub mod error;
pub mod est;
pub mod factory;
pub mod guesses;
pub mod health;
pub mod identity;
pub mod keystore;
pub mod log;
pub mod node_info;
pub mod nodelink;
pub mod nodes;
pub mod notify;
pub mod peer;
pub mod permissions;
pub mod provisioning;
pub mod quota;
pub mod renewal;
pub mod secret;
pub mod server;
pub mod signals;
pub mod signer;
pub mod tls;
pub mod transport;
pub mod wire;
pub mod x509;

pub use error::{Error, ErrorKind};

/// The protocol version this build speaks, in every frame header and in the hello.
pub const PROTOCOL_VERSION: u8 = 1;

/// Version of this build, as reported by `Version` and `--version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
