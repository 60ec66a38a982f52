#!/bin/sh
# The unit scenario, run by /init in every VM (passed in with -fw_cfg, so the image is not
# rebuilt per scenario). NODE and ROLE come from /init; /run/iam holds the run's files:
#   mode        full | serial | fault | systemd     nodes   how many nodes the unit has
#   root-ca.pem the unit's root CA        ca.key, password   (main only) the factory's CA key
#                                                             and password
# Every result is one console line: IAMTEST NODE CHECK ok|fail DETAIL; the host collects them.
MODE=$(cat /run/iam/mode 2>/dev/null || echo full)
NODES=$(cat /run/iam/nodes 2>/dev/null || echo 3)
SOFTHSM=/usr/lib/softhsm/libsofthsm2.so
export SOFTHSM2_CONF=/etc/softhsm/softhsm2.conf

result() { # CHECK STATUS DETAIL...
    c=$1 s=$2; shift 2
    echo "IAMTEST $NODE $c $s $*"
}
check() { # CHECK COMMAND...: ok if the command exits 0, its output's last line as detail
    c=$1; shift
    if out=$("$@" 2>&1); then result "$c" ok "$(echo "$out" | tail -1)"
    else result "$c" fail "$(echo "$out" | tail -3 | tr '\n' ' ')"; fi
}
check_linked() { # CHECK COMMAND...: as check, for a request through a link that may drop (a
    # secondary of the systemd scenario reboots after its provisioning): a lost or absent link
    # is asked again for up to 90 s, any other failure is the result
    c=$1; shift; t=180
    until out=$("$@" 2>&1); do
        t=$((t - 1))
        if [ $t -le 0 ] || ! echo "$out" | grep -q -e 'link lost' -e 'is not connected'; then
            result "$c" fail "$(echo "$out" | tail -3 | tr '\n' ' ')"; return
        fi
        sleep 0.5
    done
    result "$c" ok "$(echo "$out" | tail -1)"
}
wait_until() { # SECONDS COMMAND...: poll every half second
    t=$(($1 * 2)); shift
    while [ $t -gt 0 ]; do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; t=$((t - 1)); done
    return 1
}
provisioned() { iam-provision --json status | grep -q '"state":"provisioned"'; }
link_up_tls() { iam-nodelink --json status | grep '"state":"registered"' | grep -q '"tls":true'; }

diag() { # the logs' last lines, for a failed run
    for f in /var/log/iamd.log /var/log/nodelink.log; do
        [ -f "$f" ] && tail -8 "$f" | sed "s|^|DIAG $NODE $(basename "$f"): |"
    done
    iam-nodelink status 2>&1 | sed "s|^|DIAG $NODE link: |"
}

IAMD_PID=""
start_iamd() { # [--provisioning]
    [ -z "$IAMD_PID" ] || { kill "$IAMD_PID"; wait "$IAMD_PID" 2>/dev/null; }
    iamd "$@" -v >> /var/log/iamd.log 2>&1 &
    IAMD_PID=$!
    wait_until 30 test -S /run/aos-iam/protected.sock || { result iamd fail "no socket"; tail -5 /var/log/iamd.log; }
    wait_until 10 iam-provision status
}
port_named() { # the /dev/vportNpM whose virtio-serial port name is $1
    for p in /sys/class/virtio-ports/*; do
        [ "$(cat "$p/name" 2>/dev/null)" = "$1" ] && { echo "/dev/$(basename "$p")"; return 0; }
    done
    return 1
}

LINK_PID=""
start_link() {
    if [ "$(sed -n 's/^connect = "\(.*\)"/\1/p' /etc/aos-iam/config.d/10-links.toml)" = stdio ]; then
        port=$(port_named iam.link) || { result link fail "no virtio-serial port iam.link"; return; }
        # A pipe cannot be dialed again: the loop restarts the link whenever it ends. The port
        # opens once (it is exclusive), read-write, as stdin and stdout.
        (while :; do iam-nodelink -v 0<> "$port" 1>&0 2>> /var/log/nodelink.log; sleep 1; done) &
    else
        iam-nodelink -v --retry-min-ms 200 --retry-max 2 2>> /var/log/nodelink.log &
    fi
    LINK_PID=$!
}
stop_link() {
    [ -n "$LINK_PID" ] && kill -9 "$LINK_PID" 2>/dev/null
    pkill -9 iam-nodelink 2>/dev/null
    LINK_PID=""
}

sign() { echo "--ca-cert /etc/aos-iam/root-ca.pem --ca-key /run/iam/ca.key --password-file /run/iam/password"; }

certs_verify() { # NODE_ID: each certificate exported from the token, verified by openssl
    urls=$(iam-certctl --json list | tr '{' '\n' | sed -n 's/.*"cert_url":"\([^"]*\)".*/\1/p')
    [ -n "$urls" ] || { echo "no certificates"; return 1; }
    n=0
    for u in $urls; do
        p11tool --provider "$SOFTHSM" --export "$u" > /tmp/cert.pem 2>/dev/null || { echo "cannot export $u"; return 1; }
        openssl verify -CAfile /etc/aos-iam/root-ca.pem /tmp/cert.pem || return 1
        n=$((n + 1))
    done
    echo "$n certificates verify"
}

