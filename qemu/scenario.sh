#!/bin/sh
# The unit scenario, run by /init in every VM (passed in with -fw_cfg, so the image is not
# rebuilt per scenario). NODE and ROLE come from /init; /run/iam holds the run's files:
#   mode        full | serial | fault | systemd | xen | tpm     nodes   how many nodes the unit has
#   root-ca.pem the unit's root CA, its only trust anchor
#   issuing.pem the issuing CA under it that signs the nodes (for openssl verify)
#   issuing.key, password   (main) the issuing CA's key and the factory's password
#   systemd scenario, sec1's boot 1 only (the factory): factory-ca.pem and .key (bootstrap
#   identities), password, claim-token, est-anchor.pem and est-url (the EST server, reached
#   through the main node)
# Every result is one console line: IAMTEST NODE CHECK ok|fail DETAIL; the host collects them.
MODE=$(cat /run/iam/mode 2>/dev/null || echo full)
NODES=$(cat /run/iam/nodes 2>/dev/null || echo 3)
SOFTHSM=/usr/lib/softhsm/libsofthsm2.so
TPM2=/usr/lib/x86_64-linux-gnu/pkcs11/libtpm2_pkcs11.so
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
    killall -9 iam-nodelink 2>/dev/null
    LINK_PID=""
}

# The factory line signs with the issuing CA; the root's key is not on it.
sign() { echo "--ca-cert /run/iam/issuing.pem --ca-key /run/iam/issuing.key --password-file /run/iam/password"; }

certs_verify() { # each certificate exported from the token, verified by openssl against the
    # root alone (the issuing CA untrusted), a bootstrap identity against the factory CA
    list=$(iam-certctl --json list | tr '{' '\n' | sed -n 's/.*"cert_url":"\([^"]*\)".*"type":"\([^"]*\)".*/\2 \1/p')
    [ -n "$list" ] || { echo "no certificates"; return 1; }
    n=0
    echo "$list" > /tmp/certs.list
    while read -r t u; do
        provider=$SOFTHSM
        case "$u" in *token=aos-tpm*) provider=$TPM2 ;; esac
        p11tool --provider "$provider" --export "$u" > /tmp/cert.pem 2>/dev/null || { echo "cannot export $u"; return 1; }
        if [ "$t" = bootstrap ]; then
            openssl verify -CAfile /etc/aos-iam/factory-ca.pem /tmp/cert.pem > /dev/null || return 1
        elif [ "$t" = diskencryption ]; then
            # A self-signed module's certificate: signed by its own key.
            openssl verify -CAfile /tmp/cert.pem /tmp/cert.pem > /dev/null || return 1
        else
            openssl verify -CAfile /etc/aos-iam/root-ca.pem -untrusted /run/iam/issuing.pem /tmp/cert.pem > /dev/null || return 1
        fi
        n=$((n + 1))
    done < /tmp/certs.list
    echo "$n certificates verify: $(cut -d' ' -f1 /tmp/certs.list | tr '\n' ' ')"
}

link_tls_check() { # SECONDS: iam-nodelink registered in TLS within that time
    if wait_until "$1" link_up_tls; then result link-tls ok "$(iam-nodelink status | grep -i "state\|tls" | tr -s " \n" " ")"
    else
        result link-tls fail "$(iam-nodelink status 2>&1 | tr '\n' ' ')"
        if command -v journalctl >/dev/null; then
            journalctl -b -u iam-nodelink.service | tail -10 | sed "s|^|DIAG $NODE journal: |"
        else
            diag
        fi
    fi
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
    link_tls_check 60
    echo "IAMTEST $NODE done"
    sleep 600
}

unit_state() { systemctl show -p ActiveState --value "$1"; }
unit_active() { [ "$(unit_state "$1")" = active ]; }
# What systemd ran or skipped for UNIT, in one line.
unit_line() { systemctl show -p Type,ActiveState,SubState,ConditionResult "$1" | tr '\n' ' '; }

