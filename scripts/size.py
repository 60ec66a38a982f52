#!/usr/bin/env python3
"""`make size`: the stripped size of the static binary against its 3 MiB goal, and what takes
the room, by crate (from the symbol sizes of the unstripped binary, as `nm` reports them).

Usage: scripts/size.py UNSTRIPPED STRIPPED [CEILING]
With CEILING (bytes), exits 1 when the stripped binary is larger: `make test` passes the
Makefile's SIZE_CEILING, the size the binary had when it was last set, so that growth is
seen and chosen. The 3 MiB goal itself is not met yet (docs/ARCHITECTURE.md says where the
room goes)."""

import re
import subprocess
import sys
from collections import Counter

GOAL = 3 * 1024 * 1024


def crate_of(symbol: str) -> str:
    """The crate a demangled symbol belongs to: the first path segment of its name, or of
    the type of a trait impl (`<rustls::x as core::fmt::Debug>::fmt` is rustls)."""
    s = symbol.strip()
    while s.startswith(("<", "&", "*", "(", "dyn ", "mut ", "const ")):
        s = re.sub(r"^(<|&|\*|\(|dyn |mut |const )", "", s)
    m = re.match(r"([A-Za-z_][A-Za-z0-9_]*)::", s)
    if m:
        return m.group(1)
    if s.startswith("ring_core_"):
        return "ring"  # its C and assembly
    return "[libc and other C]"


def main() -> int:
    unstripped, stripped = sys.argv[1], sys.argv[2]
    size = int(subprocess.run(["stat", "-c", "%s", stripped], capture_output=True, text=True, check=True).stdout)
    print(f"stripped static binary: {size} bytes ({size / 1048576:.2f} MiB); goal {GOAL} bytes: "
          f"{'met' if size <= GOAL else f'{size - GOAL} bytes over'}")
    out = subprocess.run(["nm", "--print-size", "--size-sort", "--radix=d", "-C", unstripped],
                         capture_output=True, text=True, check=True).stdout
    by_crate = Counter()
    for line in out.splitlines():
        parts = line.split(None, 3)
        if len(parts) < 4 or parts[2].lower() not in ("t", "w", "r", "d", "b"):
            continue
        by_crate[crate_of(parts[3])] += int(parts[1])
    total = sum(by_crate.values())
    print(f"symbols with a size: {total} bytes, by crate (the largest 20):")
    for crate, n in by_crate.most_common(20):
        print(f"  {crate:<24} {n:>9} bytes  {100 * n / total:5.1f}%")
    if len(sys.argv) > 3:
        ceiling = int(sys.argv[3])
        if size > ceiling:
            print(f"size: {size} bytes is above the ceiling of {ceiling} bytes (SIZE_CEILING in the Makefile): "
                  f"{size - ceiling} bytes more; find what grew, or raise the ceiling knowingly")
            return 1
        print(f"size: within the ceiling of {ceiling} bytes ({ceiling - size} to spare)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
