#!/usr/bin/env python3
"""Locked instructions (atomic read-modify-writes) per request, from two
callgrind dumps taken with `--dump-instr=yes` (instructions.sh does this when
`LOCKED=1`): the dump of N requests and the dump of 2N, as for the instruction
count, (C(2N) - C(N)) / N.

A `lock`-prefixed instruction or an `xchg` with memory waits for every earlier
store to leave the core's store buffer, so it also pays for the cache misses
of the writes before it; callgrind counts it as one instruction like any
other. This count shows how many a request executes, and where.

    locked.py DUMP_N DUMP_2N N [TOP]

Prints the total, then the TOP (default 0) functions with the most. Each
object file named in the dumps is disassembled once with `objdump -d`; the
dumps' addresses are relative to their object, as objdump's are.
"""
import bisect
import collections
import re
import subprocess
import sys

LOCKED = re.compile(r"^\s*([0-9a-f]+):\s+(lock\s|xchg\s)")
FUNC = re.compile(r"^([0-9a-f]+) <(.*)>:$")


def disassemble(path):
    """(function starts, function names, set of locked-instruction addresses)."""
    starts, names, locked = [], [], set()
    try:
        out = subprocess.run(
            ["objdump", "-d", "-C", "--no-show-raw-insn", path],
            capture_output=True, text=True, check=False,
        ).stdout
    except OSError:
        return starts, names, locked
    for line in out.splitlines():
        m = FUNC.match(line)
        if m:
            starts.append(int(m.group(1), 16))
            names.append(m.group(2))
            continue
        m = LOCKED.match(line)
        # `xchg` between two registers is not locked; with memory it is.
        if m and (m.group(2).startswith("lock") or "(" in line.split(":", 1)[1]):
            locked.add(int(m.group(1), 16))
    return starts, names, locked


def costs(path):
    """{(object, address): Ir} of self cost, from a --dump-instr=yes dump."""
    out = collections.Counter()
    objs, ob, addr, after_call = {}, None, 0, False
    with open(path, errors="replace") as f:
        for line in f:
            if line.startswith(("ob=", "cob=")):
                # Names are compressed: "(id) name" the first time an object
                # appears (as `ob=` or as a callee's `cob=`), "(id)" after.
                m = re.match(r"c?ob=\((\d+)\)(?: (.*))?", line.strip())
                if m:
                    if m.group(2):
                        objs[m.group(1)] = m.group(2)
                    if line.startswith("ob="):
                        ob = objs.get(m.group(1))
                continue
            if line.startswith("calls="):
                after_call = True
                continue
            m = re.match(r"^(0x[0-9a-f]+|\+\d+|-\d+|\*)\s+\S+\s+(\d+)", line)
            if not m:
                continue
            a = m.group(1)
            if a.startswith("0x"):
                addr = int(a, 16)
            elif a[0] == "+":
                addr += int(a[1:])
            elif a[0] == "-":
                addr -= int(a[1:])
            if after_call:
                # The line after `calls=` is the call's inclusive cost.
                after_call = False
                continue
            out[(ob, addr)] += int(m.group(2))
    return out


def main():
    d1, d2, n = sys.argv[1], sys.argv[2], float(sys.argv[3])
    top = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    c1, c2 = costs(d1), costs(d2)
    per_fn = collections.Counter()
    total = 0.0
    for ob in sorted({o for o, _ in c2 if o}):
        starts, names, locked = disassemble(ob)
        for a in locked:
            d = (c2.get((ob, a), 0) - c1.get((ob, a), 0)) / n
            if d <= 0:
                continue
            total += d
            i = bisect.bisect_right(starts, a) - 1
            per_fn[names[i] if i >= 0 else f"{ob}+{a:#x}"] += d
    print(f"{total:.1f}")
    for fn, v in per_fn.most_common(top):
        print(f"  {v:6.2f}  {fn[:120]}")


if __name__ == "__main__":
    main()
