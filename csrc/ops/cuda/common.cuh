#pragma once
// What the CUDA kernels of forward.cuh, backward_input.cuh and backward_weight.cuh share: the
// 32-bit view of one (batch, group) slab, grid-stride loops, and loads that widen to the
// accumulation type. Free of framework types (pointers, sizes and a Geometry), so that
// tests/cpp/emulate_cuda_kernels.cpp can run every kernel on the host.
//
// Layouts (contiguous, row-major; a 2-D problem is a 3-D one with depth 1):
//   x, grad_input   (B, C, I0, I1, I2)
//   w, grad_weight  (B, G, K0, K1, K2, O0, O1, O2)
//   y, grad_output  (B, C, O0, O1, O2)
// The C/G channels of group g are contiguous, so (b, g) owns one slab of each tensor: channels
// [(b*G + g) * C/G, ... + C/G) of x and y, and slab b*G + g of w.
//
// Every element of the tensor a kernel writes is summed by the one thread that owns it, in a
// fixed order: no atomics, so the results are deterministic.
//
// Hot loops (float32, sm_90 SASS, make cuda-report; tests/cuda_report.py says how a loop is
// delimited and holds the targets): each op's header gives its K = 7 counts; the K = 3
// instances of the three tiled kernels (RedNet's stem) take 1.8-3.4 instructions per FFMA.

#include <cstdint>

#include "../geometry.h"

namespace involution {
namespace cuda {

constexpr int kThreads = 128;  // threads per block of every kernel
constexpr int kPixels = 4;     // consecutive output (or input) columns per thread, tiled kernels
// Blocks of kThreads the tiled kernels keep resident per SM, which caps their registers: 255 a
// thread for the forward (2 blocks), 168 for the input gradient (3). nvcc hoists the loads of
// every channel of a thread's block ahead of the multiply-adds; with fewer registers it spills.
// Each thread keeps dozens of loads in flight, so 8-12 warps per SM still cover DRAM latency.
constexpr int kForwardBlocksPerSM = 2;
constexpr int kTiledBlocksPerSM = 3;

// Whether the CUDA kernels take this problem: every size, stride, padding and dilation, the
// spatial volumes and the number of taps below 2^31 (so that no kernel divides 64-bit numbers: nvcc
// makes an out-of-line call of that, with a stack frame). Only the offsets of whole (batch, group)
// slabs and channels are 64-bit.
__host__ inline bool cuda_kernels_apply(const Geometry& g) {
  const int64_t limit = (int64_t(1) << 31) - 1;
  bool ok =
      g.channels <= limit && g.in_volume() <= limit && g.out_volume() <= limit && g.taps() <= limit;
  for (int a = 0; a < 3; ++a) {
    ok = ok && g.kernel[a] <= limit && g.stride[a] <= limit && g.padding[a] <= limit &&
         g.dilation[a] <= limit && (g.kernel[a] - 1) * g.dilation[a] <= limit;
  }
  return ok;
}

// The sizes of one slab in 32-bit integers: the tiled kernels run only when every offset inside
// a slab fits (tiled_kernels_apply), and add the slab's 64-bit base offset once.
struct Slab {
  int32_t cpg;
  int32_t in[3], out[3], kernel0, stride0, padding[3], dilation0;
  int32_t in_volume, out_volume;

  __host__ __device__ explicit Slab(const Geometry& g)
      : cpg(static_cast<int32_t>(g.channels) / static_cast<int32_t>(g.groups)),
        in{static_cast<int32_t>(g.in[0]), static_cast<int32_t>(g.in[1]),
           static_cast<int32_t>(g.in[2])},
        out{static_cast<int32_t>(g.out[0]), static_cast<int32_t>(g.out[1]),
            static_cast<int32_t>(g.out[2])},
        kernel0(static_cast<int32_t>(g.kernel[0])),
        stride0(static_cast<int32_t>(g.stride[0])),
        padding{static_cast<int32_t>(g.padding[0]), static_cast<int32_t>(g.padding[1]),
                static_cast<int32_t>(g.padding[2])},
        dilation0(static_cast<int32_t>(g.dilation[0])),
        in_volume(static_cast<int32_t>(g.in[0] * g.in[1] * g.in[2])),
        out_volume(static_cast<int32_t>(g.out[0] * g.out[1] * g.out[2])) {}
};

// 0 <= i < n, in one comparison.
__host__ __device__ inline bool in_range(int32_t i, int32_t n) {
  return static_cast<uint32_t>(i) < static_cast<uint32_t>(n);
}

// The tiled kernels' threads each take one work item (a block of pixels) of one (batch, group)
// slab. A launch covers `slabs` slabs from `slab0` on, its (slab, item) pairs numbered in 32 bits
// (item fastest, so neighbouring threads take neighbouring pixels); any grid size is correct
// as long as it has fewer than 2^30 threads.
#define INVOLUTION_FOR_EACH_INDEX(index, count)                                     \
  for (int32_t index = static_cast<int32_t>(blockIdx.x * blockDim.x + threadIdx.x); \
       index < (count); index += static_cast<int32_t>(blockDim.x * gridDim.x))

// Splits `slabs` slabs into launches whose (slab, item) pairs fit in 32 bits:
// launch(first_slab, slab_count) for each.
template <typename Launch>
__host__ inline void for_each_slab_range(int64_t slabs, int32_t items, const Launch& launch) {
  int64_t per_launch = (int64_t(1) << 30) / (items > 0 ? items : 1);
  if (per_launch < 1) per_launch = 1;  // items < 2^30: tiled_kernels_apply
  for (int64_t s = 0; s < slabs; s += per_launch) {
    launch(s, static_cast<int32_t>(slabs - s < per_launch ? slabs - s : per_launch));
  }
}

template <typename Acc, typename T>
__host__ __device__ inline Acc widen(T v) {
  return static_cast<Acc>(v);
}

// Two adjacent elements p[0], p[1] with one load of 2 * sizeof(T) bytes (p must be aligned to
// it; the launch checks that the tensor and every row are).
template <typename T>
struct alignas(2 * sizeof(T)) Pair {
  T first, second;
};
template <typename Acc, typename T>
__host__ __device__ inline void load_pair(const T* p, Acc& a, Acc& b) {
#if defined(INVOLUTION_EMULATION)  // the host emulation checks the alignment the GPU needs
  INVOLUTION_EMULATION_CHECK_ALIGNED(p, 2 * sizeof(T));
  a = widen<Acc>(p[0]);
  b = widen<Acc>(p[1]);
#else
  const Pair<T> v = *reinterpret_cast<const Pair<T>*>(p);
  a = widen<Acc>(v.first);
  b = widen<Acc>(v.second);
#endif
}

// kPixels adjacent elements p[0..kPixels) with one load of kPixels * sizeof(T) bytes (p must be
// aligned to it; the launch checks that the tensor and every row are).
template <typename T>
struct alignas(kPixels * sizeof(T)) Pixels {
  T v[kPixels];
};
template <typename Acc, typename T>
__host__ __device__ inline void load_pixels(const T* p, Acc (&out)[kPixels]) {
#if defined(INVOLUTION_EMULATION)
  INVOLUTION_EMULATION_CHECK_ALIGNED(p, kPixels * sizeof(T));
  for (int i = 0; i < kPixels; ++i) out[i] = widen<Acc>(p[i]);
#else
  const Pixels<T> v = *reinterpret_cast<const Pixels<T>*>(p);
#pragma unroll
  for (int i = 0; i < kPixels; ++i) out[i] = widen<Acc>(v.v[i]);
#endif
}

}  // namespace cuda
}  // namespace involution
