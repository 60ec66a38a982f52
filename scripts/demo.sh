#!/bin/sh
# The README's demo: provision one node end to end on a throwaway SoftHSM token, or with
# KEYSTORE=tpm on a software TPM 2.0 (swtpm behind tpm2-abrmd, the tpm2-pkcs11 module).
#
# Creates a token, a root CA and an iamd configuration in a temporary directory, starts
# iamd in provisioning mode, provisions the node with `iam-provision run`, shows the
# certificates and the token objects, checks them with openssl, stops iamd and cleans up.
# With DEMO_DIR=path everything is kept there for inspection.
set -eu
DEMO=demo
. "$(dirname "$0")/demo-lib.sh"

mkdir -p "$DIR/bin" "$DIR/tokens" "$DIR/work" "$DIR/run"
for a in iamd iam-provision iam-certctl; do ln -sf "$BIN" "$DIR/bin/$a"; done
export PATH="$DIR/bin:$PATH"
export SOFTHSM2_CONF="$DIR/softhsm2.conf"
printf 'directories.tokendir = %s/tokens\nobjectstore.backend = file\nlog.level = ERROR\n' "$DIR" > "$SOFTHSM2_CONF"
KEYSTORE=${KEYSTORE:-softhsm}
case "$KEYSTORE" in
softhsm)
    LIB=$SOFTHSM_LIB
    TOKEN_KEYS='token_label = "aos-demo"'
    TOKEN_ARGS="--token-label aos-demo"
    ;;
tpm)
    LIB=/usr/lib/x86_64-linux-gnu/pkcs11/libtpm2_pkcs11.so
    TOKEN_KEYS='slot_index = 0
init_label = "aos-demo"'
    TOKEN_ARGS="--slot-index 0"
    say "a software TPM 2.0: swtpm, behind tpm2-abrmd on a private D-Bus session"
    mkdir -p "$DIR/tpm-state" "$DIR/tpm-store"
    TPM_PORT=$((20000 + ($$ * 2) % 20000))
    swtpm socket --tpm2 --flags not-need-init,startup-clear --tpmstate "dir=$DIR/tpm-state" \
        --server "type=tcp,port=$TPM_PORT,bindaddr=127.0.0.1" --ctrl "type=tcp,port=$((TPM_PORT + 1)),bindaddr=127.0.0.1" &
    PIDS="$PIDS $!"
    dbus-daemon --session --fork --print-address=1 --print-pid=1 > "$DIR/dbus" 2>/dev/null
    DBUS_SESSION_BUS_ADDRESS=$(sed -n 1p "$DIR/dbus"); export DBUS_SESSION_BUS_ADDRESS
    PIDS="$PIDS $(sed -n 2p "$DIR/dbus")"
    i=0
    until tpm2_getcap -T "swtpm:host=127.0.0.1,port=$TPM_PORT" properties-fixed > /dev/null 2>&1; do
        i=$((i + 1)); [ $i -lt 100 ] || { echo "demo: swtpm did not start" >&2; exit 1; }
        sleep 0.1
    done
    ABRMD=$(command -v tpm2-abrmd || echo /usr/sbin/tpm2-abrmd)
    "$ABRMD" --session --allow-root --tcti="swtpm:host=127.0.0.1,port=$TPM_PORT" > "$DIR/tpm2-abrmd.log" 2>&1 &
    PIDS="$PIDS $!"
    export TPM2_PKCS11_TCTI=tabrmd:bus_type=session TPM2TOOLS_TCTI=tabrmd:bus_type=session
    export TPM2_PKCS11_STORE="$DIR/tpm-store"
    i=0
    until tpm2_getcap properties-fixed > /dev/null 2>&1; do
        i=$((i + 1)); [ $i -lt 100 ] || { cat "$DIR/tpm2-abrmd.log"; echo "demo: tpm2-abrmd did not start" >&2; exit 1; }
        sleep 0.1
    done
    tpm2_getcap properties-fixed | grep -A2 -E "TPM2_PT_MANUFACTURER:" | tr -s ' ' | head -3
    ;;
*) echo "demo: KEYSTORE=$KEYSTORE is not one of softhsm, tpm" >&2; exit 2 ;;
esac

