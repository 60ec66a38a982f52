#!/usr/bin/env python3
"""Every command the documents show is one the demos or the tests run.

    python3 scripts/check-docs.py

Reads the code blocks of README.md and docs/*.md (fenced or indented). Each line that runs
an applet (`iamd`, `iam-provision`, `iam-certctl`, `iam-nodelink`, or `aos-iam APPLET`) is
checked against the demos, the tests, the QEMU rig and the layer's units: one of their
files must run that applet with the same verb and every option the line gives. A `make`
line must name targets of the Makefile. Exits 1 listing each command nothing runs.
"""
import glob
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
APPLETS = ["iamd", "iam-provision", "iam-certctl", "iam-nodelink"]
VERBS = {
    "iam-provision": "start cert-types create-key apply finish deprovision status run bootstrap "
    "release-quarantine node-info nodes forget-node pause resume register-instance "
    "unregister-instance".split(),
    "iam-certctl": "status list get watch alerts check renew system-info subjects permissions".split(),
    "iam-nodelink": ["status"],
    "iamd": [],
}
CORPUS_GLOBS = [
    "scripts/*.sh",
    "qemu/*.sh",
    "qemu/**/*.sh",
    "qemu/**/*.py",
    "tests/*.rs",
    "tests/**/*.rs",
    "tests/*.sh",
    "benches/*.rs",
    "Makefile",
    "meta-aos-iam/**/*.service",
    "meta-aos-iam/**/*.bb",
    "meta-aos-iam/**/*.conf",
]


def code_lines(text):
    """The lines of a document's code blocks, continuation lines joined."""
    out, fenced, lang = [], False, ""
    for line in text.split("\n"):
        if line.startswith("```"):
            fenced, lang = (not fenced), line[3:].strip()
            continue
        if fenced and lang in ("", "sh", "shell", "console", "bash"):
            out.append(line)
        elif not fenced and line.startswith("    "):
            out.append(line[4:])
    joined, cur = [], ""
    for line in out:
        if line.rstrip().endswith("\\"):
            cur += line.rstrip()[:-1] + " "
            continue
        joined.append(cur + line)
        cur = ""
    return joined


def commands(line):
    """Each applet command in a shell line: (applet, tokens after it)."""
    line = line.split(" #")[0].strip()
    if line.startswith("#") or not line:
        return []
    line = re.sub(r"^\$ ", "", line)
    found = []
    for part in re.split(r"\s*(?:&&|\|\||;|\||&|\$\(|`)\s*", line):
        words = part.split()
        while words and (re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]) or words[0] in ("sudo", "exec", "nohup")):
            words = words[1:]
        if not words:
            continue
        head = os.path.basename(words[0])
        if head == "aos-iam" and len(words) > 1 and words[1] in APPLETS:
            head, words = words[1], words[1:]
        if head in APPLETS:
            found.append((head, words[1:]))
        elif head == "make":
            found.append(("make", words[1:]))
    return found


def corpus():
    files = {}
    for g in CORPUS_GLOBS:
        for f in glob.glob(os.path.join(ROOT, g), recursive=True):
            files[f] = open(f, encoding="utf-8", errors="replace").read()
    return files


def runs(applet, args, files):
    verb = next((a for a in args if a in VERBS[applet]), None)
    options = [re.split(r"=", a)[0] for a in args if re.match(r"^--?[a-zA-Z]", a)]
    for text in files.values():
        if applet not in text:
            continue
        if verb and not re.search(r"(?<![\w-])" + re.escape(verb) + r"(?![\w-])", text):
            continue
        if all(re.search(re.escape(o) + r"(?![\w-])", text) for o in options):
            return True
    return False


def main():
    files = corpus()
    targets = set(re.findall(r"^([a-z][a-z0-9-]*):", open(os.path.join(ROOT, "Makefile")).read(), re.M))
    docs = [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
    bad, seen = [], 0
    for doc in docs:
        for line in code_lines(open(doc, encoding="utf-8").read()):
            for applet, args in commands(line):
                seen += 1
                if applet == "make":
                    wanted = [a for a in args if not a.startswith("-") and "=" not in a]
                    if any(t not in targets for t in wanted):
                        bad.append(f"{os.path.relpath(doc, ROOT)}: {line.strip()}: no such make target")
                elif not runs(applet, args, files):
                    bad.append(f"{os.path.relpath(doc, ROOT)}: {line.strip()}")
    for b in bad:
        print("not run by a demo or a test: " + b)
    if bad:
        return 1
    print(f"docs: {seen} commands in {len(docs)} documents, each run by a demo or a test")
    return 0


if __name__ == "__main__":
    sys.exit(main())
