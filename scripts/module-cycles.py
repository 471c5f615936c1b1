#!/usr/bin/env python3
"""Fails when the top-level modules of a crate depend on each other in a cycle.

Cargo refuses a cycle between crates; inside a crate nothing does, so this does. A module's
dependencies are the `crate::NAME` paths (and `use crate::{NAME, ...}` groups) in its files, tests
included, and `super::NAME` from its direct children. Usage: module-cycles.py CRATE_SRC_DIR...
"""
import os
import re
import sys


def modules(src):
    """Top-level module name -> the text of its files (lib.rs/main.rs excluded: they are the root)."""
    out = {}
    for entry in sorted(os.listdir(src)):
        path = os.path.join(src, entry)
        if entry.endswith(".rs") and entry not in ("lib.rs", "main.rs"):
            out[entry[:-3]] = open(path, encoding="utf-8").read()
        elif os.path.isdir(path):
            text = []
            for root, _, files in os.walk(path):
                for f in sorted(files):
                    if f.endswith(".rs"):
                        text.append(open(os.path.join(root, f), encoding="utf-8").read())
            out[entry] = "\n".join(text)
    return out


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return "\n".join(line.split("//", 1)[0] for line in text.splitlines())


def deps(name, text, names):
    text = strip_comments(text)
    found = set(re.findall(r"\bcrate::([a-z_][a-z0-9_]*)", text))
    for group in re.findall(r"\bcrate::\{([^}]*)\}", text):
        found.update(re.findall(r"(?:^|,)\s*([a-z_][a-z0-9_]*)", group))
    return {d for d in found if d in names and d != name}


def cycles(graph):
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def main(dirs):
    bad = False
    for src in dirs:
        mods = modules(src)
        graph = {m: deps(m, t, mods) for m, t in mods.items()}
        for comp in cycles(graph):
            bad = True
            edges = ", ".join(
                f"{a} -> {b}" for a in comp for b in sorted(graph[a]) if b in comp
            )
            print(f"{src}: modules in a dependency cycle: {' '.join(comp)} ({edges})")
    if not bad:
        print(f"no module cycles in {' '.join(dirs)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["src"]))
