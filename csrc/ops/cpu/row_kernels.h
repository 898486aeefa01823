// CPU kernels for involution forward and its two gradients.
//
// Framework-free templates over (storage type, accumulation type, SIMD lanes): they take
// pointers and a Geometry. Each instruction set compiles them once (kernels_<isa>.cpp) and
// involution_kernel.cpp picks a set at run time. The generic SIMD and conversion helpers
// are in simd.h.
//
// Layouts (contiguous, row-major):
//   x  / grad_input  : (B, C, D, H, W)
//   w  / grad_weight : (B, G, KD, KH, KW, OD, OH, OW)
//   y  / grad_output : (B, C, OD, OH, OW)
// A 2-D problem is passed with D = KD = OD = 1.
//
// Work is split into tasks of kRowsPerTask rows: one task owns a block of (b, g, depth, height)
// rows of the tensor it writes and does all C/G channels of group g, so each weight row is
// loaded once and reused by the whole group. Operands that are read at shifted columns are first
// staged into small zero-padded buffers in the accumulation type (converting float16/bfloat16
// once), laid out so that every inner loop is a contiguous, branch-free run of SIMD multiply-adds,
// whatever the stride, padding and dilation; operands read at the output's own columns (the
// weights in forward, grad_output in grad_weight) are read in place and converted as loaded.
//   * forward / grad_weight read input column j*s - p + kw*d. A staged input row is split into
//     its s phases (column q*s + r - p goes to phase r, slot q), so output column j at tap kw
//     reads phase (kw*d) % s at slot j + (kw*d) / s: contiguous in j.
//   * grad_input (the gather form) takes input columns phase by phase: column m*s + r receives
//     from tap kw, when (r + p - kw*d) is a multiple of s, the product at output column
//     m + (r + p - kw*d) / s, contiguous in m. Only those taps are visited: no multiply-add is
//     spent on zeros for s > 1.
//   * Unrolled cases (with_width_shape): forward and grad_weight unroll the tap columns for
//     KW = 3 and 7 at stride 1 and 2 (dilation 1); grad_input for KW = 3 and 7 at stride 1 and
//     dilation 1. Every other geometry runs the same loops with run-time tap counts and offsets.
//     Where C/G is also a multiple of the vector width, forward() (and, at KW = 7 and stride
//     1, backward_input()) hand the problem to channel_vector_kernels.h, which keeps channels
//     rather than pixels in the lanes.
//   * Partial column blocks: operands read in place (PartialBlocks) read on past a row's end
//     rather than through a scalar tail; lanes past the end are never stored.
// Every output element is written by exactly one task with a fixed summation order: results
// are deterministic and independent of the number of threads. No atomics; the per-task
// buffers hold a few rows per channel of the group.
//
// This file is included once by each kernels_<isa>.cpp, after all other headers and inside
// that instruction set's target region, with INVOLUTION_CPU_ISA naming the namespace that keeps
// each instruction set's instantiations apart (no symbol compiled for AVX-512 may stand in for
// the default one at link time).

#pragma once

#ifndef INVOLUTION_CPU_ISA
#error "include kernel_table.h, set the target, define INVOLUTION_CPU_ISA, then include this"
#endif

#include "channel_vector_kernels.h"
#include "channels_last_kernels.h"
#include "kernel_table.h"
#include "simd.h"
#include "span_kernels.h"

namespace involution {
namespace cpu {
namespace INVOLUTION_CPU_ISA {

// Valid index ranges along the depth/height axes.

// Kernel taps k whose input index o*s - p + k*d lies in [0, n).
struct TapRange {
  int64_t lo, hi;
};
inline TapRange taps_in_range(int64_t o, int64_t s, int64_t p, int64_t d, int64_t k, int64_t n) {
  const int64_t base = o * s - p;  // input index of tap 0
  const int64_t lo = std::max<int64_t>(0, ceil_div(-base, d));
  const int64_t hi = std::min(k, floor_div(n - 1 - base, d) + 1);
  return {lo, std::max(lo, hi)};
}

// An operand read in place, Lanes columns at a time: a task's rows of `width` columns, in
// `planes` planes (taps or channels) `plane_stride` apart. The last, partial block of a row
// reads on into the next row; those lanes' sums are never stored. Only where that would read
// past the end of the tensor (in the last task) does a zero-padded copy of the partial blocks,
// [plane][row][Lanes], stand in for them; its zeros are written once, here.
template <typename scalar_t, int Lanes>
class PartialBlocks {
 public:
  struct Run {
    const scalar_t* data;  // plane 0; plane k is k * plane_stride further
    int64_t plane_stride;
  };

  PartialBlocks(const scalar_t* tensor, int64_t numel, int64_t width, int64_t planes,
                int64_t plane_stride)
      : full(width - width % Lanes),
        tensor_(tensor),
        numel_(numel),
        width_(width),
        planes_(planes),
        plane_stride_(plane_stride),
        copy_(full < width ? planes * kRowsPerTask * Lanes : 0, scalar_t(0)) {}

