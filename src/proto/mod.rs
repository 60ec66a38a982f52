//! The wire protocol and what carries it: frames and messages, byte streams and their
//! listeners, and the typed client of iamd's sockets.

pub mod client;
pub mod transport;
pub mod vchan;
pub mod wire;
