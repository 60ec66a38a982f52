//! Certificates: X.509 building and validation, EST, CSR signers, the factory flow, and
//! certificate health as monitoring rates it.

pub mod dial;
pub mod est;
pub mod factory;
pub mod health;
pub mod profile;
pub mod scep;
pub mod signer;
pub mod x509;
