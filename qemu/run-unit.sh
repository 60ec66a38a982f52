#!/bin/sh
# Boot a unit of QEMU VMs and provision it through the main node, end to end.
# Usage: qemu/run-unit.sh [full|serial|fault|systemd|xen|tpm]
#   full    main + sec1 (vsock, vhost-user-vsock and vhost-device-vsock) + sec2 (virtio-serial,
#           iam-nodelink --connect stdio on the port device)
#   serial  main + sec2 only (no vsock)
#   fault   as full, and sec1's link is killed (kill -9) while it is being provisioned: the
#           main node reports it unavailable, and it is provisioned once it is back
#   systemd main + sec1 (vsock), sec1 booting Debian's systemd from its own disk
#           (target/qemu/systemd-disk.img, copied per run) with the layer's units, three
#           times: boot 1 is the factory (iamd-provisioning.service; iam-provision bootstrap
#           with a factory CA), boot 2 enrolls by itself under iamd.service over EST and ends
#           operational, boot 3 starts operational. sec1 has no network: it reaches the EST
#           test server (on this machine's loopback) through its link, the main node's
#           tunnel, and the main VM's vsock to this machine.
#   tpm     one main node standing alone on Debian's systemd (target/qemu/tpm-disk.img), its
#           keys made in a TPM 2.0 (swtpm on this machine behind QEMU's tpm-tis) through the
#           kernel's /dev/tpmrm0, under the layer's iamd.service: provisioned with six keys
#           (five in the TPM), a renewal, then boot 2 restarts it in operation and renews again.
# Every scenario's PKI is as deployed: a root whose key is deleted once it has signed an
# issuing CA; the issuing CA signs the nodes (scripts/pki.sh).
# Environment: QEMU_ACCEL (tcg, the default; kvm only when asked), QEMU_TIMEOUT (seconds for
# the whole run, default 170, systemd 420), QEMU_KEEP=1 (keep target/qemu/run-MODE after
# success), EST_TEST_SERVER (systemd; default target/debug/examples/est-test-server).
# Prints one line per result and a summary; exits 1 on any failure or timeout.
set -eu
cd "$(dirname "$0")/.."
MODE=${1:-full}
ACCEL=${QEMU_ACCEL:-tcg}
# (systemd: three boots of a systemd guest, an enrollment, and the main node waiting.)
# (xen: Xen, dom0 and three domain creations under TCG.)
TIMEOUT=${QEMU_TIMEOUT:-$(case "$MODE" in systemd) echo 420 ;; xen) echo 480 ;; tpm) echo 300 ;; *) echo 170 ;; esac)}
IMG=target/qemu
OUT=$IMG/run-$MODE
PORT=8089
# systemd: the vsock port on this machine (CID 2) the main VM reaches the EST server at.
EST_VSOCK_PORT=8443
EST_SERVER=${EST_TEST_SERVER:-target/debug/examples/est-test-server}
case "$MODE" in
full|fault) NODES="sec1 sec2 main" ;;
serial) NODES="sec2 main" ;;
systemd) NODES="sec1 main" ;;
xen) NODES="main sec1 sec2" ;;
tpm) NODES="tpm" ;;
*) echo "qemu-test: scenario must be full, serial, fault, systemd, xen or tpm, not $MODE" >&2; exit 2 ;;
esac
case "$ACCEL" in
tcg) ACCEL_ARGS="-accel tcg -cpu max" ;;
kvm) ACCEL_ARGS="-accel kvm -cpu max" ;;
*) echo "qemu-test: QEMU_ACCEL must be tcg or kvm" >&2; exit 2 ;;
esac
[ -f "$IMG/vmlinux" ] && [ -f "$IMG/initramfs.cpio" ] || { echo "qemu-test: no image (make qemu-image)" >&2; exit 1; }
[ "$MODE" != systemd ] || [ -f "$IMG/systemd-disk.img" ] || { echo "qemu-test: no systemd disk (make qemu-image)" >&2; exit 1; }
[ "$MODE" != xen ] || [ -f "$IMG/xen/dom0.cpio" ] || { echo "qemu-test: no Xen image (make qemu-image)" >&2; exit 1; }
[ "$MODE" != tpm ] || [ -f "$IMG/tpm-disk.img" ] || { echo "qemu-test: no TPM disk (make qemu-image)" >&2; exit 1; }
[ "$MODE" != systemd ] || [ -x "$EST_SERVER" ] || { echo "qemu-test: no $EST_SERVER (cargo build --example est-test-server)" >&2; exit 1; }

