"""Benchmark: the involution op against the pure-PyTorch unfold formulation, on RedNet shapes.

    python -m involution.benchmark                   # CPU, float32, batch 8, RedNet-50's shapes
    python -m involution.benchmark --dtype bfloat16 --threads 1 --json out.json --plot out.png
    python -m involution.benchmark --markdown benchmarks/RESULTS.md
    python -m involution.benchmark --device cuda --dtype float32,float16   # batch 64
    python -m involution.benchmark --onnxruntime     # and the op exported to ONNX, in onnxruntime

Each (shape, implementation) runs in a fresh worker process, so neither inherits the other's
heap. A worker first measures the peak memory rise of one forward+backward (max RSS on the CPU,
the allocator's peak on CUDA), then times forward, backward (both gradients) and
forward+backward: medians of --repeats runs after --warmup runs. (On CUDA, the official
kernels' design is timed by benchmarks/cuda_official_baseline.py, which the GPU check runs.)

With several dtypes or thread counts, one table per configuration is followed by a side-by-side
table of our op alone: one worker runs every configuration once per round, so the ratios
between them (1 vs 2 threads, bfloat16 vs float32) are not skewed by the shared machine's
drift between tables. Before each timed pass, a small parallel op at that configuration's
thread count wakes the thread pool, as the ops before it in a network would: otherwise a pass
that follows a one-thread one pays for waking the pool's sleeping threads, which is not the
op's scaling. On the CPU at batch 8 with float32 the program ends with the project's
targets (issue 5), each marked met or MISSED. With --onnxruntime it adds the deployment cost: the
op exported with involution.onnx, run in onnxruntime next to ours (onnxruntime_worker).

The floor of a pass is the larger of its bytes over the machine's copy bandwidth and its
multiply-adds over its matrix-multiply rate, both measured at start with the same threads.
Bytes count each tensor the pass must read or write once: forward reads input and weight and
writes the output; backward reads grad_output, input and weight and writes both gradients.
"""

import argparse
import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Dict, List, NamedTuple

import torch


class Shape(NamedTuple):
    name: str
    channels: int
    size: int
    groups: int
    kernel: int = 7
    stride: int = 1

    @property
    def padding(self) -> int:
        return (self.kernel - 1) // 2

    @property
    def out(self) -> int:
        return (self.size + 2 * self.padding - (self.kernel - 1) - 1) // self.stride + 1


# RedNet-50 at 224x224 (DESIGN.md §5): 16 channels per group, K = 7, "same" padding.
REDNET50_SHAPES = [
    Shape("stem", 32, 112, 2, kernel=3),
    Shape("stage1", 64, 56, 4),
    Shape("stage2", 128, 28, 8),
    Shape("stage2-s2", 128, 56, 8, stride=2),
    Shape("stage3", 256, 14, 16),
    Shape("stage3-s2", 256, 28, 16, stride=2),
    Shape("stage4", 512, 7, 32),
    Shape("stage4-s2", 512, 14, 32, stride=2),
]
PASSES = ("forward", "backward", "forward+backward")
COMPARED_PASSES = ("forward", "forward+backward")
IMPLEMENTATIONS = ("ours", "unfold")


def implementations(device) -> tuple:
    return IMPLEMENTATIONS


def make_inputs(shape: Shape, batch: int, dtype, device):
    gen = torch.Generator().manual_seed(0)
    k, o = shape.kernel, shape.out
    x = torch.randn(batch, shape.channels, shape.size, shape.size, generator=gen)
    w = torch.randn(batch, shape.groups, k, k, o, o, generator=gen)
    gy = torch.randn(batch, shape.channels, o, o, generator=gen)
    params = ([shape.stride] * 2, [shape.padding] * 2, [1, 1])
    return x.to(device, dtype), w.to(device, dtype), gy.to(device, dtype), params


def implementation(name: str):
    if name == "ours":
        import involution  # noqa: F401  (loads the op library)

        return torch.ops.involution.involution2d
    from involution.reference import involution2d_unfold

    return involution2d_unfold


def pass_bytes_and_macs(shape: Shape, batch: int, element_size: int) -> Dict[str, tuple]:
    x = batch * shape.channels * shape.size ** 2
    w = batch * shape.groups * shape.kernel ** 2 * shape.out ** 2
    y = batch * shape.channels * shape.out ** 2
    macs = y * shape.kernel ** 2
    forward = ((x + w + y) * element_size, macs)
    backward = ((y + x + w + x + w) * element_size, 2 * macs)
    return {"forward": forward, "backward": backward,
            "forward+backward": (forward[0] + backward[0], 3 * macs)}


