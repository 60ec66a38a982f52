#!/bin/sh
# `bitbake -p` with meta-aos-iam against an oe-core checkout: OE_CORE_DIR (with bitbake in
# $OE_CORE_DIR/bitbake or BITBAKE_DIR) and META_OE_DIR (meta-openembedded/meta-oe, which
# the layer depends on for softhsm). For maintainers; CI has no bitbake.
set -eu
oe=$(cd "$1" && pwd)
layer=$(cd "$(dirname "$0")/../meta-aos-iam" && pwd)
: "${META_OE_DIR:?set META_OE_DIR to meta-openembedded/meta-oe}"
bitbake_dir=${BITBAKE_DIR:-$oe/bitbake}
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
export BITBAKEDIR="$bitbake_dir"
cd "$oe"
. ./oe-init-build-env "$build" >/dev/null
bitbake-layers add-layer "$(cd "$META_OE_DIR" && pwd)" "$layer" >/dev/null
echo 'DISTRO_FEATURES:append = " systemd usrmerge"' >> conf/local.conf
echo 'INIT_MANAGER = "systemd"' >> conf/local.conf
bitbake -p
echo "yocto-parse: ok"
