//! Where state lives: key stores (PKCS#11, software), the database, and atomic files.

pub mod atomic_file;
pub mod db;
pub mod keystore;
pub mod records;
