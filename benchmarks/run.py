"""Benchmark: the involution op against its peers on RedNet-50's shapes, and RedNet against
ResNet end to end.

    python benchmarks/run.py                  # CPU, float32, batch 8, RedNet-50's shapes
    python benchmarks/run.py --dtype float32,bfloat16 --threads 2,1 --markdown RESULTS.md
    python benchmarks/run.py --device cuda --dtype float32,float16   # batch 64
    python benchmarks/run.py --onnxruntime    # and the op exported to ONNX, in onnxruntime
    python benchmarks/run.py --models         # RedNet-26/50 against ResNet-26/50 (endtoend.py)

Peers (measure.py): the eager unfold formulation, torch.compile of it (inductor), and
torchvision's deform_conv2d set up to compute involution. Each (shape, implementation) runs in
a fresh worker process, so none inherits another's heap; the worker measures the peak memory
rise of one forward+backward (max RSS on the CPU, the allocator's peak on CUDA), then times
forward, backward and forward+backward in interleaved rounds once the heap is steady (see
measure.HEAP_RESERVE): medians of --repeats rounds after at least --warmup rounds. Beside each
table (unless --no-fused), the fused op against the span conv + op, both in one worker per
shape, interleaved (measure.fused_worker).

With several dtypes or thread counts, one table per configuration is followed by a side-by-side
table of our op alone: one worker runs every configuration once per round, so the ratios
between them (1 vs 2 threads, bfloat16 vs float32) are not skewed by the shared machine's
drift. Before each timed pass a small parallel op wakes the thread pool, as the ops before it
in a network would. On the CPU at batch 8 with float32 the program ends with the project's
targets, each marked met or MISSED.
"""

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

import torch

import deployment
import endtoend
import measure
import report
from measure import IMPLEMENTATIONS, REDNET50_SHAPES

WORKERS = {"op": measure.op_worker, "fused": measure.fused_worker,
           "compare": measure.compare_worker,
           "machine": measure.machine_worker, "onnxruntime": deployment.onnxruntime_worker,
           "models": endtoend.models_worker, "saved": endtoend.saved_worker}
DTYPES = ("float32", "float64", "bfloat16", "float16")

# glibc's malloc returns freed memory at the top of its heap to the system and serves large
# blocks by fresh mmaps, so a pass that follows another can page-fault its whole output anew (here
# about 1 ms per 3 MiB), depending on what ran before it. Workers keep freed blocks below 32 MiB
# (glibc's largest mmap threshold) for reuse, as a caching allocator does, so that timings
# measure the passes; larger blocks (the unfold formulation's) still come from fresh mmaps.
# Settings already in the environment are kept.
WORKER_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 * 2 ** 20),
                     "MALLOC_TRIM_THRESHOLD_": str(2 ** 40)}


