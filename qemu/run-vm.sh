#!/bin/sh
# Boot one VM of the test image with its console on this terminal (Ctrl-A X quits), to look
# around: iamd is not started; /etc/aos-iam holds the node's configuration.
# Usage: qemu/run-vm.sh [NAME [ROLE [KERNEL-ARGS...]]]   e.g. qemu/run-vm.sh main main
#   then, in the VM: iamd --provisioning -v &   iam-provision status
set -eu
cd "$(dirname "$0")/.."
name=${1:-main}; role=${2:-main}
[ $# -lt 2 ] || shift 2
case "${QEMU_ACCEL:-tcg}" in kvm) accel="-accel kvm -cpu max" ;; *) accel="-accel tcg -cpu max" ;; esac
[ -f target/qemu/vmlinux ] || { echo "run-vm: no image (make qemu-image)" >&2; exit 1; }
# shellcheck disable=SC2086
exec qemu-system-x86_64 $accel -M q35 -m 256 -smp 1 -nodefaults -no-user-config -display none \
    -serial mon:stdio -no-reboot -kernel target/qemu/vmlinux -initrd target/qemu/initramfs.cpio \
    -append "console=ttyS0 quiet panic=-1 iam.node=$name iam.role=$role $*"
