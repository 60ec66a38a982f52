#!/bin/sh
# Build target/qemu/tpm-disk.img: the disk of the `tpm` scenario, a main node standing alone
# whose keys are made in a TPM 2.0 reached through the kernel's resource manager
# (/dev/tpmrm0), under the layer's iamd.service hardening. It is the systemd scenario's disk
# (qemu/build-systemd-disk.sh: Debian's systemd, the layer's units as `make install` puts
# them) made into that node with debugfs:
# - the dynamic build of aos-iam (the static one refuses tpm2-pkcs11) and this machine's
#   tpm2-pkcs11 with the libraries it links and the device TCTI it loads (the same Debian
#   release as the disk's packages);
# - a configuration of five modules in the TPM's token and one in SoftHSM (the same run's
#   baseline for the timings), the node id from the VM's DMI serial;
# - the operator's drop-in for iamd.service and iamd-provisioning.service that names the
#   TPM to tpm2-pkcs11 (the units already allow /dev/tpmrm0);
# - no iam-nodelink, no enrollment; the test's units run the scenario as node `tpm`.
# Usage: qemu/build-tpm-disk.sh [DYNAMIC-BINARY]
set -eu
cd "$(dirname "$0")/.."
BIN=${1:-target/release/aos-iam}
OUT=target/qemu
SRC=$OUT/systemd-disk.img
IMG=$OUT/tpm-disk.img
TPM2=/usr/lib/x86_64-linux-gnu/pkcs11/libtpm2_pkcs11.so
[ -f "$SRC" ] || { echo "qemu-tpm-disk: no $SRC (qemu/build-systemd-disk.sh first)" >&2; exit 1; }
[ -f "$TPM2" ] || { echo "qemu-tpm-disk: no $TPM2 (Debian package libtpm2-pkcs11-1)" >&2; exit 1; }
command -v debugfs >/dev/null || { echo "qemu-tpm-disk: debugfs is missing (e2fsprogs)" >&2; exit 1; }
if ldd "$BIN" 2>&1 | grep -q 'not a dynamic'; then
    echo "qemu-tpm-disk: $BIN is static; the TPM needs the dynamic build (make build)" >&2
    exit 1
fi

# tpm2-pkcs11, what it links, and the device TCTI that tctildr loads by name.
libs=$( (readlink -f "$TPM2"; ldd "$TPM2" | sed -n 's/.*=> \(\/[^ ]*\) .*/\1/p';
    readlink -f /usr/lib/x86_64-linux-gnu/libtss2-tcti-device.so.0) | sort -u)
inputs=$( (sha256sum "$BIN" "$SRC" qemu/build-tpm-disk.sh; for l in $libs; do sha256sum "$(readlink -f "$l")"; done) \
    | sha256sum | cut -d' ' -f1)
if [ -f "$OUT/tpm-stamp" ] && [ "$(cat "$OUT/tpm-stamp")" = "$inputs" ] && [ -f "$IMG" ]; then
    echo "qemu-tpm-disk: up to date ($IMG)"
    exit 0
fi
W=$OUT/tpm-disk.work
rm -rf "$W"
mkdir -p "$W"

cat > "$W/config.toml" <<'EOF'
# The tpm scenario's node: five modules in the TPM, one in SoftHSM.
[node]
id_source = "dmi:product_serial"
name = "tpm"
type = "main"

[paths]
working_dir = "/var/aos/iam"
root_ca = "/etc/aos-iam/root-ca.pem"
public_socket = "/run/aos-iam/public.sock"
protected_socket = "/run/aos-iam/protected.sock"
protected_socket_mode = "0660"
protected_socket_group = 990
allowed_gids = [990]
EOF
for m in "iam ecdsa-p384 \"clientAuth\", \"serverAuth\"" "online ecdsa-p256 \"clientAuth\"" \
    "offline rsa-2048 \"clientAuth\"" "storage ecdsa-p384 \"clientAuth\"" "diskencryption ecdsa-p256 -"; do
    set -- $m
    id=$1 alg=$2; shift 2
    eku="[$*]"; [ "$eku" != "[-]" ] || eku="[]"
    self=false; [ "$id" != diskencryption ] || self=true
    cat >> "$W/config.toml" <<EOF