# ------------------------------------------------------------------------------- worker side


def current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak_rss() -> bool:
    """Resets the kernel's high-water mark of this process's RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def worker(spec: Dict) -> Dict:
    if spec["impl"] == "compare":
        return compare_worker(spec)
    if spec["impl"] == "machine":
        return machine_worker(spec)
    if spec["impl"] == "onnxruntime":
        return onnxruntime_worker(spec)
    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    dtype = getattr(torch, spec["dtype"])
    shape = Shape(**spec["shape"])
    impl = implementation(spec["impl"])
    x, w, gy, params = make_inputs(shape, spec["batch"], dtype, device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    x.requires_grad_()
    w.requires_grad_()

    def forward():
        with torch.no_grad():
            impl(x, w, *params)

    def forward_backward():
        torch.autograd.grad(impl(x, w, *params), (x, w), gy)

    # A tiny problem first, so that the thread pool, the per-thread allocator arenas and the
    # code are in place and the measured rise is that of the pass itself.
    small = shape._replace(size=shape.kernel + 2)
    xs, ws, gys, ps = make_inputs(small, 1, dtype, device)
    torch.autograd.grad(impl(xs.requires_grad_(), ws.requires_grad_(), *ps), (xs, ws), gys)

    # Peak memory of one forward+backward at full size.
    if device.type == "cuda":
        sync()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        forward_backward()
        sync()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        if not reset_peak_rss():
            raise RuntimeError("cannot reset the peak RSS (/proc/self/clear_refs)")
        base = current_rss()
        forward_backward()
        peak = max(0, peak_rss() - base)

    y = impl(x, w, *params)

    def backward():
        torch.autograd.grad(y, (x, w), gy, retain_graph=True)

    times = {name: time_pass(fn, spec, sync)
             for name, fn in zip(PASSES, (forward, backward, forward_backward))}
    return {"times": times, "peak_bytes": peak}


def wake_thread_pool(device: torch.device, threads: int) -> None:
    """Runs a small parallel op on `threads` threads, so that the pool's threads, asleep after a
    stretch on fewer threads, are awake when the timed pass starts (as after the ops before it
    in a network). One at::parallel_for grain (32768 elements) per thread: 128 KiB each."""
    if device.type == "cpu":
        torch.zeros(threads * 32768).add_(1)


def compare_worker(spec: Dict) -> Dict:
    """Our op under several (dtype, threads) configurations in one process, interleaved: every
    round runs each configuration once, so the shared machine's drift touches all of them alike
    and their ratios are fair. Returns the median seconds per configuration and pass."""
    device = torch.device(spec["device"])
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    shape = Shape(**spec["shape"])
    op = implementation("ours")
    runs = []
    for dtype_name, threads in spec["configs"]:
        x, w, gy, params = make_inputs(shape, spec["batch"], getattr(torch, dtype_name), device)
        x.requires_grad_()
        w.requires_grad_()

        def forward(x=x, w=w, params=params):
            with torch.no_grad():
                op(x, w, *params)

        def forward_backward(x=x, w=w, gy=gy, params=params):
            torch.autograd.grad(op(x, w, *params), (x, w), gy)

        runs.append((threads, {"forward": forward, "forward+backward": forward_backward}))
    samples = [{kind: [] for kind in COMPARED_PASSES} for _ in runs]
    for round_index in range(spec["warmup"] + spec["repeats"]):
        for (threads, passes), out in zip(runs, samples):
            torch.set_num_threads(threads)
            for kind, fn in passes.items():
                wake_thread_pool(device, threads)
                sync()
                start = time.perf_counter()
                fn()
                sync()
                if round_index >= spec["warmup"]:
                    out[kind].append(time.perf_counter() - start)
    return {"times": [{kind: statistics.median(v) for kind, v in s.items()} for s in samples]}


def machine_worker(spec: Dict) -> Dict:
    """The machine's own scaling with threads, as a reference for our op's: a float32 matrix
    multiply (compute-bound) and a 64 MiB copy (memory-bound) at each thread count, interleaved
    round by round. Returns median seconds per thread count."""
    device = torch.device(spec["device"])
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    a = torch.randn(1024, 1024, device=device)
    src = torch.randn(16 * 2 ** 20, device=device)
    dst = torch.empty_like(src)
    work = {"matmul": lambda: a @ a, "copy": lambda: dst.copy_(src)}
    samples = {t: {k: [] for k in work} for t in spec["threads"]}
    for round_index in range(spec["warmup"] + spec["repeats"]):
        for t in spec["threads"]:
            torch.set_num_threads(t)
            for kind, fn in work.items():
                wake_thread_pool(device, t)
                sync()
                start = time.perf_counter()
                fn()
                sync()
                if round_index >= spec["warmup"]:
                    samples[t][kind].append(time.perf_counter() - start)
    return {"times": {str(t): {k: statistics.median(v) for k, v in per.items()}
                      for t, per in samples.items()}}


def time_pass(fn, spec: Dict, sync) -> float:
    """Median seconds of fn over spec["repeats"] runs after spec["warmup"] runs."""
    for _ in range(spec["warmup"]):
        fn()
    sync()
    samples = []
    for _ in range(spec["repeats"]):
        start = time.perf_counter()
        fn()
        sync()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


# ------------------------------------------------------------------------------- parent side


def machine_rates(device, threads: int) -> Dict[str, float]:
    """Copy bandwidth (bytes read + written per second) and matrix-multiply rate (multiply-adds
    per second), measured with the benchmark's thread count."""
    torch.set_num_threads(threads)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def best(fn, n=10):
        fn()
        sync()
        out = []
        for _ in range(n):
            start = time.perf_counter()
            fn()
            sync()
            out.append(time.perf_counter() - start)
        return min(out)

    src = torch.randn(64 * 2 ** 20 // 4, device=device)  # 64 MiB, beyond the caches
    dst = torch.empty_like(src)
    bandwidth = 2 * src.numel() * 4 / best(lambda: dst.copy_(src))
    n = 2048 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device)
    macs = n ** 3 / best(lambda: a @ a)
    return {"copy_bytes_per_s": bandwidth, "matmul_macs_per_s": macs}


