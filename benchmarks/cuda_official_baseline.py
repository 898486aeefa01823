"""The official involution CUDA kernels' design as a timed baseline, through CuPy.

The official implementation (github.com/d-li14/involution,
cls/mmcls/models/utils/involution_cuda.py, MIT licence) compiles three kernels per layer with
NVRTC through CuPy, every size, stride, padding and dilation substituted into the source as a
literal:
  * forward: one thread per output element (b, c, oh, ow), 32-bit indices, taps unrolled; each
    thread reads its 49 weights, so every weight is read by each of the group's 16 channels;
  * grad-input: one thread per input element, the gather form (taps that hit an output pixel);
  * grad-weight: one thread per weight element (b, g, kh, kw, oh, ow), summing over the group's
    channels, so grad_output and the input are re-read by every tap;
  * blocks of 1024 threads, float32/float64 only, accumulation in the storage type.
The kernels below are written for this harness from that description (not copied). bfloat16 is
an extension the official code lacks: loads widen to float, sums are float, the result is rounded
to nearest even (marked "bf16*" in the table).

On the GPU machine (H200, torch 2.11 + cupy-cuda13x, no network), from the project root after the
op library is built in place (benchmarks/gpu_check.sh does both):
    PYTHONPATH=. python3 benchmarks/cuda_official_baseline.py
    (options: --batch 64, --dtypes float32,bfloat16)
Without a GPU, to write a host harness (see below):
    python3 benchmarks/cuda_official_baseline.py --emit-host-check DIR
"""

import argparse
import math
import os
import statistics
import sys

SHAPES = [  # name, C, H(=W), G, K, stride; padding (K-1)//2, dilation 1
    ("stem", 32, 112, 2, 3, 1), ("stage1", 64, 56, 4, 7, 1), ("stage2", 128, 28, 8, 7, 1),
    ("stage2-s2", 128, 56, 8, 7, 2), ("stage3", 256, 14, 16, 7, 1),
    ("stage3-s2", 256, 28, 16, 7, 2), ("stage4", 512, 7, 32, 7, 1),
    ("stage4-s2", 512, 14, 32, 7, 2)]
THREADS = 1024  # the official block size

KERNELS = r"""
#if ELEM_BF16
typedef unsigned short elem_t;
__device__ __forceinline__ float ld(const elem_t* p) {
  return __uint_as_float(((unsigned)*p) << 16);
}
__device__ __forceinline__ elem_t st(float f) {
  unsigned u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (elem_t)0x7fc0;   // NaN
  return (elem_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);       // round to nearest even
}
#else
typedef float elem_t;
__device__ __forceinline__ float ld(const elem_t* p) { return *p; }
__device__ __forceinline__ elem_t st(float f) { return f; }
#endif

#define EACH(i, n) \
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += blockDim.x * gridDim.x)
#define CPG (C / G)
#define X_AT(n, c, r, q) (((((n) * C + (c)) * H) + (r)) * W + (q))
#define Y_AT(n, c, r, q) (((((n) * C + (c)) * OH) + (r)) * OW + (q))
#define W_AT(n, g, u, v, r, q) \
  ((((((((n) * G + (g)) * KH + (u)) * KW) + (v)) * OH + (r)) * OW) + (q))

extern "C" __global__ void involution_fwd(const elem_t* __restrict__ x,
                                          const elem_t* __restrict__ w, elem_t* __restrict__ y) {
  EACH(i, NB * C * OH * OW) {
    const int oq = i % OW, orow = (i / OW) % OH, c = (i / (OW * OH)) % C, n = i / (OW * OH * C);
    const int g = c / CPG;
    float acc = 0.f;
#pragma unroll
    for (int u = 0; u < KH; ++u) {
#pragma unroll
      for (int v = 0; v < KW; ++v) {
        const int r = orow * SH - PH + u * DH, q = oq * SW - PW + v * DW;
        if (r >= 0 && r < H && q >= 0 && q < W) {
          acc += ld(w + W_AT(n, g, u, v, orow, oq)) * ld(x + X_AT(n, c, r, q));
        }
      }
    }
    y[i] = st(acc);
  }
}

extern "C" __global__ void involution_grad_input(const elem_t* __restrict__ gy,
                                                 const elem_t* __restrict__ w,
                                                 elem_t* __restrict__ gx) {
  EACH(i, NB * C * H * W) {
    const int q = i % W, r = (i / W) % H, c = (i / (W * H)) % C, n = i / (W * H * C);
    const int g = c / CPG;
    float acc = 0.f;
#pragma unroll
    for (int u = 0; u < KH; ++u) {
#pragma unroll
      for (int v = 0; v < KW; ++v) {
        const int a = r + PH - u * DH, b = q + PW - v * DW;
        // C's remainder keeps the sign: a negative multiple of the stride passes this test
        // and is rejected by the range check below, as in the official kernel.
        if (a % SH == 0 && b % SW == 0) {
          const int orow = a / SH, oq = b / SW;
          if (orow >= 0 && orow < OH && oq >= 0 && oq < OW) {
            acc += ld(w + W_AT(n, g, u, v, orow, oq)) * ld(gy + Y_AT(n, c, orow, oq));
          }
        }
      }
    }
    gx[i] = st(acc);
  }
}

extern "C" __global__ void involution_grad_weight(const elem_t* __restrict__ gy,
                                                  const elem_t* __restrict__ x,
                                                  elem_t* __restrict__ gw) {
  EACH(i, NB * G * KH * KW * OH * OW) {
    const int oq = i % OW, orow = (i / OW) % OH, v = (i / (OW * OH)) % KW;
    const int u = (i / (OW * OH * KW)) % KH, g = (i / (OW * OH * KW * KH)) % G;
    const int n = i / (OW * OH * KW * KH * G);
    const int r = orow * SH - PH + u * DH, q = oq * SW - PW + v * DW;
    float acc = 0.f;
    if (r >= 0 && r < H && q >= 0 && q < W) {
#pragma unroll
      for (int c = g * CPG; c < (g + 1) * CPG; ++c) {
        acc += ld(gy + Y_AT(n, c, orow, oq)) * ld(x + X_AT(n, c, r, q));
      }
    }
    gw[i] = st(acc);
  }
}
"""