enrollment_state() { iam-certctl --json status 2>/dev/null | sed -n 's/.*"enrollment":{[^}]*"state":"\([a-z]*\)".*/\1/p'; }
operational() { [ "$(enrollment_state)" = operational ]; }
serials() { iam-certctl --json list | tr '{' '\n' | sed -n 's/.*"serial":"\([^"]*\)".*"type":"\([^"]*\)".*/\2 \1/p'; }
unit_checks() { # the unit this boot must start, the one it must skip
    if wait_until 60 unit_active "$1"; then result "$1" ok "$(unit_line "$1")"
    else result "$1" fail "$(unit_line "$1") $(journalctl -b -u "$1" | tail -3 | tr '\n' ' ')"; fi
    [ "$(unit_state "$2")" = inactive ] && result "$2-skipped" ok "$(unit_line "$2")" \
        || result "$2-skipped" fail "$(unit_line "$2")"
}
security_checks() {
    for u in iamd.service iamd-provisioning.service iam-nodelink.service; do
        if out=$(systemd-analyze security --no-pager "$u" 2>&1); then
            result "security:$u" ok "$(echo "$out" | tail -1 | sed 's/.*Overall exposure level for [^:]*: //')"
        else
            result "security:$u" fail "$(echo "$out" | tail -2 | tr '\n' ' ')"
        fi
    done
}
# The systemd scenario's secondary: systemd is PID 1, the units are the layer's, and the node
# has no network (no NIC at all). Boot 1 (no marker) is the factory: iamd-provisioning.service
# runs and the node is bootstrapped. Boot 2 (`deployed`) runs iamd.service, which enrolls the
# node by itself over EST through its link (the main node's tunnel) and ends operational.
# Boot 3 starts operational, and enrolls nothing.
secondary_systemd() {
    boot=$(cat /var/lib/iamtest/boots)
    if [ "$(cat /proc/1/comm)" = systemd ]; then result "boot$boot" ok "systemd $(systemctl --version | head -1 | cut -d' ' -f2) is PID 1"
    else result "boot$boot" fail "PID 1 is $(cat /proc/1/comm)"; fi
    case "$boot" in
    1)
        echo "IAMTEST $NODE ready"
        links=$(ls /sys/class/net | tr '\n' ' ')
        [ "$links" = "lo " ] && result no-network ok "network interfaces: $links" || result no-network fail "network interfaces: $links"
        unit_checks iamd-provisioning.service iamd.service
        # At the factory the link waits: the main node is in operation and takes no link in
        # the clear from a node in provisioning mode. iam-nodelink runs, and says why.
        if wait_until 60 sh -c "iam-nodelink --json status | grep -q '\"state\":\"retrying\"'"; then
            result iam-nodelink.service ok "$(unit_state iam-nodelink.service), $(iam-nodelink --json status | sed -n 's/.*"last_error":"\([^"]*\)".*/\1/p' | cut -c1-120)"
        else result iam-nodelink.service fail "$(unit_line iam-nodelink.service) $(iam-nodelink status 2>&1 | tr '\n' ' ')"; fi
        # The factory station: a bootstrap identity signed by the factory CA, the EST server
        # and the claim token stored for the first power-on on site.
        if out=$(iam-provision --json bootstrap --ca-cert /run/iam/factory-ca.pem --ca-key /run/iam/factory-ca.key \
            --enroll-url "$(cat /run/iam/est-url)" --enroll-anchor /run/iam/est-anchor.pem \
            --claim-token-file /run/iam/claim-token --password-file /run/iam/password 2>&1); then
            result bootstrap ok "$(echo "$out" | tail -1)"
        else
            result bootstrap fail "$(echo "$out" | tail -3 | tr '\n' ' ')"
        fi
        [ -e /var/aos/iam/deployed ] && [ ! -e /var/aos/iam/provisioned ] && result markers ok "deployed, not provisioned" \
            || result markers fail "$(ls /var/aos/iam | tr '\n' ' ')"
        check openssl-verify certs_verify
        security_checks
        echo "IAMTEST $NODE reboot"
        systemctl poweroff
        ;;
    2)
        echo "IAMTEST $NODE ready"
        unit_checks iamd.service iamd-provisioning.service
        if wait_until 240 operational; then
            result enrolled ok "$(iam-certctl status | tr -s ' \n' ' ' | cut -c1-200)"
        else
            result enrolled fail "$(iam-certctl status 2>&1 | tr '\n' ' ')"
            journalctl -b -u iamd.service -u iam-nodelink.service | tail -20 | sed "s|^|DIAG $NODE journal: |"
        fi
        [ ! -e /var/aos/iam/claim-token ] && result claim-token-removed ok || result claim-token-removed fail "$(ls -l /var/aos/iam/claim-token)"
        link_tls_check 90
        check openssl-verify certs_verify
        # (The EST test server issues for 30 days.)
        check cert-check iam-certctl check --warning-days 20 --critical-days 7
        serials > /var/lib/iamtest/serials
        cp /etc/machine-id /var/lib/iamtest/machine-id
        sync
        echo "IAMTEST $NODE reboot"
        systemctl poweroff
        ;;
    3)
        # The root file system was replaced (a new machine-id); the node id is the VM's
        # serial, so the node keeps its identity.
        unit_checks iamd.service iamd-provisioning.service
        wait_until 30 iam-certctl status
        if operational; then result operational ok "at once, $(iam-certctl status | head -1)"
        else result operational fail "$(iam-certctl status 2>&1 | tr '\n' ' ')"; fi
        if ! cmp -s /etc/machine-id /var/lib/iamtest/machine-id; then
            result reflashed-keeps-identity ok "machine-id $(cut -c1-8 /var/lib/iamtest/machine-id)… is now $(cut -c1-8 /etc/machine-id)…, node id $(cat /sys/class/dmi/id/product_serial)"
        else result reflashed-keeps-identity fail "the machine-id did not change"; fi
        link_tls_check 90
        if [ "$(serials)" = "$(cat /var/lib/iamtest/serials)" ]; then result no-enrollment ok "the certificates of boot 2: $(serials | tr '\n' ' ')"
        else result no-enrollment fail "boot 2 had $(tr '\n' ' ' < /var/lib/iamtest/serials), now $(serials | tr '\n' ' ')"; fi
        check cert-check iam-certctl check --warning-days 20 --critical-days 7
        echo "IAMTEST $NODE reboot"
        systemctl poweroff
        ;;
    *)
        # The same disk in a VM of another serial: iamd serves no identity, and says why.
        unit_checks iamd.service iamd-provisioning.service
        wait_until 30 iam-certctl status
        out=$(iam-certctl check 2>&1); rc=$?
        if [ "$rc" = 2 ] && echo "$out" | grep -q "the node id is now \"another-board-0042\" (from dmi:product_serial), but the node was provisioned as"; then
            result other-serial-refused ok "check exit 2: $(echo "$out" | sed -n 2p | cut -c1-150)"
        else result other-serial-refused fail "exit $rc: $(echo "$out" | tr '\n' ' ' | cut -c1-300)"; fi
        if out=$(iam-certctl get iam 2>&1); then result other-serial-get fail "the certificate was served: $out"
        else result other-serial-get ok "$(echo "$out" | cut -c1-100)"; fi
        echo "IAMTEST $NODE done"
        sleep 600
        ;;
    esac
}

