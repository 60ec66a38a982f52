#!/bin/sh
# Write the [links] drop-in of a node's configuration, shared by `make install` and the
# Yocto recipe: a main node lists where it accepts links, a secondary where it dials.
# Usage: scripts/links-dropin.sh ROLE "LISTEN..." CONNECT ["TUNNEL..."] > config.d/10-links.toml
#   ROLE     main | secondary
#   LISTEN   main: space-separated unix:PATH, vsock:PORT, vchan:DOMAIN:PATH, tcp:ADDR:PORT
#            (may be empty)
#   CONNECT  secondary: unix:PATH, vsock:CID:PORT, vchan:DOMID:PATH, tcp:HOST:PORT or stdio
#   TUNNEL   main: space-separated host:port its secondaries may reach through their links
#            (links.tunnel_endpoints); secondary: the tunnel socket iam-nodelink serves and
#            iamd reaches its EST/SCEP servers through (links.tunnel); empty: none
set -eu
role=$1; listen=${2:-}; connect=${3:-}; tunnel=${4:-}
echo "# Node links (written at install time for a $role node)."
echo "[node]"
echo "role = \"$role\""
case "$role" in
main)
    [ -z "$connect" ] || { echo "links-dropin: a main node does not dial (got CONNECT $connect)" >&2; exit 1; }
    [ -n "$listen" ] || exit 0
    printf '\n[links]\nlisten = ['
    sep=""
    for a in $listen; do printf '%s"%s"' "$sep" "$a"; sep=", "; done
    printf ']\n'
    if [ -n "$tunnel" ]; then
        printf 'tunnel_endpoints = ['
        sep=""
        for a in $tunnel; do printf '%s"%s"' "$sep" "$a"; sep=", "; done
        printf ']\n'
    fi
    ;;
secondary)
    [ -z "$listen" ] || { echo "links-dropin: a secondary node does not accept links (got LISTEN $listen)" >&2; exit 1; }
    [ -n "$connect" ] || { echo "links-dropin: a secondary node needs CONNECT (the main node's link address)" >&2; exit 1; }
    printf '\n[links]\nconnect = "%s"\n' "$connect"
    # The CRLs the main node hands (iam-nodelink.service's StateDirectory), checked with
    # beside paths.crl once there.
    printf 'main_crl = "/var/lib/aos-iam-nodelink/main.crl"\n'
    [ -z "$tunnel" ] || printf 'tunnel = "%s"\n' "$tunnel"
    ;;
*)
    echo "links-dropin: ROLE must be main or secondary, not \"$role\"" >&2
    exit 1
    ;;
esac