def run_worker(spec: Dict, python: str = sys.executable) -> Dict:
    cmd = [python, os.path.abspath(__file__), "--worker", json.dumps(spec)]
    out = subprocess.run(cmd, capture_output=True, text=True,
                         env={**WORKER_MALLOC_ENV, **os.environ})
    if out.returncode != 0:
        raise RuntimeError(f"benchmark worker failed ({spec['kind']} {spec.get('impl', '')} "
                           f"{spec.get('shape', {}).get('name', '')}):\n" + out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def progress(done: int, total: int, label: str) -> None:
    width = 30
    filled = width * done // total
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {label:<28}")
    sys.stderr.flush()
    if done == total:
        sys.stderr.write("\n")


def available_peers(args) -> (List[str], List[str]):
    """The peers this run can time, and a note for each one it skips."""
    peers, notes = [], []
    for name in args.peers.split(","):
        if name == "deform_conv2d":
            python = args.torchvision_python or sys.executable
            probe = subprocess.run([python, "-c", "import torchvision.ops"],
                                   capture_output=True, text=True, cwd=tempfile.gettempdir())
            if probe.returncode != 0:
                notes.append("deform_conv2d skipped: torchvision cannot be imported by "
                             f"{python} ({(probe.stderr.strip().splitlines() or ['?'])[-1]}); "
                             "its wheels need the CUDA build of torch: pass "
                             "--torchvision-python with an interpreter that has both")
                continue
        peers.append(name)
    return peers, notes


def run_config(args, device, shapes, dtype_name, threads, peers, notes, step) -> Dict:
    """One table: every shape, our op and every peer, one dtype and thread count; and with
    args.fused, the fused op against the span conv + op on every shape (one worker per shape,
    both interleaved, 4 * --repeats rounds)."""
    import involution

    dtype = getattr(torch, dtype_name)
    rates = measure.machine_rates(device, threads)
    header = (f"involution {involution.__version__} and its peers | torch {torch.__version__} | "
              f"{device.type} {dtype_name} batch {args.batch} | {threads} threads | copy "
              f"{rates['copy_bytes_per_s'] / 1e9:.1f} GB/s, matmul "
              f"{2 * rates['matmul_macs_per_s'] / 1e9:.0f} GFLOP/s | medians of {args.repeats}")
    result = {"header": header, "machine": report.machine_description(device),
              "date": time.strftime("%Y-%m-%d"), "dtype": dtype_name, "threads": threads,
              "rates": rates, "peers": peers, "notes": notes, "rows": [],
              "fused": [] if args.fused else None}
    element_size = torch.empty((), dtype=dtype).element_size()
    op = measure.implementation("ours")
    with tempfile.TemporaryDirectory() as tmp:
        for shape in shapes:
            x, w, gy, params = measure.make_inputs(shape, args.batch, dtype, device)
            with torch.no_grad():
                y = op(x, w, *params)
            inputs = os.path.join(tmp, "inputs.pt")
            torch.save({k: v.cpu() for k, v in dict(x=x, w=w, gy=gy, y=y).items()}, inputs)
            row = {"shape": shape._asdict()}
            for impl in ["ours"] + peers:
                step(f"{shape.name} {impl} {dtype_name} x{threads}")
                python = args.torchvision_python if impl == "deform_conv2d" else None
                row[impl] = run_worker({
                    "kind": "op", "impl": impl, "inputs": inputs, "params": params,
                    "dtype": dtype_name, "device": args.device, "threads": threads,
                    "repeats": args.repeats, "warmup": args.warmup,
                    "budget_s": args.budget}, python or sys.executable)
            row["work"] = measure.pass_bytes_and_macs(shape, args.batch, element_size)
            row["floor"] = {k: max(b / rates["copy_bytes_per_s"],
                                   m / rates["matmul_macs_per_s"])
                            for k, (b, m) in row["work"].items()}
            row["io_bytes"] = (x.numel() + w.numel() + gy.numel()) * element_size
            result["rows"].append(row)
            if args.fused:
                step(f"{shape.name} fused {dtype_name} x{threads}")
                result["fused"].append({"shape": shape._asdict(), **run_worker({
                    "kind": "fused", "shape": shape._asdict(), "batch": args.batch,
                    "dtype": dtype_name, "device": args.device, "threads": threads,
                    "repeats": 4 * args.repeats, "warmup": args.warmup})})
    return result


def run_comparison(args, shapes, configs, step) -> Dict:
    """Our op's forward and forward+backward for every configuration, interleaved per shape."""
    rows = []
    for shape in shapes:
        step(f"{shape.name} side by side")
        rows.append({"shape": shape._asdict(), "times": run_worker({
            "kind": "compare", "shape": shape._asdict(), "batch": args.batch,
            "device": args.device, "configs": configs, "repeats": 4 * args.repeats,
            "warmup": args.warmup})["times"]})
    threads = sorted({t for _, t in configs})
    machine = None
    if len(threads) > 1:
        machine = run_worker({"kind": "machine", "device": args.device, "threads": threads,
                              "repeats": 4 * args.repeats, "warmup": 1})["times"]
    return {"configs": configs, "rounds": 4 * args.repeats, "rows": rows, "machine": machine}


def run_onnxruntime(args, shapes, threads: List[int], step) -> Dict:
    rows = []
    for n in threads:
        for shape in shapes:
            step(f"{shape.name} onnxruntime x{n}")
            rows.append({"shape": shape._asdict(), "threads": n, **run_worker({
                "kind": "onnxruntime", "shape": shape._asdict(), "batch": args.batch,
                "threads": n, "repeats": 4 * args.repeats, "warmup": args.warmup})})
    return {"batch": args.batch, "rounds": 4 * args.repeats, "rows": rows}


def parse_args(argv):
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
    parser.add_argument("--peers", default=",".join(IMPLEMENTATIONS[1:]),
                        help="comma-separated, from " + ", ".join(IMPLEMENTATIONS[1:]))
    parser.add_argument("--torchvision-python", metavar="PYTHON",
                        help="interpreter for the deform_conv2d worker (one whose torch and "
                             "torchvision import; default: this one)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--budget", type=float, default=20.0,
                        help="seconds per pass after which a slow peer stops at 3 runs")
    parser.add_argument("--fused", action=argparse.BooleanOptionalAction, default=True,
                        help="the fused op (kernel generated inside it) against the span conv "
                             "+ op, one table per configuration (default: on)")
    parser.add_argument("--models", action="store_true",
                        help="also RedNet-26/50 against ResNet-26/50 end to end (batch 8, "
                             "224x224, CPU; see endtoend.py)")
    parser.add_argument("--models-only", action="store_true", help="the models alone")
    parser.add_argument("--model-names", default=",".join(endtoend.MODELS))
    parser.add_argument("--model-rounds", type=int, default=5,
                        help="at least this many interleaved rounds per variant")
    parser.add_argument("--model-seconds", type=float, default=8.0,
                        help="and at least this many seconds of timed steps per model")
    parser.add_argument("--model-backends", default="eager,compile")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--plot", metavar="PNG", help="also plot peer ratios and floor ratios")
    parser.add_argument("--markdown", metavar="PATH", help="also write a results page")
    parser.add_argument("--onnxruntime", action="store_true",
                        help="also time the forward of the op exported with involution.onnx in "
                             "onnxruntime, next to ours (CPU, float32; needs onnx, onnxscript "
                             "and onnxruntime)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.torchvision_python:  # workers and probes run in other directories
        args.torchvision_python = os.path.abspath(args.torchvision_python)
    args.parser = parser
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        spec = json.loads(args.worker)
        print(json.dumps(WORKERS[spec["kind"]](spec)))
        return 0
    parser = args.parser
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
    unknown = set(args.peers.split(",")) - set(IMPLEMENTATIONS[1:])
    if unknown:
        parser.error(f"unknown peers {sorted(unknown)}; choose from {IMPLEMENTATIONS[1:]}")
    threads = [int(t) for t in str(args.threads).split(",")]
    configs = [(d, t) for d in dtypes for t in threads]
    if args.onnxruntime:
        if device.type != "cpu":
            parser.error(f"--onnxruntime runs on the CPU only, got --device {args.device}")
        missing = [m for m in ("onnx", "onnxscript", "onnxruntime")
                   if importlib.util.find_spec(m) is None]
        if missing:
            parser.error(f"--onnxruntime needs {', '.join(missing)}: pip install onnx==1.23.2 "
                         "onnxscript==0.7.2 onnxruntime==1.32.0")
    if (args.models or args.models_only) and device.type != "cpu":
        parser.error("--models runs on the CPU only")
    peers, notes = available_peers(args) if not args.models_only else ([], [])
    if peers and peers[0] != "unfold":
        parser.error("--peers must start with unfold (the targets are against it)")
    models = args.model_names.split(",") if args.models or args.models_only else []

    import involution  # noqa: F401  (registers the ops, for the check below)

    if args.fused and not torch._C._dispatch_has_kernel_for_dispatch_key(
            "involution::fused_involution2d", device.type.upper()):
        notes = notes + [f"fused skipped: fused_involution2d has no {device.type} kernel in "
                         "this build"]
        args.fused = False
    total = 0 if args.models_only else len(shapes) * (len(peers) + 2 * len(configs) - 1) + (
        len(shapes) * len(configs) if args.fused else 0) + (
        len(shapes) if len(configs) > 1 else 0) + (
        len(shapes) * len(threads) if args.onnxruntime else 0)
    variants = [v for v in endtoend.VARIANTS if v[1] in args.model_backends.split(",")]
    total += len(variants) + 1 if models else 0
    counter = iter(range(total))

    def step(label):
        progress(next(counter), total, label)

    results, comparison, deployed, end_to_end = [], None, None, None
    if not args.models_only:
        # The peers beyond the eager unfold formulation (which the targets use) in the first
        # configuration's table only: torch.compile and deform_conv2d take minutes per table.
        results = [run_config(args, device, shapes, d, t, peers if i == 0 else peers[:1],
                              notes if i == 0 else [], step)
                   for i, (d, t) in enumerate(configs)]
        comparison = run_comparison(args, shapes, configs, step) if len(configs) > 1 else None
        deployed = run_onnxruntime(args, shapes, threads, step) if args.onnxruntime else None
    if models:
        end_to_end = endtoend.run_models(run_worker, models, variants, threads[0],
                                         args.model_rounds, args.model_seconds, step)
    progress(total, total, "done")

    checks = report.check_targets(results, comparison, args) if results else []
    checks += endtoend.model_checks(end_to_end) if end_to_end else []
    extra = ([report.format_comparison(comparison, args.batch)] if comparison else []) + (
        [deployment.format_onnxruntime(deployed)] if deployed else []) + (
        [endtoend.format_models(end_to_end)] if end_to_end else []) + (
        [report.format_targets(checks)] if checks else [])
    print("\n\n".join([text for r in results for text in report.config_texts(r)] + extra))
    for path in (args.json, args.plot, args.markdown):
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"tables": results, "comparison": comparison, "onnxruntime": deployed,
                       "models": end_to_end, "targets": [
                           {"target": t, "measured": v, "met": ok} for t, v, ok in checks]}, f,
                      separators=(",", ":"))
    if args.plot and results:
        report.write_plot(results[0], args.plot)
    if args.markdown:
        report.write_markdown(results, extra, args.markdown, "python benchmarks/run.py "
                              + " ".join(argv if argv is not None else sys.argv[1:]),
                              report.machine_description(device))
    return 0


if __name__ == "__main__":
    sys.exit(main())