  const int64_t full;  // columns in whole blocks

  // A task whose `rows` rows start at `first` (plane 0). In place unless the last partial
  // block's reads (last plane, last row) would end past the tensor.
  void start(const scalar_t* first, int64_t rows) {
    first_ = first;
    in_place_ =
        (first - tensor_) + (planes_ - 1) * plane_stride_ + (rows - 1) * width_ + full + Lanes <=
        numel_;
    if (full == width_ || in_place_) return;
    for (int64_t k = 0; k < planes_; ++k) {
      for (int64_t r = 0; r < rows; ++r) {
        std::memcpy(copy_.data() + (k * kRowsPerTask + r) * Lanes,
                    first + k * plane_stride_ + r * width_ + full,
                    (width_ - full) * sizeof(scalar_t));
      }
    }
  }

  // The partial block of the task's row r.
  Run partial(int64_t r) const {
    if (in_place_) return {first_ + r * width_ + full, plane_stride_};
    return {copy_.data() + r * Lanes, kRowsPerTask * Lanes};
  }

 private:
  const scalar_t* tensor_;
  int64_t numel_, width_, planes_, plane_stride_;
  std::vector<scalar_t> copy_;
  const scalar_t* first_ = nullptr;
  bool in_place_ = true;
};

// Calls f(kw, s) with compile-time constants: (7 or 3, 1 or 2) for a kernel width of 7 or 3 at
// stride 1 or 2 and dilation 1 along the width (RedNet's layers), whose tap loops then unroll
// fully with constant offsets; (0, 0) for every other width geometry, whose loops take the tap
// count and offsets at run time.
template <typename F>
void with_width_shape(const Geometry& g, F&& f) {
  using std::integral_constant;
  const int64_t KW = g.kernel[2], s = g.stride[2];
  const bool fixed = g.dilation[2] == 1 && (s == 1 || s == 2);
  if (fixed && KW == 7 && s == 1)
    f(integral_constant<int, 7>(), integral_constant<int, 1>());
  else if (fixed && KW == 7)
    f(integral_constant<int, 7>(), integral_constant<int, 2>());
  else if (fixed && KW == 3 && s == 1)
    f(integral_constant<int, 3>(), integral_constant<int, 1>());
  else if (fixed && KW == 3)
    f(integral_constant<int, 3>(), integral_constant<int, 2>());
  else
    f(integral_constant<int, 0>(), integral_constant<int, 0>());
}

// ---------------------------------------------------------------------------------------------
// Forward: y[c, j] = sum_taps w[tap, j] * x[c, row(tap), j*s - p + kw*d], and the gradient with
// respect to the weight, gw[tap, j] = sum_c gy[c, j] * x[c, row(tap), j*s - p + kw*d], share
// the staging of the input rows a block of output rows reads.

template <typename acc_t, int Lanes>
struct InputSlab {
  // Layout, fixed for a geometry: [channel][kd][row][phase][phase_len]. A staged row is the
  // input row with p zeros on its left (column c at padded slot c + p) and zeros on its right,
  // split into its s phases: slot q of phase r holds padded slot q * s + r. Output column j at
  // tap kw then reads phase (kw*d) % s, slot j + (kw*d) / s: contiguous in j for every stride.
  int64_t phase_len = 0;
  int64_t row_stride = 0;      // s * phase_len
  int64_t max_rows = 0;        // input rows read by kRowsPerTask output rows
  int64_t channel_stride = 0;  // KD * max_rows * row_stride
  int64_t first_row = 0;       // input row of staged row 0 in the current task
  int64_t kd_lo = 0, kd_count = 0;
  std::vector<int64_t> column_offset;  // of tap kw in a staged row
  std::vector<acc_t> data;
  std::vector<acc_t> scratch;  // one padded row before its phase split (s > 1)

