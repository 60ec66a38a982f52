SUMMARY = "First-boot SoftHSM token directory and configuration for development images"
DESCRIPTION = "Creates /var/lib/softhsm/tokens at boot (tmpfiles.d) and a SoftHSM \
               configuration that uses it, so that iamd can initialise its token in \
               provisioning mode."
HOMEPAGE = "https://www.opendnssec.org/softhsm/"
SECTION = "security"
LICENSE = "Apache-2.0"
LIC_FILES_CHKSUM = "file://softhsm2.conf;beginline=1;endline=1;md5=653b254f286b881bdce1d14afdede628"

SRC_URI = "file://softhsm2.conf \
           file://softhsm-dev.tmpfiles \
           "

# Where do_unpack put the files: UNPACKDIR from whinlatter on, WORKDIR before.
SOFTHSM_DEV_FILES = "${@d.getVar('UNPACKDIR') or d.getVar('WORKDIR')}"
S = "${SOFTHSM_DEV_FILES}"

inherit allarch

do_install() {
    install -d ${D}${sysconfdir}/softhsm ${D}${nonarch_libdir}/tmpfiles.d
    install -m 0644 ${SOFTHSM_DEV_FILES}/softhsm2.conf ${D}${sysconfdir}/softhsm/softhsm2.conf
    install -m 0644 ${SOFTHSM_DEV_FILES}/softhsm-dev.tmpfiles ${D}${nonarch_libdir}/tmpfiles.d/softhsm-dev.conf
}

FILES:${PN} += "${nonarch_libdir}/tmpfiles.d"
CONFFILES:${PN} = "${sysconfdir}/softhsm/softhsm2.conf"
RDEPENDS:${PN} = "softhsm"