# The systemd scenario's main node: provisioned by itself at the factory (the issuing CA),
# then in operation with its secondaries' tunnels to the EST server (links.tunnel_endpoints);
# localhost:PORT is relayed to this machine over vsock (qemu/init).
main_systemd() {
    start_iamd --provisioning
    if out=$(iam-provision --json run $(sign) 2>&1); then result provision ok "itself, signed by the issuing CA"
    else result provision fail "$(echo "$out" | tail -3 | tr '\n' ' ')"; fi
    check openssl-verify certs_verify
    start_iamd
    ep=$(sed -n 's/^tunnel_endpoints = \[\(.*\)\]/\1/p' /etc/aos-iam/config.d/10-links.toml)
    [ -n "$ep" ] && result tunnel-endpoints ok "$ep" || result tunnel-endpoints fail "none configured"
    echo "IAMTEST $NODE ready"
    # sec1's node id is its machine id; the one that is not this node's.
    id=""
    wait_until 360 sh -c "iam-provision nodes | grep -qv '^node-$NODE\$'" && id=$(iam-provision nodes | grep -v "^node-$NODE\$" | head -1)
    if [ -n "$id" ] && wait_until 120 sh -c "iam-provision --json --node $id node-info | grep -q '\"connected\":true'"; then
        check "linked:$id" sh -c "iam-provision --json --node $id node-info | grep -o '\"state\":\"[a-z]*\"'"
        check_linked "cert-check:$id" iam-certctl check --node "$id" --warning-days 20 --critical-days 7
    else
        result "linked:${id:-sec1}" fail "did not link in TLS: $(iam-provision nodes 2>&1 | tr '\n' ' ')"
        tail -15 /var/log/iamd.log | sed "s|^|DIAG $NODE iamd: |"
    fi
    n=$(grep -c "tunnel [0-9]* open to localhost:" /var/log/iamd.log)
    [ "$n" -ge 1 ] && result tunnels ok "$n tunnels opened for ${id:-sec1} to $ep" || result tunnels fail "no tunnel in the log"
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

# The xen scenario (qemu/run-unit.sh xen): the main node in a PV dom0, sec1 and sec2 in PV
# domUs without a network, each with its own SoftHSM token on its own disk (a loop device in
# dom0), linked by vchan, each end either aos-iam's own vchan transport or Xen's
# vchan-socket-proxy:
#   sec1, first boot   iam-nodelink --connect vchan:0:data/aos-iam/DOMID (native client)
#                      against a vchan-socket-proxy server in dom0, restarted in a loop, onto
#                      a unix listener that admits node-sec1 only;
#   sec1, created again  native at both ends: iamd's listener vchan:sec1:data/aos-iam/sec1;
#   sec2               iam-nodelink --connect stdio under a client proxy in stdio mode,
#                      against iamd's listener vchan:sec2:data/aos-iam/sec2 (native server).
# A domU's console reaches the host through dom0's (xenconsoled's guest logs, relayed).
XEN_GUESTS="sec1 sec2"
vchan_path() { echo "/local/domain/0/data/aos-iam/$1"; } # DOMID|NAME: where dom0 serves that domain
xen_up() {
    mkdir -p /var/run/xenstored /var/lib/xen /var/log/xen/console /dev/pts
    [ -e /dev/pts/ptmx ] || mount -t devpts devpts /dev/pts # (xenconsoled gives each guest a pty)
    xenstored --pid-file /var/run/xenstored.pid || { result xenstored fail "did not start"; return 1; }
    xen-init-dom0 > /var/log/xen/init-dom0.log 2>&1 || { result xen-init-dom0 fail "$(tail -2 /var/log/xen/init-dom0.log)"; return 1; }
    xenconsoled --log=guest --log-dir=/var/log/xen/console
    xl info > /var/log/xen/info 2>&1 || { result xen fail "$(tail -2 /var/log/xen/info | tr '\n' ' ')"; return 1; }
    result xen ok "Xen $(sed -n 's/^xen_version *: //p' /var/log/xen/info), dom0 with $(xl list 0 | awk 'NR == 2 { print $3 }') MB"
}
create_guest() { # NAME LAYOUT (native-proxy, native, stdio-native): the domU, its disk
    # kept from an earlier run of it, and dom0's proxy where the layout has one
    g=$1 layout=$2
    mkdir -p "/tmp/g-$g/iam-files"
    cp /run/iam/root-ca.pem /run/iam/issuing.pem /run/iam/scenario.sh /run/iam/mode /run/iam/nodes "/tmp/g-$g/iam-files/"
    (cd "/tmp/g-$g" && find . | cpio -o -H newc 2>/dev/null) > "/tmp/g-$g.cpio"
    cat /xen/domU.cpio "/tmp/g-$g.cpio" > "/var/lib/xen/$g.cpio"
    if [ ! -e "/var/lib/xen/$g.img" ]; then
        dd if=/dev/zero of="/var/lib/xen/$g.img" bs=1M count=0 seek=48 2>/dev/null
        losetup -f "/var/lib/xen/$g.img"
    fi
    loop=$(losetup -a | grep "/var/lib/xen/$g.img" | cut -d: -f1)
    # (native-proxy dials dom0's proxy at a path named by the domain id, known once it runs)
    case $layout in native) connect=vchan:0:data/aos-iam/$g ;; *) connect=stdio ;; esac
    echo "$layout" > "/run/iam/layout-$g"
    cat > "/etc/xen/$g.cfg" <<EOF2