  // Stages the input rows read by output rows [oh0, oh1) of output depth od, for the channels
  // [c0, c0 + count) (c0 counts b*C + c).
  template <typename scalar_t>
  void stage(const Geometry& g, const scalar_t* x, int64_t c0, int64_t count, int64_t od,
             int64_t oh0, int64_t oh1) {
    const int64_t s = g.stride[2], W = g.in[2];
    if (data.empty()) {
      // The zeros of the padding sit at the same slots in every row: written once here.
      phase_len = round_up(g.out[2], Lanes) + (g.kernel[2] - 1) * g.dilation[2] / s + 1;
      row_stride = s * phase_len;
      max_rows = (kRowsPerTask - 1) * g.stride[1] + (g.kernel[1] - 1) * g.dilation[1] + 1;
      channel_stride = g.kernel[0] * max_rows * row_stride;
      data.assign(count * channel_stride, acc_t(0));
      scratch.assign(s > 1 ? row_stride : 0, acc_t(0));
      column_offset.resize(g.kernel[2]);
      for (int64_t kw = 0; kw < g.kernel[2]; ++kw) {
        const int64_t off = kw * g.dilation[2];
        column_offset[kw] = (off % s) * phase_len + off / s;
      }
    }
    const TapRange kd =
        taps_in_range(od, g.stride[0], g.padding[0], g.dilation[0], g.kernel[0], g.in[0]);
    kd_lo = kd.lo;
    kd_count = kd.hi - kd.lo;
    first_row = std::max<int64_t>(0, oh0 * g.stride[1] - g.padding[1]);
    const int64_t last_row = std::min(
        g.in[1] - 1, (oh1 - 1) * g.stride[1] - g.padding[1] + (g.kernel[1] - 1) * g.dilation[1]);
    const int64_t rows = std::max<int64_t>(0, last_row - first_row + 1);
    // Padded slots [left, left + n) hold the row; later slots are never read.
    const int64_t left = std::min(g.padding[2], row_stride);
    const int64_t n = std::min(W, row_stride - left);
    const int64_t plane = g.in[1] * W;
    for (int64_t c = 0; c < count; ++c) {
      for (int64_t k = kd.lo; k < kd.hi; ++k) {
        const int64_t id = od * g.stride[0] - g.padding[0] + k * g.dilation[0];
        const scalar_t* src = x + (c0 + c) * g.in_volume() + id * plane + first_row * W;
        acc_t* dst = data.data() + c * channel_stride + k * max_rows * row_stride;
        for (int64_t r = 0; r < rows; ++r) {
          acc_t* row = dst + r * row_stride;
          if (s == 1) {
            copy_row<acc_t, Lanes>(src + r * W, n, row + left);
            continue;
          }
          copy_row<acc_t, Lanes>(src + r * W, n, scratch.data() + left);
          const acc_t* padded = scratch.data();
          if (s == 2) {  // the common case, in a loop the compiler vectorises
            for (int64_t q = 0; q < phase_len; ++q) {
              row[q] = padded[2 * q];
              row[phase_len + q] = padded[2 * q + 1];
            }
          } else {
            for (int64_t ph = 0; ph < s; ++ph) {
              for (int64_t q = 0; q < phase_len; ++q) row[ph * phase_len + q] = padded[q * s + ph];
            }
          }
        }
      }
    }
  }

