#pragma once
// CUDA gradient of involution with respect to the weight:
//   gw[b, g, k, o] = sum_{c in group g} gy[b, c, o] * x[b, c, o*s - p + k*d].
// Input taps outside the image read zeros, as in the forward (forward.cuh).
//
// Tiled kernel (the shapes of forward.cuh's tiled kernel): a thread owns kPixels = 4
// consecutive output columns of one output row and one tap row (K taps), and sums over all the
// group's channels with 4 x K independent accumulators. Per channel it loads its 4 values of
// grad_output and the (4-1)*S + K input values of the tap row, and does 4 x K multiply-adds
// from registers. One thread per tap row (not per pixel) keeps the accumulators at 28 for
// K = 7 and gives the GPU K times more threads; the K threads of a pixel block read the same
// grad_output, which the L1/L2 caches serve after the first.
//   Hot loop (sm_90 SASS, make cuda-report), float32, K = 7: the channel loop, 1.70
//   instructions per FFMA at S = 1 (4 grad_output and 10 input loads, 28 FFMA, address
//   arithmetic), 1.88 at S = 2; 80 and 92 registers.
//   Bytes: gw (K*K per output pixel and group) written once, x and grad_output read once from
//   DRAM (the re-reads by the other tap rows hit the caches at RedNet's sizes).
//   Predicted (not yet measured on a GPU): within about 1.5x of the DRAM floor (float32).
//
// Generic kernel (any geometry, see cuda_kernels_apply): one thread per (batch, group, output
// pixel), all taps, summing over the group's channels.

#include "forward.cuh"