secondary() {
    if [ "$MODE" = fault ] && [ "$NODE" = sec1 ]; then
        # The start hook holds sec1's first step until the link has been cut, so the cut
        # falls inside a request in flight however fast the rest of the steps run.
        cat > /etc/aos-iam/config.d/50-fault.toml <<'EOF2'
[hooks]
start = ["/bin/sh", "-c", "touch /run/iam/hook-started; while [ ! -e /run/iam/hook-release ]; do sleep 0.2; done"]
EOF2
    fi
    start_iamd --provisioning
    result iamd ok "provisioning mode"
    start_link
    echo "IAMTEST $NODE ready"
    # Not provisioned a minute on: the logs go to the console while there is still time.
    (sleep 60; provisioned || diag) &
    if [ "$MODE" = fault ] && [ "$NODE" = sec1 ]; then
        # Cut this node's link while its start hook runs, then let the hook end and come back.
        if wait_until 120 test -e /run/iam/hook-started; then
            stop_link
            result fault ok "link killed (kill -9) during provisioning"
            touch /run/iam/hook-release
            sleep 8
            start_link
        else
            result fault fail "provisioning never reached this node"
        fi
    fi
    if ! wait_until 170 provisioned; then
        result provisioned fail "$(iam-provision status 2>&1 | head -1)"
        diag
        echo "IAMTEST $NODE done"; return
    fi
    result provisioned ok
    check cert-check iam-certctl check
    check openssl-verify certs_verify
    # Into operation: iamd out of provisioning mode, and the link again, now in TLS.
    stop_link
    start_iamd
    start_link
    if wait_until 60 link_up_tls; then result link-tls ok "$(iam-nodelink status | grep -i "state\|tls" | tr -s " \n" " ")"
    else result link-tls fail "$(iam-nodelink status 2>&1 | tr '\n' ' ')"; fi
    echo "IAMTEST $NODE done"
    sleep 600
}

unit_state() { systemctl show -p ActiveState --value "$1"; }
unit_active() { [ "$(unit_state "$1")" = active ]; }
# What systemd ran or skipped for UNIT, in one line.
unit_line() { systemctl show -p Type,ActiveState,SubState,ConditionResult "$1" | tr '\n' ' '; }

# The systemd scenario's secondary: systemd is PID 1, and the units are the layer's. Boot 1
# (no marker) must run iamd-provisioning.service, boot 2 of the same disk iamd.service.
secondary_systemd() {
    boot=$(cat /var/lib/iamtest/boots)
    if [ "$(cat /proc/1/comm)" = systemd ]; then result "boot$boot" ok "systemd $(systemctl --version | head -1 | cut -d' ' -f2) is PID 1"
    else result "boot$boot" fail "PID 1 is $(cat /proc/1/comm)"; fi
    if [ ! -e /var/aos/iam/provisioned ]; then
        # Type=notify: active only once iamd sent READY=1.
        if wait_until 60 unit_active iamd-provisioning.service; then
            result iamd-provisioning.service ok "$(unit_line iamd-provisioning.service)"
        else
            result iamd-provisioning.service fail "$(unit_line iamd-provisioning.service) $(journalctl -b -u iamd-provisioning.service | tail -3 | tr '\n' ' ')"
        fi
        [ "$(unit_state iamd.service)" = inactive ] && result iamd.service-skipped ok "$(unit_line iamd.service)" \
            || result iamd.service-skipped fail "$(unit_line iamd.service)"
        if wait_until 60 unit_active iam-nodelink.service; then
            result iam-nodelink.service ok "$(unit_line iam-nodelink.service)"
        else
            result iam-nodelink.service fail "$(unit_line iam-nodelink.service) $(journalctl -b -u iam-nodelink.service | tail -3 | tr '\n' ' ')"
        fi
        echo "IAMTEST $NODE ready"
        if ! wait_until 170 provisioned; then
            result provisioned fail "$(iam-provision status 2>&1 | head -1)"
            journalctl -b -u iamd-provisioning.service -u iam-nodelink.service | tail -15 | sed "s|^|DIAG $NODE journal: |"
            echo "IAMTEST $NODE done"; return
        fi
        result provisioned ok "through the main node over vsock"
        check cert-check iam-certctl check
        check openssl-verify certs_verify
        check marker test -e /var/aos/iam/provisioned
        for u in iamd.service iamd-provisioning.service iam-nodelink.service; do
            if out=$(systemd-analyze security --no-pager "$u" 2>&1); then
                result "security:$u" ok "$(echo "$out" | tail -1 | sed 's/.*Overall exposure level for [^:]*: //')"
            else
                result "security:$u" fail "$(echo "$out" | tail -2 | tr '\n' ' ')"
            fi
        done
        echo "IAMTEST $NODE reboot"
        systemctl poweroff
        return
    fi
    # Boot 2: the marker switched the node to iamd.service.
    if wait_until 60 unit_active iamd.service; then
        result iamd.service ok "$(unit_line iamd.service)"
    else
        result iamd.service fail "$(unit_line iamd.service) $(journalctl -b -u iamd.service | tail -3 | tr '\n' ' ')"
    fi
    [ "$(unit_state iamd-provisioning.service)" = inactive ] && result iamd-provisioning.service-skipped ok "$(unit_line iamd-provisioning.service)" \
        || result iamd-provisioning.service-skipped fail "$(unit_line iamd-provisioning.service)"
    if wait_until 90 link_up_tls; then result link-tls ok "$(iam-nodelink status | grep -i "state\|tls" | tr -s " \n" " ")"
    else
        result link-tls fail "$(iam-nodelink status 2>&1 | tr '\n' ' ')"
        journalctl -b -u iam-nodelink.service | tail -10 | sed "s|^|DIAG $NODE journal: |"
    fi
    check cert-check iam-certctl check
    echo "IAMTEST $NODE done"
    sleep 600
}

