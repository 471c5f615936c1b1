#!/usr/bin/env python3
"""Atomic (locked) instructions per request, from a callgrind dump made with --dump-instr=yes.

Callgrind counts instructions, not their kinds; this disassembles each object named in the dump
(objdump) and sums the dump's per-instruction counts over `lock`-prefixed instructions, `xchg` with a
memory operand (implicitly locked) and `mfence`. JIT'd code (no file) is skipped. See bench/README.md,
"Instructions per request".

    VALGRIND_OPTS=--dump-instr=yes KEEP_WORK=1 CONNS=50 bench/instructions.sh
    bench/atomics.py <work dir>/sluicegate.callgrind.1 <requests> [top]
"""
import collections
import re
import subprocess
import sys


def named(table, spec):
    """Callgrind's name compression: "(id) name" defines, "(id)" refers."""
    m = re.match(r"\((\d+)\)(?: (.*))?", spec)
    if m.group(2):
        table[m.group(1)] = m.group(2)
    return table.get(m.group(1))


def counts(path):
    """Self counts per (object, address), and the function of each address."""
    objects, functions = {}, {}
    per_object = collections.defaultdict(collections.Counter)
    function_at = {}
    ob = fn = None
    last = 0
    call_cost_next = False
    with open(path, errors="replace") as f:
        for line in f:
            if line.startswith("positions:") and "instr" not in line:
                sys.exit(f"{path}: no per-instruction counts (make it with --dump-instr=yes)")
            if line.startswith("ob="):
                ob = named(objects, line[3:].strip())
            elif line.startswith("fn="):
                fn = named(functions, line[3:].strip())
            elif line.startswith("cfn="):
                named(functions, line[4:].strip())
            elif line.startswith("cob="):
                named(objects, line[4:].strip())
            elif line.startswith("calls="):
                call_cost_next = True  # the next cost line is the call's inclusive cost
            elif line[:1] in ("0", "+", "-", "*") and line.strip():
                fields = line.split()
                a = fields[0]
                if a.startswith("0x"):
                    last = int(a, 16)
                elif a[0] in "+-":
                    last += int(a)
                if call_cost_next:
                    call_cost_next = False
                    continue
                if len(fields) >= 3 and ob:
                    per_object[ob][last] += int(fields[-1])
                    function_at[(ob, last)] = fn
    if not per_object:
        sys.exit(f"{path}: no counts")
    return per_object, function_at


def locked_instructions(obj):
    """Addresses and text of the locked instructions in an ELF object."""
    out = subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", "-M", "intel", obj],
        capture_output=True, text=True, check=True,
    ).stdout
    found = {}
    for line in out.splitlines():
        m = re.match(r"\s*([0-9a-f]+):\s+(.*)", line)
        if m:
            ins = m.group(2)
            if ins.startswith(("lock ", "mfence")) or (ins.startswith("xchg") and "[" in ins):
                found[int(m.group(1), 16)] = ins
    return found


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    path, requests = sys.argv[1], int(sys.argv[2])
    top = int(sys.argv[3]) if len(sys.argv) > 3 else 10
    per_object, function_at = counts(path)
    total = 0
    for obj, addresses in per_object.items():
        if not obj.startswith("/"):
            continue
        locked = locked_instructions(obj)
        sites = collections.Counter()
        for address, n in addresses.items():
            if address in locked:
                sites[f"{(function_at[(obj, address)] or '?')[:90]} | {locked[address]}"] += n
        here = sum(sites.values())
        total += here
        print(f"{obj}: {here / requests:.1f} per request")
        for site, n in sites.most_common(top):
            print(f"  {n / requests:7.2f}  {site}")
    print(f"all objects: {total / requests:.1f} locked instructions per request")


if __name__ == "__main__":
    main()
