"""The reporting side of the op benchmark: tables, the project's targets, plot, results page."""

import os
import platform
import time
from typing import Dict, List

import torch

from measure import COMPARED_PASSES, FUSED_IMPLEMENTATIONS, PASSES

PEER_LABELS = {"unfold": "unfold", "compiled": "compiled", "deform_conv2d": "deform"}


def format_table(result: Dict) -> str:
    """Per shape and pass: our time, each peer's time and its ratio to ours, our distance from
    the machine's floor; peak memory rises on the forward+backward line."""
    peers = result["peers"]
    lines = [result["header"], ""]
    cols = (f"{'shape':<10} {'C':>4} {'HxW':>7} {'G':>3} {'K':>2} {'s':>2} | {'pass':<16} "
            f"{'ours ms':>8} | " + " ".join(f"{PEER_LABELS[p] + ' ms':>11} {'/ours':>6}"
                                            for p in peers)
            + f" | {'x floor':>7} {'GB/s':>6} | peak MiB: ours " + " ".join(PEER_LABELS[p]
                                                                            for p in peers))
    lines += [cols, "-" * len(cols)]
    for r in result["rows"]:
        s = r["shape"]
        for i, kind in enumerate(PASSES):
            ours = r["ours"]["times"][kind]
            lead = (f"{s['name']:<10} {s['channels']:>4} {s['size']:>3}x{s['size']:<3} "
                    f"{s['groups']:>3} {s['kernel']:>2} {s['stride']:>2}") if i == 0 else " " * 33
            memory = ""
            if kind == "forward+backward":
                memory = " ".join(f"{r[p]['peak_bytes'] / 2 ** 20:.1f}" for p in ["ours"] + peers)
            lines.append(
                f"{lead} | {kind:<16} {ours * 1e3:>8.2f} | "
                + " ".join(f"{r[p]['times'][kind] * 1e3:>11.2f} {r[p]['times'][kind] / ours:>5.1f}x"
                           for p in peers)
                + f" | {ours / r['floor'][kind]:>6.1f}x {r['work'][kind][0] / ours / 1e9:>6.1f}"
                + f" | {memory}")
    lines += ["", "max |peer - ours| of the forward per shape: " + "; ".join(
        f"{r['shape']['name']} " + " ".join(f"{r[p]['max_abs_diff']:.1e}" for p in peers)
        for r in result["rows"]),
        "x floor: our time over the pass's bytes at the measured copy bandwidth or its "
        "multiply-adds at the measured matmul rate, whichever is larger",
        "peak MiB: rise of the process's peak memory during one forward+backward; "
        "inputs + weight + grad_output of the largest shape: "
        f"{max(r['io_bytes'] for r in result['rows']) / 2 ** 20:.1f} MiB"]
    lines += [fresh_memory_note(result["rows"], ["ours"] + peers, PEER_LABELS)] if any(
        "faults" in r["ours"] for r in result["rows"]) else []
    lines += result.get("notes", [])
    return "\n".join(lines)


def fused_totals(rows: List[Dict]) -> Dict[str, Dict[str, float]]:
    """Per pass: each implementation's time summed over the shapes."""
    return {kind: {impl: sum(r["times"][impl][kind] for r in rows)
                   for impl in FUSED_IMPLEMENTATIONS} for kind in PASSES}


