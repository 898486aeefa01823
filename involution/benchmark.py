"""Benchmark: the involution op against the pure-PyTorch unfold formulation, on RedNet shapes.

    python -m involution.benchmark                 # CPU, float32, batch 8, RedNet-50's shapes
    python -m involution.benchmark --dtype bfloat16 --threads 1 --json out.json

For each shape it times forward, backward (both gradients) and forward+backward of both
implementations side by side (medians after warm-up), and prints the speed-up, the largest
difference between the two outputs, and our forward's achieved memory traffic (bytes of input,
weight and output that any implementation must move, over the time).
"""

import argparse
import json
import platform
import statistics
import sys
import time
from typing import Callable, Dict, List, NamedTuple

import torch

import involution
from involution.reference import involution2d_unfold


class Shape(NamedTuple):
    name: str
    channels: int
    size: int
    groups: int
    kernel: int = 7
    stride: int = 1

    @property
    def out(self) -> int:
        pad = (self.kernel - 1) // 2
        return (self.size + 2 * pad - (self.kernel - 1) - 1) // self.stride + 1


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


def median_time(fn: Callable[[], None], repeats: int, warmup: int, sync: Callable[[], None]):
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(impl, x, w, params, repeats, warmup, sync) -> Dict[str, float]:
    """Median seconds of forward, backward (both gradients) and forward+backward."""
    x = x.detach().requires_grad_()
    w = w.detach().requires_grad_()
    gy = torch.randn_like(impl(x, w, *params))

    def forward():
        with torch.no_grad():
            impl(x, w, *params)

    y = impl(x, w, *params)

    def backward():
        torch.autograd.grad(y, (x, w), gy, retain_graph=True)

    def forward_backward():
        torch.autograd.grad(impl(x, w, *params), (x, w), gy)

    return {
        "forward": median_time(forward, repeats, warmup, sync),
        "backward": median_time(backward, repeats, warmup, sync),
        "forward+backward": median_time(forward_backward, repeats, warmup, sync),
    }


def run_shape(shape: Shape, args, dtype, device, sync) -> Dict:
    gen = torch.Generator().manual_seed(0)
    b, k, o = args.batch, shape.kernel, shape.out
    x = torch.randn(b, shape.channels, shape.size, shape.size, generator=gen).to(device, dtype)
    w = torch.randn(b, shape.groups, k, k, o, o, generator=gen).to(device, dtype)
    pad = (k - 1) // 2
    params = ([shape.stride] * 2, [pad] * 2, [1, 1])
    ours = torch.ops.involution.involution2d
    with torch.no_grad():
        diff = (ours(x, w, *params).double() - involution2d_unfold(x, w, *params).double())
    row = {
        "shape": shape._asdict(),
        "max_abs_diff": diff.abs().max().item(),
        "ours": measure(ours, x, w, params, args.repeats, args.warmup, sync),
        "unfold": measure(involution2d_unfold, x, w, params, args.repeats, args.warmup, sync),
    }
    elem = x.element_size()
    row["forward_bytes"] = (x.numel() + w.numel() + b * shape.channels * o * o) * elem
    return row


def format_table(rows: List[Dict], header: str) -> str:
    lines = [header, ""]
    cols = f"{'shape':<11} {'C':>4} {'HxW':>7} {'G':>3} {'K':>2} {'s':>2} | {'pass':<16} " \
           f"{'ours ms':>9} {'unfold ms':>10} {'speed-up':>9} | {'fwd GB/s':>8} {'max |diff|':>10}"
    lines += [cols, "-" * len(cols)]
    for r in rows:
        s = r["shape"]
        for i, kind in enumerate(("forward", "backward", "forward+backward")):
            ours, unfold = r["ours"][kind], r["unfold"][kind]
            lead = (f"{s['name']:<11} {s['channels']:>4} {s['size']:>3}x{s['size']:<3} "
                    f"{s['groups']:>3} {s['kernel']:>2} {s['stride']:>2}") if i == 0 else " " * 34
            tail = (f"{r['forward_bytes'] / ours / 1e9:>8.1f} {r['max_abs_diff']:>10.2e}"
                    if i == 0 else "")
            lines.append(f"{lead} | {kind:<16} {ours * 1e3:>9.2f} {unfold * 1e3:>10.2f} "
                         f"{unfold / ours:>8.1f}x | {tail}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32",
                        choices=["float32", "float64", "bfloat16", "float16"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--shapes", default="all",
                        help="comma-separated shape names, e.g. stage1,stage2 (default: all)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    shapes = REDNET50_SHAPES if args.shapes == "all" else [
        s for s in REDNET50_SHAPES if s.name in args.shapes.split(",")]
    if not shapes:
        parser.error(f"no shape matches {args.shapes!r}; known: "
                     + ", ".join(s.name for s in REDNET50_SHAPES))

    header = (f"involution {involution.__version__} vs unfold formulation | torch "
              f"{torch.__version__} | {device.type} {args.dtype} batch {args.batch} | "
              f"{torch.get_num_threads()} threads | {platform.processor() or platform.machine()} | "
              f"medians of {args.repeats} runs")
    rows = []
    for i, shape in enumerate(shapes):
        print(f"[{i + 1}/{len(shapes)}] {shape.name} ...", file=sys.stderr, flush=True)
        rows.append(run_shape(shape, args, dtype, device, sync))
    print(format_table(rows, header))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"header": header, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