  // The staged row that output row oh reads at tap row (kd, kh), for channel 0 (channel c is
  // c * channel_stride further); output column 0 at tap column kw reads column_offset[kw] in it.
  const acc_t* row(const Geometry& g, int64_t kd, int64_t oh, int64_t kh) const {
    const int64_t r = oh * g.stride[1] - g.padding[1] + kh * g.dilation[1] - first_row;
    return data.data() + (kd * max_rows + r) * row_stride;
  }
};

template <typename scalar_t, typename acc_t, int Lanes>
void forward(const Geometry& g, const scalar_t* x, const scalar_t* w, scalar_t* y, int64_t begin,
             int64_t end) {
  if (channel_vector_handles(g, Lanes)) {  // RedNet's width geometries: channels in the lanes
    channel_vector::forward<scalar_t, acc_t, Lanes>(g, x, w, y, begin, end);
    return;
  }
  using V = typename Simd<acc_t, Lanes>::type;
  // Channels sharing each weight load; also the independent accumulators that hide the
  // multiply-add latency.
  constexpr int CB = 8;
  const int64_t OH = g.out[1], OW = g.out[2];
  const int64_t KD = g.kernel[0], KH = g.kernel[1], KW = g.kernel[2];
  const int64_t cpg = g.channels_per_group(), taps = g.taps(), out_volume = g.out_volume();

  // Weights are read in place (converted to acc_t as they are loaded), one plane per tap.
  PartialBlocks<scalar_t, Lanes> w_tail(w, g.batch * g.groups * taps * out_volume, OW, taps,
                                        out_volume);
  const int64_t ow_full = w_tail.full;
  InputSlab<acc_t, Lanes> slab;

  for (int64_t task = begin; task < end; ++task) {
    const RowBlock rb = output_row_block(g, task);
    const int64_t oh0 = rb.row0, oh1 = rb.row1, od = rb.depth, bg = rb.bg, c0 = rb.c0;
    slab.stage(g, x, c0, cpg, od, oh0, oh1);
    const scalar_t* w_task = w + bg * taps * out_volume + (od * OH + oh0) * OW;
    w_tail.start(w_task, oh1 - oh0);

    const int64_t* column_offset = slab.column_offset.data();
    for (int64_t oh = oh0; oh < oh1; ++oh) {
      const TapRange kh = taps_in_range(oh, g.stride[1], g.padding[1], g.dilation[1], KH, g.in[1]);
      const bool edge_row = slab.kd_count < KD || kh.hi - kh.lo < KH;
      scalar_t* y_row = y + c0 * out_volume + (od * OH + oh) * OW;
      // The next row's weights (the next task's first row after the last), fetched a column
      // block at a time alongside the first channel block's work rather than in one burst that
      // fills the miss buffers.
      const scalar_t* w_next = oh + 1 < OH ? w_task + (oh + 1 - oh0) * OW : nullptr;
      // Output columns [j0, j0 + Lanes) of channels [c, c + NB); tap t's weights are at
      // w_row + t * w_tap_stride.
      auto block = [&](auto channels, auto kw_const, auto s_const, int64_t c, int64_t j0,
                       const scalar_t* w_row, int64_t w_tap_stride) {
        constexpr int NB = decltype(channels)::value;
        constexpr int KWc = decltype(kw_const)::value;
        constexpr int Sc = decltype(s_const)::value;
        const int64_t kw_count = KWc > 0 ? KWc : KW;
        const int64_t phase_len = slab.phase_len;
        V acc[NB];
        // Zeroed lane vector by lane vector: GCC compiled `V acc[NB] = {}` into a rep stos of
        // the whole array at every block.
        for (int cb = 0; cb < NB; ++cb) acc[cb] = V{};
        for (int64_t kd = slab.kd_lo; kd < slab.kd_lo + slab.kd_count; ++kd) {
          for (int64_t u = kh.lo; u < kh.hi; ++u) {
            const scalar_t* w_tap = w_row + (kd * KH + u) * KW * w_tap_stride;
            const acc_t* x_row = slab.row(g, kd, oh, u) + c * slab.channel_stride + j0;
            const acc_t* xc[NB];
            for (int cb = 0; cb < NB; ++cb) xc[cb] = x_row + cb * slab.channel_stride;
#pragma GCC unroll 8
            for (int64_t v = 0; v < kw_count; ++v) {
              const V wv = load_as<V>(w_tap + v * w_tap_stride);
              const int64_t off = Sc == 1   ? v
                                  : Sc == 2 ? (v % 2) * phase_len + v / 2
                                            : column_offset[v];
              for (int cb = 0; cb < NB; ++cb) acc[cb] += wv * load<V>(xc[cb] + off);
            }
          }
        }
        if (edge_row) {
          // Tap rows outside the input along depth or height read zeros: their weights enter
          // the sum as w * 0 (NaN for an Inf or NaN weight), as the staged zeros give along the
          // width. Summed once for the channel block, not per channel.
          V z{};
          const V zero{};
          for (int64_t kd = 0; kd < KD; ++kd) {
            const bool kd_in = kd >= slab.kd_lo && kd < slab.kd_lo + slab.kd_count;
            for (int64_t u = 0; u < KH; ++u) {
              if (kd_in && u >= kh.lo && u < kh.hi) continue;
              const scalar_t* w_tap = w_row + (kd * KH + u) * KW * w_tap_stride;
              for (int64_t v = 0; v < KW; ++v) z += load_as<V>(w_tap + v * w_tap_stride) * zero;
            }
          }
          for (int cb = 0; cb < NB; ++cb) acc[cb] += z;
        }
        const int64_t count = std::min<int64_t>(Lanes, OW - j0);
        if (count == Lanes) {  // a constant count lets store() drop its checks
          for (int cb = 0; cb < NB; ++cb) store(y_row + (c + cb) * out_volume + j0, acc[cb], Lanes);
        } else {
          for (int cb = 0; cb < NB; ++cb) store(y_row + (c + cb) * out_volume + j0, acc[cb], count);
        }
      };
      auto columns = [&](auto channels, auto kw_const, auto s_const, int64_t c) {
        const bool fetch = c == 0 && w_next != nullptr;
        if (fetch) prefetch_line_per_row(w_next, taps, out_volume);
        for (int64_t j0 = 0; j0 < ow_full; j0 += Lanes) {
          if (fetch) prefetch_line_per_row(w_next + j0 + Lanes - 1, taps, out_volume);
          block(channels, kw_const, s_const, c, j0, w_task + (oh - oh0) * OW + j0, out_volume);
        }
        if (fetch && ow_full < OW) prefetch_line_per_row(w_next + OW - 1, taps, out_volume);
        if (ow_full < OW) {
          const auto tail = w_tail.partial(oh - oh0);
          block(channels, kw_const, s_const, c, ow_full, tail.data, tail.plane_stride);
        }
      };
      auto channel_blocks = [&](auto kw_const, auto s_const) {
        // Channel blocks outermost: one block's staged rows and the row's weights stay in L1.
        int64_t c = 0;
        for (; c + CB <= cpg; c += CB)
          columns(std::integral_constant<int, CB>(), kw_const, s_const, c);
        for (; c < cpg; ++c) columns(std::integral_constant<int, 1>(), kw_const, s_const, c);
      };
      with_width_shape(g, channel_blocks);
    }
  }
}

template <typename scalar_t, typename acc_t, int Lanes>
void backward_weight(const Geometry& g, const scalar_t* grad_y, const scalar_t* x, scalar_t* grad_w,
                     int64_t begin, int64_t end) {
  using V = typename Simd<acc_t, Lanes>::type;
  const int64_t OH = g.out[1], OW = g.out[2];
  const int64_t KD = g.kernel[0], KH = g.kernel[1], KW = g.kernel[2];
  const int64_t cpg = g.channels_per_group(), taps = g.taps(), out_volume = g.out_volume();

  // grad_output is read in place, as the weights are in forward(), one plane per channel.
  PartialBlocks<scalar_t, Lanes> gy_tail(grad_y, g.batch * g.channels * out_volume, OW, cpg,
                                         out_volume);
  const int64_t ow_full = gy_tail.full;
  InputSlab<acc_t, Lanes> slab;
  std::vector<acc_t> edge_grad(round_up(OW, Lanes), acc_t(0));

  for (int64_t task = begin; task < end; ++task) {
    const RowBlock rb = output_row_block(g, task);
    const int64_t oh0 = rb.row0, oh1 = rb.row1, od = rb.depth, bg = rb.bg, c0 = rb.c0;
    slab.stage(g, x, c0, cpg, od, oh0, oh1);
    const scalar_t* gy_task = grad_y + c0 * out_volume + (od * OH + oh0) * OW;
    gy_tail.start(gy_task, oh1 - oh0);
    scalar_t* gw_task = grad_w + bg * taps * out_volume + od * OH * OW;
    const int64_t phase_len = slab.phase_len;

    for (int64_t oh = oh0; oh < oh1; ++oh) {
      const TapRange kh = taps_in_range(oh, g.stride[1], g.padding[1], g.dilation[1], KH, g.in[1]);
      // The next row's grad_output; its weight-gradient rows are prefetched tap row by tap row
      // below, spread over this row's work rather than in one burst that fills the miss buffers.
      if (oh + 1 < OH) prefetch_rows(gy_task + (oh + 1 - oh0) * OW, cpg, out_volume, OW);
      bool edge_ready = false;  // edge_grad holds this row's sums
      for (int64_t kd = 0; kd < KD; ++kd) {
        for (int64_t u = 0; u < KH; ++u) {
          scalar_t* gw_row = gw_task + ((kd * KH + u) * KW) * out_volume + oh * OW;
          if (oh + 1 < OH) prefetch_rows<1>(gw_row + OW, KW, out_volume, OW);
          const bool valid =
              kd >= slab.kd_lo && kd < slab.kd_lo + slab.kd_count && u >= kh.lo && u < kh.hi;
          if (!valid) {
            // A tap row outside the input along depth or height reads zeros: its gradient is
            // sum_c gy[c, j] * 0 (0, or NaN where a grad_output is Inf or NaN), as the staged
            // zeros give along the width.
            if (!edge_ready) {
              for (int64_t j = 0; j < OW; ++j) {
                acc_t z = 0;
                for (int64_t c = 0; c < cpg; ++c) {
                  z += static_cast<acc_t>(gy_task[c * out_volume + (oh - oh0) * OW + j]) * acc_t(0);
                }
                edge_grad[j] = z;
              }
              edge_ready = true;
            }
            for (int64_t v = 0; v < KW; ++v)
              store_row<Lanes>(edge_grad.data(), OW, gw_row + v * out_volume);
            continue;
          }
          const acc_t* x_row = slab.row(g, kd, oh, u);
          // Taps [v0, v0 + NT) of this row at output columns [j0, j0 + Lanes), summed over the
          // group's channels; channel c's grad_output is at gy + c * gy_channel_stride.
          auto block = [&](auto tap_count, auto s_const, int64_t v0, int64_t j0, const scalar_t* gy,
                           int64_t gy_channel_stride) {
            constexpr int NT = decltype(tap_count)::value;
            constexpr int Sc = decltype(s_const)::value;
            const acc_t* xp = x_row + j0;
            int64_t off[NT];
            for (int tb = 0; tb < NT; ++tb) {
              const int64_t v = v0 + tb;
              off[tb] = Sc == 1 ? v : Sc == 2 ? (v % 2) * phase_len + v / 2 : slab.column_offset[v];
            }
            V acc[NT];
            for (int tb = 0; tb < NT; ++tb) acc[tb] = V{};  // not `= {}`: see forward()
            // Unrolled by 2: two channels share the loop's counter and pointer updates (fewer
            // instructions per multiply-add).
#pragma GCC unroll 2
            for (int64_t c = 0; c < cpg; ++c) {
              const V gv = load_as<V>(gy + c * gy_channel_stride);
              const acc_t* xc = xp + c * slab.channel_stride;
              for (int tb = 0; tb < NT; ++tb) acc[tb] += gv * load<V>(xc + off[tb]);
            }
            const int64_t count = std::min<int64_t>(Lanes, OW - j0);
            if (count == Lanes) {
              for (int tb = 0; tb < NT; ++tb)
                store(gw_row + (v0 + tb) * out_volume + j0, acc[tb], Lanes);
            } else {
              for (int tb = 0; tb < NT; ++tb)
                store(gw_row + (v0 + tb) * out_volume + j0, acc[tb], count);
            }
          };
          // All taps of the row in one block where the width geometry is fixed; else blocks of
          // 8, 4 and 1 taps.
          auto row_taps = [&](auto kw_const, auto s_const, int64_t j0, const scalar_t* gy,
                              int64_t gy_stride) {
            using std::integral_constant;
            if constexpr (decltype(kw_const)::value > 0) {
              block(kw_const, s_const, 0, j0, gy, gy_stride);
            } else {
              int64_t v = 0;
              for (; v + 8 <= KW; v += 8)
                block(integral_constant<int, 8>(), s_const, v, j0, gy, gy_stride);
              for (; v + 4 <= KW; v += 4)
                block(integral_constant<int, 4>(), s_const, v, j0, gy, gy_stride);
              for (; v < KW; ++v) block(integral_constant<int, 1>(), s_const, v, j0, gy, gy_stride);
            }
          };
          auto columns = [&](auto kw_const, auto s_const) {
            for (int64_t j0 = 0; j0 < ow_full; j0 += Lanes) {
              row_taps(kw_const, s_const, j0, gy_task + (oh - oh0) * OW + j0, out_volume);
            }
            if (ow_full < OW) {
              const auto tail = gy_tail.partial(oh - oh0);
              row_taps(kw_const, s_const, ow_full, tail.data, tail.plane_stride);
            }
          };
          with_width_shape(g, columns);
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Gradient with respect to the input, gather form:
// gx[c, x] = sum over (kd, kh, kw) and the output column j with j*s = x + p - kw*d
//            of w[tap, j] * gy[c, j].
// Input columns are taken phase by phase: column x = m*s + r receives, from each tap kw with
// (r + p - kw*d) a multiple of s, the product at output column j = m + e, e = (r + p - kw*d)/s,
// which is contiguous in m. So every multiply-add contributes (no zero-stuffing for s > 1);
// for s > 1 the phases are interleaved into the row when it is written.

template <typename scalar_t, typename acc_t, int Lanes>
void backward_input(const Geometry& g, const scalar_t* grad_y, const scalar_t* w, scalar_t* grad_x,
                    int64_t begin, int64_t end) {
  if (channel_vector_handles_input(g, Lanes)) {  // RedNet's K = 7 layers: channels in the lanes
    channel_vector::backward_input<scalar_t, acc_t, Lanes>(g, grad_y, w, grad_x, begin, end);
    return;
  }
  using V = typename Simd<acc_t, Lanes>::type;
  constexpr int CB = 8;  // channels sharing each weight load (and independent accumulators)
  const int64_t H = g.in[1], W = g.in[2];
  const int64_t OD = g.out[0], OH = g.out[1], OW = g.out[2];
  const int64_t KD = g.kernel[0], KH = g.kernel[1], KW = g.kernel[2];
  const int64_t sd = g.stride[0], sh = g.stride[1], s = g.stride[2];
  const int64_t p = g.padding[2], d = g.dilation[2];
  const int64_t cpg = g.channels_per_group(), taps = g.taps();
  const int64_t in_volume = g.in_volume(), out_volume = g.out_volume();

  // The taps of each phase: (kw, e) for phase_taps[phase_begin[r], phase_begin[r + 1]).
  struct PhaseTap {
    int64_t kw, e;
  };
  const int64_t phases = std::min(s, W);
  std::vector<PhaseTap> phase_taps;
  std::vector<int64_t> phase_begin(phases + 1);
  for (int64_t r = 0; r < phases; ++r) {
    phase_begin[r] = static_cast<int64_t>(phase_taps.size());
    for (int64_t kw = 0; kw < KW; ++kw) {
      const int64_t n = r + p - kw * d;
      if (n - floor_div(n, s) * s == 0) phase_taps.push_back({kw, floor_div(n, s)});
    }
  }
  phase_begin[phases] = static_cast<int64_t>(phase_taps.size());
  // Staged output-sized rows (grad_output and weights) are zero-padded: column j at slot
  // j + left; phase slot m (m < m_padded) at tap offset e reads slot m + e + left.
  const int64_t M = ceil_div(W, s);  // slots of phase 0, the longest
  const int64_t m_padded = round_up(M, Lanes);
  const int64_t left = std::max<int64_t>(0, -floor_div(p - (KW - 1) * d, s));
  const int64_t len = m_padded + floor_div(s - 1 + p, s) + left;
  // Slots [left, left + n) hold the row, at the same place in every staged row, so the zeros
  // around them are written once, when the buffers are allocated. Later columns are never read.
  const int64_t n = std::min(OW, len - left);

  // grad_output rows read by a block of input rows, [channel][kd][output row][len].
  const int64_t max_out_rows = (kRowsPerTask - 1 + (KH - 1) * g.dilation[1]) / sh + 1;
  const int64_t gy_channel_stride = KD * max_out_rows * len;
  std::vector<acc_t> gy_staged(cpg * gy_channel_stride, acc_t(0));
  // weight rows read by one input row, [kd][kh][kw][len].
  std::vector<acc_t> w_staged(KD * KH * KW * len, acc_t(0));
  // s > 1: the phases of a channel block, [channel][phase][m_padded], and one interleaved row.
  std::vector<acc_t> phase_out(s > 1 ? CB * phases * m_padded : 0),
      row_out(s > 1 ? s * m_padded : 0);
  std::vector<int64_t> od_of(KD), oh_of((kRowsPerTask + 1) * KH);
  struct TapRow {
    int64_t gy, w;  // offsets of the staged grad_output row (channel 0) and weight rows
  };
  std::vector<TapRow> tap_rows;

  for (int64_t task = begin; task < end; ++task) {
    const RowBlock rb = input_row_block(g, task);
    const int64_t ih0 = rb.row0, ih1 = rb.row1, id = rb.depth, bg = rb.bg, c0 = rb.c0;

    // Output depths that read input depth id, and output rows that read rows [ih0, ih1).
    for (int64_t kd = 0; kd < KD; ++kd) {
      const int64_t n = id + g.padding[0] - kd * g.dilation[0];
      od_of[kd] = (n >= 0 && n % sd == 0 && n / sd < OD) ? n / sd : -1;
    }
    const int64_t oh_first =
        std::max<int64_t>(0, ceil_div(ih0 + g.padding[1] - (KH - 1) * g.dilation[1], sh));
    const int64_t oh_last = std::min(OH - 1, floor_div(ih1 - 1 + g.padding[1], sh));
    const int64_t out_rows = std::max<int64_t>(0, oh_last - oh_first + 1);
    for (int64_t c = 0; c < cpg; ++c) {
      for (int64_t kd = 0; kd < KD; ++kd) {
        if (od_of[kd] < 0) continue;
        for (int64_t r = 0; r < out_rows; ++r) {
          const scalar_t* src =
              grad_y + (c0 + c) * out_volume + (od_of[kd] * OH + oh_first + r) * OW;
          acc_t* dst = gy_staged.data() + c * gy_channel_stride + (kd * max_out_rows + r) * len;
          copy_row<acc_t, Lanes>(src, n, dst + left);
        }
      }
    }
    // For input row ih and tap row kh, the output row that reads it (or -1); also for the row
    // after the block, whose weights are prefetched.
    for (int64_t ih = ih0; ih < std::min(H, ih1 + 1); ++ih) {
      for (int64_t kh = 0; kh < KH; ++kh) {
        const int64_t n = ih + g.padding[1] - kh * g.dilation[1];
        oh_of[(ih - ih0) * KH + kh] = (n >= 0 && n % sh == 0 && n / sh < OH) ? n / sh : -1;
      }
    }
    const scalar_t* w_bg = w + bg * taps * out_volume;

    for (int64_t ih = ih0; ih < ih1; ++ih) {
      // The (kd, kh) tap rows that reach this input row, with their weight rows staged; and,
      // one tap row at a time, the weight rows the next input row will stage.
      tap_rows.clear();
      for (int64_t kd = 0; kd < KD; ++kd) {
        if (od_of[kd] < 0) continue;
        for (int64_t kh = 0; kh < KH; ++kh) {
          const int64_t oh_next = ih + 1 < H ? oh_of[(ih + 1 - ih0) * KH + kh] : -1;
          if (oh_next >= 0) {
            prefetch_rows(w_bg + (kd * KH + kh) * KW * out_volume + (od_of[kd] * OH + oh_next) * OW,
                          KW, out_volume, OW);
          }
          const int64_t oh = oh_of[(ih - ih0) * KH + kh];
          if (oh < 0) continue;
          const int64_t w_offset = (kd * KH + kh) * KW * len;
          for (int64_t kw = 0; kw < KW; ++kw) {
            const scalar_t* src =
                w_bg + ((kd * KH + kh) * KW + kw) * out_volume + (od_of[kd] * OH + oh) * OW;
            copy_row<acc_t, Lanes>(src, n, w_staged.data() + w_offset + kw * len + left);
          }
          tap_rows.push_back({(kd * max_out_rows + oh - oh_first) * len, w_offset});
        }
      }

      scalar_t* gx_row = grad_x + c0 * in_volume + (id * H + ih) * W;
      // Phase r, slots [m0, m0 + Lanes), channels [c, c + NB).
      auto block = [&](auto channels, auto kw_const, int64_t c, int64_t r, int64_t m0, V* acc) {
        constexpr int NB = decltype(channels)::value;
        constexpr int KWc = decltype(kw_const)::value;  // > 0: stride 1, dilation 1, KW == KWc
        for (int cb = 0; cb < NB; ++cb) acc[cb] = V{};  // not `= {}`: see forward()
        for (const TapRow& tr : tap_rows) {
          const acc_t* gy_row = gy_staged.data() + c * gy_channel_stride + tr.gy + left + m0;
          const acc_t* w_row = w_staged.data() + tr.w + left + m0;
          const acc_t* gyc[NB];
          for (int cb = 0; cb < NB; ++cb) gyc[cb] = gy_row + cb * gy_channel_stride;
          if constexpr (KWc > 0) {
#pragma GCC unroll 8
            for (int64_t kw = 0; kw < KWc; ++kw) {
              const int64_t e = p - kw;
              const V wv = load<V>(w_row + kw * len + e);
              for (int cb = 0; cb < NB; ++cb) acc[cb] += wv * load<V>(gyc[cb] + e);
            }
          } else {
            for (int64_t t = phase_begin[r]; t < phase_begin[r + 1]; ++t) {
              const int64_t e = phase_taps[t].e;
              const V wv = load<V>(w_row + phase_taps[t].kw * len + e);
              for (int cb = 0; cb < NB; ++cb) acc[cb] += wv * load<V>(gyc[cb] + e);
            }
          }
        }
      };
      auto channel_block = [&](auto channels, auto kw_const, int64_t c) {
        constexpr int NB = decltype(channels)::value;
        V acc[NB];
        if (s == 1) {
          for (int64_t m0 = 0; m0 < W; m0 += Lanes) {
            block(channels, kw_const, c, 0, m0, acc);
            const int64_t count = std::min<int64_t>(Lanes, W - m0);
            if (count == Lanes) {
              for (int cb = 0; cb < NB; ++cb)
                store(gx_row + (c + cb) * in_volume + m0, acc[cb], Lanes);
            } else {
              for (int cb = 0; cb < NB; ++cb)
                store(gx_row + (c + cb) * in_volume + m0, acc[cb], count);
            }
          }
          return;
        }
        for (int64_t r = 0; r < phases; ++r) {
          for (int64_t m0 = 0; m0 < ceil_div(W - r, s); m0 += Lanes) {
            block(channels, kw_const, c, r, m0, acc);
            for (int cb = 0; cb < NB; ++cb) {
              std::memcpy(phase_out.data() + (cb * phases + r) * m_padded + m0, &acc[cb],
                          sizeof(V));
            }
          }
        }
        for (int cb = 0; cb < NB; ++cb) {
          const acc_t* phase = phase_out.data() + cb * phases * m_padded;
          if (s == 2) {
            for (int64_t m = 0; m < m_padded; ++m) {
              row_out[2 * m] = phase[m];
              row_out[2 * m + 1] = phase[m_padded + m];
            }
          } else {
            for (int64_t x = 0; x < W; ++x) row_out[x] = phase[(x % s) * m_padded + x / s];
          }
          store_row<Lanes>(row_out.data(), W, gx_row + (c + cb) * in_volume);
        }
      };
      auto channel_blocks = [&](auto kw_const) {
        int64_t c = 0;
        for (; c + CB <= cpg; c += CB)
          channel_block(std::integral_constant<int, CB>(), kw_const, c);
        for (; c < cpg; ++c) channel_block(std::integral_constant<int, 1>(), kw_const, c);
      };
      // Unit stride (phase 0 only, taps kw = 0.. at e = p - kw) unrolls the taps; strided
      // rows take each phase's taps from phase_taps.
      with_width_shape(g, [&](auto kw_const, auto s_const) {
        if constexpr (decltype(s_const)::value == 1)
          channel_blocks(kw_const);
        else
          channel_blocks(std::integral_constant<int, 0>());
      });
    }
  }
}

// The table of this instruction set: float32 and the half types accumulate in float, float64
// in double; `FloatLanes` floats fill one SIMD register.
template <int FloatLanes>
KernelTable make_table() {
  auto kernels = [](auto scalar, auto acc, auto lanes) {
    using scalar_t = decltype(scalar);
    using acc_t = decltype(acc);
    constexpr int L = decltype(lanes)::value;
    return Kernels<scalar_t>{&forward<scalar_t, acc_t, L>,
                             &backward_input<scalar_t, acc_t, L>,
                             &backward_weight<scalar_t, acc_t, L>,
                             &span_generate<scalar_t, acc_t, L>,
                             &span_grad_reduced<scalar_t, acc_t, L>,
                             &span_grad_weight<scalar_t, acc_t, L>,
                             &fused_forward_channels_last<scalar_t, acc_t, L>,
                             &fused_backward_input_channels_last<scalar_t, acc_t, L>,
                             &fused_backward_span_channels_last<scalar_t, acc_t, L>,
                             &fused_forward_tiles<scalar_t, acc_t, L>,
                             L};
  };
  using F = std::integral_constant<int, FloatLanes>;
  using D = std::integral_constant<int, FloatLanes / 2>;
  return {kernels(double(), double(), D()), kernels(float(), float(), F()),
          kernels(c10::Half(), float(), F()), kernels(c10::BFloat16(), float(), F())};
}

}  // namespace INVOLUTION_CPU_ISA
}  // namespace cpu
}  // namespace involution