def out_size(h, k, s, p, d=1):
    return (h + 2 * p - d * (k - 1) - 1) // s + 1


def source(nb, c, h, w, g, kh, kw, s, p, d, bf16):
    """The kernels with every size a literal, as the official code compiles them."""
    oh, ow = out_size(h, kh, s[0], p[0], d[0]), out_size(w, kw, s[1], p[1], d[1])
    consts = dict(ELEM_BF16=int(bf16), NB=nb, C=c, H=h, W=w, G=g, KH=kh, KW=kw, OH=oh, OW=ow,
                  SH=s[0], SW=s[1], PH=p[0], PW=p[1], DH=d[0], DW=d[1])
    return "".join(f"#define {k} {v}\n" for k, v in consts.items()) + KERNELS, (oh, ow)


def run_gpu(args):
    import cupy
    import numpy as np
    import torch

    import involution  # noqa: F401 - our op library, for the side-by-side times
    ops = torch.ops.involution

    def launch(fn, n, *tensors):
        ptrs = tuple(np.uint64(t.data_ptr()) for t in tensors)
        with cupy.cuda.ExternalStream(torch.cuda.current_stream().cuda_stream):
            fn((min(math.ceil(n / THREADS), 2 ** 31 - 1),), (THREADS,), ptrs)

    def median_ms(calls, reps=20):
        def run_all():
            for c in calls:
                c()
        replay, g = run_all, None
        try:  # a CUDA graph keeps the launch overhead of small kernels out of the times
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                run_all()
            torch.cuda.current_stream().wait_stream(side)
            torch.cuda.synchronize()
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                run_all()
            replay = g.replay
        except Exception as e:  # noqa: BLE001
            print(f"  (no graph: {type(e).__name__}; eager timing)", file=sys.stderr)
            torch.cuda.synchronize()
            replay = run_all
        for _ in range(3):
            replay()
        torch.cuda.synchronize()
        ts = []
        for _ in range(reps):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            replay()
            b.record()
            b.synchronize()
            ts.append(a.elapsed_time(b) / len(calls))
        return statistics.median(ts)

    def rel(a, ref):
        return ((a.double() - ref.double()).norm() / ref.double().norm()).item()

    def copy_bandwidth():  # bytes/s of a 1 GiB device-to-device copy (read + write)
        src = torch.rand(1 << 28, device="cuda")
        dst = torch.empty_like(src)
        return 2 * src.numel() * 4 / (median_ms([lambda: dst.copy_(src)], 10) * 1e-3)

    bw = copy_bandwidth()
    print(f"official-design baseline (CuPy {cupy.__version__}, NVRTC) vs ours | "
          f"{torch.cuda.get_device_name(0)} | copy {bw / 1e12:.2f} TB/s | batch {args.batch}")
    head = (f"{'shape':<10} {'dtype':<6}| {'off fwd':>8} {'ours':>7} {'ratio':>6} | "
            f"{'off gi':>8} {'ours':>7} {'ratio':>6} | {'off gw':>8} {'ours':>7} {'ratio':>6} | "
            f"{'off xfl f/gi/gw':>16} | {'err f/gi/gw vs ours':>20}")
    lines = [head, "-" * len(head)]
    shapes = [s for s in SHAPES if args.shapes == "all" or s[0] in args.shapes.split(",")]
    for dt_name in args.dtypes.split(","):
        dt = getattr(torch, dt_name)
        label = "f32" if dt == torch.float32 else "bf16*"
        for (name, c, h, g, k, s) in shapes:
            p = (k - 1) // 2
            src, (oh, ow) = source(args.batch, c, h, h, g, k, k, (s, s), (p, p), (1, 1),
                                   dt == torch.bfloat16)
            mod = cupy.RawModule(code=src, options=("--std=c++14",))
            kf, ki, kw_ = (mod.get_function(n) for n in
                           ("involution_fwd", "involution_grad_input", "involution_grad_weight"))
            x = torch.randn(args.batch, c, h, h, device="cuda").to(dt)
            w = torch.randn(args.batch, g, k, k, oh, ow, device="cuda").to(dt)
            gy = torch.randn(args.batch, c, oh, ow, device="cuda").to(dt)
            y, gx, gw = torch.empty_like(gy), torch.empty_like(x), torch.empty_like(w)
            st, pd, dl = [s, s], [p, p], [1, 1]
            off = {
                "fwd": lambda: launch(kf, y.numel(), x, w, y),
                "gi": lambda: launch(ki, gx.numel(), gy, w, gx),
                "gw": lambda: launch(kw_, gw.numel(), gy, x, gw),
            }
            ours = {
                "fwd": lambda: ops.involution2d(x, w, st, pd, dl),
                "gi": lambda: ops._involution2d_backward_input(gy, w, [h, h], st, pd, dl),
                "gw": lambda: ops._involution2d_backward_weight(gy, x, [k, k], g, st, pd, dl),
            }
            for f in off.values():
                f()
            torch.cuda.synchronize()
            err = [rel(y, ours["fwd"]()), rel(gx, ours["gi"]()), rel(gw, ours["gw"]())]
            t_off = {key: median_ms([f]) for key, f in off.items()}
            t_ours = {key: median_ms([f]) for key, f in ours.items()}
            es = x.element_size()
            floor = (x.numel() + w.numel() + y.numel()) * es / bw * 1e3
            cells = " | ".join(f"{t_off[key] * 1e3:8.1f} {t_ours[key] * 1e3:7.1f} "
                               f"{t_off[key] / t_ours[key]:5.2f}x" for key in ("fwd", "gi", "gw"))
            xfl = "/".join(f"{t_off[key] / floor:.1f}" for key in ("fwd", "gi", "gw"))
            lines.append(f"{name:<10} {label:<6}| {cells} | {xfl:>16} | "
                         + "/".join(f"{e:.0e}" for e in err))
            print(lines[-1], flush=True)
            x = w = gy = y = gx = gw = mod = None  # free the device memory before the next shape
            torch.cuda.empty_cache()
    print("\ntimes in microseconds; ratio = official-design time / ours (> 1: ours faster); "
          "xfl = official time / DRAM floor; bf16* = the official design with bfloat16 storage "
          "(not in the official code)")
    print("\n".join(lines))
    return 0


