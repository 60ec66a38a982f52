#!/bin/sh
# Build the Xen scenario's image on top of the QEMU test image (qemu/build-image.sh):
#   target/qemu/xen/xen        Debian's Xen 4.17 hypervisor (a multiboot image QEMU's -kernel loads)
#   target/qemu/xen/vmlinuz    Debian's kernel as a bzImage (a PV dom0 and PV domU boot it)
#   target/qemu/xen/dom0.cpio  the test image's initramfs, then the Xen layer below
# The Xen layer (one cpio, appended: the kernel unpacks concatenated archives in order) holds
# Xen's tools from xen-utils-4.17 and xenstore-utils with their libraries (downloaded with
# apt-get download and unpacked, never installed here), the Xen kernel modules, /init's Xen
# part, and, for dom0 to start its guests, the kernel and the domU image (the same
# initramfs and Xen layer) under /xen.
# Usage: qemu/build-xen-image.sh      (after qemu/build-image.sh)
set -eu
cd "$(dirname "$0")/.."
IMG=target/qemu
OUT=$IMG/xen
CACHE=$IMG/cache/xen
[ -f "$IMG/initramfs.cpio" ] || { echo "xen-image: no test image (qemu/build-image.sh)" >&2; exit 1; }
kdeb=$(ls "$IMG"/cache/linux-image-*.deb 2>/dev/null | head -1 || true)
[ -n "$kdeb" ] || { echo "xen-image: no kernel package in $IMG/cache (qemu/build-image.sh)" >&2; exit 1; }
mkdir -p "$CACHE"

# Debian's Xen packages, downloaded once.
PKGS="xen-hypervisor-4.17-amd64 xen-utils-4.17 xen-utils-common xenstore-utils libxenmisc4.17 libxenstore4
libxentoollog1 libxenevtchn1 libxengnttab1 libxencall1 libxenforeignmemory1 libxendevicemodel1 libxentoolcore1
libxenhypfs1 libyajl2"
for p in $PKGS; do
    ls "$CACHE/${p}_"*.deb >/dev/null 2>&1 && continue
    (cd "$CACHE" && apt-get download "$p" >/dev/null 2>&1) || { echo "xen-image: apt-get download $p failed" >&2; exit 1; }
done

inputs=$( (sha256sum "$IMG/initramfs.cpio" "$kdeb" "$CACHE"/*.deb qemu/build-xen-image.sh qemu/xen-block) | sha256sum | cut -d' ' -f1)
if [ -f "$OUT/stamp" ] && [ "$(cat "$OUT/stamp")" = "$inputs" ] && [ -f "$OUT/dom0.cpio" ]; then
    echo "xen-image: up to date ($OUT)"
    exit 0
fi
echo "xen-image: building in $OUT"
rm -rf "$CACHE/x" "$OUT"
mkdir -p "$CACHE/x" "$OUT"
for d in "$CACHE"/*.deb; do dpkg-deb -x "$d" "$CACHE/x"; done
X=$CACHE/x
gunzip -c "$X"/boot/xen-4.17-amd64.gz > "$OUT/xen"
kver=$(ls "$IMG/cache/kernel/lib/modules")
cp "$IMG/cache/kernel/boot/vmlinuz-$kver" "$OUT/vmlinuz"

# The Xen layer.
R=$OUT/layer
mkdir -p "$R/usr/bin" "$R/usr/sbin" "$R/usr/lib/x86_64-linux-gnu" "$R/usr/lib/modules" "$R/etc/xen/scripts" \
    "$R/var/lib/xen" "$R/var/log/xen/console" "$R/var/run/xen" "$R/var/run/xenstored" "$R/proc/xen"
XBIN=/usr/lib/xen-4.17/bin
mkdir -p "$R$XBIN"
for b in xl xenstored xenconsoled xen-init-dom0 vchan-socket-proxy; do
    cp "$X$XBIN/$b" "$R$XBIN/"
    ln -sf "$XBIN/$b" "$R/usr/sbin/$b"
done
cp "$X/usr/bin/xenstore" "$R/usr/bin/"
for l in xenstore-read xenstore-write xenstore-ls xenstore-list xenstore-rm xenstore-exists xenstore-chmod xenstore-watch; do
    ln -sf xenstore "$R/usr/bin/$l"
done
cp -a "$X"/usr/lib/x86_64-linux-gnu/libxen*.so* "$X"/usr/lib/x86_64-linux-gnu/libxl*.so* "$X"/usr/lib/x86_64-linux-gnu/libyajl.so* "$R/usr/lib/x86_64-linux-gnu/"
cpio -t < "$IMG/initramfs.cpio" 2>/dev/null > "$OUT/listing"
# What the Xen tools link with beyond the test image: found by ldd against the unpacked
# libraries, taken from this machine where the image does not have them. glibc loads
# libgcc_s for pthread_cancel though ldd does not list it.
for b in "$R$XBIN"/* "$R/usr/bin/xenstore"; do
    LD_LIBRARY_PATH="$X/usr/lib/x86_64-linux-gnu" ldd "$b" | sed -n 's/.*=> \(\/[^ ]*\) .*/\1/p'
done | sort -u | while read -r lib; do
    case "$lib" in "$X"/*) continue ;; esac
    p=$(echo "$lib" | sed 's|^/lib|/usr/lib|')
    grep -qx ".$p" "$OUT/listing" && continue
    mkdir -p "$R$(dirname "$p")"
    cp -L "$lib" "$R$p"
done
cp -L /usr/lib/x86_64-linux-gnu/libgcc_s.so.1 "$R/usr/lib/x86_64-linux-gnu/"
# (The static-pie aos-iam loads SoftHSM through the loader at this path too.)
cp -L /lib64/ld-linux-x86-64.so.2 "$R/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
: > "$R/etc/xen/xl.conf"
cp qemu/xen-block "$R/etc/xen/scripts/xen-block"
chmod 0755 "$R/etc/xen/scripts/xen-block"

K=$IMG/cache/kernel/lib/modules/$kver
: > "$R/etc/modules.xen"
for m in xen-evtchn xen-gntdev xen-gntalloc xen-privcmd xenfs loop xen-blkback xen-blkfront; do
    f=$(find "$K" -name "$m.ko" | head -1)
    [ -n "$f" ] || { echo "xen-image: no module $m in $kver" >&2; exit 1; }
    cp "$f" "$R/usr/lib/modules/"
    echo "$m.ko" >> "$R/etc/modules.xen"
done
(cd "$R" && find . | cpio -o -H newc --quiet) > "$OUT/layer.cpio"

# The domU image, and dom0's: the test image, the Xen layer, and (dom0) the guests'.
cat "$IMG/initramfs.cpio" "$OUT/layer.cpio" > "$OUT/domU.cpio"
G=$OUT/guest
mkdir -p "$G/xen"
cp "$OUT/vmlinuz" "$OUT/domU.cpio" "$G/xen/"
(cd "$G" && find . | cpio -o -H newc --quiet) > "$OUT/guest.cpio"
cat "$IMG/initramfs.cpio" "$OUT/layer.cpio" "$OUT/guest.cpio" > "$OUT/dom0.cpio"
rm -rf "$R" "$G" "$OUT/listing" "$OUT/guest.cpio" "$OUT/domU.cpio" "$X"
echo "$inputs" > "$OUT/stamp"
echo "xen-image: Xen 4.17 (Debian), dom0.cpio $(du -h "$OUT/dom0.cpio" | cut -f1)"