def format_fused(result: Dict) -> str:
    """The fused op against the span conv + op, per shape and pass, and summed over the shapes;
    peak memory rises on the forward+backward line."""
    rows = result["fused"]
    unfused, fused = FUSED_IMPLEMENTATIONS
    header = (f"the fused op (kernel generated inside it) against the span conv + op | "
              f"{result['header'].split(' | ')[2]} | {result['threads']} threads | ms, medians "
              f"of {rows[0]['rounds']} rounds, both in one process, interleaved")
    cols = (f"{'shape':<10} {'C':>4} {'HxW':>7} {'G':>3} {'K':>2} {'s':>2} {'R':>4} | "
            f"{'pass':<16} {'span+op ms':>10} {'fused ms':>9} {'fused/span+op':>13} | "
            f"peak MiB: span+op fused")
    lines = [header, "", cols, "-" * len(cols)]
    for r in rows:
        s = r["shape"]
        for i, kind in enumerate(PASSES):
            a, b = r["times"][unfused][kind], r["times"][fused][kind]
            lead = (f"{s['name']:<10} {s['channels']:>4} {s['size']:>3}x{s['size']:<3} "
                    f"{s['groups']:>3} {s['kernel']:>2} {s['stride']:>2} "
                    f"{s['channels'] // 4:>4}") if i == 0 else " " * 38
            memory = " ".join(f"{r['peak_bytes'][m] / 2 ** 20:.1f}" for m in (unfused, fused)) \
                if kind == "forward+backward" else ""
            lines.append(f"{lead} | {kind:<16} {a * 1e3:>10.2f} {b * 1e3:>9.2f} "
                         f"{b / a:>12.2f}x | {memory}")
    for i, (kind, t) in enumerate(fused_totals(rows).items()):
        lead = f"{'total':<10} ({len(rows)} shapes, summed)" if i == 0 else ""
        lines.append(f"{lead:<38} | {kind:<16} {t[unfused] * 1e3:>10.2f} {t[fused] * 1e3:>9.2f} "
                     f"{t[fused] / t[unfused]:>12.2f}x |")
    lines += ["", "R: channels of the reduced tensor (C/4); backward: the gradients of x, reduced, "
              "span_weight and span_bias; max |fused - span+op| of the forward per shape: "
              + "; ".join(f"{r['shape']['name']} {r['max_abs_diff']:.1e}" for r in rows),
              fresh_memory_note([{"shape": r["shape"], **{m: {
                  "faults": r["faults"][m], "warmup_rounds": r["warmup_rounds"]}
                  for m in FUSED_IMPLEMENTATIONS}} for r in rows], list(FUSED_IMPLEMENTATIONS), {})]
    return "\n".join(lines)


def config_texts(result: Dict) -> List[str]:
    """One configuration's tables: our op and its peers, then the fused op where it ran."""
    return [format_table(result)] + ([format_fused(result)] if result.get("fused") else [])


def fresh_memory_note(rows: List[Dict], impls: List[str], labels: Dict[str, str]) -> str:
    """How much never-touched memory the timed calls wrote (the most page faults of one timed
    call times the page size, the largest over shapes and passes): 0 once the C heap is steady;
    blocks above glibc's mmap threshold (32 MiB in the workers) come from fresh mmaps at every
    call, and their page faults are part of the pass's time."""
    page = os.sysconf("SC_PAGE_SIZE")
    worst = []
    for impl in impls:
        faults = [(v, r["shape"]["name"], k) for r in rows if "faults" in r[impl]
                  for k, v in r[impl]["faults"].items()]
        if faults:
            v, name, kind = max(faults)
            mib = v * page / 2 ** 20
            worst.append(f"{labels.get(impl, impl)} {mib:.1f} MiB"
                         + (f" ({name} {kind})" if mib >= 0.05 else ""))
    rounds = sorted({r[i]["warmup_rounds"] for r in rows for i in impls if "warmup_rounds" in r[i]})
    span = f"{rounds[0]}" if len(rounds) == 1 else f"{rounds[0]}-{rounds[-1]}"
    return ("fresh memory written by a timed call (page faults x page size, the most of any "
            "call, shape and pass; the passes ran in interleaved rounds after a heap reserve and "
            f"{span} warm-up rounds): " + ", ".join(worst))


def config_label(config) -> str:
    dtype_name, threads = config
    return f"{dtype_name} x{threads}"


def machine_scaling(comparison: Dict) -> str:
    """The machine's own speed-up from the fewest to the most threads, for matmul and copy."""
    machine = comparison.get("machine")
    if not machine:
        return ""
    few, many = machine[min(machine, key=int)], machine[max(machine, key=int)]
    return (f"matmul {few['matmul'] / many['matmul']:.2f}x, "
            f"copy {few['copy'] / many['copy']:.2f}x")


def comparison_ratios(comparison: Dict) -> List[tuple]:
    """(label, numerator config, denominator config): the fewest threads over the most, for the
    first dtype, and every other dtype over the first, at the first thread count."""
    configs = [tuple(c) for c in comparison["configs"]]
    dtypes = list(dict.fromkeys(d for d, _ in configs))
    threads = list(dict.fromkeys(t for _, t in configs))
    ratios = []
    if len(threads) > 1:
        few, many = min(threads), max(threads)
        ratios.append((f"x{few}/x{many} {dtypes[0]}", (dtypes[0], few), (dtypes[0], many)))
    for d in dtypes[1:]:
        ratios.append((f"{d}/{dtypes[0]} x{threads[0]}", (d, threads[0]), (dtypes[0], threads[0])))
    return ratios


