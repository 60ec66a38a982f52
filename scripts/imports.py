#!/usr/bin/env python3
"""The library's import graph, read from its `crate::`, `super::` and `self::` paths.

    python3 scripts/imports.py            # check: no circle, no arrow that climbs
    python3 scripts/imports.py --report   # the layers, the arrows between them, the largest files

Each file of src/ is a module (src/pki/scep.rs is pki::scep, src/pki/mod.rs is pki). A path
names the longest module it starts with; a file's own unit tests (from `#[cfg(test)]` to the
end) are left out, as they are not part of the build. The layers and which may import which
are docs/ARCHITECTURE.md's "Layers"; LAYERS below is that table, lowest first: a layer
imports only from the layers below it and from itself. The check exits 1 naming every
circle between files and every arrow that climbs.
"""
import os
import re
import sys

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")

# Lowest first: (name, module prefixes). A module is in the layer one of whose prefixes it
# starts with. Layers of the same rank (BESIDE) stand beside each other: neither imports
# the other.
LAYERS = [
    ("base", ["error", "secret", "log", "codec"]),
    ("sys", ["sys"]),
    ("proto", ["proto"]),
    ("config", ["config"]),
    ("store", ["store"]),
    ("pki", ["pki"]),
    ("link", ["link"]),
    ("daemon", ["daemon"]),
    ("flows", ["flows"]),
]
BESIDE = {"daemon": "top", "flows": "top"}


def modules():
    found = {}
    for root, _, files in os.walk(SRC):
        for name in files:
            if not name.endswith(".rs"):
                continue
            path = os.path.join(root, name)
            rel = os.path.relpath(path, SRC)[:-3].split(os.sep)
            if rel[-1] in ("mod", "lib"):
                rel = rel[:-1]
            found["::".join(rel)] = path
    return found


def code_of(path):
    text = open(path, encoding="utf-8").read()
    cut = re.search(r"^#\[cfg\(test\)\]\s*\n\s*mod \w+", text, re.M)
    if cut:
        text = text[: cut.start()]
    text = re.sub(r"//[^\n]*", "", text)
    return text


def expand(prefix, body):
    """`a::{b, c::{d, e}}` as a list of paths."""
    out = []
    depth = 0
    part = ""
    for ch in body + ",":
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if ch == "," and depth == 0:
            part = part.strip()
            if part:
                m = re.match(r"^([\w:]*?)(::)?\{(.*)\}$", part, re.S)
                if m:
                    inner_prefix = prefix + ([m.group(1)] if m.group(1) else [])
                    out += expand(inner_prefix, m.group(3))
                else:
                    out.append(prefix + [part.split(" as ")[0].strip()])
            part = ""
        else:
            part += ch
    return ["::".join(p) for p in out]


def paths_in(text):
    found = []
    for m in re.finditer(r"\buse\s+((?:crate|super|self)(?:::[\w:]*)?(?:\{[^;]*\})?)\s*;", text):
        stmt = re.sub(r"\s+", " ", m.group(1))
        if "{" in stmt:
            head, _, rest = stmt.partition("{")
            found += expand([head.rstrip(":")], rest[: rest.rfind("}")])
        else:
            found.append(stmt)
    for m in re.finditer(r"(?<![\w:])((?:crate|super)(?:::\w+)+)", text):
        found.append(m.group(1))
    return found


def resolve(module, path, known):
    parts = path.split("::")
    is_dir = os.path.basename(known[module]) in ("mod.rs", "lib.rs")
    base = module.split("::") if module else []
    if parts[0] == "crate":
        target = parts[1:]
    else:
        here = base if is_dir else base[:-1]
        while parts and parts[0] in ("super", "self"):
            if parts[0] == "super":
                here = here[:-1]
            parts = parts[1:]
        target = here + parts
    for n in range(len(target), 0, -1):
        name = "::".join(target[:n])
        if name in known:
            return name
    return None


def graph():
    known = modules()
    edges = {m: set() for m in known}
    for module, path in known.items():
        for p in paths_in(code_of(path)):
            target = resolve(module, p, known)
            if target and target != module and target != "":
                # A module's own submodules (`mod x; pub use x::…`) are part of it.
                if target.startswith(module + "::") or module == "":
                    continue
                edges[module].add(target)
    return known, edges


def layer_of(module):
    ranks = {}
    for name, _ in LAYERS:
        key = BESIDE.get(name, name)
        ranks.setdefault(key, len(ranks))
    for name, prefixes in LAYERS:
        for p in prefixes:
            if module == p or module.startswith(p + "::"):
                return ranks[BESIDE.get(name, name)], name
    return len(ranks), "?"


def circles(edges):
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def main():
    known, edges = graph()
    found = circles(edges)
    climbs = []
    for a in sorted(edges):
        la, na = layer_of(a)
        for b in sorted(edges[a]):
            lb, nb = layer_of(b)
            if lb > la or (lb == la and nb != na):
                climbs.append(f"{a} ({na}) imports {b} ({nb})")
    if "--report" in sys.argv:
        print("layers, lowest first:", " < ".join(n for n, _ in LAYERS), "(beside each other:", ", ".join(BESIDE) + ")")
        arrows = {}
        for a in edges:
            for b in edges[a]:
                la, lb = layer_of(a)[1], layer_of(b)[1]
                if la != lb:
                    arrows.setdefault((la, lb), set()).add(f"{a} -> {b}")
        for (la, lb), why in sorted(arrows.items()):
            print(f"  {la} -> {lb}: {len(why)} imports")
        sizes = sorted(
            ((sum(1 for _ in open(p, encoding="utf-8")), m) for m, p in known.items()),
            reverse=True,
        )
        total = sum(s for s, _ in sizes)
        print(f"files: {len(known)}, lines: {total}")
        for s, m in sizes[:5]:
            print(f"  {s:5} {m} ({100.0 * s / total:.1f} %)")
    for comp in found:
        print(f"circle of {len(comp)} files: " + ", ".join(comp))
    for c in climbs:
        print("climbs: " + c)
    if found or climbs:
        return 1
    print(f"imports: {sum(len(v) for v in edges.values())} between {len(known)} files, no circle, no arrow that climbs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
