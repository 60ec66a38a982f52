#!/bin/sh
# Check the layer's systemd units: `systemd-analyze verify` (which can exit 0 on parse
# errors, so its stderr decides) with ExecStart pointing at the built binary, and the
# offline security exposure of each unit (target at most 2.0).
# Usage: scripts/check-units.sh BINARY
set -eu
BIN=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
FILES=meta-aos-iam/recipes-security/aos-iam/files
if ! command -v systemd-analyze >/dev/null 2>&1; then
    echo "check-units: systemd-analyze is not installed; units not checked" >&2
    exit 1
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
ln -s "$BIN" "$tmp/iamd"
ln -s "$BIN" "$tmp/iam-nodelink"
status=0
# verify LABEL DIR UNIT: systemd-analyze verify of UNIT as found in DIR (drop-ins included).
verify() {
    err=$(cd "$2" && SYSTEMD_UNIT_PATH="$2:" systemd-analyze verify --man=no "$3" 2>&1 >/dev/null | grep -v "^$" || true)
    if [ -n "$err" ]; then
        echo "$1: systemd-analyze verify:" >&2
        echo "$err" >&2
        status=1
    else
        echo "$1: verify ok"
    fi
}
for unit in "$FILES"/*.service; do
    name=$(basename "$unit")
    sed -e "s|/usr/bin/iamd|$tmp/iamd|" -e "s|/usr/bin/iam-nodelink|$tmp/iam-nodelink|" "$unit" > "$tmp/$name"
    verify "$name" "$tmp" "$name"
done
# The Xen vchan drop-ins (package aos-iam-vchan) on the units they extend: they parse, and
# the units stay within the same exposure with them.
mkdir -p "$tmp/xen"
for pair in iamd:iamd-xen-vchan iam-nodelink:iam-nodelink-xen-vchan; do
    name=${pair%%:*}; dropin=${pair#*:}
    cp "$tmp/$name.service" "$tmp/xen/"
    mkdir -p "$tmp/xen/$name.service.d"
    cp "$FILES/$dropin.conf" "$tmp/xen/$name.service.d/10-xen-vchan.conf"
    verify "$name.service with $dropin.conf" "$tmp/xen" "$name.service"
    e=$(cd "$tmp/xen" && SYSTEMD_UNIT_PATH="$tmp/xen:" systemd-analyze security --offline=yes --no-pager "$name.service" 2>/dev/null \
        | sed -n "s/.*Overall exposure level for $name.service: \([0-9.]*\).*/\1/p")
    echo "$name.service with $dropin.conf: security exposure $e (target <= 2.0)"
    awk -v e="$e" 'BEGIN { exit !(e != "" && e <= 2.0) }' || { echo "$name.service with $dropin.conf: exposure above 2.0" >&2; status=1; }
done
# Every unit at most 2.0 (systemd's offline estimate; the units run as root but iam-nodelink).
for name in iamd iamd-provisioning iam-nodelink; do
    e=$(systemd-analyze security --offline=yes --no-pager "$tmp/$name.service" 2>/dev/null \
        | sed -n "s/.*Overall exposure level for $name.service: \([0-9.]*\).*/\1/p")
    echo "$name.service: security exposure $e (target <= 2.0)"
    awk -v e="$e" 'BEGIN { exit !(e != "" && e <= 2.0) }' || { echo "$name.service: exposure above 2.0" >&2; status=1; }
done
exit $status
