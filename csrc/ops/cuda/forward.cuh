#pragma once
// CUDA forward of involution:  y[b, c, o] = sum_k w[b, g(c), k, o] * x[b, c, o*s - p + k*d].
//
// Taps that fall outside the input read zeros, as in the zero-padded unfold formulation: a
// weight at such a tap still enters the sum, as w * 0 (so an infinite or NaN weight there
// gives NaN, on every axis).
//
// Bytes and the floor. Per output pixel and group the op must read K*K weights and C/G input
// values and write C/G outputs: at RedNet's K = 7, C/G = 16, 49 + 16 + 16 values for 784
// multiply-adds. RedNet-50's stage 1 at batch 64 moves 260 MB in float32 (w 157, x 51, y 51):
// 65 us at 4 TB/s, the DRAM floor; 130 MB, 33 us, in bfloat16.
//
// Tiled kernel (K = 3 or 7, stride 1 or 2 along height and width, dilation 1 there; any depth
// geometry): a thread owns kPixels = 4 consecutive output columns of one output row and a block
// of 8 channels of one group (32 float accumulators; 2 channels in float64), in up to 255
// registers (kForwardBlocksPerSM). For each tap row it loads the 4 x K weights of its
// pixels once (each feeds all the block's channels), then per channel the (4-1)*S + K input
// values its pixels read in that row, and does 4 x K multiply-adds from registers (each input
// value feeds up to K of them). Offsets inside a (batch, group) slab are 32-bit. Where the
// input rows and tensor are 8-byte aligned in pairs (even width, odd padding: RedNet's layers),
// the input comes two values per load (kPairs); where output rows are a multiple of 4 wide,
// each tap's 4 weights come in one 16-byte load (kVectorWeights). Pixels whose taps all lie
// inside the input run a loop with no bounds checks; the others a predicated copy of it.
//   Hot loop, float32, K = 7, S = 1, pairs and vector weights (sm_90 SASS, make cuda-report):
//   per tap row 224 FFMA, 7 + 48 loads and about 55 integer instructions (64-bit address
//   arithmetic: the channel offsets are not immediates), 1.49 instructions per FFMA; 1.53 at
//   S = 2, 1.57-1.77 without pairs or vector weights.
//   The limit is as much L1 as DRAM: each input load of a warp spans 512 bytes (lanes 16 bytes
//   apart), 4 wavefronts, so stage 1 needs about 17M wavefronts, 64 us of L1 at one wavefront
//   per clock and SM, next to 65 us of DRAM and about 30 us of issue.
//   Predicted (not yet measured on a GPU): 1.3-1.5x the DRAM floor at RedNet-50's stride-1
//   shapes in float32 (every shape: PREDICTED in benchmarks/gpu_check.sh); bfloat16 is
//   issue-bound (2.2 instructions per FMA with the conversions), about 1.6x faster than
//   float32 rather than 2x.
//
// Generic kernel (any geometry, see cuda_kernels_apply): one thread per (batch, group, output
// pixel), with a 16-channel register block, reading each weight once.

#include <type_traits>

#include "common.cuh"