def ratio_values(comparison: Dict, numerator, denominator, kind: str) -> tuple:
    """Per-shape ratios of numerator's time to denominator's, and the ratio of their totals."""
    configs = [tuple(c) for c in comparison["configs"]]
    i, j = configs.index(numerator), configs.index(denominator)
    per_shape = [r["times"][i][kind] / r["times"][j][kind] for r in comparison["rows"]]
    total = (sum(r["times"][i][kind] for r in comparison["rows"])
             / sum(r["times"][j][kind] for r in comparison["rows"]))
    return per_shape, total


def format_comparison(comparison: Dict, batch: int) -> str:
    configs = [tuple(c) for c in comparison["configs"]]
    ratios = comparison_ratios(comparison)
    header = (f"our op side by side, batch {batch}: each round runs every configuration once, "
              f"each pass after a small op wakes the thread pool; "
              f"ms, medians of {comparison['rounds']} rounds")
    cols = (f"{'shape':<10} | {'pass':<16} " + " ".join(f"{config_label(c):>14}" for c in configs)
            + " | " + " ".join(f"{label:>22}" for label, _, _ in ratios))
    lines = [header, "", cols, "-" * len(cols)]
    for kind in COMPARED_PASSES:
        per_ratio = [ratio_values(comparison, a, b, kind) for _, a, b in ratios]
        for k, r in enumerate(comparison["rows"]):
            lines.append(f"{r['shape']['name']:<10} | {kind:<16} "
                         + " ".join(f"{t[kind] * 1e3:>14.2f}" for t in r["times"]) + " | "
                         + " ".join(f"{v[0][k]:>22.2f}" for v in per_ratio))
        totals = [sum(r["times"][i][kind] for r in comparison["rows"]) for i in range(len(configs))]
        lines.append(f"{'total':<10} | {kind:<16} " + " ".join(f"{t * 1e3:>14.2f}" for t in totals)
                     + " | " + " ".join(f"{v[1]:>22.2f}" for v in per_ratio))
    if comparison.get("machine"):
        threads = sorted(comparison["machine"], key=int)
        lines += ["", f"the machine itself from {threads[0]} to {threads[-1]} threads, in rounds "
                  f"the same way (float32 1024x1024 matmul; 64 MiB copy): "
                  + machine_scaling(comparison)]
    return "\n".join(lines)


# The project's targets for the CPU kernels (float32, batch 8, RedNet-50's shapes, the default
# run), checked on the tables of one run: speed-ups over the eager unfold formulation.
TARGET_FORWARD_STAGE1 = 30.0
TARGET_FORWARD_OTHERS = 20.0
TARGET_FORWARD_BACKWARD = 15.0
TARGET_PEAK_RATIO = 3.0
TARGET_THREAD_SCALING = 1.7
# The fused op against the span conv + op (summed over RedNet-50's shapes), and at every shape.
TARGET_FUSED_FORWARD = 0.6
TARGET_FUSED_FORWARD_BACKWARD = 0.75


def check_targets(results: List[Dict], comparison, args) -> List[tuple]:
    """(target, measured, met) for each target the run has the data for."""
    float32 = [r for r in results if r["dtype"] == "float32"]
    if args.device != "cpu" or args.batch != 8 or not float32:
        return []
    table = max(float32, key=lambda r: r["threads"])
    rows = {r["shape"]["name"]: r for r in table["rows"]}

    def speedup(r, kind):
        return r["unfold"]["times"][kind] / r["ours"]["times"][kind]

    checks = []
    if "stage1" in rows:
        v = speedup(rows["stage1"], "forward")
        checks.append((f"forward speed-up at stage1 >= {TARGET_FORWARD_STAGE1:.0f}x",
                       f"{v:.1f}x", v >= TARGET_FORWARD_STAGE1))
    others = [speedup(r, "forward") for n, r in rows.items() if n != "stage1"]
    if others:
        checks.append((f"forward speed-up at the other shapes >= {TARGET_FORWARD_OTHERS:.0f}x",
                       f"min {min(others):.1f}x", min(others) >= TARGET_FORWARD_OTHERS))
    fb = [speedup(r, "forward+backward") for r in rows.values()]
    checks.append((f"forward+backward speed-up >= {TARGET_FORWARD_BACKWARD:.0f}x",
                   f"min {min(fb):.1f}x", min(fb) >= TARGET_FORWARD_BACKWARD))
    peak = [r["ours"]["peak_bytes"] / r["io_bytes"] for r in rows.values()]
    checks.append((f"peak memory rise of forward+backward <= {TARGET_PEAK_RATIO:.0f}x "
                   "(input + weight + grad_output)", f"max {max(peak):.2f}x",
                   max(peak) <= TARGET_PEAK_RATIO))
    if table.get("fused"):
        checks += fused_checks(table["fused"])
    if comparison is not None:
        configs = [tuple(c) for c in comparison["configs"]]
        if ("float32", 1) in configs and ("float32", 2) in configs:
            per_shape, total = ratio_values(comparison, ("float32", 1), ("float32", 2), "forward")
            checks.append((f"forward from 1 to 2 threads >= {TARGET_THREAD_SCALING}x (total)",
                           f"{total:.2f}x (per shape {min(per_shape):.2f}x-{max(per_shape):.2f}x;"
                           f" the machine: {machine_scaling(comparison)})",
                           total >= TARGET_THREAD_SCALING))
        threads = table["threads"]
        if ("bfloat16", threads) in configs and ("float32", threads) in configs:
            for kind in COMPARED_PASSES:
                per_shape, total = ratio_values(comparison, ("bfloat16", threads),
                                                ("float32", threads), kind)
                checks.append((f"bfloat16 {kind} no slower than float32 (time ratio, total)",
                               f"{total:.2f} (per shape {min(per_shape):.2f}-"
                               f"{max(per_shape):.2f})", total <= 1.0))
    return checks


