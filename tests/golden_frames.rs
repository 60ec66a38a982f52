//! Golden frames: one encoded frame per message type and protocol version under
//! tests/data/wire/vN/, as hex. Every version's frames are decoded by this build (a
//! version it speaks is never dropped silently), and the current version's samples must
//! encode to exactly its frames, so that an encoding change cannot go unnoticed: a
//! deliberate one bumps the protocol version and adds a directory.

#[path = "common/samples.rs"]
mod samples;
use aos_iam::proto::wire::{self, FrameKind};
use std::path::{Path, PathBuf};

fn dir(version: u8) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/data/wire/v{version}"))
}

fn variant(debug: &str) -> String {
    debug
        .split(|c: char| !c.is_alphanumeric() && c != '_')
        .next()
        .unwrap()
        .to_string()
}

/// Every sample as (file name, kind, the sample's Debug text, its frame at `version`).
fn frames(version: u8) -> Vec<(String, FrameKind, String, Vec<u8>)> {
    let limit = wire::DEFAULT_BODY_LIMIT;
    let mut out = Vec::new();
    let mut add = |what: &str, i: usize, kind: FrameKind, debug: String, frame: Vec<u8>| {
        out.push((format!("{what}-{i:02}-{}.hex", variant(&debug)), kind, debug, frame));
    };
    // Samples are appended as versions bring them; a version's hello states that version.
    for (i, mut r) in samples::requests().into_iter().enumerate() {
        if r.since() > version {
            continue;
        }
        if let wire::Request::Hello { version: v, .. } = &mut r {
            *v = version;
        }
        let f = wire::encode_frame_at(
            version,
            FrameKind::Request,
            1,
            &wire::for_version(version, &r).unwrap(),
            limit,
        )
        .unwrap();
        add("request", i, FrameKind::Request, format!("{r:?}"), f);
    }
    for (i, r) in samples::responses().into_iter().enumerate() {
        if r.since() > version {
            continue;
        }
        let f = wire::encode_frame_at(version, FrameKind::Response, 1, &r, limit).unwrap();
        add("response", i, FrameKind::Response, format!("{r:?}"), f);
    }
    for (i, e) in samples::events().into_iter().enumerate() {
        if e.since() > version {
            continue;
        }
        let f = wire::encode_frame_at(version, FrameKind::Event, 7, &e, limit).unwrap();
        add("event", i, FrameKind::Event, format!("{e:?}"), f);
    }
    for (i, e) in samples::errors().into_iter().enumerate() {
        let f = wire::encode_frame_at(version, FrameKind::Error, 1, &e, limit).unwrap();
        add("error", i, FrameKind::Error, format!("{:?}", e.kind), f);
    }
    out
}

/// A frame as its golden file holds it: lower-case hex and a line end.
fn hex(b: &[u8]) -> String {
    aos_iam::codec::hex(b) + "\n"
}

fn unhex(s: &str) -> Vec<u8> {
    aos_iam::codec::unhex(s.trim()).expect("a golden frame is hex")
}

#[test]
#[ignore = "writes tests/data/wire/vN for the current protocol version: by hand, once per version"]
fn write_golden_frames() {
    let v = aos_iam::PROTOCOL_VERSION;
    assert!(
        !dir(v).exists(),
        "{} exists: golden frames are never rewritten",
        dir(v).display()
    );
    std::fs::create_dir_all(dir(v)).unwrap();
    for (name, _, _, frame) in frames(v) {
        std::fs::write(dir(v).join(name), hex(&frame)).unwrap();
    }
}

#[test]
fn every_version_spoken_encodes_every_message_exactly_as_its_golden_frame() {
    for v in aos_iam::MIN_PROTOCOL_VERSION..=aos_iam::PROTOCOL_VERSION {
        for (name, _, debug, frame) in frames(v) {
            let path = dir(v).join(&name);
            let golden = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e} (a new message type needs its golden frame)", path.display()));
            assert_eq!(hex(&frame), golden, "v{v} {name}: {debug} encodes differently");
        }
    }
}

/// A frame's message decoded at its header's version and encoded again at it.
fn reencode(name: &str, bytes: &[u8]) -> Vec<u8> {
    let header = wire::Header::decode(bytes[..wire::HEADER_LEN].try_into().unwrap(), wire::DEFAULT_BODY_LIMIT)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let (v, id, limit) = (header.version, header.id, wire::DEFAULT_BODY_LIMIT);
    let body = &bytes[wire::HEADER_LEN..];
    assert_eq!(body.len(), header.body_len as usize, "{name}");
    match header.kind {
        FrameKind::Request => {
            let r = wire::decode_request_at(v, body).unwrap_or_else(|e| panic!("{name}: {e}"));
            wire::encode_frame_at(v, header.kind, id, &wire::for_version(v, &r).unwrap(), limit)
        }
        FrameKind::Response => {
            let r: wire::Response = wire::decode_body(body).unwrap_or_else(|e| panic!("{name}: {e}"));
            wire::encode_frame_at(v, header.kind, id, &r, limit)
        }
        FrameKind::Event => {
            let e: wire::Event = wire::decode_body(body).unwrap_or_else(|e| panic!("{name}: {e}"));
            wire::encode_frame_at(v, header.kind, id, &e, limit)
        }
        FrameKind::Error => {
            let e: aos_iam::Error = wire::decode_body(body).unwrap_or_else(|e| panic!("{name}: {e}"));
            wire::encode_frame_at(v, header.kind, id, &e, limit)
        }
    }
    .unwrap()
}

#[test]
fn every_golden_frame_of_every_version_spoken_decodes_and_encodes_back_to_itself() {
    for v in aos_iam::MIN_PROTOCOL_VERSION..=aos_iam::PROTOCOL_VERSION {
        let files: Vec<String> = std::fs::read_dir(dir(v))
            .unwrap_or_else(|e| panic!("{}: {e}", dir(v).display()))
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".hex"))
            .collect();
        assert_eq!(files.len(), frames(v).len(), "v{v}: one golden frame per sample");
        for name in files {
            let bytes = unhex(&std::fs::read_to_string(dir(v).join(&name)).unwrap());
            assert_eq!(bytes[4], v, "{name}: header version");
            assert_eq!(hex(&reencode(&name, &bytes)), hex(&bytes), "v{v} {name}");
        }
    }
}

#[test]
fn a_version_1_hello_is_read_as_offering_version_1_only() {
    let bytes = unhex(&std::fs::read_to_string(dir(1).join("request-01-Hello.hex")).unwrap());
    let r = wire::decode_request_at(1, &bytes[wire::HEADER_LEN..]).unwrap();
    assert_eq!(
        r,
        aos_iam::proto::wire::Request::Hello {
            version: 1,
            min_version: 1,
            role: aos_iam::proto::wire::Role::NodeLink,
            node_id: "node-sec1".into()
        }
    );
    // ... and a version 2 hello in a version 1 frame is not one: its extra byte is refused.
    let v2 = unhex(&std::fs::read_to_string(dir(2).join("request-01-Hello.hex")).unwrap());
    let e = wire::decode_request_at(1, &v2[wire::HEADER_LEN..]).unwrap_err();
    assert!(e.message.contains("trailing"), "{e}");
}