rm -rf "$OUT"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PIDS=""
cleanup() {
    for p in $PIDS; do kill "$p" 2>/dev/null || true; done
    sleep 0.5
    for p in $PIDS; do kill -9 "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM
start=$(date +%s)
elapsed() { echo $(($(date +%s) - start)); }

# The unit's PKI as deployed (a root, its key deleted, and an issuing CA that signs the
# nodes) and the factory's password, passed to the VMs with -fw_cfg: every node gets the
# root (its only trust anchor) and the issuing CA's certificate (for openssl verify); the
# main node the issuing CA's key.
. scripts/pki.sh
make_pki "$OUT" "aos-iam qemu" > /dev/null
[ ! -e "$OUT/root.key" ] || { echo "qemu-test: the root's key was not deleted" >&2; exit 1; }
(umask 077; printf 'factory-secret\n' > "$OUT/password")
echo "$MODE" > "$OUT/mode"
echo "$NODES" | wc -w | tr -d ' ' > "$OUT/nodes"

if [ "$MODE" = xen ]; then
    # One VM: Xen, the main node in dom0 and the secondaries in domUs it creates (see
    # scenario.sh). The run's files go in a cpio appended to dom0's initramfs (-fw_cfg cannot
    # reach a domU, and dom0 hands them on); every node's lines come on the one serial log.
    # -cpu max crashes a PV dom0; Xen 4.17 needs a multithreaded TCG to be quick.
    mkdir -p "$OUT/files/iam-files"
    cp "$OUT/ca.pem" "$OUT/files/iam-files/root-ca.pem"
    cp "$OUT/issuing.pem" "$OUT/issuing.key" "$OUT/password" "$OUT/mode" "$OUT/nodes" "$OUT/files/iam-files/"
    cp qemu/scenario.sh "$OUT/files/iam-files/scenario.sh"
    (cd "$OUT/files" && find . | cpio -o -H newc --quiet) > "$OUT/files.cpio"
    cat "$IMG/xen/dom0.cpio" "$OUT/files.cpio" > "$OUT/dom0.cpio"
    rm -rf "$OUT/files" "$OUT/files.cpio"
    qemu-system-x86_64 -accel tcg,thread=multi -cpu qemu64 -m 2048 -smp 2 -nodefaults -no-user-config -display none \
        -serial "file:$OUT/main.log" -no-reboot -kernel "$IMG/xen/xen" \
        -append "console=com1 com1=115200,8n1 dom0_mem=640M,max:640M dom0_max_vcpus=1 noreboot" \
        -initrd "$IMG/xen/vmlinuz console=hvc0 quiet panic=-1 iam.node=main iam.role=main,$OUT/dom0.cpio" \
        < /dev/null > "$OUT/main.qemu.log" 2>&1 &
    PIDS="$PIDS $!"
    PID_main=$! PID_sec1=$! PID_sec2=$!
    ln -s main.log "$OUT/sec1.log"
    ln -s main.log "$OUT/sec2.log"
fi

# vsock between sibling VMs: one userspace device for all of them, CID 3 the main node.
uses_vsock=""
case "$MODE:$NODES" in xen:*) ;; *sec1*) uses_vsock=1 ;; esac
if [ -n "$uses_vsock" ]; then
    command -v vhost-device-vsock >/dev/null 2>&1 || { echo "qemu-test: vhost-device-vsock is missing (cargo install vhost-device-vsock)" >&2; exit 1; }
    vhost-device-vsock --vm "guest-cid=3,socket=$OUT/vh-main.sock,uds-path=$OUT/main.vsock" \
        --vm "guest-cid=4,socket=$OUT/vh-sec1.sock,uds-path=$OUT/sec1.vsock" > "$OUT/vhost-device-vsock.log" 2>&1 &
    PIDS="$PIDS $!"
    i=0
    until [ -S "$OUT/vh-main.sock" ] && [ -S "$OUT/vh-sec1.sock" ]; do
        i=$((i + 1)); [ $i -lt 100 ] || { cat "$OUT/vhost-device-vsock.log"; echo "qemu-test: vhost-device-vsock did not start" >&2; exit 1; }
        sleep 0.1
    done
fi

