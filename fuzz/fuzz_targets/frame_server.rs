//! Raw bytes into a running iamd's socket, as a hostile client would send them: iamd must
//! answer or close every connection, and still serve a well-behaved client afterwards.
//!
//! Input: a flags byte (bit 0: send a valid Hello first; bit 1: the protected socket), then
//! the bytes to write.
#![no_main]
use std::time::Duration;

use aos_iam::proto::wire::{self, FrameKind, Request, Role, DEFAULT_BODY_LIMIT};
use aos_iam_fuzz::{Server, FLAG_HELLO, FLAG_PROTECTED};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let server = Server::get();
    let mut bytes = Vec::new();
    if flags & FLAG_HELLO != 0 {
        let hello = Request::Hello {
            version: aos_iam::PROTOCOL_VERSION,
            min_version: aos_iam::MIN_PROTOCOL_VERSION,
            role: Role::Client,
            node_id: String::new(),
        };
        bytes = wire::encode_frame(FrameKind::Request, 1, &hello, DEFAULT_BODY_LIMIT).unwrap();
    }
    bytes.extend_from_slice(rest);
    server.feed(flags & FLAG_PROTECTED != 0, &bytes, Duration::from_secs(10));
    let mut c = server.client().expect("iamd still accepts clients");
    c.version().expect("iamd still answers");
});