HOST_HARNESS = r"""
// Host emulation of the baseline kernels (no GPU): one emulated thread after another.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>
#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__
struct D3 { int x = 0; };
static D3 blockIdx, blockDim, threadIdx, gridDim;
static inline float __uint_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }
static inline unsigned __float_as_uint(float f) { unsigned u; std::memcpy(&u, &f, 4); return u; }
#include "kernels.inc"
template <class F> void run(int n, F f) {
  blockDim.x = 37; gridDim.x = 5;  // a small grid: every thread takes several strides
  for (int b = 0; b < gridDim.x; ++b) for (int t = 0; t < blockDim.x; ++t) {
    blockIdx.x = b; threadIdx.x = t; f();
  }
}
static std::vector<elem_t> load(const char* p, size_t n) {
  std::vector<elem_t> v(n); FILE* f = std::fopen(p, "rb");
  if (!f || std::fread(v.data(), sizeof(elem_t), n, f) != n) { std::perror(p); std::exit(1); }
  std::fclose(f); return v;
}
static void save(const char* p, const std::vector<elem_t>& v) {
  FILE* f = std::fopen(p, "wb"); std::fwrite(v.data(), sizeof(elem_t), v.size(), f); std::fclose(f);
}
int main() {
  const size_t nx = (size_t)NB * C * H * W, ny = (size_t)NB * C * OH * OW,
               nw = (size_t)NB * G * KH * KW * OH * OW;
  auto x = load("x.bin", nx), w = load("w.bin", nw), gy = load("gy.bin", ny);
  std::vector<elem_t> y(ny), gx(nx), gw(nw);
  run(0, [&] { involution_fwd(x.data(), w.data(), y.data()); });
  run(0, [&] { involution_grad_input(gy.data(), w.data(), gx.data()); });
  run(0, [&] { involution_grad_weight(gy.data(), x.data(), gw.data()); });
  save("y.bin", y); save("gx.bin", gx); save("gw.bin", gw);
  return 0;
}
"""


