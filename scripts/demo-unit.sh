#!/bin/sh
# The README's unit demo: a main node and two secondary nodes on this machine, each with its
# own SoftHSM token and iamd, the secondaries linked to the main node by iam-nodelink over
# unix sockets, and the whole unit provisioned through the main node only.
#
# With DEMO_DIR=path everything (tokens, CA, configurations, logs, certificates) is kept there.
set -eu
DEMO=demo-unit
. "$(dirname "$0")/demo-lib.sh"

mkdir -p "$DIR/bin"
for a in iamd iam-provision iam-certctl iam-nodelink; do ln -sf "$BIN" "$DIR/bin/$a"; done
export PATH="$DIR/bin:$PATH"

say "the unit's PKI: a root CA, kept offline, and the issuing CA under it that signs devices (openssl, EC P-384)"
. "$(dirname "$0")/pki.sh"
make_pki "$DIR" "aos-iam demo unit"
umask 077
printf 'factory-secret\n' > "$DIR/password"
umask 022

# node NAME ROLE: a directory with its own token, configuration and sockets.
node() {
    n=$1; d="$DIR/$n"
    mkdir -p "$d/tokens" "$d/work" "$d/run"
    printf 'directories.tokendir = %s/tokens\nobjectstore.backend = file\nlog.level = ERROR\n' "$d" > "$d/softhsm2.conf"
    if [ "$2" = main ]; then
        links="[links]
listen = [\"unix:$DIR/main/run/link.sock\"]"
    else
        links="[links]
connect = \"unix:$DIR/main/run/link.sock\"
status_file = \"$d/run/nodelink.status\""
    fi
    cat > "$d/config.toml" <<CONF
[node]
id = "demo-$n"
type = "$2"
role = "$2"

[paths]
working_dir = "$d/work"
root_ca = "$DIR/ca.pem"
public_socket = "$d/run/public.sock"
protected_socket = "$d/run/protected.sock"

$links

[[modules]]
id = "iam"
extended_key_usage = ["clientAuth", "serverAuth"]
alt_names = ["demo-$n.local"]
[modules.pkcs11]
library = "$SOFTHSM_LIB"
token_label = "aos-$n"
user_pin_file = "$d/work/user-pin"

[[modules]]
id = "online"
extended_key_usage = ["clientAuth"]
[modules.pkcs11]
library = "$SOFTHSM_LIB"
token_label = "aos-$n"
user_pin_file = "$d/work/user-pin"
CONF
}

wait_for() {
    i=0
    while [ ! -S "$1" ]; do
        i=$((i + 1)); [ $i -lt 100 ] || { cat "$2"; echo "demo-unit: $1 did not appear" >&2; exit 1; }
        sleep 0.1
    done
}

say "three nodes: main, sec1, sec2 — each its own SoftHSM token and iamd --provisioning"
for n in main sec1 sec2; do
    if [ "$n" = main ]; then node "$n" main; else node "$n" secondary; fi
    SOFTHSM2_CONF="$DIR/$n/softhsm2.conf" iamd -c "$DIR/$n/config.toml" --provisioning -v > "$DIR/$n/iamd.log" 2>&1 &
    PIDS="$PIDS $!"
    wait_for "$DIR/$n/run/protected.sock" "$DIR/$n/iamd.log"
    echo "$n: iamd up (log: $DIR/$n/iamd.log)"
done

say "iam-nodelink on each secondary, dialing the main node's link socket"
for n in sec1 sec2; do
    iam-nodelink -c "$DIR/$n/config.toml" -v > "$DIR/$n/nodelink.log" 2>&1 &
    PIDS="$PIDS $!"
done

M="$DIR/main/run/protected.sock"
say "iam-provision --node all run --expect-nodes 3 (talking to the main node only)"
iam-provision -s "$M" --node all run --expect-nodes 3 --wait 30 \
    --ca-cert "$DIR/issuing.pem" --ca-key "$DIR/issuing.key" --password-file "$DIR/password"

say "the unit as the main node sees it"
iam-provision -s "$M" nodes
for n in sec1 sec2; do iam-nodelink -c "$DIR/$n/config.toml" status | head -3; done

say "each node's certificates, listed through the main node, checked by openssl against the root alone"
mkdir -p "$DIR/issued"
for n in main sec1 sec2; do
    iam-certctl -s "$M" list --node "demo-$n"
    for t in iam online; do
        url=$(iam-certctl -s "$M" --json list --node "demo-$n" \
            | tr '{' '\n' | grep "\"type\":\"$t\"" | sed 's/.*"cert_url":"\([^"]*\)".*/\1/')
        SOFTHSM2_CONF="$DIR/$n/softhsm2.conf" p11tool --provider "$SOFTHSM_LIB" --export "$url" > "$DIR/issued/$n-$t.pem"
        printf '%-5s %-7s ' "$n" "$t"; openssl verify -CAfile "$DIR/ca.pem" -untrusted "$DIR/issuing.pem" "$DIR/issued/$n-$t.pem"
    done
done

say "in operation: every iamd restarted in normal mode, the links again, now in TLS with whole chains"
for p in $PIDS; do kill "$p" 2>/dev/null || true; done
for p in $PIDS; do wait "$p" 2>/dev/null || true; done
PIDS=""
for n in main sec1 sec2; do
    rm -f "$DIR/$n/run/protected.sock"
    SOFTHSM2_CONF="$DIR/$n/softhsm2.conf" iamd -c "$DIR/$n/config.toml" -v >> "$DIR/$n/iamd.log" 2>&1 &
    PIDS="$PIDS $!"
    wait_for "$DIR/$n/run/protected.sock" "$DIR/$n/iamd.log"
done
for n in sec1 sec2; do
    iam-nodelink -c "$DIR/$n/config.toml" -v >> "$DIR/$n/nodelink.log" 2>&1 &
    PIDS="$PIDS $!"
done
for n in sec1 sec2; do
    i=0
    until iam-nodelink -c "$DIR/$n/config.toml" --json status 2>/dev/null | grep -q '"state":"registered".*"tls":true\|"tls":true.*"state":"registered"'; do
        i=$((i + 1)); [ $i -lt 300 ] || { cat "$DIR/$n/nodelink.log" "$DIR/main/iamd.log"; echo "demo-unit: $n did not link in TLS" >&2; exit 1; }
        sleep 0.1
    done
    iam-nodelink -c "$DIR/$n/config.toml" status | head -3
done
iam-provision -s "$M" --node demo-sec2 status

echo
echo "demo-unit: 3 nodes provisioned through the main node; every key stayed in its own token"
