SUMMARY = "aos-iam identity and access manager for multi-node embedded units"
DESCRIPTION = "Gives every node of a unit its cryptographic identity: keys generated in a \
               PKCS#11 token, CSRs, CA-signed certificates applied after full chain \
               validation, and per-service permission secrets. One binary with the applets \
               iamd, iam-provision, iam-certctl and iam-nodelink."
HOMEPAGE = "https://github.com/aosedge"
SECTION = "security"
LICENSE = "Apache-2.0"
LIC_FILES_CHKSUM = "file://LICENSE;md5=3b83ef96387f14655fc854ddc3c6bd57"

PV .= "+git"

# Where the sources come from: set AOS_IAM_SRC_URI (and SRCREV) in your distro or local.conf.
AOS_IAM_SRC_URI ??= "git://git.example.invalid/aos-iam.git;protocol=https;branch=main"
SRC_URI = "${AOS_IAM_SRC_URI} \
           file://iamd.service \
           file://iamd-provisioning.service \
           file://iam-nodelink.service \
           file://aos-iam-vchan-server@.service \
           file://aos-iam-vchan-client.service \
           file://iamd-xen-vchan.conf \
           file://iam-nodelink-xen-vchan.conf \
           file://aos-iam-xen.modules \
           file://aos-iam.tmpfiles \
           file://aos-iam.sysusers \
           file://config.toml \
           "
SRCREV = "0000000000000000000000000000000000000000"

require aos-iam-crates.inc

inherit cargo cargo-update-recipe-crates systemd

# Configuration written to /etc/aos-iam/config.toml.
AOS_IAM_NODE_TYPE ??= "main"
AOS_IAM_NODE_NAME ??= "${MACHINE}"
AOS_IAM_PKCS11_LIBRARY ??= "${libdir}/softhsm/libsofthsm2.so"
AOS_IAM_TOKEN_LABEL ??= "aos"
# The node id's sources, the first that gives one (space-separated): dmi:product_serial,
# dmi:product_uuid, dmi:board_serial, devicetree (serial-number), cpuinfo (Serial),
# file:PATH, machine-id (a reflash changes it: name it only for a node without a serial).
AOS_IAM_ID_SOURCES ??= "dmi:product_serial devicetree cpuinfo"
# Node links: the main node accepts them on AOS_IAM_LINK_LISTEN (space-separated
# unix:PATH, vsock:PORT, vchan:DOMAIN:PATH, tcp:ADDR:PORT); a secondary node dials
# AOS_IAM_LINK_CONNECT (unix:PATH, vsock:CID:PORT, vchan:DOMID:PATH, tcp:HOST:PORT, or stdio
# under vchan-socket-proxy) and runs iam-nodelink.service.
AOS_IAM_NODE_ROLE ??= "main"
AOS_IAM_LINK_LISTEN ??= "${@'vsock:8089' if d.getVar('AOS_IAM_NODE_ROLE') == 'main' else ''}"
AOS_IAM_LINK_CONNECT ??= ""
# Tunnels (docs/ARCHITECTURE.md 9b): on a main node, the host:port of the EST/SCEP servers its
# secondaries reach through their links; on a secondary without a network, the tunnel socket.
AOS_IAM_LINK_TUNNEL ??= ""
# SoftHSM as the PKCS#11 module (loaded with dlopen, so a run-time dependency only);
# production images drop it and name their own module in AOS_IAM_PKCS11_LIBRARY.
PACKAGECONFIG ??= "softhsm"
PACKAGECONFIG[softhsm] = ",,,softhsm"

# musl: a static binary cannot load PKCS#11 modules, so it is linked dynamically (the
# default for the Rust target); glibc images may also use `make static` outside bitbake.

SYSTEMD_SERVICE:${PN} = "iamd.service iamd-provisioning.service ${@'iam-nodelink.service' if d.getVar('AOS_IAM_NODE_ROLE') == 'secondary' else ''}"
SYSTEMD_AUTO_ENABLE:${PN} = "enable"

