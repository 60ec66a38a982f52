#!/bin/sh
# Build the QEMU test image: target/qemu/vmlinux (Debian's kernel, decompressed) and
# target/qemu/initramfs.cpio (busybox, the static aos-iam with its applet links, SoftHSM and
# the tools the checks use, the kernel modules for virtio-serial, vsock and fw_cfg, /init
# and the Yocto layer's configuration). Rebuilt only when an input changed.
# Usage: qemu/build-image.sh [AOS_IAM_BIN]   (default: the `make static` binary)
set -eu
cd "$(dirname "$0")/.."
BIN=${1:-${AOS_IAM_BIN:-target/x86_64-unknown-linux-gnu/release/aos-iam}}
OUT=target/qemu
CACHE=$OUT/cache
[ -x "$BIN" ] || { echo "qemu-image: $BIN is not built (make static)" >&2; exit 1; }
file -L "$BIN" | grep -q 'static-pie linked' || { echo "qemu-image: $BIN is not a static-pie binary" >&2; exit 1; }

SOFTHSM=/usr/lib/softhsm/libsofthsm2.so
TOOLS="/usr/bin/busybox /usr/bin/softhsm2-util /usr/bin/openssl /usr/bin/p11tool /usr/bin/socat"
for t in $TOOLS $SOFTHSM; do
    [ -e "$t" ] || { echo "qemu-image: $t is missing (qemu/deps.sh installs it)" >&2; exit 1; }
done
mkdir -p "$CACHE"

# The kernel: Debian's linux-image package, downloaded once and unpacked (not installed).
deb=$(ls "$CACHE"/linux-image-*.deb 2>/dev/null | head -1 || true)
if [ -z "$deb" ]; then
    pkg=$(apt-cache depends linux-image-amd64 | sed -n 's/.*Depends: \(linux-image-[0-9].*-amd64\)$/\1/p' | head -1)
    [ -n "$pkg" ] || { echo "qemu-image: cannot find the package behind linux-image-amd64" >&2; exit 1; }
    (cd "$CACHE" && apt-get download "$pkg" 2>/dev/null) || { echo "qemu-image: apt-get download $pkg failed" >&2; exit 1; }
    deb=$(ls "$CACHE"/linux-image-*.deb | head -1)
fi

inputs=$( (sha256sum "$BIN" "$deb" qemu/build-image.sh qemu/init scripts/links-dropin.sh \
    meta-aos-iam/recipes-security/aos-iam/files/config.toml
    for t in $TOOLS $SOFTHSM; do ls -lL "$t"; done) | sha256sum | cut -d' ' -f1)
if [ -f "$OUT/stamp" ] && [ "$(cat "$OUT/stamp")" = "$inputs" ] && [ -f "$OUT/vmlinux" ] && [ -f "$OUT/initramfs.cpio" ]; then
    echo "qemu-image: up to date ($OUT/vmlinux, $OUT/initramfs.cpio)"
    exit 0
fi
echo "qemu-image: building in $OUT"
rm -rf "$CACHE/kernel" "$OUT/root"
mkdir -p "$CACHE/kernel"
dpkg-deb -x "$deb" "$CACHE/kernel"
kver=$(ls "$CACHE/kernel/lib/modules")

# A plain vmlinux boots faster than the bzImage: find the compressed payload and unpack it.
python3 - "$CACHE/kernel/boot/vmlinuz-$kver" "$OUT/vmlinux.new" <<'PY'
import lzma, subprocess, sys
data = open(sys.argv[1], "rb").read()
for magic, how in ((b"\xfd7zXZ\x00", "xz"), (b"\x28\xb5\x2f\xfd", "zstd"), (b"\x1f\x8b\x08\x00", "gzip")):
    at = data.find(magic)
    while at >= 0:
        try:
            if how == "xz":
                out = lzma.LZMADecompressor().decompress(data[at:])
            else:
                out = subprocess.run([how, "-dc"], input=data[at:], capture_output=True).stdout
            if out[:4] == b"\x7fELF":
                open(sys.argv[2], "wb").write(out)
                sys.exit(0)
        except Exception:
            pass
        at = data.find(magic, at + 1)
sys.exit("qemu-image: no kernel payload found in " + sys.argv[1])
PY
mv "$OUT/vmlinux.new" "$OUT/vmlinux"

R=$OUT/root
mkdir -p "$R/usr/bin" "$R/usr/sbin" "$R/usr/lib" "$R/usr/lib64" "$R/etc" "$R/proc" "$R/sys" "$R/dev" \
    "$R/run" "$R/tmp" "$R/var/lib/softhsm/tokens" "$R/var/aos/iam" "$R/var/log" "$R/root"
