#!/bin/sh
# Build target/qemu/systemd-disk.img: the root file system of the `systemd` scenario's
# secondary node, which boots Debian's systemd as PID 1 (the initramfs's /init mounts it
# and switches to it when the kernel command line has iam.root=/dev/vda).
#
# It holds what the initramfs holds (busybox, the static aos-iam, SoftHSM, openssl,
# p11tool), Debian's systemd and the libraries it links, taken from the Debian archive
# (`apt-get download`, unpacked with dpkg-deb, not installed), and aos-iam as `make
# install` installs it: the binary and its applet links, the layer's iamd.service,
# iamd-provisioning.service and iam-nodelink.service, tmpfiles.d, sysusers.d and the
# configuration of a secondary that dials vsock:3:8089 and has no network: it reaches its EST
# server through the link (links.tunnel), with a bootstrap module and [enroll] as an
# integrator's drop-in gives them (20-enroll.toml). The three units are enabled as the
# layer enables them on a secondary (SYSTEMD_SERVICE). Two units of the test's own run the
# scenario: iamtest-setup.service (the run's files from fw_cfg, before sysinit.target) and
# iamtest.service (qemu/scenario.sh, its results on the serial console).
# Rebuilt only when an input changed. Usage: qemu/build-systemd-disk.sh [AOS_IAM_BIN]
set -eu
cd "$(dirname "$0")/.."
BIN=${1:-${AOS_IAM_BIN:-target/x86_64-unknown-linux-gnu/release/aos-iam}}
OUT=target/qemu
CACHE=$OUT/cache/systemd
IMG=$OUT/systemd-disk.img
[ -f "$OUT/initramfs.cpio" ] || { echo "qemu-systemd-disk: no $OUT/initramfs.cpio (qemu/build-image.sh first)" >&2; exit 1; }
[ -x /lib/systemd/systemd ] || { echo "qemu-systemd-disk: the host's systemd is needed to find its libraries' packages" >&2; exit 1; }
LAYER=meta-aos-iam/recipes-security/aos-iam/files
mkdir -p "$CACHE"

# Debian's systemd and the packages of every library its binaries link (found on the host,
# which runs the same release, with ldd and dpkg -S), downloaded once.
libs=$(for f in /lib/systemd/systemd /bin/systemctl /usr/bin/systemd-analyze /lib/systemd/systemd-journald \
    /bin/systemd-tmpfiles /bin/systemd-sysusers /lib/systemd/systemd-executor; do
    [ -e "$f" ] && ldd "$f" 2>/dev/null | sed -n 's/.*=> \(\/[^ ]*\) .*/\1/p'
done | sort -u)
pkgs="systemd"
for l in $libs; do
    p=$(dpkg -S "$l" 2>/dev/null || dpkg -S "${l#/usr}" 2>/dev/null || dpkg -S "$(readlink -f "$l")" 2>/dev/null \
        || dpkg -S "/usr$l" 2>/dev/null || true)
    p=$(echo "$p" | head -1 | cut -d: -f1)
    [ -n "$p" ] || { echo "qemu-systemd-disk: no package owns $l" >&2; exit 1; }
    pkgs="$pkgs $p"
done
pkgs=$(echo "$pkgs" | tr ' ' '\n' | sort -u | tr '\n' ' ')
for p in $pkgs; do
    ls "$CACHE/${p}_"*.deb >/dev/null 2>&1 && continue
    (cd "$CACHE" && apt-get download "$p" >/dev/null 2>&1) || { echo "qemu-systemd-disk: apt-get download $p failed" >&2; exit 1; }
done

