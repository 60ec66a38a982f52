//! The typed error every layer converts into before it crosses the wire.
//!
//! A kind that a program can branch on, and a message for humans that names what failed
//! (module, node, step, PKCS#11 return value) and never a secret.

use serde::{Deserialize, Serialize};
use std::fmt;

/// What went wrong, in the terms of docs/ARCHITECTURE.md §3. Stable on the wire: append only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    NotFound,
    InvalidArgument,
    WrongState,
    Unauthorized,
    Timeout,
    Unavailable,
    /// A PKCS#11 call or a key file failed; the string is the return value name (`CKR_PIN_INCORRECT`).
    KeyStore(String),
    /// A certificate or chain was refused; the string is the reason code (`UnknownIssuer`).
    Validation(String),
    /// The peer broke the wire protocol (bad frame, bad body, wrong version).
    Protocol,
    Internal,
}

impl ErrorKind {
    /// A short stable name, used in JSON output and logs.
    pub fn name(&self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not_found",
            ErrorKind::InvalidArgument => "invalid_argument",
            ErrorKind::WrongState => "wrong_state",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::KeyStore(_) => "key_store",
            ErrorKind::Validation(_) => "validation",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Internal => "internal",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
        }
    }
    pub fn not_found(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, m)
    }
    pub fn invalid(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, m)
    }
    pub fn wrong_state(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::WrongState, m)
    }
    pub fn unauthorized(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unauthorized, m)
    }
    pub fn unavailable(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, m)
    }
    pub fn protocol(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::Protocol, m)
    }
    pub fn internal(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, m)
    }
    pub fn validation(reason: impl Into<String>, m: impl Into<String>) -> Self {
        Self::new(ErrorKind::Validation(reason.into()), m)
    }

    /// Prefix the message with where it happened, keeping the kind.
    pub fn context(mut self, what: impl fmt::Display) -> Self {
        self.message = format!("{what}: {}", self.message);
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ErrorKind::KeyStore(rv) => write!(f, "{} ({rv})", self.message),
            ErrorKind::Validation(r) => write!(f, "{} ({r})", self.message),
            _ => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for Error {}

impl From<redb::Error> for Error {
    fn from(e: redb::Error) -> Self {
        Error::internal(format!("database: {e}"))
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error::from(redb::Error::from(e))
            }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

pub type Result<T, E = Error> = std::result::Result<T, E>;