main_node() {
    start_iamd --provisioning
    result iamd ok "provisioning mode"
    port=$(port_named iam.link) && {
        # The main side of the byte pipe, as vchan-socket-proxy is on a Xen unit.
        (while :; do socat -b 65536 "OPEN:$port" UNIX-CONNECT:/run/aos-iam/link.sock 2>/dev/null; sleep 0.5; done) &
    }
    echo "IAMTEST $NODE ready"
    out=$(iam-provision --json --node all run --expect-nodes "$NODES" --wait 90 $(sign) 2>&1)
    if [ "$MODE" = fault ]; then
        if echo "$out" | tr '{' '\n' | grep '"node":"node-sec1"' | grep -q '"ok":false'; then
            # The node's own result (keys in order: its error's kind and message, then the node).
            err=$(echo "$out" | tr '{' '\n' | grep '"node":"node-sec1"')
            kind=$(echo "$err" | sed -n 's/.*"kind":"\([a-z_]*\)".*/\1/p')
            if [ "$kind" = unavailable ]; then result fault-reported ok "node-sec1: unavailable"
            else result fault-reported fail "node-sec1 failed with ${kind:-?}, not unavailable: $err"; fi
        else
            result fault-reported fail "the run did not fail for node-sec1: $out"
        fi
        # The factory runs the same command again for the node that failed, once it is back.
        # Done when a run succeeds, or when the node is provisioned: sec1 cuts its link again
        # (to restart in normal mode) the moment it sees itself provisioned, which can lose
        # the answer of the run that provisioned it; the next run then rightly says so.
        t=0
        until iam-provision --node node-sec1 run $(sign) >/tmp/rerun.log 2>&1 \
            || iam-provision --node node-sec1 --json status 2>/dev/null | grep -q '"state":"provisioned"'; do
            t=$((t + 1)); [ $t -lt 30 ] || break; sleep 2
        done
        if [ $t -lt 30 ]; then result rerun ok "node-sec1 provisioned after it came back"
        else result rerun fail "$(tail -2 /tmp/rerun.log | tr '\n' ' ')"; fi
    else
        if echo "$out" | grep -q '"ok":false'; then result provision fail "$out"; diag
        else result provision ok "$NODES nodes through the main node"; fi
    fi
    check cert-check iam-certctl check
    check openssl-verify certs_verify
    # The main node in operation too; the secondaries link again, in TLS.
    start_iamd
    ids=$(iam-provision nodes)
    for id in $ids; do
        [ "$id" = "node-$NODE" ] && continue
        if wait_until 150 sh -c "iam-provision --json --node $id node-info | grep -q '\"connected\":true'"; then
            check "state:$id" sh -c "iam-provision --json --node $id node-info | grep -o '\"state\":\"[a-z]*\"' | grep -q provisioned && echo provisioned"
            check_linked "cert-check:$id" iam-certctl check --node "$id"
        else
            result "linked:$id" fail "did not link again after provisioning"
        fi
    done
    [ "$(echo "$ids" | wc -w)" = "$NODES" ] && result nodes ok "$(echo $ids)" || result nodes fail "$(echo $ids)"
    echo "IAMTEST $NODE done"
    # Stay up (links and forwarded checks) until the host has every node's results.
    sleep 600
}

case "$ROLE:$MODE" in
main:*) main_node ;;
*:systemd) secondary_systemd ;;
*) secondary ;;
esac
