"""Two builds of the op library side by side: the stable-ABI one of this checkout against another
checkout's (e.g. one built against the full libtorch), on RedNet-50's shapes and on the
smallest ones, where a call's fixed cost (the boxed stable-ABI call, Python-registered
autograd) shows.

    python benchmarks/abi_compare.py --baseline /path/to/other/checkout [--rounds 5]

Each round runs one worker process per build, in alternating order; a worker imports the
`involution` package of its checkout (which must hold its built library), times every case
(median of its repeats) and reports. The table gives each case's median over rounds per build
and the median over rounds of the per-round ratio (this build / baseline).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# As run.py's workers: the heap keeps what it was given (reserve_heap), big blocks come from it.
WORKER_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 * 2 ** 20),
                     "MALLOC_TRIM_THRESHOLD_": str(2 ** 40)}

# name, batch, channels, size, groups, kernel, stride, repeats (calls per timing)
SMALL = [
    ("tiny-4x8x8-k3", 1, 4, 8, 2, 3, 1, 200),
    ("small-16x14x14-k7", 1, 16, 14, 1, 7, 1, 50),
]


def worker(checkout: str, threads: int, reps: int) -> dict:
    sys.path.insert(0, checkout)
    import torch

    import involution
    from measure import REDNET50_SHAPES, reserve_heap

    assert involution.__file__.startswith(checkout), involution.__file__
    torch.set_num_threads(threads)
    reserve_heap()  # no first-touch page faults inside the timings (see measure.py)
    ops = torch.ops.involution
    results = {}

    def timed(fn, calls):
        for _ in range(3):  # warm-up
            fn()
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            times.append((time.perf_counter() - start) / calls)
        return statistics.median(times)

    cases = [(s.name, 8, s.channels, s.size, s.groups, s.kernel, s.stride, 1)
             for s in REDNET50_SHAPES] + SMALL
    gen = torch.Generator().manual_seed(0)
    for name, batch, c, size, g, k, s, calls in cases:
        p = (k - 1) // 2
        o = (size + 2 * p - k) // s + 1
        r = max(c // 4, 1)
        x = torch.randn(batch, c, size, size, generator=gen)
        w = torch.randn(batch, g, k, k, o, o, generator=gen)
        z = torch.randn(batch, r, o, o, generator=gen)
        sw = torch.randn(g * k * k, r, 1, 1, generator=gen) / r ** 0.5
        sb = torch.randn(g * k * k, generator=gen)
        window = ([s, s], [p, p], [1, 1])

        def unfused_forward():
            with torch.no_grad():
                ops.involution2d(x, w, *window)

        def fused_forward():
            with torch.no_grad():
                ops.fused_involution2d(x, z, sw, sb, [k, k], *window)

        xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()
        zg, swg, sbg = z.clone().requires_grad_(), sw.clone().requires_grad_(), \
            sb.clone().requires_grad_()

        def unfused_training():
            ops.involution2d(xg, wg, *window).sum().backward()

        def fused_training():
            ops.fused_involution2d(xg, zg, swg, sbg, [k, k], *window).sum().backward()

        for label, fn in (("forward", unfused_forward), ("forward+backward", unfused_training),
                          ("fused forward", fused_forward),
                          ("fused forward+backward", fused_training)):
            results[f"{name} | {label}"] = timed(fn, calls)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", help="the other checkout (built)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--reps", type=int, default=5, help="timings per case in a worker")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.threads, args.reps)))
        return
    if not args.baseline:
        parser.error("--baseline is required")
    builds = {"stable": ROOT, "baseline": os.path.abspath(args.baseline)}
    runs = {b: [] for b in builds}
    for round_ in range(args.rounds):
        order = list(builds) if round_ % 2 == 0 else list(reversed(builds))
        for b in order:
            out = subprocess.run(
                [sys.executable, "-P", __file__, "--worker", builds[b], "--threads",
                 str(args.threads), "--reps", str(args.reps)],
                capture_output=True, text=True, check=True, cwd=HERE,
                env={**os.environ, **WORKER_MALLOC_ENV, "PYTHONPATH": HERE})
            runs[b].append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr)
    print(f"{args.rounds} rounds, {args.threads} threads, float32; times are medians over "
          "rounds, ratio = median over rounds of stable / baseline")
    print(f"{'case':52s} {'baseline':>12s} {'stable':>12s} {'ratio':>7s}")
    for case in runs["stable"][0]:
        base = statistics.median(r[case] for r in runs["baseline"])
        new = statistics.median(r[case] for r in runs["stable"])
        ratio = statistics.median(s[case] / b[case]
                                  for s, b in zip(runs["stable"], runs["baseline"]))

        def fmt(t):
            return f"{t * 1e3:9.3f} ms" if t >= 1e-3 else f"{t * 1e6:9.1f} us"

        print(f"{case:52s} {fmt(base):>12s} {fmt(new):>12s} {ratio:7.3f}")


if __name__ == "__main__":
    main()
