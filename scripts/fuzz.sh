#!/bin/sh
# Run every fuzz target for FUZZ_SECONDS (default 60) on stable Rust (no sanitizer: the
# targets check their own invariants, and a panic or a hang is a crash), starting from the
# seed corpora the tests' inputs give (fuzz/examples/seeds.rs) and the corpus kept in
# target/fuzz-corpus. Prints executions and duration per target; exits 1 on a crash, whose
# input is left in fuzz/artifacts/TARGET/.
# Usage: scripts/fuzz.sh [TARGET...]
set -eu
cd "$(dirname "$0")/.."
seconds=${FUZZ_SECONDS:-60}
targets=${*:-frame_decode frame_server config chain csr est_pkcs7 http_scep crl scep_cert_rep vchan_ring}
command -v cargo-fuzz >/dev/null 2>&1 || cargo install --locked cargo-fuzz
mkdir -p target/fuzz
(cd fuzz && cargo run -q --locked --example seeds ../target/fuzz/seeds)
cargo fuzz build --sanitizer none -O >/dev/null 2>&1 || cargo fuzz build --sanitizer none -O
report=target/fuzz/report.txt
: > "$report"
status=0
for t in $targets; do
    mkdir -p "target/fuzz/corpus/$t"
    log="target/fuzz/$t.log"
    # -timeout: one input taking longer than 20 s is a hang; -rss_limit_mb: iamd included.
    if cargo fuzz run --sanitizer none -O "$t" "target/fuzz/corpus/$t" "target/fuzz/seeds/$t" -- \
        -max_total_time="$seconds" -timeout=20 -rss_limit_mb=1024 -print_final_stats=1 > "$log" 2>&1; then
        result=ok
    else
        result="CRASH (see $log and fuzz/artifacts/$t/)"
        status=1
    fi
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    secs=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)
    corpus=$(ls "target/fuzz/corpus/$t" | wc -l)
    printf '%-13s %10s executions in %4s s, corpus %5s inputs: %s\n' "$t" "${runs:-?}" "${secs:-?}" "$corpus" "$result" | tee -a "$report"
done
exit $status
