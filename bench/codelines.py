#!/usr/bin/env python3
"""The code a request runs, by cache line: reads a callgrind file written with
`--dump-instr=yes` (and `--cache-sim=yes` for misses) and prints, per request, how many distinct
64-byte lines of code held an instruction that ran, how many executed instructions each held,
and which functions touched the most lines.

A request whose code spans more lines than the instruction cache holds (32 KiB: 512 lines)
fetches nearly every one of them again for the next request; few executed instructions per
line means the lines are mostly code that did not run (error paths, other branches) laid out
between the code that did.

    CALLGRIND_FLAGS="--cache-sim=yes --dump-instr=yes" bench/callgrind.sh BIN 5000
    bench/codelines.py bench/out/callgrind/cg.out.*.1 5000 [TOP] [FUNCTION-SUBSTRING]

With a function substring (and a build with line tables, like the profiling build in
bench/README.md), it prints that function's source lines by the distinct instructions they ran
instead. Only instructions that ran at least once per two requests count (not the connection
setup).
"""

import collections
import re
import sys


def position(token, current):
    """One position column of callgrind's compressed format: absolute, relative or `*`."""
    if token == "*":
        return current
    if token[0] in "+-":
        step = int(token[1:], 0)
        return current + step if token[0] == "+" else current - step
    return int(token, 0)


def read(path):
    """Per instruction address: (function, file, line, Ir, I1mr)."""
    names = {"fn": {}, "fl": {}}
    fn = fl = fi = None
    addr = line = 0
    skip_next = False
    ir_at = i1_at = None
    per = {}
    pattern = re.compile(r"^(c?f[nlie])=\((\d+)\)(?: (.*))?$")
    with open(path, encoding="utf-8", errors="replace") as f:
        for raw in f:
            text = raw.rstrip("\n")
            if text.startswith("events:"):
                events = text.split()[1:]
                ir_at = events.index("Ir")
                i1_at = events.index("I1mr") if "I1mr" in events else None
                continue
            m = pattern.match(text)
            if m:
                kind, num, name = m.groups()
                table = names["fn"] if kind.endswith("fn") else names["fl"]
                if name:
                    table[num] = name
                if kind == "fn":
                    fn = table.get(num)
                    fi = None
                elif kind == "fl":
                    fl = table.get(num)
                    fi = None
                elif kind in ("fi", "fe"):
                    fi = table.get(num)
                continue
            if text.startswith("calls="):
                # The next cost line is the call's inclusive cost, not this function's own.
                skip_next = True
                continue
            if not text or not (text[0].isdigit() or text[0] in "+-*"):
                continue
            cols = text.split()
            addr = position(cols[0], addr)
            line = position(cols[1], line)
            if skip_next:
                skip_next = False
                continue
            costs = [int(c) for c in cols[2:]]
            ir = costs[ir_at] if len(costs) > ir_at else 0
            i1 = costs[i1_at] if i1_at is not None and len(costs) > i1_at else 0
            if ir:
                old = per.get(addr)
                src = fi or fl or "?"
                per[addr] = (fn, src, line, ir + (old[3] if old else 0), i1 + (old[4] if old else 0))
    return per


def short(path):
    path = re.sub(r"^.*/registry/src/[^/]+/", "", path)
    return re.sub(r"^/rustc/[0-9a-f]+/", "", path)


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    per = read(sys.argv[1])
    n = int(sys.argv[2])
    top = int(sys.argv[3]) if len(sys.argv) > 3 else 30
    want = sys.argv[4] if len(sys.argv) > 4 else None
    hot = {a: v for a, v in per.items() if v[3] * 2 >= n}
    if want:
        by_line = collections.defaultdict(list)
        for a, (fn, src, line, ir, _) in hot.items():
            if fn and want in fn:
                by_line[(short(src), line)].append(ir)
        total = sum(len(v) for v in by_line.values())
        print(f"functions matching {want!r}: {total} distinct instructions run per request")
        print("instrs  Ir/req  source line")
        for (src, line), irs in sorted(by_line.items(), key=lambda kv: -len(kv[1]))[:top]:
            print(f"{len(irs):6d} {sum(irs) // n:7d}  {src}:{line}")
        return
    lines = collections.defaultdict(set)
    instrs = collections.Counter()
    ir = collections.Counter()
    i1 = collections.Counter()
    for a, (fn, _, _, cost, miss) in hot.items():
        lines[fn].add(a >> 6)
        instrs[fn] += 1
        ir[fn] += cost
        i1[fn] += miss
    every = set().union(*lines.values()) if lines else set()
    print(
        f"per request: {sum(ir.values()) // n} instructions, {sum(instrs.values())} distinct, on "
        f"{len(every)} lines of code ({len(every) * 64 // 1024} KiB), "
        f"{sum(instrs.values()) / max(1, len(every)):.1f} per line; "
        f"{sum(i1.values()) // n} instruction-cache misses"
    )
    print("lines  instrs  per line  I1mr/req  Ir/req  function")
    for fn in sorted(lines, key=lambda k: -len(lines[k]))[:top]:
        print(
            f"{len(lines[fn]):5d} {instrs[fn]:7d} {instrs[fn] / len(lines[fn]):9.1f} "
            f"{i1[fn] // n:9d} {ir[fn] // n:7d}  {(fn or '?')[:110]}"
        )


if __name__ == "__main__":
    main()
