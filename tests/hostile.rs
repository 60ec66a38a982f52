//! Hostile clients against the real sockets: half a frame and silence, a flood beyond the
//! connection limit, a client that never reads its answers, and 10 000 random frames —
//! each refused or dropped with a clear error while other clients keep being served.

mod common;
use aos_iam::proto::wire::{self, FrameKind, Request, Role, HEADER_LEN, MAGIC};
use common::*;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

fn connect(path: &str) -> UnixStream {
    let s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

fn send(s: &mut UnixStream, id: u64, r: &Request) {
    s.write_all(&wire::encode_frame(FrameKind::Request, id, r, wire::DEFAULT_BODY_LIMIT).unwrap())
        .unwrap();
}

fn answer(s: &mut UnixStream) -> (wire::Header, Vec<u8>) {
    aos_iam::proto::transport::read_frame_blocking(s, wire::DEFAULT_BODY_LIMIT)
        .expect("a well-formed answer")
        .expect("an answer, not the end")
}

fn greet(path: &str) -> UnixStream {
    let mut s = connect(path);
    let hello = Request::Hello {
        version: aos_iam::PROTOCOL_VERSION,
        min_version: aos_iam::MIN_PROTOCOL_VERSION,
        role: Role::Client,
        node_id: String::new(),
    };
    send(&mut s, 1, &hello);
    assert_eq!(answer(&mut s).0.kind, FrameKind::Response);
    s
}

/// A greeted client still gets its Version answered.
fn served(s: &mut UnixStream, id: u64) {
    send(s, id, &Request::Version);
    let (h, _) = answer(s);
    assert_eq!((h.kind, h.id), (FrameKind::Response, id));
}

fn error_then_close(s: &mut UnixStream) -> aos_iam::Error {
    let (h, body) = answer(s);
    assert_eq!(h.kind, FrameKind::Error);
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    wire::decode_body(&body).unwrap()
}

fn node_with_limits(name: &str, limits: &str) -> Node {
    let mut node = Node::new(name, Store::Software);
    node.extra_config = format!("\n[limits]\n{limits}\n");
    node.start(true);
    node
}

#[test]
fn half_a_frame_then_silence_is_closed_after_the_frame_timeout_while_others_are_served() {
    let node = node_with_limits("stall", "frame_timeout = 1");
    let mut stalled = greet(&node.public());
    let frame = wire::encode_frame(FrameKind::Request, 2, &Request::Version, 1 << 16).unwrap();
    stalled.write_all(&frame[..5]).unwrap();
    let mut other = greet(&node.public());
    let t = Instant::now();
    served(&mut other, 2);
    let e = error_then_close(&mut stalled);
    assert_eq!(e.kind, aos_iam::ErrorKind::Timeout);
    assert!(e.message.contains("begun but not finished within 1 s"), "{e:?}");
    assert!(t.elapsed() < Duration::from_secs(10));
    served(&mut other, 3);
}

#[test]
fn connections_beyond_the_limit_are_refused_cleanly_and_the_others_keep_working() {
    let node = node_with_limits("flood", "max_connections = 4");
    let mut held: Vec<UnixStream> = (0..4).map(|_| greet(&node.public())).collect();
    for _ in 0..20 {
        let mut extra = connect(&node.public());
        let e = error_then_close(&mut extra);
        assert_eq!(e.kind, aos_iam::ErrorKind::Unavailable);
        assert!(
            e.message
                .contains("too many connections on the Public socket (at most 4)"),
            "{e:?}"
        );
    }
    for (i, s) in held.iter_mut().enumerate() {
        served(s, 10 + i as u64);
    }
    // The protected socket has its own places.
    node.provision(&["status"]).ok();
    // A place that frees up is taken again.
    drop(held.pop());
    std::thread::sleep(Duration::from_millis(200));
    let mut again = greet(&node.public());
    served(&mut again, 2);
}

#[test]
fn a_client_that_never_reads_its_answers_is_dropped_without_holding_up_others() {
    let node = node_with_limits("noread", "write_timeout = 1");
    let path = node.public();
    let mut greedy = greet(&path);
    let writer = std::thread::spawn(move || {
        // Requests as fast as they go, answers never read: the server's writes block.
        let frame = wire::encode_frame(FrameKind::Request, 2, &Request::Version, 1 << 16).unwrap();
        let burst: Vec<u8> = frame.iter().copied().cycle().take(frame.len() * 1000).collect();
        for _ in 0..200 {
            if greedy.write_all(&burst).is_err() {
                return true;
            }
        }
        false
    });
    let mut other = greet(&path);
    let t = Instant::now();
    for i in 0..20 {
        served(&mut other, 100 + i);
    }
    let dropped = writer.join().unwrap();
    assert!(dropped, "the client that never reads was not disconnected");
    assert!(t.elapsed() < Duration::from_secs(30));
    assert!(
        node.log().contains("did not read an answer within 1 s"),
        "{}",
        node.log()
    );
    served(&mut other, 200);
}

/// Random frames on one connection (a new one after each refusal): (answered, refused).
fn random_frames(path: &str, mut seed: u64, count: u64) -> (u64, u64) {
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let (mut answered, mut refused) = (0, 0);
    let mut s = greet(path);
    for i in 0..count {
        let len = (next() % 64) as usize;
        let body: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        let mut frame = Vec::with_capacity(HEADER_LEN + len);
        frame.extend_from_slice(&MAGIC.to_le_bytes());
        frame.push(aos_iam::PROTOCOL_VERSION);
        frame.push(0);
        frame.extend_from_slice(&0u16.to_le_bytes());
        frame.extend_from_slice(&(i + 2).to_le_bytes());
        frame.extend_from_slice(&(len as u32).to_le_bytes());
        frame.extend_from_slice(&body);
        s.write_all(&frame).unwrap();
        let (h, _) = answer(&mut s);
        match h.kind {
            FrameKind::Response | FrameKind::Event => answered += 1,
            FrameKind::Error => {
                refused += 1;
                // A request that did not decode closes the connection: a new one.
                let mut rest = Vec::new();
                let _ = s.read_to_end(&mut rest);
                s = greet(path);
            }
            FrameKind::Request => panic!("the server sent a request"),
        }
    }
    (answered, refused)
}

#[test]
fn ten_thousand_random_frames_are_answered_or_refused_and_iamd_keeps_serving() {
    let node = node_with_limits("random", "");
    let path = node.public();
    let counts = std::thread::scope(|scope| {
        let hs: Vec<_> = (0..4u64)
            .map(|t| {
                let path = path.clone();
                scope.spawn(move || {
                    random_frames(
                        &path,
                        0x9e37_79b9_7f4a_7c15 ^ (t + 1).wrapping_mul(0x2545_f491_4f6c_dd1d),
                        2500,
                    )
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect::<Vec<_>>()
    });
    let (answered, refused) = counts.iter().fold((0, 0), |a, c| (a.0 + c.0, a.1 + c.1));
    eprintln!("10 000 random frames: {answered} answered, {refused} refused");
    assert_eq!(answered + refused, 10_000);
    assert!(refused > 0);
    let mut other = greet(&path);
    served(&mut other, 2);
    node.provision(&["status"]).ok();
}