name = "$g"
kernel = "/xen/vmlinuz"
ramdisk = "/var/lib/xen/$g.cpio"
extra = "console=hvc0 quiet iam.node=$g iam.role=secondary iam.connect=$connect iam.vchan=$layout"
memory = 384
vcpus = 1
disk = [ "phy:$loop,xvda,w,script=xen-block" ]
on_crash = "destroy"
EOF2
    rm -f "/tmp/g-$g.cpio"
    if ! xl create "/etc/xen/$g.cfg" > "/var/log/xen/create-$g.log" 2>&1; then
        result "create:$g" fail "$(grep -v '^libxl: error: libxl_domain.c' "/var/log/xen/create-$g.log" | tail -4 | tr '\n' ' ')"
        return 1
    fi
    rm -f "/var/lib/xen/$g.cpio"
    id=$(xl domid "$g")
    echo "$id" > "/run/iam/domid-$g"
    # The guest's console, relayed to dom0's (the host reads one serial log); destroy_guest
    # stops the tail and moves the log aside.
    rm -f "/tmp/relay-$g"; mkfifo "/tmp/relay-$g"
    (cr=$(printf '\r'); while IFS= read -r l; do
        case "$l" in IAMTEST*|DIAG*) printf '%s\n' "${l%"$cr"}" > /dev/console ;; esac
    done < "/tmp/relay-$g") &
    tail -n +1 -F "/var/log/xen/console/guest-$g.log" > "/tmp/relay-$g" 2>/dev/null &
    echo $! > "/run/iam/relay-$g"
    # dom0's end of the vchan, for this domain only, onto the listener that admits its node
    # only; the proxy exits when the unix side has no listener, so a loop restarts it.
    [ "$layout" = native-proxy ] || return 0
    (while xl domid "$g" 2>/dev/null | grep -qx "$id"; do
        vchan-socket-proxy -m server "$id" "data/aos-iam/$id" "/run/aos-iam/link-$g.sock" 2>> "/var/log/xen/proxy-$g.log"
        sleep 0.5
    done) &
    echo $! > "/run/iam/proxy-$g"
    return 0
}
destroy_guest() {
    xl destroy "$1" 2>/dev/null
    for f in proxy relay; do kill "$(cat "/run/iam/$f-$1")" 2>/dev/null; done
    mv "/var/log/xen/console/guest-$1.log" "/var/log/xen/console/guest-$1.old" 2>/dev/null
    # (busybox has no pkill: the proxy serving that domain, by its command line.)
    for p in $(pidof vchan-socket-proxy); do
        tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null | grep -q " data/aos-iam/$(cat "/run/iam/domid-$1") " && kill "$p"
    done
    return 0
}
xen_diag() { # the domains, and the last lines of their consoles and dom0's proxies
    { xl list; for f in /var/log/xen/console/guest-*.log /var/log/xen/proxy-*.log; do echo "== $f"; tail -8 "$f"; done; } 2>&1 \
        | sed "s|^|DIAG $NODE xen: |"
}
centiseconds() { awk '{ printf "%d", $1 * 100 }' /proc/uptime; }
per_request_ms() { # NODE (empty: this one): milliseconds per `iam-provision cert-types`, over 20
    t=$(centiseconds) i=0
    while [ $i -lt 20 ]; do
        iam-provision ${1:+--node "$1"} cert-types > /dev/null 2>&1 || { echo failed; return; }
        i=$((i + 1))
    done
    echo $(( ($(centiseconds) - t) * 10 / 20 ))
}
connected() { iam-provision --json --node "$1" node-info 2>/dev/null | grep -q '"connected":true'; }
disconnected() { ! connected "$1"; }