def fused_checks(rows: List[Dict]) -> List[tuple]:
    """The fused op's targets: its time over the span conv + op's, summed over the shapes, for
    forward and forward+backward, and no shape slower in either."""
    unfused, fused = FUSED_IMPLEMENTATIONS
    totals = fused_totals(rows)
    checks = []
    for kind, target in (("forward", TARGET_FUSED_FORWARD),
                         ("forward+backward", TARGET_FUSED_FORWARD_BACKWARD)):
        v = totals[kind][fused] / totals[kind][unfused]
        checks.append((f"fused {kind} <= {target}x the span conv + op (summed over the "
                       f"{len(rows)} shapes)", f"{v:.2f}x", v <= target))
    for kind in COMPARED_PASSES:
        ratios = {r["shape"]["name"]: r["times"][fused][kind] / r["times"][unfused][kind]
                  for r in rows}
        worst = max(ratios, key=ratios.get)
        checks.append((f"fused {kind} no slower than the span conv + op at any shape",
                       f"max {ratios[worst]:.2f}x ({worst})", ratios[worst] <= 1.0))
    return checks


def format_targets(checks: List[tuple]) -> str:
    width = max(len(t) for t, _, _ in checks)
    lines = ["targets (CPU, float32, batch 8; tables above, side by side in this run)", ""]
    lines += [f"{'met' if ok else 'MISSED':<6} {target:<{width}}  {value}"
              for target, value, ok in checks]
    return "\n".join(lines)


def write_plot(result: Dict, path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise SystemExit(f"--plot needs matplotlib ({e}); pip install matplotlib") from e
    rows = result["rows"]
    names = [r["shape"]["name"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    peers = result["peers"]
    width = 0.8 / max(len(peers), 1)
    for i, peer in enumerate(peers):
        ratios = [r[peer]["times"]["forward+backward"] / r["ours"]["times"]["forward+backward"]
                  for r in rows]
        axes[0].bar([j + (i - (len(peers) - 1) / 2) * width for j in range(len(rows))], ratios,
                    width, label=PEER_LABELS[peer])
    axes[0].set_yscale("log")
    width = 0.25
    for i, kind in enumerate(PASSES):
        floors = [r["ours"]["times"][kind] / r["floor"][kind] for r in rows]
        axes[1].bar([j + (i - 1) * width for j in range(len(rows))], floors, width, label=kind)
    axes[0].set_title("peer's forward+backward time / ours", fontsize=9)
    axes[1].set_title("our time / floor (1 = at the machine's limit)", fontsize=9)
    for ax in axes:
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels(names, rotation=30, fontsize=8)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=72)


def write_markdown(results: List[Dict], extra: List[str], path: str, command: str,
                   machine: str) -> None:
    with open(path, "w") as f:
        f.write("# Benchmark results\n\n")
        f.write(f"Generated by `{command}` on {time.strftime('%Y-%m-%d')}; `make results` "
                "regenerates the whole page. Timings are medians on a shared machine: compare "
                "ratios within one run.\n\n")
        f.write(f"Machine: {machine}\n\n")
        for text in [text for r in results for text in config_texts(r)] + extra:
            f.write("```\n" + text + "\n```\n\n")


def machine_description(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (f"{model}, {os.cpu_count()} logical CPUs, torch CPU capability "
            f"{torch.backends.cpu.get_cpu_capability()}")
