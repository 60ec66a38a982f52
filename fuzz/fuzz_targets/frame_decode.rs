//! A frame as iamd reads it: the header checked field by field, then the body decoded as
//! each message type and its bounds checked. Whatever decodes must encode back to a frame
//! that decodes to the same value.
#![no_main]
use aos_iam::proto::wire::{self, Event, FrameKind, Header, Response, DEFAULT_BODY_LIMIT, HEADER_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() >= HEADER_LEN {
        let head: &[u8; HEADER_LEN] = data[..HEADER_LEN].try_into().unwrap();
        if let Ok(h) = Header::decode(head, DEFAULT_BODY_LIMIT) {
            assert!(h.body_len <= DEFAULT_BODY_LIMIT);
        }
    }
    let body = data.get(HEADER_LEN..).unwrap_or(data);
    if let Ok(r) = wire::decode_request(body) {
        let again = wire::encode_frame(FrameKind::Request, 7, &r, u32::MAX).expect("a decoded request encodes");
        assert_eq!(wire::decode_request(&again[HEADER_LEN..]).expect("re-decodes"), r);
    }
    if let Ok(r) = wire::decode_body::<Response>(body) {
        let again = postcard::to_stdvec(&r).unwrap();
        assert_eq!(wire::decode_body::<Response>(&again).unwrap(), r);
    }
    if let Ok(e) = wire::decode_body::<Event>(body) {
        let again = postcard::to_stdvec(&e).unwrap();
        assert_eq!(wire::decode_body::<Event>(&again).unwrap(), e);
    }
});
