#!/bin/sh
# `make demo-enroll`: zero-touch enrollment on throwaway SoftHSM tokens.
#
# A factory CA, and the unit's PKI as deployed: a root kept offline and an issuing CA under
# it (openssl, scripts/pki.sh); the project's EST test server (examples/est-test-server.rs)
# issuing with the issuing CA (its answers carry the leaf alone, as Cisco libest's do: the
# node completes each chain from /cacerts) and trusting the factory CA's bootstrap
# certificates. Node 1 is bootstrapped at a "factory" step (iamd --provisioning,
# iam-provision bootstrap), then started as at first power-on: it enrolls by itself. Node 2
# is bootstrapped the same way, then powered on while the EST server is down: it retries,
# enters quarantine, and leaves it once the server is back and an operator releases it.
# With DEMO_DIR=path everything is kept there.
set -eu
DEMO=demo-enroll
. "$(dirname "$0")/demo-lib.sh"
. "$(dirname "$0")/pki.sh"
EST_SERVER=${EST_TEST_SERVER:-target/release/examples/est-test-server}
[ -x "$EST_SERVER" ] || { echo "$DEMO: $EST_SERVER is not built" >&2; exit 1; }

mkdir -p "$DIR/bin" "$DIR/est"
for a in iamd iam-provision iam-certctl; do ln -sf "$BIN" "$DIR/bin/$a"; done
export PATH="$DIR/bin:$PATH"

ca() { # NAME SUBJECT: a root CA DIR/NAME.pem, DIR/NAME.key (EC P-384)
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-384 -nodes -days 3650 \
        -keyout "$DIR/$1.key" -out "$DIR/$1.pem" -subj "/O=aos-iam demo/CN=$2" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
}
say "a factory CA (bootstrap certificates) and the unit's PKI (operational ones: a root, offline, and an issuing CA), by openssl"
ca factory-ca "Demo Factory CA"
openssl x509 -in "$DIR/factory-ca.pem" -noout -subject
make_pki "$DIR" "Demo Unit"
cp "$DIR/ca.pem" "$DIR/issuing.pem" "$DIR/issuing.key" "$DIR/factory-ca.pem" "$DIR/est/"

PORT=$((20000 + $$ % 20000))
EST_PID=""
est_up() {
    "$EST_SERVER" "$DIR/est" "$PORT" claim-demo-4711 >> "$DIR/est/server.log" 2>&1 &
    EST_PID=$!
    PIDS="$PIDS $EST_PID"
    i=0
    until grep -q "^https://" "$DIR/est/server.log" 2>/dev/null && [ "$(grep -c '^https://' "$DIR/est/server.log")" -ge "$1" ]; do
        i=$((i + 1)); [ $i -lt 100 ] || { cat "$DIR/est/server.log"; echo "$DEMO: the EST server did not start" >&2; exit 1; }
        sleep 0.1
    done
    URL=$(grep '^https://' "$DIR/est/server.log" | tail -n 1)
}
est_down() { kill "$EST_PID"; wait "$EST_PID" 2>/dev/null || true; }
say "the EST test server"
est_up 1
echo "$URL (trust anchor $DIR/est/est-anchor.pem)"

node_dir() { echo "$DIR/node$1"; }
make_node() { # N: a node's token, configuration and password
    d=$(node_dir "$1")
    mkdir -p "$d/tokens" "$d/work" "$d/run"
    printf 'directories.tokendir = %s/tokens\nobjectstore.backend = file\nlog.level = ERROR\n' "$d" > "$d/softhsm2.conf"
    printf 'demo-node-000%s\n' "$1" > "$d/node-id"
    (umask 077; printf 'factory-secret\n' > "$d/password"; printf 'claim-demo-4711\n' > "$d/claim-token.txt")
    pkcs11="[modules.pkcs11]
library = \"$SOFTHSM_LIB\"
token_label = \"aos-demo\"
user_pin_file = \"$d/work/user-pin\""
    cat > "$d/config.toml" <<CONF
[node]
id_file = "$d/node-id"
name = "demo node $1"

[paths]
working_dir = "$d/work"
root_ca = "$DIR/ca.pem"
public_socket = "$d/run/public.sock"
protected_socket = "$d/run/protected.sock"

[[modules]]
id = "iam"
extended_key_usage = ["clientAuth", "serverAuth"]
$pkcs11

[[modules]]
id = "online"
algorithm = "ecdsa-p256"
extended_key_usage = ["clientAuth"]
$pkcs11

[[modules]]
id = "diskencryption"
self_signed = true
$pkcs11

[[modules]]
id = "bootstrap"
algorithm = "ecdsa-p256"
extended_key_usage = ["clientAuth"]
root_ca = "$DIR/factory-ca.pem"
$pkcs11

[enroll]
attempts = 3
retry = "2s"
max_retry = "4s"
timeout = "10s"
CONF
}

