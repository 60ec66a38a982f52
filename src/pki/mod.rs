//! Certificates: X.509 building and validation, the factory's profile, CSR signers, TLS
//! with the node's PKI, the HTTP and the connections of enrollment, EST and SCEP, and
//! certificate health as monitoring rates it.

pub mod dial;
pub mod est;
pub mod health;
pub mod http;
pub mod profile;
pub mod scep;
pub mod signer;
pub mod tls;
pub mod x509;
