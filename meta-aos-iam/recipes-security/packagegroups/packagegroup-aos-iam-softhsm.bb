SUMMARY = "aos-iam with SoftHSM, for development images"
DESCRIPTION = "aos-iam, SoftHSM and its token directory created at first boot, and the \
               tools to look into the token (pkcs11-tool). Production images use their own \
               PKCS#11 module through AOS_IAM_PKCS11_LIBRARY instead."
SECTION = "security"
LICENSE = "MIT"

inherit packagegroup

RDEPENDS:${PN} = "aos-iam opensc softhsm softhsm-dev-token"
