#!/bin/sh
# `make install DESTDIR=...` puts everything where the recipe and the README say: the binary
# and its applet links, the systemd units, tmpfiles.d and sysusers.d entries, and a config
# that iamd accepts; an existing config is not overwritten.
set -eu
dest=$(mktemp -d)
trap 'rm -rf "$dest"' EXIT
fail() { echo "install test: $*" >&2; exit 1; }
make --no-print-directory -s install DESTDIR="$dest" PREFIX=/usr RELEASE=target/debug/aos-iam STRIP=true \
    NODE_NAME=test-node TOKEN_LABEL=factory >/dev/null

[ -x "$dest/usr/bin/aos-iam" ] || fail "no /usr/bin/aos-iam"
for a in iamd iam-provision iam-certctl iam-nodelink; do
    [ "$(readlink "$dest/usr/bin/$a")" = aos-iam ] || fail "/usr/bin/$a is not a link to aos-iam"
done
"$dest/usr/bin/iamd" --version | grep -q '^iamd ' || fail "the iamd link does not run iamd"
for u in iamd.service iamd-provisioning.service iam-nodelink.service; do
    f="$dest/usr/lib/systemd/system/$u"
    [ -f "$f" ] || fail "no $u"
    [ "$(stat -c %a "$f")" = 644 ] || fail "$u mode"
done
grep -q '^ExecStart=/usr/bin/iamd -c /etc/aos-iam/config.toml$' "$dest/usr/lib/systemd/system/iamd.service" || fail "iamd.service ExecStart"
grep -q '^ExecStart=/usr/bin/iamd -c /etc/aos-iam/config.toml --provisioning$' "$dest/usr/lib/systemd/system/iamd-provisioning.service" \
    || fail "iamd-provisioning.service ExecStart"
grep -q '^ExecStart=/usr/bin/iam-nodelink -c /etc/aos-iam/config.toml$' "$dest/usr/lib/systemd/system/iam-nodelink.service" \
    || fail "iam-nodelink.service ExecStart"
links="$dest/etc/aos-iam/config.d/10-links.toml"
grep -q '^role = "main"$' "$links" && grep -q '^listen = \["unix:/run/aos-iam/link.sock"\]$' "$links" || fail "links drop-in of a main node"
sec=$(mktemp -d)
make --no-print-directory -s install DESTDIR="$sec" PREFIX=/usr RELEASE=target/debug/aos-iam STRIP=true \
    NODE_ROLE=secondary LINK_CONNECT=vsock:2:8089 >/dev/null
grep -q '^role = "secondary"$' "$sec/etc/aos-iam/config.d/10-links.toml" \
    && grep -q '^connect = "vsock:2:8089"$' "$sec/etc/aos-iam/config.d/10-links.toml" \
    && grep -q '^main_crl = "/var/lib/aos-iam-nodelink/main.crl"$' "$sec/etc/aos-iam/config.d/10-links.toml" \
    || { rm -rf "$sec"; fail "links drop-in of a secondary node"; }
if [ -r /etc/machine-id ]; then
    "$sec/usr/bin/iamd" -c "$sec/etc/aos-iam/config.toml" --check-config >/dev/null || { rm -rf "$sec"; fail "iamd refuses a secondary's installed config"; }
fi
rm -rf "$sec"
sh scripts/links-dropin.sh secondary "" "" >/dev/null 2>&1 && fail "a secondary without CONNECT was accepted"
# Tunnels: the endpoints a main node carries, the socket of a secondary without a network;
# iamd takes both drop-ins.
tun=$(mktemp -d)
mkdir "$tun/config.d"
printf '[node]\nid = "n"\n[paths]\nworking_dir = "%s"\n[[modules]]\nid = "iam"\nself_signed = true\nstore = "software"\n' "$tun" > "$tun/config.toml"
links="$tun/config.d/10-links.toml"
for r in main secondary; do
    case $r in
    main) sh scripts/links-dropin.sh main "unix:$tun/link.sock" "" "est.example:443 10.0.0.1:8443" > "$links" ;;
    secondary) sh scripts/links-dropin.sh secondary "" "unix:$tun/link.sock" "$tun/tunnel.sock" > "$links" ;;
    esac
    "$dest/usr/bin/iamd" -c "$tun/config.toml" --check-config >/dev/null || { rm -rf "$tun"; fail "iamd refuses the tunnel drop-in of a $r node"; }
done
grep -q "^tunnel = \"$tun/tunnel.sock\"$" "$links" || { rm -rf "$tun"; fail "tunnel of a secondary"; }
rm -rf "$tun"
grep -q '^d /var/aos/iam 0700 root root -$' "$dest/usr/lib/tmpfiles.d/aos-iam.conf" || fail "tmpfiles entry"
grep -q '^g aos-iam 990$' "$dest/usr/lib/sysusers.d/aos-iam.conf" || fail "sysusers entry"
cfg="$dest/etc/aos-iam/config.toml"
[ -f "$cfg" ] && [ -d "$dest/etc/aos-iam/config.d" ] || fail "no config"
grep -q 'name = "test-node"' "$cfg" && grep -q 'token_label = "factory"' "$cfg" || fail "config values not substituted"
! grep -q '@[A-Z_]*@' "$cfg" || fail "placeholder left in the config"
if [ -r /etc/machine-id ]; then
    "$dest/usr/bin/iamd" -c "$cfg" --check-config >/dev/null || fail "iamd refuses the installed config"
else
    echo "install test: /etc/machine-id missing here; the config check is skipped" >&2
fi
echo '# kept' >> "$cfg"
make --no-print-directory -s install DESTDIR="$dest" PREFIX=/usr RELEASE=target/debug/aos-iam STRIP=true >/dev/null
tail -n 1 "$cfg" | grep -q '^# kept$' || fail "make install overwrote an existing config"
echo "install test: ok"
