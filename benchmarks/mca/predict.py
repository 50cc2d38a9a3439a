#!/usr/bin/env python3
"""Predicted cycles per iteration of every innermost loop of the C kernels, for CPUs we cannot run.

    python3 benchmarks/mca/predict.py [--llvm-mca /usr/lib/llvm-19/bin/llvm-mca] [--cpus znver4,znver5,...]

Compiles Sources/KernelsC/*.c as the package does (clang -O3; the kernels pick their instruction
sets with target attributes), finds each function's innermost loops in the assembly (a label and
the backward branch to it, with no loop inside), and runs llvm-mca on each loop body for each CPU.
Prints a Markdown table: the loop (function, its dot-product instructions and loads), then
cycles per iteration per CPU, and the dot-product instructions retired per cycle. Needs an
llvm-mca that knows the CPUs (Debian: apt-get install llvm-19; llvm-mca 14 has no znver4/znver5).
These are predictions from LLVM's scheduling models, not measurements; where a model is wrong
(LLVM 19 gives vdpbf16ps a reciprocal throughput of 3 cycles on znver4/znver5, while on an AMD
EPYC Zen 5 it measured 0.150 ns against vfmadd231ps's 0.139 ns, about 2 a cycle), say so beside it.
"""
import argparse
import glob
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KERNELS = os.path.join(ROOT, "Sources", "KernelsC")
DOTS = ("vdpbf16ps", "vpdpbusd", "vpdpbssd", "vpmaddubsw", "vpmaddwd", "vfmadd", "tdp")


def innermost_loops(assembly):
    """(function, index, body lines) for each innermost loop."""
    loops = []
    function = None
    lines = []  # (function, instruction or label), the whole file
    for raw in assembly.splitlines():
        line = raw.split("#")[0].rstrip()
        if not line.strip():
            continue
        m = re.match(r"^([A-Za-z_][\w.$]*):", line)
        if m and not line.startswith(".L"):
            function = m.group(1)
        lines.append((function, line.strip()))
    # Backward branches: a jump to a label seen earlier in the same function.
    position = {}
    for i, (f, text) in enumerate(lines):
        m = re.match(r"^(\.L\w+):$", text)
        if m:
            position[m.group(1)] = i
    spans = []
    for i, (f, text) in enumerate(lines):
        m = re.match(r"^j\w+\s+(\.L\w+)$", text)
        if m and m.group(1) in position and position[m.group(1)] < i and lines[position[m.group(1)]][0] == f:
            spans.append((position[m.group(1)], i, f))
    counter = {}
    for start, end, f in spans:
        if any(s > start and e < end for s, e, _ in spans if (s, e) != (start, end)):
            continue  # not innermost
        body = [t for _, t in lines[start + 1:end + 1] if not t.startswith(".") and not t.endswith(":")]
        if not any(any(t.startswith(d) for d in DOTS) for t in body):
            continue  # not a dot-product loop
        counter[f] = counter.get(f, 0) + 1
        loops.append((f, counter[f], body))
    return loops


def describe(body):
    counts = {}
    for t in body:
        op = t.replace("{vex}", "").split()[0]  # AVX-VNNI's vpdpbusd is the VEX form
        for d in DOTS:
            if op.startswith(d):
                counts[op] = counts.get(op, 0) + 1
    loads = sum(1 for t in body if "(" in t and not t.startswith(("prefetch", "lea", "vmovups %", "vmovaps %")) and t.split()[0].startswith(("vmov", "vpbroadcast", "vbroadcast", "vpmovzx", "vpmovsx")))
    dots = ", ".join(f"{n} {op}" for op, n in sorted(counts.items()))
    return dots, loads, sum(counts.values())


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--llvm-mca", default="/usr/lib/llvm-19/bin/llvm-mca")
    parser.add_argument("--cpus", default="znver4,znver5,sapphirerapids,icelake-server,skylake-avx512")
    parser.add_argument("--clang", default="clang")
    args = parser.parse_args()
    cpus = args.cpus.split(",")
    if not os.path.exists(args.llvm_mca):
        sys.exit(f"no llvm-mca at {args.llvm_mca} (apt-get install llvm-19)")
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for source in sorted(glob.glob(os.path.join(KERNELS, "*.c"))):
            out = os.path.join(work, os.path.basename(source) + ".s")
            subprocess.run([args.clang, "-O3", "-S", "-I" + KERNELS, "-I" + os.path.join(KERNELS, "include"), source, "-o", out], check=True)
            for function, index, body in innermost_loops(open(out).read()):
                dots, loads, ndots = describe(body)
                snippet = os.path.join(work, f"{function}-{index}.s")
                with open(snippet, "w") as f:
                    f.write("\n".join(body) + "\n")
                cycles = []
                for cpu in cpus:
                    run = subprocess.run([args.llvm_mca, f"-mcpu={cpu}", "-iterations=100", snippet], capture_output=True, text=True)
                    m = re.search(r"Total Cycles:\s+(\d+)", run.stdout)
                    cycles.append(int(m.group(1)) / 100 if m else None)
                rows.append((os.path.basename(source), function, index, dots, loads, ndots, cycles))
    print("| file | loop | dot instructions | loads | " + " | ".join(f"{c} cycles/iter" for c in cpus) + " | " +
          " | ".join(f"{c} dots/cycle" for c in cpus) + " |")
    print("| --- | --- | --- | ---: | " + " | ".join("---:" for _ in cpus) + " | " + " | ".join("---:" for _ in cpus) + " |")
    for source, function, index, dots, loads, ndots, cycles in rows:
        fmt = lambda c: "n/a" if c is None else f"{c:.2f}"
        rate = lambda c: "n/a" if not c else f"{ndots / c:.2f}"
        print(f"| {source} | {function} #{index} | {dots} | {loads} | " + " | ".join(fmt(c) for c in cycles) + " | " +
              " | ".join(rate(c) for c in cycles) + " |")


if __name__ == "__main__":
    main()
