//! One framed connection on which both ends may have requests in flight: a node link
//! (main ↔ secondary), and iam-nodelink's connection to its own iamd.
//!
//! Each end numbers its own requests, and an answer (response or error frame) is matched to
//! its request by id alone, so any number of requests — of the same kind too — may be in
//! flight without overwriting each other. Requests from the other end are handed to the
//! owner with their id and answered with [`Peer::answer`]. When the connection ends, every
//! request still waiting fails at once with `unavailable`, naming the peer.

use crate::error::{Error, Result};
use crate::proto::transport::{self, BoxStream};
use crate::proto::wire::{self, Event, FrameError, FrameKind, Request, Response, Role, Wire};
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Requests this end may have waiting for an answer at once.
pub const MAX_PENDING: usize = 256;
/// Events of one subscription that may wait unread before the subscription is dropped.
pub const EVENT_BACKLOG: usize = 64;

enum Waiter {
    Call(smol::channel::Sender<Result<Response>>),
    /// The acknowledgement goes to `ack` (taken once used); events follow on `events`.
    Subscription {
        ack: Option<smol::channel::Sender<Result<Response>>>,
        events: smol::channel::Sender<Result<Event>>,
    },
}

pub struct Peer {
    name: String,
    /// The protocol version agreed in the hello, and the body limit.
    wire: Wire,
    /// How long the rest of a frame may take once it has begun.
    stall: std::time::Duration,
    writer: smol::lock::Mutex<smol::io::WriteHalf<BoxStream>>,
    waiters: Mutex<HashMap<u64, Waiter>>,
    next_id: AtomicU64,
    closed: Mutex<Option<String>>,
    /// Closed by [`Peer::close`], which ends [`Peer::read_loop`] even while it waits.
    stop: (smol::channel::Sender<()>, smol::channel::Receiver<()>),
}

use crate::sys::lock;