say "the unit's PKI: a root CA, kept offline, and the issuing CA under it that signs devices (openssl, EC P-384)"
. "$(dirname "$0")/pki.sh"
make_pki "$DIR" "aos-iam demo"

printf 'demo-node-0001\n' > "$DIR/node-id"
umask 077
printf 'factory-secret\n' > "$DIR/password"
umask 022
cat > "$DIR/config.toml" <<CONF
[node]
id_file = "$DIR/node-id"
name = "demo node"
type = "main"

[paths]
working_dir = "$DIR/work"
root_ca = "$DIR/ca.pem"
public_socket = "$DIR/run/public.sock"
protected_socket = "$DIR/run/protected.sock"

[[modules]]
id = "iam"
algorithm = "ecdsa-p384"
extended_key_usage = ["clientAuth", "serverAuth"]
alt_names = ["demo-node-0001.local"]
[modules.pkcs11]
library = "$LIB"
$TOKEN_KEYS
user_pin_file = "$DIR/work/user-pin"

[[modules]]
id = "online"
algorithm = "ecdsa-p384"
extended_key_usage = ["clientAuth"]
[modules.pkcs11]
library = "$LIB"
$TOKEN_KEYS
user_pin_file = "$DIR/work/user-pin"

[[modules]]
id = "offline"
algorithm = "ecdsa-p256"
extended_key_usage = ["clientAuth"]
[modules.pkcs11]
library = "$LIB"
$TOKEN_KEYS
user_pin_file = "$DIR/work/user-pin"

[[modules]]
id = "diskencryption"
self_signed = true
[modules.pkcs11]
library = "$LIB"
$TOKEN_KEYS
user_pin_file = "$DIR/work/user-pin"
CONF

say "iamd --check-config"
iamd -c "$DIR/config.toml" --check-config

say "iamd --provisioning (log: $DIR/iamd.log)"
iamd -c "$DIR/config.toml" --provisioning -v > "$DIR/iamd.log" 2>&1 &
IAMD_PID=$!
PIDS="$PIDS $IAMD_PID"
i=0
while [ ! -S "$DIR/run/protected.sock" ]; do
    i=$((i + 1)); [ $i -lt 100 ] || { cat "$DIR/iamd.log"; echo "demo: iamd did not start" >&2; exit 1; }
    kill -0 "$IAMD_PID" 2>/dev/null || { cat "$DIR/iamd.log"; echo "demo: iamd exited" >&2; exit 1; }
    sleep 0.1
done

say "iam-provision run (keys made in the token, CSRs signed by the issuing CA)"
iam-provision -s "$DIR/run/protected.sock" run --ca-cert "$DIR/issuing.pem" --ca-key "$DIR/issuing.key" \
    --password-file "$DIR/password"

say "iam-certctl list"
iam-certctl -s "$DIR/run/protected.sock" list

say "iam-certctl get iam --json (public socket)"
iam-certctl -s "$DIR/run/public.sock" --json get iam

say "token objects (pkcs11-tool)"
pkcs11-tool --module "$LIB" $TOKEN_ARGS --login --pin "$(cat "$DIR/work/user-pin")" -O 2>/dev/null \
    | grep -E "^(Private Key|Public Key|Certificate) Object|label:|ID:|Access:" || true

say "openssl verify of each applied certificate (exported by p11tool from its URL) against the root alone"
mkdir -p "$DIR/issued"
for t in iam online offline; do
    url=$(iam-certctl -s "$DIR/run/public.sock" --json get "$t" | sed 's/.*"cert_url":"\([^"]*\)".*/\1/')
    p11tool --provider "$LIB" --export "$url" > "$DIR/issued/$t.pem"
    printf '%-8s ' "$t"; openssl verify -CAfile "$DIR/ca.pem" -untrusted "$DIR/issuing.pem" "$DIR/issued/$t.pem"
done
# What the node presents: its leaf and the issuing CA.
cat "$DIR/issued/online.pem" "$DIR/issuing.pem" > "$DIR/issued/online-chain.pem"

