//! One end of a Xen vchan against another domain that rewrites the shared page at will
//! (indexes, ring orders, live and notify flags, bytes) between our reads and writes:
//! nothing may panic, a read or write never returns more than asked, and nothing outside
//! the page is written.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    aos_iam::proto::vchan::against_a_hostile_peer(data);
});
