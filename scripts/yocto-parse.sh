#!/usr/bin/env bash
# `bitbake -p` (and, with PLAN=1, `bitbake -n aos-iam`) with meta-aos-iam against an
# oe-core checkout. For maintainers: CI cannot fetch oe-core, so this is a check by hand.
#
#   scripts/yocto-parse.sh OE_CORE_DIR
#   META_OE_DIR   meta-openembedded/meta-oe (the layer depends on it for softhsm); required
#   BITBAKE_DIR   bitbake (default: OE_CORE_DIR/bitbake)
#   BUILD_DIR     the build directory, kept for a later run (default: ./build-yocto-parse)
#
# bitbake needs bash for oe-init-build-env, a user that is not root, a UTF-8 locale
# (en_US.UTF-8: Debian's `locales` with it generated) and the host tools chrpath, diffstat
# and gawk. There is no network: BB_NO_NETWORK is set, so nothing is fetched (uninative is
# then disabled, with a warning from oe-core).
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 OE_CORE_DIR" >&2; exit 2; }
oe=$(cd "$1" && pwd)
layer=$(cd "$(dirname "$0")/../meta-aos-iam" && pwd)
: "${META_OE_DIR:?set META_OE_DIR to meta-openembedded/meta-oe}"
meta_oe=$(cd "$META_OE_DIR" && pwd)
bitbake_dir=$(cd "${BITBAKE_DIR:-$oe/bitbake}" && pwd)
build=${BUILD_DIR:-$PWD/build-yocto-parse}
mkdir -p "$build"
build=$(cd "$build" && pwd)

if [ "$(id -u)" -eq 0 ]; then
    echo "yocto-parse: bitbake refuses to run as root; run this as an unprivileged user that owns $build" >&2
    exit 1
fi
if ! locale -a 2>/dev/null | grep -qi '^en_US\.utf-\?8$'; then
    echo "yocto-parse: bitbake needs the en_US.UTF-8 locale (Debian: apt install locales; enable en_US.UTF-8 in /etc/locale.gen; locale-gen)" >&2
    exit 1
fi
for tool in chrpath diffstat gawk; do
    command -v "$tool" >/dev/null || { echo "yocto-parse: bitbake needs $tool on the host" >&2; exit 1; }
done
export LANG=en_US.UTF-8 LC_ALL=en_US.UTF-8

export BITBAKEDIR="$bitbake_dir"
cd "$oe"
# oe-init-build-env reads variables it may not find set.
set +u
# shellcheck disable=SC1091
source ./oe-init-build-env "$build" >/dev/null
set -u
if ! grep -q '^# meta-aos-iam yocto-parse' conf/local.conf; then
    cat >> conf/local.conf <<'CONF'
# meta-aos-iam yocto-parse
BB_NO_NETWORK = "1"
DISTRO_FEATURES:append = " systemd usrmerge"
INIT_MANAGER = "systemd"
CONF
fi
for l in "$meta_oe" "$layer"; do
    grep -q "$l" conf/bblayers.conf || bitbake-layers add-layer "$l" >/dev/null
done
bitbake -p 2>&1 | tee "$build/parse.log"
if [ "${PLAN:-0}" = 1 ]; then
    bitbake -n aos-iam 2>&1 | tee "$build/plan.log"
fi
if grep -q 'meta-aos-iam' "$build/parse.log" && grep -Eq '^(WARNING|ERROR):.*meta-aos-iam' "$build/parse.log"; then
    echo "yocto-parse: the layer has warnings or errors (above)" >&2
    exit 1
fi
echo "yocto-parse: ok (build directory $build)"
