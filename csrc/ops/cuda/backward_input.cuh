#pragma once
// CUDA gradient of involution with respect to the input, in the gather form (no atomics):
//   gx[b, c, i] = sum over taps k and output pixels o with i = o*s - p + k*d of
//                 w[b, g(c), k, o] * gy[b, c, o].
//
// Tiled kernel (the shapes of forward.cuh's tiled kernel): a thread owns S x kPixels
// consecutive input columns of one input row and a block of 4 channels (2 in float64; nvcc
// hoists every channel's loads, and more channels spill). The columns are taken by stride
// phase, as the CPU kernels do: input column m*S + r receives from tap v only when (r + p - v)
// is a multiple of S, at output column m + (r + p - v) / S. Grouping the thread's columns into
// the S classes e = (r + p) mod S makes the taps of each class a compile-time set (v = e,
// e + S, ...) and their output columns contiguous in m, so no lane multiplies a zero and there
// is no division or modulo in any loop over taps or channels. Rows (and depth) are walked the
// same way: only the tap rows with an exact output row are visited.
//   Hot loop (sm_90 SASS, make cuda-report), float32, K = 7: 2.22 instructions per FFMA at
//   S = 1 (per tap row 28 weight loads, then per channel 10 grad_output loads and 28 FFMA, and
//   the 64-bit address arithmetic), 2.71 at S = 2 (each class reads its own span).
//   Bytes: w (K*K per output pixel and group) plus grad_output and grad_input (C/G each), as
//   the forward; the weights are read once per 4 channels, from L2 after the first.
//   Predicted (not yet measured on a GPU): 1.5-2x the DRAM floor in float32.
//
// Generic kernel (any geometry, see cuda_kernels_apply): one thread per (batch, group, input
// pixel) and a 16-channel register block; the exact-division test of each tap is kept incrementally
// (quotient and remainder updated by subtraction), so the tap loops divide nothing.

#include "forward.cuh"

