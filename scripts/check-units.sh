#!/bin/sh
# Check the layer's systemd units: `systemd-analyze verify` (which can exit 0 on parse
# errors, so its stderr decides) with ExecStart pointing at the built binary, and the
# offline security exposure of iamd.service (target at most 2.5).
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
for unit in "$FILES"/*.service; do
    name=$(basename "$unit")
    sed -e "s|/usr/bin/iamd|$tmp/iamd|" -e "s|/usr/bin/iam-nodelink|$tmp/iam-nodelink|" "$unit" > "$tmp/$name"
    err=$(systemd-analyze verify --man=no "$tmp/$name" 2>&1 >/dev/null | grep -v "^$" || true)
    if [ -n "$err" ]; then
        echo "$name: systemd-analyze verify:" >&2
        echo "$err" >&2
        status=1
    else
        echo "$name: verify ok"
    fi
done
exposure=$(systemd-analyze security --offline=yes --no-pager "$tmp/iamd.service" 2>/dev/null \
    | sed -n 's/.*Overall exposure level for iamd.service: \([0-9.]*\).*/\1/p')
echo "iamd.service: security exposure $exposure (target <= 2.5)"
nl=$(systemd-analyze security --offline=yes --no-pager "$tmp/iam-nodelink.service" 2>/dev/null \
    | sed -n 's/.*Overall exposure level for iam-nodelink.service: \([0-9.]*\).*/\1/p')
echo "iam-nodelink.service: security exposure $nl"
awk -v e="$exposure" 'BEGIN { exit !(e != "" && e <= 2.5) }' || { echo "iamd.service: exposure above 2.5" >&2; status=1; }
exit $status