for l in bin sbin lib lib64; do ln -s usr/$l "$R/$l"; done

# Busybox and its applets.
cp /usr/bin/busybox "$R/usr/bin/busybox"
for a in $(/usr/bin/busybox --list); do
    [ -e "$R/usr/bin/$a" ] || ln -s busybox "$R/usr/bin/$a"
done

# aos-iam as the Yocto layer installs it: /usr/bin/aos-iam and one link per applet.
cp "$BIN" "$R/usr/bin/aos-iam"
for a in iamd iam-provision iam-certctl iam-nodelink; do ln -sf aos-iam "$R/usr/bin/$a"; done

# Dynamic tools and SoftHSM, with the libraries ldd finds, at the same paths.
copy_with_libs() {
    dest="$R$(dirname "$1")"
    mkdir -p "$dest"
    cp -L "$1" "$dest/"
    ldd "$1" 2>/dev/null | sed -n 's/.*=> \(\/[^ ]*\) .*/\1/p; s/^[[:space:]]*\(\/[^ ]*\) .*/\1/p' | while read -r lib; do
        real=$(readlink -f "$lib")
        for p in "$lib" "$real"; do
            p=$(echo "$p" | sed 's|^/lib|/usr/lib|')
            [ -e "$R$p" ] || { mkdir -p "$R$(dirname "$p")"; cp -L "$real" "$R$p"; }
        done
    done
}
for t in /usr/bin/softhsm2-util /usr/bin/openssl /usr/bin/p11tool /usr/bin/socat; do copy_with_libs "$t"; done
copy_with_libs "$SOFTHSM"
# SoftHSM's tools look for the module at its real path too.
real=$(readlink -f "$SOFTHSM")
mkdir -p "$R$(dirname "$real")"
cp "$real" "$R$real"
mkdir -p "$R/etc/softhsm" "$R/usr/lib/ssl"
printf 'directories.tokendir = /var/lib/softhsm/tokens\nobjectstore.backend = file\nlog.level = ERROR\n' \
    > "$R/etc/softhsm/softhsm2.conf"
cp /usr/lib/ssl/openssl.cnf "$R/usr/lib/ssl/openssl.cnf" 2>/dev/null || cp /etc/ssl/openssl.cnf "$R/usr/lib/ssl/openssl.cnf"

# Kernel modules, with what they depend on, in load order.
K=$CACHE/kernel/lib/modules/$kver
mkdir -p "$R/lib/modules"
: > "$R/etc/modules.order"
add_module() {
    f=$(find "$K" -name "$1.ko" | head -1)
    [ -n "$f" ] || { echo "qemu-image: no module $1 in $kver" >&2; exit 1; }
    grep -qx "$1.ko" "$R/etc/modules.order" && return 0
    # (sh has no local variables: the recursion reuses f, so look the module up again.)
    for dep in $(tr '\0' '\n' < "$f" | sed -n 's/^depends=//p' | tr ',' ' '); do add_module "$dep"; done
    cp "$(find "$K" -name "$1.ko" | head -1)" "$R/lib/modules/"
    echo "$1.ko" >> "$R/etc/modules.order"
}
# (virtio_blk, ext4 and crc32c for the systemd scenario's root disk.)
for m in virtio_pci virtio_console vmw_vsock_virtio_transport qemu_fw_cfg virtio_blk ext4 crc32c_generic; do add_module "$m"; done

# Configuration as the Yocto layer writes it (values filled in at boot, per role).
mkdir -p "$R/etc/aos-iam/config.d" "$R/usr/libexec/aos-iam"
cp meta-aos-iam/recipes-security/aos-iam/files/config.toml "$R/etc/aos-iam/config.toml.in"
cp scripts/links-dropin.sh "$R/usr/libexec/aos-iam/links-dropin.sh"
cp qemu/init "$R/init"
chmod 0755 "$R/init"
echo "root:x:0:0:root:/root:/bin/sh" > "$R/etc/passwd"
echo "root:x:0:" > "$R/etc/group"
printf '127.0.0.1 localhost\n::1 localhost\n' > "$R/etc/hosts"
printf 'hosts: files\n' > "$R/etc/nsswitch.conf"

(cd "$R" && find . | cpio -o -H newc --quiet) > "$OUT/initramfs.cpio.new"
mv "$OUT/initramfs.cpio.new" "$OUT/initramfs.cpio"
rm -rf "$R"
echo "$inputs" > "$OUT/stamp"
echo "qemu-image: kernel $kver, initramfs $(du -h "$OUT/initramfs.cpio" | cut -f1)"