# Where do_unpack put the files of SRC_URI: UNPACKDIR from whinlatter on, WORKDIR before
# (scarthgap has no UNPACKDIR). Read here, in this recipe only; never set for the build.
AOS_IAM_FILES = "${@d.getVar('UNPACKDIR') or d.getVar('WORKDIR')}"

do_install() {
    install -d ${D}${bindir}
    install -m 0755 ${B}/target/${CARGO_TARGET_SUBDIR}/aos-iam ${D}${bindir}/aos-iam
    for applet in iamd iam-provision iam-certctl iam-nodelink; do
        ln -sf aos-iam ${D}${bindir}/${applet}
    done

    install -d ${D}${systemd_system_unitdir}
    install -m 0644 ${AOS_IAM_FILES}/iamd.service ${D}${systemd_system_unitdir}/
    install -m 0644 ${AOS_IAM_FILES}/iamd-provisioning.service ${D}${systemd_system_unitdir}/
    install -m 0644 ${AOS_IAM_FILES}/iam-nodelink.service ${D}${systemd_system_unitdir}/
    install -m 0644 ${AOS_IAM_FILES}/aos-iam-vchan-server@.service ${D}${systemd_system_unitdir}/
    install -m 0644 ${AOS_IAM_FILES}/aos-iam-vchan-client.service ${D}${systemd_system_unitdir}/
    install -d ${D}${systemd_system_unitdir}/iamd.service.d ${D}${systemd_system_unitdir}/iam-nodelink.service.d \
        ${D}${sysconfdir}/modules-load.d
    install -m 0644 ${AOS_IAM_FILES}/iamd-xen-vchan.conf ${D}${systemd_system_unitdir}/iamd.service.d/10-xen-vchan.conf
    install -m 0644 ${AOS_IAM_FILES}/iam-nodelink-xen-vchan.conf \
        ${D}${systemd_system_unitdir}/iam-nodelink.service.d/10-xen-vchan.conf
    install -m 0644 ${AOS_IAM_FILES}/aos-iam-xen.modules ${D}${sysconfdir}/modules-load.d/aos-iam-xen.conf
    sed -i -e 's|/usr/bin/|${bindir}/|' ${D}${systemd_system_unitdir}/*.service

    install -d ${D}${nonarch_libdir}/tmpfiles.d ${D}${nonarch_libdir}/sysusers.d
    install -m 0644 ${AOS_IAM_FILES}/aos-iam.tmpfiles ${D}${nonarch_libdir}/tmpfiles.d/aos-iam.conf
    install -m 0644 ${AOS_IAM_FILES}/aos-iam.sysusers ${D}${nonarch_libdir}/sysusers.d/aos-iam.conf

    install -d ${D}${sysconfdir}/aos-iam/config.d
    # AOS_IAM_ID_SOURCES as a TOML array of strings.
    id_sources=$(for s in ${AOS_IAM_ID_SOURCES}; do printf '"%s", ' "$s"; done)
    sed -e 's|@NODE_TYPE@|${AOS_IAM_NODE_TYPE}|' \
        -e 's|@NODE_NAME@|${AOS_IAM_NODE_NAME}|' \
        -e 's|@PKCS11_LIBRARY@|${AOS_IAM_PKCS11_LIBRARY}|' \
        -e 's|@TOKEN_LABEL@|${AOS_IAM_TOKEN_LABEL}|' \
        -e "s|@NODE_ID_SOURCE@|[${id_sources%, }]|" \
        ${AOS_IAM_FILES}/config.toml > ${D}${sysconfdir}/aos-iam/config.toml
    chmod 0644 ${D}${sysconfdir}/aos-iam/config.toml
    sh ${S}/scripts/links-dropin.sh "${AOS_IAM_NODE_ROLE}" "${AOS_IAM_LINK_LISTEN}" "${AOS_IAM_LINK_CONNECT}" "${AOS_IAM_LINK_TUNNEL}" \
        > ${D}${sysconfdir}/aos-iam/config.d/10-links.toml
    chmod 0644 ${D}${sysconfdir}/aos-iam/config.d/10-links.toml
    # Main node: a link listener per vchan domain, admitting that domain's node only: iamd's
    # own vchan served to the domain by name, or the unix socket its proxy unit joins.
    if [ "${AOS_IAM_NODE_ROLE}" = main ] && [ -n "${AOS_IAM_LINK_VCHAN}" ]; then
        for pair in ${AOS_IAM_LINK_VCHAN}; do
            domain=${pair%%:*}
            case "${AOS_IAM_LINK_VCHAN_TRANSPORT}" in
            native) address="vchan:$domain:data/aos-iam/$domain" ;;
            proxy) address="unix:/run/aos-iam/link-$domain.sock" ;;
            *) bbfatal "AOS_IAM_LINK_VCHAN_TRANSPORT is native or proxy, not ${AOS_IAM_LINK_VCHAN_TRANSPORT}" ;;
            esac
            printf '\n[[links.listener]]\naddress = "%s"\nnodes = ["%s"]\n' "$address" "${pair#*:}"
        done > ${D}${sysconfdir}/aos-iam/config.d/20-vchan.toml
        chmod 0644 ${D}${sysconfdir}/aos-iam/config.d/20-vchan.toml
    fi
}

PACKAGES =+ "${PN}-vchan"

# iam-nodelink.service is shipped on every node (a main node may become a secondary by a
# drop-in) and enabled only where SYSTEMD_SERVICE lists it, on secondaries.

FILES:${PN} += "${nonarch_libdir}/tmpfiles.d ${nonarch_libdir}/sysusers.d ${sysconfdir}/aos-iam \
                ${systemd_system_unitdir}/iam-nodelink.service"
CONFFILES:${PN} = "${sysconfdir}/aos-iam/config.toml ${sysconfdir}/aos-iam/config.d/10-links.toml"

# A unit of Xen domains linked by vchan. On the main node AOS_IAM_LINK_VCHAN lists
# "DOMAIN:NODE_ID" pairs (DOMAIN: the domain's name), each a [[links.listener]]
# (config.d/20-vchan.toml) that admits NODE_ID alone.
# - native (the default): iamd serves the vchan itself at data/aos-iam/DOMAIN; the secondary
#   dials it with AOS_IAM_LINK_CONNECT = "vchan:0:data/aos-iam/DOMAIN". aos-iam-vchan gives
#   iamd and iam-nodelink the Xen devices (drop-ins) and loads their modules.
# - proxy: Xen's vchan-socket-proxy (meta-virtualization's xen-tools) at both ends, from the
#   units of aos-iam-vchan: aos-iam-vchan-server@DOMAIN.service on the main node onto
#   unix:/run/aos-iam/link-DOMAIN.sock, aos-iam-vchan-client.service on the secondary (with
#   AOS_IAM_LINK_CONNECT = "unix:/run/aos-iam-vchan/link.sock").
AOS_IAM_LINK_VCHAN ??= ""
AOS_IAM_LINK_VCHAN_TRANSPORT ??= "native"
SYSTEMD_PACKAGES += "${PN}-vchan"
SYSTEMD_SERVICE:${PN}-vchan = "${@('aos-iam-vchan-client.service' if d.getVar('AOS_IAM_LINK_VCHAN_TRANSPORT') == 'proxy' else '') if d.getVar('AOS_IAM_NODE_ROLE') == 'secondary' else ' '.join('aos-iam-vchan-server@%s.service' % p.split(':')[0] for p in (d.getVar('AOS_IAM_LINK_VCHAN') or '').split() if d.getVar('AOS_IAM_LINK_VCHAN_TRANSPORT') == 'proxy')}"
SYSTEMD_AUTO_ENABLE:${PN}-vchan = "enable"
FILES:${PN}-vchan += "${systemd_system_unitdir}/aos-iam-vchan-server@.service ${systemd_system_unitdir}/aos-iam-vchan-client.service \
                      ${systemd_system_unitdir}/iamd.service.d ${systemd_system_unitdir}/iam-nodelink.service.d \
                      ${sysconfdir}/modules-load.d"
RDEPENDS:${PN}-vchan += "${PN}"
