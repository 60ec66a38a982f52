#!/usr/bin/env python3
"""Write the Yocto crates include for aos-iam from Cargo.lock (what oe-core's
`bitbake -c update_crates` would write), or with --check fail if the include is stale."""
import sys
import tomllib

LOCK = "Cargo.lock"
INC = "meta-aos-iam/recipes-security/aos-iam/aos-iam-crates.inc"
REGISTRY = "registry+https://github.com/rust-lang/crates.io-index"


def render():
    with open(LOCK, "rb") as f:
        lock = tomllib.load(f)
    crates = sorted(
        (p["name"], p["version"], p["checksum"])
        for p in lock["package"]
        if p.get("source") == REGISTRY
    )
    urls = [f"crate://crates.io/{n}/{v}" for n, v, _ in crates]
    out = ["# Generated from Cargo.lock by `make crates-inc`: do not edit.", "", "# from Cargo.lock"]
    out.append(f"SRC_URI += \"{urls[0]} \\")
    out += [f"            {u} \\" for u in urls[1:]]
    out += ["            \"", ""]
    out += [f"SRC_URI[{n}-{v}.sha256sum] = \"{c}\"" for n, v, c in crates]
    return "\n".join(out) + "\n"


def main():
    text = render()
    if "--check" in sys.argv:
        try:
            current = open(INC).read()
        except FileNotFoundError:
            current = ""
        if current != text:
            print(f"{INC} does not match {LOCK}: run `make crates-inc`", file=sys.stderr)
            return 1
        print(f"{INC}: matches {LOCK}")
        return 0
    with open(INC, "w") as f:
        f.write(text)
    print(f"wrote {INC}")
    return 0


sys.exit(main())