inputs=$( (sha256sum "$BIN" "$OUT/initramfs.cpio" qemu/build-systemd-disk.sh Makefile scripts/links-dropin.sh \
    "$LAYER"/*.service "$LAYER"/aos-iam.tmpfiles "$LAYER"/aos-iam.sysusers "$LAYER"/config.toml
    ls "$CACHE"/*.deb) | sha256sum | cut -d' ' -f1)
if [ -f "$OUT/systemd-stamp" ] && [ "$(cat "$OUT/systemd-stamp")" = "$inputs" ] && [ -f "$IMG" ]; then
    echo "qemu-systemd-disk: up to date ($IMG)"
    exit 0
fi
echo "qemu-systemd-disk: building $IMG (packages: $pkgs)"
R=$OUT/systemd-root
rm -rf "$R"
mkdir -p "$R"
(cd "$R" && cpio -id --quiet < ../initramfs.cpio)
# (The packages' /bin, /sbin and /lib go through the image's merged-/usr links.)
for p in $pkgs; do
    dpkg-deb --fsys-tarfile "$(ls "$CACHE/${p}_"*.deb | head -1)" | tar -x -C "$R" --keep-directory-symlink
done

# aos-iam as make install installs it, for a secondary node dialing the main node's vsock.
make --no-print-directory install DESTDIR="$(pwd)/$R" RELEASE="$BIN" STRIP=true \
    NODE_TYPE=secondary NODE_NAME=sec1 PKCS11_LIBRARY=/usr/lib/softhsm/libsofthsm2.so TOKEN_LABEL=aos NODE_ID_SOURCE=dmi:product_serial \
    NODE_ROLE=secondary LINK_CONNECT=vsock:3:8089 LINK_TUNNEL=/run/aos-iam-nodelink/tunnel.sock >/dev/null
# Zero-touch enrollment: the bootstrap identity (signed at the factory by its CA, whose
# certificate the factory leaves in /etc/aos-iam) and the enrollment's pace. The EST URL,
# its anchor and the claim token are stored by iam-provision bootstrap.
cat > "$R/etc/aos-iam/config.d/20-enroll.toml" <<'EOF'
[[modules]]
id = "bootstrap"
algorithm = "ecdsa-p256"
extended_key_usage = ["clientAuth"]
root_ca = "/etc/aos-iam/factory-ca.pem"
[modules.pkcs11]
library = "/usr/lib/softhsm/libsofthsm2.so"
token_label = "aos"
user_pin_file = "/var/aos/iam/user-pin"

[enroll]
attempts = 6
retry = "5s"
max_retry = "20s"
timeout = "60s"
EOF

# The machine id of this disk, a valid one for systemd: 32 hex digits. The node id is the VM's
# DMI serial (run-unit.sh gives sec1 this same value, so that the id reads as before).
printf 'node-sec1' | md5sum | cut -d' ' -f1 > "$R/etc/machine-id"
echo sec1 > "$R/etc/hostname"
mkdir -p "$R/var/log" "$R/var/tmp" "$R/var/lib/iamtest" "$R/usr/libexec/aos-iam-test"
rm -f "$R/etc/aos-iam/config.toml.in"

# The test's own units: the run's files, then the scenario on the serial console.
cat > "$R/usr/libexec/aos-iam-test/setup.sh" <<'EOF'
#!/bin/sh
# The run's files from fw_cfg (qemu_fw_cfg was loaded by the initramfs) into /run/iam; the
# unit's root CA where the configuration names it; the boot counted on the disk.
set -e
trap '[ $? = 0 ] || echo "IAMTEST sec1 setup fail (see the lines above)"' EXIT
mkdir -p /run/iam
for f in /sys/firmware/qemu_fw_cfg/by_name/opt/iam/*; do
    [ -e "$f/raw" ] && cat "$f/raw" > "/run/iam/$(basename "$f")"
done
chmod 0600 /run/iam/*
cp /run/iam/root-ca.pem /etc/aos-iam/root-ca.pem
chmod 0644 /etc/aos-iam/root-ca.pem
# The factory (boot 1) leaves its CA's certificate, which the bootstrap module names.
if [ -f /run/iam/factory-ca.pem ]; then
    cp /run/iam/factory-ca.pem /etc/aos-iam/factory-ca.pem
    chmod 0644 /etc/aos-iam/factory-ca.pem
fi
echo $(($(cat /var/lib/iamtest/boots 2>/dev/null || echo 0) + 1)) > /var/lib/iamtest/boots
sync
EOF
cat > "$R/etc/systemd/system/iamtest-setup.service" <<'EOF'
[Unit]
Description=aos-iam QEMU test: the run's files
DefaultDependencies=no
Before=sysinit.target iamd.service iamd-provisioning.service iam-nodelink.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh /usr/libexec/aos-iam-test/setup.sh
StandardOutput=tty
StandardError=tty
TTYPath=/dev/ttyS0

[Install]
WantedBy=sysinit.target
EOF
cat > "$R/etc/systemd/system/iamtest.service" <<'EOF'
[Unit]
Description=aos-iam QEMU test: the scenario
# (Not after iam-nodelink.service: at the factory its start job waits for a main node that
# is in operation and will not take this node's link in the clear; the scenario looks.)
After=iamtest-setup.service iamd.service iamd-provisioning.service

[Service]
Type=simple
Environment=NODE=sec1 ROLE=secondary PATH=/usr/bin:/usr/sbin
ExecStart=/bin/sh /run/iam/scenario.sh
StandardOutput=tty
StandardError=tty
TTYPath=/dev/ttyS0

[Install]
WantedBy=multi-user.target
EOF
systemctl --root="$R" --quiet enable iamd.service iamd-provisioning.service iam-nodelink.service \
    iamtest-setup.service iamtest.service
systemctl --root="$R" --quiet set-default multi-user.target
# Nothing the scenario does not use: no getty (no agetty here), no timers.
rm -rf "$R/etc/systemd/system/getty.target.wants" "$R/etc/systemd/system/timers.target.wants"
systemctl --root="$R" --quiet mask getty.target getty-static.service

rm -f "$IMG.new"
mke2fs -q -t ext4 -L iamroot -d "$R" "$IMG.new" 400M
mv "$IMG.new" "$IMG"
rm -rf "$R"
echo "$inputs" > "$OUT/systemd-stamp"
echo "qemu-systemd-disk: $IMG ($(du -h "$IMG" | cut -f1) used)"
