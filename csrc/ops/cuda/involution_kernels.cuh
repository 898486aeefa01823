#pragma once
// CUDA kernels of involution2d and involution3d, free of framework types: pointers to contiguous
// tensors and a Geometry (2-D problems are 3-D ones with depth 1).
//
//   x  (B, C, I0, I1, I2)           input
//   w  (B, G, K0, K1, K2, O0, O1, O2) per-pixel kernels, shared by the C/G channels of a group
//   y  (B, C, O0, O1, O2)           output (and grad_output, gy)
//
// Memory traffic is dominated by w (K*K values per output pixel and group, against C/G values of
// x and y), so every kernel gives one thread one (batch, group, pixel) and lets it reuse each
// weight value for a block of the group's channels held in registers: w is read once from
// memory, and neighbouring threads (neighbouring pixels along the width) read neighbouring
// addresses of w, x and y. The input's reuse across taps comes from the L1/L2 caches.
//
// Every sum is computed by the one thread that owns its output element, in a fixed order:
// no atomics, so results are deterministic. Indices are 64-bit throughout.

#include <cstdint>

#include "../geometry.h"

namespace involution {
namespace cuda {

constexpr int kThreads = 256;
constexpr int kChannelBlock = 16;

struct Extents {
  int64_t taps, in_volume, out_volume, channels_per_group;
};

__host__ __device__ inline Extents extents_of(const Geometry& g) {
  return {g.kernel[0] * g.kernel[1] * g.kernel[2], g.in[0] * g.in[1] * g.in[2],
          g.out[0] * g.out[1] * g.out[2], g.channels / g.groups};
}

// Splits a linear index over (B, G, S0, S1, S2), S2 fastest, into its parts.
struct Position {
  int64_t b, g, p[3], offset;  // offset = flat index of p within S0*S1*S2
};

__device__ inline Position split(int64_t index, const int64_t (&s)[3], int64_t groups) {
  Position q;
  q.p[2] = index % s[2];
  index /= s[2];
  q.p[1] = index % s[1];
  index /= s[1];
  q.p[0] = index % s[0];
  index /= s[0];
  q.g = index % groups;
  q.b = index / groups;
  q.offset = (q.p[0] * s[1] + q.p[1]) * s[2] + q.p[2];
  return q;
}

#define INVOLUTION_GRID_STRIDE_LOOP(index, total)                                   \
  for (int64_t index = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; \
       index < (total); index += static_cast<int64_t>(blockDim.x) * gridDim.x)

// y[b, c, o] = sum_k w[b, g, k, o] * x[b, c, o*s - p + k*d]. One thread per (b, g, o).
template <typename T, typename Acc>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(const Geometry g, const T* __restrict__ x, const T* __restrict__ w,
                   T* __restrict__ y, int64_t total) {
  const Extents e = extents_of(g);
  INVOLUTION_GRID_STRIDE_LOOP(index, total) {
    const Position q = split(index, g.out, g.groups);
    const T* wq = w + (q.b * g.groups + q.g) * e.taps * e.out_volume + q.offset;
    const int64_t first_channel = q.b * g.channels + q.g * e.channels_per_group;
    for (int64_t c0 = 0; c0 < e.channels_per_group; c0 += kChannelBlock) {
      const int64_t n =
          e.channels_per_group - c0 < kChannelBlock ? e.channels_per_group - c0 : kChannelBlock;
      const T* xc = x + (first_channel + c0) * e.in_volume;
      Acc acc[kChannelBlock];
#pragma unroll
      for (int cc = 0; cc < kChannelBlock; ++cc) acc[cc] = Acc(0);
      int64_t k = 0;
      for (int64_t t0 = 0; t0 < g.kernel[0]; ++t0) {
        const int64_t i0 = q.p[0] * g.stride[0] - g.padding[0] + t0 * g.dilation[0];
        for (int64_t t1 = 0; t1 < g.kernel[1]; ++t1) {
          const int64_t i1 = q.p[1] * g.stride[1] - g.padding[1] + t1 * g.dilation[1];
          for (int64_t t2 = 0; t2 < g.kernel[2]; ++t2, ++k) {
            const int64_t i2 = q.p[2] * g.stride[2] - g.padding[2] + t2 * g.dilation[2];
            if (i0 < 0 || i0 >= g.in[0] || i1 < 0 || i1 >= g.in[1] || i2 < 0 || i2 >= g.in[2]) {
              continue;
            }
            const Acc wk = static_cast<Acc>(wq[k * e.out_volume]);
            const T* xk = xc + (i0 * g.in[1] + i1) * g.in[2] + i2;
#pragma unroll
            for (int cc = 0; cc < kChannelBlock; ++cc) {
              if (cc < n) acc[cc] += wk * static_cast<Acc>(xk[cc * e.in_volume]);
            }
          }
        }
      }
      T* yc = y + (first_channel + c0) * e.out_volume + q.offset;
#pragma unroll
      for (int cc = 0; cc < kChannelBlock; ++cc) {
        if (cc < n) yc[cc * e.out_volume] = static_cast<T>(acc[cc]);
      }
    }
  }
}

// gx[b, c, i] = sum over taps k with i = o*s - p + k*d for an output pixel o of
// w[b, g, k, o] * gy[b, c, o]: the gather form. One thread per (b, g, i).
template <typename T, typename Acc>
__global__ void __launch_bounds__(kThreads)
    backward_input_kernel(const Geometry g, const T* __restrict__ gy, const T* __restrict__ w,
                          T* __restrict__ gx, int64_t total) {
  const Extents e = extents_of(g);
  INVOLUTION_GRID_STRIDE_LOOP(index, total) {
    const Position q = split(index, g.in, g.groups);
    const T* wg = w + (q.b * g.groups + q.g) * e.taps * e.out_volume;
    const int64_t first_channel = q.b * g.channels + q.g * e.channels_per_group;
    for (int64_t c0 = 0; c0 < e.channels_per_group; c0 += kChannelBlock) {
      const int64_t n =
          e.channels_per_group - c0 < kChannelBlock ? e.channels_per_group - c0 : kChannelBlock;
      const T* gyc = gy + (first_channel + c0) * e.out_volume;
      Acc acc[kChannelBlock];
#pragma unroll
      for (int cc = 0; cc < kChannelBlock; ++cc) acc[cc] = Acc(0);
      int64_t k = 0;
      for (int64_t t0 = 0; t0 < g.kernel[0]; ++t0) {
        // o0 = (i0 + p0 - t0*d0) / s0 must be exact and in range.
        const int64_t n0 = q.p[0] + g.padding[0] - t0 * g.dilation[0];
        const bool ok0 = n0 >= 0 && n0 % g.stride[0] == 0 && n0 / g.stride[0] < g.out[0];
        const int64_t o0 = n0 / g.stride[0];
        for (int64_t t1 = 0; t1 < g.kernel[1]; ++t1) {
          const int64_t n1 = q.p[1] + g.padding[1] - t1 * g.dilation[1];
          const bool ok1 = ok0 && n1 >= 0 && n1 % g.stride[1] == 0 && n1 / g.stride[1] < g.out[1];
          const int64_t o1 = n1 / g.stride[1];
          for (int64_t t2 = 0; t2 < g.kernel[2]; ++t2, ++k) {
            const int64_t n2 = q.p[2] + g.padding[2] - t2 * g.dilation[2];
            if (!ok1 || n2 < 0 || n2 % g.stride[2] != 0 || n2 / g.stride[2] >= g.out[2]) {
              continue;
            }
            const int64_t o = (o0 * g.out[1] + o1) * g.out[2] + n2 / g.stride[2];
            const Acc wk = static_cast<Acc>(wg[k * e.out_volume + o]);
#pragma unroll
            for (int cc = 0; cc < kChannelBlock; ++cc) {
              if (cc < n) acc[cc] += wk * static_cast<Acc>(gyc[cc * e.out_volume + o]);
            }
          }
        }
      }
      T* gxc = gx + (first_channel + c0) * e.in_volume + q.offset;
#pragma unroll
      for (int cc = 0; cc < kChannelBlock; ++cc) {
        if (cc < n) gxc[cc * e.in_volume] = static_cast<T>(acc[cc]);
      }
    }
  }
}

// gw[b, g, k, o] = sum_{c in group g} gy[b, c, o] * x[b, c, o*s - p + k*d]. One thread per
// (b, g, o), which sums over the group's channels for every tap. When the group has at most
// kChannelBlock channels (RedNet has 16), its grad_output values stay in registers across taps.
template <typename T, typename Acc, bool kResident>
__global__ void __launch_bounds__(kThreads)
    backward_weight_kernel(const Geometry g, const T* __restrict__ gy, const T* __restrict__ x,
                           T* __restrict__ gw, int64_t total) {
  const Extents e = extents_of(g);
  INVOLUTION_GRID_STRIDE_LOOP(index, total) {
    const Position q = split(index, g.out, g.groups);
    const int64_t first_channel = q.b * g.channels + q.g * e.channels_per_group;
    const T* gyq = gy + first_channel * e.out_volume + q.offset;
    const T* xc = x + first_channel * e.in_volume;
    T* gwq = gw + (q.b * g.groups + q.g) * e.taps * e.out_volume + q.offset;
    Acc gy_block[kResident ? kChannelBlock : 1];
    if (kResident) {
#pragma unroll
      for (int cc = 0; cc < (kResident ? kChannelBlock : 1); ++cc) {
        gy_block[cc] =
            cc < e.channels_per_group ? static_cast<Acc>(gyq[cc * e.out_volume]) : Acc(0);
      }
    }
    int64_t k = 0;
    for (int64_t t0 = 0; t0 < g.kernel[0]; ++t0) {
      const int64_t i0 = q.p[0] * g.stride[0] - g.padding[0] + t0 * g.dilation[0];
      for (int64_t t1 = 0; t1 < g.kernel[1]; ++t1) {
        const int64_t i1 = q.p[1] * g.stride[1] - g.padding[1] + t1 * g.dilation[1];
        for (int64_t t2 = 0; t2 < g.kernel[2]; ++t2, ++k) {
          const int64_t i2 = q.p[2] * g.stride[2] - g.padding[2] + t2 * g.dilation[2];
          Acc acc = Acc(0);
          if (i0 >= 0 && i0 < g.in[0] && i1 >= 0 && i1 < g.in[1] && i2 >= 0 && i2 < g.in[2]) {
            const T* xk = xc + (i0 * g.in[1] + i1) * g.in[2] + i2;
            if (kResident) {
#pragma unroll
              for (int cc = 0; cc < (kResident ? kChannelBlock : 1); ++cc) {
                if (cc < e.channels_per_group) {
                  acc += gy_block[cc] * static_cast<Acc>(xk[cc * e.in_volume]);
                }
              }
            } else {
              for (int64_t c = 0; c < e.channels_per_group; ++c) {
                acc +=
                    static_cast<Acc>(gyq[c * e.out_volume]) * static_cast<Acc>(xk[c * e.in_volume]);
              }
            }
          }
          gwq[k * e.out_volume] = static_cast<T>(acc);
        }
      }
    }
  }
}

// The design of the official CuPy kernel, kept as the benchmark's baseline: one thread per
// output element (b, c, o), every weight and input value read from memory by every channel.
template <typename T, typename Acc>
__global__ void __launch_bounds__(kThreads)
    naive_forward_kernel(const Geometry g, const T* __restrict__ x, const T* __restrict__ w,
                         T* __restrict__ y, int64_t total) {
  const Extents e = extents_of(g);
  INVOLUTION_GRID_STRIDE_LOOP(index, total) {
    const Position q = split(index, g.out, g.channels);  // here q.g is the channel
    const int64_t group = q.g / e.channels_per_group;
    const T* wq = w + (q.b * g.groups + group) * e.taps * e.out_volume + q.offset;
    const T* xc = x + (q.b * g.channels + q.g) * e.in_volume;
    Acc acc = Acc(0);
    int64_t k = 0;
    for (int64_t t0 = 0; t0 < g.kernel[0]; ++t0) {
      const int64_t i0 = q.p[0] * g.stride[0] - g.padding[0] + t0 * g.dilation[0];
      for (int64_t t1 = 0; t1 < g.kernel[1]; ++t1) {
        const int64_t i1 = q.p[1] * g.stride[1] - g.padding[1] + t1 * g.dilation[1];
        for (int64_t t2 = 0; t2 < g.kernel[2]; ++t2, ++k) {
          const int64_t i2 = q.p[2] * g.stride[2] - g.padding[2] + t2 * g.dilation[2];
          if (i0 >= 0 && i0 < g.in[0] && i1 >= 0 && i1 < g.in[1] && i2 >= 0 && i2 < g.in[2]) {
            acc += static_cast<Acc>(wq[k * e.out_volume]) *
                   static_cast<Acc>(xc[(i0 * g.in[1] + i1) * g.in[2] + i2]);
          }
        }
      }
    }
    y[(q.b * g.channels + q.g) * e.out_volume + q.offset] = static_cast<T>(acc);
  }
}

#undef INVOLUTION_GRID_STRIDE_LOOP

}  // namespace cuda
}  // namespace involution
