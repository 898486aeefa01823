#pragma once
// The CPU kernels of each instruction set, as tables of function pointers.
//
// kernels_default.cpp, kernels_avx2.cpp and kernels_avx512.cpp each compile
// row_kernels.h for one instruction set; scheduling.h picks the best table the machine supports
// (cpuid) and ATEN_CPU_CAPABILITY=default|avx2|avx512 allows, as torch does for its own kernels.
// Every header the kernels need is included here, before any target region begins.

#include <torch/headeronly/util/BFloat16.h>
#include <torch/headeronly/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>  // F16C conversions in the AVX2 and AVX-512 kernels
#endif

#include "../geometry.h"

namespace involution {
namespace cpu {

// Floor and ceiling of a / b for b > 0 (C++ division truncates toward zero).
inline int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }
inline int64_t ceil_div(int64_t a, int64_t b) { return -floor_div(-a, b); }

// A task writes a block of this many (b, g, depth, height) rows: see row_kernels.h.
constexpr int64_t kRowsPerTask = 8;

// Tasks of forward and backward_weight (blocks of output rows) and of backward_input (blocks of
// input rows).
inline int64_t output_row_tasks(const Geometry& g) {
  return g.batch * g.groups * g.out[0] * ceil_div(g.out[1], kRowsPerTask);
}
inline int64_t input_row_tasks(const Geometry& g) {
  return g.batch * g.groups * g.in[0] * ceil_div(g.in[1], kRowsPerTask);
}

// What task `task` writes: rows [row0, row1) at depth `depth` of (batch, group) slab `bg`, whose
// group's first channel is c0 = b * C + g * C/G. Output rows for forward and backward_weight,
// input rows for backward_input: the one decode of the task numbers counted above.
struct RowBlock {
  int64_t row0, row1, depth, bg, c0;
};
inline RowBlock row_block(const Geometry& g, int64_t task, int64_t depths, int64_t rows) {
  const int64_t blocks = ceil_div(rows, kRowsPerTask);
  const int64_t row0 = (task % blocks) * kRowsPerTask, bg = task / (blocks * depths);
  return {row0, std::min(rows, row0 + kRowsPerTask), (task / blocks) % depths, bg,
          (bg / g.groups) * g.channels + (bg % g.groups) * g.channels_per_group()};
}
inline RowBlock output_row_block(const Geometry& g, int64_t task) {
  return row_block(g, task, g.out[0], g.out[1]);
}
inline RowBlock input_row_block(const Geometry& g, int64_t task) {
  return row_block(g, task, g.in[0], g.in[1]);
}

// The accumulation type of each storage type: float for the 16-bit types.
template <typename scalar_t>
using acc_type = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

// The padding of the rows of z transposed for span_grad_weight: a multiple of two vectors of
// any instruction set, so that its column blocks read whole vectors.
constexpr int64_t kSpanPad = 32;

// Output pixels per block of the channels-last fused forward: its generated kernel, pixels x
// round_up(taps, kSpanPad) in the accumulation type, stays in L1/L2.
constexpr int64_t kChannelsLastPixels = 64;

// A task of the channels-last fused input gradient: `rows` input rows of one sample and depth;
// the kernel of the output rows they receive from takes at most kernel_elements (per thread).
// As many rows as keep that within 64K elements (the whole height for small maps), at least one.
struct InputBlock {
  int64_t rows, kernel_elements;
};
inline InputBlock channels_last_input_block(const Geometry& g, int64_t ldw) {
  const int64_t slots = std::min(g.kernel[0], g.out[0]);  // output depths reaching one depth
  auto elements = [&](int64_t n) {
    const int64_t rows = std::min(
        {g.out[1], (n - 1 + (g.kernel[1] - 1) * g.dilation[1]) / g.stride[1] + 1, n * g.kernel[1]});
    return slots * rows * g.out[2] * ldw;
  };
  constexpr int64_t kBudget = int64_t{1} << 16;
  int64_t n = 1;
  while (n < g.in[1] && elements(n + 1) <= kBudget) ++n;
  return {n, elements(n)};
}

// Tasks of the channels-last fused input gradient.
inline int64_t channels_last_input_tasks(const Geometry& g, int64_t ldw) {
  return g.batch * g.in[0] * ceil_div(g.in[1], channels_last_input_block(g, ldw).rows);
}

// Whether the forward kernels keep a group's channels in the SIMD lanes
// (channel_vector_kernels.h): a width dilation of 1, width stride 1 or 2, kernel width 3 or 7,
// and C/G a multiple of `lanes` (the accumulation type's lanes of the instruction set).
inline bool channel_vector_handles(const Geometry& g, int64_t lanes) {
  const int64_t KW = g.kernel[2], s = g.stride[2];
  return g.dilation[2] == 1 && (s == 1 || s == 2) && (KW == 3 || KW == 7) &&
         g.channels_per_group() % lanes == 0;
}

// Whether the input-gradient kernel keeps a group's channels in the SIMD lanes: the forward's
// geometries at kernel width 7, width stride 1, or width stride 2 for input rows of at most
// 16 pixels. At stride 2 that kernel spends half its multiply-adds on zeros (it runs the
// stride-1 loop on grad_output rows spread 2 apart), which pays only where the pixel-lane
// kernel's vectors are partly empty: measured at batch 8, 2 threads, RedNet-50's stride-2
// layers took 0.80x the time at 14x14 (stage 4; 0.94x in AVX2), 1.17x and 1.22x at 28x28 and
// 56x56.
inline bool channel_vector_handles_input(const Geometry& g, int64_t lanes) {
  return channel_vector_handles(g, lanes) && g.kernel[2] == 7 &&
         (g.stride[2] == 1 || g.in[2] <= 16);
}

// Each involution kernel computes tasks [begin, end). The span kernels are the fused op's
// kernel generation and its gradients (span_kernels.h).
template <typename scalar_t>
struct Kernels {
  using acc_t = acc_type<scalar_t>;
  using Fn = void (*)(const Geometry&, const scalar_t*, const scalar_t*, scalar_t*, int64_t,
                      int64_t);
  Fn forward;          // (g, x, w, y, ...)
  Fn backward_input;   // (g, grad_y, w, grad_x, ...)
  Fn backward_weight;  // (g, grad_y, x, grad_w, ...)
  // (T, R, S, bias, z, ld, W, n0, n1)
  void (*span_generate)(int64_t, int64_t, const acc_t*, const acc_t*, const scalar_t*, int64_t,
                        scalar_t*, int64_t, int64_t);
  // (T, R, S, dW, ld, gz, ldg, n0, n1, accumulate)
  void (*span_grad_reduced)(int64_t, int64_t, const acc_t*, const scalar_t*, int64_t, acc_t*,
                            int64_t, int64_t, int64_t, bool);
  // (T, R, dW, ld, n0, n1, zT, ldz, gS, gb); zT: z's pixels [n0, n1) transposed, rows of
  // ldz >= round_up(R, kSpanPad) elements zero-padded past R
  void (*span_grad_weight)(int64_t, int64_t, const scalar_t*, int64_t, int64_t, int64_t,
                           const acc_t*, int64_t, acc_t*, acc_t*);
  // The fused forward on channels-last tensors (channels_last_kernels.h): (g, R, St, ldw, bias,
  // x, z, y, p0, p1) computes output pixels [p0, p1) of the flattened (B, O...) grid; St holds
  // per group the span weight transposed, (R, ldw) with ldw >= round_up(T, kSpanPad) and the
  // columns past T zero.
  void (*fused_forward_channels_last)(const Geometry&, int64_t, const acc_t*, int64_t, const acc_t*,
                                      const scalar_t*, const scalar_t*, scalar_t*, int64_t,
                                      int64_t);
  // Its input gradient: (g, R, St, ldw, bias, gy, z, gx, task0, task1), the input-row tasks of
  // channels_last_input_tasks.
  void (*fused_backward_input_channels_last)(const Geometry&, int64_t, const acc_t*, int64_t,
                                             const acc_t*, const scalar_t*, const scalar_t*,
                                             scalar_t*, int64_t, int64_t);
  // The gradients of z, span weight and bias: (g, R, Sp, ldr, gy, x, z, gz, gS, gb, p0, p1)
  // for output pixels [p0, p1); Sp is the span weight (G*T, ldr), ldr >= round_up(R,
  // kSpanPad), columns past R zero; gS and gb are added to.
  void (*fused_backward_span_channels_last)(const Geometry&, int64_t, const acc_t*, int64_t,
                                            const scalar_t*, const scalar_t*, const scalar_t*,
                                            scalar_t*, acc_t*, acc_t*, int64_t, int64_t);
  // The fused forward on contiguous tensors, for geometries channel_vector_handles(g, lanes)
  // accepts: (g, R, S, bias, x, z, y, begin, end) computes the output-row tasks [begin, end)
  // of g (output_row_tasks); S is the span weight (G*T, R) and bias its G*T biases (or null),
  // in the accumulation type.
  void (*fused_forward_tiles)(const Geometry&, int64_t, const acc_t*, const acc_t*, const scalar_t*,
                              const scalar_t*, scalar_t*, int64_t, int64_t);
  int64_t lanes;  // of the accumulation type
};

struct KernelTable {
  Kernels<double> f64;
  Kernels<float> f32;
  Kernels<c10::Half> f16;
  Kernels<c10::BFloat16> bf16;

  template <typename T>
  const Kernels<T>& get() const {
    if constexpr (std::is_same_v<T, double>)
      return f64;
    else if constexpr (std::is_same_v<T, float>)
      return f32;
    else if constexpr (std::is_same_v<T, c10::Half>)
      return f16;
    else
      return bf16;
  }
};

// Null when the build or the compiler lacks that instruction set.
const KernelTable* kernel_table_default();
const KernelTable* kernel_table_avx2();
const KernelTable* kernel_table_avx512();

}  // namespace cpu
}  // namespace involution