# The tpm scenario: one VM booting the bzImage (with the PVH vmlinux its ACPI table for the
# TPM is lost), swtpm behind tpm-tis. swtpm ends with the VM; the TPM's state lives on in its
# directory across the two boots, as the disk's does.
[ "$MODE" != tpm ] || { mkdir -p "$OUT/tpm-state"; cp --sparse=always "$IMG/tpm-disk.img" "$OUT/tpm-disk.img"; }
boot_tpm() { # the tpm scenario's VM, booting its disk
    rm -f "$OUT/swtpm.sock"
    swtpm socket --tpm2 --tpmstate "dir=$OUT/tpm-state" --ctrl "type=unixio,path=$OUT/swtpm.sock" \
        --log "file=$OUT/swtpm.log" > /dev/null 2>&1 &
    PIDS="$PIDS $!"
    i=0
    until [ -S "$OUT/swtpm.sock" ]; do
        i=$((i + 1)); [ $i -lt 100 ] || { echo "qemu-test: swtpm did not start" >&2; exit 1; }
        sleep 0.1
    done
    # shellcheck disable=SC2086
    qemu-system-x86_64 $ACCEL_ARGS -M q35 -m 512 -smp 1 -nodefaults -no-user-config -display none \
        -smbios "type=1,serial=node-tpm" -serial "file:$OUT/tpm.log" -no-reboot \
        -kernel "$IMG/cache/kernel/boot/$(ls "$IMG/cache/kernel/boot" | grep '^vmlinuz-' | head -1)" \
        -initrd "$IMG/initramfs.cpio" \
        -append "console=ttyS0 quiet panic=-1 iam.node=tpm iam.role=main iam.root=/dev/vda systemd.show_status=1" \
        -drive "file=$OUT/tpm-disk.img,format=raw,if=virtio" \
        -chardev "socket,id=chrtpm,path=$OUT/swtpm.sock" -tpmdev emulator,id=tpm0,chardev=chrtpm -device tpm-tis,tpmdev=tpm0 \
        -fw_cfg "name=opt/iam/scenario.sh,file=qemu/scenario.sh" -fw_cfg "name=opt/iam/root-ca.pem,file=$OUT/ca.pem" \
        -fw_cfg "name=opt/iam/issuing.pem,file=$OUT/issuing.pem" -fw_cfg "name=opt/iam/issuing.key,file=$OUT/issuing.key" \
        -fw_cfg "name=opt/iam/password,file=$OUT/password" \
        -fw_cfg "name=opt/iam/mode,file=$OUT/mode" -fw_cfg "name=opt/iam/nodes,file=$OUT/nodes" \
        < /dev/null > "$OUT/tpm.qemu.log" 2>&1 &
    PIDS="$PIDS $!"
    PID_tpm=$!
}

vm() { # NAME ROLE APPEND EXTRA-ARGS...
    name=$1 role=$2 append=$3; shift 3
    mem=""
    case "$name" in main|sec1) [ -z "$uses_vsock" ] || mem="-object memory-backend-memfd,id=mem0,size=256M,share=on -machine memory-backend=mem0 -chardev socket,id=v,path=$OUT/vh-$name.sock -device vhost-user-vsock-pci,chardev=v" ;; esac
    # shellcheck disable=SC2086
    qemu-system-x86_64 $ACCEL_ARGS -M q35 -m 256 -smp 1 -nodefaults -no-user-config -display none \
        -smbios "type=1,serial=${SERIAL:-node-$name}" -serial "file:$OUT/$name.log" -no-reboot -kernel "$IMG/vmlinux" -initrd "$IMG/initramfs.cpio" \
        -append "console=ttyS0 quiet panic=-1 iam.node=$name iam.role=$role $append" \
        -fw_cfg "name=opt/iam/scenario.sh,file=qemu/scenario.sh" -fw_cfg "name=opt/iam/root-ca.pem,file=$OUT/ca.pem" \
        -fw_cfg "name=opt/iam/issuing.pem,file=$OUT/issuing.pem" \
        -fw_cfg "name=opt/iam/mode,file=$OUT/mode" -fw_cfg "name=opt/iam/nodes,file=$OUT/nodes" \
        $mem "$@" < /dev/null > "$OUT/$name.qemu.log" 2>&1 &
    PIDS="$PIDS $!"
    eval "PID_$name=$!"
}
seen() { grep -q "^IAMTEST $1 $2" "$OUT/$1.log" 2>/dev/null; }
powered_off() { # NODE BOOT: wait for NODE's VM to power off (it said it reboots), and keep
    # its log as NODE-bootBOOT.log
    t=0
    eval "p=\$PID_$1"
    while kill -0 "$p" 2>/dev/null; do
        t=$((t + 1)); [ $t -lt 300 ] || { echo "qemu-test: $1 did not power off"; exit 1; }
        sleep 0.2
    done
    mv "$OUT/$1.log" "$OUT/$1-boot$2.log"
}
wait_for() { # NODE WHAT SECONDS
    t=$(($3 * 5))
    while ! seen "$1" "$2"; do
        t=$((t - 1)); [ $t -gt 0 ] || return 1
        eval "p=\$PID_$1"; kill -0 "$p" 2>/dev/null || return 1
        sleep 0.2
    done
}