namespace involution {
namespace cuda {

template <int K, int S, bool kInside, typename T, typename Acc>
__device__ __forceinline__ void backward_weight_row(const Slab& f, const T* __restrict__ gyp,
                                                    const T* __restrict__ xp, int32_t first,
                                                    bool row_ok, int32_t npix,
                                                    Acc (&acc)[K][kPixels]) {
  constexpr int kSpan = (kPixels - 1) * S + K;
#pragma unroll 2
  for (int32_t c = 0; c < f.cpg; ++c, gyp += f.out_volume, xp += f.in_volume) {
    Acc gy[kPixels], x[kSpan];
#pragma unroll
    for (int q = 0; q < kPixels; ++q) gy[q] = kInside || q < npix ? widen<Acc>(gyp[q]) : Acc(0);
#pragma unroll
    for (int i = 0; i < kSpan; ++i) {
      x[i] = kInside || (row_ok && in_range(first + i, f.in[2])) ? widen<Acc>(xp[i]) : Acc(0);
    }
#pragma unroll
    for (int v = 0; v < K; ++v) {
#pragma unroll
      for (int q = 0; q < kPixels; ++q) acc[v][q] += gy[q] * x[q * S + v];
    }
  }
}

// Work items of backward_weight_tiled in one slab: (tap row, depth, row, block of kPixels
// output columns).
__host__ __device__ inline int32_t backward_weight_tiled_items(const Geometry& g) {
  return static_cast<int32_t>(g.kernel[0] * g.kernel[1]) * forward_tiled_items(g);
}

template <typename T, typename Acc, int K, int S>
__global__ void __launch_bounds__(kThreads)
    backward_weight_tiled(const Geometry g, const T* __restrict__ gy, const T* __restrict__ x,
                          T* __restrict__ gw, int64_t slab0, int32_t slabs) {
  constexpr int kSpan = (kPixels - 1) * S + K;
  const Slab f(g);
  const int32_t blocks = (f.out[2] + kPixels - 1) / kPixels;
  const int32_t items = f.kernel0 * K * f.out[0] * f.out[1] * blocks;
  INVOLUTION_FOR_EACH_INDEX(index, slabs * items) {
    const int64_t bg = slab0 + index / items;
    const int32_t item = index % items;
    const T* gys = gy + bg * f.cpg * int64_t(f.out_volume);
    const T* xs = x + bg * f.cpg * int64_t(f.in_volume);
    T* gws = gw + bg * K * K * f.kernel0 * int64_t(f.out_volume);
    const int32_t j0 = item % blocks * kPixels;
    int32_t rest = item / blocks;
    const int32_t o1 = rest % f.out[1];
    rest /= f.out[1];
    const int32_t o0 = rest % f.out[0];
    const int32_t tap_row = rest / f.out[0];  // t0 * K + u
    const int32_t t0 = tap_row / K, u = tap_row % K;
    const int32_t i0 = o0 * f.stride0 - f.padding[0] + t0 * f.dilation0;
    const int32_t i1 = o1 * S - f.padding[1] + u;
    const bool row_ok = in_range(i0, f.in[0]) && in_range(i1, f.in[1]);
    const int32_t first = j0 * S - f.padding[2];
    const int32_t npix = f.out[2] - j0 < kPixels ? f.out[2] - j0 : kPixels;
    const int32_t pixel = (o0 * f.out[1] + o1) * f.out[2] + j0;
    const T* gyp = gys + pixel;
    const T* xp = xs + (row_ok ? (i0 * f.in[1] + i1) * f.in[2] : 0) + first;
    Acc acc[K][kPixels];
#pragma unroll
    for (int v = 0; v < K; ++v) {
#pragma unroll
      for (int q = 0; q < kPixels; ++q) acc[v][q] = Acc(0);
    }
    if (row_ok && npix == kPixels && first >= 0 && first + kSpan <= f.in[2]) {
      backward_weight_row<K, S, true>(f, gyp, xp, first, row_ok, npix, acc);
    } else {
      backward_weight_row<K, S, false>(f, gyp, xp, first, row_ok, npix, acc);
    }
    T* gwp = gws + tap_row * K * f.out_volume + pixel;
#pragma unroll
    for (int v = 0; v < K; ++v, gwp += f.out_volume) {
#pragma unroll
      for (int q = 0; q < kPixels; ++q) {
        if (q < npix) gwp[q] = static_cast<T>(acc[v][q]);
      }
    }
  }
}

// gw for every (slab, output pixel), all taps.
template <typename T, typename Acc>
__global__ void __launch_bounds__(kThreads)
    backward_weight_generic(const Geometry g, const T* __restrict__ gy, const T* __restrict__ x,
                            T* __restrict__ gw) {
  const int32_t cpg = static_cast<int32_t>(g.channels) / static_cast<int32_t>(g.groups);
  const int32_t taps = static_cast<int32_t>(g.taps());
  const int32_t in_volume = static_cast<int32_t>(g.in_volume());
  const int32_t out_volume = static_cast<int32_t>(g.out_volume());
  INVOLUTION_FOR_EACH_SLAB_PIXEL(bg, pixel, g.batch * g.groups, out_volume) {
    const Pixel q = split(pixel, g.out);
    const T* gyq = gy + bg * cpg * int64_t(out_volume) + q.offset;
    const T* xc = x + bg * cpg * int64_t(in_volume);
    T* gwq = gw + bg * taps * int64_t(out_volume) + q.offset;
    int32_t k = 0;
    for (int64_t t0 = 0; t0 < g.kernel[0]; ++t0) {
      const int64_t i0 = q.p[0] * g.stride[0] - g.padding[0] + t0 * g.dilation[0];
      for (int64_t t1 = 0; t1 < g.kernel[1]; ++t1) {
        const int64_t i1 = q.p[1] * g.stride[1] - g.padding[1] + t1 * g.dilation[1];
        for (int64_t t2 = 0; t2 < g.kernel[2]; ++t2, ++k) {
          const int64_t i2 = q.p[2] * g.stride[2] - g.padding[2] + t2 * g.dilation[2];
          const bool inside =
              i0 >= 0 && i0 < g.in[0] && i1 >= 0 && i1 < g.in[1] && i2 >= 0 && i2 < g.in[2];
          const T* xk = xc + (inside ? (i0 * g.in[1] + i1) * g.in[2] + i2 : 0);
          Acc acc = Acc(0);
          for (int32_t c = 0; c < cpg; ++c) {
            acc += widen<Acc>(gyq[c * int64_t(out_volume)]) *
                   (inside ? widen<Acc>(xk[c * int64_t(in_volume)]) : Acc(0));
          }
          gwq[k * int64_t(out_volume)] = static_cast<T>(acc);
        }
      }
    }
  }
}

}  // namespace cuda
}  // namespace involution
