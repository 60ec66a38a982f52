//! Decoding a frame body never allocates more than a small multiple of the body: measured
//! with a counting allocator over every request type, mutated and truncated bodies, huge
//! length prefixes at every position, and random bytes.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use aos_iam::proto::wire::{self, Event, Response};

#[path = "common/samples.rs"]
mod samples;

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = CURRENT.fetch_add(layout.size(), Ordering::SeqCst) + layout.size();
        PEAK.fetch_max(now, Ordering::SeqCst);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        CURRENT.fetch_sub(layout.size(), Ordering::SeqCst);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            let now = CURRENT.fetch_add(new_size - layout.size(), Ordering::SeqCst) + new_size - layout.size();
            PEAK.fetch_max(now, Ordering::SeqCst);
        } else {
            CURRENT.fetch_sub(layout.size() - new_size, Ordering::SeqCst);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Bytes allocated at the peak of decoding `body` as every message type, above what was
/// allocated before.
fn peak_while_decoding(body: &[u8]) -> usize {
    let base = CURRENT.load(Ordering::SeqCst);
    PEAK.store(base, Ordering::SeqCst);
    let _ = std::hint::black_box(wire::decode_request(body));
    let _ = std::hint::black_box(wire::decode_body::<Response>(body));
    let _ = std::hint::black_box(wire::decode_body::<Event>(body));
    PEAK.load(Ordering::SeqCst) - base
}

/// The allowance: 32 times the body (a minimal encoded item is 1 to 4 bytes, the largest
/// decoded one 80) plus a constant for the error message.
fn allowance(len: usize) -> usize {
    32 * len + 4096
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn decoding_allocates_at_most_a_small_multiple_of_the_body() {
    let mut bodies: Vec<Vec<u8>> = Vec::new();
    for r in samples::requests() {
        let body = postcard::to_stdvec(&r).unwrap();
        for cut in 0..body.len() {
            bodies.push(body[..cut].to_vec());
        }
        // A length prefix of 2^32-1 (or of 127 repeated items) at every position.
        for i in 0..body.len() {
            for huge in [&[0xff, 0xff, 0xff, 0xff, 0x0f][..], &[0x7f][..]] {
                let mut b = body[..i].to_vec();
                b.extend_from_slice(huge);
                b.extend_from_slice(&body[i..]);
                bodies.push(b);
            }
        }
        bodies.push(body);
    }
    // Many empty items behind one count: the densest growth postcard allows.
    for tag in 0..40u8 {
        let mut b = vec![tag, 0x80, 0x80, 0x01];
        b.extend(std::iter::repeat_n(0u8, 16 * 1024));
        bodies.push(b);
    }
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..20_000 {
        let len = (rng.next() % 512) as usize;
        bodies.push((0..len).map(|_| rng.next() as u8).collect());
    }

    let mut worst = (0.0f64, 0usize, 0usize);
    for body in &bodies {
        let peak = peak_while_decoding(body);
        assert!(
            peak <= allowance(body.len()),
            "decoding {} bytes allocated {peak} bytes (allowed {}): {:02x?}",
            body.len(),
            allowance(body.len()),
            &body[..body.len().min(64)]
        );
        let ratio = peak as f64 / body.len().max(1) as f64;
        if body.len() >= 64 && ratio > worst.0 {
            worst = (ratio, body.len(), peak);
        }
    }
    eprintln!(
        "{} bodies decoded; worst for 64 bytes or more: {} bytes → {} bytes allocated ({:.1}×)",
        bodies.len(),
        worst.1,
        worst.2,
        worst.0
    );
}