serial_args=""
case "$NODES" in *sec2*) serial_args="-device virtio-serial-pci -chardev socket,id=l,path=$OUT/link-sec2.sock,server=on,wait=off -device virtserialport,chardev=l,name=iam.link" ;; esac
listen=""
[ -z "$uses_vsock" ] || listen="iam.listen=vsock:$PORT"
if [ "$MODE" = systemd ]; then
    # The EST test server on this machine's loopback, issuing with the unit's issuing CA and
    # trusting a factory CA's bootstrap certificates; the main VM reaches it at vsock CID 2
    # (vhost-device-vsock: main.vsock_PORT), and carries sec1's tunnels to it.
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
        -keyout "$OUT/factory-ca.key" -out "$OUT/factory-ca.pem" -subj "/O=aos-iam qemu/CN=QEMU Factory CA" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    mkdir -p "$OUT/est"
    cp "$OUT/ca.pem" "$OUT/issuing.pem" "$OUT/issuing.key" "$OUT/factory-ca.pem" "$OUT/est/"
    (umask 077; printf 'claim-qemu-4711\n' > "$OUT/claim-token")
    echo "https://localhost:$EST_VSOCK_PORT/.well-known/est" > "$OUT/est-url"
    est_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    "$EST_SERVER" "$OUT/est" "$est_port" claim-qemu-4711 > "$OUT/est-server.log" 2>&1 &
    PIDS="$PIDS $!"
    i=0
    until grep -q '^https://' "$OUT/est-server.log" 2>/dev/null; do
        i=$((i + 1)); [ $i -lt 100 ] || { cat "$OUT/est-server.log"; echo "qemu-test: the EST test server did not start" >&2; exit 1; }
        sleep 0.1
    done
    socat "UNIX-LISTEN:$OUT/main.vsock_$EST_VSOCK_PORT,fork" "TCP:127.0.0.1:$est_port" 2>> "$OUT/est-relay.log" &
    PIDS="$PIDS $!"
    listen="$listen iam.tunnel=localhost:$EST_VSOCK_PORT iam.est=$EST_VSOCK_PORT"
fi
boot_main() {
    # shellcheck disable=SC2086
    vm main main "$listen" -fw_cfg "name=opt/iam/issuing.key,file=$OUT/issuing.key" -fw_cfg "name=opt/iam/password,file=$OUT/password" $serial_args
    wait_for main ready 60 || { echo "qemu-test: main did not become ready"; tail -20 "$OUT/main.log"; exit 1; }
    echo "qemu-test: main ready after $(elapsed) s"
}
disk_args=""
if [ "$MODE" = systemd ]; then
    cp --sparse=always "$IMG/systemd-disk.img" "$OUT/sec1-disk.img"
    disk_args="-drive file=$OUT/sec1-disk.img,format=raw,if=virtio"
fi
BOOT=1
# sec1's serial (its node id): boots 1 to 3 on its own VM, boot 4 the same disk in a VM of
# another serial.
SEC1_SERIAL=$(printf 'node-sec1' | md5sum | cut -d' ' -f1)
boot_sec1() {
    if [ "$MODE" = systemd ]; then
        # Boot 1 is the factory: the factory CA, the claim token and the EST server's anchor
        # reach the node then, and never again.
        factory_args=""
        [ "$BOOT" != 1 ] || factory_args="-fw_cfg name=opt/iam/factory-ca.pem,file=$OUT/factory-ca.pem
            -fw_cfg name=opt/iam/factory-ca.key,file=$OUT/factory-ca.key -fw_cfg name=opt/iam/password,file=$OUT/password
            -fw_cfg name=opt/iam/claim-token,file=$OUT/claim-token -fw_cfg name=opt/iam/est-anchor.pem,file=$OUT/est/est-anchor.pem
            -fw_cfg name=opt/iam/est-url,file=$OUT/est-url"
        serial=$SEC1_SERIAL
        [ "$BOOT" != 4 ] || serial=another-board-0042
        # shellcheck disable=SC2086
        SERIAL=$serial vm sec1 secondary "iam.root=/dev/vda systemd.show_status=1" $disk_args $factory_args
    else
        vm sec1 secondary "iam.connect=vsock:3:$PORT"
    fi
}
boot_secondaries() {
    for n in $NODES; do
        case "$n" in
        sec1) boot_sec1 ;;
        sec2) vm sec2 secondary "iam.connect=stdio" -device virtio-serial-pci \
            -chardev "socket,id=l,path=$OUT/link-sec2.sock,reconnect=1" -device virtserialport,chardev=l,name=iam.link ;;
        esac
    done
    for n in $NODES; do
        [ "$n" = main ] && continue
        wait_for "$n" ready 60 || { echo "qemu-test: $n did not become ready"; tail -20 "$OUT/$n.log"; exit 1; }
        echo "qemu-test: $n ready after $(elapsed) s"
    done
}
# The order is explicit, never a race: the main node boots first and is ready (iamd and
# its link listeners up) before any secondary boots and dials it. A vsock link dialed
# before its peer's device was up has been seen to hang for good in vhost-device-vsock.
if [ "$MODE" = xen ]; then
    wait_for main ready 240 || { echo "qemu-test: dom0 did not become ready"; tail -30 "$OUT/main.log"; exit 1; }
    echo "qemu-test: dom0 (main) ready after $(elapsed) s"