def emit_host_check(directory):
    """Writes, for a few small geometries, the kernels as host C++ plus inputs; `check.sh` in the
    directory compiles and runs each and compares with the involution CPU op (float64)."""
    import torch

    import involution  # noqa: F401
    ops = torch.ops.involution
    os.makedirs(directory, exist_ok=True)
    cases = [(2, 8, 9, 11, 2, 3, 5, (1, 2), (1, 2), (1, 1), False),
             (1, 6, 10, 7, 3, 4, 3, (3, 1), (0, 3), (2, 2), False),
             (1, 32, 14, 14, 2, 7, 7, (2, 2), (3, 3), (1, 1), False),
             (2, 8, 9, 11, 2, 3, 5, (1, 2), (1, 2), (1, 1), True),
             (1, 32, 14, 14, 2, 7, 7, (2, 2), (3, 3), (1, 1), True)]
    script = ["#!/bin/sh", "set -e", "cd \"$(dirname \"$0\")\""]
    for i, (nb, c, h, w_, g, kh, kw, s, p, d, bf16) in enumerate(cases):
        sub = os.path.join(directory, f"case{i}")
        os.makedirs(sub, exist_ok=True)
        src, (oh, ow) = source(nb, c, h, w_, g, kh, kw, s, p, d, bf16)
        with open(os.path.join(sub, "kernels.inc"), "w") as f:
            f.write(src)
        with open(os.path.join(sub, "harness.cpp"), "w") as f:
            f.write(HOST_HARNESS)
        gen = torch.Generator().manual_seed(i)
        dt = torch.bfloat16 if bf16 else torch.float32
        x = torch.randn(nb, c, h, w_, generator=gen).to(dt)
        w = torch.randn(nb, g, kh, kw, oh, ow, generator=gen).to(dt)
        gy = torch.randn(nb, c, oh, ow, generator=gen).to(dt)
        for name, t in (("x", x), ("w", w), ("gy", gy)):
            t.contiguous().view(torch.int16 if bf16 else torch.float32).numpy().tofile(
                os.path.join(sub, f"{name}.bin"))
        a = (list(s), list(p), list(d))
        ref = {"y": ops.involution2d(x.double(), w.double(), *a),
               "gx": ops._involution2d_backward_input(gy.double(), w.double(), [h, w_], *a),
               "gw": ops._involution2d_backward_weight(gy.double(), x.double(), [kh, kw], g, *a)}
        for name, t in ref.items():
            t.numpy().tofile(os.path.join(sub, f"{name}.ref"))
        script.append(f"(cd case{i} && g++ -O1 -std=c++17 harness.cpp -o harness && ./harness)")
    with open(os.path.join(directory, "check.sh"), "w") as f:
        f.write("\n".join(script) + "\n")
    print(f"wrote {len(cases)} cases to {directory}; run: sh {directory}/check.sh && python3 "
          f"{os.path.abspath(__file__)} --compare-host-check {directory}")


def compare_host_check(directory):
    import numpy as np
    worst, i = 0.0, 0
    while os.path.isdir(os.path.join(directory, f"case{i}")):
        sub = os.path.join(directory, f"case{i}")
        bf16 = open(os.path.join(sub, "kernels.inc")).read().startswith("#define ELEM_BF16 1")
        for name in ("y", "gx", "gw"):
            ref = np.fromfile(os.path.join(sub, f"{name}.ref"), dtype=np.float64)
            raw = np.fromfile(os.path.join(sub, f"{name}.bin"),
                              dtype=np.uint16 if bf16 else np.float32)
            got = ((raw.astype(np.uint32) << 16).view(np.float32) if bf16 else raw).astype(
                np.float64)
            err = np.linalg.norm(got - ref) / np.linalg.norm(ref)
            tol = 1e-2 if bf16 else 1e-5
            worst = max(worst, err / tol)
            print(f"case{i} {'bf16' if bf16 else 'f32 '} {name:<2}: rel err {err:.1e} "
                  f"{'ok' if err <= tol else 'FAIL'}")
        i += 1
    return 0 if worst <= 1 else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--shapes", default="all")
    ap.add_argument("--emit-host-check", metavar="DIR")
    ap.add_argument("--compare-host-check", metavar="DIR")
    args = ap.parse_args()
    if args.emit_host_check:
        emit_host_check(args.emit_host_check)
        return 0
    if args.compare_host_check:
        return compare_host_check(args.compare_host_check)
    return run_gpu(args)


if __name__ == "__main__":
    sys.exit(main())