[[modules]]
id = "$id"
algorithm = "$alg"
extended_key_usage = $eku
self_signed = $self
[modules.pkcs11]
library = "$TPM2"
slot_index = 0
init_label = "aos-tpm"
user_pin_file = "/var/aos/iam/tpm-user-pin"
EOF
done
cat >> "$W/config.toml" <<'EOF'

[[modules]]
id = "soft"
algorithm = "ecdsa-p256"
extended_key_usage = ["clientAuth"]
[modules.pkcs11]
library = "/usr/lib/softhsm/libsofthsm2.so"
token_label = "aos"
user_pin_file = "/var/aos/iam/user-pin"
EOF
cat > "$W/tpm.conf" <<'EOF'
# The TPM through the kernel's resource manager; tpm2-pkcs11 keeps its store in the working
# directory (iamd.service already has DeviceAllow=/dev/tpmrm0 and that directory writable).
[Service]
Environment=TPM2_PKCS11_TCTI=device:/dev/tpmrm0 TPM2_PKCS11_STORE=/var/aos/iam TPM2_PKCS11_LOG_LEVEL=0
EOF
# The test's scenario unit, run as node `tpm` (p11tool exports from the TPM's token too).
debugfs -R "dump /etc/systemd/system/iamtest.service $W/iamtest.service.sec1" "$SRC" > /dev/null 2>&1
grep -q '^Environment=NODE=sec1 ROLE=secondary ' "$W/iamtest.service.sec1" \
    || { echo "qemu-tpm-disk: $SRC has no iamtest.service for sec1" >&2; exit 1; }
sed 's|^Environment=NODE=sec1 ROLE=secondary |Environment=NODE=tpm ROLE=main TPM2_PKCS11_TCTI=device:/dev/tpmrm0 TPM2_PKCS11_STORE=/var/aos/iam TPM2_PKCS11_LOG_LEVEL=0 |' \
    "$W/iamtest.service.sec1" > "$W/iamtest.service"

L=/usr/lib/x86_64-linux-gnu
{
    echo "rm /usr/bin/aos-iam"
    echo "write $BIN /usr/bin/aos-iam"
    echo "sif /usr/bin/aos-iam mode 0100755"
    echo "mkdir $L/pkcs11"
    echo "write $(readlink -f "$TPM2") $TPM2"
    for l in $libs; do
        [ "$l" = "$(readlink -f "$TPM2")" ] && continue
        # Each library under its soname, the name the loader looks for.
        soname=$(objdump -p "$l" 2>/dev/null | sed -n 's/^ *SONAME *//p')
        echo "rm $L/${soname:-$(basename "$l")}"
        echo "write $l $L/${soname:-$(basename "$l")}"
    done
    echo "rm /etc/aos-iam/config.toml"
    echo "write $W/config.toml /etc/aos-iam/config.toml"
    echo "rm /etc/aos-iam/config.d/10-links.toml"
    echo "rm /etc/aos-iam/config.d/20-enroll.toml"
    echo "rm /etc/systemd/system/multi-user.target.wants/iam-nodelink.service"
    for u in iamd iamd-provisioning; do
        echo "mkdir /etc/systemd/system/$u.service.d"
        echo "write $W/tpm.conf /etc/systemd/system/$u.service.d/tpm.conf"
    done
    echo "rm /etc/systemd/system/iamtest.service"
    echo "write $W/iamtest.service /etc/systemd/system/iamtest.service"
    echo "rm /etc/hostname"
} > "$W/commands"
printf 'tpm\n' > "$W/hostname"
echo "write $W/hostname /etc/hostname" >> "$W/commands"

cp --sparse=always "$SRC" "$IMG.new"
debugfs -w -f "$W/commands" "$IMG.new" > "$W/debugfs.log" 2>&1
# debugfs goes on past a failed command; what must be there is looked at.
for f in /usr/bin/aos-iam "$TPM2" /etc/aos-iam/config.toml /etc/systemd/system/iamd.service.d/tpm.conf; do
    debugfs -R "stat $f" "$IMG.new" 2>/dev/null | grep -q '^Inode:' \
        || { cat "$W/debugfs.log"; echo "qemu-tpm-disk: $f was not written" >&2; exit 1; }
done
mv "$IMG.new" "$IMG"
rm -rf "$W"
echo "$inputs" > "$OUT/tpm-stamp"
echo "qemu-tpm-disk: $IMG (tpm2-pkcs11 and $(echo "$libs" | wc -l) libraries)"