IAMD_PID=""
iamd_start() { # N [--provisioning]
    d=$(node_dir "$1"); shift
    SOFTHSM2_CONF="$d/softhsm2.conf" iamd -c "$d/config.toml" "$@" -v >> "$d/iamd.log" 2>&1 &
    IAMD_PID=$!
    PIDS="$PIDS $IAMD_PID"
    i=0
    until SOFTHSM2_CONF="$d/softhsm2.conf" iam-certctl -s "$d/run/protected.sock" status > /dev/null 2>&1 \
        || [ $? = 2 ]; do
        i=$((i + 1)); [ $i -lt 100 ] || { cat "$d/iamd.log"; echo "$DEMO: iamd did not start" >&2; exit 1; }
        kill -0 "$IAMD_PID" 2>/dev/null || { cat "$d/iamd.log"; echo "$DEMO: iamd exited" >&2; exit 1; }
        sleep 0.1
    done
}
iamd_stop() { kill -TERM "$IAMD_PID"; wait "$IAMD_PID" || true; }
certctl() { d=$(node_dir "$1"); shift; SOFTHSM2_CONF="$d/softhsm2.conf" iam-certctl -s "$d/run/protected.sock" "$@"; }
provision() { d=$(node_dir "$1"); shift; SOFTHSM2_CONF="$d/softhsm2.conf" iam-provision -s "$d/run/protected.sock" "$@"; }
wait_state() { # N STATE
    i=0
    until certctl "$1" --json status 2>/dev/null | grep -q "\"state\":\"$2\""; do
        i=$((i + 1)); [ $i -lt 600 ] || { certctl "$1" status || true; cat "$(node_dir "$1")/iamd.log"; echo "$DEMO: node $1 never got $2" >&2; exit 1; }
        sleep 0.1
    done
}
factory() { # N: bootstrap at the factory, then power off
    make_node "$1"
    iamd_start "$1" --provisioning
    provision "$1" bootstrap --ca-cert "$DIR/factory-ca.pem" --ca-key "$DIR/factory-ca.key" \
        --enroll-url "$URL" --enroll-anchor "$DIR/est/est-anchor.pem" \
        --claim-token-file "$(node_dir "$1")/claim-token.txt" --password-file "$(node_dir "$1")/password"
    certctl "$1" status
    iamd_stop
}

say "node 1 at the factory: iam-provision bootstrap (bootstrap key in the token, signed by the factory CA)"
factory 1

say "node 1, first power-on: iamd enrolls it by itself (log: $(node_dir 1)/iamd.log)"
iamd_start 1
wait_state 1 operational
certctl 1 status
grep "enrollment" "$(node_dir 1)/iamd.log"

say "node 1: its certificates, checked by openssl against the unit's root alone (and the factory CA)"
certctl 1 list
mkdir -p "$(node_dir 1)/issued"
for t in iam online bootstrap; do
    url=$(certctl 1 --json list | tr '{' '\n' | grep "\"type\":\"$t\"" | sed 's/.*"cert_url":"\([^"]*\)".*/\1/')
    SOFTHSM2_CONF="$(node_dir 1)/softhsm2.conf" p11tool --provider "$SOFTHSM_LIB" --export "$url" > "$(node_dir 1)/issued/$t.pem"
    if [ "$t" = bootstrap ]; then
        printf '%-10s ' "$t"; openssl verify -CAfile "$DIR/factory-ca.pem" "$(node_dir 1)/issued/$t.pem"
    else
        printf '%-10s ' "$t"; openssl verify -CAfile "$DIR/ca.pem" -untrusted "$DIR/issuing.pem" "$(node_dir 1)/issued/$t.pem"
    fi
done
iamd_stop

say "node 2 at the factory, then powered on while the EST server is down"
factory 2
est_down
iamd_start 2
wait_state 2 quarantined
certctl 2 status || echo "(iam-certctl status exits $? while the node is quarantined)"
certctl 2 check || echo "(iam-certctl check exits $?: CRITICAL)"

say "the EST server is back; an operator releases node 2 (iam-provision release-quarantine)"
est_up 2
provision 2 release-quarantine --password-file "$(node_dir 2)/password"
wait_state 2 operational
certctl 2 status
iamd_stop
est_down

echo
echo "$DEMO: node 1 enrolled at first power-on; node 2 was quarantined, released, and enrolled"
if [ "$KEEP" = 1 ]; then
    cat <<USE

What was made is kept in $DIR: node1/ and node2/ (token, configuration, iamd.log, issued/),
est/ (the EST server's CA, anchor and log), the factory CA. To start node 1's iamd again:
  SOFTHSM2_CONF=$(node_dir 1)/softhsm2.conf $BIN iamd -c $(node_dir 1)/config.toml &
  $BIN iam-certctl -s $(node_dir 1)/run/protected.sock status
USE
fi