main_xen() {
    xen_up || { echo "IAMTEST $NODE done"; return; }
    # The listeners, each admitting one domain's node only: sec1's behind dom0's proxy and
    # native; sec2's native. A native listener serves the domain by name, whatever its id.
    { printf '\n[[links.listener]]\naddress = "unix:/run/aos-iam/link-sec1.sock"\nnodes = ["node-sec1"]\n'
      for g in $XEN_GUESTS; do
          printf '\n[[links.listener]]\naddress = "vchan:%s:data/aos-iam/%s"\nnodes = ["node-%s"]\n' "$g" "$g" "$g"
      done; } > /etc/aos-iam/config.d/20-xen.toml
    # Over a byte pipe a lost link is found by its keepalive: short in the rig.
    printf '[links]\nkeepalive = 5\n' > /etc/aos-iam/config.d/30-keepalive.toml
    start_iamd --provisioning
    result iamd ok "provisioning mode"
    for g in $XEN_GUESTS; do
        layout=native-proxy; [ "$g" = sec2 ] && layout=stdio-native
        create_guest "$g" $layout && result "create:$g" ok "domain $(cat "/run/iam/domid-$g"), $layout layout"
    done
    echo "IAMTEST $NODE ready"
    t0=$(centiseconds)
    if out=$(iam-provision --json --node all run --expect-nodes "$NODES" --wait 240 $(sign) 2>&1) \
        && ! echo "$out" | grep -q '"ok":false'; then
        result provision ok "$NODES nodes through the main node over vchan in $(( ($(centiseconds) - t0) / 100 )) s"
    else
        result provision fail "$(echo "$out" | tail -3 | tr '\n' ' ')"; diag; xen_diag
    fi
    check cert-check iam-certctl check
    check openssl-verify certs_verify
    # In operation: the secondaries link again, in TLS, over the same vchans.
    start_iamd
    for g in $XEN_GUESTS; do
        if wait_until 150 connected "node-$g"; then
            check_linked "linked-tls:node-$g" iam-certctl check --node "node-$g"
        else
            result "linked-tls:node-$g" fail "did not link again after provisioning"; diag; xen_diag
        fi
    done
    # What a forwarded request costs over vchan: the same request 20 times on this node and
    # through each link, each run of iam-provision included (figures, not a check).
    local_ms=$(per_request_ms "")
    result figures ok "iam-provision cert-types, ms each over 20: local $local_ms, forwarded over vchan to node-sec1 (native client, proxy server) $(per_request_ms node-sec1), to node-sec2 (stdio proxy client, native server) $(per_request_ms node-sec2)"
    # sec1's domain is destroyed and created again from its disk: it starts in operation,
    # and its link comes back on a new vchan (a new domain id), native at both ends now.
    destroy_guest sec1
    if wait_until 60 disconnected node-sec1; then
        create_guest sec1 native
        if wait_until 150 connected node-sec1; then
            check_linked "restarted:node-sec1" sh -c "iam-provision --json --node node-sec1 node-info | grep -o '\"state\":\"[a-z]*\"'"
            result figures-native ok "iam-provision cert-types, ms each over 20: local $(per_request_ms ""), forwarded over native vchan at both ends to node-sec1 $(per_request_ms node-sec1)"
        else
            result restarted:node-sec1 fail "did not link again from domain $(cat /run/iam/domid-sec1)"; diag; xen_diag
        fi
    else
        result restarted:node-sec1 fail "still connected after its domain was destroyed"
    fi
    # sec2's domain is destroyed for good: the main node (its native vchan server, which
    # nothing tells) finds the domain gone and says the node is unavailable.
    destroy_guest sec2
    if wait_until 60 disconnected node-sec2; then
        out=$(iam-provision --node node-sec2 node-info 2>&1); rc=$?
        [ "$rc" = 3 ] && result unavailable:node-sec2 ok "exit $rc: $(echo "$out" | tail -1)" \
            || result unavailable:node-sec2 fail "exit $rc: $out"
        out=$(iam-certctl check --node node-sec2 2>&1); rc=$?
        [ "$rc" = 3 ] && echo "$out" | grep -q 'is not connected' && result forwarded-unavailable ok "exit $rc: $(echo "$out" | tail -1)" \
            || result forwarded-unavailable fail "exit $rc: $out"
    else
        result unavailable:node-sec2 fail "still connected after its domain was destroyed"
    fi
    echo "IAMTEST $NODE done"
    sleep 600
}

