//! Attackers for the trust-boundary tests: raw frames, and a process that holds iamd's
//! places as another local user (tests/scripts/hold.py under setpriv).

use super::*;
use aos_iam::proto::wire::{self, FrameKind, Request, Role};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};

const ATTACKER: &str = include_str!("../scripts/hold.py");

pub fn frame(request: &Request) -> Vec<u8> {
    wire::encode_frame(FrameKind::Request, 1, request, 1 << 16).unwrap()
}

pub fn hello_frame() -> Vec<u8> {
    frame(&Request::Hello {
        version: aos_iam::PROTOCOL_VERSION,
        min_version: aos_iam::MIN_PROTOCOL_VERSION,
        role: Role::Client,
        node_id: String::new(),
    })
}

pub use aos_iam::codec::hex;

/// An attacker process as `uid`, holding what it got until dropped.
pub struct Attacker {
    pub child: Child,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
    pub connections: usize,
    pub subscriptions: usize,
    pub refused: Vec<String>,
}

impl Attacker {
    /// Open up to `connections` to `socket`, then send each of `requests` `per_connection`
    /// times on each.
    pub fn start(uid: u32, socket: &str, connections: usize, per_connection: usize, requests: &[Request]) -> Attacker {
        require_root();
        let list: Vec<String> = requests.iter().map(|r| hex(&frame(r))).collect();
        let mut child = Command::new("setpriv")
            .args([
                &format!("--reuid={uid}"),
                &format!("--regid={uid}"),
                "--clear-groups",
                "--",
            ])
            .args(["/usr/bin/python3", "-c", ATTACKER, socket])
            .args([
                connections.to_string(),
                per_connection.to_string(),
                hex(&hello_frame()),
                list.join(","),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut a = Attacker {
            connections: 0,
            subscriptions: 0,
            refused: Vec::new(),
            child,
            lines,
        };
        while let Some(line) = a.lines.next() {
            let line = line.unwrap();
            if let Some(n) = line.strip_prefix("connections ") {
                a.connections = n.parse().unwrap();
            } else if let Some(n) = line.strip_prefix("subscriptions ") {
                a.subscriptions = n.parse().unwrap();
            } else if let Some(r) = line.strip_prefix("refused ") {
                a.refused.push(r.to_string());
            } else if line == "holding" {
                return a;
            }
        }
        panic!("the attacker as uid {uid} ended before holding: {:?}", a.child.wait());
    }

    /// Let go; how many of its connections iamd had kept open until then.
    pub fn finish(mut self) -> usize {
        drop(self.child.stdin.take());
        let line = self.lines.next().expect("a last report").unwrap();
        line.strip_prefix("open ").expect("open N").parse().unwrap()
    }

    #[track_caller]
    pub fn refused_for(&self, limit: &str) {
        assert!(
            self.refused.iter().any(|r| r.contains(limit)),
            "expected a refusal naming {limit}, got {:?}",
            self.refused
        );
    }
}

impl Drop for Attacker {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// A greeted connection to `socket`.
pub fn connect(socket: &str) -> UnixStream {
    let mut s = UnixStream::connect(socket).unwrap();
    s.write_all(&hello_frame()).unwrap();
    let (h, _) = read_answer(&mut s);
    assert_eq!(h.kind, FrameKind::Response);
    s
}

pub fn read_answer(s: &mut UnixStream) -> (wire::Header, Vec<u8>) {
    aos_iam::proto::transport::read_frame_blocking(s, wire::DEFAULT_BODY_LIMIT)
        .expect("a well-formed frame")
        .expect("a frame, not the end")
}
