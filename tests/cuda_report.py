"""Resource report of the CUDA kernels, from the compiled library, without a GPU.

For every kernel instance: registers, stack, local and shared memory (cuobjdump
--dump-resource-usage), and for its loops the SASS instruction count per FFMA (DFMA for
float64). Exits non-zero if any instance has a stack frame or local memory (spills, calls
that need a frame); it also reports whether each tiled float32 kernel's hot loop is within its
instruction budget
(a performance target, reported but not failed on: pass --strict to fail on it too).

How the hot loop is delimited: a loop is the address range from a backward branch's target to
the branch (cuobjdump -sass). A kernel's hot loop is the loop with the most FMAs per iteration,
not counting the FMAs of loops nested in it; where the kernel has an interior variant (no
bounds checks) and a border variant of that loop, with equal FMA counts, "hot" is the interior
one (fewest instructions) and "border" the other. Instructions are everything in the range
but NOPs, including the branch.

    python tests/cuda_report.py LIBRARY_OR_CUBIN [--cuobjdump PATH] [--arch sm_90] [--markdown F]
"""

import argparse
import os
import re
import shutil
import subprocess
import sys

# Budgets for the tiled float32 kernels' hot loops, instructions per FFMA.
BUDGETS = {"forward_tiled": 1.5, "backward_input_tiled": 2.5, "backward_weight_tiled": 2.5}

INSTRUCTION = re.compile(r"^\s+/\*([0-9a-f]{4,})\*/\s+(@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_.]*)(.*?);")


def find_cuobjdump(given):
    if given:
        return given
    found = shutil.which("cuobjdump")
    if found:
        return found
    try:  # triton ships one with the CUDA build of torch
        import triton
        path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin",
                            "cuobjdump")
        if os.path.exists(path):
            return path
    except ImportError:
        pass
    sys.exit("cuda_report: no cuobjdump found (pass --cuobjdump; triton ships one)")


def demangle(names):
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True,
                         check=True).stdout.split("\n")
    return dict(zip(names, out))


def short(name):
    name = re.sub(r"^void involution::cuda::", "", name)
    name = re.sub(r"\((involution::Geometry|involution::cuda::FusedDims|int, ).*$", "", name)
    return (name.replace("c10::BFloat16", "bf16").replace("c10::Half", "f16")
            .replace("__nv_bfloat16", "bf16").replace("double", "f64").replace("float", "f32"))


def resources(tool, path, arch):
    text = subprocess.run([tool, "--dump-resource-usage", path], capture_output=True, text=True,
                          check=True).stdout
    result, current_arch = {}, None
    for line in text.splitlines():
        m = re.search(r"arch = (sm_\d+)", line)
        if m:
            current_arch = m.group(1)
        m = re.search(r"Function (\S+):", line)
        if m and current_arch in (None, arch):
            name = m.group(1)
        m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", line)
        if m and current_arch in (None, arch):
            result[name] = tuple(int(v) for v in m.groups())
    return result


def loops(tool, path, arch):
    text = subprocess.run([tool, "-sass", "-arch", arch, path], capture_output=True, text=True,
                          check=True).stdout
    result = {}
    for chunk in re.split(r"\n\s+Function : ", text)[1:]:
        name = chunk.split("\n", 1)[0].strip()
        code = []
        for line in chunk.splitlines():
            m = INSTRUCTION.match(line)
            if m:
                code.append((int(m.group(1), 16), m.group(3), m.group(4)))
        found = []
        for address, op, args in code:
            target = re.search(r"BRA\s.*?(0x[0-9a-f]+)", op + args)
            if op.startswith("BRA") and target and int(target.group(1), 16) < address:
                found.append((int(target.group(1), 16), address))
        stats = []
        for begin, end in found:
            body = [(a, op) for a, op, _ in code if begin <= a <= end and not op.startswith("NOP")]
            inner = [(b, e) for b, e in found if begin <= b and e <= end and (b, e) != (begin, end)]
            own = [(a, op) for a, op in body if not any(b <= a <= e for b, e in inner)]
            fmas = sum(1 for _, op in own if op.split(".")[0] in ("FFMA", "DFMA"))
            stats.append((fmas, len(own), begin, end, own))
        result[name] = stats
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("library")
    parser.add_argument("--cuobjdump")
    parser.add_argument("--arch", default="sm_90")
    parser.add_argument("--markdown")
    parser.add_argument("--dump", metavar="SUBSTRING",
                        help="print the SASS opcodes of the hot loop of the instances whose "
                             "short name contains SUBSTRING")
    parser.add_argument("--strict", action="store_true",
                        help="also fail when a tiled float32 hot loop exceeds its budget")
    args = parser.parse_args(argv)
    tool = find_cuobjdump(args.cuobjdump)
    res = resources(tool, args.library, args.arch)
    loop_stats = loops(tool, args.library, args.arch)
    names = demangle(sorted(res))
    rows, failures, over = [], [], []
    for mangled in sorted(res, key=lambda m: short(names[m])):
        reg, stack, shared, local = res[mangled]
        name = short(names[mangled])
        stats = [s for s in loop_stats.get(mangled, []) if s[0] > 0]
        hot = border = ""
        if stats:
            most = max(s[0] for s in stats)
            top = sorted((s for s in stats if s[0] == most), key=lambda s: s[1])
            hot = f"{top[0][1] / top[0][0]:.2f} ({top[0][1]}/{top[0][0]})"
            if len(top) > 1:
                border = f"{top[-1][1] / top[-1][0]:.2f} ({top[-1][1]}/{top[-1][0]})"
        rows.append((name, reg, stack, local, shared, hot, border))
        if args.dump and args.dump in name and stats:
            print(f"hot loop of {name}, {top[0][2]:#x}-{top[0][3]:#x}:")
            print("  " + " ".join(op for _, op in top[0][4]))
        if stack or local:
            failures.append(f"{name}: STACK {stack}, LOCAL {local}")
        kernel = name.split("<")[0]
        if kernel in BUDGETS and "<f32, f32" in name and stats:
            ratio = top[0][1] / top[0][0]
            if ratio > BUDGETS[kernel] + 1e-9:
                over.append(f"{name}: hot loop {ratio:.2f} instructions per FFMA "
                                f"(budget {BUDGETS[kernel]})")
    if not rows:
        print(f"FAILED: no {args.arch} kernels in {args.library}")
        return 1
    header = ("| kernel instance | REG | STACK | LOCAL | SHARED | hot loop instr/FMA | "
              "border loop instr/FMA |")
    lines = [header, "|" + " --- |" * 7]
    lines += [f"| {' | '.join(str(v) for v in row)} |" for row in rows]
    table = "\n".join(lines)
    print(f"CUDA kernels in {os.path.basename(args.library)} ({args.arch}): {len(rows)} instances")
    print(table)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table + "\n")
    budgets = ", ".join(f"{k} <= {v}" for k, v in BUDGETS.items())
    if over:
        print(f"over the hot-loop targets ({budgets}):\n  " + "\n  ".join(over))
    else:
        print(f"every tiled float32 hot loop within its target ({budgets})")
    if failures:
        print("FAILED (stack or local memory):\n  " + "\n  ".join(failures))
        return 1
    print(f"every one of the {len(rows)} instances: no stack, no local memory")
    return 1 if over and args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
