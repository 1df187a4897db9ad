#!/usr/bin/env python3
"""Fails when a userspace file includes a header of a stage it does not build on.

userspace/stages.txt is the one table of stages; CMake links by it too, but an include directory
added by hand would let an upward include compile: this reads the sources instead. A header
belongs to the stage whose folder holds it; an include resolves by its path under a stage's
include/, src/ or the folder itself ("closetrace/model.h", "host.h"). Includes no stage owns
(the standard library, third-party, bpf/) are not checked.

Usage: check_stages.py [USERSPACE_DIR]
"""
import re
import sys
from pathlib import Path

INCLUDE = re.compile(r'^\s*#\s*include\s*"([^"]+)"', re.M)
SOURCES = {".h", ".hpp", ".cpp", ".cc", ".c"}


def read_table(userspace):
    builds_on = {}
    for line in (userspace / "stages.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            stage, _, deps = line.partition(":")
            builds_on[stage.strip()] = deps.split()
    return builds_on


def reachable(stage, builds_on):
    """The stages `stage` builds on, directly or through others."""
    seen, todo = set(), list(builds_on[stage])
    while todo:
        dep = todo.pop()
        if dep not in seen:
            seen.add(dep)
            todo += builds_on[dep]
    return seen


def main():
    userspace = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "userspace")
    builds_on = read_table(userspace)
    problems = []
    for stage, deps in builds_on.items():
        problems += [f"stages.txt: {stage} builds on {d}, which is not a stage" for d in deps if d not in builds_on]
    folders = {p.name for p in userspace.iterdir() if p.is_dir()}
    problems += [f"userspace/{f}/ is not a stage in stages.txt" for f in sorted(folders - builds_on.keys())]
    problems += [f"stages.txt: {s} has no folder" for s in sorted(builds_on.keys() - folders)]
    if problems:
        print("\n".join(problems))
        return 1

    owners = {}  # include path -> stages holding a header by that path
    files = {}   # stage -> its source and header files
    for stage in builds_on:
        folder = userspace / stage
        files[stage] = sorted(p for p in folder.rglob("*") if p.suffix in SOURCES)
        for header in (p for p in files[stage] if p.suffix in {".h", ".hpp"}):
            for root in (folder / "include", folder / "src", folder):
                if header.is_relative_to(root):
                    owners.setdefault(header.relative_to(root).as_posix(), set()).add(stage)

    problems += [f"{name} is a header of {' and '.join(sorted(s))}: an include of it is ambiguous"
                 for name, s in sorted(owners.items()) if len(s) > 1]
    checked = 0
    for stage in builds_on:
        allowed = reachable(stage, builds_on) | {stage}
        for path in files[stage]:
            for name in INCLUDE.findall(path.read_text(errors="replace")):
                owner = owners.get(name)
                if not owner:
                    continue
                checked += 1
                if not owner & allowed:
                    problems.append(f"{path.relative_to(userspace.parent)}: includes \"{name}\" of "
                                    f"{'/'.join(sorted(owner))}, which {stage} does not build on "
                                    f"(userspace/stages.txt)")
    if problems:
        print("\n".join(problems))
        return 1
    print(f"{checked} includes of {len(builds_on)} stages: each within what its stage builds on")
    return 0


if __name__ == "__main__":
    sys.exit(main())