# A domU of the xen scenario: its state on its disk (/dev/xvda), so that a domain created
# again from it starts where it left off.
secondary_xen() {
    wait_until 30 test -b /dev/xvda || { result disk fail "no /dev/xvda"; echo "IAMTEST $NODE done"; return; }
    mkdir -p /mnt
    mount -t ext4 /dev/xvda /mnt 2>/dev/null || { mke2fs -q /dev/xvda && mount -t ext4 /dev/xvda /mnt; } \
        || { result disk fail "cannot mount /dev/xvda"; echo "IAMTEST $NODE done"; return; }
    mkdir -p /mnt/iam /mnt/tokens
    mount --bind /mnt/iam /var/aos/iam
    mount --bind /mnt/tokens /var/lib/softhsm/tokens
    boots=$(( $(cat /mnt/boots 2>/dev/null || echo 0) + 1 )); echo "$boots" > /mnt/boots; sync
    domid=$(xenstore-read domid)
    layout=$(sed -n 's/.*iam\.vchan=\([a-z-]*\).*/\1/p' /proc/cmdline)
    links=$(ls /sys/class/net | tr '\n' ' ')
    [ "$links" = "lo " ] && result "no-network" ok "boot $boots, domain $domid, network interfaces: $links" \
        || result no-network fail "network interfaces: $links"
    if [ -e /var/aos/iam/provisioned ]; then start_iamd; result iamd ok "in operation (boot $boots)"
    else start_iamd --provisioning; result iamd ok "provisioning mode (boot $boots)"; fi
    if [ "$NODE" = sec2 ] && [ "$boots" = 1 ]; then
        # A domain reaching for another's vchan (sec1 is domain 1), dom0's proxy's and the
        # main node's own: Xen grants a ring to the admitted domain only, and xenstore hides
        # its path from the others.
        for p in "$(vchan_path 1)" "$(vchan_path sec1)"; do
            if out=$(xenstore-read "$p/ring-ref" 2>&1); then
                result not-admitted fail "domain $domid reads $p/ring-ref: $out"
            elif timeout 10 vchan-socket-proxy -m client 0 "$p" - < /dev/null > /dev/null 2>&1; then
                result not-admitted fail "domain $domid opened the vchan at $p"
            else
                result not-admitted ok "domain $domid: $p/ring-ref: $(echo "$out" | tail -1); that vchan not opened in 10 s"
            fi
        done
    fi
    case $layout in
    native-proxy) # dom0's proxy serves this domain at a path named by its id
        (while :; do iam-nodelink -v --retry-min-ms 200 --retry-max 2 --connect "vchan:0:data/aos-iam/$domid" 2>> /var/log/nodelink.log; sleep 1; done) & ;;
    native) # the address is in the configuration, as the layer writes it
        (while :; do iam-nodelink -v --retry-min-ms 200 --retry-max 2 2>> /var/log/nodelink.log; sleep 1; done) & ;;
    *) # stdio: one client proxy per link, restarted with it.
        (while :; do
            socat "EXEC:vchan-socket-proxy -m client 0 $(vchan_path "$NODE") -" "SYSTEM:iam-nodelink -v 2>>/var/log/nodelink.log" 2>> /var/log/vchan.log
            sleep 1
        done) & ;;
    esac
    echo "IAMTEST $NODE ready"
    if ! wait_until 240 provisioned; then
        result provisioned fail "$(iam-provision status 2>&1 | head -1)"; diag
        echo "IAMTEST $NODE done"; return
    fi
    if [ ! -e /mnt/in-operation ]; then
        result provisioned ok
        check openssl-verify certs_verify
        touch /mnt/in-operation; sync
        # Into operation: iamd out of provisioning mode; the link comes back in TLS.
        killall iam-nodelink
        start_iamd
    fi
    link_tls_check 150
    echo "IAMTEST $NODE done"
    sleep 600
}