KEY_URL=$(iam-certctl -s "$DIR/run/public.sock" --json get online | sed 's/.*"key_url":"\([^"]*\)".*/\1/')
PIN_FILE="$DIR/work/user-pin"
OPENSSL_CMD="OPENSSL_CONF=/dev/null openssl pkeyutl -engine pkcs11 -keyform engine -inkey '$KEY_URL' -passin file:$PIN_FILE -sign -in $DIR/digest -out $DIR/sig"
if [ "$KEYSTORE" = softhsm ]; then
    say "using the online key by its URI: openssl (pkcs11 engine) signs, gnutls-cli does mutual TLS"
    printf 'signed by a key that never left its token\n' > "$DIR/data"
    openssl dgst -sha384 -binary "$DIR/data" > "$DIR/digest"
    sh -c "$OPENSSL_CMD" 2>/dev/null
    openssl x509 -in "$DIR/issued/online.pem" -pubkey -noout > "$DIR/online-pub.pem"
    openssl pkeyutl -verify -pubin -inkey "$DIR/online-pub.pem" -in "$DIR/digest" -sigfile "$DIR/sig"
else
    # OpenSSL's libp11 engine cannot log in to tpm2-pkcs11 on Debian 12 (tss2 and the engine
    # clash in one process): gnutls-cli alone uses the key here.
    say "using the online key by its URI: gnutls-cli does mutual TLS (openssl's pkcs11 engine cannot use tpm2-pkcs11 keys on Debian 12)"
fi
# A TLS server that asks for a client certificate from the unit's CA: the node's key answers.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=localhost \
    -keyout "$DIR/server.key" -out "$DIR/server.pem" 2>/dev/null
PORT=$((20000 + $$ % 20000))
openssl s_server -quiet -accept "127.0.0.1:$PORT" -cert "$DIR/server.pem" -key "$DIR/server.key" \
    -CAfile "$DIR/ca.pem" -Verify 1 > "$DIR/s_server.log" 2>&1 &
PIDS="$PIDS $!"
GNUTLS_CMD="GNUTLS_PIN=\$(cat $PIN_FILE) gnutls-cli --provider $LIB --x509cafile $DIR/server.pem --x509certfile $DIR/issued/online-chain.pem --x509keyfile '$KEY_URL' -p $PORT localhost"
i=0
until GNUTLS_PIN=$(cat "$PIN_FILE") gnutls-cli --provider "$LIB" --x509cafile "$DIR/server.pem" \
    --x509certfile "$DIR/issued/online-chain.pem" --x509keyfile "$KEY_URL" -p "$PORT" localhost < /dev/null 2>&1 \
    | grep -q "Handshake was completed"; do
    i=$((i + 1)); [ $i -lt 50 ] || { cat "$DIR/s_server.log"; echo "demo: gnutls-cli did not complete the handshake" >&2; exit 1; }
    sleep 0.1
done
echo "gnutls-cli: mutual TLS handshake completed with the online key in the token"

say "stopping iamd"
kill -TERM "$IAMD_PID"; wait "$IAMD_PID" || true
tail -n 3 "$DIR/iamd.log"
echo
echo "demo: node demo-node-0001 provisioned; keys never left the token"
if [ "$KEEP" = 1 ]; then
    cat <<USE

What was made is kept in $DIR. To use it:
  export SOFTHSM2_CONF=$SOFTHSM2_CONF        # the token (KEYSTORE=tpm: the TPM is stopped
                                             # with the demo; its state is in $DIR/tpm-state)
  $BIN iamd -c $DIR/config.toml &            # iamd again (provisioned, normal mode)
  $BIN iam-certctl -s $DIR/run/public.sock get online
                                             # prints the key and certificate URIs
  The token's user PIN is in $PIN_FILE (0600).
  Sign with the key (openssl's pkcs11 engine):
    $OPENSSL_CMD
  Mutual TLS with it (gnutls-cli), against a server that asks for a client certificate:
    openssl s_server -quiet -accept 127.0.0.1:$PORT -cert $DIR/server.pem -key $DIR/server.key -CAfile $DIR/ca.pem -Verify 1 &
    $GNUTLS_CMD
USE
fi
