#!/bin/sh
# The static-pie binary and tpm2-pkcs11 (make test runs it). A static glibc program cannot
# host the TPM libraries: the tabrmd TCTI's GLib aborted it inside C_Initialize (and an unset
# TPM2_PKCS11_TCTI, whose loader tries tabrmd first, crashed it), and through any other TCTI
# the first TPM error crashed it in libtss2-rc (thread-local storage). The static binary
# refuses the module with a clear error, at --check-config and at start, whatever the TCTI;
# the dynamic binary accepts the same configuration.
# Usage: check-static-tpm.sh STATIC_BINARY DYNAMIC_BINARY
set -eu
BIN=$1 DYNAMIC=$2
LIB=/usr/lib/x86_64-linux-gnu/pkcs11/libtpm2_pkcs11.so
[ -e "$LIB" ] || { echo "check-static-tpm: $LIB is missing (scripts/deps.sh test installs it)" >&2; exit 1; }
DIR=$(mktemp -d /tmp/aos-iam-static-tpm.XXXXXX)
trap 'rm -rf "$DIR"' EXIT
fail() { echo "check-static-tpm: $*" >&2; exit 1; }

printf 'static-tpm-0001\n' > "$DIR/node-id"
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

for tcti in unset tabrmd:bus_type=session device:/dev/tpmrm0 swtpm:host=127.0.0.1,port=2321; do
    if [ "$tcti" = unset ]; then run() { env -u TPM2_PKCS11_TCTI "$@"; }; else run() { env TPM2_PKCS11_TCTI="$tcti" "$@"; }; fi
    status=0; run "$BIN" iamd -c "$DIR/config.toml" --check-config > "$DIR/out" 2>&1 || status=$?
    [ "$status" = 1 ] || fail "--check-config with TCTI $tcti: exit $status, not 1"
    grep -q 'libtpm2_pkcs11.so from the static build.*use the dynamic build' "$DIR/out" || fail "--check-config with TCTI $tcti: $(cat "$DIR/out")"
    status=0; run "$BIN" iamd -c "$DIR/config.toml" --provisioning > "$DIR/out" 2>&1 || status=$?
    [ "$status" -ge 1 ] && [ "$status" -lt 128 ] || fail "iamd with TCTI $tcti: exit $status (a signal, or no error)"
    grep -q 'libtpm2_pkcs11.so from the static build' "$DIR/out" || fail "iamd with TCTI $tcti: $(cat "$DIR/out")"
    [ ! -S "$DIR/run/protected.sock" ] || fail "iamd with TCTI $tcti left a socket behind"
    run "$DYNAMIC" iamd -c "$DIR/config.toml" --check-config > "$DIR/out" 2>&1 || fail "the dynamic binary refuses TCTI $tcti: $(cat "$DIR/out")"
    echo "check-static-tpm: TCTI $tcti: static binary refuses (--check-config exit 1, iamd exit $status), dynamic binary accepts"
done