namespace involution {
namespace cuda {

template <int K, int S, bool kPairs>
struct ForwardShape {
  static constexpr int kSpan = (kPixels - 1) * S + K;  // input columns of one row, per thread
  // With pairs the loads start one column early (the first column is odd, see forward_tiled)
  // and cover an even number of columns.
  static constexpr int kOffset = kPairs ? 1 : 0;
  static constexpr int kLoaded = kPairs ? (kSpan + 2) / 2 * 2 : kSpan;
};

// acc[p] += sum_v w[v][p] * x[p*S + v]: one tap row of one channel, for the thread's pixels.
template <int K, int S, int kOffset, typename Acc, int kLoaded>
__device__ __forceinline__ void forward_row(Acc (&acc)[kPixels], const Acc (&w)[K][kPixels],
                                            const Acc (&x)[kLoaded]) {
#pragma unroll
  for (int v = 0; v < K; ++v) {
#pragma unroll
    for (int p = 0; p < kPixels; ++p) acc[p] += w[v][p] * x[kOffset + p * S + v];
  }
}

// NC channels starting at xc (input) / yc (output) for the thread's pixels, whose first input
// column is `first` and whose weight/output offset is already in wp and yc. kInside: every tap
// row and column the pixels read lies inside the input (no checks in the loop).
template <int NC, int K, int S, bool kPairs, bool kVectorWeights, bool kInside, typename T,
          typename Acc>
__device__ __forceinline__ void forward_channels(const Slab& f, const T* __restrict__ xc,
                                                 const T* __restrict__ wp, T* __restrict__ yc,
                                                 int32_t o0, int32_t o1, int32_t first,
                                                 int32_t npix) {
  using Shape = ForwardShape<K, S, kPairs>;
  Acc acc[NC][kPixels];
#pragma unroll
  for (int c = 0; c < NC; ++c) {
#pragma unroll
    for (int p = 0; p < kPixels; ++p) acc[c][p] = Acc(0);
  }
  for (int32_t t0 = 0; t0 < f.kernel0; ++t0) {
    const int32_t i0 = o0 * f.stride0 - f.padding[0] + t0 * f.dilation0;
    const bool depth_ok = kInside || in_range(i0, f.in[0]);
    const T* wt = wp + t0 * K * K * f.out_volume;
#pragma unroll 1
    for (int u = 0; u < K; ++u) {
      const int32_t i1 = o1 * S - f.padding[1] + u;
      const bool row_ok = kInside || (depth_ok && in_range(i1, f.in[1]));
      // The K x kPixels weights of this tap row: each feeds all NC channels.
      Acc w[K][kPixels];
#pragma unroll
      for (int v = 0; v < K; ++v, wt += f.out_volume) {
        if (kInside && kVectorWeights) {
          load_pixels(wt, w[v]);
        } else {
#pragma unroll
          for (int p = 0; p < kPixels; ++p) {
            w[v][p] = kInside || p < npix ? widen<Acc>(wt[p]) : Acc(0);
          }
        }
      }
      const T* xr = xc + (row_ok ? (i0 * f.in[1] + i1) * f.in[2] : 0) + first;
#pragma unroll
      for (int c = 0; c < NC; ++c) {
        const T* xp = xr + c * f.in_volume;
        Acc x[Shape::kLoaded];
        if (kInside && kPairs) {
#pragma unroll
          for (int i = 0; i < Shape::kLoaded; i += 2) load_pair(xp + i, x[i], x[i + 1]);
        } else {
#pragma unroll
          for (int i = 0; i < Shape::kLoaded; ++i) {
            x[i] = kInside || (row_ok && in_range(first + i, f.in[2])) ? widen<Acc>(xp[i]) : Acc(0);
          }
        }
        forward_row<K, S, Shape::kOffset>(acc[c], w, x);
      }
    }
  }
#pragma unroll
  for (int c = 0; c < NC; ++c) {
#pragma unroll
    for (int p = 0; p < kPixels; ++p) {
      if (kInside || p < npix) yc[c * f.out_volume + p] = static_cast<T>(acc[c][p]);
    }
  }
}

// All channels of the slab, NC at a time, then 4 at a time (RedNet-like groups of 4 or 12
// channels), then one at a time.
template <int NC, int K, int S, bool kPairs, bool kVectorWeights, bool kInside, typename T,
          typename Acc>
__device__ __forceinline__ void forward_pixels(const Slab& f, const T* __restrict__ xs,
                                               const T* __restrict__ wp, T* __restrict__ yp,
                                               int32_t o0, int32_t o1, int32_t first,
                                               int32_t npix) {
  int32_t c = 0;
  for (; c + NC <= f.cpg; c += NC) {
    forward_channels<NC, K, S, kPairs, kVectorWeights, kInside, T, Acc>(
        f, xs + c * f.in_volume, wp, yp + c * f.out_volume, o0, o1, first, npix);
  }
  if constexpr (NC > 4) {
    for (; c + 4 <= f.cpg; c += 4) {
      forward_channels<4, K, S, kPairs, kVectorWeights, kInside, T, Acc>(
          f, xs + c * f.in_volume, wp, yp + c * f.out_volume, o0, o1, first, npix);
    }
  }
  for (; c < f.cpg; ++c) {
    forward_channels<1, K, S, kPairs, kVectorWeights, kInside, T, Acc>(
        f, xs + c * f.in_volume, wp, yp + c * f.out_volume, o0, o1, first, npix);
  }
}

// Whether the tiled kernels (of all three ops) can take this problem: K x K taps (K = 3 or 7)
// with stride 1 or 2 and dilation 1 along height and width, and 32-bit offsets inside a slab.
__host__ inline bool tiled_kernels_apply(const Geometry& g) {
  const int64_t k = g.kernel[1], s = g.stride[1];
  const int64_t limit = int64_t(1) << 30;  // headroom for offsets a little past the end
  return g.kernel[2] == k && g.stride[2] == s && (k == 3 || k == 7) && (s == 1 || s == 2) &&
         g.dilation[1] == 1 && g.dilation[2] == 1 &&
         g.channels / g.groups * g.in_volume() < limit &&
         g.channels / g.groups * g.out_volume() < limit && g.taps() * g.out_volume() < limit &&
         g.in_volume() + g.padding[2] < limit;
}

// Calls f(std::integral_constant<int, K>(), std::integral_constant<int, S>()) with the kernel
// size and stride of a geometry the tiled kernels take (tiled_kernels_apply): the one place that
// turns them into template arguments, for the launches and the host emulation.
template <typename F>
__host__ void with_tiled_shape(const Geometry& g, const F& f) {
  using Three = std::integral_constant<int, 3>;
  using Seven = std::integral_constant<int, 7>;
  using One = std::integral_constant<int, 1>;
  using Two = std::integral_constant<int, 2>;
  const int64_t k = g.kernel[2], s = g.stride[2];
  if (k == 3) {
    s == 1 ? f(Three(), One()) : f(Three(), Two());
  } else {
    s == 1 ? f(Seven(), One()) : f(Seven(), Two());
  }
}

// Whether forward_tiled may load the input in aligned pairs: rows of even width whose first
// loaded column (o*S - padding - 1, with o a multiple of 4) is even, in a tensor aligned to
// two elements.
template <typename T>
__host__ inline bool forward_pairs_apply(const Geometry& g, const T* x) {
  return g.in[2] % 2 == 0 && g.padding[2] % 2 == 1 &&
         reinterpret_cast<uintptr_t>(x) % (2 * sizeof(T)) == 0;
}

// Whether forward_tiled may load each tap's kPixels weights with one load: output rows of a
// multiple of kPixels columns in a tensor aligned to kPixels elements.
template <typename T>
__host__ inline bool forward_vector_weights_apply(const Geometry& g, const T* w) {
  return g.out[2] % kPixels == 0 && reinterpret_cast<uintptr_t>(w) % (kPixels * sizeof(T)) == 0;
}

// Work items of forward_tiled in one slab: (depth, row, block of kPixels columns) of the output.
__host__ __device__ inline int32_t forward_tiled_items(const Geometry& g) {
  return static_cast<int32_t>(g.out[0] * g.out[1] * ((g.out[2] + kPixels - 1) / kPixels));
}

template <typename T, typename Acc, int K, int S, bool kPairs, bool kVectorWeights>
__global__ void __launch_bounds__(kThreads, kForwardBlocksPerSM)
    forward_tiled(const Geometry g, const T* __restrict__ x, const T* __restrict__ w,
                  T* __restrict__ y, int64_t slab0, int32_t slabs) {
  // Channels a thread accumulates at once: 8 (float64: 2, to stay clear of spills), which
  // divides RedNet's 16 (a remainder runs 4, then one channel at a time).
  constexpr int kChannels = sizeof(Acc) > 4 ? 2 : 8;
  using Shape = ForwardShape<K, S, kPairs>;
  const Slab f(g);
  const int32_t blocks = (f.out[2] + kPixels - 1) / kPixels;
  const int32_t items = f.out[0] * f.out[1] * blocks;
  INVOLUTION_FOR_EACH_INDEX(index, slabs * items) {
    const int64_t bg = slab0 + index / items;
    const int32_t item = index % items;
    const T* xs = x + bg * f.cpg * int64_t(f.in_volume);
    const T* ws = w + bg * K * K * f.kernel0 * int64_t(f.out_volume);
    T* ys = y + bg * f.cpg * int64_t(f.out_volume);
    const int32_t j0 = item % blocks * kPixels;
    const int32_t o1 = item / blocks % f.out[1];
    const int32_t o0 = item / blocks / f.out[1];
    const int32_t pixel = (o0 * f.out[1] + o1) * f.out[2] + j0;
    const int32_t first = j0 * S - f.padding[2] - Shape::kOffset;
    const int32_t npix = f.out[2] - j0 < kPixels ? f.out[2] - j0 : kPixels;
    const int32_t row0 = o1 * S - f.padding[1], depth0 = o0 * f.stride0 - f.padding[0];
    const bool inside = npix == kPixels && first >= 0 && first + Shape::kLoaded <= f.in[2] &&
                        row0 >= 0 && row0 + K <= f.in[1] && depth0 >= 0 &&
                        depth0 + (f.kernel0 - 1) * f.dilation0 < f.in[0];
    if (inside) {
      forward_pixels<kChannels, K, S, kPairs, kVectorWeights, true, T, Acc>(
          f, xs, ws + pixel, ys + pixel, o0, o1, first, npix);
    } else {
      forward_pixels<kChannels, K, S, kPairs, kVectorWeights, false, T, Acc>(
          f, xs, ws + pixel, ys + pixel, o0, o1, first, npix);
    }
  }
}

// ------------------------------------------------------------------------------------------
// Generic kernels: any geometry cuda_kernels_apply takes, 32-bit indices inside a slab and
// 64-bit offsets of slabs and channels.

constexpr int kChannelBlock = 16;

// A pixel of one slab: its index along each axis (0 = depth) and its flat index.
struct Pixel {
  int32_t p[3], offset;
};

__host__ __device__ inline Pixel split(int32_t offset, const int64_t (&s)[3]) {
  const int32_t s1 = static_cast<int32_t>(s[1]), s2 = static_cast<int32_t>(s[2]);
  return {{offset / s2 / s1, offset / s2 % s1, offset % s2}, offset};
}

// One thread per (slab, pixel): slabs along y, the slab's `pixels` pixels along x.
#define INVOLUTION_FOR_EACH_SLAB_PIXEL(bg, pixel, slabs, pixels)                      \
  for (int64_t bg = blockIdx.y; bg < (slabs); bg += gridDim.y)                        \
    for (int32_t pixel = static_cast<int32_t>(blockIdx.x * blockDim.x + threadIdx.x); \
         pixel < (pixels); pixel += static_cast<int32_t>(blockDim.x * gridDim.x))

// y for every (slab, output pixel).
template <typename T, typename Acc>
__global__ void __launch_bounds__(kThreads)
    forward_generic(const Geometry g, const T* __restrict__ x, const T* __restrict__ w,
                    T* __restrict__ y) {
  const int32_t cpg = static_cast<int32_t>(g.channels) / static_cast<int32_t>(g.groups);
  const int32_t taps = static_cast<int32_t>(g.taps());
  const int32_t in_volume = static_cast<int32_t>(g.in_volume());
  const int32_t out_volume = static_cast<int32_t>(g.out_volume());
  INVOLUTION_FOR_EACH_SLAB_PIXEL(bg, pixel, g.batch * g.groups, out_volume) {
    const Pixel q = split(pixel, g.out);
    const T* wq = w + bg * taps * int64_t(out_volume) + q.offset;
    for (int32_t c0 = 0; c0 < cpg; c0 += kChannelBlock) {
      const int32_t n = cpg - c0 < kChannelBlock ? cpg - c0 : kChannelBlock;
      const T* xc = x + (bg * cpg + c0) * int64_t(in_volume);
      Acc acc[kChannelBlock];
#pragma unroll
      for (int cc = 0; cc < kChannelBlock; ++cc) acc[cc] = Acc(0);
      int32_t k = 0;
      for (int64_t t0 = 0; t0 < g.kernel[0]; ++t0) {
        const int64_t i0 = q.p[0] * g.stride[0] - g.padding[0] + t0 * g.dilation[0];
        for (int64_t t1 = 0; t1 < g.kernel[1]; ++t1) {
          const int64_t i1 = q.p[1] * g.stride[1] - g.padding[1] + t1 * g.dilation[1];
          for (int64_t t2 = 0; t2 < g.kernel[2]; ++t2, ++k) {
            const int64_t i2 = q.p[2] * g.stride[2] - g.padding[2] + t2 * g.dilation[2];
            const bool inside =
                i0 >= 0 && i0 < g.in[0] && i1 >= 0 && i1 < g.in[1] && i2 >= 0 && i2 < g.in[2];
            const Acc wk = widen<Acc>(wq[k * int64_t(out_volume)]);
            const T* xk = xc + (inside ? (i0 * g.in[1] + i1) * g.in[2] + i2 : 0);
#pragma unroll
            for (int cc = 0; cc < kChannelBlock; ++cc) {
              if (cc < n) {
                acc[cc] += wk * (inside ? widen<Acc>(xk[cc * int64_t(in_volume)]) : Acc(0));
              }
            }
          }
        }
      }
      T* yc = y + (bg * cpg + c0) * int64_t(out_volume) + q.offset;
#pragma unroll
      for (int cc = 0; cc < kChannelBlock; ++cc) {
        if (cc < n) yc[cc * int64_t(out_volume)] = static_cast<T>(acc[cc]);
      }
    }
  }
}

}  // namespace cuda
}  // namespace involution