namespace involution {
namespace cuda {

// The output columns class E (taps v = E + S*k) of the thread's block reads: from `first`,
// kSpan of them.
template <int E, int K, int S>
struct InputClass {
  static constexpr int NV = (K - E + S - 1) / S;  // taps of this class
  static constexpr int kSpan = kPixels + NV - 1;  // output columns the class reads
  __device__ static int32_t first(const Slab& f, int32_t mb) {
    const int32_t r = ((E - f.padding[2]) % S + S) % S;  // the input column phase of class E
    return mb + (r + f.padding[2] - E) / S - (NV - 1);
  }
  __device__ static bool inside(const Slab& f, int32_t mb) {
    const int32_t c = first(f, mb);
    return c >= 0 && c + kSpan <= f.out[2];
  }
};

// One tap row of class E: acc[c][E][q] for the thread's pixels q of that class. kInside: every
// output column the class reads exists (no checks).
template <int E, int NC, int K, int S, bool kInside, typename T, typename Acc>
__device__ __forceinline__ void backward_input_class(const Slab& f, const T* __restrict__ gyr,
                                                     const T* __restrict__ wr, int32_t mb,
                                                     Acc (&acc)[NC][S][kPixels]) {
  using Class = InputClass<E, K, S>;
  constexpr int NV = Class::NV, kSpan = Class::kSpan;
  const int32_t first = Class::first(f, mb);
  // Tap E + S*k, pixel q reads output column first + q + NV - 1 - k.
  Acc w[NV][kPixels];
  const T* wt = wr + E * f.out_volume + first;
#pragma unroll
  for (int k = 0; k < NV; ++k, wt += S * f.out_volume) {
#pragma unroll
    for (int q = 0; q < kPixels; ++q) {
      const int s = q + NV - 1 - k;
      w[k][q] = kInside || in_range(first + s, f.out[2]) ? widen<Acc>(wt[s]) : Acc(0);
    }
  }
#pragma unroll
  for (int c = 0; c < NC; ++c) {
    const T* gp = gyr + c * f.out_volume + first;
    Acc gy[kSpan];
#pragma unroll
    for (int s = 0; s < kSpan; ++s) {
      gy[s] = kInside || in_range(first + s, f.out[2]) ? widen<Acc>(gp[s]) : Acc(0);
    }
#pragma unroll
    for (int k = 0; k < NV; ++k) {
#pragma unroll
      for (int q = 0; q < kPixels; ++q) acc[c][E][q] += w[k][q] * gy[q + NV - 1 - k];
    }
  }
}

// NC channels (gyc, gxc at the first of them) for the thread's S x kPixels input columns
// starting at column mb * S of input row (i0, i1).
template <int NC, int K, int S, bool kInside, typename T, typename Acc>
__device__ __forceinline__ void backward_input_channels(const Slab& f, const T* __restrict__ gyc,
                                                        const T* __restrict__ ws,
                                                        T* __restrict__ gxc, int32_t i0, int32_t i1,
                                                        int32_t mb) {
  Acc acc[NC][S][kPixels];
#pragma unroll
  for (int c = 0; c < NC; ++c) {
#pragma unroll
    for (int e = 0; e < S; ++e) {
#pragma unroll
      for (int q = 0; q < kPixels; ++q) acc[c][e][q] = Acc(0);
    }
  }
  // Depth: o0 = (i0 + p0 - t0*d0) / s0 when exact; quotient and remainder kept by subtraction.
  const int32_t n0 = i0 + f.padding[0];
  int32_t o0 = n0 / f.stride0, rem0 = n0 % f.stride0;
  const int32_t dq0 = f.dilation0 / f.stride0, dr0 = f.dilation0 % f.stride0;
  for (int32_t t0 = 0; t0 < f.kernel0; ++t0) {
    if (rem0 == 0 && in_range(o0, f.out[0])) {
      const int32_t n1 = i1 + f.padding[1];
#pragma unroll 1
      for (int32_t u = n1 % S; u < K && u <= n1; u += S) {
        const int32_t o1 = (n1 - u) / S;  // exact; S is a constant
        if (o1 >= f.out[1]) continue;
        const int32_t orow = (o0 * f.out[1] + o1) * f.out[2];
        const T* wr = ws + (t0 * K + u) * K * f.out_volume + orow;
        backward_input_class<0, NC, K, S, kInside>(f, gyc + orow, wr, mb, acc);
        if constexpr (S > 1) backward_input_class<1, NC, K, S, kInside>(f, gyc + orow, wr, mb, acc);
      }
    }
    o0 -= dq0;
    rem0 -= dr0;
    if (rem0 < 0) {
      rem0 += f.stride0;
      --o0;
    }
  }
  const int32_t row = (i0 * f.in[1] + i1) * f.in[2];
#pragma unroll
  for (int e = 0; e < S; ++e) {
    const int32_t r = ((e - f.padding[2]) % S + S) % S;
#pragma unroll
    for (int q = 0; q < kPixels; ++q) {
      const int32_t col = mb * S + r + S * q;
      if (col < f.in[2]) {
#pragma unroll
        for (int c = 0; c < NC; ++c)
          gxc[c * f.in_volume + row + col] = static_cast<T>(acc[c][e][q]);
      }
    }
  }
}

// All channels of the slab, NC at a time, then one at a time.
template <int NC, int K, int S, bool kInside, typename T, typename Acc>
__device__ __forceinline__ void backward_input_pixels(const Slab& f, const T* __restrict__ gys,
                                                      const T* __restrict__ ws, T* __restrict__ gxs,
                                                      int32_t i0, int32_t i1, int32_t mb) {
  int32_t c = 0;
  for (; c + NC <= f.cpg; c += NC) {
    backward_input_channels<NC, K, S, kInside, T, Acc>(f, gys + c * f.out_volume, ws,
                                                       gxs + c * f.in_volume, i0, i1, mb);
  }
  for (; c < f.cpg; ++c) {
    backward_input_channels<1, K, S, kInside, T, Acc>(f, gys + c * f.out_volume, ws,
                                                      gxs + c * f.in_volume, i0, i1, mb);
  }
}

// Work items of backward_input_tiled in one slab: (depth, row, block of S*kPixels columns).
__host__ __device__ inline int32_t backward_input_tiled_items(const Geometry& g) {
  const int64_t width = g.stride[2] * kPixels;
  return static_cast<int32_t>(g.in[0] * g.in[1] * ((g.in[2] + width - 1) / width));
}

template <typename T, typename Acc, int K, int S>
__global__ void __launch_bounds__(kThreads, kTiledBlocksPerSM)
    backward_input_tiled(const Geometry g, const T* __restrict__ gy, const T* __restrict__ w,
                         T* __restrict__ gx, int64_t slab0, int32_t slabs) {
  // Channels a thread accumulates at once; each tap row's weights serve all of them. nvcc
  // hoists every channel's grad_output loads ahead of the multiply-adds, so more channels spill
  // even with 255 registers.
  constexpr int kChannels = sizeof(Acc) > 4 || (sizeof(T) == 2 && S > 1) ? 2 : 4;
  const Slab f(g);
  const int32_t blocks = (f.in[2] + S * kPixels - 1) / (S * kPixels);
  const int32_t items = f.in[0] * f.in[1] * blocks;
  INVOLUTION_FOR_EACH_INDEX(index, slabs * items) {
    const int64_t bg = slab0 + index / items;
    const int32_t item = index % items;
    const T* gys = gy + bg * f.cpg * int64_t(f.out_volume);
    const T* ws = w + bg * K * K * f.kernel0 * int64_t(f.out_volume);
    T* gxs = gx + bg * f.cpg * int64_t(f.in_volume);
    const int32_t mb = item % blocks * kPixels;  // first column of the block, divided by S
    const int32_t i1 = item / blocks % f.in[1];
    const int32_t i0 = item / blocks / f.in[1];
    bool inside = InputClass<0, K, S>::inside(f, mb);
    if constexpr (S > 1) inside = inside && InputClass<1, K, S>::inside(f, mb);
    if (inside) {
      backward_input_pixels<kChannels, K, S, true, T, Acc>(f, gys, ws, gxs, i0, i1, mb);
    } else {
      backward_input_pixels<kChannels, K, S, false, T, Acc>(f, gys, ws, gxs, i0, i1, mb);
    }
  }
}

// Walks the taps t of one axis for input index i: the output index o = (i + p - t*d) / s is
// exact when rem == 0; quotient and remainder are updated by subtraction, not division.
struct TapWalk {
  int32_t o, rem, dq, dr, s;
  __host__ __device__ TapWalk(int32_t i, int64_t p, int64_t d, int64_t s_)
      // i + p < 2^32 and every other value < 2^31 (cuda_kernels_apply): 32-bit divisions.
      : o(static_cast<int32_t>(static_cast<uint32_t>(i + p) / static_cast<uint32_t>(s_))),
        rem(static_cast<int32_t>(static_cast<uint32_t>(i + p) % static_cast<uint32_t>(s_))),
        dq(static_cast<int32_t>(d) / static_cast<int32_t>(s_)),
        dr(static_cast<int32_t>(d) % static_cast<int32_t>(s_)),
        s(static_cast<int32_t>(s_)) {}
  __host__ __device__ bool hits(int64_t out) const { return rem == 0 && o >= 0 && o < out; }
  __host__ __device__ void next() {
    o -= dq;
    rem -= dr;
    if (rem < 0) {
      rem += s;
      --o;
    }
  }
};

// gx for every (slab, input pixel).
template <typename T, typename Acc>
__global__ void __launch_bounds__(kThreads)
    backward_input_generic(const Geometry g, const T* __restrict__ gy, const T* __restrict__ w,
                           T* __restrict__ gx) {
  const int32_t cpg = static_cast<int32_t>(g.channels) / static_cast<int32_t>(g.groups);
  const int32_t taps = static_cast<int32_t>(g.taps());
  const int32_t in_volume = static_cast<int32_t>(g.in_volume());
  const int32_t out_volume = static_cast<int32_t>(g.out_volume());
  INVOLUTION_FOR_EACH_SLAB_PIXEL(bg, pixel, g.batch * g.groups, in_volume) {
    const Pixel q = split(pixel, g.in);
    const T* wg = w + bg * taps * int64_t(out_volume);
    for (int32_t c0 = 0; c0 < cpg; c0 += kChannelBlock) {
      const int32_t n = cpg - c0 < kChannelBlock ? cpg - c0 : kChannelBlock;
      const T* gyc = gy + (bg * cpg + c0) * int64_t(out_volume);
      Acc acc[kChannelBlock];
#pragma unroll
      for (int cc = 0; cc < kChannelBlock; ++cc) acc[cc] = Acc(0);
      TapWalk a0(q.p[0], g.padding[0], g.dilation[0], g.stride[0]);
      for (int32_t t0 = 0; t0 < g.kernel[0]; ++t0, a0.next()) {
        if (!a0.hits(g.out[0])) continue;
        TapWalk a1(q.p[1], g.padding[1], g.dilation[1], g.stride[1]);
        for (int32_t t1 = 0; t1 < g.kernel[1]; ++t1, a1.next()) {
          if (!a1.hits(g.out[1])) continue;
          TapWalk a2(q.p[2], g.padding[2], g.dilation[2], g.stride[2]);
          for (int32_t t2 = 0; t2 < g.kernel[2]; ++t2, a2.next()) {
            if (!a2.hits(g.out[2])) continue;
            const int32_t o =
                (a0.o * static_cast<int32_t>(g.out[1]) + a1.o) * static_cast<int32_t>(g.out[2]) +
                a2.o;
            const int32_t k =
                (t0 * static_cast<int32_t>(g.kernel[1]) + t1) * static_cast<int32_t>(g.kernel[2]) +
                t2;
            const Acc wk = widen<Acc>(wg[k * int64_t(out_volume) + o]);
#pragma unroll
            for (int cc = 0; cc < kChannelBlock; ++cc) {
              if (cc < n) acc[cc] += wk * widen<Acc>(gyc[cc * int64_t(out_volume) + o]);
            }
          }
        }
      }
      T* gxc = gx + (bg * cpg + c0) * int64_t(in_volume) + q.offset;
#pragma unroll
      for (int cc = 0; cc < kChannelBlock; ++cc) {
        if (cc < n) gxc[cc * int64_t(in_volume)] = static_cast<T>(acc[cc]);
      }
    }
  }
}

}  // namespace cuda
}  // namespace involution