impl Peer {
    /// Wrap a stream whose hello is done. `name` is how errors name the other end
    /// (`node "n2"`, `the local iamd`); a frame that has begun must be complete within
    /// `stall`, or the connection ends; frames go out as `wire` says (the version agreed in
    /// the hello). Returns the peer and the half [`Peer::read_loop`] reads.
    pub fn new(
        name: String,
        stream: BoxStream,
        wire: Wire,
        stall: std::time::Duration,
    ) -> (Arc<Peer>, smol::io::ReadHalf<BoxStream>) {
        let (r, w) = smol::io::split(stream);
        let peer = Peer {
            name,
            wire,
            stall,
            writer: smol::lock::Mutex::new(w),
            waiters: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            closed: Mutex::new(None),
            stop: smol::channel::bounded(1),
        };
        (Arc::new(peer), r)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The largest frame body this link carries.
    pub fn body_limit(&self) -> u32 {
        self.wire.limit
    }

    /// The protocol version this link speaks.
    pub fn version(&self) -> u8 {
        self.wire.version
    }

    pub fn is_closed(&self) -> bool {
        lock(&self.closed).is_some()
    }

    fn lost(&self, reason: &str) -> Error {
        Error::unavailable(format!("{}: link lost ({reason})", self.name))
    }

    /// Write one whole frame; frames from concurrent tasks never interleave. A frame not
    /// written within the stall bound (the other end does not read) closes the connection,
    /// and so does [`Peer::close`] while a write waits: a half-written frame leaves nothing
    /// more to send, and no task stays behind a peer that never reads.
    pub async fn send(&self, frame: &[u8]) -> Result<()> {
        // Once closed, a frame still goes if it can go at once (the error that says why the
        // connection closes); one that would wait does not.
        let write = async {
            let mut w = self.writer.lock().await;
            transport::write_frame(&mut *w, frame)
                .await
                .map_err(|e| Error::unavailable(format!("{}: {e}", self.name)))
        };
        let closed = async {
            let _ = self.stop.1.recv().await;
            let reason = lock(&self.closed)
                .clone()
                .unwrap_or_else(|| "closed by this end".into());
            Err(self.lost(&reason))
        };
        let what = format!("{}: a frame was not taken", self.name);
        let r = transport::within(self.stall, what, smol::future::or(write, closed)).await;
        if let Err(e) = &r {
            if e.kind == crate::ErrorKind::Timeout {
                self.close(&format!(
                    "a frame could not be written within {} s: the other end does not read",
                    self.stall.as_secs()
                ));
            }
        }
        r
    }

    fn register(&self, waiter: Waiter) -> Result<u64> {
        if let Some(reason) = lock(&self.closed).as_ref() {
            return Err(self.lost(reason));
        }
        let mut w = lock(&self.waiters);
        if w.len() >= MAX_PENDING {
            return Err(Error::unavailable(format!(
                "{}: {MAX_PENDING} requests are already waiting for answers",
                self.name
            )));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        w.insert(id, waiter);
        Ok(id)
    }

    fn forget(&self, id: u64) {
        lock(&self.waiters).remove(&id);
    }

    async fn request(
        &self,
        request: &Request,
        waiter: Waiter,
        rx: smol::channel::Receiver<Result<Response>>,
        timeout: Duration,
    ) -> Result<(u64, Response)> {
        let id = self.register(waiter)?;
        // The whole exchange is bounded, the write too: a peer that stops reading must not
        // hold a caller forever.
        let writing = std::sync::atomic::AtomicBool::new(true);
        let exchange = async {
            // The frame may carry a password: zeroed once written.
            let frame = zeroize::Zeroizing::new(
                self.wire
                    .request(id, request)
                    .map_err(|e| e.context(self.name.clone()))?,
            );
            self.send(&frame).await?;
            writing.store(false, Ordering::Relaxed);
            rx.recv().await.unwrap_or_else(|_| Err(self.lost("connection closed")))
        };
        let what = format!("{}: no answer to {}", self.name, request.name());
        let answer = crate::proto::transport::within(timeout, what, exchange).await;
        if answer.is_err() {
            self.forget(id);
            if writing.load(Ordering::Relaxed) {
                // A frame may be half written: nothing more can be sent on this connection.
                self.close(&format!("a frame could not be written within {} s", timeout.as_secs()));
            }
        }
        answer.map(|r| (id, r))
    }

    /// Send a request and wait (at most `timeout`) for its answer.
    pub async fn call(&self, request: &Request, timeout: Duration) -> Result<Response> {
        let (tx, rx) = smol::channel::bounded(1);
        let answer = self.request(request, Waiter::Call(tx), rx, timeout).await;
        if let Ok((id, _)) = &answer {
            self.forget(*id);
        }
        answer.map(|(_, r)| r)
    }

    /// Start a subscription; its events (or the error that ends it) arrive on the receiver.
    pub async fn subscribe(
        &self,
        request: &Request,
        timeout: Duration,
    ) -> Result<smol::channel::Receiver<Result<Event>>> {
        let (ack, ack_rx) = smol::channel::bounded(1);
        let (events, events_rx) = smol::channel::bounded(EVENT_BACKLOG);
        let waiter = Waiter::Subscription { ack: Some(ack), events };
        match self.request(request, waiter, ack_rx, timeout).await? {
            (_, Response::Subscribed) => Ok(events_rx),
            (id, r) => {
                self.forget(id);
                Err(Error::protocol(format!(
                    "{}: {} answered {r:?}",
                    self.name,
                    request.name()
                )))
            }
        }
    }

    /// Answer a request of the other end.
    pub async fn answer(&self, id: u64, result: Result<Response>) -> Result<()> {
        let frame = match result {
            Ok(r) => self
                .wire
                .frame(FrameKind::Response, id, &r)
                .unwrap_or_else(|e| self.wire.error(id, &Error::from(e))),
            Err(e) => self.wire.error(id, &e),
        };
        self.send(&frame).await
    }

    fn deliver(&self, id: u64, answer: std::result::Result<Result<Response>, Event>) {
        let mut w = lock(&self.waiters);
        match (w.get_mut(&id), answer) {
            (Some(Waiter::Call(tx)), Ok(r)) => {
                let _ = tx.try_send(r);
                w.remove(&id);
            }
            (Some(Waiter::Subscription { ack: ack @ Some(_), .. }), Ok(r)) => {
                let failed = r.is_err();
                if let Some(a) = ack.take() {
                    let _ = a.try_send(r);
                }
                if failed {
                    w.remove(&id);
                }
            }
            (Some(Waiter::Subscription { ack: None, events }), Ok(Err(e))) => {
                let _ = events.try_send(Err(e));
                w.remove(&id);
            }
            (Some(Waiter::Subscription { ack: None, events }), Err(event)) => {
                let full = events.try_send(Ok(event)).is_err();
                // Not read for EVENT_BACKLOG events, or no longer wanted: the subscription ends.
                if full {
                    w.remove(&id);
                }
            }
            // A late answer to a request that timed out, or an answer nobody asked for.
            _ => {}
        }
    }

    /// Read frames until the connection ends: answers go to their requests, requests of the
    /// other end to `on_request` (awaited in order; `false` ends the connection). Returns
    /// why the connection ended; by then every waiting request has failed.
    pub async fn read_loop<F, Fut>(&self, mut reader: smol::io::ReadHalf<BoxStream>, mut on_request: F) -> String
    where
        F: FnMut(u64, Request) -> Fut,
        Fut: Future<Output = bool>,
    {
        let reason = loop {
            let next = smol::future::or(
                async { Some(transport::read_frame_timed(&mut reader, self.wire.limit, self.stall).await) },
                async {
                    let _ = self.stop.1.recv().await;
                    None
                },
            );
            let Some(next) = next.await else {
                break lock(&self.closed)
                    .clone()
                    .unwrap_or_else(|| "closed by this end".into());
            };
            let (header, body) = match next {
                Ok(Some(f)) => f,
                Ok(None) => break "connection closed".to_string(),
                Err(e) => {
                    if !matches!(e, FrameError::Io(_) | FrameError::Truncated) {
                        let _ = self.send(&self.wire.error(0, &e.clone().into())).await;
                    }
                    break e.to_string();
                }
            };
            let body = zeroize::Zeroizing::new(body);
            match header.kind {
                FrameKind::Request => match wire::decode_request_at(header.version, &body) {
                    Ok(r) => {
                        if !on_request(header.id, r).await {
                            break "closed by this end".to_string();
                        }
                    }
                    Err(e) => {
                        let _ = self.answer(header.id, Err(e.clone())).await;
                        break e.message;
                    }
                },
                FrameKind::Response => match wire::decode_body::<Response>(&body) {
                    Ok(r) => self.deliver(header.id, Ok(Ok(r))),
                    Err(e) => break format!("malformed answer: {e}"),
                },
                FrameKind::Error => match wire::decode_body::<Error>(&body) {
                    Ok(e) if header.id == 0 => break format!("closed by the other end: {e}"),
                    Ok(e) => self.deliver(header.id, Ok(Err(e))),
                    Err(e) => break format!("malformed error frame: {e}"),
                },
                FrameKind::Event => match wire::decode_body::<Event>(&body) {
                    Ok(ev) => self.deliver(header.id, Err(ev)),
                    Err(e) => break format!("malformed event: {e}"),
                },
            }
        };
        self.close(&reason);
        reason
    }

    /// End the connection in order, as a stopping process does: in TLS a `close_notify`
    /// goes out (the other end reads a clean end, not a cut), then the stream is closed; at
    /// most `within`, for a peer that reads nothing. Then as [`Peer::close`].
    pub async fn shutdown(&self, reason: &str, within: Duration) {
        // (Whatever ends the closing, the connection is closed below.)
        let _ = transport::within(within, "the end of the session", async {
            let mut w = self.writer.lock().await;
            let _ = smol::io::AsyncWriteExt::close(&mut *w).await;
            Ok(())
        })
        .await;
        self.close(reason);
    }

    /// Mark the connection ended: every waiting request fails now, later ones at once.
    pub fn close(&self, reason: &str) {
        lock(&self.closed).get_or_insert_with(|| reason.to_string());
        self.stop.0.close();
        let waiters: Vec<Waiter> = lock(&self.waiters).drain().map(|(_, w)| w).collect();
        for w in waiters {
            match w {
                Waiter::Call(tx) | Waiter::Subscription { ack: Some(tx), .. } => {
                    let _ = tx.try_send(Err(self.lost(reason)));
                }
                Waiter::Subscription { ack: None, events } => {
                    let _ = events.try_send(Err(self.lost(reason)));
                }
            }
        }
    }
}

/// What the dialing side's hello came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Greeting {
    /// The other end states `node_id`; the link speaks protocol `version`.
    Agreed { node_id: String, version: u8 },
    /// The other end refused the version offered and speaks only `version` (an iamd of the
    /// release before versions were agreed): dial again offering that.
    Older { version: u8, refusal: String },
}

/// The dialing side's hello: state the role, the node id and the protocol versions this
/// side speaks, from [`crate::MIN_PROTOCOL_VERSION`] up to `offer`. An incompatible version
/// is refused naming both.
pub async fn hello(
    stream: &mut BoxStream,
    role: Role,
    node_id: &str,
    limit: u32,
    timeout: Duration,
    offer: u8,
) -> Result<Greeting> {
    let exchange = async {
        let request = Request::Hello {
            version: offer,
            min_version: crate::MIN_PROTOCOL_VERSION,
            role,
            node_id: node_id.to_string(),
        };
        let frame = Wire { version: offer, limit }.request(0, &request)?;
        transport::write_frame(stream, &frame).await?;
        let (header, body) = transport::read_frame(stream, limit)
            .await?
            .ok_or_else(|| Error::unavailable("closed during the hello"))?;
        match header.kind {
            FrameKind::Error => {
                let e = wire::decode_body::<Error>(&body)?;
                // An older peer refuses the header's version before it reads the hello, and
                // answers in the one version it speaks.
                if e.kind == crate::ErrorKind::Protocol && header.version < offer {
                    return Ok(Greeting::Older {
                        version: header.version,
                        refusal: e.message,
                    });
                }
                Err(e)
            }
            FrameKind::Response => match wire::decode_body::<Response>(&body)? {
                Response::Hello { version, node_id } if (crate::MIN_PROTOCOL_VERSION..=offer).contains(&version) => {
                    Ok(Greeting::Agreed { node_id, version })
                }
                Response::Hello { version, .. } => Err(Error::protocol(format!(
                    "the other end answered protocol version {version}; this side offered versions {} to {offer}",
                    crate::MIN_PROTOCOL_VERSION
                ))),
                r => Err(Error::protocol(format!("expected Hello, got {r:?}"))),
            },
            k => Err(Error::protocol(format!("expected a Hello answer, got a {k:?} frame"))),
        }
    };
    crate::proto::transport::within(timeout, "no hello answer", exchange).await
}
