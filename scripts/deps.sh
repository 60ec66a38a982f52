#!/bin/sh
# Install the Debian packages the demo and the tests need, if any is missing.
# Usage: scripts/deps.sh demo|test
set -eu
# A Rust toolchain cannot come from Debian's packages (too old) and is not fetched here.
if ! command -v cargo >/dev/null 2>&1; then
    echo "aos-iam needs a Rust toolchain (cargo, rustc) of version 1.90 or later on PATH" >&2
    exit 1
fi
rust=$(rustc --version | sed 's/^rustc \([0-9]*\)\.\([0-9]*\).*/\1 \2/')
set -- "${1:-demo}" $rust
if [ "$2" -lt 1 ] || { [ "$2" -eq 1 ] && [ "$3" -lt 90 ]; }; then
    echo "aos-iam needs Rust 1.90 or later; this is $(rustc --version)" >&2
    exit 1
fi
need="softhsm2-util:softhsm2 pkcs11-tool:opensc openssl:openssl p11tool:gnutls-bin gnutls-cli:gnutls-bin"
# The demo signs with openssl's pkcs11 engine; the tests judge with it.
[ -e /usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so ] || [ -e /usr/lib/x86_64-linux-gnu/engines-3/libpkcs11.so ] \
    || missing_engine=libengine-pkcs11-openssl
if [ "${1:-demo}" = test ]; then
    need="$need setpriv:util-linux socat:socat systemd-analyze:systemd file:file python3:python3 tinyproxy:tinyproxy"
    # Debian's independent SCEP server (micromdm) and ip(8) for its private network (tests/scep.rs).
    need="$need scepserver:scep ip:iproute2"
fi
if [ "${1:-demo}" = test ] || [ "${1:-demo}" = qemu ] || [ "${KEYSTORE:-}" = tpm ]; then
    # A software TPM behind its resource manager, with the tpm2-pkcs11 module (tests/tpm.rs).
    need="$need swtpm:swtpm swtpm_setup:swtpm-tools tpm2_getcap:tpm2-tools tpm2-abrmd:tpm2-abrmd dbus-daemon:dbus"
    [ -e /usr/lib/x86_64-linux-gnu/pkcs11/libtpm2_pkcs11.so ] || pkgs_tpm="libtpm2-pkcs11-1"
    ls /usr/lib/x86_64-linux-gnu/libtss2-tcti-tabrmd.so* >/dev/null 2>&1 || pkgs_tpm="${pkgs_tpm:-} libtss2-tcti-tabrmd0"
    ls /usr/lib/x86_64-linux-gnu/libtss2-tcti-swtpm.so* >/dev/null 2>&1 || pkgs_tpm="${pkgs_tpm:-} libtss2-tcti-swtpm0"
fi
pkgs="${missing_engine:-} ${pkgs_tpm:-}"
if [ "$1" = test ] || [ "$1" = qemu ]; then
    # The QEMU rig (qemu/): the VMs, a static busybox, the tools copied into the image, and
    # the userspace vsock device between sibling VMs (a crate).
    need="$need qemu-system-x86_64:qemu-system-x86 cpio:cpio socat:socat file:file gnutls-cli:gnutls-bin"
    # The systemd scenario: its disk (mke2fs -d), and the host systemd whose libraries name
    # the packages downloaded for the guest.
    need="$need mke2fs:e2fsprogs systemctl:systemd dpkg-deb:dpkg"
    # The tpm scenario: its disk is the systemd one rewritten (debugfs), with this machine's
    # tpm2-pkcs11 and device TCTI; swtpm is the VM's TPM.
    need="$need debugfs:e2fsprogs objdump:binutils"
    ls /usr/lib/x86_64-linux-gnu/libtss2-tcti-device.so* >/dev/null 2>&1 || pkgs="$pkgs libtss2-tcti-device0"
    ldd /usr/bin/busybox 2>&1 | grep -q 'not a dynamic executable' || pkgs="$pkgs busybox-static"
    if ! command -v vhost-device-vsock >/dev/null 2>&1; then
        echo "installing vhost-device-vsock (crates.io)" >&2
        cargo install --locked vhost-device-vsock
    fi
fi
for pair in $need; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || pkgs="$pkgs ${pair#*:}"
done
if [ "$1" = test ] && ! command -v oelint-adv >/dev/null 2>&1; then
    echo "installing oelint-adv (PyPI)" >&2
    pip install -q oelint-adv || python3 -m pip install -q oelint-adv
fi
[ -n "$(echo $pkgs)" ] || exit 0
echo "installing:$pkgs" >&2
sudo=""
[ "$(id -u)" = 0 ] || sudo=sudo
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $pkgs >/dev/null