# glibc's malloc returns freed memory at the top of its heap to the system and serves large
# blocks by fresh mmaps, so a pass that follows another can page-fault its whole output anew (here
# about 1 ms per 3 MiB), depending on what ran before it. Workers keep freed blocks below 32 MiB
# (glibc's largest mmap threshold) for reuse, as a caching allocator does, so that timings
# measure the passes; larger blocks (the unfold formulation's) still come from fresh mmaps.
# Settings already in the environment are kept.
WORKER_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 * 2 ** 20),
                     "MALLOC_TRIM_THRESHOLD_": str(2 ** 40)}


def run_worker(spec: Dict) -> Dict:
    cmd = [sys.executable, "-m", "involution.benchmark", "--worker", json.dumps(spec)]
    out = subprocess.run(cmd, capture_output=True, text=True,
                         env={**WORKER_MALLOC_ENV, **os.environ})
    if out.returncode != 0:
        raise RuntimeError(f"benchmark worker failed ({spec['impl']} {spec['shape']['name']}):\n"
                           + out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def max_abs_diff(shape: Shape, args, dtype, device) -> float:
    x, w, _, params = make_inputs(shape, args.batch, dtype, device)
    with torch.no_grad():
        a = implementation("ours")(x, w, *params).double()
        b = implementation("unfold")(x, w, *params).double()
    return (a - b).abs().max().item()


def progress(done: int, total: int, label: str) -> None:
    width = 30
    filled = width * done // total
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {label:<24}")
    sys.stderr.flush()
    if done == total:
        sys.stderr.write("\n")


def format_table(result: Dict) -> str:
    lines = [result["header"], ""]
    cols = (f"{'shape':<10} {'C':>4} {'HxW':>7} {'G':>3} {'K':>2} {'s':>2} | {'pass':<16} "
            f"{'ours ms':>8} {'unfold ms':>10} {'speed-up':>9} | {'floor ms':>8} {'x floor':>8} "
            f"{'GB/s':>6} {'GFLOP/s':>8} | {'peak MiB ours':>13} {'unfold':>8}")
    lines += [cols, "-" * len(cols)]
    for r in result["rows"]:
        s = r["shape"]
        for i, kind in enumerate(PASSES):
            ours, unfold = r["ours"]["times"][kind], r["unfold"]["times"][kind]
            nbytes, macs = r["work"][kind]
            lead = (f"{s['name']:<10} {s['channels']:>4} {s['size']:>3}x{s['size']:<3} "
                    f"{s['groups']:>3} {s['kernel']:>2} {s['stride']:>2}") if i == 0 else " " * 33
            memory = ""
            if kind == "forward+backward":
                memory = (f"{r['ours']['peak_bytes'] / 2 ** 20:>13.1f} "
                          f"{r['unfold']['peak_bytes'] / 2 ** 20:>8.1f}")
            lines.append(
                f"{lead} | {kind:<16} {ours * 1e3:>8.2f} {unfold * 1e3:>10.2f} "
                f"{unfold / ours:>8.1f}x | {r['floor'][kind] * 1e3:>8.2f} "
                f"{ours / r['floor'][kind]:>7.1f}x {nbytes / ours / 1e9:>6.1f} "
                f"{2 * macs / ours / 1e9:>8.1f} | {memory:>22}")
    lines += ["", f"max |ours - unfold| per shape: "
              + ", ".join(f"{r['shape']['name']} {r['max_abs_diff']:.1e}" for r in result["rows"]),
              f"peak MiB: rise of the process's peak memory during one forward+backward; "
              f"inputs + weight + grad_output of the largest shape: "
              f"{max(r['io_bytes'] for r in result['rows']) / 2 ** 20:.1f} MiB"]
    return "\n".join(lines)


def config_label(config) -> str:
    dtype_name, threads = config
    return f"{dtype_name} x{threads}"


def run_comparison(args, device, shapes, configs, step) -> Dict:
    """Our op's forward and forward+backward for every configuration, interleaved per shape."""
    rows = []
    for shape in shapes:
        step(f"{shape.name} side by side")
        rows.append({"shape": shape._asdict(), "times": run_worker({
            "impl": "compare", "shape": shape._asdict(), "batch": args.batch,
            "device": args.device, "configs": configs, "repeats": 4 * args.repeats,
            "warmup": args.warmup})["times"]})
    threads = sorted({t for _, t in configs})
    machine = None
    if len(threads) > 1:
        machine = run_worker({"impl": "machine", "device": args.device, "threads": threads,
                              "repeats": 4 * args.repeats, "warmup": 1})["times"]
    return {"configs": configs, "rounds": 4 * args.repeats, "rows": rows, "machine": machine}


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


# Issue 5's targets for the CPU kernels (float32, batch 8, RedNet-50's shapes, this program's
# default run), checked on the tables of one run.
TARGET_FORWARD_STAGE1 = 30.0
TARGET_FORWARD_OTHERS = 20.0
TARGET_FORWARD_BACKWARD = 15.0
TARGET_PEAK_RATIO = 3.0
TARGET_THREAD_SCALING = 1.7


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


# --onnxruntime: the deployment cost. The op exported with involution.onnx at two opsets: 20 (the
# exporter's default) gives one DeformConv node, 18 the decomposition (Pad, then Slice, Mul, Add
# per tap) that 3-D involution and opsets below 19 get.
ONNXRUNTIME_VARIANTS = (("DeformConv", 20), ("decomposed", 18))


def onnxruntime_worker(spec: Dict) -> Dict:
    """Our op's forward and the same op exported with involution.onnx and run in onnxruntime's
    CPU provider, on the same float32 inputs and thread count, interleaved round by round.
    onnxruntime's idle threads sleep instead of spinning, so that they do not take the cores
    from the torch pass that follows. Returns median seconds and the max |difference| to ours."""
    import onnxruntime
    import involution.onnx

    threads = spec["threads"]
    torch.set_num_threads(threads)
    device = torch.device("cpu")
    x, w, _, params = make_inputs(Shape(**spec["shape"]), spec["batch"], torch.float32, device)
    op = implementation("ours")

    class Op(torch.nn.Module):
        def forward(self, x, w):
            return op(x, w, *params)

    expected = op(x, w, *params).numpy()
    feeds = {"input": x.numpy(), "weight": w.numpy()}
    runs, diffs = {"ours": lambda: op(x, w, *params)}, {}
    for name, opset in ONNXRUNTIME_VARIANTS:
        program = involution.onnx.export(Op(), (x, w), opset_version=opset, verbose=False,
                                         input_names=["input", "weight"])
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = onnxruntime.InferenceSession(program.model_proto.SerializeToString(), options,
                                               providers=["CPUExecutionProvider"])
        diffs[name] = float(abs(session.run(None, feeds)[0] - expected).max())
        runs[name] = lambda session=session: session.run(None, feeds)
    samples = {name: [] for name in runs}
    for round_index in range(spec["warmup"] + spec["repeats"]):
        for name, fn in runs.items():
            wake_thread_pool(device, threads)
            start = time.perf_counter()
            fn()
            if round_index >= spec["warmup"]:
                samples[name].append(time.perf_counter() - start)
    return {"times": {name: statistics.median(v) for name, v in samples.items()},
            "max_abs_diff": diffs}


def run_onnxruntime(args, shapes, threads: List[int], step) -> Dict:
    rows = []
    for n in threads:
        for shape in shapes:
            step(f"{shape.name} onnxruntime x{n}")
            rows.append({"shape": shape._asdict(), "threads": n, **run_worker({
                "impl": "onnxruntime", "shape": shape._asdict(), "batch": args.batch,
                "threads": n, "repeats": 4 * args.repeats, "warmup": args.warmup})})
    return {"batch": args.batch, "rounds": 4 * args.repeats, "rows": rows}


def format_onnxruntime(result: Dict) -> str:
    names = [name for name, _ in ONNXRUNTIME_VARIANTS]
    header = (f"deployment: our op against the op exported with involution.onnx, in onnxruntime "
              f"(CPU provider; DeformConv: opset 20, decomposed: opset 18), forward, float32, "
              f"batch {result['batch']}, interleaved; ms, medians of {result['rounds']} rounds")
    cols = (f"{'shape':<10} {'thr':>3} | {'ours ms':>8} "
            + " ".join(f"{'ort ' + n + ' ms':>20}" for n in names) + " | "
            + " ".join(f"{n + ' / ours':>17}" for n in names) + " | max |ort - ours|")
    lines = [header, "", cols, "-" * len(cols)]
    for threads in dict.fromkeys(r["threads"] for r in result["rows"]):
        rows = [r for r in result["rows"] if r["threads"] == threads]
        for r in rows + [None]:
            times = ({k: sum(x["times"][k] for x in rows) for k in ["ours"] + names}
                     if r is None else r["times"])
            label = "total" if r is None else r["shape"]["name"]
            diff = "" if r is None else ", ".join(f"{r['max_abs_diff'][n]:.1e}" for n in names)
            lines.append(f"{label:<10} {threads:>3} | {times['ours'] * 1e3:>8.2f} "
                         + " ".join(f"{times[n] * 1e3:>20.2f}" for n in names) + " | "
                         + " ".join(f"{times[n] / times['ours']:>16.1f}x" for n in names)
                         + f" | {diff}")
    return "\n".join(lines)


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
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.25
    for i, kind in enumerate(PASSES):
        speedups = [r["unfold"]["times"][kind] / r["ours"]["times"][kind] for r in rows]
        axes[0].bar([j + (i - 1) * width for j in range(len(rows))], speedups, width, label=kind)
        floors = [r["ours"]["times"][kind] / r["floor"][kind] for r in rows]
        axes[1].bar([j + (i - 1) * width for j in range(len(rows))], floors, width, label=kind)
    axes[0].set_title("speed-up over the unfold formulation")
    axes[1].set_title("our time / floor (1 = at the machine's limit)")
    for ax in axes:
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels(names, rotation=30)
        ax.legend()
    fig.suptitle(result["header"], fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def write_markdown(results: List[Dict], extra: List[str], path: str, command: str) -> None:
    with open(path, "w") as f:
        f.write("# Benchmark results\n\n")
        f.write(f"Generated by `{command}` on {results[0]['date']}; regenerate with the same "
                "command. Timings are medians on a shared machine: compare ratios within one "
                "run.\n\n")
        f.write(f"Machine: {results[0]['machine']}\n\n")
        for text in [format_table(r) for r in results] + extra:
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


DTYPES = ("float32", "float64", "bfloat16", "float16")


def run_config(args, device, shapes, dtype_name, threads, step) -> Dict:
    """One table: every shape, both implementations, one dtype and thread count."""
    import involution

    dtype = getattr(torch, dtype_name)
    rates = machine_rates(device, threads)
    header = (f"involution {involution.__version__} vs unfold formulation | torch "
              f"{torch.__version__} | {device.type} {dtype_name} batch {args.batch} | "
              f"{threads} threads | copy {rates['copy_bytes_per_s'] / 1e9:.1f} GB/s, "
              f"matmul {2 * rates['matmul_macs_per_s'] / 1e9:.0f} GFLOP/s | "
              f"medians of {args.repeats}")
    result = {"header": header, "machine": machine_description(device),
              "date": time.strftime("%Y-%m-%d"), "dtype": dtype_name, "threads": threads,
              "rates": rates, "rows": []}
    element_size = torch.empty((), dtype=dtype).element_size()
    for shape in shapes:
        row = {"shape": shape._asdict(), "max_abs_diff": max_abs_diff(shape, args, dtype, device)}
        for impl in implementations(device):
            step(f"{shape.name} {impl} {dtype_name} x{threads}")
            row[impl] = run_worker({
                "impl": impl, "shape": shape._asdict(), "batch": args.batch,
                "dtype": dtype_name, "device": args.device, "threads": threads,
                "repeats": args.repeats, "warmup": args.warmup})
        row["work"] = pass_bytes_and_macs(shape, args.batch, element_size)
        row["floor"] = {k: max(b / rates["copy_bytes_per_s"], m / rates["matmul_macs_per_s"])
                        for k, (b, m) in row["work"].items()}
        row["io_bytes"] = (args.batch * shape.channels * (shape.size ** 2 + shape.out ** 2)
                           + args.batch * shape.groups * shape.kernel ** 2 * shape.out ** 2
                           ) * element_size
        result["rows"].append(row)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32",
                        help="float32, float64, bfloat16 or float16; a comma-separated list "
                             "runs one table per dtype, side by side in one run")
    parser.add_argument("--batch", type=int, default=None, help="default: 8 on CPU, 64 on CUDA")
    parser.add_argument("--shapes", default="all",
                        help="comma-separated shape names, e.g. stage1,stage2 (default: all)")
    parser.add_argument("--threads", default=str(torch.get_num_threads()),
                        help="intra-op threads; a comma-separated list (e.g. 1,2) runs one "
                             "table per count")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--plot", metavar="PNG", help="also plot speed-ups and floor ratios")
    parser.add_argument("--markdown", metavar="PATH", help="also write a results page")
    parser.add_argument("--onnxruntime", action="store_true",
                        help="also time the forward of the op exported with involution.onnx in "
                             "onnxruntime, next to ours (CPU, float32; needs onnx, onnxscript "
                             "and onnxruntime)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0

    device = torch.device(args.device)
    if args.batch is None:
        args.batch = 64 if device.type == "cuda" else 8
    names = args.shapes.split(",")
    shapes = REDNET50_SHAPES if args.shapes == "all" else [
        s for s in REDNET50_SHAPES if s.name in names]
    if not shapes:
        parser.error(f"no shape matches {args.shapes!r}; known: "
                     + ", ".join(s.name for s in REDNET50_SHAPES))
    dtypes = args.dtype.split(",")
    for d in dtypes:
        if d not in DTYPES:
            parser.error(f"unknown dtype {d!r}; choose from {', '.join(DTYPES)}")
    threads = [int(t) for t in str(args.threads).split(",")]
    configs = [(d, t) for d in dtypes for t in threads]

    results = []
    total = len(configs) * len(shapes) * len(implementations(device))
    if len(configs) > 1:
        total += len(shapes)
    if args.onnxruntime:
        if device.type != "cpu":
            parser.error(f"--onnxruntime runs on the CPU only, got --device {args.device}")
        missing = [m for m in ("onnx", "onnxscript", "onnxruntime")
                   if importlib.util.find_spec(m) is None]
        if missing:
            parser.error(f"--onnxruntime needs {', '.join(missing)}: pip install onnx==1.23.2 "
                         "onnxscript==0.7.2 onnxruntime==1.32.0")
        total += len(shapes) * len(threads)
    done_counter = iter(range(total))

    def step(label):
        progress(next(done_counter), total, label)

    for dtype_name, n_threads in configs:
        results.append(run_config(args, device, shapes, dtype_name, n_threads, step))
    comparison = run_comparison(args, device, shapes, configs, step) if len(configs) > 1 else None
    deployment = run_onnxruntime(args, shapes, threads, step) if args.onnxruntime else None
    progress(total, total, "done")

    checks = check_targets(results, comparison, args)
    extra = ([format_comparison(comparison, args.batch)] if comparison else []) + (
        [format_targets(checks)] if checks else []) + (
        [format_onnxruntime(deployment)] if deployment else [])
    text = "\n\n".join([format_table(r) for r in results] + extra)
    print(text)
    for path in (args.json, args.plot, args.markdown):
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"tables": results, "comparison": comparison, "onnxruntime": deployment,
                       "targets": [{"target": t, "measured": v, "met": ok}
                                   for t, v, ok in checks]}, f, indent=2)
    if args.plot:
        write_plot(results[0], args.plot)
    if args.markdown:
        write_markdown(results, extra, args.markdown,
                       "python -m involution.benchmark " + " ".join(argv or sys.argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
