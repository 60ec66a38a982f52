# aos-iam: build, static, test, demo, bench, install.
# `make demo` and `make test` install what they need (Debian packages, crates) themselves.

CARGO   ?= cargo
PREFIX  ?= /usr
BINDIR  ?= $(PREFIX)/bin
DESTDIR ?=
STRIP   ?= strip
TARGET  ?= x86_64-unknown-linux-gnu
APPLETS := iamd iam-provision iam-certctl iam-nodelink
RELEASE := target/release/aos-iam
STATIC  := target/$(TARGET)/release/aos-iam

.PHONY: all build static test check demo bench install clean

all: build

build:
	$(CARGO) build --release --locked

# A static-pie binary that still dlopens PKCS#11 modules (needs the same glibc at run time).
static:
	RUSTFLAGS='-C target-feature=+crt-static' $(CARGO) build --release --locked --target $(TARGET)

# Formatting and lints, then every test: unit tests, the real binary against SoftHSM,
# openssl, p11tool, pkcs11-tool and the openssl pkcs11 engine, and the demo itself.
test:
	sh scripts/deps.sh test
	mkdir -p target
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings
	{ $(CARGO) test --locked; echo $$? > target/test.rc; } 2>&1 | tee target/test.log
	@[ "$$(cat target/test.rc)" = 0 ] || { echo "tests failed"; exit 1; }
	$(CARGO) build --locked
	AOS_IAM_BIN=target/debug/aos-iam sh scripts/demo.sh > target/demo-check.log 2>&1 \
		|| { cat target/demo-check.log; exit 1; }
	@echo "demo: ok (log in target/demo-check.log)"
	@awk '/^test result:/ { p += $$4; f += $$6 } END { printf "tests: %d passed, %d failed\n", p, f }' target/test.log

demo:
	sh scripts/deps.sh demo
	$(CARGO) build --release --locked
	AOS_IAM_BIN=$(RELEASE) sh scripts/demo.sh

# Figures, not pass/fail: provisioning time against a baseline in the same run, the
# stripped static binary's size, iamd's idle RSS.
bench: build static
	sh scripts/deps.sh demo
	$(STRIP) -o target/aos-iam.static.stripped $(STATIC)
	AOS_IAM_BIN=$(RELEASE) AOS_IAM_STATIC_STRIPPED=target/aos-iam.static.stripped \
		$(CARGO) bench --locked --bench provision

# Installs the binary and one symlink per applet. Set STRIP=true to keep symbols (Yocto
# strips packages itself and refuses binaries stripped beforehand).
install:
	install -d $(DESTDIR)$(BINDIR)
	install -m 0755 $(RELEASE) $(DESTDIR)$(BINDIR)/aos-iam
	$(STRIP) $(DESTDIR)$(BINDIR)/aos-iam
	for a in $(APPLETS); do ln -sf aos-iam $(DESTDIR)$(BINDIR)/$$a; done

clean:
	$(CARGO) clean