elif [ "$MODE" = tpm ]; then
    # Boot 1 provisions it, and powers off; boot 2 starts it in operation.
    boot_tpm
    if wait_for tpm reboot $((TIMEOUT - $(elapsed))); then
        powered_off tpm 1
        echo "qemu-test: tpm powered off after boot 1 at $(elapsed) s; booting it again"
        boot_tpm
    else
        mv "$OUT/tpm.log" "$OUT/tpm-boot1.log"
        : > "$OUT/tpm.log"
        echo "qemu-test: tpm's boot 1 did not finish"
    fi
else
    boot_main
    boot_secondaries
fi
# systemd: sec1 powers off after boots 1, 2 and 3; the same disk boots again. Before boot 3
# its root file system gets a new machine-id, as a reflash would give it; boot 4 is in a VM
# of another serial.
while [ "$MODE" = systemd ] && [ "$BOOT" -lt 4 ]; do
    left=$((TIMEOUT - $(elapsed)))
    if wait_for sec1 reboot "$left"; then
        powered_off sec1 "$BOOT"
        echo "qemu-test: sec1 powered off after boot $BOOT at $(elapsed) s; booting the same disk again"
        BOOT=$((BOOT + 1))
        if [ "$BOOT" = 3 ]; then
            printf 'reflashed-root-fs' | md5sum | cut -d' ' -f1 > "$OUT/new-machine-id"
            debugfs -w -R "rm /etc/machine-id" "$OUT/sec1-disk.img" >/dev/null 2>&1
            debugfs -w -R "write $OUT/new-machine-id /etc/machine-id" "$OUT/sec1-disk.img" >/dev/null 2>&1 \
                || { echo "qemu-test: cannot write sec1's new machine-id"; exit 1; }
        fi
        boot_sec1
    else
        mv "$OUT/sec1.log" "$OUT/sec1-boot$BOOT.log"
        : > "$OUT/sec1.log"
        echo "qemu-test: sec1's boot $BOOT did not finish"
        break
    fi
done

# Every node's results, until each says it is done or the time is up.
status=0
for n in $NODES; do
    left=$((TIMEOUT - $(elapsed)))
    [ $left -gt 0 ] || left=1
    if ! wait_for "$n" done "$left"; then
        echo "qemu-test: $n did not finish within ${TIMEOUT} s (VM $(eval "kill -0 \$PID_$n" 2>/dev/null && echo running || echo stopped))"
        status=1
    fi
done
echo
echo "== qemu-test $MODE ($ACCEL): results"
for n in $NODES; do
    [ ! -L "$OUT/$n.log" ] || continue
    for b in "$OUT/$n-boot"*.log "$OUT/$n.log"; do
        [ ! -f "$b" ] || tr -d '\r' < "$b" | grep -a '^IAMTEST' | grep -v '^IAMTEST [^ ]* \(boot ok .*\|ready\|done\|exit\|reboot\)$' || true
    done
done > "$OUT/results"
cat "$OUT/results"
fails=$(grep -c ' fail ' "$OUT/results" || true)
oks=$(grep -c ' ok ' "$OUT/results" || true)
[ "$fails" = 0 ] || status=1
[ "$oks" -gt 0 ] || status=1
echo "== qemu-test $MODE: $oks ok, $fails failed, $(elapsed) s$([ $status = 0 ] || echo ", FAILED (logs in $OUT)")"
if [ $status != 0 ]; then
    for n in $NODES; do [ -L "$OUT/$n.log" ] || { echo "--- $n console (last lines)"; tr -d '\r' < "$OUT/$n.log" | tail -25; }; done
fi
exit $status
