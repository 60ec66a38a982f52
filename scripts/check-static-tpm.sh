#!/bin/sh
# The static-pie binary on tpm2-pkcs11 (make test runs it): a static glibc program cannot
# host GLib, so the tabrmd TCTI (and an unset TPM2_PKCS11_TCTI, whose loader tries tabrmd
# first) is refused with a clear error instead of the SIGABRT or SIGSEGV it would end in;
# with a TCTI without GLib (here swtpm's own, the device TCTI on hardware) the static binary
# provisions a node on the TPM, and `iam-certctl check`, p11tool and openssl judge the result.
# Usage: check-static-tpm.sh STATIC_BINARY
set -eu
BIN=$1
LIB=/usr/lib/x86_64-linux-gnu/pkcs11/libtpm2_pkcs11.so
DIR=$(mktemp -d /tmp/aos-iam-static-tpm.XXXXXX)
PIDS=
cleanup() {
    for p in $PIDS; do kill "$p" 2>/dev/null || true; done
    rm -rf "$DIR"
}
trap cleanup EXIT
fail() { echo "check-static-tpm: $*" >&2; [ ! -f "$DIR/iamd.log" ] || cat "$DIR/iamd.log" >&2; exit 1; }

mkdir -p "$DIR/tpm-state" "$DIR/tpm-store"
printf 'static-tpm-0001\n' > "$DIR/node-id"
(umask 077; printf 'factory-secret\n' > "$DIR/password")
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
    -keyout "$DIR/ca.key" -out "$DIR/ca.pem" -subj "/CN=static tpm check CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
cat > "$DIR/config.toml" <<CONF
[node]
id_file = "$DIR/node-id"
type = "main"

[paths]
working_dir = "$DIR/work"
root_ca = "$DIR/ca.pem"
public_socket = "$DIR/run/public.sock"
protected_socket = "$DIR/run/protected.sock"

[[modules]]
id = "iam"
algorithm = "ecdsa-p256"
extended_key_usage = ["clientAuth", "serverAuth"]
[modules.pkcs11]
library = "$LIB"
slot_index = 0
init_label = "aos-static"
user_pin_file = "$DIR/work/user-pin"
CONF

# 1. Refused, by --check-config and by iamd's start, with what to set instead.
for tcti in unset tabrmd:bus_type=session; do
    if [ "$tcti" = unset ]; then run() { env -u TPM2_PKCS11_TCTI "$@"; }; else run() { env TPM2_PKCS11_TCTI="$tcti" "$@"; }; fi
    status=0; run "$BIN" iamd -c "$DIR/config.toml" --check-config > "$DIR/out" 2>&1 || status=$?
    [ "$status" = 1 ] || fail "--check-config with TCTI $tcti: exit $status, not 1"
    grep -q 'TPM2_PKCS11_TCTI=device:/dev/tpmrm0' "$DIR/out" || fail "--check-config with TCTI $tcti: $(cat "$DIR/out")"
    status=0; run "$BIN" iamd -c "$DIR/config.toml" --provisioning > "$DIR/out" 2>&1 || status=$?
    [ "$status" -ge 1 ] && [ "$status" -lt 128 ] || fail "iamd with TCTI $tcti: exit $status (a signal, or no error)"
    grep -q 'cannot use .*libtpm2_pkcs11.so from the static build' "$DIR/out" || fail "iamd with TCTI $tcti: $(cat "$DIR/out")"
    echo "check-static-tpm: TCTI $tcti refused: exit $status, $(grep -o 'TPM2_PKCS11_TCTI[^,;]*' "$DIR/out" | head -1)"
done

# 2. Provisioned through swtpm's own TCTI (one client at a time: iamd alone uses the TPM).
PORT=$((20000 + ($$ * 2 + 7) % 20000))
swtpm socket --tpm2 --flags not-need-init,startup-clear --tpmstate "dir=$DIR/tpm-state" \
    --server "type=tcp,port=$PORT,bindaddr=127.0.0.1" --ctrl "type=tcp,port=$((PORT + 1)),bindaddr=127.0.0.1" &
PIDS="$PIDS $!"
i=0
until tpm2_getcap -T "swtpm:host=127.0.0.1,port=$PORT" properties-fixed > /dev/null 2>&1; do
    i=$((i + 1)); [ $i -lt 100 ] || fail "swtpm did not start"
    sleep 0.1
done
export TPM2_PKCS11_TCTI="swtpm:host=127.0.0.1,port=$PORT" TPM2_PKCS11_STORE="$DIR/tpm-store"
"$BIN" iamd -c "$DIR/config.toml" --check-config > /dev/null || fail "--check-config refused a swtpm TCTI"
"$BIN" iamd -c "$DIR/config.toml" --provisioning -v > "$DIR/iamd.log" 2>&1 &
IAMD=$!
PIDS="$PIDS $IAMD"
i=0
until [ -S "$DIR/run/protected.sock" ]; do
    i=$((i + 1)); [ $i -lt 100 ] || fail "iamd did not start"
    kill -0 "$IAMD" 2>/dev/null || fail "iamd exited"
    sleep 0.1
done
"$BIN" iam-provision -s "$DIR/run/protected.sock" run --ca-cert "$DIR/ca.pem" --ca-key "$DIR/ca.key" \
    --password-file "$DIR/password" > "$DIR/run.out" 2>&1 || { cat "$DIR/run.out" >&2; fail "iam-provision run failed"; }
"$BIN" iam-certctl -s "$DIR/run/protected.sock" check > "$DIR/check.out" 2>&1 \
    || { cat "$DIR/check.out" >&2; fail "iam-certctl check is not ok"; }
URL=$("$BIN" iam-certctl -s "$DIR/run/public.sock" --json get iam | sed 's/.*"cert_url":"\([^"]*\)".*/\1/')
kill -TERM "$IAMD"; wait "$IAMD" || fail "iamd did not stop cleanly"
# iamd has let go of the TPM: p11tool reads the certificate from the token itself.
p11tool --provider "$LIB" --export "$URL" > "$DIR/iam.pem" 2> "$DIR/p11tool.err" || { cat "$DIR/p11tool.err" >&2; fail "p11tool cannot export $URL"; }
openssl verify -CAfile "$DIR/ca.pem" "$DIR/iam.pem" > /dev/null || fail "openssl verify refused the iam certificate"
echo "check-static-tpm: static binary provisioned on tpm2-pkcs11 (swtpm TCTI): iam-certctl check ok, p11tool export and openssl verify ok"
