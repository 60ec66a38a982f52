# Sourced by scripts/demo.sh and scripts/demo-unit.sh, with DEMO set to the demo's name:
# the binary (AOS_IAM_BIN, made absolute), SoftHSM's module, the demo's directory (DEMO_DIR
# is kept, a temporary one is removed), the background processes in PIDS stopped on exit,
# and `say` for the headings.
BIN=${AOS_IAM_BIN:-target/release/aos-iam}
[ -x "$BIN" ] || { echo "$DEMO: $BIN is not built" >&2; exit 1; }
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
SOFTHSM_LIB=${SOFTHSM_LIB:-/usr/lib/softhsm/libsofthsm2.so}

if [ -n "${DEMO_DIR:-}" ]; then
    mkdir -p "$DEMO_DIR"; DIR=$(cd "$DEMO_DIR" && pwd); KEEP=1
else
    DIR=$(mktemp -d "/tmp/aos-iam-$DEMO.XXXXXX"); KEEP=0
fi
PIDS=""
cleanup() {
    for p in $PIDS; do kill "$p" 2>/dev/null || true; done
    for p in $PIDS; do wait "$p" 2>/dev/null || true; done
    if [ "$KEEP" = 0 ]; then rm -rf "$DIR"; else echo "$DEMO: kept everything in $DIR"; fi
}
trap cleanup EXIT INT TERM
say() { printf '\n== %s\n' "$*"; }