# The tpm scenario's node, standing alone on systemd: its keys in a TPM 2.0 through the
# kernel's resource manager (/dev/tpmrm0), under the layer's units with the operator's TPM
# drop-in. Boot 1 provisions it (five modules in the TPM, one in SoftHSM) and renews; boot 2
# starts it in operation, and it renews again.
ms_of() { # COMMAND...: the milliseconds it took, or nothing if it failed (its output in /tmp/ms.out)
    # (/proc/uptime: busybox's date has no %N; hundredths of a second are fine here.)
    s=$(cut -d' ' -f1 /proc/uptime); "$@" > /tmp/ms.out 2>&1 || return 1
    awk -v s="$s" -v e="$(cut -d' ' -f1 /proc/uptime)" 'BEGIN { printf "%d", (e - s) * 1000 }'
}
median() { echo "$@" | tr ' ' '\n' | grep . | sort -n | sed -n "$(( ($(echo "$@" | wc -w) + 1) / 2 ))p"; }
tpm_keys() { iam-certctl --json list | grep -o '"key_url":"pkcs11:token=aos-tpm' | wc -l; }
main_tpm() {
    boot=$(cat /var/lib/iamtest/boots)
    if [ -c /dev/tpmrm0 ]; then result tpmrm0 ok "TPM $(cat /sys/class/tpm/tpm0/tpm_version_major 2>/dev/null) behind /dev/tpmrm0, boot $boot"
    else result tpmrm0 fail "no /dev/tpmrm0: $(ls /dev/tpm* 2>&1 | tr '\n' ' ')"; fi
    case "$boot" in
    1)
        unit_checks iamd-provisioning.service iamd.service
        echo "IAMTEST $NODE ready"
        if out=$(iam-provision --json run $(sign) 2>&1); then result provision ok "$(tpm_keys) keys in the TPM, $(iam-certctl --json list | grep -c '"key_url":"pkcs11:token=aos;') in SoftHSM"
        else result provision fail "$(echo "$out" | tail -3 | tr '\n' ' ')"; journalctl -b -u iamd-provisioning.service | tail -8 | sed "s|^|DIAG $NODE journal: |"; fi
        check openssl-verify certs_verify
        # Renewals (a key made, a CSR signed in the token, the certificate applied) of a P-256
        # module in the TPM and of one in SoftHSM, alternately, in the same run.
        tpm="" soft=""
        for i in 1 2 3; do
            tpm="$tpm $(ms_of iam-certctl renew online $(sign))"
            soft="$soft $(ms_of iam-certctl renew soft $(sign))"
        done
        if [ "$(echo $tpm | wc -w)" = 3 ] && [ "$(echo $soft | wc -w)" = 3 ]; then
            result renewal-times ok "P-256 renewal, median of 3: TPM $(median $tpm) ms, SoftHSM $(median $soft) ms ($(awk "BEGIN{printf \"%.1f\", $(median $tpm)/$(median $soft)}")x); TPM $tpm, SoftHSM $soft"
        else result renewal-times fail "TPM:$tpm SoftHSM:$soft: $(tail -2 /tmp/ms.out | tr '\n' ' ')"; fi
        n=$(tpm_keys)
        [ "$n" -ge 5 ] && result tpm-keys ok "$n keys in the TPM's token after the renewals" || result tpm-keys fail "$n keys"
        check openssl-verify-renewed certs_verify
        security_checks
        echo "IAMTEST $NODE reboot"
        systemctl poweroff
        ;;
    *)
        unit_checks iamd.service iamd-provisioning.service
        wait_until 30 iam-certctl status
        check cert-check iam-certctl check
        check renew-in-operation iam-certctl --json renew iam $(sign)
        check renew-rsa iam-certctl --json renew offline $(sign)
        check openssl-verify certs_verify
        echo "IAMTEST $NODE done"
        sleep 600
        ;;
    esac
}

case "$ROLE:$MODE" in
main:tpm) main_tpm ;;
main:xen) main_xen ;;
*:xen) secondary_xen ;;
main:systemd) main_systemd ;;
main:*) main_node ;;
*:systemd) secondary_systemd ;;
*) secondary ;;
esac
